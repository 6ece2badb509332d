//! A history event described for people: its kind's name and the fields that kind carries, in
//! one place for every reader of histories (the gateway's history route, the dashboard).

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use pb::history_event::EventType;

/// One event, by the fields its kind carries; the others are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSummary {
    /// The action id for events the orchestration scheduled; -1 for the others.
    pub event_id: i32,
    /// `ExecutionStarted`, `TaskScheduled`, `TaskCompleted`, ...
    pub kind: &'static str,
    pub timestamp: Option<DateTime<Utc>>,
    /// The orchestration, activity, sub-orchestration or event name.
    pub name: Option<String>,
    /// The `event_id` of the event this one answers (a task, sub-orchestration or timer).
    pub scheduled_id: Option<i32>,
    /// The input, result or event data, as the JSON text it was sent as.
    pub data: Option<String>,
    /// The innermost failure: (error type, message), never a stack trace.
    pub failure: Option<(String, String)>,
    /// When a timer fires.
    pub fire_at: Option<DateTime<Utc>>,
    /// A sub-orchestration's instance id, or the target of a sent event.
    pub instance_id: Option<String>,
    /// The runtime status an `ExecutionCompleted` ended with, e.g. `COMPLETED`.
    pub runtime_status: Option<&'static str>,
}

fn time(t: Option<&pb::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
}

fn failure(f: Option<&pb::TaskFailureDetails>) -> Option<(String, String)> {
    let mut f = f?;
    while let Some(inner) = f.inner_failure.as_deref() {
        f = inner;
    }
    Some((f.error_type.clone(), f.error_message.clone()))
}

impl EventSummary {
    pub fn of(e: &pb::HistoryEvent) -> Self {
        let mut s = Self {
            event_id: e.event_id,
            kind: "Unknown",
            timestamp: time(e.timestamp.as_ref()),
            name: None,
            scheduled_id: None,
            data: None,
            failure: None,
            fire_at: None,
            instance_id: None,
            runtime_status: None,
        };
        let Some(t) = &e.event_type else {
            return s;
        };
        s.kind = match t {
            EventType::ExecutionStarted(x) => {
                s.name = Some(x.name.clone());
                s.data = x.input.clone();
                "ExecutionStarted"
            }
            EventType::ExecutionCompleted(x) => {
                s.data = x.result.clone();
                s.failure = failure(x.failure_details.as_ref());
                s.runtime_status = pb::OrchestrationStatus::try_from(x.orchestration_status)
                    .ok()
                    .map(|st| st.as_str_name().trim_start_matches("ORCHESTRATION_STATUS_"));
                "ExecutionCompleted"
            }
            EventType::ExecutionTerminated(x) => {
                s.data = x.input.clone();
                "ExecutionTerminated"
            }
            EventType::TaskScheduled(x) => {
                s.name = Some(x.name.clone());
                s.data = x.input.clone();
                "TaskScheduled"
            }
            EventType::TaskCompleted(x) => {
                s.scheduled_id = Some(x.task_scheduled_id);
                s.data = x.result.clone();
                "TaskCompleted"
            }
            EventType::TaskFailed(x) => {
                s.scheduled_id = Some(x.task_scheduled_id);
                s.failure = failure(x.failure_details.as_ref());
                "TaskFailed"
            }
            EventType::SubOrchestrationInstanceCreated(x) => {
                s.name = Some(x.name.clone());
                s.instance_id = Some(x.instance_id.clone());
                s.data = x.input.clone();
                "SubOrchestrationInstanceCreated"
            }
            EventType::SubOrchestrationInstanceCompleted(x) => {
                s.scheduled_id = Some(x.task_scheduled_id);
                s.data = x.result.clone();
                "SubOrchestrationInstanceCompleted"
            }
            EventType::SubOrchestrationInstanceFailed(x) => {
                s.scheduled_id = Some(x.task_scheduled_id);
                s.failure = failure(x.failure_details.as_ref());
                "SubOrchestrationInstanceFailed"
            }
            EventType::TimerCreated(x) => {
                s.fire_at = time(x.fire_at.as_ref());
                "TimerCreated"
            }
            EventType::TimerFired(x) => {
                s.scheduled_id = Some(x.timer_id);
                s.fire_at = time(x.fire_at.as_ref());
                "TimerFired"
            }
            EventType::OrchestratorStarted(_) => "OrchestratorStarted",
            EventType::OrchestratorCompleted(_) => "OrchestratorCompleted",
            EventType::EventSent(x) => {
                s.name = Some(x.name.clone());
                s.instance_id = Some(x.instance_id.clone());
                s.data = x.input.clone();
                "EventSent"
            }
            EventType::EventRaised(x) => {
                s.name = Some(x.name.clone());
                s.data = x.input.clone();
                "EventRaised"
            }
            EventType::ContinueAsNew(x) => {
                s.data = x.input.clone();
                "ContinueAsNew"
            }
            EventType::ExecutionSuspended(x) => {
                s.data = x.input.clone();
                "ExecutionSuspended"
            }
            EventType::ExecutionResumed(x) => {
                s.data = x.input.clone();
                "ExecutionResumed"
            }
            EventType::ExecutionRewound(_) => "ExecutionRewound",
            EventType::GenericEvent(_) => "GenericEvent",
            EventType::HistoryState(_) => "HistoryState",
            // Entities: named, without their payloads.
            _ => "EntityEvent",
        };
        s
    }
}
