//! The admin HTTP routes (`service_kit::admin`: `/healthz`, `/readyz`, `/metrics`) with the
//! scheduler's readiness and registry.

use std::sync::Arc;

use axum::Router;
use prometheus_client::registry::Registry;

use crate::server::Shared;

pub fn router(shared: Arc<Shared>, registry: Registry) -> Router {
    service_kit::admin::router(
        move || std::future::ready(readiness(&shared)),
        move |accept| service_kit::metrics::exposition(&registry, accept),
    )
}

/// Ready unless stopping, stopped after a storage failure, or with a poisoned lock.
fn readiness(shared: &Shared) -> Result<(), String> {
    shared.health().map_err(|why| why.to_string())?;
    if shared.shutdown.is_cancelled() {
        return Err("shutting down".into());
    }
    Ok(())
}
