//! Forms of the same input that must mean the same thing (issue 10, item 20): a numeric key
//! written `1` or `1.0` names one object, and a UTF-8 byte order mark at the start of a line
//! is skipped rather than making the line malformed. Through the real binary.

mod common;

use common::{flowcast, run_ok};
use std::io::Write;

const FLOW: &str = r#"flow f {
    key payload.id
    initial a
    state b
    terminal done
    on "a" -> a
    on "b" -> b
    on "done" -> done
}
"#;

/// Replays `lines` against `FLOW`; returns the records and the JSON summary.
fn replay(lines: &[u8]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.flow"), FLOW).unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::File::create(&input)
        .unwrap()
        .write_all(lines)
        .unwrap();
    let out = run_ok(
        flowcast()
            .args(["replay", "--summary-json", "--models"])
            .arg(dir.path().join("f.flow"))
            .arg(&input),
    );
    let records = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let summary = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    (records, summary)
}

#[test]
fn numeric_keys_written_differently_name_one_object() {
    let input = br#"{"event_type": "a", "timestamp": 1000, "payload": {"id": 1}}
{"event_type": "b", "timestamp": 1001, "payload": {"id": 1.0}}
{"event_type": "done", "timestamp": 1002, "payload": {"id": 1e0}}
{"event_type": "a", "timestamp": 1003, "payload": {"id": 2.5}}
{"event_type": "done", "timestamp": 1004, "payload": {"id": 2.50}}
"#;
    let (records, summary) = replay(input);
    let outcomes: Vec<String> = records
        .iter()
        .filter(|r| r["type"] == "outcome")
        .map(|r| format!("{} {} from {}", r["object"], r["outcome"], r["from"]))
        .collect();
    assert_eq!(
        outcomes,
        [r#""1" "done" from "b""#, r#""2.5" "done" from "a""#],
        "{records:?}"
    );
    assert_eq!(summary["transitions"], 3, "{summary}");
    assert_eq!(summary["joined_midway"], 0, "{summary}");
    assert_eq!(summary["in_flight"], 0, "{summary}");
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_line_is_skipped() {
    let bom = "\u{feff}";
    let input = format!(
        "{bom}{{\"event_type\": \"a\", \"timestamp\": 1000, \"payload\": {{\"id\": \"x\"}}}}\n\
         {bom}{{\"event_type\": \"b\", \"timestamp\": 1001, \"payload\": {{\"id\": \"x\"}}}}\n\
         {bom}\n\
         {{\"event_type\": \"done\", \"timestamp\": 1002, \"payload\": {{\"id\": \"x\"}}}}\n"
    );
    let (records, summary) = replay(input.as_bytes());
    assert_eq!(summary["malformed"], 0, "{summary}");
    assert_eq!(summary["matched"], 3, "{summary}");
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "outcome" && r["object"] == "x" && r["from"] == "b"),
        "{records:?}"
    );
}

#[test]
fn a_byte_order_mark_anywhere_else_is_still_malformed() {
    let input =
        "{\"event_type\": \"a\", \"timestamp\": 1000, \"payload\": {\"id\": \"x\"}}\u{feff}\n";
    let (_, summary) = replay(input.as_bytes());
    assert_eq!(summary["malformed"], 1, "{summary}");
}
