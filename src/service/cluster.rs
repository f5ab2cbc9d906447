//! A cluster worker (`flowcast run` with a `cluster` section; issue 16, items 2-4): it owns
//! the partitions the server pins to it, keeps one engine per partition, and saves each
//! partition's state where any other worker can take it over.
//!
//! Ownership and failover are JetStream's, not a protocol written here. Each partition p has a
//! durable pull consumer `<consumer_prefix>-<p>` on `<prefix>.<p>` with one priority group and
//! the `pinned_client` policy (nats-server 2.11+, ADR-42). Every worker pulls from every
//! partition; the server delivers a partition to one worker at a time, marking its messages
//! with a `Nats-Pin-Id` that the worker repeats in its next pulls; a worker that stops pulling
//! for `pin_ttl` is unpinned and a waiting one is pinned. async-nats 0.46 does not send the pin
//! id in its pull requests (its `PriorityPolicy::PinnedClient` is "not yet supported"), nor set
//! `priority_timeout`: the consumers are created and pulled with the JetStream API's own
//! subjects (`$JS.API.CONSUMER.CREATE`, `$JS.API.CONSUMER.MSG.NEXT`), which is a few lines.
//!
//! Nothing lost, nothing applied twice, no record repeated:
//! - One engine per partition, so that a partition's state is its own and moves whole (Flink's
//!   key groups): its objects, timers, alerts, learned counts and the partition-stream
//!   sequence it covers are one `EngineSnapshot`, saved in the KV bucket `state_bucket` under
//!   `part-<p>` (or, when it does not fit one message, in the object store `state_objects`
//!   under a unique name that the entry holds). A partition's engine sees only its own messages, so what it does depends on
//!   them alone: a replay of the partition's messages gives the same records.
//! - A worker pinned on p reads `part-<p>` and writes it back at once with compare-and-set
//!   (its revision is the fence: a worker that lost p without knowing it fails its next write
//!   and drops p), restores it, and reads the stream itself from the sequence after the
//!   snapshot up to its first delivery (what the last owner was delivered and did not save).
//!   Deliveries at or below the applied sequence (redeliveries) are skipped.
//! - A delivery is acknowledged only once a snapshot covering it is written, and a snapshot is
//!   written only once the records of the messages it covers are stored: a crash at any point
//!   leaves the next owner to apply again exactly what no saved snapshot covers.
//! - Records go to `<records_prefix>.<p>` with `Nats-Msg-Id` `<p>:<sequence>:<i>` (the
//!   message that caused them, and their rank): applying a message again after a failover
//!   gives the same records with the same ids, which the stream's duplicate window drops. The
//!   configured sinks get them too, at least once.
//! - A graceful stop writes a final snapshot of every partition, acknowledges, unpins, and
//!   removes the worker from `workers_bucket`.
//!
//! Balancing (`Worker::heartbeat`): each worker writes how many partitions it owns to the KV
//! bucket `workers_bucket` (entries expire after `worker_ttl_ms`) and reads the others'. It
//! waits to be pinned on partitions it does not own only while it owns fewer than its share
//! (ceil(P / live workers)), and hands its highest partition over (final snapshot, unpin)
//! while it owns two or more more than the live worker with the fewest, one at a time. The
//! pin stays the only ownership: the counts only decide who asks for it.
//!
//! Learned counts are shared across partitions at their snapshots (`service::learned`).

use super::config::{Cluster, Config};
use super::learned::{self, Shared};
use super::metrics::{ClusterView, Metrics, PartitionView};
use super::sink::Sinks;
use crate::engine::message::decode_projected;
use crate::engine::output::Record;
use crate::engine::snapshot::EngineSnapshot;
use crate::engine::Engine;
use crate::model::CompiledFlow;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long one pull request waits on the server.
const PULL_EXPIRES: Duration = Duration::from_millis(1000);

/// How long a worker that handed a partition over leaves it to the others (its puller does
/// not pull it), so that another worker's waiting pull is pinned.
const RELEASE_PAUSE_MS: i64 = 3_000;

/// The record publishes the JetStream client holds unconfirmed (its `max_ack_inflight`): one
/// more waits for a confirmation, for ever if nobody asks for one.
const CLIENT_INFLIGHT: usize = 8192;
/// Record publishes left unconfirmed across every partition before they are confirmed
/// without waiting for the next snapshot: below `CLIENT_INFLIGHT`, so a publish never waits.
const MAX_UNCONFIRMED: usize = 4096;

/// A partition's saved state: the engine's snapshot (its `source_position` is the last
/// partition-stream sequence applied) and who wrote it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    worker: String,
    engine: EngineSnapshot,
    /// What was folded in of the other partitions' learned steps, and this partition's own
    /// not yet published (`service::learned`).
    #[serde(default)]
    learned: Shared,
}

/// A KV entry for a snapshot too big for one message: the object holding it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pointer {
    object: String,
    bytes: usize,
}

/// What a live worker tells the others in the workers bucket.
#[derive(serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    owned: usize,
}

/// A delivery from a partition's consumer.
struct Delivery {
    seq: u64,
    /// The consumer's delivery count: contiguous, so a jump means deliveries were lost.
    cseq: u64,
    pending: u64,
    payload: Bytes,
    reply: String,
}

enum Event {
    /// The server pinned this worker on the partition (with this pin id).
    Pinned(u32, String),
    /// Deliveries, with the pin id they came under, and, for the first batch of a pin or
    /// after a jump in the delivery count, the consumer's last delivered stream sequence
    /// asked right after the batch came (before the next pull: see `pull`).
    Batch(u32, Option<String>, Vec<Delivery>, Option<u64>),
    /// The server pinned another worker (our pull was refused: 423).
    Lost(u32),
    /// Nothing to deliver: the partition is caught up.
    Idle(u32),
}

/// An owned partition.
struct Part {
    engine: Engine,
    applied: u64,
    saved: u64,
    /// The KV revision this worker last wrote: the next write must find it.
    revision: u64,
    /// Deliveries not yet acknowledged (their reply subjects).
    unacked: Vec<String>,
    /// Record publishes not yet confirmed.
    publishes: Vec<jetstream::context::PublishAckFuture>,
    /// The stream must be read up to the next delivery first (just pinned, or deliveries lost).
    catch_up: bool,
    last_cseq: u64,
    pinned_at: Instant,
    first_applied: bool,
    /// Learned steps shared: folded in, not yet published.
    shared: Shared,
    /// The object holding the snapshot this worker last wrote, when it was too big for the KV
    /// entry: deleted once a newer snapshot is written.
    object: Option<String>,
    /// Nothing is folded in while this is above `applied`: up to the consumer's position at
    /// the takeover, the last owner may have applied the same messages from the same snapshot,
    /// and only an engine that folds nothing in between gives the same records for them
    /// (folding changes predictions). 0 once the first delivery's catch-up has applied the
    /// partition up to that position (or at once when nothing was left unacknowledged).
    fold_after: u64,
}

pub async fn run(
    config: Config,
    cluster: Cluster,
    flows: Vec<CompiledFlow>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        cluster.partitions > 0,
        "cluster.partitions must be at least 1"
    );
    anyhow::ensure!(
        cluster.pin_ttl_ms > 0,
        "cluster.pin_ttl_ms must be more than zero"
    );
    let client = super::source::connect(&config.nats, metrics.clone()).await?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(CLIENT_INFLIGHT)
        .build(client.clone());
    let replicas = cluster.replicas.max(1);
    js.get_or_create_stream(jetstream::stream::Config {
        name: cluster.stream.clone(),
        subjects: vec![format!("{}.>", cluster.prefix)],
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("partition stream {}: {e}", cluster.stream))?;
    let parts_stream = js
        .get_stream(&cluster.stream)
        .await
        .map_err(|e| anyhow::anyhow!("partition stream {}: {e}", cluster.stream))?;
    js.get_or_create_stream(jetstream::stream::Config {
        name: cluster.records_stream.clone(),
        subjects: vec![format!("{}.>", cluster.records_prefix)],
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_millis(cluster.records_dedup_ms.max(1) as u64),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("records stream {}: {e}", cluster.records_stream))?;
    let state = match js.get_key_value(&cluster.state_bucket).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: cluster.state_bucket.clone(),
                history: 1,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("state bucket {}: {e}", cluster.state_bucket))?,
    };
    let objects = match js.get_object_store(&cluster.state_objects).await {
        Ok(o) => o,
        Err(_) => js
            .create_object_store(jetstream::object_store::Config {
                bucket: cluster.state_objects.clone(),
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("snapshot objects {}: {e}", cluster.state_objects))?,
    };
    // A KV value must fit one message, headers and subject included.
    let max_inline = (client.server_info().max_payload as usize)
        .saturating_sub(64 * 1024)
        .max(16 * 1024);
    let workers = match js.get_key_value(&cluster.workers_bucket).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: cluster.workers_bucket.clone(),
                history: 1,
                max_age: Duration::from_millis(cluster.worker_ttl_ms.max(1) as u64),
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("workers bucket {}: {e}", cluster.workers_bucket))?,
    };
    for p in 0..cluster.partitions {
        create_consumer(&client, &cluster, p).await?;
    }
    let sharing = if cluster.share_learned {
        js.get_or_create_stream(jetstream::stream::Config {
            name: cluster.learned_stream.clone(),
            subjects: vec![format!("{}.>", cluster.learned_prefix)],
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            // No longer than a batch is kept (the server refuses a longer window: a
            // `learned_max_age_ms` under `records_dedup_ms` stopped the worker at its start).
            duplicate_window: Duration::from_millis(
                cluster
                    .records_dedup_ms
                    .min(cluster.learned_max_age_ms)
                    .max(1) as u64,
            ),
            max_age: Duration::from_millis(cluster.learned_max_age_ms.max(1) as u64),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("learned stream {}: {e}", cluster.learned_stream))?;
        let stream = js
            .get_stream(&cluster.learned_stream)
            .await
            .map_err(|e| anyhow::anyhow!("learned stream {}: {e}", cluster.learned_stream))?;
        let cache = learned::Cache::start(stream.clone()).await?;
        Some((stream, cache))
    } else {
        None
    };

    let mut sinks = Sinks::spawn(
        &config.sinks,
        Some(client.clone()),
        metrics.clone(),
        &config.delivery,
    );
    let feed = Arc::new(super::feed::Feed::new());
    sinks.watch(feed.clone());

    // HTTP: metrics, readiness and `/api/cluster`. The engine queries and controls are not
    // served here (one engine per partition: a query would fan out, not built yet): their
    // receivers are dropped, so they answer 503 at once rather than hang.
    let (query_tx, _) = mpsc::channel::<super::http::Query>(1);
    let (control_tx, _) = mpsc::unbounded_channel();
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if !config.http.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .map_err(|e| anyhow::anyhow!("HTTP listen on {}: {e}", config.http.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(addr = %addr, "HTTP API listening.");
        tokio::spawn(super::http::serve(
            listener,
            super::http::Limits {
                header_timeout: Duration::from_millis(config.http.header_timeout_ms as u64),
                max_connections: config.http.max_connections.max(1),
                token: config.http.bearer_token()?,
            },
            metrics.clone(),
            feed,
            query_tx,
            control_tx,
            http_stop_rx,
        ));
    }

    let mut view = ClusterView {
        worker: cluster.worker.clone(),
        partitions: (0..cluster.partitions)
            .map(|p| (p, PartitionView::default()))
            .collect(),
        workers: BTreeMap::new(),
        released: 0,
        learned_published: 0,
        learned_folded: 0,
        merge_delay_ms: None,
    };
    *metrics.cluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(view.clone());

    // Unbounded: a puller must never wait for the engine task, or a long catch-up would stop
    // its pulls and lose the pin. What is in flight is bounded by the consumers'
    // `max_ack_pending` (deliveries not yet acknowledged) instead.
    // Pins and losses on their own channel, read first: a new owner shows (and claims) a
    // partition at once, not after the batches queued before it.
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Event>();
    // Per partition: until when (unix ms) its puller leaves it to the others.
    let pauses: Arc<Vec<AtomicI64>> =
        Arc::new((0..cluster.partitions).map(|_| AtomicI64::new(0)).collect());
    // Whether this worker waits to be pinned on partitions it does not own: only while it owns
    // fewer than its share (`Worker::heartbeat`), so that what another hands over comes to a
    // worker that has too few, not back to one that has enough.
    let standby = Arc::new(AtomicBool::new(true));
    let pullers: Vec<_> = (0..cluster.partitions)
        .map(|p| {
            let chans = (ctl_tx.clone(), tx.clone());
            tokio::spawn(pull(
                client.clone(),
                cluster.clone(),
                p,
                chans,
                (pauses.clone(), standby.clone()),
            ))
        })
        .collect();
    drop((tx, ctl_tx));
    metrics.ready.store(1, Relaxed);
    tracing::info!(
        worker = %cluster.worker,
        partitions = cluster.partitions,
        stream = %cluster.stream,
        "Cluster worker pulling from every partition."
    );

    let mut w = Worker {
        cluster: &cluster,
        config: &config,
        flows,
        js: &js,
        client: &client,
        parts_stream: &parts_stream,
        state: &state,
        parts: BTreeMap::new(),
        unconfirmed: 0,
        pins: BTreeMap::new(),
        metrics: &metrics,
        sinks: &sinks,
        workers: &workers,
        pauses: &pauses,
        standby: &standby,
        last_release: None,
        sharing,
        objects: &objects,
        max_inline,
        object_serial: 0,
    };
    let mut snapshot_every = tokio::time::interval(Duration::from_millis(
        config.snapshot_interval_ms.max(1) as u64,
    ));
    snapshot_every.tick().await;
    let mut publish_view = tokio::time::interval(Duration::from_millis(250));
    let mut heartbeat = tokio::time::interval(Duration::from_millis(
        (cluster.worker_ttl_ms / 4).clamp(100, 5_000) as u64,
    ));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                tracing::info!("Shutting down: final snapshots, then unpinning.");
                break;
            }
            _ = snapshot_every.tick() => {
                w.save_all(&mut view).await;
            }
            _ = publish_view.tick() => {
                w.show(&mut view);
            }
            _ = heartbeat.tick() => {
                w.heartbeat(&mut view).await;
            }
            ev = next_event(&mut ctl_rx, &mut rx) => match ev {
                Some(Event::Pinned(p, id)) => {
                    w.pins.insert(p, id);
                    w.gain(p, &mut view).await;
                }
                Some(Event::Lost(p)) => {
                    w.pins.remove(&p);
                    if w.drop_part(p).is_some() {
                        tracing::warn!(partition = p, "Another worker was pinned on the partition; dropped it.");
                    }
                    if let Some(v) = view.partitions.get_mut(&p) {
                        v.owned = false;
                    }
                }
                Some(Event::Idle(p)) => {
                    if let Some(v) = view.partitions.get_mut(&p) {
                        v.lag = 0;
                    }
                }
                Some(Event::Batch(p, pin, batch, delivered)) => {
                    // Pinned, but the partition was dropped (a failed write or read): take it
                    // again from its snapshot rather than leave its deliveries unapplied.
                    if !w.parts.contains_key(&p) && pin.is_some() && w.pins.get(&p) == pin.as_ref() {
                        tracing::info!(partition = p, "Still pinned on a partition dropped here; taking it again.");
                        w.gain(p, &mut view).await;
                    }
                    w.apply(p, batch, delivered, &mut view).await;
                }
                None => break,
            },
        }
    }
    for t in &pullers {
        t.abort();
    }
    // What was already delivered is applied: it is in the final snapshot.
    while let Ok(ev) = rx.try_recv() {
        if let Event::Batch(p, _, batch, delivered) = ev {
            w.apply(p, batch, delivered, &mut view).await;
        }
    }
    let failed = w.save_all(&mut view).await;
    for p in w.parts.keys() {
        unpin(&client, &cluster, *p).await;
    }
    // Gone: the others count without this worker at once, not after `worker_ttl_ms`.
    if let Err(e) = workers.delete(&cluster.worker).await {
        tracing::warn!("Removing this worker from {}: {e}", cluster.workers_bucket);
    }
    w.show(&mut view);
    drop(w);
    sinks.drain(Duration::from_secs(5)).await;
    let _ = client.flush().await;
    let _ = http_stop_tx.send(());
    anyhow::ensure!(
        failed == 0,
        "{failed} partition snapshots could not be written"
    );
    Ok(())
}

/// The next event: pins and losses before batches.
async fn next_event(
    ctl: &mut mpsc::UnboundedReceiver<Event>,
    data: &mut mpsc::UnboundedReceiver<Event>,
) -> Option<Event> {
    tokio::select! {
        biased;
        Some(e) = ctl.recv() => Some(e),
        e = data.recv() => e,
    }
}

/// The consumer of partition `p`, created (or found as it is) through the JetStream API, since
/// async-nats 0.46 has no `priority_timeout`.
async fn create_consumer(client: &async_nats::Client, c: &Cluster, p: u32) -> anyhow::Result<()> {
    let name = format!("{}-{p}", c.consumer_prefix);
    let body = serde_json::json!({
        "stream_name": c.stream,
        "config": {
            "durable_name": name,
            "filter_subject": format!("{}.{p}", c.prefix),
            "deliver_policy": "all",
            // ADR-42: pinned_client takes explicit acknowledgements.
            "ack_policy": "explicit",
            "ack_wait": ms_to_ns(c.ack_wait_ms),
            "max_ack_pending": c.max_ack_pending.max(1),
            "max_waiting": 4096,
            "priority_groups": [c.group],
            "priority_policy": "pinned_client",
            "priority_timeout": ms_to_ns(c.pin_ttl_ms),
        }
    });
    let subject = format!("$JS.API.CONSUMER.CREATE.{}.{name}", c.stream);
    let reply = client
        .request(subject, Bytes::from(body.to_string()))
        .await
        .map_err(|e| anyhow::anyhow!("creating consumer {name}: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| anyhow::anyhow!("creating consumer {name}: {e}"))?;
    if let Some(err) = v.get("error") {
        anyhow::bail!(
            "creating consumer {name} on {}: {} (priority groups need nats-server 2.11 or later)",
            c.stream,
            err
        );
    }
    Ok(())
}

fn ms_to_ns(ms: i64) -> u64 {
    (ms.max(0) as u64).saturating_mul(1_000_000)
}

/// Pulls partition `p` for ever: one request at a time, carrying the pin id once the server
/// gave one. Runs as its own task so that a busy engine task does not stop the pulls that keep
/// the pin (the channel is bounded: a long stall would lose it, which is then safe).
async fn pull(
    client: async_nats::Client,
    c: Cluster,
    p: u32,
    (ctl, tx): (mpsc::UnboundedSender<Event>, mpsc::UnboundedSender<Event>),
    (pauses, standby): (Arc<Vec<AtomicI64>>, Arc<AtomicBool>),
) {
    let consumer = format!("{}-{p}", c.consumer_prefix);
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{consumer}", c.stream);
    let inbox = client.new_inbox();
    let mut sub = match client.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(partition = p, "Subscribing for pulls failed: {e}");
            return;
        }
    };
    let mut pin: Option<String> = None;
    let info = format!("$JS.API.CONSUMER.INFO.{}.{consumer}", c.stream);
    // The pin under which the consumer's position was last asked, and the last delivery count.
    let mut asked_under: Option<String> = None;
    let mut last_cseq: Option<u64> = None;
    loop {
        // Handed over: left to the others for a while, then pulled as a stand-by again.
        let until = pauses[p as usize].load(Relaxed);
        let now = unix_ms();
        if until > now {
            pin = None;
            tokio::time::sleep(Duration::from_millis((until - now) as u64)).await;
            continue;
        }
        if pin.is_none() && !standby.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut req = serde_json::json!({
            "batch": c.pull_batch.max(1),
            "expires": PULL_EXPIRES.as_nanos() as u64,
            "group": c.group,
        });
        if let Some(id) = &pin {
            req["id"] = serde_json::Value::String(id.clone());
        }
        if let Err(e) = client
            .publish_with_reply(next.clone(), inbox.clone(), Bytes::from(req.to_string()))
            .await
        {
            tracing::warn!(partition = p, "Pull request failed: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let deadline = tokio::time::Instant::now() + PULL_EXPIRES + Duration::from_millis(500);
        let mut batch = Vec::new();
        loop {
            let m = match tokio::time::timeout_at(deadline, sub.next()).await {
                Err(_) => break,
                Ok(None) => return,
                Ok(Some(m)) => m,
            };
            if let Some(status) = m.status {
                match status.as_u16() {
                    100 => continue,
                    404 | 408 => {
                        if batch.is_empty() && pin.is_some() && ctl.send(Event::Idle(p)).is_err() {
                            return;
                        }
                        break;
                    }
                    423 => {
                        // Pinned elsewhere: pull without an id, as a stand-by.
                        if pin.take().is_some() && ctl.send(Event::Lost(p)).is_err() {
                            return;
                        }
                        break;
                    }
                    _ => {
                        tracing::debug!(partition = p, status = status.as_u16(), description = ?m.description, "Pull ended.");
                        break;
                    }
                }
            }
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Pin-Id"))
                .map(|v| v.as_str().to_string());
            if let Some(id) = id {
                if pin.as_deref() != Some(id.as_str()) {
                    let old_pin = pin.replace(id.clone());
                    if !batch.is_empty()
                        && tx
                            .send(Event::Batch(p, old_pin, std::mem::take(&mut batch), None))
                            .is_err()
                    {
                        return;
                    }
                    if ctl.send(Event::Pinned(p, id.clone())).is_err() {
                        return;
                    }
                }
            }
            let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else {
                continue;
            };
            let Some((seq, cseq, pending)) = ack_fields(&reply) else {
                tracing::warn!(partition = p, reply = %reply, "A delivery without JetStream metadata, skipped.");
                continue;
            };
            batch.push(Delivery {
                seq,
                cseq,
                pending,
                payload: m.payload,
                reply,
            });
            if batch.len() >= c.pull_batch.max(1) {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        // A new pin, or deliveries to someone else in between: the worker will read what the
        // consumer delivered up to now, to anyone, from the stream before applying these
        // (`Worker::apply_run`). Asked here, before the next pull, the answer covers this
        // batch and the others' deliveries only; asked when the batch is applied, it also
        // covered every later pull of ours queued meanwhile, and each partition's whole
        // backlog was read twice (once delivered, once from the stream), one partition
        // after the other.
        let first_cseq = batch[0].cseq;
        let jump = last_cseq.is_some_and(|l| first_cseq != l + 1);
        let delivered = if pin.is_some() && (pin != asked_under || jump) {
            asked_under.clone_from(&pin);
            delivered_now(&client, &info).await
        } else {
            None
        };
        last_cseq = batch.last().map(|d| d.cseq);
        if tx
            .send(Event::Batch(p, pin.clone(), batch, delivered))
            .is_err()
        {
            return;
        }
    }
}

/// The consumer's last delivered stream sequence, from the JetStream API (None when the
/// request fails: the worker then asks itself).
async fn delivered_now(client: &async_nats::Client, info_subject: &str) -> Option<u64> {
    let reply = client
        .request(info_subject.to_string(), Bytes::new())
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    v.get("delivered")?.get("stream_seq")?.as_u64()
}

/// (stream sequence, consumer sequence, pending) from a JetStream reply subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>`, or the form with
/// a domain and an account hash before the stream.
fn ack_fields(reply: &str) -> Option<(u64, u64, u64)> {
    let t: Vec<&str> = reply.split('.').collect();
    if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    let base = if t.len() == 9 { 2 } else { 4 };
    let num = |i: usize| t.get(base + i).and_then(|s| s.parse::<u64>().ok());
    Some((num(3)?, num(4)?, num(6)?))
}

/// `$JS.API.CONSUMER.UNPIN`: another worker may be pinned at once (after a graceful stop).
async fn unpin(client: &async_nats::Client, c: &Cluster, p: u32) {
    let subject = format!(
        "$JS.API.CONSUMER.UNPIN.{}.{}-{p}",
        c.stream, c.consumer_prefix
    );
    let body = serde_json::json!({ "group": c.group }).to_string();
    match client.request(subject, Bytes::from(body)).await {
        Ok(r) => {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
            if let Some(e) = v.get("error") {
                tracing::warn!(partition = p, "Unpinning failed: {e}");
            }
        }
        Err(e) => tracing::warn!(partition = p, "Unpinning failed: {e}"),
    }
}

struct Worker<'a> {
    cluster: &'a Cluster,
    config: &'a Config,
    flows: Vec<CompiledFlow>,
    js: &'a jetstream::Context,
    client: &'a async_nats::Client,
    parts_stream: &'a jetstream::stream::Stream,
    state: &'a kv::Store,
    parts: BTreeMap<u32, Part>,
    /// Record publishes not yet confirmed, every partition's (`Part::publishes`).
    unconfirmed: usize,
    /// The pin id each partition's puller last reported (none once pinned elsewhere).
    pins: BTreeMap<u32, String>,
    metrics: &'a Metrics,
    sinks: &'a Sinks,
    workers: &'a kv::Store,
    pauses: &'a [AtomicI64],
    standby: &'a AtomicBool,
    last_release: Option<Instant>,
    /// With `share_learned`: the learned stream and what this worker read of it.
    sharing: Option<(jetstream::stream::Stream, learned::Cache)>,
    /// Snapshots over `max_inline` bytes go to `objects`, named uniquely (a worker that lost
    /// a partition without knowing must not overwrite the object its next owner wrote).
    objects: &'a jetstream::object_store::ObjectStore,
    max_inline: usize,
    object_serial: u64,
}

impl Worker<'_> {
    fn key(p: u32) -> String {
        format!("part-{p}")
    }

    fn new_engine(&self) -> Engine {
        new_engine(&self.flows, self.config)
    }

    /// The snapshot bytes of a KV value: the value itself, or the object it names.
    async fn load(&self, value: &[u8]) -> anyhow::Result<(Bytes, Option<String>)> {
        if !value.starts_with(b"{\"object\":") {
            return Ok((Bytes::copy_from_slice(value), None));
        }
        let ptr: Pointer = serde_json::from_slice(value)?;
        let mut obj = self
            .objects
            .get(&ptr.object)
            .await
            .map_err(|e| anyhow::anyhow!("snapshot object {}: {e}", ptr.object))?;
        let mut out = Vec::with_capacity(ptr.bytes);
        tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut out)
            .await
            .map_err(|e| anyhow::anyhow!("snapshot object {}: {e}", ptr.object))?;
        anyhow::ensure!(
            out.len() == ptr.bytes,
            "snapshot object {}: {} bytes, {} expected",
            ptr.object,
            out.len(),
            ptr.bytes
        );
        Ok((Bytes::from(out), Some(ptr.object)))
    }

    /// The KV value for snapshot bytes: the bytes themselves, or, over `max_inline`, a pointer
    /// to a new object holding them (returned too, to be deleted if the write fails).
    async fn stored(&mut self, p: u32, bytes: &Bytes) -> anyhow::Result<(Bytes, Option<String>)> {
        if bytes.len() <= self.max_inline {
            return Ok((bytes.clone(), None));
        }
        self.object_serial += 1;
        let name = format!(
            "part-{p}.{}.{}.{}",
            self.cluster.worker,
            std::process::id(),
            self.object_serial
        );
        let mut reader: &[u8] = bytes;
        // Chunks of one message each: the default 128 KB would not fit a server whose
        // `max_payload` is smaller.
        let meta = jetstream::object_store::ObjectMetadata {
            name: name.clone(),
            chunk_size: Some(self.max_inline.min(128 * 1024)),
            ..Default::default()
        };
        self.objects
            .put(meta, &mut reader)
            .await
            .map_err(|e| anyhow::anyhow!("snapshot object {name}: {e}"))?;
        let ptr = serde_json::to_vec(&Pointer {
            object: name.clone(),
            bytes: bytes.len(),
        })?;
        Ok((Bytes::from(ptr), Some(name)))
    }

    /// Deletes a snapshot object no KV entry names any more.
    async fn forget_object(&self, name: Option<String>) {
        if let Some(name) = name {
            if let Err(e) = self.objects.delete(&name).await {
                tracing::warn!(object = %name, "Deleting an old snapshot object failed: {e}");
            }
        }
    }

    /// A partition's engine from its saved bytes, keeping what it learns when shared.
    fn restore(&self, bytes: &[u8]) -> anyhow::Result<Engine> {
        let mut engine = engine_from(&self.flows, self.config, bytes)?;
        if self.sharing.is_some() {
            engine.keep_deltas();
        }
        Ok(engine)
    }

    /// Folds the other partitions' learned batches into partition `p` (at a snapshot, see
    /// `service::learned`). False when the stream could not be read: nothing is folded then.
    async fn fold(&mut self, p: u32, view: &mut ClusterView) -> bool {
        let folded = match (self.sharing.as_mut(), self.parts.get(&p)) {
            (Some((_, cache)), Some(part)) => {
                cache.drain();
                part.shared.folded
            }
            _ => return true,
        };
        let Some((stream, cache)) = self.sharing.as_ref() else {
            return true;
        };
        // Restored from a snapshot older than what this worker holds: the stream has it.
        let mut older = Vec::new();
        if folded + 1 < cache.first {
            match learned::read(stream, folded + 1, cache.first - 1).await {
                Ok(items) => older = items,
                Err(e) => {
                    tracing::warn!(
                        partition = p,
                        "Reading the learned stream failed ({e:#}); folding later."
                    );
                    return false;
                }
            }
        }
        let Some((_, cache)) = self.sharing.as_ref() else {
            return true;
        };
        let Some(part) = self.parts.get_mut(&p) else {
            return true;
        };
        let now = unix_ms();
        let mut delay: Option<i64> = None;
        let mut expect = part.shared.folded + 1;
        for (seq, batch, at) in older.iter().chain(cache.items.iter()) {
            if *seq > expect {
                self.metrics
                    .learned_missed
                    .fetch_add(*seq - expect, Relaxed);
                tracing::warn!(
                    partition = p,
                    expected = expect,
                    got = *seq,
                    cache_first = cache.first,
                    older = older.len(),
                    "A gap in the learned batches folded."
                );
            }
            expect = expect.max(*seq + 1);
            if learned::fold(&mut part.engine, &mut part.shared, p, *seq, batch) {
                view.learned_folded += 1;
                if *at > 0 {
                    delay = Some(delay.unwrap_or(0).max(now - at));
                }
            }
        }
        if delay.is_some() {
            view.merge_delay_ms = delay;
        }
        true
    }

    /// Pinned on `p`: read its snapshot and claim it (compare-and-set), restore it.
    async fn gain(&mut self, p: u32, view: &mut ClusterView) {
        let key = Self::key(p);
        for attempt in 1u64.. {
            let entry = match self.state.entry(key.clone()).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(
                        partition = p,
                        "Reading the partition's snapshot failed: {e}; trying again."
                    );
                    tokio::time::sleep(Duration::from_millis(200 * attempt.min(10))).await;
                    continue;
                }
            };
            let entry = entry.filter(|e| !e.value.is_empty());
            // A big snapshot is an object the entry names (`stored`).
            let (value, old_object) = match entry.as_ref() {
                Some(e) => match self.load(&e.value).await {
                    Ok(v) => (Some(v.0), v.1),
                    Err(err) => {
                        tracing::warn!(
                            partition = p,
                            "Reading the partition's snapshot object failed: {err:#}; trying again."
                        );
                        tokio::time::sleep(Duration::from_millis(200 * attempt.min(10))).await;
                        continue;
                    }
                },
                None => (None, None),
            };
            let (saved, revision) = match entry.as_ref().zip(value.as_ref()) {
                Some((e, value)) => match serde_json::from_slice::<Saved>(value) {
                    Ok(s) => (Some(s), e.revision),
                    Err(err) => {
                        // Not ours to read: never overwrite what may be a newer format.
                        tracing::error!(partition = p, "The saved state of the partition is not a flowcast snapshot ({err}); not taking it.");
                        return;
                    }
                },
                None => (None, 0),
            };
            let mut applied = 0;
            let mut snap = match saved.as_ref() {
                Some(s) => {
                    applied = s.engine.source_position.unwrap_or(0);
                    s.engine.clone()
                }
                None => self.new_engine().snapshot(),
            };
            snap.source_position = Some(applied);
            let shared = saved
                .as_ref()
                .map(|s| s.learned.clone())
                .unwrap_or_default();
            let bytes = match serde_json::to_vec(&Saved {
                worker: self.cluster.worker.clone(),
                engine: snap,
                learned: shared.clone(),
            }) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::error!(partition = p, "Serialising the snapshot failed: {e}");
                    return;
                }
            };
            // Restored from the bytes written, as every restore and rebase is (see `save`).
            let engine = match self.restore(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(
                        partition = p,
                        "The partition's snapshot does not restore: {e}"
                    );
                    return;
                }
            };
            // What the last owner may have applied past its snapshot (see `Part::fold_after`).
            let fold_after = if self.sharing.is_some() {
                let name = format!("{}-{p}", self.cluster.consumer_prefix);
                match self.parts_stream.consumer_info(&name).await {
                    // Everything delivered was acknowledged, so covered by the snapshot just
                    // read (acknowledgements follow the snapshot's write, and a write after
                    // the read makes the claim below fail): nothing to wait for.
                    Ok(i) if i.num_ack_pending == 0 => 0,
                    // Cleared by the first delivery's catch-up, which reads and applies the
                    // partition's messages up to the consumer's position (`apply_run`).
                    Ok(i) => i.delivered.stream_sequence,
                    Err(_) => u64::MAX,
                }
            } else {
                0
            };
            // The claim: whoever wrote since our read wins, and we read again.
            let (value, object) = match self.stored(p, &bytes).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(
                        partition = p,
                        "Storing the partition's snapshot failed: {e:#}; trying again."
                    );
                    tokio::time::sleep(Duration::from_millis(200 * attempt.min(10))).await;
                    continue;
                }
            };
            let written = if revision == 0 {
                self.state
                    .create(&key, value)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                self.state
                    .update(&key, value, revision)
                    .await
                    .map_err(|e| e.to_string())
            };
            if written.is_err() {
                self.forget_object(object.clone()).await;
            }
            match written {
                Ok(rev) => {
                    self.forget_object(old_object).await;
                    let from = saved.as_ref().map(|s| s.worker.clone()).unwrap_or_default();
                    tracing::info!(partition = p, position = applied, from = %from, "Pinned on the partition; restored its snapshot.");
                    self.drop_part(p);
                    self.parts.insert(
                        p,
                        Part {
                            engine,
                            applied,
                            saved: applied,
                            revision: rev,
                            unacked: Vec::new(),
                            publishes: Vec::new(),
                            catch_up: true,
                            last_cseq: 0,
                            pinned_at: Instant::now(),
                            first_applied: false,
                            shared,
                            fold_after,
                            object,
                        },
                    );
                    if let Some(v) = view.partitions.get_mut(&p) {
                        v.owned = true;
                        v.applied = applied;
                        v.saved = applied;
                        v.pinned_times += 1;
                    }
                    return;
                }
                Err(e) => {
                    tracing::info!(partition = p, "Claiming the partition's snapshot raced another write ({e}); reading it again.");
                    tokio::time::sleep(Duration::from_millis(50 * attempt.min(20))).await;
                }
            }
        }
    }

    /// Applies a batch of `p`'s deliveries, after the stream itself where deliveries are
    /// missing (just pinned, or lost on the way).
    async fn apply(
        &mut self,
        p: u32,
        batch: Vec<Delivery>,
        mut delivered: Option<u64>,
        view: &mut ClusterView,
    ) {
        // A jump in the delivery count inside the batch starts a new run (checked as the
        // first of a batch is).
        let mut runs: Vec<Vec<Delivery>> = Vec::new();
        for d in batch {
            match runs.last_mut() {
                Some(r) if r.last().is_some_and(|l| d.cseq == l.cseq + 1) => r.push(d),
                _ => runs.push(vec![d]),
            }
        }
        for run in runs {
            // The position asked with the batch is for its first run only.
            self.apply_run(p, run, delivered.take(), view).await;
        }
    }

    async fn apply_run(
        &mut self,
        p: u32,
        batch: Vec<Delivery>,
        asked: Option<u64>,
        view: &mut ClusterView,
    ) {
        let Some(first) = batch.first() else { return };
        let Some(part) = self.parts.get(&p) else {
            // Not (or no longer) ours: handed over or dropped while these were on the way.
            // Given back (after a second, so that a worker that cannot take the partition is
            // not sent them in a loop) rather than left to `ack_wait`: the next owner's catch-up
            // starts at the first delivery it gets, and at the end of a load there may be no
            // other.
            for d in &batch {
                let nak = Bytes::from_static(br#"-NAK {"delay":1000000000}"#);
                if let Err(e) = self.client.publish(d.reply.clone(), nak).await {
                    tracing::debug!(partition = p, "Giving a delivery back failed: {e}");
                }
            }
            return;
        };
        // Just pinned, or another client was delivered some of the partition (the consumer's
        // delivery count jumped): what the consumer delivered up to now, to anyone, is read
        // from the stream itself. Its redeliveries come later, mixed with new messages (a
        // batch may hold the first few redeliveries, whose `ack_wait` ran out, then new ones),
        // so only a position that covers every delivery makes "at or below: skip" safe.
        let gap = part.catch_up || first.cseq > part.last_cseq + 1;
        if gap {
            let name = format!("{}-{p}", self.cluster.consumer_prefix);
            let delivered = match asked {
                Some(d) => Ok(d),
                None => self
                    .parts_stream
                    .consumer_info(&name)
                    .await
                    .map(|i| i.delivered.stream_sequence),
            };
            let delivered = match delivered {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(
                        partition = p,
                        "Consumer info failed ({e}); dropping the partition."
                    );
                    self.drop_part(p);
                    return;
                }
            };
            let Some(part) = self.parts.get(&p) else {
                return;
            };
            let (from, to) = (part.applied + 1, delivered.max(first.seq - 1));
            match if from <= to {
                self.read_stream(p, from, to).await
            } else {
                Ok(Vec::new())
            } {
                Ok(missed) => {
                    if !missed.is_empty() {
                        tracing::info!(
                            partition = p,
                            from,
                            to,
                            messages = missed.len(),
                            "Read the stream up to the consumer's last delivery."
                        );
                    }
                    self.apply_payloads(p, missed.into_iter().map(|(s, b)| (s, b, None)))
                        .await;
                    // Every message of the partition up to the consumer's position is applied
                    // now: whatever another client was delivered of it is in this engine too,
                    // so folding may go on. (Waiting for `applied` to reach that position
                    // could wait for ever: for a consumer filtered on one partition it is where
                    // the server's scan stopped, which may be past the partition's last
                    // message.)
                    if let Some(part) = self.parts.get_mut(&p) {
                        part.fold_after = 0;
                    }
                }
                Err(e) => {
                    // Without those, nothing after may be applied: drop the partition, which
                    // the next pin (ours or another's) takes again from its snapshot.
                    tracing::error!(
                        partition = p,
                        "Reading the partition stream failed ({e:#}); dropping the partition."
                    );
                    self.drop_part(p);
                    if let Some(v) = view.partitions.get_mut(&p) {
                        v.owned = false;
                    }
                    return;
                }
            }
        }
        let (last_cseq, pending) = batch
            .last()
            .map(|d| (d.cseq, d.pending))
            .unwrap_or_default();
        self.apply_payloads(
            p,
            batch.into_iter().map(|d| (d.seq, d.payload, Some(d.reply))),
        )
        .await;
        if let Some(part) = self.parts.get_mut(&p) {
            part.catch_up = false;
            part.last_cseq = last_cseq;
            if let Some(v) = view.partitions.get_mut(&p) {
                v.applied = part.applied;
                v.lag = pending;
            }
        }
    }

    /// Applies messages in order (skipping those already applied), then stores their records.
    async fn apply_payloads(
        &mut self,
        p: u32,
        items: impl Iterator<Item = (u64, Bytes, Option<String>)>,
    ) {
        let Some(part) = self.parts.get_mut(&p) else {
            return;
        };
        let mut out: Vec<(u64, usize, Record)> = Vec::new();
        let horizon = unix_ms().saturating_add(self.config.clock.max_future_ms());
        part.engine.set_horizon(Some(horizon));
        let projection = part.engine.projection();
        let mut records = Vec::new();
        for (seq, payload, reply) in items {
            if let Some(r) = reply {
                part.unacked.push(r);
            }
            if seq <= part.applied {
                self.metrics.redeliveries_skipped.fetch_add(1, Relaxed);
                continue;
            }
            part.applied = seq;
            match decode_projected(payload.trim_ascii(), &projection) {
                Ok(msg) => part.engine.observe(&msg, &mut records),
                Err(e) => {
                    part.engine.count_malformed();
                    let n = part.engine.stats.malformed;
                    if n <= 10 || n.is_multiple_of(1000) {
                        tracing::warn!(
                            partition = p,
                            malformed = n,
                            "Skipped a malformed message: {e}"
                        );
                    }
                }
            }
            if !part.first_applied {
                part.first_applied = true;
                tracing::info!(
                    partition = p,
                    seq,
                    after_ms = part.pinned_at.elapsed().as_millis() as u64,
                    "First message applied since pinned."
                );
            }
            out.extend(records.drain(..).enumerate().map(|(i, r)| (seq, i, r)));
        }
        for (seq, i, r) in out {
            if self.unconfirmed >= MAX_UNCONFIRMED {
                self.confirm_all().await;
            }
            let Some(part) = self.parts.get_mut(&p) else {
                return;
            };
            let id = format!("{p}:{seq}:{i}");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            // The server keeps the first for itself; readers see this one.
            headers.insert("Flowcast-Record", id.as_str());
            let body = Bytes::from(serde_json::to_vec(&r).unwrap_or_default());
            match self
                .js
                .publish_with_headers(
                    format!("{}.{p}", self.cluster.records_prefix),
                    headers,
                    body,
                )
                .await
            {
                Ok(f) => {
                    part.publishes.push(f);
                    self.unconfirmed += 1;
                }
                Err(e) => {
                    // Not stored: the snapshot must not cover it. Drop the partition: the
                    // next owner applies the message again from the last snapshot.
                    tracing::error!(
                        partition = p,
                        "Publishing a record failed ({e}); dropping the partition."
                    );
                    self.drop_part(p);
                    return;
                }
            }
            self.sinks.send(r);
        }
    }

    /// The partition's messages with sequences `from..=to`, read from the stream (an ordered
    /// consumer on the partition's subject).
    async fn read_stream(&self, p: u32, from: u64, to: u64) -> anyhow::Result<Vec<(u64, Bytes)>> {
        let filter = format!("{}.{p}", self.cluster.prefix);
        let msgs = read_range(self.parts_stream, filter, from, to)
            .await
            .map_err(|e| anyhow::anyhow!("catch-up: {e:#}"))?;
        Ok(msgs.into_iter().map(|(s, m)| (s, m.payload)).collect())
    }

    /// Saves every owned partition that applied or was delivered something since its last
    /// snapshot, then acknowledges what each snapshot covers. Returns the failures.
    async fn save_all(&mut self, view: &mut ClusterView) -> usize {
        let mut failed = 0;
        if let Some((_, cache)) = self.sharing.as_mut() {
            cache.drain();
        }
        let owned: Vec<u32> = self.parts.keys().copied().collect();
        for p in owned {
            if !self.save(p, view).await {
                failed += 1;
            }
        }
        // What every owned partition folded is not needed again (a partition gained later
        // reads what it needs from the stream).
        if let Some((_, cache)) = self.sharing.as_mut() {
            let floor = self
                .parts
                .values()
                .map(|x| x.shared.folded)
                .min()
                .unwrap_or(cache.newest());
            cache.trim(floor);
        }
        failed
    }

    async fn save(&mut self, p: u32, view: &mut ClusterView) -> bool {
        let Some(part) = self.parts.get_mut(&p) else {
            return true;
        };
        let unfolded = self.sharing.as_ref().is_some_and(|(_, c)| {
            c.newest() > part.shared.folded || !part.shared.unpublished.is_empty()
        });
        if part.applied == part.saved && part.unacked.is_empty() && !unfolded {
            return true;
        }
        // The records of what the snapshot covers are stored first. One that was not can only
        // be stored by applying its message again: the partition is dropped, and its next
        // owner (this worker again, or another) does that from the last snapshot.
        if !self.confirm(p).await {
            self.metrics.snapshots_failed.fetch_add(1, Relaxed);
            if let Some(v) = view.partitions.get_mut(&p) {
                v.owned = false;
            }
            return false;
        }
        if self.sharing.is_some() {
            // What this partition learned since its last snapshot, published once this one
            // is written; then the others' batches, folded in here so that the snapshot (and
            // the engine rebuilt from it) holds them.
            let Some(part) = self.parts.get_mut(&p) else {
                return true;
            };
            let own = part.engine.take_deltas();
            let batches =
                learned::batches(p, part.applied, own, learned::chunk_for(self.max_inline));
            part.shared.unpublished.extend(batches);
            if part.applied >= part.fold_after {
                self.fold(p, view).await;
            }
            if let (Some(part), Some(v)) = (self.parts.get(&p), view.partitions.get_mut(&p)) {
                v.learned_folded = part.shared.folded;
                v.folds_after = if part.applied < part.fold_after {
                    part.fold_after
                } else {
                    0
                };
            }
        }
        let Some(part) = self.parts.get_mut(&p) else {
            return true;
        };
        let mut snap = part.engine.snapshot();
        snap.source_position = Some(part.applied);
        let bytes = match serde_json::to_vec(&Saved {
            worker: self.cluster.worker.clone(),
            engine: snap,
            learned: part.shared.clone(),
        }) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(partition = p, "Serialising the snapshot failed: {e}");
                return false;
            }
        };
        // This worker goes on from what it saved, restored as the next owner would restore it:
        // so that a message applied again after a failover gives the same records, under the
        // same ids, as the first time. The model's solution and thresholds are in the snapshot
        // now (`engine::solve_cache`); the rebuild still guards what no snapshot holds (the
        // lazily sampled remaining-time walks, the feature model's background fit).
        let rebased = self.restore(&bytes);
        let (value, object) = match self.stored(p, &bytes).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(
                    partition = p,
                    "Storing the partition's snapshot failed: {e:#}"
                );
                self.metrics.snapshots_failed.fetch_add(1, Relaxed);
                return false;
            }
        };
        let Some(part) = self.parts.get_mut(&p) else {
            self.forget_object(object).await;
            return true;
        };
        // The object no entry names once this write is done (or that this write leaves unnamed).
        let mut unnamed = None;
        let result = match self.state.update(Self::key(p), value, part.revision).await {
            Ok(rev) => {
                unnamed = std::mem::replace(&mut part.object, object);
                match rebased {
                    Ok(e) => part.engine = e,
                    Err(e) => tracing::error!(
                        partition = p,
                        "The snapshot just written does not restore: {e}"
                    ),
                }
                part.revision = rev;
                part.saved = part.applied;
                for r in part.unacked.drain(..) {
                    if let Err(e) = self.client.publish(r, Bytes::from_static(b"+ACK")).await {
                        tracing::warn!(
                            partition = p,
                            "Acknowledging failed (redelivered and skipped): {e}"
                        );
                    }
                }
                if self.sharing.is_some() && !part.shared.unpublished.is_empty() {
                    let ids = learned::publish(
                        self.js,
                        &self.cluster.learned_prefix,
                        &part.shared.unpublished,
                    )
                    .await;
                    view.learned_published += ids.len() as u64;
                    part.shared.unpublished.retain(|b| !ids.contains(&b.id()));
                }
                self.metrics.snapshots_ok.fetch_add(1, Relaxed);
                self.metrics
                    .last_snapshot_unix
                    .store(unix_ms() / 1000, Relaxed);
                if let Some(v) = view.partitions.get_mut(&p) {
                    v.saved = part.saved;
                }
                true
            }
            Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => {
                // Another worker claimed the partition: what we applied since is theirs.
                unnamed = object;
                tracing::warn!(
                    partition = p,
                    "Another worker wrote the partition's state; dropped it here."
                );
                self.drop_part(p);
                if let Some(v) = view.partitions.get_mut(&p) {
                    v.owned = false;
                }
                true
            }
            Err(e) => {
                // Written or not, unknown: the new object stays (at worst an orphan).
                tracing::error!(
                    partition = p,
                    "Writing the partition's snapshot failed: {e}"
                );
                self.metrics.snapshots_failed.fetch_add(1, Relaxed);
                false
            }
        };
        self.forget_object(unnamed).await;
        result
    }

    /// Tells the others how many partitions this worker owns, reads what they own, and, when
    /// this worker owns two or more partitions more than another live one, hands one over.
    /// One at a time: the next only once the last is owned elsewhere, or after a pause.
    async fn heartbeat(&mut self, view: &mut ClusterView) {
        let me = &self.cluster.worker;
        let beat = serde_json::to_vec(&Heartbeat {
            owned: self.parts.len(),
        })
        .unwrap_or_default();
        if let Err(e) = self.workers.put(me, Bytes::from(beat)).await {
            tracing::warn!("Writing this worker's heartbeat failed: {e}");
            return;
        }
        let mut live = BTreeMap::new();
        match self.workers.keys().await {
            Ok(mut keys) => {
                while let Some(k) = keys.next().await {
                    let Ok(k) = k else { continue };
                    if let Ok(Some(v)) = self.workers.get(&k).await {
                        if let Ok(h) = serde_json::from_slice::<Heartbeat>(&v) {
                            live.insert(k, h.owned);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("Reading the live workers failed: {e}");
                return;
            }
        }
        live.insert(me.clone(), self.parts.len());
        view.workers = live;
        if !self.cluster.rebalance {
            return;
        }
        let mine = self.parts.len();
        // A dead worker counts until its entry expires (`worker_ttl_ms`): its partitions are
        // taken by the others once the share grows without it.
        let share = (self.cluster.partitions as usize).div_ceil(view.workers.len().max(1));
        self.standby.store(mine < share, Relaxed);
        let fewest = view.workers.values().copied().min().unwrap_or(mine);
        if mine < fewest + 2 {
            return;
        }
        // The last one handed over is owned again (every partition counted) or given time.
        let placed = view.workers.values().sum::<usize>() >= self.cluster.partitions as usize;
        let pause = Duration::from_millis(RELEASE_PAUSE_MS as u64);
        if !placed && self.last_release.is_some_and(|t| t.elapsed() < pause) {
            return;
        }
        let Some(&p) = self.parts.keys().next_back() else {
            return;
        };
        self.release(p, view).await;
    }

    /// Hands partition `p` over: its puller leaves it alone for a while, a final snapshot
    /// acknowledges what was applied, and the unpin lets a waiting worker be pinned.
    async fn release(&mut self, p: u32, view: &mut ClusterView) {
        self.last_release = Some(Instant::now());
        self.pauses[p as usize].store(unix_ms() + RELEASE_PAUSE_MS, Relaxed);
        self.pins.remove(&p);
        let saved = self.save(p, view).await;
        if !self.parts.contains_key(&p) {
            // Taken by another meanwhile, or dropped: nothing to hand over.
            return;
        }
        if !saved {
            tracing::warn!(
                partition = p,
                "Handing the partition over without a final snapshot: its next owner applies again what the last one does not cover."
            );
        }
        let applied = self.parts.get(&p).map(|x| x.applied).unwrap_or_default();
        self.drop_part(p);
        if let Some(v) = view.partitions.get_mut(&p) {
            v.owned = false;
        }
        unpin(self.client, self.cluster, p).await;
        view.released += 1;
        tracing::info!(
            partition = p,
            position = applied,
            "Handed the partition over to rebalance (final snapshot, unpinned)."
        );
    }

    /// Forgets partition `p` (its unconfirmed publishes too).
    fn drop_part(&mut self, p: u32) -> Option<Part> {
        let part = self.parts.remove(&p)?;
        self.unconfirmed = self.unconfirmed.saturating_sub(part.publishes.len());
        Some(part)
    }

    /// Waits for the confirmation of `p`'s record publishes. One not stored can only be stored
    /// by applying its message again: the partition is dropped (false), and its next owner
    /// (this worker again, or another) does that from the last snapshot.
    async fn confirm(&mut self, p: u32) -> bool {
        let Some(part) = self.parts.get_mut(&p) else {
            return true;
        };
        let publishes = std::mem::take(&mut part.publishes);
        self.unconfirmed = self.unconfirmed.saturating_sub(publishes.len());
        for f in publishes {
            if let Err(e) = f.await {
                tracing::error!(
                    partition = p,
                    "A record was not stored ({e}); dropping the partition."
                );
                self.drop_part(p);
                return false;
            }
        }
        true
    }

    /// Confirms every partition's record publishes (too many were left for the next
    /// snapshots: the client would stop publishing).
    async fn confirm_all(&mut self) {
        let owned: Vec<u32> = self.parts.keys().copied().collect();
        for p in owned {
            self.confirm(p).await;
        }
    }

    /// Publishes the view and the summed counters for `/metrics` and `/api/cluster`.
    fn show(&self, view: &mut ClusterView) {
        let mut stats = crate::engine::Stats::default();
        for part in self.parts.values() {
            stats.add(&part.engine.stats);
        }
        *self.metrics.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        for (p, v) in view.partitions.iter_mut() {
            v.owned = self.parts.contains_key(p);
        }
        *self
            .metrics
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(view.clone());
    }
}

fn new_engine(flows: &[CompiledFlow], config: &Config) -> Engine {
    let mut engine = Engine::new(flows.to_vec());
    engine.set_limits(config.limits.engine());
    engine.retire_grace_ms = config.reload_grace_ms;
    engine
}

/// A partition's engine from its saved bytes (a `Saved`).
fn engine_from(flows: &[CompiledFlow], config: &Config, bytes: &[u8]) -> anyhow::Result<Engine> {
    let saved: Saved = serde_json::from_slice(bytes)?;
    saved
        .engine
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut engine = new_engine(flows, config);
    engine.restore(&saved.engine);
    Ok(engine)
}

/// A stream's messages with sequences `from..=to` (on `filter`, or every subject when empty),
/// read with an ordered consumer: the partition catch-up and the learned catch-up.
pub(super) async fn read_range(
    stream: &jetstream::stream::Stream,
    filter: String,
    from: u64,
    to: u64,
) -> anyhow::Result<Vec<(u64, async_nats::Message)>> {
    use jetstream::consumer::{pull, DeliverPolicy};
    let mut out = Vec::new();
    let mut ordered = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("ordered consumer: {e}"))?;
    let pending = ordered
        .info()
        .await
        .map(|i| i.num_pending)
        .map_err(|e| anyhow::anyhow!("ordered consumer: {e}"))?;
    if pending == 0 {
        return Ok(out);
    }
    let mut msgs = ordered.messages().await?;
    while let Some(m) = msgs.next().await {
        let m = m?;
        let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, left) = (info.stream_sequence, info.pending);
        if seq > to {
            break;
        }
        out.push((seq, m.message.clone()));
        if seq == to || left == 0 {
            break;
        }
    }
    Ok(out)
}

pub(super) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
