//! The `amqp` source: oslo.messaging notifications from RabbitMQ (AMQP 0-9-1), on lapin.
//!
//! flowcast declares a durable queue of its own and binds it to the services' exchanges with
//! oslo's routing keys, so it receives copies and never takes messages from ceilometer's or any
//! other consumer's queue. Messages are acknowledged manually: with a state directory, only once
//! the snapshot that covers them is written (the broker keeps every message whose effect could
//! still be lost by a crash); without one, once applied. What the broker sends again (after a
//! crash, a broker restart or a dropped connection) is recognised by the oslo envelope's
//! `message_id`, remembered over a window that the snapshot keeps (`SeenIds`), so that every
//! message counts once. The first connection must succeed; after that a lost connection is
//! reopened with backoff, each event logged and counted on `/metrics`.

use super::config::{Amqp, QueueType};
use super::metrics::Metrics;
use super::source::{Delivery, SourceEvent};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Where a delivery came from, to acknowledge it: the channel (of one connection: `generation`
/// counts the connections) and the broker's delivery tag on it.
#[derive(Clone)]
pub struct AmqpTag {
    pub channel: Channel,
    pub generation: u64,
    pub tag: u64,
    pub redelivered: bool,
}

/// An open connection: the channel deliveries arrive on and acknowledgements go to.
pub struct Session {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    generation: u64,
}

fn short(what: &str, s: &str) -> anyhow::Result<ShortString> {
    ShortString::try_new(s.to_string())
        .map_err(|_| anyhow::anyhow!("{what} `{s}` is longer than AMQP's 255 bytes"))
}

/// Connects, declares flowcast's queue, binds it and starts consuming. The error names the
/// broker's reason (a refused login, an unknown vhost, a queue declared with other arguments).
pub async fn open(cfg: &Amqp, generation: u64) -> anyhow::Result<Session> {
    let mut uri: lapin::uri::AMQPUri = cfg
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("the amqp url is not valid: {e}"))?;
    if let Some(u) = &cfg.user {
        uri.authority.userinfo.username = u.clone();
    }
    if let Some(p) = cfg.password()? {
        uri.authority.userinfo.password = p;
    }
    let shown = format!(
        "{}:{}/{}",
        uri.authority.host, uri.authority.port, uri.vhost
    );
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: match &cfg.tls_ca {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading the amqp tls_ca {}: {e}", p.display()))?,
            ),
            None => None,
        },
    };
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("flowcast {}", cfg.queue)));
    let runtime = lapin::runtime::default_runtime()
        .map_err(|e| anyhow::anyhow!("starting the amqp client: {e}"))?;
    let conn = Connection::connect_uri_with_config(uri, props, tls, runtime)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to RabbitMQ at {shown}: {e}"))?;
    let in_broker = |what: String| move |e: lapin::Error| anyhow::anyhow!("{what}: {e}");
    let queue = short("queue", &cfg.queue)?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(match cfg.queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        })),
    );
    if let Some(ttl) = cfg.message_ttl_ms {
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    }
    if let Some(n) = cfg.max_length {
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(n.min(i64::MAX as u64) as i64),
        );
    }
    if let Some(n) = cfg.max_length_bytes {
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(n.min(i64::MAX as u64) as i64),
        );
    }
    if let Some(dlx) = &cfg.dead_letter_exchange {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(dlx.as_str())),
        );
    }
    let channel = conn
        .create_channel()
        .await
        .map_err(in_broker("opening a channel".into()))?;
    channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(in_broker(format!(
            "declaring the queue `{}` (a queue of that name with other settings must be deleted or renamed)",
            cfg.queue
        )))?;
    for exchange in &cfg.exchanges {
        let name = short("exchange", exchange)?;
        ensure_exchange(&conn, &channel, &name, cfg.durable_exchanges).await?;
        for key in &cfg.routing_keys {
            channel
                .queue_bind(
                    queue.clone(),
                    name.clone(),
                    short("routing key", key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(in_broker(format!(
                    "binding `{}` to `{exchange}` with `{key}`",
                    cfg.queue
                )))?;
        }
    }
    channel
        .basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await
        .map_err(in_broker("setting the prefetch".into()))?;
    let consumer = channel
        .basic_consume(
            queue,
            short("consumer tag", &format!("flowcast-{}", std::process::id()))?,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(in_broker(format!("consuming from `{}`", cfg.queue)))?;
    Ok(Session {
        conn,
        channel,
        consumer,
        generation,
    })
}

/// Uses the exchange as it is when it exists (it is the service's; a passive declare fails and
/// closes its own channel when it does not), else creates it as oslo would: a topic exchange,
/// durable as asked.
async fn ensure_exchange(
    conn: &Connection,
    channel: &Channel,
    name: &ShortString,
    durable: bool,
) -> anyhow::Result<()> {
    let in_broker = |what: String| move |e: lapin::Error| anyhow::anyhow!("{what}: {e}");
    let probe = conn
        .create_channel()
        .await
        .map_err(in_broker("opening a channel".into()))?;
    let exists = probe
        .exchange_declare(
            name.clone(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if exists {
        let _ = probe.close(200, "done".into()).await;
        return Ok(());
    }
    channel
        .exchange_declare(
            name.clone(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(in_broker(format!("declaring the exchange `{name}`")))
}

/// Starts the source task on a session opened by `open` (the start fails when the first
/// connection does).
pub fn spawn(
    session: Session,
    cfg: Amqp,
    batch_size: usize,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<SourceEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        metrics.amqp_connected.store(1, Relaxed);
        Metrics::bump(&metrics.amqp_events, "connected", 1);
        metrics.ready.store(1, Relaxed);
        if let Err(e) = consume(session, &cfg, batch_size, &metrics, &tx).await {
            let _ = tx.send(SourceEvent::Failed(format!("{e:#}"))).await;
        }
    })
}

async fn consume(
    mut session: Session,
    cfg: &Amqp,
    batch_size: usize,
    metrics: &Metrics,
    tx: &mpsc::Sender<SourceEvent>,
) -> anyhow::Result<()> {
    loop {
        let lost = read(&mut session, batch_size, tx).await;
        let Some(why) = lost else {
            // The engine has gone: shutting down.
            let _ = session.conn.close(200, "flowcast stops".into()).await;
            return Ok(());
        };
        metrics.amqp_connected.store(0, Relaxed);
        Metrics::bump(&metrics.amqp_events, "disconnected", 1);
        tracing::warn!("The RabbitMQ connection was lost ({why}); reconnecting. Unacknowledged messages come back and are recognised by their message id.");
        let generation = session.generation + 1;
        let mut attempt = 0u32;
        session = loop {
            backoff(attempt).await;
            attempt = attempt.saturating_add(1);
            match open(cfg, generation).await {
                Ok(s) => break s,
                Err(e) => {
                    Metrics::bump(&metrics.amqp_events, "connect_failed", 1);
                    if attempt <= 3 || attempt.is_multiple_of(30) {
                        tracing::warn!(attempt, "Reconnecting to RabbitMQ failed: {e:#}");
                    }
                }
            }
        };
        metrics.amqp_connected.store(1, Relaxed);
        Metrics::bump(&metrics.amqp_events, "connected", 1);
        tracing::info!(attempts = attempt, "Reconnected to RabbitMQ.");
    }
}

/// Hands deliveries to the engine in batches until the connection is lost (`Some(why)`) or the
/// engine's end of the channel is closed (`None`).
async fn read(
    session: &mut Session,
    batch_size: usize,
    tx: &mpsc::Sender<SourceEvent>,
) -> Option<String> {
    let mut batch = Vec::with_capacity(batch_size.min(1024));
    loop {
        // The engine gone (shutting down, after its acknowledgements): the caller closes the
        // connection properly, which delivers what was sent on it first.
        let first = tokio::select! {
            first = session.consumer.next() => first,
            _ = tx.closed() => return None,
        };
        let mut end = take(session, first, &mut batch);
        // Take what is ready, then linger up to LINGER for more: deliveries arrive one by one
        // from lapin's thread, and handing the engine a batch per few messages costs a thread
        // wake-up each (and a context switch between threads).
        let deadline = tokio::time::Instant::now() + LINGER;
        while end.is_none() && !batch.is_empty() && batch.len() < batch_size {
            let item = match session.consumer.next().now_or_never() {
                Some(item) => item,
                None => match tokio::time::timeout_at(deadline, session.consumer.next()).await {
                    Ok(item) => item,
                    Err(_) => break,
                },
            };
            end = take(session, item, &mut batch);
        }
        if !batch.is_empty() {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size.min(1024)));
            if tx.send(SourceEvent::Batch(full)).await.is_err() {
                return None;
            }
        }
        if end.is_some() {
            return end;
        }
    }
}

/// Adds a delivery to the batch; `Some(why)` when the consumer has ended.
fn take(
    session: &Session,
    item: Option<lapin::Result<lapin::message::Delivery>>,
    batch: &mut Vec<Delivery>,
) -> Option<String> {
    match item {
        Some(Ok(d)) => {
            batch.push(Delivery {
                payload: Bytes::from(d.data),
                received: Instant::now(),
                seq: None,
                ack: None,
                oversized: None,
                amqp: Some(AmqpTag {
                    channel: session.channel.clone(),
                    generation: session.generation,
                    tag: d.delivery_tag,
                    redelivered: d.redelivered,
                }),
            });
            None
        }
        Some(Err(e)) => Some(e.to_string()),
        None => Some("the broker ended the consumer".to_string()),
    }
}

/// How long a batch waits for more deliveries once its first has come.
const LINGER: Duration = Duration::from_millis(1);

async fn backoff(attempt: u32) {
    let ms = (100u64 << attempt.min(6)).min(5_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Acknowledgements owed to the broker, per connection: the highest delivery tag applied (one
/// `basic.ack` with `multiple` covers every earlier one) and the tags to reject to the
/// dead-letter exchange.
#[derive(Default)]
pub struct Owed {
    per: Vec<OwedOn>,
    /// Messages applied and not yet acknowledged.
    pub count: usize,
}

struct OwedOn {
    channel: Channel,
    generation: u64,
    max_tag: u64,
    reject: Vec<u64>,
}

impl Owed {
    pub fn add(&mut self, t: &AmqpTag, reject: bool) {
        self.count += 1;
        let i = match self.per.iter().position(|o| o.generation == t.generation) {
            Some(i) => i,
            None => {
                self.per.push(OwedOn {
                    channel: t.channel.clone(),
                    generation: t.generation,
                    max_tag: 0,
                    reject: Vec::new(),
                });
                self.per.len() - 1
            }
        };
        let o = &mut self.per[i];
        o.max_tag = o.max_tag.max(t.tag);
        if reject {
            o.reject.push(t.tag);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn append(&mut self, other: Owed) {
        self.count += other.count;
        for o in other.per {
            match self.per.iter_mut().find(|p| p.generation == o.generation) {
                Some(p) => {
                    p.max_tag = p.max_tag.max(o.max_tag);
                    p.reject.extend(o.reject);
                }
                None => self.per.push(o),
            }
        }
    }

    /// Rejects and acknowledges everything owed. A channel that has closed since (its
    /// connection was lost) cannot take them: the broker has put those messages back and sends
    /// them again, to be skipped by their message id.
    pub async fn settle(self, metrics: &Metrics) {
        for o in self.per {
            let mut result = Ok(());
            for tag in o.reject {
                if result.is_ok() {
                    result = o
                        .channel
                        .basic_reject(tag, BasicRejectOptions { requeue: false })
                        .await;
                }
            }
            if result.is_ok() && o.max_tag > 0 {
                result = o
                    .channel
                    .basic_ack(o.max_tag, BasicAckOptions { multiple: true })
                    .await;
            }
            if let Err(e) = result {
                Metrics::bump(&metrics.amqp_events, "ack_failed", 1);
                tracing::debug!(
                    "Acknowledging to RabbitMQ failed (the messages come back and are skipped): {e}"
                );
            }
        }
    }
}

/// The task that sends acknowledgements for the engine task, in the order they are owed (a
/// `multiple` ack of a lower tag after a higher one would be an error that closes the channel).
pub struct Acker {
    tx: mpsc::UnboundedSender<Owed>,
    task: tokio::task::JoinHandle<()>,
}

impl Acker {
    pub fn spawn(metrics: Arc<Metrics>) -> Acker {
        let (tx, mut rx) = mpsc::unbounded_channel::<Owed>();
        let task = tokio::spawn(async move {
            while let Some(owed) = rx.recv().await {
                owed.settle(&metrics).await;
            }
        });
        Acker { tx, task }
    }

    pub fn send(&self, owed: Owed) {
        if !owed.is_empty() {
            let _ = self.tx.send(owed);
        }
    }

    /// Waits until everything sent is acknowledged (or has failed).
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// The ids of the messages applied most recently (at most `capacity`), as 64-bit FNV-1a
/// hashes: 8 bytes an id in the ring plus the set's share, whatever the ids' length. Kept in the
/// snapshot in arrival order.
#[derive(Default)]
pub struct SeenIds {
    capacity: usize,
    order: VecDeque<u64>,
    set: HashSet<u64, foldhash::fast::FixedState>,
}

impl SeenIds {
    pub fn new(capacity: usize, saved: &[u64]) -> SeenIds {
        let mut s = SeenIds {
            capacity,
            order: VecDeque::with_capacity(capacity.min(1 << 20)),
            set: HashSet::with_capacity_and_hasher(
                capacity.min(1 << 20),
                foldhash::fast::FixedState::default(),
            ),
        };
        for &h in saved {
            s.insert(h);
        }
        s
    }

    /// Remembers `h`; false when it was already there.
    pub fn insert(&mut self, h: u64) -> bool {
        if self.capacity == 0 || !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub fn contains(&self, h: u64) -> bool {
        self.set.contains(&h)
    }

    pub fn saved(&self) -> Vec<u64> {
        self.order.iter().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// `flowcast publish --amqp`: what to send and where.
pub struct PublishOptions {
    pub url: String,
    pub exchange: String,
    pub topic: String,
    /// Wrap each line in oslo's `messagingv2` envelope.
    pub envelope: bool,
    pub rate: Option<f64>,
    pub repeat: usize,
}

/// Publishes `lines` as oslo.messaging's `messagingv2` notifier does: persistent, JSON, to the
/// exchange with the routing key `<topic>.<priority>`; waits for the broker's confirms (a window
/// of them in flight). Returns (messages sent, seconds).
pub async fn publish(opts: &PublishOptions, lines: &[Bytes]) -> anyhow::Result<(u64, f64)> {
    let runtime = lapin::runtime::default_runtime()
        .map_err(|e| anyhow::anyhow!("starting the amqp client: {e}"))?;
    let uri: lapin::uri::AMQPUri = opts
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("the amqp url is not valid: {e}"))?;
    let conn = Connection::connect_uri_with_config(
        uri,
        ConnectionProperties::default(),
        lapin::tcp::OwnedTLSConfig::default(),
        runtime,
    )
    .await
    .map_err(|e| anyhow::anyhow!("connecting to RabbitMQ at {}: {e}", opts.url))?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let exchange = short("exchange", &opts.exchange)?;
    ensure_exchange(&conn, &channel, &exchange, false).await?;
    let props = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into());
    let start = Instant::now();
    let mut sent = 0u64;
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..opts.repeat {
        for line in lines {
            if let Some(rate) = opts.rate {
                let due = Duration::from_secs_f64(sent as f64 / rate);
                let elapsed = start.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
            let priority = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("priority")?.as_str().map(str::to_ascii_lowercase))
                .unwrap_or_else(|| "info".into());
            let body: Vec<u8> = if opts.envelope {
                serde_json::to_vec(&serde_json::json!({
                    "oslo.version": "2.0",
                    "oslo.message": String::from_utf8_lossy(line),
                }))?
            } else {
                line.to_vec()
            };
            let key = short("routing key", &format!("{}.{priority}", opts.topic))?;
            let confirm = channel
                .basic_publish(
                    exchange.clone(),
                    key,
                    lapin::options::BasicPublishOptions::default(),
                    &body,
                    props.clone(),
                )
                .await?;
            pending.push_back(confirm);
            while pending.len() >= 512 {
                if let Some(c) = pending.pop_front() {
                    confirmed(c.await?)?;
                }
            }
            sent += 1;
        }
    }
    while let Some(c) = pending.pop_front() {
        confirmed(c.await?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    Ok((sent, secs))
}

fn confirmed(c: lapin::Confirmation) -> anyhow::Result<()> {
    match c {
        lapin::Confirmation::Nack(_) => anyhow::bail!("the broker refused a message (nack)"),
        _ => Ok(()),
    }
}

/// FNV-1a, 64 bits: stable across builds and versions (the hashes are saved).
pub fn fnv1a(tag: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&tag).chain(bytes) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_the_oldest_and_keeps_its_order() {
        let mut s = SeenIds::new(3, &[]);
        for h in 1..=5 {
            assert!(s.insert(h));
        }
        assert!(!s.insert(5), "a repeat is reported");
        assert_eq!(s.saved(), vec![3, 4, 5]);
        assert!(!s.contains(2) && s.contains(3));
        let back = SeenIds::new(3, &s.saved());
        assert_eq!(back.saved(), vec![3, 4, 5]);
    }

    #[test]
    fn ids_and_bodies_hash_apart_and_stably() {
        assert_ne!(fnv1a(b'i', b"m1"), fnv1a(b'b', b"m1"));
        // FNV-1a of "im1": a change of hash would make saved windows useless after an upgrade.
        assert_eq!(fnv1a(b'i', b"m1"), 0x2b9c_bc19_2bd2_208e);
    }
}
