//! Each caller's share of what the gateway holds at once: requests in progress and long polls or
//! status streams. The global caps protect the gateway; these keep one caller (by identity)
//! from taking all of a cap and leaving `503`s to everyone else: 50 slow bodies or 20 streams of
//! one caller used to fill caps of 50 and 20.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Places one caller may hold of one cap.
#[derive(Debug)]
pub struct PerCaller {
    max: usize,
    held: Mutex<HashMap<Arc<str>, usize>>,
}

impl PerCaller {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// One more place for `caller`, if it holds fewer than its share; released when dropped.
    pub fn take(self: &Arc<Self>, caller: &str) -> Option<Share> {
        let mut held = self.held.lock().ok()?;
        let n = held.entry(Arc::from(caller)).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Share {
            of: self.clone(),
            caller: Arc::from(caller),
        })
    }

    /// Places `caller` holds now.
    pub fn held(&self, caller: &str) -> usize {
        self.held
            .lock()
            .ok()
            .and_then(|h| h.get(caller).copied())
            .unwrap_or(0)
    }
}

/// A place held; given back when dropped (and the caller's entry goes with its last place, so
/// the table holds only callers with something in progress).
#[derive(Debug)]
pub struct Share {
    of: Arc<PerCaller>,
    caller: Arc<str>,
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Ok(mut held) = self.of.held.lock()
            && let Some(n) = held.get_mut(&self.caller)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

/// One turn at a time per key (a caller's starts, while its unfinished operations are counted
/// and one more is made).
#[derive(Debug, Default)]
pub struct Turns {
    locks: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
}

/// A turn held; the next waits until it is dropped.
#[derive(Debug)]
pub struct Turn {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    turns: Arc<Turns>,
    key: Arc<str>,
}

impl Turns {
    pub async fn turn(self: &Arc<Self>, key: &str) -> Turn {
        let lock = self
            .locks
            .lock()
            .map(|mut l| l.entry(Arc::from(key)).or_default().clone())
            .unwrap_or_default();
        Turn {
            _guard: lock.lock_owned().await,
            turns: self.clone(),
            key: Arc::from(key),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // The last one out removes the key (the map and the guard's own reference remain).
        if let Ok(mut locks) = self.turns.locks.lock()
            && locks
                .get(&self.key)
                .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            locks.remove(&self.key);
        }
    }
}

/// Who a request is for the shares: its owner (callers with an identity; with authentication
/// off there is one caller, and every client behind one proxy would share an address, so no
/// share is taken). Put in the request's extensions after authentication.
#[derive(Debug, Clone)]
pub struct CallerKey(pub Arc<str>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_its_share_and_gets_places_back() {
        let shares = PerCaller::new(2);
        let a1 = shares.take("a").expect("first");
        let _a2 = shares.take("a").expect("second");
        assert!(shares.take("a").is_none(), "a third is over the share");
        let _b = shares.take("b").expect("another caller has its own");
        drop(a1);
        assert!(shares.take("a").is_some(), "a place given back");
        assert_eq!(shares.held("b"), 1);
        drop(_b);
        assert_eq!(shares.held("b"), 0);
        assert!(
            shares.held.lock().expect("lock").get("b").is_none(),
            "no entry kept for a caller with nothing held"
        );
    }
}
