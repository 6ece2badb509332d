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

use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::model::Change;
use crate::store::SqliteStore;

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
        let journal = Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            durable: watch::Sender::new(0),
            failed: OnceLock::new(),
            store,
        });
        let weak = Arc::downgrade(&journal);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_batches(&weak))
            .expect("spawn the store writer");
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
        let written = j
            .store
            .lock()
            .map_err(|_| "the store lock is poisoned".to_string())
            .and_then(|mut s| s.apply(changes).map_err(|e| e.to_string()));
        match written {
            Ok(()) => {
                j.durable.send_replace(seq);
            }
            Err(reason) => {
                let _ = j.failed.set(reason);
                // Wakes every waiter, which then sees the failure.
                j.durable.send_modify(|_| {});
                return;
            }
        }
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
            row: Box::new(row),
            history: Some(vec![pb::HistoryEvent::default()]),
            inbox: Vec::new(),
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
}
