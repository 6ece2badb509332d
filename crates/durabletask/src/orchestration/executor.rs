//! The replay executor: runs orchestrator code over `pastEvents` then `newEvents` and returns the
//! actions that are new.
//!
//! Strictness is the point. Every command-type history event (`TaskScheduled`, `TimerCreated`,
//! `SubOrchestrationInstanceCreated`, `EventSent`) must match, by id, kind and name, an action
//! the code emitted during this replay. Anything else means the code changed under a running
//! instance, and the orchestration fails with a [`NonDeterminismError`] instead of silently
//! computing something different.
//!
//! The orchestrator future is polled with a no-op waker after every event that can change its
//! state: all progress comes from history, so there is nothing to wake.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use durabletask_proto as pb;
use futures::future::LocalBoxFuture;
use pb::history_event::EventType;
use pb::orchestrator_action::OrchestratorActionType as Action;
use pb::send_entity_message_action::EntityMessageType as M;

use crate::orchestration::context::{OrchestrationContext, State};
use crate::types::{FailureDetails, TraceContext, from_timestamp, to_timestamp};

/// The type-erased orchestrator: takes the context and the JSON input, returns the JSON output.
pub type OrchestratorFn = dyn Fn(
        OrchestrationContext,
        Option<String>,
    ) -> LocalBoxFuture<'static, Result<Option<String>, FailureDetails>>
    + Send
    + Sync;

/// History and code disagree: the orchestrator code is not the code that produced the history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "non-deterministic orchestration: history has {history} at sequence {action_id}, but the code {code}"
)]
pub struct NonDeterminismError {
    pub action_id: i32,
    /// What the history recorded, e.g. `TaskScheduled 'charge'`.
    pub history: String,
    /// What the code did instead, e.g. `scheduled activity 'refund'`.
    pub code: String,
}

impl NonDeterminismError {
    pub const ERROR_TYPE: &'static str = "NonDeterminismError";

    fn to_failure(&self) -> FailureDetails {
        FailureDetails::new(Self::ERROR_TYPE, self.to_string()).non_retriable()
    }
}

/// How the episode ended for the orchestration.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionStatus {
    /// Still waiting on something.
    Running,
    Completed(Option<String>),
    Failed(FailureDetails),
    Terminated(Option<String>),
    ContinuedAsNew(Option<String>),
    /// History and code disagree; the orchestration is failed.
    NonDeterministic(NonDeterminismError),
}

/// What the worker sends back for one orchestration work item.
#[derive(Debug, Clone)]
pub struct ExecutionResult {
    pub actions: Vec<pb::OrchestratorAction>,
    pub custom_status: Option<String>,
    pub status: ExecutionStatus,
    pub trace_context: Option<pb::OrchestrationTraceContext>,
}

impl ExecutionResult {
    /// Builds the wire response, echoing the dispatch's completion token.
    pub fn into_response(
        self,
        instance_id: &str,
        completion_token: String,
    ) -> pb::OrchestratorResponse {
        #[allow(deprecated)]
        pb::OrchestratorResponse {
            instance_id: instance_id.to_string(),
            actions: self.actions,
            custom_status: self.custom_status,
            completion_token,
            num_events_processed: None,
            orchestration_trace_context: self.trace_context,
            requires_history: false,
            is_partial: false,
            chunk_index: None,
        }
    }
}

enum Finished {
    Output(Result<Option<String>, FailureDetails>),
    Terminated(Option<String>),
    NonDeterministic(NonDeterminismError),
}

struct Run<'a> {
    state: Rc<RefCell<State>>,
    orchestrator: &'a OrchestratorFn,
    future: Option<LocalBoxFuture<'static, Result<Option<String>, FailureDetails>>>,
    finished: Option<Finished>,
    suspended: bool,
    held_while_suspended: VecDeque<pb::HistoryEvent>,
    started: bool,
}

/// Replays one orchestration work item.
pub fn execute(
    orchestrator: &OrchestratorFn,
    request: &pb::OrchestratorRequest,
) -> ExecutionResult {
    if let Some(rewind) = rewind(request) {
        return rewind;
    }
    let state = Rc::new(RefCell::new(State::new(
        request.instance_id.clone(),
        request.execution_id.clone(),
    )));
    let mut run = Run {
        state: state.clone(),
        orchestrator,
        future: None,
        finished: None,
        suspended: false,
        held_while_suspended: VecDeque::new(),
        started: false,
    };
    let span_id = request
        .orchestration_trace_context
        .as_ref()
        .and_then(|t| t.span_id.clone())
        .filter(|s| s.len() == 16);
    let span_start = request
        .orchestration_trace_context
        .as_ref()
        .and_then(|t| t.span_start_time);
    let mut span = OrchestrationSpan {
        span_id,
        span_start,
    };

    for (replaying, events) in [(true, &request.past_events), (false, &request.new_events)] {
        state.borrow_mut().is_replaying = replaying;
        crate::otel::set_replaying(replaying);
        for event in events {
            if matches!(
                run.finished,
                Some(Finished::Terminated(_) | Finished::NonDeterministic(_))
            ) {
                break;
            }
            if let Some(EventType::ExecutionStarted(es)) = &event.event_type {
                span.attach(&state, es, event.timestamp.as_ref());
            }
            run.apply(event);
        }
    }
    if !run.started {
        let message = "history has no ExecutionStarted event".to_string();
        run.finished = Some(Finished::Output(Err(FailureDetails::new(
            "InvalidHistory",
            message,
        )
        .non_retriable())));
    }
    crate::otel::set_replaying(false);
    run.finish(span.to_proto())
}

/// Keeps one span id for the orchestration across episodes (`orchestrationTraceContext`).
struct OrchestrationSpan {
    span_id: Option<String>,
    span_start: Option<pb::Timestamp>,
}

impl OrchestrationSpan {
    fn attach(
        &mut self,
        state: &Rc<RefCell<State>>,
        es: &pb::ExecutionStartedEvent,
        ts: Option<&pb::Timestamp>,
    ) {
        let Some(parent) = es
            .parent_trace_context
            .as_ref()
            .and_then(TraceContext::from_proto)
        else {
            return;
        };
        let Some(trace_id) = parent.trace_id().map(str::to_string) else {
            return;
        };
        let span_id = self
            .span_id
            .get_or_insert_with(|| format!("{:016x}", rand::random::<u64>() | 1))
            .clone();
        if self.span_start.is_none() {
            self.span_start = ts
                .copied()
                .or_else(|| Some(to_timestamp(chrono::Utc::now())));
        }
        let flags = crate::TraceParent::parse(&parent.traceparent)
            .map_or("01", |tp| tp.flags)
            .to_string();
        state.borrow_mut().trace = Some(TraceContext {
            traceparent: format!("00-{trace_id}-{span_id}-{flags}"),
            tracestate: parent.tracestate.clone(),
        });
    }

    fn to_proto(&self) -> Option<pb::OrchestrationTraceContext> {
        self.span_id
            .as_ref()
            .map(|id| pb::OrchestrationTraceContext {
                span_id: Some(id.clone()),
                span_start_time: self.span_start,
            })
    }
}

impl Run<'_> {
    fn apply(&mut self, event: &pb::HistoryEvent) {
        let Some(kind) = &event.event_type else {
            return;
        };
        if self.suspended && is_held_while_suspended(kind) {
            self.held_while_suspended.push_back(event.clone());
            return;
        }
        match kind {
            EventType::OrchestratorStarted(_) => {
                if let Some(t) = event.timestamp.as_ref().and_then(from_timestamp) {
                    self.state.borrow_mut().current_time = t;
                }
            }
            EventType::ExecutionStarted(es) => self.start(es),
            EventType::TaskScheduled(ts) => self.confirm(
                event.event_id,
                |a| match a {
                    Action::ScheduleTask(s) if s.name == ts.name => Ok(()),
                    other => Err(describe(other)),
                },
                || format!("TaskScheduled '{}'", ts.name),
            ),
            EventType::TimerCreated(_) => self.confirm(
                event.event_id,
                |a| match a {
                    Action::CreateTimer(_) => Ok(()),
                    other => Err(describe(other)),
                },
                || "TimerCreated".to_string(),
            ),
            EventType::SubOrchestrationInstanceCreated(sc) => self.confirm(
                event.event_id,
                |a| match a {
                    Action::CreateSubOrchestration(c) if c.name == sc.name => Ok(()),
                    other => Err(describe(other)),
                },
                || format!("SubOrchestrationInstanceCreated '{}'", sc.name),
            ),
            EventType::EventSent(es) => self.confirm(
                event.event_id,
                |a| match a {
                    Action::SendEvent(s)
                        if s.name == es.name
                            && s.instance
                                .as_ref()
                                .is_some_and(|i| i.instance_id == es.instance_id) =>
                    {
                        Ok(())
                    }
                    other => Err(describe(other)),
                },
                || format!("EventSent '{}' to '{}'", es.name, es.instance_id),
            ),
            EventType::EntityOperationSignaled(sig) => self.confirm(
                event.event_id,
                |a| match a {
                    Action::SendEntityMessage(pb::SendEntityMessageAction {
                        entity_message_type: Some(M::EntityOperationSignaled(s)),
                    }) if s.operation == sig.operation
                        && s.target_instance_id == sig.target_instance_id =>
                    {
                        Ok(())
                    }
                    other => Err(describe(other)),
                },
                || {
                    format!(
                        "EntityOperationSignaled '{}' to '{}'",
                        sig.operation,
                        sig.target_instance_id.as_deref().unwrap_or("")
                    )
                },
            ),
            EventType::EntityOperationCalled(call) => self.confirm(
                event.event_id,
                |a| match a {
                    Action::SendEntityMessage(pb::SendEntityMessageAction {
                        entity_message_type: Some(M::EntityOperationCalled(c)),
                    }) if c.operation == call.operation
                        && c.target_instance_id == call.target_instance_id =>
                    {
                        Ok(())
                    }
                    other => Err(describe(other)),
                },
                || {
                    format!(
                        "EntityOperationCalled '{}' on '{}'",
                        call.operation,
                        call.target_instance_id.as_deref().unwrap_or("")
                    )
                },
            ),
            EventType::EntityLockRequested(lock) => self.confirm(
                event.event_id,
                |a| match a {
                    Action::SendEntityMessage(pb::SendEntityMessageAction {
                        entity_message_type: Some(M::EntityLockRequested(l)),
                    }) if l.lock_set == lock.lock_set => Ok(()),
                    other => Err(describe(other)),
                },
                || format!("EntityLockRequested {:?}", lock.lock_set),
            ),
            EventType::EntityUnlockSent(unlock) => self.confirm(
                event.event_id,
                |a| match a {
                    Action::SendEntityMessage(pb::SendEntityMessageAction {
                        entity_message_type: Some(M::EntityUnlockSent(u)),
                    }) if u.target_instance_id == unlock.target_instance_id => Ok(()),
                    other => Err(describe(other)),
                },
                || {
                    format!(
                        "EntityUnlockSent to '{}'",
                        unlock.target_instance_id.as_deref().unwrap_or("")
                    )
                },
            ),
            EventType::EntityLockGranted(g) => {
                let slot = self
                    .state
                    .borrow_mut()
                    .lock_grants
                    .remove(&g.critical_section_id);
                if let Some(slot) = slot {
                    slot.resolve(Ok(None));
                    self.poll();
                }
            }
            EventType::EntityOperationCompleted(c) => {
                self.resolve_entity_call(&c.request_id, Ok(c.output.clone()))
            }
            EventType::EntityOperationFailed(f) => {
                self.resolve_entity_call(&f.request_id, Err(failure(f.failure_details.as_ref())))
            }
            EventType::TaskCompleted(tc) => {
                self.resolve(tc.task_scheduled_id, Ok(tc.result.clone()))
            }
            EventType::TaskFailed(tf) => self.resolve(
                tf.task_scheduled_id,
                Err(failure(tf.failure_details.as_ref())),
            ),
            EventType::SubOrchestrationInstanceCompleted(c) => {
                self.resolve(c.task_scheduled_id, Ok(c.result.clone()))
            }
            EventType::SubOrchestrationInstanceFailed(f) => self.resolve(
                f.task_scheduled_id,
                Err(failure(f.failure_details.as_ref())),
            ),
            EventType::TimerFired(tf) => self.resolve(tf.timer_id, Ok(None)),
            EventType::EventRaised(er) => {
                self.state
                    .borrow_mut()
                    .deliver_event(&er.name, er.input.clone());
                self.poll();
            }
            EventType::ExecutionSuspended(_) => self.suspended = true,
            // A resume without a suspend is harmless; ignore it rather than failing the instance.
            EventType::ExecutionResumed(_) if self.suspended => {
                self.suspended = false;
                while let Some(held) = self.held_while_suspended.pop_front() {
                    self.apply(&held);
                    if self.suspended {
                        break;
                    }
                }
            }
            EventType::ExecutionTerminated(t)
                if !matches!(self.finished, Some(Finished::NonDeterministic(_))) =>
            {
                self.finished = Some(Finished::Terminated(t.input.clone()));
                self.future = None;
            }
            // Nothing for the code to observe: bookkeeping, entity and rewind events.
            _ => {}
        }
    }

    fn start(&mut self, es: &pb::ExecutionStartedEvent) {
        if self.started {
            return;
        }
        self.started = true;
        {
            let mut st = self.state.borrow_mut();
            st.name = es.name.clone();
            st.version = es.version.clone();
            if let Some(inst) = &es.orchestration_instance
                && st.execution_id.is_none()
            {
                st.execution_id = inst.execution_id.clone();
            }
        }
        let ctx = OrchestrationContext::new(self.state.clone());
        self.future = Some((self.orchestrator)(ctx, es.input.clone()));
        self.poll();
    }

    /// Pops the pending action `id` and checks it is what the history recorded.
    fn confirm(
        &mut self,
        id: i32,
        check: impl FnOnce(&Action) -> Result<(), String>,
        history: impl FnOnce() -> String,
    ) {
        if self
            .finished
            .as_ref()
            .is_some_and(|f| matches!(f, Finished::NonDeterministic(_)))
        {
            return;
        }
        let action = self.state.borrow_mut().pending.remove(&id);
        let mismatch = match action
            .as_ref()
            .and_then(|a| a.orchestrator_action_type.as_ref())
        {
            Some(a) => check(a).err(),
            None => Some(match &self.finished {
                Some(_) => "had already completed".to_string(),
                None => "did not schedule anything with that id".to_string(),
            }),
        };
        if let Some(code) = mismatch {
            let err = NonDeterminismError {
                action_id: id,
                history: history(),
                code,
            };
            self.finished = Some(Finished::NonDeterministic(err));
            self.future = None;
        }
    }

    fn resolve(&mut self, id: i32, outcome: Result<Option<String>, FailureDetails>) {
        let slot = self.state.borrow_mut().open.remove(&id);
        match slot {
            Some(slot) => {
                slot.resolve(outcome);
                self.poll();
            }
            // A duplicate or a result for work the code no longer awaits: nothing to do.
            None => tracing::debug!(
                task_id = id,
                "ignoring a result for an unknown or already completed task"
            ),
        }
    }

    fn resolve_entity_call(
        &mut self,
        request_id: &str,
        outcome: Result<Option<String>, FailureDetails>,
    ) {
        let slot = self.state.borrow_mut().entity_calls.remove(request_id);
        match slot {
            Some(slot) => {
                slot.resolve(outcome);
                self.poll();
            }
            None => tracing::debug!(
                request_id,
                "ignoring an entity result for an unknown or already completed call"
            ),
        }
    }

    fn poll(&mut self) {
        let Some(fut) = self.future.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        let outcome = match polled {
            Ok(Poll::Pending) => {
                if self.state.borrow().continue_as_new.is_some() {
                    Some(Ok(None))
                } else {
                    None
                }
            }
            Ok(Poll::Ready(result)) => Some(result),
            Err(panic) => Some(Err(FailureDetails::from_panic(panic.as_ref()))),
        };
        if let Some(out) = outcome {
            self.finished = Some(Finished::Output(out));
            self.future = None;
            self.state.borrow_mut().clear_waiters();
        }
    }

    fn finish(self, trace_context: Option<pb::OrchestrationTraceContext>) -> ExecutionResult {
        let mut st = self.state.borrow_mut();
        let custom_status = st.custom_status.clone();
        let (status, complete) = match self.finished {
            None => (ExecutionStatus::Running, None),
            Some(Finished::NonDeterministic(err)) => {
                let failure = err.to_failure();
                st.pending.clear();
                (
                    ExecutionStatus::NonDeterministic(err),
                    Some(failed(&failure)),
                )
            }
            Some(Finished::Terminated(output)) => {
                st.pending.clear();
                (
                    ExecutionStatus::Terminated(output.clone()),
                    Some(complete(
                        pb::OrchestrationStatus::Terminated,
                        output,
                        None,
                        vec![],
                        None,
                    )),
                )
            }
            Some(Finished::Output(Err(failure))) => (
                ExecutionStatus::Failed(failure.clone()),
                Some(failed(&failure)),
            ),
            Some(Finished::Output(Ok(output))) => match st.continue_as_new.take() {
                Some(can) => {
                    let carryover = if can.save_events {
                        st.buffered_events
                            .iter()
                            .map(|(name, input)| pb::HistoryEvent {
                                event_id: -1,
                                timestamp: Some(to_timestamp(st.current_time)),
                                event_type: Some(EventType::EventRaised(pb::EventRaisedEvent {
                                    name: name.clone(),
                                    input: input.clone(),
                                })),
                            })
                            .collect()
                    } else {
                        vec![]
                    };
                    (
                        ExecutionStatus::ContinuedAsNew(can.input.clone()),
                        Some(complete(
                            pb::OrchestrationStatus::ContinuedAsNew,
                            can.input,
                            None,
                            carryover,
                            can.new_version,
                        )),
                    )
                }
                None => (
                    ExecutionStatus::Completed(output.clone()),
                    Some(complete(
                        pb::OrchestrationStatus::Completed,
                        output,
                        None,
                        vec![],
                        None,
                    )),
                ),
            },
        };
        let mut actions: Vec<pb::OrchestratorAction> =
            std::mem::take(&mut st.pending).into_values().collect();
        if let Some(c) = complete {
            let id = st.next_id();
            actions.push(pb::OrchestratorAction {
                id,
                orchestrator_action_type: Some(Action::CompleteOrchestration(c)),
            });
        }
        ExecutionResult {
            actions,
            custom_status,
            status,
            trace_context,
        }
    }
}

/// A rewind of a failed instance: the scheduler sends `ExecutionRewound` while the history still
/// ends in `ExecutionCompleted`. The answer is the history without the failures (failed tasks and
/// their `TaskScheduled`, failed sub-orchestration results, the completion) under a new execution
/// id; replaying it re-runs exactly the work that failed.
fn rewind(request: &pb::OrchestratorRequest) -> Option<ExecutionResult> {
    let rewound = request
        .new_events
        .iter()
        .any(|e| matches!(e.event_type, Some(EventType::ExecutionRewound(_))));
    let completed = request
        .past_events
        .iter()
        .any(|e| matches!(e.event_type, Some(EventType::ExecutionCompleted(_))));
    if !(rewound && completed) {
        return None;
    }
    let all = || request.past_events.iter().chain(request.new_events.iter());
    let failed_tasks: std::collections::HashSet<i32> = all()
        .filter_map(|e| match &e.event_type {
            Some(EventType::TaskFailed(f)) => Some(f.task_scheduled_id),
            _ => None,
        })
        .collect();
    let execution_id = uuid::Uuid::new_v4().simple().to_string();
    let new_history = all()
        .filter(|e| match &e.event_type {
            Some(
                EventType::TaskFailed(_)
                | EventType::SubOrchestrationInstanceFailed(_)
                | EventType::ExecutionCompleted(_),
            ) => false,
            Some(EventType::TaskScheduled(_)) => !failed_tasks.contains(&e.event_id),
            _ => true,
        })
        .map(|e| {
            let mut e = e.clone();
            if let Some(EventType::ExecutionStarted(es)) = &mut e.event_type
                && let Some(inst) = &mut es.orchestration_instance
            {
                inst.execution_id = Some(execution_id.clone());
            }
            e
        })
        .collect();
    Some(ExecutionResult {
        actions: vec![pb::OrchestratorAction {
            id: -1,
            orchestrator_action_type: Some(Action::RewindOrchestration(
                pb::RewindOrchestrationAction { new_history },
            )),
        }],
        custom_status: None,
        status: ExecutionStatus::Running,
        trace_context: None,
    })
}

/// Events that wait while the instance is suspended; resume, terminate and bookkeeping do not.
fn is_held_while_suspended(kind: &EventType) -> bool {
    !matches!(
        kind,
        EventType::ExecutionResumed(_)
            | EventType::ExecutionTerminated(_)
            | EventType::OrchestratorStarted(_)
            | EventType::OrchestratorCompleted(_)
            | EventType::ExecutionStarted(_)
            // Command events record what the code already did; they never wait.
            | EventType::TaskScheduled(_)
            | EventType::TimerCreated(_)
            | EventType::SubOrchestrationInstanceCreated(_)
            | EventType::EventSent(_)
            | EventType::EntityOperationSignaled(_)
            | EventType::EntityOperationCalled(_)
            | EventType::EntityLockRequested(_)
            | EventType::EntityUnlockSent(_)
    )
}

fn describe(action: &Action) -> String {
    match action {
        Action::ScheduleTask(s) => format!("scheduled activity '{}'", s.name),
        Action::CreateTimer(_) => "created a timer".into(),
        Action::CreateSubOrchestration(c) => format!("started sub-orchestration '{}'", c.name),
        Action::SendEvent(e) => format!(
            "sent event '{}' to '{}'",
            e.name,
            e.instance
                .as_ref()
                .map(|i| i.instance_id.as_str())
                .unwrap_or("")
        ),
        Action::CompleteOrchestration(_) => "completed".into(),
        Action::TerminateOrchestration(t) => format!("terminated '{}'", t.instance_id),
        Action::SendEntityMessage(m) => match &m.entity_message_type {
            Some(M::EntityOperationSignaled(s)) => format!(
                "signalled entity '{}' ({})",
                s.target_instance_id.as_deref().unwrap_or(""),
                s.operation
            ),
            Some(M::EntityOperationCalled(c)) => format!(
                "called entity '{}' ({})",
                c.target_instance_id.as_deref().unwrap_or(""),
                c.operation
            ),
            Some(M::EntityLockRequested(l)) => format!("locked entities {:?}", l.lock_set),
            Some(M::EntityUnlockSent(u)) => format!(
                "unlocked entity '{}'",
                u.target_instance_id.as_deref().unwrap_or("")
            ),
            None => "sent an entity message".into(),
        },
        Action::RewindOrchestration(_) => "rewound".into(),
    }
}

fn failure(details: Option<&pb::TaskFailureDetails>) -> FailureDetails {
    details.map(FailureDetails::from_proto).unwrap_or_else(|| {
        FailureDetails::new("UnknownError", "the task failed without failure details")
    })
}

fn complete(
    status: pb::OrchestrationStatus,
    result: Option<String>,
    failure: Option<&FailureDetails>,
    carryover_events: Vec<pb::HistoryEvent>,
    new_version: Option<String>,
) -> pb::CompleteOrchestrationAction {
    pb::CompleteOrchestrationAction {
        orchestration_status: status as i32,
        result,
        details: None,
        new_version,
        carryover_events,
        failure_details: failure.map(FailureDetails::to_proto),
        tags: Default::default(),
    }
}

fn failed(f: &FailureDetails) -> pb::CompleteOrchestrationAction {
    complete(pb::OrchestrationStatus::Failed, None, Some(f), vec![], None)
}

/// A completion that fails the instance for a reason outside user code (unknown orchestrator,
/// broken history). Uses action id -1 like the other SDKs.
pub fn failure_response(
    instance_id: &str,
    completion_token: String,
    f: &FailureDetails,
) -> pb::OrchestratorResponse {
    ExecutionResult {
        actions: vec![pb::OrchestratorAction {
            id: -1,
            orchestrator_action_type: Some(Action::CompleteOrchestration(failed(f))),
        }],
        custom_status: None,
        status: ExecutionStatus::Failed(f.clone()),
        trace_context: None,
    }
    .into_response(instance_id, completion_token)
}
