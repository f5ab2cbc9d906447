//! `flowcast eval` over a suite of logs: one table, a row per log, the reference chains
//! computed by flowcast under the published protocol and equal to the published figures.

mod common;

use common::{flowcast, run_ok};

const LOGS: &str = "../shared/data/process_logs";

fn suite_json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = run_ok(flowcast().arg("eval").args(args).args(["--output", "json"]));
    // Piped: no progress bar, nothing else on stderr.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn the_folder_of_logs_reproduces_every_published_markov_figure() {
    // ../shared/data/README.md (bpi_12_w's Markov-2 from shared/tools/markov_baseline.py).
    // One figure differs in the last digit, by a rule of the reference flowcast does not share
    // (EVALUATION.md, "The suite"): on bpi_20_permitlog a pair of activities seen in training
    // only at a case's end falls back to the last activity there, to the most frequent activity
    // in flowcast (17,322 right, the reference 17,325: 0.7618 vs 0.7619). It is pinned to
    // flowcast's count so that any change shows. (traffic_fines' Markov-1 was 65,522 against
    // 65,526 while the frozen model's solution could be stale at the first test cases; it is
    // solved when the model is frozen since, and equals the reference.)
    let pinned = [("bpi_20_permitlog", "markov_2", 17322)];
    let reference = [
        ("bpi_12", 44956, 0.5741, 0.7147),
        ("bpi_12_a", 11325, 0.6284, 0.6672),
        ("bpi_12_o", 6839, 0.7014, 0.7959),
        ("bpi_12_w", 17453, 0.7871, 0.7875),
        ("bpi_20_domesticdeclarations", 12546, 0.8914, 0.8914),
        ("bpi_20_internationaldeclarations", 21322, 0.8071, 0.8172),
        ("bpi_20_permitlog", 22738, 0.7483, 0.7619),
        ("bpi_20_requestforpayment", 8026, 0.8855, 0.8860),
        ("helpdesk", 1993, 0.7265, 0.7265),
        ("receipt", 1836, 0.8769, 0.8840),
        ("traffic_fines", 77317, 0.8475, 0.8898),
    ];
    let rows = suite_json(&[LOGS]);
    let names: Vec<&str> = rows.iter().map(|r| r["log"].as_str().unwrap()).collect();
    let want: Vec<&str> = reference.iter().map(|r| r.0).collect();
    assert_eq!(names, want);
    for (row, (log, prefixes, m1, m2)) in rows.iter().zip(reference) {
        for (key, acc) in [("markov_1", m1), ("markov_2", m2)] {
            let f = &row[key]["next_state"];
            assert_eq!(f["prefixes"], prefixes, "{log} {key}");
            if let Some(p) = pinned.iter().find(|p| p.0 == log && p.1 == key) {
                assert_eq!(f["correct"], p.2, "{log} {key}");
                continue;
            }
            let got = f["accuracy"].as_f64().unwrap();
            assert!((got - acc).abs() < 0.00005, "{log} {key}: {got} vs {acc}");
        }
        assert_eq!(row["default"]["next_state"]["prefixes"], prefixes, "{log}");
        assert!(row["selected"].is_null(), "{log}: no --select, no choice");
    }
}

#[test]
fn several_logs_with_select_make_one_table_with_the_choice_per_log() {
    let logs = [
        format!("{LOGS}/helpdesk.csv"),
        format!("{LOGS}/receipt.csv"),
        format!("{LOGS}/bpi_12_o.csv"),
    ];
    let mut args: Vec<&str> = logs.iter().map(String::as_str).collect();
    args.extend(["--history", "1,2", "--select"]);
    let rows = suite_json(&args);
    assert_eq!(rows.len(), 3);
    // bpi_12_o gains 9 points from the second order (README): validation sees it too.
    let o = &rows[2];
    assert_eq!(o["log"], "bpi_12_o");
    let chosen = o["selected"]["configuration"].as_str().unwrap();
    assert!(chosen.starts_with("history=2 "), "{chosen}");
    assert!(o["selected"]["validation_accuracy"].as_f64().unwrap() > 0.7);
    for r in &rows {
        let best = r["grid_best"]["next_state"]["accuracy"].as_f64().unwrap();
        let sel = r["selected"]["next_state"]["accuracy"].as_f64().unwrap();
        assert!(sel <= best, "{r}");
    }
    // The table: a header, a line per log, the means, the default's configuration.
    let out = run_ok(flowcast().arg("eval").args(&args));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("log ") && lines[0].contains("Markov-2"),
        "{text}"
    );
    assert!(lines[0].contains("selected"), "{text}");
    for (line, log) in lines[1..4].iter().zip(["helpdesk", "receipt", "bpi_12_o"]) {
        assert!(line.starts_with(log), "{text}");
    }
    assert!(lines[4].starts_with("mean"), "{text}");
    assert!(text.contains("default: model=auto"), "{text}");
}

#[test]
fn a_suite_refuses_what_it_cannot_compare() {
    let dir = tempfile::tempdir().unwrap();
    let helpdesk = format!("{LOGS}/helpdesk.csv");
    let jsonl = dir.path().join("stream.jsonl");
    std::fs::write(&jsonl, "{}\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec![LOGS, "--flow", "models/patent_disk_attach.flow"],
            "--flow",
        ),
        (vec![LOGS, "--history", "1,2"], "--select"),
        (vec![&helpdesk, jsonl.to_str().unwrap()], "CSV"),
        (vec![empty.to_str().unwrap()], "no .csv"),
    ];
    for (args, says) in cases {
        let out = flowcast().arg("eval").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
