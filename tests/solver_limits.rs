//! The chain solver's cost is bounded (issue 10, item 7): a flow has at most 1,000 states
//! (`check` reports more as F018, with the number), and a flow at the limit is not re-solved
//! on every event: the work of re-solving is spread over the messages (a count of solves, the
//! `model_version` of the predictions, bounds it). Through the real binary.

mod common;

use common::{flowcast, run_ok};
use std::fmt::Write as _;

/// A flow of `n` states: `start`, `n - 3` steps, `done` and the artifact `fail`.
fn big_flow(n: usize) -> String {
    let mut f = String::from("flow big {\n    key payload.id\n    initial start\n");
    for i in 1..n - 2 {
        let _ = writeln!(f, "    state s{i}");
    }
    f.push_str("    terminal done\n    artifact fail\n    on \"start\" -> start\n");
    for i in 1..n - 2 {
        let _ = writeln!(f, "    on \"s{i}\" -> s{i}");
    }
    f.push_str("    on \"done\" -> done\n    on \"fail\" -> fail\n}\n");
    f
}

#[test]
fn check_refuses_a_flow_over_the_state_limit_with_the_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.flow");
    std::fs::write(&path, big_flow(10_000)).unwrap();
    let out = flowcast().arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let text = format!("{stdout}{stderr}");
    assert!(text.contains("[F018]"), "{text}");
    assert!(text.contains("10,000 states"), "{text}");
    // At the limit, the same flow passes.
    std::fs::write(&path, big_flow(1000)).unwrap();
    run_ok(flowcast().arg("check").arg(&path));
}

#[test]
fn a_flow_at_the_state_limit_is_not_solved_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.flow");
    std::fs::write(&path, big_flow(1000)).unwrap();
    // 1,000 objects, each start -> s_i -> done or fail: 3,000 messages, 2,000 transitions.
    let mut input = String::new();
    for j in 0..1000usize {
        let t = 1_700_000_000 + j * 10;
        let step = 1 + (j * 7) % 997;
        let end = if j % 10 == 0 { "fail" } else { "done" };
        for (k, e) in ["start".to_string(), format!("s{step}"), end.to_string()]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                input,
                r#"{{"event_type": "{e}", "timestamp": {}, "payload": {{"id": "o{j}"}}}}"#,
                t + k
            );
        }
    }
    let input_path = dir.path().join("in.jsonl");
    std::fs::write(&input_path, input).unwrap();
    let out = run_ok(
        flowcast()
            .args(["replay", "--trace", "--models"])
            .arg(&path)
            .arg(&input_path),
    );
    let solves = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| r["model_version"].as_u64())
        .max()
        .unwrap();
    // Each solve of a 1,000-state flow costs about a million steps; spread over the messages
    // at a few thousand steps each, that is one solve per few hundred messages.
    assert!(
        solves <= 3000 / 100,
        "{solves} solves for 3,000 messages of a 1,000-state flow"
    );
    assert!(solves >= 2, "the model is still refreshed: {solves} solves");
}
