//! The remaining time to the end as a distribution, and its median: the estimate that minimises
//! the absolute error, where the expectation (`FlowModel::expected_remaining`) minimises the
//! squared one. Remaining times of real processes are skewed (most cases end soon, a few take
//! weeks), so the two differ a lot and the mean is a poor guess for a typical case.
//!
//! The time to absorption from a state is a sum of dwells along a random path of the chain. Its
//! distribution has no closed form with histogram dwells, so it is sampled: `SAMPLES` walks of
//! the chain from the state, each step drawing the next state from the solution's first-order
//! row and the dwell from that transition's histogram (uniform within a bucket, as `survival`
//! assumes). The walks use a fixed seed per state, so the same model always gives the same
//! figures (replay and `eval` stay deterministic).
//!
//! Cost: nothing until a prediction asks for it (tracing, `eval`, the API); then once per state
//! and solve, kept in the `Solution` (`RemainingCache`) until the next solve replaces it. A
//! prediction then mixes its own first step (the object's contexts, and the time it has
//! already spent in its state) with the cached samples of each successor: a bisection over a
//! few hundred lookups.

use super::dwell::{DwellHist, BUCKETS};
use super::markov::{FlowModel, Solution};
use crate::model::StateId;
use std::sync::OnceLock;

/// Walks per state. The median of n samples has a standard error of about 0.5/sqrt(n) in
/// probability, 1.1% here.
pub const SAMPLES: usize = 2048;
/// Steps one walk may take before it is cut (a chain that almost never ends): its time so far
/// is kept, an underestimate of a case that is in any event far from its end.
pub const MAX_STEPS: usize = 200;
/// Quantiles of the current state's residual dwell mixed with each successor's samples.
const RESIDUAL_POINTS: usize = 32;

/// Per state, sorted sampled times, ms, filled on first use and kept one solve long (a new
/// solve starts an empty cache): the time to absorption at entry, and for each successor of the
/// first-order row the whole dwell to it plus the successor's time (what a prediction made at
/// entry mixes).
/// Sorted samples per successor of one state.
type BySuccessor = Vec<(StateId, Box<[f64]>)>;

#[derive(Debug, Clone, Default)]
pub struct RemainingCache {
    states: Vec<OnceLock<Box<[f64]>>>,
    by_successor: Vec<OnceLock<BySuccessor>>,
    /// Transitions observed (without decay) when the cache was started.
    built_at: f64,
    /// What the walks read, as it was when the cache was started: the first-order rows and
    /// the dwell histograms. Walks are sampled on first use; reading the model as it is then
    /// would make a prediction depend on when some other object was first predicted (in
    /// `eval --mode live`, on the test cases: a leak, tests/eval_leaks.rs).
    succ: Vec<Vec<(StateId, f64)>>,
    dwell: foldhash::HashMap<(StateId, StateId), DwellHist>,
    dwell_state: Vec<DwellHist>,
}

impl RemainingCache {
    pub fn new(
        observed: f64,
        succ: Vec<Vec<(StateId, f64)>>,
        dwell: foldhash::HashMap<(StateId, StateId), DwellHist>,
        dwell_state: Vec<DwellHist>,
    ) -> RemainingCache {
        let n = succ.len();
        RemainingCache {
            states: (0..n).map(|_| OnceLock::new()).collect(),
            by_successor: (0..n).map(|_| OnceLock::new()).collect(),
            built_at: observed,
            succ,
            dwell,
            dwell_state,
        }
    }

    /// Whether a cache started at `built_at` still serves a new solve: the flow has seen
    /// fewer than a quarter more transitions since (and at least 100). Walks cost thousands of
    /// steps per state; a solve comes every 1% of change, and in `live` replays with recency
    /// weighting every few hours of event time.
    pub fn still_serves(&self, n: usize, observed: f64) -> bool {
        self.states.len() == n && observed <= 1.25 * self.built_at.max(100.0)
    }

    fn dwell_of(&self, from: StateId, to: StateId) -> &DwellHist {
        match self.dwell.get(&(from, to)) {
            Some(h) if h.total > 0.0 => h,
            _ => &self.dwell_state[from as usize],
        }
    }

    /// What the walks read (`solve_cache` saves it): the observed count when the cache was
    /// started, the rows, the dwell histograms per transition and per state.
    #[allow(clippy::type_complexity)]
    pub fn inputs(
        &self,
    ) -> (
        f64,
        &[Vec<(StateId, f64)>],
        &foldhash::HashMap<(StateId, StateId), DwellHist>,
        &[DwellHist],
    ) {
        (self.built_at, &self.succ, &self.dwell, &self.dwell_state)
    }
}

/// A small deterministic generator (splitmix64): no dependency, the same stream everywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Lower and upper bound of a dwell bucket, ms (as `DwellHist`).
fn bounds(b: usize) -> (f64, f64) {
    let lo = if b == 0 {
        0.0
    } else {
        (1u64 << (b - 1)) as f64
    };
    (lo, (1u64 << b) as f64)
}

/// One dwell drawn from a histogram: a bucket by weight, then uniformly within it.
fn draw(h: &DwellHist, rng: &mut SplitMix) -> f64 {
    if h.total <= 0.0 {
        return 0.0;
    }
    let target = rng.unit() * h.total;
    let mut acc = 0.0;
    let mut last = 0;
    for (b, w) in h.w.iter().enumerate() {
        if *w <= 0.0 {
            continue;
        }
        last = b;
        acc += w;
        if acc > target {
            break;
        }
    }
    let (lo, hi) = bounds(last);
    lo + rng.unit() * (hi - lo)
}

impl DwellHist {
    /// The q-quantile (0..1) of the time still to spend, given `e_ms` already spent:
    /// D - e | D > e, uniform within a bucket. 0 when nothing seen lasted longer than `e_ms`.
    pub fn residual_quantile(&self, e_ms: f64, q: f64) -> f64 {
        let e = e_ms.max(0.0);
        let above = self.survival(e) * self.total;
        if self.total <= 0.0 || above <= 0.0 {
            return 0.0;
        }
        let target = q.clamp(0.0, 1.0) * above;
        let mut acc = 0.0;
        for b in 0..BUCKETS {
            let (lo, hi) = bounds(b);
            if hi <= e || self.w[b] <= 0.0 {
                continue;
            }
            let from = lo.max(e);
            let m = self.w[b] * (hi - from) / (hi - lo);
            if acc + m >= target {
                let x = from + (hi - from) * ((target - acc) / m).clamp(0.0, 1.0);
                return (x - e).max(0.0);
            }
            acc += m;
        }
        (bounds(BUCKETS - 1).1 - e).max(0.0)
    }
}

impl FlowModel {
    /// The histogram a dwell `from -> to` is drawn from: the transition's own, else the state's
    /// pooled one (as `expected_remaining`).
    fn dwell_of(&self, from: StateId, to: StateId) -> &DwellHist {
        match self.dwell.get(&(from, to)) {
            Some(h) if h.total > 0.0 => h,
            _ => &self.dwell_state[from as usize],
        }
    }

    /// Sorted sampled times to absorption from entering `state`, ms (all 0 for a final state).
    fn sample_remaining(&self, cache: &RemainingCache, state: StateId) -> Box<[f64]> {
        let mut rng = SplitMix(0x5EED_0000_0000_0000 ^ state as u64);
        let mut out: Vec<f64> = (0..SAMPLES)
            .map(|_| {
                let (mut at, mut total) = (state, 0.0);
                for _ in 0..MAX_STEPS {
                    if self.kind(at).is_final() {
                        break;
                    }
                    let row = &cache.succ[at as usize];
                    let mut u = rng.unit();
                    // The last successor takes what rounding leaves; a row of zeros (nothing
                    // known) ends the walk where it is.
                    let Some(&(mut next, _)) = row.last() else {
                        break;
                    };
                    for &(t, p) in row {
                        if u < p {
                            next = t;
                            break;
                        }
                        u -= p;
                    }
                    total += draw(cache.dwell_of(at, next), &mut rng);
                    at = next;
                }
                total
            })
            .collect();
        out.sort_by(f64::total_cmp);
        out.into_boxed_slice()
    }

    /// The sorted samples of `state`, from the solution's cache (sampled on first use).
    fn remaining_samples<'s>(&self, sol: &'s Solution, state: StateId) -> &'s [f64] {
        match sol.remaining.states.get(state as usize) {
            Some(cell) => cell.get_or_init(|| self.sample_remaining(&sol.remaining, state)),
            None => &[],
        }
    }

    /// Per successor `to` of `state`'s first-order row: sorted samples of the dwell to it plus
    /// its own time to absorption (the successor's samples, each with a fresh dwell).
    fn successor_samples<'s>(
        &self,
        sol: &'s Solution,
        state: StateId,
    ) -> &'s [(StateId, Box<[f64]>)] {
        let Some(cell) = sol.remaining.by_successor.get(state as usize) else {
            return &[];
        };
        cell.get_or_init(|| {
            let mut rng = SplitMix(0xD3E1_0000_0000_0000 ^ state as u64);
            let cache = &sol.remaining;
            cache.succ[state as usize]
                .iter()
                .map(|&(to, _)| {
                    let h = cache.dwell_of(state, to);
                    let mut v: Vec<f64> = self
                        .remaining_samples(sol, to)
                        .iter()
                        .map(|r| r + draw(h, &mut rng))
                        .collect();
                    v.sort_by(f64::total_cmp);
                    (to, v.into_boxed_slice())
                })
                .collect()
        })
    }

    /// Median time until the object reaches a final state, ms, from the first-step
    /// distribution `predict` left in `scratch` (the object's contexts, re-weighted by the time
    /// `elapsed_ms` it has already spent in `state`): the median of the mixture, over each
    /// successor, of the rest of the current dwell plus the successor's time to absorption.
    pub fn median_remaining(
        &self,
        sol: &Solution,
        state: StateId,
        elapsed_ms: f64,
        scratch: &[(StateId, f64)],
    ) -> f64 {
        if self.kind(state).is_final() {
            return 0.0;
        }
        let total: f64 = scratch.iter().map(|(_, p)| p).sum();
        if total <= 0.0 {
            return 0.0;
        }
        if elapsed_ms <= 0.0 {
            // At entry (every traced prediction): the cached whole-dwell samples serve.
            let cached = self.successor_samples(sol, state);
            let parts: Option<Vec<(f64, &[f64])>> = scratch
                .iter()
                .map(|&(to, p)| {
                    cached
                        .iter()
                        .find(|(t, _)| *t == to)
                        .map(|(_, v)| (p / total, &v[..]))
                })
                .collect();
            if let Some(parts) = parts {
                return weighted_median(&parts);
            }
        }
        // Per successor: its probability, the residual dwell at evenly spaced quantiles, and
        // its sorted samples.
        let parts: Vec<(f64, [f64; RESIDUAL_POINTS], &[f64])> = scratch
            .iter()
            .map(|&(to, p)| {
                let h = self.dwell_of(state, to);
                let mut q = [0.0; RESIDUAL_POINTS];
                for (k, x) in q.iter_mut().enumerate() {
                    *x = h.residual_quantile(elapsed_ms, (k as f64 + 0.5) / RESIDUAL_POINTS as f64);
                }
                (p / total, q, self.remaining_samples(sol, to))
            })
            .collect();
        // P(remaining <= x): each residual point is worth 1/RESIDUAL_POINTS of its successor,
        // and the successor's time is below x - point for the share of samples below it.
        let cdf = |x: f64| -> f64 {
            parts
                .iter()
                .map(|(p, q, samples)| {
                    let below: f64 = q
                        .iter()
                        .map(|d| {
                            let y = x - d;
                            if y < 0.0 {
                                0.0
                            } else if samples.is_empty() {
                                1.0
                            } else {
                                samples.partition_point(|s| *s <= y) as f64 / samples.len() as f64
                            }
                        })
                        .sum();
                    p * below / RESIDUAL_POINTS as f64
                })
                .sum()
        };
        let hi = parts
            .iter()
            .map(|(_, q, s)| q[RESIDUAL_POINTS - 1] + s.last().copied().unwrap_or(0.0))
            .fold(0.0, f64::max);
        median_by_bisection(hi, cdf)
    }
}

/// The median of a mixture of sample sets (weight, sorted samples), ms, by bisection to a
/// millisecond.
fn weighted_median(parts: &[(f64, &[f64])]) -> f64 {
    let cdf = |x: f64| -> f64 {
        parts
            .iter()
            .map(|(p, v)| {
                if v.is_empty() {
                    *p
                } else {
                    p * v.partition_point(|s| *s <= x) as f64 / v.len() as f64
                }
            })
            .sum()
    };
    let hi = parts
        .iter()
        .filter_map(|(_, v)| v.last().copied())
        .fold(0.0, f64::max);
    median_by_bisection(hi, cdf)
}

/// The least x in [0, hi] (to a millisecond) where the step-function `cdf` reaches 1/2.
fn median_by_bisection(mut hi: f64, cdf: impl Fn(f64) -> f64) -> f64 {
    let mut lo = 0.0;
    if cdf(lo) >= 0.5 {
        return 0.0;
    }
    while hi - lo > 1.0 {
        let mid = lo + (hi - lo) / 2.0;
        if cdf(mid) >= 0.5 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(dwells_ms: &[i64], elapsed: f64, q: f64, expect: f64) {
        let mut h = DwellHist::default();
        for d in dwells_ms {
            h.add(*d, 1.0);
        }
        let got = h.residual_quantile(elapsed, q);
        assert!(
            (got - expect).abs() < 1e-9,
            "{dwells_ms:?} after {elapsed}: q{q} = {got}, expected {expect}"
        );
    }

    #[test]
    fn residual_quantiles_read_the_histogram_uniformly_within_a_bucket() {
        // One dwell in [512, 1024): its median is the bucket's middle.
        check(&[1000], 0.0, 0.5, 768.0);
        // Having waited 600 ms, what is left of that bucket is [600, 1024): median 812 - 600.
        check(&[1000], 600.0, 0.5, 212.0);
        // Two buckets of equal weight, [8, 16) and [512, 1024): half the weight is reached at
        // the top of the first.
        check(&[10, 1000], 0.0, 0.5, 16.0);
        check(&[10, 1000], 0.0, 0.75, 768.0);
        // Longer than anything seen: nothing more to wait, as `mean_residual` says.
        check(&[10], 5000.0, 0.5, 0.0);
        // No data: no time.
        check(&[], 0.0, 0.5, 0.0);
    }

    #[test]
    fn the_median_of_a_mixture_weighs_each_sample_set() {
        let (low, high): (Vec<f64>, Vec<f64>) = ((1..=100).map(f64::from).collect(), vec![1e6; 10]);
        // 0.6 of the weight on 1..=100 ms: half the mixture is reached 5/6 of the way (84 ms).
        let m = weighted_median(&[(0.6, &low), (0.4, &high)]);
        assert!((m - 84.0).abs() <= 1.0, "{m}");
        // Mostly the high set: the median is its value.
        let m = weighted_median(&[(0.2, &low), (0.8, &high)]);
        assert!((m - 1e6).abs() <= 1.0, "{m}");
        // All at zero: zero.
        assert_eq!(weighted_median(&[(1.0, &[0.0, 0.0][..])]), 0.0);
    }

    #[test]
    fn draws_stay_in_the_buckets_that_have_weight() {
        let mut h = DwellHist::default();
        h.add(100, 1.0); // [64, 128)
        h.add(5000, 3.0); // [4096, 8192)
        let mut rng = SplitMix(1);
        let draws: Vec<f64> = (0..4000).map(|_| draw(&h, &mut rng)).collect();
        assert!(draws
            .iter()
            .all(|d| (64.0..128.0).contains(d) || (4096.0..8192.0).contains(d)));
        let short = draws.iter().filter(|d| **d < 128.0).count() as f64 / 4000.0;
        assert!((short - 0.25).abs() < 0.03, "{short}");
    }
}
