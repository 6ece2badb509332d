//! Durable storage: SQLite (bundled, WAL) in a file, or nothing at all for the in-memory mode.
//!
//! The engine owns the live state; the store is its write-ahead copy. Every engine operation
//! produces a list of [`Change`]s that is written in **one transaction** before the caller gets
//! its answer, so a crash at any point loses nothing that was acknowledged. On start-up the
//! store is read back into the engine.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use prost::Message;
use rusqlite::params;

use crate::model::{
    Change, EntityRow, Instance, InstanceRow, children_of, encode_events, from_ts, is_terminal, ts,
};

mod checkpoint;

use checkpoint::note_wal_frames;
pub use checkpoint::{CHECKPOINT_FRAMES, Checkpointer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub struct SqliteStore {
    conn: rusqlite::Connection,
    /// WAL frames after which a checkpoint is due.
    checkpoint_frames: u32,
    /// WAL frames at which the next checkpoint is due (later after a failed one).
    checkpoint_at: u32,
}

/// Everything a hub had on disk.
pub struct Loaded {
    /// Boxed as the engine keeps them: a vector of 200,000 unboxed instances is ~90 MB, and
    /// twice that while it grows, on top of the instances themselves.
    #[allow(clippy::vec_box)]
    pub instances: Vec<Box<Instance>>,
    pub activities: Vec<(String, pb::ActivityRequest)>,
    pub timers: Vec<(DateTime<Utc>, u64, String, pb::HistoryEvent)>,
    pub entities: Vec<EntityRow>,
}

fn decode_opt<M: Message + Default>(b: Option<Vec<u8>>) -> Result<Option<M>, StoreError> {
    b.map(|b| M::decode(b.as_slice()).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

/// How the SQLite file is written.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub synchronous: crate::settings::Synchronous,
    /// A cap on the database file (0: none). Past it, writes fail as on a full disk.
    pub max_bytes: u64,
    /// WAL frames after which a checkpoint is due.
    pub checkpoint_frames: u32,
    /// How long a write waits for a lock held by another connection.
    pub busy_timeout: std::time::Duration,
}

impl SqliteStore {
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Corrupt(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = rusqlite::Connection::open(path)?;
        // Another process (a backup, an inspection with the sqlite3 shell) may hold a lock briefly.
        conn.busy_timeout(options.busy_timeout)?;
        // WAL: a commit survives a killed process (SIGKILL) with either setting; with NORMAL a
        // power loss may lose the last commits, with FULL it loses none.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            options.synchronous.as_str().to_ascii_uppercase(),
        )?;
        if options.max_bytes > 0 {
            let page_size: u64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
            conn.pragma_update(
                None,
                "max_page_count",
                (options.max_bytes / page_size).max(1),
            )?;
        }
        // Replaces SQLite's automatic checkpoint: see `checkpoint::CHECKPOINT_FRAMES`.
        conn.wal_hook(Some(note_wal_frames));
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS instances (
                hub TEXT NOT NULL, instance_id TEXT NOT NULL, meta TEXT NOT NULL,
                failure BLOB, parent BLOB, trace BLOB, history BLOB NOT NULL, inbox BLOB NOT NULL,
                PRIMARY KEY (hub, instance_id));
             CREATE TABLE IF NOT EXISTS activities (
                hub TEXT NOT NULL, key TEXT NOT NULL, request BLOB NOT NULL, PRIMARY KEY (hub, key));
             CREATE TABLE IF NOT EXISTS timers (
                hub TEXT NOT NULL, seq INTEGER NOT NULL, due_ms INTEGER NOT NULL, instance_id TEXT NOT NULL,
                event BLOB NOT NULL, PRIMARY KEY (hub, seq));
             CREATE TABLE IF NOT EXISTS entities (
                hub TEXT NOT NULL, id TEXT NOT NULL, state TEXT, modified_ms INTEGER NOT NULL,
                queue BLOB NOT NULL, locked_by TEXT, PRIMARY KEY (hub, id));",
        )?;
        Ok(Self {
            conn,
            checkpoint_frames: options.checkpoint_frames.max(1),
            checkpoint_at: options.checkpoint_frames.max(1),
        })
    }

    /// An instance's stored history (`None`: no such instance).
    pub fn history(
        &self,
        hub: &str,
        id: &str,
    ) -> Result<Option<Vec<pb::HistoryEvent>>, StoreError> {
        use rusqlite::OptionalExtension;
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT history FROM instances WHERE hub = ?1 AND instance_id = ?2")?
            .query_row(params![hub, id], |r| r.get(0))
            .optional()?;
        blob.map(|b| {
            pb::HistoryChunk::decode(b.as_slice())
                .map(|c| c.events)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .transpose()
    }

    /// Writes the changes in one transaction (those of many engine operations, in their order:
    /// group commit). Repeated writes of one instance collapse to what the last ones leave: a
    /// whole row (or its deletion) replaces everything before it, while a write of everything but
    /// the history (the history on disk only) replaces only earlier writes of the same kind, so
    /// a row first inserted in the same batch is still inserted.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Per instance, what a later change already wrote: the whole row, or all but its history.
        let mut later: HashMap<(String, String), bool> = HashMap::new();
        let mut last_first: Vec<Change> = Vec::with_capacity(changes.len());
        for c in changes.into_iter().rev() {
            let (key, whole) = match &c {
                Change::PutInstance { hub, instance } => (
                    Some((hub.clone(), instance.instance_id.clone())),
                    instance.history.is_some(),
                ),
                Change::DeleteInstance { hub, instance_id } => {
                    (Some((hub.clone(), instance_id.clone())), true)
                }
                _ => (None, false),
            };
            let Some(key) = key else {
                last_first.push(c);
                continue;
            };
            match later.get(&key) {
                // A whole row or a deletion comes later: this write is gone either way.
                Some(true) => continue,
                // A partial write comes later: it replaces an earlier partial one only.
                Some(false) if !whole => continue,
                _ => {}
            }
            let entry = later.entry(key).or_insert(false);
            *entry |= whole;
            last_first.push(c);
        }
        let tx = self.conn.transaction()?;
        for c in last_first.into_iter().rev() {
            match c {
                Change::PutInstance { hub, instance } => {
                    let i = *instance;
                    // Without a history, the row's is on disk already and stays.
                    let whole = i.history.is_some();
                    let values = params![
                        hub,
                        i.instance_id,
                        i.meta,
                        i.failure,
                        i.parent,
                        i.trace,
                        i.history,
                        i.inbox
                    ];
                    // An update in place leaves the (hub, id) index as it is; a replace would
                    // delete and insert its entry, a write to a random page of it for every
                    // change of an instance.
                    let updated = tx
                        .prepare_cached(
                            "UPDATE instances SET meta = ?3, failure = ?4, parent = ?5, trace = ?6,
                                 history = COALESCE(?7, history), inbox = ?8
                             WHERE hub = ?1 AND instance_id = ?2",
                        )?
                        .execute(values)?;
                    if updated == 0 && whole {
                        tx.prepare_cached(
                            "INSERT INTO instances (hub, instance_id, meta, failure, parent, trace, history, inbox)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )?
                        .execute(values)?;
                    }
                }
                Change::DeleteInstance { hub, instance_id } => {
                    tx.prepare_cached("DELETE FROM instances WHERE hub = ?1 AND instance_id = ?2")?
                        .execute(params![hub, instance_id])?;
                }
                Change::PutActivity { hub, key, request } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO activities (hub, key, request) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![hub, key, request.encode_to_vec()])?;
                }
                Change::DeleteActivity { hub, key } => {
                    tx.prepare_cached("DELETE FROM activities WHERE hub = ?1 AND key = ?2")?
                        .execute(params![hub, key])?;
                }
                Change::PutTimer {
                    hub,
                    due,
                    seq,
                    instance_id,
                    event,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO timers (hub, seq, due_ms, instance_id, event) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![hub, seq as i64, due.timestamp_millis(), instance_id, event.encode_to_vec()])?;
                }
                Change::DeleteTimer { hub, seq } => {
                    tx.prepare_cached("DELETE FROM timers WHERE hub = ?1 AND seq = ?2")?
                        .execute(params![hub, seq as i64])?;
                }
                Change::PutEntity { hub, entity } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO entities (hub, id, state, modified_ms, queue, locked_by)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        hub,
                        entity.id,
                        entity.state,
                        entity.last_modified.timestamp_millis(),
                        encode_events(entity.queue.iter()),
                        entity.locked_by
                    ])?;
                }
                Change::DeleteEntity { hub, id } => {
                    tx.prepare_cached("DELETE FROM entities WHERE hub = ?1 AND id = ?2")?
                        .execute(params![hub, id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn load(&self, hub: &str) -> Result<Loaded, StoreError> {
        let corrupt = |e: prost::DecodeError| StoreError::Corrupt(e.to_string());
        let mut instances = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT meta, failure, parent, trace, history, inbox FROM instances WHERE hub = ?1",
        )?;
        let rows = stmt.query_map(params![hub], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
            ))
        })?;
        for row in rows {
            let (meta, failure, parent, trace, history, inbox) = row?;
            let mut r: InstanceRow =
                serde_json::from_str(&meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            r.failure = decode_opt(failure)?;
            r.parent = decode_opt(parent)?;
            r.trace = decode_opt(trace)?;
            let mut history = pb::HistoryChunk::decode(history.as_slice())
                .map_err(corrupt)?
                .events;
            // A finished instance's history stays on disk (one row's worth is decoded at a time,
            // so a restart with many finished instances needs little memory).
            let history_on_disk = is_terminal(r.status).then(|| {
                let children = children_of(&history);
                history = Vec::new();
                children
            });
            instances.push(Box::new(Instance {
                history_on_disk,
                row: r,
                history,
                inbox: pb::HistoryChunk::decode(inbox.as_slice())
                    .map_err(corrupt)?
                    .events
                    .into(),
                lease: None,
                dispatched: Vec::new(),
                terminate_children: false,
            }));
        }
        let mut activities = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT key, request FROM activities WHERE hub = ?1 ORDER BY rowid")?;
        for row in stmt.query_map(params![hub], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })? {
            let (key, req) = row?;
            activities.push((
                key,
                pb::ActivityRequest::decode(req.as_slice()).map_err(corrupt)?,
            ));
        }
        let mut timers = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT due_ms, seq, instance_id, event FROM timers WHERE hub = ?1 ORDER BY due_ms, seq")?;
        for row in stmt.query_map(params![hub], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })? {
            let (due, seq, id, ev) = row?;
            let due = from_ts(&ts(DateTime::from_timestamp_millis(due).unwrap_or_default()));
            timers.push((
                due,
                seq as u64,
                id,
                pb::HistoryEvent::decode(ev.as_slice()).map_err(corrupt)?,
            ));
        }
        let mut entities = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT id, state, modified_ms, queue, locked_by FROM entities WHERE hub = ?1",
        )?;
        for row in stmt.query_map(params![hub], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })? {
            let (id, state, modified, queue, locked_by) = row?;
            entities.push(EntityRow {
                id,
                state,
                last_modified: DateTime::from_timestamp_millis(modified).unwrap_or_default(),
                queue: pb::HistoryChunk::decode(queue.as_slice())
                    .map_err(corrupt)?
                    .events,
                locked_by,
            });
        }
        Ok(Loaded {
            instances,
            activities,
            timers,
            entities,
        })
    }
}

#[cfg(test)]
impl SqliteStore {
    /// A store in a new temporary directory (to remove afterwards), capped at `max_bytes`
    /// (0: no cap).
    pub fn open_for_test(max_bytes: u64) -> (Self, std::path::PathBuf) {
        Self::open_for_test_with(max_bytes, CHECKPOINT_FRAMES)
    }

    /// As [`Self::open_for_test`], with checkpoints past `checkpoint_frames`.
    pub fn open_for_test_with(
        max_bytes: u64,
        checkpoint_frames: u32,
    ) -> (Self, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "store-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let store = Self::open(
            &dir.join("s.db"),
            &StoreOptions {
                synchronous: crate::settings::Synchronous::Normal,
                max_bytes,
                checkpoint_frames,
                busy_timeout: std::time::Duration::from_secs(1),
            },
        )
        .expect("open");
        (store, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, status: pb::OrchestrationStatus) -> Box<InstanceRow> {
        Box::new(InstanceRow::for_test(id, "n", status as i32, Utc::now()))
    }

    /// An instance write as the engine makes it (hub `h`, empty inbox).
    fn put_instance(row: Box<InstanceRow>, history: Option<Vec<pb::HistoryEvent>>) -> Change {
        Change::PutInstance {
            hub: "h".into(),
            instance: Box::new(crate::model::StoredInstance::encode(
                &row,
                history.as_deref(),
                [].iter(),
            )),
        }
    }

    fn event(id: i32) -> pb::HistoryEvent {
        pb::HistoryEvent {
            event_id: id,
            ..Default::default()
        }
    }

    #[test]
    fn events_are_encoded_as_a_history_chunk() {
        let events = vec![event(1), event(2), event(3)];
        let chunk = pb::HistoryChunk {
            events: events.clone(),
        };
        assert_eq!(encode_events(events.iter()), chunk.encode_to_vec());
        assert_eq!(
            pb::HistoryChunk::decode(encode_events(events.iter()).as_slice())
                .expect("decode")
                .events,
            events
        );
        assert!(encode_events([].iter()).is_empty());
    }

    #[test]
    fn a_batch_that_inserts_an_instance_then_writes_it_without_its_history_keeps_both() {
        use pb::OrchestrationStatus as S;
        let (mut store, dir) = SqliteStore::open_for_test(0);
        // What group commit puts in one transaction: a start, then that instance finishing with
        // its history moved to disk (a later write of everything but the history), and another
        // instance written twice in full.
        store
            .apply(vec![
                put_instance(row("a", S::Running), Some(vec![event(1), event(2)])),
                put_instance(row("b", S::Running), Some(vec![event(1)])),
                put_instance(row("a", S::Completed), None),
                put_instance(
                    row("b", S::Completed),
                    Some(vec![event(1), event(2), event(3)]),
                ),
            ])
            .expect("apply");
        let a = store
            .history("h", "a")
            .expect("read")
            .expect("a was inserted");
        assert_eq!(a.len(), 2, "the history of the first write");
        let b = store.history("h", "b").expect("read").expect("b");
        assert_eq!(b.len(), 3, "the last whole write wins");
        let loaded = store.load("h").expect("load");
        let status = |id: &str| {
            loaded
                .instances
                .iter()
                .find(|i| i.row.instance_id == id)
                .map(|i| i.row.status)
        };
        assert_eq!(status("a"), Some(S::Completed as i32), "the last row wins");
        assert_eq!(status("b"), Some(S::Completed as i32));

        // A deletion later in the batch removes what came before it.
        store
            .apply(vec![
                put_instance(row("a", S::Completed), None),
                Change::DeleteInstance {
                    hub: "h".into(),
                    instance_id: "a".into(),
                },
            ])
            .expect("apply");
        assert!(store.history("h", "a").expect("read").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
