//! Learning only from normal operation (issue 12, item 3): a baseline learned from healthy data
//! with `flowcast replay --state-dir`, then `replay --frozen` or `run` with `learning: frozen`:
//! a failure repeated many times stays surprising, where live learning soon takes it for normal.

mod common;

use common::*;
use std::io::Write as _;
use std::path::Path;

/// `n` jobs one after another from `t0` seconds; every `rare_every`-th takes the rare branch
/// (0: none), one in ten of the others retries.
fn write_jobs(path: &Path, prefix: &str, n: usize, t0: u64, rare_every: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let middle = if rare_every > 0 && i % rare_every == 0 {
            "rare"
        } else if i % 10 == 3 {
            "retry"
        } else {
            "ok"
        };
        for (k, e) in ["start", "check", middle, "done"].iter().enumerate() {
            writeln!(
                f,
                r#"{{"event_type":"{e}","timestamp":{},"payload":{{"id":"{prefix}{i}"}}}}"#,
                1_767_225_600 + t0 + (i * 4 + k) as u64
            )
            .unwrap();
        }
    }
}

fn replay(models: &Path, state: &Path, input: &Path, frozen: bool) -> Vec<serde_json::Value> {
    let mut c = flowcast();
    c.args(["replay", "--models"])
        .arg(models)
        .arg("--state-dir")
        .arg(state)
        .arg(input);
    if frozen {
        c.arg("--frozen");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn anomalous_objects(records: &[serde_json::Value]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .filter(|r| r["type"] == "anomaly")
        .map(|r| r["object"].as_str().unwrap().to_string())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_frozen_baseline_keeps_flagging_a_repeated_failure_that_live_learning_takes_for_normal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = d.join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("job.flow"), BRANCHES).unwrap();
    // The healthy period: 1,500 jobs, none rare.
    write_jobs(&d.join("healthy.jsonl"), "h", 1500, 0, 0);
    let baseline = d.join("baseline");
    let healthy = replay(&models, &baseline, &d.join("healthy.jsonl"), false);
    assert!(
        anomalous_objects(&healthy).len() < 15,
        "{}",
        anomalous_objects(&healthy).len()
    );
    // Then an incident: one job in three takes the rare branch, 100 in all.
    write_jobs(&d.join("incident.jsonl"), "x", 300, 10_000, 3);
    let rare: std::collections::BTreeSet<String> = (0..300)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("x{i}"))
        .collect();

    // Live learning: the failures soon teach the model that `rare` is a normal branch.
    let live_dir = d.join("live");
    copy_dir(&baseline, &live_dir);
    let live = anomalous_objects(&replay(
        &models,
        &live_dir,
        &d.join("incident.jsonl"),
        false,
    ));
    let live_caught = live.intersection(&rare).count();
    assert!(
        live_caught < 60,
        "live learning still caught {live_caught} of 100"
    );

    // Frozen: every failing job is flagged, and the baseline is left as it was.
    let frozen_dir = d.join("frozen");
    copy_dir(&baseline, &frozen_dir);
    let before: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&frozen_dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    let frozen = anomalous_objects(&replay(
        &models,
        &frozen_dir,
        &d.join("incident.jsonl"),
        true,
    ));
    assert_eq!(frozen.intersection(&rare).count(), 100, "frozen caught");
    assert!(
        frozen.difference(&rare).count() <= 5,
        "false alarms: {:?}",
        frozen.difference(&rare).collect::<Vec<_>>()
    );
    for (name, bytes) in before {
        assert_eq!(
            std::fs::read(frozen_dir.join(&name)).unwrap(),
            bytes,
            "{name:?} changed"
        );
    }

    // The service with `learning: frozen` over the same baseline gives the same anomalies.
    let svc_dir = d.join("svc");
    copy_dir(&baseline, &svc_dir.join("state"));
    let config = format!(
        "models: {:?}\nstate_dir: {:?}\nlearning: frozen\nsource: {{ kind: file, path: {:?} }}\n\
         clock: {{ mode: event }}\nwatch: false\n",
        models.display().to_string(),
        svc_dir.join("state").display().to_string(),
        d.join("incident.jsonl").display().to_string(),
    );
    std::fs::write(svc_dir.join("flowcast.yaml"), config).unwrap();
    let out = flowcast()
        .args(["run", "--config"])
        .arg(svc_dir.join("flowcast.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(anomalous_objects(&records), frozen);
}
