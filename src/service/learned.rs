//! Learned counts shared across a cluster's partitions (issue 16, item 3).
//!
//! Each partition has its own engine (`service::cluster`), whose model would otherwise learn
//! from its own messages only. Counts are additive (as between shards, `engine::shard`): at
//! each of its snapshots a partition takes what its engine learned since the last
//! (`Engine::take_deltas`), keeps it in the snapshot as unpublished batches, writes the
//! snapshot, then publishes the batches to `<learned_prefix>.<p>` with `Nats-Msg-Id`
//! `<p>:<position>:<chunk>`; and, just before, it folds in every other partition's batch
//! published since its last fold (`fold`), in stream order.
//!
//! Why only at snapshots: a partition's engine between two snapshots must be a function of
//! its last snapshot and its own messages, so that a new owner applying those messages again
//! after a failover gives the same records under the same ids (`service::cluster`). Folding
//! at any other moment would make its predictions depend on when batches arrived. The price
//! is the merge delay: up to one snapshot interval before a step is published, and up to one
//! more before another partition folds it.
//!
//! Why nothing is counted twice or lost:
//! - A partition's own steps are in its engine (and snapshot) once, as before.
//! - Its batches are published only after the snapshot that covers their steps is written,
//!   and stay in every snapshot until their publish is confirmed: a new owner restoring that
//!   snapshot publishes them again under the same ids (dropped by the stream's duplicate
//!   window if the last owner had published them), and learns the steps after the snapshot
//!   itself, into batches of its own. Steps the last owner learned after its last snapshot
//!   were never published: it publishes only what a written snapshot covers.
//! - Each partition's snapshot records the learned-stream sequence it folded up to, and per
//!   source partition the last batch folded (`Shared::last`): a batch is folded once, even
//!   when published again after the duplicate window.

use crate::engine::shard::{FlowDelta, ShardDelta};
use crate::engine::Engine;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Learned steps per published message at most: about 700 bytes each in JSON, so a message
/// stays far below the server's default `max_payload` (1 MB); fewer on a server with a smaller
/// one (`chunk_for`).
pub const CHUNK: usize = 400;

/// Steps per batch for messages of at most `max_bytes`.
pub fn chunk_for(max_bytes: usize) -> usize {
    (max_bytes / 1_000).clamp(16, CHUNK)
}

/// Batches a worker holds in memory at most (each up to `CHUNK` steps, about 60 KB).
const MAX_CACHED: usize = 1_000;

/// The header carrying a batch's publish time (unix ms), for the merge delay.
const AT_HEADER: &str = "Flowcast-Learned-At";

/// What a partition's snapshot keeps of the sharing.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Shared {
    /// The learned stream's sequence up to which batches were folded in (or skipped).
    pub folded: u64,
    /// Per source partition, the last batch folded in: (its position, its chunk).
    pub last: BTreeMap<u32, (u64, u32)>,
    /// This partition's batches not yet confirmed in the learned stream.
    pub unpublished: Vec<Batch>,
}

/// What partition `part` learned from its messages up to sequence `to` (one chunk of it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    pub part: u32,
    pub to: u64,
    pub chunk: u32,
    pub flows: Vec<FlowDelta>,
}

impl Batch {
    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.part, self.to, self.chunk)
    }
}

/// Cuts what a partition learned up to `to` into batches of at most `chunk` steps.
pub fn batches(part: u32, to: u64, learned: ShardDelta, chunk: usize) -> Vec<Batch> {
    let chunk = chunk.max(1);
    let mut out: Vec<Batch> = Vec::new();
    let mut size = 0;
    for fd in learned.flows {
        let mut deltas = fd.deltas.into_iter().peekable();
        while deltas.peek().is_some() {
            if out.is_empty() || size >= chunk {
                out.push(Batch {
                    part,
                    to,
                    chunk: out.len() as u32,
                    flows: Vec::new(),
                });
                size = 0;
            }
            let take: Vec<_> = deltas.by_ref().take(chunk - size).collect();
            size += take.len();
            let batch = out.last_mut().expect("pushed above");
            batch.flows.push(FlowDelta {
                index: fd.index,
                name: fd.name.clone(),
                states: fd.states,
                now_ms: fd.now_ms,
                deltas: take,
            });
        }
    }
    out
}

/// Folds one batch (at learned-stream sequence `seq`) into partition `p`'s engine unless it
/// is `p`'s own or was folded before. Returns whether it was folded.
pub fn fold(engine: &mut Engine, shared: &mut Shared, p: u32, seq: u64, batch: &Batch) -> bool {
    if seq <= shared.folded {
        return false;
    }
    shared.folded = seq;
    if batch.part == p {
        return false;
    }
    let at = (batch.to, batch.chunk);
    if let Some(&l) = shared.last.get(&batch.part).filter(|&&l| l >= at) {
        tracing::info!(
            partition = p,
            seq,
            source = batch.part,
            to = batch.to,
            chunk = batch.chunk,
            last_to = l.0,
            last_chunk = l.1,
            "A learned batch at or before the last folded from its partition; skipped."
        );
        return false;
    }
    shared.last.insert(batch.part, at);
    engine.apply_flow_deltas(&batch.flows);
    true
}

/// A learned batch as read from the stream: its sequence, the batch, its publish time.
pub type Item = (u64, Arc<Batch>, i64);

/// The learned batches this worker has read and its partitions have not all folded yet.
pub struct Cache {
    /// Sequences below this are not held: a partition that needs them reads the stream.
    pub first: u64,
    pub items: VecDeque<Item>,
    rx: mpsc::UnboundedReceiver<Item>,
}

impl Cache {
    /// Follows the learned stream from its end (`follow` runs as a task).
    pub async fn start(stream: jetstream::stream::Stream) -> anyhow::Result<Cache> {
        let mut stream = stream;
        let last = stream
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("learned stream: {e}"))?
            .state
            .last_sequence;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(follow(stream, last + 1, tx));
        Ok(Cache {
            first: last + 1,
            items: VecDeque::new(),
            rx,
        })
    }

    /// Takes in what the follower read.
    pub fn drain(&mut self) {
        while let Ok(item) = self.rx.try_recv() {
            self.items.push_back(item);
        }
    }

    /// The newest sequence held.
    pub fn newest(&self) -> u64 {
        self.items.back().map(|i| i.0).unwrap_or(self.first - 1)
    }

    /// Forgets what every owned partition has folded (`floor`: the least of their positions),
    /// and the oldest beyond `MAX_CACHED` batches (a partition that cannot fold yet reads
    /// them from the stream when it can).
    pub fn trim(&mut self, floor: u64) {
        while self.items.front().is_some_and(|i| i.0 <= floor) {
            self.items.pop_front();
        }
        self.first = self.first.max(floor + 1);
        while self.items.len() > MAX_CACHED {
            if let Some((seq, _, _)) = self.items.pop_front() {
                self.first = self.first.max(seq + 1);
            }
        }
    }
}

fn parse(msg: &async_nats::Message) -> Option<(Batch, i64)> {
    let batch = serde_json::from_slice::<Batch>(&msg.payload).ok()?;
    let at = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(AT_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0);
    Some((batch, at))
}

/// Reads the learned stream from `start` on, for ever (again after an error, from where it
/// stopped).
async fn follow(stream: jetstream::stream::Stream, start: u64, tx: mpsc::UnboundedSender<Item>) {
    use jetstream::consumer::{pull, DeliverPolicy};
    let mut next = start;
    loop {
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: next,
                },
                ..Default::default()
            })
            .await;
        let mut msgs = match consumer {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("Following the learned stream: {e}; trying again.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!("Following the learned stream: {e}; trying again.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(m) = msgs.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("Following the learned stream: {e}; again from {next}.");
                    break;
                }
            };
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            next = seq + 1;
            match parse(&m.message) {
                Some((batch, at)) => {
                    if tx.send((seq, Arc::new(batch), at)).is_err() {
                        return;
                    }
                }
                None => tracing::warn!(seq, "A learned batch that does not parse; skipped."),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The learned batches with sequences `from..=to`, read from the stream (a partition restored
/// from a snapshot older than what this worker holds).
pub async fn read(
    stream: &jetstream::stream::Stream,
    from: u64,
    to: u64,
) -> anyhow::Result<Vec<Item>> {
    let msgs = super::cluster::read_range(stream, String::new(), from, to)
        .await
        .map_err(|e| anyhow::anyhow!("learned catch-up: {e:#}"))?;
    if msgs.first().is_some_and(|(seq, _)| *seq > from) {
        tracing::warn!(
            from,
            first = msgs[0].0,
            "Learned batches aged out of the stream before this partition folded them: its model misses what other partitions learned in between."
        );
    }
    Ok(msgs
        .iter()
        .filter_map(|(seq, m)| parse(m).map(|(b, at)| (*seq, Arc::new(b), at)))
        .collect())
}

/// Publishes a partition's batches; returns the ids confirmed stored.
pub async fn publish(js: &jetstream::Context, prefix: &str, batches: &[Batch]) -> Vec<String> {
    let mut acks = Vec::new();
    for b in batches {
        let body = match serde_json::to_vec(b) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!("Serialising a learned batch failed: {e}");
                continue;
            }
        };
        let id = b.id();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert(AT_HEADER, super::cluster::unix_ms().to_string().as_str());
        match js
            .publish_with_headers(format!("{prefix}.{}", b.part), headers, body)
            .await
        {
            Ok(f) => acks.push((id, f)),
            Err(e) => tracing::warn!(
                "Publishing a learned batch failed (kept for the next snapshot): {e}"
            ),
        }
    }
    let mut ok = Vec::new();
    for (id, f) in acks {
        match f.await {
            Ok(_) => ok.push(id),
            Err(e) => tracing::warn!(
                "A learned batch was not confirmed (kept for the next snapshot): {e}"
            ),
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::markov::Delta;

    fn delta(n: usize, name: &str) -> FlowDelta {
        FlowDelta {
            index: 0,
            name: name.into(),
            states: 7,
            now_ms: 5,
            deltas: (0..n)
                .map(|i| Delta::Surprise {
                    step: 1,
                    window: i as u32,
                })
                .collect(),
        }
    }

    #[test]
    fn batches_are_cut_at_chunk_steps_keeping_every_step_in_order() {
        let learned = ShardDelta {
            flows: vec![delta(CHUNK + 10, "a"), delta(CHUNK * 2, "b"), delta(0, "c")],
        };
        let out = batches(3, 99, learned, CHUNK);
        assert_eq!(out.len(), 4);
        let sizes: Vec<usize> = out
            .iter()
            .map(|b| b.flows.iter().map(|f| f.deltas.len()).sum())
            .collect();
        assert_eq!(sizes, vec![CHUNK, CHUNK, CHUNK, 10]);
        assert_eq!(
            out.iter().map(|b| b.id()).collect::<Vec<_>>(),
            vec!["3:99:0", "3:99:1", "3:99:2", "3:99:3"]
        );
        let a: Vec<u32> = out
            .iter()
            .flat_map(|b| &b.flows)
            .filter(|f| f.name == "a")
            .flat_map(|f| &f.deltas)
            .map(|d| match d {
                Delta::Surprise { window, .. } => *window,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(a, (0..CHUNK as u32 + 10).collect::<Vec<_>>());
        assert!(batches(3, 99, ShardDelta::default(), CHUNK).is_empty());
        assert_eq!(chunk_for(1 << 20), CHUNK);
        assert_eq!(chunk_for(64 * 1024), 65);
    }

    #[test]
    fn the_cache_keeps_what_some_partition_has_not_folded_up_to_its_bound() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let batch = Arc::new(Batch {
            part: 0,
            to: 1,
            chunk: 0,
            flows: Vec::new(),
        });
        let mut cache = Cache {
            first: 1,
            items: (1..=MAX_CACHED as u64 + 50)
                .map(|s| (s, batch.clone(), 0))
                .collect(),
            rx,
        };
        cache.trim(10);
        assert_eq!(cache.items.len(), MAX_CACHED);
        assert_eq!(cache.first, 51);
        assert_eq!(cache.items.front().map(|i| i.0), Some(51));
        assert_eq!(cache.newest(), MAX_CACHED as u64 + 50);
        cache.trim(cache.newest());
        assert!(cache.items.is_empty());
        assert_eq!(cache.first, MAX_CACHED as u64 + 51);
    }

    #[test]
    fn a_batch_is_folded_once_and_never_into_its_own_partition() {
        let mut engine = Engine::new(Vec::new());
        let mut shared = Shared::default();
        let b = |part, to, chunk| Batch {
            part,
            to,
            chunk,
            flows: Vec::new(),
        };
        assert!(fold(&mut engine, &mut shared, 0, 1, &b(1, 10, 0)));
        // Its own: skipped, the position moves on.
        assert!(!fold(&mut engine, &mut shared, 0, 2, &b(0, 10, 0)));
        assert_eq!(shared.folded, 2);
        // Published again (after a failover, past the duplicate window): skipped.
        assert!(!fold(&mut engine, &mut shared, 0, 3, &b(1, 10, 0)));
        assert!(fold(&mut engine, &mut shared, 0, 4, &b(1, 10, 1)));
        assert!(fold(&mut engine, &mut shared, 0, 5, &b(1, 20, 0)));
        // Read twice (an older read of the stream): skipped by its sequence.
        assert!(!fold(&mut engine, &mut shared, 0, 5, &b(2, 30, 0)));
        assert!(fold(&mut engine, &mut shared, 0, 6, &b(2, 30, 0)));
        assert_eq!(shared.last.get(&1), Some(&(20, 0)));
    }
}
