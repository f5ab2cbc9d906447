//! The live service against a real nats-server (started by each test on a free loopback port,
//! JetStream storing in a temporary directory): same answers as replay, nothing lost across a
//! server restart or a `kill -9`, hot reload that survives a broken file, garbage counted.

mod common;

use common::*;
use std::path::Path;

const VOLUME: &str = "examples/nova_volume_attach/events.jsonl";
const CREATE: &str = "examples/nova_instance_create/events.jsonl";

fn lines(path: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Event-time clock, so that the live service and replay see the same time.
const EVENT_CLOCK: &str = "clock: { mode: event, idle_after_ms: \"0\" }";

/// The bundled models, fed by a core NATS subscription to `notifications.>`, on event time.
fn core_nats_config(nats: &NatsServer) -> String {
    format!(
        "models: models\nsource: {{ kind: nats }}\nnats: {{ url: \"{}\" }}\n{EVENT_CLOCK}",
        nats.url()
    )
}

#[test]
fn core_nats_gives_the_same_records_as_replay() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(
        dir.path(),
        &format!(
            "models: models\nsource: {{ kind: nats, subjects: [\"notifications.>\"] }}\nnats: {{ url: \"{}\" }}\n{EVENT_CLOCK}",
            nats.url()
        ),
    );
    publish(&nats, Path::new(VOLUME), "notifications.nova", false);
    svc.wait_messages(lines(VOLUME));
    let live = svc.stop();
    let replayed = replay_records("models", Path::new(VOLUME));
    assert_eq!(live.len(), replayed.len());
    assert_eq!(live, replayed);
    assert!(live.iter().filter(|r| r["type"] == "alert").count() == 5);
}

#[test]
fn jetstream_loses_nothing_when_nats_server_restarts() {
    let mut nats = NatsServer::start(true);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "models: models\nsource: {{ kind: jetstream, stream: NOTIFICATIONS, subjects: [\"notifications.>\"] }}\nnats: {{ url: \"{}\" }}\n{EVENT_CLOCK}",
        nats.url()
    );
    let svc = Service::start(dir.path(), &config);
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let total = lines(CREATE);
    let first = part(Path::new(CREATE), 0..total / 2, &a);
    part(Path::new(CREATE), total / 2..total, &b);
    publish(&nats, &a, "notifications.nova", true);
    svc.wait_messages(first);
    nats.restart();
    svc.wait_until("reconnection", || {
        svc.metric_opt("flowcast_nats_events_total{event=\"connected\"}")
            .is_some_and(|v| v >= 1.0)
    });
    publish(&nats, &b, "notifications.nova", true);
    svc.wait_messages(total);
    let live = svc.stop();
    assert_eq!(live, replay_records("models", Path::new(CREATE)));
}

#[test]
fn kill_9_mid_stream_counts_every_message_exactly_once() {
    let nats = NatsServer::start(true);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = format!(
        "models: models\nstate_dir: {:?}\nsnapshot_interval_ms: 1h\nsource: {{ kind: jetstream, stream: NOTIFICATIONS, subjects: [\"notifications.>\"], ack_wait_ms: 5s }}\nnats: {{ url: \"{}\" }}\n{EVENT_CLOCK}",
        state.display().to_string(),
        nats.url()
    );
    let total = lines(CREATE);
    let parts: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("p{i}.jsonl")))
        .collect();
    let n0 = part(Path::new(CREATE), 0..total / 3, &parts[0]);
    let n1 = part(Path::new(CREATE), total / 3..2 * total / 3, &parts[1]);
    part(Path::new(CREATE), 2 * total / 3..total, &parts[2]);

    let svc = Service::start(dir.path(), &config);
    publish(&nats, &parts[0], "notifications.nova", true);
    svc.wait_messages(n0);
    // A snapshot holds the first third...
    assert_eq!(http(svc.http_port, "POST", "/-/snapshot").0, 202);
    svc.wait_until("the snapshot", || {
        svc.metric("flowcast_snapshots_total") >= 1.0
    });
    // ...the second third is applied and acknowledged, but in no snapshot, when the process dies.
    publish(&nats, &parts[1], "notifications.nova", true);
    svc.wait_messages(n0 + n1);
    svc.kill9();
    publish(&nats, &parts[2], "notifications.nova", true);

    let svc = Service::start(dir.path(), &config);
    svc.wait_messages(total);
    // The second third was read again from the stream (acknowledged, but in no snapshot).
    assert!(svc.log().contains("Catching up"), "{}", svc.log());
    assert!(svc.log().contains("Restored the snapshot"), "{}", svc.log());
    // Wait until the server has nothing left to deliver: every message acknowledged (the
    // service acknowledges after applying), none pending or awaiting an ack. Then a snapshot
    // request, answered by the engine task between batches, makes sure every batch already
    // handed over is applied. Only then is the count final: a duplicate cannot arrive later.
    svc.wait_until("every message acknowledged", || {
        let info = nats.consumer_info("NOTIFICATIONS", "flowcast");
        info["ack_floor"]["stream_seq"].as_u64() == Some(total as u64)
            && info["num_pending"] == 0
            && info["num_ack_pending"] == 0
    });
    let snapshots = svc.metric("flowcast_snapshots_total");
    assert_eq!(http(svc.http_port, "POST", "/-/snapshot").0, 202);
    svc.wait_until("the snapshot after the last ack", || {
        svc.metric("flowcast_snapshots_total") > snapshots
    });
    assert_eq!(
        svc.messages() as usize,
        total,
        "every message counted exactly once"
    );
    let (_, model) = http(
        svc.http_port,
        "GET",
        "/api/flows/nova_instance_create/model",
    );
    let (_, metrics) = http(svc.http_port, "GET", "/metrics");
    assert!(
        metrics
            .contains("flowcast_model_member_weight{flow=\"nova_instance_create\",member=\"h1\"}"),
        "{metrics}"
    );
    svc.stop();
    // The learned counts are those of one uninterrupted replay.
    let learned = dir.path().join("replayed");
    let out = flowcast()
        .args(["replay", "--models", "models", "--state-dir"])
        .arg(&learned)
        .arg(CREATE)
        .output()
        .unwrap();
    assert!(out.status.success());
    let expected = flowcast()
        .args([
            "model",
            "models/nova_instance_create.flow",
            "--format",
            "json",
            "--state-dir",
        ])
        .arg(&learned)
        .output()
        .unwrap();
    let expected: serde_json::Value = serde_json::from_slice(&expected.stdout).unwrap();
    let live: serde_json::Value = serde_json::from_str(&model).unwrap();
    assert_eq!(learned_transitions(&live), learned_transitions(&expected));
    assert!(learned_transitions(&live).iter().map(|t| t.2).sum::<f64>() > 400.0);
    // The self-tuning model's weights too: restored from the snapshot, then learned on, they
    // are those of the uninterrupted replay.
    assert_eq!(live["model"], "auto");
    assert_eq!(live["transitions_scored"], expected["transitions_scored"]);
    assert!(live["transitions_scored"].as_u64().unwrap() > 400);
    assert_eq!(live["members"], expected["members"]);
}

#[test]
fn a_broken_flow_saved_during_a_run_keeps_the_old_model_until_fixed() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let flow_path = models.join("attach.flow");
    let good = std::fs::read_to_string("models/nova_volume_attach.flow").unwrap();
    std::fs::write(&flow_path, &good).unwrap();
    let svc = Service::start(
        dir.path(),
        &format!(
            "models: {:?}\nsource: {{ kind: nats }}\nnats: {{ url: \"{}\" }}\n{EVENT_CLOCK}",
            models.display().to_string(),
            nats.url()
        ),
    );
    let total = lines(VOLUME);
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let na = part(Path::new(VOLUME), 0..70, &a);
    let nb = part(Path::new(VOLUME), 70..140, &b);
    part(Path::new(VOLUME), 140..total, &c);
    publish(&nats, &a, "notifications.nova", false);
    svc.wait_messages(na);
    let observed = || -> f64 {
        let (_, m) = http(svc.http_port, "GET", "/api/flows/nova_volume_attach/model");
        serde_json::from_str::<serde_json::Value>(&m).unwrap()["observed_total"]
            .as_f64()
            .unwrap()
    };
    let learned = observed();
    assert!(learned > 20.0);

    // An editor saves a broken file: the running flows stay, the error is reported.
    std::fs::write(
        &flow_path,
        good.replace("terminal attached", "terminal attached attached"),
    )
    .unwrap();
    svc.wait_until("the failed reload", || {
        svc.metric("flowcast_reload_success") == 0.0
    });
    assert!(
        svc.log().contains("F001"),
        "the diagnostics are logged:\n{}",
        svc.log()
    );
    publish(&nats, &b, "notifications.nova", false);
    svc.wait_messages(na + nb);
    assert!(
        observed() > learned,
        "the old model keeps serving and learning"
    );

    // Fixed (with a changed threshold): live again, learned counts kept.
    let before_fix = observed();
    let fixed = good.replace("threshold 0.30", "threshold 0.35");
    let tmp = models.join(".attach.flow.swp");
    std::fs::write(&tmp, &fixed).unwrap();
    std::fs::rename(&tmp, &flow_path).unwrap(); // save by rename, as vim does
    svc.wait_until("the successful reload", || {
        svc.metric("flowcast_reload_success") == 1.0
    });
    assert_eq!(observed(), before_fix, "learned counts survive the reload");
    publish(&nats, &c, "notifications.nova", false);
    svc.wait_messages(total);

    // A file added is loaded; a file removed takes its flows with it; learning survives both.
    let learned_all = observed();
    let flow_names = || -> Vec<String> {
        let (_, body) = http(svc.http_port, "GET", "/api/flows");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    };
    std::fs::copy("models/patent_disk_attach.flow", models.join("patent.flow")).unwrap();
    svc.wait_until("the added flow", || {
        flow_names().contains(&"patent_disk_attach".to_string())
    });
    std::fs::remove_file(models.join("patent.flow")).unwrap();
    svc.wait_until("the removed flow", || {
        flow_names() == ["nova_volume_attach"]
    });
    assert_eq!(observed(), learned_all);

    let records = svc.stop();
    assert_eq!(
        records.iter().filter(|r| r["type"] == "outcome").count(),
        100
    );
}

#[test]
fn garbage_on_the_subject_is_counted_and_the_service_goes_on() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &core_nats_config(&nats));
    let garbage = dir.path().join("garbage.jsonl");
    let good = std::fs::read_to_string(VOLUME).unwrap();
    let mut text = String::new();
    text.push_str("not json at all\n");
    text.push_str(&format!(
        "{{\"event_type\": \"x\", \"pad\": \"{}\"}}\n",
        "y".repeat(10 << 20)
    ));
    text.push_str("{\"event_type\": 7, \"payload\": [1, 2]}\n");
    text.push_str("{\"event_type\": \"instance.volume_attach.start\", \"payload\": {\"nova_object.data\": {\"volume_id\": {\"x\": 1}}}}\n");
    text.push_str("\u{1F4A5}\n");
    text.push_str(&good);
    std::fs::write(&garbage, text).unwrap();
    publish(&nats, &garbage, "notifications.nova", false);
    let expected = 5 + lines(VOLUME);
    svc.wait_messages(expected);
    assert_eq!(
        svc.metric("flowcast_messages_total{result=\"malformed\"}"),
        3.0
    );
    assert_eq!(
        svc.metric("flowcast_messages_total{result=\"missing_key\"}"),
        1.0
    );
    let records = svc.stop();
    assert_eq!(
        records.iter().filter(|r| r["type"] == "outcome").count(),
        100
    );
}

#[test]
fn every_sink_delivers_and_a_failing_one_retries_without_blocking_the_intake() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let webhook = Capture::start(3); // down for its first three requests
    let alertmanager = Capture::start(0);
    let svc = Service::start(
        dir.path(),
        &format!(
            "models: models\nsource: {{ kind: nats }}\nnats: {{ url: \"{}\" }}\n{EVENT_CLOCK}\nsinks:\n  - kind: nats\n  - kind: webhook\n    url: {}/hook\n  - kind: alertmanager\n    url: {}\n",
            nats.url(),
            webhook.url(),
            alertmanager.url()
        ),
    );
    // A subscriber on the NATS sink's subjects.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let mut sub = rt.block_on(async {
        let c = async_nats::connect(nats.url()).await.unwrap();
        let sub = c.subscribe("flowcast.alerts.>").await.unwrap();
        c.flush().await.unwrap();
        (c, sub)
    });
    publish(&nats, Path::new(VOLUME), "notifications.nova", false);
    // The intake is not held up by the failing webhook.
    svc.wait_messages(lines(VOLUME));
    svc.wait_until("webhook deliveries", || webhook.received().len() == 110);
    svc.wait_until("alertmanager deliveries", || {
        alertmanager.received().len() == 10
    });
    let failures = svc.metric("flowcast_sink_failures_total{sink=\"webhook\"}");
    assert_eq!(failures, 3.0);
    let on_nats: Vec<(String, serde_json::Value)> = rt.block_on(async {
        use futures::StreamExt;
        let mut got = Vec::new();
        while got.len() < 110 {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), sub.1.next())
                .await
                .unwrap()
                .unwrap();
            got.push((
                m.subject.to_string(),
                serde_json::from_slice(&m.payload).unwrap(),
            ));
        }
        got
    });
    let replayed = replay_records("models", Path::new(VOLUME));
    svc.stop();
    // NATS and webhook: every record, in order (the webhook after its retries).
    assert!(on_nats
        .iter()
        .all(|(s, _)| s == "flowcast.alerts.nova_volume_attach"));
    assert_eq!(
        on_nats.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        replayed
    );
    let hooks = webhook.received();
    assert!(hooks.iter().all(|(p, _)| p == "/hook"));
    assert_eq!(
        hooks.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        replayed
    );
    // Alertmanager: 5 alerts, each then resolved with the same labels and an end time.
    let am = alertmanager.received();
    assert!(am.iter().all(|(p, _)| p == "/api/v2/alerts"));
    let firing: Vec<&serde_json::Value> = am
        .iter()
        .map(|(_, v)| &v[0])
        .filter(|a| a.get("endsAt").is_none())
        .collect();
    let resolved: Vec<&serde_json::Value> = am
        .iter()
        .map(|(_, v)| &v[0])
        .filter(|a| a.get("endsAt").is_some())
        .collect();
    assert_eq!((firing.len(), resolved.len()), (5, 5));
    for f in &firing {
        assert_eq!(f["labels"]["alertname"], "FlowcastFailureLikely");
        assert_eq!(f["labels"]["flow"], "nova_volume_attach");
        assert!(f["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("likely"));
        assert!(resolved.iter().any(|r| r["labels"] == f["labels"]));
    }
}

#[test]
fn nats_credentials_are_used_and_a_wrong_password_stops_the_start() {
    // A server that requires a user and password.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        format!("listen: 127.0.0.1:{port}\nauthorization {{ user: flow, password: s3cret }}\n"),
    )
    .unwrap();
    let mut server = std::process::Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let url = format!("nats://127.0.0.1:{port}");
    let ok = Service::start(
        dir.path(),
        &format!("models: models\nsource: {{ kind: nats }}\nnats: {{ url: \"{url}\", user: flow, password: s3cret }}"),
    );
    assert_eq!(ok.metric("flowcast_nats_connected"), 1.0);
    ok.stop();
    std::fs::write(
        dir.path().join("bad.yaml"),
        format!("models: models\nsource: {{ kind: nats }}\nnats: {{ url: \"{url}\", user: flow, password: wrong }}\nhttp: {{ listen: \"\" }}"),
    )
    .unwrap();
    let out = flowcast()
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("bad.yaml"))
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("authorization") || stderr.contains("auth"),
        "{stderr}"
    );
}

#[test]
fn run_check_config_reports_unknown_keys_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.yaml");
    std::fs::write(
        &conf,
        "models: models\nsinks:\n  - kind: stdout\n    colour: blue\n",
    )
    .unwrap();
    let out = flowcast()
        .args(["run", "--check-config", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("c.yaml:"), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
    std::fs::write(&conf, "models: models\n").unwrap();
    let out = flowcast()
        .args(["run", "--check-config", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn http_api_answers_about_flows_and_objects_and_sighup_reloads() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &core_nats_config(&nats));
    // The first 40 messages of the volume-attach stream leave some attaches in flight.
    let part_file = dir.path().join("p.jsonl");
    let n = part(Path::new(VOLUME), 0..41, &part_file);
    publish(&nats, &part_file, "notifications.nova", false);
    svc.wait_messages(n);
    assert_eq!(
        http(svc.http_port, "GET", "/healthz"),
        (200, "ok\n".to_string())
    );
    let (status, flows) = http(svc.http_port, "GET", "/api/flows");
    assert_eq!(status, 200);
    let flows: serde_json::Value = serde_json::from_str(&flows).unwrap();
    let names: Vec<&str> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"nova_volume_attach"), "{names:?}");
    assert_eq!(
        http(svc.http_port, "GET", "/api/flows/no_such_flow/model").0,
        404
    );
    // An object in flight: the last attach started.
    let last_start = std::fs::read_to_string(&part_file)
        .unwrap()
        .lines()
        .rfind(|l| l.contains("volume_attach.start"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    let volume = last_start["payload"]["nova_object.data"]["volume_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = http(svc.http_port, "GET", &format!("/api/objects/{volume}"));
    assert_eq!(status, 200, "{body}");
    let obj: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(obj["flows"][0]["state"], "attaching");
    assert!(obj["flows"][0]["risk"]["attach_error"].as_f64().unwrap() > 0.0);
    assert_eq!(
        http(svc.http_port, "GET", "/api/objects/not-a-known-object").0,
        404
    );
    // SIGHUP reloads the flow files.
    let before = svc.metric("flowcast_reloads_total{result=\"success\"}");
    let pid = svc.pid();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    svc.wait_until("the SIGHUP reload", || {
        svc.metric("flowcast_reloads_total{result=\"success\"}") > before
    });
    svc.stop();
}

/// Starts a nats-server with `auth` as its authorization block; returns it and its URL.
fn auth_server(dir: &Path, auth: &str) -> (std::process::Child, String) {
    let port = free_port();
    let conf = dir.join(format!("auth-{port}.conf"));
    std::fs::write(&conf, format!("listen: 127.0.0.1:{port}\n{auth}\n")).unwrap();
    let server = std::process::Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (server, format!("nats://127.0.0.1:{port}"))
}

#[test]
fn token_and_nkey_credentials_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = auth_server(dir.path(), "authorization { token: \"s3cr3t-token\" }");
    let svc = Service::start(
        dir.path(),
        &format!("models: models\nsource: {{ kind: nats }}\nnats: {{ url: \"{url}\", token: \"s3cr3t-token\" }}"),
    );
    assert_eq!(svc.metric("flowcast_nats_connected"), 1.0);
    svc.stop();
    let _ = server.kill();
    let _ = server.wait();

    let user = nkeys::KeyPair::new_user();
    let (mut server, url) = auth_server(
        dir.path(),
        &format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
            user.public_key()
        ),
    );
    let seed = user.seed().unwrap();
    let svc = Service::start(
        dir.path(),
        &format!("models: models\nsource: {{ kind: nats }}\nnats: {{ url: \"{url}\", nkey: \"{seed}\" }}"),
    );
    assert_eq!(svc.metric("flowcast_nats_connected"), 1.0);
    svc.stop();
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn tls_with_a_private_ca() {
    // A CA and a server certificate for 127.0.0.1, made with openssl for this test.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    let tls = format!(
        "tls {{ cert_file: {:?}, key_file: {:?} }}",
        d.join("server.pem").display().to_string(),
        d.join("server.key").display().to_string()
    );
    let (mut server, url) = auth_server(d, &tls);
    let url = url.replace("nats://", "tls://");
    let svc = Service::start(
        d,
        &format!(
            "models: models\nsource: {{ kind: nats }}\nnats: {{ url: \"{url}\", tls_ca: {:?} }}",
            d.join("ca.pem").display().to_string()
        ),
    );
    assert_eq!(svc.metric("flowcast_nats_connected"), 1.0);
    svc.stop();
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn the_feature_model_refits_off_the_engine_task_and_is_kept_in_the_state_directory() {
    // A flow with `features on`: at night, after `intake`, `review` is followed by `batch`;
    // otherwise by `call`. The service refits on a thread of its own and installs the weights
    // when they are ready; the transitions it fits on are kept in the snapshot.
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("w.flow"), FEATURE_FLOW).unwrap();
    let mut events = Vec::new();
    let line = |et: &str, id: &str, t: f64| {
        format!(r#"{{"event_type":"{et}","timestamp":{t},"payload":{{"id":"{id}"}}}}"#)
    };
    for d in 0..100 {
        let day = 1_767_225_600.0 + d as f64 * 86_400.0;
        for (hour, first, last) in [
            (2.0, "intake", "batch"),
            (2.0, "rework", "call"),
            (14.0, "intake", "call"),
            (14.0, "rework", "call"),
        ] {
            let id = format!("{d}-{hour}-{first}");
            let t = day + hour * 3600.0;
            events.push((t, line(first, &id, t)));
            events.push((t + 60.0, line("review", &id, t + 60.0)));
            events.push((t + 120.0, line(last, &id, t + 120.0)));
        }
    }
    let t = 1_767_225_600.0 + 110.0 * 86_400.0 + 2.0 * 3600.0;
    events.push((t, line("intake", "probe", t)));
    events.push((t + 60.0, line("review", "probe", t + 60.0)));
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let input = dir.path().join("w.jsonl");
    let text: Vec<String> = events.into_iter().map(|(_, l)| l).collect();
    std::fs::write(&input, text.join("\n") + "\n").unwrap();
    let state = dir.path().join("state");
    let svc = Service::start(
        dir.path(),
        &format!(
            "models: {models:?}\nstate_dir: {state:?}\nsource: {{ kind: nats }}\nnats: {{ url: \"{}\" }}\n{EVENT_CLOCK}",
            nats.url()
        ),
    );
    publish(&nats, &input, "notifications.w", false);
    svc.wait_messages(text.len());
    // The weights arrive when the background fit is done; each query looks for them.
    let batch = || {
        let (status, body) = http(svc.http_port, "GET", "/api/objects/probe");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["flows"][0]["next"]["batch"].as_f64().unwrap_or(0.0)
    };
    // The first-order row says batch 1 time in 4.
    svc.wait_until("the fitted weights", || batch() > 0.5);
    // Exported for operators: the transitions kept and the states with fitted weights.
    svc.wait_until("the feature model metrics", || {
        svc.metric_opt("flowcast_feature_model_fitted_states{flow=\"w\"}")
            .is_some_and(|v| v >= 1.0)
    });
    assert_eq!(
        svc.metric("flowcast_feature_model_transitions{flow=\"w\"}") as usize,
        100 * 4 * 2 + 1
    );
    svc.stop();
    let snap: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("snapshot.json")).unwrap())
            .unwrap();
    let text = snap.to_string();
    assert!(text.contains("feature_examples"), "{text:.2000}");
    let n = text.matches("\"at_ms\"").count();
    assert_eq!(
        n,
        100 * 4 * 2 + 1,
        "two transitions per case and the probe's first"
    );
}
