//! The feature model (`learn { features on }`): a per-state log-linear (maximum-entropy)
//! correction of the first-order next-state row, fitted on the transitions the flow observed.
//!
//! Interpolated contexts (history, dwell, calendar) each need their own counts and are combined
//! one after the other; a context that mixes several signals (the time of day *and* how long
//! the object waited *and* where it came from) is seen too rarely to be trusted. The feature
//! model weighs every signal at once:
//!
//!   p(next = b | state s, past) ∝ p1(b | s) · exp(Σ_k w[s, k, value_k, b])
//!
//! with p1 the first-order row (priors and decayed observations) and one weight per state,
//! feature value and successor. All weights start at zero, where the model *is* the
//! first-order chain; an L2 penalty keeps them there unless the observations say otherwise.
//! Features of an object entering state s: the two states before it, how many times in a row it
//! has been in s (up to 4), the dwell classes of the two states before it, the UTC hour and
//! weekday at which it entered s, and how long it has been in the flow (a logarithmic class).
//!
//! Fitting: the flow keeps its last `CAPACITY` observed transitions with their features; when
//! a tenth of them are new (and a minute of event time has passed), each state's weights are refitted by full-batch gradient descent
//! with AdaGrad steps (`ITERATIONS`, step `STEP`, penalty `L2`), examples weighted by recency
//! when the flow has a half-life. Deterministic: the same transitions give the same weights.

use super::markov::{Past, NO_DWELL};
use crate::model::{Calendar, StateId};
use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Weights of every fitted state.
pub type Weights = HashMap<StateId, StateWeights>;

/// Transitions kept per flow for fitting.
pub const CAPACITY: usize = 50_000;
const ITERATIONS: usize = 100;
const STEP: f64 = 0.5;
/// L2 penalty, in observations: the weights answer to the evidence of about `L2` · 1000
/// transitions as strongly as to the penalty, so a state seen rarely (or, under recency
/// weighting, rarely of late) stays near its first-order row.
const L2: f64 = 10.0;
/// Fewest transitions from a state before it gets weights.
const MIN_EXAMPLES: usize = 20;
/// Least event time between two refits: a refit of a full buffer takes about 150 ms of CPU
/// (BENCHMARKS.md), so a busy flow refits at most once a minute.
pub const MIN_REFIT_MS: i64 = 60_000;

/// Number of features of an object in a state.
pub const N: usize = 8;
/// Feature values; `UNKNOWN` where the object's past does not say.
pub type Values = [u16; N];
pub const UNKNOWN: u16 = u16::MAX;

/// The feature values of an object in `state` with its `past`.
pub fn values(past: &Past<'_>, state: StateId) -> Values {
    let h = past.history;
    let state_at = |back: usize| -> u16 {
        if h.len() >= back {
            h[h.len() - back]
        } else {
            UNKNOWN
        }
    };
    let run = 1 + h.iter().rev().take_while(|&&s| s == state).count() as u16;
    let class = |d: u8| if d == NO_DWELL { UNKNOWN } else { d as u16 };
    let (hour, weekday) = Calendar::hour_and_weekday(past.entered_ms);
    let age = if past.age_ms < 0 {
        UNKNOWN
    } else {
        ((past.age_ms as f64 / 1000.0 + 1.0).log(4.0).floor() as u16).min(40)
    };
    [
        state_at(1),
        state_at(2),
        run.min(4),
        class(past.last_dwell),
        class(past.prev_dwell),
        hour as u16,
        weekday as u16,
        age,
    ]
}

fn key(k: usize, v: u16) -> u32 {
    ((k as u32) << 16) | v as u32
}

/// One observed transition and the features the object had when it entered `from`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example {
    pub at_ms: i64,
    pub from: StateId,
    pub to: StateId,
    pub values: Values,
}

/// The fitted weights of one state.
#[derive(Debug, Clone, Default)]
pub struct StateWeights {
    pub succ: Vec<StateId>,
    /// Per feature key, one weight per successor (in `succ` order).
    pub w: HashMap<u32, Vec<f64>>,
}

#[derive(Debug, Clone, Default)]
pub struct FeatureModel {
    pub examples: std::collections::VecDeque<Example>,
    /// Examples added since the last fit.
    pub pending: usize,
    pub weights: Weights,
    pub fits: u64,
    /// Event time of the last fit.
    pub fitted_at_ms: i64,
    /// A fit running on its own thread (the service): its result lands here.
    running: Option<Arc<Mutex<Option<Weights>>>>,
}

/// The recency weight of an example at `t`, seen from `now`.
pub fn recency(half_life_ms: Option<i64>, now_ms: i64, t: i64) -> f64 {
    match half_life_ms {
        Some(hl) => 2f64.powf(-((now_ms - t).max(0) as f64) / hl as f64),
        None => 1.0,
    }
}

impl FeatureModel {
    pub fn add(&mut self, e: Example) {
        if self.examples.len() == CAPACITY {
            self.examples.pop_front();
        }
        self.examples.push_back(e);
        self.pending += 1;
    }

    /// A tenth of the kept examples are new (and at least `MIN_EXAMPLES`), and the last fit
    /// is `MIN_REFIT_MS` old (in event time) or there was none.
    pub fn needs_fit(&self, now_ms: i64) -> bool {
        self.pending >= MIN_EXAMPLES
            && self.pending * 10 >= self.examples.len()
            && (self.fits == 0 || now_ms - self.fitted_at_ms >= MIN_REFIT_MS)
    }

    /// Refits every state's weights now. `row` gives the first-order row of a state
    /// (successors with their probabilities); `weight` the recency weight of an example's time.
    pub fn fit(
        &mut self,
        now_ms: i64,
        row: impl Fn(StateId) -> Vec<(StateId, f64)>,
        weight: impl Fn(i64) -> f64,
    ) {
        self.mark_fitted(now_ms);
        self.weights = fit_all(self.examples.make_contiguous(), &row, &weight);
    }

    fn mark_fitted(&mut self, now_ms: i64) {
        self.pending = 0;
        self.fits += 1;
        self.fitted_at_ms = now_ms;
    }

    /// Whether a fit is running on its own thread.
    pub fn fitting(&self) -> bool {
        self.running.is_some()
    }

    /// Starts a refit on its own thread with a copy of the examples; the current weights serve
    /// until `collect` finds the new ones. `rows` holds every state's first-order row.
    pub fn fit_in_background(
        &mut self,
        now_ms: i64,
        rows: Vec<Vec<(StateId, f64)>>,
        half_life_ms: Option<i64>,
    ) {
        self.mark_fitted(now_ms);
        let examples: Vec<Example> = self.examples.iter().copied().collect();
        let slot: Arc<Mutex<Option<Weights>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let job = move || {
            let w = fit_all(
                &examples,
                &|s: StateId| rows.get(s as usize).cloned().unwrap_or_default(),
                &|t| recency(half_life_ms, now_ms, t),
            );
            if let Ok(mut g) = out.lock() {
                *g = Some(w);
            }
        };
        match std::thread::Builder::new()
            .name("flowcast-fit".into())
            .spawn(job)
        {
            Ok(_) => self.running = Some(slot),
            Err(e) => {
                tracing::warn!(error = %e, "Could not start a thread to refit the feature model; the old weights stay.")
            }
        }
    }

    /// Installs the weights of a finished background fit, if there is one.
    pub fn collect(&mut self) {
        let Some(slot) = &self.running else { return };
        let done = match slot.try_lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        };
        if let Some(w) = done {
            self.weights = w;
            self.running = None;
        }
    }

    /// Applies the weights of `state` to its first-order distribution `out` in place.
    pub fn apply(&self, state: StateId, values: &Values, out: &mut [(StateId, f64)]) {
        let Some(sw) = self.weights.get(&state) else {
            return;
        };
        let mut max = f64::NEG_INFINITY;
        for (b, p) in out.iter_mut() {
            let mut z = p.max(1e-12).ln();
            if let Some(j) = sw.succ.iter().position(|s| s == b) {
                for (k, &v) in values.iter().enumerate() {
                    if let Some(w) = sw.w.get(&key(k, v)) {
                        z += w[j];
                    }
                }
            }
            *p = z;
            max = max.max(z);
        }
        let mut total = 0.0;
        for (_, p) in out.iter_mut() {
            *p = (*p - max).exp();
            total += *p;
        }
        if total > 0.0 {
            for (_, p) in out.iter_mut() {
                *p /= total;
            }
        }
    }
}

/// Fits the weights of every state with at least `MIN_EXAMPLES` transitions and two ways out.
fn fit_all(
    examples: &[Example],
    row: &dyn Fn(StateId) -> Vec<(StateId, f64)>,
    weight: &dyn Fn(i64) -> f64,
) -> Weights {
    let mut by_state: HashMap<StateId, Vec<usize>> = HashMap::default();
    for (i, e) in examples.iter().enumerate() {
        by_state.entry(e.from).or_default().push(i);
    }
    let mut states: Vec<StateId> = by_state.keys().copied().collect();
    states.sort_unstable();
    let mut out = Weights::default();
    for s in states {
        let idx = &by_state[&s];
        if idx.len() < MIN_EXAMPLES {
            continue;
        }
        let r = row(s);
        if r.len() < 2 {
            continue;
        }
        if let Some(w) = fit_state(&r, idx.iter().map(|&i| &examples[i]), weight) {
            out.insert(s, w);
        }
    }
    out
}

/// Fits one state's weights: minimises the recency-weighted log loss of the successors plus
/// L2 / 2 · |w|² (divided by the total weight), with the first-order row as a fixed offset.
fn fit_state<'a>(
    row: &[(StateId, f64)],
    examples: impl Iterator<Item = &'a Example>,
    weight: &dyn Fn(i64) -> f64,
) -> Option<StateWeights> {
    let succ: Vec<StateId> = row.iter().map(|(s, _)| *s).collect();
    let offset: Vec<f64> = row.iter().map(|(_, p)| p.max(1e-12).ln()).collect();
    let k = succ.len();
    // Dense feature indices, in order of first appearance.
    let mut index: HashMap<u32, usize> = HashMap::default();
    let mut keys: Vec<u32> = Vec::new();
    let mut xs: Vec<[usize; N]> = Vec::new();
    let mut ys: Vec<usize> = Vec::new();
    let mut ws: Vec<f64> = Vec::new();
    for e in examples {
        let Some(y) = succ.iter().position(|&s| s == e.to) else {
            continue;
        };
        let mut x = [0usize; N];
        for (f, &v) in e.values.iter().enumerate() {
            let kk = key(f, v);
            x[f] = *index.entry(kk).or_insert_with(|| {
                keys.push(kk);
                keys.len() - 1
            });
        }
        xs.push(x);
        ys.push(y);
        ws.push(weight(e.at_ms));
    }
    let total: f64 = ws.iter().sum();
    if xs.len() < MIN_EXAMPLES || total <= 0.0 {
        return None;
    }
    let nf = keys.len();
    let mut w = vec![0.0f64; nf * k];
    let mut g2 = vec![1e-8f64; nf * k];
    let mut grad = vec![0.0f64; nf * k];
    let mut z = vec![0.0f64; k];
    for _ in 0..ITERATIONS {
        grad.iter_mut().for_each(|g| *g = 0.0);
        for ((x, &y), &we) in xs.iter().zip(&ys).zip(&ws) {
            z.copy_from_slice(&offset);
            for &f in x {
                for (zj, wj) in z.iter_mut().zip(&w[f * k..(f + 1) * k]) {
                    *zj += wj;
                }
            }
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for zj in z.iter_mut() {
                *zj = (*zj - max).exp();
                sum += *zj;
            }
            let c = we / total;
            for (j, zj) in z.iter().enumerate() {
                let d = c * (zj / sum - if j == y { 1.0 } else { 0.0 });
                for &f in x {
                    grad[f * k + j] += d;
                }
            }
        }
        let l2 = L2 / total;
        for ((wi, gi), hi) in w.iter_mut().zip(&grad).zip(g2.iter_mut()) {
            let g = gi + l2 * *wi;
            *hi += g * g;
            *wi -= STEP * g / hi.sqrt();
        }
    }
    let mut out = StateWeights {
        succ,
        w: HashMap::default(),
    };
    for (i, kk) in keys.iter().enumerate() {
        out.w.insert(*kk, w[i * k..(i + 1) * k].to_vec());
    }
    Some(out)
}

/// An example as stored in a state directory: states by name, so that a reload that renames
/// or removes states keeps what still makes sense.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedExample {
    pub at_ms: i64,
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// The other features, in `values` order from "times in a row" (run length, the two
    /// dwell classes, hour, weekday, time-in-flow class); `UNKNOWN` where unknown.
    pub values: [u16; N - 2],
}

impl FeatureModel {
    pub fn export(&self, names: &[String]) -> Vec<LearnedExample> {
        let name = |v: u16| (v != UNKNOWN).then(|| names[v as usize].clone());
        self.examples
            .iter()
            .map(|e| LearnedExample {
                at_ms: e.at_ms,
                from: names[e.from as usize].clone(),
                to: names[e.to as usize].clone(),
                previous: name(e.values[0]),
                before: name(e.values[1]),
                values: e.values[2..].try_into().expect("N - 2 values"),
            })
            .collect()
    }

    pub fn import(&mut self, learned: &[LearnedExample], id_of: impl Fn(&str) -> Option<StateId>) {
        for l in learned {
            let (Some(from), Some(to)) = (id_of(&l.from), id_of(&l.to)) else {
                continue;
            };
            let state = |n: &Option<String>| match n {
                None => Some(UNKNOWN),
                Some(n) => id_of(n),
            };
            let (Some(p), Some(b)) = (state(&l.previous), state(&l.before)) else {
                continue;
            };
            let mut values = [UNKNOWN; N];
            values[0] = p;
            values[1] = b;
            values[2..].copy_from_slice(&l.values);
            self.add(Example {
                at_ms: l.at_ms,
                from,
                to,
                values,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feature_that_decides_the_successor_is_learned() {
        // From state 0: to 1 when entered at night (hour 2), to 2 by day (hour 14).
        let mut m = FeatureModel::default();
        for i in 0..2000 {
            let night = i % 2 == 0;
            let mut values = [UNKNOWN; N];
            values[5] = if night { 2 } else { 14 };
            m.add(Example {
                at_ms: i,
                from: 0,
                to: if night { 1 } else { 2 },
                values,
            });
        }
        assert!(m.needs_fit(0));
        m.fit(0, |_| vec![(1, 0.5), (2, 0.5)], |_| 1.0);
        assert!(!m.needs_fit(0));
        // A tenth new: refitted, but not within a minute of the last fit.
        for _ in 0..300 {
            m.add(m.examples[0]);
        }
        assert!(!m.needs_fit(MIN_REFIT_MS - 1));
        assert!(m.needs_fit(MIN_REFIT_MS));
        let mut night = [UNKNOWN; N];
        night[5] = 2;
        let mut out = vec![(1, 0.5), (2, 0.5)];
        m.apply(0, &night, &mut out);
        assert!(out[0].1 > 0.9, "{out:?}");
        // An hour never seen leaves the first-order row as it was.
        let mut other = [UNKNOWN; N];
        other[5] = 20;
        let mut out = vec![(1, 0.5), (2, 0.5)];
        m.apply(0, &other, &mut out);
        assert!((out[0].1 - 0.5).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn without_signal_the_weights_stay_near_the_first_order_row() {
        let mut m = FeatureModel::default();
        for i in 0..300 {
            let mut values = [UNKNOWN; N];
            values[6] = (i % 7) as u16;
            // 1 two times in three, whatever the hour.
            m.add(Example {
                at_ms: i,
                from: 0,
                to: if i % 3 == 0 { 2 } else { 1 },
                values,
            });
        }
        m.fit(0, |_| vec![(1, 2.0 / 3.0), (2, 1.0 / 3.0)], |_| 1.0);
        for h in 0..7 {
            let mut values = [UNKNOWN; N];
            values[6] = h;
            let mut out = vec![(1, 2.0 / 3.0), (2, 1.0 / 3.0)];
            m.apply(0, &values, &mut out);
            assert!(out[0].1 > 0.5, "weekday {h}: {out:?}");
        }
    }

    #[test]
    fn a_background_fit_gives_the_weights_an_inline_fit_gives() {
        let mut a = FeatureModel::default();
        for i in 0..500 {
            let mut values = [UNKNOWN; N];
            values[3] = (i % 3) as u16;
            a.add(Example {
                at_ms: i * 1000,
                from: 0,
                to: if i % 3 == 0 { 1 } else { 2 },
                values,
            });
        }
        let mut b = a.clone();
        let row = vec![(1, 0.4), (2, 0.6)];
        a.fit(
            500_000,
            |_| row.clone(),
            |t| recency(Some(60_000), 500_000, t),
        );
        b.fit_in_background(500_000, vec![row.clone()], Some(60_000));
        let start = std::time::Instant::now();
        while b.fitting() {
            assert!(start.elapsed().as_secs() < 30, "the fit never finished");
            std::thread::sleep(std::time::Duration::from_millis(5));
            b.collect();
        }
        assert_eq!(a.weights[&0].w, b.weights[&0].w);
        assert!(!a.weights[&0].w.is_empty());
    }

    #[test]
    fn values_describe_the_past() {
        let past = Past {
            history: &[3, 5, 5],
            last_dwell: 2,
            prev_dwell: NO_DWELL,
            // 2011-10-01T19:45:13Z, a Saturday.
            entered_ms: 1_317_498_313_000,
            age_ms: 15_000,
            visited: 0,
        };
        let v = values(&past, 5);
        assert_eq!(v, [5, 5, 3, 2, UNKNOWN, 19, 5, 2]);
    }
}
