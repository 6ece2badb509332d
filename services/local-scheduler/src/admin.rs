//! The admin HTTP routes: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::server::Shared;

pub fn router(shared: Arc<Shared>, registry: Registry) -> Router {
    let registry = Arc::new(registry);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let r = registry.clone();
                async move {
                    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                    let (content_type, body) = service_kit::metrics::exposition(&r, accept);
                    ([(header::CONTENT_TYPE, content_type)], body).into_response()
                }
            }),
        )
}

/// Ready unless stopping, stopped after a storage failure, or with a poisoned lock.
async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    if let Err(why) = shared.health() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    }
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    (StatusCode::OK, "ready\n".into())
}
