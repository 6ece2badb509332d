//! Each caller's share of what the gateway holds at once: requests in progress and long polls or
//! status streams. The global caps protect the gateway; these keep one caller (by identity)
//! from taking all of a cap and leaving `503`s to everyone else: 50 slow bodies or 20 streams of
//! one caller used to fill caps of 50 and 20.

use std::collections::{HashMap, HashSet, VecDeque};
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
/// start counts the caller's unfinished operations at the scheduler (their ids) and adds what the
/// scheduler may not show yet: this replica's starts of that caller in flight, and those that
/// ended since the count began to be read, each unless its id is among those counted. So a
/// replica never passes the cap itself, and refuses early only for an operation that ended
/// while the count was read. At most `per_caller` of a caller's starts are in flight at once in
/// a replica (the rest wait their turn), which bounds what other replicas cannot see: with `R`
/// replicas the cap is passed by at most `per_caller * (R - 1)`.
///
/// A count is read once for every start that arrived before the read began: starts that come
/// while one is read wait for it to end and share the next one, so a busy caller costs about one
/// query per batch of starts rather than one per start. Sharing a read that began after a start
/// arrived is the same as that start reading at that moment, so the bounds above hold.
#[derive(Debug)]
pub struct StartLedger {
    per_caller: usize,
    callers: Mutex<HashMap<Arc<str>, Starts>>,
}

#[derive(Debug)]
struct Starts {
    turns: Arc<tokio::sync::Semaphore>,
    /// Starts admitted and not ended: (ticket, operation id).
    in_flight: Vec<(u64, Arc<str>)>,
    tickets: u64,
    /// Starts waiting for a turn or reading the count (the entry stays while any is).
    reading: usize,
    /// Starts that have ended, ever (while the entry lives).
    ended: u64,
    /// The ids of the starts that ended, numbered by `ended`, back to the last read's beginning.
    ended_ids: VecDeque<(u64, Arc<str>)>,
    /// Reads of the count begun, ever (while the entry lives).
    reads_begun: u64,
    /// The last count read: shared by the starts that arrived before it began.
    last_read: Option<CountRead>,
    /// Held while the count is read: one read at a time per caller.
    reader: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Clone)]
struct CountRead {
    /// Its place in `reads_begun`.
    number: u64,
    /// The unfinished operations it counted.
    ids: Arc<HashSet<String>>,
    /// `ended` when it began.
    ended_before: u64,
}

/// A start that counts the caller's unfinished operations: what to add to the count once read.
#[derive(Debug)]
pub struct Reading {
    ledger: Arc<StartLedger>,
    caller: Arc<str>,
    id: Arc<str>,
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
    /// `reads_begun` when this start arrived: a read numbered above it began after.
    arrived_after: u64,
    done: bool,
}

/// A start in flight, counted until dropped (made or not).
#[derive(Debug)]
pub struct StartInFlight {
    ledger: Arc<StartLedger>,
    caller: Arc<str>,
    ticket: u64,
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
            in_flight: Vec::new(),
            tickets: 0,
            reading: 0,
            ended: 0,
            ended_ids: VecDeque::new(),
            reads_begun: 0,
            last_read: None,
            reader: Arc::new(tokio::sync::Mutex::new(())),
        });
        let r = f(starts);
        if starts.in_flight.is_empty() && starts.reading == 0 {
            callers.remove(caller);
        }
        r
    }

    /// Waits for one of `caller`'s turns to start operation `id`; the start then reads the
    /// count (`Reading::admit`).
    pub async fn reading(self: &Arc<Self>, caller: &str, id: &str) -> Reading {
        let (turns, arrived_after) = self.with(caller, |s| {
            s.reading += 1;
            (s.turns.clone(), s.reads_begun)
        });
        // Counted in `reading` from here on, if this future is dropped too.
        let mut reading = Reading {
            ledger: self.clone(),
            caller: Arc::from(caller),
            id: Arc::from(id),
            turn: None,
            arrived_after,
            done: false,
        };
        reading.turn = turns.acquire_owned().await.ok();
        reading
    }
}

impl Reading {
    /// The caller's unfinished operations as read by `read` (the ids the scheduler counts), or
    /// by a read that began after this start arrived; then a start in flight if the total stays
    /// under `cap`, else `Ok(Err(total))`.
    pub async fn admit<E, F>(self, cap: usize, read: F) -> Result<Result<StartInFlight, usize>, E>
    where
        F: AsyncFnOnce() -> Result<HashSet<String>, E>,
    {
        let reader = self.ledger.with(&self.caller, |s| s.reader.clone());
        let count = {
            let _one_at_a_time = reader.lock().await;
            let after = self.arrived_after;
            let shared = self.ledger.with(&self.caller, |s| {
                s.last_read.clone().filter(|r| r.number > after)
            });
            match shared {
                Some(count) => count,
                None => {
                    let (number, ended_before) = self.ledger.with(&self.caller, |s| {
                        s.reads_begun += 1;
                        (s.reads_begun, s.ended)
                    });
                    let count = CountRead {
                        number,
                        ids: Arc::new(read().await?),
                        ended_before,
                    };
                    self.ledger.with(&self.caller, |s| {
                        // No later start can share an older read: its ended ids are not needed.
                        while s.ended_ids.front().is_some_and(|(n, _)| *n <= ended_before) {
                            s.ended_ids.pop_front();
                        }
                        s.last_read = Some(count.clone());
                    });
                    count
                }
            }
        };
        Ok(self.admit_counted(&count, cap))
    }

    fn admit_counted(mut self, count: &CountRead, cap: usize) -> Result<StartInFlight, usize> {
        self.done = true;
        let id = self.id.clone();
        let admitted = self.ledger.with(&self.caller, |s| {
            s.reading -= 1;
            let unseen = |op: &Arc<str>| !count.ids.contains(&**op);
            let total = count.ids.len()
                + s.in_flight.iter().filter(|(_, op)| unseen(op)).count()
                + s.ended_ids
                    .iter()
                    .filter(|(n, op)| *n > count.ended_before && unseen(op))
                    .count();
            if total >= cap {
                return Err(total);
            }
            s.tickets += 1;
            s.in_flight.push((s.tickets, id));
            Ok(s.tickets)
        });
        admitted.map(|ticket| StartInFlight {
            ledger: self.ledger.clone(),
            caller: self.caller.clone(),
            ticket,
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
            if let Some(at) = s.in_flight.iter().position(|(t, _)| *t == self.ticket) {
                let (_, id) = s.in_flight.swap_remove(at);
                s.ended += 1;
                s.ended_ids.push_back((s.ended, id));
            }
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

    /// `Reading::admit` with a read that finds the operations `ids` and notes that it ran.
    async fn admit(
        r: Reading,
        cap: usize,
        ids: &[&str],
        reads: &std::sync::atomic::AtomicUsize,
    ) -> Result<StartInFlight, usize> {
        r.admit(cap, async || {
            reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(set(ids))
        })
        .await
        .expect("read")
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_start_counts_what_the_scheduler_may_not_show_yet() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let reads = AtomicUsize::new(0);
        let ledger = StartLedger::new(2);
        // Two starts arrive together: the first reads one operation, x, and is admitted; the
        // second arrived before that read began, so it shares it, counts the first (in flight)
        // and passes a cap of 3 no further.
        let r1 = ledger.reading("a", "a1").await;
        let r2 = ledger.reading("a", "a2").await;
        let s1 = admit(r1, 3, &["x"], &reads).await.expect("1 + 0 < 3");
        let s2 = admit(r2, 3, &["x"], &reads)
            .await
            .expect("1 + 1 in flight < 3");
        assert_eq!(reads.load(SeqCst), 1, "one read for both");
        // A third waits for a turn (2 per caller) until one of them ends.
        let waiting = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.reading("a", "a3").await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "two starts of a are in flight");
        let other = admit(ledger.reading("b", "b1").await, 1, &[], &reads)
            .await
            .expect("b has turns of its own");
        drop(s1);
        let r3 = waiting.await.expect("a turn");
        // It arrived after the shared read began, so it reads again, with a cap of 4. s1 ended
        // before, so the count shows it; s2 ends while it is read and is not in what it finds,
        // so it is added: x, a1 and a2.
        let mut s2 = Some(s2);
        let admitted = r3
            .admit(4, async || {
                drop(s2.take());
                Ok::<_, ()>(set(&["x", "a1"]))
            })
            .await
            .expect("read");
        let s3 = admitted.expect("x, a1 and a2 (ended meanwhile, not seen): 3 < 4");
        // A fourth shares nothing (it came after that read began): the scheduler now shows a2
        // and a3, so neither is counted twice.
        let r4 = ledger.reading("a", "a4").await;
        let s4 = admit(r4, 5, &["x", "a1", "a2", "a3"], &reads)
            .await
            .expect("4 < 5: a3 in flight but seen, a2 ended but seen");
        drop(s3);
        let r5 = ledger.reading("a", "a5").await;
        assert_eq!(
            admit(r5, 5, &["x", "a1", "a2", "a3"], &reads).await.err(),
            Some(5),
            "a3 ended but seen, a4 in flight and not yet seen"
        );
        drop((s4, other));
        assert!(ledger.callers.lock().expect("lock").is_empty());
        // A start given up while waiting or reading leaves nothing behind.
        let c1 = admit(ledger.reading("c", "c1").await, 5, &[], &reads)
            .await
            .expect("c");
        let c2 = ledger.reading("c", "c2").await;
        let waiting = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.reading("c", "c3").await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(c2);
        drop(c1);
        assert!(ledger.callers.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn starts_that_arrive_during_a_read_share_the_next_one() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let reads = Arc::new(AtomicUsize::new(0));
        let ledger = StartLedger::new(64);
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        // A read in progress: starts that arrive now cannot use it (it began before them).
        let first = tokio::spawn({
            let (ledger, reads) = (ledger.clone(), reads.clone());
            async move {
                let r = ledger.reading("a", "first").await;
                r.admit(100, async || {
                    reads.fetch_add(1, SeqCst);
                    let _ = held.await;
                    Ok::<_, ()>(set(&["x"]))
                })
                .await
                .expect("read")
                .map(drop)
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut later = Vec::new();
        for i in 0..20 {
            let (ledger, reads) = (ledger.clone(), reads.clone());
            let r = ledger.reading("a", &format!("later-{i}")).await;
            later.push(tokio::spawn(async move {
                let admitted = r
                    .admit(22, async || {
                        reads.fetch_add(1, SeqCst);
                        Ok::<_, ()>(set(&["x", "first"]))
                    })
                    .await
                    .expect("read");
                // Held until every start has been admitted, so that each counts the others.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                admitted.map(drop)
            }));
        }
        release.send(()).expect("release");
        first.await.expect("join").expect("admitted");
        let mut admitted = 0;
        for t in later {
            admitted += usize::from(t.await.expect("join").is_ok());
        }
        assert_eq!(
            reads.load(SeqCst),
            2,
            "the 20 that arrived during the first read share one"
        );
        // x and `first` (seen by the second read, so counted once whenever it ended), plus 20
        // admitted in turn: the cap of 22 leaves room for exactly 20.
        assert_eq!(admitted, 20);
        assert!(ledger.callers.lock().expect("lock").is_empty());
    }
}
