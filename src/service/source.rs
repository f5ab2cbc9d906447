//! Sources: messages in, as batches for the engine task. A source task reads as much as is
//! ready (up to the batch size) and sends it on a bounded channel, so a busy engine slows the
//! intake down instead of queueing without limit.
//!
//! JetStream, nothing lost and nothing counted twice: messages reach the engine in stream order,
//! each once, and the durable consumer is acknowledged with AckAll, once per batch, after the
//! engine applied it. Snapshots record the last applied stream sequence S and the stream's
//! identity (name and creation time). At start, everything after S that the durable consumer
//! has already delivered (to this process before a crash, or lost on the way) is read again with
//! an ordered consumer ("catch-up"); then the durable consumer resumes. A jump in the consumer's
//! delivery sequence means deliveries were lost (a server killed with messages on the wire): the
//! same catch-up runs before the next message, so an AckAll never covers a message that was not
//! applied. Deliveries at or below the last applied sequence (redeliveries) are skipped. A stream
//! that is not the one S belongs to (deleted and created again) is read from its start.

use super::config::{Nats, Source};
use super::metrics::Metrics;
use crate::engine::message::{LineCutter, LineEnd};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

pub struct Delivery {
    pub payload: Bytes,
    pub received: Instant,
    /// JetStream stream sequence.
    pub seq: Option<u64>,
    /// The JetStream message to acknowledge once applied.
    pub ack: Option<jetstream::Message>,
    /// A line over the message limit, dropped while it was read: its length.
    pub oversized: Option<usize>,
    /// The AMQP delivery to acknowledge once the state that applied it is saved.
    pub amqp: Option<super::amqp::AmqpTag>,
}

pub enum SourceEvent {
    Batch(Vec<Delivery>),
    /// The source has no more messages (end of file).
    End,
    /// The source failed and will not recover.
    Failed(String),
    /// JetStream: the stream being read (its identity, kept in the snapshot beside the
    /// position). `reset`: it is not the stream the saved position belongs to, so the position
    /// starts over.
    Stream {
        id: String,
        reset: bool,
    },
}

/// Connects to NATS with the configured credentials. The first connection must succeed (a wrong
/// password or an unreachable server is reported at once, and the process supervisor decides);
/// after that, reconnection with backoff is the client's, and each connection event is logged
/// and counted.
pub async fn connect(cfg: &Nats, metrics: Arc<Metrics>) -> anyhow::Result<async_nats::Client> {
    let m = metrics.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(&cfg.name)
        .event_callback(move |event| {
            let m = m.clone();
            async move {
                let label = match &event {
                    async_nats::Event::Connected => {
                        m.nats_connected.store(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!("Connected to NATS.");
                        "connected"
                    }
                    async_nats::Event::Disconnected => {
                        m.nats_connected.store(0, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!("Disconnected from NATS; reconnecting.");
                        "disconnected"
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        tracing::warn!("NATS reports this subscriber as a slow consumer: messages were dropped.");
                        "slow_consumer"
                    }
                    other => {
                        tracing::warn!("NATS: {other}");
                        "other"
                    }
                };
                Metrics::bump(&m.nats_events, label, 1);
            }
        });
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(seed) = &cfg.nkey {
        opts = opts.nkey(seed.clone());
    }
    if let Some(creds) = &cfg.creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| anyhow::anyhow!("reading NATS credentials {}: {e}", creds.display()))?;
    }
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    // Several servers of one cluster, comma-separated, as the NATS tools take them.
    let servers = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("NATS url {:?}: {e}", cfg.url))?;
    let client = opts
        .connect(servers)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {}: {e}", cfg.url))?;
    metrics
        .nats_connected
        .store(1, std::sync::atomic::Ordering::Relaxed);
    Ok(client)
}

/// Starts the configured source. `resume` says which JetStream sequence (of which stream) the
/// restored state already includes.
pub fn spawn(
    source: Source,
    client: Option<async_nats::Client>,
    batch_size: usize,
    resume: Resume,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<SourceEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ready = metrics;
        let result = match source {
            Source::File { path } => {
                ready.ready.store(1, std::sync::atomic::Ordering::Relaxed);
                file(path, batch_size, &tx).await
            }
            Source::Amqp(_) => Err(anyhow::anyhow!(
                "internal: the amqp source is started by `amqp::spawn`"
            )),
            Source::Nats {
                subjects,
                queue_group,
            } => match client {
                Some(c) => core(c, subjects, queue_group, batch_size, &ready, &tx).await,
                None => Err(anyhow::anyhow!("no NATS connection")),
            },
            Source::Jetstream {
                stream,
                subjects,
                consumer,
                create,
                ack_wait_ms,
            } => match client {
                Some(c) => {
                    let js = JetStreamSource {
                        stream,
                        subjects,
                        consumer,
                        create,
                        ack_wait_ms,
                    };
                    js.run(c, batch_size, resume, &ready, &tx).await
                }
                None => Err(anyhow::anyhow!("no NATS connection")),
            },
        };
        match result {
            Ok(()) => {
                let _ = tx.send(SourceEvent::End).await;
            }
            Err(e) => {
                let _ = tx.send(SourceEvent::Failed(format!("{e:#}"))).await;
            }
        }
    })
}

async fn file(
    path: std::path::PathBuf,
    batch_size: usize,
    tx: &mpsc::Sender<SourceEvent>,
) -> anyhow::Result<()> {
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if path.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&path)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )
    };
    let mut lines = tokio::io::BufReader::with_capacity(1 << 20, reader);
    let mut batch = Vec::with_capacity(batch_size);
    let mut buf = Vec::new();
    // Lines are cut as they are read: one over the message limit is dropped as it streams by.
    let mut cutter = LineCutter::default();
    loop {
        buf.clear();
        let end = loop {
            let chunk = lines.fill_buf().await?;
            if chunk.is_empty() {
                break cutter.finish();
            }
            let (used, end) = cutter.feed(chunk, &mut buf);
            lines.consume(used);
            if end.is_some() {
                break end;
            }
        };
        let oversized = match end {
            None => break,
            Some(LineEnd::TooLong(n)) => Some(n),
            Some(LineEnd::Line) => None,
        };
        if oversized.is_none() && buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        batch.push(Delivery {
            payload: Bytes::copy_from_slice(&buf),
            received: Instant::now(),
            seq: None,
            ack: None,
            oversized,
            amqp: None,
        });
        // Send when the batch is full, or when nothing more is buffered (a trickle on stdin
        // must not wait for a full batch).
        if (batch.len() >= batch_size || lines.buffer().is_empty())
            && tx
                .send(SourceEvent::Batch(std::mem::take(&mut batch)))
                .await
                .is_err()
        {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(SourceEvent::Batch(batch)).await;
    }
    Ok(())
}

async fn core(
    client: async_nats::Client,
    subjects: Vec<String>,
    queue_group: Option<String>,
    batch_size: usize,
    metrics: &Metrics,
    tx: &mpsc::Sender<SourceEvent>,
) -> anyhow::Result<()> {
    let mut subs = Vec::new();
    for s in subjects {
        let sub = match &queue_group {
            Some(q) => client.queue_subscribe(s.clone(), q.clone()).await,
            None => client.subscribe(s.clone()).await,
        }
        .map_err(|e| anyhow::anyhow!("subscribing to {s}: {e}"))?;
        tracing::info!(subject = %s, "Subscribed.");
        subs.push(sub);
    }
    // Make sure the server has the subscriptions before saying we are ready.
    client
        .flush()
        .await
        .map_err(|e| anyhow::anyhow!("flushing subscriptions: {e}"))?;
    metrics.ready.store(1, std::sync::atomic::Ordering::Relaxed);
    let mut merged = futures::stream::select_all(subs);
    while let Some(first) = merged.next().await {
        let mut batch = Vec::with_capacity(batch_size);
        let now = Instant::now();
        batch.push(Delivery {
            payload: first.payload,
            received: now,
            seq: None,
            ack: None,
            oversized: None,
            amqp: None,
        });
        // Take whatever else is ready, without waiting.
        while batch.len() < batch_size {
            match merged.next().now_or_never() {
                Some(Some(m)) => batch.push(Delivery {
                    payload: m.payload,
                    received: now,
                    seq: None,
                    ack: None,
                    oversized: None,
                    amqp: None,
                }),
                _ => break,
            }
        }
        if tx.send(SourceEvent::Batch(batch)).await.is_err() {
            break;
        }
    }
    Ok(())
}

struct JetStreamSource {
    stream: String,
    subjects: Vec<String>,
    consumer: String,
    create: bool,
    ack_wait_ms: i64,
}

/// Where a JetStream source resumes: the last stream sequence the restored state includes, and
/// the identity of the stream it was read from (see [`stream_identity`]).
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// `None`: no state of its own (no state directory), so the consumer's acknowledgement
    /// floor says what is done. `Some(0)`: a state that has applied nothing of the stream yet.
    pub position: Option<u64>,
    pub stream_id: Option<String>,
}

/// A stream's identity: its name and creation time. A stream deleted and created again under
/// the same name starts its sequences over; its positions mean nothing to the old one.
fn stream_identity(name: &str, info: &jetstream::stream::Info) -> String {
    format!("{name}@{}", info.created.unix_timestamp_nanos())
}

/// Why reading from the durable consumer stopped.
enum Detached {
    /// The consumer (or its stream) is gone from the server.
    Deleted(String),
    /// The server did not answer (restarting, unreachable): attach again.
    Lost(String),
    /// The engine task stopped listening.
    Closed,
}

impl JetStreamSource {
    fn filter(&self) -> String {
        if self.subjects.len() == 1 {
            self.subjects[0].clone()
        } else {
            String::new()
        }
    }

    /// Reads the stream from its durable consumer, for ever: a consumer or stream deleted while
    /// running is created again when `create` is set (and the error otherwise ends the source);
    /// a server restart is the client's to ride out.
    async fn run(
        self,
        client: async_nats::Client,
        batch_size: usize,
        resume: Resume,
        metrics: &Metrics,
        tx: &mpsc::Sender<SourceEvent>,
    ) -> anyhow::Result<()> {
        let js = jetstream::new(client);
        let mut position = resume.position;
        let mut known_id = resume.stream_id;
        let mut attempt = 0u32;
        let mut attached = false;
        loop {
            // The first attachment's errors stop the start (a missing stream with `create`
            // off, a wrong name); later ones are a server restarting: try again.
            let opened = self.open_stream(&js).await;
            let Some(stream) = later(opened, attached, &mut attempt).await? else {
                continue;
            };
            let info = stream.cached_info();
            let id = stream_identity(&self.stream, info);
            // A stream that is not the one the position belongs to: a new identity, or (for a
            // snapshot written before identities were kept) a position past its end.
            let other = match &known_id {
                Some(k) => *k != id,
                None => position.is_some_and(|p| p > info.state.last_sequence),
            };
            if other && position.is_some() {
                tracing::warn!(
                    stream = %self.stream,
                    old_position = ?position,
                    first = info.state.first_sequence,
                    last = info.state.last_sequence,
                    "The stream is not the one the saved position belongs to (deleted and created again?); reading it from its start."
                );
                position = Some(0);
            }
            if tx
                .send(SourceEvent::Stream {
                    id: id.clone(),
                    reset: other,
                })
                .await
                .is_err()
            {
                return Ok(());
            }
            known_id = Some(id);
            let opened = self.open_consumer(&stream, position).await;
            let Some(consumer) = later(opened, attached, &mut attempt).await? else {
                continue;
            };
            attached = true;
            match self
                .follow(&stream, consumer, batch_size, &mut position, metrics, tx)
                .await?
            {
                Detached::Closed => return Ok(()),
                Detached::Lost(why) => {
                    attempt += 1;
                    tracing::warn!(stream = %self.stream, "JetStream: {why}; attaching again.");
                    backoff(attempt).await;
                }
                Detached::Deleted(why) => {
                    metrics.ready.store(0, std::sync::atomic::Ordering::Relaxed);
                    if !self.create {
                        anyhow::bail!(
                            "JetStream {why} (stream {}, consumer {}); `create` is off, so flowcast does not create it again",
                            self.stream,
                            self.consumer
                        );
                    }
                    tracing::warn!(stream = %self.stream, consumer = %self.consumer, "JetStream {why}; creating it again.");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(20))))
                        .await;
                }
            }
        }
    }

    async fn open_stream(
        &self,
        js: &jetstream::Context,
    ) -> anyhow::Result<jetstream::stream::Stream> {
        if self.create {
            js.get_or_create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: self.subjects.clone(),
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("stream {}: {e}", self.stream))
        } else {
            js.get_stream(&self.stream)
                .await
                .map_err(|e| anyhow::anyhow!("stream {}: {e}", self.stream))
        }
    }

    /// The durable consumer; one created here starts after `position`, so that a consumer
    /// deleted and created again does not deliver the whole stream once more.
    async fn open_consumer(
        &self,
        stream: &jetstream::stream::Stream,
        position: Option<u64>,
    ) -> anyhow::Result<jetstream::consumer::PullConsumer> {
        let config = pull::Config {
            durable_name: Some(self.consumer.clone()),
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_millis(self.ack_wait_ms as u64),
            max_ack_pending: 1_000_000,
            filter_subject: self.filter(),
            deliver_policy: match position {
                Some(p) if p > 0 => DeliverPolicy::ByStartSequence {
                    start_sequence: p + 1,
                },
                _ => DeliverPolicy::All,
            },
            ..Default::default()
        };
        if self.create {
            stream
                .get_or_create_consumer(&self.consumer, config)
                .await
                .map_err(|e| anyhow::anyhow!("consumer {}: {e}", self.consumer))
        } else {
            stream
                .get_consumer(&self.consumer)
                .await
                .map_err(|e| anyhow::anyhow!("consumer {}: {e}", self.consumer))
        }
    }

    /// Hands the engine every message after `position`, in stream order, each once.
    ///
    /// The durable consumer delivers in stream order except where a delivery is lost on the
    /// way (a server killed with messages on the wire, a client restarted with messages handed
    /// to its dead connection): those come back only after `ack_wait`, behind newer ones, and
    /// one AckAll for a newer message would acknowledge them unapplied. Every delivery carries
    /// the consumer's own sequence, which counts deliveries without gaps; a jump in it means
    /// deliveries were lost, and the stream itself is then read (an ordered consumer) from
    /// `position` up to whatever the durable consumer says it has delivered, before going on.
    /// The same catch-up runs at the start, for what was delivered before a crash.
    async fn follow(
        &self,
        stream: &jetstream::stream::Stream,
        mut consumer: jetstream::consumer::PullConsumer,
        batch_size: usize,
        position: &mut Option<u64>,
        metrics: &Metrics,
        tx: &mpsc::Sender<SourceEvent>,
    ) -> anyhow::Result<Detached> {
        let info = match consumer.info().await {
            Ok(i) => i.clone(),
            Err(e) => return Ok(Detached::Lost(format!("consumer info failed: {e}"))),
        };
        // Without a saved position (no state directory), what the consumer acknowledged is done.
        let mut sent = position.unwrap_or(info.ack_floor.stream_sequence);
        if info.delivered.stream_sequence > sent {
            tracing::info!(
                from = sent + 1,
                to = info.delivered.stream_sequence,
                "Catching up on messages delivered after the last snapshot."
            );
            if !self
                .catch_up(
                    stream,
                    sent,
                    info.delivered.stream_sequence,
                    batch_size,
                    &mut sent,
                    tx,
                )
                .await?
            {
                return Ok(Detached::Closed);
            }
        }
        *position = Some(sent);
        let mut last_delivery = info.delivered.consumer_sequence;
        let mut msgs = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => return Ok(Detached::Lost(format!("consuming failed: {e}"))),
        };
        metrics.ready.store(1, std::sync::atomic::Ordering::Relaxed);
        let mut batch: Vec<Delivery> = Vec::with_capacity(batch_size);
        loop {
            // Wait for one message, then take whatever else is ready without waiting.
            let mut next = msgs.next().await;
            loop {
                if ended(&next) {
                    let why = match &next {
                        Some(Err(e)) => e.to_string(),
                        _ => "the message stream ended".to_string(),
                    };
                    if let Some(w) = gone(&self.consumer, stream, &why).await {
                        return Ok(Detached::Deleted(w));
                    }
                    // Still there (a server restarting): read it afresh.
                    msgs = match consumer.messages().await {
                        Ok(m) => m,
                        Err(e) => return Ok(Detached::Lost(format!("consuming failed: {e}"))),
                    };
                    break;
                }
                let m = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Missed heartbeats and the like while reconnecting: the stream goes on.
                        tracing::warn!("JetStream: {e}");
                        break;
                    }
                    None => break,
                };
                let (seq, delivery) = match m.info() {
                    Ok(i) => (i.stream_sequence, i.consumer_sequence),
                    Err(e) => {
                        tracing::warn!("JetStream message without metadata, skipped: {e}");
                        break;
                    }
                };
                if delivery > last_delivery + 1 {
                    // Deliveries were lost: read the stream up to all that was delivered.
                    let delivered = match consumer.info().await {
                        Ok(i) => i.delivered.stream_sequence,
                        Err(_) => seq,
                    };
                    let to = delivered.max(seq);
                    if to > sent {
                        metrics
                            .jetstream_gaps
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(
                            from = sent + 1,
                            to,
                            "Deliveries from JetStream were lost on the way; reading the stream again from the last one handed over."
                        );
                        if !hand_over(tx, &mut batch).await {
                            return Ok(Detached::Closed);
                        }
                        if !self
                            .catch_up(stream, sent, to, batch_size, &mut sent, tx)
                            .await?
                        {
                            return Ok(Detached::Closed);
                        }
                    }
                }
                // A lower number than the last: the server restarted from an older record of
                // its deliveries, and delivers those again (skipped by sequence downstream).
                last_delivery = delivery;
                sent = sent.max(seq);
                *position = Some(sent);
                batch.push(Delivery {
                    payload: m.message.payload.clone(),
                    received: Instant::now(),
                    seq: Some(seq),
                    ack: Some(m),
                    oversized: None,
                    amqp: None,
                });
                if batch.len() >= batch_size {
                    break;
                }
                next = match msgs.next().now_or_never() {
                    Some(n) => n,
                    None => break,
                };
            }
            if !hand_over(tx, &mut batch).await {
                return Ok(Detached::Closed);
            }
        }
    }

    /// Reads the stream in order from `from + 1` to `to` and hands it over in batches (no
    /// acknowledgement: the durable consumer's next AckAll covers them). A failure on the way
    /// (a server restarting) is retried from the last message handed over. Returns false when
    /// the engine task stopped listening.
    async fn catch_up(
        &self,
        stream: &jetstream::stream::Stream,
        from: u64,
        to: u64,
        batch_size: usize,
        sent: &mut u64,
        tx: &mpsc::Sender<SourceEvent>,
    ) -> anyhow::Result<bool> {
        *sent = (*sent).max(from);
        for attempt in 1u64.. {
            match self.catch_up_once(stream, to, batch_size, sent, tx).await {
                Ok(open) => return Ok(open),
                Err(e) => {
                    tracing::warn!(
                        from = *sent + 1,
                        to,
                        "Catching up failed, trying again: {e:#}"
                    );
                    tokio::time::sleep(Duration::from_millis(200 * attempt.min(10))).await;
                }
            }
        }
        unreachable!("the loop only ends by returning")
    }

    /// One attempt of [`catch_up`](Self::catch_up), with an ordered consumer from `*sent + 1`.
    async fn catch_up_once(
        &self,
        stream: &jetstream::stream::Stream,
        to: u64,
        batch_size: usize,
        sent: &mut u64,
        tx: &mpsc::Sender<SourceEvent>,
    ) -> anyhow::Result<bool> {
        if *sent >= to {
            return Ok(true);
        }
        let mut ordered = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.filter(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: *sent + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("catch-up consumer: {e}"))?;
        // Nothing left in the range (deleted, or another subject): nothing to wait for.
        let pending = ordered
            .info()
            .await
            .map(|i| i.num_pending)
            .map_err(|e| anyhow::anyhow!("catch-up consumer: {e}"))?;
        if pending == 0 {
            *sent = to;
            return Ok(true);
        }
        let mut msgs = ordered
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("catch-up: {e}"))?;
        let mut batch = Vec::with_capacity(batch_size);
        while let Some(m) = msgs.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("catch-up: {e}"))?;
            let info = m.info().map_err(|e| anyhow::anyhow!("catch-up: {e}"))?;
            let (seq, left) = (info.stream_sequence, info.pending);
            let past = seq > to;
            if !past {
                batch.push(Delivery {
                    payload: m.message.payload.clone(),
                    received: Instant::now(),
                    seq: Some(seq),
                    ack: None,
                    oversized: None,
                    amqp: None,
                });
            }
            let last = past || seq == to || left == 0;
            if batch.len() >= batch_size || last {
                // Only what is handed over counts as sent: a failure before this is retried.
                if let Some(s) = batch.last().and_then(|d| d.seq) {
                    *sent = s;
                }
                if !hand_over(tx, &mut batch).await {
                    return Ok(false);
                }
            }
            if last {
                *sent = to.max(*sent);
                return Ok(true);
            }
        }
        anyhow::bail!("catch-up: the message stream ended")
    }
}

/// An attachment step's result: the value, or (once attached before: a server restarting)
/// `None` after a pause so that the caller tries again, or (at the start) the error.
async fn later<T>(
    result: anyhow::Result<T>,
    attached: bool,
    attempt: &mut u32,
) -> anyhow::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if attached => {
            *attempt += 1;
            tracing::warn!("JetStream: {e:#}; trying again.");
            backoff(*attempt).await;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Sends what `batch` holds (if anything) to the engine task; false when it stopped listening.
async fn hand_over(tx: &mpsc::Sender<SourceEvent>, batch: &mut Vec<Delivery>) -> bool {
    batch.is_empty()
        || tx
            .send(SourceEvent::Batch(std::mem::take(batch)))
            .await
            .is_ok()
}

/// Waits before attaching again: 200 ms more each attempt, at most 5 s.
async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(25)))).await;
}

/// Whether a message stream's end or error means the consumer may be gone.
fn ended<T>(next: &Option<Result<T, jetstream::consumer::pull::MessagesError>>) -> bool {
    use jetstream::consumer::pull::MessagesErrorKind as K;
    match next {
        None => true,
        Some(Err(e)) => matches!(e.kind(), K::ConsumerDeleted | K::NoResponders),
        Some(Ok(_)) => false,
    }
}

/// Whether the consumer is really gone (`Some(why)`): asks the server until it answers, since
/// a restarting server answers nothing for a while, which is not a deletion.
async fn gone(consumer: &str, stream: &jetstream::stream::Stream, why: &str) -> Option<String> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
    let mut attempt = 0u64;
    loop {
        match stream.consumer_info(consumer).await {
            Ok(_) => return None,
            Err(e) if matches!(e.kind(), K::NotFound) => {
                return Some(format!("consumer deleted ({why})"))
            }
            Err(e) if matches!(e.kind(), K::StreamNotFound) => {
                return Some(format!("stream deleted ({why})"))
            }
            Err(e) => {
                if attempt.is_multiple_of(20) {
                    tracing::warn!("JetStream does not answer about consumer {consumer}: {e}");
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
