//! Questions the dashboard asks of the engine: the objects at risk (a partial select over the
//! objects in flight, in bounded chunks), one object's row, its timeline (from the journal) and
//! why it is not alerting.
//!
//! The rule it keeps: no question holds the engine for longer than a batch. A scan looks at
//! most `SCAN_CHUNK` objects per call and keeps only the best `limit` of them in a heap; the
//! caller (the HTTP task) hands the `Scan` back until it is done, and the engine handles its
//! batches between the calls.
//!
//! Objects come and go between the calls, and a removal moves the last object into the hole
//! it leaves: a scan walking `objects` front to back would miss an object moved from behind
//! its place to in front of it. So each scan registers its place with the flow it is in
//! (`FlowRuntime::scans`), and `FlowRuntime::remove_object` keeps every object on its side of
//! every registered place: an object in flight for the whole scan is counted and considered
//! exactly once. Objects that arrive during the scan are seen (they join at the back); one
//! that ends and comes back under the same key is kept once in the list, as last seen. A
//! reload rebuilds a flow's objects in a new order: a scan finds its place gone and starts
//! that flow again. Objects that change state during the scan are seen in the state they had
//! when looked at: a dashboard's view, not a snapshot.

use super::key::ObjectKey;
use super::{format_rfc3339, journal, round6, Engine};
use crate::model::{Kind, StateId};
use serde::Serialize;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Objects looked at per call: about a millisecond.
pub const SCAN_CHUNK: usize = 65_536;

/// How `GET /api/objects` orders the objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortBy {
    /// Alerting first, then by the risk of their state (FIG. 11), then longest in state.
    #[default]
    Risk,
    /// Longest in their state first.
    TimeInState,
}

impl SortBy {
    pub fn parse(s: &str) -> Option<SortBy> {
        match s {
            "risk" => Some(SortBy::Risk),
            "time" | "time_in_state" => Some(SortBy::TimeInState),
            _ => None,
        }
    }
}

/// A filter and an order over the objects in flight.
#[derive(Debug, Clone, Default)]
pub struct ObjectQuery {
    /// Only this flow.
    pub flow: Option<String>,
    /// Only objects in this state.
    pub state: Option<String>,
    /// Only objects whose state's risk (the worst artifact's, FIG. 11) is at least this.
    pub min_risk: f64,
    /// Only alerting objects.
    pub alerting: bool,
    pub sort: SortBy,
    pub limit: usize,
}

#[derive(Debug)]
struct Candidate {
    rank: (f64, f64),
    flow: u32,
    key: ObjectKey,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_rank(self.rank, other.rank)
            // Ties: the smaller key ranks higher, so that answers do not depend on slot order.
            .then_with(|| other.flow.cmp(&self.flow))
            .then_with(|| other.key.cmp(&self.key))
    }
}

fn cmp_rank(a: (f64, f64), b: (f64, f64)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1))
}

/// A top-N scan under way over the flows it started with.
pub struct Scan {
    pub query: ObjectQuery,
    /// The flows to scan, by name (a reload between calls may reorder or remove them).
    pub flows: Vec<String>,
    pos: usize,
    /// How many objects of flow `pos` it has looked at, registered with that flow so that
    /// removals keep objects on their side of it (none before the flow's first chunk).
    place: Option<Arc<AtomicUsize>>,
    heap: BinaryHeap<Reverse<Candidate>>,
    /// The keys of flow `pos` in `heap`: an object is kept once.
    kept_here: HashSet<ObjectKey>,
    /// What flow `pos` has added to `matching` and `scanned` so far (taken back if the flow
    /// has to be scanned again).
    matching_here: u64,
    scanned_here: u64,
    /// Per flow scanned (as `flows`): objects per state, in the flow's state order.
    pub counts: Vec<Vec<u64>>,
    /// Objects that passed the filter.
    pub matching: u64,
    pub scanned: u64,
    /// Calls it took.
    pub calls: u32,
    started: bool,
}

impl Scan {
    /// A scan of the flows the query names (all, or one; none when the name is unknown),
    /// as the engine has them at the first call.
    pub fn new(query: ObjectQuery) -> Scan {
        Scan {
            counts: Vec::new(),
            flows: Vec::new(),
            query,
            pos: 0,
            place: None,
            heap: BinaryHeap::new(),
            kept_here: HashSet::new(),
            matching_here: 0,
            scanned_here: 0,
            matching: 0,
            scanned: 0,
            calls: 0,
            started: false,
        }
    }

    pub fn done(&self) -> bool {
        self.started && self.pos >= self.flows.len()
    }

    /// Moves on to the next flow.
    fn next_flow(&mut self) {
        self.pos += 1;
        self.place = None;
        self.kept_here.clear();
        self.matching_here = 0;
        self.scanned_here = 0;
    }

    /// Forgets what flow `pos` gave, to scan it again from the start.
    fn restart_flow(&mut self) {
        let pos = self.pos as u32;
        self.heap.retain(|Reverse(c)| c.flow != pos);
        self.kept_here.clear();
        if let Some(c) = self.counts.get_mut(self.pos) {
            c.iter_mut().for_each(|x| *x = 0);
        }
        self.matching -= self.matching_here;
        self.scanned -= self.scanned_here;
        self.matching_here = 0;
        self.scanned_here = 0;
        self.place = None;
    }

    /// The objects kept, best first: (flow, key).
    pub fn picks(&self) -> Vec<(String, ObjectKey)> {
        let mut v: Vec<&Candidate> = self.heap.iter().map(|Reverse(c)| c).collect();
        v.sort_by(|a, b| b.cmp(a));
        v.into_iter()
            .map(|c| (self.flows[c.flow as usize].clone(), c.key.clone()))
            .collect()
    }
}

/// One object in the list of objects at risk.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectRow {
    pub flow: String,
    pub object: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_label: Option<String>,
    pub time_in_state_ms: i64,
    /// The worst artifact's risk from the object's state (FIG. 11): what the list is sorted
    /// and filtered on.
    pub state_risk: f64,
    /// The object's own risk per artifact (its past and time in state).
    pub risk: BTreeMap<String, f64>,
    /// The artifact it is most at risk of, and that risk.
    pub top_artifact: Option<String>,
    pub top_risk: f64,
    pub expected_remaining_ms: f64,
    pub median_remaining_ms: f64,
    pub alerting: bool,
    /// When the current alert fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerting_since: Option<String>,
    pub anomalous: bool,
}

/// One step of an object's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineStep {
    pub at: String,
    /// `entered`, `moved`, `alert`, `resolved` or `expired`.
    pub step: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub state: String,
    /// The probability the model gave this step before learning it.
    pub probability: Option<f64>,
    /// The worst artifact's risk right after it.
    pub risk: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub steps: Vec<TimelineStep>,
    /// Earlier steps are missing: overwritten in the journal (it keeps the last steps of all
    /// objects together), or from before it began (a restart).
    pub cut: bool,
}

/// Why an object is not alerting.
#[derive(Debug, Clone, Serialize)]
pub struct WhyNot {
    pub reason: String,
    pub artifacts: Vec<ArtifactLevel>,
    /// The time in state at which its risk would cross a threshold, if it stays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crosses_at_time_in_state_ms: Option<i64>,
    /// How long from now that is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crosses_in_ms: Option<i64>,
    /// The state's timeout: after how long in it, to which artifact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_artifact: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactLevel {
    pub artifact: String,
    pub risk: f64,
    pub threshold: f64,
}

impl Engine {
    /// The worst artifact risk from each state of flow `fi` (FIG. 11, first order, at entry).
    fn state_risks(&mut self, fi: usize) -> Vec<f64> {
        let rt = &mut self.flows[fi];
        // The cached solution, as the engine last used it: solving here would move the solve
        // schedule for a question (only a flow never solved yet is solved).
        if rt.model.cached().is_none() {
            rt.model.solution();
        }
        let Some(sol) = rt.model.cached() else {
            return vec![0.0; rt.flow.states.len()];
        };
        let flow = &rt.flow;
        (0..flow.states.len())
            .map(|s| {
                sol.finals
                    .iter()
                    .zip(sol.absorb_row(s as StateId))
                    .filter(|(f, _)| flow.state(**f).kind == Kind::Artifact)
                    .map(|(_, r)| *r)
                    .fold(0.0, f64::max)
            })
            .collect()
    }

    /// Looks at up to `budget` more objects for `scan`.
    pub fn scan_objects(&mut self, scan: &mut Scan, mut budget: usize) {
        scan.calls += 1;
        if !scan.started {
            scan.started = true;
            scan.flows = self
                .flows
                .iter()
                .map(|rt| rt.flow.name.clone())
                .filter(|n| scan.query.flow.as_ref().is_none_or(|f| f == n))
                .collect();
            scan.counts = vec![Vec::new(); scan.flows.len()];
        }
        let now = self.clock_ms;
        while budget > 0 && !scan.done() {
            let Some(fi) = self.flow_index(&scan.flows[scan.pos]) else {
                scan.next_flow();
                continue;
            };
            // The scan's place in this flow, registered with it. A place the flow does not
            // know is from before a reload rebuilt the flow's objects: start it again.
            let scans = &mut self.flows[fi].scans;
            let place = match &scan.place {
                Some(p)
                    if scans
                        .iter()
                        .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(p))) =>
                {
                    p.clone()
                }
                stale => {
                    if stale.is_some() {
                        scan.restart_flow();
                    }
                    scans.retain(|w| w.strong_count() > 0);
                    let p = Arc::new(AtomicUsize::new(0));
                    scans.push(Arc::downgrade(&p));
                    scan.place = Some(p.clone());
                    p
                }
            };
            let risks = self.state_risks(fi);
            let rt = &self.flows[fi];
            let n = rt.flow.states.len();
            let counts = &mut scan.counts[scan.pos];
            counts.resize(n, 0);
            let wanted_state = match &scan.query.state {
                None => None,
                Some(name) => match rt.flow.state_id(name) {
                    Some(id) => Some(id),
                    // No such state in this flow: nothing matches, but the counts still do.
                    None => Some(StateId::MAX),
                },
            };
            let start = place.load(Relaxed).min(rt.objects.len());
            let end = start.saturating_add(budget).min(rt.objects.len());
            let slice = rt.objects.as_slice();
            for (key, o) in slice[start..end].iter() {
                let s = o.state as usize;
                if let Some(c) = counts.get_mut(s) {
                    *c += 1;
                }
                if wanted_state.is_some_and(|w| w != o.state) {
                    continue;
                }
                let state_risk = risks.get(s).copied().unwrap_or(0.0);
                if state_risk < scan.query.min_risk || (scan.query.alerting && !o.alerting) {
                    continue;
                }
                scan.matching += 1;
                scan.matching_here += 1;
                if scan.query.limit == 0 {
                    continue;
                }
                let in_state = (now - o.entered_ms) as f64;
                let rank = match scan.query.sort {
                    SortBy::Risk => (f64::from(u8::from(o.alerting)) + state_risk, in_state),
                    SortBy::TimeInState => (in_state, state_risk),
                };
                let flow = scan.pos as u32;
                // Compared before the key is copied: most objects do not make the list.
                if scan.heap.len() >= scan.query.limit {
                    let Some(Reverse(worst)) = scan.heap.peek() else {
                        continue;
                    };
                    // Better than the worst kept, ties broken as `Candidate` orders them.
                    let better = match cmp_rank(rank, worst.rank) {
                        Ordering::Greater => true,
                        Ordering::Less => false,
                        Ordering::Equal => (flow, key) < (worst.flow, &worst.key),
                    };
                    if !better {
                        continue;
                    }
                    if let Some(Reverse(out)) = scan.heap.pop() {
                        if out.flow == flow {
                            scan.kept_here.remove(&out.key);
                        }
                    }
                }
                // The same key kept already: an object that ended during the scan and came
                // back under its key. Kept once, as last seen (rare: the list is small).
                if !scan.kept_here.insert(key.clone()) {
                    scan.heap
                        .retain(|Reverse(c)| !(c.flow == flow && c.key == *key));
                }
                scan.heap.push(Reverse(Candidate {
                    rank,
                    flow,
                    key: key.clone(),
                }));
            }
            let seen = end - start;
            scan.scanned += seen as u64;
            scan.scanned_here += seen as u64;
            budget -= seen.min(budget);
            place.store(end, Relaxed);
            if end >= rt.objects.len() {
                scan.next_flow();
            }
        }
    }

    /// The row of one object of the flow named `flow`, if it is still in flight.
    pub fn object_row(&mut self, flow: &str, key: &ObjectKey) -> Option<ObjectRow> {
        let fi = self.flow_index(flow)?;
        let p = self.predict_object(fi, key)?;
        let state_risk = {
            let obj = self.flows[fi].objects.get(key)?;
            let s = obj.state as usize;
            self.state_risks(fi).get(s).copied().unwrap_or(0.0)
        };
        let rt = &self.flows[fi];
        let obj = rt.objects.get(key)?;
        let top = p
            .risk
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)));
        Some(ObjectRow {
            flow: p.flow.clone(),
            object: p.object.clone(),
            state_label: rt.flow.state(obj.state).label.clone(),
            state: p.state.clone(),
            time_in_state_ms: p.time_in_state_ms,
            state_risk: round6(state_risk),
            top_artifact: top.map(|(a, _)| a.clone()),
            top_risk: top.map_or(0.0, |(_, r)| *r),
            risk: p.risk.clone(),
            expected_remaining_ms: p.expected_remaining_ms,
            median_remaining_ms: p.median_remaining_ms,
            alerting: obj.alerting,
            alerting_since: obj
                .alerting
                .then(|| rt.alert_log.get(key).map(|l| format_rfc3339(l.since_ms)))
                .flatten(),
            anomalous: obj.episode > 0,
        })
    }

    /// The steps the journal still holds for an object of flow `fi`.
    pub fn timeline(&self, fi: usize, key: &ObjectKey) -> Timeline {
        let Some(j) = &self.journal else {
            return Timeline {
                steps: Vec::new(),
                cut: false,
            };
        };
        let flow = &self.flows[fi].flow;
        let name =
            |s: StateId| (usize::from(s) < flow.states.len()).then(|| flow.name_of(s).to_string());
        let (entries, cut) = j.timeline(&flow.name, key);
        let steps = entries
            .iter()
            .filter_map(|e| {
                Some(TimelineStep {
                    at: format_rfc3339(e.at_ms),
                    step: e.step.as_str(),
                    from: match e.step {
                        journal::Step::Moved => name(e.from),
                        _ => None,
                    },
                    // A state the flow no longer has (a reload since): the step is left out.
                    state: name(e.to)?,
                    probability: finite(e.probability),
                    risk: finite(e.risk),
                })
            })
            .collect();
        Timeline { steps, cut }
    }

    /// Why an object of flow `fi` is not alerting (None when it is, or is not in flight):
    /// each artifact's risk beside its threshold, and when (in time in state) the risk would
    /// cross one if the object stays where it is.
    pub fn why_not_alerting(&mut self, fi: usize, key: &ObjectKey) -> Option<WhyNot> {
        let obj = *self.flows[fi].objects.get(key)?;
        if obj.alerting {
            return None;
        }
        let p = self.predict_object(fi, key)?;
        let elapsed = p.time_in_state_ms.max(0) as f64;
        let time_matters = self.flows[fi].model.time_matters(obj.state);
        let after = self.alert_after(fi, &obj, elapsed);
        let flow = &self.flows[fi].flow;
        let artifacts: Vec<ArtifactLevel> = p
            .risk
            .iter()
            .filter_map(|(a, r)| {
                let id = flow.state_id(a)?;
                Some(ArtifactLevel {
                    artifact: a.clone(),
                    risk: *r,
                    threshold: flow.alerts[id as usize].threshold,
                })
            })
            .collect();
        let timeout = flow.timeouts[obj.state as usize];
        let crosses = after.map(|a| a.ceil() as i64);
        let reason = match crosses {
            Some(t) => format!(
                "every artifact's risk is below its threshold now; if it stays in {} the risk \
                 crosses one after {} ms in the state",
                p.state, t
            ),
            None if artifacts.is_empty() => "the flow has no artifact to alert on".to_string(),
            None if !time_matters => format!(
                "every artifact's risk is below its threshold, and it does not change with time \
                 in {} (no dwell times learned there yet)",
                p.state
            ),
            None => format!(
                "every artifact's risk is below its threshold and stays below it for as long as \
                 objects have been seen to stay in {}",
                p.state
            ),
        };
        Some(WhyNot {
            reason,
            artifacts,
            crosses_at_time_in_state_ms: crosses,
            crosses_in_ms: crosses.map(|t| (t - p.time_in_state_ms).max(0)),
            timeout_ms: timeout.map(|(ms, _)| ms),
            timeout_artifact: timeout.map(|(_, a)| flow.name_of(a).to_string()),
        })
    }
}

fn finite(x: f32) -> Option<f64> {
    x.is_finite().then(|| round6(f64::from(x)))
}
