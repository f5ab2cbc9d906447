//! Surprise: how improbable an object's step was under its flow's own model, before the step
//! is learned (issue 12). A step's surprise is `-ln max(p, 1e-6)` nats, where `p` is the
//! probability the model gave the state the object went to, from the state it left with its
//! past; its rank among the predicted successors is DeepLog's top-g criterion.
//!
//! Memory is bounded in bytes: per object, a ring of the last `MAX_WINDOW` step surprises
//! quantised to one byte each (1/16 nat), the peak step and a count of unusual steps (8 bytes
//! in `ObjectState`); per flow, two histograms of 256 counters (`Calibration`, 4 KiB) of the
//! step and window surprises seen on learned steps, from which thresholds are calibrated as the
//! `1 - false_alarm_rate` quantile.

use crate::model::{AnomalyConfig, StateId};
use serde::{Deserialize, Serialize};

/// Probabilities below this count as this (a never-predicted step is 13.8 nats, not infinite).
pub const P_FLOOR: f64 = 1e-6;
/// Quantisation of a step surprise: this many steps per nat (one byte holds 0 to 15.9 nats).
pub const STEPS_PER_NAT: f64 = 16.0;
/// Histogram bins; a window sum (up to 5 x 255 quantised steps) is binned by 8 (0.5 nat).
pub const BINS: usize = 256;
const WINDOW_BIN: u32 = 8;

/// A step's surprise in nats.
pub fn surprise(p: f64) -> f64 {
    -p.clamp(P_FLOOR, 1.0).ln()
}

/// A step's surprise quantised to a byte (1/16 nat; saturates at 15.9 nats).
pub fn quantise(p: f64) -> u8 {
    (surprise(p) * STEPS_PER_NAT).round().min(255.0) as u8
}

/// Nats of a quantised surprise or sum of them.
pub fn nats(q: u32) -> f64 {
    f64::from(q) / STEPS_PER_NAT
}

/// The probability of `to` in a next-state distribution (0 when not predicted) and its rank
/// among the predicted states: 1 + the number of states given strictly more.
pub fn probability_and_rank(dist: &[(StateId, f64)], to: StateId) -> (f64, usize) {
    let p = dist.iter().find(|(s, _)| *s == to).map_or(0.0, |&(_, p)| p);
    let rank = 1 + dist.iter().filter(|(s, q)| *s != to && *q > p).count();
    (p, rank)
}

/// The window sum in the ring's quantised units: the last `window` steps (the ring holds
/// the most recent step last).
pub fn window_sum(ring: &[u8; AnomalyConfig::MAX_WINDOW as usize], window: u8) -> u32 {
    let w = (window as usize).clamp(1, ring.len());
    ring[ring.len() - w..].iter().map(|&q| u32::from(q)).sum()
}

/// Which threshold a step crossed, and its value (probability, rank or nats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crossed {
    MinProbability(f64),
    Top(u16),
    WindowSurprise(f64),
    StepSurprise(f64),
    /// Calibrated: the model gave the step no probability at all.
    NeverPredicted,
}

impl Crossed {
    pub fn name(self) -> &'static str {
        match self {
            Crossed::MinProbability(_) => "min_probability",
            Crossed::Top(_) => "top",
            Crossed::WindowSurprise(_) => "window_surprise",
            Crossed::StepSurprise(_) => "step_surprise",
            Crossed::NeverPredicted => "never_predicted",
        }
    }

    pub fn value(self) -> f64 {
        match self {
            Crossed::MinProbability(v) | Crossed::WindowSurprise(v) | Crossed::StepSurprise(v) => v,
            Crossed::Top(g) => f64::from(g),
            Crossed::NeverPredicted => 0.0,
        }
    }
}

/// The surprises a flow saw on learned steps, for calibrated thresholds. Kept with the
/// learned counts (snapshots, `--state-dir`), so a restart keeps its thresholds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    /// Learned steps scored, including the first `min_learned` that are not in the histograms
    /// (the model was still learning the flow's shape: its surprises say little).
    pub scored: u64,
    /// Counts per quantised step surprise (1/16 nat).
    pub step: Vec<u64>,
    /// Counts per window surprise, by 0.5 nat.
    pub window: Vec<u64>,
    /// The thresholds last computed, and `scored` then: recomputed every 1/64 more steps
    /// (at least 64), so that a step costs a comparison, not a walk over the histograms.
    #[serde(skip)]
    cached: Option<(u64, Option<(u32, u32)>)>,
}

impl Default for Calibration {
    fn default() -> Calibration {
        Calibration {
            scored: 0,
            step: vec![0; BINS],
            window: vec![0; BINS],
            cached: None,
        }
    }
}

impl PartialEq for Calibration {
    fn eq(&self, other: &Calibration) -> bool {
        (self.scored, &self.step, &self.window) == (other.scored, &other.step, &other.window)
    }
}

impl Calibration {
    /// Counts one learned step (its quantised surprise and window sum).
    pub fn record(&mut self, min_learned: u64, step: u8, window: u32) {
        self.scored += 1;
        if self.scored <= min_learned {
            return;
        }
        self.step[usize::from(step)] += 1;
        self.window[window_bin(window)] += 1;
    }

    /// Steps in the histograms.
    pub fn samples(&self) -> u64 {
        self.step.iter().sum()
    }

    /// Adds another calibration (a restore into a flow that already learned).
    pub fn merge(&mut self, other: &Calibration) {
        self.scored += other.scored;
        for (a, b) in self.step.iter_mut().zip(&other.step) {
            *a += b;
        }
        for (a, b) in self.window.iter_mut().zip(&other.window) {
            *a += b;
        }
        self.cached = None;
    }

    /// The thresholds' cache (`solve_cache`: a snapshot keeps it, so that a restored model
    /// flags with the thresholds an uninterrupted one still uses).
    pub fn cached_thresholds(&self) -> Option<(u64, Option<(u32, u32)>)> {
        self.cached
    }

    pub fn set_cached_thresholds(&mut self, cached: (u64, Option<(u32, u32)>)) {
        self.cached = Some(cached);
    }

    /// `thresholds`, recomputed only when enough steps were added since the last time.
    pub fn thresholds_cached(&mut self, cfg: &AnomalyConfig) -> Option<(u32, u32)> {
        match self.cached {
            Some((at, t)) if self.scored < at + (at / 64).max(64) => t,
            _ => {
                let t = self.thresholds(cfg);
                self.cached = Some((self.scored, t));
                t
            }
        }
    }

    /// The calibrated (step, window) thresholds as the highest bin that is not unusual: a step
    /// is unusual when its bin is above. `None` until `min_learned` steps are in the histograms.
    pub fn thresholds(&self, cfg: &AnomalyConfig) -> Option<(u32, u32)> {
        let n = self.samples();
        if n == 0 || n < cfg.min_learned {
            return None;
        }
        let rate = cfg.false_alarm_rate;
        let step = quantile_bin(&self.step, n, rate);
        let window = quantile_bin(&self.window, n, rate);
        Some((
            step + slack(&self.step, step, n, rate) * STEPS_PER_SLACK,
            window + slack(&self.window, window, n, rate),
        ))
    }
}

/// A threshold bin holding more than this many times the counts the rate allows above it is a
/// common value, not the edge of a tail.
const COMMON: f64 = 10.0;
/// Half a nat (a factor 1.65 in probability): one window bin, this many step bins.
const STEPS_PER_SLACK: u32 = 8;

/// 1 when the threshold bin `b` is a common value. The quantile of a discrete distribution
/// (a few paths, each taken often) falls on the surprise of one normal path, and the threshold
/// is then that path's own bin: learning that goes on moves its probability a little, and the
/// path crosses into a bin the calibration never saw and is flagged, on every object that
/// takes it. StackTach's failed rebuild did (tests/stacktach_anomaly.rs). A bin past a common
/// value is given as slack; a tail that thins out (no bin much above the rate) keeps the
/// quantile as it is.
fn slack(hist: &[u64], b: u32, n: u64, rate: f64) -> u32 {
    let allowed = (rate * n as f64).max(1.0);
    u32::from(hist[b as usize] as f64 > COMMON * allowed)
}

pub fn window_bin(window: u32) -> usize {
    ((window / WINDOW_BIN) as usize).min(BINS - 1)
}

/// Upper edge in nats of a window bin (what a record reports as the threshold).
pub fn window_bin_nats(bin: u32) -> f64 {
    nats((bin + 1) * WINDOW_BIN)
}

/// The smallest bin `b` with at most `rate * n` counts above it.
fn quantile_bin(hist: &[u64], n: u64, rate: f64) -> u32 {
    let allowed = rate * n as f64;
    let mut above = 0u64;
    for b in (0..hist.len()).rev() {
        if (above + hist[b]) as f64 > allowed {
            return b as u32;
        }
        above += hist[b];
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_never_predicted_is_the_floor_surprise() {
        assert_eq!(quantise(0.0), 221);
        assert_eq!(quantise(1.0), 0);
        assert!((nats(u32::from(quantise(0.5))) - 0.6875).abs() < 1e-9);
        assert_eq!(probability_and_rank(&[(1, 0.7), (2, 0.3)], 2), (0.3, 2));
        assert_eq!(probability_and_rank(&[(1, 0.7), (2, 0.3)], 5), (0.0, 3));
    }

    /// StackTach's actions learned in one replay: 157 of 1,700 windows in the top bin, a
    /// normal path (the failed rebuild). Half a nat above it is still that path, drifted.
    #[test]
    fn a_common_value_at_the_threshold_gets_half_a_nat_of_slack() {
        let cfg = AnomalyConfig::default();
        let mut c = Calibration::default();
        (c.step[5], c.step[46]) = (1543, 157);
        (c.window[2], c.window[6]) = (1543, 157);
        assert_eq!(c.thresholds(&cfg), Some((46 + 8, 6 + 1)));
        // A thin tail (5 in each of 200 bins) keeps the quantile as it is.
        let mut c = Calibration::default();
        for b in 0..200 {
            (c.step[b], c.window[b]) = (5, 5);
        }
        assert_eq!(c.thresholds(&cfg), Some((199, 199)));
    }

    #[test]
    fn the_quantile_leaves_at_most_the_rate_above_it() {
        let mut h = vec![0u64; BINS];
        h[0] = 990;
        h[10] = 9;
        h[200] = 1;
        // 1 in 1,000 allowed above: bin 10 is the threshold, only bin 200 is unusual.
        assert_eq!(quantile_bin(&h, 1000, 0.001), 10);
        assert_eq!(quantile_bin(&h, 1000, 0.01), 0);
        assert_eq!(quantile_bin(&h, 1000, 0.0001), 200);
    }
}
