//! Group commit: the engine's changes are written to SQLite by one writer thread, as many
//! operations' changes per transaction as arrived while the previous transaction was written.
//!
//! Each engine operation queues its changes under the engine lock and gets a sequence number;
//! the queue is therefore in engine order, and a transaction holds a prefix of it, so what is
//! durable is always everything up to some number. Nothing leaves the scheduler before what it
//! depends on is durable: a caller is answered, a read is answered and a work item is sent only
//! once everything the engine had done when it was made is on disk ([`Journal::durable`]). A
//! crash therefore loses only what nobody was told about, with either `synchronous` mode.
//!
//! The engine lock is no longer held while SQLite writes, so the engine serves other calls
//! during a transaction, and repeated writes of one instance within a batch collapse to one.
//!
//! Checkpoints (copying the WAL's pages into the database file, so that the WAL can start over)
//! happen off the callers' path: once the WAL passes `sqlite_checkpoint_frames`, a second thread
//! with its own connection copies what is committed while the writer goes on, in rounds that
//! shrink to the frames of a few transactions, until one round catches up with the writer: its
//! next transaction then writes the WAL from its start. Only if the WAL has grown as much again
//! meanwhile does the writer copy the rest itself, so that the WAL stays bounded; that blocks
//! every caller queued meanwhile (the writer copied the rest after every checkpoint before: 4-16
//! ms at saturation), so it is counted apart (`dts_local_store_writer_checkpoint_seconds_total`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::model::Change;
use crate::store::{Checkpointer, SqliteStore};

/// How long the idle writer sleeps before checking that the journal still exists.
const IDLE_CHECK: Duration = Duration::from_millis(200);

pub struct Journal {
    queue: Mutex<Queue>,
    /// Signalled when changes are queued.
    queued: Condvar,
    /// The highest sequence number on disk.
    durable: watch::Sender<u64>,
    /// Set when a transaction failed: nothing after it will be durable.
    failed: OnceLock<String>,
    store: Arc<Mutex<SqliteStore>>,
    /// `None` when no second connection could be opened: the writer then checkpoints alone.
    background: Option<Background>,
    pub stats: StoreStats,
}

/// What the writer has done, for `/metrics`: with the transactions' count and time, the
/// operations per transaction (how well group commit batches) and the time each takes.
#[derive(Default)]
pub struct StoreStats {
    pub transactions: AtomicU64,
    /// Engine operations written (each caller's changes count once).
    pub operations: AtomicU64,
    pub wal_frames: AtomicU64,
    pub write_nanos: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Time the writer spent copying the WAL itself (callers queued meanwhile wait for it).
    pub writer_checkpoint_nanos: AtomicU64,
}

/// The checkpoint thread's state, as the writer and it hand it over.
struct Background {
    phase: Mutex<Phase>,
    signal: Condvar,
}

enum Phase {
    Idle,
    Requested,
    Running,
    Done(Result<(), String>),
}

#[derive(Default)]
struct Queue {
    changes: Vec<Change>,
    /// The sequence number of the last queued operation that changed something.
    last: u64,
}

impl Journal {
    /// Starts the writer thread on `store` (shared with readers of stored histories).
    pub fn start(store: Arc<Mutex<SqliteStore>>) -> Arc<Self> {
        let checkpointer = store
            .lock()
            .map_err(|_| "the store lock is poisoned".to_string())
            .and_then(|s| s.checkpointer().map_err(|e| e.to_string()));
        let checkpointer = match checkpointer {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no second store connection; the writer checkpoints alone");
                None
            }
        };
        let journal = Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            durable: watch::Sender::new(0),
            failed: OnceLock::new(),
            store,
            background: checkpointer.as_ref().map(|_| Background {
                phase: Mutex::new(Phase::Idle),
                signal: Condvar::new(),
            }),
            stats: StoreStats::default(),
        });
        let weak = Arc::downgrade(&journal);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_batches(&weak))
            .expect("spawn the store writer");
        if let Some(checkpointer) = checkpointer {
            let weak = Arc::downgrade(&journal);
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpoint_in_background(&weak, &checkpointer))
                .expect("spawn the store checkpointer");
        }
        journal
    }

    /// Queues one operation's changes, in engine order (call it under the engine lock); returns
    /// the number to wait for: this operation's, or, when it changed nothing, that of the last
    /// operation whose state it may have seen.
    pub fn queue(&self, changes: Vec<Change>) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !changes.is_empty() {
            q.last += 1;
            if q.changes.is_empty() {
                q.changes = changes;
            } else {
                q.changes.extend(changes);
            }
            self.queued.notify_one();
        }
        q.last
    }

    /// Waits until everything up to `seq` is on disk; `Err` with the reason when a write failed
    /// first (the scheduler must then stop: memory is ahead of disk).
    pub async fn durable(&self, seq: u64) -> Result<(), String> {
        let mut rx = self.durable.subscribe();
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            if let Some(reason) = self.failed.get() {
                return Err(reason.clone());
            }
            if rx.changed().await.is_err() {
                return Err("the store writer stopped".into());
            }
        }
    }

    /// Whether `seq` is on disk already (no need to wait).
    pub fn is_durable(&self, seq: u64) -> bool {
        *self.durable.borrow() >= seq
    }

    /// The store, for reads of what is on disk only.
    pub fn store(&self) -> &Mutex<SqliteStore> {
        &self.store
    }
}

/// Marks the journal failed if the writer unwinds, so that no caller waits forever for a
/// number that will never be published.
struct FailOnPanic<'a>(&'a Journal);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.failed.set("the store writer panicked".into());
            self.0.durable.send_modify(|_| {});
        }
    }
}

/// The writer: takes everything queued, writes it in one transaction, publishes its number.
fn write_batches(journal: &Weak<Journal>) {
    let mut written_up_to = 0;
    loop {
        let Some(j) = journal.upgrade() else {
            return;
        };
        let _fail_on_panic = FailOnPanic(&j);
        let (changes, seq) = {
            let mut q = j.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.changes.is_empty() {
                // Woken by new changes, or after a while to see whether the journal is gone.
                q = j
                    .queued
                    .wait_timeout(q, IDLE_CHECK)
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if q.changes.is_empty() {
                continue;
            }
            (std::mem::take(&mut q.changes), q.last)
        };
        let began = Instant::now();
        // One lock for the transaction and the checkpoint step after it.
        let Ok(mut store) = j.store.lock() else {
            fail(&j, "the store lock is poisoned".into());
            return;
        };
        let before = store.wal_frames();
        if let Err(e) = store.apply(changes) {
            fail(&j, e.to_string());
            return;
        }
        let frames = store.wal_frames().saturating_sub(before);
        j.durable.send_replace(seq);
        let stats = &j.stats;
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats
            .operations
            .fetch_add(seq - written_up_to, Ordering::Relaxed);
        written_up_to = seq;
        stats
            .wal_frames
            .fetch_add(u64::from(frames), Ordering::Relaxed);
        stats
            .write_nanos
            .fetch_add(nanos_since(began), Ordering::Relaxed);
        // After the answer: the callers of this batch do not wait for it.
        checkpoint_step(&j, &mut store);
    }
}

/// A failed transaction: nothing after it will be durable, and every waiter sees why.
fn fail(j: &Journal, reason: String) {
    let _ = j.failed.set(reason);
    j.durable.send_modify(|_| {});
}

fn nanos_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The writer's part of a checkpoint, after each transaction: start one in the background when
/// the WAL is due; when the background is done, see whether the WAL started over, and if not,
/// send it round again, or copy the rest itself once the WAL has doubled. With no background
/// thread, the writer does it all.
fn checkpoint_step(j: &Journal, store: &mut SqliteStore) {
    let Some(bg) = &j.background else {
        if store.checkpoint_due() {
            writer_checkpoint(j, store);
        }
        return;
    };
    let mut phase = bg.phase.lock().unwrap_or_else(|e| e.into_inner());
    match std::mem::replace(&mut *phase, Phase::Idle) {
        Phase::Idle if store.checkpoint_due() => {
            *phase = Phase::Requested;
            bg.signal.notify_one();
        }
        Phase::Done(Ok(())) if store.wal_started_over() => {
            // A round caught up with the writer, and this transaction wrote the WAL from its
            // start.
            j.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        Phase::Done(Ok(())) if store.checkpoint_overdue() => {
            drop(phase);
            writer_checkpoint(j, store);
        }
        Phase::Done(Ok(())) => {
            // Not caught up: the writer committed during the last round. Go round again.
            *phase = Phase::Requested;
            bg.signal.notify_one();
        }
        Phase::Done(Err(e)) => {
            checkpoint_failed(&e);
            store.defer_checkpoint();
        }
        other => *phase = other,
    }
}

/// The writer copies what is left of the WAL itself (everything queued meanwhile waits).
fn writer_checkpoint(j: &Journal, store: &mut SqliteStore) {
    let began = Instant::now();
    let result = store.checkpoint();
    j.stats
        .writer_checkpoint_nanos
        .fetch_add(nanos_since(began), Ordering::Relaxed);
    match result {
        Ok(()) => {
            j.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => checkpoint_failed(&e),
    }
}

fn checkpoint_failed(e: &dyn std::fmt::Display) {
    tracing::warn!(error = %e, "could not checkpoint the store's WAL (nothing is lost; trying again later)");
}

/// The checkpoint thread: copies the WAL into the database file when the writer asks.
fn checkpoint_in_background(journal: &Weak<Journal>, checkpointer: &Checkpointer) {
    loop {
        let Some(j) = journal.upgrade() else {
            return;
        };
        let Some(bg) = &j.background else {
            return;
        };
        {
            let mut phase = bg.phase.lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(*phase, Phase::Requested) {
                phase = bg
                    .signal
                    .wait_timeout(phase, IDLE_CHECK)
                    .map(|(p, _)| p)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if !matches!(*phase, Phase::Requested) {
                continue;
            }
            *phase = Phase::Running;
        }
        let result = checkpointer.catch_up().map_err(|e| e.to_string());
        *bg.phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Done(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceRow;
    use durabletask_proto as pb;

    fn put(id: &str, payload_bytes: usize) -> Vec<Change> {
        let mut row = InstanceRow::for_test(id, "n", 1, chrono::Utc::now());
        row.input = Some("x".repeat(payload_bytes));
        vec![Change::PutInstance {
            hub: "h".into(),
            instance: Box::new(crate::model::StoredInstance::encode(
                &row,
                Some(&[pb::HistoryEvent::default()]),
                [].iter(),
            )),
        }]
    }

    #[tokio::test]
    async fn a_caller_waits_for_its_batch_and_a_failed_write_fails_every_later_waiter() {
        // Room for the tables and a few small rows, not for a 1 MiB one.
        let (store, dir) = SqliteStore::open_for_test(256 * 1024);
        let journal = Journal::start(Arc::new(Mutex::new(store)));

        let first = journal.queue(put("a", 10));
        let second = journal.queue(put("b", 10));
        assert_eq!((first, second), (1, 2), "numbered in queue order");
        assert_eq!(
            journal.queue(Vec::new()),
            2,
            "a read waits for the last change"
        );
        journal.durable(second).await.expect("written");
        assert!(journal.is_durable(first), "everything before it too");
        assert!(
            journal
                .store()
                .lock()
                .expect("store")
                .history("h", "b")
                .expect("read")
                .is_some(),
            "on disk once durable"
        );

        let too_big = journal.queue(put("c", 1 << 20));
        let err = journal
            .durable(too_big)
            .await
            .expect_err("the disk is full");
        assert!(err.contains("full"), "{err}");
        let after = journal.queue(put("d", 10));
        assert!(
            journal.durable(after).await.is_err(),
            "nothing after a failed write is durable"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn background_checkpoints_keep_the_wal_bounded_and_lose_nothing() {
        const FRAMES: u32 = 16;
        let (store, dir) = SqliteStore::open_for_test_with(0, FRAMES);
        let journal = Journal::start(Arc::new(Mutex::new(store)));
        let rows = 600;
        for i in 0..rows {
            let seq = journal.queue(put(&format!("i{i}"), 8 * 1024));
            if i % 4 == 3 {
                journal.durable(seq).await.expect("written");
            }
        }
        let stats = &journal.stats;
        // The writer counts a checkpoint after a transaction that follows it: small ones until
        // then, as a busy machine may give the checkpoint thread its core late.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut small = 0;
        while stats.checkpoints.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no checkpoint completed");
            let seq = journal.queue(put(&format!("small{small}"), 10));
            journal.durable(seq).await.expect("written");
            small += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let frames = stats.wal_frames.load(Ordering::Relaxed);
        assert!(frames > 20 * u64::from(FRAMES), "{frames} frames written");
        // The WAL file keeps its largest size: below everything written (4,120 bytes a frame
        // with its header) once it has started over. How far below depends on how soon the
        // checkpoint thread gets a core (from a quarter to half of it on a busy machine); the
        // writer's own bound is in the store's tests.
        let wal = std::fs::metadata(dir.join("s.db-wal"))
            .expect("the WAL")
            .len();
        assert!(
            wal < frames * 4096,
            "the WAL ({wal} bytes) started over while {frames} frames were written"
        );
        let store = journal.store().lock().expect("store");
        for i in (0..rows).step_by(37) {
            let id = format!("i{i}");
            assert!(
                store.history("h", &id).expect("read").is_some(),
                "{id} kept"
            );
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
