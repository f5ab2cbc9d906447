//! `flowcast route` (issue 16, item 2): the stateless stage that puts each message on the
//! JetStream subject of its partition, so that workers can own partitions.
//!
//! It reads a JetStream stream through a durable pull consumer, decodes each message with the
//! flows' projection, routes it (`Engine::route`: the flows that match, the object key in
//! each) and publishes its bytes, unchanged, to `<prefix>.<p>` for every partition
//! `p = ObjectKey::stable_hash(key) % partitions` among its keys (the hash `replay --shards`
//! uses). The partition stream is created when missing, with the subjects `<prefix>.>`.
//!
//! Nothing lost, nothing twice: a batch is acknowledged (AckAll on its last message) only once
//! JetStream has confirmed every publish of it, and each publish carries `Nats-Msg-Id`
//! `<source stream>:<sequence>/<p>` (also in `Flowcast-Source`, which workers read), so that what a killed router published before its
//! acknowledgement, sent again after the redelivery, is dropped by the partition stream's
//! duplicate window (`duplicate_window_ms`; it must exceed the time to come back, `ack_wait`
//! included). A message no flow keys, or that does not decode, is counted and acknowledged,
//! not forwarded. One router per consumer: it keeps each partition in the source's order, and
//! its AckAll acknowledges only what it routed (a second router on the same consumer would
//! acknowledge the first one's messages, and interleave the partitions). More routers take
//! more consumers, each on its own part of the source's subjects (not built yet).

use crate::engine::message::decode_projected;
use crate::engine::Engine;
use crate::model::CompiledFlow;
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use futures::StreamExt;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RouteOptions {
    pub url: String,
    /// The stream read, and the durable consumer the routers share.
    pub from_stream: String,
    pub consumer: String,
    pub partitions: u32,
    /// The partition stream and its subject prefix.
    pub stream: String,
    pub prefix: String,
    pub replicas: usize,
    pub duplicate_window_ms: u64,
    pub ack_wait_ms: u64,
    pub batch: usize,
}

/// What a router did, logged every 10 s and at the end.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct RouteStats {
    pub read: u64,
    /// Publishes (a message keyed to two partitions is published twice).
    pub published: u64,
    pub malformed: u64,
    /// Decoded, but no flow keyed it.
    pub unrouted: u64,
}

/// The partitions a message goes to, in ascending order, without repeats.
pub fn partitions_of(engine: &Engine, msg: &crate::engine::message::Message, n: u32) -> Vec<u32> {
    let mut out: Vec<u32> = engine
        .route(msg)
        .matches
        .iter()
        .map(|m| (m.2.stable_hash() % u64::from(n.max(1))) as u32)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Routes until `shutdown` resolves (what was fetched is finished first) or the connection
/// fails for good.
pub async fn route(
    flows: Vec<CompiledFlow>,
    opts: RouteOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RouteStats> {
    anyhow::ensure!(opts.partitions > 0, "--partitions must be at least 1");
    let engine = Engine::new(flows);
    let projection = engine.projection();
    let client = async_nats::connect(opts.url.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", opts.url))?;
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(jetstream::stream::Config {
        name: opts.stream.clone(),
        subjects: vec![format!("{}.>", opts.prefix)],
        storage: jetstream::stream::StorageType::File,
        num_replicas: opts.replicas.max(1),
        duplicate_window: Duration::from_millis(opts.duplicate_window_ms),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("partition stream {}: {e}", opts.stream))?;
    let source = js
        .get_stream(&opts.from_stream)
        .await
        .map_err(|e| anyhow::anyhow!("stream {}: {e}", opts.from_stream))?;
    let consumer: jetstream::consumer::PullConsumer = source
        .get_or_create_consumer(
            &opts.consumer,
            pull::Config {
                durable_name: Some(opts.consumer.clone()),
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_millis(opts.ack_wait_ms),
                max_ack_pending: 1_000_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("consumer {}: {e}", opts.consumer))?;
    tracing::info!(
        from = %opts.from_stream,
        to = %opts.stream,
        partitions = opts.partitions,
        "Routing."
    );
    let mut stats = RouteStats::default();
    let router = Router {
        engine: &engine,
        projection: &projection,
        js: &js,
        opts: &opts,
    };
    // What a router killed before it acknowledged was delivered and not acknowledged. It comes
    // again only after `ack_wait`, behind newer messages, and the first AckAll of a newer one
    // would acknowledge it unrouted: it is read from the stream first, in order (what was
    // stored before the kill is dropped by the duplicate window), and its redeliveries are
    // then skipped.
    let mut consumer = consumer;
    let info = consumer
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("consumer {}: {e}", opts.consumer))?
        .clone();
    let (floor, delivered) = (
        info.ack_floor.stream_sequence,
        info.delivered.stream_sequence,
    );
    if delivered > floor {
        tracing::info!(
            from = floor + 1,
            to = delivered,
            "Catching up on unacknowledged messages."
        );
        let mut acks = futures::stream::FuturesUnordered::new();
        for seq in floor + 1..=delivered {
            match source.get_raw_message(seq).await {
                Ok(m) => {
                    stats.read += 1;
                    router
                        .publish(seq, &m.payload, &mut stats, &mut acks)
                        .await?;
                }
                Err(e) => tracing::warn!(seq, "Not in the stream any more, skipped: {e}"),
            }
        }
        while let Some(a) = acks.next().await {
            a.map_err(|e| anyhow::anyhow!("a partition publish was not confirmed: {e}"))?;
        }
    }
    let mut last_log = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            b = consumer
                .fetch()
                .max_messages(opts.batch.max(1))
                .expires(Duration::from_millis(500))
                .messages() => b,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("Fetching from {}: {e}; trying again.", opts.from_stream);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut last = None;
        let mut acks = futures::stream::FuturesUnordered::new();
        while let Some(m) = batch.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("A fetch ended early: {e}");
                    break;
                }
            };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
            if seq > delivered {
                stats.read += 1;
                router
                    .publish(seq, &m.payload, &mut stats, &mut acks)
                    .await?;
            }
            last = Some(m);
        }
        // Every publish of the batch confirmed, then the batch acknowledged: a crash before
        // this line sends it all again, and the duplicate window drops what was stored.
        while let Some(a) = acks.next().await {
            a.map_err(|e| anyhow::anyhow!("a partition publish was not confirmed: {e}"))?;
        }
        if let Some(m) = last {
            m.double_ack()
                .await
                .map_err(|e| anyhow::anyhow!("acknowledging: {e}"))?;
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            tracing::info!(
                read = stats.read,
                published = stats.published,
                malformed = stats.malformed,
                unrouted = stats.unrouted,
                "Routed."
            );
        }
    }
    client.flush().await.ok();
    Ok(stats)
}

/// Publishes left unconfirmed before the router waits for their confirmations: below the
/// client's `max_ack_inflight` (5,000 by default).
const MAX_UNCONFIRMED: usize = 4096;

type Acks = futures::stream::FuturesUnordered<
    <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture,
>;

struct Router<'a> {
    engine: &'a Engine,
    projection: &'a crate::engine::projection::Projection,
    js: &'a jetstream::Context,
    opts: &'a RouteOptions,
}

impl Router<'_> {
    /// Publishes one message (source sequence `seq`) to each of its partitions.
    async fn publish(
        &self,
        seq: u64,
        payload: &bytes::Bytes,
        stats: &mut RouteStats,
        acks: &mut Acks,
    ) -> anyhow::Result<()> {
        let msg = match decode_projected(trim(payload), self.projection) {
            Ok(m) => m,
            Err(e) => {
                stats.malformed += 1;
                if stats.malformed <= 10 || stats.malformed.is_multiple_of(1000) {
                    tracing::warn!(seq, malformed = stats.malformed, "Skipped a message: {e}");
                }
                return Ok(());
            }
        };
        let parts = partitions_of(self.engine, &msg, self.opts.partitions);
        if parts.is_empty() {
            stats.unrouted += 1;
        }
        for p in parts {
            // The client holds at most `max_ack_inflight` publishes unconfirmed and then waits
            // for a confirmation, which only the end of the batch asks for: a batch of more
            // publishes than that waited for ever. The router confirms them as it goes.
            if acks.len() >= MAX_UNCONFIRMED {
                while let Some(a) = acks.next().await {
                    a.map_err(|e| anyhow::anyhow!("a partition publish was not confirmed: {e}"))?;
                }
            }
            let mut headers = async_nats::HeaderMap::new();
            let id = format!("{}:{seq}/{p}", self.opts.from_stream);
            // The server keeps `Nats-Msg-Id` for deduplication only; workers read the other.
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert("Flowcast-Source", id.as_str());
            let ack = self
                .js
                .publish_with_headers(
                    format!("{}.{p}", self.opts.prefix),
                    headers,
                    payload.clone(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("publishing: {e}"))?;
            acks.push(std::future::IntoFuture::into_future(ack));
            stats.published += 1;
        }
        Ok(())
    }
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}
