//! Memory is bounded in bytes by what is in flight (issue 10, item 6), measured on the real
//! binary: `replay` fed generated input at the volume of the reports, its peak resident memory
//! (`VmHWM`, which `--summary-json` reports as `peak_rss_bytes`) asserted against a bound in
//! bytes. Also the key length limit: a longer key makes the message malformed, with a reason.

mod common;

use common::flowcast;
use std::io::Write;
use std::process::Stdio;

const MB: u64 = 1 << 20;

/// Runs `replay --summary-json` with `extra` flags on the flow `flow`, writing `lines(write)`
/// to its stdin from a thread of its own; returns the summary.
fn replay_stream(
    flow: &str,
    extra: &[&str],
    lines: impl FnOnce(&mut dyn Write) + Send + 'static,
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.flow"), flow).unwrap();
    let mut child = flowcast()
        .args(["replay", "--summary-json", "--alerts-only", "--models"])
        .arg(dir.path().join("f.flow"))
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, stdin);
        lines(&mut w);
        w.flush().unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_str(stderr.lines().last().unwrap()).unwrap()
}

fn peak(summary: &serde_json::Value) -> u64 {
    summary["peak_rss_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no peak_rss_bytes in {summary}"))
}

const BOUNCE: &str = r#"flow f {
    key payload.id
    initial a
    state b
    terminal done
    artifact stuck
    on "a" -> a
    on "b" -> b
    on "done" -> done
    timeout a after 1h -> stuck
    timeout b after 1h -> stuck
}
"#;

#[test]
fn one_object_bouncing_between_two_states_stays_small() {
    // 400,000 moves of one object with a 1,000-byte key, a millisecond apart: each move sets a
    // timeout timer, due in an hour. The stale ones used to stay in the heap until then, with a
    // copy of the key each (over 400 MB).
    let key = "k".repeat(1000);
    let summary = replay_stream(BOUNCE, &[], move |w| {
        for i in 0..400_000u64 {
            let state = if i % 2 == 0 { "a" } else { "b" };
            writeln!(
                w,
                r#"{{"event_type":"{state}","timestamp":{}.{:03},"payload":{{"id":"{key}"}}}}"#,
                1_700_000_000 + i / 1000,
                i % 1000
            )
            .unwrap();
        }
    });
    assert_eq!(summary["transitions"], 399_999, "{summary}");
    assert_eq!(summary["in_flight"], 1, "{summary}");
    assert!(
        peak(&summary) < 64 * MB,
        "peak RSS {} MB",
        peak(&summary) / MB
    );
}

#[test]
fn finished_objects_with_long_keys_are_remembered_within_a_byte_budget() {
    // 3,000 objects with 100 KB keys, each finished at once: none in flight. The memory of
    // finished keys (to recognise late messages) used to be capped by count: 600 MB.
    let summary = replay_stream(
        BOUNCE,
        &[
            "--max-key-bytes",
            "200000",
            "--finished-budget-bytes",
            "16000000",
        ],
        |w| {
            for i in 0..3000u64 {
                let key = format!("{i:06}{}", "k".repeat(100_000));
                for (j, state) in ["a", "done"].iter().enumerate() {
                    writeln!(
                        w,
                        r#"{{"event_type":"{state}","timestamp":{},"payload":{{"id":"{key}"}}}}"#,
                        1_700_000_000 + 2 * i + j as u64
                    )
                    .unwrap();
                }
            }
        },
    );
    assert_eq!(summary["outcomes"], 3000, "{summary}");
    assert_eq!(summary["in_flight"], 0, "{summary}");
    assert!(
        peak(&summary) < 64 * MB,
        "peak RSS {} MB",
        peak(&summary) / MB
    );
}

#[test]
fn a_key_over_the_limit_makes_the_message_malformed_with_its_reason() {
    let long = "k".repeat(1025);
    let ok = "k".repeat(1024);
    let summary = replay_stream(BOUNCE, &[], move |w| {
        for (t, id) in [(0, &long), (1, &ok), (2, &long)] {
            writeln!(
                w,
                r#"{{"event_type":"a","timestamp":{},"payload":{{"id":"{id}"}}}}"#,
                1_700_000_000 + t
            )
            .unwrap();
        }
    });
    assert_eq!(summary["malformed"], 2, "{summary}");
    assert_eq!(summary["key_too_long"], 2, "{summary}");
    assert_eq!(summary["matched"], 1, "{summary}");
    assert_eq!(summary["messages"], 1, "{summary}");
    assert_eq!(summary["in_flight"], 1, "{summary}");
    // The limit is a setting.
    let long = "k".repeat(1025);
    let summary = replay_stream(BOUNCE, &["--max-key-bytes", "2048"], move |w| {
        writeln!(
            w,
            r#"{{"event_type":"a","timestamp":1700000000,"payload":{{"id":"{long}"}}}}"#
        )
        .unwrap();
    });
    assert_eq!(summary["malformed"], 0, "{summary}");
    assert_eq!(summary["in_flight"], 1, "{summary}");
}
