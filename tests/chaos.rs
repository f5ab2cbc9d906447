//! Chaos: `flowcast run` on a JetStream backlog of 300,000 messages while flowcast and
//! nats-server are killed with SIGKILL at random moments. The invariants: every message applied
//! exactly once, the consumer's acknowledgement floor reaches the end of the stream, and the
//! learned counts equal one uninterrupted replay of the same messages.
//!
//! The moments are drawn from a seeded generator; the seed is printed, and
//! `FLOWCAST_CHAOS_SEED=N cargo test --test chaos` replays a failing run.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// The consumer's acknowledgement floor (stream sequence), or None while the server is down.
fn ack_floor(url: &str) -> Option<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url))
            .await
            .ok()?
            .ok()?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("CHAOS").await.ok()?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("flowcast").await.ok()?;
        let _ = &mut stream;
        Some(consumer.info().await.ok()?.ack_floor.stream_sequence)
    })
}

#[test]
fn kills_of_flowcast_and_nats_server_under_a_backlog_lose_nothing_and_count_nothing_twice() {
    let seed = seed_from_env("FLOWCAST_CHAOS_SEED");
    eprintln!("chaos seed {seed} (FLOWCAST_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    // FLOWCAST_CHAOS_KEEP=1 keeps the folder (logs, snapshots) for a post-mortem.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let _tmp = if std::env::var_os("FLOWCAST_CHAOS_KEEP").is_some() {
        eprintln!("keeping {}", dir.display());
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };
    let models = dir.as_path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("chaos.flow"), CHAOS_FLOW).unwrap();
    let input = dir.as_path().join("stream.jsonl");
    let total = write_chaos_stream(&input, 100_000, false);
    assert_eq!(total, 300_000);

    let mut nats = NatsServer::start(true);
    let state = dir.as_path().join("state");
    let config = format!(
        "models: {:?}\nstate_dir: {:?}\nsnapshot_interval_ms: 1s\nbatch_size: 256\n\
         source: {{ kind: jetstream, stream: CHAOS, subjects: [\"chaos.>\"], ack_wait_ms: 3s }}\n\
         nats: {{ url: \"{}\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}",
        models.display().to_string(),
        state.display().to_string(),
        nats.url()
    );
    // The stream and its durable consumer exist before the backlog is published: start once.
    Service::start(dir.as_path(), &config).stop();
    publish(&nats, &input, "chaos.events", true);

    let mut svc = Some(Service::start(dir.as_path(), &config));
    let (mut kills_flowcast, mut kills_nats) = (0, 0);
    let started = Instant::now();
    // Seven kills at random moments, at least two of each, while the backlog is being applied:
    // some before the first snapshot of a run, most after.
    for i in 0..7 {
        std::thread::sleep(Duration::from_millis(300 + rng.below(2700)));
        let kill_nats = match i {
            1 | 3 => true,
            0 | 2 => false,
            _ => rng.below(2) == 0,
        };
        if kill_nats {
            kills_nats += 1;
            nats.restart();
        } else {
            kills_flowcast += 1;
            svc.take().unwrap().kill9();
            // Restart at once or after a pause, sometimes right into a server restart.
            std::thread::sleep(Duration::from_millis(rng.below(500)));
            svc = Some(Service::start(dir.as_path(), &config));
        }
    }
    eprintln!(
        "{kills_flowcast} kills of flowcast and {kills_nats} of nats-server in {:?}",
        started.elapsed()
    );
    let mut svc = svc.unwrap();
    // Done when the consumer has acknowledged the whole stream.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let floor = ack_floor(&nats.url());
        if floor == Some(total as u64) {
            break;
        }
        if let Some(status) = svc.try_wait() {
            panic!(
                "flowcast exited ({status:?}) with the ack floor at {floor:?} (seed {seed}); log:\n{}",
                svc.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "ack floor {floor:?} never reached {total}; log:\n{}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, model) = http(svc.http_port, "GET", "/api/flows/chaos/model");
    let live: serde_json::Value = serde_json::from_str(&model).unwrap();
    svc.stop();
    let snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("snapshot.json")).unwrap()).unwrap();
    let stats = &snap["stats"];
    let counted: u64 = ["matched", "unmatched", "missing_key", "late", "after_end"]
        .iter()
        .filter_map(|k| stats[*k].as_u64())
        .sum();
    assert_eq!(
        snap["source_position"].as_u64(),
        Some(total as u64),
        "position"
    );
    assert_eq!(
        stats["messages"].as_u64(),
        Some(total as u64),
        "every message applied exactly once (seed {seed}); stats {stats} (sum {counted})"
    );

    // The learned counts are those of one uninterrupted replay.
    let replayed = dir.as_path().join("replayed");
    let out = flowcast()
        .args(["replay", "--models"])
        .arg(&models)
        .arg("--state-dir")
        .arg(&replayed)
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    // No alert lost, none for an object that should have none, and every alert resolved: the
    // records of all runs together (a crash may repeat records since the last snapshot).
    let parse = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // In the order the runs happened (stdout-N.jsonl, N growing with each start).
    let mut outputs: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?.to_string();
            let n = name
                .strip_prefix("stdout-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()?;
            Some((n, path))
        })
        .collect();
    outputs.sort();
    let mut live_records = Vec::new();
    for (_, path) in &outputs {
        live_records.extend(parse(&std::fs::read_to_string(path).unwrap()));
    }
    let (replay_alerts, replay_open) = chaos_alerts(&parse(&String::from_utf8_lossy(&out.stdout)));
    let (live_alerts, live_open) = chaos_alerts(&live_records);
    assert!(replay_alerts.len() >= 900, "{}", replay_alerts.len());
    assert!(replay_open.is_empty());
    assert_eq!(live_alerts, replay_alerts, "alerts (seed {seed})");
    assert!(
        live_open.is_empty(),
        "alerts never resolved (seed {seed}): {live_open:?}"
    );
    let out = flowcast()
        .args(["model", "--format", "json", "--state-dir"])
        .arg(&replayed)
        .arg(models.join("chaos.flow"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let expected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        learned_transitions(&live),
        learned_transitions(&expected),
        "seed {seed}"
    );
}
