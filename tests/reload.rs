//! Hot reload against the real binary and real files: a file saved in two writes keeps what
//! its flows learned, the watch survives its directory being replaced (`rm -rf`, a Kubernetes
//! ConfigMap's link swap), hidden files are not loaded, and an alert whose flow or state
//! disappears is resolved (Alertmanager gets its `endsAt`). Waits poll the HTTP API.

mod common;

use common::*;
use std::io::Write as _;
use std::path::Path;

/// A metric's value; a failed request or a missing series fails the test (never a silent 0).
fn metric(svc: &Service, name: &str) -> f64 {
    let (status, body) = http(svc.http_port, "GET", "/metrics");
    assert_eq!(status, 200, "GET /metrics");
    body.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
}

const RELOADS_OK: &str = "flowcast_reloads_total{result=\"success\"}";

/// The flows the service runs, by name (sorted), with (observed transitions to 0.001, in flight).
fn flows(svc: &Service) -> Vec<(String, f64, u64)> {
    let (status, body) = http(svc.http_port, "GET", "/api/flows");
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<(String, f64, u64)> = v["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                (f["observed_transitions"].as_f64().unwrap() * 1000.0).round() / 1000.0,
                f["in_flight"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn names(svc: &Service) -> Vec<String> {
    flows(svc).into_iter().map(|f| f.0).collect()
}

/// A flow named `name` whose messages are `<name>.start` and `<name>.end`.
fn simple_flow(name: &str) -> String {
    format!(
        "flow {name} {{\n    key payload.id\n    initial s\n    terminal done\n    \
         on \"{name}.start\" -> s\n    on \"{name}.end\" -> done\n}}\n"
    )
}

fn service_config(models: &Path, nats: &NatsServer, extra: &str) -> String {
    format!(
        "models: {:?}\nsource: {{ kind: nats }}\nnats: {{ url: \"{}\" }}\n{extra}",
        models.display().to_string(),
        nats.url()
    )
}

/// Publishes `(event_type, id)` messages (no timestamp: they take the arrival time).
fn send(nats: &NatsServer, dir: &Path, msgs: &[(&str, String)]) {
    let path = dir.join("batch.jsonl");
    let text: String = msgs
        .iter()
        .map(|(e, id)| {
            format!(
                "{}\n",
                serde_json::json!({"event_type": e, "payload": {"id": id}})
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    publish(nats, &path, "notifications.test", false);
}

#[test]
fn a_two_flow_file_saved_in_place_in_two_writes_keeps_what_both_flows_learned() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let file = models.join("two.flow");
    let (a, b) = (simple_flow("a"), simple_flow("b"));
    std::fs::write(&file, format!("{a}{b}")).unwrap();
    let svc = Service::start(dir.path(), &service_config(&models, &nats, ""));

    let mut msgs = Vec::new();
    for i in 0..10 {
        for f in ["a", "b"] {
            msgs.push((
                if f == "a" { "a.start" } else { "b.start" },
                format!("{f}{i}"),
            ));
            msgs.push((if f == "a" { "a.end" } else { "b.end" }, format!("{f}{i}")));
        }
    }
    for i in 0..3 {
        msgs.push(("b.start", format!("open{i}")));
    }
    send(&nats, dir.path(), &msgs);
    svc.wait_messages(msgs.len());
    let before = flows(&svc);
    assert_eq!(
        before,
        [("a".to_string(), 10.0, 0), ("b".to_string(), 10.0, 3)]
    );

    // The editor truncates the file and writes it back in two writes; the first is reloaded
    // before the second lands.
    let reloads = metric(&svc, RELOADS_OK);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap();
    f.write_all(a.as_bytes()).unwrap();
    f.flush().unwrap();
    svc.wait_until("the reload of the first write", || {
        metric(&svc, RELOADS_OK) > reloads && names(&svc) == ["a"]
    });
    f.write_all(b.as_bytes()).unwrap();
    drop(f);
    svc.wait_until("the reload of the second write", || {
        names(&svc) == ["a", "b"]
    });
    assert_eq!(
        flows(&svc),
        before,
        "flow b came back with its learned counts and its objects"
    );
    let log = svc.log();
    assert!(
        log.contains("removed=[\"b\"]") && log.contains("objects_retired=3"),
        "the first reload says what it set aside:\n{log}"
    );
    assert!(
        log.contains("returned=[\"b\"]"),
        "the second says what came back:\n{log}"
    );
    assert!(
        !log.contains("objects_dropped=3"),
        "nothing was dropped:\n{log}"
    );
    // The objects carried back finish normally.
    send(&nats, dir.path(), &[("b.end", "open0".to_string())]);
    svc.wait_until("the object's end", || {
        flows(&svc).get(1).is_some_and(|f| f.1 == 11.0 && f.2 == 2)
    });
    svc.stop();
}

/// A flow with an alert at once on entering `s` or `t` (90% risk of `boom`).
fn alerting_flow(name: &str, s: &str) -> String {
    format!(
        "flow {name} {{\n    key payload.id\n    initial {s}, t\n    terminal ok\n    artifact boom\n    \
         on \"c.s\" -> {s}\n    on \"c.t\" -> t\n    on \"c.ok\" -> ok\n    on \"c.boom\" -> boom\n    \
         transitions {{ {s} -> ok 1  {s} -> boom 9  t -> ok 1  t -> boom 9 }}\n    \
         alert {{ threshold 0.5 }}\n}}\n"
    )
}

/// The Alertmanager posts about `object`: (firing ones, ones with `endsAt`).
fn posts_about(am: &Capture, object: &str) -> (usize, Vec<serde_json::Value>) {
    let mut firing = 0;
    let mut ended = Vec::new();
    for (_, body) in am.received() {
        for alert in body.as_array().into_iter().flatten() {
            if alert["labels"]["object"] != object {
                continue;
            }
            if alert.get("endsAt").is_some() {
                ended.push(alert.clone());
            } else {
                firing += 1;
            }
        }
    }
    (firing, ended)
}

/// The service with flow `c` (from `alerting_flow`) in `models`, its records on stdout and
/// alerts at the Alertmanager stand-in `am`.
fn alerting_service(dir: &Path, nats: &NatsServer, am: &Capture, extra: &str) -> Service {
    let models = dir.join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("c.flow"), alerting_flow("c", "s")).unwrap();
    Service::start(
        dir,
        &service_config(
            &models,
            nats,
            &format!(
                "{extra}\nsinks:\n  - kind: stdout\n  - kind: alertmanager\n    url: {}\n",
                am.url()
            ),
        ),
    )
}

fn resolved(svc: &Service, object: &str, reason: &str) -> bool {
    svc.records()
        .iter()
        .any(|r| r["type"] == "resolved" && r["object"] == object && r["reason"] == reason)
}

#[test]
fn an_alert_whose_state_is_renamed_is_resolved_in_every_sink() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let am = Capture::start(0);
    let svc = alerting_service(dir.path(), &nats, &am, "");
    send(&nats, dir.path(), &[("c.s", "x1".to_string())]);
    svc.wait_until("x1's alert", || posts_about(&am, "x1").0 > 0);
    // The state the alert is about is renamed: the alert ends at once.
    let file = dir.path().join("models").join("c.flow");
    std::fs::write(&file, alerting_flow("c", "s2")).unwrap();
    svc.wait_until("x1's resolution at Alertmanager", || {
        !posts_about(&am, "x1").1.is_empty()
    });
    let ended = &posts_about(&am, "x1").1[0];
    assert_eq!(ended["labels"]["flow"], "c");
    assert_eq!(ended["labels"]["state"], "s");
    assert!(resolved(&svc, "x1", "state_removed"), "{:?}", svc.records());
    let log = svc.log();
    assert!(log.contains("objects_dropped=1"), "{log}");
    svc.stop();
}

#[test]
fn an_alert_whose_flow_is_renamed_is_resolved_when_its_grace_ends() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let am = Capture::start(0);
    let svc = alerting_service(dir.path(), &nats, &am, "reload_grace_ms: 1s");
    send(&nats, dir.path(), &[("c.t", "x2".to_string())]);
    svc.wait_until("x2's alert", || posts_about(&am, "x2").0 > 0);
    let file = dir.path().join("models").join("c.flow");
    std::fs::write(&file, alerting_flow("d", "s")).unwrap();
    svc.wait_until("the renamed flow", || names(&svc) == ["d"]);
    svc.wait_until("x2's resolution at Alertmanager", || {
        !posts_about(&am, "x2").1.is_empty()
    });
    let ended = &posts_about(&am, "x2").1[0];
    assert_eq!(ended["labels"]["flow"], "c");
    assert!(resolved(&svc, "x2", "flow_removed"), "{:?}", svc.records());
    let log = svc.log();
    assert!(
        log.contains("removed=[\"c\"]") && log.contains("objects_retired=1"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("Dropped the flows") && l.contains("objects_dropped=1")),
        "{log}"
    );
    svc.stop();
}

#[test]
fn the_watch_survives_the_models_directory_being_removed_and_recreated() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("a.flow"), simple_flow("a")).unwrap();
    let svc = Service::start(dir.path(), &service_config(&models, &nats, ""));
    assert_eq!(names(&svc), ["a"]);

    std::fs::remove_dir_all(&models).unwrap();
    svc.wait_until("the failed reload of the missing directory", || {
        metric(&svc, "flowcast_reload_success") == 0.0
    });
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("b.flow"), simple_flow("b")).unwrap();
    svc.wait_until("the new directory's flows", || names(&svc) == ["b"]);
    // The watch is on the new directory: later edits reload too.
    std::fs::write(models.join("c.flow"), simple_flow("c")).unwrap();
    svc.wait_until("a flow added to the new directory", || {
        names(&svc) == ["b", "c"]
    });
    assert_eq!(metric(&svc, "flowcast_reload_success"), 1.0);
    svc.stop();
}

/// The layout Kubernetes gives a mounted ConfigMap: the files live in a hidden, versioned
/// directory; `..data` links to the current one; each visible name links through `..data`.
/// An update writes a new versioned directory, swaps `..data` atomically (a rename) and
/// removes the old directory.
fn configmap_version(models: &Path, version: &str, text: &str) {
    let v = models.join(version);
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("t.flow"), text).unwrap();
    let tmp = models.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, models.join("..data")).unwrap();
    if !models.join("t.flow").exists() {
        std::os::unix::fs::symlink("..data/t.flow", models.join("t.flow")).unwrap();
    }
}

#[test]
fn a_configmap_mount_loads_each_file_once_and_reloads_when_its_link_is_swapped() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    configmap_version(&models, "..2024_01_01", &simple_flow("a"));
    let svc = Service::start(dir.path(), &service_config(&models, &nats, ""));
    assert_eq!(names(&svc), ["a"]);

    for (old, new, flow) in [
        ("..2024_01_01", "..2024_01_02", "b"),
        ("..2024_01_02", "..2024_01_03", "c"),
    ] {
        configmap_version(&models, new, &simple_flow(flow));
        std::fs::remove_dir_all(models.join(old)).unwrap();
        svc.wait_until(&format!("the update to {new}"), || names(&svc) == [flow]);
    }
    assert_eq!(metric(&svc, "flowcast_reload_success"), 1.0);
    svc.stop();
}

#[test]
fn editor_lock_files_and_hidden_folders_are_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join(".git")).unwrap();
    std::fs::write(models.join("t.flow"), simple_flow("t")).unwrap();
    // Emacs's lock file: a dangling link named `.#t.flow`.
    std::os::unix::fs::symlink("user@host.1234:1700000000", models.join(".#t.flow")).unwrap();
    // Vim's swap file and a hidden folder's leftovers.
    std::fs::write(models.join(".t.flow.swp"), b"\0\x01binary").unwrap();
    std::fs::write(models.join(".git").join("old.flow"), simple_flow("t")).unwrap();
    let out = run_ok(flowcast().arg("check").arg(&models));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains(".#t.flow") && !err.contains("old.flow"),
        "{err}"
    );
    let out = run_ok(
        flowcast()
            .args(["run", "--check-config", "--models"])
            .arg(&models),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 flow(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_snapshot_restored_under_another_flow_set_keeps_the_missing_flow_for_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (models, state) = (dir.path().join("models"), dir.path().join("state"));
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("a.flow"), simple_flow("a")).unwrap();
    std::fs::write(models.join("b.flow"), simple_flow("b")).unwrap();
    let input = dir.path().join("in.jsonl");
    let mut text = String::new();
    for i in 0..10 {
        for e in ["b.start", "b.end"] {
            text += &format!(
                "{}\n",
                serde_json::json!({"event_type": e, "payload": {"id": i}})
            );
        }
    }
    for i in 0..3 {
        text += &format!(
            "{}\n",
            serde_json::json!({"event_type": "b.start", "payload": {"id": format!("open{i}")}})
        );
    }
    std::fs::write(&input, text).unwrap();
    // The service over a file: it stops at the end and leaves its snapshot.
    let run = |input: &Path| {
        let out = run_ok(
            flowcast()
                .env("RUST_LOG", "info")
                .args(["run", "--http", "", "--models"])
                .arg(&models)
                .arg("--state-dir")
                .arg(&state)
                .arg("--input")
                .arg(input),
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    run(&input);

    // Restarted without flow b: b is set aside (and says so), not silently lost.
    std::fs::remove_file(models.join("b.flow")).unwrap();
    let log = run(Path::new("/dev/null"));
    let restored = log
        .lines()
        .find(|l| l.contains("Restored the snapshot"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        restored.contains("retired=3") && restored.contains("flows_removed=[\"b\"]"),
        "{restored}"
    );
    assert!(restored.contains("dropped=0"), "{restored}");

    // Restarted with b again (within its grace): its counts and objects are back.
    std::fs::write(models.join("b.flow"), simple_flow("b")).unwrap();
    let log = run(Path::new("/dev/null"));
    let restored = log
        .lines()
        .find(|l| l.contains("Restored the snapshot"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(restored.contains("objects=3"), "{restored}");
    let out = run_ok(
        flowcast()
            .args(["model", "--format", "json", "--state-dir"])
            .arg(&state)
            .arg(models.join("b.flow")),
    );
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        table["observed_total"].as_f64().unwrap() > 9.9,
        "b kept what it learned: {table}"
    );
}

#[test]
fn a_models_link_swapped_to_another_directory_is_followed() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v1.join("a.flow"), simple_flow("a")).unwrap();
    std::fs::write(v2.join("b.flow"), simple_flow("b")).unwrap();
    let models = dir.path().join("models");
    std::os::unix::fs::symlink("v1", &models).unwrap();
    let svc = Service::start(dir.path(), &service_config(&models, &nats, ""));
    assert_eq!(names(&svc), ["a"]);

    // Swapped atomically, as deployment tools do: a new link renamed over the old one.
    let tmp = dir.path().join("models.tmp");
    std::os::unix::fs::symlink("v2", &tmp).unwrap();
    std::fs::rename(&tmp, &models).unwrap();
    svc.wait_until("the swapped directory's flows", || names(&svc) == ["b"]);
    // Edits in the directory the link now points to reload too.
    std::fs::write(v2.join("c.flow"), simple_flow("c")).unwrap();
    svc.wait_until("an edit behind the new link", || names(&svc) == ["b", "c"]);
    svc.stop();
}
