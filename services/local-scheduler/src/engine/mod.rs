//! The scheduler's state machine: instances, their histories and inboxes, the activity queue,
//! timers and leases. All of it sits behind one mutex; every public method is one atomic state
//! change, and the same change is handed to the store as one transaction.
//!
//! Semantics follow the DTS protocol as its SDKs speak it: history `eventId`s equal action ids, results refer back by `taskScheduledId`/`timerId`, `OrchestratorStarted`
//! opens every episode, completions are keyed by an opaque per-dispatch token.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use pb::history_event::EventType;

mod client;
mod dispatch;
mod entities;
mod episode;
mod fair;
mod filter;
mod history;
mod instances;
mod latency;
mod limits;
mod lost;
mod query;
mod stats;
mod timers;
mod validate;

/// Starts instance `id` of orchestration `o` in hub `h`: what the engine's unit tests begin with.
#[cfg(test)]
pub(crate) fn start_for_test(e: &mut Engine, id: &str) {
    e.start_instance(
        "h",
        pb::CreateInstanceRequest {
            instance_id: id.into(),
            name: "o".into(),
            ..Default::default()
        },
    )
    .expect("start");
}

pub use entities::{entity_name, is_entity_id};
use fair::{FairQueue, Verdict};
pub use fair::{OWNER_TAG, owner_of};
pub use filter::StreamFilter;
use instances::Instances;
use latency::exemplar;
pub use latency::{DispatchLatency, LatencyHistogram, TraceLabels, execution_started};
pub use limits::{Limits, Retention};
pub use lost::{Poisoned, Released};
pub use stats::{KindStats, QueueStats};
use validate::MAX_EVENTS_PER_EPISODE;
pub use validate::{
    MAX_CHUNKED_COMPLETION_BYTES, MAX_EXECUTION_ID_BYTES, MAX_PAYLOAD_BYTES, MAX_VERSION_BYTES,
    validate_actions, validate_failure, validate_instance_id, validate_len, validate_name,
    validate_payload, validate_reuse_policy, validate_tags, validate_trace,
};

use crate::model::{
    ActivityItem, Change, Instance, InstanceRow, StoredInstance, children_of, event, is_terminal,
    status_i32, ts,
};

/// Why the engine refused an operation. The gRPC service maps each kind to its status code;
/// the engine itself knows nothing of gRPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed or breaks a limit (payload size, instance id, chunk order).
    #[error("{0}")]
    InvalidArgument(String),
    /// No such task hub, instance or work item (a stale completion token included).
    #[error("{0}")]
    NotFound(String),
    /// The instance id is taken by a live instance.
    #[error("{0}")]
    AlreadyExists(String),
    /// The instance is in a state that does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit of the scheduler itself is reached; try again later.
    #[error("{0}")]
    ResourceExhausted(String),
}

impl EngineError {
    pub fn invalid_argument(m: impl Into<String>) -> Self {
        Self::InvalidArgument(m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }
    pub fn already_exists(m: impl Into<String>) -> Self {
        Self::AlreadyExists(m.into())
    }
    pub fn failed_precondition(m: impl Into<String>) -> Self {
        Self::FailedPrecondition(m.into())
    }
    pub fn resource_exhausted(m: impl Into<String>) -> Self {
        Self::ResourceExhausted(m.into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LeaseKind {
    Orchestration { instance_id: String },
    Activity { key: String },
    Entity { id: String },
}

#[derive(Debug, Clone)]
struct Lease {
    hub: String,
    kind: LeaseKind,
    /// The stream it was dispatched on; the lease ends with it.
    stream: u64,
    /// Chunks of a chunked orchestrator completion (`isPartial`) received so far; applied
    /// together with the final chunk, dropped with the lease.
    partial: Option<PartialCompletion>,
}

#[derive(Debug, Clone)]
struct PartialCompletion {
    next_chunk: i32,
    actions: Vec<pb::OrchestratorAction>,
    custom_status: Option<String>,
    trace: Option<pb::OrchestrationTraceContext>,
}

/// Adds an instance to the ready set; `true` when it was not there (then queue it).
/// The maps on the hot path of every start and dispatch, keyed by instance id: foldhash with a
/// per-process random seed, several times cheaper than SipHash per lookup (SipHash was 1.6% of
/// the scheduler's CPU in a starts-only profile), with the seed still keeping the bucket of an
/// id unknown to whoever chooses ids.
type IdMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

fn mark_ready(set: &mut IdMap<std::time::Instant>, id: String) -> bool {
    match set.entry(id) {
        std::collections::hash_map::Entry::Occupied(_) => false,
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(std::time::Instant::now());
            true
        }
    }
}

#[derive(Default)]
pub struct Hub {
    /// By id, and by (created, id): the order of queries, so a page starts where the last one
    /// ended (keyset) instead of sorting everything again.
    pub instances: Instances,
    /// Runnable instances, served round-robin across owners.
    ready: FairQueue,
    /// Instances in `ready`, with when they became runnable (for the dispatch latency).
    ready_set: IdMap<std::time::Instant>,
    /// Pending activities by key `instance|execution|taskId`, and their dispatch order
    /// (round-robin across owners).
    pub activities: HashMap<String, ActivityItem>,
    activity_order: FairQueue,
    /// Messages that become visible later (timers, scheduled starts, delayed entity signals),
    /// by due time.
    pub timers: BTreeMap<(DateTime<Utc>, u64), (String, pb::HistoryEvent)>,
    /// Durable entities by id (`@name@key`), in id order for queries.
    pub entities: BTreeMap<String, crate::model::Entity>,
    /// Entities with operations waiting and no worker holding them, in the order they became so.
    entity_ready: VecDeque<String>,
    entity_ready_set: HashSet<String>,
    /// The entities each orchestration holds locked (from the entities' `locked_by`).
    locks: HashMap<String, std::collections::BTreeSet<String>>,
    /// The entities' share of the state estimate, and their operations not yet applied (part of
    /// the backlog `max_backlog` bounds), kept as entities change.
    entity_bytes: usize,
    entity_operations: usize,
}

/// The whole scheduler state.
pub struct Engine {
    pub hubs: HashMap<String, Hub>,
    leases: HashMap<String, Lease>,
    seq: u64,
    /// Changes made since the last `take_changes`, for the store.
    changes: Vec<Change>,
    /// Whether instance snapshots are recorded (off for the in-memory store: nothing reads them).
    record_instances: bool,
    /// Leased (orchestration, activity) work items per stream.
    stream_counts: HashMap<u64, (usize, usize)>,
    /// Leased entity work items per stream.
    entity_counts: HashMap<u64, usize>,
    /// Streams that handed an entity work item back: they are offered no more.
    no_entity_streams: HashSet<u64>,
    /// Instances that ended holding entity locks, to release at the end of the operation.
    ended_lock_holders: Vec<(String, String)>,
    pub dispatch_latency: DispatchLatency,
    limits: Limits,
    /// Instances whose state changed since the last `take_touched`: their long polls are woken.
    touched: Vec<(String, String)>,
    /// The estimate of [`Engine::state_bytes`]: recounted by `recount_state`, and grown by each
    /// start in between.
    state_bytes: usize,
}

/// An instance's history as the engine has it.
#[derive(Debug)]
pub enum HistoryView {
    Loaded(Vec<pb::HistoryEvent>),
    /// Only in the store (a finished instance): the server reads it there.
    OnDisk,
}

pub fn activity_key(instance_id: &str, execution_id: &str, task_id: i32) -> String {
    format!("{instance_id}|{execution_id}|{task_id}")
}

impl Engine {
    pub fn new(hub_names: &[String]) -> Self {
        Self {
            hubs: hub_names
                .iter()
                .map(|h| (h.clone(), Hub::default()))
                .collect(),
            leases: HashMap::new(),
            seq: 0,
            changes: Vec::new(),
            record_instances: true,
            stream_counts: HashMap::new(),
            entity_counts: HashMap::new(),
            no_entity_streams: HashSet::new(),
            ended_lock_holders: Vec::new(),
            dispatch_latency: DispatchLatency::default(),
            limits: Limits::default(),
            touched: Vec::new(),
            state_bytes: 0,
        }
    }

    /// Stops recording instance snapshots (in-memory mode).
    pub fn without_persistence(mut self) -> Self {
        self.record_instances = false;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Purges the finished instances whose retention has passed; returns how many.
    pub fn purge_expired(&mut self, now: DateTime<Utc>) -> usize {
        if !self.limits.retention.any() {
            return 0;
        }
        let mut expired = Vec::new();
        for (hub, h) in &self.hubs {
            for i in h.instances.values() {
                if !is_terminal(i.row.status) {
                    continue;
                }
                let ended = i.row.completed.unwrap_or(i.row.last_updated);
                if self
                    .limits
                    .retention
                    .of(i.row.status)
                    .is_some_and(|keep| now - ended >= keep)
                {
                    expired.push((hub.clone(), i.row.instance_id.clone()));
                }
            }
        }
        for (hub, id) in &expired {
            self.drop_instance(hub, id);
        }
        expired.len()
    }

    /// The changes of the operation just done, for the store. Entity locks held by instances
    /// that ended in it are released first (their changes included).
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.release_locks_of_ended();
        std::mem::take(&mut self.changes)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn hub(&mut self, name: &str) -> Result<&mut Hub, EngineError> {
        self.hubs
            .get_mut(name)
            .ok_or_else(|| EngineError::not_found(format!("Task hub not found: {name}")))
    }

    /// The instances changed since the last call (each (hub, id) as often as it changed).
    pub fn take_touched(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.touched)
    }

    /// The earliest timer or scheduled start, across hubs.
    pub fn next_timer_due(&self) -> Option<DateTime<Utc>> {
        self.hubs
            .values()
            .filter_map(|h| h.timers.keys().next().map(|(due, _)| *due))
            .min()
    }

    fn persist(&mut self, hub: &str, id: &str) {
        self.touched.push((hub.to_string(), id.to_string()));
        if let Some(h) = self.hubs.get(hub)
            && h.locks.contains_key(id)
            && h.instances
                .get(id)
                .is_none_or(|i| is_terminal(i.row.status))
        {
            self.ended_lock_holders
                .push((hub.to_string(), id.to_string()));
        }
        if !self.record_instances {
            return;
        }
        match self.hubs.get_mut(hub).and_then(|h| h.instances.get_mut(id)) {
            Some(i) => {
                // A finished instance keeps its history on disk only (it is written now):
                // memory then holds its row, and the server reads the history back for the
                // rare request that needs it (StreamInstanceHistory, rewind).
                let instance = StoredInstance::encode(
                    &i.row,
                    i.history_on_disk.is_none().then_some(i.history.as_slice()),
                    // Messages out with a worker come first: they are older than the inbox.
                    undispatched(&i.dispatched).iter().chain(i.inbox.iter()),
                );
                if is_terminal(i.row.status) && i.history_on_disk.is_none() {
                    i.history_on_disk = Some(children_of(&i.history));
                    i.history = Vec::new();
                }
                self.changes.push(Change::PutInstance {
                    hub: hub.to_string(),
                    instance: Box::new(instance),
                });
                // An emptied queue keeps its buffer (events are 512 bytes: an inbox that once
                // held four holds 2 KiB); a finished instance keeps it for as long as it is kept.
                if is_terminal(i.row.status) {
                    i.inbox.shrink_to_fit();
                    i.dispatched.shrink_to_fit();
                }
            }
            None => self.changes.push(Change::DeleteInstance {
                hub: hub.to_string(),
                instance_id: id.to_string(),
            }),
        }
    }

    // ------------------------------------------------------------ messages

    /// Delivers a message to an instance now, or at `visible_at`.
    fn deliver(
        &mut self,
        hub: &str,
        instance_id: &str,
        msg: pb::HistoryEvent,
        visible_at: Option<DateTime<Utc>>,
    ) {
        let seq = self.next_seq();
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        if let Some(at) = visible_at.filter(|t| *t > Utc::now()) {
            self.changes.push(Change::PutTimer {
                hub: hub.to_string(),
                due: at,
                seq,
                instance_id: instance_id.to_string(),
                event: msg.clone(),
            });
            h.timers.insert((at, seq), (instance_id.to_string(), msg));
            return;
        }
        if is_entity_id(instance_id) {
            self.deliver_to_entity(hub, instance_id, msg);
            return;
        }
        let Some(inst) = h.instances.get_mut(instance_id) else {
            return;
        };
        if is_terminal(inst.row.status) {
            return; // completed instances take no more messages
        }
        inst.inbox.push_back(msg);
        if inst.lease.is_none() && mark_ready(&mut h.ready_set, instance_id.to_string()) {
            h.ready
                .push_back(owner_of(&inst.row.tags), instance_id.to_string());
        }
        self.persist(hub, instance_id);
    }

    fn create_instance(&mut self, hub: &str, spec: CreateSpec) {
        let now = Utc::now();
        let execution_id = uuid::Uuid::new_v4().simple().to_string();
        let started = event(
            -1,
            EventType::ExecutionStarted(pb::ExecutionStartedEvent {
                name: spec.name.clone(),
                version: spec.version.clone(),
                input: spec.input.clone(),
                orchestration_instance: Some(pb::OrchestrationInstance {
                    instance_id: spec.instance_id.clone(),
                    execution_id: Some(execution_id.clone()),
                }),
                parent_instance: spec.parent.clone(),
                scheduled_start_timestamp: spec.scheduled_start.map(ts),
                parent_trace_context: spec.parent_trace.clone(),
                orchestration_span_id: None,
                tags: spec.tags.clone(),
            }),
        );
        let row = InstanceRow {
            instance_id: spec.instance_id.clone(),
            execution_id,
            name: spec.name,
            version: spec.version,
            status: status_i32(pb::OrchestrationStatus::Pending),
            created: now,
            last_updated: now,
            completed: None,
            scheduled_start: spec.scheduled_start,
            input: spec.input,
            output: None,
            custom_status: None,
            failure: None,
            tags: spec.tags,
            parent: spec.parent.map(Box::new),
            trace: None,
            lost_dispatches: 0,
        };
        if let Some(h) = self.hubs.get_mut(hub) {
            h.instances.insert(Box::new(Instance {
                history_on_disk: None,
                row,
                history: Vec::new(),
                inbox: VecDeque::new(),
                lease: None,
                dispatched: Vec::new(),
                terminate_children: false,
            }));
        }
        self.persist(hub, &spec.instance_id);
        self.deliver(hub, &spec.instance_id, started, spec.scheduled_start);
    }

    /// Removes an instance and anything queued for it.
    fn drop_instance(&mut self, hub: &str, instance_id: &str) {
        self.drop_pending_messages(hub, instance_id);
        let mut stale_leases = Vec::new();
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        if let Some(inst) = h.instances.remove(instance_id) {
            stale_leases.extend(inst.lease);
        }
        if h.locks.contains_key(instance_id) {
            self.ended_lock_holders
                .push((hub.to_string(), instance_id.to_string()));
        }
        h.ready_set.remove(instance_id);
        let prefix = format!("{instance_id}|");
        let keys: Vec<String> = h
            .activities
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in &keys {
            if let Some(a) = h.activities.remove(k) {
                stale_leases.extend(a.lease);
            }
        }
        for t in stale_leases {
            self.remove_lease(&t);
        }
        for key in keys {
            self.changes.push(Change::DeleteActivity {
                hub: hub.to_string(),
                key,
            });
        }
        self.changes.push(Change::DeleteInstance {
            hub: hub.to_string(),
            instance_id: instance_id.to_string(),
        });
        self.touched
            .push((hub.to_string(), instance_id.to_string()));
    }

    /// Rebuilds state from what the store loaded (after a restart every lease is gone, so
    /// everything that was in flight is simply runnable again).
    pub fn restore(
        &mut self,
        hub: &str,
        instances: Vec<Box<Instance>>,
        activities: Vec<(String, pb::ActivityRequest)>,
        timers: Vec<(DateTime<Utc>, u64, String, pb::HistoryEvent)>,
    ) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        for inst in instances {
            let id = inst.row.instance_id.clone();
            if !inst.inbox.is_empty()
                && !is_terminal(inst.row.status)
                && mark_ready(&mut h.ready_set, id.clone())
            {
                h.ready.push_back(owner_of(&inst.row.tags), id.clone());
            }
            h.instances.insert(inst);
        }
        for (key, request) in activities {
            let instance_id = key.split('|').next().unwrap_or_default();
            let owner: std::sync::Arc<str> = h
                .instances
                .get(instance_id)
                .map_or("", |i| owner_of(&i.row.tags))
                .into();
            h.activity_order.push_back(&owner, key.clone());
            h.activities.insert(
                key,
                ActivityItem {
                    request,
                    lease: None,
                    queued: std::time::Instant::now(),
                    owner,
                },
            );
        }
        for (due, seq, id, ev) in timers {
            self.seq = self.seq.max(seq);
            h.timers.insert((due, seq), (id, ev));
        }
    }
}

/// The messages of a dispatch without the `OrchestratorStarted` the dispatcher put in front (an
/// episode that is only an `OrchestratorStarted`, as after a rewind, keeps it).
fn undispatched(dispatched: &[pb::HistoryEvent]) -> &[pb::HistoryEvent] {
    match dispatched {
        [first, rest @ ..] if !rest.is_empty() && is_orchestrator_started(first) => rest,
        all => all,
    }
}

fn is_orchestrator_started(e: &pb::HistoryEvent) -> bool {
    matches!(e.event_type, Some(EventType::OrchestratorStarted(_)))
}

#[derive(Debug)]
pub struct CreateSpec {
    pub instance_id: String,
    pub name: String,
    pub version: Option<String>,
    pub input: Option<String>,
    pub tags: HashMap<String, String>,
    pub parent: Option<pb::ParentInstanceInfo>,
    pub parent_trace: Option<pb::TraceContext>,
    pub scheduled_start: Option<DateTime<Utc>>,
}
