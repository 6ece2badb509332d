//! Durable entities: signals from clients and from other entities (now or at a time), entity
//! work items and their completion, reads, queries and storage cleaning, with DTS's wire
//! messages.
//!
//! An entity is addressed as `@name@key` (the name in lower case). Its operations queue in
//! arrival order; a worker gets them in batches (`EntityRequest`, DTS's newer form, whose
//! operations are the history events that carried them) and one batch at a time per entity, so
//! operations apply in order and never concurrently. A delayed signal is a timer whose target is
//! the entity (`deliver` routes ids starting with `@`, which orchestration ids may not).
//!
//! Locks (an orchestration's critical section) are the scheduler's own business: a lock request
//! travels the lock set in its (sorted) order, each entity taking it when the request reaches
//! the front of its queue, and the last one grants it to the orchestration. A locked entity runs
//! only its holder's calls; everything else waits until the holder's unlock arrives, or until the
//! holder ends (its locks are released then, so a failed orchestration cannot leave an entity
//! locked), or until `CleanEntityStorage` finds the holder gone.

use chrono::Utc;
use durabletask_proto as pb;
use pb::history_event::EventType;

use super::query::MAX_QUERY_ANSWER_BYTES;
use super::stats::event_bytes;
use super::{Engine, EngineError, Lease, LeaseKind, StreamFilter, validate_name, validate_payload};
use crate::model::{Change, Entity, event, from_ts};

/// What an entity costs besides its id, state and queued operations (a guess in the spirit of
/// the instances' overhead).
const ENTITY_OVERHEAD_BYTES: usize = 400;
/// Operations of one entity work item.
const MAX_OPERATIONS_PER_BATCH: usize = 100;
/// Bytes of one entity work item's state and operations, past its first operation.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// An entity id as DTS bounds an instance id, plus its two `@`s.
const MAX_ENTITY_ID_BYTES: usize = 256;
/// Request ids are GUIDs in every SDK; bounded like the other fields.
const MAX_REQUEST_ID_BYTES: usize = 100;
/// Entities in one query page, when the caller names no page size.
const DEFAULT_ENTITY_PAGE: usize = 100;
const MAX_ENTITY_PAGE: usize = 1000;

/// Whether `id` addresses an entity (`@name@key`).
pub fn is_entity_id(id: &str) -> bool {
    id.starts_with('@')
}

/// The name of entity `id` (`@name@key`), checked: printable ASCII, a non-empty name in lower
/// case (as every SDK writes it) followed by `@`.
pub fn entity_name(id: &str) -> Result<&str, EngineError> {
    let bad = |why: &str| {
        EngineError::invalid_argument(format!(
            "entity id '{id}' is not valid: {why} (expected '@name@key')"
        ))
    };
    if id.len() > MAX_ENTITY_ID_BYTES {
        return Err(bad(&format!(
            "longer than {MAX_ENTITY_ID_BYTES} characters"
        )));
    }
    if !id.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(bad("not printable ASCII"));
    }
    let rest = id.strip_prefix('@').ok_or_else(|| bad("no leading '@'"))?;
    let (name, _key) = rest
        .split_once('@')
        .ok_or_else(|| bad("no '@' between name and key"))?;
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("the name must be lower case"));
    }
    Ok(name)
}

/// Whether `m` came from orchestration `holder` (a call, a lock request or an unlock it sent).
fn sent_by(m: &pb::HistoryEvent, holder: &str) -> bool {
    let parent = match &m.event_type {
        Some(EventType::EntityOperationCalled(c)) => c.parent_instance_id.as_deref(),
        Some(EventType::EntityUnlockSent(u)) => u.parent_instance_id.as_deref(),
        Some(EventType::EntityLockRequested(l)) => l.parent_instance_id.as_deref(),
        _ => None,
    };
    parent == Some(holder)
}

fn is_operation(m: &pb::HistoryEvent) -> bool {
    matches!(
        m.event_type,
        Some(EventType::EntityOperationSignaled(_) | EventType::EntityOperationCalled(_))
    )
}

/// Whether a worker has something to run for `e`: unlocked, an operation at the front;
/// locked, a call from the holder before the holder's unlock.
fn runnable(e: &Entity) -> bool {
    match &e.locked_by {
        None => e.queue.front().is_some_and(is_operation),
        Some(holder) => e
            .queue
            .iter()
            .find(|m| sent_by(m, holder))
            .is_some_and(is_operation),
    }
}

/// The operations of the next batch, taken out of the queue: unlocked, those at the front up
/// to the first lock message; locked, the holder's calls up to its unlock (the rest waits).
/// At most `MAX_OPERATIONS_PER_BATCH` operations and, past the first, `MAX_BATCH_BYTES` of
/// them with the state, so that a work item stays well under the gRPC message limit.
fn take_batch(e: &mut Entity) -> Vec<pb::HistoryEvent> {
    let mut batch = Vec::new();
    let mut bytes = e.state.as_ref().map_or(0, String::len);
    let mut room = |batch: &Vec<pb::HistoryEvent>, m: &pb::HistoryEvent| {
        let size = prost::Message::encoded_len(m);
        if batch.len() >= MAX_OPERATIONS_PER_BATCH
            || (!batch.is_empty() && bytes + size > MAX_BATCH_BYTES)
        {
            return false;
        }
        bytes += size;
        true
    };
    match e.locked_by.clone() {
        None => {
            while let Some(m) = e.queue.front()
                && is_operation(m)
                && room(&batch, m)
            {
                batch.extend(e.queue.pop_front());
            }
        }
        Some(holder) => {
            let mut i = 0;
            while i < e.queue.len() {
                if !sent_by(&e.queue[i], &holder) {
                    i += 1;
                    continue;
                }
                if !is_operation(&e.queue[i]) || !room(&batch, &e.queue[i]) {
                    break;
                }
                batch.extend(e.queue.remove(i));
            }
        }
    }
    batch
}

impl Engine {
    /// Queues an operation for an entity (a client's signal), now or at `scheduledTime`.
    pub fn signal_entity(
        &mut self,
        hub: &str,
        req: pb::SignalEntityRequest,
    ) -> Result<(), EngineError> {
        entity_name(&req.instance_id)?;
        validate_name("entity operation name", &req.name)?;
        validate_payload("entity operation input", req.input.as_ref())?;
        if req.request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(EngineError::invalid_argument(format!(
                "request id is longer than {MAX_REQUEST_ID_BYTES} characters"
            )));
        }
        self.hub(hub)?;
        self.check_entity_room(hub)?;
        let request_id = if req.request_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            req.request_id
        };
        let at = req.scheduled_time.as_ref().map(from_ts);
        let signal = event(
            -1,
            EventType::EntityOperationSignaled(pb::EntityOperationSignaledEvent {
                request_id,
                operation: req.name,
                scheduled_time: req.scheduled_time,
                input: req.input,
                target_instance_id: Some(req.instance_id.clone()),
            }),
        );
        self.deliver(hub, &req.instance_id, signal, at);
        Ok(())
    }

    /// An operation arrives at an entity (a signal now, or a delayed one whose time came).
    pub(super) fn deliver_to_entity(&mut self, hub: &str, id: &str, msg: pb::HistoryEvent) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let entity = h
            .entities
            .entry(id.to_string())
            .or_insert_with(|| Entity::new(id.to_string()));
        entity.queue.push_back(msg);
        self.settle_entity(hub, id);
        self.persist_entity(hub, id);
    }

    /// Carries out the lock messages an entity can act on now (not while a worker holds it):
    /// unlocked, a lock request at the front of its queue locks it and goes on to the next
    /// entity of the set, or is granted; locked, the holder's unlock (its first message after
    /// the calls that ran) ends the lock. Then marks the entity ready if it has work to run.
    pub(super) fn settle_entity(&mut self, hub: &str, id: &str) {
        let mut outgoing = Vec::new();
        {
            let Some(h) = self.hubs.get_mut(hub) else {
                return;
            };
            let Some(entity) = h.entities.get_mut(id) else {
                return;
            };
            if entity.lease.is_some() {
                return;
            }
            loop {
                match entity.locked_by.clone() {
                    None => match entity.queue.front().and_then(|m| m.event_type.as_ref()) {
                        Some(EventType::EntityLockRequested(l)) => {
                            let l = l.clone();
                            entity.queue.pop_front();
                            let holder = l.parent_instance_id.clone().unwrap_or_default();
                            entity.locked_by = Some(holder.clone());
                            h.locks
                                .entry(holder.clone())
                                .or_default()
                                .insert(id.to_string());
                            let next = usize::try_from(l.position).unwrap_or(usize::MAX) + 1;
                            match l.lock_set.get(next).cloned() {
                                Some(target) => outgoing.push((
                                    target,
                                    event(
                                        -1,
                                        EventType::EntityLockRequested(
                                            pb::EntityLockRequestedEvent {
                                                position: l.position + 1,
                                                ..l
                                            },
                                        ),
                                    ),
                                )),
                                None => outgoing.push((
                                    holder,
                                    event(
                                        -1,
                                        EventType::EntityLockGranted(pb::EntityLockGrantedEvent {
                                            critical_section_id: l.critical_section_id,
                                        }),
                                    ),
                                )),
                            }
                        }
                        // An unlock of a lock this entity does not hold (the holder ended first).
                        Some(EventType::EntityUnlockSent(_)) => {
                            entity.queue.pop_front();
                        }
                        _ => break,
                    },
                    Some(holder) => {
                        let first = entity.queue.iter().position(|m| sent_by(m, &holder));
                        let unlock = first.filter(|&p| {
                            matches!(
                                entity.queue[p].event_type,
                                Some(EventType::EntityUnlockSent(_))
                            )
                        });
                        let Some(p) = unlock else { break };
                        entity.queue.remove(p);
                        entity.locked_by = None;
                        if let Some(held) = h.locks.get_mut(&holder) {
                            held.remove(id);
                            if held.is_empty() {
                                h.locks.remove(&holder);
                            }
                        }
                    }
                }
            }
            if runnable(entity) && h.entity_ready_set.insert(id.to_string()) {
                h.entity_ready.push_back(id.to_string());
            }
        }
        for (target, msg) in outgoing {
            self.deliver(hub, &target, msg, None);
        }
    }

    /// Releases the locks `holder` holds (it ended): each entity goes on with what waited.
    pub(super) fn release_locks_of(&mut self, hub: &str, holder: &str) -> usize {
        let Some(held) = self.hubs.get_mut(hub).and_then(|h| h.locks.remove(holder)) else {
            return 0;
        };
        let mut released = 0;
        for id in held {
            let Some(entity) = self.hubs.get_mut(hub).and_then(|h| h.entities.get_mut(&id)) else {
                continue;
            };
            if entity.locked_by.as_deref() == Some(holder) {
                entity.locked_by = None;
                released += 1;
                self.settle_entity(hub, &id);
                self.persist_entity(hub, &id);
            }
        }
        released
    }

    /// Releases the locks of instances that ended since the last call (see `persist`).
    pub(super) fn release_locks_of_ended(&mut self) {
        for (hub, holder) in std::mem::take(&mut self.ended_lock_holders) {
            self.release_locks_of(&hub, &holder);
        }
    }

    fn persist_entity(&mut self, hub: &str, id: &str) {
        self.account_entity(hub, id);
        if !self.record_instances {
            return;
        }
        let change = match self.hubs.get(hub).and_then(|h| h.entities.get(id)) {
            Some(e) => Change::PutEntity {
                hub: hub.to_string(),
                entity: e.row(),
            },
            None => Change::DeleteEntity {
                hub: hub.to_string(),
                id: id.to_string(),
            },
        };
        self.changes.push(change);
    }

    /// Counts the entity again into the hub's state estimate and backlog (or out, when it is
    /// gone; `clean_entity_storage` takes a removed entity's share out itself).
    fn account_entity(&mut self, hub: &str, id: &str) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let Some(e) = h.entities.get_mut(id) else {
            return;
        };
        let bytes = ENTITY_OVERHEAD_BYTES
            + e.id.len()
            + e.state.as_ref().map_or(0, String::len)
            + e.queue
                .iter()
                .chain(&e.dispatched)
                .map(event_bytes)
                .sum::<usize>();
        let operations = e.queue.len() + e.dispatched.len();
        let (old_bytes, old_operations) = std::mem::replace(&mut e.counted, (bytes, operations));
        h.entity_bytes = h.entity_bytes - old_bytes + bytes;
        h.entity_operations = h.entity_operations - old_operations + operations;
        self.state_bytes = self
            .state_bytes
            .saturating_sub(old_bytes)
            .saturating_add(bytes);
    }

    /// Refuses a new signal past the hub's backlog or the scheduler's state limit, as a start is
    /// refused: operations already queued still run, and callers retry.
    fn check_entity_room(&self, hub: &str) -> Result<(), EngineError> {
        let Some(h) = self.hubs.get(hub) else {
            return Ok(());
        };
        let l = &self.limits;
        if l.max_backlog > 0 && h.entity_operations >= l.max_backlog {
            return Err(EngineError::resource_exhausted(format!(
                "task hub '{hub}' has {} entity operations waiting, its limit (max_backlog); try again when workers catch up",
                h.entity_operations
            )));
        }
        if l.max_state_bytes > 0 && self.state_bytes >= l.max_state_bytes {
            return Err(EngineError::resource_exhausted(format!(
                "the scheduler holds {} MiB of state, its limit (max_state_bytes, {} MiB); try again when workers catch up",
                self.state_bytes >> 20,
                l.max_state_bytes >> 20
            )));
        }
        Ok(())
    }

    /// The entity's metadata, when it exists (has state), with its state if asked.
    pub fn get_entity(
        &mut self,
        hub: &str,
        req: &pb::GetEntityRequest,
    ) -> Result<pb::GetEntityResponse, EngineError> {
        entity_name(&req.instance_id)?;
        let entity = self
            .hub(hub)?
            .entities
            .get(&req.instance_id)
            .filter(|e| e.state.is_some());
        Ok(pb::GetEntityResponse {
            exists: entity.is_some(),
            entity: entity.map(|e| e.metadata(req.include_state)),
        })
    }

    /// A page of entities in id order: those with state, and with `includeTransient` also those
    /// without; by id prefix and last-modified time.
    pub fn query_entities(
        &mut self,
        hub: &str,
        q: &pb::EntityQuery,
    ) -> Result<pb::QueryEntitiesResponse, EngineError> {
        let h = self.hub(hub)?;
        let page = match q.page_size {
            Some(n) if n <= 0 => {
                return Err(EngineError::invalid_argument(
                    "entity query page size must be positive",
                ));
            }
            Some(n) => usize::try_from(n)
                .unwrap_or(MAX_ENTITY_PAGE)
                .min(MAX_ENTITY_PAGE),
            None => DEFAULT_ENTITY_PAGE,
        };
        let prefix = q.instance_id_starts_with.as_deref().unwrap_or("");
        let from = q.last_modified_from.as_ref().map(from_ts);
        let to = q.last_modified_to.as_ref().map(from_ts);
        let after = q
            .continuation_token
            .as_deref()
            .filter(|t| !t.is_empty() && *t != "0");
        let lower = match after {
            Some(t) => std::ops::Bound::Excluded(t.to_string()),
            None => std::ops::Bound::Included(prefix.to_string()),
        };
        let mut entities = Vec::new();
        let mut last = None;
        let mut bytes = 0;
        let mut more = false;
        for (id, e) in h.entities.range((lower, std::ops::Bound::Unbounded)) {
            if !id.starts_with(prefix) {
                break;
            }
            // Transient: no state (operations waiting, a lock held, or nothing at all yet
            // cleaned away).
            if e.state.is_none() && !q.include_transient {
                continue;
            }
            if from.is_some_and(|f| e.last_modified < f) || to.is_some_and(|t| e.last_modified > t)
            {
                continue;
            }
            // Bounded as it is built, as instance query pages are: past the byte cap the page
            // ends early, with a continuation token.
            if entities.len() == page || (bytes >= MAX_QUERY_ANSWER_BYTES && !entities.is_empty()) {
                more = true;
                break;
            }
            let m = e.metadata(q.include_state);
            bytes += prost::Message::encoded_len(&m);
            entities.push(m);
            last = Some(id.clone());
        }

        Ok(pb::QueryEntitiesResponse {
            entities,
            continuation_token: if more { last } else { None },
        })
    }

    /// Removes the entities that hold nothing (no state, nothing waiting or running, no lock),
    /// and releases locks whose holder is gone or finished.
    pub fn clean_entity_storage(
        &mut self,
        hub: &str,
        req: &pb::CleanEntityStorageRequest,
    ) -> Result<pb::CleanEntityStorageResponse, EngineError> {
        let mut orphaned = 0;
        if req.release_orphaned_locks {
            let h = self.hub(hub)?;
            let gone: Vec<String> = h
                .locks
                .keys()
                .filter(|holder| {
                    h.instances
                        .get(holder)
                        .is_none_or(|i| crate::model::is_terminal(i.row.status))
                })
                .cloned()
                .collect();
            for holder in gone {
                orphaned += self.release_locks_of(hub, &holder);
            }
        }
        let h = self.hub(hub)?;
        let mut removed = Vec::new();
        if req.remove_empty_entities {
            removed = h
                .entities
                .values()
                .filter(|e| e.is_empty())
                .map(|e| e.id.clone())
                .collect();
            let mut freed = 0;
            for id in &removed {
                if let Some(e) = h.entities.remove(id) {
                    h.entity_bytes -= e.counted.0;
                    h.entity_operations -= e.counted.1;
                    freed += e.counted.0;
                }
            }
            self.state_bytes = self.state_bytes.saturating_sub(freed);
        }
        for id in &removed {
            self.persist_entity(hub, id);
        }
        Ok(pb::CleanEntityStorageResponse {
            continuation_token: None,
            empty_entities_removed: i32::try_from(removed.len()).unwrap_or(i32::MAX),
            orphaned_locks_released: i32::try_from(orphaned).unwrap_or(i32::MAX),
        })
    }

    /// The next entity work item this stream may take: the operations queued for one entity
    /// that no worker holds, in arrival order.
    pub fn take_entity(
        &mut self,
        hub: &str,
        stream: u64,
        filter: &StreamFilter,
    ) -> Option<pb::WorkItem> {
        if self.no_entity_streams.contains(&stream) {
            return None;
        }
        let h = self.hubs.get_mut(hub)?;
        // One pass over the ready entities: those this stream does not take go back in order.
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(id) = h.entity_ready.pop_front() {
            let ready = h
                .entities
                .get(&id)
                .is_some_and(|e| e.lease.is_none() && runnable(e));
            if !ready {
                h.entity_ready_set.remove(&id);
                continue;
            }
            if filter.accepts_entity(entity_name(&id).unwrap_or("")) {
                found = Some(id);
                break;
            }
            skipped.push(id);
        }
        for id in skipped.into_iter().rev() {
            h.entity_ready.push_front(id);
        }
        let id = found?;
        h.entity_ready_set.remove(&id);
        let entity = h.entities.get_mut(&id)?;
        entity.dispatched = take_batch(entity);
        let token = uuid::Uuid::new_v4().simple().to_string();
        entity.lease = Some(token.clone());
        let request = pb::EntityRequest {
            instance_id: id.clone(),
            execution_id: String::new(),
            entity_state: entity.state.clone(),
            operation_requests: entity.dispatched.clone(),
        };
        self.insert_lease(
            token.clone(),
            Lease {
                hub: hub.to_string(),
                kind: LeaseKind::Entity { id },
                stream,
                partial: None,
            },
        );
        Some(pb::WorkItem {
            request: Some(pb::work_item::Request::EntityRequestV2(request)),
            completion_token: token,
        })
    }

    /// A worker abandoned an entity work item: the operations go back in front, and this
    /// stream is offered no more entity work (a worker that cannot run entities hands each one
    /// back; offering it the next would go round in circles).
    pub fn abandon_entity(&mut self, token: &str) -> Result<(), EngineError> {
        let stream = match self.leases.get(token) {
            Some(
                l @ Lease {
                    kind: LeaseKind::Entity { .. },
                    ..
                },
            ) => l.stream,
            Some(_) => {
                return Err(EngineError::invalid_argument(
                    "completion token does not belong to an entity work item",
                ));
            }
            None => {
                return Err(EngineError::not_found(
                    "unknown or expired completion token for this entity work item",
                ));
            }
        };
        self.no_entity_streams.insert(stream);
        self.release(token);
        Ok(())
    }

    /// Puts an entity's dispatched operations back in front of its queue (abandon, or its
    /// stream ended).
    pub(super) fn release_entity(&mut self, hub: &str, id: &str) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let Some(entity) = h.entities.get_mut(id) else {
            return;
        };
        entity.lease = None;
        for op in std::mem::take(&mut entity.dispatched).into_iter().rev() {
            entity.queue.push_front(op);
        }
        if runnable(entity) && h.entity_ready_set.insert(id.to_string()) {
            h.entity_ready.push_front(id.to_string());
        }
    }

    /// Applies a worker's result of an entity work item: the new state, the results of the
    /// operations it ran (to the orchestrations that called them), the signals and starts they
    /// made; operations it did not get to go back in front of the queue.
    pub fn complete_entity(
        &mut self,
        hub: &str,
        result: pb::EntityBatchResult,
    ) -> Result<(), EngineError> {
        validate_payload("entity state", result.entity_state.as_ref())?;
        for r in &result.results {
            if let Some(pb::operation_result::ResultType::Success(s)) = &r.result_type {
                validate_payload("entity operation result", s.result.as_ref())?;
            }
        }
        for a in &result.actions {
            match &a.operation_action_type {
                Some(pb::operation_action::OperationActionType::SendSignal(s)) => {
                    entity_name(&s.instance_id)?;
                    validate_name("entity operation name", &s.name)?;
                    validate_payload("entity signal input", s.input.as_ref())?;
                }
                Some(pb::operation_action::OperationActionType::StartNewOrchestration(s)) => {
                    validate_name("orchestration name", &s.name)?;
                    validate_payload("orchestration input", s.input.as_ref())?;
                    if !s.instance_id.is_empty() {
                        super::validate_instance_id(&s.instance_id)?;
                    }
                }
                None => {}
            }
        }
        let lease = self.take_lease(&result.completion_token, "this entity work item")?;
        let LeaseKind::Entity { id } = lease.kind.clone() else {
            self.insert_lease(result.completion_token.clone(), lease);
            return Err(EngineError::invalid_argument(
                "completion token does not belong to an entity work item",
            ));
        };
        if result.failure_details.is_some() {
            // The batch as a whole failed (the worker could not run it): nothing of it applies,
            // and its operations wait for the next dispatch.
            self.release_entity(hub, &id);
            self.persist_entity(hub, &id);
            return Ok(());
        }
        let Some(h) = self.hubs.get_mut(hub) else {
            return Err(EngineError::not_found(format!("Task hub not found: {hub}")));
        };
        let Some(entity) = h.entities.get_mut(&id) else {
            return Ok(());
        };
        let dispatched = std::mem::take(&mut entity.dispatched);
        let done = result.results.len().min(dispatched.len());
        for op in dispatched[done..].iter().rev() {
            entity.queue.push_front(op.clone());
        }
        entity.lease = None;
        entity.state = result.entity_state;
        entity.last_modified = Utc::now();
        self.settle_entity(hub, &id);
        // Results go to the orchestrations that called (none can, yet: they arrive with calls).
        for (info, r) in result
            .operation_infos
            .iter()
            .zip(&result.results)
            .take(done)
        {
            let Some(dest) = info.response_destination.as_ref() else {
                continue;
            };
            let msg = match &r.result_type {
                Some(pb::operation_result::ResultType::Success(s)) => event(
                    -1,
                    EventType::EntityOperationCompleted(pb::EntityOperationCompletedEvent {
                        request_id: info.request_id.clone(),
                        output: s.result.clone(),
                    }),
                ),
                Some(pb::operation_result::ResultType::Failure(f)) => event(
                    -1,
                    EventType::EntityOperationFailed(pb::EntityOperationFailedEvent {
                        request_id: info.request_id.clone(),
                        failure_details: f.failure_details.clone(),
                    }),
                ),
                None => continue,
            };
            self.deliver(hub, &dest.instance_id, msg, None);
        }
        for a in result.actions {
            match a.operation_action_type {
                Some(pb::operation_action::OperationActionType::SendSignal(s)) => {
                    let at = s.scheduled_time.as_ref().map(from_ts);
                    let signal = event(
                        -1,
                        EventType::EntityOperationSignaled(pb::EntityOperationSignaledEvent {
                            request_id: uuid::Uuid::new_v4().to_string(),
                            operation: s.name,
                            scheduled_time: s.scheduled_time,
                            input: s.input,
                            target_instance_id: Some(s.instance_id.clone()),
                        }),
                    );
                    self.deliver(hub, &s.instance_id, signal, at);
                }
                Some(pb::operation_action::OperationActionType::StartNewOrchestration(s)) => {
                    let instance_id = if s.instance_id.is_empty() {
                        uuid::Uuid::new_v4().simple().to_string()
                    } else {
                        s.instance_id
                    };
                    let live = self
                        .hubs
                        .get(hub)
                        .and_then(|h| h.instances.get(&instance_id))
                        .is_some_and(|i| !crate::model::is_terminal(i.row.status));
                    if live {
                        // As a client's start without a reuse policy: a live instance stays.
                        continue;
                    }
                    self.drop_instance(hub, &instance_id);
                    self.create_instance(
                        hub,
                        super::CreateSpec {
                            instance_id,
                            name: s.name,
                            version: s.version,
                            input: s.input,
                            tags: Default::default(),
                            parent: None,
                            parent_trace: s.parent_trace_context,
                            scheduled_start: s.scheduled_time.as_ref().map(from_ts),
                        },
                    );
                }
                None => {}
            }
        }
        self.persist_entity(hub, &id);
        Ok(())
    }

    /// Restores the entities the store loaded: each with operations waiting is runnable.
    pub fn restore_entities(&mut self, hub: &str, rows: Vec<crate::model::EntityRow>) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let mut ids = Vec::new();
        for row in rows {
            let entity = Entity::from_row(row);
            if let Some(holder) = &entity.locked_by {
                h.locks
                    .entry(holder.clone())
                    .or_default()
                    .insert(entity.id.clone());
            }
            ids.push(entity.id.clone());
            h.entities.insert(entity.id.clone(), entity);
        }
        for id in ids {
            self.settle_entity(hub, &id);
            self.account_entity(hub, &id);
        }
    }

    /// Entities waiting to be dispatched, and those out with a worker.
    pub fn entity_backlog(&self) -> (usize, usize) {
        let mut waiting = 0;
        let mut running = 0;
        for h in self.hubs.values() {
            for e in h.entities.values() {
                if e.lease.is_some() {
                    running += 1;
                } else if !e.queue.is_empty() {
                    waiting += 1;
                }
            }
        }
        (waiting, running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(e: &mut Engine, id: &str, op: &str) {
        e.signal_entity(
            "h",
            pb::SignalEntityRequest {
                instance_id: id.into(),
                name: op.into(),
                ..Default::default()
            },
        )
        .expect("signal");
    }

    fn operations(item: &pb::WorkItem) -> Vec<String> {
        let Some(pb::work_item::Request::EntityRequestV2(r)) = &item.request else {
            panic!("not an entity work item: {item:?}");
        };
        r.operation_requests
            .iter()
            .map(|e| match &e.event_type {
                Some(EventType::EntityOperationSignaled(s)) => s.operation.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn one_batch_at_a_time_in_order_and_a_stream_that_hands_one_back_gets_no_more() {
        let mut e = Engine::new(&["h".to_string()]);
        let any = StreamFilter::default();
        signal(&mut e, "@c@k", "a");
        signal(&mut e, "@c@k", "b");
        let first = e.take_entity("h", 1, &any).expect("work");
        assert_eq!(operations(&first), ["a", "b"]);
        // Held: nothing more for this entity until it completes, even with more queued.
        signal(&mut e, "@c@k", "c");
        assert!(e.take_entity("h", 2, &any).is_none());
        // Stream 1 cannot run entities: it hands the batch back, and is offered no more.
        e.abandon_entity(&first.completion_token).expect("abandon");
        assert!(e.take_entity("h", 1, &any).is_none());
        let again = e
            .take_entity("h", 2, &any)
            .expect("work for another stream");
        assert_eq!(operations(&again), ["a", "b", "c"]);
        // A result for the first two only: the third goes back in front.
        e.complete_entity(
            "h",
            pb::EntityBatchResult {
                results: vec![pb::OperationResult::default(); 2],
                entity_state: Some("2".into()),
                completion_token: again.completion_token.clone(),
                ..Default::default()
            },
        )
        .expect("complete");
        let rest = e.take_entity("h", 2, &any).expect("the rest");
        assert_eq!(operations(&rest), ["c"]);
        // The stale token of the first dispatch changes nothing.
        assert!(matches!(
            e.complete_entity(
                "h",
                pb::EntityBatchResult {
                    completion_token: first.completion_token,
                    ..Default::default()
                }
            ),
            Err(EngineError::NotFound(_))
        ));
        let got = e
            .get_entity(
                "h",
                &pb::GetEntityRequest {
                    instance_id: "@c@k".into(),
                    include_state: true,
                },
            )
            .expect("get");
        assert_eq!(
            got.entity.and_then(|m| m.serialized_state),
            Some("2".into())
        );
    }

    #[test]
    fn signals_past_the_backlog_or_the_state_limit_are_refused_and_room_comes_back() {
        let mut e = Engine::new(&["h".to_string()]).with_limits(super::super::Limits {
            max_backlog: 3,
            ..Default::default()
        });
        let any = StreamFilter::default();
        for _ in 0..3 {
            signal(&mut e, "@c@k", "add");
        }
        let refused = e.signal_entity(
            "h",
            pb::SignalEntityRequest {
                instance_id: "@c@other".into(),
                name: "add".into(),
                ..Default::default()
            },
        );
        assert!(
            matches!(&refused, Err(EngineError::ResourceExhausted(m)) if m.contains("max_backlog")),
            "{refused:?}"
        );
        // Run them: the backlog empties and signals are taken again.
        let item = e.take_entity("h", 1, &any).expect("work");
        e.complete_entity(
            "h",
            pb::EntityBatchResult {
                results: vec![pb::OperationResult::default(); 3],
                entity_state: Some("3".into()),
                completion_token: item.completion_token,
                ..Default::default()
            },
        )
        .expect("complete");
        signal(&mut e, "@c@other", "add");

        // The state limit: big inputs fill it.
        let mut e = Engine::new(&["h".to_string()]).with_limits(super::super::Limits {
            max_state_bytes: 100_000,
            ..Default::default()
        });
        let big = |n: usize| pb::SignalEntityRequest {
            instance_id: format!("@c@{n}"),
            name: "set".into(),
            input: Some(format!("\"{}\"", "x".repeat(30_000))),
            ..Default::default()
        };
        let accepted = (0..10)
            .take_while(|n| e.signal_entity("h", big(*n)).is_ok())
            .count();
        assert!(
            (3..=4).contains(&accepted),
            "{accepted} signals of 30 KB under 100 KB"
        );
        assert!(e.state_bytes() >= 100_000);
    }

    #[test]
    fn a_batch_of_large_operations_stays_under_the_byte_cap() {
        let mut e = Engine::new(&["h".to_string()]);
        for _ in 0..10 {
            e.signal_entity(
                "h",
                pb::SignalEntityRequest {
                    instance_id: "@c@k".into(),
                    name: "set".into(),
                    input: Some(format!("\"{}\"", "x".repeat(1_000_000))),
                    ..Default::default()
                },
            )
            .expect("signal");
        }
        let item = e
            .take_entity("h", 1, &StreamFilter::default())
            .expect("work");
        let ops = operations(&item).len();
        assert!(
            (1..=4).contains(&ops),
            "{ops} operations of 1 MB in one work item"
        );
        assert!(prost::Message::encoded_len(&item) < 5 * 1024 * 1024);
    }

    #[test]
    fn an_entity_page_ends_at_the_byte_cap_with_a_token() {
        let mut e = Engine::new(&["h".to_string()]);
        let any = StreamFilter::default();
        for i in 0..6 {
            signal(&mut e, &format!("@c@{i}"), "set");
        }
        while let Some(item) = e.take_entity("h", 1, &any) {
            e.complete_entity(
                "h",
                pb::EntityBatchResult {
                    results: vec![pb::OperationResult::default()],
                    entity_state: Some(format!("\"{}\"", "x".repeat(1_000_000))),
                    completion_token: item.completion_token,
                    ..Default::default()
                },
            )
            .expect("complete");
        }
        let mut query = pb::EntityQuery {
            include_state: true,
            ..Default::default()
        };
        let mut seen = 0;
        let mut pages = 0;
        loop {
            let page = e.query_entities("h", &query).expect("query");
            let bytes: usize = page.entities.iter().map(prost::Message::encoded_len).sum();
            assert!(bytes < 6 * 1024 * 1024, "a page of {bytes} bytes");
            seen += page.entities.len();
            pages += 1;
            match page.continuation_token {
                Some(t) => query.continuation_token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, 6);
        assert!(pages >= 2, "six 1 MB states in {pages} page(s)");
    }

    #[test]
    fn entity_filters_take_only_their_names() {
        let mut e = Engine::new(&["h".to_string()]);
        signal(&mut e, "@alpha@1", "x");
        signal(&mut e, "@beta@1", "x");
        let only_beta = StreamFilter::from_request(Some(&pb::WorkItemFilters {
            entities: vec![pb::EntityFilter {
                name: "beta".into(),
            }],
            ..Default::default()
        }));
        let item = e.take_entity("h", 1, &only_beta).expect("beta");
        let Some(pb::work_item::Request::EntityRequestV2(r)) = item.request else {
            panic!("entity work item");
        };
        assert_eq!(r.instance_id, "@beta@1");
        assert!(e.take_entity("h", 1, &only_beta).is_none());
        // Alpha waited in its place for a stream that takes it.
        assert!(e.take_entity("h", 2, &StreamFilter::default()).is_some());
    }

    #[test]
    fn entity_ids_are_at_name_at_key_with_a_lower_case_name() {
        assert_eq!(entity_name("@counter@a"), Ok("counter"));
        assert_eq!(entity_name("@counter@"), Ok("counter"));
        for bad in [
            "counter@a",
            "@counter",
            "@@a",
            "@Counter@a",
            "@c\u{7f}@a",
            "",
        ] {
            assert!(
                matches!(entity_name(bad), Err(EngineError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let long = format!("@n@{}", "k".repeat(MAX_ENTITY_ID_BYTES));
        assert!(entity_name(&long).is_err());
    }
}
