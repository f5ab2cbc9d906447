//! Everything the engine knows, by name: learned counts, objects in flight, alert times, the
//! clock and the counters. Names rather than indices, so that a snapshot taken under one version
//! of the flow files restores under the next: what still exists carries over, what was removed
//! is dropped and counted. Hot reload uses the same mapping, without going through strings.

use super::key::ObjectKey;
use super::markov::{self, LearnedCounts};
use super::{AlertLog, Engine, FlowRuntime, ObjectState, Stats, TimerKind};
use crate::model::{CompiledFlow, StateId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub version: u32,
    pub clock_ms: i64,
    pub stats: Stats,
    pub flows: BTreeMap<String, FlowSnapshot>,
    /// Opaque to the engine: the service keeps its source position here (the last applied
    /// JetStream sequence), so that it is saved atomically with the state it produced.
    #[serde(default)]
    pub source_position: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowSnapshot {
    pub learned: LearnedCounts,
    pub objects: Vec<ObjectSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectSnapshot {
    pub key: String,
    pub state: String,
    /// Earlier states, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
    pub entered_ms: i64,
    pub last_seen_ms: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub alerting: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_alert_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_since_ms: Option<i64>,
    /// Dwell class of the time spent in the previous state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dwell: Option<u8>,
    /// The same for the state before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_dwell: Option<u8>,
    /// When the object was first seen (its entry into its state when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen_ms: Option<i64>,
}

/// What a restore or reload kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CarryReport {
    pub flows_kept: Vec<String>,
    pub flows_added: Vec<String>,
    pub flows_removed: Vec<String>,
    pub objects_kept: usize,
    /// Objects whose current state no longer exists.
    pub objects_dropped: usize,
    /// Learned transitions whose states no longer exist (or are no longer learned).
    pub transitions_dropped: usize,
}

impl EngineSnapshot {
    /// Checks what the format alone cannot: a version this build understands, and learned
    /// numbers that make a probability (finite, not negative). A snapshot that fails is refused
    /// whole, with the reason, rather than restored into risks that are NaN or nonsense.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != SNAPSHOT_VERSION {
            return Err(format!(
                "snapshot format version {} is not supported (expected {SNAPSHOT_VERSION})",
                self.version
            ));
        }
        for (name, fs) in &self.flows {
            validate_learned(name, &fs.learned)?;
        }
        Ok(())
    }
}

/// Every weight and count in learned counts must be finite and not negative: one negative
/// weight turns a row of the chain into something that is not a distribution.
pub fn validate_learned(flow: &str, l: &LearnedCounts) -> Result<(), String> {
    let bad = |v: f64| !v.is_finite() || v < 0.0;
    let fail = |what: String, v: f64| {
        Err(format!(
            "flow `{flow}`: {what} is {v} (weights and counts must be finite and not negative)"
        ))
    };
    for t in &l.transitions {
        let what = |field: &str| format!("the {field} of transition {} -> {}", t.from, t.to);
        if bad(t.weight) {
            return fail(what("weight"), t.weight);
        }
        if bad(t.count) {
            return fail(what("count"), t.count);
        }
        if let Some(v) = t.dwell.w.iter().chain([&t.dwell.total]).find(|v| bad(**v)) {
            return fail(what("dwell histogram"), *v);
        }
    }
    let rows = l
        .contexts
        .iter()
        .map(|c| (c.states.join(" "), &c.next))
        .chain(l.dwell_contexts.iter().map(|c| (c.state.clone(), &c.next)))
        .chain(
            l.calendar_contexts
                .iter()
                .map(|c| (c.state.clone(), &c.next)),
        );
    for (from, next) in rows {
        if let Some((to, v)) = next.iter().find(|(_, v)| bad(*v)) {
            return fail(format!("a context weight of {from} -> {to}"), *v);
        }
    }
    Ok(())
}

impl Engine {
    pub fn snapshot(&self) -> EngineSnapshot {
        let flows = self
            .flows
            .iter()
            .map(|rt| {
                let f = &rt.flow;
                let names: Vec<String> = f.states.iter().map(|s| s.name.clone()).collect();
                let objects = rt
                    .objects
                    .iter()
                    .map(|(k, o)| {
                        let log = rt.alert_log.get(k);
                        ObjectSnapshot {
                            key: k.to_string(),
                            state: names[o.state as usize].clone(),
                            history: o
                                .history_slice()
                                .iter()
                                .map(|s| names[*s as usize].clone())
                                .collect(),
                            entered_ms: o.entered_ms,
                            last_seen_ms: o.last_seen_ms,
                            alerting: o.alerting,
                            first_alert_ms: log.map(|l| l.first_ms),
                            alert_since_ms: log.map(|l| l.since_ms),
                            last_dwell: (o.last_dwell != markov::NO_DWELL).then_some(o.last_dwell),
                            prev_dwell: (o.prev_dwell != markov::NO_DWELL).then_some(o.prev_dwell),
                            first_seen_ms: Some(o.first_seen_ms),
                        }
                    })
                    .collect();
                (
                    f.name.clone(),
                    FlowSnapshot {
                        learned: rt.model.export(&names),
                        objects,
                    },
                )
            })
            .collect();
        EngineSnapshot {
            version: SNAPSHOT_VERSION,
            clock_ms: self.clock_ms,
            stats: self.stats.clone(),
            flows,
            source_position: None,
        }
    }

    /// Loads a snapshot into a fresh engine (same or newer flow files).
    pub fn restore(&mut self, snap: &EngineSnapshot) -> CarryReport {
        let mut report = CarryReport::default();
        self.clock_ms = self.clock_ms.max(snap.clock_ms);
        self.stats = snap.stats.clone();
        for (name, fs) in &snap.flows {
            let Some(fi) = self.flow_index(name) else {
                report.flows_removed.push(name.clone());
                continue;
            };
            report.flows_kept.push(name.clone());
            let flow = self.flows[fi].flow.clone();
            report.transitions_dropped += self.flows[fi]
                .model
                .import(&fs.learned, |n| flow.state_id(n));
            for o in &fs.objects {
                let Some(state) = flow.state_id(&o.state) else {
                    report.objects_dropped += 1;
                    continue;
                };
                let mut history = [markov::NONE; 3];
                let hist: Vec<StateId> =
                    o.history.iter().filter_map(|h| flow.state_id(h)).collect();
                let start = 3 - hist.len().min(3);
                history[start..].copy_from_slice(&hist[hist.len() - (3 - start)..]);
                let key = ObjectKey::parse(&o.key);
                if let (Some(first_ms), Some(since_ms)) = (o.first_alert_ms, o.alert_since_ms) {
                    self.flows[fi]
                        .alert_log
                        .insert(key.clone(), AlertLog { first_ms, since_ms });
                }
                self.flows[fi].objects.insert(
                    key.clone(),
                    ObjectState {
                        entered_ms: o.entered_ms,
                        last_seen_ms: o.last_seen_ms,
                        generation: 0,
                        state,
                        history,
                        alerting: o.alerting,
                        last_dwell: o.last_dwell.unwrap_or(markov::NO_DWELL),
                        prev_dwell: o.prev_dwell.unwrap_or(markov::NO_DWELL),
                        first_seen_ms: o.first_seen_ms.unwrap_or(o.entered_ms),
                    },
                );
                self.schedule(fi, &key);
                report.objects_kept += 1;
            }
        }
        for rt in &self.flows {
            if !snap.flows.contains_key(&rt.flow.name) {
                report.flows_added.push(rt.flow.name.clone());
            }
        }
        // New runtimes have sweeps due from time zero: look at every flow on the next advance.
        self.next_due_ms = i64::MIN;
        report
    }

    /// Swaps in new flow definitions, carrying over learned counts, objects in flight, alert
    /// times and recently finished objects for every flow and state that still exists (by name).
    pub fn reload(&mut self, flows: Vec<CompiledFlow>) -> CarryReport {
        let mut report = CarryReport::default();
        let mut old: BTreeMap<String, FlowRuntime> = std::mem::take(&mut self.flows)
            .into_iter()
            .map(|rt| (rt.flow.name.clone(), rt))
            .collect();
        self.flows = flows
            .into_iter()
            .map(|f| FlowRuntime::new(Arc::new(f)))
            .collect();
        let background = self.background_fit;
        self.set_feature_background(background);
        self.build_index();
        for fi in 0..self.flows.len() {
            let name = self.flows[fi].flow.name.clone();
            let Some(mut prev) = old.remove(&name) else {
                report.flows_added.push(name);
                continue;
            };
            report.flows_kept.push(name);
            let flow = self.flows[fi].flow.clone();
            // Old state id -> new state id, by name.
            let map: Vec<Option<StateId>> = prev
                .flow
                .states
                .iter()
                .map(|s| flow.state_id(&s.name))
                .collect();
            let names: Vec<String> = prev.flow.states.iter().map(|s| s.name.clone()).collect();
            let learned = prev.model.export(&names);
            report.transitions_dropped +=
                self.flows[fi].model.import(&learned, |n| flow.state_id(n));
            let rt = &mut self.flows[fi];
            let capacity = rt.finished.capacity;
            rt.finished = std::mem::replace(&mut prev.finished, super::Finished::with_capacity(0));
            rt.finished.capacity = capacity;
            for (key, mut o) in prev.objects.drain(..) {
                let Some(state) = map[o.state as usize] else {
                    report.objects_dropped += 1;
                    continue;
                };
                o.state = state;
                for h in o.history.iter_mut() {
                    if *h != markov::NONE {
                        *h = map[*h as usize].unwrap_or(markov::NONE);
                    }
                }
                if let Some(log) = prev.alert_log.remove(&key) {
                    rt.alert_log.insert(key.clone(), log);
                }
                rt.objects.insert(key, o);
                report.objects_kept += 1;
            }
            let keys: Vec<ObjectKey> = self.flows[fi].objects.keys().cloned().collect();
            for k in keys {
                self.schedule(fi, &k);
            }
        }
        report.flows_removed = old.into_keys().collect();
        self.next_due_ms = i64::MIN;
        report
    }

    /// Sets the timers of an object that was restored or carried over: its state's timeout,
    /// and a look at its risk now (the next `advance` evaluates it).
    fn schedule(&mut self, fi: usize, key: &ObjectKey) {
        let rt = &self.flows[fi];
        let Some(o) = rt.objects.get(key).copied() else {
            return;
        };
        if let Some((ms, _)) = rt.flow.timeouts[o.state as usize] {
            self.push_timer(
                fi,
                o.entered_ms + ms,
                TimerKind::Timeout,
                o.generation,
                key.clone(),
            );
        }
        self.push_timer(
            fi,
            self.clock_ms,
            TimerKind::RiskCheck,
            o.generation,
            key.clone(),
        );
    }
}
