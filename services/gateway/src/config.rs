//! What the gateway's behaviour depends on (the binary loads and validates it).

use std::time::Duration;

/// Gateway behaviour settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Absolute base for links, e.g. `https://api.example.com`; relative links when `None`.
    pub public_base_url: Option<String>,
    pub max_delay_seconds: u64,
    pub max_name_chars: usize,
    pub max_body_bytes: usize,
    /// Deadline for each call to the scheduler; past it the client gets 503.
    pub dts_timeout: Duration,
    /// `Retry-After` on `202`s and unfinished statuses, and on `503`s.
    pub retry_after_seconds: u64,
    /// Cap of `?wait=` on the status monitor.
    pub max_wait_seconds: u64,
    /// Build links from `Forwarded` / `X-Forwarded-*` (only behind a proxy that sets them).
    pub trust_forwarded: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            public_base_url: None,
            max_delay_seconds: 3600,
            max_name_chars: 200,
            max_body_bytes: 16 * 1024,
            dts_timeout: Duration::from_secs(5),
            retry_after_seconds: 1,
            max_wait_seconds: 30,
            trust_forwarded: false,
        }
    }
}
