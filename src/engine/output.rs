//! What the engine emits: alerts, their resolution, outcomes and unexpected transitions, one
//! JSON object per record with a `type` field. The schema is documented in README.md and is a
//! compatibility promise: fields are added, never renamed or removed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Alert(Alert),
    Resolved(Resolved),
    Outcome(Outcome),
    Unexpected(Unexpected),
    /// With tracing on: the prediction made as an object entered a state.
    Prediction(super::Prediction),
    /// An object's step or recent path was improbable (`anomaly { ... }`, issue 12).
    Anomaly(Anomaly),
    /// The end of an anomaly episode: the object ended, or took a window of normal steps.
    AnomalyResolved(AnomalyResolved),
}

impl Record {
    pub fn flow(&self) -> &str {
        match self {
            Record::Alert(a) => &a.flow,
            Record::Resolved(r) => &r.flow,
            Record::Outcome(o) => &o.flow,
            Record::Unexpected(u) => &u.flow,
            Record::Prediction(p) => &p.flow,
            Record::Anomaly(a) => &a.flow,
            Record::AnomalyResolved(a) => &a.flow,
        }
    }
}

/// What caused a record: a message, or the passing of time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    /// `message` or `timer`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Event time at which the alert fired, RFC 3339.
    pub at: String,
    pub flow: String,
    pub object: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_label: Option<String>,
    pub severity: String,
    /// The artifact that fired the alert (highest risk among those over their threshold).
    pub artifact: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_label: Option<String>,
    /// Its probability.
    pub probability: f64,
    pub threshold: f64,
    /// Probability of every artifact of the flow.
    pub risk: BTreeMap<String, f64>,
    /// The most likely path from the current state to that artifact.
    pub path: Vec<String>,
    pub time_in_state_ms: i64,
    /// Expected time until the object reaches a terminal state or an artifact.
    pub expected_remaining_ms: f64,
    pub model_version: u64,
    pub cause: Cause,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    pub at: String,
    pub flow: String,
    pub object: String,
    /// The state the alert was about.
    pub state: String,
    /// `risk_below_resolve`, `state_changed`, `completed`, `artifact`, `expired`, `flow_removed`,
    /// `state_removed` (the flow files no longer define the flow, or the state).
    pub reason: String,
    pub firing_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub at: String,
    pub flow: String,
    pub object: String,
    /// The terminal state or artifact reached, or the state the object was in when evicted.
    pub outcome: String,
    /// `success` (a terminal state), `artifact`, or `expired` (not seen for too long).
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The state the object was in just before.
    pub from: String,
    /// The probability of each artifact predicted when the object entered `from`, from the
    /// model as it was before this outcome was learned: what calibration is measured on.
    pub predicted: BTreeMap<String, f64>,
    pub alerted: bool,
    /// Time from the first alert on this object to this outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_time_ms: Option<i64>,
    pub cause: Cause,
    /// The largest surprise (nats) of any step of the object, its last included (absent with
    /// `anomaly off`): the object's score for detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surprise_peak: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unexpected {
    pub at: String,
    pub flow: String,
    pub object: String,
    pub from: String,
    pub to: String,
    pub cause: Cause,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub at: String,
    pub flow: String,
    pub object: String,
    /// The state the object went to.
    pub state: String,
    /// The state it left.
    pub from: String,
    /// The probability the model gave this step, before learning it.
    pub probability: f64,
    /// Its rank among the predicted next states (1 = most likely; DeepLog's top-g).
    pub rank: usize,
    /// The step's surprise, `-ln max(probability, 1e-6)`, in nats.
    pub surprise: f64,
    /// The sum of the surprises of the last `window` steps.
    pub window_surprise: f64,
    /// The most likely next states from `from` (at most three), with their probabilities.
    pub expected: Vec<(String, f64)>,
    /// Recent states, oldest first, ending with `from` and `state`.
    pub path: Vec<String>,
    /// Steps of this object that crossed a threshold so far (this one included).
    pub unusual_steps: u32,
    /// The threshold crossed: `min_probability`, `top`, `window_surprise` (nats) or
    /// `step_surprise` (nats; calibrated), and its value.
    pub threshold: String,
    pub threshold_value: f64,
    /// Whether the threshold was calibrated from what the flow learned.
    pub calibrated: bool,
    pub cause: Cause,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyResolved {
    pub at: String,
    pub flow: String,
    pub object: String,
    /// The state the object ended in (or was in when evicted, or reached with the last
    /// normal step of the episode).
    pub state: String,
    /// `completed`, `artifact` or `expired`, as for `resolved`; `path_normal` when the object
    /// took `window` normal steps in a row.
    pub reason: String,
    /// The object's unusual steps so far.
    pub unusual_steps: u32,
    /// The largest step surprise of the object, nats.
    pub surprise_peak: f64,
}
