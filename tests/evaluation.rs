//! `flowcast eval`, `discover` and `simulate` on the public process logs and on simulated
//! streams: the published first-order Markov figures reproduced exactly, discovered flows that
//! `check` accepts, simulation that is deterministic and whose probabilities can be learned back.

mod common;

use common::{flowcast, run_ok};
use std::path::Path;

const HELPDESK: &str = "../shared/data/process_logs/helpdesk.csv";
const BPI: &str = "../shared/data/process_logs/bpi_12_w.csv";

fn eval_json(args: &[&str]) -> serde_json::Value {
    let out = run_ok(flowcast().arg("eval").args(args).args(["--output", "json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A simulated stream of the patent flow (20 s mean dwell) written to `out`.
fn simulate_patent(out: &Path, objects: u32, seed: u32, rate: u32) {
    run_ok(
        flowcast()
            .args([
                "simulate",
                "models/patent_disk_attach.flow",
                "--mean-dwell",
                "20s",
            ])
            .args([
                "--objects",
                &objects.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .args(["--rate", &rate.to_string(), "-o"])
            .arg(out),
    );
}

#[test]
fn eval_reproduces_the_published_markov_figures_exactly() {
    // data/README.md: Helpdesk 0.7265 on 1,993 prefixes, BPI'12 W 0.7871 on 17,453.
    for (log, prefixes, correct, rounded) in
        [(HELPDESK, 1993, 1448, 0.7265), (BPI, 17453, 13737, 0.7871)]
    {
        let r = &eval_json(&[
            log,
            "--history",
            "1",
            "--half-life",
            "off",
            "--prior-weight",
            "0",
            "--dwell",
            "off",
        ])[0];
        assert_eq!(r["next_state"]["prefixes"], prefixes, "{log}");
        assert_eq!(r["next_state"]["correct"], correct, "{log}");
        let acc = r["next_state"]["accuracy"].as_f64().unwrap();
        assert!((acc - rounded).abs() < 0.00005, "{log}: {acc}");
    }
}

#[test]
fn dwell_on_helpdesk_and_history_3_on_bpi_beat_the_first_order_chain() {
    // EVALUATION.md explains the choice; here the figures must hold. (The LSTM's 0.7123 and
    // 0.7600 are below the first-order chain's 0.7265 and 0.7871 on these logs.)
    let h = &eval_json(&[HELPDESK, "--dwell", "on", "--min-obs", "5"])[0];
    assert!(
        h["next_state"]["accuracy"].as_f64().unwrap() > 0.7265,
        "{h}"
    );
    let b = &eval_json(&[BPI, "--history", "3", "--min-obs", "10"])[0];
    assert!(
        b["next_state"]["accuracy"].as_f64().unwrap() > 0.7871,
        "{b}"
    );
}

#[test]
fn discovered_flows_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 3] = [
        (HELPDESK, &[]),
        (BPI, &[]),
        (
            "examples/stacktach/events.jsonl",
            &[
                "--key",
                "payload.instance_id",
                "--key",
                "payload.args.instance.uuid",
                "--state",
                "event_type",
            ],
        ),
    ];
    for (i, (log, extra)) in cases.iter().enumerate() {
        let out_path = dir.path().join(format!("d{i}.flow"));
        let out = flowcast()
            .arg("discover")
            .arg(log)
            .args(*extra)
            .arg("-o")
            .arg(&out_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{log}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let check = flowcast().arg("check").arg(&out_path).output().unwrap();
        assert!(
            check.status.success(),
            "{log}:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let text = std::fs::read_to_string(&out_path).unwrap();
        assert!(text.contains("transitions {"));
    }
    // Helpdesk's discovered counts are its directly-follows counts.
    let text = std::fs::read_to_string(dir.path().join("d0.flow")).unwrap();
    assert!(text.contains("a1   -> a8   3483"), "{text}");
    assert!(text.contains("timeout a1 after"), "{text}");
    // The StackTach recording: failures (priority ERROR, never followed) become artifacts.
    let text = std::fs::read_to_string(dir.path().join("d2.flow")).unwrap();
    assert!(text.contains("artifact terminate_instance"), "{text}");
    assert!(
        text.contains("terminal compute_instance_create_end"),
        "{text}"
    );
}

#[test]
fn simulation_is_deterministic_for_a_seed() {
    let run = |seed: &str| {
        let out = run_ok(flowcast().args([
            "simulate",
            "models/nova_volume_attach.flow",
            "--objects",
            "200",
            "--seed",
            seed,
        ]));
        out.stdout
    };
    assert_eq!(run("3"), run("3"));
    assert_ne!(run("3"), run("4"));
}

#[test]
fn learning_from_a_simulated_stream_recovers_the_flows_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("sim.jsonl");
    simulate_patent(&stream, 20000, 11, 20);
    let state = dir.path().join("state");
    let out = flowcast()
        .args([
            "replay",
            "--models",
            "models/patent_disk_attach.flow",
            "--state-dir",
        ])
        .arg(&state)
        .arg(&stream)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = flowcast()
        .args([
            "model",
            "models/patent_disk_attach.flow",
            "--format",
            "json",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = m["transitions"].as_array().unwrap();
    let mut totals = std::collections::HashMap::new();
    for r in rows {
        *totals
            .entry(r["from"].as_str().unwrap().to_string())
            .or_insert((0.0, 0.0)) = {
            let e = totals
                .get(r["from"].as_str().unwrap())
                .copied()
                .unwrap_or((0.0, 0.0));
            (
                e.0 + r["prior"].as_f64().unwrap(),
                e.1 + r["observed"].as_f64().unwrap(),
            )
        };
    }
    for r in rows {
        let from = r["from"].as_str().unwrap();
        let (prior_total, observed_total) = totals[from];
        let p = r["prior"].as_f64().unwrap() / prior_total;
        let observed = r["observed"].as_f64().unwrap();
        let p_hat = observed / observed_total;
        // Five standard deviations of a proportion over this many observations.
        let sd = (p * (1.0 - p) / observed_total).sqrt();
        assert!(
            (p_hat - p).abs() <= 5.0 * sd + 1e-9,
            "{from} -> {}: true {p}, learned {p_hat} over {observed_total}",
            r["to"]
        );
    }
}

#[test]
fn outcome_metrics_on_a_simulated_stream_track_the_true_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("sim.jsonl");
    simulate_patent(&stream, 3000, 7, 2);
    let s = stream.to_str().unwrap();
    let r = &eval_json(&[
        s,
        "--flow",
        "models/patent_disk_attach.flow",
        "--truth",
        "models/patent_disk_attach.flow",
    ])[0];
    let o = &r["outcome"];
    assert!(o["cases"].as_u64().unwrap() > 900);
    assert!(o["roc_auc"].as_f64().unwrap() > 0.6, "{o}");
    assert!(
        r["truth"]["brier_vs_truth"].as_f64().unwrap() < 0.005,
        "{r}"
    );
    assert!(o["recall"].as_f64().unwrap() > 0.3, "{o}");
    // Every simulated object was read as a case, and split 2/3 training, 1/3 test.
    let (train, test) = (
        r["train_cases"].as_u64().unwrap(),
        r["test_cases"].as_u64().unwrap(),
    );
    assert_eq!(train + test, 3000, "{r}");
    assert_eq!(test, 1000, "{r}");
}

#[test]
fn live_mode_predicts_from_the_past_only() {
    // 20 training cases in 2021, then 10 test cases dated 2020: before any training case.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("past.csv");
    let mut csv = String::from("CaseID,ActivityID,CompleteTimestamp\n");
    for c in 0..30 {
        let year = if c < 20 { 2021 } else { 2020 };
        for (i, a) in ["a", "b", "c"].iter().enumerate() {
            csv.push_str(&format!("{c},{a},{year}-03-{:02} 10:0{i}:00\n", 1 + c % 28));
        }
    }
    std::fs::write(&log, csv).unwrap();
    let log = log.to_str().unwrap();
    let acc = |mode: &str| {
        eval_json(&[log, "--mode", mode])[0]["next_state"]["accuracy"]
            .as_f64()
            .unwrap()
    };
    // Frozen: every training case is known, whatever its date.
    assert_eq!(acc("frozen"), 1.0);
    // Live: when a test case runs, no training case has happened yet: nothing to predict with.
    assert_eq!(acc("live"), 0.0);
    // Online: the test cases teach the model as they go, so the later ones are predicted.
    let online = acc("online");
    assert!(online > 0.5 && online < 1.0, "{online}");
}

#[test]
fn recency_weighting_live_chosen_on_validation_reaches_the_helpdesk_goal() {
    // EVALUATION.md: Helpdesk's process changed in 2011; a monitor that learns in time order
    // and forgets with a half-life follows it. The configuration is chosen on a validation split
    // of the training cases, never on the test cases.
    let reports = eval_json(&[
        HELPDESK,
        "--mode",
        "live",
        "--half-life",
        "off,30d,14d,7d",
        "--dwell",
        "off,on",
        "--select",
    ]);
    let reports = reports.as_array().unwrap();
    let selected: Vec<_> = reports.iter().filter(|r| r["selected"] == true).collect();
    assert_eq!(selected.len(), 1);
    let best_val = reports
        .iter()
        .map(|r| r["validation"]["accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let s = selected[0];
    assert_eq!(s["validation"]["accuracy"].as_f64().unwrap(), best_val);
    assert_ne!(s["config"]["half_life_ms"], serde_json::Value::Null, "{s}");
    let acc = s["next_state"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.74, "{s}");
}

#[test]
fn the_feature_model_chosen_on_validation_reaches_the_bpi_goal() {
    // EVALUATION.md: on BPI'12 W the time of day, the time in the case and the previous
    // states matter together; the per-state log-linear model weighs them at once.
    let reports = eval_json(&[
        BPI,
        "--dwell",
        "on",
        "--calendar",
        "off,week",
        "--features",
        "off,on",
        "--select",
    ]);
    let reports = reports.as_array().unwrap();
    let s: Vec<_> = reports.iter().filter(|r| r["selected"] == true).collect();
    assert_eq!(s.len(), 1);
    let s = s[0];
    assert_eq!(s["config"]["features"], true, "{s}");
    let acc = s["next_state"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.80, "{s}");
}
