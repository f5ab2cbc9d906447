//! Control work under a backlog, against the real binary: while hundreds of thousands of
//! messages wait on stdin, queries are answered and the snapshot timer fires before the
//! backlog has drained; a burst of snapshot requests is merged into a few snapshots instead of
//! stalling the engine for one each.

mod common;

use common::*;
use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::path::Path;

const FLOW: &str = r#"flow t {
    key payload.id
    initial a
    terminal c
    on "a" -> a
    on "c" -> c
}
"#;

/// `n` messages, each opening a new object (all stay in flight: a large state to snapshot).
fn backlog(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 48);
    for i in 0..n {
        let _ = writeln!(out, r#"{{"event_type":"a","payload":{{"id":"k{i}"}}}}"#);
    }
    out
}

fn start(dir: &Path, interval: &str) -> (Service, std::process::ChildStdin) {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("t.flow"), FLOW).unwrap();
    let config = format!(
        "models: {:?}\nstate_dir: {:?}\nsnapshot_interval_ms: {interval}\nsource: {{ kind: file, path: \"-\" }}\nsinks: []\nwatch: false",
        models.display().to_string(),
        dir.join("state").display().to_string(),
    );
    start_with_stdin(dir, &config)
}

/// Writes the backlog on a thread that keeps stdin open afterwards (the service lives on).
fn feed(
    mut stdin: std::process::ChildStdin,
    bytes: Vec<u8>,
) -> std::thread::JoinHandle<std::process::ChildStdin> {
    std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
        let _ = stdin.flush();
        stdin
    })
}

/// A GET that waits for its answer however long it takes: (status, body).
fn get_blocking(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn queries_and_the_snapshot_timer_are_served_while_a_backlog_drains() {
    // An optimised build applies these at about half a million a second: the timer fires
    // every 100 ms, a dozen times over the backlog.
    const N: usize = 600_000;
    let dir = tempfile::tempdir().unwrap();
    let (svc, stdin) = start(dir.path(), "100ms");
    let writer = feed(stdin, backlog(N));
    svc.wait_until("the backlog being applied", || svc.messages() >= 1000.0);

    // A query sent now is answered between batches, not after the last one.
    let (status, body) = get_blocking(svc.http_port, "/api/flows");
    let applied = svc.messages() as usize;
    assert_eq!(status, 200, "{body}");
    assert!(
        applied < N,
        "/api/flows was answered only after the whole backlog ({applied} messages)"
    );

    // The snapshot timer fires during the backlog too.
    let mut applied_at_snapshot = 0;
    svc.wait_until("a snapshot", || {
        let done = svc.metric("flowcast_snapshots_total") >= 1.0;
        applied_at_snapshot = svc.messages() as usize;
        done
    });
    assert!(
        applied_at_snapshot < N,
        "the first snapshot came only after the whole backlog"
    );
    svc.wait_messages(N);
    let stdin = writer.join().unwrap();
    drop(stdin);
    svc.stop();
}

#[test]
fn a_burst_of_snapshot_requests_is_merged_and_does_not_stall_the_engine() {
    const N: usize = 30_000;
    const REQUESTS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let (svc, stdin) = start(dir.path(), "1h");
    let writer = feed(stdin, backlog(N));
    svc.wait_messages(N);
    let before = svc.metric("flowcast_snapshots_total");

    // 300 requests at once, as a careless script would send them.
    let port = svc.http_port;
    let gate = std::sync::Arc::new(std::sync::Barrier::new(REQUESTS));
    let posts: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.wait();
                http(port, "POST", "/-/snapshot").0
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.join().unwrap(), 202);
    }
    // Every request reached the engine before this query (control is read first), so by the
    // time it is answered the burst has been merged; one by one, it would wait for them all.
    let (status, _) = get_blocking(port, "/api/flows");
    assert_eq!(status, 200);
    let written = svc.metric("flowcast_snapshots_total") - before;
    assert!(
        written <= 30.0,
        "{written} snapshots were written for {REQUESTS} requests before a query was answered"
    );
    // And the requests are answered by a snapshot.
    svc.wait_until("a snapshot after the burst", || {
        svc.metric("flowcast_snapshots_total") > before
    });
    let stdin = writer.join().unwrap();
    drop(stdin);
    svc.stop();
}
