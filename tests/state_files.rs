//! The state directory under faults and hostile content: a stale temporary file on a full
//! disk, a final snapshot that cannot be written, a snapshot from an unknown format version,
//! and learned counts whose weights are negative or not finite. Each is refused or recovered
//! with a clear message, never restored into nonsense and never reported as success. And a
//! restart from the state directory alerts exactly as one uninterrupted replay.

mod common;

use common::*;
use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

const VOLUME: &str = "examples/nova_volume_attach/events.jsonl";

/// `flowcast run` on the bundled models over a JSONL file, no HTTP, with `state_dir`.
fn run_over(input: &Path, state: &Path) -> std::process::Output {
    flowcast()
        .args(["run", "--models", "models", "--http", ""])
        .arg("--input")
        .arg(input)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap()
}

/// A snapshot written by a real run over the volume-attach stream, as JSON to tamper with.
fn good_snapshot(state: &Path) -> serde_json::Value {
    let out = run_over(Path::new(VOLUME), state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(state.join("snapshot.json")).unwrap()).unwrap()
}

#[test]
fn a_snapshot_of_an_unknown_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut snap = good_snapshot(&state);
    snap["version"] = serde_json::json!(99);
    std::fs::write(state.join("snapshot.json"), snap.to_string()).unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out = run_over(&empty, &state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("version 99 is not supported"), "{err}");
    // The refused snapshot is left as it was, not overwritten by an empty state.
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("snapshot.json")).unwrap()).unwrap();
    assert_eq!(kept["version"], 99);
}

#[test]
fn a_snapshot_with_a_negative_weight_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut snap = good_snapshot(&state);
    let t = &mut snap["flows"]["nova_volume_attach"]["learned"]["transitions"][0];
    assert!(t["weight"].as_f64().unwrap() > 0.0, "{t}");
    t["weight"] = serde_json::json!(-1000.0);
    std::fs::write(state.join("snapshot.json"), snap.to_string()).unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out = run_over(&empty, &state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("flow `nova_volume_attach`"), "{err}");
    assert!(err.contains("is -1000"), "{err}");
}

#[test]
fn learned_counts_with_negative_or_infinite_weights_are_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_ok(
        flowcast()
            .args(["replay", "--models", "models", "--state-dir"])
            .arg(&state)
            .arg(VOLUME)
            .stdout(Stdio::null()),
    );
    let path = state.join("learned.json");
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // A negative weight, a negative count and an infinite one (JSON has no literal for it;
    // 1e999 overflows to infinity when read).
    for (field, value) in [("weight", "-5.0"), ("count", "-1.0"), ("weight", "1e999")] {
        let mut bad = good.clone();
        bad["flows"]["nova_volume_attach"]["transitions"][0][field] = serde_json::json!(0.125);
        let text = bad.to_string().replacen("0.125", value, 1);
        std::fs::write(&path, text).unwrap();
        for cmd in [
            vec!["replay", "--models", "models", VOLUME, "--state-dir"],
            vec!["model", "models", "--state-dir"],
        ] {
            let out = flowcast().args(&cmd).arg(&state).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{cmd:?} with {field} {value}: {err}"
            );
            assert!(
                err.contains("must be finite and not negative")
                    || err.contains("not a flowcast state file"),
                "{cmd:?} with {field} {value}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

/// A tmpfs of 64 KB mounted for the test (we are root in CI), unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a 64 KB tmpfs needs root");
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_stale_temporary_file_on_a_full_disk_does_not_block_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _disk = SmallDisk::mount(&state);
    // What an earlier process (another pid) left when it died mid-write: it fills the disk.
    let stale = state.join(".snapshot.json.tmp-999999");
    let mut f = std::fs::File::create(&stale).unwrap();
    let chunk = vec![b'x'; 4096];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let out = run_over(Path::new(VOLUME), &state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("snapshot.json")).unwrap()).unwrap();
    assert_eq!(snap["stats"]["matched"], 199, "{err}");
    assert!(!stale.exists());
}

#[test]
fn a_final_snapshot_that_cannot_be_written_fails_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut child = flowcast()
        .args(["run", "--models", "models", "--http", "", "--input", "-"])
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&std::fs::read(VOLUME).unwrap()).unwrap();
    // The service created the state directory at start; replace it with a file, so that
    // nothing can be written there any more (root ignores permissions, not file types).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !state.is_dir() {
        assert!(std::time::Instant::now() < deadline, "no state directory");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, "not a directory").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("final snapshot could not be written"), "{err}");
}

/// Alerts as (object, state, time) and resolutions as (object, reason, time): what a restart
/// must not change (the risk numbers in them may: a restored model solves its chain afresh).
fn alert_moments(records: &[serde_json::Value]) -> Vec<(String, String, String, String)> {
    let mut m: Vec<_> = records
        .iter()
        .filter(|r| matches!(r["type"].as_str(), Some("alert" | "resolved")))
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            let what = if s("type") == "alert" {
                s("state")
            } else {
                s("reason")
            };
            (s("type"), s("object"), what, s("at"))
        })
        .collect();
    m.sort();
    m
}

/// The AMQP chaos test's alert difference (issue 13), through the binary: `flowcast run` over
/// the first 1,536 messages of the chaos stream (where that test's first snapshot falls), then
/// again over the rest from the state directory, must alert and resolve exactly as one replay
/// of the whole. The restore used to look at every object in flight with what the model had
/// learned since it was judged: objects that entered `x` before anything was known of its exits
/// alerted after the restart and never in the replay.
#[test]
fn a_restart_from_the_state_directory_alerts_exactly_as_one_uninterrupted_replay() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("chaos.flow"), CHAOS_FLOW).unwrap();
    let input = dir.path().join("stream.jsonl");
    let total = write_chaos_stream(&input, 2_000, true);
    let state = dir.path().join("state");
    let mut live = Vec::new();
    for (i, range) in [0..1_536, 1_536..total].into_iter().enumerate() {
        let piece = dir.path().join(format!("part{i}.jsonl"));
        part(&input, range, &piece);
        // Event time only, as the chaos tests run: the wall clock would move the recorded
        // stream's objects by months.
        let config = dir.path().join("flowcast.yaml");
        std::fs::write(
            &config,
            format!(
                "models: {:?}\nstate_dir: {:?}\nsource: {{ kind: file, path: {:?} }}\n\
                 clock: {{ mode: event, idle_after_ms: \"0\" }}\nhttp: {{ listen: \"\" }}\n",
                models.display().to_string(),
                state.display().to_string(),
                piece.display().to_string(),
            ),
        )
        .unwrap();
        let out = run_ok(flowcast().arg("run").arg("--config").arg(&config));
        live.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    let replayed = replay_records(models.to_str().unwrap(), &input);
    let expected = alert_moments(&replayed);
    assert!(expected.len() >= 20, "{expected:?}");
    let got = alert_moments(&live);
    let only_live: Vec<_> = got.iter().filter(|a| !expected.contains(a)).collect();
    let only_replay: Vec<_> = expected.iter().filter(|a| !got.contains(a)).collect();
    assert!(
        only_live.is_empty() && only_replay.is_empty(),
        "only after the restart: {only_live:?}; only in the replay: {only_replay:?}"
    );
}
