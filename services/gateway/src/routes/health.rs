//! Probes and metrics, served on the admin listener.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::scheduler::dts_call;

/// Prometheus metrics (OpenMetrics text).
pub(crate) async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = state.metrics.exposition(accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Liveness: the process serves HTTP.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: not shutting down, and the scheduler answered just now, within the configured
/// scheduler deadline.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let deadline = state.config.dts_timeout;
    match dts_call(&state, "Hello", deadline, state.client.hello(deadline)).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "scheduler unreachable\n").into_response(),
    }
}
