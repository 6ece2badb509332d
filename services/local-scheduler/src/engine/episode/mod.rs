//! The end of an orchestration episode, in two steps:
//! - [`plan_episode`] applies the worker's actions to the instance alone: its history, status,
//!   inbox and execution (continue-as-new, rewind), and returns what the rest of the engine must
//!   do. It touches no queue, no store and no other instance, so it is tested from canned
//!   histories (`tests` below). `plan.rs` has one `Plan` method per action kind and per ending;
//!   `plan_episode` only dispatches to them;
//! - `complete_orchestration` checks the completion (token, chunks), runs the plan, and commits
//!   its outcome: queues activities, creates children, delivers messages, persists.

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use pb::history_event::EventType;
use pb::orchestrator_action::OrchestratorActionType as Action;

mod plan;

use super::{
    CreateSpec, Engine, EngineError, LeaseKind, mark_ready, owner_of, validate, validate_actions,
    validate_len, validate_payload,
};
use crate::model::{ActivityItem, Change, Instance, event, is_terminal, status_i32};
use plan::Plan;

/// What an episode asks of the rest of the engine once the instance itself is updated.
#[derive(Debug, Default)]
pub(super) struct EpisodeOutcome {
    /// Activities to queue, by key.
    pub activities: Vec<(String, pb::ActivityRequest)>,
    /// Sub-orchestrations to create.
    pub children: Vec<CreateSpec>,
    /// Messages to deliver: target instance, event, and when (timers).
    pub messages: Vec<(String, pb::HistoryEvent, Option<DateTime<Utc>>)>,
    /// Children to terminate (the instance ended after a recursive terminate).
    pub terminate_children: Vec<String>,
    /// Children to rewind with it (the instance was rewound): those it still waits for, each
    /// as it was created, so one that was purged meanwhile is created again.
    pub rewind_children: Vec<CreateSpec>,
}

impl Engine {
    pub fn complete_orchestration(
        &mut self,
        hub: &str,
        mut resp: pb::OrchestratorResponse,
    ) -> Result<(), EngineError> {
        // Everything is checked before the lease is taken, so bad input leaves the work item
        // leased (and redelivered on expiry) instead of half-applied.
        validate_payload("custom status", resp.custom_status.as_ref())?;
        validate_actions(&resp.actions)?;
        if let Some(t) = &resp.orchestration_trace_context {
            validate_len(
                "orchestration trace context (span id)",
                t.span_id.as_deref(),
                validate::MAX_SPAN_ID_BYTES,
            )?;
        }
        #[allow(deprecated)]
        if resp.is_partial {
            return self.add_partial_chunk(resp);
        }
        let lease = self.take_lease(&resp.completion_token, "this orchestration")?;
        let LeaseKind::Orchestration { instance_id } = lease.kind.clone() else {
            self.insert_lease(resp.completion_token.clone(), lease);
            return Err(EngineError::invalid_argument(
                "completion token belongs to an activity work item",
            ));
        };
        if !resp.instance_id.is_empty() && resp.instance_id != instance_id {
            self.insert_lease(resp.completion_token.clone(), lease);
            return Err(EngineError::invalid_argument(format!(
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
            .ok_or_else(|| EngineError::not_found(format!("Task hub not found: {hub}")))?;
        let Some(inst) = h.instances.get_mut(&instance_id) else {
            return Ok(());
        };
        let EpisodeOutcome {
            activities: new_activities,
            children,
            messages: mut outgoing,
            terminate_children,
            rewind_children,
        } = plan_episode(inst, &instance_id, resp, now);
        let runnable = !inst.inbox.is_empty() && !is_terminal(inst.row.status);
        let owner: std::sync::Arc<str> = owner_of(&inst.row.tags).into();
        if runnable && mark_ready(&mut h.ready_set, instance_id.clone()) {
            h.ready.push_back(&owner, instance_id.clone());
        }
        for (key, req) in new_activities {
            h.activity_order.push_back(&owner, key.clone());
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
                    queued: std::time::Instant::now(),
                    owner: owner.clone(),
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
            let status = self
                .hubs
                .get(hub)
                .and_then(|h| h.instances.get(&child.instance_id))
                .map(|c| c.row.status);
            match status {
                // Failed with the parent: rewound with it.
                Some(s) if s == status_i32(pb::OrchestrationStatus::Failed) => {
                    self.prepare_rewind(hub, &child.instance_id, Some("parent rewound".into()));
                }
                // Purged since: scheduled again, as DTS does, so the parent gets its answer.
                None => self.create_instance(hub, child),
                // Still running, or already done: its answer comes, or came, on its own.
                Some(_) => {}
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
}

/// Applies one episode's actions to `inst` (the instance the completion token named) and says
/// what else must happen. Pure with respect to the engine: only `inst` changes.
pub(super) fn plan_episode(
    inst: &mut Instance,
    instance_id: &str,
    resp: pb::OrchestratorResponse,
    now: DateTime<Utc>,
) -> EpisodeOutcome {
    let mut plan = Plan::begin(inst, instance_id, &resp, now);
    for action in resp.actions {
        let id = action.id;
        let Some(kind) = action.orchestrator_action_type else {
            continue;
        };
        match kind {
            Action::ScheduleTask(s) => plan.schedule_task(id, s),
            Action::CreateTimer(t) => plan.create_timer(id, t),
            Action::CreateSubOrchestration(c) => plan.create_sub_orchestration(id, c),
            Action::SendEvent(s) => plan.send_event(id, s),
            Action::TerminateOrchestration(t) => plan.terminate_other(t),
            Action::CompleteOrchestration(c) => plan.complete(id, c),
            Action::RewindOrchestration(r) => plan.rewound_history = Some(r.new_history),
            Action::SendEntityMessage(m) => plan.send_entity_message(id, m),
        }
    }
    plan.finish()
}

#[cfg(test)]
mod tests;
