//! `GET /api/operations/{id}/history`: the events of an operation's orchestration, in order.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use durabletask::history::EventSummary;
use durabletask::proto as pb;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::extract::{OperationPath, valid_id};
use crate::json::{JSON, json_response};
use crate::model::{OperationError, rfc3339};
use crate::problem::{Problem, operation_not_found};
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

/// One event in the API's shape, from the SDK's description of it.
fn entry(e: &pb::HistoryEvent) -> HistoryEntry {
    let s = EventSummary::of(e);
    // DTS payloads are JSON text; anything else is kept as a string.
    let json = |p: Option<String>| p.map(|p| serde_json::from_str(&p).unwrap_or(Value::String(p)));
    HistoryEntry {
        event_id: s.event_id,
        kind: s.kind,
        timestamp: rfc3339(s.timestamp),
        name: s.name,
        scheduled_id: s.scheduled_id,
        data: json(s.data),
        error: s
            .failure
            .map(|(kind, message)| OperationError { kind, message }),
        fire_at: rfc3339(s.fire_at),
        instance_id: s.instance_id,
        runtime_status: s.runtime_status,
    }
}
