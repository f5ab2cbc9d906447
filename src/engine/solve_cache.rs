//! What a flow's model keeps between solves, as a snapshot saves it, so that a restart is
//! invisible to the risk numbers too (issue 13).
//!
//! The chain is solved only when the counts have changed materially (`markov::needs_refresh`),
//! so an uninterrupted engine predicts from a solution up to 1% of its observed weight old. A
//! restored model that solved afresh from the saved counts gave other digits (0.0588 against
//! 0.0518 in the AMQP chaos stream), and an alert near its threshold could fire in one run and
//! not the other. Saved here: the solution's sparse rows, row weights, absorption
//! probabilities and expected times (n x finals + 3n numbers and the edges, not the n x n
//! matrix), the solve schedule, the remaining-time walks' inputs (the walks themselves are
//! sampled again, deterministically, from them) and the surprise thresholds' cache. All of it is
//! restored only under the flow definition it was computed for (`fingerprint`), else the model
//! solves afresh as before. A value that JSON cannot carry (an infinite expected time) makes
//! the cache unsaved rather than the snapshot unreadable.

use super::dwell::DwellHist;
use super::markov::{FlowModel, Solution};
use super::remaining::RemainingCache;
use crate::model::{CompiledFlow, StateId};
use serde::{Deserialize, Serialize};

/// A flow model's caches, by state id (valid only for the definition of `fingerprint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolveCache {
    /// `fingerprint` of the flow the cache was computed for.
    pub fingerprint: u64,
    /// The solved chain's rows, sparse: per state, the successors with a positive probability.
    pub succ: Vec<Vec<(StateId, f64)>>,
    pub row_weight: Vec<f64>,
    /// n x finals, as `Solution::absorb`.
    pub absorb: Vec<f64>,
    pub expected_ms: Vec<f64>,
    pub version: u64,
    /// The solve schedule: weight changed since the solve, its work, the calls since, when.
    pub changed: f64,
    pub solve_work: f64,
    pub calls_since_solve: u64,
    pub solved_at_ms: i64,
    /// The remaining-time walks' inputs, when they differ from the solution's rows (a cache
    /// started at an earlier solve and still serving).
    pub remaining: RemainingInputs,
    /// The surprise thresholds as last computed, and the steps scored then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surprise: Option<(u64, Option<(u32, u32)>)>,
}

/// What the remaining-time walks read, as it was when their cache was started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemainingInputs {
    pub built_at: f64,
    /// `None`: the solution's own rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succ: Option<Vec<Vec<(StateId, f64)>>>,
    pub dwell: Vec<(StateId, StateId, DwellHist)>,
    pub dwell_state: Vec<DwellHist>,
}

/// FNV-1a (64 bits) of what the caches depend on in a flow's definition: its states, a priori
/// counts, unlisted policy, timeouts, learning, alert levels and anomaly settings, as JSON
/// (stable across builds).
pub fn fingerprint(flow: &CompiledFlow) -> u64 {
    let text = serde_json::to_vec(&(
        &flow.states,
        &flow.priors,
        &flow.unlisted,
        &flow.timeouts,
        &flow.learning,
        &flow.alerts,
        &flow.anomaly,
    ))
    .unwrap_or_default();
    fnv1a(&text)
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn all_finite<'a>(xs: impl IntoIterator<Item = &'a f64>) -> bool {
    xs.into_iter().all(|x| x.is_finite())
}

fn hist_finite(h: &DwellHist) -> bool {
    h.total.is_finite() && all_finite(&h.w)
}

impl FlowModel {
    /// The caches of this model, for a snapshot of `flow`; `None` before the first solve or
    /// when a number in them is not finite.
    pub fn export_solve(&self, flow: &CompiledFlow) -> Option<SolveCache> {
        let sol = self.solution.as_ref()?;
        let (built_at, succ, dwell, dwell_state) = sol.remaining.inputs();
        let mut dwell: Vec<(StateId, StateId, DwellHist)> =
            dwell.iter().map(|(&(s, t), h)| (s, t, h.clone())).collect();
        dwell.sort_unstable_by_key(|&(s, t, _)| (s, t));
        let cache = SolveCache {
            fingerprint: fingerprint(flow),
            succ: sol.succ.clone(),
            row_weight: sol.row_weight.clone(),
            absorb: sol.absorb.clone(),
            expected_ms: sol.expected_ms.clone(),
            version: sol.version,
            changed: self.changed,
            solve_work: self.solve_work,
            calls_since_solve: self.calls_since_solve,
            solved_at_ms: self.solved_at_ms,
            remaining: RemainingInputs {
                built_at,
                succ: (succ != sol.succ.as_slice()).then(|| succ.to_vec()),
                dwell,
                dwell_state: dwell_state.to_vec(),
            },
            surprise: self.surprise.cached_thresholds(),
        };
        cache.finite().then_some(cache)
    }

    /// Installs saved caches after the counts were imported; refused (the model solves afresh)
    /// when they were computed for another definition or do not fit this one.
    pub fn import_solve(&mut self, flow: &CompiledFlow, c: &SolveCache) -> bool {
        let n = self.n;
        let finals: Vec<StateId> = (0..n)
            .filter(|&s| self.kinds[s].is_final())
            .map(|s| s as StateId)
            .collect();
        let rows_fit = |rows: &[Vec<(StateId, f64)>]| {
            rows.len() == n && rows.iter().flatten().all(|&(t, _)| (t as usize) < n)
        };
        let fits = c.fingerprint == fingerprint(flow)
            && rows_fit(&c.succ)
            && c.remaining.succ.as_deref().is_none_or(rows_fit)
            && c.row_weight.len() == n
            && c.expected_ms.len() == n
            && c.absorb.len() == n * finals.len()
            && c.remaining.dwell_state.len() == n
            && c.remaining
                .dwell
                .iter()
                .all(|&(s, t, _)| (s as usize) < n && (t as usize) < n)
            && c.finite();
        if !fits {
            return false;
        }
        let mut p = vec![0.0; n * n];
        for (s, row) in c.succ.iter().enumerate() {
            for &(t, x) in row {
                p[s * n + t as usize] = x;
            }
        }
        let remaining = RemainingCache::new(
            c.remaining.built_at,
            c.remaining.succ.clone().unwrap_or_else(|| c.succ.clone()),
            c.remaining
                .dwell
                .iter()
                .map(|(s, t, h)| ((*s, *t), h.clone()))
                .collect(),
            c.remaining.dwell_state.clone(),
        );
        self.solution = Some(Solution {
            n,
            p,
            succ: c.succ.clone(),
            row_weight: c.row_weight.clone(),
            finals,
            absorb: c.absorb.clone(),
            expected_ms: c.expected_ms.clone(),
            version: c.version,
            remaining,
        });
        self.version = c.version;
        self.changed = c.changed;
        self.solve_work = c.solve_work;
        self.calls_since_solve = c.calls_since_solve;
        self.solved_at_ms = c.solved_at_ms;
        if let Some(t) = c.surprise {
            self.surprise.set_cached_thresholds(t);
        }
        true
    }
}

impl SolveCache {
    fn finite(&self) -> bool {
        let rows = |r: &[Vec<(StateId, f64)>]| r.iter().flatten().all(|(_, x)| x.is_finite());
        rows(&self.succ)
            && self.remaining.succ.as_deref().is_none_or(rows)
            && all_finite(&self.row_weight)
            && all_finite(&self.absorb)
            && all_finite(&self.expected_ms)
            && self.changed.is_finite()
            && self.solve_work.is_finite()
            && self.remaining.built_at.is_finite()
            && self.remaining.dwell.iter().all(|(_, _, h)| hist_finite(h))
            && self.remaining.dwell_state.iter().all(hist_finite)
    }
}
