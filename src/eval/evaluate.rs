//! Measuring prediction quality with the engine itself (Tax et al. 2017's protocol): cases in
//! file order, the first 2/3 train and the last 1/3 test.
//!
//! Three ways to run the same split (`Mode`):
//! - `frozen` (the reference protocol): the training cases' messages go to an `Engine` in time
//!   order, then learning is turned off and each test case is replayed on its own, shifted in
//!   time to start at the engine's clock (by whole weeks when calendar contexts, features or
//!   the self-tuning model are used): the model is frozen (`Engine::freeze`: no learning, and
//!   its decay clock stopped), so the cases cannot influence each other, and their dwell times
//!   are kept exactly. Every prediction sees every training case, including those that
//!   happened after it.
//! - `live` (as deployed): every message of every case in time order; the engine learns from
//!   the training cases' objects as they move and never from the test cases' (an object
//!   teaches or not for its whole life, so a test object's timeout that falls due while a
//!   training message is handled is not learned either). A prediction
//!   sees only the training cases' past, as a monitor on a live bus does, and recency weighting
//!   ([0099]) can follow a process that changes.
//! - `online` (prequential): the same, learning from the test cases' messages too.
//!
//! `select` carves a validation split out of the training cases the same way (their first 2/3
//! fit, the last 1/3 validate), so that a configuration can be chosen without the test cases.
//!
//! Scored: the next state at every prefix of length 2 to len-1 (argmax of the next-state
//! distribution over the activities, ties toward the larger activity label compared as strings,
//! and the most frequent training activity when the state was never seen); the remaining time
//! at the same prefixes; and for flows with artifacts, the artifact probability at every prefix
//! against the case's outcome (ROC AUC, Brier, calibration) and the alerts (precision, recall,
//! lead time).

use super::log::{Stream, CASE_END};
use crate::engine::mixture::MemberSummary;
use crate::engine::output::Record;
use crate::engine::Engine;
use crate::model::{Calendar, CompiledFlow, Kind};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalConfig {
    pub history: usize,
    pub half_life_ms: Option<i64>,
    pub prior_weight: f64,
    pub min_observations: f64,
    /// Condition risk on the time already spent in a state.
    pub dwell: bool,
    /// Condition on the time of day (and week) an object entered its state.
    pub calendar: Calendar,
    /// The log-linear feature model (`learn { features on }`).
    pub features: bool,
    /// The self-tuning model (`learn { model auto }`): `history` and `min_observations` only
    /// bound and seed it.
    #[serde(default)]
    pub auto: bool,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Train on the training cases, then test with the model frozen (Tax et al.'s protocol).
    Frozen,
    /// Every message in time order; learn from the training cases only, as they happen.
    Live,
    /// Every message in time order; learn from every case (prequential).
    Online,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Frozen => "frozen",
            Mode::Live => "live",
            Mode::Online => "online",
        }
    }
}

impl EvalConfig {
    pub fn label(&self) -> String {
        if self.auto {
            return format!(
                "model=auto half_life={} prior_weight={} dwell={}{}",
                self.half_life_ms
                    .map(crate::syntax::format_duration_ms)
                    .unwrap_or_else(|| "off".into()),
                self.prior_weight,
                if self.dwell { "on" } else { "off" },
                if self.mode == Mode::Frozen {
                    String::new()
                } else {
                    format!(" {}", self.mode.name())
                }
            );
        }
        format!(
            "history={} half_life={} prior_weight={} min_obs={} dwell={}{}{}{}",
            self.history,
            self.half_life_ms
                .map(crate::syntax::format_duration_ms)
                .unwrap_or_else(|| "off".into()),
            self.prior_weight,
            self.min_observations,
            if self.dwell { "on" } else { "off" },
            if self.calendar == Calendar::Off {
                String::new()
            } else {
                format!(" calendar={}", self.calendar.name())
            },
            if self.features { " features=on" } else { "" },
            if self.mode == Mode::Frozen {
                String::new()
            } else {
                format!(" {}", self.mode.name())
            }
        )
    }

    /// The flow with this configuration's learning parameters.
    pub fn apply(&self, flow: &CompiledFlow) -> CompiledFlow {
        let mut f = flow.clone();
        f.learning.history = self.history;
        f.learning.half_life_ms = self.half_life_ms;
        f.learning.prior_weight = self.prior_weight;
        f.learning.min_observations = self.min_observations;
        f.learning.use_dwell = self.dwell;
        f.learning.calendar = self.calendar;
        f.learning.features = self.features;
        f.learning.auto = self.auto;
        // Nothing is evicted during an evaluation: cases end by their outcome.
        f.learning.expire_ms = i64::MAX / 4;
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: EvalConfig,
    pub label: String,
    pub train_cases: usize,
    pub test_cases: usize,
    pub next_state: NextState,
    pub remaining_time: Option<Remaining>,
    pub outcome: Option<OutcomeReport>,
    /// Against known true probabilities (simulated streams).
    pub truth: Option<Truth>,
    /// Next-state accuracy on the validation split (training cases only), when selecting.
    pub validation: Option<NextState>,
    /// Outcomes on the validation split, when selecting on a flow with artifacts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_outcome: Option<OutcomeReport>,
    /// Chosen on the validation split among the configurations compared.
    pub selected: bool,
    /// With the self-tuning model: the three members it trusted most at the end of training
    /// (flow-wide weight, recent log-loss).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NextState {
    pub prefixes: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Mean negative natural log of the probability given to the actual next activity, a
    /// zero probability counted as `LOG_LOSS_FLOOR` (an activity never seen there, or a state
    /// never seen at all).
    pub log_loss: f64,
}

/// The probability a zero is counted as in the log-loss: one wrong certainty costs
/// -ln(1e-6) = 13.8, not infinity, so that one surprise does not decide a comparison.
pub const LOG_LOSS_FLOOR: f64 = 1e-6;

/// What `--select` compares configurations by, on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Next-state accuracy (higher is better).
    #[default]
    Accuracy,
    /// Next-state log-loss (lower is better).
    LogLoss,
    /// ROC AUC of the artifact probability against the outcome (flows with artifacts).
    RocAuc,
    /// Brier score of the artifact probability (lower is better; flows with artifacts).
    Brier,
    /// F1 of the alerts: harmonic mean of precision and recall (flows with artifacts).
    AlertF1,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::LogLoss => "log-loss",
            Metric::RocAuc => "roc-auc",
            Metric::Brier => "brier",
            Metric::AlertF1 => "alert-f1",
        }
    }

    /// Whether the metric needs outcomes: a flow with artifacts.
    pub fn needs_artifacts(self) -> bool {
        matches!(self, Metric::RocAuc | Metric::Brier | Metric::AlertF1)
    }

    /// The figure, oriented so that higher is better (losses negated); None where it does
    /// not exist (no outcomes, or a ROC AUC with one class only).
    pub fn score(self, next: &NextState, outcome: Option<&OutcomeReport>) -> Option<f64> {
        match self {
            Metric::Accuracy => Some(next.accuracy),
            Metric::LogLoss => Some(-next.log_loss),
            Metric::RocAuc => outcome.and_then(|o| o.roc_auc),
            Metric::Brier => outcome.map(|o| -o.brier),
            Metric::AlertF1 => outcome.map(OutcomeReport::alert_f1),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Remaining {
    pub prefixes: usize,
    /// Of the expected remaining time (`expected_remaining_ms`).
    pub mae_days: f64,
    /// Of the median remaining time (`median_remaining_ms`), the estimate for this error.
    pub median_mae_days: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutcomeReport {
    /// Test cases with a known outcome, and how many of them reached an artifact.
    pub cases: usize,
    pub artifact_cases: usize,
    /// Predictions scored (one per prefix).
    pub predictions: usize,
    pub roc_auc: Option<f64>,
    pub brier: f64,
    pub calibration: Vec<CalibrationBin>,
    pub alert_threshold: f64,
    pub alerted_cases: usize,
    pub true_alerts: usize,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub median_lead_time_ms: Option<i64>,
}

impl OutcomeReport {
    /// 2 x true alerts / (alerted cases + artifact cases): 0 when no alert was right.
    pub fn alert_f1(&self) -> f64 {
        let d = self.alerted_cases + self.artifact_cases;
        if self.true_alerts == 0 || d == 0 {
            0.0
        } else {
            2.0 * self.true_alerts as f64 / d as f64
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CalibrationBin {
    pub from: f64,
    pub to: f64,
    pub predictions: usize,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub predictions: usize,
    /// Mean squared difference between predicted and true artifact probabilities.
    pub brier_vs_truth: f64,
    /// The same for the a priori model alone, for scale.
    pub brier_vs_outcome: f64,
}

/// Per test case: the predictions traced at each state entry, the states entered, the end.
#[derive(Default)]
struct CaseTrace {
    predictions: Vec<crate::engine::Prediction>,
    /// The most frequent training activity when each prediction was made (for states never
    /// seen): only the training messages seen so far count.
    fallbacks: Vec<Option<String>>,
    times: Vec<i64>,
    outcome: Option<(bool, i64)>,
    /// The terminal state the case ended in (an activity, when the flow's terminal is one).
    end_state: Option<String>,
    first_alert: Option<i64>,
}

/// Activity counts, and the most frequent activity (ties toward the larger label, as
/// strings), kept as counts grow: the fallback prediction for a state never seen.
#[derive(Default)]
struct Frequent {
    counts: HashMap<String, usize>,
    best: Option<String>,
    best_count: usize,
}

impl Frequent {
    fn add(&mut self, activity: &str) {
        if activity == CASE_END {
            return;
        }
        let c = self.counts.entry(activity.to_string()).or_default();
        *c += 1;
        // Only this count grew: it is the new best or the old best stands.
        let better = *c > self.best_count
            || (*c == self.best_count && self.best.as_deref().is_none_or(|b| activity > b));
        if better {
            self.best_count = *c;
            self.best = Some(activity.to_string());
        }
    }
}

/// Tax et al.'s split: three folds of round(n/3) cases, the first two for training.
fn train_cases(n_cases: usize) -> usize {
    (2 * ((n_cases as f64 / 3.0).round() as usize)).min(n_cases)
}

/// The predictions traced for each test case, in the order of the cases (empty for a case
/// the flow never tracked): exactly what `evaluate` scores. For tests that prove the protocol
/// cannot leak: a test case's predictions must not depend on the other test cases, nor on its
/// own future.
pub fn test_predictions(
    flow: &CompiledFlow,
    stream: &Stream,
    cfg: &EvalConfig,
) -> Vec<Vec<crate::engine::Prediction>> {
    let flow = cfg.apply(flow);
    let n_train = train_cases(stream.cases.len());
    let (mut traces, _) = trace(&flow, stream, cfg, n_train);
    stream.cases[n_train..]
        .iter()
        .map(|c| traces.remove(c).map(|t| t.predictions).unwrap_or_default())
        .collect()
}

/// Runs the engine over the split by the configuration's mode (`flow` already configured)
/// and collects what it says about each test case, and (with the self-tuning model) the
/// members it trusted at the end, by weight.
fn trace(
    flow: &CompiledFlow,
    stream: &Stream,
    cfg: &EvalConfig,
    n_train: usize,
) -> (HashMap<String, CaseTrace>, Vec<MemberSummary>) {
    let n_cases = stream.cases.len();
    let is_test = |c: u32| (c as usize) >= n_train;
    let mut engine = Engine::new(vec![flow.clone()]);
    let mut records = Vec::new();
    let mut traces: HashMap<String, CaseTrace> = HashMap::new();
    let mut by_case: Vec<Vec<usize>> = vec![Vec::new(); n_cases];
    for (i, &c) in stream.case_of.iter().enumerate() {
        by_case[c as usize].push(i);
    }
    // Activity frequencies in training so far, for the fallback prediction.
    let mut freq = Frequent::default();
    // Records about test cases go to their traces; everything else is dropped.
    let collect = |records: &mut Vec<Record>,
                   traces: &mut HashMap<String, CaseTrace>,
                   fallback: &Option<String>| {
        for r in records.drain(..) {
            match r {
                Record::Prediction(p) => {
                    if let Some(e) = traces.get_mut(&p.object) {
                        e.times
                            .push(crate::engine::time::parse_str(&p.at).unwrap_or(0));
                        e.predictions.push(p);
                        e.fallbacks.push(fallback.clone());
                    }
                }
                Record::Outcome(o) => {
                    if let Some(e) = traces.get_mut(&o.object) {
                        if o.kind != "expired" {
                            let t = crate::engine::time::parse_str(&o.at).unwrap_or(0);
                            e.outcome = Some((o.kind == "artifact", t));
                            if o.kind == "success" {
                                e.end_state = Some(o.outcome.clone());
                            }
                        }
                    }
                }
                Record::Alert(a) => {
                    if let Some(e) = traces.get_mut(&a.object) {
                        if e.first_alert.is_none() {
                            e.first_alert = crate::engine::time::parse_str(&a.at);
                        }
                    }
                }
                _ => {}
            }
        }
    };
    let sorted =
        |idx: &mut Vec<usize>| idx.sort_by_key(|&i| (stream.messages[i].time_ms.unwrap_or(0), i));
    for c in n_train..n_cases {
        traces.insert(stream.cases[c].clone(), CaseTrace::default());
    }
    if cfg.mode != Mode::Frozen {
        engine.trace = true;
        let mut all: Vec<usize> = (0..stream.messages.len()).collect();
        sorted(&mut all);
        for i in all {
            let training = !is_test(stream.case_of[i]);
            if training {
                if let Some(et) = stream.messages[i].event_type() {
                    freq.add(et);
                }
            }
            engine.learn = training || cfg.mode == Mode::Online;
            engine.observe(&stream.messages[i], &mut records);
            collect(&mut records, &mut traces, &freq.best);
        }
    } else {
        let mut train: Vec<usize> = (0..stream.messages.len())
            .filter(|&i| !is_test(stream.case_of[i]))
            .collect();
        sorted(&mut train);
        // Only the model at the end of training is tested: fit features once, there.
        engine.set_feature_autofit(false);
        for i in train {
            if let Some(et) = stream.messages[i].event_type() {
                freq.add(et);
            }
            engine.observe(&stream.messages[i], &mut records);
            records.clear();
        }
        let fallback = freq.best.clone();
        // The frozen model is the one trained on every training case, and stays that model
        // while the test cases are replayed: no learning, and no decay as their times pass.
        engine.refit_features();
        engine.freeze();
        engine.trace = true;
        for idx in &by_case[n_train..] {
            let start = idx
                .iter()
                .filter_map(|&i| stream.messages[i].time_ms)
                .min()
                .unwrap_or(0);
            let mut offset = (engine.clock_ms() - start).max(0);
            if cfg.calendar != Calendar::Off || cfg.features || cfg.auto {
                // Whole weeks, so that each time keeps its time of day and day of the week.
                const WEEK: i64 = 7 * 86_400_000;
                offset = (offset + WEEK - 1) / WEEK * WEEK;
            }
            for &i in idx {
                let mut m = stream.messages[i].clone();
                m.time_ms = m.time_ms.map(|t| t + offset);
                engine.observe(&m, &mut records);
                collect(&mut records, &mut traces, &fallback);
            }
        }
    }
    let mut members = engine.flows[0]
        .model
        .mixture
        .as_ref()
        .map(|m| m.summary())
        .unwrap_or_default();
    members.sort_by(|a, b| b.weight.total_cmp(&a.weight));
    members.truncate(3);
    (traces, members)
}

pub fn evaluate(
    flow: &CompiledFlow,
    stream: &Stream,
    cfg: &EvalConfig,
    truth: Option<&CompiledFlow>,
) -> anyhow::Result<Report> {
    let flow = cfg.apply(flow);
    let n_cases = stream.cases.len();
    let n_train = train_cases(n_cases);
    let (traces, members) = trace(&flow, stream, cfg, n_train);

    // State name -> the activity label it stands for (the rule's event type), for scoring.
    let label_of = |state: &str| -> String {
        let id = flow.state_id(state);
        id.and_then(|i| flow.state(i).label.clone())
            .unwrap_or_else(|| state.to_string())
    };
    let activity_state = |state: &str| -> bool {
        flow.state_id(state).is_some_and(|i| {
            let s = flow.state(i);
            s.kind != Kind::Artifact && !(s.kind == Kind::Terminal && s.name == "done")
        })
    };

    // Next state and remaining time.
    let (mut prefixes, mut correct) = (0, 0);
    let mut loss = 0.0f64;
    let (mut rem_n, mut rem_abs, mut rem_abs_median) = (0usize, 0.0f64, 0.0f64);
    for c in n_train..n_cases {
        let Some(t) = traces.get(&stream.cases[c]) else {
            continue;
        };
        // The states the case went through: one prediction at each, except a terminal one.
        let mut states: Vec<&str> = t.predictions.iter().map(|p| p.state.as_str()).collect();
        if let Some(end) = t.end_state.as_deref().filter(|s| activity_state(s)) {
            states.push(end);
        }
        let len = states.len();
        if len < 3 {
            continue;
        }
        let last_time = t
            .outcome
            .map(|o| o.1)
            .into_iter()
            .chain(t.times.last().copied())
            .max()
            .unwrap_or(0);
        for (k, state) in states.iter().enumerate().skip(2) {
            let p = &t.predictions[k - 1];
            let actual = label_of(state);
            let predicted = p
                .next
                .iter()
                .filter(|(s, _)| activity_state(s))
                .map(|(s, pr)| (label_of(s), *pr))
                .max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
                .map(|(l, _)| l)
                .or_else(|| t.fallbacks[k - 1].clone());
            prefixes += 1;
            if predicted.as_deref() == Some(actual.as_str()) {
                correct += 1;
            }
            let p_actual: f64 = p
                .next
                .iter()
                .filter(|(s, _)| activity_state(s) && label_of(s) == actual)
                .map(|(_, pr)| *pr)
                .sum();
            loss -= p_actual.max(LOG_LOSS_FLOOR).ln();
            rem_n += 1;
            let actual_rem = (last_time - t.times[k - 1]) as f64;
            rem_abs += (p.expected_remaining_ms - actual_rem).abs();
            rem_abs_median += (p.median_remaining_ms - actual_rem).abs();
        }
    }
    let next_state = NextState {
        prefixes,
        correct,
        accuracy: if prefixes > 0 {
            correct as f64 / prefixes as f64
        } else {
            0.0
        },
        log_loss: if prefixes > 0 {
            loss / prefixes as f64
        } else {
            0.0
        },
    };
    let remaining_time =
        (rem_n > 0 && flow.states.iter().any(|s| s.kind.is_final())).then(|| Remaining {
            prefixes: rem_n,
            mae_days: rem_abs / rem_n as f64 / 86_400_000.0,
            median_mae_days: rem_abs_median / rem_n as f64 / 86_400_000.0,
        });

    // Outcomes.
    let artifacts: Vec<String> = flow
        .artifacts()
        .map(|a| flow.name_of(a).to_string())
        .collect();
    let outcome = if artifacts.is_empty() {
        None
    } else {
        Some(outcome_report(&flow, n_train..n_cases, stream, &traces))
    };
    let truth = truth.map(|t| truth_report(t, n_train..n_cases, stream, &traces));
    Ok(Report {
        label: cfg.label(),
        config: cfg.clone(),
        train_cases: n_train,
        test_cases: n_cases - n_train,
        next_state,
        remaining_time,
        outcome,
        truth,
        validation: None,
        validation_outcome: None,
        selected: false,
        members,
    })
}

/// The training cases alone, as a stream of their own: evaluated, their first 2/3 fit and the
/// last 1/3 validate.
pub fn training_part(stream: &Stream) -> Stream {
    let n_train = train_cases(stream.cases.len());
    let keep: Vec<usize> = (0..stream.messages.len())
        .filter(|&i| (stream.case_of[i] as usize) < n_train)
        .collect();
    Stream {
        messages: keep.iter().map(|&i| stream.messages[i].clone()).collect(),
        case_of: keep.iter().map(|&i| stream.case_of[i]).collect(),
        cases: stream.cases[..n_train].to_vec(),
    }
}

fn risk_sum(p: &crate::engine::Prediction) -> f64 {
    p.risk.values().sum::<f64>().min(1.0)
}

fn outcome_report(
    flow: &CompiledFlow,
    test: std::ops::Range<usize>,
    stream: &Stream,
    traces: &HashMap<String, CaseTrace>,
) -> OutcomeReport {
    let mut pairs: Vec<(f64, bool)> = Vec::new();
    let (mut cases, mut artifact_cases, mut alerted, mut true_alerts) = (0, 0, 0, 0);
    let mut leads = Vec::new();
    for c in test {
        let Some(t) = traces.get(&stream.cases[c]) else {
            continue;
        };
        let Some((bad, at)) = t.outcome else { continue };
        cases += 1;
        if bad {
            artifact_cases += 1;
        }
        for p in &t.predictions {
            pairs.push((risk_sum(p), bad));
        }
        if let Some(first) = t.first_alert {
            alerted += 1;
            if bad {
                true_alerts += 1;
                leads.push(at - first);
            }
        }
    }
    let brier = if pairs.is_empty() {
        0.0
    } else {
        pairs
            .iter()
            .map(|(p, y)| (p - if *y { 1.0 } else { 0.0 }).powi(2))
            .sum::<f64>()
            / pairs.len() as f64
    };
    let calibration = (0..10)
        .filter_map(|d| {
            let (lo, hi) = (d as f64 / 10.0, (d + 1) as f64 / 10.0);
            let bin: Vec<&(f64, bool)> = pairs
                .iter()
                .filter(|(p, _)| *p >= lo && (*p < hi || (d == 9 && *p <= 1.0)))
                .collect();
            (!bin.is_empty()).then(|| CalibrationBin {
                from: lo,
                to: hi,
                predictions: bin.len(),
                mean_predicted: bin.iter().map(|(p, _)| p).sum::<f64>() / bin.len() as f64,
                observed_rate: bin.iter().filter(|(_, y)| *y).count() as f64 / bin.len() as f64,
            })
        })
        .collect();
    leads.sort_unstable();
    let threshold = flow
        .artifacts()
        .map(|a| flow.alerts[a as usize].threshold)
        .fold(f64::INFINITY, f64::min);
    OutcomeReport {
        cases,
        artifact_cases,
        predictions: pairs.len(),
        roc_auc: roc_auc(&pairs),
        brier,
        calibration,
        alert_threshold: threshold,
        alerted_cases: alerted,
        true_alerts,
        precision: (alerted > 0).then(|| true_alerts as f64 / alerted as f64),
        recall: (artifact_cases > 0).then(|| true_alerts as f64 / artifact_cases as f64),
        median_lead_time_ms: leads.get(leads.len() / 2).copied(),
    }
}

/// ROC AUC by the Mann-Whitney statistic, ties counted half.
pub fn roc_auc(pairs: &[(f64, bool)]) -> Option<f64> {
    let mut v: Vec<(f64, bool)> = pairs.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|x| x.1).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += v[i..j].iter().filter(|x| x.1).count() as f64 * avg_rank;
        i = j;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Predicted artifact probabilities against the true ones of the flow that generated the
/// stream (its a priori counts are the truth).
fn truth_report(
    truth: &CompiledFlow,
    test: std::ops::Range<usize>,
    stream: &Stream,
    traces: &HashMap<String, CaseTrace>,
) -> Truth {
    let mut model = crate::engine::markov::FlowModel::new(truth);
    model.refresh();
    let sol = model.cached().expect("refreshed").clone();
    let artifact_cols: Vec<usize> = sol
        .finals
        .iter()
        .enumerate()
        .filter(|(_, f)| truth.state(**f).kind == Kind::Artifact)
        .map(|(i, _)| i)
        .collect();
    let true_risk = |state: &str| -> Option<f64> {
        let id = truth.state_id(state)?;
        let row = sol.absorb_row(id);
        Some(artifact_cols.iter().map(|&i| row[i]).sum())
    };
    let (mut n, mut se, mut se_outcome) = (0usize, 0.0, 0.0);
    for c in test {
        let Some(t) = traces.get(&stream.cases[c]) else {
            continue;
        };
        let y = t.outcome.map(|o| if o.0 { 1.0 } else { 0.0 });
        for p in &t.predictions {
            if let (Some(tr), Some(y)) = (true_risk(&p.state), y) {
                n += 1;
                se += (risk_sum(p) - tr).powi(2);
                se_outcome += (risk_sum(p) - y).powi(2);
            }
        }
    }
    Truth {
        predictions: n,
        brier_vs_truth: if n > 0 { se / n as f64 } else { 0.0 },
        brier_vs_outcome: if n > 0 { se_outcome / n as f64 } else { 0.0 },
    }
}

/// A fixed-width table of several reports, best next-state accuracy marked.
pub fn render(reports: &[Report]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let best = reports
        .iter()
        .map(|r| r.next_state.accuracy)
        .fold(f64::NEG_INFINITY, f64::max);
    let validated = reports.iter().any(|r| r.validation.is_some());
    let _ = writeln!(
        o,
        "{:<86} {:>9} {}{:>8} {:>10} {:>8} {:>8} {:>7} {:>9} {:>9}",
        "configuration",
        "prefixes",
        if validated { " val acc " } else { "" },
        "next acc",
        "MAE days",
        "MAE med",
        "ROC AUC",
        "Brier",
        "precision",
        "recall"
    );
    for r in reports {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        let mark = if validated {
            if r.selected {
                " <- selected on validation"
            } else {
                ""
            }
        } else if (r.next_state.accuracy - best).abs() < 1e-12 {
            " *"
        } else {
            ""
        };
        let val = if validated {
            format!("{:>8} ", f(r.validation.as_ref().map(|v| v.accuracy)))
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "{:<86} {:>9} {val}{:>8.4} {:>10} {:>8} {:>8} {:>7} {:>9} {:>9}{mark}",
            r.label,
            r.next_state.prefixes,
            r.next_state.accuracy,
            f(r.remaining_time.as_ref().map(|m| m.mae_days)),
            f(r.remaining_time.as_ref().map(|m| m.median_mae_days)),
            f(r.outcome.as_ref().and_then(|o| o.roc_auc)),
            f(r.outcome.as_ref().map(|o| o.brier)),
            f(r.outcome.as_ref().and_then(|o| o.precision)),
            f(r.outcome.as_ref().and_then(|o| o.recall)),
        );
    }
    for r in reports.iter().filter(|r| !r.members.is_empty()) {
        let trusted: Vec<String> = r
            .members
            .iter()
            .map(|m| format!("{} {:.2}", m.member, m.weight))
            .collect();
        let _ = writeln!(o, "trusted most ({}): {}", r.label, trusted.join(", "));
    }
    // The outcomes of the chosen configuration when there is one, else of the first.
    let detailed = reports
        .iter()
        .find(|r| r.selected && r.outcome.is_some())
        .or_else(|| reports.iter().find(|r| r.outcome.is_some()));
    if let Some(r) = detailed {
        let oc = r.outcome.as_ref().expect("found");
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "outcomes ({}): {} test cases with an outcome, {} reached an artifact; {} alerted ({} rightly); median lead time {}",
            r.label,
            oc.cases,
            oc.artifact_cases,
            oc.alerted_cases,
            oc.true_alerts,
            oc.median_lead_time_ms.map(|m| format!("{:.1} s", m as f64 / 1000.0)).unwrap_or_else(|| "-".into())
        );
        let _ = writeln!(o, "calibration: predicted  observed  (predictions)");
        for b in &oc.calibration {
            let _ = writeln!(
                o,
                "  [{:.1}, {:.1})  {:>8.3}  {:>8.3}  ({})",
                b.from, b.to, b.mean_predicted, b.observed_rate, b.predictions
            );
        }
    }
    for r in reports.iter().filter(|r| r.truth.is_some()) {
        let t = r.truth.as_ref().expect("filtered");
        let _ = writeln!(
            o,
            "against the true probabilities ({}): Brier {:.5} over {} predictions (against outcomes: {:.4})",
            r.label, t.brier_vs_truth, t.predictions, t.brier_vs_outcome
        );
    }
    o
}
