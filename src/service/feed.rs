//! The feed: every record the engine emits, as the sinks get it, for the dashboard. It keeps
//! the board of firing alerts and anomalies (with a bounded ring of the recently resolved) for
//! `GET /api/alerts`, and hands each record to the server-sent event streams of `/api/events`.
//!
//! The rule it keeps: a viewer never slows the engine. The engine task only takes an
//! uncontended lock to update the board and, when someone listens, serialises the record once
//! into a broadcast channel that never waits: a client that falls behind by more than
//! `EVENTS_BUFFER` records loses the oldest and is told how many (`event: lagged`).

use crate::engine::output::Record;
use indexmap::IndexMap;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Records buffered for slow event stream clients.
pub const EVENTS_BUFFER: usize = 4096;
/// Firing alerts and anomalies listed; more are counted, not listed.
pub const FIRING_LISTED: usize = 10_000;
/// Resolved alerts and anomalies remembered.
pub const RESOLVED_KEPT: usize = 256;

/// One record, serialised once for every stream.
#[derive(Debug)]
pub struct Event {
    pub flow: String,
    pub kind: &'static str,
    pub json: String,
}

/// A firing alert or anomaly.
#[derive(Debug, Clone, Serialize)]
pub struct Firing {
    /// `alert` or `anomaly`.
    pub kind: &'static str,
    pub flow: String,
    pub object: String,
    pub state: String,
    pub since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// The artifact (alerts) or the threshold crossed (anomalies).
    pub what: String,
    /// The artifact's risk, or the step's probability.
    pub probability: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The record as emitted.
    pub record: serde_json::Value,
}

/// One that has resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub kind: &'static str,
    pub flow: String,
    pub object: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    pub resolved_at: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firing_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
}

#[derive(Default)]
struct Board {
    /// By (kind, flow, object), in the order they fired.
    firing: IndexMap<(&'static str, String, String), Firing>,
    /// Firing but not listed (beyond `FIRING_LISTED`).
    unlisted: u64,
    resolved: VecDeque<Resolved>,
}

/// What `GET /api/alerts` answers.
#[derive(Debug, Clone, Serialize)]
pub struct AlertsView {
    pub firing: Vec<Firing>,
    pub anomalies: Vec<Firing>,
    /// Firing alerts and anomalies beyond the listed ones.
    pub not_listed: u64,
    /// Newest first.
    pub resolved: Vec<Resolved>,
}

pub struct Feed {
    tx: broadcast::Sender<Arc<Event>>,
    board: Mutex<Board>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

fn kind_of(r: &Record) -> &'static str {
    match r {
        Record::Alert(_) => "alert",
        Record::Resolved(_) => "resolved",
        Record::Outcome(_) => "outcome",
        Record::Unexpected(_) => "unexpected",
        Record::Prediction(_) => "prediction",
        Record::Anomaly(_) => "anomaly",
        Record::AnomalyResolved(_) => "anomaly_resolved",
    }
}

impl Feed {
    pub fn new() -> Feed {
        Feed {
            tx: broadcast::channel(EVENTS_BUFFER).0,
            board: Mutex::new(Board::default()),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Event stream clients connected now.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Takes one record emitted by the engine.
    pub fn publish(&self, r: &Record) {
        if matches!(
            r,
            Record::Alert(_)
                | Record::Resolved(_)
                | Record::Anomaly(_)
                | Record::AnomalyResolved(_)
        ) {
            let mut b = self.board.lock().unwrap_or_else(|e| e.into_inner());
            b.take(r);
        }
        if self.tx.receiver_count() > 0 {
            let json = serde_json::to_string(r).unwrap_or_default();
            let _ = self.tx.send(Arc::new(Event {
                flow: r.flow().to_string(),
                kind: kind_of(r),
                json,
            }));
        }
    }

    /// Lists alerts that were firing before this board existed (restored from a snapshot: no
    /// record announced them). `more` counts those beyond `FIRING_LISTED`.
    pub fn seed(&self, firing: Vec<Firing>, more: u64) {
        let mut b = self.board.lock().unwrap_or_else(|e| e.into_inner());
        for f in firing {
            b.fire(f);
        }
        b.unlisted += more;
    }

    pub fn alerts(&self) -> AlertsView {
        let b = self.board.lock().unwrap_or_else(|e| e.into_inner());
        let (mut firing, mut anomalies) = (Vec::new(), Vec::new());
        for f in b.firing.values().rev() {
            if f.kind == "alert" {
                firing.push(f.clone());
            } else {
                anomalies.push(f.clone());
            }
        }
        AlertsView {
            firing,
            anomalies,
            not_listed: b.unlisted,
            resolved: b.resolved.iter().rev().cloned().collect(),
        }
    }

    /// Firing alerts per flow (listed ones).
    pub fn firing_by_flow(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        let b = self.board.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = std::collections::BTreeMap::<String, (u64, u64)>::new();
        for f in b.firing.values() {
            let e = m.entry(f.flow.clone()).or_default();
            if f.kind == "alert" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        m
    }
}

impl Board {
    fn take(&mut self, r: &Record) {
        match r {
            Record::Alert(a) => self.fire(Firing {
                kind: "alert",
                flow: a.flow.clone(),
                object: a.object.clone(),
                state: a.state.clone(),
                since: a.at.clone(),
                severity: Some(a.severity.clone()),
                what: a.artifact.clone(),
                probability: a.probability,
                threshold: Some(a.threshold),
                record: serde_json::to_value(r).unwrap_or_default(),
            }),
            Record::Anomaly(a) => self.fire(Firing {
                kind: "anomaly",
                flow: a.flow.clone(),
                object: a.object.clone(),
                state: a.state.clone(),
                since: a.at.clone(),
                severity: None,
                what: a.threshold.clone(),
                probability: a.probability,
                threshold: Some(a.threshold_value),
                record: serde_json::to_value(r).unwrap_or_default(),
            }),
            Record::Resolved(x) => {
                let f = self.end(("alert", x.flow.clone(), x.object.clone()));
                self.remember(Resolved {
                    kind: "alert",
                    flow: x.flow.clone(),
                    object: x.object.clone(),
                    state: x.state.clone(),
                    since: f.as_ref().map(|f| f.since.clone()),
                    resolved_at: x.at.clone(),
                    reason: x.reason.clone(),
                    firing_ms: Some(x.firing_ms),
                    what: f.as_ref().map(|f| f.what.clone()),
                    probability: f.as_ref().map(|f| f.probability),
                });
            }
            Record::AnomalyResolved(x) => {
                let f = self.end(("anomaly", x.flow.clone(), x.object.clone()));
                self.remember(Resolved {
                    kind: "anomaly",
                    flow: x.flow.clone(),
                    object: x.object.clone(),
                    state: x.state.clone(),
                    since: f.as_ref().map(|f| f.since.clone()),
                    resolved_at: x.at.clone(),
                    reason: x.reason.clone(),
                    firing_ms: None,
                    what: f.as_ref().map(|f| f.what.clone()),
                    probability: f.as_ref().map(|f| f.probability),
                });
            }
            _ => {}
        }
    }

    fn fire(&mut self, f: Firing) {
        let k = (f.kind, f.flow.clone(), f.object.clone());
        if self.firing.contains_key(&k) || self.firing.len() < FIRING_LISTED {
            self.firing.insert(k, f);
        } else {
            self.unlisted += 1;
        }
    }

    fn end(&mut self, k: (&'static str, String, String)) -> Option<Firing> {
        let f = self.firing.shift_remove(&k);
        if f.is_none() {
            self.unlisted = self.unlisted.saturating_sub(1);
        }
        f
    }

    fn remember(&mut self, r: Resolved) {
        if self.resolved.len() >= RESOLVED_KEPT {
            self.resolved.pop_front();
        }
        self.resolved.push_back(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::output::{Alert, Cause, Resolved as R};

    fn alert(object: &str) -> Record {
        Record::Alert(Alert {
            at: "2024-01-01T00:00:00Z".into(),
            flow: "f".into(),
            object: object.into(),
            state: "s".into(),
            state_label: None,
            severity: "warning".into(),
            artifact: "bad".into(),
            artifact_label: None,
            probability: 0.7,
            threshold: 0.5,
            risk: Default::default(),
            path: vec![],
            time_in_state_ms: 0,
            expected_remaining_ms: 0.0,
            model_version: 1,
            cause: Cause {
                kind: "timer".into(),
                event_type: None,
                message_id: None,
            },
        })
    }

    fn resolved(object: &str) -> Record {
        Record::Resolved(R {
            at: "2024-01-01T00:01:00Z".into(),
            flow: "f".into(),
            object: object.into(),
            state: "s".into(),
            reason: "completed".into(),
            firing_ms: 60_000,
        })
    }

    #[test]
    fn an_alert_is_listed_while_firing_then_remembered_as_resolved() {
        let feed = Feed::new();
        feed.publish(&alert("a"));
        feed.publish(&alert("b"));
        let v = feed.alerts();
        assert_eq!(v.firing.len(), 2);
        feed.publish(&resolved("a"));
        let v = feed.alerts();
        assert_eq!(v.firing.len(), 1);
        assert_eq!(v.firing[0].object, "b");
        assert_eq!(v.resolved.len(), 1);
        assert_eq!(v.resolved[0].since.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!(v.resolved[0].what.as_deref(), Some("bad"));
    }

    #[test]
    fn the_resolved_ring_is_bounded() {
        let feed = Feed::new();
        for i in 0..RESOLVED_KEPT + 10 {
            feed.publish(&alert(&i.to_string()));
            feed.publish(&resolved(&i.to_string()));
        }
        let v = feed.alerts();
        assert_eq!(v.resolved.len(), RESOLVED_KEPT);
        assert_eq!(v.resolved[0].object, (RESOLVED_KEPT + 9).to_string());
        assert!(v.firing.is_empty());
    }

    #[test]
    fn a_slow_listener_is_told_how_many_records_it_lost() {
        let feed = Feed::new();
        let mut rx = feed.subscribe();
        for i in 0..EVENTS_BUFFER + 5 {
            feed.publish(&resolved(&i.to_string()));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 5),
            other => panic!("expected a lag, got {other:?}"),
        }
    }
}
