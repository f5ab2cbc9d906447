//! Issue 15, items 3-4: `flowcast lsp`, driven over JSON-RPC on stdio as an editor drives it:
//! diagnostics as you type (`check`'s codes and words), formatting (`fmt`), go to definition,
//! find references, rename (with prepareRename, refusing a name in use), hover and completion
//! on the names of flows and states (artifacts included).

mod common;

use common::flowcast;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// A language client on the real server's stdio.
struct Client {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    next_id: u64,
    /// The server's answer to `initialize`.
    init: Value,
}

impl Client {
    fn start() -> Client {
        Client::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Client {
        Client::start_with_capabilities(
            args,
            json!({"textDocument": {"rename": {"prepareSupport": true}}}),
        )
    }

    fn start_with_capabilities(args: &[&str], capabilities: Value) -> Client {
        let mut child = flowcast()
            .arg("lsp")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, incoming) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(n) = line.strip_prefix("Content-Length: ") {
                        len = n.parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                    return;
                }
            }
        });
        let mut c = Client {
            child,
            stdin,
            incoming,
            next_id: 1,
            init: Value::Null,
        };
        let init = c.request(
            "initialize",
            json!({"capabilities": capabilities, "processId": null, "rootUri": null}),
        );
        assert_eq!(
            init["capabilities"]["documentFormattingProvider"], true,
            "{init}"
        );
        c.notify("initialized", json!({}));
        c.init = init;
        c
    }

    fn send(&mut self, msg: Value) {
        let body = msg.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// The next message from the server (a generous bound keeps a broken server from hanging
    /// the suite; it measures nothing).
    fn recv(&self) -> Value {
        self.incoming
            .recv_timeout(Duration::from_secs(60))
            .expect("the server answered")
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let m = self.recv();
            if m["id"] == id {
                return m
                    .get("result")
                    .cloned()
                    .unwrap_or_else(|| json!({"error": m["error"]}));
            }
        }
    }

    /// The next diagnostics published.
    fn diagnostics(&self) -> Vec<Value> {
        loop {
            let m = self.recv();
            if m["method"] == "textDocument/publishDiagnostics" {
                return m["params"]["diagnostics"].as_array().unwrap().clone();
            }
        }
    }

    fn open(&mut self, uri: &str, text: &str) -> Vec<Value> {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "flowcast", "version": 1, "text": text}}),
        );
        self.diagnostics()
    }

    fn change(&mut self, uri: &str, version: u64, text: &str) -> Vec<Value> {
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]}),
        );
        self.diagnostics()
    }

    fn stop(mut self) {
        let r = self.request("shutdown", Value::Null);
        assert_eq!(r, Value::Null);
        self.notify("exit", Value::Null);
        let status = self.child.wait().unwrap();
        assert!(status.success());
    }
}

const URI: &str = "file:///work/attach.flow";

const TEXT: &str = "flow attach {\n    key payload.id\n    initial start \"Requested\"\n    terminal done\n    artifact failed\n    on \"attach.start\" -> start\n    on \"attach.end\" -> done\n    transitions {\n        start -> done 9\n        start -> failed 1\n    }\n}\n";

fn pos(text: &str, needle: &str, nth: usize) -> Value {
    let at = text.match_indices(needle).nth(nth).unwrap().0;
    let line = text[..at].matches('\n').count();
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1);
    json!({"line": line, "character": col})
}

#[test]
fn diagnostics_as_you_type_are_checks_own() {
    let mut c = Client::start();
    assert_eq!(c.open(URI, TEXT), Vec::<Value>::new());
    // A typo in a state name: F006 with check's help, at the name.
    let typo = TEXT.replace("-> done\n    transitions", "-> doen\n    transitions");
    let d = c.change(URI, 2, &typo);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["code"], "F006");
    assert_eq!(d[0]["severity"], 1);
    assert_eq!(
        d[0]["message"],
        "unknown state `doen`\nhelp: did you mean `done`?"
    );
    assert_eq!(d[0]["range"]["start"], json!({"line": 6, "character": 23}));
    assert_eq!(d[0]["range"]["end"], json!({"line": 6, "character": 27}));
    // A half-typed block: the syntax error, with the open block named.
    let half = TEXT.replace(
        "        start -> failed 1\n    }\n",
        "        start -> failed 1\n    unlisted report\n",
    );
    let d = c.change(URI, 3, &half);
    assert_eq!(d[0]["code"], "F001", "{d:?}");
    assert_eq!(
        d[0]["relatedInformation"][0]["message"],
        "this `transitions {` is still open"
    );
    // Fixed again: the diagnostics clear.
    assert_eq!(c.change(URI, 4, TEXT), Vec::<Value>::new());
    c.stop();
}

#[test]
fn formatting_is_fmt() {
    let mut c = Client::start();
    let messy = "flow a{key payload.id # k\ninitial s\non \"x\"->s}";
    c.open(URI, messy);
    let edits = c.request(
        "textDocument/formatting",
        json!({"textDocument": {"uri": URI}, "options": {"tabSize": 4, "insertSpaces": true}}),
    );
    assert_eq!(
        edits[0]["newText"],
        flowcast::syntax::format(messy).unwrap()
    );
    assert_eq!(
        edits[0]["range"]["start"],
        json!({"line": 0, "character": 0})
    );
    assert_eq!(
        edits[0]["range"]["end"],
        json!({"line": 2, "character": 10})
    );
    c.change(URI, 2, &flowcast::syntax::format(messy).unwrap());
    let edits = c.request(
        "textDocument/formatting",
        json!({"textDocument": {"uri": URI}, "options": {}}),
    );
    assert_eq!(edits, json!([]));
    c.stop();
}

#[test]
fn definition_references_rename_hover_and_completion_know_the_states() {
    let mut c = Client::start();
    c.open(URI, TEXT);
    let doc = json!({"uri": URI});
    // From the use in `start -> done 9` to the declaration.
    let def = c.request(
        "textDocument/definition",
        json!({"textDocument": doc, "position": pos(TEXT, "start", 3)}),
    );
    assert_eq!(def["uri"], URI);
    assert_eq!(def["range"]["start"], pos(TEXT, "start", 0));
    let refs = c.request(
        "textDocument/references",
        json!({"textDocument": doc, "position": pos(TEXT, "done", 0), "context": {"includeDeclaration": true}}),
    );
    assert_eq!(refs.as_array().unwrap().len(), 3, "{refs}");
    let edit = c.request(
        "textDocument/rename",
        json!({"textDocument": doc, "position": pos(TEXT, "failed", 0), "newName": "attach_error"}),
    );
    let edits = edit["changes"][URI]
        .as_array()
        .unwrap_or_else(|| panic!("{edit}"));
    assert_eq!(edits.len(), 2, "{edit}");
    assert!(edits.iter().all(|e| e["newText"] == "attach_error"));
    let bad = c.request(
        "textDocument/rename",
        json!({"textDocument": doc, "position": pos(TEXT, "failed", 0), "newName": "not"}),
    );
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a state name"),
        "{bad}"
    );
    let hover = c.request(
        "textDocument/hover",
        json!({"textDocument": doc, "position": pos(TEXT, "start", 2)}),
    );
    let text = hover["contents"]["value"].as_str().unwrap();
    assert!(text.contains("**initial** `start` — Requested"), "{text}");
    assert!(text.contains("-> `done`: 9 (90.0%)"), "{text}");
    assert!(text.contains("Model (a priori):"), "{text}");
    assert!(text.contains("- risk: `failed` 10.0%"), "{text}");
    let items = c.request(
        "textDocument/completion",
        json!({"textDocument": doc, "position": {"line": 5, "character": 4}}),
    );
    let labels: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["label"].as_str())
        .collect();
    for l in [
        "transitions",
        "timeout",
        "start",
        "done",
        "failed",
        "half_life",
        "threshold",
        "window",
    ] {
        assert!(labels.contains(&l), "{labels:?}");
    }
    c.stop();
}

#[test]
fn completion_offers_the_field_paths_of_a_sample_quoted_where_needed() {
    let mut c = Client::start_with(&["--sample", "examples/nova_volume_attach/events.jsonl"]);
    c.open(URI, TEXT);
    let items = c.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": URI}, "position": {"line": 1, "character": 8}}),
    );
    let item = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == r#"payload."nova_object.data".volume_id"#)
        .unwrap_or_else(|| panic!("{items}"));
    assert_eq!(item["detail"], "in 203 sample messages");
    c.stop();
}

#[test]
fn hover_shows_what_a_state_directory_learned() {
    let dir = tempfile::tempdir().unwrap();
    let model = "models/nova_volume_attach.flow";
    let out = flowcast()
        .args(["replay", "--models", model, "--state-dir"])
        .arg(dir.path())
        .arg("examples/nova_volume_attach/events.jsonl")
        .output()
        .unwrap();
    assert!(out.status.success());
    // What `flowcast model --state-dir` says about `attaching`, the hover must say too.
    let out = flowcast()
        .args(["model", model, "--format", "json", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = table["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["state"] == "attaching")
        .unwrap();
    let error = row["risk"]["attach_error"].as_f64().unwrap();
    let text = std::fs::read_to_string(model).unwrap();
    let mut c = Client::start_with(&["--state-dir", dir.path().to_str().unwrap()]);
    c.open("file:///m/nova_volume_attach.flow", &text);
    let hover = c.request(
        "textDocument/hover",
        json!({"textDocument": {"uri": "file:///m/nova_volume_attach.flow"}, "position": pos(&text, "attaching ", 0)}),
    );
    let value = hover["contents"]["value"].as_str().unwrap();
    assert!(value.contains("Model (learned, from"), "{value}");
    assert!(
        value.contains(&format!("`attach_error` {:.1}%", error * 100.0)),
        "{value}\nmodel: {error}"
    );
    c.stop();
}

#[test]
fn hover_shows_a_running_services_live_model() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let text = std::fs::read_to_string("models/nova_volume_attach.flow").unwrap();
    std::fs::write(models.join("nova_volume_attach.flow"), &text).unwrap();
    // Its stdin stays open (a source with more to come) for as long as the test holds it.
    let (svc, stdin) =
        common::start_with_stdin(dir.path(), &format!("models: {}\n", models.display()));
    svc.wait_until("ready", || {
        common::http(svc.http_port, "GET", "/readyz").0 == 200
    });
    let url = format!("http://127.0.0.1:{}", svc.http_port);
    let (status, body) = common::http(svc.http_port, "GET", "/api/flows/nova_volume_attach/model");
    assert_eq!(status, 200, "{body}");
    let table: Value = serde_json::from_str(&body).unwrap();
    let row = table["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["state"] == "attaching")
        .unwrap();
    let timeout = row["risk"]["attach_timeout"].as_f64().unwrap();
    let mut c = Client::start_with(&["--service", &url]);
    let uri = "file:///m/nova_volume_attach.flow";
    c.open(uri, &text);
    let hover = c.request(
        "textDocument/hover",
        json!({"textDocument": {"uri": uri}, "position": pos(&text, "attaching ", 0)}),
    );
    let value = hover["contents"]["value"].as_str().unwrap();
    assert!(
        value.contains(&format!("Model (live, from the service at {url}")),
        "{value}"
    );
    assert!(
        value.contains(&format!("`attach_timeout` {:.1}%", timeout * 100.0)),
        "{value}"
    );
    drop(svc);
    drop(stdin);
    // The service gone, hover falls back to the open text's model and says why.
    let hover = c.request(
        "textDocument/hover",
        json!({"textDocument": {"uri": uri}, "position": pos(&text, "attaching ", 0)}),
    );
    let value = hover["contents"]["value"].as_str().unwrap();
    assert!(value.contains("Model (a priori; the service at"), "{value}");
    c.stop();
}

#[test]
fn with_a_sample_diagnostics_include_the_sample_checks() {
    let mut c = Client::start_with(&["--sample", "examples/nova_volume_attach/events.jsonl"]);
    let text = TEXT.replace("key payload.id", "key payload.nova_object.data.volume_id");
    let d = c.open(URI, &text);
    let w106 = d
        .iter()
        .find(|d| d["code"] == "W106")
        .unwrap_or_else(|| panic!("{d:?}"));
    assert_eq!(w106["severity"], 2);
    assert!(
        w106["message"]
            .as_str()
            .unwrap()
            .contains(r#"help: the sample has `payload."nova_object.data".volume_id`"#),
        "{w106}"
    );
    // The sample's own findings (its event types no rule matches) are not this file's.
    assert!(d.iter().all(|d| d["code"] != "W108"), "{d:?}");
    c.stop();
}

const URI2: &str = "file:///work/other.flow";

/// A file with artifacts named by a timeout and an alert policy, and a second flow that has a
/// state of the same name as the first's.
const FLOWS: &str = "flow attach {\n    description \"Attach a volume\"\n    key payload.id\n    initial start \"Requested\"\n    terminal done\n    artifact failed\n    artifact timed_out \"Too slow\"\n    on \"attach.start\" -> start\n    on \"attach.end\" -> done\n    on \"attach.error\" -> failed\n    transitions {\n        start -> done 9\n        start -> failed 1\n    }\n    timeout start after 5m -> timed_out\n    alert {\n        threshold 0.3\n        for timed_out { severity critical }\n    }\n}\n\nflow detach {\n    key payload.id\n    initial start\n    terminal gone\n    on \"detach.start\" -> start\n    on \"detach.end\" -> gone\n}\n";

/// The text after a rename's edits (ASCII text: columns are bytes).
fn apply(text: &str, edit: &Value, uri: &str) -> String {
    let at = |p: &Value| {
        let line = p["line"].as_u64().unwrap() as usize;
        let start: usize = text.split_inclusive('\n').take(line).map(str::len).sum();
        start + p["character"].as_u64().unwrap() as usize
    };
    let mut edits: Vec<(usize, usize, &str)> = edit["changes"][uri]
        .as_array()
        .unwrap_or_else(|| panic!("{edit}"))
        .iter()
        .map(|e| {
            (
                at(&e["range"]["start"]),
                at(&e["range"]["end"]),
                e["newText"].as_str().unwrap(),
            )
        })
        .collect();
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = text.to_string();
    for (a, b, t) in edits {
        out.replace_range(a..b, t);
    }
    out
}

fn error_of(answer: &Value) -> String {
    answer["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {answer}"))
        .to_string()
}

#[test]
fn rename_prepare_references_and_definition_know_artifacts_and_flows() {
    let mut c = Client::start();
    assert_eq!(
        c.init["capabilities"]["renameProvider"],
        json!({"prepareProvider": true})
    );
    assert_eq!(c.open(URI, FLOWS), Vec::<Value>::new());
    let doc = json!({"uri": URI});
    // The artifact where the alert policy names it: prepareRename gives its range.
    let in_alert = pos(FLOWS, "timed_out", 2);
    let prep = c.request(
        "textDocument/prepareRename",
        json!({"textDocument": doc, "position": in_alert}),
    );
    assert_eq!(prep["placeholder"], "timed_out", "{prep}");
    assert_eq!(prep["range"]["start"], in_alert);
    // Definition: the `artifact` line; references: declaration, timeout, alert policy.
    let def = c.request(
        "textDocument/definition",
        json!({"textDocument": doc, "position": in_alert}),
    );
    assert_eq!(def["range"]["start"], pos(FLOWS, "timed_out", 0));
    let refs = c.request(
        "textDocument/references",
        json!({"textDocument": doc, "position": in_alert, "context": {"includeDeclaration": false}}),
    );
    let starts: Vec<&Value> = refs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["range"]["start"])
        .collect();
    assert_eq!(
        starts,
        [&pos(FLOWS, "timed_out", 1), &pos(FLOWS, "timed_out", 2)]
    );
    // Renamed: every place, and the file still compiles, with the new name everywhere.
    let edit = c.request(
        "textDocument/rename",
        json!({"textDocument": doc, "position": in_alert, "newName": "attach_timeout"}),
    );
    let renamed = apply(FLOWS, &edit, URI);
    assert_eq!(renamed.matches("attach_timeout").count(), 3, "{renamed}");
    assert!(!renamed.contains("timed_out"), "{renamed}");
    assert!(renamed.contains("for attach_timeout { severity critical }"));
    assert_eq!(c.change(URI, 2, &renamed), Vec::<Value>::new());
    c.change(URI, 3, FLOWS);

    // A flow's name: hover, prepareRename and rename.
    let flow_name = pos(FLOWS, "attach", 0);
    let hover = c.request(
        "textDocument/hover",
        json!({"textDocument": doc, "position": flow_name}),
    );
    let text = hover["contents"]["value"].as_str().unwrap();
    assert!(
        text.starts_with("**flow** `attach` — Attach a volume"),
        "{text}"
    );
    assert!(text.contains("- artifact: `failed`, `timed_out`"), "{text}");
    let prep = c.request(
        "textDocument/prepareRename",
        json!({"textDocument": doc, "position": flow_name}),
    );
    assert_eq!(prep["placeholder"], "attach");
    let edit = c.request(
        "textDocument/rename",
        json!({"textDocument": doc, "position": flow_name, "newName": "volume_attach"}),
    );
    let renamed = apply(FLOWS, &edit, URI);
    assert!(renamed.starts_with("flow volume_attach {\n"), "{renamed}");
    // Only the flow's name: the events `attach.start` and the `detach` flow are left alone.
    assert_eq!(renamed.matches("volume_attach").count(), 1, "{renamed}");
    // The same state name in another flow is another state.
    let edit = c.request(
        "textDocument/rename",
        json!({"textDocument": doc, "position": pos(FLOWS, "start", 6), "newName": "detaching"}),
    );
    let renamed = apply(FLOWS, &edit, URI);
    assert_eq!(renamed.matches("detaching").count(), 2, "{renamed}");
    assert_eq!(renamed.matches("-> start").count(), 1, "{renamed}");
    c.stop();
}

#[test]
fn prepare_rename_is_offered_only_to_clients_that_send_it() {
    let c = Client::start_with_capabilities(&[], json!({}));
    assert_eq!(c.init["capabilities"]["renameProvider"], true);
    c.stop();
}

#[test]
fn a_rename_onto_a_name_in_use_or_where_nothing_is_named_is_refused_with_a_reason() {
    let mut c = Client::start();
    c.open(URI, FLOWS);
    c.open(
        URI2,
        "flow other {\n    key payload.id\n    initial a\n    on \"a\" -> a\n}\n",
    );
    let doc = json!({"uri": URI});
    let rename = |c: &mut Client, at: Value, to: &str| {
        c.request(
            "textDocument/rename",
            json!({"textDocument": doc, "position": at, "newName": to}),
        )
    };
    // An artifact onto another state of its flow: refused, not merged.
    let e = error_of(&rename(&mut c, pos(FLOWS, "timed_out", 1), "failed"));
    assert_eq!(
        e,
        "cannot rename state `timed_out` to `failed`: flow `attach` already declares a state \
         `failed`, and the two would become one"
    );
    // ... onto another kind of state too (the terminal `done`).
    let e = error_of(&rename(&mut c, pos(FLOWS, "failed", 0), "done"));
    assert!(e.contains("already declares a state `done`"), "{e}");
    // A flow onto another flow of the file, or of another open document.
    let e = error_of(&rename(&mut c, pos(FLOWS, "attach", 0), "detach"));
    assert!(
        e.starts_with("cannot rename flow `attach` to `detach`: this file already declares"),
        "{e}"
    );
    let e = error_of(&rename(&mut c, pos(FLOWS, "attach", 0), "other"));
    assert!(
        e.contains(&format!("{URI2} declares a flow `other`")),
        "{e}"
    );
    // Not a name at all.
    let e = error_of(&rename(&mut c, pos(FLOWS, "attach", 0), "2fast"));
    assert!(e.contains("is not a flow name"), "{e}");
    // Nothing to rename: a setting's name, a keyword.
    for at in [pos(FLOWS, "threshold", 0), pos(FLOWS, "timeout", 0)] {
        let p = c.request(
            "textDocument/prepareRename",
            json!({"textDocument": doc, "position": at}),
        );
        assert!(error_of(&p).starts_with("nothing to rename here"), "{p}");
    }
    // Renaming to the name it has: no edit.
    let same = rename(&mut c, pos(FLOWS, "failed", 0), "failed");
    assert_eq!(same["changes"][URI], json!([]), "{same}");
    // While the text does not parse, rename says so rather than editing the wrong places.
    c.change(URI, 2, &FLOWS.replace("    }\n    timeout", "    timeout"));
    let e = error_of(&rename(&mut c, pos(FLOWS, "failed", 0), "broken"));
    assert!(e.contains("does not parse"), "{e}");
    c.stop();
}
