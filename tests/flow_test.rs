//! Issue 15, item 1: `flowcast test` runs test files (`*.test.yaml`) stating what flows must do
//! with given messages. Each test drives the real binary on a temporary folder.

mod common;

use common::flowcast;
use std::path::Path;

const FLOW: &str = r#"flow attach {
    key payload.id
    initial started
    terminal done
    artifact failed, hung
    on "attach.start" -> started
    on "attach.end" -> done
    on "attach.error" -> failed
    transitions {
        started -> done 90
        started -> failed 6
        started -> hung 4
    }
    timeout started after 5m -> hung
    alert { threshold 0.05 }
}
"#;

/// Writes the flow and a test file into `dir`; runs `flowcast test` with `args` on it.
fn run(dir: &Path, test: &str, args: &[&str]) -> (Option<i32>, String, String) {
    std::fs::write(dir.join("attach.flow"), FLOW).unwrap();
    std::fs::write(dir.join("attach.test.yaml"), test).unwrap();
    let out = flowcast().arg("test").args(args).arg(dir).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const PASSING: &str = r#"
tests:
  - name: an attach that fails
    messages:
      - {at: 0s, event_type: attach.start, payload: {id: a1}}
      - {at: 30s, event_type: attach.error, payload: {id: a1}}
      - {at: 31s, event_type: something.else, payload: {id: a1}}
    expect:
      alerts:
        - {flow: attach, object: a1, state: started, artifact: failed, probability: [0.05, 0.07], at: 0s}
      outcomes:
        - {object: a1, outcome: failed, kind: artifact, at: 30s}
      states:
        - {at: 10s, object: a1, state: started, risk: {failed: 0.06, hung: [0.03, 0.05]}, alerting: true}
      counts: {unmatched: 1, missing_key: 0}
  - name: a hang times out
    messages:
      - {at: 0s, event_type: attach.start, payload: {id: a2}}
    until: 1h
    expect:
      outcomes:
        - {object: a2, outcome: hung, kind: artifact, at: [4m, 6m]}
"#;

#[test]
fn the_bundled_models_pass_their_tests() {
    let out = flowcast().args(["test", "models"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every bundled model has a test file.
    for entry in std::fs::read_dir("models").unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".flow") {
            assert!(
                stdout.contains(&format!("test models/{stem}.test.yaml")),
                "{name} has no test file:\n{stdout}"
            );
        }
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn expectations_that_hold_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(dir.path(), PASSING, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
}

#[test]
fn a_failing_expectation_exits_1_with_a_readable_diff() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = PASSING
        .replace(
            "outcome: failed, kind: artifact, at: 30s",
            "outcome: done, kind: success, at: 30s",
        )
        .replace("risk: {failed: 0.06", "risk: {failed: 0.5")
        .replace("counts: {unmatched: 1", "counts: {unmatched: 0");
    let (code, stdout, _) = run(dir.path(), &wrong, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  an attach that fails"), "{stdout}");
    assert!(stdout.contains("ok    a hang times out"), "{stdout}");
    assert!(
        stdout.contains("- expected {object: a1, outcome: done, kind: success, at: 30s}\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ got      {object: a1, outcome: failed, kind: artifact, at: 30s}\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "(outcome: expected `done`, got `failed`; kind: expected `success`, got `artifact`)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("risk of `failed`: expected 0.5, got 0.06"),
        "{stdout}"
    );
    assert!(
        stdout.contains("counts: unmatched: expected 0, got 1"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn a_missing_and_an_extra_record_are_both_shown() {
    let dir = tempfile::tempdir().unwrap();
    let test = r#"
tests:
  - name: two outcomes expected, one happens
    messages:
      - {at: 0s, event_type: attach.start, payload: {id: a1}}
      - {at: 5s, event_type: attach.end, payload: {id: a1}}
    expect:
      alerts: []
      outcomes:
        - {object: a1, outcome: done}
        - {object: a9, outcome: done}
"#;
    let (code, stdout, _) = run(dir.path(), test, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("outcomes: expected 2, got 1"), "{stdout}");
    assert!(
        stdout.contains("- expected {object: a9, outcome: done}\n        + got      nothing"),
        "{stdout}"
    );
    assert!(stdout.contains("alerts: expected 0, got 1"), "{stdout}");
    assert!(
        stdout.contains("+ got      {flow: attach, object: a1, state: started, artifact: failed"),
        "{stdout}"
    );
}

#[test]
fn update_writes_the_actual_output_and_that_file_passes() {
    let dir = tempfile::tempdir().unwrap();
    let test = r#"
tests:
  - name: nothing expected yet
    messages:
      - {at: 0s, event_type: attach.start, payload: {id: a1}}
      - {at: 5s, event_type: attach.end, payload: {id: a1}}
      - {at: 6s, event_type: attach.start, payload: {id: a2}}
    until: 1h
"#;
    let (code, stdout, _) = run(dir.path(), test, &["--update"]);
    assert_eq!(code, Some(0), "{stdout}");
    let new = dir.path().join("attach.test.yaml.new");
    let written = std::fs::read_to_string(&new).unwrap();
    assert!(written.contains("outcome: done"), "{written}");
    assert!(written.contains("outcome: hung"), "{written}");
    assert!(written.contains("unmatched: 0"), "{written}");
    // One record a line, as people write them.
    assert!(
        written.contains(
            "        - {at: \"5s\", flow: attach, object: a1, outcome: done, kind: success}\n"
        ),
        "{written}"
    );
    // The written expectations hold, and would catch a change.
    std::fs::rename(&new, dir.path().join("attach.test.yaml")).unwrap();
    let out = flowcast().arg("test").arg(dir.path()).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(
        dir.path().join("attach.flow"),
        FLOW.replace("5m -> hung", "9m -> hung"),
    )
    .unwrap();
    let out = flowcast().arg("test").arg(dir.path()).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn times_can_be_absolute_and_offsets_count_from_start() {
    let dir = tempfile::tempdir().unwrap();
    let test = r#"
start: 2026-03-01T12:00:00Z
tests:
  - name: absolute and relative times agree
    messages:
      - {at: "2026-03-01T12:00:10Z", event_type: attach.start, payload: {id: a1}}
      - {at: 1m, event_type: attach.end, payload: {id: a1}}
    expect:
      outcomes:
        - {object: a1, outcome: done, at: "2026-03-01T12:01:00Z"}
      states:
        - {at: 30s, object: a1, state: started}
"#;
    let (code, stdout, _) = run(dir.path(), test, &[]);
    assert_eq!(code, Some(0), "{stdout}");
}

#[test]
fn a_state_query_for_an_object_not_in_flight_fails_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let test = r#"
tests:
  - name: the object has finished
    messages:
      - {at: 0s, event_type: attach.start, payload: {id: a1}}
      - {at: 5s, event_type: attach.end, payload: {id: a1}}
    expect:
      states:
        - {at: 10s, object: a1, state: started}
"#;
    let (code, stdout, _) = run(dir.path(), test, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("object `a1` is not in flight"), "{stdout}");
}

#[test]
fn a_misspelled_field_in_a_test_file_is_a_usage_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let test = "tests:\n  - name: x\n    expect:\n      alerts:\n        - {object: a1, probabilty: 0.5}\n";
    let (code, stdout, _) = run(dir.path(), test, &[]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.contains("unknown field `probabilty`"), "{stdout}");
    let test = "tests:\n  - name: x\n    expect:\n      counts: {unmatchd: 0}\n";
    let (code, stdout, _) = run(dir.path(), test, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("no counter `unmatchd` (did you mean `unmatched`?)"),
        "{stdout}"
    );
}

#[test]
fn flows_with_errors_exit_1_with_their_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("attach.flow"),
        "flow a { initial s on \"x\" -> t }",
    )
    .unwrap();
    std::fs::write(dir.path().join("a.test.yaml"), "tests: []\n").unwrap();
    let out = flowcast().arg("test").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error[F006]"));
}

#[test]
fn a_bad_line_in_a_messages_file_fails_the_test_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.jsonl"),
        "{\"event_type\": \"attach.start\", \"payload\": {\"id\": \"a\"}}\n{oops\n",
    )
    .unwrap();
    let test = "tests:\n  - name: x\n    messages_file: m.jsonl\n";
    let (code, stdout, _) = run(dir.path(), test, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("m.jsonl:2: "), "{stdout}");
}

#[test]
fn no_test_files_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = flowcast().arg("test").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_improbable_step_is_an_expected_anomaly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("w.flow"),
        r#"flow w {
    key payload.id
    initial start
    terminal usual, rare
    on "start" -> start
    on "usual" -> usual
    on "rare" -> rare
    transitions {
        start -> usual 99
        start -> rare   1
    }
    anomaly { min_probability 0.05 }
}
"#,
    )
    .unwrap();
    let test = r#"
tests:
  - name: the rare ending is flagged, the usual one is not
    messages:
      - {at: 0s, event_type: start, payload: {id: u}}
      - {at: 1s, event_type: usual, payload: {id: u}}
      - {at: 2s, event_type: start, payload: {id: r}}
      - {at: 3s, event_type: rare, payload: {id: r}}
    expect:
      anomalies:
        - {flow: w, object: r, from: start, state: rare, probability: [0.005, 0.015], at: 3s}
"#;
    std::fs::write(dir.path().join("w.test.yaml"), test).unwrap();
    let out = flowcast().arg("test").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    // Expecting none fails, showing the one that came.
    std::fs::write(
        dir.path().join("w.test.yaml"),
        test.replace(
            "      anomalies:\n        - {flow: w, object: r, from: start, state: rare, probability: [0.005, 0.015], at: 3s}\n",
            "      anomalies: []\n",
        ),
    )
    .unwrap();
    let out = flowcast().arg("test").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("anomalies: expected 0, got 1"), "{stdout}");
}
