//! The `amqp` source against a real RabbitMQ (Debian's `rabbitmq-server`, started here on free
//! loopback ports) and OpenStack's own oslo.messaging (PyPI, in the virtualenv that
//! `scripts/test.sh` makes): notifications published exactly as nova publishes them give the
//! records of a replay of the same notifications; another consumer's queue on the same
//! exchange still gets every message; bad bodies are counted, acknowledged (or dead-lettered)
//! and the intake goes on; a refused login stops the start with the broker's reason.
//!
//! The broker is shared by the tests of this binary; each test uses its own exchange and
//! queues, so that none receives another's messages.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use std::path::Path;
use std::sync::OnceLock;

fn broker() -> &'static RabbitMq {
    static B: OnceLock<RabbitMq> = OnceLock::new();
    B.get_or_init(RabbitMq::start_tls)
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// A durable queue bound to `exchange` (a topic exchange, as oslo declares it) with `key`:
/// another consumer of the notifications, as ceilometer is.
fn bind_queue(url: &str, exchange: &str, queue: &str, key: &str) {
    block_on(async {
        let (conn, ch) = channel(url).await;
        ch.exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        conn.close(200, "done".into()).await.unwrap();
    })
}

/// Every message waiting in `queue`, taken (acknowledged) one by one.
fn drain(url: &str, queue: &str) -> Vec<Vec<u8>> {
    block_on(async {
        let (conn, ch) = channel(url).await;
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(m.delivery.data.clone());
        }
        conn.close(200, "done".into()).await.unwrap();
        out
    })
}

/// Messages ready in `queue` (not counting those delivered and not yet acknowledged).
fn ready(url: &str, queue: &str) -> u32 {
    block_on(async {
        let (conn, ch) = channel(url).await;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        conn.close(200, "done".into()).await.unwrap();
        q.message_count()
    })
}

fn publish_raw(url: &str, exchange: &str, key: &str, bodies: &[Vec<u8>]) {
    block_on(async {
        let (conn, ch) = channel(url).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for b in bodies {
            ch.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                b,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        conn.close(200, "done".into()).await.unwrap();
    })
}

fn config(dir: &Path, source: &str) -> String {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    format!(
        "models: {:?}\nstate_dir: {:?}\nsnapshot_interval_ms: 1s\n\
         source: {source}\nclock: {{ mode: event, idle_after_ms: \"0\" }}\n\
         http: {{ listen: \"127.0.0.1:0\" }}\n",
        models.display().to_string(),
        dir.join("state").display().to_string(),
    )
}

/// Runs `flowcast run` with `config` written in `dir`, which must fail to start: its stderr.
fn failed_start(dir: &Path, config: &str) -> String {
    let conf = dir.join("flowcast.yaml");
    std::fs::write(&conf, config).unwrap();
    let out = flowcast()
        .args(["run", "--config"])
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "flowcast started:\n{err}");
    err
}

fn without_emitted_at(records: &[serde_json::Value]) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some(o) = r.as_object_mut() {
                o.remove("emitted_at");
            }
            r.to_string()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn oslo_messaging_notifications_give_the_records_of_a_replay_and_ceilometer_keeps_its_copy() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    // Ceilometer's queue exists first, on the exchange nova publishes to.
    bind_queue(&b.url(), "nova_oslo", "ceilometer_oslo", "notifications.*");
    let source = format!(
        "{{ kind: amqp, url: {:?}, exchanges: [nova_oslo], queue: flowcast_oslo }}",
        b.url()
    );
    let svc = Service::start(dir.path(), &config(dir.path(), &source));
    assert_eq!(svc.metric("flowcast_amqp_connected"), 1.0);

    // nova's way: oslo.messaging's Notifier, driver messagingv2, topics ['notifications'].
    let events =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nova_volume_attach/events.jsonl");
    let out = std::process::Command::new(oslo_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oslo/notify.py"))
        .arg(format!("rabbit://guest:guest@127.0.0.1:{}/", b.port))
        .arg("nova_oslo")
        .arg(&events)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oslo.messaging failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(sent, 203);
    svc.wait_messages(sent);
    let live = svc.stop();

    // What ceilometer got: every message, as oslo sent it (the messagingv2 envelope).
    let copies = drain(&b.url(), "ceilometer_oslo");
    assert_eq!(
        copies.len(),
        sent,
        "the other consumer's queue lost messages"
    );
    let first: serde_json::Value = serde_json::from_slice(&copies[0]).unwrap();
    assert_eq!(first["oslo.version"], "2.0", "{first}");
    let inner: serde_json::Value =
        serde_json::from_str(first["oslo.message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["publisher_id"], "nova-compute:compute");

    // The same notifications replayed from a file give the same records (message ids and all).
    let file = dir.path().join("copies.jsonl");
    let mut text = Vec::new();
    for c in &copies {
        text.extend_from_slice(c);
        text.push(b'\n');
    }
    std::fs::write(&file, text).unwrap();
    let out = flowcast()
        .args(["replay", "--models", "models"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(without_emitted_at(&live), without_emitted_at(&replayed));
    // The timeline is the notifications' own (oslo's `timestamp`), not the time of arrival.
    let alerts: Vec<&serde_json::Value> = live.iter().filter(|r| r["type"] == "alert").collect();
    assert!(!alerts.is_empty(), "the example has failing attaches");
    assert!(
        alerts
            .iter()
            .all(|a| a["at"].as_str().unwrap().starts_with("2026-11-03")),
        "{alerts:?}"
    );
    assert_eq!(
        ready(&b.url(), "flowcast_oslo"),
        0,
        "everything acknowledged"
    );
}

#[test]
fn bad_bodies_are_counted_dead_lettered_and_the_intake_goes_on() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    bind_queue(&b.url(), "nova_bad", "ceilometer_bad", "notifications.*");
    // The dead-letter exchange and a queue that collects what is rejected to it.
    bind_queue(&b.url(), "flowcast_dlx", "dead_letters", "#");
    let source = format!(
        "{{ kind: amqp, url: {:?}, exchanges: [nova_bad], queue: flowcast_bad, dead_letter_exchange: flowcast_dlx }}",
        b.url()
    );
    let svc = Service::start(dir.path(), &config(dir.path(), &source));
    let good = |i: usize, ty: &str| {
        serde_json::json!({
            "oslo.version": "2.0",
            "oslo.message": serde_json::json!({
                "event_type": ty,
                "timestamp": "2026-11-03 10:00:00.000000",
                "message_id": format!("m-{i}"),
                "payload": {"nova_object.data": {"volume_id": format!("v{i}"), "uuid": format!("i{i}")}},
            }).to_string(),
        })
        .to_string()
        .into_bytes()
    };
    let mut bodies = Vec::new();
    for i in 0..20 {
        bodies.push(good(i, "instance.volume_attach.start"));
        match i % 4 {
            0 => bodies.push(b"not json at all".to_vec()),
            1 => bodies.push(vec![0xff, 0xfe, 0x00, 0x01]),
            2 => bodies.push(br#"{"oslo.message": 3}"#.to_vec()),
            _ => bodies.push(br#"{"event_type": "x", "timestamp": "soon"}"#.to_vec()),
        }
    }
    // Over the 4 MiB message limit (RabbitMQ takes up to 128 MB): refused unparsed.
    let mut big = br#"{"event_type": "instance.volume_attach.start", "payload": ""#.to_vec();
    big.resize(5 << 20, b'x');
    big.extend_from_slice(br#""}"#);
    bodies.push(big);
    publish_raw(&b.url(), "nova_bad", "notifications.info", &bodies);
    svc.wait_messages(bodies.len());
    assert_eq!(
        svc.metric("flowcast_messages_total{result=\"malformed\"}"),
        21.0
    );
    // After the garbage, good messages still go through.
    publish_raw(
        &b.url(),
        "nova_bad",
        "notifications.info",
        &[good(100, "instance.volume_attach.start")],
    );
    svc.wait_messages(bodies.len() + 1);
    svc.stop();
    assert_eq!(ready(&b.url(), "flowcast_bad"), 0, "nothing requeued");
    // The broker routes dead letters on its own time: wait for them (at most 10 s).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ready(&b.url(), "dead_letters") < 21 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let dead = drain(&b.url(), "dead_letters");
    assert_eq!(
        dead.len(),
        21,
        "each bad body rejected to the dead-letter exchange once"
    );
    assert!(dead.iter().any(|d| d == b"not json at all"));
}

#[test]
fn a_refused_login_or_an_unknown_vhost_stops_the_start_with_the_brokers_reason() {
    let b = broker();
    for (url, expect) in [
        (
            format!("amqp://guest:wrong@127.0.0.1:{}/%2F", b.port),
            "ACCESS_REFUSED",
        ),
        (
            format!("amqp://guest:guest@127.0.0.1:{}/nowhere", b.port),
            "nowhere",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let err = failed_start(
            dir.path(),
            &config(
                dir.path(),
                &format!("{{ kind: amqp, url: {url:?}, exchanges: [nova_login] }}"),
            ),
        );
        assert!(
            err.contains("connecting to RabbitMQ") && err.contains(expect),
            "no reason `{expect}` in:\n{err}"
        );
    }
}

#[test]
fn amqp_settings_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for (source, expect) in [
        ("{ kind: amqp, prefetch: 0 }", "`prefetch` is at least 1"),
        (
            "{ kind: amqp, prefetch: 500, dedup_window: 10 }",
            "`dedup_window` (10) is at least `prefetch` (500)",
        ),
        ("{ kind: amqp, url: \"http://x\" }", "starts with `amqp://`"),
        (
            "{ kind: amqp, subjects: [a] }",
            "`subjects` is not a setting of an `amqp` source",
        ),
        ("{ kind: amqp, queue_type: stream }", "queue_type"),
        ("{ kind: amqp, exchanges: [] }", "`exchanges`"),
    ] {
        let err = failed_start(dir.path(), &config(dir.path(), source));
        assert!(err.contains(expect), "{source}: no `{expect}` in:\n{err}");
    }
}

#[test]
fn amqps_with_a_private_ca_into_a_quorum_queue_with_limits() {
    let b = broker();
    let tls = b.tls_port.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("amqps://guest:guest@127.0.0.1:{tls}/%2F");
    // Without the CA the broker's certificate is not trusted: the start fails and says why.
    let err = failed_start(
        dir.path(),
        &config(
            dir.path(),
            &format!("{{ kind: amqp, url: {url:?}, exchanges: [nova_tls], queue: flowcast_tls }}"),
        ),
    );
    assert!(err.contains("connecting to RabbitMQ"), "{err}");

    let source = format!(
        "{{ kind: amqp, url: {url:?}, tls_ca: {:?}, exchanges: [nova_tls], queue: flowcast_tls, \
         queue_type: quorum, message_ttl_ms: 1h, max_length: 100000, prefetch: 100, dedup_window: 1000 }}",
        b.ca().display().to_string()
    );
    let svc = Service::start(dir.path(), &config(dir.path(), &source));
    let events =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nova_volume_attach/events.jsonl");
    let out = flowcast()
        .arg("publish")
        .arg(&events)
        .args(["--amqp", &b.url(), "--exchange", "nova_tls"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    svc.wait_messages(203);
    assert_eq!(
        svc.metric("flowcast_messages_total{result=\"malformed\"}"),
        0.0
    );
    svc.stop();
    assert_eq!(ready(&b.url(), "flowcast_tls"), 0);
}

#[test]
fn without_a_state_directory_messages_are_acknowledged_once_applied() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let svc = Service::start(
        dir.path(),
        &format!(
            "models: {:?}\nsource: {{ kind: amqp, url: {:?}, exchanges: [nova_nostate], queue: flowcast_nostate }}\n\
             clock: {{ mode: event, idle_after_ms: \"0\" }}\n",
            models.display().to_string(),
            b.url()
        ),
    );
    let events =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nova_volume_attach/events.jsonl");
    let out = flowcast()
        .arg("publish")
        .arg(&events)
        .args(["--amqp", &b.url(), "--exchange", "nova_nostate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    svc.wait_messages(203);
    // Acknowledged as applied: a SIGKILL now leaves nothing for the broker to send again
    // (it puts back what its consumer had not acknowledged).
    std::thread::sleep(std::time::Duration::from_millis(300));
    svc.kill9();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(ready(&b.url(), "flowcast_nostate"), 0, "messages came back");
}
