//! Entity work items: dispatch (one batch per entity at a time), abandon, completion.

use chrono::Utc;
use durabletask_proto as pb;
use pb::history_event::EventType;

use super::{
    MAX_BATCH_BYTES, MAX_OPERATIONS_PER_BATCH, entity_name, is_operation, runnable, sent_by,
};
use crate::engine::{
    Engine, EngineError, Lease, LeaseKind, StreamFilter, validate_name, validate_payload,
};
use crate::model::{Entity, event, from_ts};

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
    pub(in crate::engine) fn release_entity(&mut self, hub: &str, id: &str) {
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
                        crate::engine::validate_instance_id(&s.instance_id)?;
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
                        crate::engine::CreateSpec {
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
}
