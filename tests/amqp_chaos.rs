//! Chaos over AMQP: `flowcast run` reading a RabbitMQ backlog of 300,000 oslo-enveloped
//! notifications while flowcast is killed with SIGKILL and RabbitMQ is killed and restarted at
//! random moments. The invariants: every message applied exactly once (the broker redelivers
//! what was not acknowledged; flowcast recognises what it had applied by the message id kept in
//! its snapshot), the queue ends empty with nothing unacknowledged, and the learned counts and
//! alerts equal one uninterrupted replay of the same messages.
//!
//! The moments are drawn from a seeded generator, but for the first kill of flowcast, which
//! comes right after its first snapshot; the seed is printed, and
//! `FLOWCAST_CHAOS_SEED=N cargo test --test amqp_chaos` replays a failing run
//! (`FLOWCAST_CHAOS_KEEP=1` keeps its folder: logs, snapshots, every run's output, the replay's).

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn kills_of_flowcast_and_rabbitmq_under_a_backlog_lose_nothing_and_count_nothing_twice() {
    let seed = seed_from_env("FLOWCAST_CHAOS_SEED");
    eprintln!("chaos seed {seed} (FLOWCAST_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    // FLOWCAST_CHAOS_KEEP=1 keeps the folder (logs, snapshots, outputs) for a post-mortem.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let _tmp = if std::env::var_os("FLOWCAST_CHAOS_KEEP").is_some() {
        eprintln!("keeping {}", dir.display());
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };
    let models = dir.join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("chaos.flow"), CHAOS_FLOW).unwrap();
    let input = dir.join("stream.jsonl");
    let total = write_chaos_stream(&input, 100_000, true);
    assert_eq!(total, 300_000);

    let mut rabbit = RabbitMq::start();
    let state = dir.join("state");
    let config = format!(
        "models: {:?}\nstate_dir: {:?}\nsnapshot_interval_ms: 1s\nbatch_size: 256\n\
         source: {{ kind: amqp, url: {:?}, exchanges: [chaos], queue: flowcast_chaos, prefetch: 2000 }}\n\
         clock: {{ mode: event, idle_after_ms: \"0\" }}",
        models.display().to_string(),
        state.display().to_string(),
        rabbit.url(),
    );
    // The queue exists and is bound before the backlog is published: start once.
    Service::start(&dir, &config).stop();
    let out = flowcast()
        .arg("publish")
        .arg(&input)
        .args(["--amqp", &rabbit.url(), "--exchange", "chaos"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut svc = Some(Service::start(&dir, &config));
    let (mut kills_flowcast, mut kills_rabbit) = (0, 0);
    let started = Instant::now();
    // Six kills at random moments while the backlog is being applied: at least two of the
    // broker, some right after a restart of flowcast.
    for i in 0..6 {
        let pause = Duration::from_millis(300 + rng.below(2700));
        if i == 0 {
            // The first comes right after the run's first snapshot, early in the stream (about
            // message 1,536: three quarters of `prefetch`), where objects in flight had been
            // judged with less than the model knows by then. A restore from there fired alerts
            // that no uninterrupted replay fires, in about one run of twelve when this moment
            // was random (ARCHITECTURE.md, "A restart is invisible to the alerts").
            let s = svc.as_ref().unwrap();
            s.wait_until("the first snapshot", || {
                s.metric("flowcast_snapshots_total") >= 1.0
            });
        } else {
            std::thread::sleep(pause);
        }
        let kill_rabbit = match i {
            1 | 3 => true,
            0 | 2 => false,
            _ => rng.below(3) == 0,
        };
        if kill_rabbit {
            kills_rabbit += 1;
            rabbit.kill();
            std::thread::sleep(Duration::from_millis(rng.below(1500)));
            rabbit.respawn();
        } else {
            kills_flowcast += 1;
            svc.take().unwrap().kill9();
            std::thread::sleep(Duration::from_millis(rng.below(500)));
            svc = Some(Service::start(&dir, &config));
        }
    }
    eprintln!(
        "{kills_flowcast} kills of flowcast and {kills_rabbit} of RabbitMQ in {:?}",
        started.elapsed()
    );
    let mut svc = svc.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = svc.try_wait() {
            panic!(
                "flowcast exited ({status:?}) (seed {seed}); log:\n{}",
                svc.log()
            );
        }
        let done = svc.messages() as usize >= total
            && svc.metric("flowcast_amqp_unacknowledged") == 0.0
            && svc.metric("flowcast_amqp_connected") == 1.0;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} messages (seed {seed}); log:\n{}",
            svc.messages(),
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, model) = http(svc.http_port, "GET", "/api/flows/chaos/model");
    let live: serde_json::Value = serde_json::from_str(&model).unwrap();
    let skipped = svc.metric("flowcast_redeliveries_skipped_total");
    svc.stop();
    eprintln!("redeliveries skipped: {skipped}");
    let snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("snapshot.json")).unwrap()).unwrap();
    assert_eq!(
        snap["stats"]["messages"].as_u64(),
        Some(total as u64),
        "every message applied exactly once (seed {seed}); stats {}",
        snap["stats"]
    );
    // Nothing left in the queue: everything applied was acknowledged.
    let after = Service::start(&dir, &config);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        after.messages() as usize,
        total,
        "nothing came back (seed {seed})"
    );
    after.stop();

    let replayed = dir.join("replayed");
    let out = flowcast()
        .args(["replay", "--models"])
        .arg(&models)
        .arg("--state-dir")
        .arg(&replayed)
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dir.join("replay.jsonl"), &out.stdout).unwrap();
    let parse = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
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
    assert!(
        live_alerts == replay_alerts,
        "alerts (seed {seed}): only live {:?}, only replay {:?}; live stats {}; replay summary {}",
        live_alerts
            .difference(&replay_alerts)
            .take(20)
            .collect::<Vec<_>>(),
        replay_alerts
            .difference(&live_alerts)
            .take(20)
            .collect::<Vec<_>>(),
        snap["stats"],
        String::from_utf8_lossy(&out.stderr)
    );
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
