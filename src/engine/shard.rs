//! Shards in one process (issue 16): N engines, each owning the objects whose key hashes to it,
//! with one model kept in N copies that exchange what they learned.
//!
//! Every shard is given every message (`Engine::observe`): decoding is what costs, and it is
//! done once per message by whichever thread the caller picks, so a shard only pays for
//! matching the rules and hashing the key of a message it does not own. Seeing every message
//! keeps each shard's clock, and its models' clocks, exactly where one engine's would be: a
//! timer fires at the same point of the stream, a message is late or not alike, and decay
//! weighs an observation the same in every copy.
//!
//! Learned counts are additive: each shard learns its own objects' steps at once and keeps
//! them in its models' outboxes (`markov::Delta`); at an exchange (`take_deltas`, then
//! `apply_deltas` on every other shard, in shard order) the others add them at the event time
//! they were learned, so after the last exchange every copy holds the counts one engine would
//! have (the undecayed counts exactly; the decayed ones up to the rounding of the order they
//! were added in). A step is scored (the self-tuning model's losses, the surprise calibration)
//! once, by the shard that learned it, against its copy as it was: predictions between two
//! exchanges miss at most what the other shards learned since the last one.

use super::key::ObjectKey;
use super::markov::Delta;
use super::{Engine, Stats};

/// Which objects an engine owns: those whose key hashes to `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The shard of `count` that owns an object.
pub fn shard_of(key: &ObjectKey, count: u32) -> u32 {
    (key.stable_hash() % u64::from(count.max(1))) as u32
}

/// What one shard learned since its last exchange, per flow.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ShardDelta {
    pub flows: Vec<FlowDelta>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FlowDelta {
    /// The flow's index and name (the index is checked against the name).
    pub index: usize,
    pub name: String,
    /// A hash of the flow's state names in order: deltas name states by index, so they are
    /// added only to a flow with the same states (a reload that reached the shards at
    /// different moments is skipped, not misread).
    pub states: u64,
    /// The model's clock: timers move it in the shard that owns the object.
    pub now_ms: i64,
    pub deltas: Vec<Delta>,
}

impl ShardDelta {
    /// Learned steps and surprises carried.
    pub fn len(&self) -> usize {
        self.flows.iter().map(|f| f.deltas.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Engine {
    /// Makes this engine shard `index` of `count`: it applies only the objects it owns, counts
    /// only the messages it owns, and keeps what it learns for `take_deltas`.
    pub fn set_shard(&mut self, index: u32, count: u32) {
        let count = count.max(1);
        self.shard = Some(Shard {
            index: index.min(count - 1),
            count,
        });
        for rt in &mut self.flows {
            rt.model.outbox.get_or_insert_with(Vec::new);
        }
    }

    /// Keeps what this engine learns for `take_deltas` without making it a shard: a cluster
    /// worker's partition engine, whose steps the other partitions fold in.
    pub fn keep_deltas(&mut self) {
        for rt in &mut self.flows {
            rt.model.outbox.get_or_insert_with(Vec::new);
        }
    }

    pub fn shard(&self) -> Option<Shard> {
        self.shard
    }

    /// What this shard learned since the last call, to be applied by the others.
    pub fn take_deltas(&mut self) -> ShardDelta {
        let mut out = ShardDelta::default();
        for (index, rt) in self.flows.iter_mut().enumerate() {
            let deltas = match rt.model.outbox.as_mut() {
                Some(o) => std::mem::take(o),
                None if self.shard.is_some() => {
                    // A flow loaded after `set_shard` (a reload): it keeps an outbox from now.
                    rt.model.outbox = Some(Vec::new());
                    Vec::new()
                }
                None => continue,
            };
            out.flows.push(FlowDelta {
                index,
                name: rt.flow.name.clone(),
                states: states_hash(&rt.flow),
                now_ms: rt.model.now_ms,
                deltas,
            });
        }
        out
    }

    /// Adds what another shard learned. A flow this engine does not have (a reload that
    /// reached the shards at different moments) is skipped.
    pub fn apply_deltas(&mut self, delta: &ShardDelta) {
        self.apply_flow_deltas(&delta.flows);
    }

    /// `apply_deltas` on the flows' deltas alone (a cluster's learned batch).
    pub fn apply_flow_deltas(&mut self, flows: &[FlowDelta]) {
        for fd in flows {
            let fi = match self.flows.get(fd.index) {
                Some(rt) if rt.flow.name == fd.name => fd.index,
                _ => match self.flow_index(&fd.name) {
                    Some(fi) => fi,
                    None => continue,
                },
            };
            let rt = &mut self.flows[fi];
            if states_hash(&rt.flow) != fd.states {
                continue;
            }
            let min_learned = rt.flow.anomaly.min_learned;
            for d in &fd.deltas {
                rt.model.apply_delta(d, min_learned);
            }
            rt.model.set_now(fd.now_ms);
        }
    }
}

/// FNV-1a over the flow's state names, each ended by a zero byte.
fn states_hash(flow: &crate::model::CompiledFlow) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in &flow.states {
        for &b in s.name.as_bytes().iter().chain(&[0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl Stats {
    /// Adds another shard's counters.
    pub fn add(&mut self, o: &Stats) {
        let Stats {
            messages,
            matched,
            unmatched,
            malformed,
            missing_key,
            key_too_long,
            late,
            future,
            after_end,
            multi_flow,
            joined_midway,
            unexpected,
            transitions,
            alerts,
            resolved,
            outcomes,
            timeouts,
            expired,
            anomalies,
            scored_steps,
        } = o;
        self.messages += messages;
        self.matched += matched;
        self.unmatched += unmatched;
        self.malformed += malformed;
        self.missing_key += missing_key;
        self.key_too_long += key_too_long;
        self.late += late;
        self.future += future;
        self.after_end += after_end;
        self.multi_flow += multi_flow;
        self.joined_midway += joined_midway;
        self.unexpected += unexpected;
        self.transitions += transitions;
        self.alerts += alerts;
        self.resolved += resolved;
        self.outcomes += outcomes;
        self.timeouts += timeouts;
        self.expired += expired;
        self.anomalies += anomalies;
        self.scored_steps += scored_steps;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::message::{from_value, Message};

    fn compile(src: &str) -> Vec<crate::model::CompiledFlow> {
        let c = crate::model::compile_files([("t.flow".to_string(), src.as_bytes().to_vec())]);
        assert!(!c.has_errors(), "{}", c.render());
        c.flows
    }

    const FLOW: &str = r#"flow f {
    key id
    initial a
    state b
    terminal c
    artifact failed "Failed"
    on "a" -> a
    on "b" -> b
    on "c" -> c
    on "f" -> failed
    learn { half_life 1h }
}
"#;

    fn messages() -> Vec<Message> {
        let mut out = Vec::new();
        for i in 0..300u64 {
            let t = 1_767_225_600_000 + i as i64 * 1_000;
            let end = if i % 7 == 0 { "f" } else { "c" };
            for (k, ty) in ["a", "b", end].iter().enumerate() {
                let v = serde_json::json!({"event_type": ty, "id": format!("o{i}")});
                let mut m = from_value(v).expect("an object");
                m.time_ms = Some(t + k as i64 * 300_000);
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.time_ms);
        out
    }

    #[test]
    fn shards_exchanging_deltas_learn_what_one_engine_learns() {
        let flows = compile(FLOW);
        let mut one = Engine::new(flows.clone());
        let mut shards: Vec<Engine> = (0..3)
            .map(|i| {
                let mut e = Engine::new(flows.clone());
                e.set_shard(i, 3);
                e
            })
            .collect();
        let mut out = Vec::new();
        for (n, m) in messages().iter().enumerate() {
            one.observe(m, &mut out);
            for e in shards.iter_mut() {
                e.observe(m, &mut out);
            }
            if n % 50 == 49 {
                let deltas: Vec<ShardDelta> = shards.iter_mut().map(|e| e.take_deltas()).collect();
                for (i, e) in shards.iter_mut().enumerate() {
                    for (j, d) in deltas.iter().enumerate() {
                        if i != j {
                            e.apply_deltas(d);
                        }
                    }
                }
            }
        }
        let deltas: Vec<ShardDelta> = shards.iter_mut().map(|e| e.take_deltas()).collect();
        for (i, e) in shards.iter_mut().enumerate() {
            for (j, d) in deltas.iter().enumerate() {
                if i != j {
                    e.apply_deltas(d);
                }
            }
        }
        let want = &one.export_learned()["f"];
        let mut stats = Stats::default();
        for e in &shards {
            stats.add(&e.stats);
            let got = &e.export_learned()["f"];
            assert_eq!((got.epoch_ms, got.now_ms), (want.epoch_ms, want.now_ms));
            let key = |t: &crate::engine::markov::LearnedTransition| (t.from.clone(), t.to.clone());
            let mut a = got.transitions.clone();
            let mut b = want.transitions.clone();
            a.sort_by_key(key);
            b.sort_by_key(key);
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert_eq!((&x.from, &x.to, x.count), (&y.from, &y.to, y.count));
                assert!((x.weight - y.weight).abs() <= 1e-9 * y.weight.abs());
            }
        }
        assert_eq!(stats.messages, one.stats.messages);
        assert_eq!(stats.transitions, one.stats.transitions);
        assert_eq!(stats.outcomes, one.stats.outcomes);
    }

    #[test]
    fn deltas_for_other_states_are_not_added() {
        let mut a = Engine::new(compile(FLOW));
        a.set_shard(0, 2);
        let mut out = Vec::new();
        for m in messages() {
            a.observe(&m, &mut out);
        }
        let d = a.take_deltas();
        assert!(!d.is_empty());
        // The same flow name with other states: the indices would mean other transitions.
        let other = FLOW.replace("state b", "state b, b2");
        let mut b = Engine::new(compile(&other));
        let before = b.export_learned();
        b.apply_deltas(&d);
        assert_eq!(b.export_learned()["f"].transitions, before["f"].transitions);
    }
}
