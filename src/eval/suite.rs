//! A suite of logs in one table: per log the reference chains (Markov-1, Markov-2) computed by
//! flowcast under the same protocol, the default configuration, and what `--select` chose on a
//! validation split. The figures come from `evaluate`; this module only names and lays them out.

use super::evaluate::{EvalConfig, Mode, NextState, Remaining, Report};
use crate::model::Calendar;
use serde::Serialize;

/// The reference chains of `../shared/data/README.md` as flowcast configurations: the most
/// frequent successor of the last `history` activities, a shorter context for one never seen
/// (`min_obs` 0: any count is trusted), no recency, no a priori counts, no dwell.
pub fn markov(history: usize) -> EvalConfig {
    EvalConfig {
        history,
        half_life_ms: None,
        prior_weight: 0.0,
        min_observations: 0.0,
        dwell: false,
        calendar: Calendar::Off,
        features: false,
        auto: false,
        mode: Mode::Frozen,
    }
}

/// One configuration's figures on the test cases.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub configuration: String,
    pub next_state: NextState,
    /// Next-state accuracy on the validation split, for the selected configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_accuracy: Option<f64>,
    /// The remaining-time errors (expectation and median), when the flow has a final state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_time: Option<Remaining>,
    /// With the self-tuning model: the members it trusted most at the end of training.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<crate::engine::mixture::MemberSummary>,
}

impl Figure {
    pub fn of(r: &Report) -> Figure {
        Figure {
            configuration: r.label.clone(),
            next_state: r.next_state.clone(),
            validation_accuracy: r.validation.as_ref().map(|v| v.accuracy),
            remaining_time: r.remaining_time.clone(),
            members: r.members.clone(),
        }
    }
}

/// One log of the suite.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteRow {
    pub log: String,
    pub cases: usize,
    pub train_cases: usize,
    pub test_cases: usize,
    pub markov_1: Figure,
    pub markov_2: Figure,
    /// What `flowcast eval LOG` runs with no options.
    pub default: Figure,
    /// Chosen on the validation split among the grid given (`--select`).
    pub selected: Option<Figure>,
    /// The grid's best row on the test cases: a bound, not a method (it looks at the test).
    pub grid_best: Option<Figure>,
}

/// The suite as a fixed-width table, with the mean of each column over the logs at the end.
pub fn render(rows: &[SuiteRow]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let select = rows.iter().any(|r| r.selected.is_some());
    let _ = write!(
        o,
        "{:<34} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "log", "cases", "prefixes", "Markov-1", "Markov-2", "default"
    );
    if select {
        let _ = write!(
            o,
            " {:>9} {:>9}  selected configuration",
            "selected", "grid best"
        );
    }
    let _ = writeln!(o);
    let acc = |f: &Figure| f.next_state.accuracy;
    for r in rows {
        let _ = write!(
            o,
            "{:<34} {:>7} {:>9} {:>9.4} {:>9.4} {:>9.4}",
            r.log,
            r.cases,
            r.markov_1.next_state.prefixes,
            acc(&r.markov_1),
            acc(&r.markov_2),
            acc(&r.default)
        );
        if let (Some(s), Some(b)) = (&r.selected, &r.grid_best) {
            let _ = write!(o, " {:>9.4} {:>9.4}  {}", acc(s), acc(b), s.configuration);
        }
        let _ = writeln!(o);
    }
    if rows.len() > 1 {
        let n = rows.len() as f64;
        let mean = |f: &dyn Fn(&SuiteRow) -> f64| rows.iter().map(f).sum::<f64>() / n;
        let _ = write!(
            o,
            "{:<34} {:>7} {:>9} {:>9.4} {:>9.4} {:>9.4}",
            "mean",
            "",
            "",
            mean(&|r| acc(&r.markov_1)),
            mean(&|r| acc(&r.markov_2)),
            mean(&|r| acc(&r.default))
        );
        if select {
            let pick = |f: &Option<Figure>| f.as_ref().map_or(0.0, acc);
            let _ = write!(
                o,
                " {:>9.4} {:>9.4}",
                mean(&|r| pick(&r.selected)),
                mean(&|r| pick(&r.grid_best))
            );
        }
        let _ = writeln!(o);
    }
    if let Some(r) = rows.first() {
        let _ = writeln!(o, "\ndefault: {}", r.default.configuration);
    }
    o
}
