//! The scheduler's state machine: instances, their histories and inboxes, the activity queue,
//! timers and leases. All of it sits behind one mutex; every public method is one atomic state
//! change, and the same change is handed to the store as one transaction.
//!
//! Semantics follow the DTS protocol notes (`durabletask-protocol.md` §4): history `eventId`s
//! equal action ids, results refer back by `taskScheduledId`/`timerId`, `OrchestratorStarted`
//! opens every episode, completions are keyed by an opaque per-dispatch token.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use pb::history_event::EventType;
use pb::orchestrator_action::OrchestratorActionType as Action;
use tonic::Status;

use crate::store::{Change, InstanceRow};

/// Payload limit per input, output or event, as DTS.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Messages taken into one orchestration episode.
const MAX_EVENTS_PER_EPISODE: usize = 1000;

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

fn event(id: i32, e: EventType) -> pb::HistoryEvent {
    pb::HistoryEvent {
        event_id: id,
        timestamp: Some(now_ts()),
        event_type: Some(e),
    }
}

fn status_i32(s: pb::OrchestrationStatus) -> i32 {
    s as i32
}

pub fn is_terminal(status: i32) -> bool {
    use pb::OrchestrationStatus as S;
    [S::Completed, S::Failed, S::Terminated, S::Canceled]
        .iter()
        .any(|s| *s as i32 == status)
}

/// Validates an instance id as DTS does: 1-100 printable ASCII, not starting with `@`.
pub fn validate_instance_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 100 {
        return Err(Status::invalid_argument(format!(
            "instance id must be 1 to 100 characters long (got {})",
            id.len()
        )));
    }
    if !id.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(Status::invalid_argument(
            "instance id must be printable ASCII",
        ));
    }
    if id.starts_with('@') {
        return Err(Status::invalid_argument(
            "instance ids starting with '@' are reserved for entities",
        ));
    }
    Ok(())
}

/// Upper bound on the actions of one chunked completion held in memory until its last chunk.
pub const MAX_CHUNKED_COMPLETION_BYTES: usize = 64 * 1024 * 1024;

/// Checks the payloads and ids an orchestrator sends back, with a message naming what is wrong.
pub fn validate_actions(actions: &[pb::OrchestratorAction]) -> Result<(), Status> {
    for a in actions {
        match &a.orchestrator_action_type {
            Some(Action::ScheduleTask(t)) => validate_payload("activity input", t.input.as_ref())?,
            Some(Action::CreateSubOrchestration(c)) => {
                // Empty: the scheduler derives the child's id from the parent's.
                if !c.instance_id.is_empty() {
                    validate_instance_id(&c.instance_id)?;
                }
                validate_payload("sub-orchestration input", c.input.as_ref())?;
            }
            Some(Action::SendEvent(e)) => validate_payload("event data", e.data.as_ref())?,
            Some(Action::CompleteOrchestration(c)) => {
                validate_payload("orchestration output", c.result.as_ref())?
            }
            _ => {}
        }
    }
    Ok(())
}

pub fn validate_payload(what: &str, p: Option<&String>) -> Result<(), Status> {
    match p {
        Some(v) if v.len() > MAX_PAYLOAD_BYTES => Err(Status::invalid_argument(format!(
            "{what} is {} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes (1 MB)",
            v.len()
        ))),
        _ => Ok(()),
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
    /// A stream that let this work item's lease expire, and until when it is skipped for it.
    pub avoid: Option<(u64, DateTime<Utc>)>,
}

impl Instance {
    fn state(&self, with_payloads: bool) -> pb::OrchestrationState {
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
            failure_details: r.failure.clone(),
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
    fn children(&self) -> Vec<String> {
        self.history
            .iter()
            .filter_map(|e| match &e.event_type {
                Some(EventType::SubOrchestrationInstanceCreated(c)) => Some(c.instance_id.clone()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct ActivityItem {
    pub request: pb::ActivityRequest,
    pub lease: Option<String>,
    pub avoid: Option<(u64, DateTime<Utc>)>,
    /// When it was queued (again), for the dispatch latency.
    pub queued: std::time::Instant,
}

/// Exemplar labels: the trace of the operation a work item belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TraceLabels {
    trace_id: String,
}

/// A latency histogram whose observations carry the operation's trace id as exemplar.
pub type LatencyHistogram =
    prometheus_client::metrics::exemplar::HistogramWithExemplars<TraceLabels>;

/// Time from a work item becoming runnable to its dispatch, by kind.
#[derive(Debug, Clone)]
pub struct DispatchLatency {
    pub orchestration: LatencyHistogram,
    pub activity: LatencyHistogram,
}

impl DispatchLatency {
    pub fn buckets() -> LatencyHistogram {
        // 50 µs to about 1.6 s.
        LatencyHistogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.00005, 2.0, 16,
        ))
    }
}

impl Default for DispatchLatency {
    fn default() -> Self {
        Self {
            orchestration: Self::buckets(),
            activity: Self::buckets(),
        }
    }
}

/// The `ExecutionStarted` event of a dispatched orchestration (in its history, or new).
pub fn execution_started(req: &pb::OrchestratorRequest) -> Option<&pb::ExecutionStartedEvent> {
    req.past_events
        .iter()
        .chain(&req.new_events)
        .find_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(s)) => Some(s),
            _ => None,
        })
}

/// The exemplar for a work item whose trace context is `tc`.
fn exemplar(tc: Option<&pb::TraceContext>) -> Option<TraceLabels> {
    service_kit::telemetry::TraceParent::parse(&tc?.trace_parent).map(|tp| TraceLabels {
        trace_id: tp.trace_id.to_string(),
    })
}

/// Whether `stream` should leave this item to others for now (it let the lease expire).
fn avoided(avoid: Option<(u64, DateTime<Utc>)>, stream: u64) -> bool {
    avoid.is_some_and(|(s, until)| s == stream && until > Utc::now())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LeaseKind {
    Orchestration { instance_id: String },
    Activity { key: String },
}

#[derive(Debug, Clone)]
struct Lease {
    hub: String,
    kind: LeaseKind,
    stream: u64,
    expires: DateTime<Utc>,
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

/// What a work-item stream asks for. `None`: everything. `Some(map)`: only those names (an
/// empty map means nothing of that kind), each with its accepted versions (empty: any version).
#[derive(Debug, Clone, Default)]
pub struct StreamFilter {
    pub orchestrations: Option<HashMap<String, HashSet<String>>>,
    pub activities: Option<HashMap<String, HashSet<String>>>,
}

fn filter_map<'a>(
    items: impl Iterator<Item = (&'a String, &'a Vec<String>)>,
) -> HashMap<String, HashSet<String>> {
    let mut m: HashMap<String, HashSet<String>> = HashMap::new();
    for (name, versions) in items {
        m.entry(name.clone())
            .or_default()
            .extend(versions.iter().cloned());
    }
    m
}

fn accepts(
    filter: &Option<HashMap<String, HashSet<String>>>,
    name: &str,
    version: Option<&str>,
) -> bool {
    match filter {
        None => true,
        Some(m) => m.get(name).is_some_and(|versions| {
            versions.is_empty() || versions.contains(version.unwrap_or(""))
        }),
    }
}

impl StreamFilter {
    pub fn from_request(f: Option<&pb::WorkItemFilters>) -> Self {
        let Some(f) = f else { return Self::default() };
        Self {
            orchestrations: Some(filter_map(
                f.orchestrations.iter().map(|o| (&o.name, &o.versions)),
            )),
            activities: Some(filter_map(
                f.activities.iter().map(|a| (&a.name, &a.versions)),
            )),
        }
    }

    fn accepts_orchestration(&self, name: &str, version: Option<&str>) -> bool {
        accepts(&self.orchestrations, name, version)
    }

    fn accepts_activity(&self, name: &str, version: Option<&str>) -> bool {
        accepts(&self.activities, name, version)
    }
}

/// Adds an instance to the ready set; `true` when it was not there (then queue it).
fn mark_ready(set: &mut HashMap<String, std::time::Instant>, id: String) -> bool {
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
    /// A B-tree, not a hash map: instances accumulate (until purged), and a hash map doubling
    /// rehashes every entry under the engine lock. At 57k instances that stalled every call for
    /// ~90 ms (p99 spikes in the open-loop bench), and still ~35 ms with boxed entries and
    /// foldhash; a B-tree grows a node at a time. Boxed, so node splits move pointers.
    pub instances: BTreeMap<String, Box<Instance>>,
    ready: VecDeque<String>,
    /// Instances in `ready`, with when they became runnable (for the dispatch latency).
    ready_set: HashMap<String, std::time::Instant>,
    /// Pending activities by key `instance|execution|taskId`, and their dispatch order.
    pub activities: HashMap<String, ActivityItem>,
    activity_order: VecDeque<String>,
    /// Messages that become visible later (timers, scheduled starts), by due time.
    pub timers: BTreeMap<(DateTime<Utc>, u64), (String, pb::HistoryEvent)>,
}

/// The whole scheduler state.
pub struct Engine {
    pub hubs: HashMap<String, Hub>,
    leases: HashMap<String, Lease>,
    pub lease_duration: chrono::Duration,
    seq: u64,
    /// Changes made since the last `take_changes`, for the store.
    changes: Vec<Change>,
    /// Whether instance snapshots are recorded (off for the in-memory store: nothing reads them).
    record_instances: bool,
    /// Leased (orchestration, activity) work items per stream.
    stream_counts: HashMap<u64, (usize, usize)>,
    pub dispatch_latency: DispatchLatency,
}

pub fn activity_key(instance_id: &str, execution_id: &str, task_id: i32) -> String {
    format!("{instance_id}|{execution_id}|{task_id}")
}

impl Engine {
    pub fn new(hub_names: &[String], lease_duration: std::time::Duration) -> Self {
        Self {
            hubs: hub_names
                .iter()
                .map(|h| (h.clone(), Hub::default()))
                .collect(),
            leases: HashMap::new(),
            lease_duration: chrono::Duration::from_std(lease_duration)
                .unwrap_or(chrono::Duration::minutes(2)),
            seq: 0,
            changes: Vec::new(),
            record_instances: true,
            stream_counts: HashMap::new(),
            dispatch_latency: DispatchLatency::default(),
        }
    }

    /// Stops recording instance snapshots (in-memory mode).
    pub fn without_persistence(mut self) -> Self {
        self.record_instances = false;
        self
    }

    fn count_lease(&mut self, stream: u64, kind: &LeaseKind, delta: isize) {
        let e = self.stream_counts.entry(stream).or_default();
        let slot = match kind {
            LeaseKind::Orchestration { .. } => &mut e.0,
            LeaseKind::Activity { .. } => &mut e.1,
        };
        *slot = slot.saturating_add_signed(delta);
    }

    fn insert_lease(&mut self, token: String, lease: Lease) {
        self.count_lease(lease.stream, &lease.kind, 1);
        self.leases.insert(token, lease);
    }

    fn remove_lease(&mut self, token: &str) -> Option<Lease> {
        let lease = self.leases.remove(token)?;
        self.count_lease(lease.stream, &lease.kind, -1);
        Some(lease)
    }

    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn hub(&mut self, name: &str) -> Result<&mut Hub, Status> {
        self.hubs
            .get_mut(name)
            .ok_or_else(|| Status::not_found(format!("Task hub not found: {name}")))
    }

    fn persist(&mut self, hub: &str, id: &str) {
        if !self.record_instances {
            return;
        }
        let inst = self
            .hubs
            .get(hub)
            .and_then(|h| h.instances.get(id))
            .cloned();
        match inst {
            Some(i) => self.changes.push(Change::PutInstance {
                hub: hub.to_string(),
                row: Box::new(i.row.clone()),
                history: i.history.clone(),
                // Messages out with a worker come first: they are older than the inbox.
                inbox: undispatched(&i.dispatched)
                    .iter()
                    .chain(i.inbox.iter())
                    .cloned()
                    .collect(),
            }),
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
        let Some(inst) = h.instances.get_mut(instance_id) else {
            return;
        };
        if is_terminal(inst.row.status) {
            return; // completed instances take no more messages
        }
        inst.inbox.push_back(msg);
        if inst.lease.is_none() && mark_ready(&mut h.ready_set, instance_id.to_string()) {
            h.ready.push_back(instance_id.to_string());
        }
        self.persist(hub, instance_id);
    }

    /// Moves timers that are due into inboxes; returns the next due time.
    pub fn fire_due_timers(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let hubs: Vec<String> = self.hubs.keys().cloned().collect();
        let mut next: Option<DateTime<Utc>> = None;
        for hub in hubs {
            while let Some(h) = self.hubs.get_mut(&hub) {
                let Some((&(due, seq), _)) = h.timers.iter().next() else {
                    break;
                };
                if due > now {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    break;
                }
                let Some((instance_id, mut msg)) = h.timers.remove(&(due, seq)) else {
                    break;
                };
                self.changes.push(Change::DeleteTimer {
                    hub: hub.clone(),
                    seq,
                });
                msg.timestamp = Some(now_ts());
                self.deliver(&hub, &instance_id, msg, None);
            }
        }
        next
    }

    // ------------------------------------------------------------ client side

    pub fn start_instance(
        &mut self,
        hub: &str,
        req: pb::CreateInstanceRequest,
    ) -> Result<String, Status> {
        validate_instance_id(&req.instance_id)?;
        validate_payload("input", req.input.as_ref())?;
        if req.name.is_empty() {
            return Err(Status::invalid_argument(
                "orchestration name must not be empty",
            ));
        }
        let h = self.hub(hub)?;
        if let Some(existing) = h.instances.get(&req.instance_id) {
            let replaceable: Vec<i32> = match &req.orchestration_id_reuse_policy {
                Some(p) => p.replaceable_status.clone(),
                // No policy: terminal instances may be replaced, live ones may not.
                None => vec![
                    status_i32(pb::OrchestrationStatus::Completed),
                    status_i32(pb::OrchestrationStatus::Failed),
                    status_i32(pb::OrchestrationStatus::Terminated),
                    status_i32(pb::OrchestrationStatus::Canceled),
                ],
            };
            if !replaceable.contains(&existing.row.status) {
                return Err(Status::already_exists(format!(
                    "an orchestration with instance id '{}' already exists and is {}",
                    req.instance_id,
                    pb::OrchestrationStatus::try_from(existing.row.status)
                        .map(|s| s.as_str_name())
                        .unwrap_or("?")
                )));
            }
            self.drop_instance(hub, &req.instance_id);
        }
        let id = req.instance_id.clone();
        self.create_instance(
            hub,
            CreateSpec {
                instance_id: req.instance_id,
                name: req.name,
                version: req.version,
                input: req.input,
                tags: req.tags,
                parent: None,
                parent_trace: req.parent_trace_context,
                scheduled_start: req.scheduled_start_timestamp.as_ref().map(from_ts),
            },
        );
        Ok(id)
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
            parent: spec.parent,
            trace: None,
        };
        if let Some(h) = self.hubs.get_mut(hub) {
            h.instances.insert(
                spec.instance_id.clone(),
                Box::new(Instance {
                    row,
                    history: Vec::new(),
                    inbox: VecDeque::new(),
                    lease: None,
                    dispatched: Vec::new(),
                    terminate_children: false,
                    avoid: None,
                }),
            );
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
    }

    pub fn get(
        &mut self,
        hub: &str,
        id: &str,
        with_payloads: bool,
    ) -> Result<Option<pb::OrchestrationState>, Status> {
        Ok(self
            .hub(hub)?
            .instances
            .get(id)
            .map(|i| i.state(with_payloads)))
    }

    fn require_live(&mut self, hub: &str, id: &str) -> Result<(), Status> {
        let inst = self.hub(hub)?.instances.get(id).ok_or_else(|| {
            Status::not_found(format!("no orchestration instance with id '{id}'"))
        })?;
        if is_terminal(inst.row.status) {
            return Err(Status::failed_precondition(format!(
                "orchestration '{id}' has already completed"
            )));
        }
        Ok(())
    }

    pub fn raise_event(&mut self, hub: &str, req: pb::RaiseEventRequest) -> Result<(), Status> {
        validate_payload("event data", req.input.as_ref())?;
        if req.name.is_empty() {
            return Err(Status::invalid_argument("event name must not be empty"));
        }
        self.require_live(hub, &req.instance_id)?;
        let msg = event(
            -1,
            EventType::EventRaised(pb::EventRaisedEvent {
                name: req.name,
                input: req.input,
            }),
        );
        self.deliver(hub, &req.instance_id, msg, None);
        Ok(())
    }

    pub fn terminate(&mut self, hub: &str, req: pb::TerminateRequest) -> Result<(), Status> {
        validate_payload("output", req.output.as_ref())?;
        let exists = self
            .hub(hub)?
            .instances
            .get(&req.instance_id)
            .map(|i| i.row.status);
        match exists {
            None => {
                return Err(Status::not_found(format!(
                    "no orchestration instance with id '{}'",
                    req.instance_id
                )));
            }
            // Terminating a finished instance is a no-op, as in DTS.
            Some(s) if is_terminal(s) => return Ok(()),
            Some(_) => {}
        }
        let never_ran = self
            .hub(hub)?
            .instances
            .get(&req.instance_id)
            .is_some_and(|i| i.history.is_empty() && i.lease.is_none());
        if never_ran {
            // Still pending (maybe a scheduled start): no worker has seen it, so end it here.
            let now = Utc::now();
            self.drop_pending_messages(hub, &req.instance_id);
            if let Some(i) = self.hub(hub)?.instances.get_mut(&req.instance_id) {
                i.row.status = status_i32(pb::OrchestrationStatus::Terminated);
                i.row.output = req.output;
                i.row.completed = Some(now);
                i.row.last_updated = now;
                i.inbox.clear();
            }
            self.persist(hub, &req.instance_id);
            return Ok(());
        }
        if let Some(i) = self.hub(hub)?.instances.get_mut(&req.instance_id) {
            i.terminate_children |= req.recursive;
        }
        let msg = event(
            -1,
            EventType::ExecutionTerminated(pb::ExecutionTerminatedEvent {
                input: req.output,
                recurse: req.recursive,
            }),
        );
        self.deliver(hub, &req.instance_id, msg, None);
        Ok(())
    }

    /// Rewinds a failed instance: the worker rewrites its history without the failures
    /// (`RewindOrchestrationAction`) and the failed work runs again.
    pub fn rewind(&mut self, hub: &str, id: &str, reason: Option<String>) -> Result<(), Status> {
        let status = self
            .hub(hub)?
            .instances
            .get(id)
            .map(|i| i.row.status)
            .ok_or_else(|| {
                Status::not_found(format!("no orchestration instance with id '{id}'"))
            })?;
        if status != status_i32(pb::OrchestrationStatus::Failed) {
            return Err(Status::failed_precondition(format!(
                "orchestration '{id}' is not in a failed state; only failed instances can be rewound"
            )));
        }
        self.prepare_rewind(hub, id, reason);
        Ok(())
    }

    fn prepare_rewind(&mut self, hub: &str, id: &str, reason: Option<String>) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let Some(inst) = h.instances.get_mut(id) else {
            return;
        };
        inst.row.status = status_i32(pb::OrchestrationStatus::Running);
        inst.row.output = None;
        inst.row.failure = None;
        inst.row.completed = None;
        inst.row.last_updated = Utc::now();
        inst.inbox.clear();
        inst.inbox.push_back(event(
            -1,
            EventType::ExecutionRewound(pb::ExecutionRewoundEvent {
                reason,
                ..Default::default()
            }),
        ));
        if inst.lease.is_none() && mark_ready(&mut h.ready_set, id.to_string()) {
            h.ready.push_back(id.to_string());
        }
        self.persist(hub, id);
    }

    /// Removes an instance's not-yet-visible messages (scheduled start, timers).
    fn drop_pending_messages(&mut self, hub: &str, instance_id: &str) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let keys: Vec<(DateTime<Utc>, u64)> = h
            .timers
            .iter()
            .filter(|(_, (id, _))| id == instance_id)
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            h.timers.remove(k);
        }
        for (_, seq) in keys {
            self.changes.push(Change::DeleteTimer {
                hub: hub.to_string(),
                seq,
            });
        }
    }

    pub fn suspend(&mut self, hub: &str, id: &str, reason: Option<String>) -> Result<(), Status> {
        self.require_live(hub, id)?;
        let msg = event(
            -1,
            EventType::ExecutionSuspended(pb::ExecutionSuspendedEvent { input: reason }),
        );
        self.deliver(hub, id, msg, None);
        Ok(())
    }

    pub fn resume(&mut self, hub: &str, id: &str, reason: Option<String>) -> Result<(), Status> {
        self.require_live(hub, id)?;
        let suspended = self.hub(hub)?.instances.get(id).is_some_and(|i| {
            i.row.status == status_i32(pb::OrchestrationStatus::Suspended)
                || i.inbox
                    .iter()
                    .any(|e| matches!(e.event_type, Some(EventType::ExecutionSuspended(_))))
        });
        // Resuming something that is not suspended is ignored (the Python SDK would fail on it).
        if suspended {
            let msg = event(
                -1,
                EventType::ExecutionResumed(pb::ExecutionResumedEvent { input: reason }),
            );
            self.deliver(hub, id, msg, None);
        }
        Ok(())
    }

    pub fn restart(&mut self, hub: &str, id: &str, new_id: bool) -> Result<String, Status> {
        let inst = self.hub(hub)?.instances.get(id).cloned().ok_or_else(|| {
            Status::not_found(format!("no orchestration instance with id '{id}'"))
        })?;
        let target = if new_id {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            id.to_string()
        };
        if !new_id && !is_terminal(inst.row.status) {
            return Err(Status::failed_precondition(format!(
                "orchestration '{id}' is still running; terminate it first or restart with a new instance id"
            )));
        }
        let original_input = inst.history.iter().find_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(es)) => Some(es.input.clone()),
            _ => None,
        });
        self.start_instance(
            hub,
            pb::CreateInstanceRequest {
                instance_id: target.clone(),
                name: inst.row.name.clone(),
                version: inst.row.version.clone(),
                input: original_input.unwrap_or(inst.row.input.clone()),
                tags: inst.row.tags.clone(),
                ..Default::default()
            },
        )?;
        Ok(target)
    }

    /// Purges terminal instances; returns how many were deleted.
    pub fn purge_one(&mut self, hub: &str, id: &str, recursive: bool) -> Result<i32, Status> {
        let Some(inst) = self.hub(hub)?.instances.get(id).cloned() else {
            return Ok(0);
        };
        if !is_terminal(inst.row.status) {
            return Err(Status::failed_precondition(format!(
                "orchestration '{id}' is not in a terminal state; only completed, failed or terminated instances can be purged"
            )));
        }
        let mut count = 1;
        if recursive {
            for child in inst.children() {
                count += self.purge_one(hub, &child, true).unwrap_or(0);
            }
        }
        self.drop_instance(hub, id);
        Ok(count)
    }

    pub fn purge_filter(
        &mut self,
        hub: &str,
        f: &pb::PurgeInstanceFilter,
        recursive: bool,
    ) -> Result<i32, Status> {
        let from = f.created_time_from.as_ref().map(from_ts);
        let to = f.created_time_to.as_ref().map(from_ts);
        let ids: Vec<String> = self
            .hub(hub)?
            .instances
            .values()
            .filter(|i| is_terminal(i.row.status))
            .filter(|i| f.runtime_status.is_empty() || f.runtime_status.contains(&i.row.status))
            .filter(|i| {
                from.is_none_or(|t| i.row.created >= t) && to.is_none_or(|t| i.row.created <= t)
            })
            .map(|i| i.row.instance_id.clone())
            .collect();
        let mut count = 0;
        for id in ids {
            count += self.purge_one(hub, &id, recursive).unwrap_or(0);
        }
        Ok(count)
    }

    pub fn query(
        &mut self,
        hub: &str,
        q: &pb::InstanceQuery,
    ) -> Result<pb::QueryInstancesResponse, Status> {
        let from = q.created_time_from.as_ref().map(from_ts);
        let to = q.created_time_to.as_ref().map(from_ts);
        let prefix = q.instance_id_prefix.as_ref().map(|p| p.to_lowercase());
        let mut matching: Vec<&Instance> = self
            .hub(hub)?
            .instances
            .values()
            .map(|i| &**i)
            .filter(|i| q.runtime_status.is_empty() || q.runtime_status.contains(&i.row.status))
            .filter(|i| {
                from.is_none_or(|t| i.row.created >= t) && to.is_none_or(|t| i.row.created <= t)
            })
            .filter(|i| {
                prefix
                    .as_ref()
                    .is_none_or(|p| i.row.instance_id.to_lowercase().starts_with(p))
            })
            .collect();
        matching.sort_by(|a, b| {
            (a.row.created, &a.row.instance_id).cmp(&(b.row.created, &b.row.instance_id))
        });
        let offset: usize = match q.continuation_token.as_deref() {
            None | Some("") => 0,
            Some(t) => t.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "continuation token '{t}' is not one this server issued"
                ))
            })?,
        };
        let page = if q.max_instance_count > 0 {
            q.max_instance_count as usize
        } else {
            100
        };
        let slice: Vec<pb::OrchestrationState> = matching
            .iter()
            .skip(offset)
            .take(page)
            .map(|i| i.state(q.fetch_inputs_and_outputs))
            .collect();
        let next = offset + slice.len();
        Ok(pb::QueryInstancesResponse {
            orchestration_state: slice,
            continuation_token: (next < matching.len()).then(|| next.to_string()),
        })
    }

    pub fn list_ids(
        &mut self,
        hub: &str,
        r: &pb::ListInstanceIdsRequest,
    ) -> Result<pb::ListInstanceIdsResponse, Status> {
        let from = r.completed_time_from.as_ref().map(from_ts);
        let to = r.completed_time_to.as_ref().map(from_ts);
        let mut done: Vec<(DateTime<Utc>, String)> = self
            .hub(hub)?
            .instances
            .values()
            .filter(|i| is_terminal(i.row.status))
            .filter(|i| r.runtime_status.is_empty() || r.runtime_status.contains(&i.row.status))
            .filter_map(|i| i.row.completed.map(|c| (c, i.row.instance_id.clone())))
            .filter(|(c, _)| from.is_none_or(|t| *c >= t) && to.is_none_or(|t| *c <= t))
            .collect();
        done.sort();
        let key =
            |c: &DateTime<Utc>, id: &str| format!("{}|{id}", c.timestamp_nanos_opt().unwrap_or(0));
        let start = match &r.last_instance_key {
            Some(k) if !k.is_empty() => done
                .iter()
                .position(|(c, id)| key(c, id) == *k)
                .map_or(0, |p| p + 1),
            _ => 0,
        };
        let page = if r.page_size > 0 {
            r.page_size as usize
        } else {
            100
        };
        let slice: Vec<_> = done.iter().skip(start).take(page).collect();
        let more = start + slice.len() < done.len();
        Ok(pb::ListInstanceIdsResponse {
            instance_ids: slice.iter().map(|(_, id)| id.clone()).collect(),
            last_instance_key: if more {
                slice.last().map(|(c, id)| key(c, id))
            } else {
                None
            },
        })
    }

    // ------------------------------------------------------------ worker side

    /// Takes the next runnable orchestration for a stream, leasing it.
    /// The next orchestration work item this stream may take, with how long it waited.
    pub fn take_orchestration(
        &mut self,
        hub: &str,
        stream: u64,
        filter: &StreamFilter,
    ) -> Option<(pb::WorkItem, Option<std::time::Duration>)> {
        let lease_expiry = Utc::now() + self.lease_duration;
        let h = self.hubs.get_mut(hub)?;
        let mut skipped = Vec::new();
        let mut found = None;
        let mut found_waited = None;
        while let Some(id) = h.ready.pop_front() {
            let Some(inst) = h.instances.get_mut(&id) else {
                h.ready_set.remove(&id);
                continue;
            };
            if inst.lease.is_some() || inst.inbox.is_empty() {
                h.ready_set.remove(&id);
                continue;
            }
            if !filter.accepts_orchestration(&inst.row.name, inst.row.version.as_deref())
                || avoided(inst.avoid, stream)
            {
                skipped.push(id);
                continue;
            }
            if let Some(since) = h.ready_set.remove(&id) {
                found_waited = Some(since.elapsed());
            }
            found = Some(id);
            break;
        }
        for s in skipped.into_iter().rev() {
            h.ready.push_front(s);
        }
        let id = found?;
        let inst = h.instances.get_mut(&id)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let take = inst.inbox.len().min(MAX_EVENTS_PER_EPISODE);
        let mut new_events = Vec::with_capacity(take + 1);
        // After a rewind the inbox already opens with its own OrchestratorStarted.
        if !inst.inbox.front().is_some_and(is_orchestrator_started) {
            new_events.push(event(
                -1,
                EventType::OrchestratorStarted(pb::OrchestratorStartedEvent {}),
            ));
        }
        new_events.extend(inst.inbox.drain(..take));
        inst.dispatched = new_events.clone();
        inst.lease = Some(token.clone());
        let req = pb::OrchestratorRequest {
            instance_id: id.clone(),
            execution_id: Some(inst.row.execution_id.clone()),
            past_events: inst.history.clone(),
            new_events,
            entity_parameters: None,
            requires_history_streaming: false,
            properties: Default::default(),
            orchestration_trace_context: inst.row.trace.clone(),
        };
        if let Some(waited) = found_waited {
            let created = execution_started(&req).and_then(|s| s.parent_trace_context.as_ref());
            self.dispatch_latency.orchestration.observe(
                waited.as_secs_f64(),
                exemplar(created),
                None,
            );
        }
        self.insert_lease(
            token.clone(),
            Lease {
                hub: hub.to_string(),
                kind: LeaseKind::Orchestration { instance_id: id },
                stream,
                expires: lease_expiry,
                partial: None,
            },
        );
        Some((
            pb::WorkItem {
                request: Some(pb::work_item::Request::OrchestratorRequest(req)),
                completion_token: token,
            },
            found_waited,
        ))
    }

    /// The next activity work item this stream may take, with how long it waited.
    pub fn take_activity(
        &mut self,
        hub: &str,
        stream: u64,
        filter: &StreamFilter,
    ) -> Option<(pb::WorkItem, Option<std::time::Duration>)> {
        let lease_expiry = Utc::now() + self.lease_duration;
        let h = self.hubs.get_mut(hub)?;
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(key) = h.activity_order.pop_front() {
            let Some(item) = h.activities.get(&key) else {
                continue;
            };
            if item.lease.is_some() {
                continue;
            }
            if !filter.accepts_activity(&item.request.name, item.request.version.as_deref())
                || avoided(item.avoid, stream)
            {
                skipped.push(key);
                continue;
            }
            found = Some(key);
            break;
        }
        for s in skipped.into_iter().rev() {
            h.activity_order.push_front(s);
        }
        let key = found?;
        let item = h.activities.get_mut(&key)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        item.lease = Some(token.clone());
        let waited = item.queued.elapsed();
        self.dispatch_latency.activity.observe(
            waited.as_secs_f64(),
            exemplar(item.request.parent_trace_context.as_ref()),
            None,
        );
        let request = item.request.clone();
        self.insert_lease(
            token.clone(),
            Lease {
                hub: hub.to_string(),
                kind: LeaseKind::Activity { key },
                stream,
                expires: lease_expiry,
                partial: None,
            },
        );
        Some((
            pb::WorkItem {
                request: Some(pb::work_item::Request::ActivityRequest(request)),
                completion_token: token,
            },
            Some(waited),
        ))
    }

    /// Keeps one `isPartial` chunk of an orchestrator completion with its lease. Chunks must
    /// arrive in order (`chunkIndex` 0, 1, ...); a gap or repeat is rejected and leaves the
    /// chunks received so far untouched, so the worker can resend.
    fn add_partial_chunk(&mut self, resp: pb::OrchestratorResponse) -> Result<(), Status> {
        let lease = self.leases.get_mut(&resp.completion_token).ok_or_else(|| {
            Status::not_found(
                "unknown or expired completion token for this orchestration; the work item was abandoned or redelivered",
            )
        })?;
        let LeaseKind::Orchestration { instance_id } = &lease.kind else {
            return Err(Status::invalid_argument(
                "completion token belongs to an activity work item",
            ));
        };
        if !resp.instance_id.is_empty() && &resp.instance_id != instance_id {
            return Err(Status::invalid_argument(format!(
                "completion token belongs to instance '{instance_id}', not '{}'",
                resp.instance_id
            )));
        }
        let partial = lease.partial.get_or_insert_with(|| PartialCompletion {
            next_chunk: 0,
            actions: Vec::new(),
            custom_status: None,
            trace: None,
        });
        #[allow(deprecated)]
        let index = resp.chunk_index.unwrap_or(partial.next_chunk);
        if index != partial.next_chunk {
            return Err(Status::invalid_argument(format!(
                "chunk {index} of a chunked completion arrived, expected chunk {}",
                partial.next_chunk
            )));
        }
        let received: usize = partial
            .actions
            .iter()
            .map(prost::Message::encoded_len)
            .sum();
        let adding: usize = resp.actions.iter().map(prost::Message::encoded_len).sum();
        if received + adding > MAX_CHUNKED_COMPLETION_BYTES {
            return Err(Status::resource_exhausted(format!(
                "a chunked completion may carry at most {MAX_CHUNKED_COMPLETION_BYTES} bytes of actions"
            )));
        }
        partial.next_chunk += 1;
        partial.actions.extend(resp.actions);
        if resp.custom_status.is_some() {
            partial.custom_status = resp.custom_status;
        }
        if partial.trace.is_none() {
            partial.trace = resp.orchestration_trace_context;
        }
        Ok(())
    }

    fn take_lease(&mut self, token: &str, expect: &str) -> Result<Lease, Status> {
        let lease = self.remove_lease(token).ok_or_else(|| {
            Status::not_found(format!(
                "unknown or expired completion token for {expect}; the work item was abandoned or redelivered"
            ))
        })?;
        Ok(lease)
    }

    /// Returns the work item behind `token` to its queue (abandon, broken stream, expired lease).
    pub fn release(&mut self, token: &str) -> bool {
        self.release_inner(token, false)
    }

    /// With `expired`, the stream that held it is passed over for one lease period, so a hung
    /// worker does not get its own work back while others are waiting.
    fn release_inner(&mut self, token: &str, expired: bool) -> bool {
        let Some(lease) = self.remove_lease(token) else {
            return false;
        };
        let avoid = expired.then(|| (lease.stream, Utc::now() + self.lease_duration));
        let Some(h) = self.hubs.get_mut(&lease.hub) else {
            return false;
        };
        match lease.kind {
            LeaseKind::Orchestration { instance_id } => {
                if let Some(inst) = h.instances.get_mut(&instance_id) {
                    inst.lease = None;
                    inst.avoid = avoid;
                    // Put the messages back in front, without the OrchestratorStarted we added.
                    let dispatched = std::mem::take(&mut inst.dispatched);
                    let events = undispatched(&dispatched).to_vec();
                    for e in events.into_iter().rev() {
                        inst.inbox.push_front(e);
                    }
                    if !inst.inbox.is_empty() && mark_ready(&mut h.ready_set, instance_id.clone()) {
                        h.ready.push_front(instance_id);
                    }
                }
            }
            LeaseKind::Activity { key } => {
                if let Some(item) = h.activities.get_mut(&key) {
                    item.lease = None;
                    item.avoid = avoid;
                    item.queued = std::time::Instant::now();
                    h.activity_order.push_front(key);
                }
            }
        }
        true
    }

    /// Releases every lease held by a stream that went away.
    pub fn release_stream(&mut self, stream: u64) -> usize {
        let tokens: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.stream == stream)
            .map(|(t, _)| t.clone())
            .collect();
        tokens.iter().filter(|t| self.release(t)).count()
    }

    /// Releases leases past their expiry; returns how many.
    pub fn expire_leases(&mut self, now: DateTime<Utc>) -> usize {
        let tokens: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(t, _)| t.clone())
            .collect();
        tokens
            .iter()
            .filter(|t| self.release_inner(t, true))
            .count()
    }

    pub fn in_flight(&self, stream: u64) -> (usize, usize) {
        self.stream_counts.get(&stream).copied().unwrap_or_default()
    }

    pub fn forget_stream(&mut self, stream: u64) {
        self.stream_counts.remove(&stream);
    }

    pub fn complete_activity(
        &mut self,
        hub: &str,
        resp: pb::ActivityResponse,
    ) -> Result<(), Status> {
        validate_payload("activity result", resp.result.as_ref())?;
        let lease = self.take_lease(&resp.completion_token, "this activity")?;
        let LeaseKind::Activity { key } = lease.kind else {
            self.insert_lease(resp.completion_token.clone(), lease);
            return Err(Status::invalid_argument(
                "completion token belongs to an orchestration work item",
            ));
        };
        let Some(h) = self.hubs.get_mut(hub) else {
            return Err(Status::not_found(format!("Task hub not found: {hub}")));
        };
        let Some(item) = h.activities.remove(&key) else {
            return Ok(());
        };
        self.changes.push(Change::DeleteActivity {
            hub: hub.to_string(),
            key,
        });
        let instance_id = item
            .request
            .orchestration_instance
            .as_ref()
            .map(|i| i.instance_id.clone())
            .unwrap_or_default();
        let msg = match resp.failure_details {
            Some(f) => event(
                -1,
                EventType::TaskFailed(pb::TaskFailedEvent {
                    task_scheduled_id: item.request.task_id,
                    failure_details: Some(f),
                }),
            ),
            None => event(
                -1,
                EventType::TaskCompleted(pb::TaskCompletedEvent {
                    task_scheduled_id: item.request.task_id,
                    result: resp.result,
                }),
            ),
        };
        self.deliver(hub, &instance_id, msg, None);
        Ok(())
    }

    pub fn complete_orchestration(
        &mut self,
        hub: &str,
        mut resp: pb::OrchestratorResponse,
    ) -> Result<(), Status> {
        // Everything is checked before the lease is taken, so bad input leaves the work item
        // leased (and redelivered on expiry) instead of half-applied.
        validate_payload("custom status", resp.custom_status.as_ref())?;
        validate_actions(&resp.actions)?;
        #[allow(deprecated)]
        if resp.is_partial {
            return self.add_partial_chunk(resp);
        }
        let lease = self.take_lease(&resp.completion_token, "this orchestration")?;
        let LeaseKind::Orchestration { instance_id } = lease.kind.clone() else {
            self.insert_lease(resp.completion_token.clone(), lease);
            return Err(Status::invalid_argument(
                "completion token belongs to an activity work item",
            ));
        };
        if !resp.instance_id.is_empty() && resp.instance_id != instance_id {
            self.insert_lease(resp.completion_token.clone(), lease);
            return Err(Status::invalid_argument(format!(
                "completion token belongs to instance '{instance_id}', not '{}'",
                resp.instance_id
            )));
        }
        if let Some(p) = lease.partial {
            // Earlier chunks come first; the first chunk carries the trace context.
            let mut actions = p.actions;
            actions.append(&mut resp.actions);
            resp.actions = actions;
            resp.custom_status = resp.custom_status.or(p.custom_status);
            resp.orchestration_trace_context = p.trace.or(resp.orchestration_trace_context);
        }
        let now = Utc::now();
        let h = self
            .hubs
            .get_mut(hub)
            .ok_or_else(|| Status::not_found(format!("Task hub not found: {hub}")))?;
        let Some(inst) = h.instances.get_mut(&instance_id) else {
            return Ok(());
        };
        inst.lease = None;
        let dispatched = std::mem::take(&mut inst.dispatched);
        for e in &dispatched {
            match &e.event_type {
                Some(EventType::ExecutionStarted(_)) => {
                    inst.row.status = status_i32(pb::OrchestrationStatus::Running)
                }
                Some(EventType::ExecutionSuspended(_)) => {
                    inst.row.status = status_i32(pb::OrchestrationStatus::Suspended)
                }
                Some(EventType::ExecutionResumed(_)) => {
                    inst.row.status = status_i32(pb::OrchestrationStatus::Running)
                }
                _ => {}
            }
        }
        inst.history.extend(dispatched);
        inst.row.last_updated = now;
        if resp.custom_status.is_some() {
            inst.row.custom_status = resp.custom_status.clone();
        }
        if let Some(tc) = resp.orchestration_trace_context.clone() {
            inst.row.trace = Some(tc);
        }
        let execution_id = inst.row.execution_id.clone();
        let parent = inst.row.parent.clone();

        let mut outgoing: Vec<(String, pb::HistoryEvent, Option<DateTime<Utc>>)> = Vec::new();
        let mut new_activities = Vec::new();
        let mut children = Vec::new();
        let mut terminal: Option<(i32, Option<String>, Option<pb::TaskFailureDetails>)> = None;
        let mut continue_as_new: Option<pb::CompleteOrchestrationAction> = None;
        let mut rewound_history: Option<Vec<pb::HistoryEvent>> = None;
        for action in resp.actions {
            let id = action.id;
            let Some(kind) = action.orchestrator_action_type else {
                continue;
            };
            match kind {
                Action::ScheduleTask(s) => {
                    inst.history.push(event(
                        id,
                        EventType::TaskScheduled(pb::TaskScheduledEvent {
                            name: s.name.clone(),
                            version: s.version.clone(),
                            input: s.input.clone(),
                            parent_trace_context: s.parent_trace_context.clone(),
                            tags: s.tags.clone(),
                        }),
                    ));
                    new_activities.push(pb::ActivityRequest {
                        name: s.name,
                        version: s.version,
                        input: s.input,
                        orchestration_instance: Some(pb::OrchestrationInstance {
                            instance_id: instance_id.clone(),
                            execution_id: Some(execution_id.clone()),
                        }),
                        task_id: id,
                        parent_trace_context: s.parent_trace_context,
                        tags: s.tags,
                    });
                }
                Action::CreateTimer(t) => {
                    let fire_at = t.fire_at.unwrap_or_else(now_ts);
                    inst.history.push(event(
                        id,
                        EventType::TimerCreated(pb::TimerCreatedEvent {
                            fire_at: Some(fire_at),
                        }),
                    ));
                    let fired = event(
                        -1,
                        EventType::TimerFired(pb::TimerFiredEvent {
                            fire_at: Some(fire_at),
                            timer_id: id,
                        }),
                    );
                    outgoing.push((instance_id.clone(), fired, Some(from_ts(&fire_at))));
                }
                Action::CreateSubOrchestration(c) => {
                    let child_id = if c.instance_id.is_empty() {
                        format!("{instance_id}:{id:04x}")
                    } else {
                        c.instance_id.clone()
                    };
                    inst.history.push(event(
                        id,
                        EventType::SubOrchestrationInstanceCreated(
                            pb::SubOrchestrationInstanceCreatedEvent {
                                instance_id: child_id.clone(),
                                name: c.name.clone(),
                                version: c.version.clone(),
                                input: c.input.clone(),
                                parent_trace_context: c.parent_trace_context.clone(),
                                tags: c.tags.clone(),
                            },
                        ),
                    ));
                    children.push(CreateSpec {
                        instance_id: child_id,
                        name: c.name,
                        version: c.version,
                        input: c.input,
                        tags: c.tags,
                        parent: Some(pb::ParentInstanceInfo {
                            task_scheduled_id: id,
                            name: Some(inst.row.name.clone()),
                            version: inst.row.version.clone(),
                            orchestration_instance: Some(pb::OrchestrationInstance {
                                instance_id: instance_id.clone(),
                                execution_id: Some(execution_id.clone()),
                            }),
                        }),
                        parent_trace: c.parent_trace_context,
                        scheduled_start: None,
                    });
                }
                Action::SendEvent(s) => {
                    let target = s
                        .instance
                        .as_ref()
                        .map(|i| i.instance_id.clone())
                        .unwrap_or_default();
                    inst.history.push(event(
                        id,
                        EventType::EventSent(pb::EventSentEvent {
                            instance_id: target.clone(),
                            name: s.name.clone(),
                            input: s.data.clone(),
                        }),
                    ));
                    outgoing.push((
                        target,
                        event(
                            -1,
                            EventType::EventRaised(pb::EventRaisedEvent {
                                name: s.name,
                                input: s.data,
                            }),
                        ),
                        None,
                    ));
                }
                Action::TerminateOrchestration(t) => {
                    outgoing.push((
                        t.instance_id,
                        event(
                            -1,
                            EventType::ExecutionTerminated(pb::ExecutionTerminatedEvent {
                                input: t.reason,
                                recurse: t.recurse,
                            }),
                        ),
                        None,
                    ));
                }
                Action::CompleteOrchestration(c) => {
                    if c.orchestration_status == status_i32(pb::OrchestrationStatus::ContinuedAsNew)
                    {
                        continue_as_new = Some(c);
                    } else {
                        inst.history.push(event(
                            id,
                            EventType::ExecutionCompleted(pb::ExecutionCompletedEvent {
                                orchestration_status: c.orchestration_status,
                                result: c.result.clone(),
                                failure_details: c.failure_details.clone(),
                            }),
                        ));
                        terminal = Some((c.orchestration_status, c.result, c.failure_details));
                    }
                }
                Action::RewindOrchestration(r) => rewound_history = Some(r.new_history),
                Action::SendEntityMessage(_) => {}
            }
        }
        inst.history.push(event(
            -1,
            EventType::OrchestratorCompleted(pb::OrchestratorCompletedEvent {}),
        ));

        let mut terminate_children = Vec::new();
        let mut rewind_children = Vec::new();
        if let Some(history) = rewound_history {
            // The worker rewrote the history without its failures: adopt it and run it again.
            if let Some(exec) = history.iter().find_map(|e| match &e.event_type {
                Some(EventType::ExecutionStarted(es)) => {
                    es.orchestration_instance.as_ref()?.execution_id.clone()
                }
                _ => None,
            }) {
                inst.row.execution_id = exec;
            }
            let completed: HashSet<i32> = history
                .iter()
                .filter_map(|e| match &e.event_type {
                    Some(EventType::SubOrchestrationInstanceCompleted(c)) => {
                        Some(c.task_scheduled_id)
                    }
                    _ => None,
                })
                .collect();
            rewind_children = history
                .iter()
                .filter_map(|e| match &e.event_type {
                    Some(EventType::SubOrchestrationInstanceCreated(c))
                        if !completed.contains(&e.event_id) =>
                    {
                        Some(c.instance_id.clone())
                    }
                    _ => None,
                })
                .collect();
            inst.history = history;
            inst.row.status = status_i32(pb::OrchestrationStatus::Running);
            inst.row.output = None;
            inst.row.failure = None;
            inst.row.completed = None;
            inst.inbox.clear();
            inst.inbox.push_back(event(
                -1,
                EventType::OrchestratorStarted(pb::OrchestratorStartedEvent {}),
            ));
            new_activities.clear();
            outgoing.clear();
            children.clear();
        } else if let Some(can) = continue_as_new {
            // A fresh execution: history discarded, same parent and trace, new input, carried events first.
            let new_execution = uuid::Uuid::new_v4().simple().to_string();
            let started = inst.history.iter().find_map(|e| match &e.event_type {
                Some(EventType::ExecutionStarted(es)) => Some(es.clone()),
                _ => None,
            });
            let mut es = started.unwrap_or_default();
            es.input = can.result.clone();
            if can.new_version.is_some() {
                es.version = can.new_version.clone();
            }
            es.orchestration_instance = Some(pb::OrchestrationInstance {
                instance_id: instance_id.clone(),
                execution_id: Some(new_execution.clone()),
            });
            inst.history.clear();
            inst.row.execution_id = new_execution;
            inst.row.input = can.result;
            inst.row.version = es.version.clone();
            inst.row.status = status_i32(pb::OrchestrationStatus::Running);
            let mut fresh: VecDeque<pb::HistoryEvent> = VecDeque::new();
            fresh.push_back(event(-1, EventType::ExecutionStarted(es)));
            fresh.extend(can.carryover_events);
            fresh.extend(inst.inbox.drain(..));
            inst.inbox = fresh;
            // Work scheduled by the old execution no longer has anyone to report to.
            new_activities.clear();
            outgoing.retain(|(target, _, _)| *target != instance_id);
        } else if let Some((status, result, failure)) = terminal {
            inst.row.status = status;
            inst.row.output = result.clone();
            inst.row.failure = failure.clone();
            inst.row.completed = Some(now);
            inst.inbox.clear();
            if inst.terminate_children {
                terminate_children = inst.children();
            }
            if let Some(p) = &parent {
                let parent_id = p
                    .orchestration_instance
                    .as_ref()
                    .map(|i| i.instance_id.clone())
                    .unwrap_or_default();
                let msg = if status == status_i32(pb::OrchestrationStatus::Completed) {
                    event(
                        -1,
                        EventType::SubOrchestrationInstanceCompleted(
                            pb::SubOrchestrationInstanceCompletedEvent {
                                task_scheduled_id: p.task_scheduled_id,
                                result,
                            },
                        ),
                    )
                } else {
                    let f = failure.unwrap_or_else(|| pb::TaskFailureDetails {
                        error_type: "SubOrchestrationTerminated".into(),
                        error_message: format!(
                            "sub-orchestration '{instance_id}' ended as {}",
                            pb::OrchestrationStatus::try_from(status)
                                .map(|s| s.as_str_name())
                                .unwrap_or("?")
                        ),
                        ..Default::default()
                    });
                    event(
                        -1,
                        EventType::SubOrchestrationInstanceFailed(
                            pb::SubOrchestrationInstanceFailedEvent {
                                task_scheduled_id: p.task_scheduled_id,
                                failure_details: Some(f),
                            },
                        ),
                    )
                };
                outgoing.push((parent_id, msg, None));
            }
        }
        let runnable = !inst.inbox.is_empty() && !is_terminal(inst.row.status);
        if runnable && mark_ready(&mut h.ready_set, instance_id.clone()) {
            h.ready.push_back(instance_id.clone());
        }
        for req in new_activities {
            let key = activity_key(&instance_id, &execution_id, req.task_id);
            h.activity_order.push_back(key.clone());
            self.changes.push(Change::PutActivity {
                hub: hub.to_string(),
                key: key.clone(),
                request: req.clone(),
            });
            h.activities.insert(
                key,
                ActivityItem {
                    request: req,
                    lease: None,
                    avoid: None,
                    queued: std::time::Instant::now(),
                },
            );
        }
        self.persist(hub, &instance_id);
        for spec in children {
            let existing = self
                .hubs
                .get(hub)
                .and_then(|h| h.instances.get(&spec.instance_id))
                .map(|i| i.row.status);
            if let Some(s) = existing {
                if !is_terminal(s) {
                    // The child id is taken by a live instance: fail that task in the parent.
                    let msg = event(
                        -1,
                        EventType::SubOrchestrationInstanceFailed(
                            pb::SubOrchestrationInstanceFailedEvent {
                                task_scheduled_id: spec
                                    .parent
                                    .as_ref()
                                    .map_or(-1, |p| p.task_scheduled_id),
                                failure_details: Some(pb::TaskFailureDetails {
                                    error_type: "OrchestrationAlreadyExists".into(),
                                    error_message: format!(
                                        "an orchestration with instance id '{}' is already running",
                                        spec.instance_id
                                    ),
                                    is_non_retriable: true,
                                    ..Default::default()
                                }),
                            },
                        ),
                    );
                    outgoing.push((instance_id.clone(), msg, None));
                    continue;
                }
                self.drop_instance(hub, &spec.instance_id);
            }
            self.create_instance(hub, spec);
        }
        for (target, msg, at) in outgoing {
            self.deliver(hub, &target, msg, at);
        }
        for child in rewind_children {
            let failed = self
                .hubs
                .get(hub)
                .and_then(|h| h.instances.get(&child))
                .is_some_and(|c| c.row.status == status_i32(pb::OrchestrationStatus::Failed));
            if failed {
                self.prepare_rewind(hub, &child, Some("parent rewound".into()));
            }
        }
        for child in terminate_children {
            let _ = self.terminate(
                hub,
                pb::TerminateRequest {
                    instance_id: child,
                    output: None,
                    recursive: true,
                },
            );
        }
        Ok(())
    }

    /// Counts for `/metrics`: pending (not leased) orchestration and activity work items.
    pub fn backlog(&self) -> (usize, usize, usize) {
        let mut orch = 0;
        let mut act = 0;
        let mut timers = 0;
        for h in self.hubs.values() {
            orch += h
                .instances
                .values()
                .filter(|i| i.lease.is_none() && !i.inbox.is_empty())
                .count();
            act += h.activities.values().filter(|a| a.lease.is_none()).count();
            timers += h.timers.len();
        }
        (orch, act, timers)
    }

    pub fn status_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for h in self.hubs.values() {
            for i in h.instances.values() {
                let name = pb::OrchestrationStatus::try_from(i.row.status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN");
                *m.entry(name.trim_start_matches("ORCHESTRATION_STATUS_"))
                    .or_default() += 1;
            }
        }
        m
    }

    /// Rebuilds state from what the store loaded (after a restart every lease is gone, so
    /// everything that was in flight is simply runnable again).
    pub fn restore(
        &mut self,
        hub: &str,
        instances: Vec<Instance>,
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
                h.ready.push_back(id.clone());
            }
            h.instances.insert(id, Box::new(inst));
        }
        for (key, request) in activities {
            h.activity_order.push_back(key.clone());
            h.activities.insert(
                key,
                ActivityItem {
                    request,
                    lease: None,
                    avoid: None,
                    queued: std::time::Instant::now(),
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
