//! The end of an orchestration episode, in two steps:
//! - [`plan_episode`] applies the worker's actions to the instance alone: its history, status,
//!   inbox and execution (continue-as-new, rewind), and returns what the rest of the engine must
//!   do. It touches no queue, no store and no other instance, so it is tested from canned
//!   histories (`tests` below);
//! - `complete_orchestration` checks the completion (token, chunks), runs the plan, and commits
//!   its outcome: queues activities, creates children, delivers messages, persists.

use super::*;

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
    let instance_id = instance_id.to_string();
    inst.lease = None;
    // A worker answered: the episode is not poison.
    inst.row.lost_dispatches = 0;
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
        inst.row.trace = Some(Box::new(tc));
    }
    let execution_id = inst.row.execution_id.clone();
    let parent = inst.row.parent.clone();

    let mut outgoing: Vec<(String, pb::HistoryEvent, Option<DateTime<Utc>>)> = Vec::new();
    let mut new_activities: Vec<pb::ActivityRequest> = Vec::new();
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
                    dispatch_count: 0,
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
                if c.orchestration_status == status_i32(pb::OrchestrationStatus::ContinuedAsNew) {
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
                Some(EventType::SubOrchestrationInstanceCompleted(c)) => Some(c.task_scheduled_id),
                _ => None,
            })
            .collect();
        let execution_id = inst.row.execution_id.clone();
        rewind_children = history
            .iter()
            .filter_map(|e| match &e.event_type {
                Some(EventType::SubOrchestrationInstanceCreated(c))
                    if !completed.contains(&e.event_id) =>
                {
                    Some(CreateSpec {
                        instance_id: c.instance_id.clone(),
                        name: c.name.clone(),
                        version: c.version.clone(),
                        input: c.input.clone(),
                        tags: c.tags.clone(),
                        parent: Some(pb::ParentInstanceInfo {
                            task_scheduled_id: e.event_id,
                            name: Some(inst.row.name.clone()),
                            version: inst.row.version.clone(),
                            orchestration_instance: Some(pb::OrchestrationInstance {
                                instance_id: instance_id.clone(),
                                execution_id: Some(execution_id.clone()),
                            }),
                        }),
                        parent_trace: c.parent_trace_context.clone(),
                        scheduled_start: None,
                    })
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
        inst.row.failure = failure.clone().map(Box::new);
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
    EpisodeOutcome {
        activities: new_activities
            .into_iter()
            .map(|req| (activity_key(&instance_id, &execution_id, req.task_id), req))
            .collect(),
        children,
        messages: outgoing,
        terminate_children,
        rewind_children,
    }
}

#[cfg(test)]
mod tests;
