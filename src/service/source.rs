//! Sources: messages in, as batches for the engine task. A source task reads as much as is
//! ready (up to the batch size) and sends it on a bounded channel, so a busy engine slows the
//! intake down instead of queueing without limit.
//!
//! JetStream, nothing lost and nothing counted twice: the consumer acknowledges with AckAll,
//! once per batch, after the engine applied the batch. Snapshots record the last applied stream
//! sequence S. At start, messages after S that were acknowledged before a crash (up to the
//! consumer's ack floor A) are no longer delivered by the durable consumer, so they are read
//! again with an ordered consumer from S+1 to A ("catch-up"); then the durable consumer resumes,
//! and any delivery at or below the last applied sequence (a redelivery) is skipped.

use super::config::{Nats, Source};
use super::metrics::Metrics;
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
}

pub enum SourceEvent {
    Batch(Vec<Delivery>),
    /// The source has no more messages (end of file).
    End,
    /// The source failed and will not recover.
    Failed(String),
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
    let client = opts
        .connect(cfg.url.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {}: {e}", cfg.url))?;
    metrics
        .nats_connected
        .store(1, std::sync::atomic::Ordering::Relaxed);
    Ok(client)
}

/// Starts the configured source. `last_applied` is the JetStream sequence the restored state
/// already includes.
pub fn spawn(
    source: Source,
    client: Option<async_nats::Client>,
    batch_size: usize,
    last_applied: Option<u64>,
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
                    js.run(c, batch_size, last_applied, &ready, &tx).await
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
    loop {
        buf.clear();
        if lines.read_until(b'\n', &mut buf).await? == 0 {
            break;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        batch.push(Delivery {
            payload: Bytes::copy_from_slice(&buf),
            received: Instant::now(),
            seq: None,
            ack: None,
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
        });
        // Take whatever else is ready, without waiting.
        while batch.len() < batch_size {
            match merged.next().now_or_never() {
                Some(Some(m)) => batch.push(Delivery {
                    payload: m.payload,
                    received: now,
                    seq: None,
                    ack: None,
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

impl JetStreamSource {
    async fn run(
        self,
        client: async_nats::Client,
        batch_size: usize,
        last_applied: Option<u64>,
        metrics: &Metrics,
        tx: &mpsc::Sender<SourceEvent>,
    ) -> anyhow::Result<()> {
        let js = jetstream::new(client);
        let stream = if self.create {
            js.get_or_create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: self.subjects.clone(),
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("stream {}: {e}", self.stream))?
        } else {
            js.get_stream(&self.stream)
                .await
                .map_err(|e| anyhow::anyhow!("stream {}: {e}", self.stream))?
        };
        let filter = if self.subjects.len() == 1 {
            self.subjects[0].clone()
        } else {
            String::new()
        };
        let config = pull::Config {
            durable_name: Some(self.consumer.clone()),
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_millis(self.ack_wait_ms as u64),
            max_ack_pending: 1_000_000,
            filter_subject: filter.clone(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let mut consumer: jetstream::consumer::PullConsumer = if self.create {
            stream
                .get_or_create_consumer(&self.consumer, config)
                .await
                .map_err(|e| anyhow::anyhow!("consumer {}: {e}", self.consumer))?
        } else {
            stream
                .get_consumer(&self.consumer)
                .await
                .map_err(|e| anyhow::anyhow!("consumer {}: {e}", self.consumer))?
        };
        let ack_floor = consumer
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("consumer {} info: {e}", self.consumer))?
            .ack_floor
            .stream_sequence;
        let applied = last_applied.unwrap_or(0);
        if ack_floor > applied {
            tracing::info!(
                from = applied + 1,
                to = ack_floor,
                "Catching up on messages acknowledged after the last snapshot."
            );
            let ordered = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: filter.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: applied + 1,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("catch-up consumer: {e}"))?;
            let mut msgs = ordered
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("catch-up: {e}"))?;
            let mut batch = Vec::with_capacity(batch_size);
            while let Some(m) = msgs.next().await {
                let m = m.map_err(|e| anyhow::anyhow!("catch-up: {e}"))?;
                let seq = m
                    .info()
                    .map_err(|e| anyhow::anyhow!("catch-up: {e}"))?
                    .stream_sequence;
                if seq > ack_floor {
                    break;
                }
                batch.push(Delivery {
                    payload: m.message.payload.clone(),
                    received: Instant::now(),
                    seq: Some(seq),
                    ack: None,
                });
                if (batch.len() >= batch_size || seq == ack_floor)
                    && tx
                        .send(SourceEvent::Batch(std::mem::take(&mut batch)))
                        .await
                        .is_err()
                {
                    return Ok(());
                }
                if seq == ack_floor {
                    break;
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(SourceEvent::Batch(batch)).await;
            }
        }
        let mut msgs = consumer
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("consuming {}: {e}", self.consumer))?;
        metrics.ready.store(1, std::sync::atomic::Ordering::Relaxed);
        loop {
            let Some(first) = msgs.next().await else {
                break;
            };
            let mut batch = Vec::with_capacity(batch_size);
            let now = Instant::now();
            push_js(&mut batch, first, now);
            while batch.len() < batch_size {
                match msgs.next().now_or_never() {
                    Some(Some(m)) => push_js(&mut batch, m, now),
                    _ => break,
                }
            }
            if !batch.is_empty() && tx.send(SourceEvent::Batch(batch)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

fn push_js<E: std::fmt::Display>(
    batch: &mut Vec<Delivery>,
    m: Result<jetstream::Message, E>,
    now: Instant,
) {
    match m {
        Ok(m) => {
            let seq = m.info().map(|i| i.stream_sequence).ok();
            batch.push(Delivery {
                payload: m.message.payload.clone(),
                received: now,
                seq,
                ack: Some(m),
            });
        }
        // Missed heartbeats and the like while reconnecting: the stream goes on.
        Err(e) => tracing::warn!("JetStream: {e}"),
    }
}
