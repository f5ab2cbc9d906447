//! The predictive state model of one flow: a priori counts blended with observed transitions
//! (claims 4-6), recency weighting ([0099]), history contexts (claim 3), and the exact solution
//! of the absorbing Markov chain (FIG. 11).
//!
//! Weight of a transition = prior count x prior weight + decayed observed count. Observations
//! decay with the flow's half-life by *event* time. To avoid touching every count on every
//! event, an observation at time t is stored as 2^((t - epoch)/half_life); the effective value
//! at time `now` is stored x 2^(-(now - epoch)/half_life). The epoch is moved forward (and all
//! stored values rescaled) before the stored numbers grow large.
//!
//! Solving is O(n^3), so it is never done per event: the solution is cached and refreshed only
//! when the observed weight changed materially (1% of the total, or one observation while the
//! total is small) or when decay has moved the weights by more than 1%.

use super::dwell::DwellHist;
use super::features::{Example, FeatureModel};
use super::mixture::{Mixture, Rows};
use crate::model::{Calendar, CompiledFlow, Kind, StateId, Unlisted};
use foldhash::HashMap;
use serde::{Deserialize, Serialize};

/// What an object's past adds to its current state: the states before it (oldest first), how
/// long it spent in the last of them, as a `dwell_bucket` (`NO_DWELL` when unknown), and when
/// it entered its current state (ms since the epoch; 0 when unknown).
#[derive(Debug, Clone, Copy)]
pub struct Past<'a> {
    pub history: &'a [StateId],
    pub last_dwell: u8,
    pub entered_ms: i64,
    /// Dwell class of the state before the previous one.
    pub prev_dwell: u8,
    /// Time since the object was first seen, at its entry into its state (-1 when unknown).
    pub age_ms: i64,
    /// The states the object has been in, its current one too: bit `s` for state `s`
    /// (`visited_bit`); 0 when unknown or the flow has more than 64 states.
    pub visited: u64,
}

impl Past<'static> {
    pub const NONE: Past<'static> = Past {
        history: &[],
        last_dwell: NO_DWELL,
        entered_ms: 0,
        prev_dwell: NO_DWELL,
        age_ms: -1,
        visited: 0,
    };
}

/// State `s`'s bit in `Past::visited` (0 past 63: such flows keep no visited set).
pub fn visited_bit(s: StateId) -> u64 {
    if (s as usize) < 64 {
        1u64 << s
    } else {
        0
    }
}

/// A visited set under another definition's state ids (a reload): states gone are dropped; 0
/// when the new definition has more than 64 states.
pub fn remap_visited(visited: u64, map: &[Option<StateId>], states: usize) -> u64 {
    if states > 64 {
        return 0;
    }
    (0..map.len().min(64))
        .filter(|&s| visited & (1u64 << s) != 0)
        .filter_map(|s| map[s])
        .fold(0, |a, s| a | visited_bit(s))
}

/// A visited set by state names (snapshots), and back (0 for a flow of more than 64 states).
pub fn visited_names(visited: u64, names: &[String]) -> Vec<String> {
    (0..names.len().min(64))
        .filter(|&s| visited & (1u64 << s) != 0)
        .map(|s| names[s].clone())
        .collect()
}

pub fn visited_from_names(flow: &CompiledFlow, names: &[String]) -> u64 {
    if flow.states.len() > 64 {
        return 0;
    }
    names
        .iter()
        .filter_map(|n| flow.state_id(n))
        .fold(0, |a, s| a | visited_bit(s))
}

/// Visited-set contexts a flow keeps at most (about 100 bytes each with a short row): real
/// processes have a few thousand (5,000 in the permit log, the suite's most varied), but sets
/// are combinatorial, and a stream of random paths must not grow the model without bound.
/// Past the bound, sets not seen yet are not added; those kept go on learning.
pub const MAX_VISITED_CONTEXTS: usize = 65_536;

/// Key of a visited-set context: the state and the set of states the object has been in.
pub type VisitedKey = (StateId, u64);

/// Key of a calendar context: the state, the dwell class of the state before it (`NO_DWELL`
/// when dwell times are not used), the calendar class of the time it was entered.
pub type CalendarKey = (StateId, u8, u8);

pub const NO_DWELL: u8 = u8::MAX;

/// A coarse, logarithmic class of a dwell: 0 under 9 s, 1 under 99 s, 2 under 16 min, 3 under
/// 2.8 h, 4 under 28 h, 5 under 11.6 days, ... The time an object took in its previous state
/// often says which way it goes next (a ticket closed in seconds was a duplicate).
pub fn dwell_bucket(ms: i64) -> u8 {
    if ms < 0 {
        return NO_DWELL;
    }
    ((ms as f64 / 1000.0 + 1.0).log10().floor() as u8).min(12)
}

/// Up to 4 states, oldest first, padded with `NONE`.
pub type Context = [StateId; 4];
pub const NONE: StateId = StateId::MAX;
/// The solver's steps one call to `FlowModel::solution` (about one per message) may pay for:
/// a small flow (up to about 60 states) is re-solved whenever its counts changed
/// materially, a flow at the 1,000-state limit (a million steps a solve) at most once every
/// 250 calls. The cost per message stays bounded whatever the flow.
pub const SOLVE_WORK_PER_CALL: f64 = 4096.0;
const REBASE_EXP: f64 = 60.0;

#[derive(Debug, Clone)]
pub struct Solution {
    pub n: usize,
    /// Row-stochastic next-state probabilities, n x n; a row of zeros where nothing is known.
    pub p: Vec<f64>,
    /// The same rows, sparse: the successors with a positive probability.
    pub succ: Vec<Vec<(StateId, f64)>>,
    /// Effective weight of each row (prior x weight + decayed observations).
    pub row_weight: Vec<f64>,
    /// The absorbing (final) states, in state order.
    pub finals: Vec<StateId>,
    /// n x finals.len(): probability of ending in each final state, from each state.
    pub absorb: Vec<f64>,
    /// Expected time to reach any final state, ms, from each state (at entry).
    pub expected_ms: Vec<f64>,
    /// Increments every refresh; predictions carry it.
    pub version: u64,
    /// Sampled times to absorption per state, filled when a prediction asks (remaining.rs).
    pub remaining: super::remaining::RemainingCache,
}

impl Solution {
    pub fn absorb_row(&self, s: StateId) -> &[f64] {
        let k = self.finals.len();
        &self.absorb[s as usize * k..(s as usize + 1) * k]
    }

    pub fn p_row(&self, s: StateId) -> &[f64] {
        &self.p[s as usize * self.n..(s as usize + 1) * self.n]
    }
}

#[derive(Debug, Clone)]
pub struct FlowModel {
    pub n: usize,
    pub(super) kinds: Vec<Kind>,
    /// The timeout artifact of each state, if any: its dwell is known (the timeout itself).
    timeout_target: Vec<Option<StateId>>,
    listed: Vec<bool>,
    unlisted: Unlisted,
    pub prior: Vec<f64>,
    prior_weight: f64,
    /// Each state's a priori counts, sparse, and their total (for the self-tuning family).
    prior_rows: Vec<(Vec<(StateId, f64)>, f64)>,
    /// Stored (scaled) observed counts, n x n.
    pub obs: Vec<f64>,
    /// Their sum, kept up to date so that the refresh test costs nothing.
    obs_total: f64,
    /// Observed counts without decay, n x n: what a row falls back on when recency weighting
    /// has left it fewer than `min_observations` of recent weight.
    pub obs_long: Vec<f64>,
    /// Stored (scaled) dwell histograms per (from, to).
    pub dwell: HashMap<(StateId, StateId), DwellHist>,
    /// Pooled dwell per state, over the transitions that are not its timeout.
    pub dwell_state: Vec<DwellHist>,
    /// Stored (scaled) next-state counts per history context of length 2..=history.
    pub contexts: HashMap<Context, Vec<(StateId, f64)>>,
    /// Stored (scaled) next-state counts per (state, dwell class of the state before it).
    pub dwell_contexts: HashMap<(StateId, u8), Vec<(StateId, f64)>>,
    /// Stored (scaled) next-state counts per calendar context (`learn { calendar ... }`).
    pub calendar_contexts: HashMap<CalendarKey, Vec<(StateId, f64)>>,
    /// Stored (scaled) next-state counts per visited-set context (the self-tuning family:
    /// which states the object has been in, whatever the order: what a case's activity counts
    /// say in a process whose steps repeat).
    pub visited_contexts: HashMap<VisitedKey, Vec<(StateId, f64)>>,
    calendar: Calendar,
    /// The log-linear feature model, when `learn { features on }`.
    pub features: Option<FeatureModel>,
    /// The self-tuning family of predictors and their weights (`learn { model auto }`).
    pub mixture: Option<Mixture>,
    /// `learn { model auto }` (kept apart from `mixture`, which is taken out while it scores).
    auto: bool,
    /// A reusable dense row for scoring.
    row_buf: Vec<f64>,
    /// Refit the feature model as transitions arrive (off while `eval` trains a frozen model,
    /// which is fitted once at the end).
    pub auto_fit: bool,
    /// Refit on a thread of its own (the service) instead of inline (replay, eval: the same
    /// input always gives the same predictions).
    pub background_fit: bool,
    pub history: usize,
    min_observations: f64,
    use_dwell: bool,
    half_life_ms: Option<i64>,
    pub epoch_ms: i64,
    pub now_ms: i64,
    /// `decay_factor()` as of the clock (`now_ms`, `epoch_ms`): it is read for every row of
    /// every prediction, and a power each time cost 2% of a replay.
    decay: f64,
    /// Effective observed weight added since the last solve.
    pub(super) changed: f64,
    /// Steps the last solve took (`solve_absorbing_counted`), and the calls to `solution` since:
    /// a refresh waits until they have paid for it at `SOLVE_WORK_PER_CALL` each.
    pub(super) solve_work: f64,
    pub(super) calls_since_solve: u64,
    pub(super) solved_at_ms: i64,
    pub(super) solution: Option<Solution>,
    pub(super) version: u64,
    /// Its clock no longer moves (`freeze`).
    frozen: bool,
    /// The surprises of learned steps, for calibrated anomaly thresholds (`surprise.rs`).
    pub surprise: super::surprise::Calibration,
    /// With shards (`engine::shard`): what this model learned since the last exchange, for
    /// the other shards' copies of the model.
    pub outbox: Option<Vec<Delta>>,
}

/// What one shard's model learned, applied to the other shards' models (`apply_delta`).
/// Serialised between cluster workers (`service::cluster`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Delta {
    Learn(Box<Learned>),
    /// A scored step's surprise for the calibration.
    Surprise {
        step: u8,
        window: u32,
    },
}

/// One learned transition with what the model read of the object's past.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    pub from: StateId,
    pub to: StateId,
    pub dwell_ms: i64,
    /// The model's clock when it was learned: its weight under decay.
    pub at_ms: i64,
    /// The states before `from`, oldest first: `history[..history_len]`.
    pub history: [StateId; 4],
    pub history_len: u8,
    pub last_dwell: u8,
    pub prev_dwell: u8,
    pub entered_ms: i64,
    pub age_ms: i64,
    /// The self-tuning members' losses on the step, scored where it was learned.
    pub losses: Option<super::mixture::Losses>,
    /// `Past::visited`.
    #[serde(default)]
    pub visited: u64,
}

impl FlowModel {
    pub fn new(flow: &CompiledFlow) -> FlowModel {
        let n = flow.states.len();
        let mut prior = vec![0.0; n * n];
        let mut listed = vec![false; n * n];
        for &(f, t, c) in &flow.priors {
            prior[f as usize * n + t as usize] = c;
            listed[f as usize * n + t as usize] = true;
        }
        for (s, t) in flow.timeouts.iter().enumerate() {
            if let Some((_, a)) = t {
                // A timeout is a transition the operator declared, even without a count.
                listed[s * n + *a as usize] = true;
            }
        }
        FlowModel {
            n,
            kinds: flow.states.iter().map(|s| s.kind).collect(),
            timeout_target: flow.timeouts.iter().map(|t| t.map(|(_, a)| a)).collect(),
            listed,
            unlisted: flow.unlisted,
            prior_rows: (0..n)
                .map(|s| {
                    let row: Vec<(StateId, f64)> = (0..n)
                        .filter(|&t| prior[s * n + t] > 0.0)
                        .map(|t| (t as StateId, prior[s * n + t]))
                        .collect();
                    let total = row.iter().map(|(_, c)| c).sum();
                    (row, total)
                })
                .collect(),
            prior,
            prior_weight: flow.learning.prior_weight,
            obs: vec![0.0; n * n],
            obs_total: 0.0,
            obs_long: vec![0.0; n * n],
            dwell: HashMap::default(),
            dwell_state: vec![DwellHist::default(); n],
            contexts: HashMap::default(),
            dwell_contexts: HashMap::default(),
            calendar_contexts: HashMap::default(),
            visited_contexts: HashMap::default(),
            calendar: flow.learning.calendar,
            features: flow.learning.features.then(FeatureModel::default),
            mixture: flow.learning.auto.then(|| Mixture::new(n)),
            auto: flow.learning.auto,
            row_buf: Vec::new(),
            auto_fit: true,
            background_fit: false,
            // The self-tuning model keeps the contexts its deepest member reads.
            history: if flow.learning.auto {
                flow.learning.history.max(4)
            } else {
                flow.learning.history
            },
            min_observations: flow.learning.min_observations,
            use_dwell: flow.learning.use_dwell,
            half_life_ms: flow.learning.half_life_ms,
            epoch_ms: 0,
            now_ms: 0,
            decay: 1.0,
            changed: 0.0,
            solve_work: 0.0,
            calls_since_solve: 0,
            solved_at_ms: 0,
            solution: None,
            version: 0,
            frozen: false,
            surprise: Default::default(),
            outbox: None,
        }
    }

    pub fn is_listed(&self, from: StateId, to: StateId) -> bool {
        self.listed[from as usize * self.n + to as usize]
    }

    /// Whether an observed transition is learned, by the flow's policy for unlisted ones.
    pub fn learns(&self, from: StateId, to: StateId) -> bool {
        self.unlisted == Unlisted::Learn || self.is_listed(from, to)
    }

    /// Moves the model's clock; never backwards, and not at all once frozen.
    pub fn set_now(&mut self, now_ms: i64) {
        if self.frozen {
            return;
        }
        if self.now_ms == 0 && self.epoch_ms == 0 {
            self.epoch_ms = now_ms;
        }
        self.now_ms = self.now_ms.max(now_ms);
        self.decay = self.compute_decay();
    }

    /// Solves the chain at the current clock and stops the clock: decay no longer moves the
    /// weights, so the solution stays valid (`Engine::freeze`).
    pub fn freeze(&mut self) {
        // The walks behind the median remaining time start afresh from the final model (a
        // learning model reuses them until a quarter more transitions are seen).
        if let Some(sol) = self.solution.as_mut() {
            sol.remaining = Default::default();
        }
        self.refresh();
        self.frozen = true;
    }

    /// The stored weight of one observation at `now`, rebasing first if it would grow large.
    fn obs_weight(&mut self) -> f64 {
        let Some(hl) = self.half_life_ms else {
            return 1.0;
        };
        let exp = (self.now_ms - self.epoch_ms) as f64 / hl as f64;
        if exp > REBASE_EXP {
            self.rescale(2f64.powf(-exp));
            self.epoch_ms = self.now_ms;
            self.decay = self.compute_decay();
            return 1.0;
        }
        2f64.powf(exp)
    }

    /// The stored weight of an observation made at `at_ms`, no later than the clock.
    fn weight_at(&self, at_ms: i64) -> f64 {
        match self.half_life_ms {
            None => 1.0,
            Some(hl) => 2f64.powf((at_ms - self.epoch_ms) as f64 / hl as f64),
        }
    }

    fn rescale(&mut self, f: f64) {
        for x in self.obs.iter_mut() {
            *x *= f;
        }
        self.obs_total *= f;
        for h in self.dwell.values_mut() {
            h.scale(f);
        }
        for h in self.dwell_state.iter_mut() {
            h.scale(f);
        }
        for row in self
            .contexts
            .values_mut()
            .chain(self.dwell_contexts.values_mut())
            .chain(self.calendar_contexts.values_mut())
            .chain(self.visited_contexts.values_mut())
        {
            for (_, w) in row.iter_mut() {
                *w *= f;
            }
        }
    }

    /// Factor turning stored weights into effective weights at `now`.
    pub fn decay_factor(&self) -> f64 {
        debug_assert_eq!(self.decay.to_bits(), self.compute_decay().to_bits());
        self.decay
    }

    fn compute_decay(&self) -> f64 {
        match self.half_life_ms {
            None => 1.0,
            Some(hl) => 2f64.powf(-((self.now_ms - self.epoch_ms) as f64) / hl as f64),
        }
    }

    /// Learns one transition. `history` holds the states before `from`, oldest first.
    pub fn observe(&mut self, past: Past<'_>, from: StateId, to: StateId, dwell_ms: i64) {
        self.observe_at(past, from, to, dwell_ms, self.now_ms);
    }

    /// Learns one transition that happened at `at_ms` (at most the model's clock: a step
    /// held until its object ended, `engine::held`), with the weight it had then.
    pub fn observe_at(
        &mut self,
        past: Past<'_>,
        from: StateId,
        to: StateId,
        dwell_ms: i64,
        at_ms: i64,
    ) {
        let losses = self.mixture.take().map(|mut mx| {
            // Scored before it is learned: each member is judged on what it did not know. The
            // base row is computed from the counts as they are, not read from the cached
            // solution: which solution is cached depends on when predictions were asked for
            // (and a restart starts with none), so scores would differ between a replay and a
            // service restored from its snapshot (tests/service.rs's kill -9 test).
            let mut dense = std::mem::take(&mut self.row_buf);
            dense.clear();
            dense.resize(self.n, 0.0);
            let weight = if self.kinds[from as usize].is_final() {
                0.0
            } else {
                self.first_order_row(from as usize, self.decay_factor(), &mut dense)
            };
            let base: Vec<(StateId, f64)> = dense
                .iter()
                .enumerate()
                .filter(|(_, p)| **p > 0.0)
                .map(|(t, p)| (t as StateId, *p))
                .collect();
            let rows = self.rows(Some((&base[..], weight)), past, from);
            let losses = mx.losses(&rows, to);
            mx.add_losses(from, &losses);
            self.mixture = Some(mx);
            self.row_buf = dense;
            losses
        });
        let at_ms = at_ms.min(self.now_ms);
        self.learn(past, from, to, dwell_ms, at_ms);
        if let Some(outbox) = self.outbox.as_mut() {
            let mut history = [NONE; 4];
            let len = past.history.len().min(4);
            history[..len].copy_from_slice(&past.history[past.history.len() - len..]);
            outbox.push(Delta::Learn(Box::new(Learned {
                from,
                to,
                dwell_ms,
                at_ms,
                history,
                history_len: len as u8,
                last_dwell: past.last_dwell,
                prev_dwell: past.prev_dwell,
                entered_ms: past.entered_ms,
                age_ms: past.age_ms,
                losses,
                visited: past.visited,
            })));
        }
    }

    /// Keeps one step's surprise for the calibrated thresholds (and sends it to the other
    /// shards).
    pub fn record_surprise(&mut self, min_learned: u64, step: u8, window: u32) {
        self.surprise.record(min_learned, step, window);
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.push(Delta::Surprise { step, window });
        }
    }

    /// Applies what another shard learned (its `outbox`): the same counts as if the steps had
    /// been learned here, at their own event times, without scoring them again.
    pub fn apply_delta(&mut self, d: &Delta, min_learned: u64) {
        match d {
            Delta::Learn(l) => {
                if l.from as usize >= self.n || l.to as usize >= self.n {
                    return;
                }
                if let (Some(mx), Some(losses)) = (self.mixture.as_mut(), l.losses.as_ref()) {
                    mx.add_losses(l.from, losses);
                }
                let past = Past {
                    history: &l.history[..usize::from(l.history_len)],
                    last_dwell: l.last_dwell,
                    entered_ms: l.entered_ms,
                    prev_dwell: l.prev_dwell,
                    age_ms: l.age_ms,
                    visited: l.visited,
                };
                // The other shard's model clock may have moved further (a timer of its own).
                self.set_now(l.at_ms);
                self.learn(past, l.from, l.to, l.dwell_ms, l.at_ms);
            }
            Delta::Surprise { step, window } => self.surprise.record(min_learned, *step, *window),
        }
    }

    /// Learns one transition observed at `at_ms` (the model's clock, or earlier for a step
    /// another shard learned): counts, dwell, contexts, feature examples.
    fn learn(&mut self, past: Past<'_>, from: StateId, to: StateId, dwell_ms: i64, at_ms: i64) {
        let history = past.history;
        let w = if at_ms >= self.now_ms {
            self.obs_weight()
        } else {
            self.weight_at(at_ms)
        };
        let n = self.n;
        self.obs[from as usize * n + to as usize] += w;
        self.obs_total += w;
        self.obs_long[from as usize * n + to as usize] += 1.0;
        self.dwell.entry((from, to)).or_default().add(dwell_ms, w);
        if self.timeout_target[from as usize] != Some(to) {
            self.dwell_state[from as usize].add(dwell_ms, w);
        }
        // Contexts of length 2..=history ending in `from`.
        for len in 2..=self.history {
            if history.len() + 1 < len {
                break;
            }
            let ctx = context_key(&history[history.len() + 1 - len..], from);
            add_to_row(self.contexts.entry(ctx).or_default(), to, w);
        }
        if past.last_dwell != NO_DWELL {
            add_to_row(
                self.dwell_contexts
                    .entry((from, past.last_dwell))
                    .or_default(),
                to,
                w,
            );
        }
        if let Some(key) = self.calendar_key(past, from) {
            add_to_row(self.calendar_contexts.entry(key).or_default(), to, w);
        }
        if self.auto && past.visited != 0 {
            let key = (from, past.visited);
            if let Some(row) = self.visited_contexts.get_mut(&key) {
                add_to_row(row, to, w);
            } else if self.visited_contexts.len() < MAX_VISITED_CONTEXTS {
                add_to_row(self.visited_contexts.entry(key).or_default(), to, w);
            }
        }
        if let Some(fm) = self.features.as_mut() {
            fm.add(Example {
                at_ms,
                from,
                to,
                values: super::features::values(&past, from),
            });
        }
        self.changed += w * self.decay_factor();
    }

    /// The calendar context of an object in `state` with this past, if calendars are used.
    fn calendar_key(&self, past: Past<'_>, state: StateId) -> Option<CalendarKey> {
        // The self-tuning family keeps the week's classes with the dwell class.
        let (calendar, use_dwell) = if self.auto {
            (Calendar::Week, true)
        } else {
            (self.calendar, self.use_dwell)
        };
        if calendar == Calendar::Off || past.entered_ms == 0 {
            return None;
        }
        let dwell = if use_dwell { past.last_dwell } else { NO_DWELL };
        Some((state, dwell, calendar.class(past.entered_ms)))
    }

    /// Effective (decayed) observed count of one transition.
    pub fn observed(&self, from: StateId, to: StateId) -> f64 {
        self.obs[from as usize * self.n + to as usize] * self.decay_factor()
    }

    pub fn total_observed(&self) -> f64 {
        self.obs_total * self.decay_factor()
    }

    fn needs_refresh(&self) -> bool {
        if self.solution.is_none() {
            return true;
        }
        let total = self.total_observed();
        // Material change: 1% of the observed weight, or any change while the model is young.
        if self.changed > 0.0 && (self.changed >= 0.01 * total || total < 100.0) {
            return true;
        }
        // Decay alone moves every weight; 1.45% of a half-life moves them by 1%.
        match self.half_life_ms {
            Some(hl) => {
                total > 0.0 && (self.now_ms - self.solved_at_ms) as f64 > 0.0145 * hl as f64
            }
            None => false,
        }
    }

    /// The cached solution, refreshed first if the counts changed materially and the calls
    /// since the last solve have paid for another (see `SOLVE_WORK_PER_CALL`).
    pub fn solution(&mut self) -> &Solution {
        self.calls_since_solve += 1;
        let paid = self.calls_since_solve as f64 * SOLVE_WORK_PER_CALL >= self.solve_work;
        if self.solution.is_none() || (paid && self.needs_refresh()) {
            self.refresh();
        }
        let now = self.now_ms;
        if let Some(fm) = self.features.as_mut() {
            fm.collect();
        }
        if self.auto_fit
            && self
                .features
                .as_ref()
                .is_some_and(|f| !f.fitting() && f.needs_fit(now))
        {
            if self.background_fit {
                let rows = self
                    .solution
                    .as_ref()
                    .map(|s| s.succ.clone())
                    .unwrap_or_default();
                let hl = self.half_life_ms;
                if let Some(fm) = self.features.as_mut() {
                    fm.fit_in_background(now, rows, hl);
                }
            } else {
                self.fit_features();
            }
        }
        self.solution.as_ref().expect("refresh sets the solution")
    }

    /// Refits the feature model now (if the flow has one) on the current first-order rows.
    pub fn fit_features(&mut self) {
        let Some(mut fm) = self.features.take() else {
            return;
        };
        if self.solution.is_none() {
            self.refresh();
        }
        let sol = self.solution.as_ref().expect("refreshed");
        let (hl, now) = (self.half_life_ms, self.now_ms);
        fm.fit(
            now,
            |s| sol.succ[s as usize].clone(),
            |t| super::features::recency(hl, now, t),
        );
        self.features = Some(fm);
    }

    /// The cached solution without refreshing, if there is one.
    pub fn cached(&self) -> Option<&Solution> {
        self.solution.as_ref()
    }

    /// Solves the chain now, whatever the cache says.
    pub fn refresh(&mut self) {
        let n = self.n;
        let f = self.decay_factor();
        let mut p = vec![0.0; n * n];
        let mut row_weight = vec![0.0; n];
        for s in 0..n {
            if self.kinds[s].is_final() {
                continue;
            }
            row_weight[s] = self.first_order_row(s, f, &mut p[s * n..(s + 1) * n]);
        }
        let mean_dwell: Vec<f64> = (0..n)
            .map(|s| {
                let mut h = self.dwell_state[s].clone();
                if let Some(to) = self.timeout_target[s] {
                    if let Some(t) = self.dwell.get(&(s as StateId, to)) {
                        h.merge(t);
                    }
                }
                h.mean()
            })
            .collect();
        let finals: Vec<StateId> = (0..n)
            .filter(|&s| self.kinds[s].is_final())
            .map(|s| s as StateId)
            .collect();
        let (absorb, expected_ms, work) = solve_absorbing_counted(n, &p, &finals, &mean_dwell);
        let succ: Vec<Vec<(StateId, f64)>> = (0..n)
            .map(|s| {
                p[s * n..(s + 1) * n]
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| **x > 0.0)
                    .map(|(t, x)| (t as StateId, *x))
                    .collect()
            })
            .collect();
        self.version += 1;
        let observed: f64 = self.obs_long.iter().sum();
        let old = self.solution.take().map(|s| s.remaining);
        let remaining = match old {
            Some(c) if c.still_serves(n, observed) => c,
            _ => super::remaining::RemainingCache::new(
                observed,
                succ.clone(),
                self.dwell.clone(),
                self.dwell_state.clone(),
            ),
        };
        self.solution = Some(Solution {
            n,
            p,
            succ,
            row_weight,
            finals,
            absorb,
            expected_ms,
            version: self.version,
            remaining,
        });
        self.changed = 0.0;
        self.solve_work = work;
        self.calls_since_solve = 0;
        self.solved_at_ms = self.now_ms;
    }

    /// The first-order row of state `s` as probabilities into `row` (n wide), from the counts
    /// as they are now (`f` the decay factor); returns its effective weight.
    fn first_order_row(&self, s: usize, f: f64, row: &mut [f64]) -> f64 {
        let n = self.n;
        let mut total = 0.0;
        let mut recent = 0.0;
        for (t, x) in row.iter_mut().enumerate() {
            let o = self.obs[s * n + t] * f;
            *x = self.prior[s * n + t] * self.prior_weight + o;
            total += *x;
            recent += o;
        }
        // Recency weighting must not erase what a row knows: when decay has left a row
        // less than `min_observations` of weight (a rare state, a quiet period), its
        // long-run counts fill the gap (up to what decay took), so a state seen only
        // looping lately does not forget that it has exits.
        let floor = self.min_observations.max(1.0);
        if self.half_life_ms.is_some() && recent < floor {
            let long = &self.obs_long[s * n..(s + 1) * n];
            let long_total: f64 = long.iter().sum();
            // Never more than decay took away: a young row is left as it is.
            let k = floor.min(long_total) - recent;
            if k > 1e-9 {
                for (x, l) in row.iter_mut().zip(long) {
                    *x += k * l / long_total;
                }
                total += k;
            }
        }
        if total > 0.0 {
            for x in row.iter_mut() {
                *x /= total;
            }
        }
        total
    }

    /// The probability `next_distribution` gives `to`: with the self-tuning model, without
    /// building the distribution (surprise scoring: `engine::surprise`).
    pub fn probability_of(
        &self,
        sol: &Solution,
        past: Past<'_>,
        state: StateId,
        to: StateId,
        out: &mut Vec<(StateId, f64)>,
    ) -> f64 {
        let features = self
            .features
            .as_ref()
            .is_some_and(|fm| fm.weights.contains_key(&state));
        if let (Some(mx), false) = (&self.mixture, features) {
            let s = state as usize;
            let rows = self.rows(Some((&sol.succ[s][..], sol.row_weight[s])), past, state);
            return mx.probability(&rows, state, to);
        }
        self.next_distribution(sol, past, state, out);
        out.iter().find(|(s, _)| *s == to).map_or(0.0, |&(_, p)| p)
    }

    /// First-step distribution for an object in `state` with its `past`. The first-order row
    /// (priors and observations) is the base; the context of the time spent in the state before
    /// (when dwell times are used), then the calendar context (that dwell class and the time of
    /// day the state was entered, when calendars are used), then history contexts of growing
    /// length (claim 3), each refine it by interpolation: p = (n p_context + k p_shorter) /
    /// (n + k), with n the context's observed weight and k = `min_observations`. A context seen
    /// rarely leans on the shorter one; one seen often speaks for itself. With k = 0 the
    /// longest context seen wins. With the feature model on and weights fitted for `state`, the
    /// first-order row is corrected by them instead (engine/features.rs).
    pub fn next_distribution(
        &self,
        sol: &Solution,
        past: Past<'_>,
        state: StateId,
        out: &mut Vec<(StateId, f64)>,
    ) {
        out.clear();
        if let Some(fm) = &self.features {
            if fm.weights.contains_key(&state) {
                out.extend_from_slice(&sol.succ[state as usize]);
                fm.apply(state, &super::features::values(&past, state), out);
                return;
            }
        }
        if let Some(mx) = &self.mixture {
            let s = state as usize;
            let rows = self.rows(Some((&sol.succ[s][..], sol.row_weight[s])), past, state);
            mx.predict(&rows, state, out);
            return;
        }
        let f = self.decay_factor();
        let k = self.min_observations.max(0.0);
        let history = past.history;
        let mut rows: Vec<&Vec<(StateId, f64)>> = Vec::new();
        if self.use_dwell && past.last_dwell != NO_DWELL {
            if let Some(row) = self.dwell_contexts.get(&(state, past.last_dwell)) {
                rows.push(row);
            }
        }
        if let Some(row) = self
            .calendar_key(past, state)
            .and_then(|key| self.calendar_contexts.get(&key))
        {
            rows.push(row);
        }
        for len in 2..=self.history.min(history.len() + 1) {
            if let Some(row) = self
                .contexts
                .get(&context_key(&history[history.len() + 1 - len..], state))
            {
                rows.push(row);
            }
        }
        out.extend_from_slice(&sol.succ[state as usize]);
        for row in rows {
            let n: f64 = row.iter().map(|(_, w)| w * f).sum();
            if n <= 0.0 {
                continue;
            }
            // Without a base (nothing known first-order), the context alone.
            let (wc, wb) = if !out.is_empty() && k > 0.0 {
                (n / (n + k), k / (n + k))
            } else {
                (1.0, 0.0)
            };
            for (_, p) in out.iter_mut() {
                *p *= wb;
            }
            for &(s, w) in row {
                let add = wc * w * f / n;
                match out.iter_mut().find(|(t, _)| *t == s) {
                    Some((_, p)) => *p += add,
                    None => out.push((s, add)),
                }
            }
            out.retain(|(_, p)| *p > 0.0);
        }
    }

    /// The members that carry predictions for an object in `state`, with their weights
    /// (empty for a fixed model).
    pub fn leading_members(&self, state: StateId) -> std::collections::BTreeMap<String, f64> {
        self.mixture
            .as_ref()
            .map(|mx| {
                mx.leading(state)
                    .into_iter()
                    .map(|(m, w)| (m, super::round6(w)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rows the self-tuning family reads for an object in `state` with `past`: the base
    /// row of the solution (when there is one), the dwell context, the history contexts.
    pub fn rows<'a>(
        &'a self,
        base: Option<super::mixture::Row<'a>>,
        past: Past<'_>,
        state: StateId,
    ) -> Rows<'a> {
        let f = self.decay_factor();
        let weight = |row: &[(StateId, f64)]| row.iter().map(|(_, w)| w).sum::<f64>() * f;
        let mut rows = Rows::default();
        rows.rows[0] = base;
        if past.last_dwell != NO_DWELL {
            if let Some(row) = self.dwell_contexts.get(&(state, past.last_dwell)) {
                rows.rows[1] = Some((&row[..], weight(row)));
            }
        }
        let history = past.history;
        for len in 2..=self.history.min(history.len() + 1).min(4) {
            if let Some(row) = self
                .contexts
                .get(&context_key(&history[history.len() + 1 - len..], state))
            {
                rows.rows[len] = Some((&row[..], weight(row)));
            }
        }
        if let Some(row) = self
            .calendar_key(past, state)
            .and_then(|key| self.calendar_contexts.get(&key))
        {
            rows.rows[super::mixture::CALENDAR] = Some((&row[..], weight(row)));
        }
        if past.visited != 0 {
            if let Some(row) = self.visited_contexts.get(&(state, past.visited)) {
                rows.rows[super::mixture::VISITED] = Some((&row[..], weight(row)));
            }
        }
        let (prior, total) = &self.prior_rows[state as usize];
        if *total > 0.0 && self.prior_weight > 0.0 {
            rows.rows[super::mixture::PRIOR] = Some((&prior[..], total * self.prior_weight));
        }
        rows
    }

    /// Whether the time already spent in `state` can change its predictions: dwell times are
    /// used and the state has enough dwell data.
    pub fn time_matters(&self, state: StateId) -> bool {
        self.use_dwell
            && self.dwell_state[state as usize].total * self.decay_factor()
                >= self.min_observations.max(1.0)
    }

    /// The time in `state` after which no dwell histogram of its ways out changes any more
    /// (they all hold only shorter dwells), ms: the risk is constant from there on. The pooled
    /// histogram holds every way out but the timeout, whose survival is always 1.
    pub fn dwell_horizon(&self, state: StateId) -> f64 {
        self.dwell_state[state as usize].horizon()
    }

    /// Survival of the dwell before moving `from -> to`, given `elapsed_ms` spent in `from`.
    /// Not used until the state has `min_observations` of observed dwell (few samples would
    /// make every object slower than the slowest seen look doomed), and never below
    /// 1/(2(n+1)): n observations cannot rule out a dwell longer than all of them.
    fn survival(&self, from: StateId, to: StateId, elapsed_ms: f64) -> f64 {
        if !self.use_dwell || elapsed_ms <= 0.0 || self.timeout_target[from as usize] == Some(to) {
            return 1.0;
        }
        let f = self.decay_factor();
        let pooled = &self.dwell_state[from as usize];
        if pooled.total * f < self.min_observations.max(1.0) {
            return 1.0;
        }
        let h = match self.dwell.get(&(from, to)) {
            Some(h) if h.total * f >= 1.0 => h,
            _ => pooled,
        };
        let n = h.total * f;
        h.survival(elapsed_ms).max(0.5 / (n + 1.0))
    }

    /// `survival(from, to, e)` at every bucket boundary `e` (`DwellHist::boundaries`), by the
    /// same rules, in one pass over the histogram.
    pub fn survival_curve(
        &self,
        from: StateId,
        to: StateId,
        out: &mut [f64; super::dwell::BUCKETS],
    ) {
        *out = [1.0; super::dwell::BUCKETS];
        if !self.use_dwell || self.timeout_target[from as usize] == Some(to) {
            return;
        }
        let f = self.decay_factor();
        let pooled = &self.dwell_state[from as usize];
        if pooled.total * f < self.min_observations.max(1.0) {
            return;
        }
        let h = match self.dwell.get(&(from, to)) {
            Some(h) if h.total * f >= 1.0 => h,
            _ => pooled,
        };
        let floor = 0.5 / (h.total * f + 1.0);
        h.boundary_survivals(out);
        for v in out.iter_mut() {
            *v = v.max(floor);
        }
    }

    /// Risk of ending in each final state (aligned with `sol.finals`) for an object in `state`
    /// with `history`, having spent `elapsed_ms` there, into `risk_out`; the first-step
    /// distribution is left in `scratch`.
    /// The first step uses the history context and is re-weighted by the chance that each
    /// successor's dwell is still running after `elapsed_ms`; after it the chain is first-order.
    pub fn predict(
        &self,
        sol: &Solution,
        past: Past<'_>,
        state: StateId,
        elapsed_ms: f64,
        scratch: &mut Vec<(StateId, f64)>,
        risk_out: &mut Vec<f64>,
    ) {
        let k = sol.finals.len();
        risk_out.clear();
        risk_out.resize(k, 0.0);
        if self.kinds[state as usize].is_final() {
            risk_out.copy_from_slice(sol.absorb_row(state));
            scratch.clear();
            return;
        }
        self.next_distribution(sol, past, state, scratch);
        if elapsed_ms > 0.0 {
            let mut total = 0.0;
            for (to, p) in scratch.iter_mut() {
                *p *= self.survival(state, *to, elapsed_ms);
                total += *p;
            }
            if total > 0.0 {
                for (_, p) in scratch.iter_mut() {
                    *p /= total;
                }
            } else {
                // Longer than anything ever seen: fall back to the unconditioned distribution.
                self.next_distribution(sol, past, state, scratch);
            }
        }
        for &(to, p) in scratch.iter() {
            for (r, a) in risk_out.iter_mut().zip(sol.absorb_row(to)) {
                *r += p * a;
            }
        }
    }

    /// Expected time until the object reaches a final state, ms, from the first-step
    /// distribution `predict` left in `scratch`: the expected rest of the current dwell plus
    /// the expected time from each successor. Kept apart from `predict` because only alerts
    /// and queries need it.
    pub fn expected_remaining(
        &self,
        sol: &Solution,
        state: StateId,
        elapsed_ms: f64,
        scratch: &[(StateId, f64)],
    ) -> f64 {
        scratch
            .iter()
            .map(|&(to, p)| {
                let residual = match self.dwell.get(&(state, to)) {
                    Some(h) if h.total > 0.0 => h.mean_residual(elapsed_ms),
                    _ => self.dwell_state[state as usize].mean_residual(elapsed_ms),
                };
                p * (residual + sol.expected_ms[to as usize])
            })
            .sum::<f64>()
            .max(0.0)
    }

    /// Builds the stored-form counts back from a snapshot (see `snapshot.rs`).
    pub fn restore_epoch(&mut self, epoch_ms: i64, now_ms: i64) {
        self.epoch_ms = epoch_ms;
        self.now_ms = now_ms;
        self.decay = self.compute_decay();
        self.solution = None;
    }

    pub fn timeout_target(&self, s: StateId) -> Option<StateId> {
        self.timeout_target[s as usize]
    }

    pub fn kind(&self, s: StateId) -> Kind {
        self.kinds[s as usize]
    }
}

/// A stored row by state names, back to ids; states that no longer exist are left out.
fn row_by_id(
    next: &[(String, f64)],
    id_of: &impl Fn(&str) -> Option<StateId>,
) -> Vec<(StateId, f64)> {
    next.iter()
        .filter_map(|(s, w)| id_of(s).map(|id| (id, *w)))
        .collect()
}

fn add_to_row(row: &mut Vec<(StateId, f64)>, to: StateId, w: f64) {
    match row.iter_mut().find(|(s, _)| *s == to) {
        Some((_, c)) => *c += w,
        None => row.push((to, w)),
    }
}

pub fn context_key(before: &[StateId], last: StateId) -> Context {
    let mut k = [NONE; 4];
    let len = before.len() + 1;
    k[..before.len()].copy_from_slice(before);
    k[len - 1] = last;
    k
}

/// Solves the absorbing chain: for every state, the probability of ending in each final state
/// and the expected time to get there. States that cannot reach any final state (no data, or a
/// closed loop) get zero probabilities and zero time rather than making the system singular.
///
/// The chain is split into strongly connected components, solved sinks first (Tarjan's order):
/// a component only depends on components already solved, so each is a small dense system
/// (m x m for a component of m states: a retry loop), and a flow without loops costs one pass
/// over its edges. Exact, like one dense solve of the whole chain, and O(edges) for chains.
pub fn solve_absorbing(
    n: usize,
    p: &[f64],
    finals: &[StateId],
    mean_dwell: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let (absorb, expected, _) = solve_absorbing_counted(n, p, finals, mean_dwell);
    (absorb, expected)
}

/// `solve_absorbing`, also returning the steps it took: n x n to read the rows, and m x m x
/// (m + finals) to eliminate each component of m states.
pub fn solve_absorbing_counted(
    n: usize,
    p: &[f64],
    finals: &[StateId],
    mean_dwell: &[f64],
) -> (Vec<f64>, Vec<f64>, f64) {
    let mut work = (n * n) as f64;
    let k = finals.len();
    let mut final_col = vec![usize::MAX; n];
    for (i, &f) in finals.iter().enumerate() {
        final_col[f as usize] = i;
    }
    // Sparse successors of each transient state.
    let succ: Vec<Vec<(usize, f64)>> = (0..n)
        .map(|s| {
            if final_col[s] != usize::MAX {
                return Vec::new();
            }
            (0..n)
                .filter(|&t| p[s * n + t] > 0.0)
                .map(|t| (t, p[s * n + t]))
                .collect()
        })
        .collect();
    // Which states reach a final state with positive probability: a search backwards from them.
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (s, row) in succ.iter().enumerate() {
        for &(t, _) in row {
            pred[t].push(s);
        }
    }
    let mut reaches: Vec<bool> = (0..n).map(|s| final_col[s] != usize::MAX).collect();
    let mut queue: Vec<usize> = (0..n).filter(|&s| reaches[s]).collect();
    while let Some(t) = queue.pop() {
        for &s in &pred[t] {
            if !reaches[s] {
                reaches[s] = true;
                queue.push(s);
            }
        }
    }
    let mut absorb = vec![0.0; n * k];
    let mut expected = vec![0.0; n];
    for (fi, &f) in finals.iter().enumerate() {
        absorb[f as usize * k + fi] = 1.0;
    }
    for comp in tarjan(n, &succ, &reaches, &final_col) {
        let m = comp.len();
        let mut pos = vec![usize::MAX; 0];
        if m > 1 {
            pos = vec![usize::MAX; n];
            for (i, &s) in comp.iter().enumerate() {
                pos[s] = i;
            }
        }
        // Right-hand sides: what leaves the component, to solved states or finals.
        let w = m + k + 1;
        let mut a = vec![0.0; m * w];
        for (i, &s) in comp.iter().enumerate() {
            a[i * w + i] = 1.0;
            for &(t, pt) in &succ[s] {
                let inside = if m == 1 { t == s } else { pos[t] != usize::MAX };
                if inside {
                    let j = if m == 1 { 0 } else { pos[t] };
                    a[i * w + j] -= pt;
                } else if reaches[t] {
                    for fi in 0..k {
                        a[i * w + m + fi] += pt * absorb[t * k + fi];
                    }
                    a[i * w + m + k] += pt * expected[t];
                }
            }
            a[i * w + m + k] += mean_dwell[s];
        }
        work += (m * m * w) as f64;
        gauss(&mut a, m, w);
        for (i, &s) in comp.iter().enumerate() {
            for fi in 0..k {
                absorb[s * k + fi] = a[i * w + m + fi].clamp(0.0, 1.0);
            }
            expected[s] = a[i * w + m + k].max(0.0);
        }
    }
    (absorb, expected, work)
}

/// Gaussian elimination with partial pivoting on an m x w augmented matrix, in place.
fn gauss(a: &mut [f64], m: usize, w: usize) {
    for col in 0..m {
        let piv = (col..m)
            .max_by(|&x, &y| a[x * w + col].abs().total_cmp(&a[y * w + col].abs()))
            .unwrap_or(col);
        if a[piv * w + col].abs() < 1e-300 {
            continue;
        }
        if piv != col {
            for j in 0..w {
                a.swap(piv * w + j, col * w + j);
            }
        }
        let d = a[col * w + col];
        for j in col..w {
            a[col * w + j] /= d;
        }
        for r in 0..m {
            if r == col {
                continue;
            }
            let factor = a[r * w + col];
            if factor == 0.0 {
                continue;
            }
            for j in col..w {
                a[r * w + j] -= factor * a[col * w + j];
            }
        }
    }
}

/// Strongly connected components of the transient states that reach a final state, sinks
/// first. Iterative (a flow may have thousands of states; no recursion, no stack overflow).
fn tarjan(
    n: usize,
    succ: &[Vec<(usize, f64)>],
    reaches: &[bool],
    final_col: &[usize],
) -> Vec<Vec<usize>> {
    let member = |s: usize| reaches[s] && final_col[s] == usize::MAX;
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut next = 0;
    for root in 0..n {
        if !member(root) || index[root] != usize::MAX {
            continue;
        }
        // (state, position in its successor list)
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            if *i < succ[v].len() {
                let t = succ[v][*i].0;
                *i += 1;
                if !member(t) {
                    continue;
                }
                if index[t] == usize::MAX {
                    index[t] = next;
                    low[t] = next;
                    next += 1;
                    stack.push(t);
                    on_stack[t] = true;
                    call.push((t, 0));
                } else if on_stack[t] {
                    low[v] = low[v].min(index[t]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    while let Some(x) = stack.pop() {
                        on_stack[x] = false;
                        comp.push(x);
                        if x == v {
                            break;
                        }
                    }
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// The learned (observed) part of a model, by state names, as stored in a state directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnedCounts {
    pub epoch_ms: i64,
    pub now_ms: i64,
    pub transitions: Vec<LearnedTransition>,
    #[serde(default)]
    pub contexts: Vec<LearnedContext>,
    #[serde(default)]
    pub dwell_contexts: Vec<LearnedDwellContext>,
    #[serde(default)]
    pub calendar_contexts: Vec<LearnedCalendarContext>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub visited_contexts: Vec<LearnedVisitedContext>,
    /// The transitions the feature model is fitted on (`learn { features on }`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_examples: Vec<super::features::LearnedExample>,
    /// The self-tuning model's losses per member (`learn { model auto }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixture: Option<super::mixture::LearnedMixture>,
    /// The surprises of learned steps (calibrated anomaly thresholds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surprise: Option<super::surprise::Calibration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedCalendarContext {
    pub state: String,
    /// `dwell_bucket` of the previous state; absent when unknown or not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_class: Option<u8>,
    pub calendar_class: u8,
    pub next: Vec<(String, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedVisitedContext {
    pub state: String,
    /// The states the objects had been in, in the flow's order.
    pub visited: Vec<String>,
    pub next: Vec<(String, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedDwellContext {
    pub state: String,
    pub dwell_class: u8,
    pub next: Vec<(String, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedTransition {
    pub from: String,
    pub to: String,
    /// Stored (scaled by the epoch) weight.
    pub weight: f64,
    /// Observed count without decay.
    #[serde(default)]
    pub count: f64,
    pub dwell: DwellHist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedContext {
    pub states: Vec<String>,
    pub next: Vec<(String, f64)>,
}

impl FlowModel {
    pub fn export(&self, names: &[String]) -> LearnedCounts {
        let mut transitions = Vec::new();
        for s in 0..self.n {
            for t in 0..self.n {
                let w = self.obs[s * self.n + t];
                let count = self.obs_long[s * self.n + t];
                if w > 0.0 || count > 0.0 {
                    transitions.push(LearnedTransition {
                        from: names[s].clone(),
                        to: names[t].clone(),
                        weight: w,
                        count,
                        dwell: self
                            .dwell
                            .get(&(s as StateId, t as StateId))
                            .cloned()
                            .unwrap_or_default(),
                    });
                }
            }
        }
        let mut contexts: Vec<LearnedContext> = self
            .contexts
            .iter()
            .map(|(ctx, row)| LearnedContext {
                states: ctx
                    .iter()
                    .take_while(|&&s| s != NONE)
                    .map(|&s| names[s as usize].clone())
                    .collect(),
                next: row
                    .iter()
                    .map(|&(s, w)| (names[s as usize].clone(), w))
                    .collect(),
            })
            .collect();
        contexts.sort_by(|a, b| a.states.cmp(&b.states));
        let mut dwell_contexts: Vec<LearnedDwellContext> = self
            .dwell_contexts
            .iter()
            .map(|((s, d), row)| LearnedDwellContext {
                state: names[*s as usize].clone(),
                dwell_class: *d,
                next: row
                    .iter()
                    .map(|&(t, w)| (names[t as usize].clone(), w))
                    .collect(),
            })
            .collect();
        dwell_contexts.sort_by(|a, b| (&a.state, a.dwell_class).cmp(&(&b.state, b.dwell_class)));
        let mut calendar_contexts: Vec<LearnedCalendarContext> = self
            .calendar_contexts
            .iter()
            .map(|((s, d, c), row)| LearnedCalendarContext {
                state: names[*s as usize].clone(),
                dwell_class: (*d != NO_DWELL).then_some(*d),
                calendar_class: *c,
                next: row
                    .iter()
                    .map(|&(t, w)| (names[t as usize].clone(), w))
                    .collect(),
            })
            .collect();
        calendar_contexts.sort_by(|a, b| {
            (&a.state, a.dwell_class, a.calendar_class).cmp(&(
                &b.state,
                b.dwell_class,
                b.calendar_class,
            ))
        });
        let mut visited_contexts: Vec<LearnedVisitedContext> = self
            .visited_contexts
            .iter()
            .map(|((s, v), row)| LearnedVisitedContext {
                state: names[*s as usize].clone(),
                visited: visited_names(*v, names),
                next: row
                    .iter()
                    .map(|&(t, w)| (names[t as usize].clone(), w))
                    .collect(),
            })
            .collect();
        visited_contexts.sort_by(|a, b| (&a.state, &a.visited).cmp(&(&b.state, &b.visited)));
        LearnedCounts {
            epoch_ms: self.epoch_ms,
            now_ms: self.now_ms,
            transitions,
            contexts,
            dwell_contexts,
            calendar_contexts,
            visited_contexts,
            feature_examples: self
                .features
                .as_ref()
                .map(|f| f.export(names))
                .unwrap_or_default(),
            mixture: self.mixture.as_ref().map(|m| m.export(names)),
            surprise: (self.surprise.scored > 0).then(|| self.surprise.clone()),
        }
    }

    /// Loads learned counts, keeping only what still exists in this flow (by state name).
    /// Returns how many transitions were dropped because a state is gone.
    pub fn import(
        &mut self,
        learned: &LearnedCounts,
        id_of: impl Fn(&str) -> Option<StateId>,
    ) -> usize {
        self.restore_epoch(learned.epoch_ms, learned.now_ms);
        let mut dropped = 0;
        for t in &learned.transitions {
            let (Some(s), Some(d)) = (id_of(&t.from), id_of(&t.to)) else {
                dropped += 1;
                continue;
            };
            if self.kinds[s as usize].is_final() || !self.learns(s, d) {
                dropped += 1;
                continue;
            }
            self.obs[s as usize * self.n + d as usize] += t.weight;
            self.obs_long[s as usize * self.n + d as usize] += t.count;
            self.obs_total += t.weight;
            self.dwell.entry((s, d)).or_default().merge(&t.dwell);
            if self.timeout_target[s as usize] != Some(d) {
                self.dwell_state[s as usize].merge(&t.dwell);
            }
        }
        for c in &learned.contexts {
            let ids: Option<Vec<StateId>> = c.states.iter().map(|s| id_of(s)).collect();
            let Some(ids) = ids else { continue };
            if ids.len() < 2 || ids.len() > 4 || ids.len() > self.history {
                continue;
            }
            let ctx = context_key(&ids[..ids.len() - 1], ids[ids.len() - 1]);
            self.contexts.insert(ctx, row_by_id(&c.next, &id_of));
        }
        for c in &learned.dwell_contexts {
            let Some(s) = id_of(&c.state) else { continue };
            self.dwell_contexts
                .insert((s, c.dwell_class), row_by_id(&c.next, &id_of));
        }
        for c in &learned.calendar_contexts {
            let Some(s) = id_of(&c.state) else { continue };
            let key = (s, c.dwell_class.unwrap_or(NO_DWELL), c.calendar_class);
            self.calendar_contexts
                .insert(key, row_by_id(&c.next, &id_of));
        }
        if self.n <= 64 {
            for c in &learned.visited_contexts {
                let Some(s) = id_of(&c.state) else { continue };
                // A set naming a state that is gone is another set: dropped.
                let ids: Option<Vec<StateId>> = c.visited.iter().map(|v| id_of(v)).collect();
                let Some(ids) = ids else { continue };
                let v = ids.into_iter().fold(0, |a, x| a | visited_bit(x));
                if v != 0
                    && (self.visited_contexts.contains_key(&(s, v))
                        || self.visited_contexts.len() < MAX_VISITED_CONTEXTS)
                {
                    self.visited_contexts
                        .insert((s, v), row_by_id(&c.next, &id_of));
                }
            }
        }
        if let Some(fm) = self.features.as_mut() {
            fm.import(&learned.feature_examples, &id_of);
        }
        if let (Some(mx), Some(l)) = (self.mixture.as_mut(), learned.mixture.as_ref()) {
            mx.import(l, &id_of);
        }
        if let Some(c) = &learned.surprise {
            self.surprise.merge(c);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_chain_with_a_retry_loop() {
        // 0 -> 1 (1.0); 1 -> 0 (0.5), 1 -> 2 final ok (0.3), 1 -> 3 final bad (0.2)
        let n = 4;
        let mut p = vec![0.0; n * n];
        p[1] = 1.0;
        p[4] = 0.5;
        p[4 + 2] = 0.3;
        p[4 + 3] = 0.2;
        let (absorb, expected) = solve_absorbing(n, &p, &[2, 3], &[10.0, 20.0, 0.0, 0.0]);
        // From 1: bad = 0.2 / (0.3 + 0.2) = 0.4 whatever the loop.
        assert!((absorb[2 + 1] - 0.4).abs() < 1e-12);
        assert!((absorb[1] - 0.4).abs() < 1e-12);
        // Expected time from 0: visits of (0,1) pairs = 1 / 0.5 = 2, each 30 ms.
        assert!((expected[0] - 60.0).abs() < 1e-9, "{}", expected[0]);
    }

    #[test]
    fn a_closed_loop_does_not_make_the_system_singular() {
        let n = 3;
        let mut p = vec![0.0; n * n];
        p[1] = 1.0; // 0 -> 1
        p[3] = 1.0; // 1 -> 0
        let (absorb, _) = solve_absorbing(n, &p, &[2], &[1.0, 1.0, 0.0]);
        assert_eq!(absorb[0], 0.0);
        assert_eq!(absorb[1], 0.0);
    }
}
