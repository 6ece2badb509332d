//! `DELETE /api/operations/{id}`: purges a finished operation (its instance and history).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::extract::OperationPath;
use crate::model::OperationState;
use crate::problem::{Problem, operation_not_found};
use crate::scheduler::{fetch, with_deadline};

/// Deletes a finished operation and everything the scheduler keeps about it; its id then names
/// nothing (`404`). A running operation is refused: cancel it first.
#[utoipa::path(
    delete,
    path = "/api/operations/{id}",
    tag = "operations",
    params(("id" = String, Path, description = "The operation id")),
    responses(
        (status = 204, description = "Purged"),
        super::OperationNotFound,
        (status = 409, description = "The operation has not finished; cancel it first", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn purge(
    State(state): State<AppState>,
    OperationPath(id): OperationPath,
) -> Result<Response, Problem> {
    let m = fetch(&state, &id, false).await?;
    if !m.runtime_status.is_terminal() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "operation-not-finished",
            "Conflict",
            format!(
                "the operation is {}; cancel it first, or wait until it ends",
                OperationState::of(m.runtime_status)
            ),
        ));
    }
    let purged = with_deadline(
        &state,
        "PurgeInstances",
        state.client.purge_instance(&id, true),
    )
    .await?;
    if purged.deleted_instance_count == 0 {
        // Purged by someone else in between.
        return Err(operation_not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
