//! One rule for exit codes across commands (README: 0 ok, 1 the input has errors, 2 usage or
//! IO failure), and `model --state-dir` reading what the service saved.

mod common;

use common::{flowcast, run_ok};

fn code(cmd: &mut std::process::Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_missing_models_directory_is_an_io_failure_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-models");
    let missing = missing.to_str().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("check", vec!["check", missing]),
        ("replay", vec!["replay", "--models", missing, "/dev/null"]),
        (
            "run --check-config",
            vec!["run", "--check-config", "--models", missing],
        ),
        (
            "run",
            vec![
                "run",
                "--models",
                missing,
                "--input",
                "/dev/null",
                "--http",
                "",
            ],
        ),
        ("model", vec!["model", missing]),
    ];
    for (what, args) in cases {
        let (c, err) = code(flowcast().args(&args));
        assert_eq!(c, 2, "{what} with a missing models directory:\n{err}");
        assert!(
            err.contains("no-such-models"),
            "{what} names the path:\n{err}"
        );
    }
    let (c, err) = code(flowcast().args([
        "run",
        "--check-config",
        "--config",
        dir.path().join("no-such.yaml").to_str().unwrap(),
    ]));
    assert_eq!(c, 2, "a missing configuration file:\n{err}");
}

#[test]
fn broken_flows_are_input_errors_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(
        models.join("bad.flow"),
        "flow x { key payload.id initial a a }\n",
    )
    .unwrap();
    let m = models.to_str().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("check", vec!["check", m]),
        ("replay", vec!["replay", "--models", m, "/dev/null"]),
        (
            "run --check-config",
            vec!["run", "--check-config", "--models", m],
        ),
        (
            "run",
            vec!["run", "--models", m, "--input", "/dev/null", "--http", ""],
        ),
    ];
    for (what, args) in cases {
        let (c, err) = code(flowcast().args(&args));
        assert_eq!(c, 1, "{what} with a broken flow file:\n{err}");
    }
}

fn observed_total(out: &std::process::Output) -> f64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let table: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    table["observed_total"].as_f64().unwrap()
}

#[test]
fn model_state_dir_shows_what_the_service_learned_and_refuses_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // The service over the example stream; at its end it writes snapshot.json (no learned.json).
    run_ok(flowcast().args([
        "run",
        "--models",
        "models/nova_volume_attach.flow",
        "--input",
        "examples/nova_volume_attach/events.jsonl",
        "--http",
        "",
        "--state-dir",
        state.to_str().unwrap(),
    ]));
    assert!(state.join("snapshot.json").exists());
    let model = |dir: &str| {
        flowcast()
            .args([
                "model",
                "models/nova_volume_attach.flow",
                "--format",
                "json",
            ])
            .args(["--state-dir", dir])
            .output()
            .unwrap()
    };
    let out = model(state.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 100 attaches learned (decayed a little by the half-life): far from "observed 0".
    assert!(
        observed_total(&out) > 90.0,
        "the service's learned counts are shown: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("snapshot.json"));

    // An empty directory: the a priori counts, and a word saying so.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = model(empty.to_str().unwrap());
    assert!(out.status.success());
    assert_eq!(observed_total(&out), 0.0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a priori counts only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = dir.path().join("no-such-state");
    let (c, err) = code(
        flowcast()
            .args(["model", "models/nova_volume_attach.flow", "--state-dir"])
            .arg(&missing),
    );
    assert_eq!(c, 2, "a state directory that does not exist:\n{err}");
    assert!(err.contains("no-such-state"), "{err}");
}
