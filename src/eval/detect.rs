//! Detection: does the engine's `anomaly` record separate abnormal sessions from normal ones
//! (issue 12)? Sessions come as lines of event names separated by spaces (DeepLog's HDFS
//! files). The first 2/3 of the normal sessions train the engine (calibrating its thresholds
//! too); the model is then frozen and every test session (the last 1/3 of the normal ones,
//! and every abnormal one) is replayed on its own. A session is flagged when the engine emits
//! an `anomaly` for it; its score (ROC AUC) is its largest step surprise.
//!
//! Two baselines run on the same split: a session is flagged when it holds a transition
//! never seen in training, or an n-gram never seen in training (sessions padded with a begin
//! and an end mark, so that a session cut short is a new n-gram too).

use crate::engine::message::Message;
use crate::engine::output::Record;
use crate::engine::Engine;
use crate::model::CompiledFlow;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct DetectConfig {
    /// The engine's calibrated thresholds flag this share of learned steps.
    pub false_alarm_rate: f64,
    /// Length of the n-gram baseline.
    pub ngram: usize,
}

impl Default for DetectConfig {
    fn default() -> DetectConfig {
        DetectConfig {
            false_alarm_rate: 0.001,
            ngram: 5,
        }
    }
}

/// One detector's figures over the test sessions.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Detection {
    pub method: String,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub false_alarms_per_1000: f64,
    /// Of the session score; `None` when a class is empty.
    pub roc_auc: Option<f64>,
    /// Over flagged abnormal sessions: steps from the first flagged one to the session's end
    /// (0: flagged at its last step, the end of the session included as a step).
    pub lead_steps_median: Option<f64>,
    pub lead_steps_mean: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DetectReport {
    pub train_sessions: usize,
    pub normal_test_sessions: usize,
    pub abnormal_sessions: usize,
    pub config: DetectConfig,
    pub methods: Vec<Detection>,
}

/// What one detector said about one test session.
struct Verdict {
    abnormal: bool,
    score: f64,
    /// Index of the first flagged step (0 = the first event; `len` = the end of the session).
    first: Option<usize>,
    len: usize,
}

/// Reads sessions: one per non-empty line, events separated by whitespace.
pub fn parse_sessions(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A flow with one state per event seen in training (`e0`, `e1`, ...), `unknown` for any
/// other event and `end` at the end of a session. The events' own text never enters the flow
/// source (a backslash or a `*` in it would be an escape or a glob): messages carry the
/// state's name as their event type, and `events` maps each event to it.
fn session_flow(
    train: &[Vec<String>],
    cfg: &DetectConfig,
) -> (CompiledFlow, HashMap<String, String>) {
    let mut events: HashMap<String, String> = HashMap::new();
    for e in train.iter().flatten() {
        let next = format!("e{}", events.len());
        events.entry(e.clone()).or_insert(next);
    }
    let mut src = String::from("flow sessions {\n  key id\n  initial begin\n  terminal end\n");
    src.push_str("  state unknown\n");
    src.push_str("  on \"session.begin\" -> begin\n  on \"session.end\" -> end\n");
    src.push_str("  on \"unknown\" -> unknown\n");
    for i in 0..events.len() {
        src.push_str(&format!("  state e{i}\n  on \"e{i}\" -> e{i}\n"));
    }
    src.push_str("  learn { half_life off  repeats count  expire 3650d }\n");
    src.push_str(&format!(
        "  anomaly {{ false_alarm_rate {} }}\n}}\n",
        cfg.false_alarm_rate
    ));
    let c = crate::model::compile_files([("sessions.flow".to_string(), src.into_bytes())]);
    assert!(!c.has_errors(), "the session flow is ours: {}", c.render());
    (c.flows.into_iter().next().expect("one flow"), events)
}

fn message(event: &str, id: &str, t: i64) -> Message {
    Message {
        value: serde_json::json!({ "event_type": event, "id": id }),
        time_ms: Some(t),
        message_id: None,
    }
}

/// Feeds one session; returns the index of the step of its first anomaly (if any) and the
/// session's largest step surprise.
fn replay(
    e: &mut Engine,
    events: &HashMap<String, String>,
    id: &str,
    s: &[String],
    t0: i64,
    out: &mut Vec<Record>,
) -> Verdict {
    let mut first = None;
    let mut score = 0.0;
    let mut t = t0;
    e.observe(&message("session.begin", id, t), out);
    out.clear();
    for i in 0..=s.len() {
        t += 1000;
        let event = match s.get(i) {
            Some(ev) => events.get(ev).map_or("unknown", String::as_str),
            None => "session.end",
        };
        e.observe(&message(event, id, t), out);
        for r in out.drain(..) {
            match r {
                Record::Anomaly(_) if first.is_none() => first = Some(i),
                Record::Outcome(o) => score = o.surprise_peak.unwrap_or(0.0),
                _ => {}
            }
        }
    }
    Verdict {
        abnormal: first.is_some(),
        score,
        first,
        len: s.len(),
    }
}

/// Runs the engine and both baselines on the split (module comment).
pub fn detect(normal: &[Vec<String>], abnormal: &[Vec<String>], cfg: DetectConfig) -> DetectReport {
    let n_train = (normal.len() * 2).div_ceil(3);
    let (train, normal_test) = normal.split_at(n_train);
    let (flow, events) = session_flow(train, &cfg);
    let mut e = Engine::new(vec![flow]);
    let mut out = Vec::new();
    let mut t = 0i64;
    for (i, s) in train.iter().enumerate() {
        replay(&mut e, &events, &format!("train{i}"), s, t, &mut out);
        t += (s.len() as i64 + 2) * 1000;
    }
    e.freeze();
    let tests: Vec<(&Vec<String>, bool)> = normal_test
        .iter()
        .map(|s| (s, false))
        .chain(abnormal.iter().map(|s| (s, true)))
        .collect();
    let engine: Vec<Verdict> = tests
        .iter()
        .enumerate()
        .map(|(i, (s, _))| {
            let v = replay(&mut e, &events, &format!("test{i}"), s, t, &mut out);
            t += (s.len() as i64 + 2) * 1000;
            v
        })
        .collect();
    let labels: Vec<bool> = tests.iter().map(|(_, a)| *a).collect();
    let unseen_pairs = Baseline::new(train, 2);
    let unseen_ngrams = Baseline::new(train, cfg.ngram);
    let pairs: Vec<Verdict> = tests.iter().map(|(s, _)| unseen_pairs.judge(s)).collect();
    let ngrams: Vec<Verdict> = tests.iter().map(|(s, _)| unseen_ngrams.judge(s)).collect();
    DetectReport {
        train_sessions: train.len(),
        normal_test_sessions: normal_test.len(),
        abnormal_sessions: abnormal.len(),
        config: cfg,
        methods: vec![
            figures("flowcast anomaly", &engine, &labels),
            figures("unseen transition", &pairs, &labels),
            figures(&format!("unseen {}-gram", cfg.ngram), &ngrams, &labels),
        ],
    }
}

/// The n-grams (n >= 2) of the padded training sessions.
struct Baseline {
    n: usize,
    seen: HashSet<Vec<u32>>,
    ids: HashMap<String, u32>,
}

const BEGIN: u32 = u32::MAX;
const END: u32 = u32::MAX - 1;
const UNSEEN: u32 = u32::MAX - 2;

impl Baseline {
    fn new(train: &[Vec<String>], n: usize) -> Baseline {
        let mut b = Baseline {
            n: n.max(2),
            seen: HashSet::new(),
            ids: HashMap::new(),
        };
        for s in train {
            for e in s {
                let next = b.ids.len() as u32;
                b.ids.entry(e.clone()).or_insert(next);
            }
            let padded = b.padded(s);
            for w in padded.windows(b.n) {
                b.seen.insert(w.to_vec());
            }
        }
        b
    }

    /// `n - 1` begin marks, the events, one end mark: every n-gram ends at an event or the end.
    fn padded(&self, s: &[String]) -> Vec<u32> {
        let mut v = vec![BEGIN; self.n - 1];
        v.extend(s.iter().map(|e| self.ids.get(e).copied().unwrap_or(UNSEEN)));
        v.push(END);
        v
    }

    fn judge(&self, s: &[String]) -> Verdict {
        let padded = self.padded(s);
        let mut first = None;
        let mut unseen = 0;
        for (i, w) in padded.windows(self.n).enumerate() {
            if !self.seen.contains(w) {
                unseen += 1;
                first.get_or_insert(i);
            }
        }
        Verdict {
            abnormal: first.is_some(),
            score: unseen as f64,
            first,
            len: s.len(),
        }
    }
}

fn figures(method: &str, verdicts: &[Verdict], labels: &[bool]) -> Detection {
    let (mut tp, mut fp, mut fneg) = (0, 0, 0);
    let mut leads = Vec::new();
    for (v, &abnormal) in verdicts.iter().zip(labels) {
        match (v.abnormal, abnormal) {
            (true, true) => {
                tp += 1;
                if let Some(f) = v.first {
                    leads.push((v.len - f.min(v.len)) as f64);
                }
            }
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            (false, false) => {}
        }
    }
    let normals = labels.iter().filter(|a| !**a).count();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fneg);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    let scores: Vec<(f64, bool)> = verdicts
        .iter()
        .map(|v| v.score)
        .zip(labels.iter().copied())
        .collect();
    leads.sort_by(f64::total_cmp);
    Detection {
        method: method.to_string(),
        true_positives: tp,
        false_positives: fp,
        false_negatives: fneg,
        precision,
        recall,
        f1,
        false_alarms_per_1000: 1000.0 * ratio(fp, normals),
        roc_auc: super::evaluate::roc_auc(&scores),
        lead_steps_median: (!leads.is_empty()).then(|| leads[leads.len() / 2]),
        lead_steps_mean: (!leads.is_empty())
            .then(|| leads.iter().sum::<f64>() / leads.len() as f64),
    }
}

/// The report as a table.
pub fn render(r: &DetectReport) -> String {
    let mut s = format!(
        "detection: {} normal sessions train; test {} normal + {} abnormal (false_alarm_rate {})\n",
        r.train_sessions, r.normal_test_sessions, r.abnormal_sessions, r.config.false_alarm_rate
    );
    s.push_str(&format!(
        "{:<20} {:>9} {:>7} {:>7} {:>13} {:>8} {:>9} {:>7} {:>6} {:>6}\n",
        "method",
        "precision",
        "recall",
        "F1",
        "FA per 1000",
        "ROC AUC",
        "lead med",
        "mean",
        "TP",
        "FP"
    ));
    for m in &r.methods {
        let opt = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |v| format!("{v:.d$}"));
        s.push_str(&format!(
            "{:<20} {:>9.4} {:>7.4} {:>7.4} {:>13.1} {:>8} {:>9} {:>7} {:>6} {:>6}\n",
            m.method,
            m.precision,
            m.recall,
            m.f1,
            m.false_alarms_per_1000,
            opt(m.roc_auc, 4),
            opt(m.lead_steps_median, 0),
            opt(m.lead_steps_mean, 1),
            m.true_positives,
            m.false_positives
        ));
    }
    s
}
