//! Retry policies for activities and sub-orchestrations.
//!
//! Retries are ordinary orchestration code (a durable timer between attempts), so they replay
//! deterministically and survive worker restarts.

use std::sync::Arc;
use std::time::Duration;

use crate::types::FailureDetails;

/// Decides, from the failure, whether another attempt is worthwhile.
pub type RetryPredicate = Arc<dyn Fn(&FailureDetails) -> bool + Send + Sync>;

/// Exponential backoff with an attempt cap, an optional delay cap and an optional overall timeout.
#[derive(Clone)]
pub struct RetryPolicy {
    pub first_retry_interval: Duration,
    /// Total attempts including the first one.
    pub max_number_of_attempts: u32,
    pub backoff_coefficient: f64,
    pub max_retry_interval: Option<Duration>,
    /// Give up when the next attempt would start later than this after the first one.
    pub retry_timeout: Option<Duration>,
    /// Decides whether a given failure is worth retrying; all retriable failures when `None`.
    pub handle: Option<RetryPredicate>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("first_retry_interval", &self.first_retry_interval)
            .field("max_number_of_attempts", &self.max_number_of_attempts)
            .field("backoff_coefficient", &self.backoff_coefficient)
            .field("max_retry_interval", &self.max_retry_interval)
            .field("retry_timeout", &self.retry_timeout)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    pub fn new(max_number_of_attempts: u32, first_retry_interval: Duration) -> Self {
        Self {
            first_retry_interval,
            max_number_of_attempts: max_number_of_attempts.max(1),
            backoff_coefficient: 1.0,
            max_retry_interval: None,
            retry_timeout: None,
            handle: None,
        }
    }

    pub fn with_backoff_coefficient(mut self, c: f64) -> Self {
        self.backoff_coefficient = if c.is_finite() && c >= 1.0 { c } else { 1.0 };
        self
    }

    pub fn with_max_retry_interval(mut self, d: Duration) -> Self {
        self.max_retry_interval = Some(d);
        self
    }

    pub fn with_retry_timeout(mut self, d: Duration) -> Self {
        self.retry_timeout = Some(d);
        self
    }

    pub fn with_handle(
        mut self,
        f: impl Fn(&FailureDetails) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.handle = Some(Arc::new(f));
        self
    }

    /// Whether to try again after `attempt` (1-based) failed with `details`.
    pub fn should_retry(&self, attempt: u32, details: &FailureDetails) -> bool {
        attempt < self.max_number_of_attempts
            && !details.non_retriable
            && self.handle.as_ref().is_none_or(|h| h(details))
    }

    /// Delay before attempt `attempt + 1`.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.first_retry_interval.as_secs_f64() * self.backoff_coefficient.powi(exp);
        let d = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
        match self.max_retry_interval {
            Some(max) => d.min(max),
            None => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let p = RetryPolicy::new(5, Duration::from_secs(1))
            .with_backoff_coefficient(2.0)
            .with_max_retry_interval(Duration::from_secs(5));
        let d: Vec<_> = (1..=5).map(|a| p.delay_for(a).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn non_retriable_and_handle_stop_retries() {
        let p =
            RetryPolicy::new(3, Duration::from_secs(1)).with_handle(|f| f.error_type != "Fatal");
        assert!(p.should_retry(1, &FailureDetails::new("Transient", "x")));
        assert!(!p.should_retry(3, &FailureDetails::new("Transient", "x")));
        assert!(!p.should_retry(1, &FailureDetails::new("Fatal", "x")));
        assert!(!p.should_retry(1, &FailureDetails::new("Transient", "x").non_retriable()));
    }

    #[test]
    fn silly_coefficients_are_clamped() {
        let p = RetryPolicy::new(3, Duration::from_secs(1)).with_backoff_coefficient(f64::NAN);
        assert_eq!(p.delay_for(3), Duration::from_secs(1));
    }
}
