//! Checkpoints: the WAL copied into the database file off the callers' path (see
//! `server::journal` for who runs them when).

use super::{SqliteStore, StoreError};

/// WAL frames (4 KiB pages) after which a checkpoint starts, by default
/// (`sqlite_checkpoint_frames`). SQLite's own automatic checkpoint
/// (at 1,000 frames) ran inside `COMMIT`, so every caller of that batch waited for its page
/// copies and `fsync`s; now a second connection copies the pages on another thread while the
/// writer goes on (see `server::journal`).
pub const CHECKPOINT_FRAMES: u32 = 8_192;

/// Rounds of one background checkpoint at most: each copies what the writer committed during
/// the one before, so the rounds shrink towards the frames of a few transactions.
const CATCH_UP_ROUNDS: usize = 8;

/// A round that copied no more frames than this ends the catching up: what is left is about
/// as small as it gets while the writer goes on.
const CAUGHT_UP_FRAMES: u32 = 64;

thread_local! {
    /// The frames in the WAL after this thread's last commit, as SQLite's WAL hook reports them
    /// (the hook is a plain function, and commits happen on the committing thread).
    static WAL_FRAMES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

pub(super) fn note_wal_frames(
    _: &rusqlite::hooks::Wal,
    frames: std::ffi::c_int,
) -> rusqlite::Result<()> {
    WAL_FRAMES.set(u32::try_from(frames).unwrap_or(0));
    Ok(())
}

impl SqliteStore {
    /// The frames in the WAL after this thread's last commit.
    pub fn wal_frames(&self) -> u32 {
        WAL_FRAMES.get()
    }

    /// Whether the WAL has grown past the threshold by this thread's commits.
    pub fn checkpoint_due(&self) -> bool {
        WAL_FRAMES.get() >= self.checkpoint_at
    }

    /// Whether the WAL has grown as much again since it was due: the writer then copies it even
    /// with callers waiting, so that the WAL stays bounded.
    pub fn checkpoint_overdue(&self) -> bool {
        WAL_FRAMES.get() >= self.checkpoint_at.saturating_add(self.checkpoint_frames)
    }

    /// Whether the WAL started over since it was due (a checkpoint elsewhere caught up with the
    /// writer): it only grows otherwise. The next checkpoint is then due at the threshold again
    /// (it may have been put off by a failed one).
    pub fn wal_started_over(&mut self) -> bool {
        let over = WAL_FRAMES.get() < self.checkpoint_at;
        if over {
            self.checkpoint_at = self.checkpoint_frames;
        }
        over
    }

    /// Copies the WAL's remaining pages into the database file, so that the next transaction
    /// writes the WAL from its start again (no other connection writes, so it completes). A
    /// failure loses nothing (the WAL still holds every commit); the next try then waits for
    /// as many frames again.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        match passive_checkpoint(&self.conn) {
            Ok(_) => {
                WAL_FRAMES.set(0);
                self.checkpoint_at = self.checkpoint_frames;
                Ok(())
            }
            Err(e) => {
                self.defer_checkpoint();
                Err(e)
            }
        }
    }

    /// Waits for as many frames again before the next checkpoint (after a failed one elsewhere).
    pub fn defer_checkpoint(&mut self) {
        self.checkpoint_at = WAL_FRAMES.get().saturating_add(self.checkpoint_frames);
    }

    /// A second connection to the same file, for checkpoints on another thread.
    pub fn checkpointer(&self) -> Result<Checkpointer, StoreError> {
        let path = self
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| StoreError::Corrupt("the store has no file".into()))?;
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // The same `fsync`s as the writer's connection would make.
        let synchronous: i64 = self
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", synchronous)?;
        Ok(Checkpointer { conn })
    }
}

/// Copies what it can of the WAL into the database file without blocking the writer; returns
/// how many of the WAL's frames are in the database file now (0 when the WAL started over).
fn passive_checkpoint(conn: &rusqlite::Connection) -> Result<u32, StoreError> {
    let copied: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(2))?;
    Ok(u32::try_from(copied).unwrap_or(0))
}

/// Checkpoints from its own connection, concurrently with the writer's transactions.
pub struct Checkpointer {
    conn: rusqlite::Connection,
}

impl Checkpointer {
    /// Copies the frames committed so far into the database file, then, in more rounds, those
    /// committed meanwhile, until a round is small. When a round caught up with the writer
    /// entirely, the writer's next transaction starts the WAL over.
    pub fn catch_up(&self) -> Result<(), StoreError> {
        let mut copied = passive_checkpoint(&self.conn)?;
        for _ in 1..CATCH_UP_ROUNDS {
            let before = copied;
            copied = passive_checkpoint(&self.conn)?;
            // Fewer than before: the WAL started over, everything was copied.
            if copied <= before.saturating_add(CAUGHT_UP_FRAMES) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, InstanceRow, StoredInstance};
    use durabletask_proto as pb;

    /// A new instance with `history_bytes` of history (4 KiB pages: `history_bytes` / 4096 of
    /// them, about).
    fn put_with(id: &str, history_bytes: usize) -> Change {
        let row = InstanceRow::for_test(
            id,
            "n",
            pb::OrchestrationStatus::Running as i32,
            chrono::Utc::now(),
        );
        let history = [pb::HistoryEvent {
            event_id: 1,
            event_type: Some(pb::history_event::EventType::ExecutionStarted(
                pb::ExecutionStartedEvent {
                    name: "x".repeat(history_bytes),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }];
        Change::PutInstance {
            hub: "h".into(),
            instance: Box::new(StoredInstance::encode(&row, Some(&history), [].iter())),
        }
    }

    #[test]
    fn the_writer_checkpoints_past_the_threshold_and_the_wal_starts_over() {
        let (mut store, dir) = SqliteStore::open_for_test(0);
        // 256 KiB of history: 64 pages a row.
        let put = |id: &str| put_with(id, 256 * 1024);
        let mut rows = 0;
        while !store.checkpoint_due() {
            store.apply(vec![put(&format!("i{rows}"))]).expect("apply");
            rows += 1;
            assert!(
                rows < 200,
                "no checkpoint due after {rows} rows of 64 pages"
            );
        }
        assert!(rows >= 32, "due only past the threshold ({rows} rows)");
        store.checkpoint().expect("checkpoint");
        assert!(!store.checkpoint_due());
        store.apply(vec![put("next")]).expect("apply");
        let frames = WAL_FRAMES.get();
        assert!(
            frames < 200,
            "the WAL starts over after a checkpoint ({frames} frames)"
        );
        for id in ["i0", "next"] {
            let history = store.history("h", id).expect("read").expect("kept");
            assert_eq!(history.len(), 1, "{id} reads back");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overdue_as_many_frames_past_due_and_started_over_after_a_checkpoint_elsewhere() {
        let (mut store, dir) = SqliteStore::open_for_test_with(0, 64);
        let mut rows = 0;
        let mut put = |store: &mut SqliteStore| {
            store
                .apply(vec![put_with(&format!("i{rows}"), 16 * 1024)])
                .expect("apply");
            rows += 1;
            assert!(rows < 500, "{rows} rows of 4 pages");
        };
        while !store.checkpoint_due() {
            put(&mut store);
        }
        assert!(!store.checkpoint_overdue(), "due before overdue");
        assert!(
            !store.wal_started_over(),
            "the WAL only grows without a checkpoint"
        );
        while !store.checkpoint_overdue() {
            put(&mut store);
        }
        assert!(store.wal_frames() >= 128, "{} frames", store.wal_frames());
        // As the background thread does it, from its own connection; the writer idle meanwhile,
        // so the rounds catch up with it entirely.
        store
            .checkpointer()
            .expect("a second connection")
            .catch_up()
            .expect("checkpoint");
        put(&mut store);
        assert!(
            store.wal_started_over(),
            "the next transaction starts the WAL over ({} frames)",
            store.wal_frames()
        );
        assert!(!store.checkpoint_due() && !store.checkpoint_overdue());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
