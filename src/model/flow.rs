//! `CompiledFlow`: a flow that passed every check. Only `model::compile` builds one, so the rest
//! of the program never meets an unknown state name, a transition out of a final state, a
//! threshold outside [0, 1] or a zero duration: states are indices, not names.

use super::cond::{Cond, FieldPath};
use serde::Serialize;

/// Index of a state in `CompiledFlow::states`.
pub type StateId = u16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Initial,
    #[serde(rename = "state")]
    Ordinary,
    Terminal,
    Artifact,
}

impl Kind {
    /// Terminal states and artifacts end an object's run: they are absorbing in the model.
    pub fn is_final(self) -> bool {
        matches!(self, Kind::Terminal | Kind::Artifact)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct State {
    pub name: String,
    pub label: Option<String>,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub cond: Cond,
    pub target: StateId,
    /// 1-based line of the rule in its file, for messages.
    pub line: usize,
}

/// What to do with an observed transition the file does not list (patent claim 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlisted {
    /// Learn it like any other transition.
    Learn,
    /// Report it as unexpected and keep it out of the model.
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Learning {
    /// Half-life of the recency weighting in ms; `None` weighs all observations alike.
    pub half_life_ms: Option<i64>,
    /// How many observed transitions one a priori count is worth.
    pub prior_weight: f64,
    /// How many of the last states condition the next-state prediction (claim 3).
    pub history: usize,
    /// Observed weight a history context needs before it is trusted over a shorter one.
    pub min_observations: f64,
    /// Objects not seen for this long are evicted with an outcome record.
    pub expire_ms: i64,
    /// A message for the state an object is already in counts as a transition (process logs,
    /// where an activity can repeat) instead of a repeated notification (the default).
    pub count_repeats: bool,
    /// Condition risk on the time already spent in a state ([0102]); evaluation can turn it off.
    pub use_dwell: bool,
    /// Condition the next state on when the object entered its state (UTC time of day, and
    /// weekday or weekend): work done by people and by nightly jobs follows the clock.
    pub calendar: Calendar,
    /// Weigh every signal of an object's past at once with a per-state log-linear model
    /// (`learn { features on }`, see engine::features) instead of interpolated contexts.
    pub features: bool,
    /// The self-tuning model (`learn { model auto }`, the default): a family of predictors
    /// weighed by how well each has predicted (engine::mixture). Off (`model fixed`, or any
    /// of `history`, `min_observations`, `calendar`, `features` set) the one model those
    /// settings describe.
    pub auto: bool,
    /// `learn { from success }`: an object's steps are learned only when it ends in a success
    /// (engine::held); failures and expired objects teach nothing. Left out of the JSON when
    /// off, so that the fingerprints of flows without it (`snapshot::judged_by`) stay as they
    /// were.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_success: bool,
}

/// Classes of the time an object entered its state, for `learn { calendar ... }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Calendar {
    #[default]
    Off,
    /// Eight three-hour classes of the UTC time of day.
    Day,
    /// The same, weekdays apart from weekends (16 classes).
    Week,
}

impl Calendar {
    pub const NONE: u8 = u8::MAX;

    /// The UTC hour (0-23) and weekday (0 = Monday) of a time in ms since the epoch.
    pub fn hour_and_weekday(ms: i64) -> (u8, u8) {
        let secs = ms.div_euclid(1000);
        let hour = secs.div_euclid(3600).rem_euclid(24) as u8;
        // 1970-01-01 was a Thursday: days + 3 counts from a Monday.
        let weekday = (secs.div_euclid(86_400) + 3).rem_euclid(7) as u8;
        (hour, weekday)
    }

    /// The class of a time (ms since the epoch, UTC); `NONE` when off.
    pub fn class(self, ms: i64) -> u8 {
        let (hour, weekday) = Calendar::hour_and_weekday(ms);
        match self {
            Calendar::Off => Calendar::NONE,
            Calendar::Day => hour / 3,
            Calendar::Week => hour / 3 + if weekday >= 5 { 8 } else { 0 },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Calendar::Off => "off",
            Calendar::Day => "day",
            Calendar::Week => "week",
        }
    }
}

impl Default for Learning {
    fn default() -> Learning {
        Learning {
            half_life_ms: Some(7 * 86_400_000),
            prior_weight: 1.0,
            history: 1,
            min_observations: 10.0,
            expire_ms: 86_400_000,
            count_repeats: false,
            use_dwell: true,
            calendar: Calendar::Off,
            features: false,
            auto: true,
            from_success: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AlertLevel {
    /// Risk at or above which an alert fires.
    pub threshold: f64,
    /// Risk below which a firing alert resolves (hysteresis); never above `threshold`.
    pub resolve: f64,
    pub severity: Severity,
}

impl Default for AlertLevel {
    fn default() -> AlertLevel {
        AlertLevel {
            threshold: 0.5,
            resolve: 0.4,
            severity: Severity::Warning,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompiledFlow {
    pub name: String,
    pub description: String,
    /// Where the flow was written, for messages: `models/x.flow:3`.
    pub origin: String,
    /// Key paths tried in order; the first present, non-null one names the object.
    pub keys: Vec<FieldPath>,
    /// Messages must satisfy this to belong to the flow at all.
    pub filter: Option<Cond>,
    pub states: Vec<State>,
    /// In file order: the first rule whose condition holds decides the state.
    pub rules: Vec<Rule>,
    /// A priori transition counts (claim 4), `(from, to, count)`.
    pub priors: Vec<(StateId, StateId, f64)>,
    pub unlisted: Unlisted,
    /// Per state: after how long an object still there reaches which artifact.
    pub timeouts: Vec<Option<(i64, StateId)>>,
    pub learning: Learning,
    /// Per state (only artifacts are read): the alert level for that artifact.
    pub alerts: Vec<AlertLevel>,
    /// When an object's path is improbable enough for an `anomaly` record.
    pub anomaly: AnomalyConfig,
}

/// The `anomaly { ... }` block: when a step (or the last few steps) of an object is improbable
/// under the flow's own model. Thresholds not given are calibrated from what the flow learned:
/// the `1 - false_alarm_rate` quantile of the surprises of learned steps (`engine::surprise`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AnomalyConfig {
    /// `anomaly off`: no surprise is computed at all.
    pub off: bool,
    /// A step whose probability is below this is unusual.
    pub min_probability: Option<f64>,
    /// A step whose next state is not among the `top` most likely is unusual (DeepLog's top-g).
    pub top: Option<u16>,
    /// Steps summed into the window surprise (1 to `MAX_WINDOW`).
    pub window: u8,
    /// A window surprise (nats) above this is unusual.
    pub window_surprise: Option<f64>,
    /// Calibrated thresholds: the share of learned steps (and windows) they would flag.
    pub false_alarm_rate: f64,
    /// No calibrated anomaly before the flow has scored this many learned steps.
    pub min_learned: u64,
    /// `unknown_events on`: a message no rule of any flow matches, about an object this flow
    /// has in flight, is a step of maximal surprise for it.
    pub unknown_events: bool,
}

impl AnomalyConfig {
    /// The most steps a window holds: the ring in `ObjectState` has this many bytes.
    pub const MAX_WINDOW: u8 = 5;

    /// Thresholds are calibrated rather than given.
    pub fn calibrated(&self) -> bool {
        self.min_probability.is_none() && self.top.is_none() && self.window_surprise.is_none()
    }
}

impl Default for AnomalyConfig {
    fn default() -> AnomalyConfig {
        AnomalyConfig {
            off: false,
            min_probability: None,
            top: None,
            window: AnomalyConfig::MAX_WINDOW,
            window_surprise: None,
            false_alarm_rate: 0.001,
            min_learned: 1000,
            unknown_events: false,
        }
    }
}

impl CompiledFlow {
    pub fn state_id(&self, name: &str) -> Option<StateId> {
        self.states
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as StateId)
    }

    pub fn state(&self, id: StateId) -> &State {
        &self.states[id as usize]
    }

    pub fn name_of(&self, id: StateId) -> &str {
        &self.states[id as usize].name
    }

    pub fn artifacts(&self) -> impl Iterator<Item = StateId> + '_ {
        self.states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == Kind::Artifact)
            .map(|(i, _)| i as StateId)
    }

    pub fn is_listed(&self, from: StateId, to: StateId) -> bool {
        self.priors.iter().any(|&(f, t, _)| f == from && t == to)
    }
}
