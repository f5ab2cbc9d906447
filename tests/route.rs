//! `flowcast route` (issue 16, item 2) on a real nats-server with JetStream: every message of
//! about 100,000 lands on the subject of its object's partition exactly once, in the source's
//! order within each partition, although the router is killed with SIGKILL four times at
//! seeded random moments (`FLOWCAST_ROUTE_SEED=N` replays a run).

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 8;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The bundled flows simulated together, merged in time order, with a few lines that do not
/// decode and a few no flow keys.
fn stream(dir: &Path, objects: usize) -> Vec<String> {
    let mut lines = simulated_bundled_lines(dir, objects, &["--seed", "5"]);
    for i in 0..lines.len() / 1000 {
        lines.insert(i * 500 + 7, "{not json".to_string());
        lines.insert(
            i * 500 + 11,
            r#"{"event_type":"nobody.reads.this"}"#.to_string(),
        );
    }
    lines
}

/// The partitions each line goes to, by the library's own routing.
fn expected(lines: &[String]) -> Vec<Vec<u32>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir("models").unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "flow") {
            files.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    let c = flowcast::model::compile_files(files);
    assert!(!c.has_errors());
    let engine = flowcast::engine::Engine::new(c.flows);
    let projection = engine.projection();
    lines
        .iter()
        .map(
            |l| match flowcast::engine::message::decode_projected(l.as_bytes(), &projection) {
                Ok(m) => flowcast::service::route::partitions_of(&engine, &m, PARTITIONS),
                Err(_) => Vec::new(),
            },
        )
        .collect()
}

fn start_router(url: &str, log: &Path) -> Child {
    start_router_batch(url, log, 400)
}

fn start_router_batch(url: &str, log: &Path, batch: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .args([
            "route",
            "--models",
            "models",
            "--url",
            url,
            "--from-stream",
            "SRC",
        ])
        .args(["--partitions", &PARTITIONS.to_string(), "--ack-wait", "2s"])
        .args(["--batch", &batch.to_string()])
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Messages in the partition stream.
fn stored(url: &str) -> u64 {
    block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        match js.get_stream("FLOWCAST_PARTS").await {
            Ok(mut s) => s.info().await.unwrap().state.messages,
            Err(_) => 0,
        }
    })
}

/// The lines published to a JetStream stream `SRC` (subjects `src.>`), one message each; the
/// file they were published from.
fn publish_source(nats: &NatsServer, dir: &Path, lines: &[String]) -> std::path::PathBuf {
    block_on(async {
        let js =
            async_nats::jetstream::new(async_nats::connect(nats.url().as_str()).await.unwrap());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "SRC".into(),
            subjects: vec!["src.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let file = dir.join("in.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    publish(nats, &file, "src.nova", true);
    file
}

/// SIGTERM through the `kill` command (the crate forbids `unsafe`).
fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn a_router_killed_four_times_puts_every_message_on_its_partition_once_and_in_order() {
    let seed = seed_from_env("FLOWCAST_ROUTE_SEED");
    eprintln!("route seed {seed} (FLOWCAST_ROUTE_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let nats = NatsServer::start(true);
    let url = nats.url();
    let tmp = tempfile::tempdir().unwrap();
    let lines = stream(tmp.path(), 8000);
    let want = expected(&lines);
    let total: u64 = want.iter().map(|p| p.len() as u64).sum();
    assert!(want.iter().filter(|p| p.is_empty()).count() >= 100);
    publish_source(&nats, tmp.path(), &lines);

    // Killed four times at random points of the stream; the fifth runs to the end and stops
    // on SIGTERM.
    let kills = 4;
    let logs: Vec<_> = (0..=kills)
        .map(|i| tmp.path().join(format!("router{i}.log")))
        .collect();
    let mut points: Vec<u64> = (0..kills).map(|_| rng.below(total)).collect();
    points.sort_unstable();
    for (i, stop_at) in points.into_iter().enumerate() {
        let mut r = start_router(&url, &logs[i]);
        let start = Instant::now();
        while stored(&url) < stop_at {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "router {i} stalled"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r.kill().unwrap();
        r.wait().unwrap();
    }
    let mut r = start_router(&url, &logs[kills]);
    let start = Instant::now();
    while stored(&url) < total {
        if start.elapsed() > Duration::from_secs(60) {
            r.kill().unwrap();
            r.wait().unwrap();
            panic!(
                "{} of {total} stored after 60 s; the router said:\n{}",
                stored(&url),
                std::fs::read_to_string(&logs[kills]).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(3000)); // anything more would come now
    assert_eq!(stored(&url), total, "each message once per partition");
    sigterm(r.id());
    assert!(r.wait().unwrap().success());
    let stderr = std::fs::read_to_string(&logs[kills]).unwrap();
    let summary: serde_json::Value = serde_json::from_str(
        stderr
            .lines()
            .rfind(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no summary in {stderr}")),
    )
    .unwrap();
    assert!(summary["read"].as_u64().unwrap() > 0, "{summary}");
    // What a killed router had fetched and not acknowledged was routed first by the next.
    let caught_up = logs[1..]
        .iter()
        .filter(|l| std::fs::read_to_string(l).unwrap().contains("Catching up"))
        .count();
    eprintln!("{caught_up} of {kills} restarts caught up on unacknowledged messages");
    assert!(
        caught_up >= 1,
        "no kill landed inside a batch: the test proved nothing"
    );

    // Each message, by its source sequence, on exactly the partitions its keys hash to, with
    // its bytes, and each partition in the source's order.
    let got: Vec<(u32, u64)> = block_on(async {
        use futures::StreamExt;
        let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
        let stream = js.get_stream("FLOWCAST_PARTS").await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        let mut msgs = consumer.messages().await.unwrap();
        let mut out = Vec::new();
        while (out.len() as u64) < total {
            let m = msgs.next().await.unwrap().unwrap();
            let p: u32 = m.subject.rsplit('.').next().unwrap().parse().unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Flowcast-Source"))
                .unwrap()
                .to_string();
            let seq: u64 = id
                .strip_prefix("SRC:")
                .and_then(|s| s.split('/').next())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(id, format!("SRC:{seq}/{p}"));
            assert_eq!(m.payload.as_ref(), lines[seq as usize - 1].as_bytes());
            out.push((p, seq));
        }
        out
    });
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &(p, seq) in &got {
        by_partition.entry(p).or_default().push(seq);
    }
    for (p, seqs) in &by_partition {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {p} out of source order"
        );
    }
    assert_eq!(
        by_partition.len(),
        PARTITIONS as usize,
        "every partition used"
    );
    let got: BTreeSet<(u32, u64)> = got.into_iter().collect();
    let want: BTreeSet<(u32, u64)> = want
        .iter()
        .enumerate()
        .flat_map(|(i, ps)| ps.iter().map(move |&p| (p, i as u64 + 1)))
        .collect();
    assert_eq!(got, want);
}

/// Outcomes a message caused, by (flow, object, outcome, kind): timers at the very end of a
/// stream depend on which later messages a process sees, the rest must not.
fn message_outcomes(records: &[serde_json::Value]) -> BTreeSet<(String, String, String, String)> {
    records
        .iter()
        .filter(|r| r["type"] == "outcome" && r["cause"]["kind"] == "message")
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("flow"), s("object"), s("outcome"), s("kind"))
        })
        .collect()
}

#[test]
fn two_workers_on_a_partition_each_end_every_object_as_one_replay_does() {
    let nats = NatsServer::start(true);
    let url = nats.url();
    let tmp = tempfile::tempdir().unwrap();
    let lines = stream(tmp.path(), 1200);
    let file = publish_source(&nats, tmp.path(), &lines);
    let mut router = Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .args([
            "route",
            "--models",
            "models",
            "--url",
            &url,
            "--from-stream",
            "SRC",
        ])
        .args(["--partitions", "2"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let routed: u64 = {
        let files: Vec<(String, Vec<u8>)> = std::fs::read_dir("models")
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "flow"))
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        let engine = flowcast::engine::Engine::new(flowcast::model::compile_files(files).flows);
        let projection = engine.projection();
        lines
            .iter()
            .filter_map(|l| {
                flowcast::engine::message::decode_projected(l.as_bytes(), &projection).ok()
            })
            .map(|m| flowcast::service::route::partitions_of(&engine, &m, 2).len() as u64)
            .sum()
    };
    let start = Instant::now();
    while stored(&url) < routed {
        assert!(start.elapsed() < Duration::from_secs(60), "routing stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(router.id());
    assert!(router.wait().unwrap().success());
    // One worker per partition: `flowcast run` reading its partition's subject.
    let models = std::fs::canonicalize("models").unwrap();
    let mut records = Vec::new();
    let mut applied = 0;
    for w in 0..2 {
        let dir = tmp.path().join(format!("worker{w}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "models: {models:?}\nstate_dir: {:?}\nsnapshot_interval_ms: 1h\n\
             source: {{ kind: jetstream, stream: FLOWCAST_PARTS, subjects: [\"flowcast.part.{w}\"], consumer: worker{w}, create: true }}\n\
             nats: {{ url: \"{url}\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}",
            dir.join("state")
        );
        let s = Service::start(&dir, &config);
        s.wait_until("the partition applied", || {
            block_on(async {
                let js =
                    async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
                let s = js.get_stream("FLOWCAST_PARTS").await.unwrap();
                let mut c: async_nats::jetstream::consumer::PullConsumer =
                    s.get_consumer(&format!("worker{w}")).await.unwrap();
                let i = c.info().await.unwrap();
                i.num_pending == 0 && i.num_ack_pending == 0
            })
        });
        applied += s.messages() as u64;
        records.extend(s.stop());
    }
    assert_eq!(applied, routed, "each worker applied its partition, once");
    let replay = replay_records("models", &file);
    let (one, two) = (message_outcomes(&replay), message_outcomes(&records));
    assert!(one.len() > 3000, "{} outcomes", one.len());
    assert_eq!(two, one);
}

/// A regression: a batch is acknowledged once all its publishes are confirmed, but the client
/// holds at most 5,000 publishes unconfirmed and then waits: a batch of more (here up to
/// 20,000 messages, some keyed to two partitions) stopped the router for good.
#[test]
fn a_batch_of_more_publishes_than_the_client_holds_unconfirmed_is_routed_whole() {
    let nats = NatsServer::start(true);
    let url = nats.url();
    let tmp = tempfile::tempdir().unwrap();
    let lines = stream(tmp.path(), 1500);
    let want: u64 = expected(&lines).iter().map(|p| p.len() as u64).sum();
    assert!(want > 10_000, "{want} publishes");
    publish_source(&nats, tmp.path(), &lines);
    let log = tmp.path().join("router.log");
    let mut router = start_router_batch(&url, &log, 20_000);
    let start = Instant::now();
    while stored(&url) < want {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = router.kill();
            panic!(
                "{} of {want} publishes stored after 60 s:\n{}",
                stored(&url),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(router.id());
    assert!(router.wait().unwrap().success());
    assert_eq!(stored(&url), want);
}
