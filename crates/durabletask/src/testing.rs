//! Test support: a fluent builder for histories and work items.
//!
//! ```
//! use durabletask::testing::HistoryBuilder;
//! let mut h = HistoryBuilder::new("order-1");
//! h.started("process", Some("\"x\"")).task_scheduled(0, "charge");
//! let past = h.take();
//! h.episode().task_completed(0, Some("42"));
//! let req = h.request(past, h.events());
//! assert_eq!(req.new_events.len(), 2);
//! ```

use chrono::{DateTime, Duration, TimeZone, Utc};
use durabletask_proto as pb;
use pb::history_event::EventType;

use crate::types::{FailureDetails, to_timestamp};

/// Builds history events in order, with advancing timestamps and `eventId`s as the servers set them
/// (action id for command events, -1 for everything else).
#[derive(Debug, Clone)]
pub struct HistoryBuilder {
    instance_id: String,
    now: DateTime<Utc>,
    events: Vec<pb::HistoryEvent>,
}

impl HistoryBuilder {
    pub fn new(instance_id: &str) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            now: Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .unwrap_or_default(),
            events: Vec::new(),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The current (builder) time, which `OrchestratorStarted` events carry.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    fn push(&mut self, id: i32, e: EventType) -> &mut Self {
        self.events.push(pb::HistoryEvent {
            event_id: id,
            timestamp: Some(to_timestamp(self.now)),
            event_type: Some(e),
        });
        self
    }

    /// Advances the clock by `secs` seconds.
    pub fn advance(&mut self, secs: i64) -> &mut Self {
        self.now += Duration::seconds(secs);
        self
    }

    /// Starts a new episode: advances the clock one second and adds `OrchestratorStarted`.
    pub fn episode(&mut self) -> &mut Self {
        self.advance(1);
        self.push(
            -1,
            EventType::OrchestratorStarted(pb::OrchestratorStartedEvent {}),
        )
    }

    /// `OrchestratorStarted` + `ExecutionStarted` for `name` with a JSON input.
    pub fn started(&mut self, name: &str, input: Option<&str>) -> &mut Self {
        self.started_with(name, input, None)
    }

    /// Like [`Self::started`] with a parent trace context (W3C traceparent).
    pub fn started_with(
        &mut self,
        name: &str,
        input: Option<&str>,
        traceparent: Option<&str>,
    ) -> &mut Self {
        self.push(
            -1,
            EventType::OrchestratorStarted(pb::OrchestratorStartedEvent {}),
        );
        let instance_id = self.instance_id.clone();
        #[allow(deprecated)]
        self.push(
            -1,
            EventType::ExecutionStarted(pb::ExecutionStartedEvent {
                name: name.into(),
                version: None,
                input: input.map(str::to_string),
                orchestration_instance: Some(pb::OrchestrationInstance {
                    instance_id,
                    execution_id: Some("exec-1".into()),
                }),
                parent_instance: None,
                scheduled_start_timestamp: None,
                parent_trace_context: traceparent.map(|t| pb::TraceContext {
                    trace_parent: t.into(),
                    span_id: String::new(),
                    trace_state: None,
                }),
                orchestration_span_id: None,
                tags: Default::default(),
            }),
        )
    }

    pub fn task_scheduled(&mut self, id: i32, name: &str) -> &mut Self {
        self.push(
            id,
            EventType::TaskScheduled(pb::TaskScheduledEvent {
                name: name.into(),
                version: None,
                input: None,
                parent_trace_context: None,
                tags: Default::default(),
            }),
        )
    }

    pub fn task_completed(&mut self, id: i32, result: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::TaskCompleted(pb::TaskCompletedEvent {
                task_scheduled_id: id,
                result: result.map(str::to_string),
            }),
        )
    }

    pub fn task_failed(&mut self, id: i32, failure: FailureDetails) -> &mut Self {
        self.push(
            -1,
            EventType::TaskFailed(pb::TaskFailedEvent {
                task_scheduled_id: id,
                failure_details: Some(failure.to_proto()),
            }),
        )
    }

    pub fn timer_created(&mut self, id: i32, fire_at: DateTime<Utc>) -> &mut Self {
        self.push(
            id,
            EventType::TimerCreated(pb::TimerCreatedEvent {
                fire_at: Some(to_timestamp(fire_at)),
            }),
        )
    }

    pub fn timer_fired(&mut self, id: i32, fire_at: DateTime<Utc>) -> &mut Self {
        self.push(
            -1,
            EventType::TimerFired(pb::TimerFiredEvent {
                fire_at: Some(to_timestamp(fire_at)),
                timer_id: id,
            }),
        )
    }

    pub fn sub_orchestration_created(
        &mut self,
        id: i32,
        name: &str,
        instance_id: &str,
    ) -> &mut Self {
        self.push(
            id,
            EventType::SubOrchestrationInstanceCreated(pb::SubOrchestrationInstanceCreatedEvent {
                instance_id: instance_id.into(),
                name: name.into(),
                version: None,
                input: None,
                parent_trace_context: None,
                tags: Default::default(),
            }),
        )
    }

    pub fn sub_orchestration_completed(&mut self, id: i32, result: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::SubOrchestrationInstanceCompleted(
                pb::SubOrchestrationInstanceCompletedEvent {
                    task_scheduled_id: id,
                    result: result.map(str::to_string),
                },
            ),
        )
    }

    pub fn sub_orchestration_failed(&mut self, id: i32, failure: FailureDetails) -> &mut Self {
        self.push(
            -1,
            EventType::SubOrchestrationInstanceFailed(pb::SubOrchestrationInstanceFailedEvent {
                task_scheduled_id: id,
                failure_details: Some(failure.to_proto()),
            }),
        )
    }

    pub fn event_raised(&mut self, name: &str, input: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::EventRaised(pb::EventRaisedEvent {
                name: name.into(),
                input: input.map(str::to_string),
            }),
        )
    }

    /// The record of a signal (action `id`) to entity `target` (`@name@key`).
    pub fn entity_signaled(&mut self, id: i32, target: &str, operation: &str) -> &mut Self {
        self.push(
            id,
            EventType::EntityOperationSignaled(pb::EntityOperationSignaledEvent {
                request_id: format!("signal-{id}"),
                operation: operation.into(),
                scheduled_time: None,
                input: None,
                target_instance_id: Some(target.into()),
            }),
        )
    }

    /// The record of a call (action `id`, request `request_id`) to entity `target`.
    pub fn entity_called(
        &mut self,
        id: i32,
        request_id: &str,
        target: &str,
        operation: &str,
    ) -> &mut Self {
        let parent = self.instance_id.clone();
        self.push(
            id,
            EventType::EntityOperationCalled(pb::EntityOperationCalledEvent {
                request_id: request_id.into(),
                operation: operation.into(),
                scheduled_time: None,
                input: None,
                parent_instance_id: Some(parent),
                parent_execution_id: Some("exec-1".into()),
                target_instance_id: Some(target.into()),
            }),
        )
    }

    /// The record of a lock request (action `id`) for `lock_set` (sorted entity ids).
    pub fn entity_lock_requested(
        &mut self,
        id: i32,
        section: &str,
        lock_set: &[&str],
    ) -> &mut Self {
        let parent = self.instance_id.clone();
        self.push(
            id,
            EventType::EntityLockRequested(pb::EntityLockRequestedEvent {
                critical_section_id: section.into(),
                lock_set: lock_set.iter().map(|s| s.to_string()).collect(),
                position: 0,
                parent_instance_id: Some(parent),
            }),
        )
    }

    /// The grant of critical section `section`.
    pub fn entity_lock_granted(&mut self, section: &str) -> &mut Self {
        self.push(
            -1,
            EventType::EntityLockGranted(pb::EntityLockGrantedEvent {
                critical_section_id: section.into(),
            }),
        )
    }

    /// The record of an unlock (action `id`) sent to `target`.
    pub fn entity_unlock_sent(&mut self, id: i32, section: &str, target: &str) -> &mut Self {
        let parent = self.instance_id.clone();
        self.push(
            id,
            EventType::EntityUnlockSent(pb::EntityUnlockSentEvent {
                critical_section_id: section.into(),
                parent_instance_id: Some(parent),
                target_instance_id: Some(target.into()),
            }),
        )
    }

    /// The result of entity call `request_id`.
    pub fn entity_completed(&mut self, request_id: &str, output: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::EntityOperationCompleted(pb::EntityOperationCompletedEvent {
                request_id: request_id.into(),
                output: output.map(str::to_string),
            }),
        )
    }

    /// The failure of entity call `request_id`.
    pub fn entity_failed(
        &mut self,
        request_id: &str,
        error_type: &str,
        message: &str,
    ) -> &mut Self {
        self.push(
            -1,
            EventType::EntityOperationFailed(pb::EntityOperationFailedEvent {
                request_id: request_id.into(),
                failure_details: Some(pb::TaskFailureDetails {
                    error_type: error_type.into(),
                    error_message: message.into(),
                    ..Default::default()
                }),
            }),
        )
    }

    pub fn event_sent(&mut self, id: i32, instance_id: &str, name: &str) -> &mut Self {
        self.push(
            id,
            EventType::EventSent(pb::EventSentEvent {
                instance_id: instance_id.into(),
                name: name.into(),
                input: None,
            }),
        )
    }

    pub fn suspended(&mut self, reason: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::ExecutionSuspended(pb::ExecutionSuspendedEvent {
                input: reason.map(str::to_string),
            }),
        )
    }

    pub fn resumed(&mut self, reason: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::ExecutionResumed(pb::ExecutionResumedEvent {
                input: reason.map(str::to_string),
            }),
        )
    }

    pub fn terminated(&mut self, output: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::ExecutionTerminated(pb::ExecutionTerminatedEvent {
                input: output.map(str::to_string),
                recurse: false,
            }),
        )
    }

    /// `ExecutionCompleted` with the given status (what the scheduler records for a completion).
    pub fn execution_completed(
        &mut self,
        id: i32,
        status: pb::OrchestrationStatus,
        failure: Option<FailureDetails>,
    ) -> &mut Self {
        self.push(
            id,
            EventType::ExecutionCompleted(pb::ExecutionCompletedEvent {
                orchestration_status: status as i32,
                result: None,
                failure_details: failure.map(|f| f.to_proto()),
            }),
        )
    }

    /// `ExecutionRewound`: the scheduler asks a failed instance to rewind.
    pub fn rewound(&mut self, reason: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::ExecutionRewound(pb::ExecutionRewoundEvent {
                reason: reason.map(str::to_string),
                ..Default::default()
            }),
        )
    }

    pub fn orchestrator_completed(&mut self) -> &mut Self {
        self.push(
            -1,
            EventType::OrchestratorCompleted(pb::OrchestratorCompletedEvent {}),
        )
    }

    /// Adds any event as is.
    pub fn raw(&mut self, event: pb::HistoryEvent) -> &mut Self {
        self.events.push(event);
        self
    }

    /// The events so far (cloned).
    pub fn events(&self) -> Vec<pb::HistoryEvent> {
        self.events.clone()
    }

    /// Takes the events so far, leaving the builder empty (clock and instance kept): handy for
    /// splitting past from new events.
    pub fn take(&mut self) -> Vec<pb::HistoryEvent> {
        std::mem::take(&mut self.events)
    }

    /// An `OrchestratorRequest` for this instance.
    pub fn request(
        &self,
        past: Vec<pb::HistoryEvent>,
        new: Vec<pb::HistoryEvent>,
    ) -> pb::OrchestratorRequest {
        pb::OrchestratorRequest {
            instance_id: self.instance_id.clone(),
            execution_id: Some("exec-1".into()),
            past_events: past,
            new_events: new,
            entity_parameters: None,
            requires_history_streaming: false,
            properties: Default::default(),
            orchestration_trace_context: None,
        }
    }
}
