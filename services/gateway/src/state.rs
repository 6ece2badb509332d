//! What every request shares.

use std::sync::Arc;

use durabletask::Client;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Ids};
use crate::{GatewayMetrics, Settings};

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// Behind one `Arc`: axum clones the state for each extractor, so that clone is a reference
/// count, not a copy of the client.
pub struct Shared {
    pub client: Client,
    pub config: Settings,
    /// Where completion callbacks may go, from `config.callbacks`.
    pub callback_policy: service_kit::callbacks::Policy,
    pub metrics: GatewayMetrics,
    /// One permit per long poll allowed to wait or status stream allowed open
    /// (`max_long_polls`).
    pub long_polls: Arc<Semaphore>,
    /// Cancelled on SIGTERM: readiness fails from then on.
    pub draining: CancellationToken,
    /// Cancelled when the gateway stops accepting connections: waiting long polls answer now.
    pub releasing: CancellationToken,
    /// Who callers are.
    pub auth: Authenticator,
    /// How operation ids are made, and whose they are.
    pub ids: Ids,
    /// Each caller's rate; `None` without a limit.
    pub rate_limiter: Option<crate::limits::CallerLimiter>,
    /// Refused authentications per client address; `None` without a limit.
    pub auth_failures: Option<crate::auth::FailureLimiter>,
    /// Each caller's share of the requests in progress and of the long polls and streams.
    pub request_shares: Arc<crate::shares::PerCaller>,
    pub long_poll_shares: Arc<crate::shares::PerCaller>,
    /// Each caller's starts in flight in this replica, for the cap of unfinished operations.
    pub starts_in_flight: Arc<crate::shares::StartLedger>,
    /// Where large results are (`payload_*`): streamed from there, never held whole.
    pub payload_store: Option<Arc<durabletask::payload::BlobPayloadStore>>,
}

impl AppState {
    /// A state without authentication (every caller sees everything) and without an id secret.
    pub fn new(client: Client, config: Settings) -> Self {
        Self::secured(client, config, Authenticator::default(), Ids::new(None))
    }

    pub fn secured(client: Client, config: Settings, auth: Authenticator, ids: Ids) -> Self {
        Self(Arc::new(Shared {
            client,
            rate_limiter: crate::limits::caller_limiter(&config),
            auth_failures: crate::auth::FailureLimiter::new(
                config.limits.auth_failures_per_second,
                config.limits.auth_failures_burst,
            ),
            long_polls: Arc::new(Semaphore::new(config.limits.max_long_polls)),
            request_shares: crate::shares::PerCaller::new(
                config
                    .limits
                    .max_requests_per_caller
                    .min(config.limits.max_concurrent_requests),
            ),
            long_poll_shares: crate::shares::PerCaller::new(
                config
                    .limits
                    .max_long_polls_per_caller
                    .min(config.limits.max_long_polls),
            ),
            // Validated at start-up (tests may build a state from unchecked settings).
            callback_policy: config.callbacks.policy().unwrap_or_else(|_| {
                service_kit::callbacks::Policy::new(
                    false,
                    &[],
                    &[],
                    service_kit::callbacks::Targets::PREFIX,
                )
                .expect("an empty policy")
            }),
            starts_in_flight: crate::shares::StartLedger::new(
                config.limits.max_starts_in_flight_per_caller,
            ),
            // Validated at start-up, as the policy above.
            payload_store: config.payloads.store().ok().flatten(),
            config,
            metrics: GatewayMetrics::default(),
            draining: CancellationToken::new(),
            releasing: CancellationToken::new(),
            auth,
            ids,
        }))
    }
}

impl Shared {
    /// A place among the waiting long polls, if one is free, within `caller`'s share (callers with
    /// an identity), and the
    /// gateway is not releasing them; counted in `gateway_long_polls_waiting` while held.
    pub(crate) fn long_poll(&self, caller: Option<&str>) -> Option<LongPollSlot<'_>> {
        if self.releasing.is_cancelled() {
            return None;
        }
        let share = match caller.map(|c| self.long_poll_shares.take(c)) {
            Some(None) => {
                self.metrics.long_polls_refused.inc();
                return None;
            }
            Some(Some(share)) => Some(share),
            None => None,
        };
        match self.long_polls.try_acquire() {
            Ok(permit) => {
                self.metrics.long_polls_waiting.inc();
                Some(LongPollSlot {
                    _permit: permit,
                    _share: share,
                    shared: self,
                })
            }
            Err(_) => {
                self.metrics.long_polls_refused.inc();
                None
            }
        }
    }
}

impl AppState {
    /// A place for one status stream, held while it is open (`max_long_polls`, shared with long
    /// polls, within `caller`'s share); counted in `gateway_status_streams_open`. `Err(true)`:
    /// the caller's share is full; `Err(false)`: the gateway's cap is, or it is shutting down.
    pub(crate) fn stream_slot(&self, caller: Option<&str>) -> Result<StreamSlot, bool> {
        if self.releasing.is_cancelled() {
            return Err(false);
        }
        let share = match caller {
            Some(c) => Some(self.long_poll_shares.take(c).ok_or(true)?),
            None => None,
        };
        let permit = self
            .long_polls
            .clone()
            .try_acquire_owned()
            .map_err(|_| false)?;
        self.metrics.streams_open.inc();
        Ok(StreamSlot {
            _permit: permit,
            _share: share,
            state: self.clone(),
        })
    }
}

pub(crate) struct StreamSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _share: Option<crate::shares::Share>,
    state: AppState,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.state.metrics.streams_open.dec();
    }
}

pub(crate) struct LongPollSlot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    _share: Option<crate::shares::Share>,
    shared: &'a Shared,
}

impl Drop for LongPollSlot<'_> {
    fn drop(&mut self) {
        self.shared.metrics.long_polls_waiting.dec();
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
