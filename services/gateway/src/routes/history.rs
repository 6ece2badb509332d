//! `GET /api/operations/{id}/history`: the events of an operation's orchestration, in order.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use durabletask::proto as pb;
use pb::history_event::EventType;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::extract::{OperationPath, valid_id};
use crate::model::{OperationError, rfc3339};
use crate::problem::{Problem, operation_not_found};
use crate::respond::{JSON, json_response};
use crate::scheduler::{record_operation, with_deadline};

/// An operation's history: every event of its orchestration's current execution, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationHistory {
    pub id: String,
    pub events: Vec<HistoryEntry>,
}

/// One event. Fields that the event's kind does not carry are left out.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    /// The action id for events the orchestration scheduled (`TaskScheduled`, `TimerCreated`,
    /// ...); -1 for the others.
    pub event_id: i32,
    /// The kind of event, e.g. `ExecutionStarted`, `TaskScheduled`, `TaskCompleted`.
    #[serde(rename = "type")]
    #[schema(example = "TaskScheduled")]
    pub kind: &'static str,
    /// When it was recorded, RFC 3339 UTC.
    pub timestamp: Option<String>,
    /// The orchestration, activity, sub-orchestration or event name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The `event_id` of the event this one answers (a task, sub-orchestration or timer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_id: Option<i32>,
    /// The input, result or event data it carries: any JSON value.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub data: Option<Value>,
    /// Why a task, a sub-orchestration or the orchestration failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
    /// When a timer fires, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fire_at: Option<String>,
    /// A sub-orchestration's instance id, or the target of a sent event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The DTS runtime status an `ExecutionCompleted` ended with, e.g. `COMPLETED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_status: Option<&'static str>,
}

/// The history of an operation.
#[utoipa::path(
    get,
    path = "/api/operations/{id}/history",
    tag = "operations",
    params(("id" = String, Path, description = "The operation id")),
    responses(
        (status = 200, description = "Every event of the operation's orchestration, in order, with timestamps", body = OperationHistory),
        super::OperationNotFound,
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn history(
    State(state): State<AppState>,
    OperationPath(id): OperationPath,
) -> Result<Response, Problem> {
    valid_id(&id)?;
    record_operation(&id);
    let events = with_deadline(
        &state,
        "StreamInstanceHistory",
        state.client.get_history(&id),
    )
    .await?
    .ok_or_else(|| operation_not_found(&id))?;
    let body = OperationHistory {
        id,
        events: events.iter().map(entry).collect(),
    };
    Ok(json_response(StatusCode::OK, &body, JSON))
}

/// A protocol timestamp as the API writes every time (`model::rfc3339`).
fn time(t: Option<&pb::Timestamp>) -> Option<String> {
    let t = t?;
    rfc3339(chrono::DateTime::from_timestamp(
        t.seconds,
        u32::try_from(t.nanos).unwrap_or(0),
    ))
}

/// A payload as JSON (DTS payloads are JSON text; anything else is kept as a string).
fn json(p: Option<&String>) -> Option<Value> {
    p.map(|s| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())))
}

fn failure(f: Option<&pb::TaskFailureDetails>) -> Option<OperationError> {
    let mut f = f?;
    // The innermost failure is the useful one, never a stack trace.
    while let Some(inner) = f.inner_failure.as_deref() {
        f = inner;
    }
    Some(OperationError {
        kind: f.error_type.clone(),
        message: f.error_message.clone(),
    })
}

fn entry(e: &pb::HistoryEvent) -> HistoryEntry {
    let mut h = HistoryEntry {
        event_id: e.event_id,
        kind: "Unknown",
        timestamp: time(e.timestamp.as_ref()),
        name: None,
        scheduled_id: None,
        data: None,
        error: None,
        fire_at: None,
        instance_id: None,
        runtime_status: None,
    };
    let Some(t) = &e.event_type else {
        return h;
    };
    h.kind = match t {
        EventType::ExecutionStarted(x) => {
            h.name = Some(x.name.clone());
            h.data = json(x.input.as_ref());
            "ExecutionStarted"
        }
        EventType::ExecutionCompleted(x) => {
            h.data = json(x.result.as_ref());
            h.error = failure(x.failure_details.as_ref());
            h.runtime_status = pb::OrchestrationStatus::try_from(x.orchestration_status)
                .ok()
                .map(|s| s.as_str_name().trim_start_matches("ORCHESTRATION_STATUS_"));
            "ExecutionCompleted"
        }
        EventType::ExecutionTerminated(x) => {
            h.data = json(x.input.as_ref());
            "ExecutionTerminated"
        }
        EventType::TaskScheduled(x) => {
            h.name = Some(x.name.clone());
            h.data = json(x.input.as_ref());
            "TaskScheduled"
        }
        EventType::TaskCompleted(x) => {
            h.scheduled_id = Some(x.task_scheduled_id);
            h.data = json(x.result.as_ref());
            "TaskCompleted"
        }
        EventType::TaskFailed(x) => {
            h.scheduled_id = Some(x.task_scheduled_id);
            h.error = failure(x.failure_details.as_ref());
            "TaskFailed"
        }
        EventType::SubOrchestrationInstanceCreated(x) => {
            h.name = Some(x.name.clone());
            h.instance_id = Some(x.instance_id.clone());
            h.data = json(x.input.as_ref());
            "SubOrchestrationInstanceCreated"
        }
        EventType::SubOrchestrationInstanceCompleted(x) => {
            h.scheduled_id = Some(x.task_scheduled_id);
            h.data = json(x.result.as_ref());
            "SubOrchestrationInstanceCompleted"
        }
        EventType::SubOrchestrationInstanceFailed(x) => {
            h.scheduled_id = Some(x.task_scheduled_id);
            h.error = failure(x.failure_details.as_ref());
            "SubOrchestrationInstanceFailed"
        }
        EventType::TimerCreated(x) => {
            h.fire_at = time(x.fire_at.as_ref());
            "TimerCreated"
        }
        EventType::TimerFired(x) => {
            h.scheduled_id = Some(x.timer_id);
            h.fire_at = time(x.fire_at.as_ref());
            "TimerFired"
        }
        EventType::OrchestratorStarted(_) => "OrchestratorStarted",
        EventType::OrchestratorCompleted(_) => "OrchestratorCompleted",
        EventType::EventSent(x) => {
            h.name = Some(x.name.clone());
            h.instance_id = Some(x.instance_id.clone());
            h.data = json(x.input.as_ref());
            "EventSent"
        }
        EventType::EventRaised(x) => {
            h.name = Some(x.name.clone());
            h.data = json(x.input.as_ref());
            "EventRaised"
        }
        EventType::ContinueAsNew(x) => {
            h.data = json(x.input.as_ref());
            "ContinueAsNew"
        }
        EventType::ExecutionSuspended(x) => {
            h.data = json(x.input.as_ref());
            "ExecutionSuspended"
        }
        EventType::ExecutionResumed(x) => {
            h.data = json(x.input.as_ref());
            "ExecutionResumed"
        }
        EventType::ExecutionRewound(_) => "ExecutionRewound",
        EventType::GenericEvent(_) => "GenericEvent",
        EventType::HistoryState(_) => "HistoryState",
        // Entities are not part of this API; named, without their payloads.
        _ => "EntityEvent",
    };
    h
}
