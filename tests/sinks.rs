//! Sinks under faults: an endpoint that never answers, one that rejects some records, a NATS
//! server whose `max_payload` is smaller than some records, and records still queued at
//! shutdown. A sink gives a record up with a counted reason and moves on; it is never blocked
//! for good by one record, and no record leaves a queue uncounted.

mod common;

use common::*;
use std::io::{Read, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

const VOLUME: &str = "examples/nova_volume_attach/events.jsonl";

/// The service reading stdin, on event time (so that its records are replay's).
fn stdin_config(extra: &str) -> String {
    format!(
        "models: models\nsource: {{ kind: file, path: \"-\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}\n{extra}"
    )
}

/// What a test receiver does with one request body: answer with this status, or never answer.
type Answer = fn(&str) -> Option<u16>;

/// A real HTTP receiver on loopback, one thread per connection, that records every request
/// body it reads (answered or not) and answers as `answer` says.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || loop {
                    // One request: the head, then Content-Length bytes of body.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 65536];
                    let body = loop {
                        let n = conn.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break body.to_string();
                            }
                        }
                    };
                    seen.lock().unwrap().push(body.clone());
                    match answer(&body) {
                        Some(status) => {
                            let _ =
                                write!(conn, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                        }
                        None => {
                            // Hold the connection open and never answer.
                            let _ = conn.read(&mut chunk);
                            return;
                        }
                    }
                });
            }
        });
        Receiver { port, bodies }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn received(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }
}

fn replayed(input: &Path) -> Vec<serde_json::Value> {
    replay_records("models", input)
}

/// A drop series exists from its first drop on: absent means none yet (the request itself
/// must still succeed, which `metric_opt` checks).
fn dropped(svc: &Service, sink: &str, reason: &str) -> f64 {
    svc.metric_opt(&format!(
        "flowcast_sink_dropped_total{{sink=\"{sink}\",reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn a_webhook_that_never_answers_times_out_each_record_once_and_the_sink_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("part.jsonl");
    part(Path::new(VOLUME), 0..40, &input);
    let expected = replayed(&input);
    assert!(expected.len() >= 10, "{}", expected.len());
    let hook = Receiver::start(|_| None);
    let (svc, mut stdin) = start_with_stdin(
        dir.path(),
        &stdin_config(&format!(
            "delivery: {{ timeout_ms: 200ms, max_retries: 3 }}\nsinks: [{{ kind: webhook, url: \"{}\" }}]",
            hook.url()
        )),
    );
    stdin.write_all(&std::fs::read(&input).unwrap()).unwrap();
    stdin.flush().unwrap();
    svc.wait_until("every record timed out", || {
        dropped(&svc, "webhook", "timeout") as usize == expected.len()
    });
    // Each record reached the endpoint exactly once: a timeout is not retried, because the
    // receiver may have taken it.
    assert_eq!(hook.received(), expected);
    // Nothing was sent: the series has not appeared (the request itself succeeded).
    assert_eq!(
        svc.metric_opt("flowcast_sink_records_total{sink=\"webhook\"}"),
        None
    );
    drop(stdin);
    svc.stop();
}

#[test]
fn a_webhook_that_rejects_some_records_drops_them_and_delivers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let expected = replayed(Path::new(VOLUME));
    // Alerts are refused for good (400), resolutions fail for a while (503), the rest is taken.
    let hook = Receiver::start(|body| {
        Some(if body.contains("\"type\":\"alert\"") {
            400
        } else if body.contains("\"type\":\"resolved\"") {
            503
        } else {
            200
        })
    });
    let (svc, mut stdin) = start_with_stdin(
        dir.path(),
        &stdin_config(&format!(
            "delivery: {{ max_retries: 2 }}\nsinks: [{{ kind: webhook, url: \"{}\" }}]",
            hook.url()
        )),
    );
    stdin.write_all(&std::fs::read(VOLUME).unwrap()).unwrap();
    stdin.flush().unwrap();
    let count = |t: &str| expected.iter().filter(|r| r["type"] == t).count();
    let (alerts, resolved, outcomes) = (count("alert"), count("resolved"), count("outcome"));
    assert_eq!((alerts, resolved, outcomes), (5, 5, 100));
    svc.wait_until("every outcome delivered", || {
        svc.metric_opt("flowcast_sink_records_total{sink=\"webhook\"}")
            .unwrap_or(0.0) as usize
            == outcomes
    });
    svc.wait_until("the resolutions given up", || {
        dropped(&svc, "webhook", "retries_exhausted") as usize == resolved
    });
    assert_eq!(dropped(&svc, "webhook", "rejected") as usize, alerts);
    // A 400 is tried once, a 503 once and twice more, each in the order of the records.
    let mut want = Vec::new();
    for r in &expected {
        let times = match r["type"].as_str() {
            Some("resolved") => 3,
            _ => 1,
        };
        want.extend(std::iter::repeat_n(r.clone(), times));
    }
    assert_eq!(hook.received(), want);
    assert_eq!(
        svc.metric("flowcast_sink_failures_total{sink=\"webhook\"}") as usize,
        alerts + 3 * resolved
    );
    drop(stdin);
    svc.stop();
}

/// A nats-server with a small `max_payload`, on a free loopback port.
struct SmallPayloadNats {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SmallPayloadNats {
    fn start(max_payload: usize) -> SmallPayloadNats {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{port}\nmax_payload: {max_payload}\n"),
        )
        .unwrap();
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is not installed");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        SmallPayloadNats {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for SmallPayloadNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_record_over_the_nats_max_payload_is_dropped_and_the_rest_are_published() {
    const MAX: usize = 470;
    let nats = SmallPayloadNats::start(MAX);
    let dir = tempfile::tempdir().unwrap();
    let expected = replayed(Path::new(VOLUME));
    let size = |r: &serde_json::Value| serde_json::to_vec(r).unwrap().len();
    // Every alert is over the limit and every other record under it (the split the test needs).
    assert!(expected
        .iter()
        .all(|r| (r["type"] == "alert") == (size(r) > MAX)));
    let fits: Vec<serde_json::Value> = expected
        .iter()
        .filter(|r| size(r) <= MAX)
        .cloned()
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let (_client, mut sub) = rt.block_on(async {
        let c = async_nats::connect(nats.url()).await.unwrap();
        let sub = c.subscribe("flowcast.alerts.>").await.unwrap();
        c.flush().await.unwrap();
        (c, sub)
    });
    let (svc, mut stdin) = start_with_stdin(
        dir.path(),
        &stdin_config(&format!(
            "nats: {{ url: \"{}\" }}\nsinks: [{{ kind: nats }}]",
            nats.url()
        )),
    );
    stdin.write_all(&std::fs::read(VOLUME).unwrap()).unwrap();
    stdin.flush().unwrap();
    let got: Vec<serde_json::Value> = rt.block_on(async {
        use futures::StreamExt;
        let mut got = Vec::new();
        while got.len() < fits.len() {
            let m = tokio::time::timeout(std::time::Duration::from_secs(30), sub.next())
                .await
                .expect("the NATS sink stopped publishing")
                .unwrap();
            got.push(serde_json::from_slice(&m.payload).unwrap());
        }
        got
    });
    assert_eq!(got, fits);
    svc.wait_until("the alerts counted as rejected", || {
        dropped(&svc, "nats", "rejected") == 5.0
    });
    drop(stdin);
    svc.stop();
}

#[test]
fn records_still_queued_at_shutdown_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let expected = replayed(Path::new(VOLUME));
    let hook = Receiver::start(|_| None);
    let (svc, mut stdin) = start_with_stdin(
        dir.path(),
        &stdin_config(&format!(
            "delivery: {{ timeout_ms: 1h }}\nsinks: [{{ kind: webhook, url: \"{}\" }}]",
            hook.url()
        )),
    );
    stdin.write_all(&std::fs::read(VOLUME).unwrap()).unwrap();
    svc.wait_until("the first record at the endpoint", || {
        !hook.received().is_empty()
    });
    // The end of the input ends the service: the one record in hand and the rest of the queue
    // are discarded after the drain limit, and counted.
    drop(stdin);
    svc.stop();
    let log = std::fs::read_to_string(svc_stderr(dir.path())).unwrap();
    assert!(
        log.contains(&format!("sink=webhook records={}", expected.len())),
        "{log}"
    );
}

/// The log of the one service started in `dir`.
fn svc_stderr(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("stderr-"))
        })
        .unwrap()
}
