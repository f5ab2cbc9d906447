//! The self-tuning model (`learn { model auto }`, the default): a family of next-state
//! predictors over the same learned counts, weighed online by how well each has predicted.
//!
//! Every member is one way of reading the counts a flow keeps anyway: the first-order row
//! (priors and observations), refined by the context of the dwell class of the previous
//! state ([0102]) and by history contexts of length 2..=4 (claim 3), each interpolated with
//! what comes before it at a strength `k` (the `min_observations` of a fixed model). The
//! members differ in the history order, `k` and whether the dwell context is used: the grid
//! an analyst would search, without the test data.
//!
//! Each member's distribution is a linear combination of a few normalised rows (the base
//! row, the context rows an object can have, the a priori row), so a member is just a few
//! coefficients, computed in a few multiplications. The family also reads the context of the
//! set of states the object has been in (`markov::Past::visited`). Before a transition is learned, the
//! probability each member gave it is scored (log-loss, past only: prequential), per state
//! the object left. A state's weights are the Bayesian posterior over the members given the
//! losses on its own transitions, the flow-wide losses acting as its prior (worth
//! `PRIOR_STRENGTH` of the state's own observations), both discounted so that a member that
//! starts to predict better takes over within about `WINDOW` transitions. The prediction is
//! the weighted mixture of the members' distributions.

use crate::model::StateId;
use serde::{Deserialize, Serialize};

/// One member of the family.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Member {
    /// History order (1 = the state alone).
    pub history: u8,
    /// Interpolation strength: the observed weight a context needs to count as much as the
    /// shorter one it refines.
    pub k: f64,
    /// Refine by the dwell class of the previous state.
    pub dwell: bool,
    /// Refine by the calendar context: that dwell class and the UTC time of the week (3-hour
    /// classes, weekends apart) the object entered its state.
    pub calendar: bool,
    /// Refine by the set of states the object has been in (`markov::Past::visited`).
    pub visited: bool,
}

impl Member {
    pub fn label(&self) -> String {
        let mut s = format!("h{}", self.history);
        if self.history > 1 || self.dwell {
            s.push_str(&format!(" k{}", self.k));
        }
        if self.dwell {
            s.push_str(" dwell");
        }
        if self.calendar {
            s.push_str(" week");
        }
        if self.visited {
            s.push_str(&format!(" k{} seen", self.k));
        }
        s
    }

    /// `slots()` as a small array (no iterator chain in the hot path).
    fn slot_list(&self) -> arrayvec_lite::Slots {
        let mut out = arrayvec_lite::Slots::default();
        for s in self.slots() {
            out.push(s);
        }
        out
    }

    /// The row slots this member reads after the base, in order: 1 = the dwell context,
    /// 5 = the calendar context, 2..=4 = the history contexts of that length.
    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.dwell
            .then_some(1)
            .into_iter()
            .chain(self.calendar.then_some(CALENDAR))
            .chain(self.visited.then_some(VISITED))
            .chain(2..=self.history as usize)
    }
}

/// A fixed-capacity list of slots.
mod arrayvec_lite {
    #[derive(Default, Clone, Copy)]
    pub struct Slots {
        items: [usize; 6],
        len: usize,
    }

    impl Slots {
        pub fn push(&mut self, s: usize) {
            if self.len < self.items.len() {
                self.items[self.len] = s;
                self.len += 1;
            }
        }

        pub fn iter(&self) -> std::slice::Iter<'_, usize> {
            self.items[..self.len].iter()
        }
    }
}

/// The slot of the calendar context row.
pub const CALENDAR: usize = 5;
/// The slot of the state's a priori row (claim 4), with the weight of its counts.
pub const PRIOR: usize = 6;
/// The slot of the visited-set context row.
pub const VISITED: usize = 7;
/// Row slots: the base, the dwell context, three history contexts, the calendar context, the
/// a priori row, the visited-set context.
pub const SLOTS: usize = 8;

/// The family: history 1 to 4, `k` 0, 1 and 10, with and without the dwell context (the
/// first-order chain alone once: `k` changes nothing there); history 1 to 3 with the dwell
/// and calendar contexts, `k` 1 and 10 (a calendar context is sparse: never alone); and the
/// state with the set of states the object has been in, `k` 0, 1 and 10 (in a process whose
/// steps repeat, what was done already says what comes next; order aside, it is what a
/// case's activity counts tell a learned classifier).
pub fn family() -> Vec<Member> {
    let mut out = vec![Member {
        history: 1,
        k: 10.0,
        dwell: false,
        calendar: false,
        visited: false,
    }];
    for history in 1..=4u8 {
        for dwell in [false, true] {
            if history == 1 && !dwell {
                continue;
            }
            for k in [0.0, 1.0, 10.0] {
                out.push(Member {
                    history,
                    k,
                    dwell,
                    calendar: false,
                    visited: false,
                });
            }
        }
    }
    for history in 1..=3u8 {
        for k in [1.0, 10.0] {
            out.push(Member {
                history,
                k,
                dwell: true,
                calendar: true,
                visited: false,
            });
        }
    }
    for k in [0.0, 1.0, 10.0] {
        out.push(Member {
            history: 1,
            k,
            dwell: false,
            calendar: false,
            visited: true,
        });
    }
    out
}

/// Transitions over which a state's losses are discounted (their effective memory).
pub const WINDOW: f64 = 2000.0;
/// How many of a state's own observations the flow-wide losses count for, as its prior.
pub const PRIOR_STRENGTH: f64 = 20.0;
/// Probability mixed into every member's prediction so that no loss is infinite: a member
/// sure of the wrong successor is charged -ln(EPSILON / n), not infinity.
pub const EPSILON: f64 = 0.01;
/// Scored transitions between two refreshes of every state's weights from the flow-wide
/// losses (in between, only the state a transition left is reweighed).
const REFRESH_EVERY: u64 = 256;
/// Members whose weight falls below this share are left out of a prediction.
const NEGLIGIBLE: f64 = 1e-4;

/// The rows an object's prediction reads, slot 0 the base row (already probabilities), slots
/// 1..=5 the dwell, history and calendar context rows (stored weights), slot 6 the a priori
/// row (counts), slot 7 the visited-set context row, each with its effective weight.
#[derive(Default)]
pub struct Rows<'a> {
    pub rows: [Option<Row<'a>>; SLOTS],
}

/// A row of (successor, weight) and its effective total weight.
pub type Row<'a> = (&'a [(StateId, f64)], f64);

impl<'a> Rows<'a> {
    /// `row`'s share for `to` (0 when absent).
    fn q(&self, slot: usize, to: StateId) -> f64 {
        let Some((row, _)) = self.rows[slot] else {
            return 0.0;
        };
        let mut total = 0.0;
        let mut hit = 0.0;
        for &(s, w) in row {
            total += w;
            if s == to {
                hit = w;
            }
        }
        if total > 0.0 {
            hit / total
        } else {
            0.0
        }
    }
}

/// The coefficients of each slot in `member`'s distribution, step by step as the fixed model
/// interpolates (the reference `Prepared::coefficients` is checked against).
#[cfg(test)]
fn coefficients(member: &Member, rows: &Rows<'_>) -> [f64; SLOTS] {
    let mut a = [0.0; SLOTS];
    let mut nonempty = false;
    if let Some((row, _)) = rows.rows[0] {
        if !row.is_empty() {
            a[0] = 1.0;
            nonempty = true;
        }
    }
    for slot in member.slots() {
        let Some((row, n)) = rows.rows[slot] else {
            continue;
        };
        if n <= 0.0 || row.is_empty() {
            continue;
        }
        // The operator's a priori counts hold in every context (claim 4): a context row is
        // its observations plus the state's prior counts at the flow's prior weight, so that
        // contexts seen only in healthy times do not forget the failures the operator expects.
        let prior = rows.rows[PRIOR].map_or(0.0, |(_, w)| w);
        let own = n / (n + prior);
        if nonempty && member.k > 0.0 {
            let (wc, wb) = (n / (n + member.k), member.k / (n + member.k));
            for x in a.iter_mut() {
                *x *= wb;
            }
            a[slot] += wc * own;
            a[PRIOR] += wc * (1.0 - own);
        } else {
            a = [0.0; SLOTS];
            a[slot] = own;
            a[PRIOR] = 1.0 - own;
        }
        nonempty = true;
    }
    a
}

/// The values of one object's rows every member reads, computed once per prediction: which
/// slots are present, each slot's interpolation weight n / (n + k) for the family's three
/// `k`, and its own share n / (n + prior) against the a priori counts.
struct Prepared {
    base: bool,
    present: [bool; SLOTS],
    wc: [[f64; KS.len()]; SLOTS],
    own: [f64; SLOTS],
}

/// The most members a family has (`family()` has 31).
const MAX_MEMBERS: usize = 32;
/// One scored step's loss per member (the first `members.len()` are used).
pub type Losses = [f64; MAX_MEMBERS];

/// The context slots that can be present or absent (the base and the a priori row are not
/// grouped on): 1..=5 and `VISITED`.
const CONTEXT_SLOTS: [usize; 6] = [1, 2, 3, 4, CALENDAR, VISITED];

/// A group of members for one combination of present context slots: the present slots its
/// members read, in member order, and the index of their `k` in `KS`.
#[derive(Debug, Clone, Copy, Default)]
struct GroupDef {
    slots: [u8; 6],
    len: u8,
    ki: u8,
}

/// How `family()` falls into groups for one combination of present context slots.
#[derive(Debug, Clone)]
struct Table {
    groups: Vec<GroupDef>,
    /// The group (index into `groups`) of each member.
    of_member: [u8; MAX_MEMBERS],
}

/// The index of a present-slot mask (bits by slot) among the 64 combinations of
/// `CONTEXT_SLOTS`.
fn table_index(present: u8) -> usize {
    CONTEXT_SLOTS
        .iter()
        .enumerate()
        .fold(0, |a, (i, &s)| a | usize::from(present >> s & 1) << i)
}

/// The family's groups for every combination of present context slots, made once per process
/// (every mixture has the same family): grouping members by a lookup instead of comparing
/// them, and each group's slots already filtered, is what keeps 31 members affordable per step.
fn tables() -> &'static [Table] {
    static TABLES: std::sync::OnceLock<Vec<Table>> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let family = family();
        (0..1u32 << CONTEXT_SLOTS.len())
            .map(|combo| {
                let present = CONTEXT_SLOTS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| combo >> i & 1 != 0)
                    .fold(0u8, |a, (_, &s)| a | 1 << s);
                let mut keys: Vec<(u8, u8)> = Vec::new();
                let mut table = Table {
                    groups: Vec::new(),
                    of_member: [0; MAX_MEMBERS],
                };
                for (i, m) in family.iter().enumerate() {
                    let ki = KS.iter().position(|&k| k == m.k).unwrap_or(2) as u8;
                    let mut def = GroupDef {
                        ki,
                        ..GroupDef::default()
                    };
                    let mut mask = 0u8;
                    for &s in m.slot_list().iter() {
                        if present >> s & 1 != 0 {
                            def.slots[def.len as usize] = s as u8;
                            def.len += 1;
                            mask |= 1 << s;
                        }
                    }
                    let g = match keys.iter().position(|&k| k == (mask, ki)) {
                        Some(g) => g,
                        None => {
                            keys.push((mask, ki));
                            table.groups.push(def);
                            keys.len() - 1
                        }
                    };
                    table.of_member[i] = g as u8;
                }
                table
            })
            .collect()
    })
}

/// The interpolation strengths of the family, by index (`Member::k`).
const KS: [f64; 3] = [0.0, 1.0, 10.0];

impl Prepared {
    fn new(rows: &Rows<'_>) -> Prepared {
        let prior = rows.rows[PRIOR].map_or(0.0, |(_, w)| w);
        let mut p = Prepared {
            base: rows.rows[0].is_some_and(|(row, _)| !row.is_empty()),
            present: [false; SLOTS],
            wc: [[0.0; KS.len()]; SLOTS],
            own: [1.0; SLOTS],
        };
        for slot in 1..SLOTS {
            if slot == PRIOR {
                continue;
            }
            if let Some((row, n)) = rows.rows[slot] {
                if n > 0.0 && !row.is_empty() {
                    p.present[slot] = true;
                    for (i, k) in KS.iter().enumerate() {
                        p.wc[slot][i] = n / (n + k);
                    }
                    p.own[slot] = n / (n + prior);
                }
            }
        }
        p
    }

    /// The present context slots, a bit each.
    fn present_mask(&self) -> u8 {
        (0..SLOTS)
            .filter(|&s| self.present[s])
            .fold(0u8, |a, s| a | 1 << s)
    }

    /// The raw coefficients of a group of members (its present slots, in member order):
    /// `coefficients` before each context's share is split with the a priori row
    /// (`split`), passed to `f` as (slot, coefficient). Walking the slots backwards, each
    /// takes its weight times what the later ones left (the running product of their
    /// k / (n + k)), the base what is left at the end; a slot where the forward walk starts
    /// afresh (k = 0, or nothing before it) ends the walk.
    #[inline]
    fn walk(&self, g: &GroupDef, mut f: impl FnMut(usize, f64)) {
        let ki = usize::from(g.ki);
        let fresh = KS[ki] <= 0.0;
        let slots = &g.slots[..usize::from(g.len)];
        let mut mult = 1.0;
        for (i, &s) in slots.iter().enumerate().rev() {
            let s = usize::from(s);
            if fresh || (!self.base && i == 0) {
                f(s, mult);
                return;
            }
            let wc = self.wc[s][ki];
            f(s, mult * wc);
            mult *= 1.0 - wc;
        }
        if self.base {
            f(0, mult);
        }
    }

    /// Raw coefficients (`walk`, summed over groups: the map is linear) to the coefficients
    /// of the rows: a context's share is its own n / (n + prior), the rest goes to the a
    /// priori row (claim 4).
    fn split(&self, raw: [f64; SLOTS]) -> [f64; SLOTS] {
        let mut a = raw;
        for s in 1..SLOTS {
            if s != PRIOR && a[s] > 0.0 {
                a[PRIOR] += a[s] * (1.0 - self.own[s]);
                a[s] *= self.own[s];
            }
        }
        a
    }

    /// `coefficients`, from the prepared values, for a group of members.
    #[cfg(test)]
    fn coefficients(&self, g: &GroupDef) -> [f64; SLOTS] {
        let mut raw = [0.0; SLOTS];
        self.walk(g, |s, c| raw[s] = c);
        self.split(raw)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    pub members: Vec<Member>,
    /// Each state's normalised weights, n x members, kept up to date as transitions are
    /// scored (a prediction reads them; it never computes them: what it sees depends only on
    /// what was learned, not on when something else was predicted).
    cached: Vec<f64>,
    /// The flow-wide losses, scaled as a prior, as of the last full refresh (every
    /// `REFRESH_EVERY` scored transitions).
    prior_loss: Vec<f64>,
    /// Number of states.
    n: usize,
    /// Discounted log-loss of each member on each state's transitions, n x members.
    state_loss: Vec<f64>,
    /// Discounted number of transitions scored per state.
    state_seen: Vec<f64>,
    /// Discounted log-loss of each member over the whole flow, and the transitions behind it.
    loss: Vec<f64>,
    seen: f64,
    /// Mean log-loss of each member over about the last `WINDOW` transitions (for people).
    pub recent: Vec<f64>,
    /// Transitions scored.
    pub scored: u64,
}

/// One member as people see it (`flowcast model`, the API, `/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberSummary {
    pub member: String,
    pub weight: f64,
    /// Mean log-loss (natural log) over about the last `WINDOW` transitions.
    pub recent_log_loss: f64,
}

/// A mixture's state as stored in a state directory, by state names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnedMixture {
    /// Member labels, in order (a family that changed is started afresh).
    pub members: Vec<String>,
    pub loss: Vec<f64>,
    pub seen: f64,
    pub recent: Vec<f64>,
    pub scored: u64,
    pub states: Vec<LearnedStateLoss>,
    /// The flow-wide prior of every state's weights as of the last full refresh.
    #[serde(default)]
    pub prior_loss: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedStateLoss {
    pub state: String,
    pub seen: f64,
    pub loss: Vec<f64>,
}

impl Mixture {
    pub fn new(n: usize) -> Mixture {
        let members = family();
        let m = members.len();
        Mixture {
            members,
            cached: vec![1.0 / m as f64; n * m],
            prior_loss: vec![0.0; m],
            n,
            state_loss: vec![0.0; n * m],
            state_seen: vec![0.0; n],
            loss: vec![0.0; m],
            seen: 0.0,
            recent: vec![0.0; m],
            scored: 0,
        }
    }

    /// The deepest history any member reads.
    pub fn max_history(&self) -> usize {
        self.members
            .iter()
            .map(|m| m.history as usize)
            .max()
            .unwrap_or(1)
    }

    /// The members' weights for an object in `state`, normalised, into `out`.
    pub fn weights(&self, state: StateId, out: &mut Vec<f64>) {
        let m = self.members.len();
        let s = state as usize;
        out.clear();
        out.extend_from_slice(&self.cached[s * m..(s + 1) * m]);
    }

    /// Recomputes a state's weights: the posterior from its own losses, the flow-wide ones
    /// (as of the last full refresh) as its prior.
    fn reweigh(&mut self, s: usize) {
        let m = self.members.len();
        let own = &self.state_loss[s * m..(s + 1) * m];
        let out = &mut self.cached[s * m..(s + 1) * m];
        for ((x, o), g) in out.iter_mut().zip(own).zip(&self.prior_loss) {
            *x = o + g;
        }
        let best = out.iter().copied().fold(f64::INFINITY, f64::min);
        let mut total = 0.0;
        for x in out.iter_mut() {
            *x = (-(*x - best)).exp();
            total += *x;
        }
        for x in out.iter_mut() {
            *x /= total;
        }
    }

    /// Takes the flow-wide losses as every state's prior anew (worth PRIOR_STRENGTH of a
    /// state's own transitions) and recomputes every state's weights.
    fn refresh_all(&mut self) {
        let scale = if self.seen > 0.0 {
            PRIOR_STRENGTH / self.seen
        } else {
            0.0
        };
        for (p, g) in self.prior_loss.iter_mut().zip(&self.loss) {
            *p = g * scale;
        }
        for s in 0..self.n {
            self.reweigh(s);
        }
    }

    /// Scores every member on the transition `from -> to` before it is learned.
    pub fn score(&mut self, rows: &Rows<'_>, from: StateId, to: StateId) {
        let losses = self.losses(rows, to);
        self.add_losses(from, &losses);
    }

    /// Each member's log-loss on the step to `to` (`score` without keeping it): a shard
    /// scores its own steps and sends the losses to the others (`engine::shard`).
    pub fn losses(&self, rows: &Rows<'_>, to: StateId) -> Losses {
        let m = self.members.len();
        let q: [f64; SLOTS] = std::array::from_fn(|slot| rows.q(slot, to));
        let uniform = EPSILON / self.n.max(1) as f64;
        let prep = Prepared::new(rows);
        let table = &tables()[table_index(prep.present_mask())];
        // What a raw coefficient of each slot is worth for `to` (`Prepared::split`).
        let mut qs = q;
        for (s, x) in qs.iter_mut().enumerate().skip(1) {
            if s != PRIOR && prep.present[s] {
                *x = prep.own[s] * q[s] + (1.0 - prep.own[s]) * q[PRIOR];
            }
        }
        // The loss of each group, once.
        let mut group_loss = [0.0; MAX_MEMBERS];
        for (g, l) in table.groups.iter().zip(group_loss.iter_mut()) {
            let mut p = 0.0;
            prep.walk(g, |s, c| p += c * qs[s]);
            *l = -((1.0 - EPSILON) * p + uniform).ln();
        }
        let mut out = [0.0; MAX_MEMBERS];
        for (i, o) in out.iter_mut().enumerate().take(m) {
            *o = group_loss[usize::from(table.of_member[i])];
        }
        out
    }

    /// Keeps the losses of one scored step out of `from` (computed here or by another shard).
    pub fn add_losses(&mut self, from: StateId, losses: &Losses) {
        let m = self.members.len();
        let decay = 1.0 - 1.0 / WINDOW;
        let s = from as usize;
        if s >= self.n {
            return;
        }
        self.state_seen[s] = self.state_seen[s] * decay + 1.0;
        self.seen = self.seen * decay + 1.0;
        for (i, &loss) in losses.iter().enumerate().take(m) {
            let own = &mut self.state_loss[s * m + i];
            *own = *own * decay + loss;
            self.loss[i] = self.loss[i] * decay + loss;
            // A running mean with the same memory.
            let r = &mut self.recent[i];
            *r = if self.scored == 0 {
                loss
            } else {
                *r + (loss - *r) / WINDOW.min(self.scored as f64 + 1.0)
            };
        }
        self.scored += 1;
        if self.scored < REFRESH_EVERY || self.scored.is_multiple_of(REFRESH_EVERY) {
            self.refresh_all();
        } else {
            self.reweigh(s);
        }
    }

    /// The weight of each row in the mixture for an object in `state`: each group of members'
    /// coefficients times the group's weight, summed.
    fn slot_weights(&self, rows: &Rows<'_>, state: StateId) -> [f64; SLOTS] {
        let m = self.members.len();
        let s = state as usize;
        let weights = &self.cached[s * m..(s + 1) * m];
        let prep = Prepared::new(rows);
        let table = &tables()[table_index(prep.present_mask())];
        // Each group's summed weight (members from `NEGLIGIBLE` up).
        let mut group_weight = [0.0; MAX_MEMBERS];
        for (i, &w) in weights.iter().enumerate() {
            if w >= NEGLIGIBLE {
                group_weight[usize::from(table.of_member[i])] += w;
            }
        }
        let mut raw = [0.0; SLOTS];
        for (g, &w) in table.groups.iter().zip(&group_weight) {
            if w > 0.0 {
                prep.walk(g, |s, c| raw[s] += w * c);
            }
        }
        prep.split(raw)
    }

    /// The probability `predict` gives `to`, without building the distribution: surprise
    /// scoring needs one number per step (`engine::surprise`).
    pub fn probability(&self, rows: &Rows<'_>, state: StateId, to: StateId) -> f64 {
        let slot_weight = self.slot_weights(rows, state);
        // `predict` normalises by the sum of the slot weights of the rows it reads.
        let (mut hit, mut total) = (0.0, 0.0);
        for (slot, &sw) in slot_weight.iter().enumerate() {
            if sw <= 0.0 {
                continue;
            }
            if rows.rows[slot].is_some_and(|(row, _)| row.iter().any(|(_, w)| *w > 0.0)) {
                total += sw;
                hit += sw * rows.q(slot, to);
            }
        }
        if total > 0.0 {
            hit / total
        } else {
            0.0
        }
    }

    /// The mixture's first-step distribution for an object in `state` into `out`.
    pub fn predict(&self, rows: &Rows<'_>, state: StateId, out: &mut Vec<(StateId, f64)>) {
        out.clear();
        let slot_weight = self.slot_weights(rows, state);
        for (slot, &sw) in slot_weight.iter().enumerate() {
            if sw <= 0.0 {
                continue;
            }
            let Some((row, _)) = rows.rows[slot] else {
                continue;
            };
            let total: f64 = row.iter().map(|(_, w)| w).sum();
            if total <= 0.0 {
                continue;
            }
            for &(s, w) in row {
                let add = sw * w / total;
                match out.iter_mut().find(|(t, _)| *t == s) {
                    Some((_, p)) => *p += add,
                    None => out.push((s, add)),
                }
            }
        }
        let total: f64 = out.iter().map(|(_, p)| p).sum();
        if total > 0.0 {
            for (_, p) in out.iter_mut() {
                *p /= total;
            }
        }
        out.retain(|(_, p)| *p > 0.0);
    }

    /// Each member's flow-wide weight (the posterior given the losses on every state) and its
    /// recent mean log-loss, in family order.
    pub fn summary(&self) -> Vec<MemberSummary> {
        let best = self.loss.iter().copied().fold(f64::INFINITY, f64::min);
        let raw: Vec<f64> = self.loss.iter().map(|l| (-(l - best)).exp()).collect();
        let total: f64 = raw.iter().sum();
        self.members
            .iter()
            .zip(raw)
            .zip(&self.recent)
            .map(|((m, w), r)| MemberSummary {
                member: m.label(),
                weight: if total > 0.0 { w / total } else { 0.0 },
                recent_log_loss: *r,
            })
            .collect()
    }

    /// The members that carry a prediction for an object in `state`: those with at least 5%
    /// of the weight, at most three, by weight.
    pub fn leading(&self, state: StateId) -> Vec<(String, f64)> {
        let mut w = Vec::with_capacity(self.members.len());
        self.weights(state, &mut w);
        let mut idx: Vec<usize> = (0..w.len()).filter(|&i| w[i] >= 0.05).collect();
        idx.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        idx.truncate(3);
        idx.into_iter()
            .map(|i| (self.members[i].label(), w[i]))
            .collect()
    }

    pub fn export(&self, names: &[String]) -> LearnedMixture {
        let m = self.members.len();
        LearnedMixture {
            members: self.members.iter().map(Member::label).collect(),
            loss: self.loss.clone(),
            seen: self.seen,
            recent: self.recent.clone(),
            scored: self.scored,
            prior_loss: self.prior_loss.clone(),
            states: (0..self.n)
                .filter(|&s| self.state_seen[s] > 0.0)
                .map(|s| LearnedStateLoss {
                    state: names[s].clone(),
                    seen: self.state_seen[s],
                    loss: self.state_loss[s * m..(s + 1) * m].to_vec(),
                })
                .collect(),
        }
    }

    /// Loads stored weights, when they are for the same family; states that no longer exist
    /// are left out. Returns whether anything was loaded.
    pub fn import(
        &mut self,
        learned: &LearnedMixture,
        id_of: impl Fn(&str) -> Option<StateId>,
    ) -> bool {
        let m = self.members.len();
        let labels: Vec<String> = self.members.iter().map(Member::label).collect();
        if learned.members != labels
            || learned.loss.len() != m
            || learned.recent.len() != m
            || !learned.seen.is_finite()
        {
            return false;
        }
        self.loss.clone_from(&learned.loss);
        self.recent.clone_from(&learned.recent);
        self.seen = learned.seen;
        self.scored = learned.scored;
        for st in &learned.states {
            let Some(s) = id_of(&st.state) else { continue };
            if st.loss.len() != m || (s as usize) >= self.n {
                continue;
            }
            let s = s as usize;
            self.state_seen[s] = st.seen;
            self.state_loss[s * m..(s + 1) * m].copy_from_slice(&st.loss);
        }
        if learned.prior_loss.len() == m && learned.prior_loss.iter().all(|x| x.is_finite()) {
            self.prior_loss.clone_from(&learned.prior_loss);
            for s in 0..self.n {
                self.reweigh(s);
            }
        } else {
            self.refresh_all();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_covers_the_grid_once() {
        let f = family();
        assert!(f.len() <= MAX_MEMBERS);
        assert_eq!(f.len(), 1 + 3 + 3 * 2 * 3 + 3 * 2 + 3);
        let labels: std::collections::HashSet<String> = f.iter().map(Member::label).collect();
        assert_eq!(labels.len(), f.len());
    }

    #[test]
    fn prepared_coefficients_equal_the_step_by_step_ones() {
        // Every member, on every combination of present rows, with and without a base row and
        // a priori counts.
        let base = [(1, 0.5), (2, 0.5)];
        let ctx = [(1, 3.0), (3, 1.0)];
        let prior = [(2, 5.0)];
        for mask in 0u32..(1 << 8) {
            let mut rows = Rows::default();
            if mask & 1 != 0 {
                rows.rows[0] = Some((&base, 10.0));
            }
            for (bit, slot) in [(1, 1), (2, 2), (3, 3), (4, 4), (5, CALENDAR)] {
                if mask & (1 << bit) != 0 {
                    rows.rows[slot] = Some((&ctx, 0.5 + slot as f64 * 3.0));
                }
            }
            if mask & (1 << 6) != 0 {
                rows.rows[PRIOR] = Some((&prior, 5.0));
            }
            if mask & (1 << 7) != 0 {
                rows.rows[VISITED] = Some((&ctx, 7.5));
            }
            let prep = Prepared::new(&rows);
            let table = &tables()[table_index(prep.present_mask())];
            for (i, m) in family().into_iter().enumerate() {
                let g = &table.groups[usize::from(table.of_member[i])];
                let (x, y) = (coefficients(&m, &rows), prep.coefficients(g));
                for (a, b) in x.iter().zip(&y) {
                    assert!(
                        (a - b).abs() < 1e-12,
                        "{} mask {mask:b}: {x:?} vs {y:?}",
                        m.label()
                    );
                }
            }
        }
    }

    #[test]
    fn coefficients_interpolate_like_the_fixed_model() {
        let base = [(1, 0.5), (2, 0.5)];
        let ctx = [(1, 3.0)];
        let mut rows = Rows::default();
        rows.rows[0] = Some((&base, 10.0));
        rows.rows[2] = Some((&ctx, 3.0));
        let m = Member {
            history: 2,
            k: 1.0,
            dwell: false,
            calendar: false,
            visited: false,
        };
        let a = coefficients(&m, &rows);
        assert!((a[0] - 0.25).abs() < 1e-12 && (a[2] - 0.75).abs() < 1e-12);
        let m0 = Member { k: 0.0, ..m };
        assert_eq!(
            coefficients(&m0, &rows),
            [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        // With a priori counts worth 3 observations, a context is half its own, half them.
        let prior = [(2, 3.0)];
        rows.rows[PRIOR] = Some((&prior, 3.0));
        let a = coefficients(&m0, &rows);
        assert!((a[2] - 0.5).abs() < 1e-12 && (a[PRIOR] - 0.5).abs() < 1e-12);
    }
}
