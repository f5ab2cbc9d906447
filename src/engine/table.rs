//! The model as tables: the patent's FIG. 10 (transition counts, prior and observed) and
//! FIG. 11 (next-state and per-artifact probabilities from every state), for `flowcast model`
//! and the HTTP API.

use super::{round6, FlowRuntime};
use crate::model::{Kind, StateId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct ModelTable {
    pub flow: String,
    pub model_version: u64,
    pub observed_total: f64,
    /// `auto` (the self-tuning family) or `fixed`.
    pub model: &'static str,
    /// The self-tuning model's members: flow-wide weight and recent log-loss.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<super::mixture::MemberSummary>,
    /// Transitions the self-tuning model has scored its members on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transitions_scored: Option<u64>,
    pub transitions: Vec<TransitionRow>,
    pub states: Vec<StateRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransitionRow {
    pub from: String,
    pub to: String,
    pub listed: bool,
    pub prior: f64,
    pub observed: f64,
    /// prior x prior weight + observed
    pub weight: f64,
    pub probability: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateRow {
    pub state: String,
    pub kind: Kind,
    pub next: BTreeMap<String, f64>,
    pub risk: BTreeMap<String, f64>,
    /// Expected time to a terminal state or an artifact from entry, ms.
    pub expected_remaining_ms: f64,
}

pub fn build(rt: &mut FlowRuntime) -> ModelTable {
    rt.model.refresh();
    let flow = rt.flow.clone();
    let model = &rt.model;
    let sol = model.cached().expect("refreshed");
    let n = flow.states.len();
    let mut transitions = Vec::new();
    for s in 0..n {
        for t in 0..n {
            let prior = model.prior[s * n + t];
            let observed = model.observed(s as StateId, t as StateId);
            if prior == 0.0 && observed == 0.0 && !model.is_listed(s as StateId, t as StateId) {
                continue;
            }
            let weight = prior * flow.learning.prior_weight + observed;
            transitions.push(TransitionRow {
                from: flow.name_of(s as StateId).to_string(),
                to: flow.name_of(t as StateId).to_string(),
                listed: model.is_listed(s as StateId, t as StateId),
                prior,
                observed: round6(observed),
                weight: round6(weight),
                probability: round6(sol.p[s * n + t]),
            });
        }
    }
    let mut scratch = Vec::new();
    let mut risk = Vec::new();
    let states = (0..n)
        .map(|s| {
            let id = s as StateId;
            model.predict(
                sol,
                super::markov::Past::NONE,
                id,
                0.0,
                &mut scratch,
                &mut risk,
            );
            let expected = model.expected_remaining(sol, id, 0.0, &scratch);
            StateRow {
                state: flow.name_of(id).to_string(),
                kind: flow.state(id).kind,
                next: sol
                    .p_row(id)
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| **p > 0.0)
                    .map(|(t, p)| (flow.name_of(t as StateId).to_string(), round6(*p)))
                    .collect(),
                risk: super::artifact_risks(&flow, sol, &risk),
                expected_remaining_ms: expected.round(),
            }
        })
        .collect();
    ModelTable {
        flow: flow.name.clone(),
        model_version: sol.version,
        observed_total: round6(model.total_observed()),
        model: if model.mixture.is_some() {
            "auto"
        } else {
            "fixed"
        },
        members: model
            .mixture
            .as_ref()
            .map(|m| {
                m.summary()
                    .into_iter()
                    .map(|mut s| {
                        s.weight = round6(s.weight);
                        s.recent_log_loss = round6(s.recent_log_loss);
                        s
                    })
                    .collect()
            })
            .unwrap_or_default(),
        transitions_scored: model.mixture.as_ref().map(|m| m.scored),
        transitions,
        states,
    }
}

/// Fixed-width text tables, as a person reads them.
pub fn render(t: &ModelTable) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "flow {}  (observed transitions: {})",
        t.flow,
        fmt_num(t.observed_total)
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "Transitions (FIG. 10): prior and observed counts");
    let w1 = t
        .transitions
        .iter()
        .map(|r| r.from.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let w2 = t
        .transitions
        .iter()
        .map(|r| r.to.len())
        .max()
        .unwrap_or(2)
        .max(2);
    let _ = writeln!(
        o,
        "  {:w1$}  {:w2$}  {:>9}  {:>9}  {:>9}  {:>7}",
        "from", "to", "prior", "observed", "weight", "p"
    );
    for r in &t.transitions {
        let mark = if r.listed { "" } else { "  (unlisted)" };
        let _ = writeln!(
            o,
            "  {:w1$}  {:w2$}  {:>9}  {:>9}  {:>9}  {:>7.4}{mark}",
            r.from,
            r.to,
            fmt_num(r.prior),
            fmt_num(r.observed),
            fmt_num(r.weight),
            r.probability
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Predictions (FIG. 11): next state and probability of each artifact"
    );
    let artifacts: Vec<String> = t
        .states
        .first()
        .map(|s| s.risk.keys().cloned().collect())
        .unwrap_or_default();
    let ws = t
        .states
        .iter()
        .map(|s| s.state.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut header = format!("  {:ws$}", "state");
    for a in &artifacts {
        let _ = write!(header, "  {:>w$}", a, w = a.len().max(7));
    }
    let _ = writeln!(o, "{header}  next");
    for s in &t.states {
        let mut line = format!("  {:ws$}", s.state);
        for a in &artifacts {
            let _ = write!(
                line,
                "  {:>w$.4}",
                s.risk.get(a).copied().unwrap_or(0.0),
                w = a.len().max(7)
            );
        }
        let mut next: Vec<(&String, &f64)> = s.next.iter().collect();
        next.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        let next: Vec<String> = next.iter().map(|(n, p)| format!("{n} {p:.4}")).collect();
        let tail = match s.kind {
            Kind::Terminal => "(terminal)".to_string(),
            Kind::Artifact => "(artifact)".to_string(),
            _ if next.is_empty() => "(nothing known)".to_string(),
            _ => next.join(", "),
        };
        let _ = writeln!(o, "{line}  {tail}");
    }
    if t.transitions_scored == Some(0) {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Model (auto): no transition scored yet; the {} members weigh alike",
            t.members.len()
        );
    } else if !t.members.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Model (auto): what each member of the family is trusted with, flow-wide ({} transitions scored)",
            t.transitions_scored.unwrap_or(0)
        );
        let _ = writeln!(
            o,
            "  {:18}  {:>8}  {:>15}",
            "member", "weight", "recent log-loss"
        );
        let mut rows: Vec<&super::mixture::MemberSummary> = t.members.iter().collect();
        rows.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        for m in rows.iter().take(8) {
            let _ = writeln!(
                o,
                "  {:18}  {:>8.4}  {:>15.4}",
                m.member, m.weight, m.recent_log_loss
            );
        }
        if rows.len() > 8 {
            let _ = writeln!(
                o,
                "  ({} more, each below {:.4})",
                rows.len() - 8,
                rows[8].weight.max(rows[7].weight)
            );
        }
    }
    o
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e12 {
        format!("{}", x as i64)
    } else {
        format!("{x:.2}")
    }
}
