//! `GET /api/result/{id}`: the output of a finished operation.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use durabletask::OrchestrationStatus;
use serde_json::Value;

use crate::AppState;
use crate::edge::Edge;
use crate::extract::OperationPath;
use crate::json::{JSON, json_response};
use crate::model::{OperationError, OperationState};
use crate::problem::Problem;
use crate::respond::accepted;
use crate::scheduler::fetch;

/// The result of an operation.
#[utoipa::path(
    get,
    path = "/api/result/{id}",
    tag = "operations",
    params(("id" = String, Path, description = "The operation id")),
    responses(
        (status = 200, description = "The operation succeeded: its output (a `ProcessResult` for `/api/process` operations, a `SampleResult` for `/api/start-operation` ones)",
            body = crate::model::OperationOutput),
        (status = 202, description = "Not finished yet; poll the status monitor", body = crate::model::OperationAccepted,
            headers(
                ("Location" = String, description = "The status monitor"),
                ("Operation-Location" = String, description = "The status monitor"),
                ("Retry-After" = u64),
            )),
        super::OperationNotFound,
        (status = 409, description = "The operation failed (`/problems/operation-failed`) or was canceled (`/problems/operation-canceled`); `error` says why", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn result(
    State(state): State<AppState>,
    edge: Edge,
    OperationPath(id): OperationPath,
) -> Result<Response, Problem> {
    let m = fetch(&state, &id, true).await?;
    match m.runtime_status {
        OrchestrationStatus::Completed => match m.serialized_output.as_deref() {
            Some(token) if token.starts_with(durabletask::payload::TOKEN_PREFIX) => {
                stored_result(&state, &id, token).await
            }
            _ => Ok(json_response(
                StatusCode::OK,
                &m.output::<Value>().unwrap_or(Value::Null),
                JSON,
            )),
        },
        OrchestrationStatus::Failed => Err(Problem::new(
            StatusCode::CONFLICT,
            "operation-failed",
            "Operation Failed",
            "the operation failed; see `error`",
        )
        .about(&id, OperationError::of(&m))),
        OrchestrationStatus::Terminated | OrchestrationStatus::Canceled => Err(Problem::new(
            StatusCode::CONFLICT,
            "operation-canceled",
            "Operation Canceled",
            "the operation was canceled before it produced a result",
        )
        .about(&id, OperationError::of(&m))),
        other => accepted(&state, &edge, id, OperationState::of(other)),
    }
}

/// A result the worker put in blob storage (the claim check): streamed from the store as it
/// arrives (decompressed), so a result of megabytes is never held whole in the gateway.
async fn stored_result(state: &AppState, id: &str, token: &str) -> Result<Response, Problem> {
    let Some(store) = &state.payload_store else {
        tracing::error!(
            operation = id,
            "a result is in blob storage and no payload store is configured (payload_connection_string)"
        );
        return Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "payload-store-unavailable",
            "Bad Gateway",
            "the result is kept in external storage, which this gateway is not configured to read",
        ));
    };
    match store.open(token).await {
        Ok(stream) => Ok((
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, JSON)],
            axum::body::Body::from_stream(stream),
        )
            .into_response()),
        Err(e) if e.is_transient() => {
            tracing::warn!(operation = id, error = %e, "the payload store failed");
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "payload-store-unavailable",
                "Service Unavailable",
                "the result's storage is unavailable; try again shortly",
            )
            .retry_after(state.config.retry_after_seconds))
        }
        Err(e) => {
            tracing::error!(operation = id, error = %e, "the result cannot be read from the payload store");
            Err(Problem::new(
                StatusCode::BAD_GATEWAY,
                "payload-store-unavailable",
                "Bad Gateway",
                "the result is kept in external storage and cannot be read from there",
            ))
        }
    }
}
