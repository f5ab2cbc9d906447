//! When an alert fires for an object waiting in a state (issue 10, item 4). The risk is judged
//! with the object's own past (its history context), so the time of the next look at it must be
//! found with that same past: a look scheduled from the first-order risk alone comes too early
//! (and is then never repeated) or never comes at all. Event-time replay, the real binary.
//!
//! The flows: objects start in `a1` or `a2`, wait in `w`, and leave it for `ok` after 1 s, or
//! for `late` or the artifact `fail` much later. With `history 2` the way in tells which: from
//! `a1` mostly `fail`, from `a2` mostly `late`. The longer an object waits past 1 s, the less
//! likely `ok` becomes, so its risk rises at the dwell histogram's bucket boundaries.

mod common;

use common::{flowcast, run_ok};
use std::fmt::Write as _;

fn flow(threshold: f64) -> String {
    format!(
        r#"flow f {{
    key payload.id
    initial a1, a2
    state w
    terminal ok, late
    artifact fail
    on "a1" -> a1
    on "a2" -> a2
    on "w" -> w
    on "ok" -> ok
    on "late" -> late
    on "fail" -> fail
    learn {{ history 2  half_life off }}
    alert {{ threshold {threshold} }}
}}
"#
    )
}

fn line(out: &mut String, event: &str, id: &str, t_ms: i64) {
    let _ = writeln!(
        out,
        r#"{{"event_type": "{event}", "timestamp": {}, "payload": {{"id": "{id}"}}}}"#,
        1_700_000_000.0 + t_ms as f64 / 1000.0
    );
}

/// 90 objects through each way in, `(ok, fail, late)` of each way out of `w`, then the object
/// `x` entering `w` from `x_from`; a message about another object an hour later lets the clock
/// move on. Returns the alerts about `x`.
fn alerts_for_x(threshold: f64, late_dwell_ms: i64, x_from: &str) -> Vec<serde_json::Value> {
    let mut input = String::new();
    let mut t = 0;
    let mut j = 0;
    for (from, exits) in [("a1", [50, 30, 10]), ("a2", [50, 10, 30])] {
        for (exit, dwell, count) in [
            ("ok", 1000, exits[0]),
            ("fail", 100_000, exits[1]),
            ("late", late_dwell_ms, exits[2]),
        ] {
            for _ in 0..count {
                let id = format!("o{j}");
                j += 1;
                line(&mut input, from, &id, t);
                line(&mut input, "w", &id, t + 1000);
                line(&mut input, exit, &id, t + 1000 + dwell);
                t += 200_000;
            }
        }
    }
    line(&mut input, x_from, "x", t);
    let entered = t + 1000;
    line(&mut input, "w", "x", entered);
    line(&mut input, "noise", "y", entered + 3_600_000);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.flow"), flow(threshold)).unwrap();
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let out = run_ok(
        flowcast()
            .args(["replay", "--alerts-only", "--models"])
            .arg(dir.path().join("f.flow"))
            .arg(dir.path().join("in.jsonl")),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["type"] == "alert" && r["object"] == "x")
        .collect()
}

#[test]
fn an_alert_whose_own_risk_crosses_later_than_the_first_order_one_still_fires() {
    // First order, `fail` reaches 0.45 once `ok` is unlikely (1,024 ms in `w`); coming from
    // `a2`, `late` (10 s) must become unlikely too: at 16,384 ms.
    let alerts = alerts_for_x(0.45, 10_000, "a2");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["time_in_state_ms"], 16_384, "{alerts:?}");
    assert_eq!(alerts[0]["cause"]["kind"], "timer", "{alerts:?}");
    assert_eq!(alerts[0]["artifact"], "fail");
    assert!(alerts[0]["probability"].as_f64().unwrap() >= 0.45);
}

#[test]
fn an_alert_whose_own_risk_crosses_where_the_first_order_one_never_does_still_fires() {
    // First order, `fail` and `late` share what `ok` leaves: never over 0.5. Coming from
    // `a1`, `fail` is 0.72 once `ok` is unlikely, at 1,024 ms.
    let alerts = alerts_for_x(0.6, 100_000, "a1");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["time_in_state_ms"], 1024, "{alerts:?}");
    assert_eq!(alerts[0]["cause"]["kind"], "timer", "{alerts:?}");
}

#[test]
fn an_object_whose_own_risk_never_crosses_gets_no_alert() {
    // The first-order risk crosses at 1,024 ms, but from `a2` with a slow `late` the risk of
    // `fail` stays near 0.27.
    let alerts = alerts_for_x(0.45, 100_000, "a2");
    assert!(alerts.is_empty(), "{alerts:?}");
}
