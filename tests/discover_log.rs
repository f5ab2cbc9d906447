//! `discover` and the CSV process-log reader on hostile input: any log gives a flow that passes
//! `check` (a property test over generated logs), long activity names, single-event cases,
//! quoted fields that span lines, and the times the public logs hold (single-digit hours) or
//! that are no time at all (`2020-02-31`, offset `+99:99`).

mod common;

use common::{flowcast, run_ok};
use flowcast::eval::discover::{self, RenderOptions};
use flowcast::eval::log::CsvColumns;
use proptest::prelude::*;

/// A CSV field, quoted when it holds a comma, a quote, a line end or a space at its edges.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.trim() != s {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A CSV log of `cases`, each a list of (activity, ms after the previous event).
fn csv(cases: &[(String, Vec<(String, i64)>)]) -> String {
    let mut out = String::from("CaseID,ActivityID,CompleteTimestamp\n");
    for (case, events) in cases {
        let mut t = 1_500_000_000_000i64;
        for (activity, dt) in events {
            t += dt;
            let time = flowcast::engine::time::format_rfc3339(t);
            out.push_str(&format!("{},{},{time}\n", field(case), field(activity)));
        }
    }
    out
}

fn options(priors: bool, timeouts: bool, count_repeats: bool) -> RenderOptions {
    RenderOptions {
        flow_name: "discovered".into(),
        source: "test.csv".into(),
        key: "payload.case".into(),
        activity_field: "event_type".into(),
        failures: Vec::new(),
        priors,
        timeouts,
        count_repeats,
    }
}

/// Discovers a flow from the CSV text and compiles it: the rendered diagnostics on an error.
fn discover_and_check(text: &str, opts: &RenderOptions) -> Result<discover::Dfg, String> {
    let dfg = discover::dfg_from_csv(text.as_bytes(), &CsvColumns::default(), opts.count_repeats)
        .map_err(|e| format!("not read: {e}"))?;
    let flow = discover::render(&dfg, opts);
    let comp = flowcast::model::compile_files([("d.flow".to_string(), flow.clone().into_bytes())]);
    if comp.has_errors() {
        return Err(format!("{}\n{flow}", comp.render()));
    }
    Ok(dfg)
}

#[test]
fn an_activity_longer_than_65535_bytes_is_discovered_without_a_panic() {
    let long = "x".repeat(70_000);
    let text = csv(&[
        ("1".into(), vec![("a".into(), 0), (long.clone(), 1000)]),
        ("2".into(), vec![(long.clone(), 0), ("a".into(), 1000)]),
    ]);
    let dfg = discover_and_check(&text, &options(true, true, true)).unwrap();
    assert!(dfg.activities.contains(&long));
    // The binary, too: it used to exit 101 ("Formatting argument out of range").
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("long.csv");
    std::fs::write(&log, &text).unwrap();
    let flow = dir.path().join("long.flow");
    run_ok(flowcast().arg("discover").arg(&log).arg("-o").arg(&flow));
    run_ok(flowcast().arg("check").arg(&flow));
}

#[test]
fn a_log_of_single_event_cases_gives_a_flow_with_an_initial_state() {
    for cases in [
        vec![("1".to_string(), vec![("only".to_string(), 0)])],
        vec![
            ("1".to_string(), vec![("a".to_string(), 0)]),
            ("2".to_string(), vec![("b".to_string(), 0)]),
        ],
    ] {
        for opts in [options(true, true, true), options(false, false, true)] {
            discover_and_check(&csv(&cases), &opts).unwrap();
        }
    }
}

#[test]
fn quoted_fields_that_span_lines_are_read() {
    let text = "CaseID,ActivityID,CompleteTimestamp\n\
                1,\"Check\nby phone\",2020-01-01 10:00:00\n\
                1,\"say \"\"ok\"\"\",2020-01-01 10:01:00\n\
                \"2\",plain,2020-01-01 10:02:00\n";
    let dfg = discover_and_check(text, &options(true, true, true)).unwrap();
    assert_eq!(dfg.activities, ["Check\nby phone", "say \"ok\"", "plain"]);
    assert_eq!((dfg.events, dfg.cases), (3, 2));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("quoted.csv");
    std::fs::write(&log, text).unwrap();
    // `eval` reads the same rows: three events, each case closed by its end marker.
    let stream = flowcast::eval::log::read_csv(&log, &CsvColumns::default()).unwrap();
    assert_eq!(stream.cases, ["1", "2"]);
    assert_eq!(stream.messages.len(), 5);
    assert_eq!(
        stream.messages[0].value["event_type"],
        serde_json::json!("Check\nby phone")
    );
}

/// A log of 30 cases a -> b -> c stamped with `time(case, step)`, as `flowcast eval` reads it.
fn eval_log(time: impl Fn(usize, usize) -> String) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("times.csv");
    let mut text = String::from("CaseID,ActivityID,CompleteTimestamp\n");
    for c in 0..30 {
        for (i, a) in ["a", "b", "c"].iter().enumerate() {
            text.push_str(&format!("{c},{a},{}\n", time(c, i)));
        }
    }
    std::fs::write(&log, text).unwrap();
    flowcast()
        .arg("eval")
        .arg(&log)
        .args(["--output", "json"])
        .output()
        .unwrap()
}

#[test]
fn eval_reads_single_digit_hours_and_refuses_impossible_times() {
    // As in a public log: `2011-11-05 1:05:01` beside `2011-11-05 13:05:01`.
    let out = eval_log(|c, i| format!("2011-11-{:02} {}:0{i}:01", 1 + c % 28, c % 24));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases = r[0]["train_cases"].as_u64().unwrap() + r[0]["test_cases"].as_u64().unwrap();
    assert_eq!(cases, 30, "{r}");
    for (bad, shown) in [
        (
            "2020-02-31 10:00:00".to_string(),
            "unreadable time `2020-02-31 10:00:00`",
        ),
        (
            "2020-02-01T10:00:00+99:99".to_string(),
            "unreadable time `2020-02-01T10:00:00+99:99`",
        ),
    ] {
        let out = eval_log(|c, i| {
            if c == 3 && i == 1 {
                bad.clone()
            } else {
                format!("2020-02-{:02} 10:0{i}:00", 1 + c % 28)
            }
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(err.contains(shown), "{err}");
        assert!(err.contains("line 12"), "{err}");
    }
}

/// Activity names as logs have them, and as an attacker would write them.
fn activity() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "a",
            "b",
            "A",
            "a b",
            "1",
            "not",
            "done",
            "timed_out",
            "flow",
            "initial",
            "flowcast.case_end",
            "",
            " ",
            ",",
            "\"",
            "\\",
            "\n",
            "\r\n",
            "é",
            "a\u{0}b",
            "\u{feff}",
            "}",
            "x -> y",
            "#",
            "\u{2028}",
        ])
        .prop_map(String::from),
        "\\PC{0,12}",
        ".{0,6}",
    ]
}

prop_compose! {
    fn log()(
        alphabet in prop::collection::vec(activity(), 1..8),
        cases in prop::collection::vec(
            (
                "[0-9a-z ,\"]{0,4}",
                prop::collection::vec(
                    (any::<prop::sample::Index>(), prop_oneof![0i64..10_000, 0i64..100_000_000_000]),
                    1..12,
                ),
            ),
            1..40,
        ),
    ) -> Vec<(String, Vec<(String, i64)>)> {
        cases
            .into_iter()
            .map(|(case, events)| {
                let events = events
                    .into_iter()
                    .map(|(i, dt)| (alphabet[i.index(alphabet.len())].clone(), dt))
                    .collect();
                (case, events)
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(common::proptest_config(256))]
    /// Whatever the log, what `discover` writes passes `check`, and every event was read.
    #[test]
    fn any_log_gives_a_flow_that_passes_check(
        cases in log(),
        priors in any::<bool>(),
        timeouts in any::<bool>(),
        count_repeats in any::<bool>(),
    ) {
        let text = csv(&cases);
        let opts = options(priors, timeouts, count_repeats);
        let dfg = discover_and_check(&text, &opts).map_err(TestCaseError::fail)?;
        // Cases with the same name are one case; repeats may be dropped, so count at least
        // one event per distinct activity and no more events than were written.
        let written: usize = cases.iter().map(|c| c.1.len()).sum();
        prop_assert!(dfg.events as usize <= written);
        let mut names: Vec<&String> = cases.iter().flat_map(|c| c.1.iter().map(|e| &e.0)).collect();
        names.sort();
        names.dedup();
        prop_assert_eq!(dfg.activities.len(), names.len());
        if count_repeats {
            prop_assert_eq!(dfg.events as usize, written);
        }
    }
}
