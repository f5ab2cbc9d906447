//! The dashboard at `/`: one HTML page, its script and its style sheet, embedded in the binary
//! (`include_str!`, no CDN, nothing fetched from anywhere but this server). The script draws
//! the overview, a flow's page, the objects at risk, an object's timeline and the alerts from
//! the JSON API, and keeps them live through `/api/events`. Without scripts the page is a list
//! of plain links to the same JSON and SVG endpoints (`<noscript>`).
//!
//! Every page has its own address (`/#/flows/NAME`, `/#/objects`, ...) and the same addresses
//! without the `#` (`/flows/NAME`) serve the page too, so links can be shared and bookmarked.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Scripts from this server only: the page works offline and nothing injected
            // through a flow's or an object's name can run code. (Inline styles are allowed
            // for the flow's SVG, whose `<style>` is flowcast's own.)
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'",
            ),
        ],
        INDEX,
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// The page and its assets. The routes beyond `/` give the same page: the script reads the
/// path as it reads the fragment.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/flows/{name}", get(index))
        .route("/objects", get(index))
        .route("/alerts", get(index))
        .route("/object/{flow}/{key}", get(index))
        .route("/assets/dashboard.js", get(script))
        .route("/assets/dashboard.css", get(style))
}
