//! Refused authentication, limited per client address.
//!
//! The per-caller rate applies after authentication, so it never saw a client whose credentials
//! fail: 2,000 bad RS256 tokens went through at 3-4k/s, each a signature check (about 100 µs of
//! CPU). Refusals (no credentials, or credentials that do not hold) now draw from a token bucket
//! per client address; an address whose bucket is empty is answered `429` with `Retry-After`
//! before any check, until its bucket refills.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};

type Limiter = governor::RateLimiter<
    IpAddr,
    governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
    DefaultClock,
>;

/// Addresses kept as blocked at most; past it the expired entries go, then all (a flood of
/// addresses costs memory, not correctness: a forgotten address is checked by the bucket again).
const MAX_BLOCKED: usize = 100_000;

pub struct FailureLimiter {
    limiter: Limiter,
    /// Addresses whose bucket ran dry, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl FailureLimiter {
    /// `per_second` refusals (with `burst`) per address; `None` when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ),
            blocked: Mutex::new(HashMap::new()),
        })
    }

    /// How long `ip` must wait before it may present credentials again, if it must.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut blocked = self.blocked.lock().ok()?;
        match blocked.get(&ip) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                blocked.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Counts a refusal of `ip`; when its bucket is empty, blocks it and says for how long.
    pub fn refused(&self, ip: IpAddr) -> Option<Duration> {
        let not_until = self.limiter.check_key(&ip).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        if let Ok(mut blocked) = self.blocked.lock() {
            if blocked.len() >= MAX_BLOCKED {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
                if blocked.len() >= MAX_BLOCKED {
                    blocked.clear();
                }
            }
            blocked.insert(ip, Instant::now() + wait);
        }
        Some(wait)
    }

    /// Drops addresses that have not been refused lately.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let now = Instant::now();
        if let Ok(mut blocked) = self.blocked.lock() {
            blocked.retain(|_, until| *until > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_once_its_refusals_exceed_the_burst_and_others_are_not() {
        let limiter = FailureLimiter::new(1, 3).expect("a limit");
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(limiter.blocked(a).is_none());
            assert!(limiter.refused(a).is_none(), "within the burst");
        }
        let wait = limiter.refused(a).expect("over the burst");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.blocked(a).is_some());
        assert!(limiter.blocked(b).is_none(), "another address is not");
        assert!(FailureLimiter::new(0, 5).is_none(), "0: no limit");
    }
}
