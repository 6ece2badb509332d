//! The original sample's routes, with its field names: `POST /api/start-operation` and
//! `GET /api/operations/{id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use contract::{SAMPLE_DEFAULT_SECONDS, SAMPLE_ORCHESTRATION, SampleInput};
use durabletask::OrchestrationStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::edge::{CallbackUrl, Edge};
use crate::extract::{FieldRules, OperationPath, OptionalJsonBody};
use crate::json::{JSON, json_response};
use crate::model::{OperationError, rfc3339};
use crate::problem::{Problem, invalid};
use crate::respond::{location, retry_after};
use crate::scheduler::{NewOperation, fetch, start_orchestration};
use crate::{AppState, Settings};

/// The original sample's start request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleStartRequest {
    /// Seconds of work, 0 to `max_delay_seconds`; 5 (or `max_delay_seconds` if lower) when
    /// left out.
    #[schema(example = 5, minimum = 0, default = 5)]
    processing_time: Option<i64>,
}

impl FieldRules for SampleStartRequest {
    fn rule(field: &str, config: &Settings) -> Option<String> {
        (field == "processing_time").then(|| {
            format!(
                "must be an integer between 0 and {}",
                config.limits.max_delay_seconds
            )
        })
    }
}

/// The original sample's `202` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct SampleAccepted {
    pub operation_id: String,
    /// Relative URL of the sample's status route.
    pub status_url: String,
}

/// The original sample's status body: `result` when completed, `error` when failed,
/// `last_updated` otherwise.
#[derive(Debug, Serialize, ToSchema)]
pub struct SampleStatus {
    pub operation_id: String,
    /// `Completed`, `Failed`, or the DTS runtime status name while not finished.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

/// The original sample's start route: starts `async_http_api_orchestrator`.
#[utoipa::path(
    post,
    path = "/api/start-operation",
    tag = "sample compatibility",
    request_body(content = Option<SampleStartRequest>, content_type = "application/json",
        description = "May be empty (then `processing_time` is 5)"),
    params(
        ("Callback-Url" = Option<String>, Header, max_length = 2048,
            description = "Be told when the operation ends: one CloudEvent (JSON, `type` io.async-http-api.operation.succeeded, .failed or .canceled; `subject` the operation id; `data` the status document with its links) POSTed here, signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`), retried with back-off. `https` only unless configured; the host must be allowed, and must not resolve to a loopback, private, link-local or metadata address: else `422`. The status document's `callback` says where the delivery stands."),
    ),
    responses(
        (status = 202, description = "Accepted", body = SampleAccepted,
            headers(("Location" = String), ("Operation-Location" = String), ("Retry-After" = u64))),
        (status = 400, description = "Malformed JSON", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Wrong or unknown fields, `processing_time` out of range, or a `Callback-Url` that is refused", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn sample_start(
    State(state): State<AppState>,
    edge: Edge,
    caller: Caller,
    CallbackUrl(callback): CallbackUrl,
    OptionalJsonBody(body): OptionalJsonBody<SampleStartRequest>,
) -> Result<Response, Problem> {
    let max = i64::try_from(state.config.limits.max_delay_seconds).unwrap_or(i64::MAX);
    // The sample's default of 5 s, within this deployment's limit.
    let processing_time = body
        .and_then(|r| r.processing_time)
        .unwrap_or_else(|| SAMPLE_DEFAULT_SECONDS.min(max));
    if !(0..=max).contains(&processing_time) {
        return Err(invalid(format!(
            "`processing_time` must be between 0 and {max}"
        )));
    }
    // The sample's hyphenated UUIDs, under the caller's prefix.
    let id = format!("{}{}", state.ids.prefix_of(&caller), uuid::Uuid::new_v4());
    let input = SampleInput {
        operation_id: Some(id.clone()),
        processing_time: Some(processing_time),
    };
    // Held until the start is made: the caller's next start counts this one.
    let _turn = crate::scheduler::check_unfinished(&state, &caller, &id).await?;
    let op = NewOperation {
        name: SAMPLE_ORCHESTRATION,
        id: &id,
        input: &input,
        tags: crate::callback::tags(callback.as_ref(), &id),
    };
    start_orchestration(&state, &edge, &caller, op).await?;
    if let Some(url) = callback {
        crate::callback::start_delivery(&state, &edge, &caller, &id, url).await?;
    }
    let status_url = format!("/api/operations/{id}");
    let absolute = format!("{}{status_url}", edge.base);
    let mut resp = json_response(
        StatusCode::ACCEPTED,
        &SampleAccepted {
            operation_id: id,
            status_url,
        },
        JSON,
    );
    location(&mut resp, &absolute)?;
    retry_after(&mut resp, state.config.retry_after_seconds);
    Ok(resp)
}

/// The original sample's status route, with its field names.
#[utoipa::path(
    get,
    path = "/api/operations/{id}",
    tag = "sample compatibility",
    params(("id" = String, Path, description = "The operation id")),
    responses(
        (status = 200, description = "The operation's status", body = SampleStatus,
            headers(("Retry-After" = u64, description = "Present while the operation is not finished"))),
        super::OperationNotFound,
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn sample_status(
    State(state): State<AppState>,
    OperationPath(id): OperationPath,
) -> Result<Response, Problem> {
    let m = fetch(&state, &id, true).await?;
    let mut body = SampleStatus {
        operation_id: id,
        status: m.runtime_status.as_str().to_string(),
        result: None,
        error: None,
        last_updated: None,
    };
    // The sample names its two endings as an operator does (`contract::status`), the rest as
    // the scheduler does.
    match m.runtime_status {
        OrchestrationStatus::Completed => {
            body.status = contract::status::runtime_name(m.runtime_status).into();
            body.result = Some(m.output::<Value>().unwrap_or(Value::Null));
        }
        OrchestrationStatus::Failed => {
            body.status = contract::status::runtime_name(m.runtime_status).into();
            body.error = Some(
                OperationError::of(&m)
                    .map_or_else(|| "the operation failed".to_string(), |e| e.message),
            );
        }
        _ => body.last_updated = rfc3339(m.last_updated_at),
    }
    let mut resp = json_response(StatusCode::OK, &body, JSON);
    if !m.runtime_status.is_terminal() {
        retry_after(&mut resp, state.config.retry_after_seconds);
    }
    Ok(resp)
}
