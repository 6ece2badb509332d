//! What every request shares.

use std::sync::Arc;

use durabletask::Client;

use crate::{GatewayConfig, GatewayMetrics};

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// Behind one `Arc`: axum clones the state for each extractor, so that clone is a reference
/// count, not a copy of the client.
pub struct Shared {
    pub client: Client,
    pub config: GatewayConfig,
    pub metrics: GatewayMetrics,
}

impl AppState {
    pub fn new(client: Client, config: GatewayConfig) -> Self {
        Self(Arc::new(Shared {
            client,
            config,
            metrics: GatewayMetrics::default(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
