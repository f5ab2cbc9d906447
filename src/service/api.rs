//! The dashboard's questions, answered in the engine task (`run.rs` hands them here): a chunk
//! of a scan over the objects in flight, the rows of the objects a scan picked, a flow's graph
//! data, and one object's view (prediction, timeline, why it is not alerting).
//!
//! Each answer is bounded: a scan chunk looks at `SCAN_CHUNK` objects, rows come
//! `ROWS_PER_CALL` at a time; the HTTP task asks again for the rest, so batches run between.

use super::feed::{Firing, FIRING_LISTED};
use super::http::Query;
use crate::engine::key::ObjectKey;
use crate::engine::query::{ObjectRow, SCAN_CHUNK};
use crate::engine::table::{self, ModelTable};
use crate::engine::Engine;
use crate::model::Kind;
use serde::Serialize;

/// Object rows computed per call (a prediction each: tens of microseconds).
pub const ROWS_PER_CALL: usize = 25;

/// What a flow's graph is drawn from: FIG. 10/11 and the states' labels and thresholds.
#[derive(Debug, Clone, Serialize)]
pub struct GraphData {
    pub table: ModelTable,
    pub labels: Vec<Option<String>>,
    /// Per state (artifacts only; 0 elsewhere): the alert threshold.
    pub thresholds: Vec<f64>,
    pub initial: Vec<bool>,
    pub timeouts: Vec<Option<(i64, String)>>,
}

/// Answers the questions `run.rs` does not answer itself.
pub fn answer(engine: &mut Engine, q: Query) {
    match q {
        Query::Scan(mut scan, reply) => {
            engine.scan_objects(&mut scan, SCAN_CHUNK);
            let _ = reply.send(scan);
        }
        Query::Rows(picks, reply) => {
            let rows: Vec<ObjectRow> = picks
                .iter()
                .take(ROWS_PER_CALL)
                .filter_map(|(flow, key)| engine.object_row(flow, key))
                .collect();
            let _ = reply.send(rows);
        }
        Query::Graph(name, reply) => {
            let v = engine.flow_index(&name).map(|fi| graph_data(engine, fi));
            let _ = reply.send(v);
        }
        // The rest are answered in `run.rs`.
        Query::Flows(_) | Query::Model(..) | Query::Object(..) => {}
    }
}

/// What flow `fi`'s graph is drawn from.
pub fn graph_data(engine: &mut Engine, fi: usize) -> GraphData {
    let rt = &mut engine.flows[fi];
    let t = table::build(rt);
    let f = &rt.flow;
    GraphData {
        table: t,
        labels: f.states.iter().map(|s| s.label.clone()).collect(),
        thresholds: (0..f.states.len())
            .map(|i| {
                if f.states[i].kind == Kind::Artifact {
                    f.alerts[i].threshold
                } else {
                    0.0
                }
            })
            .collect(),
        initial: f.states.iter().map(|s| s.kind == Kind::Initial).collect(),
        timeouts: f
            .timeouts
            .iter()
            .map(|t| t.map(|(ms, a)| (ms, f.name_of(a).to_string())))
            .collect(),
    }
}

/// The alerts firing now, for a board that starts after a restore (at most `FIRING_LISTED`,
/// and how many more): each from its object's row (the artifact it is most at risk of).
pub fn firing_now(engine: &mut Engine) -> (Vec<Firing>, u64) {
    let mut keys = Vec::new();
    let mut more = 0u64;
    for rt in &engine.flows {
        for (k, o) in &rt.objects {
            if !o.alerting {
                continue;
            }
            if keys.len() < FIRING_LISTED {
                keys.push((rt.flow.name.clone(), k.clone()));
            } else {
                more += 1;
            }
        }
    }
    let firing = keys
        .iter()
        .filter_map(|(flow, key)| {
            let row = engine.object_row(flow, key)?;
            let fi = engine.flow_index(flow)?;
            let f = &engine.flows[fi].flow;
            let artifact = row.top_artifact.clone().unwrap_or_default();
            let level = f.state_id(&artifact).map(|a| f.alerts[a as usize]);
            Some(Firing {
                kind: "alert",
                flow: row.flow.clone(),
                object: row.object.clone(),
                state: row.state.clone(),
                since: row.alerting_since.clone().unwrap_or_default(),
                severity: level.map(|l| l.severity.as_str().to_string()),
                what: artifact,
                probability: row.top_risk,
                threshold: level.map(|l| l.threshold),
                record: serde_json::to_value(&row).unwrap_or_default(),
            })
        })
        .collect();
    (firing, more)
}

/// One flow's view of an object for `GET /api/objects/{key}`: the prediction, the timeline and
/// (when not alerting) why not.
pub fn object_view(engine: &mut Engine, fi: usize, key: &ObjectKey) -> Option<serde_json::Value> {
    let p = engine.predict_object(fi, key)?;
    let mut v = serde_json::to_value(p).unwrap_or_default();
    let timeline = engine.timeline(fi, key);
    let why = engine.why_not_alerting(fi, key);
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "timeline".into(),
            serde_json::to_value(timeline).unwrap_or_default(),
        );
        m.insert(
            "why_not_alerting".into(),
            serde_json::to_value(why).unwrap_or_default(),
        );
    }
    Some(v)
}
