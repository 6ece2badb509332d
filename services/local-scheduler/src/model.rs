//! What the scheduler keeps: the instance (metadata row, history, inbox, lease), queued
//! activities, and the changes the engine hands to the store. Shared by the engine and the
//! store, which otherwise know nothing of each other.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use pb::history_event::EventType;

pub fn now_ts() -> pb::Timestamp {
    ts(Utc::now())
}

pub fn ts(t: DateTime<Utc>) -> pb::Timestamp {
    pb::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_ts(t: &pb::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

pub fn event(id: i32, e: EventType) -> pb::HistoryEvent {
    pb::HistoryEvent {
        event_id: id,
        timestamp: Some(now_ts()),
        event_type: Some(e),
    }
}

pub fn status_i32(s: pb::OrchestrationStatus) -> i32 {
    s as i32
}

pub fn is_terminal(status: i32) -> bool {
    use pb::OrchestrationStatus as S;
    [S::Completed, S::Failed, S::Terminated, S::Canceled]
        .iter()
        .any(|s| *s as i32 == status)
}

/// Instance metadata (everything but history and inbox). The fields most instances leave empty
/// are boxed: every finished instance stays in memory (until purged), so its size counts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InstanceRow {
    pub instance_id: String,
    pub execution_id: String,
    pub name: String,
    pub version: Option<String>,
    pub status: i32,
    pub created: DateTime<Utc>,
    pub last_updated: DateTime<Utc>,
    pub completed: Option<DateTime<Utc>>,
    pub scheduled_start: Option<DateTime<Utc>>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub custom_status: Option<String>,
    #[serde(skip)]
    pub failure: Option<Box<pb::TaskFailureDetails>>,
    pub tags: HashMap<String, String>,
    #[serde(skip)]
    pub parent: Option<Box<pb::ParentInstanceInfo>>,
    #[serde(skip)]
    pub trace: Option<Box<pb::OrchestrationTraceContext>>,
    /// Dispatches of the current episode whose worker was lost before it answered (its stream
    /// ended); back to 0 when an episode completes. Past the limit the instance fails (poison).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_dispatches: u32,
}

#[cfg(test)]
impl InstanceRow {
    /// A row for tests: `id` of orchestration `name`, created at `created`, status `status`,
    /// every optional field empty.
    pub fn for_test(id: &str, name: &str, status: i32, created: DateTime<Utc>) -> Self {
        Self {
            instance_id: id.into(),
            execution_id: "e".into(),
            name: name.into(),
            version: None,
            status,
            created,
            last_updated: created,
            completed: None,
            scheduled_start: None,
            input: None,
            output: None,
            custom_status: None,
            failure: None,
            tags: HashMap::new(),
            parent: None,
            trace: None,
            lost_dispatches: 0,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An instance as the store writes it, encoded from the engine's state under its lock: no
/// copy of the row or the events is made for the writer (copies were 7% of the scheduler's
/// request threads on SQLite, and dropping them 4% of the writer's time).
#[derive(Debug, Clone)]
pub struct StoredInstance {
    pub instance_id: String,
    /// The row as JSON (without what follows).
    pub meta: String,
    pub failure: Option<Vec<u8>>,
    pub parent: Option<Vec<u8>>,
    pub trace: Option<Vec<u8>>,
    /// The history as a `HistoryChunk`; `None`: the stored history stays as it is (the
    /// instance's history is on disk only).
    pub history: Option<Vec<u8>>,
    /// The inbox as a `HistoryChunk`.
    pub inbox: Vec<u8>,
}

impl StoredInstance {
    pub fn encode<'a>(
        row: &InstanceRow,
        history: Option<&[pb::HistoryEvent]>,
        inbox: impl Iterator<Item = &'a pb::HistoryEvent> + Clone,
    ) -> Self {
        use prost::Message;
        Self {
            instance_id: row.instance_id.clone(),
            // Strings, numbers, dates and a string map: nothing here can fail to serialize.
            meta: serde_json::to_string(row)
                .unwrap_or_else(|e| unreachable!("an instance row always serializes: {e}")),
            failure: row.failure.as_ref().map(|m| m.encode_to_vec()),
            parent: row.parent.as_ref().map(|m| m.encode_to_vec()),
            trace: row.trace.as_ref().map(|m| m.encode_to_vec()),
            history: history.map(|h| encode_events(h.iter())),
            inbox: encode_events(inbox),
        }
    }
}

/// The events as a `HistoryChunk` (field 1, repeated), encoded from the borrowed events.
pub fn encode_events<'a>(events: impl Iterator<Item = &'a pb::HistoryEvent> + Clone) -> Vec<u8> {
    use prost::encoding::message;
    let len = events.clone().map(|e| message::encoded_len(1, e)).sum();
    let mut buf = Vec::with_capacity(len);
    for e in events {
        message::encode(1, e, &mut buf);
    }
    buf
}

/// One unit of state to write.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // short-lived, one list per operation
pub enum Change {
    PutInstance {
        hub: String,
        instance: Box<StoredInstance>,
    },
    DeleteInstance {
        hub: String,
        instance_id: String,
    },
    PutActivity {
        hub: String,
        key: String,
        request: pb::ActivityRequest,
    },
    DeleteActivity {
        hub: String,
        key: String,
    },
    PutTimer {
        hub: String,
        due: DateTime<Utc>,
        seq: u64,
        instance_id: String,
        event: pb::HistoryEvent,
    },
    DeleteTimer {
        hub: String,
        seq: u64,
    },
    /// An entity as it is now: its state and every operation not yet applied (those out with a
    /// worker first), so that a restart finds them queued again.
    PutEntity {
        hub: String,
        entity: EntityRow,
    },
    DeleteEntity {
        hub: String,
        id: String,
    },
}

/// What the store keeps of a durable entity.
#[derive(Debug, Clone)]
pub struct EntityRow {
    /// `@name@key`, the name in lower case.
    pub id: String,
    pub state: Option<String>,
    pub last_modified: DateTime<Utc>,
    /// Operations not yet applied (`EntityOperationSignaled` / `EntityOperationCalled` events).
    pub queue: Vec<pb::HistoryEvent>,
    /// The orchestration holding the entity's lock (a critical section), if any.
    pub locked_by: Option<String>,
}

/// A durable entity: its state, the operations waiting for it, and the batch a worker holds.
#[derive(Debug, Clone)]
pub struct Entity {
    pub id: String,
    pub state: Option<String>,
    pub last_modified: DateTime<Utc>,
    pub queue: VecDeque<pb::HistoryEvent>,
    /// Token of the dispatch holding the entity, with the operations it was given.
    pub lease: Option<String>,
    pub dispatched: Vec<pb::HistoryEvent>,
    pub locked_by: Option<String>,
    /// Its share of the state estimate and of the backlog as last counted (see
    /// `Engine::account_entity`).
    pub counted: (usize, usize),
}

impl Entity {
    pub fn new(id: String) -> Self {
        Self {
            id,
            state: None,
            last_modified: Utc::now(),
            queue: VecDeque::new(),
            lease: None,
            dispatched: Vec::new(),
            locked_by: None,
            counted: (0, 0),
        }
    }

    pub fn from_row(row: EntityRow) -> Self {
        Self {
            id: row.id,
            state: row.state,
            last_modified: row.last_modified,
            queue: row.queue.into(),
            lease: None,
            dispatched: Vec::new(),
            locked_by: row.locked_by,
            counted: (0, 0),
        }
    }

    pub fn row(&self) -> EntityRow {
        EntityRow {
            id: self.id.clone(),
            state: self.state.clone(),
            last_modified: self.last_modified,
            queue: self
                .dispatched
                .iter()
                .chain(self.queue.iter())
                .cloned()
                .collect(),
            locked_by: self.locked_by.clone(),
        }
    }

    /// Nothing to keep: no state, nothing waiting or running, no lock.
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.queue.is_empty()
            && self.lease.is_none()
            && self.locked_by.is_none()
    }

    pub fn metadata(&self, include_state: bool) -> pb::EntityMetadata {
        pb::EntityMetadata {
            instance_id: self.id.clone(),
            last_modified_time: Some(ts(self.last_modified)),
            backlog_queue_size: i32::try_from(self.queue.len()).unwrap_or(i32::MAX),
            locked_by: self.locked_by.clone(),
            serialized_state: if include_state {
                self.state.clone()
            } else {
                None
            },
        }
    }
}

/// One orchestration instance (the current execution).
#[derive(Debug, Clone)]
pub struct Instance {
    pub row: InstanceRow,
    pub history: Vec<pb::HistoryEvent>,
    /// Visible messages not yet dispatched.
    pub inbox: VecDeque<pb::HistoryEvent>,
    /// Token of the dispatch holding the instance, with the events it was given.
    pub lease: Option<String>,
    pub dispatched: Vec<pb::HistoryEvent>,
    /// Set by a recursive terminate: children are terminated when this one ends.
    pub terminate_children: bool,
    /// `Some` when the history is only in the store (a finished instance, with a store): then
    /// `history` is empty, and this holds the sub-orchestrations the history names, which is all
    /// a finished instance needs of it until it is read back (history requests, rewind).
    pub history_on_disk: Option<Vec<String>>,
}

/// Instance ids of the sub-orchestrations a history created.
pub fn children_of(history: &[pb::HistoryEvent]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(EventType::SubOrchestrationInstanceCreated(c)) => Some(c.instance_id.clone()),
            _ => None,
        })
        .collect()
}

impl Instance {
    pub fn state(&self, with_payloads: bool) -> pb::OrchestrationState {
        let r = &self.row;
        pb::OrchestrationState {
            instance_id: r.instance_id.clone(),
            name: r.name.clone(),
            version: r.version.clone(),
            orchestration_status: r.status,
            scheduled_start_timestamp: r.scheduled_start.map(ts),
            created_timestamp: Some(ts(r.created)),
            last_updated_timestamp: Some(ts(r.last_updated)),
            input: if with_payloads { r.input.clone() } else { None },
            output: if with_payloads {
                r.output.clone()
            } else {
                None
            },
            custom_status: if with_payloads {
                r.custom_status.clone()
            } else {
                None
            },
            failure_details: r.failure.as_deref().cloned(),
            execution_id: Some(r.execution_id.clone()),
            completed_timestamp: r.completed.map(ts),
            parent_instance_id: r
                .parent
                .as_ref()
                .and_then(|p| p.orchestration_instance.as_ref())
                .map(|i| i.instance_id.clone()),
            tags: r.tags.clone(),
        }
    }

    /// Instance ids of sub-orchestrations this execution created.
    pub fn children(&self) -> Vec<String> {
        match &self.history_on_disk {
            Some(children) => children.clone(),
            None => children_of(&self.history),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ActivityItem {
    /// As scheduled, with `dispatch_count` holding the dispatches whose worker was lost before
    /// it answered (so the store keeps the count); a dispatch sends it with one more.
    pub request: pb::ActivityRequest,
    pub lease: Option<String>,
    /// When it was queued (again), for the dispatch latency.
    pub queued: std::time::Instant,
    /// The owner of its orchestration (fair dispatch).
    pub owner: std::sync::Arc<str>,
}
