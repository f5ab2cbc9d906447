//! `flowcast lsp`: a language server over stdio (JSON-RPC, the `lsp-server` crate that
//! rust-analyzer is built on). Diagnostics as you type are `check`'s own (the same codes and
//! words, compiled from the open text); formatting is `fmt`; go to definition, find
//! references, rename (with prepareRename) and hover work on every named thing of the language,
//! flows and states of every kind (artifacts included), through `syntax::index`; a rename onto
//! a name already taken is refused, not merged; completion offers the keywords and the flow's
//! states.
//!
//! The server keeps each open document's text (full sync) and its last parse that succeeded,
//! so that completion and navigation keep working while an edit is half typed. Messages are
//! `serde_json::Value`s shaped by hand after the LSP specification, rather than a types crate:
//! the handful used here are small, and the JSON is what the integration tests read.

use super::ExitCode;
use crate::diagnostic::{Severity, SourceFile, Span};
use crate::syntax::{self, ast, index};
use lsp_server::{Connection, Message, Notification, Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Debug, clap::Args)]
pub struct LspArgs {
    /// Accepted for editors that pass it; the server always speaks over stdin and stdout.
    #[arg(long)]
    pub stdio: bool,
    /// Messages (JSON lines) whose field paths completion offers, quoted where needed
    /// (`payload."nova_object.data".uuid`).
    #[arg(long, value_name = "FILE.jsonl")]
    pub sample: Option<std::path::PathBuf>,
    /// A state directory (the service's, or replay's): hover shows the probabilities learned
    /// there, not only the a priori ones.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// A running service's HTTP address (`http://127.0.0.1:9464`): hover shows its live model.
    #[arg(long, value_name = "URL")]
    pub service: Option<String>,
}

/// Learned counts by flow name, and the file they came from.
type Learned = (
    std::path::PathBuf,
    std::collections::BTreeMap<String, crate::engine::markov::LearnedCounts>,
);

/// Sample messages the diagnostics check an edit against (`check --sample`'s W106-W109).
const MAX_SAMPLE_CHECKED: usize = 1_000;

/// Field paths collected from a sample at most, and how deep into a message.
const MAX_SAMPLE_PATHS: usize = 5_000;
const MAX_PATH_DEPTH: usize = 8;

/// Every field path of the sample messages (arrays by their first element), with the number
/// of messages that have it, most common first.
fn sample_paths(messages: &[Value]) -> Vec<(String, usize)> {
    fn walk(
        v: &Value,
        segs: &mut Vec<crate::syntax::ast::Segment>,
        seen: &mut std::collections::HashSet<String>,
    ) {
        if segs.len() >= MAX_PATH_DEPTH || seen.len() >= MAX_SAMPLE_PATHS {
            return;
        }
        match v {
            Value::Object(map) => {
                for (k, x) in map {
                    segs.push(crate::syntax::ast::Segment::Field(k.clone()));
                    seen.insert(crate::model::cond::FieldPath::new(segs.clone()).to_string());
                    walk(x, segs, seen);
                    segs.pop();
                }
            }
            Value::Array(items) => {
                if let Some(first) = items.first() {
                    segs.push(crate::syntax::ast::Segment::Index(0));
                    seen.insert(crate::model::cond::FieldPath::new(segs.clone()).to_string());
                    walk(first, segs, seen);
                    segs.pop();
                }
            }
            _ => {}
        }
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in messages {
        let mut seen = std::collections::HashSet::new();
        walk(m, &mut Vec::new(), &mut seen);
        for p in seen {
            if counts.len() < MAX_SAMPLE_PATHS || counts.contains_key(&p) {
                *counts.entry(p).or_default() += 1;
            }
        }
    }
    let mut out: Vec<(String, usize)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Words offered by completion: the items of a flow and the words of conditions.
const KEYWORDS: &[&str] = &[
    "flow",
    "description",
    "key",
    "match",
    "initial",
    "state",
    "terminal",
    "artifact",
    "on",
    "transitions",
    "unlisted",
    "timeout",
    "after",
    "learn",
    "alert",
    "anomaly",
    "for",
    "and",
    "or",
    "not",
    "in",
    "exists",
    "glob",
    "true",
    "false",
    "null",
];

/// JSON-RPC's "invalid params" error code.
const INVALID_PARAMS: i32 = -32602;

/// LSP's "request failed" error code: a well-formed request the server refuses (a rename onto
/// a name in use, a rename where there is nothing to rename).
const REQUEST_FAILED: i32 = -32803;

struct Document {
    text: String,
    /// The last text of this document that parsed, and its AST.
    parsed: Option<(String, ast::File)>,
}

pub fn run(args: LspArgs) -> anyhow::Result<ExitCode> {
    let mut sample = match &args.sample {
        Some(p) => match super::check::read_sample(p) {
            Ok(messages) => Some((p.display().to_string(), messages)),
            Err(e) => {
                eprintln!("error: sample {e}");
                return Ok(ExitCode::Usage);
            }
        },
        None => None,
    };
    let paths = sample
        .as_ref()
        .map(|(_, m)| sample_paths(m))
        .unwrap_or_default();
    // Diagnostics run on every edit: the sample checks read its first messages only.
    if let Some((_, m)) = &mut sample {
        m.truncate(MAX_SAMPLE_CHECKED);
    }
    let learned: Option<Learned> = match &args.state_dir {
        Some(dir) => match super::model_cmd::learned_counts(dir) {
            Ok(Some(l)) => Some(l),
            Ok(None) => {
                eprintln!(
                    "error: {} holds no learned counts (snapshot.json or learned.json)",
                    dir.display()
                );
                return Ok(ExitCode::Usage);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::Usage);
            }
        },
        None => None,
    };
    let (connection, io_threads) = Connection::stdio();
    let (id, params) = connection.initialize_start()?;
    // prepareRename only for clients that say they send it (the specification's rule).
    let prepare = params["capabilities"]["textDocument"]["rename"]["prepareSupport"] == true;
    connection.initialize_finish(
        id,
        json!({
            "capabilities": {
                "textDocumentSync": 1,
                "documentFormattingProvider": true,
                "definitionProvider": true,
                "referencesProvider": true,
                "renameProvider": if prepare { json!({"prepareProvider": true}) } else { json!(true) },
                "hoverProvider": true,
                "completionProvider": {}
            },
            "serverInfo": {"name": "flowcast", "version": env!("CARGO_PKG_VERSION")}
        }),
    )?;
    let mut docs: HashMap<String, Document> = HashMap::new();
    for msg in &connection.receiver {
        match msg {
            Message::Request(req) => {
                if connection.handle_shutdown(&req)? {
                    break;
                }
                let from = ModelSource {
                    learned: learned.as_ref(),
                    service: args.service.as_deref(),
                };
                let resp = handle_request(&docs, &paths, &from, req);
                connection.sender.send(Message::Response(resp))?;
            }
            Message::Notification(n) => {
                if let Some(publish) = handle_notification(&mut docs, sample.as_ref(), n) {
                    connection.sender.send(Message::Notification(publish))?;
                }
            }
            Message::Response(_) => {}
        }
    }
    drop(connection);
    io_threads.join()?;
    Ok(ExitCode::Ok)
}

/// A sample's name and its messages.
type Sample = (String, Vec<Value>);

fn handle_notification(
    docs: &mut HashMap<String, Document>,
    sample: Option<&Sample>,
    n: Notification,
) -> Option<Notification> {
    let uri = n.params["textDocument"]["uri"].as_str()?.to_string();
    let text = match n.method.as_str() {
        "textDocument/didOpen" => n.params["textDocument"]["text"].as_str()?.to_string(),
        // Full sync: the last change holds the whole text.
        "textDocument/didChange" => n.params["contentChanges"]
            .as_array()?
            .last()?
            .get("text")?
            .as_str()?
            .to_string(),
        "textDocument/didClose" => {
            docs.remove(&uri);
            return Some(publish(&uri, Vec::new()));
        }
        _ => return None,
    };
    let parsed = match syntax::parse(0, &text) {
        Ok(f) => Some((text.clone(), f)),
        Err(_) => docs.remove(&uri).and_then(|d| d.parsed),
    };
    let diagnostics = diagnostics(&uri, &text, sample);
    docs.insert(uri.clone(), Document { text, parsed });
    Some(publish(&uri, diagnostics))
}

fn publish(uri: &str, diagnostics: Vec<Value>) -> Notification {
    Notification::new(
        "textDocument/publishDiagnostics".into(),
        json!({"uri": uri, "diagnostics": diagnostics}),
    )
}

/// `check`'s diagnostics of one document, as LSP diagnostics.
fn diagnostics(uri: &str, text: &str, sample: Option<&Sample>) -> Vec<Value> {
    let name = uri.rsplit('/').next().unwrap_or(uri).to_string();
    let mut comp = crate::model::compile_files([(name, text.as_bytes().to_vec())]);
    if let Some((name, messages)) = sample {
        crate::model::check_sample(&mut comp, name, messages);
    }
    let src = SourceFile::new("", text);
    comp.diagnostics
        .iter()
        // The document is file 0; the sample's own findings (W108: its event types no rule
        // matches) are about the sample, not this text.
        .filter(|(f, _)| *f == 0)
        .map(|(_, d)| {
            let range = d
                .span
                .map_or_else(|| range(&src, 0, 0), |s| span_range(&src, s));
            let mut message = d.message.clone();
            if let Some(h) = &d.help {
                message.push_str("\nhelp: ");
                message.push_str(h);
            }
            let related: Vec<Value> = d
                .labels
                .iter()
                .map(|l| {
                    json!({
                        "location": {"uri": uri, "range": span_range(&src, l.span)},
                        "message": l.message,
                    })
                })
                .collect();
            json!({
                "range": range,
                "severity": if d.severity == Severity::Error { 1 } else { 2 },
                "code": d.code.as_str(),
                "source": "flowcast",
                "message": message,
                "relatedInformation": related,
            })
        })
        .collect()
}

/// An LSP position (line, UTF-16 column) of a byte offset.
fn position(src: &SourceFile, offset: usize) -> Value {
    let offset = offset.min(src.text.len());
    let (line, _) = src.line_col(offset);
    let start = src.text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let column: usize = src.text[start..offset].chars().map(char::len_utf16).sum();
    json!({"line": line - 1, "character": column})
}

fn range(src: &SourceFile, start: usize, end: usize) -> Value {
    json!({"start": position(src, start), "end": position(src, end)})
}

fn span_range(src: &SourceFile, s: Span) -> Value {
    range(src, s.start as usize, s.end as usize)
}

/// The byte offset of an LSP position, clamped to the text.
fn offset(text: &str, pos: &Value) -> Option<usize> {
    let line = pos["line"].as_u64()? as usize;
    let character = pos["character"].as_u64()? as usize;
    let start = if line == 0 {
        0
    } else {
        text.match_indices('\n').nth(line - 1).map(|(i, _)| i + 1)?
    };
    let rest = &text[start..];
    let line_text = &rest[..rest.find('\n').unwrap_or(rest.len())];
    let mut units = 0;
    for (i, c) in line_text.char_indices() {
        if units >= character {
            return Some(start + i);
        }
        units += c.len_utf16();
    }
    Some(start + line_text.len())
}

fn handle_request(
    docs: &HashMap<String, Document>,
    paths: &[(String, usize)],
    from: &ModelSource,
    req: Request,
) -> Response {
    let uri = req.params["textDocument"]["uri"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let Some(doc) = docs.get(&uri) else {
        return Response::new_ok(req.id, Value::Null);
    };
    let result = match req.method.as_str() {
        "textDocument/formatting" => formatting(&doc.text),
        "textDocument/definition" => navigate(doc, &req.params, |occs, o| {
            let d = index::declaration(occs, o)?;
            Some(vec![d.span])
        })
        .map(|spans| location(doc, &uri, spans[0]))
        .unwrap_or(Value::Null),
        "textDocument/references" => {
            let with_decl = req.params["context"]["includeDeclaration"]
                .as_bool()
                .unwrap_or(true);
            navigate(doc, &req.params, |occs, o| {
                Some(
                    index::references(occs, o)
                        .filter(|x| with_decl || !x.is_declaration)
                        .map(|x| x.span)
                        .collect(),
                )
            })
            .map(|spans: Vec<Span>| {
                Value::Array(spans.into_iter().map(|s| location(doc, &uri, s)).collect())
            })
            .unwrap_or(Value::Null)
        }
        "textDocument/prepareRename" => match renamable(doc, &req.params) {
            Ok((o, _)) => {
                let src = SourceFile::new("", doc.text.as_str());
                json!({"range": span_range(&src, o.span), "placeholder": o.name})
            }
            Err(e) => return Response::new_err(req.id, REQUEST_FAILED, e),
        },
        "textDocument/rename" => {
            let new_name = req.params["newName"].as_str().unwrap_or_default();
            let (o, occs) = match renamable(doc, &req.params) {
                Ok(x) => x,
                Err(e) => return Response::new_err(req.id, REQUEST_FAILED, e),
            };
            if !is_name(new_name) {
                return Response::new_err(
                    req.id,
                    INVALID_PARAMS,
                    format!(
                        "`{new_name}` is not a {} name (letters, digits and `_`, not starting \
                         with a digit, not a reserved word)",
                        o.symbol.as_str()
                    ),
                );
            }
            let conflict = index::rename_conflict(&occs, &o, new_name).or_else(|| {
                // A flow's name is unique across the files loaded together: the other open
                // documents are the ones the server knows.
                (o.symbol == index::Symbol::Flow && o.name != new_name)
                    .then(|| {
                        docs.iter()
                            .filter(|(u, _)| **u != uri)
                            .find(|(_, d)| {
                                d.parsed.as_ref().is_some_and(|(_, f)| {
                                    f.flows.iter().any(|fl| fl.name.name == new_name)
                                })
                            })
                            .map(|(u, _)| {
                                format!(
                                    "cannot rename flow `{}` to `{new_name}`: {u} declares a \
                                     flow `{new_name}` (flow names are unique across the files \
                                     loaded together)",
                                    o.name
                                )
                            })
                    })
                    .flatten()
            });
            if let Some(e) = conflict {
                return Response::new_err(req.id, REQUEST_FAILED, e);
            }
            let src = SourceFile::new("", doc.text.as_str());
            let edits: Vec<Value> = if new_name == o.name {
                Vec::new()
            } else {
                index::references(&occs, &o)
                    .map(|x| json!({"range": span_range(&src, x.span), "newText": new_name}))
                    .collect()
            };
            json!({"changes": {uri.clone(): edits}})
        }
        "textDocument/hover" => hover(doc, &req.params, from).unwrap_or(Value::Null),
        "textDocument/completion" => completion(doc, paths),
        _ => {
            return Response::new_err(
                req.id,
                lsp_server::ErrorCode::MethodNotFound as i32,
                format!("unsupported request {}", req.method),
            )
        }
    };
    Response::new_ok(req.id, result)
}

/// A whole-document edit to the formatted text, none when it is formatted or does not parse.
fn formatting(text: &str) -> Value {
    match syntax::format(text) {
        Ok(out) if out != text => {
            let src = SourceFile::new("", text);
            json!([{"range": range(&src, 0, text.len()), "newText": out}])
        }
        Ok(_) => json!([]),
        Err(_) => Value::Null,
    }
}

/// The flow or state under the cursor, to rename, and every name of the document; an error
/// that says why when there is none.
fn renamable(
    doc: &Document,
    params: &Value,
) -> Result<(index::Occurrence, Vec<index::Occurrence>), String> {
    let Some((text, file)) = doc.parsed.as_ref().filter(|(t, _)| *t == doc.text) else {
        return Err("the document does not parse: fix the syntax error before renaming".into());
    };
    let at = offset(text, &params["position"]).ok_or("the position is not in the document")?;
    let occs = index::occurrences(file);
    match index::at(&occs, at) {
        Some(o) => Ok((o.clone(), occs)),
        None => Err("nothing to rename here: only the name of a flow or of a state (initial, state, terminal, artifact) can be renamed".into()),
    }
}

/// Runs `f` on the flow or state name under the cursor, in the last text that parsed (navigation
/// answers only when the open text is that text: positions in another would be wrong).
fn navigate<T>(
    doc: &Document,
    params: &Value,
    f: impl Fn(&[index::Occurrence], &index::Occurrence) -> Option<T>,
) -> Option<T> {
    let (text, file) = doc.parsed.as_ref()?;
    if *text != doc.text {
        return None;
    }
    let at = offset(text, &params["position"])?;
    let occs = index::occurrences(file);
    let o = index::at(&occs, at)?;
    f(&occs, o)
}

fn location(doc: &Document, uri: &str, s: Span) -> Value {
    let src = SourceFile::new("", doc.text.as_str());
    json!({"uri": uri, "range": span_range(&src, s)})
}

fn hover(doc: &Document, params: &Value, from: &ModelSource) -> Option<Value> {
    let (text, file) = doc.parsed.as_ref()?;
    if *text != doc.text {
        return None;
    }
    let at = offset(text, &params["position"])?;
    let occs = index::occurrences(file);
    let o = index::at(&occs, at)?;
    if o.symbol == index::Symbol::Flow {
        let src = SourceFile::new("", text.as_str());
        return Some(json!({
            "contents": {"kind": "markdown", "value": index::describe_flow(file, o.flow)?},
            "range": span_range(&src, o.span),
        }));
    }
    let mut value = index::describe_state(file, o.flow, &o.name)?;
    if let Some(model) = model_row(text, &file.flows[o.flow].name.name, &o.name, from) {
        value.push_str("\n\n");
        value.push_str(&model);
    }
    let src = SourceFile::new("", text.as_str());
    Some(json!({
        "contents": {"kind": "markdown", "value": value},
        "range": span_range(&src, o.span),
    }))
}

/// Where hover's model figures come from.
struct ModelSource<'a> {
    learned: Option<&'a Learned>,
    /// A running service's HTTP address (`http://127.0.0.1:9464`).
    service: Option<&'a str>,
}

/// What the model predicts from a state (FIG. 11's row): next states, the risk of each
/// artifact, the expected time left. From a running service when one is given and answers,
/// else from the open text's flow, with learned counts blended in from a state directory.
/// `None` when the flow does not compile and no service answers.
fn model_row(text: &str, flow: &str, state: &str, from: &ModelSource) -> Option<String> {
    let mut note = String::new();
    if let Some(url) = from.service {
        match service_model(url, flow) {
            Ok(table) => {
                let version = table["model_version"].as_u64().unwrap_or(0);
                return row_text(
                    &format!("live, from the service at {url}, model version {version}"),
                    &table,
                    state,
                );
            }
            Err(e) => note = format!("; the service at {url} did not answer: {e}"),
        }
    }
    let comp = crate::model::compile_files([("doc.flow".to_string(), text.as_bytes().to_vec())]);
    let compiled = comp.flows.into_iter().find(|f| f.name == flow)?;
    let mut engine = crate::engine::Engine::new(vec![compiled]);
    let source = match from.learned {
        Some((path, counts)) if engine.import_learned(counts).0 > 0 => {
            format!("learned, from {}", path.display())
        }
        Some((path, _)) => format!("a priori: {} has nothing for this flow", path.display()),
        None => "a priori".to_string(),
    };
    let table = serde_json::to_value(crate::engine::table::build(&mut engine.flows[0])).ok()?;
    row_text(&format!("{source}{note}"), &table, state)
}

/// One state's row of a model table (`flowcast model --format json`, `/api/flows/F/model`).
fn row_text(source: &str, table: &Value, state: &str) -> Option<String> {
    let row = table["states"]
        .as_array()?
        .iter()
        .find(|r| r["state"] == state)?;
    let pct = |m: &Value| {
        let mut v: Vec<(&String, f64)> = m
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, p)| p.as_f64().map(|p| (k, p)))
                    .filter(|(_, p)| *p > 0.0)
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.iter()
            .map(|(k, p)| format!("`{k}` {:.1}%", p * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!("Model ({source}):");
    let next = pct(&row["next"]);
    if !next.is_empty() {
        out.push_str(&format!("\n- next: {next}"));
    }
    let risk = pct(&row["risk"]);
    if !risk.is_empty() {
        out.push_str(&format!("\n- risk: {risk}"));
    }
    if let Some(ms) = row["expected_remaining_ms"].as_f64() {
        if ms.is_finite() && ms > 0.0 {
            out.push_str(&format!(
                "\n- expected time left: {}",
                crate::syntax::format_duration_ms(ms.round() as i64)
            ));
        }
    }
    Some(out)
}

/// A flow's model table from a running service's HTTP API (`GET /api/flows/F/model`), over a
/// plain HTTP/1.0 connection with short timeouts: a hover must not hang the editor.
fn service_model(url: &str, flow: &str) -> Result<Value, String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// addresses are supported")?;
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = host
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let timeout = std::time::Duration::from_millis(1500);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let prefix = prefix.trim_end_matches('/');
    let path = if prefix.is_empty() {
        format!("/api/flows/{flow}/model")
    } else {
        format!("/{prefix}/api/flows/{flow}/model")
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP {status} for {path}"));
    }
    serde_json::from_str(body).map_err(|e| e.to_string())
}

fn completion(doc: &Document, paths: &[(String, usize)]) -> Value {
    let mut items: Vec<Value> = KEYWORDS
        .iter()
        .map(|k| json!({"label": k, "kind": 14}))
        .collect();
    for (block, names) in [
        ("learn", crate::model::LEARN_SETTINGS),
        ("alert", crate::model::ALERT_SETTINGS),
        ("anomaly", crate::model::ANOMALY_SETTINGS),
    ] {
        for n in names {
            items
                .push(json!({"label": n, "kind": 10, "detail": format!("a setting of `{block}`")}));
        }
    }
    if let Some((_, file)) = &doc.parsed {
        let mut seen = std::collections::BTreeSet::new();
        for o in index::occurrences(file)
            .iter()
            .filter(|o| o.is_declaration && o.symbol == index::Symbol::State)
        {
            if seen.insert(o.name.clone()) {
                let detail = index::describe_state(file, o.flow, &o.name)
                    .and_then(|d| d.lines().next().map(str::to_string));
                items.push(json!({"label": o.name, "kind": 12, "detail": detail}));
            }
        }
    }
    for (p, n) in paths {
        items.push(json!({"label": p, "kind": 5, "detail": format!("in {n} sample messages")}));
    }
    Value::Array(items)
}

/// A name a flow or a state can have: an identifier that is not a reserved word.
fn is_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(
            s,
            "after"
                | "for"
                | "and"
                | "or"
                | "not"
                | "in"
                | "exists"
                | "glob"
                | "true"
                | "false"
                | "null"
        )
}
