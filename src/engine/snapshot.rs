//! Everything the engine knows, by name: learned counts, objects in flight (with the looks at
//! their risk still due, so that a restart is invisible to the alerts), alert times, the
//! clock and the counters. Names rather than indices, so that a snapshot taken under one version
//! of the flow files restores under the next: what still exists carries over, what was removed
//! is dropped and counted. Hot reload uses the same mapping, without going through strings.
//!
//! A flow that a reload (or a restore) does not find is retired, not dropped: its counts and
//! objects are kept by name for a grace period of engine time, so that a file saved in two
//! writes or a rename undone gets them back. When the grace runs out they are dropped, and any
//! alert still firing for them is resolved (`flow_removed`); an object whose state disappears is
//! dropped at once and its alert resolved (`state_removed`), so that no sink keeps it firing.

use super::key::ObjectKey;
use super::markov::{self, LearnedCounts};
use super::output::{Record, Resolved};
use super::time::format_rfc3339;
use super::{AlertLog, Engine, FlowRuntime, ObjectState, Stats, TimerKind};
use crate::model::{CompiledFlow, StateId};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const SNAPSHOT_VERSION: u32 = 1;

/// How long (engine time) a flow missing from the files keeps its counts and objects.
pub const RETIRE_GRACE_MS: i64 = 5 * 60_000;

/// A flow that the last reload or restore did not find, and since when (engine time).
#[derive(Debug, Clone)]
pub(crate) struct Retired {
    snap: FlowSnapshot,
    since_ms: i64,
}

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
    /// Opaque to the engine: which stream `source_position` belongs to (its name and creation
    /// time), so that a stream deleted and created again is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// Opaque to the engine: the AMQP source's window of applied message ids (hashes, oldest
    /// first), saved with the state they went into so that redeliveries after a crash are
    /// skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_seen: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowSnapshot {
    pub learned: LearnedCounts,
    pub objects: Vec<ObjectSnapshot>,
    /// Set for a flow missing from the flow files but still in its grace period: when it was
    /// retired (engine time). Such a flow is restored only if the files define it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_ms: Option<i64>,
    /// A fingerprint of the definition the objects were judged by (`judged_by`). Restored
    /// under the same one, the objects keep the looks at their risk that were due
    /// (`risk_checks`) and get no other; under another one (thresholds changed while the
    /// service was down), or from a snapshot without it (from before the looks were saved),
    /// every object is looked at once at the restored clock, as a reload does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged_by: Option<u64>,
    /// The model's solution, solve schedule and thresholds as they were (`solve_cache`), so
    /// that the restored model predicts with the same numbers as an uninterrupted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solve: Option<super::solve_cache::SolveCache>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectSnapshot {
    pub key: String,
    pub state: String,
    /// Earlier states, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
    pub entered_ms: i64,
    /// When the entering message says it happened, where that differs from `entered_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entered_event_ms: Option<i64>,
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
    /// Quantised surprises of its last steps (`surprise.rs`), most recent last.
    #[serde(default, skip_serializing_if = "is_zero_ring")]
    pub surprise: [u8; 5],
    #[serde(default, skip_serializing_if = "is_zero")]
    pub surprise_peak: u8,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unusual: u8,
    /// An `anomaly` was emitted for it: a restore does not repeat it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anomalous: bool,
    /// Normal steps it has taken since its last unusual one, in an open episode.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub normal_steps: u8,
    /// The states it has been in (the self-tuning model's visited-set context), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub visited: Vec<String>,
    /// When its risk is to be looked at again (engine time): the times at which it was
    /// expected to cross a threshold. A restore sets these and no others, so that it alerts
    /// exactly when an uninterrupted engine would.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub risk_checks: Vec<i64>,
    /// What it will teach if it ends in a success (`learn { from success }`, engine::held).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<super::held::HeldSnapshot>,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

fn is_zero_ring(v: &[u8; 5]) -> bool {
    v.iter().all(|&q| q == 0)
}

/// What a restore or reload kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CarryReport {
    pub flows_kept: Vec<String>,
    pub flows_added: Vec<String>,
    /// Flows missing from the files: retired, kept for the grace period.
    pub flows_removed: Vec<String>,
    /// Flows defined again within their grace period: their counts and objects came back.
    pub flows_returned: Vec<String>,
    /// Retired flows whose grace ran out: dropped for good.
    pub flows_dropped: Vec<String>,
    pub objects_kept: usize,
    /// Objects of the flows just retired (kept, not tracked, until their flow returns).
    pub objects_retired: usize,
    /// Objects gone for good: their state no longer exists, or their flow's grace ran out.
    pub objects_dropped: usize,
    /// Learned transitions whose states no longer exist (or are no longer learned).
    pub transitions_dropped: usize,
    /// Resolutions of the alerts of dropped objects, for the sinks.
    #[serde(skip)]
    pub records: Vec<Record>,
}

/// A flow's learned counts and objects, by name.
fn flow_snapshot(rt: &FlowRuntime) -> FlowSnapshot {
    let names: Vec<String> = rt.flow.states.iter().map(|s| s.name.clone()).collect();
    // The looks still due, of objects that have not moved since they were set.
    let mut checks: std::collections::HashMap<&ObjectKey, Vec<i64>> = Default::default();
    for Reverse((at, _, kind, generation, key)) in &rt.timers {
        if *kind == TimerKind::RiskCheck
            && rt
                .objects
                .get(key)
                .is_some_and(|o| o.generation == *generation)
        {
            checks.entry(key).or_default().push(*at);
        }
    }
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
                entered_event_ms: (o.entered_event_ms != o.entered_ms)
                    .then_some(o.entered_event_ms),
                last_seen_ms: o.last_seen_ms,
                alerting: o.alerting,
                first_alert_ms: log.map(|l| l.first_ms),
                alert_since_ms: log.map(|l| l.since_ms),
                last_dwell: (o.last_dwell != markov::NO_DWELL).then_some(o.last_dwell),
                prev_dwell: (o.prev_dwell != markov::NO_DWELL).then_some(o.prev_dwell),
                first_seen_ms: Some(o.first_seen_ms),
                surprise: o.surprise,
                surprise_peak: o.surprise_peak,
                unusual: o.unusual,
                anomalous: o.episode > 0,
                normal_steps: o.episode.saturating_sub(1),
                visited: markov::visited_names(o.visited, &names),
                risk_checks: checks
                    .remove(k)
                    .map(|mut at| {
                        at.sort_unstable();
                        at.dedup();
                        at
                    })
                    .unwrap_or_default(),
                held: rt
                    .held
                    .get(k)
                    .map(|h| super::held::to_snapshot(&rt.flow, h))
                    .unwrap_or_default(),
            }
        })
        .collect();
    FlowSnapshot {
        learned: rt.model.export(&names),
        objects,
        retired_ms: None,
        judged_by: Some(judged_by(&rt.flow)),
        solve: rt.model.export_solve(&rt.flow),
    }
}

/// FNV-1a (64 bits) of what judging an object's risk depends on in a flow's definition: its
/// states, a priori counts, policy for unlisted transitions, timeouts, learning and alert
/// levels, as JSON (stable across builds, unlike `Debug` or std's hasher). Not its rules or
/// keys: they decide which messages move an object, not how its risk is judged.
fn judged_by(flow: &CompiledFlow) -> u64 {
    let text = serde_json::to_vec(&(
        &flow.states,
        &flow.priors,
        &flow.unlisted,
        &flow.timeouts,
        &flow.learning,
        &flow.alerts,
    ))
    .unwrap_or_default();
    super::solve_cache::fnv1a(&text)
}

/// The resolution of an alert whose object is dropped because its flow or state disappeared.
fn resolution(flow: &str, o: &ObjectSnapshot, now: i64, reason: &str) -> Record {
    Record::Resolved(Resolved {
        at: format_rfc3339(now),
        flow: flow.to_string(),
        object: o.key.clone(),
        state: o.state.clone(),
        reason: reason.into(),
        firing_ms: now - o.alert_since_ms.unwrap_or(now),
    })
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
        )
        .chain(
            l.visited_contexts
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
        let mut flows: BTreeMap<String, FlowSnapshot> = self
            .flows
            .iter()
            .map(|rt| (rt.flow.name.clone(), flow_snapshot(rt)))
            .collect();
        // Retired flows are saved too: a restart within their grace keeps them.
        for (name, r) in &self.retired {
            let mut fs = r.snap.clone();
            fs.retired_ms = Some(r.since_ms);
            flows.insert(name.clone(), fs);
        }
        EngineSnapshot {
            version: SNAPSHOT_VERSION,
            clock_ms: self.clock_ms,
            stats: self.stats.clone(),
            flows,
            source_position: None,
            source_seen: Vec::new(),
            source_id: None,
        }
    }

    /// Loads a snapshot into a fresh engine (same or newer flow files). Flows of the snapshot
    /// that the files no longer define are retired, as by a reload.
    pub fn restore(&mut self, snap: &EngineSnapshot) -> CarryReport {
        let mut report = CarryReport::default();
        self.clock_ms = self.clock_ms.max(snap.clock_ms);
        self.stats = snap.stats.clone();
        for (name, fs) in &snap.flows {
            let Some(fi) = self.flow_index(name) else {
                report.flows_removed.push(name.clone());
                report.objects_retired += fs.objects.len();
                let since_ms = fs.retired_ms.unwrap_or(self.clock_ms);
                let mut snap = fs.clone();
                snap.retired_ms = None;
                self.retired
                    .insert(name.clone(), Retired { snap, since_ms });
                continue;
            };
            report.flows_kept.push(name.clone());
            self.restore_flow(fi, fs, &mut report);
        }
        for rt in &self.flows {
            if !snap.flows.contains_key(&rt.flow.name) {
                report.flows_added.push(rt.flow.name.clone());
            }
        }
        self.expire_retired_into(&mut report);
        // New runtimes have sweeps due from time zero: look at every flow on the next advance.
        self.next_due_ms = i64::MIN;
        report
    }

    /// Puts a flow's counts and objects, by name, into runtime `fi`.
    fn restore_flow(&mut self, fi: usize, fs: &FlowSnapshot, report: &mut CarryReport) {
        let flow = self.flows[fi].flow.clone();
        let same_judge = fs.judged_by == Some(judged_by(&flow));
        report.transitions_dropped += self.flows[fi]
            .model
            .import(&fs.learned, |n| flow.state_id(n));
        if let Some(c) = &fs.solve {
            self.flows[fi].model.import_solve(&flow, c);
        }
        for o in &fs.objects {
            let Some(state) = flow.state_id(&o.state) else {
                report.objects_dropped += 1;
                if o.alerting {
                    self.stats.resolved += 1;
                    let now = self.clock_ms;
                    report
                        .records
                        .push(resolution(&flow.name, o, now, "state_removed"));
                }
                continue;
            };
            let mut history = [markov::NONE; 3];
            let hist: Vec<StateId> = o.history.iter().filter_map(|h| flow.state_id(h)).collect();
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
                    teaches: true,
                    last_dwell: o.last_dwell.unwrap_or(markov::NO_DWELL),
                    prev_dwell: o.prev_dwell.unwrap_or(markov::NO_DWELL),
                    first_seen_ms: o.first_seen_ms.unwrap_or(o.entered_ms),
                    entered_event_ms: o.entered_event_ms.unwrap_or(o.entered_ms),
                    surprise: o.surprise,
                    surprise_peak: o.surprise_peak,
                    unusual: o.unusual,
                    episode: if o.anomalous {
                        o.normal_steps.saturating_add(1)
                    } else {
                        0
                    },
                    visited: markov::visited_from_names(&flow, &o.visited),
                },
            );
            if !o.held.is_empty() {
                let rt = &mut self.flows[fi];
                match super::held::from_snapshot(&flow, &o.held) {
                    // Learned at once by a flow that no longer waits for successes.
                    Some(h) if !flow.learning.from_success => {
                        super::held::release(&mut rt.model, &h, flow.anomaly.min_learned)
                    }
                    Some(h) => {
                        rt.held.insert(key.clone(), h);
                    }
                    None => {
                        if let Some(obj) = rt.objects.get_mut(&key) {
                            obj.teaches = false;
                        }
                    }
                }
            }
            if same_judge {
                self.schedule_restored(fi, &key, &o.risk_checks);
            } else {
                self.schedule(fi, &key);
            }
            report.objects_kept += 1;
        }
    }

    /// Swaps in new flow definitions, carrying over learned counts, objects in flight, alert
    /// times and recently finished objects for every flow and state that still exists (by name).
    /// Flows no longer defined are retired for the grace period; retired flows defined again
    /// come back with what they had.
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
                if let Some(r) = self.retired.remove(&name) {
                    report.flows_returned.push(name);
                    self.restore_flow(fi, &r.snap, &mut report);
                } else {
                    report.flows_added.push(name);
                }
                continue;
            };
            report.flows_kept.push(name.clone());
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
            let now = self.clock_ms;
            let rt = &mut self.flows[fi];
            let capacity = rt.finished.capacity;
            rt.finished = std::mem::replace(&mut prev.finished, super::Finished::with_capacity(0));
            rt.finished.capacity = capacity;
            rt.finished.shrink_to_budget();
            for (key, mut o) in prev.objects.drain(..) {
                let log = prev.alert_log.remove(&key);
                let Some(state) = map[o.state as usize] else {
                    report.objects_dropped += 1;
                    if o.alerting {
                        // The alert was about a state that no longer exists: end it.
                        self.stats.resolved += 1;
                        report.records.push(Record::Resolved(Resolved {
                            at: format_rfc3339(now),
                            flow: name.clone(),
                            object: key.to_string(),
                            state: names[o.state as usize].clone(),
                            reason: "state_removed".into(),
                            firing_ms: now - log.map_or(now, |l| l.since_ms),
                        }));
                    }
                    continue;
                };
                o.state = state;
                o.visited = markov::remap_visited(o.visited, &map, flow.states.len());
                for h in o.history.iter_mut() {
                    if *h != markov::NONE {
                        *h = map[*h as usize].unwrap_or(markov::NONE);
                    }
                }
                if let Some(h) = prev.held.remove(&key) {
                    match super::held::remap(&h, &map) {
                        Some(h) if !flow.learning.from_success => {
                            super::held::release(&mut rt.model, &h, flow.anomaly.min_learned)
                        }
                        Some(h) => {
                            rt.held.insert(key.clone(), h);
                        }
                        None => o.teaches = false,
                    }
                }
                if let Some(log) = log {
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
        for (name, rt) in old {
            report.objects_retired += rt.objects.len();
            report.flows_removed.push(name.clone());
            let since_ms = self.clock_ms;
            self.retired.insert(
                name,
                Retired {
                    snap: flow_snapshot(&rt),
                    since_ms,
                },
            );
        }
        self.expire_retired_into(&mut report);
        self.next_due_ms = i64::MIN;
        report
    }

    /// Drops the retired flows whose grace has run out (engine time), resolving their alerts.
    /// The service calls this as its clock moves; reload and restore call it too.
    pub fn expire_retired(&mut self) -> CarryReport {
        let mut report = CarryReport::default();
        self.expire_retired_into(&mut report);
        report
    }

    fn expire_retired_into(&mut self, report: &mut CarryReport) {
        let now = self.clock_ms;
        let grace = self.retire_grace_ms;
        let due: Vec<String> = self
            .retired
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.since_ms) >= grace)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some(r) = self.retired.remove(&name) else {
                continue;
            };
            report.objects_dropped += r.snap.objects.len();
            for o in r.snap.objects.iter().filter(|o| o.alerting) {
                self.stats.resolved += 1;
                report
                    .records
                    .push(resolution(&name, o, now, "flow_removed"));
            }
            report.flows_dropped.push(name);
        }
    }

    /// Names of the retired flows (missing from the files, within their grace).
    pub fn retired_flows(&self) -> Vec<String> {
        self.retired.keys().cloned().collect()
    }

    /// Sets the timers of an object carried over by a reload (or whose clock was pulled back,
    /// or restored under another definition than it was judged by): its state's timeout, and
    /// a look at its risk now (the next `advance` evaluates it), since its thresholds (or its
    /// times) may have changed.
    pub(super) fn schedule(&mut self, fi: usize, key: &ObjectKey) {
        let Some(generation) = self.schedule_timeout(fi, key) else {
            return;
        };
        self.push_timer(
            fi,
            self.clock_ms,
            TimerKind::RiskCheck,
            generation,
            key.clone(),
        );
    }

    /// Sets the timers of an object restored from a snapshot: its state's timeout and the
    /// looks at its risk that were due (`risk_checks`), no more. A restart must be invisible:
    /// a look now, with what the model learned since the object was judged, fired alerts that
    /// no uninterrupted run fires (the AMQP chaos test's alert difference: objects that entered
    /// a state before anything was known of its exits alerted only after a restart).
    fn schedule_restored(&mut self, fi: usize, key: &ObjectKey, risk_checks: &[i64]) {
        let Some(generation) = self.schedule_timeout(fi, key) else {
            return;
        };
        for &at in risk_checks {
            self.push_timer(fi, at, TimerKind::RiskCheck, generation, key.clone());
        }
    }

    /// Sets the timeout of an object's state, if it has one; its generation, if it exists.
    fn schedule_timeout(&mut self, fi: usize, key: &ObjectKey) -> Option<u32> {
        let rt = &self.flows[fi];
        let o = rt.objects.get(key).copied()?;
        if let Some((ms, _)) = rt.flow.timeouts[o.state as usize] {
            self.push_timer(
                fi,
                o.entered_ms + ms,
                TimerKind::Timeout,
                o.generation,
                key.clone(),
            );
        }
        Some(o.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::super::output::Record;
    use super::super::{message, Engine};

    fn flows(names: &[&str]) -> Vec<crate::model::CompiledFlow> {
        let src: String = names
            .iter()
            .map(|n| {
                format!(
                    "flow {n} {{ key payload.id initial s terminal ok artifact boom \
                     on \"{n}.s\" -> s on \"{n}.ok\" -> ok \
                     transitions {{ s -> ok 1 s -> boom 9 }} alert {{ threshold 0.5 }} }}\n"
                )
            })
            .collect();
        let c = crate::model::compile_files([("t.flow".to_string(), src.into_bytes())]);
        assert!(!c.has_errors(), "{}", c.render());
        c.flows
    }

    fn send(e: &mut Engine, event: &str, id: &str, t_ms: i64) -> Vec<Record> {
        let v = serde_json::json!({"event_type": event, "timestamp": t_ms as f64 / 1000.0,
            "payload": {"id": id}});
        let mut out = Vec::new();
        e.observe(&message::from_value(v).unwrap(), &mut out);
        out
    }

    fn observed(e: &Engine, flow: &str) -> f64 {
        e.flows[e.flow_index(flow).unwrap()].model.total_observed()
    }

    #[test]
    fn a_missing_flow_comes_back_within_its_grace_and_is_dropped_with_its_alerts_after() {
        let mut e = Engine::new(flows(&["a", "b"]));
        e.retire_grace_ms = 60_000;
        let t0 = 1_700_000_000_000;
        for i in 0..5 {
            send(&mut e, "b.s", &format!("k{i}"), t0 + i);
            send(&mut e, "b.ok", &format!("k{i}"), t0 + 10 + i);
        }
        let fired = send(&mut e, "b.s", "open", t0 + 100);
        assert!(fired.iter().any(|r| matches!(r, Record::Alert(_))));
        let learned = observed(&e, "b");
        assert!(learned > 4.9, "{learned}");

        // Gone for one reload, back in the next: everything returns, nothing is resolved.
        let r = e.reload(flows(&["a"]));
        assert_eq!(
            (r.flows_removed.clone(), r.objects_retired),
            (vec!["b".into()], 1)
        );
        assert_eq!(r.objects_dropped, 0);
        assert!(r.records.is_empty());
        let mut out = Vec::new();
        e.advance(t0 + 59_000, &mut out);
        assert!(
            e.expire_retired().flows_dropped.is_empty(),
            "still in its grace"
        );
        let r = e.reload(flows(&["a", "b"]));
        assert_eq!(
            (r.flows_returned.clone(), r.objects_kept),
            (vec!["b".into()], 1)
        );
        assert_eq!(observed(&e, "b"), learned);
        assert!(e.retired_flows().is_empty());

        // A snapshot holds a retired flow; once its grace is over it is dropped, its alert ended.
        let r = e.reload(flows(&["a"]));
        assert!(r.records.is_empty());
        let snap = e.snapshot();
        assert!(snap.flows["b"].retired_ms.is_some());
        let mut restored = Engine::new(flows(&["a"]));
        restored.retire_grace_ms = 60_000;
        let r = restored.restore(&snap);
        assert_eq!((r.flows_removed, r.objects_retired), (vec!["b".into()], 1));
        for engine in [&mut e, &mut restored] {
            engine.advance(t0 + 59_000 + 60_000, &mut out);
            let gone = engine.expire_retired();
            assert_eq!(
                (gone.flows_dropped, gone.objects_dropped),
                (vec!["b".into()], 1)
            );
            assert!(matches!(&gone.records[..],
                [Record::Resolved(r)] if r.reason == "flow_removed" && r.object == "open" && r.state == "s"));
            assert!(engine.retired_flows().is_empty());
        }
    }
}
