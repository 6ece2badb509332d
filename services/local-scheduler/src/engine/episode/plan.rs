//! One episode's plan: the instance being updated and what its actions ask of the rest of the
//! engine. A method per action kind, a method per ending (rewound, continued as new, ended).

use std::collections::{HashSet, VecDeque};

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use pb::history_event::EventType;

use super::EpisodeOutcome;
use crate::engine::{CreateSpec, activity_key};
use crate::model::{Instance, event, from_ts, now_ts, status_i32};

/// An orchestration's end as its `CompleteOrchestration` action states it.
type Ending = (i32, Option<String>, Option<pb::TaskFailureDetails>);

pub(super) struct Plan<'a> {
    inst: &'a mut Instance,
    instance_id: String,
    /// The execution the episode ran in (before any continue-as-new or rewind).
    execution_id: String,
    now: DateTime<Utc>,
    activities: Vec<pb::ActivityRequest>,
    /// Messages to deliver: target instance, event, and when (timers).
    outgoing: Vec<(String, pb::HistoryEvent, Option<DateTime<Utc>>)>,
    children: Vec<CreateSpec>,
    /// The last of each ending the actions asked for; `finish` applies one, in this order of
    /// precedence: rewound, continued as new, ended.
    pub(super) rewound_history: Option<Vec<pb::HistoryEvent>>,
    continue_as_new: Option<pb::CompleteOrchestrationAction>,
    terminal: Option<Ending>,
}

impl<'a> Plan<'a> {
    /// Takes the episode's dispatched events into the history (their status changes included)
    /// and what the worker reported besides its actions (custom status, trace).
    pub(super) fn begin(
        inst: &'a mut Instance,
        instance_id: &str,
        resp: &pb::OrchestratorResponse,
        now: DateTime<Utc>,
    ) -> Self {
        inst.lease = None;
        // A worker answered: the episode is not poison.
        inst.row.lost_dispatches = 0;
        let dispatched = std::mem::take(&mut inst.dispatched);
        for e in &dispatched {
            let status = match &e.event_type {
                Some(EventType::ExecutionStarted(_) | EventType::ExecutionResumed(_)) => {
                    pb::OrchestrationStatus::Running
                }
                Some(EventType::ExecutionSuspended(_)) => pb::OrchestrationStatus::Suspended,
                _ => continue,
            };
            inst.row.status = status_i32(status);
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
        Self {
            inst,
            instance_id: instance_id.to_string(),
            execution_id,
            now,
            activities: Vec::new(),
            outgoing: Vec::new(),
            children: Vec::new(),
            rewound_history: None,
            continue_as_new: None,
            terminal: None,
        }
    }

    /// This instance and execution, as a parent or an activity's orchestration names it.
    fn this_instance(&self, execution_id: &str) -> pb::OrchestrationInstance {
        pb::OrchestrationInstance {
            instance_id: self.instance_id.clone(),
            execution_id: Some(execution_id.to_string()),
        }
    }

    fn parent_info(&self, task_scheduled_id: i32, execution_id: &str) -> pb::ParentInstanceInfo {
        pb::ParentInstanceInfo {
            task_scheduled_id,
            name: Some(self.inst.row.name.clone()),
            version: self.inst.row.version.clone(),
            orchestration_instance: Some(self.this_instance(execution_id)),
        }
    }

    pub(super) fn schedule_task(&mut self, id: i32, s: pb::ScheduleTaskAction) {
        self.inst.history.push(event(
            id,
            EventType::TaskScheduled(pb::TaskScheduledEvent {
                name: s.name.clone(),
                version: s.version.clone(),
                input: s.input.clone(),
                parent_trace_context: s.parent_trace_context.clone(),
                tags: s.tags.clone(),
            }),
        ));
        let orchestration_instance = Some(self.this_instance(&self.execution_id));
        self.activities.push(pb::ActivityRequest {
            name: s.name,
            version: s.version,
            input: s.input,
            orchestration_instance,
            task_id: id,
            parent_trace_context: s.parent_trace_context,
            tags: s.tags,
            dispatch_count: 0,
        });
    }

    /// A timer is a `TimerFired` message to this instance, delivered when it is due.
    pub(super) fn create_timer(&mut self, id: i32, t: pb::CreateTimerAction) {
        let fire_at = t.fire_at.unwrap_or_else(now_ts);
        self.inst.history.push(event(
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
        self.outgoing
            .push((self.instance_id.clone(), fired, Some(from_ts(&fire_at))));
    }

    pub(super) fn create_sub_orchestration(
        &mut self,
        id: i32,
        c: pb::CreateSubOrchestrationAction,
    ) {
        let child_id = if c.instance_id.is_empty() {
            format!("{}:{id:04x}", self.instance_id)
        } else {
            c.instance_id.clone()
        };
        self.inst.history.push(event(
            id,
            EventType::SubOrchestrationInstanceCreated(pb::SubOrchestrationInstanceCreatedEvent {
                instance_id: child_id.clone(),
                name: c.name.clone(),
                version: c.version.clone(),
                input: c.input.clone(),
                parent_trace_context: c.parent_trace_context.clone(),
                tags: c.tags.clone(),
            }),
        ));
        let parent = Some(self.parent_info(id, &self.execution_id));
        self.children.push(CreateSpec {
            instance_id: child_id,
            name: c.name,
            version: c.version,
            input: c.input,
            tags: c.tags,
            parent,
            parent_trace: c.parent_trace_context,
            scheduled_start: None,
        });
    }

    pub(super) fn send_event(&mut self, id: i32, s: pb::SendEventAction) {
        let target = s
            .instance
            .as_ref()
            .map(|i| i.instance_id.clone())
            .unwrap_or_default();
        self.inst.history.push(event(
            id,
            EventType::EventSent(pb::EventSentEvent {
                instance_id: target.clone(),
                name: s.name.clone(),
                input: s.data.clone(),
            }),
        ));
        let raised = event(
            -1,
            EventType::EventRaised(pb::EventRaisedEvent {
                name: s.name,
                input: s.data,
            }),
        );
        self.outgoing.push((target, raised, None));
    }

    /// A message to an entity, recorded under the action's id and sent: a signal (at its
    /// scheduled time), a call (naming this instance and execution for its result), a lock
    /// request (to the first entity of its set, which passes it on) or an unlock.
    pub(super) fn send_entity_message(&mut self, id: i32, m: pb::SendEntityMessageAction) {
        use pb::send_entity_message_action::EntityMessageType as M;
        match m.entity_message_type {
            Some(M::EntityOperationSignaled(s)) => {
                self.inst
                    .history
                    .push(event(id, EventType::EntityOperationSignaled(s.clone())));
                let Some(target) = s.target_instance_id.clone() else {
                    return;
                };
                let at = s.scheduled_time.as_ref().map(from_ts);
                self.outgoing
                    .push((target, event(-1, EventType::EntityOperationSignaled(s)), at));
            }
            Some(M::EntityOperationCalled(mut c)) => {
                c.parent_instance_id = Some(self.instance_id.clone());
                c.parent_execution_id = Some(self.execution_id.clone());
                self.inst
                    .history
                    .push(event(id, EventType::EntityOperationCalled(c.clone())));
                let Some(target) = c.target_instance_id.clone() else {
                    return;
                };
                self.outgoing
                    .push((target, event(-1, EventType::EntityOperationCalled(c)), None));
            }
            Some(M::EntityLockRequested(mut l)) => {
                l.parent_instance_id = Some(self.instance_id.clone());
                self.inst
                    .history
                    .push(event(id, EventType::EntityLockRequested(l.clone())));
                let first = usize::try_from(l.position).ok();
                let Some(target) = first.and_then(|p| l.lock_set.get(p)).cloned() else {
                    return;
                };
                self.outgoing
                    .push((target, event(-1, EventType::EntityLockRequested(l)), None));
            }
            Some(M::EntityUnlockSent(mut u)) => {
                u.parent_instance_id = Some(self.instance_id.clone());
                self.inst
                    .history
                    .push(event(id, EventType::EntityUnlockSent(u.clone())));
                let Some(target) = u.target_instance_id.clone() else {
                    return;
                };
                self.outgoing
                    .push((target, event(-1, EventType::EntityUnlockSent(u)), None));
            }
            None => {}
        }
    }

    /// Another instance terminated by this one.
    pub(super) fn terminate_other(&mut self, t: pb::TerminateOrchestrationAction) {
        let terminated = event(
            -1,
            EventType::ExecutionTerminated(pb::ExecutionTerminatedEvent {
                input: t.reason,
                recurse: t.recurse,
            }),
        );
        self.outgoing.push((t.instance_id, terminated, None));
    }

    pub(super) fn complete(&mut self, id: i32, c: pb::CompleteOrchestrationAction) {
        if c.orchestration_status == status_i32(pb::OrchestrationStatus::ContinuedAsNew) {
            self.continue_as_new = Some(c);
            return;
        }
        self.inst.history.push(event(
            id,
            EventType::ExecutionCompleted(pb::ExecutionCompletedEvent {
                orchestration_status: c.orchestration_status,
                result: c.result.clone(),
                failure_details: c.failure_details.clone(),
            }),
        ));
        self.terminal = Some((c.orchestration_status, c.result, c.failure_details));
    }

    /// Closes the episode and applies its ending, if it had one. No `OrchestratorCompleted` is
    /// recorded: DTS keeps `OrchestratorStarted` once per episode and that episode's events, and
    /// the SDKs need nothing more to replay.
    pub(super) fn finish(mut self) -> EpisodeOutcome {
        let mut terminate_children = Vec::new();
        let mut rewind_children = Vec::new();
        if let Some(history) = self.rewound_history.take() {
            rewind_children = self.rewind(history);
        } else if let Some(can) = self.continue_as_new.take() {
            self.continue_as_new(can);
        } else if let Some(ending) = self.terminal.take() {
            terminate_children = self.end(ending);
        }
        let Self {
            instance_id,
            execution_id,
            activities,
            outgoing,
            children,
            ..
        } = self;
        EpisodeOutcome {
            activities: activities
                .into_iter()
                .map(|req| (activity_key(&instance_id, &execution_id, req.task_id), req))
                .collect(),
            children,
            messages: outgoing,
            terminate_children,
            rewind_children,
        }
    }

    /// The worker rewrote the history without its failures: adopt it and run it again. Returns
    /// the children it still waits for, to be rewound (or created again) with it.
    fn rewind(&mut self, history: Vec<pb::HistoryEvent>) -> Vec<CreateSpec> {
        if let Some(exec) = history.iter().find_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(es)) => {
                es.orchestration_instance.as_ref()?.execution_id.clone()
            }
            _ => None,
        }) {
            self.inst.row.execution_id = exec;
        }
        let completed: HashSet<i32> = history
            .iter()
            .filter_map(|e| match &e.event_type {
                Some(EventType::SubOrchestrationInstanceCompleted(c)) => Some(c.task_scheduled_id),
                _ => None,
            })
            .collect();
        let execution_id = self.inst.row.execution_id.clone();
        let waited_for = history
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
                        parent: Some(self.parent_info(e.event_id, &execution_id)),
                        parent_trace: c.parent_trace_context.clone(),
                        scheduled_start: None,
                    })
                }
                _ => None,
            })
            .collect();
        let inst = &mut *self.inst;
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
        self.activities.clear();
        self.outgoing.clear();
        self.children.clear();
        waited_for
    }

    /// A fresh execution: history discarded, same parent and trace, new input, carried events
    /// first.
    fn continue_as_new(&mut self, can: pb::CompleteOrchestrationAction) {
        let new_execution = uuid::Uuid::new_v4().simple().to_string();
        let inst = &mut *self.inst;
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
            instance_id: self.instance_id.clone(),
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
        self.activities.clear();
        let me = &self.instance_id;
        self.outgoing.retain(|(target, _, _)| target != me);
    }

    /// The orchestration ended: its row says how, its parent is told. Returns the children to
    /// terminate (after a recursive terminate).
    fn end(&mut self, (status, result, failure): Ending) -> Vec<String> {
        let inst = &mut *self.inst;
        inst.row.status = status;
        inst.row.output = result.clone();
        inst.row.failure = failure.clone().map(Box::new);
        inst.row.completed = Some(self.now);
        inst.inbox.clear();
        let terminate_children = if inst.terminate_children {
            inst.children()
        } else {
            Vec::new()
        };
        if let Some(p) = inst.row.parent.as_deref() {
            let parent_id = p
                .orchestration_instance
                .as_ref()
                .map(|i| i.instance_id.clone())
                .unwrap_or_default();
            let told = if status == status_i32(pb::OrchestrationStatus::Completed) {
                EventType::SubOrchestrationInstanceCompleted(
                    pb::SubOrchestrationInstanceCompletedEvent {
                        task_scheduled_id: p.task_scheduled_id,
                        result,
                    },
                )
            } else {
                let f = failure.unwrap_or_else(|| pb::TaskFailureDetails {
                    error_type: "SubOrchestrationTerminated".into(),
                    error_message: format!(
                        "sub-orchestration '{}' ended as {}",
                        self.instance_id,
                        pb::OrchestrationStatus::try_from(status)
                            .map(|s| s.as_str_name())
                            .unwrap_or("?")
                    ),
                    ..Default::default()
                });
                EventType::SubOrchestrationInstanceFailed(pb::SubOrchestrationInstanceFailedEvent {
                    task_scheduled_id: p.task_scheduled_id,
                    failure_details: Some(f),
                })
            };
            self.outgoing.push((parent_id, event(-1, told), None));
        }
        terminate_children
    }
}
