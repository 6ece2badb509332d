//! Access tokens for Azure DTS: acquired through a [`TokenSource`], cached, and refreshed in
//! the background before they expire so that no gRPC call ever waits on Entra ID.
//!
//! tonic interceptors are synchronous, so the interceptor only reads the cached header value;
//! the refresh task is the only writer.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

/// OAuth scope of the Durable Task Scheduler data plane.
pub const DTS_SCOPE: &str = "https://durabletask.io/.default";

/// How long before expiry a token is replaced (the official SDKs use 5 minutes).
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A bearer token and its expiry.
#[derive(Clone)]
pub struct Token {
    pub secret: String,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Token {
    // Never print the secret, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Where tokens come from. Implemented for every `azure_core` `TokenCredential`; tests supply their own.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    async fn token(&self) -> Result<Token, AuthError>;
}

#[derive(Debug, thiserror::Error)]
#[error("could not acquire an access token for {DTS_SCOPE}: {message}")]
pub struct AuthError {
    pub message: String,
}

/// Adapts an `azure_identity` credential.
pub struct AzureTokenSource {
    credential: Arc<dyn azure_core::credentials::TokenCredential>,
}

impl AzureTokenSource {
    pub fn new(credential: Arc<dyn azure_core::credentials::TokenCredential>) -> Self {
        Self { credential }
    }
}

#[async_trait]
impl TokenSource for AzureTokenSource {
    async fn token(&self) -> Result<Token, AuthError> {
        let token = self
            .credential
            .get_token(&[DTS_SCOPE], None)
            .await
            .map_err(|e| AuthError {
                message: e.to_string(),
            })?;
        let unix = token.expires_on.unix_timestamp();
        let expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
        Ok(Token {
            secret: token.token.secret().to_string(),
            expires_at,
        })
    }
}

type SharedHeader = Arc<RwLock<Option<String>>>;

fn store(header: &SharedHeader, token: &Token) {
    if let Ok(mut h) = header.write() {
        *h = Some(format!("Bearer {}", token.secret));
    }
}

/// Holds the current `authorization` header value; shared by the connection, its clients and
/// workers. The refresher stops when the last holder is dropped (or `stop` is cancelled).
#[derive(Clone)]
pub(crate) struct TokenCache {
    header: SharedHeader,
    _stop_on_drop: Arc<tokio_util::sync::DropGuard>,
}

impl TokenCache {
    pub(crate) fn header(&self) -> Option<String> {
        self.header.read().ok().and_then(|h| h.clone())
    }

    /// Fetches the first token (so start-up fails fast on a broken credential), then keeps it
    /// fresh from a background task until `stop` is cancelled.
    pub(crate) async fn start(
        source: Arc<dyn TokenSource>,
        margin: Duration,
        stop: CancellationToken,
    ) -> Result<Self, AuthError> {
        let header = SharedHeader::default();
        let first = source.token().await?;
        store(&header, &first);
        // The task holds only the header, never the cache, so dropping every cache stops it.
        let bg = header.clone();
        let cache = Self {
            header,
            _stop_on_drop: Arc::new(stop.clone().drop_guard()),
        };
        tokio::spawn(async move {
            let mut expires_at = first.expires_at;
            let mut failures: u32 = 0;
            loop {
                let wait = refresh_delay(expires_at, margin, failures);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                match source.token().await {
                    Ok(t) => {
                        store(&bg, &t);
                        expires_at = t.expires_at;
                        failures = 0;
                        tracing::debug!("access token refreshed");
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        // The message comes from the credential and never contains the token.
                        tracing::warn!(error = %e, failures, "access token refresh failed; keeping the current token");
                    }
                }
            }
        });
        Ok(cache)
    }
}

/// When to try the next refresh: `margin` before expiry; after failures, a short capped backoff.
fn refresh_delay(expires_at: SystemTime, margin: Duration, failures: u32) -> Duration {
    if failures > 0 {
        return Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30));
    }
    let until_expiry = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    until_expiry
        .checked_sub(margin)
        // A token already inside the margin: refresh soon, but never spin.
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_happens_margin_before_expiry() {
        let expires = SystemTime::now() + Duration::from_secs(3600);
        let d = refresh_delay(expires, DEFAULT_REFRESH_MARGIN, 0);
        assert!(
            d <= Duration::from_secs(3300) && d > Duration::from_secs(3290),
            "{d:?}"
        );
    }

    #[test]
    fn expired_token_refreshes_soon_not_in_a_loop() {
        let d = refresh_delay(SystemTime::now(), DEFAULT_REFRESH_MARGIN, 0);
        assert_eq!(d, Duration::from_secs(1));
    }

    #[test]
    fn failures_back_off_with_a_cap() {
        let e = SystemTime::now();
        assert_eq!(
            refresh_delay(e, DEFAULT_REFRESH_MARGIN, 1),
            Duration::from_secs(2)
        );
        assert_eq!(
            refresh_delay(e, DEFAULT_REFRESH_MARGIN, 9),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn token_debug_redacts_secret() {
        let t = Token {
            secret: "abc.def".into(),
            expires_at: SystemTime::now(),
        };
        assert!(!format!("{t:?}").contains("abc.def"));
    }
}
