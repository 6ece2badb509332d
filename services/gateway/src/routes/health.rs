//! Probes and metrics.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::scheduler::dts_call;

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Metrics: OpenMetrics when asked for in `Accept` (as Prometheus does), else the classic text format", body = String,
        content_type = "text/plain")),
)]
pub(crate) async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = state.metrics.exposition(accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")),
)]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the scheduler answered just now, within the configured scheduler deadline.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "The scheduler is unreachable", body = String, content_type = "text/plain"),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let deadline = state.config.dts_timeout;
    match dts_call(&state, "Hello", deadline, state.client.hello(deadline)).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "scheduler unreachable\n").into_response(),
    }
}
