//! The HTTP API, on loopback by default: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! `/api/flows`, `/api/flows/{name}/model` (FIG. 10 and FIG. 11 as JSON), `/api/objects/{key}`
//! `POST /-/reload` (as Prometheus has) and `POST /-/snapshot`. Questions about the engine go to the engine task
//! over a channel; nothing here touches engine state directly.
//!
//! The server is hardened for a hostile network: a connection that sends no whole request head
//! within `header_timeout` (also an idle keep-alive one) is closed, at most `max_connections`
//! are served at once (the rest wait in the listen backlog, holding no file descriptor of
//! ours), and with a token the POST endpoints require `Authorization: Bearer <token>`.

use super::metrics::Metrics;
use super::run::Control;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub enum Query {
    Flows(oneshot::Sender<serde_json::Value>),
    Model(String, oneshot::Sender<Option<serde_json::Value>>),
    Object(String, oneshot::Sender<Option<serde_json::Value>>),
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
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

pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: Limits,
    metrics: Arc<Metrics>,
    queries: mpsc::Sender<Query>,
    control: mpsc::UnboundedSender<Control>,
    mut stop: oneshot::Receiver<()>,
) {
    let state = AppState {
        metrics,
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
