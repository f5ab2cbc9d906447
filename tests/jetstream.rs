//! The JetStream source when its stream or consumer changes under it: a stream deleted and
//! created again (before a restart, or while running) is read from its start, never skipped as
//! redeliveries; with `create: false` a deletion ends the service with an error, not exit 0.
//! Each test starts its own nats-server on a free loopback port.

mod common;

use common::*;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

const FLOW: &str = r#"flow js {
    key payload.id
    initial a
    terminal c
    on "a" -> a
    on "c" -> c
}
"#;

/// `n` messages, `prefix` naming the objects, two steps each.
fn write_messages(path: &Path, prefix: &str, objects: usize) -> usize {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..objects {
        for (k, ty) in ["a", "c"].iter().enumerate() {
            writeln!(
                out,
                r#"{{"event_type":"{ty}","timestamp":{},"payload":{{"id":"{prefix}-{i}"}}}}"#,
                1_767_225_600 + i * 2 + k
            )
            .unwrap();
        }
    }
    objects * 2
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn delete_stream(url: &str, name: &str) {
    block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        js.delete_stream(name).await.unwrap();
    });
}

fn create_stream(url: &str, name: &str, subject: &str) {
    block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            ..Default::default()
        })
        .await
        .unwrap();
    });
}

/// The durable consumer flowcast reads, made by hand (for `create: false`).
fn create_durable(url: &str) {
    block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let stream = js.get_stream("EVENTS").await.unwrap();
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("flowcast".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
    });
}

struct Setup {
    dir: tempfile::TempDir,
    nats: NatsServer,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("models")).unwrap();
    std::fs::write(dir.path().join("models/js.flow"), FLOW).unwrap();
    Setup {
        dir,
        nats: NatsServer::start(true),
    }
}

impl Setup {
    fn config(&self, create: bool) -> String {
        format!(
            "models: {:?}\nstate_dir: {:?}\nsnapshot_interval_ms: 1h\n\
             source: {{ kind: jetstream, stream: EVENTS, subjects: [\"events.>\"], create: {create} }}\n\
             nats: {{ url: \"{}\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}",
            self.dir.path().join("models").display().to_string(),
            self.dir.path().join("state").display().to_string(),
            self.nats.url()
        )
    }

    fn publish(&self, prefix: &str, objects: usize) -> usize {
        let file = self.dir.path().join(format!("{prefix}.jsonl"));
        let n = write_messages(&file, prefix, objects);
        publish(&self.nats, &file, "events.x", true);
        n
    }
}

#[test]
fn a_stream_recreated_between_runs_is_read_from_its_start() {
    let s = setup();
    let svc = Service::start(s.dir.path(), &s.config(true));
    let first = s.publish("old", 300);
    svc.wait_messages(first);
    svc.stop();

    delete_stream(&s.nats.url(), "EVENTS");
    create_stream(&s.nats.url(), "EVENTS", "events.>");
    let second = s.publish("new", 15);
    assert!(
        second < first,
        "the new stream ends before the saved position"
    );

    let svc = Service::start(s.dir.path(), &s.config(true));
    svc.wait_messages(first + second);
    assert_eq!(svc.metric("flowcast_stream_resets_total"), 1.0);
    assert_eq!(svc.metric("flowcast_redeliveries_skipped_total"), 0.0);
    assert!(
        svc.log()
            .contains("is not the one the saved position belongs to"),
        "{}",
        svc.log()
    );
    svc.stop();
    let snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.dir.path().join("state/snapshot.json")).unwrap())
            .unwrap();
    assert_eq!(
        snap["stats"]["matched"].as_u64(),
        Some((first + second) as u64)
    );
    assert_eq!(snap["source_position"].as_u64(), Some(second as u64));
}

#[test]
fn a_stream_deleted_while_running_is_created_again_and_read() {
    let s = setup();
    let svc = Service::start(s.dir.path(), &s.config(true));
    let first = s.publish("old", 200);
    svc.wait_messages(first);
    delete_stream(&s.nats.url(), "EVENTS");
    // The service notices and creates the stream and its consumer again.
    svc.wait_until("the stream created again", || {
        svc.metric("flowcast_stream_resets_total") >= 1.0
    });
    let second = s.publish("new", 15);
    svc.wait_messages(first + second);
    assert_eq!(svc.metric("flowcast_redeliveries_skipped_total"), 0.0);
    svc.stop();
}

#[test]
fn without_create_a_deleted_stream_stops_the_service_with_an_error() {
    let s = setup();
    create_stream(&s.nats.url(), "EVENTS", "events.>");
    // The consumer must exist too when flowcast may not create it.
    create_durable(&s.nats.url());
    let mut svc = Service::start(s.dir.path(), &s.config(false));
    let first = s.publish("old", 50);
    svc.wait_messages(first);
    delete_stream(&s.nats.url(), "EVENTS");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = svc.try_wait() {
            break st;
        }
        assert!(Instant::now() < deadline, "still running:\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "exit status {status:?}");
    let log = svc.log();
    assert!(log.contains("deleted"), "{log}");
    // The state it had is saved.
    let snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.dir.path().join("state/snapshot.json")).unwrap())
            .unwrap();
    assert_eq!(snap["stats"]["matched"].as_u64(), Some(first as u64));
}

#[test]
fn a_server_down_for_seconds_is_waited_for_not_taken_for_a_deleted_stream() {
    let mut s = setup();
    create_stream(&s.nats.url(), "EVENTS", "events.>");
    create_durable(&s.nats.url());
    // `create: false`: only a real deletion may stop the service, not a server that is away.
    let mut svc = Service::start(s.dir.path(), &s.config(false));
    let first = s.publish("old", 50);
    svc.wait_messages(first);
    s.nats.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(svc.try_wait().is_none(), "exited:\n{}", svc.log());
    s.nats.respawn();
    let second = s.publish("new", 50);
    svc.wait_messages(first + second);
    assert!(svc.try_wait().is_none(), "exited:\n{}", svc.log());
    svc.stop();
}
