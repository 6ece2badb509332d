//! What orchestrator code sees: [`OrchestrationContext`] and the durable futures it hands out.
//!
//! Orchestrations are replayed, so everything here is deterministic given the history: ids come
//! from a sequence counter, time from `OrchestratorStarted`, guids from a name-based UUID.
//! The context is deliberately `!Send` (`Rc`): an orchestration must not spawn threads or
//! tasks, and the compiler now says so.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use futures::future::LocalBoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::orchestration::retry::RetryPolicy;
use crate::types::{FailureDetails, TraceContext, to_timestamp};

/// Result delivered into a durable future: the JSON result, or the failure.
pub(crate) type Outcome = Result<Option<String>, FailureDetails>;

/// Where a result lands. The executor drives the root future itself, but combinators such as
/// `futures::join_all` (large sets) only re-poll children that were woken, so resolving wakes
/// whoever polled last.
#[derive(Default)]
pub(crate) struct Slot {
    value: RefCell<Option<Outcome>>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    pub(crate) fn resolve(&self, outcome: Outcome) {
        *self.value.borrow_mut() = Some(outcome);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn poll_take(&self, cx: &Context<'_>) -> Option<Outcome> {
        let v = self.value.borrow_mut().take();
        if v.is_none() {
            *self.waker.borrow_mut() = Some(cx.waker().clone());
        }
        v
    }
}

/// Why an awaited task did not give a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// The activity or sub-orchestration failed; `details` is its failure.
    #[error("{kind} '{name}' failed: {details}")]
    Failed {
        kind: &'static str,
        name: String,
        details: FailureDetails,
    },
    /// The result arrived but is not the type the orchestration asked for.
    #[error("result of {what} could not be deserialized: {message}")]
    Deserialize { what: String, message: String },
}

impl TaskError {
    /// The failure details of the underlying task, if it failed.
    pub fn failure(&self) -> Option<&FailureDetails> {
        match self {
            Self::Failed { details, .. } => Some(details),
            Self::Deserialize { .. } => None,
        }
    }

    pub(crate) fn to_failure_details(&self) -> FailureDetails {
        match self {
            Self::Failed { details, .. } => {
                FailureDetails::new("TaskFailedError", self.to_string()).with_inner(details.clone())
            }
            Self::Deserialize { .. } => {
                FailureDetails::new("DeserializationError", self.to_string())
            }
        }
    }
}

#[derive(Debug, Clone)]
enum TaskKind {
    Activity(String),
    SubOrchestration(String),
    Event(String),
    Entity(String),
}

impl TaskKind {
    fn describe(&self) -> (&'static str, &str) {
        match self {
            Self::Activity(n) => ("activity", n),
            Self::SubOrchestration(n) => ("sub-orchestration", n),
            Self::Event(n) => ("external event", n),
            Self::Entity(n) => ("entity operation", n),
        }
    }
}

/// A durable result: an activity, a sub-orchestration or an external event.
/// Scheduling happens when it is created; awaiting only reads the outcome.
#[must_use = "a durable task does nothing useful unless awaited"]
pub struct DurableTask<T> {
    slot: Rc<Slot>,
    kind: TaskKind,
    _out: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Future for DurableTask<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(outcome) = self.slot.poll_take(cx) else {
            return Poll::Pending;
        };
        let (kind, name) = self.kind.describe();
        Poll::Ready(match outcome {
            Ok(json) => decode(json.as_deref(), kind, name),
            Err(details) => Err(TaskError::Failed {
                kind,
                name: name.to_string(),
                details,
            }),
        })
    }
}

fn decode<T: DeserializeOwned>(json: Option<&str>, kind: &str, name: &str) -> Result<T, TaskError> {
    serde_json::from_str(json.unwrap_or("null")).map_err(|e| TaskError::Deserialize {
        what: format!("{kind} '{name}'"),
        message: e.to_string(),
    })
}

/// A durable timer. Completes when the scheduler fires it.
#[must_use = "a timer does nothing useful unless awaited"]
pub struct DurableTimer {
    slot: Rc<Slot>,
}

impl Future for DurableTimer {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.slot.poll_take(cx) {
            Some(_) => Poll::Ready(()),
            None => Poll::Pending,
        }
    }
}

pub(crate) struct ContinueAsNew {
    pub(crate) input: Option<String>,
    pub(crate) save_events: bool,
    pub(crate) new_version: Option<String>,
}

/// Replay state shared by the context (user side) and the executor (history side).
pub(crate) struct State {
    pub(crate) instance_id: String,
    pub(crate) execution_id: Option<String>,
    pub(crate) name: String,
    pub(crate) version: Option<String>,
    pub(crate) current_time: DateTime<Utc>,
    pub(crate) is_replaying: bool,
    next_sequence: i32,
    /// Actions emitted by the code and not yet confirmed by a history event, by id.
    pub(crate) pending: BTreeMap<i32, pb::OrchestratorAction>,
    /// Outstanding results, by the id of the action that scheduled them.
    pub(crate) open: HashMap<i32, Rc<Slot>>,
    /// Entity calls awaiting their result, by request id.
    pub(crate) entity_calls: HashMap<String, Rc<Slot>>,
    /// Lock requests awaiting their grant, by critical section id.
    pub(crate) lock_grants: HashMap<String, Rc<Slot>>,
    /// Waiting `wait_for_external_event` calls, by lower-cased event name, oldest first.
    waiters: HashMap<String, VecDeque<Rc<Slot>>>,
    /// Events that arrived before anyone waited for them, in arrival order.
    pub(crate) buffered_events: VecDeque<(String, Option<String>)>,
    pub(crate) custom_status: Option<String>,
    pub(crate) continue_as_new: Option<ContinueAsNew>,
    guid_counter: u64,
    /// Context to parent scheduled work on (the orchestration's own span).
    pub(crate) trace: Option<TraceContext>,
}

impl State {
    pub(crate) fn new(instance_id: String, execution_id: Option<String>) -> Self {
        Self {
            instance_id,
            execution_id,
            name: String::new(),
            version: None,
            current_time: DateTime::<Utc>::UNIX_EPOCH,
            is_replaying: true,
            next_sequence: 0,
            pending: BTreeMap::new(),
            open: HashMap::new(),
            entity_calls: HashMap::new(),
            lock_grants: HashMap::new(),
            waiters: HashMap::new(),
            buffered_events: VecDeque::new(),
            custom_status: None,
            continue_as_new: None,
            guid_counter: 0,
            trace: None,
        }
    }

    pub(crate) fn next_id(&mut self) -> i32 {
        let id = self.next_sequence;
        self.next_sequence += 1;
        id
    }

    fn emit(&mut self, action: pb::orchestrator_action::OrchestratorActionType) -> (i32, Rc<Slot>) {
        let id = self.next_id();
        self.pending.insert(
            id,
            pb::OrchestratorAction {
                id,
                orchestrator_action_type: Some(action),
            },
        );
        let slot = Rc::new(Slot::default());
        self.open.insert(id, slot.clone());
        (id, slot)
    }

    /// Delivers an `EventRaised`: to the oldest waiter of that name, else into the buffer.
    pub(crate) fn deliver_event(&mut self, name: &str, input: Option<String>) {
        let key = name.to_lowercase();
        if let Some(queue) = self.waiters.get_mut(&key)
            && let Some(slot) = queue.pop_front()
        {
            if queue.is_empty() {
                self.waiters.remove(&key);
            }
            slot.resolve(Ok(input));
            return;
        }
        self.buffered_events.push_back((name.to_string(), input));
    }

    /// After completion nothing can await any more; drop the waiters so later events are buffered
    /// (and carried over by `continue_as_new(save_events)`).
    pub(crate) fn clear_waiters(&mut self) {
        self.waiters.clear();
    }

    fn child_trace(&self) -> Option<pb::TraceContext> {
        self.trace
            .as_ref()
            .and_then(TraceContext::child)
            .map(|t| t.to_proto())
    }
}

/// Handle given to orchestrator functions. Cheap to clone.
#[derive(Clone)]
pub struct OrchestrationContext {
    pub(crate) state: Rc<RefCell<State>>,
}

impl OrchestrationContext {
    pub(crate) fn new(state: Rc<RefCell<State>>) -> Self {
        Self { state }
    }

    pub fn instance_id(&self) -> String {
        self.state.borrow().instance_id.clone()
    }

    pub fn execution_id(&self) -> Option<String> {
        self.state.borrow().execution_id.clone()
    }

    /// Registered name of the running orchestrator.
    pub fn name(&self) -> String {
        self.state.borrow().name.clone()
    }

    pub fn version(&self) -> Option<String> {
        self.state.borrow().version.clone()
    }

    /// Deterministic "now": the time the current episode started, identical on every replay.
    pub fn current_utc_datetime(&self) -> DateTime<Utc> {
        self.state.borrow().current_time
    }

    /// True while re-executing history already recorded; use it to keep side effects such as
    /// logs to the first execution.
    pub fn is_replaying(&self) -> bool {
        self.state.borrow().is_replaying
    }

    /// The W3C context that work scheduled by this orchestration is parented on.
    pub fn trace_context(&self) -> Option<TraceContext> {
        self.state.borrow().trace.clone()
    }

    /// A UUID that is the same on every replay (name-based, from instance id, time and a counter).
    pub fn new_guid(&self) -> uuid::Uuid {
        // Our own namespace so these ids never collide with other SDKs' name-based ids.
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x6d1f_3c7a_8b0e_4f52_9a41_2c6e_d8b3_f015);
        let mut st = self.state.borrow_mut();
        let n = st.guid_counter;
        st.guid_counter += 1;
        let name = format!("{}_{}_{}", st.instance_id, st.current_time.to_rfc3339(), n);
        uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes())
    }

    /// Sets the custom status (any JSON value) reported to clients.
    pub fn set_custom_status<S: Serialize + ?Sized>(&self, status: &S) {
        // A value that cannot be serialized is dropped rather than failing the orchestration.
        self.state.borrow_mut().custom_status = serde_json::to_string(status).ok();
    }

    pub fn clear_custom_status(&self) {
        self.state.borrow_mut().custom_status = None;
    }

    /// Schedules an activity. The task is recorded now; `.await` it for the result. It carries
    /// the orchestration's version, so a worker that takes only its versions (work-item filters)
    /// runs the activities of the orchestrations it runs.
    pub fn call_activity<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
    ) -> DurableTask<O> {
        self.call_activity_raw(name, serde_json::to_string(input).ok())
    }

    /// [`Self::call_activity`] with a JSON input already serialized.
    pub fn call_activity_raw<O: DeserializeOwned>(
        &self,
        name: &str,
        input: Option<String>,
    ) -> DurableTask<O> {
        let mut st = self.state.borrow_mut();
        let parent_trace_context = st.child_trace();
        let version = st.version.clone();
        let (_, slot) = st.emit(
            pb::orchestrator_action::OrchestratorActionType::ScheduleTask(pb::ScheduleTaskAction {
                name: name.to_string(),
                version,
                input,
                tags: HashMap::new(),
                parent_trace_context,
            }),
        );
        DurableTask {
            slot,
            kind: TaskKind::Activity(name.to_string()),
            _out: PhantomData,
        }
    }

    /// Calls an activity, retrying failures per `policy` with durable timers between attempts.
    pub fn call_activity_with_retry<I: Serialize + ?Sized, O: DeserializeOwned + 'static>(
        &self,
        name: &str,
        input: &I,
        policy: RetryPolicy,
    ) -> LocalBoxFuture<'static, Result<O, TaskError>> {
        let ctx = self.clone();
        let name = name.to_string();
        let input = serde_json::to_string(input).ok();
        Box::pin(async move {
            ctx.retry_loop(policy, || ctx.call_activity_raw::<O>(&name, input.clone()))
                .await
        })
    }

    /// Starts a sub-orchestration and waits for its output. `instance_id` defaults to
    /// `<parent id>:<action id as 4 hex digits>`, which is stable across replays.
    pub fn call_sub_orchestrator<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
        instance_id: Option<&str>,
    ) -> DurableTask<O> {
        self.call_sub_orchestrator_raw(name, serde_json::to_string(input).ok(), instance_id, None)
    }

    /// [`Self::call_sub_orchestrator`] with explicit version and a pre-serialized input. Without
    /// a version the child runs at this orchestration's version (its code is pinned with it).
    pub fn call_sub_orchestrator_raw<O: DeserializeOwned>(
        &self,
        name: &str,
        input: Option<String>,
        instance_id: Option<&str>,
        version: Option<&str>,
    ) -> DurableTask<O> {
        let mut st = self.state.borrow_mut();
        let parent_trace_context = st.child_trace();
        let id = st.next_sequence;
        let child_id = instance_id
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}:{:04x}", st.instance_id, id));
        let version = version.map(str::to_string).or_else(|| st.version.clone());
        let (_, slot) = st.emit(
            pb::orchestrator_action::OrchestratorActionType::CreateSubOrchestration(
                pb::CreateSubOrchestrationAction {
                    instance_id: child_id,
                    name: name.to_string(),
                    version,
                    input,
                    parent_trace_context,
                    tags: HashMap::new(),
                },
            ),
        );
        DurableTask {
            slot,
            kind: TaskKind::SubOrchestration(name.to_string()),
            _out: PhantomData,
        }
    }

    /// Sub-orchestration with retries; every attempt reuses the same child instance id.
    pub fn call_sub_orchestrator_with_retry<
        I: Serialize + ?Sized,
        O: DeserializeOwned + 'static,
    >(
        &self,
        name: &str,
        input: &I,
        instance_id: Option<&str>,
        policy: RetryPolicy,
    ) -> LocalBoxFuture<'static, Result<O, TaskError>> {
        let ctx = self.clone();
        let name = name.to_string();
        let input = serde_json::to_string(input).ok();
        let fixed_id = instance_id.map(str::to_string);
        Box::pin(async move {
            // Fix the child id on the first attempt so retries re-create the same instance.
            let mut child_id = fixed_id;
            ctx.retry_loop(policy, || {
                let id = child_id
                    .get_or_insert_with(|| {
                        let st = ctx.state.borrow();
                        format!("{}:{:04x}", st.instance_id, st.next_sequence)
                    })
                    .clone();
                ctx.call_sub_orchestrator_raw::<O>(&name, input.clone(), Some(&id), None)
            })
            .await
        })
    }

    async fn retry_loop<O: DeserializeOwned>(
        &self,
        policy: RetryPolicy,
        mut attempt_fn: impl FnMut() -> DurableTask<O>,
    ) -> Result<O, TaskError> {
        let started = self.current_utc_datetime();
        let mut attempt: u32 = 1;
        loop {
            let err = match attempt_fn().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(details) = err.failure() else {
                return Err(err);
            };
            if !policy.should_retry(attempt, details) {
                return Err(err);
            }
            let delay = policy.delay_for(attempt);
            let next = self.current_utc_datetime()
                + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            if let Some(timeout) = policy.retry_timeout
                && next
                    > started + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX)
            {
                return Err(err);
            }
            self.create_timer(next).await;
            attempt += 1;
        }
    }

    /// A durable timer that fires at `fire_at` (UTC).
    pub fn create_timer(&self, fire_at: DateTime<Utc>) -> DurableTimer {
        let mut st = self.state.borrow_mut();
        let (_, slot) = st.emit(
            pb::orchestrator_action::OrchestratorActionType::CreateTimer(pb::CreateTimerAction {
                fire_at: Some(to_timestamp(fire_at)),
            }),
        );
        DurableTimer { slot }
    }

    /// A durable timer that fires `delay` after the current (deterministic) time.
    pub fn create_timer_after(&self, delay: Duration) -> DurableTimer {
        let at = self.current_utc_datetime()
            + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        self.create_timer(at)
    }

    /// Waits for an external event. Names match case-insensitively; events that arrived
    /// earlier are buffered and delivered in arrival order.
    pub fn wait_for_external_event<O: DeserializeOwned>(&self, name: &str) -> DurableTask<O> {
        let mut st = self.state.borrow_mut();
        let slot = Rc::new(Slot::default());
        let key = name.to_lowercase();
        if let Some(pos) = st
            .buffered_events
            .iter()
            .position(|(n, _)| n.to_lowercase() == key)
        {
            if let Some((_, input)) = st.buffered_events.remove(pos) {
                slot.resolve(Ok(input));
            }
        } else {
            st.waiters.entry(key).or_default().push_back(slot.clone());
        }
        DurableTask {
            slot,
            kind: TaskKind::Event(name.to_string()),
            _out: PhantomData,
        }
    }

    /// Signals an entity (one-way: nothing comes back), now or at `at`.
    pub fn signal_entity<I: Serialize + ?Sized>(
        &self,
        entity: &crate::entity::EntityId,
        operation: &str,
        input: &I,
        at: Option<DateTime<Utc>>,
    ) {
        let request_id = self.new_guid().to_string();
        let mut st = self.state.borrow_mut();
        let (id, _) = st.emit(
            pb::orchestrator_action::OrchestratorActionType::SendEntityMessage(
                pb::SendEntityMessageAction {
                    entity_message_type: Some(
                        pb::send_entity_message_action::EntityMessageType::EntityOperationSignaled(
                            pb::EntityOperationSignaledEvent {
                                request_id,
                                operation: operation.to_string(),
                                scheduled_time: at.map(to_timestamp),
                                input: serde_json::to_string(input).ok(),
                                target_instance_id: Some(entity.to_string()),
                            },
                        ),
                    ),
                },
            ),
        );
        st.open.remove(&id);
    }

    /// Calls an entity operation; `.await` it for the operation's result (or its failure).
    pub fn call_entity<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        entity: &crate::entity::EntityId,
        operation: &str,
        input: &I,
    ) -> DurableTask<O> {
        // The same on every replay, so the result in the history finds this call again.
        let request_id = self.new_guid().to_string();
        let mut st = self.state.borrow_mut();
        let called = pb::EntityOperationCalledEvent {
            request_id: request_id.clone(),
            operation: operation.to_string(),
            scheduled_time: None,
            input: serde_json::to_string(input).ok(),
            parent_instance_id: Some(st.instance_id.clone()),
            parent_execution_id: st.execution_id.clone(),
            target_instance_id: Some(entity.to_string()),
        };
        let (id, slot) = st.emit(
            pb::orchestrator_action::OrchestratorActionType::SendEntityMessage(
                pb::SendEntityMessageAction {
                    entity_message_type: Some(
                        pb::send_entity_message_action::EntityMessageType::EntityOperationCalled(
                            called,
                        ),
                    ),
                },
            ),
        );
        // The result comes by request id, not by the action's id.
        st.open.remove(&id);
        st.entity_calls.insert(request_id, slot.clone());
        DurableTask {
            slot,
            kind: TaskKind::Entity(format!("{entity}:{operation}")),
            _out: PhantomData,
        }
    }

    /// Locks `entities` for this orchestration (a critical section): once granted, they run only
    /// this orchestration's calls until [`EntityLock::release`]. Locks are taken in a fixed
    /// (sorted) order, so two orchestrations locking overlapping sets cannot deadlock. If the
    /// orchestration ends while holding them, the scheduler releases them.
    pub fn lock_entities(
        &self,
        entities: &[crate::entity::EntityId],
    ) -> impl Future<Output = Result<EntityLock, TaskError>> + use<> {
        let section = self.new_guid().to_string();
        let mut ids: Vec<String> = entities.iter().map(ToString::to_string).collect();
        ids.sort();
        ids.dedup();
        let slot = {
            let mut st = self.state.borrow_mut();
            let request = pb::EntityLockRequestedEvent {
                critical_section_id: section.clone(),
                lock_set: ids.clone(),
                position: 0,
                parent_instance_id: Some(st.instance_id.clone()),
            };
            let (id, slot) = st.emit(
                pb::orchestrator_action::OrchestratorActionType::SendEntityMessage(
                    pb::SendEntityMessageAction {
                        entity_message_type: Some(
                            pb::send_entity_message_action::EntityMessageType::EntityLockRequested(
                                request,
                            ),
                        ),
                    },
                ),
            );
            st.open.remove(&id);
            st.lock_grants.insert(section.clone(), slot.clone());
            slot
        };
        let granted: DurableTask<serde_json::Value> = DurableTask {
            slot,
            kind: TaskKind::Entity("lock".to_string()),
            _out: PhantomData,
        };
        let ctx = self.clone();
        async move {
            granted.await?;
            Ok(EntityLock {
                ctx,
                section,
                entities: ids,
            })
        }
    }

    /// Sends an event to another orchestration instance (fire and forget).
    pub fn send_event<I: Serialize + ?Sized>(&self, instance_id: &str, name: &str, data: &I) {
        let mut st = self.state.borrow_mut();
        let (id, _) = st.emit(pb::orchestrator_action::OrchestratorActionType::SendEvent(
            pb::SendEventAction {
                instance: Some(pb::OrchestrationInstance {
                    instance_id: instance_id.to_string(),
                    execution_id: None,
                }),
                name: name.to_string(),
                data: serde_json::to_string(data).ok(),
            },
        ));
        // Nothing ever completes a sent event.
        st.open.remove(&id);
    }

    /// Ends this execution and starts a fresh one with `input` (the history is discarded).
    /// With `save_events`, events received but not yet awaited are carried into the new execution.
    /// The orchestrator function should return right after calling this.
    pub fn continue_as_new<I: Serialize + ?Sized>(&self, input: &I, save_events: bool) {
        self.state.borrow_mut().continue_as_new = Some(ContinueAsNew {
            input: serde_json::to_string(input).ok(),
            save_events,
            new_version: None,
        });
    }

    /// Like [`Self::continue_as_new`], switching the new execution to `version`.
    pub fn continue_as_new_versioned<I: Serialize + ?Sized>(
        &self,
        input: &I,
        save_events: bool,
        version: &str,
    ) {
        self.state.borrow_mut().continue_as_new = Some(ContinueAsNew {
            input: serde_json::to_string(input).ok(),
            save_events,
            new_version: Some(version.to_string()),
        });
    }

    /// Waits for all tasks; results in the order given.
    pub fn when_all<F: Future + Unpin>(
        &self,
        tasks: impl IntoIterator<Item = F>,
    ) -> futures::future::JoinAll<F> {
        futures::future::join_all(tasks)
    }

    /// Waits for the first task to finish; returns its output and index. The rest keep running
    /// durably (their results are simply not awaited).
    pub fn when_any<F: Future + Unpin>(&self, tasks: impl IntoIterator<Item = F>) -> WhenAny<F> {
        WhenAny {
            tasks: tasks.into_iter().collect(),
        }
    }
}

/// Future returned by [`OrchestrationContext::when_any`]: resolves to `(index, output)`.
pub struct WhenAny<F> {
    tasks: Vec<F>,
}

impl<F: Future + Unpin> Future for WhenAny<F> {
    type Output = (usize, F::Output);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Lowest index first, so when several completed in the same episode the choice is deterministic.
        for (i, t) in self.tasks.iter_mut().enumerate() {
            if let Poll::Ready(out) = Pin::new(t).poll(cx) {
                return Poll::Ready((i, out));
            }
        }
        Poll::Pending
    }
}

/// Convenience for code that wants a boxed, type-erased task.
pub type BoxedTask<T> = LocalBoxFuture<'static, Result<T, TaskError>>;

/// Entities locked for an orchestration (see [`OrchestrationContext::lock_entities`]).
#[must_use = "locked entities stay locked until released (or until the orchestration ends)"]
pub struct EntityLock {
    ctx: OrchestrationContext,
    section: String,
    entities: Vec<String>,
}

impl EntityLock {
    /// The locked entities' ids (`@name@key`), sorted.
    pub fn entities(&self) -> &[String] {
        &self.entities
    }

    /// Ends the critical section: an unlock to each locked entity.
    pub fn release(self) {
        let mut st = self.ctx.state.borrow_mut();
        let parent = st.instance_id.clone();
        for target in &self.entities {
            let (id, _) = st.emit(
                pb::orchestrator_action::OrchestratorActionType::SendEntityMessage(
                    pb::SendEntityMessageAction {
                        entity_message_type: Some(
                            pb::send_entity_message_action::EntityMessageType::EntityUnlockSent(
                                pb::EntityUnlockSentEvent {
                                    critical_section_id: self.section.clone(),
                                    parent_instance_id: Some(parent.clone()),
                                    target_instance_id: Some(target.clone()),
                                },
                            ),
                        ),
                    },
                ),
            );
            st.open.remove(&id);
        }
    }
}
