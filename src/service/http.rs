//! The HTTP API, on loopback by default: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! `/api/flows`, `/api/flows/{name}/model` (FIG. 10 and FIG. 11 as JSON), `/api/objects/{key}`
//! `POST /-/reload` (as Prometheus has) and `POST /-/snapshot`; for the dashboard (`/`, see
//! `dashboard.rs`) `/api/overview`, `/api/objects`, `/api/alerts`, `/api/events` (server-sent
//! events) and `/api/flows/{name}/graph`. Questions about the engine go to the engine task
//! over a channel; nothing here touches engine state directly, and a long question (the
//! objects at risk) is asked in chunks so that the engine handles its batches in between.
//!
//! The server is hardened for a hostile network: a connection that sends no whole request head
//! within `header_timeout` (also an idle keep-alive one) is closed, at most `max_connections`
//! are served at once (the rest wait in the listen backlog, holding no file descriptor of
//! ours), and with a token the POST endpoints require `Authorization: Bearer <token>`.

use super::api::GraphData;
use super::feed::Feed;
use super::metrics::Metrics;
use super::run::Control;
use crate::engine::key::ObjectKey;
use crate::engine::query::{ObjectQuery, ObjectRow, Scan, SortBy};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub enum Query {
    Flows(oneshot::Sender<serde_json::Value>),
    Model(String, oneshot::Sender<Option<serde_json::Value>>),
    Object(String, oneshot::Sender<Option<serde_json::Value>>),
    /// One more chunk of a scan over the objects in flight (`api.rs`).
    Scan(Box<Scan>, oneshot::Sender<Box<Scan>>),
    /// The rows of (the first `api::ROWS_PER_CALL` of) these objects.
    Rows(Vec<(String, ObjectKey)>, oneshot::Sender<Vec<ObjectRow>>),
    /// What a flow's graph is drawn from.
    Graph(String, oneshot::Sender<Option<GraphData>>),
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    feed: Arc<Feed>,
    queries: mpsc::Sender<Query>,
    control: mpsc::UnboundedSender<Control>,
    token: Option<Arc<str>>,
}

/// What the server allows a client (`http.*` in the configuration).
pub struct Limits {
    pub header_timeout: std::time::Duration,
    pub max_connections: usize,
    pub token: Option<String>,
}

#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: Limits,
    metrics: Arc<Metrics>,
    feed: Arc<Feed>,
    queries: mpsc::Sender<Query>,
    control: mpsc::UnboundedSender<Control>,
    mut stop: oneshot::Receiver<()>,
) {
    let state = AppState {
        metrics,
        feed,
        queries,
        control,
        token: limits.token.map(Arc::from),
    };
    let posts = Router::new()
        .route("/-/reload", post(reload))
        .route("/-/snapshot", post(snapshot))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorised));
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/api/flows", get(flows))
        .route("/api/flows/{name}/model", get(model))
        .route("/api/objects/{key}", get(object))
        .route("/api/objects", get(objects))
        .route("/api/alerts", get(alerts))
        .route("/api/overview", get(overview))
        .route("/api/cluster", get(cluster))
        .route("/api/events", get(events))
        .route("/api/flows/{name}/graph", get(graph))
        .merge(super::dashboard::routes())
        .merge(posts)
        .with_state(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        // A free slot first, then a connection: beyond the limit, clients wait in the backlog.
        let slot = tokio::select! {
            _ = &mut stop => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections close.
                    tracing::warn!("Accepting an HTTP connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = conn.await;
            drop(slot);
        });
    }
}

/// Lets a POST through only with the configured bearer token (when one is configured).
async fn authorised(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.as_bytes(), token.as_bytes()) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response()
    }
}

/// Compares in time that does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A cluster worker's partitions (404 outside a cluster).
async fn cluster(State(s): State<AppState>) -> Response {
    match s
        .metrics
        .cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        Some(c) => Json(c).into_response(),
        None => (StatusCode::NOT_FOUND, "not a cluster worker\n").into_response(),
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    if s.metrics.ready.load(Relaxed) == 1 {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn ask<T>(s: &AppState, q: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    if s.queries.send(q(tx)).await.is_err() {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "the engine is stopping\n").into_response());
    }
    rx.await
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "the engine is stopping\n").into_response())
}

async fn flows(State(s): State<AppState>) -> Response {
    match ask(&s, Query::Flows).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn model(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match ask(&s, |tx| Query::Model(name.clone(), tx)).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no flow named {name}\n")).into_response(),
        Err(r) => r,
    }
}

async fn object(State(s): State<AppState>, Path(key): Path<String>) -> Response {
    match ask(&s, |tx| Query::Object(key.clone(), tx)).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("no object {key} in flight\n"),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn snapshot(State(s): State<AppState>) -> Response {
    let _ = s.control.send(Control::Snapshot);
    (StatusCode::ACCEPTED, "snapshotting\n").into_response()
}

async fn reload(State(s): State<AppState>) -> Response {
    let _ = s.control.send(Control::Reload);
    (StatusCode::ACCEPTED, "reloading\n").into_response()
}

/// Decodes `a=1&b=x%20y` into pairs (`+` is a space). Invalid escapes are kept as written.
fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    match b
                        .get(i + 1..i + 3)
                        .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

/// The most objects one `GET /api/objects` lists.
const MAX_LIMIT: usize = 10_000;

/// Reads the filter of `GET /api/objects`.
fn object_query(q: Option<&str>) -> Result<ObjectQuery, String> {
    let mut oq = ObjectQuery {
        limit: 100,
        ..ObjectQuery::default()
    };
    for (k, v) in query_pairs(q) {
        match k.as_str() {
            "flow" if !v.is_empty() => oq.flow = Some(v),
            "state" if !v.is_empty() => oq.state = Some(v),
            "flow" | "state" => {}
            "min_risk" => match v.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => oq.min_risk = x,
                _ => return Err(format!("min_risk must be a number from 0 to 1, not `{v}`")),
            },
            "limit" => match v.parse::<usize>() {
                Ok(x) if x <= MAX_LIMIT => oq.limit = x,
                _ => {
                    return Err(format!(
                        "limit must be a whole number from 0 to {MAX_LIMIT}, not `{v}`"
                    ))
                }
            },
            "sort" => match SortBy::parse(&v) {
                Some(s) => oq.sort = s,
                None => return Err(format!("sort must be `risk` or `time`, not `{v}`")),
            },
            "alerting" => match v.as_str() {
                "" | "true" | "1" => oq.alerting = true,
                "false" | "0" => oq.alerting = false,
                _ => return Err(format!("alerting must be true or false, not `{v}`")),
            },
            _ => {
                return Err(format!(
                    "unknown parameter `{k}` (flow, state, min_risk, alerting, sort, limit)"
                ))
            }
        }
    }
    Ok(oq)
}

/// Runs a scan to its end, one chunk per round trip to the engine task.
async fn run_scan(s: &AppState, q: ObjectQuery) -> Result<Box<Scan>, Response> {
    let mut scan = Box::new(Scan::new(q));
    while !scan.done() {
        scan = ask(s, |tx| Query::Scan(scan, tx)).await?;
    }
    Ok(scan)
}

async fn objects(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let oq = match object_query(q.as_deref()) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let unknown_flow = oq.flow.clone();
    let scan = match run_scan(&s, oq).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(f) = unknown_flow.filter(|_| scan.flows.is_empty()) {
        return (StatusCode::NOT_FOUND, format!("no flow named {f}\n")).into_response();
    }
    let mut picks = scan.picks();
    let mut rows = Vec::with_capacity(picks.len());
    while !picks.is_empty() {
        let rest = picks.split_off(picks.len().min(super::api::ROWS_PER_CALL));
        match ask(&s, |tx| Query::Rows(picks, tx)).await {
            Ok(r) => rows.extend(r),
            Err(r) => return r,
        }
        picks = rest;
    }
    Json(serde_json::json!({
        "objects": rows,
        "matching": scan.matching,
        "scanned": scan.scanned,
        "engine_calls": scan.calls,
    }))
    .into_response()
}

async fn alerts(State(s): State<AppState>) -> Response {
    Json(s.feed.alerts()).into_response()
}

/// Everything the dashboard's overview shows, in one answer.
async fn overview(State(s): State<AppState>) -> Response {
    let flows = match ask(&s, Query::Flows).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let firing = s.feed.firing_by_flow();
    let mut flows = flows["flows"].as_array().cloned().unwrap_or_default();
    for f in &mut flows {
        let name = f["name"].as_str().unwrap_or("").to_string();
        let (a, n) = firing.get(&name).copied().unwrap_or((0, 0));
        if let Some(m) = f.as_object_mut() {
            m.remove("states");
            m.insert("firing".into(), a.into());
            m.insert("anomalies".into(), n.into());
        }
    }
    let stats = s
        .metrics
        .stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let error = s
        .metrics
        .reload_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Json(serde_json::json!({
        "now_unix_ms": unix_ms,
        "flows": flows,
        "messages": {
            "total": stats.messages + stats.malformed,
            "matched": stats.matched,
            "unmatched": stats.unmatched,
            "malformed": stats.malformed,
            "missing_key": stats.missing_key,
            "late": stats.late,
        },
        "reload": {
            "ok": s.metrics.reload_success.load(Ordering::Relaxed) == 1,
            "last_unix": s.metrics.last_reload_unix.load(Ordering::Relaxed),
            "failed_total": s.metrics.reloads_failed.load(Ordering::Relaxed),
            "error": error,
        },
        "nats_connected": s.metrics.nats_connected.load(Ordering::Relaxed) == 1,
        "event_listeners": s.feed.listeners(),
    }))
    .into_response()
}

/// Server-sent events: every record as it is emitted, `?flow=` and `?type=` (comma-separated)
/// filtering. A client too slow for `feed::EVENTS_BUFFER` records gets `event: lagged` with
/// how many it lost, and goes on from the oldest record still buffered.
///
/// Records are written in batches: after the first of a quiet spell, what arrives within
/// `EVENTS_WINDOW` goes out in one write, so that a viewer costs a few wake-ups and writes a
/// second under any load, not one per record (a busy service emits thousands a second).
async fn events(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let mut filter = EventFilter::default();
    for (k, v) in query_pairs(q.as_deref()) {
        match k.as_str() {
            "flow" if !v.is_empty() => filter.flow = Some(v),
            "type" if !v.is_empty() => {
                filter.kinds = Some(v.split(',').map(|t| t.trim().to_string()).collect())
            }
            "flow" | "type" => {}
            _ => {
                return bad_request(format!("unknown parameter `{k}` (flow, type)"));
            }
        }
    }
    let rx = s.feed.subscribe();
    let stream = futures::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        loop {
            let mut out = String::new();
            let mut closed = false;
            match tokio::time::timeout(EVENTS_KEEPALIVE, rx.recv()).await {
                // Nothing for a while: a comment keeps proxies from closing the stream.
                Err(_) => out.push_str(": keep-alive\n\n"),
                Ok(Ok(e)) => filter.write(&e, &mut out),
                Ok(Err(RecvError::Lagged(n))) => lagged(n, &mut out),
                Ok(Err(RecvError::Closed)) => return None,
            }
            if !out.starts_with(':') {
                tokio::time::sleep(EVENTS_WINDOW).await;
                while out.len() < EVENTS_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(e) => filter.write(&e, &mut out),
                        Err(TryRecvError::Lagged(n)) => lagged(n, &mut out),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Closed) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if closed && out.is_empty() {
                return None;
            }
            if !out.is_empty() {
                let chunk = Ok::<_, std::convert::Infallible>(bytes::Bytes::from(out));
                return Some((chunk, (rx, filter)));
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// How long records are gathered into one write of an event stream.
const EVENTS_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);
/// At most this much is gathered into one write.
const EVENTS_BATCH_BYTES: usize = 256 * 1024;
/// A comment is sent after this long without a record.
const EVENTS_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// What one event stream client asked for.
#[derive(Default)]
struct EventFilter {
    flow: Option<String>,
    kinds: Option<Vec<String>>,
}

impl EventFilter {
    /// Appends the record as an event if the client wants it.
    fn write(&self, e: &super::feed::Event, out: &mut String) {
        if self.flow.as_ref().is_some_and(|f| *f != e.flow)
            || self
                .kinds
                .as_ref()
                .is_some_and(|k| !k.iter().any(|k| k == e.kind))
        {
            return;
        }
        // The JSON is one line (serde_json's compact form), as a `data:` field needs.
        out.push_str("event: ");
        out.push_str(e.kind);
        out.push_str("\ndata: ");
        out.push_str(&e.json);
        out.push_str("\n\n");
    }
}

fn lagged(n: u64, out: &mut String) {
    out.push_str(&format!("event: lagged\ndata: {{\"dropped\":{n}}}\n\n"));
}

async fn graph(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let mut svg = false;
    for (k, v) in query_pairs(q.as_deref()) {
        match (k.as_str(), v.as_str()) {
            ("format", "svg") => svg = true,
            ("format", "json" | "") => svg = false,
            ("format", other) => {
                return bad_request(format!("format must be json or svg, not `{other}`"))
            }
            _ => return bad_request(format!("unknown parameter `{k}` (format)")),
        }
    }
    let data = match ask(&s, |tx| Query::Graph(name.clone(), tx)).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return (StatusCode::NOT_FOUND, format!("no flow named {name}\n")).into_response()
        }
        Err(r) => return r,
    };
    // Objects per state: a scan of this flow that keeps no rows.
    let scan = match run_scan(
        &s,
        ObjectQuery {
            flow: Some(name.clone()),
            limit: 0,
            ..ObjectQuery::default()
        },
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let counts = scan.counts.first().cloned().unwrap_or_default();
    let g = super::graph::build(&data, &counts);
    if svg {
        (
            [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
            super::graph::svg(&g),
        )
            .into_response()
    } else {
        Json(g).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let p = query_pairs(Some("flow=a%20b&state=x+y&min_risk=0.5&bad=%zz&alerting"));
        assert_eq!(
            p,
            [
                ("flow".to_string(), "a b".to_string()),
                ("state".into(), "x y".into()),
                ("min_risk".into(), "0.5".into()),
                ("bad".into(), "%zz".into()),
                ("alerting".into(), "".into()),
            ]
        );
        assert_eq!(
            query_pairs(Some("a=%4")),
            [("a".to_string(), "%4".to_string())]
        );
    }

    #[test]
    fn an_event_stream_writes_the_records_its_client_asked_for() {
        let f = EventFilter {
            flow: Some("a".into()),
            kinds: Some(vec!["alert".into(), "resolved".into()]),
        };
        let ev = |flow: &str, kind: &'static str| super::super::feed::Event {
            flow: flow.into(),
            kind,
            json: format!("{{\"flow\":\"{flow}\"}}"),
        };
        let mut out = String::new();
        f.write(&ev("a", "alert"), &mut out);
        f.write(&ev("b", "alert"), &mut out);
        f.write(&ev("a", "outcome"), &mut out);
        f.write(&ev("a", "resolved"), &mut out);
        lagged(7, &mut out);
        assert_eq!(
            out,
            "event: alert\ndata: {\"flow\":\"a\"}\n\nevent: resolved\ndata: {\"flow\":\"a\"}\n\n\
             event: lagged\ndata: {\"dropped\":7}\n\n"
        );
    }

    #[test]
    fn a_bad_filter_is_refused_with_a_reason() {
        for q in [
            "min_risk=2",
            "min_risk=x",
            "limit=-1",
            "limit=100000",
            "sort=up",
            "what=1",
        ] {
            assert!(object_query(Some(q)).is_err(), "{q}");
        }
        let q = object_query(Some(
            "flow=f&state=s&min_risk=0.25&sort=time&limit=5&alerting=true",
        ))
        .unwrap_or_else(|_| panic!("a good filter"));
        assert_eq!(q.flow.as_deref(), Some("f"));
        assert_eq!(q.state.as_deref(), Some("s"));
        assert_eq!(q.min_risk, 0.25);
        assert_eq!(q.sort, SortBy::TimeInState);
        assert_eq!(q.limit, 5);
        assert!(q.alerting);
    }
}
