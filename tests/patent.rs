//! The patent's worked example (US 2014/0214745, FIG. 9-11), exactly: the model's figures from
//! the a priori counts alone, and FIG. 10's counts re-learned from the example stream.

mod common;

use common::{flowcast, run_ok};
use serde_json::Value;

fn model_json(extra: &[&str]) -> Value {
    let out = run_ok(
        flowcast()
            .args([
                "model",
                "models/patent_disk_attach.flow",
                "--format",
                "json",
            ])
            .args(extra),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn state<'a>(m: &'a Value, name: &str) -> &'a Value {
    m["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == name)
        .unwrap()
}

fn close(v: &Value, expect: f64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!((got - expect).abs() < 1e-6, "got {got}, expected {expect}");
}

#[test]
fn the_patents_figures_from_the_a_priori_counts() {
    let m = model_json(&[]);
    assert_eq!(m["flow"], "patent_disk_attach");
    let api = state(&m, "api_request");
    close(&api["next"]["http_5xx"], 0.01);
    close(&api["next"]["server_exception"], 0.02);
    close(&api["next"]["process_start"], 0.97);
    let x = state(&m, "x");
    close(&x["next"]["y"], 30.0 / 97.0);
    close(&x["next"]["z"], 67.0 / 97.0);
    // FIG. 11: an object entering Y.
    let y = state(&m, "y");
    close(&y["risk"]["error_state_failure"], 0.10);
    close(
        &y["risk"]["time_threshold_failure"],
        (10.0 / 30.0) * (4.0 / 10.0),
    );
    let f = state(&m, "f");
    close(&f["risk"]["time_threshold_failure"], 0.40);
    close(&f["risk"]["error_state_failure"], 0.0);
    let z = state(&m, "z");
    for (_, r) in z["risk"].as_object().unwrap() {
        close(r, 0.0);
    }
}

#[test]
fn learning_the_example_stream_reproduces_fig_10() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().to_str().unwrap();
    run_ok(
        flowcast()
            .args([
                "replay",
                "--models",
                "models/patent_disk_attach.flow",
                "--state-dir",
                st,
            ])
            .arg("examples/patent_disk_attach/events.jsonl"),
    );
    let m = model_json(&["--state-dir", st]);
    let rows = m["transitions"].as_array().unwrap();
    assert_eq!(rows.len(), 12);
    for r in rows {
        // Every transition was observed exactly as often as FIG. 10 counts it.
        assert_eq!(r["observed"], r["prior"], "{r}");
    }
    // And the blended model still gives FIG. 11's figures.
    close(&state(&m, "y")["risk"]["error_state_failure"], 0.10);
    close(&state(&m, "f")["risk"]["time_threshold_failure"], 0.40);
}

#[test]
fn an_object_entering_y_raises_an_alert_with_the_patents_probability() {
    let out = flowcast()
        .args([
            "replay",
            "--models",
            "models/patent_disk_attach.flow",
            "--alerts-only",
        ])
        .arg("examples/patent_disk_attach/events.jsonl")
        .output()
        .unwrap();
    let first: Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["type"], "alert");
    assert_eq!(first["state"], "y");
    assert_eq!(first["artifact"], "time_threshold_failure");
    close(&first["probability"], 0.133333);
    close(&first["risk"]["error_state_failure"], 0.10);
    assert_eq!(
        first["path"],
        serde_json::json!(["y", "f", "time_threshold_failure"])
    );
}
