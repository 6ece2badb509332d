//! Leases and dispatch: handing work items to streams, taking them back (abandon; a stream that
//! ended is `lost.rs`), chunked completions, and activity completions.
//!
//! A lease belongs to the stream it was dispatched on and lasts as long as that stream, however
//! long the work takes, as on DTS: it comes back only on abandon, or when the stream ends (the
//! worker stopped, its connection broke, or it stopped answering the server's HTTP/2 pings, see
//! `lease_seconds`). There is no clock in it, so a clock step cannot expire anything.

use durabletask_proto as pb;
use pb::history_event::EventType;

use super::{
    Engine, EngineError, Lease, LeaseKind, MAX_CHUNKED_COMPLETION_BYTES, MAX_EVENTS_PER_EPISODE,
    PartialCompletion, StreamFilter, Verdict, execution_started, exemplar, is_orchestrator_started,
    mark_ready, owner_of, undispatched, validate_failure, validate_payload,
};
use crate::model::{Change, event};

impl Engine {
    pub(super) fn count_lease(&mut self, stream: u64, kind: &LeaseKind, delta: isize) {
        let slot = match kind {
            LeaseKind::Orchestration { .. } => &mut self.stream_counts.entry(stream).or_default().0,
            LeaseKind::Activity { .. } => &mut self.stream_counts.entry(stream).or_default().1,
            LeaseKind::Entity { .. } => self.entity_counts.entry(stream).or_default(),
        };
        *slot = slot.saturating_add_signed(delta);
    }

    pub(super) fn insert_lease(&mut self, token: String, lease: Lease) {
        self.count_lease(lease.stream, &lease.kind, 1);
        self.leases.insert(token, lease);
    }

    pub(super) fn remove_lease(&mut self, token: &str) -> Option<Lease> {
        let lease = self.leases.remove(token)?;
        self.count_lease(lease.stream, &lease.kind, -1);
        Some(lease)
    }

    pub(super) fn take_lease(&mut self, token: &str, expect: &str) -> Result<Lease, EngineError> {
        let lease = self.remove_lease(token).ok_or_else(|| {
            EngineError::not_found(format!(
                "unknown or expired completion token for {expect}; the work item was abandoned or redelivered"
            ))
        })?;
        Ok(lease)
    }

    /// Returns the work item behind `token` to the front of its queue (abandon, or its stream
    /// ended).
    pub fn release(&mut self, token: &str) -> bool {
        let Some(lease) = self.remove_lease(token) else {
            return false;
        };
        let Some(h) = self.hubs.get_mut(&lease.hub) else {
            return false;
        };
        match lease.kind {
            LeaseKind::Orchestration { instance_id } => {
                if let Some(inst) = h.instances.get_mut(&instance_id) {
                    inst.lease = None;
                    // Put the messages back in front, without the OrchestratorStarted we added.
                    let dispatched = std::mem::take(&mut inst.dispatched);
                    let events = undispatched(&dispatched).to_vec();
                    for e in events.into_iter().rev() {
                        inst.inbox.push_front(e);
                    }
                    if !inst.inbox.is_empty() && mark_ready(&mut h.ready_set, instance_id.clone()) {
                        h.ready.push_front(owner_of(&inst.row.tags), instance_id);
                    }
                }
            }
            LeaseKind::Activity { key } => {
                if let Some(item) = h.activities.get_mut(&key) {
                    item.lease = None;
                    item.queued = std::time::Instant::now();
                    h.activity_order.push_front(&item.owner, key);
                }
            }
            LeaseKind::Entity { id } => self.release_entity(&lease.hub, &id),
        }
        true
    }

    pub fn in_flight(&self, stream: u64) -> (usize, usize) {
        self.stream_counts.get(&stream).copied().unwrap_or_default()
    }

    /// Entity work items the stream holds.
    pub fn entities_in_flight(&self, stream: u64) -> usize {
        self.entity_counts.get(&stream).copied().unwrap_or_default()
    }

    pub fn forget_stream(&mut self, stream: u64) {
        self.stream_counts.remove(&stream);
        self.entity_counts.remove(&stream);
        self.no_entity_streams.remove(&stream);
    }

    pub fn complete_activity(
        &mut self,
        hub: &str,
        resp: pb::ActivityResponse,
    ) -> Result<(), EngineError> {
        validate_payload("activity result", resp.result.as_ref())?;
        validate_failure("activity failure details", resp.failure_details.as_ref())?;
        let lease = self.take_lease(&resp.completion_token, "this activity")?;
        let LeaseKind::Activity { key } = lease.kind else {
            self.insert_lease(resp.completion_token.clone(), lease);
            return Err(EngineError::invalid_argument(
                "completion token belongs to an orchestration work item",
            ));
        };
        let Some(h) = self.hubs.get_mut(hub) else {
            return Err(EngineError::not_found(format!("Task hub not found: {hub}")));
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

    /// Takes the next runnable orchestration for a stream, leasing it.
    /// The next orchestration work item this stream may take, with how long it waited.
    pub fn take_orchestration(
        &mut self,
        hub: &str,
        stream: u64,
        filter: &StreamFilter,
    ) -> Option<(pb::WorkItem, Option<std::time::Duration>)> {
        let h = self.hubs.get_mut(hub)?;
        let (instances, ready_set) = (&h.instances, &mut h.ready_set);
        let found = h.ready.take(|id| match instances.get(id) {
            Some(inst) if inst.lease.is_none() && !inst.inbox.is_empty() => {
                if filter.accepts_orchestration(&inst.row.name, inst.row.version.as_deref()) {
                    Verdict::Take
                } else {
                    Verdict::Skip
                }
            }
            _ => {
                ready_set.remove(id);
                Verdict::Drop
            }
        });
        let found_waited = found
            .as_ref()
            .and_then(|id| h.ready_set.remove(id))
            .map(|since| since.elapsed());
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
            orchestration_trace_context: inst.row.trace.as_deref().cloned(),
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
        let h = self.hubs.get_mut(hub)?;
        let (activities, instances) = (&h.activities, &h.instances);
        let found = h.activity_order.take(|key| match activities.get(key) {
            Some(item) if item.lease.is_none() => {
                let orchestration_version = || {
                    let id = &item.request.orchestration_instance.as_ref()?.instance_id;
                    instances.get(id)?.row.version.as_deref()
                };
                if filter.accepts_activity(
                    &item.request.name,
                    item.request.version.as_deref(),
                    orchestration_version,
                ) {
                    Verdict::Take
                } else {
                    Verdict::Skip
                }
            }
            _ => Verdict::Drop,
        });
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
        let mut request = item.request.clone();
        // On the wire: which dispatch this is (the stored count is of the lost ones).
        request.dispatch_count = request.dispatch_count.saturating_add(1);
        self.insert_lease(
            token.clone(),
            Lease {
                hub: hub.to_string(),
                kind: LeaseKind::Activity { key },
                stream,
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
    pub(super) fn add_partial_chunk(
        &mut self,
        resp: pb::OrchestratorResponse,
    ) -> Result<(), EngineError> {
        let lease = self.leases.get_mut(&resp.completion_token).ok_or_else(|| {
            EngineError::not_found(
                "unknown or expired completion token for this orchestration; the work item was abandoned or redelivered",
            )
        })?;
        let LeaseKind::Orchestration { instance_id } = &lease.kind else {
            return Err(EngineError::invalid_argument(
                "completion token belongs to an activity work item",
            ));
        };
        if !resp.instance_id.is_empty() && &resp.instance_id != instance_id {
            return Err(EngineError::invalid_argument(format!(
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
            return Err(EngineError::invalid_argument(format!(
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
            return Err(EngineError::resource_exhausted(format!(
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
}
