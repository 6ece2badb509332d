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

/// Each caller's starts in progress in this replica, for the cap of unfinished operations. A
/// start counts the caller's unfinished operations at the scheduler and adds what the scheduler
/// may not show yet: this replica's starts of that caller in flight, and those that ended while
/// the count was read (they may or may not be in it: counted twice at worst, which refuses a
/// start early rather than late). So a replica never passes the cap itself. At most
/// `per_caller` of a caller's starts are in flight at once in a replica (the rest wait their
/// turn), which bounds what other replicas cannot see: with `R` replicas the cap is passed by at
/// most `per_caller * (R - 1)`. 1 is exact to `R - 1` but holds a caller to one start per two
/// round trips to the scheduler.
#[derive(Debug)]
pub struct StartLedger {
    per_caller: usize,
    callers: Mutex<HashMap<Arc<str>, Starts>>,
}

#[derive(Debug)]
struct Starts {
    turns: Arc<tokio::sync::Semaphore>,
    in_flight: usize,
    /// Starts waiting for a turn or reading the count (the entry stays while any is).
    reading: usize,
    /// Starts that have ended, ever (while the entry lives).
    ended: u64,
}

/// A start that counts the caller's unfinished operations: what to add to the count once read.
#[derive(Debug)]
pub struct Reading {
    ledger: Arc<StartLedger>,
    caller: Arc<str>,
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
    ended_before: u64,
    done: bool,
}

/// A start in flight, counted until dropped (made or not).
#[derive(Debug)]
pub struct StartInFlight {
    ledger: Arc<StartLedger>,
    caller: Arc<str>,
    _turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl StartLedger {
    pub fn new(per_caller: usize) -> Arc<Self> {
        Arc::new(Self {
            per_caller: per_caller.max(1),
            callers: Mutex::new(HashMap::new()),
        })
    }

    fn with<R>(&self, caller: &str, f: impl FnOnce(&mut Starts) -> R) -> R {
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        let starts = callers.entry(Arc::from(caller)).or_insert_with(|| Starts {
            turns: Arc::new(tokio::sync::Semaphore::new(self.per_caller)),
            in_flight: 0,
            reading: 0,
            ended: 0,
        });
        let r = f(starts);
        if starts.in_flight == 0 && starts.reading == 0 {
            callers.remove(caller);
        }
        r
    }

    /// Waits for one of `caller`'s turns, then to be told what to add to the count it reads.
    pub async fn reading(self: &Arc<Self>, caller: &str) -> Reading {
        let turns = self.with(caller, |s| {
            s.reading += 1;
            s.turns.clone()
        });
        // Counted in `reading` from here on, if this future is dropped too.
        let mut reading = Reading {
            ledger: self.clone(),
            caller: Arc::from(caller),
            turn: None,
            ended_before: 0,
            done: false,
        };
        reading.turn = turns.acquire_owned().await.ok();
        reading.ended_before = self.with(caller, |s| s.ended);
        reading
    }
}

impl Reading {
    /// With the scheduler's count read: a start in flight if the total stays under `cap`, else
    /// the total.
    pub fn admit(mut self, counted: usize, cap: usize) -> Result<StartInFlight, usize> {
        self.done = true;
        let before = self.ended_before;
        let admitted = self.ledger.with(&self.caller, |s| {
            s.reading -= 1;
            let ended = usize::try_from(s.ended - before).unwrap_or(usize::MAX);
            let total = counted.saturating_add(s.in_flight).saturating_add(ended);
            if total >= cap {
                return Err(total);
            }
            s.in_flight += 1;
            Ok(())
        });
        admitted.map(|()| StartInFlight {
            ledger: self.ledger.clone(),
            caller: self.caller.clone(),
            _turn: self.turn.take(),
        })
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if !self.done {
            self.ledger.with(&self.caller, |s| s.reading -= 1);
        }
    }
}

impl Drop for StartInFlight {
    fn drop(&mut self) {
        self.ledger.with(&self.caller, |s| {
            s.in_flight -= 1;
            s.ended += 1;
        });
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

    #[tokio::test]
    async fn a_start_counts_what_the_scheduler_may_not_show_yet() {
        let ledger = StartLedger::new(2);
        // Two starts read a count of 1 side by side; the first is admitted, the second counts
        // it (in flight) and passes a cap of 3 no further.
        let r1 = ledger.reading("a").await;
        let r2 = ledger.reading("a").await;
        let s1 = r1.admit(1, 3).expect("1 + 0 < 3");
        let s2 = r2.admit(1, 3).expect("1 + 1 in flight < 3");
        // A third waits for a turn (2 per caller) until one of them ends.
        let waiting = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.reading("a").await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "two starts of a are in flight");
        let other = ledger
            .reading("b")
            .await
            .admit(0, 1)
            .expect("b has turns of its own");
        drop(s1);
        let r3 = waiting.await.expect("a turn");
        // s1 ended before this count was read, so it is in it; s2 ends while it is read, so it
        // may or may not be: counted either way.
        drop(s2);
        assert_eq!(
            r3.admit(1, 2).err(),
            Some(2),
            "s1 counted, s2 ended meanwhile"
        );
        drop(other);
        assert!(ledger.callers.lock().expect("lock").is_empty());
        // A start given up while waiting or reading leaves nothing behind.
        let c1 = ledger.reading("c").await.admit(0, 5).expect("c");
        let c2 = ledger.reading("c").await;
        let waiting = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.reading("c").await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(c2);
        drop(c1);
        assert!(ledger.callers.lock().expect("lock").is_empty());
    }
}
