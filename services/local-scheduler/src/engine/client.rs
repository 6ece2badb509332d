//! Client operations: start, read, raise events, terminate, rewind, suspend, resume, restart
//! and purge (queries are `query.rs`).

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use pb::history_event::EventType;

use super::stats::start_bytes;
use super::{
    CreateSpec, Engine, EngineError, MAX_EXECUTION_ID_BYTES, MAX_VERSION_BYTES, mark_ready,
    owner_of, validate_instance_id, validate_len, validate_name, validate_payload,
    validate_reuse_policy, validate_tags, validate_trace,
};
use crate::model::{Change, event, from_ts, is_terminal, status_i32};

impl Engine {
    pub fn start_instance(
        &mut self,
        hub: &str,
        req: pb::CreateInstanceRequest,
    ) -> Result<String, EngineError> {
        validate_instance_id(&req.instance_id)?;
        validate_name("orchestration name", &req.name)?;
        validate_len(
            "orchestration version",
            req.version.as_deref(),
            MAX_VERSION_BYTES,
        )?;
        validate_len(
            "execution id",
            req.execution_id.as_deref(),
            MAX_EXECUTION_ID_BYTES,
        )?;
        validate_payload("input", req.input.as_ref())?;
        validate_tags("tags", &req.tags)?;
        validate_trace("trace context", req.parent_trace_context.as_ref())?;
        validate_reuse_policy(req.orchestration_id_reuse_policy.as_ref())?;
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
                return Err(EngineError::already_exists(format!(
                    "an orchestration with instance id '{}' already exists and is {}",
                    req.instance_id,
                    pb::OrchestrationStatus::try_from(existing.row.status)
                        .map(|s| s.as_str_name())
                        .unwrap_or("?")
                )));
            }
            self.drop_instance(hub, &req.instance_id);
        } else {
            self.check_room(hub)?;
        }
        let id = req.instance_id.clone();
        // Counted at once, so that a burst of starts between two recounts meets the limit too.
        self.state_bytes = self.state_bytes.saturating_add(start_bytes(&req));
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

    pub fn get(
        &mut self,
        hub: &str,
        id: &str,
        with_payloads: bool,
    ) -> Result<Option<pb::OrchestrationState>, EngineError> {
        Ok(self
            .hub(hub)?
            .instances
            .get(id)
            .map(|i| i.state(with_payloads)))
    }

    pub(super) fn require_live(&mut self, hub: &str, id: &str) -> Result<(), EngineError> {
        let inst = self.hub(hub)?.instances.get(id).ok_or_else(|| {
            EngineError::not_found(format!("no orchestration instance with id '{id}'"))
        })?;
        if is_terminal(inst.row.status) {
            return Err(EngineError::failed_precondition(format!(
                "orchestration '{id}' has already completed"
            )));
        }
        Ok(())
    }

    pub fn raise_event(
        &mut self,
        hub: &str,
        req: pb::RaiseEventRequest,
    ) -> Result<(), EngineError> {
        validate_payload("event data", req.input.as_ref())?;
        validate_name("event name", &req.name)?;
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

    pub fn terminate(&mut self, hub: &str, req: pb::TerminateRequest) -> Result<(), EngineError> {
        validate_payload("output", req.output.as_ref())?;
        let exists = self
            .hub(hub)?
            .instances
            .get(&req.instance_id)
            .map(|i| i.row.status);
        match exists {
            None => {
                return Err(EngineError::not_found(format!(
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
    pub fn rewind(
        &mut self,
        hub: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        validate_payload("rewind reason", reason.as_ref())?;
        let status = self
            .hub(hub)?
            .instances
            .get(id)
            .map(|i| i.row.status)
            .ok_or_else(|| {
                EngineError::not_found(format!("no orchestration instance with id '{id}'"))
            })?;
        if status != status_i32(pb::OrchestrationStatus::Failed) {
            return Err(EngineError::failed_precondition(format!(
                "orchestration '{id}' is not in a failed state; only failed instances can be rewound"
            )));
        }
        self.prepare_rewind(hub, id, reason);
        Ok(())
    }

    pub(super) fn prepare_rewind(&mut self, hub: &str, id: &str, reason: Option<String>) {
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
            h.ready.push_back(owner_of(&inst.row.tags), id.to_string());
        }
        self.persist(hub, id);
    }

    /// Removes an instance's not-yet-visible messages (scheduled start, timers).
    pub(super) fn drop_pending_messages(&mut self, hub: &str, instance_id: &str) {
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

    pub fn suspend(
        &mut self,
        hub: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        validate_payload("suspend reason", reason.as_ref())?;
        self.require_live(hub, id)?;
        let msg = event(
            -1,
            EventType::ExecutionSuspended(pb::ExecutionSuspendedEvent { input: reason }),
        );
        self.deliver(hub, id, msg, None);
        Ok(())
    }

    pub fn resume(
        &mut self,
        hub: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        validate_payload("resume reason", reason.as_ref())?;
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

    pub fn restart(&mut self, hub: &str, id: &str, new_id: bool) -> Result<String, EngineError> {
        let inst = self.hub(hub)?.instances.get(id).cloned().ok_or_else(|| {
            EngineError::not_found(format!("no orchestration instance with id '{id}'"))
        })?;
        let target = if new_id {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            id.to_string()
        };
        if !new_id && !is_terminal(inst.row.status) {
            return Err(EngineError::failed_precondition(format!(
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
    pub fn purge_one(&mut self, hub: &str, id: &str, recursive: bool) -> Result<i32, EngineError> {
        let Some(inst) = self.hub(hub)?.instances.get(id).cloned() else {
            return Ok(0);
        };
        if !is_terminal(inst.row.status) {
            return Err(EngineError::failed_precondition(format!(
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
    ) -> Result<i32, EngineError> {
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
    // ------------------------------------------------------------ worker side
}
