//! `flowcast replay` and `flowcast model` through the real binary: snapshots of what a person
//! reads (alert streams, model tables), and bad input that must be counted, never fatal.

mod common;

use common::{flowcast, run_ok};
use std::io::Write;

fn replay(models: &str, input: &str, extra: &[&str]) -> (String, String) {
    let out = run_ok(
        flowcast()
            .args(["replay", "--models", models])
            .args(extra)
            .arg(input),
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn replay_of_each_example_stream() {
    for (name, models) in [
        ("patent_disk_attach", "models/patent_disk_attach.flow"),
        ("nova_instance_create", "models"),
        ("nova_volume_attach", "models"),
        ("stacktach", "models"),
    ] {
        let (stdout, stderr) = replay(
            models,
            &format!("examples/{name}/events.jsonl"),
            &["--alerts-only"],
        );
        let summary = stderr.lines().last().unwrap_or_default().to_string();
        insta::assert_snapshot!(format!("replay_{name}"), format!("{summary}\n{stdout}"));
    }
}

#[test]
fn outcomes_of_the_stacktach_operations() {
    let (stdout, _) = replay("models", "examples/stacktach/events.jsonl", &[]);
    let outcomes: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["type"] == "outcome")
        .map(|r| {
            format!(
                "{} {} {} from {} alerted={}",
                r["flow"], r["object"], r["outcome"], r["from"], r["alerted"]
            )
        })
        .collect();
    insta::assert_snapshot!(outcomes.join("\n"));
}

#[test]
fn model_tables_of_every_bundled_model() {
    for entry in std::fs::read_dir("models").unwrap() {
        let path = entry.unwrap().path();
        // models/ also holds each model's test file (`flowcast test`).
        if path.extension().is_none_or(|e| e != "flow") {
            continue;
        }
        let out = flowcast().arg("model").arg(&path).output().unwrap();
        assert!(out.status.success());
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(
            format!("model_{name}"),
            String::from_utf8(out.stdout).unwrap()
        );
    }
}

#[test]
fn graph_output() {
    for format in ["dot", "mermaid"] {
        let out = flowcast()
            .args([
                "graph",
                "models/patent_disk_attach.flow",
                "--format",
                format,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        insta::assert_snapshot!(
            format!("graph_patent_{format}"),
            String::from_utf8(out.stdout).unwrap()
        );
    }
}

#[test]
fn bad_input_is_counted_and_the_good_messages_around_it_all_processed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    let good = |et: &str, id: &str, ts: &str| {
        format!(
            r#"{{"event_type": "{et}", "timestamp": "{ts}", "payload": {{"request_id": "{id}"}}}}"#
        )
    };
    let lines = [
        good("disk.attach.request", "a", "2026-01-01 00:00:00"),
        "{not json".to_string(),
        format!(
            "{{\"event_type\": \"x\", \"pad\": \"{}\"}}",
            "y".repeat(10 << 20)
        ),
        "[1, 2, 3]".to_string(),
        r#"{"event_type": "xyz.start", "payload": {}}"#.to_string(), // missing key
        r#"{"event_type": "xyz.start", "payload": {"request_id": [1]}}"#.to_string(), // wrong type
        r#"{"event_type": 42, "payload": {"request_id": "a"}}"#.to_string(), // wrong type
        good("no.such.event", "a", "2026-01-01 00:00:01"),
        r#"{"event_type": "xyz.start", "timestamp": "yesterday", "payload": {"request_id": "a"}}"#
            .to_string(),
        r#"{"oslo.version": "2.0", "oslo.message": "{broken"}"#.to_string(),
        // Times no notification carries (they would overflow the time arithmetic).
        r#"{"event_type": "disk.attach.request", "timestamp": -1e300, "payload": {"request_id": "c"}}"#.to_string(),
        r#"{"event_type": "xyz.start", "timestamp": 1e300, "payload": {"request_id": "c"}}"#.to_string(),
        r#"{"event_type": "xyz.start", "timestamp": "1969-12-31 23:59:59", "payload": {"request_id": "c"}}"#.to_string(),
        good("xyz.start", "a", "2026-01-01 00:00:02"),
        good("disk.attach.request", "b", "2025-12-31 23:00:00"), // out of order
        good("xyz.x", "a", "2026-01-01 00:00:03"),
        good("xyz.z", "a", "2026-01-01 00:00:04"),
        good("xyz.complete", "a", "2026-01-01 00:00:05"),
        good("xyz.complete", "a", "2026-01-01 00:00:06"), // already finished
        "".to_string(),
        "   ".to_string(),
    ];
    for l in &lines {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);
    let (stdout, stderr) = replay(
        "models/patent_disk_attach.flow",
        path.to_str().unwrap(),
        &["--summary-json"],
    );
    let summary: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert!(!stderr.contains("panicked"));
    // not json, 10 MB, array, bad timestamp, broken envelope, three impossible times
    assert_eq!(summary["malformed"], 8, "{summary}");
    assert_eq!(summary["missing_key"], 2, "{summary}");
    assert_eq!(summary["unmatched"], 2, "{summary}"); // event_type 42, unknown event
    assert_eq!(summary["late"], 1, "{summary}");
    assert_eq!(summary["after_end"], 1, "{summary}");
    assert_eq!(summary["in_flight"], 1, "{summary}"); // b
                                                      // a went request -> start -> x -> z -> complete: one success outcome.
    let outcomes: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["type"] == "outcome")
        .collect();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0]["object"], "a");
    assert_eq!(outcomes[0]["outcome"], "complete");
}

#[test]
fn replay_reads_stdin() {
    use std::process::Stdio;
    let mut child = flowcast()
        .args(["replay", "--models", "models/patent_disk_attach.flow", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = std::fs::read("examples/patent_disk_attach/events.jsonl").unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("497 read"), "{stderr}");
    assert!(stderr.contains("100 outcomes"), "{stderr}");
}
