//! `POST /api/operations/{id}/cancel`: terminates an operation's orchestration.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use crate::AppState;
use crate::edge::Edge;
use crate::extract::OperationPath;
use crate::model::OperationState;
use crate::problem::Problem;
use crate::respond::accepted;
use crate::scheduler::{fetch, with_deadline};

/// Cancels an operation (terminates its orchestration, and any it started, with a reason).
#[utoipa::path(
    post,
    path = "/api/operations/{id}/cancel",
    tag = "operations",
    params(("id" = String, Path, description = "The operation id")),
    responses(
        (status = 202, description = "Cancellation requested; the status monitor shows `Canceled` once done", body = crate::model::OperationAccepted,
            headers(
                ("Location" = String, description = "The status monitor"),
                ("Operation-Location" = String, description = "The status monitor"),
                ("Retry-After" = u64),
            )),
        super::OperationNotFound,
        (status = 409, description = "The operation already ended", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    edge: Edge,
    OperationPath(id): OperationPath,
) -> Result<Response, Problem> {
    let m = fetch(&state, &id, false).await?;
    if m.runtime_status.is_terminal() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "operation-finished",
            "Conflict",
            format!(
                "the operation already ended as {}",
                OperationState::of(m.runtime_status)
            ),
        ));
    }
    with_deadline(
        &state,
        "TerminateInstance",
        state.client.terminate(&id, "canceled by the client", true),
    )
    .await?;
    state.metrics.canceled.inc();
    accepted(&state, &edge, id, OperationState::Canceling)
}
