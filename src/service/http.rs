//! The HTTP API, on loopback by default: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! `/api/flows`, `/api/flows/{name}/model` (FIG. 10 and FIG. 11 as JSON), `/api/objects/{key}`
//! `POST /-/reload` (as Prometheus has) and `POST /-/snapshot`. Questions about the engine go to the engine task
//! over a channel; nothing here touches engine state directly.

use super::metrics::Metrics;
use super::run::Control;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
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
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    queries: mpsc::Sender<Query>,
    control: mpsc::UnboundedSender<Control>,
    stop: oneshot::Receiver<()>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/api/flows", get(flows))
        .route("/api/flows/{name}/model", get(model))
        .route("/api/objects/{key}", get(object))
        .route("/-/reload", post(reload))
        .route("/-/snapshot", post(snapshot))
        .with_state(AppState {
            metrics,
            queries,
            control,
        });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("The HTTP server stopped: {e}");
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
