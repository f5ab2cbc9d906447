//! Logs as a person exports them from a process-mining tool load without a script: date and
//! time in two columns, the case id column named, another delimiter, quoted fields with line
//! ends, single-digit hours. What cannot be read fails with the line it is on.

mod common;

use common::{flowcast, run_ok};
use std::path::{Path, PathBuf};

/// Six cases of `a -> b -> c` and one of `a -> b -> d`, in the reference layout.
fn reference_rows() -> Vec<(String, &'static str, String)> {
    let mut rows = Vec::new();
    for case in 0..7 {
        let last = if case == 6 { "d" } else { "c" };
        for (i, act) in ["a", "b", last].into_iter().enumerate() {
            rows.push((
                format!("case {case}"),
                act,
                format!("2012-03-{:02} {}:0{i}:00", case + 1, case + 1),
            ));
        }
    }
    rows
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn eval_json(log: &Path, args: &[&str]) -> serde_json::Value {
    let out = run_ok(
        flowcast()
            .arg("eval")
            .arg(log)
            .args(args)
            .args(["--output", "json"]),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The figures that must not depend on how the log was laid out.
fn figures(v: &serde_json::Value) -> (u64, u64, u64) {
    let r = &v[0];
    (
        r["test_cases"].as_u64().unwrap(),
        r["next_state"]["prefixes"].as_u64().unwrap(),
        r["next_state"]["correct"].as_u64().unwrap(),
    )
}

fn reference(dir: &Path) -> (u64, u64, u64) {
    let mut text = String::from("CaseID,ActivityID,CompleteTimestamp\n");
    for (c, a, t) in reference_rows() {
        text.push_str(&format!("{c},{a},{t}\n"));
    }
    figures(&eval_json(&write(dir, "reference.csv", &text), &[]))
}

#[test]
fn date_and_time_in_two_columns_a_named_case_column_and_semicolons() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path());
    assert_eq!(want.0, 3, "7 cases: 4 train, 3 test");
    let mut text = String::from("Activity;Resource;Case ID;Date;Time\n");
    for (c, a, t) in reference_rows() {
        let (date, time) = t.split_once(' ').unwrap();
        text.push_str(&format!("{a};someone;{c};{date};{time}\n"));
    }
    let log = write(dir.path(), "export.csv", &text);
    let args = [
        "--case",
        "Case ID",
        "--activity",
        "Activity",
        "--time",
        "Date,Time",
        "--delimiter",
        ";",
    ];
    assert_eq!(figures(&eval_json(&log, &args)), want);
    // `discover` reads the same options.
    let out = run_ok(flowcast().arg("discover").arg(&log).args(args));
    let flow = String::from_utf8(out.stdout).unwrap();
    assert!(flow.contains("21 events in 7 cases"), "{flow}");
    assert!(flow.contains("b    -> d    1"), "{flow}");
}

#[test]
fn tabs_and_quoted_fields_that_span_lines() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path());
    let mut text = String::from("case\tactivity\tnote\ttime\n");
    for (c, a, t) in reference_rows() {
        text.push_str(&format!(
            "\"{c}\"\t{a}\t\"first line\nsecond\tline\"\t{t}\n"
        ));
    }
    let log = write(dir.path(), "tabs.tsv", &text);
    let args = [
        "--format",
        "csv",
        "--case",
        "case",
        "--activity",
        "activity",
        "--time",
        "time",
        "--delimiter",
        "tab",
    ];
    assert_eq!(figures(&eval_json(&log, &args)), want);
}

#[test]
fn times_as_tools_export_them() {
    // Slashes in the date, no seconds, single-digit hours: the same instants as the reference.
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path());
    let mut text = String::from("CaseID,ActivityID,CompleteTimestamp\n");
    for (c, a, t) in reference_rows() {
        let t = t.replace('-', "/");
        let t = t.strip_suffix(":00").unwrap();
        text.push_str(&format!("{c},{a},{t}\n"));
    }
    let log = write(dir.path(), "slashes.csv", &text);
    assert_eq!(figures(&eval_json(&log, &[])), want);
}

fn eval_fails(log: &Path, args: &[&str]) -> String {
    let out = flowcast().arg("eval").arg(log).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn what_cannot_be_read_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    // A semicolon file read with commas: the header is one column; say which delimiter it has.
    let log = write(
        dir.path(),
        "semi.csv",
        "CaseID;ActivityID;CompleteTimestamp\n1;a;2012-03-01 10:00:00\n",
    );
    let err = eval_fails(&log, &[]);
    assert!(err.contains("--delimiter ';'"), "{err}");
    // The second time column missing.
    let log = write(
        dir.path(),
        "two.csv",
        "CaseID,ActivityID,Date\n1,a,2012-03-01\n",
    );
    let err = eval_fails(&log, &["--time", "Date,Time"]);
    assert!(err.contains("no column `Time`"), "{err}");
    // An unreadable time, after a quoted field spanning two lines: the line is the file's.
    let log = write(
        dir.path(),
        "bad.csv",
        "CaseID,ActivityID,CompleteTimestamp\n1,\"a\nb\",2012-03-01 10:00:00\n2,a,yesterday\n",
    );
    let err = eval_fails(&log, &[]);
    assert!(err.contains("line 4") && err.contains("yesterday"), "{err}");
    // A date in one column and a broken time in the other.
    let log = write(
        dir.path(),
        "dt.csv",
        "CaseID,ActivityID,Date,Time\n1,a,2012-03-01,10:00:00\n1,b,2012-03-01,25:00\n",
    );
    let err = eval_fails(&log, &["--time", "Date,Time"]);
    assert!(err.contains("line 3") && err.contains("25:00"), "{err}");
    // A row with too few fields.
    let log = write(
        dir.path(),
        "short.csv",
        "CaseID,ActivityID,CompleteTimestamp\n1,a,2012-03-01 10:00:00\n1,b\n",
    );
    let err = eval_fails(&log, &[]);
    assert!(err.contains("line 3") && err.contains("fields"), "{err}");
    // A delimiter that is not one character.
    let err = eval_fails(&log, &["--delimiter", ";;"]);
    assert!(err.contains("--delimiter"), "{err}");
}
