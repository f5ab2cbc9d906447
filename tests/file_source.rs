//! The file and stdin source, and replay, as an attacker feeds them: a line far over the
//! message limit is refused while it is read (not buffered whole), and SIGTERM stops a service
//! reading stdin at once, whether or not stdin ever closes.

mod common;

use common::*;
use std::io::Write as _;
use std::time::{Duration, Instant};

const FLOW: &str = r#"flow f {
    key payload.id
    initial a
    terminal b
    on "a" -> a
    on "b" -> b
}
"#;

fn models(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("models/f.flow"), FLOW).unwrap();
    dir.join("models").display().to_string()
}

/// A message line, and a 200 MB line (one JSON string field) between two good ones.
fn write_oversized_input(path: &std::path::Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        f,
        r#"{{"event_type":"a","timestamp":1767225600,"payload":{{"id":"x"}}}}"#
    )
    .unwrap();
    f.write_all(br#"{"event_type":"a","timestamp":1767225601,"payload":{"id":"big","pad":""#)
        .unwrap();
    let chunk = vec![b'z'; 1 << 20];
    for _ in 0..200 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\"}}\n").unwrap();
    writeln!(
        f,
        r#"{{"event_type":"b","timestamp":1767225602,"payload":{{"id":"x"}}}}"#
    )
    .unwrap();
}

#[test]
fn replay_refuses_an_oversized_line_while_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let models = models(dir.path());
    let input = dir.path().join("in.jsonl");
    write_oversized_input(&input);
    let out = flowcast()
        .args(["replay", "--summary-json", "--models", &models])
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(summary["malformed"], 1, "{stderr}");
    assert_eq!(summary["matched"], 2, "{stderr}");
    // The 200 MB line was never held whole: the peak stays far below it.
    let peak = summary["peak_rss_bytes"].as_u64().unwrap();
    assert!(peak < 64 << 20, "peak RSS {peak} bytes");
}

#[test]
fn the_service_refuses_an_oversized_line_while_reading_it_and_stops_on_sigterm_with_stdin_open() {
    let dir = tempfile::tempdir().unwrap();
    let models = models(dir.path());
    let input = dir.path().join("in.jsonl");
    write_oversized_input(&input);
    let state = dir.path().join("state");
    let config = format!(
        "models: {models:?}\nstate_dir: {:?}\nsource: {{ kind: file, path: \"-\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}",
        state.display().to_string()
    );
    let (svc, mut stdin) = start_with_stdin(dir.path(), &config);
    std::io::copy(&mut std::fs::File::open(&input).unwrap(), &mut stdin).unwrap();
    stdin.flush().unwrap();
    svc.wait_messages(3);
    assert_eq!(
        svc.metric("flowcast_messages_total{result=\"malformed\"}"),
        1.0
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", svc.pid())).unwrap();
    let hwm_kb: u64 = rss
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(hwm_kb < 96 * 1024, "peak RSS {hwm_kb} kB");

    // SIGTERM while stdin stays open: the service stops now, with its snapshot.
    let pid = svc.pid();
    let mut svc = svc;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = svc.try_wait() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM with stdin open:\n{}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", svc.log());
    assert!(state.join("snapshot.json").exists());
    drop(stdin);
}
