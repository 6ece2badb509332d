//! `Limits`: what a request may ask for, and each caller's share of what the gateway holds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a request may ask for, and each caller's share of what the gateway holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_delay_seconds: u64,
    pub max_name_chars: usize,
    pub max_body_bytes: usize,
    /// Cap of `?wait=` on the status monitor.
    pub max_wait_seconds: u64,
    /// A whole request, body and answer included, past which the client gets `408`.
    pub request_timeout_seconds: u64,
    /// Requests in progress; past it requests get a `503` problem with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Long polls (`?wait=`) and status streams open at once; past it `?wait=` answers at once
    /// and a new stream gets `503` with `Retry-After`.
    pub max_long_polls: usize,
    /// Each caller's share of `max_concurrent_requests` (callers with an identity: with
    /// authentication off there is one caller, whose share is the whole cap); past it `429` with
    /// `Retry-After`. At most the cap itself.
    pub max_requests_per_caller: usize,
    /// Each caller's share of `max_long_polls`; past it `?wait=` answers at once and a new
    /// stream gets `429` with `Retry-After`.
    pub max_long_polls_per_caller: usize,
    /// Operations a caller may have unfinished (pending, running, suspended); past it a start
    /// gets `429` with `Retry-After`. Counted by the scheduler, so it holds across gateway
    /// replicas, within the starts in flight at once. Callers with an identity only. 0: no cap.
    pub max_unfinished_per_caller: usize,
    /// A caller's starts in flight at once in one replica while the cap above is on (more wait
    /// their turn): with `R` replicas the cap is passed by at most this times `R - 1`; 1 makes
    /// that `R - 1` but allows a caller one start per two round trips to the scheduler.
    pub max_starts_in_flight_per_caller: usize,
    /// How often an open status stream reads the operation's status from the scheduler.
    pub stream_poll_interval_ms: u64,
    /// A status stream is closed after this long (the client reconnects with `Last-Event-ID`),
    /// so that no connection is held forever.
    pub max_stream_seconds: u64,
    /// Requests per second each caller may make (by identity; by address when authentication is
    /// off); past it `429` with `Retry-After`. 0: no limit.
    pub rate_limit_per_second: u32,
    /// Requests a caller may make at once above the rate.
    pub rate_limit_burst: u32,
    /// Refused authentications (no credentials, or credentials that do not hold) per second per
    /// client address; past it (and `auth_failures_burst`) the address gets `429` with
    /// `Retry-After`, before any check, until it is back under the rate. 0: no limit.
    pub auth_failures_per_second: u32,
    pub auth_failures_burst: u32,
    /// The shortest interval of a recurring operation (at least 1, the scheduler's rule): each
    /// run starts an operation that no start cap sees, so this bounds what one schedule costs.
    pub min_recurring_interval_seconds: u64,
    pub max_recurring_interval_seconds: u64,
    /// Recurring operations a caller may have (with authentication off, all of them together);
    /// past it a create gets `429` with `Retry-After` until one is deleted. 1 to 1000.
    pub max_recurring_per_caller: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_delay_seconds: 3600,
            max_name_chars: 200,
            max_body_bytes: 16 * 1024,
            max_wait_seconds: 30,
            request_timeout_seconds: 60,
            max_concurrent_requests: 2048,
            max_long_polls: 1000,
            max_requests_per_caller: 256,
            max_long_polls_per_caller: 250,
            max_unfinished_per_caller: 1000,
            max_starts_in_flight_per_caller: 4,
            stream_poll_interval_ms: 1000,
            max_stream_seconds: 600,
            rate_limit_per_second: 100,
            rate_limit_burst: 200,
            auth_failures_per_second: 10,
            auth_failures_burst: 50,
            min_recurring_interval_seconds: 60,
            max_recurring_interval_seconds: 366 * 24 * 3600,
            max_recurring_per_caller: 100,
        }
    }
}

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    pub fn stream_poll_interval(&self) -> Duration {
        Duration::from_millis(self.stream_poll_interval_ms)
    }

    pub fn max_stream(&self) -> Duration {
        Duration::from_secs(self.max_stream_seconds)
    }
}
