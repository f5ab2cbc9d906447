//! `flowcast eval --select --select-by METRIC`: the choice on the validation split follows the
//! metric asked for, the log-loss floors a zero probability, the outcomes detail describes the
//! chosen configuration, identical configurations run once, and an outcome metric without
//! outcomes is a usage error.

mod common;

use common::{flowcast, run_ok};
use std::path::{Path, PathBuf};

const HELPDESK: &str = "../shared/data/process_logs/helpdesk.csv";

fn eval_json(args: &[&str]) -> serde_json::Value {
    let out = run_ok(flowcast().arg("eval").args(args).args(["--output", "json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The first `cases` cases of Helpdesk, written to `dir`.
fn helpdesk_slice(dir: &Path, cases: usize) -> PathBuf {
    let text = std::fs::read_to_string(HELPDESK).unwrap();
    let mut out = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let case = line.split(',').next().unwrap();
        if i > 0 && !seen.contains(&case) {
            if seen.len() == cases {
                break;
            }
            seen.push(case);
        }
        out.push_str(line);
        out.push('\n');
    }
    let path = dir.join("helpdesk_slice.csv");
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn select_by_log_loss_chooses_the_lowest_validation_log_loss() {
    let dir = tempfile::tempdir().unwrap();
    let log = helpdesk_slice(dir.path(), 900);
    let grid = [
        log.to_str().unwrap(),
        "--history",
        "1,2,3",
        "--min-obs",
        "0,10",
        "--dwell",
        "off,on",
        "--select",
    ];
    let reports = eval_json(&[&grid[..], &["--select-by", "log-loss"]].concat());
    let reports = reports.as_array().unwrap();
    let loss = |r: &serde_json::Value| r["validation"]["log_loss"].as_f64().unwrap();
    let best = reports.iter().map(loss).fold(f64::INFINITY, f64::min);
    let chosen: Vec<_> = reports.iter().filter(|r| r["selected"] == true).collect();
    assert_eq!(chosen.len(), 1);
    assert_eq!(loss(chosen[0]), best);
    for r in reports {
        let l = r["next_state"]["log_loss"].as_f64().unwrap();
        assert!(l > 0.0 && l < -(1e-6f64).ln(), "{r}");
    }
    // Accuracy (the default) picks by accuracy: here another configuration.
    let by_accuracy = eval_json(&grid);
    let label = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["selected"] == true)
            .unwrap()["label"]
            .clone()
    };
    assert_ne!(label(&by_accuracy), chosen[0]["label"]);
}

#[test]
fn log_loss_counts_a_never_seen_successor_at_the_floor() {
    // Training cases go a -> b -> c; test cases a -> b -> d: the model gives d no probability.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("abd.csv");
    let mut csv = String::from("CaseID,ActivityID,CompleteTimestamp\n");
    for i in 0..30 {
        let last = if i < 20 { "c" } else { "d" };
        for (k, a) in ["a", "b", last].iter().enumerate() {
            csv.push_str(&format!("{i},{a},2024-01-01 {:02}:{:02}:00\n", i / 2, k));
        }
    }
    std::fs::write(&log, csv).unwrap();
    let r = &eval_json(&[log.to_str().unwrap()])[0];
    assert_eq!(r["next_state"]["prefixes"], 10, "{r}");
    let l = r["next_state"]["log_loss"].as_f64().unwrap();
    assert!((l - -(1e-6f64).ln()).abs() < 1e-9, "{l}");
}

#[test]
fn identical_configurations_are_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = helpdesk_slice(dir.path(), 300);
    let reports = eval_json(&[
        log.to_str().unwrap(),
        "--history",
        "1,2,1",
        "--mode",
        "online,frozen",
        "--online",
        "--select",
    ]);
    let labels: Vec<&str> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 4, "{labels:?}");
    let mut unique = labels.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{labels:?}");
}

#[test]
fn selecting_by_an_outcome_metric_without_artifacts_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = helpdesk_slice(dir.path(), 60);
    for metric in ["roc-auc", "brier", "alert-f1"] {
        let out = flowcast()
            .arg("eval")
            .arg(&log)
            .args(["--select", "--select-by", metric])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{metric}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no artifacts"), "{metric}: {err}");
        // A suite's discovered flows have none either.
        let out = flowcast()
            .arg("eval")
            .arg(&log)
            .arg(&log)
            .args(["--select", "--select-by", metric])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{metric}");
    }
}

#[test]
fn the_outcomes_line_describes_the_selected_configuration() {
    // Attaches succeed in 5 s, errors take 45 s: only with dwell times can an alert come
    // before the error (EVALUATION.md), so alert F1 chooses dwell on, listed second.
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim.jsonl");
    run_ok(
        flowcast()
            .args(["simulate", "models/nova_volume_attach.flow"])
            .args(["--objects", "1500", "--seed", "5", "--rate", "0.5"])
            .args(["--mean-dwell", "5s", "--dwell-to", "attach_error=45s", "-o"])
            .arg(&sim),
    );
    let out = run_ok(
        flowcast()
            .arg("eval")
            .arg(&sim)
            .args(["--flow", "models/nova_volume_attach.flow"])
            .args(["--dwell", "off,on", "--select", "--select-by", "alert-f1"]),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let selected = text
        .lines()
        .find(|l| l.ends_with("<- selected on validation"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(selected.contains("dwell=on"), "{text}");
    let outcomes = text
        .lines()
        .find(|l| l.starts_with("outcomes ("))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(outcomes.contains("dwell=on"), "{text}");
}
