//! The engine: pure and synchronous. Messages in, records out; no IO and no clock of its own
//! (time comes from the messages, or from the caller through `advance`). Replay, tests and the
//! live service drive this same code, so what replay shows is what production does.
//!
//! Per message: find the flows whose rules may match (indexed by `event_type`), take the first
//! matching rule of each, find the object by the flow's key, move it, learn the transition,
//! predict from its new state, and fire or resolve alerts. Timers (timeouts, and the time at
//! which a waiting object's risk will cross its threshold) sit in one heap per flow.

pub mod dwell;
pub mod features;
pub mod held;
pub mod journal;
pub mod key;
pub mod markov;
pub mod message;
pub mod mixture;
pub mod output;
pub mod projection;
pub mod query;
pub mod remaining;
pub mod shard;
pub mod snapshot;
pub mod solve_cache;
pub mod surprise;
pub mod table;
pub mod time;

use crate::model::{CompiledFlow, Kind, StateId};
use foldhash::{HashMap, HashSet};
use indexmap::IndexMap;
use key::ObjectKey;
use markov::{FlowModel, Solution};
use message::Message;
use output::*;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use time::format_rfc3339;

/// Counters of everything the engine saw. Nothing is dropped without being counted here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Messages given to the engine (decoded ones; see `malformed`).
    pub messages: u64,
    /// Messages that moved or refreshed an object in at least one flow.
    pub matched: u64,
    /// Messages no rule of any flow matched.
    pub unmatched: u64,
    /// Lines or payloads that could not be decoded (counted by the caller).
    pub malformed: u64,
    /// Messages a rule matched but whose key fields were missing or not a string or number
    /// (in every flow that matched them).
    pub missing_key: u64,
    /// Messages whose key was longer than `Limits::max_key_bytes` in every flow that matched
    /// them: counted in `malformed` too (this is its reason), not in `messages`.
    #[serde(default)]
    pub key_too_long: u64,
    /// Messages older than one already seen; processed at the current time (their own time
    /// still measures how long the object dwelt).
    pub late: u64,
    /// Messages stamped beyond the horizon (further ahead of the wall clock than the allowed
    /// skew: a wrong clock, a year 9999): processed at the current time, never moving it.
    #[serde(default)]
    pub future: u64,
    /// Messages for objects that had already finished, ignored.
    pub after_end: u64,
    /// Messages matched by more than one flow (each flow processes them).
    pub multi_flow: u64,
    /// Objects first seen in the middle of their flow.
    pub joined_midway: u64,
    /// Transitions the flow does not list, under `unlisted report`.
    pub unexpected: u64,
    pub transitions: u64,
    pub alerts: u64,
    pub resolved: u64,
    pub outcomes: u64,
    pub timeouts: u64,
    pub expired: u64,
    /// `anomaly` records (one per object and episode).
    #[serde(default)]
    pub anomalies: u64,
    /// Steps scored for surprise.
    #[serde(default)]
    pub scored_steps: u64,
}

/// The flows a message matched (index, target state, object key, the key's shard), and
/// whether some matching flow found no key or one over the limit (`Engine::route`).
#[derive(Debug, Default, Clone)]
pub struct Routed {
    pub matches: Vec<(u32, StateId, ObjectKey, u32)>,
    pub keyless: bool,
    pub too_long: bool,
    /// The shards among `matches` (bit i: shard i; shards from 64 on set every bit), and the
    /// flows (bit i: flow i; from 64 on, every bit): a shard that owns none of a message skips
    /// it without reading `matches` or the message again.
    pub shards: u64,
    pub flows: u64,
}

/// Where one object is in one flow. Kept to 64 bytes (48 without the surprise window and the
/// visited set):
/// there may be millions. What only
/// alerting objects need lives in `FlowRuntime::alert_log`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ObjectState {
    pub entered_ms: i64,
    pub last_seen_ms: i64,
    /// Invalidates scheduled timers when the object moves.
    pub generation: u32,
    pub state: StateId,
    /// Earlier states, most recent last, `markov::NONE` where unknown.
    pub history: [StateId; 3],
    /// An alert is firing for (this object, `state`).
    pub alerting: bool,
    /// Its transitions are learned: `Engine::learn` was on when it was first seen. Fixed for
    /// the object's life, so a timer that fires while another object's message is handled
    /// follows the object's own rule, not that message's (evaluation: test objects never
    /// teach, even when their timeout falls due as a training message arrives).
    pub teaches: bool,
    /// `markov::dwell_bucket` of the time spent in the previous state.
    pub last_dwell: u8,
    /// The same for the state before it.
    pub prev_dwell: u8,
    /// When the object was first seen.
    pub first_seen_ms: i64,
    /// The event time of the message that moved the object into `state` (its own timestamp):
    /// dwell is learned from event times, so a message handled late (a recorded stream on the
    /// wall clock, a consumer catching up) teaches the time the process took, not the delay
    /// of the bus. Equal to `entered_ms` unless that message was late.
    pub entered_event_ms: i64,
    /// Quantised surprises of the last steps, most recent last (`surprise.rs`: 1/16 nat each).
    #[serde(default)]
    pub surprise: [u8; 5],
    /// The largest of all its steps.
    #[serde(default)]
    pub surprise_peak: u8,
    /// Steps that crossed an anomaly threshold (saturating).
    #[serde(default)]
    pub unusual: u8,
    /// Its anomaly episode: 0 when none is open; n > 0 while one is (an `anomaly` record was
    /// emitted), the object having taken n - 1 normal steps since its last unusual one. The
    /// episode ends (`anomaly_resolved`, `path_normal`) after `window` normal steps in a row,
    /// the hysteresis that keeps an object going in and out of the unusual from flooding the
    /// sinks; a later unusual step opens another.
    #[serde(default)]
    pub episode: u8,
    /// The states it has been in, its current one too (`markov::visited_bit`).
    #[serde(default)]
    pub visited: u64,
}

/// Alert times of an object that has alerted at least once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct AlertLog {
    /// When the first alert on this object fired, for lead times.
    pub first_ms: i64,
    /// When the current (or last) alert started.
    pub since_ms: i64,
}

impl ObjectState {
    /// Known earlier states, oldest first.
    pub fn history_slice(&self) -> &[StateId] {
        let start = self
            .history
            .iter()
            .position(|&s| s != markov::NONE)
            .unwrap_or(3);
        &self.history[start..]
    }

    pub fn past(&self) -> markov::Past<'_> {
        markov::Past {
            history: self.history_slice(),
            last_dwell: self.last_dwell,
            entered_ms: self.entered_event_ms,
            prev_dwell: self.prev_dwell,
            age_ms: self.entered_ms - self.first_seen_ms,
            visited: self.visited,
        }
    }

    fn push_history(&mut self, s: StateId) {
        self.history.rotate_left(1);
        self.history[2] = s;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    /// The object's time in its state runs out: it reaches the state's timeout artifact.
    Timeout,
    /// The object's risk is expected to cross its threshold by now: look again.
    RiskCheck,
}

type Timer = Reverse<(i64, u64, TimerKind, u32, ObjectKey)>;

/// Limits on what one message or the engine's memories may take, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A key longer than this makes its message malformed (`Stats::key_too_long`): every
    /// object in flight, finished key and timer holds a copy.
    pub max_key_bytes: usize,
    /// The memory of recently finished objects (to recognise late messages about them), all
    /// flows together, shared evenly.
    pub finished_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_key_bytes: 1024,
            finished_bytes: 64 << 20,
        }
    }
}

/// A bounded memory of recently finished objects, to recognise late messages about them;
/// the oldest are forgotten first when their keys take more than `capacity` bytes.
#[derive(Debug)]
struct Finished {
    order: VecDeque<ObjectKey>,
    set: HashSet<ObjectKey>,
    /// Bytes the keys take (`Finished::cost`), and the most they may.
    bytes: usize,
    capacity: usize,
}

impl Finished {
    fn with_capacity(capacity: usize) -> Finished {
        Finished {
            order: VecDeque::new(),
            set: HashSet::default(),
            bytes: 0,
            capacity,
        }
    }

    /// What remembering one key costs: it is held twice (the queue and the set), each copy
    /// with its text, and the set's slot and control byte.
    fn cost(k: &ObjectKey) -> usize {
        let text = match k {
            ObjectKey::Text(t) => t.len(),
            ObjectKey::Uuid(_) => 0,
        };
        2 * (std::mem::size_of::<ObjectKey>() + text) + 8
    }

    fn insert(&mut self, k: ObjectKey) {
        if self.set.insert(k.clone()) {
            self.bytes += Finished::cost(&k);
            self.order.push_back(k);
            self.shrink_to_budget();
        }
    }

    /// Forgets the oldest keys until the rest fit the budget.
    fn shrink_to_budget(&mut self) {
        while self.bytes > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.bytes -= Finished::cost(&old);
            self.set.remove(&old);
        }
        // A burst of long keys must not leave its peak allocated.
        if self.order.capacity() > 64 && self.order.len() < self.order.capacity() / 4 {
            self.order.shrink_to(self.order.len() * 2);
            self.set.shrink_to(self.order.len() * 2);
        }
    }
}

/// Each flow's share of the finished-keys budget.
fn finished_capacity(limits: &Limits, flows: usize) -> usize {
    limits.finished_bytes / flows.max(1)
}

/// The key of a message in one flow, if it has a usable one.
enum KeyOf {
    Key(ObjectKey),
    Missing,
    TooLong,
}

/// One flow at run time: its definition, its learned model, its objects and timers.
pub struct FlowRuntime {
    pub flow: Arc<CompiledFlow>,
    pub model: FlowModel,
    /// Objects in flight. An `IndexMap` keeps entries in one dense vector (grown in place by
    /// the allocator) behind a table of indices: about half the memory of a `HashMap` at a
    /// million objects, and removal stays O(1) by swapping with the last entry (through
    /// `remove_object`, which keeps the scans under way consistent).
    pub objects: IndexMap<ObjectKey, ObjectState, foldhash::fast::RandomState>,
    pub alert_log: HashMap<ObjectKey, AlertLog>,
    /// Messages this flow classified (for the dashboard's messages per second per flow).
    pub matched: u64,
    finished: Finished,
    timers: BinaryHeap<Timer>,
    timer_seq: u64,
    /// Rules to try per exact event type (in file order), and for any other event type.
    rules_by_event: HashMap<Box<str>, Vec<u16>>,
    generic_rules: Vec<u16>,
    next_sweep_ms: i64,
    /// `learn { from success }`: what each object will teach if it ends in a success.
    pub(crate) held: held::HeldMap,
    /// The scans under way over `objects` (`query::Scan`): each holds how many objects at the
    /// front of `objects` it has looked at. A dropped scan is forgotten at the next removal.
    pub(crate) scans: Vec<std::sync::Weak<std::sync::atomic::AtomicUsize>>,
}

impl FlowRuntime {
    pub(crate) fn new(flow: Arc<CompiledFlow>) -> FlowRuntime {
        let mut by_event: HashMap<Box<str>, Vec<u16>> = HashMap::default();
        let mut generic = Vec::new();
        for (i, r) in flow.rules.iter().enumerate() {
            match r.cond.required_event_type() {
                Some(e) => by_event.entry(e.into()).or_default().push(i as u16),
                None => generic.push(i as u16),
            }
        }
        // Each exact list also holds the generic rules, in file order: first match wins.
        for list in by_event.values_mut() {
            list.extend(generic.iter().copied());
            list.sort_unstable();
        }
        FlowRuntime {
            model: FlowModel::new(&flow),
            flow,
            objects: IndexMap::default(),
            alert_log: HashMap::default(),
            matched: 0,
            finished: Finished::with_capacity(Limits::default().finished_bytes),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            rules_by_event: by_event,
            generic_rules: generic,
            next_sweep_ms: 0,
            held: Default::default(),
            scans: Vec::new(),
        }
    }

    /// Learns a step of object `key` now, or holds it until the object ends when the flow
    /// learns from successes only.
    fn teach(
        &mut self,
        key: &ObjectKey,
        past: markov::Past<'_>,
        from: StateId,
        to: StateId,
        dwell_ms: i64,
    ) {
        if self.flow.learning.from_success {
            let at = self.model.now_ms;
            self.hold(
                key,
                held::Held::Step(held::HeldStep::new(past, from, to, dwell_ms, at)),
            );
        } else {
            self.model.observe(past, from, to, dwell_ms);
        }
    }

    /// Keeps a scored step's surprise for the calibration, now or when the object ends.
    fn record_surprise(&mut self, key: &ObjectKey, min_learned: u64, step: u8, window: u32) {
        if self.flow.learning.from_success {
            self.hold(key, held::Held::Surprise { step, window });
        } else {
            self.model.record_surprise(min_learned, step, window);
        }
    }

    /// Adds to what object `key` holds; past `held::MAX_HELD` entries the object stops teaching
    /// and what it held is dropped.
    fn hold(&mut self, key: &ObjectKey, h: held::Held) {
        let Some(obj) = self.objects.get_mut(key) else {
            return;
        };
        if !obj.teaches {
            return;
        }
        let list = self.held.entry(key.clone()).or_default();
        if list.len() >= held::MAX_HELD {
            obj.teaches = false;
            self.held.remove(key);
            return;
        }
        list.push(h);
    }

    /// Ends what object `key` held: learned if it ended in a success, else dropped.
    fn settle(&mut self, key: &ObjectKey, success: bool) {
        if let Some(list) = self.held.remove(key) {
            if success {
                let min_learned = self.flow.anomaly.min_learned;
                held::release(&mut self.model, &list, min_learned);
            }
        }
    }

    /// Removes an object in O(1) plus O(scans under way), keeping every other object on its
    /// side of each scan's place: a plain `swap_remove` would move the last object (not yet
    /// looked at) into a hole among those looked at, and the scan would miss it. Instead the
    /// hole is first moved past each scan's place (swapping it with the last object that scan
    /// has looked at, whose place moves back by one), so the last object lands where no scan
    /// has looked yet, and every object is seen once by every scan.
    pub(crate) fn remove_object(&mut self, key: &ObjectKey) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(mut i) = self.objects.get_index_of(key) else {
            return;
        };
        if !self.scans.is_empty() {
            self.scans.retain(|w| w.strong_count() > 0);
            let mut places: Vec<Arc<std::sync::atomic::AtomicUsize>> = self
                .scans
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .collect();
            places.sort_by_key(|p| p.load(Relaxed));
            let len = self.objects.len();
            for p in &places {
                let looked = p.load(Relaxed).min(len);
                if looked > i {
                    self.objects.swap_indices(i, looked - 1);
                    i = looked - 1;
                    p.store(looked - 1, Relaxed);
                }
            }
        }
        self.objects.swap_remove_index(i);
    }

    fn candidate_rules(&self, event_type: Option<&str>) -> &[u16] {
        event_type
            .and_then(|e| self.rules_by_event.get(e))
            .map(Vec::as_slice)
            .unwrap_or(&self.generic_rules)
    }

    /// The state the first matching rule assigns, if any.
    fn classify(&self, msg: &Message) -> Option<StateId> {
        if let Some(f) = &self.flow.filter {
            if !f.eval(&msg.value) {
                return None;
            }
        }
        self.candidate_rules(msg.event_type())
            .iter()
            .map(|&i| &self.flow.rules[i as usize])
            .find(|r| r.cond.eval(&msg.value))
            .map(|r| r.target)
    }

    fn key_of(&self, msg: &Message, max_bytes: usize) -> KeyOf {
        let Some(v) = self.flow.keys.iter().find_map(|p| {
            p.get(&msg.value)
                .filter(|v| v.is_string() || v.is_number())
                .filter(|v| v.as_str() != Some(""))
        }) else {
            return KeyOf::Missing;
        };
        // Measured before the key is copied: a huge key is refused without allocating it.
        if v.as_str().is_some_and(|s| s.len() > max_bytes) {
            return KeyOf::TooLong;
        }
        match ObjectKey::from_value(v) {
            Some(ObjectKey::Text(t)) if t.len() > max_bytes => KeyOf::TooLong,
            Some(k) => KeyOf::Key(k),
            None => KeyOf::Missing,
        }
    }
}

/// What caused the current step: a message (borrowed, so nothing is copied unless a record is
/// emitted) or the passing of time.
#[derive(Debug, Clone, Copy)]
enum Trigger<'m> {
    Message {
        event_type: Option<&'m str>,
        message_id: Option<&'m str>,
        /// The message's own time, when it has a usable one (not beyond the horizon).
        event_ms: Option<i64>,
    },
    Timer,
}

impl Trigger<'_> {
    fn event_ms(&self) -> Option<i64> {
        match self {
            Trigger::Message { event_ms, .. } => *event_ms,
            Trigger::Timer => None,
        }
    }

    fn cause(self) -> Cause {
        match self {
            Trigger::Message {
                event_type,
                message_id,
                ..
            } => Cause {
                kind: "message".into(),
                event_type: event_type.map(str::to_string),
                message_id: message_id.map(str::to_string),
            },
            Trigger::Timer => Cause {
                kind: "timer".into(),
                event_type: None,
                message_id: None,
            },
        }
    }
}

/// A prediction for one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Event time of the prediction, RFC 3339.
    pub at: String,
    pub flow: String,
    pub object: String,
    pub state: String,
    pub history: Vec<String>,
    pub time_in_state_ms: i64,
    pub next: BTreeMap<String, f64>,
    pub risk: BTreeMap<String, f64>,
    pub expected_remaining_ms: f64,
    /// The median of the remaining time (remaining.rs): the estimate with the least absolute
    /// error, where the expectation has the least squared error.
    #[serde(default)]
    pub median_remaining_ms: f64,
    pub alerting: bool,
    pub model_version: u64,
    /// With the self-tuning model: the members that carry this prediction, by weight
    /// (at least 5% of it, at most three).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, f64>,
}

pub struct Engine {
    pub flows: Vec<FlowRuntime>,
    /// Flows to try per exact event type, and for any other.
    flows_by_event: HashMap<Box<str>, Arc<[u32]>>,
    generic_flows: Arc<[u32]>,
    pub stats: Stats,
    clock_ms: i64,
    scratch: Vec<(StateId, f64)>,
    /// A first-step distribution and its successors' survival curves, kept across a search
    /// (`alert_after`).
    base: Vec<(StateId, f64)>,
    curves: Vec<[f64; dwell::BUCKETS]>,
    risk: Vec<f64>,
    /// No timer or sweep of any flow is due before this time.
    next_due_ms: i64,
    /// Objects first seen while this is on teach the model (the default); each keeps the
    /// setting for its life (`ObjectState::teaches`). Evaluation turns it off while a test
    /// case's messages are handled, and `freeze` stops all learning.
    pub learn: bool,
    /// Emit a `prediction` record every time an object enters a state.
    pub trace: bool,
    /// Feature models refit on threads of their own (`set_feature_background`).
    background_fit: bool,
    /// Message times after this are not believed (`set_horizon`).
    horizon_ms: Option<i64>,
    limits: Limits,
    /// Flows a reload or restore did not find, kept by name for `retire_grace_ms` of engine
    /// time so that a flow that comes back gets its counts and objects back (`snapshot.rs`).
    retired: BTreeMap<String, snapshot::Retired>,
    pub retire_grace_ms: i64,
    /// The last steps of every object, for timelines (`journal.rs`); off unless set.
    pub journal: Option<journal::Journal>,
    /// With the journal on: the worst artifact risk of the last `evaluate`, and the
    /// probability the model gave the step being applied.
    last_risk: f32,
    last_step_p: f32,
    /// The objects this engine owns when it is one of several (`shard.rs`).
    shard: Option<shard::Shard>,
    /// `observe`'s reused routing.
    routed: Routed,
    /// Messages given to `observe`, counted or not: with shards, who counts one that no flow
    /// keyed.
    seen: u64,
}

impl Engine {
    pub fn new(flows: Vec<CompiledFlow>) -> Engine {
        let runtimes = flows
            .into_iter()
            .map(|f| FlowRuntime::new(Arc::new(f)))
            .collect();
        let mut e = Engine {
            flows: runtimes,
            flows_by_event: HashMap::default(),
            generic_flows: Arc::from(Vec::new()),
            stats: Stats::default(),
            clock_ms: 0,
            scratch: Vec::new(),
            base: Vec::new(),
            curves: Vec::new(),
            risk: Vec::new(),
            learn: true,
            background_fit: false,
            trace: false,
            next_due_ms: i64::MIN,
            horizon_ms: None,
            limits: Limits::default(),
            retired: BTreeMap::new(),
            retire_grace_ms: snapshot::RETIRE_GRACE_MS,
            journal: None,
            last_risk: f32::NAN,
            last_step_p: f32::NAN,
            shard: None,
            routed: Routed::default(),
            seen: 0,
        };
        e.build_index();
        e
    }

    /// Sets the engine's limits (they stay across reloads).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        self.build_index();
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn build_index(&mut self) {
        let cap = finished_capacity(&self.limits, self.flows.len());
        for f in &mut self.flows {
            f.finished.capacity = cap;
            f.finished.shrink_to_budget();
        }
        let mut by_event: HashMap<Box<str>, Vec<u32>> = HashMap::default();
        let mut generic = Vec::new();
        for (i, f) in self.flows.iter().enumerate() {
            if !f.generic_rules.is_empty() {
                generic.push(i as u32);
            }
            for e in f.rules_by_event.keys() {
                by_event.entry(e.clone()).or_default().push(i as u32);
            }
        }
        self.flows_by_event = by_event
            .into_iter()
            .map(|(e, mut list)| {
                list.extend(generic.iter().copied());
                list.sort_unstable();
                list.dedup();
                (e, Arc::from(list))
            })
            .collect();
        self.generic_flows = Arc::from(generic);
    }

    /// The fields of a message that some flow reads: decode through it to skip the rest.
    pub fn projection(&self) -> projection::Projection {
        projection::Projection::for_flows(self.flows.iter().map(|f| &*f.flow))
    }

    /// The latest message time the engine believes: the caller's wall clock plus the skew it
    /// allows. A message stamped later (an hour ahead, the year 9999) is counted as `future`
    /// and handled at the current time: one wrong clock must not fire every timer early or
    /// freeze time for good. `None`: no bound (evaluation of historical logs).
    pub fn set_horizon(&mut self, horizon_ms: Option<i64>) {
        self.horizon_ms = horizon_ms;
    }

    /// Moves the clock back to `now_ms` when it is ahead (a snapshot written under a wrong
    /// clock), with every object time pulled back to it, so that timers and expiry work again.
    /// Returns how far the clock was ahead.
    pub fn pull_clock_back(&mut self, now_ms: i64) -> Option<i64> {
        if self.clock_ms <= now_ms {
            return None;
        }
        let ahead = self.clock_ms - now_ms;
        self.clock_ms = now_ms;
        self.next_due_ms = i64::MIN;
        for fi in 0..self.flows.len() {
            let rt = &mut self.flows[fi];
            for o in rt.objects.values_mut() {
                o.entered_ms = o.entered_ms.min(now_ms);
                o.entered_event_ms = o.entered_event_ms.min(now_ms);
                o.last_seen_ms = o.last_seen_ms.min(now_ms);
                o.first_seen_ms = o.first_seen_ms.min(now_ms);
            }
            rt.timers.clear();
            let keys: Vec<ObjectKey> = rt.objects.keys().cloned().collect();
            for key in keys {
                self.schedule(fi, &key);
            }
        }
        Some(ahead)
    }

    /// The engine's clock: the latest event time seen (or given to `advance`).
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    pub fn count_malformed(&mut self) {
        self.stats.malformed += 1;
    }

    pub fn objects_in_flight(&self) -> usize {
        self.flows.iter().map(|f| f.objects.len()).sum()
    }

    pub fn flow_index(&self, name: &str) -> Option<usize> {
        self.flows.iter().position(|f| f.flow.name == name)
    }

    /// Processes one message, appending what it causes to `out`.
    pub fn observe(&mut self, msg: &Message, out: &mut Vec<Record>) {
        let mut routed = std::mem::take(&mut self.routed);
        self.route_into(msg, &mut routed);
        self.observe_routed(msg, &routed, out);
        self.routed = routed;
    }

    /// Which flows' rules match a message, with the object's key and its shard in each: what
    /// `observe_routed` applies. Reads only the flows, so the thread that decoded a message
    /// can route it for every shard (`shard.rs`).
    pub fn route(&self, msg: &Message) -> Routed {
        let mut r = Routed::default();
        self.route_into(msg, &mut r);
        r
    }

    fn route_into(&self, msg: &Message, r: &mut Routed) {
        r.matches.clear();
        r.keyless = false;
        r.too_long = false;
        r.shards = 0;
        r.flows = 0;
        let candidates = msg
            .event_type()
            .and_then(|e| self.flows_by_event.get(e))
            .unwrap_or(&self.generic_flows);
        for &fi in candidates.iter() {
            let rt = &self.flows[fi as usize];
            let Some(target) = rt.classify(msg) else {
                continue;
            };
            let key = match rt.key_of(msg, self.limits.max_key_bytes) {
                KeyOf::Key(k) => k,
                KeyOf::Missing => {
                    r.keyless = true;
                    continue;
                }
                KeyOf::TooLong => {
                    r.too_long = true;
                    continue;
                }
            };
            let shard = self.shard.map_or(0, |sh| shard::shard_of(&key, sh.count));
            r.shards |= 1u64.checked_shl(shard).unwrap_or(u64::MAX);
            r.flows |= 1u64.checked_shl(fi).unwrap_or(u64::MAX);
            r.matches.push((fi, target, key, shard));
        }
    }

    /// `observe` of a message already routed (by this engine or another with the same flows).
    ///
    /// With shards (`set_shard`) every shard is given every message: each moves its clock and
    /// its models' clocks with it, applies it only to the objects it owns, and counts it (in
    /// `Stats`) only if it owns the message: the shard of its first key, or by its sequence
    /// number when no flow keyed it. Summed over the shards the counters are one engine's.
    pub fn observe_routed(&mut self, msg: &Message, routed: &Routed, out: &mut Vec<Record>) {
        let seq = self.seen;
        self.seen += 1;
        // `now` is when the engine handles the message (its clock never goes back); `event_ms`
        // when it happened. A time beyond the horizon is not believed: it moves nothing.
        let (now, event_ms, future, late) = match msg.time_ms {
            Some(t) if self.horizon_ms.is_some_and(|h| t > h) => (self.clock_ms, None, true, false),
            Some(t) if t < self.clock_ms => (self.clock_ms, Some(t), false, true),
            Some(t) => (t, Some(t), false, false),
            None => (self.clock_ms, None, false, false),
        };
        // Time passes first: timers due before this message fire before it is applied.
        self.advance(now, out);
        if let Some(sh) = self.shard {
            let mine = 1u64.checked_shl(sh.index).unwrap_or(u64::MAX);
            if routed.shards & mine == 0 && !routed.matches.is_empty() {
                // Another shard's message: only the models' clocks move here (below), and it
                // is counted where it is applied.
                for fi in 0..self.flows.len().min(64) {
                    if routed.flows & (1 << fi) != 0 {
                        self.flows[fi].model.set_now(now);
                    }
                }
                if self.flows.len() > 64 {
                    for m in &routed.matches {
                        if let Some(rt) = self.flows.get_mut(m.0 as usize) {
                            rt.model.set_now(now);
                        }
                    }
                }
                return;
            }
        }
        let event_type = msg.event_type();
        for (fi, target, key, shard) in &routed.matches {
            let fi = *fi as usize;
            if fi >= self.flows.len() {
                continue;
            }
            if self.shard.is_some_and(|sh| sh.index != *shard) {
                // Another shard applies it; the model's clock moves here too, as it would in
                // one engine, so that every copy of the model decays alike.
                self.flows[fi].model.set_now(now);
                continue;
            }
            self.flows[fi].matched += 1;
            let trig = Trigger::Message {
                event_type,
                message_id: msg.message_id.as_deref(),
                event_ms,
            };
            self.apply(fi, key.clone(), *target, now, trig, out);
        }
        let matched = routed.matches.len();
        let (keyless, too_long) = (routed.keyless, routed.too_long);
        if matched == 0 && !too_long && !keyless {
            // Touches only objects this engine holds: every shard looks.
            self.unknown_event(msg, now, out);
        }
        let counts = match self.shard {
            None => true,
            Some(sh) => {
                let owner = routed.matches.first().map(|m| m.3);
                owner.unwrap_or((seq % u64::from(sh.count)) as u32) == sh.index
            }
        };
        if !counts {
            return;
        }
        self.stats.messages += 1;
        self.stats.future += u64::from(future);
        self.stats.late += u64::from(late);
        match matched {
            0 if too_long => {
                // Bad input, not a message: counted where the caller counts undecodable ones.
                self.stats.messages -= 1;
                self.stats.malformed += 1;
                self.stats.key_too_long += 1;
                let n = self.stats.key_too_long;
                if n <= 10 || n.is_multiple_of(1000) {
                    tracing::warn!(
                        key_too_long = n,
                        limit = self.limits.max_key_bytes,
                        "Skipped a message whose key is longer than the limit."
                    );
                }
            }
            0 if keyless => self.stats.missing_key += 1,
            0 => self.stats.unmatched += 1,
            1 => self.stats.matched += 1,
            _ => {
                self.stats.matched += 1;
                self.stats.multi_flow += 1;
            }
        }
    }

    /// Moves the clock to `now_ms` (never backwards), firing the timers that fall due and
    /// evicting objects not seen for their flow's `expire` time.
    pub fn advance(&mut self, now_ms: i64, out: &mut Vec<Record>) {
        if now_ms < self.clock_ms {
            return;
        }
        self.clock_ms = now_ms;
        // Nothing is due before `next_due_ms`: most messages pass here without touching flows.
        if now_ms < self.next_due_ms {
            return;
        }
        for fi in 0..self.flows.len() {
            loop {
                let due = matches!(self.flows[fi].timers.peek(), Some(Reverse((at, ..))) if *at <= now_ms);
                if !due {
                    break;
                }
                let Some(Reverse((at, _, kind, gen, key))) = self.flows[fi].timers.pop() else {
                    break;
                };
                self.fire_timer(fi, at, kind, gen, key, out);
            }
            if now_ms >= self.flows[fi].next_sweep_ms {
                self.sweep(fi, now_ms, out);
            }
        }
        self.next_due_ms = self.compute_next_due();
    }

    /// The earliest time at which any flow has a timer or a sweep due.
    pub(crate) fn compute_next_due(&self) -> i64 {
        self.flows
            .iter()
            .map(|f| {
                let t = f.timers.peek().map_or(i64::MAX, |Reverse((at, ..))| *at);
                t.min(f.next_sweep_ms)
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    pub(crate) fn push_timer(
        &mut self,
        fi: usize,
        at: i64,
        kind: TimerKind,
        generation: u32,
        key: ObjectKey,
    ) {
        let rt = &mut self.flows[fi];
        rt.timer_seq += 1;
        rt.timers
            .push(Reverse((at, rt.timer_seq, kind, generation, key)));
        // Timers of objects that moved on stay in the heap until due, each with a copy of its
        // key: compact when they could outnumber the live ones (at most two per object), so
        // the heap stays within a few times what is in flight, at O(1) amortised per push.
        if rt.timers.len() > 4 * rt.objects.len() + 64 {
            let objects = &rt.objects;
            rt.timers.retain(|Reverse((_, _, _, gen, key))| {
                objects.get(key).is_some_and(|o| o.generation == *gen)
            });
            if rt.timers.capacity() > 4 * rt.timers.len() + 64 {
                rt.timers.shrink_to(2 * rt.timers.len() + 64);
            }
        }
        self.next_due_ms = self.next_due_ms.min(at);
    }

    fn fire_timer(
        &mut self,
        fi: usize,
        at: i64,
        kind: TimerKind,
        gen: u32,
        key: ObjectKey,
        out: &mut Vec<Record>,
    ) {
        let rt = &self.flows[fi];
        let Some(obj) = rt.objects.get(&key) else {
            return;
        };
        if obj.generation != gen {
            return; // The object moved since this timer was set.
        }
        let state = obj.state;
        match kind {
            TimerKind::Timeout => {
                let Some((_, artifact)) = rt.flow.timeouts[state as usize] else {
                    return;
                };
                self.stats.timeouts += 1;
                self.apply(fi, key, artifact, at, Trigger::Timer, out);
            }
            TimerKind::RiskCheck => self.evaluate(fi, &key, at, Trigger::Timer, out),
        }
    }

    fn sweep(&mut self, fi: usize, now: i64, out: &mut Vec<Record>) {
        let expire = self.flows[fi].flow.learning.expire_ms;
        self.flows[fi].next_sweep_ms = now + (expire / 10).max(1000);
        let stale: Vec<ObjectKey> = self.flows[fi]
            .objects
            .iter()
            .filter(|(_, o)| now - o.last_seen_ms > expire)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.stats.expired += 1;
            self.finish(fi, key, None, now, Trigger::Timer, out);
        }
    }

    /// Applies "object `key` is now in `target`" to flow `fi`.
    fn apply(
        &mut self,
        fi: usize,
        key: ObjectKey,
        target: StateId,
        now: i64,
        trig: Trigger<'_>,
        out: &mut Vec<Record>,
    ) {
        let rt = &mut self.flows[fi];
        // A flow's model keeps its own clock, moved only when the flow is touched.
        rt.model.set_now(now);
        let target_kind = rt.flow.state(target).kind;
        let Some(obj) = rt.objects.get_mut(&key) else {
            if target_kind != Kind::Initial && rt.finished.set.contains(&key) {
                self.stats.after_end += 1;
                return;
            }
            if target_kind.is_final() {
                // Seen only at its end: nothing to predict, nothing to learn.
                self.stats.joined_midway += 1;
                return;
            }
            if target_kind != Kind::Initial {
                self.stats.joined_midway += 1;
            }
            rt.objects.insert(
                key.clone(),
                ObjectState {
                    state: target,
                    history: [markov::NONE; 3],
                    alerting: false,
                    teaches: self.learn,
                    last_dwell: markov::NO_DWELL,
                    prev_dwell: markov::NO_DWELL,
                    generation: 0,
                    entered_ms: now,
                    last_seen_ms: now,
                    first_seen_ms: now,
                    entered_event_ms: trig.event_ms().unwrap_or(now),
                    surprise: [0; 5],
                    surprise_peak: 0,
                    unusual: 0,
                    episode: 0,
                    visited: if rt.flow.states.len() <= 64 {
                        markov::visited_bit(target)
                    } else {
                        0
                    },
                },
            );
            self.entered(fi, &key, now, trig, out);
            let risk = self.last_risk;
            self.log_step(
                fi,
                &key,
                now,
                (markov::NONE, target),
                journal::Step::Entered,
                f32::NAN,
                risk,
            );
            return;
        };
        obj.last_seen_ms = now;
        let from = obj.state;
        if from == target && !rt.flow.learning.count_repeats {
            return; // A repeated notification of the same state: no transition.
        }
        self.stats.transitions += 1;
        // Learned from event times when both ends have one (see `entered_event_ms`).
        let dwell = match trig.event_ms() {
            Some(e) => (e - obj.entered_event_ms).max(0),
            None => now - obj.entered_ms,
        };
        let before = *obj;
        let learn = before.teaches;
        self.last_step_p = f32::NAN;
        if !rt.flow.anomaly.off {
            self.score_step(fi, &key, &before, target, now, trig, out);
        } else if self.journal.is_some() {
            self.last_step_p = self.step_probability(fi, &before, target) as f32;
        }
        let rt = &mut self.flows[fi];
        if !rt.model.learns(from, target) {
            self.stats.unexpected += 1;
            out.push(Record::Unexpected(Unexpected {
                at: format_rfc3339(now),
                flow: rt.flow.name.clone(),
                object: key.to_string(),
                from: rt.flow.name_of(from).to_string(),
                to: rt.flow.name_of(target).to_string(),
                cause: trig.cause(),
            }));
        }
        if target_kind.is_final() {
            // The outcome carries what was predicted before it is learned.
            self.finish(fi, key, Some((target, dwell)), now, trig, out);
            return;
        }
        let rt = &mut self.flows[fi];
        if learn && rt.model.learns(from, target) {
            rt.teach(&key, before.past(), from, target, dwell);
        }
        let obj = rt.objects.get_mut(&key).expect("object present");
        obj.push_history(from);
        // A flow of more than 64 states keeps no visited set (its bits would not name states),
        // and an object whose set is unknown (restored from a snapshot written before sets
        // were kept) keeps none rather than one that would miss its first states.
        if rt.flow.states.len() <= 64 && obj.visited != 0 {
            obj.visited |= markov::visited_bit(target);
        }
        obj.prev_dwell = obj.last_dwell;
        obj.last_dwell = markov::dwell_bucket(dwell);
        obj.state = target;
        obj.entered_ms = now;
        obj.entered_event_ms = trig.event_ms().unwrap_or(now);
        obj.generation = obj.generation.wrapping_add(1);
        if obj.alerting {
            // The alert was about the state the object just left.
            obj.alerting = false;
            let since = rt.alert_log.get(&key).map_or(now, |l| l.since_ms);
            self.stats.resolved += 1;
            out.push(Record::Resolved(Resolved {
                at: format_rfc3339(now),
                flow: rt.flow.name.clone(),
                object: key.to_string(),
                state: rt.flow.name_of(from).to_string(),
                reason: "state_changed".into(),
                firing_ms: now - since,
            }));
        }
        self.entered(fi, &key, now, trig, out);
        let (p, risk) = (self.last_step_p, self.last_risk);
        self.log_step(fi, &key, now, (from, target), journal::Step::Moved, p, risk);
    }

    /// Ends an object's run: at a final state (`end` = its id and the dwell before it), or by
    /// eviction (`end` = None). Emits the outcome and resolves any alert.
    fn finish(
        &mut self,
        fi: usize,
        key: ObjectKey,
        end: Option<(StateId, i64)>,
        now: i64,
        trig: Trigger<'_>,
        out: &mut Vec<Record>,
    ) {
        let Some(obj) = self.flows[fi].objects.get(&key).cloned() else {
            return;
        };
        match end {
            Some((t, _)) => {
                let p = self.last_step_p;
                self.log_step(
                    fi,
                    &key,
                    now,
                    (obj.state, t),
                    journal::Step::Moved,
                    p,
                    f32::NAN,
                );
            }
            None => {
                let s = (obj.state, obj.state);
                self.log_step(fi, &key, now, s, journal::Step::Expired, f32::NAN, f32::NAN);
            }
        }
        self.flows[fi].model.set_now(now);
        let predicted = self.risk_map(fi, &obj, 0.0);
        let rt = &mut self.flows[fi];
        let flow = rt.flow.clone();
        let (outcome, kind) = match &end {
            Some((t, dwell)) => {
                // With `learn { from success }`, what the object held is learned now, before
                // its last step, or dropped with it.
                let success = flow.state(*t).kind != Kind::Artifact;
                rt.settle(&key, success && obj.teaches);
                if obj.teaches
                    && rt.model.learns(obj.state, *t)
                    && (success || !flow.learning.from_success)
                {
                    rt.model.observe(obj.past(), obj.state, *t, *dwell);
                }
                let k = if flow.state(*t).kind == Kind::Artifact {
                    "artifact"
                } else {
                    "success"
                };
                (*t, k)
            }
            None => {
                rt.settle(&key, false);
                (obj.state, "expired")
            }
        };
        let log = rt.alert_log.remove(&key);
        if obj.alerting {
            self.stats.resolved += 1;
            out.push(Record::Resolved(Resolved {
                at: format_rfc3339(now),
                flow: flow.name.clone(),
                object: key.to_string(),
                state: flow.name_of(obj.state).to_string(),
                reason: match kind {
                    "success" => "completed",
                    "artifact" => "artifact",
                    _ => "expired",
                }
                .into(),
                firing_ms: now - log.map_or(now, |l| l.since_ms),
            }));
        }
        self.stats.outcomes += 1;
        out.push(Record::Outcome(Outcome {
            at: format_rfc3339(now),
            flow: flow.name.clone(),
            object: key.to_string(),
            outcome: flow.name_of(outcome).to_string(),
            kind: kind.into(),
            label: flow.state(outcome).label.clone(),
            from: flow.name_of(obj.state).to_string(),
            predicted,
            alerted: log.is_some(),
            lead_time_ms: log.map(|l| now - l.first_ms),
            cause: trig.cause(),
            surprise_peak: (!flow.anomaly.off)
                .then(|| round6(surprise::nats(u32::from(obj.surprise_peak)))),
        }));
        if obj.episode > 0 {
            let reason = match kind {
                "success" => "completed",
                "artifact" => "artifact",
                _ => "expired",
            };
            out.push(anomaly_resolved(&flow, &key, &obj, outcome, reason, now));
        }
        let rt = &mut self.flows[fi];
        rt.remove_object(&key);
        rt.finished.insert(key);
    }

    /// Scores the step of object `key` from `before.state` to `to` with the model as it is
    /// before the step is learned: its probability, rank and surprise go into the object's
    /// window, into the flow's calibration when the object teaches, and into an `anomaly`
    /// record when a threshold is crossed for the first time in the object's life.
    #[allow(clippy::too_many_arguments)]
    fn score_step(
        &mut self,
        fi: usize,
        key: &ObjectKey,
        before: &ObjectState,
        to: StateId,
        now: i64,
        trig: Trigger<'_>,
        out: &mut Vec<Record>,
    ) {
        self.stats.scored_steps += 1;
        let rt = &mut self.flows[fi];
        let cfg = rt.flow.anomaly;
        if rt.model.cached().is_none() {
            rt.model.solution();
        }
        let sol = rt.model.cached().expect("solved");
        let p = rt
            .model
            .probability_of(sol, before.past(), before.state, to, &mut self.scratch);
        self.last_step_p = p as f32;
        // The rank needs the whole distribution: only for `top`, or for a record.
        let rank = cfg.top.map(|_| {
            rt.model
                .next_distribution(sol, before.past(), before.state, &mut self.scratch);
            surprise::probability_and_rank(&self.scratch, to).1
        });
        let q = surprise::quantise(p);
        let Some(obj) = rt.objects.get_mut(key) else {
            return;
        };
        obj.surprise.rotate_left(1);
        obj.surprise[4] = q;
        obj.surprise_peak = obj.surprise_peak.max(q);
        let window = surprise::window_sum(&obj.surprise, cfg.window);
        // A step the model gave nothing is not calibrated: in the learning period it is each
        // transition's first time, and counting those would raise the thresholds until no
        // never-seen step could cross them (EVALUATION.md, "Surprise").
        let never = p <= 0.0;
        if before.teaches && !never {
            rt.record_surprise(key, cfg.min_learned, q, window);
        }
        let Some(obj) = rt.objects.get_mut(key) else {
            return;
        };
        let crossed = if cfg.calibrated() {
            match rt.model.surprise.thresholds_cached(&cfg) {
                Some(_) if never => Some(surprise::Crossed::NeverPredicted),
                Some((step, _)) if u32::from(q) > step => {
                    Some(surprise::Crossed::StepSurprise(surprise::nats(step)))
                }
                Some((_, win)) if surprise::window_bin(window) as u32 > win => Some(
                    surprise::Crossed::WindowSurprise(surprise::window_bin_nats(win)),
                ),
                _ => None,
            }
        } else if let Some(m) = cfg.min_probability.filter(|&m| p < m) {
            Some(surprise::Crossed::MinProbability(m))
        } else if let Some(g) = cfg
            .top
            .filter(|&g| rank.is_some_and(|r| r > usize::from(g)))
        {
            Some(surprise::Crossed::Top(g))
        } else {
            cfg.window_surprise
                .filter(|&w| surprise::nats(window) > w)
                .map(surprise::Crossed::WindowSurprise)
        };
        let Some(crossed) = crossed else {
            // A normal step: an open episode ends after a window of them.
            if obj.episode > 0 {
                obj.episode = obj.episode.saturating_add(1);
                if usize::from(obj.episode - 1) >= usize::from(cfg.window) {
                    obj.episode = 0;
                    out.push(anomaly_resolved(&rt.flow, key, obj, to, "path_normal", now));
                }
            }
            return;
        };
        obj.unusual = obj.unusual.saturating_add(1);
        if obj.episode > 0 {
            obj.episode = 1;
            return;
        }
        obj.episode = 1;
        let unusual = obj.unusual;
        self.stats.anomalies += 1;
        let sol = rt.model.cached().expect("solved");
        rt.model
            .next_distribution(sol, before.past(), before.state, &mut self.scratch);
        let rank = surprise::probability_and_rank(&self.scratch, to).1;
        let flow = &rt.flow;
        let (expected, path) = anomaly_context(flow, before, &self.scratch, Some(to));
        out.push(Record::Anomaly(Anomaly {
            at: format_rfc3339(now),
            flow: flow.name.clone(),
            object: key.to_string(),
            state: flow.name_of(to).to_string(),
            from: flow.name_of(before.state).to_string(),
            probability: round6(p),
            rank,
            surprise: round6(surprise::surprise(p)),
            window_surprise: round6(surprise::nats(window)),
            expected,
            path,
            unusual_steps: u32::from(unusual),
            threshold: crossed.name().into(),
            threshold_value: round6(crossed.value()),
            calibrated: cfg.calibrated(),
            cause: trig.cause(),
        }));
    }

    /// A message no rule of any flow matched: for each flow with `anomaly { unknown_events on }`
    /// that has the object it names in flight, a step of maximal surprise (the object stays
    /// where it is): an `anomaly` unless one was already emitted for the object.
    fn unknown_event(&mut self, msg: &Message, now: i64, out: &mut Vec<Record>) {
        for fi in 0..self.flows.len() {
            let rt = &self.flows[fi];
            let cfg = rt.flow.anomaly;
            if cfg.off || !cfg.unknown_events {
                continue;
            }
            if rt.flow.filter.as_ref().is_some_and(|f| !f.eval(&msg.value)) {
                continue;
            }
            // Only a type the flow's rules never name is unknown to it: `instance.update` with
            // a task state no rule lists is a known message that moves nothing.
            match msg.event_type() {
                Some(t) if !rt.rules_by_event.contains_key(t) => {}
                _ => continue,
            }
            let KeyOf::Key(key) = rt.key_of(msg, self.limits.max_key_bytes) else {
                continue;
            };
            let Some(&before) = rt.objects.get(&key) else {
                continue;
            };
            let trig = Trigger::Message {
                event_type: msg.event_type(),
                message_id: msg.message_id.as_deref(),
                event_ms: msg.time_ms,
            };
            self.stats.scored_steps += 1;
            let rt = &mut self.flows[fi];
            rt.model.set_now(now);
            if rt.model.cached().is_none() {
                rt.model.solution();
            }
            let q = surprise::quantise(0.0);
            let Some(obj) = rt.objects.get_mut(&key) else {
                continue;
            };
            obj.last_seen_ms = now;
            obj.surprise.rotate_left(1);
            obj.surprise[4] = q;
            obj.surprise_peak = obj.surprise_peak.max(q);
            obj.unusual = obj.unusual.saturating_add(1);
            let window = surprise::window_sum(&obj.surprise, cfg.window);
            if obj.episode > 0 {
                obj.episode = 1;
                continue;
            }
            obj.episode = 1;
            let unusual = obj.unusual;
            self.stats.anomalies += 1;
            let sol = rt.model.cached().expect("solved");
            rt.model
                .next_distribution(sol, before.past(), before.state, &mut self.scratch);
            let flow = &rt.flow;
            let (expected, path) = anomaly_context(flow, &before, &self.scratch, None);
            let state = flow.name_of(before.state).to_string();
            out.push(Record::Anomaly(Anomaly {
                at: format_rfc3339(now),
                flow: flow.name.clone(),
                object: key.to_string(),
                state: state.clone(),
                from: state,
                probability: 0.0,
                rank: self.scratch.len() + 1,
                surprise: round6(surprise::surprise(0.0)),
                window_surprise: round6(surprise::nats(window)),
                expected,
                path,
                unusual_steps: u32::from(unusual),
                threshold: "unknown_event".into(),
                threshold_value: 0.0,
                calibrated: false,
                cause: trig.cause(),
            }));
        }
    }

    /// An object has just entered its current state: set its timers and judge its risk.
    fn entered(
        &mut self,
        fi: usize,
        key: &ObjectKey,
        now: i64,
        trig: Trigger<'_>,
        out: &mut Vec<Record>,
    ) {
        let rt = &self.flows[fi];
        let obj = &rt.objects[key];
        if let Some((ms, _)) = rt.flow.timeouts[obj.state as usize] {
            let generation = obj.generation;
            self.push_timer(fi, now + ms, TimerKind::Timeout, generation, key.clone());
        }
        self.evaluate(fi, key, now, trig, out);
        if self.trace {
            if let Some(p) = self.predict_object_at(fi, key, now) {
                out.push(Record::Prediction(p));
            }
        }
    }

    /// Writes one step into the journal, when it is on.
    #[allow(clippy::too_many_arguments)]
    fn log_step(
        &mut self,
        fi: usize,
        key: &ObjectKey,
        at_ms: i64,
        (from, to): (StateId, StateId),
        step: journal::Step,
        probability: f32,
        risk: f32,
    ) {
        let Some(j) = &mut self.journal else {
            return;
        };
        let flow = j.flow_id(&self.flows[fi].flow.name);
        j.push(journal::Entry {
            key_hash: journal::key_hash(key),
            at_ms,
            probability,
            risk,
            flow,
            from,
            to,
            step,
        });
    }

    /// The probability the model gives the step `before.state -> to` for this object (what
    /// `score_step` computes, for flows with `anomaly off` when the journal wants it). From
    /// the cached solution only: asking for a fresh one would move the solve schedule, and the
    /// service would then predict differently from a replay of the same stream.
    fn step_probability(&mut self, fi: usize, before: &ObjectState, to: StateId) -> f64 {
        let rt = &self.flows[fi];
        let Some(sol) = rt.model.cached() else {
            return f64::NAN;
        };
        rt.model
            .probability_of(sol, before.past(), before.state, to, &mut self.scratch)
    }

    /// The largest artifact risk in `self.risk` (as `predict_into` left it).
    fn worst_risk(&self, fi: usize) -> f64 {
        let rt = &self.flows[fi];
        let Some(sol) = rt.model.cached() else {
            return f64::NAN;
        };
        sol.finals
            .iter()
            .zip(self.risk.iter())
            .filter(|(s, _)| rt.flow.state(**s).kind == Kind::Artifact)
            .map(|(_, r)| *r)
            .fold(0.0, f64::max)
    }

    /// Artifact risks of an object at `elapsed` ms in its state, by artifact name.
    fn risk_map(&mut self, fi: usize, obj: &ObjectState, elapsed: f64) -> BTreeMap<String, f64> {
        self.predict_into(fi, obj, elapsed);
        let rt = &self.flows[fi];
        artifact_risks(&rt.flow, rt.model.cached().expect("solved"), &self.risk)
    }

    /// Refreshes the flow's model if its counts changed materially, then predicts for `obj` at
    /// `elapsed` ms in its state: risks in `self.risk`, the first step in `self.scratch`.
    /// The solution it used stays in `model.cached()`.
    fn predict_into(&mut self, fi: usize, obj: &ObjectState, elapsed: f64) {
        let rt = &mut self.flows[fi];
        rt.model.solution();
        let sol = rt.model.cached().expect("solved");
        rt.model.predict(
            sol,
            obj.past(),
            obj.state,
            elapsed,
            &mut self.scratch,
            &mut self.risk,
        );
    }

    /// Judges an object's risk now: fire an alert, resolve one, or schedule another look.
    fn evaluate(
        &mut self,
        fi: usize,
        key: &ObjectKey,
        now: i64,
        trig: Trigger<'_>,
        out: &mut Vec<Record>,
    ) {
        let rt = &mut self.flows[fi];
        rt.model.set_now(now);
        let Some(obj) = rt.objects.get(key) else {
            return;
        };
        let obj = *obj;
        let elapsed = (now - obj.entered_ms) as f64;
        self.predict_into(fi, &obj, elapsed);
        if self.journal.is_some() {
            self.last_risk = self.worst_risk(fi) as f32;
        }
        let rt = &mut self.flows[fi];
        let sol = rt.model.cached().expect("solved");
        let flow = &rt.flow;
        // The worst artifact over its threshold: highest risk relative to its threshold.
        let mut worst: Option<(usize, f64)> = None;
        let mut all_below_resolve = true;
        for (i, (&s, &r)) in sol.finals.iter().zip(self.risk.iter()).enumerate() {
            if flow.state(s).kind != Kind::Artifact {
                continue;
            }
            let level = flow.alerts[s as usize];
            if r >= level.resolve && r > 0.0 {
                all_below_resolve = false;
            }
            if r >= level.threshold && r > 0.0 {
                let ratio = r / level.threshold.max(1e-12);
                if worst.is_none_or(|(_, best)| ratio > best) {
                    worst = Some((i, ratio));
                }
            }
        }
        if obj.alerting {
            if all_below_resolve {
                let o = rt.objects.get_mut(key).expect("present");
                o.alerting = false;
                let since = rt.alert_log.get(key).map_or(now, |l| l.since_ms);
                self.stats.resolved += 1;
                out.push(Record::Resolved(Resolved {
                    at: format_rfc3339(now),
                    flow: flow.name.clone(),
                    object: key.to_string(),
                    state: flow.name_of(obj.state).to_string(),
                    reason: "risk_below_resolve".into(),
                    firing_ms: now - since,
                }));
                let (s, r) = ((obj.state, obj.state), self.last_risk);
                self.log_step(fi, key, now, s, journal::Step::Resolved, f32::NAN, r);
            }
            return;
        }
        if let Some((i, _)) = worst {
            let artifact = sol.finals[i];
            let level = flow.alerts[artifact as usize];
            let severity = sol
                .finals
                .iter()
                .zip(self.risk.iter())
                .filter(|(s, r)| {
                    flow.state(**s).kind == Kind::Artifact
                        && **r >= flow.alerts[**s as usize].threshold
                        && **r > 0.0
                })
                .map(|(s, _)| flow.alerts[*s as usize].severity)
                .max()
                .unwrap_or(level.severity);
            let risk = artifact_risks(flow, sol, &self.risk);
            let path = most_likely_path(sol, obj.state, artifact)
                .into_iter()
                .map(|s| flow.name_of(s).to_string())
                .collect();
            let alert = Alert {
                at: format_rfc3339(now),
                flow: flow.name.clone(),
                object: key.to_string(),
                state: flow.name_of(obj.state).to_string(),
                state_label: flow.state(obj.state).label.clone(),
                severity: severity.as_str().into(),
                artifact: flow.name_of(artifact).to_string(),
                artifact_label: flow.state(artifact).label.clone(),
                probability: round6(self.risk[i]),
                threshold: level.threshold,
                risk,
                path,
                time_in_state_ms: now - obj.entered_ms,
                expected_remaining_ms: rt
                    .model
                    .expected_remaining(sol, obj.state, elapsed, &self.scratch)
                    .round(),
                model_version: sol.version,
                cause: trig.cause(),
            };
            let o = rt.objects.get_mut(key).expect("present");
            o.alerting = true;
            rt.alert_log
                .entry(key.clone())
                .and_modify(|l| l.since_ms = now)
                .or_insert(AlertLog {
                    first_ms: now,
                    since_ms: now,
                });
            self.stats.alerts += 1;
            out.push(Record::Alert(alert));
            let (s, r) = ((obj.state, obj.state), self.last_risk);
            self.log_step(fi, key, now, s, journal::Step::Alert, f32::NAN, r);
            return;
        }
        // Not alerting: if waiting longer will raise the risk over a threshold, look again then.
        if let Some(after) = self.alert_after(fi, &obj, elapsed) {
            let at = obj.entered_ms + after.ceil() as i64;
            let rt = &mut self.flows[fi];
            let timeout_at =
                rt.flow.timeouts[obj.state as usize].map(|(ms, _)| obj.entered_ms + ms);
            if at > now && timeout_at.is_none_or(|t| at < t) {
                self.push_timer(fi, at, TimerKind::RiskCheck, obj.generation, key.clone());
            }
        }
    }

    /// The first time in its state after `elapsed` ms at which this object's risk (with its own
    /// past: history, dwell, calendar and feature contexts, as `evaluate` judges it) crosses a
    /// threshold, searched on the dwell histogram's bucket boundaries. Per object, not per
    /// state: the first-order risk may cross earlier, later or never, and a look scheduled from
    /// it would come at the wrong time. The search stops where the state's dwell data ends
    /// (beyond it the risk no longer changes) or at its timeout.
    fn alert_after(&mut self, fi: usize, obj: &ObjectState, elapsed: f64) -> Option<f64> {
        let rt = &self.flows[fi];
        let state = obj.state;
        // Without dwell data the risk does not change with time: what entry said stands.
        if !rt.model.time_matters(state) {
            return None;
        }
        let sol = rt.model.cached()?;
        let limit = rt.flow.timeouts[state as usize]
            .map(|(ms, _)| ms as f64)
            .unwrap_or(f64::MAX)
            .min(rt.model.dwell_horizon(state));
        // The contexts (history, features) are looked up once, and each successor's survival
        // at every boundary in one pass: each time tried is then a few multiplications.
        let mut base = std::mem::take(&mut self.base);
        let mut curves = std::mem::take(&mut self.curves);
        if elapsed <= 0.0 {
            // At entry `evaluate` has just predicted for this object: with no time spent, its
            // first step is the unconditioned distribution (`predict` re-weights only e > 0).
            base.clear();
            base.extend_from_slice(&self.scratch);
        } else {
            rt.model
                .next_distribution(sol, obj.past(), state, &mut base);
        }
        curves.resize(base.len(), [1.0; dwell::BUCKETS]);
        for (curve, (to, _)) in curves.iter_mut().zip(base.iter()) {
            rt.model.survival_curve(state, *to, curve);
        }
        // Only the artifacts' risks are compared with a threshold.
        let artifacts: Vec<(usize, f64)> = sol
            .finals
            .iter()
            .enumerate()
            .filter(|(_, s)| rt.flow.state(**s).kind == Kind::Artifact)
            .map(|(i, s)| (i, rt.flow.alerts[*s as usize].threshold))
            .collect();
        let mut found = None;
        let mut tried = false;
        for (b, e) in dwell::DwellHist::boundaries().enumerate() {
            if e <= elapsed {
                continue;
            }
            if e > limit {
                break;
            }
            // Where no successor's survival changed since the boundary before, neither did the
            // risk: it did not cross there, so it does not here.
            if tried && curves.iter().all(|c| c[b] == c[b - 1]) {
                continue;
            }
            tried = true;
            let total: f64 = base.iter().zip(&curves).map(|((_, p), c)| p * c[b]).sum();
            let crosses = artifacts.iter().any(|&(i, threshold)| {
                let mut r = 0.0;
                for ((to, p), c) in base.iter().zip(&curves) {
                    // Longer than anything ever seen: the unconditioned distribution (as
                    // `predict`).
                    let w = if total > 0.0 { p * c[b] / total } else { *p };
                    r += w * sol.absorb_row(*to)[i];
                }
                r > 0.0 && r >= threshold
            });
            if crosses {
                found = Some(e);
                break;
            }
        }
        self.base = base;
        self.curves = curves;
        found
    }

    /// The prediction for one object of one flow, for the API and tests.
    pub fn predict_object(&mut self, fi: usize, key: &ObjectKey) -> Option<Prediction> {
        self.predict_object_at(fi, key, self.clock_ms)
    }

    fn predict_object_at(&mut self, fi: usize, key: &ObjectKey, now: i64) -> Option<Prediction> {
        let obj = *self.flows[fi].objects.get(key)?;
        let elapsed = (now - obj.entered_ms).max(0) as f64;
        self.flows[fi].model.set_now(now);
        self.predict_into(fi, &obj, elapsed);
        let rt = &mut self.flows[fi];
        let sol = rt.model.cached().expect("solved");
        let expected = rt
            .model
            .expected_remaining(sol, obj.state, elapsed, &self.scratch);
        let median = rt
            .model
            .median_remaining(sol, obj.state, elapsed, &self.scratch);
        let flow = &rt.flow;
        let mut next = Vec::new();
        rt.model
            .next_distribution(sol, obj.past(), obj.state, &mut next);
        Some(Prediction {
            at: format_rfc3339(now),
            flow: flow.name.clone(),
            object: key.to_string(),
            state: flow.name_of(obj.state).to_string(),
            history: obj
                .history_slice()
                .iter()
                .map(|s| flow.name_of(*s).to_string())
                .collect(),
            time_in_state_ms: now - obj.entered_ms,
            next: next
                .iter()
                .map(|(s, p)| (flow.name_of(*s).to_string(), round6(*p)))
                .collect(),
            risk: artifact_risks(flow, sol, &self.risk),
            expected_remaining_ms: expected.round(),
            median_remaining_ms: median.round(),
            alerting: obj.alerting,
            model_version: sol.version,
            members: rt.model.leading_members(obj.state),
        })
    }

    /// Refit feature models on threads of their own (the service) rather than inline.
    pub fn set_feature_background(&mut self, on: bool) {
        self.background_fit = on;
        for rt in &mut self.flows {
            rt.model.background_fit = on;
        }
    }

    /// Whether feature models refit themselves as transitions arrive (the default).
    pub fn set_feature_autofit(&mut self, on: bool) {
        for rt in &mut self.flows {
            rt.model.auto_fit = on;
        }
    }

    /// Refits every flow's feature model now on what it has observed (`learn { features on }`);
    /// otherwise they are refitted when a tenth of their transitions are new.
    pub fn refit_features(&mut self) {
        for rt in &mut self.flows {
            rt.model.fit_features();
        }
    }

    /// Stops learning for good: no object teaches any more, and every flow's model is solved
    /// once more and its clock stopped, so that decay no longer moves it. Every prediction
    /// after this sees the same model, whatever came before it (frozen evaluation).
    pub fn freeze(&mut self) {
        self.learn = false;
        for rt in &mut self.flows {
            for o in rt.objects.values_mut() {
                o.teaches = false;
            }
            rt.held.clear();
            rt.model.freeze();
        }
    }

    /// The learned counts of every flow, by flow name, for a state directory.
    pub fn export_learned(&self) -> BTreeMap<String, markov::LearnedCounts> {
        self.flows
            .iter()
            .map(|f| {
                let names: Vec<String> = f.flow.states.iter().map(|s| s.name.clone()).collect();
                (f.flow.name.clone(), f.model.export(&names))
            })
            .collect()
    }

    /// Loads learned counts for the flows that exist; returns (flows loaded, transitions dropped).
    pub fn import_learned(
        &mut self,
        learned: &BTreeMap<String, markov::LearnedCounts>,
    ) -> (usize, usize) {
        let mut loaded = 0;
        let mut dropped = 0;
        for rt in &mut self.flows {
            if let Some(l) = learned.get(&rt.flow.name) {
                let flow = rt.flow.clone();
                dropped += rt.model.import(l, |n| flow.state_id(n));
                self.clock_ms = self.clock_ms.max(l.now_ms);
                loaded += 1;
            }
        }
        (loaded, dropped)
    }
}

/// The most probable path from `from` to `to` (Dijkstra on -log p), states included.
pub fn most_likely_path(sol: &Solution, from: StateId, to: StateId) -> Vec<StateId> {
    let n = sol.n;
    let mut dist = vec![f64::INFINITY; n];
    let mut prev = vec![usize::MAX; n];
    let mut done = vec![false; n];
    dist[from as usize] = 0.0;
    for _ in 0..n {
        let Some(u) = (0..n)
            .filter(|&i| !done[i] && dist[i].is_finite())
            .min_by(|&a, &b| dist[a].total_cmp(&dist[b]))
        else {
            break;
        };
        done[u] = true;
        if u == to as usize {
            break;
        }
        for v in 0..n {
            let p = sol.p[u * n + v];
            if p > 0.0 && !done[v] {
                let d = dist[u] - p.ln();
                if d < dist[v] {
                    dist[v] = d;
                    prev[v] = u;
                }
            }
        }
    }
    if !dist[to as usize].is_finite() {
        return vec![from];
    }
    let mut path = vec![to];
    let mut cur = to as usize;
    while cur != from as usize && prev[cur] != usize::MAX {
        cur = prev[cur];
        path.push(cur as StateId);
    }
    path.reverse();
    path
}

/// The risks `predict` wrote (aligned with `sol.finals`), for the artifacts only, by name.
pub fn artifact_risks(flow: &CompiledFlow, sol: &Solution, risk: &[f64]) -> BTreeMap<String, f64> {
    sol.finals
        .iter()
        .zip(risk)
        .filter(|(s, _)| flow.state(**s).kind == Kind::Artifact)
        .map(|(s, r)| (flow.name_of(*s).to_string(), round6(*r)))
        .collect()
}

/// What an `anomaly` record shows besides the step: the three likeliest next states of the
/// distribution the object was judged by, and its path (its states so far, then `to` when
/// the step moved it).
/// The end of an object's anomaly episode, in state `state`, for `reason`.
fn anomaly_resolved(
    flow: &CompiledFlow,
    key: &ObjectKey,
    obj: &ObjectState,
    state: StateId,
    reason: &str,
    now: i64,
) -> Record {
    Record::AnomalyResolved(AnomalyResolved {
        at: format_rfc3339(now),
        flow: flow.name.clone(),
        object: key.to_string(),
        state: flow.name_of(state).to_string(),
        reason: reason.into(),
        unusual_steps: u32::from(obj.unusual),
        surprise_peak: round6(surprise::nats(u32::from(obj.surprise_peak))),
    })
}

fn anomaly_context(
    flow: &CompiledFlow,
    before: &ObjectState,
    dist: &[(StateId, f64)],
    to: Option<StateId>,
) -> (Vec<(String, f64)>, Vec<String>) {
    let mut expected = dist.to_vec();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let expected = expected
        .iter()
        .take(3)
        .map(|&(s, p)| (flow.name_of(s).to_string(), round6(p)))
        .collect();
    let path = before
        .history_slice()
        .iter()
        .chain([&before.state])
        .chain(to.as_ref())
        .map(|&s| flow.name_of(s).to_string())
        .collect();
    (expected, path)
}

pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    #[test]
    fn finished_objects_share_one_budget_in_bytes() {
        let limits = super::Limits::default();
        assert_eq!(super::finished_capacity(&limits, 1), 64 << 20);
        assert_eq!(super::finished_capacity(&limits, 4), 16 << 20);
        let key = super::key::ObjectKey::parse;
        let one = super::Finished::cost(&key("a"));
        assert_eq!(one, 2 * (24 + 1) + 8);
        let mut f = super::Finished::with_capacity(2 * one);
        for k in ["a", "b", "c"] {
            f.insert(key(k));
        }
        assert!(!f.set.contains(&key("a")));
        assert_eq!(f.order.len(), 2);
        assert_eq!(f.bytes, 2 * one);
        // A long key pushes out as many short ones as it takes: here both.
        f.capacity = 2 * one + 60;
        f.insert(key(&"x".repeat(40)));
        assert_eq!(f.order.len(), 1, "{f:?}");
        assert!(f.bytes <= f.capacity);
    }

    #[test]
    fn per_object_state_stays_small() {
        // 48 bytes: the first-seen time and the dwell class before last feed `features`; the
        // entering message's own time keeps dwell learned from event times (late messages).
        // 56: the last 8 bytes are the surprise window (a ring of 5 quantised steps), the
        // peak step, the unusual-step count and the anomaly flag (`surprise.rs`).
        // 64: the set of states visited, for the self-tuning model's visited-set context.
        assert_eq!(std::mem::size_of::<super::ObjectState>(), 64);
        assert_eq!(std::mem::size_of::<super::key::ObjectKey>(), 24);
    }
}
