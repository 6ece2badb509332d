//! `GET /api/status/{id}`: the status monitor, with an optional long poll.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use durabletask::Error as DtsError;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::edge::Edge;
use crate::extract::{ApiQuery, OperationPath};
use crate::json::{JSON, json_response};
use crate::model::{OperationStatusBody, StatusDocument};
use crate::problem::{Problem, bad_query, operation_not_found};
use crate::respond::retry_after;
use crate::scheduler::{dts_call, dts_problem, fetch};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatusQuery {
    /// Long poll: hold the request up to this many seconds (capped by `max_wait_seconds`, 30 by
    /// default) until the operation ends. When `max_long_polls` are already waiting, or the
    /// gateway is shutting down, the current status is answered at once.
    #[param(minimum = 0)]
    wait: Option<i32>,
}

/// The status monitor.
#[utoipa::path(
    get,
    path = "/api/status/{id}",
    tag = "operations",
    params(("id" = String, Path, description = "The operation id"), StatusQuery),
    responses(
        (status = 200, description = "The operation's status; `Retry-After` while it is not finished", body = OperationStatusBody,
            headers(("Retry-After" = u64, description = "Present while the operation is not finished"))),
        (status = 400, description = "Bad query parameters", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::OperationNotFound,
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn status(
    State(state): State<AppState>,
    edge: Edge,
    caller: Option<axum::Extension<crate::shares::CallerKey>>,
    ApiQuery(q): ApiQuery<StatusQuery>,
    OperationPath(id): OperationPath,
) -> Result<Response, Problem> {
    let wait = match q.wait {
        Some(w) => u64::try_from(w)
            .map_err(|_| bad_query("`wait` must be a number of seconds, 0 or more"))?,
        None => 0,
    }
    .min(state.config.limits.max_wait_seconds);
    let mut m = fetch(&state, &id, true).await?;
    // Past `max_long_polls` waiting, or once the gateway is shutting down, `?wait=` answers at
    // once (with `Retry-After` while the operation runs).
    let slot = (wait > 0 && !m.runtime_status.is_terminal())
        .then(|| state.long_poll(caller.as_ref().map(|c| &*c.0.0)))
        .flatten();
    if let Some(_slot) = slot {
        let deadline = Duration::from_secs(wait);
        // WaitForInstanceCompletion on the scheduler; running out of time is a normal answer.
        let waited = tokio::select! {
            r = dts_call(
                &state,
                "WaitForInstanceCompletion",
                deadline + state.config.dts_timeout(),
                state.client.wait_for_instance_completion(&id, true, deadline),
            ) => Some(r),
            _ = state.releasing.cancelled() => None,
        };
        match waited {
            Some(Ok(Ok(Some(done)))) => m = done,
            Some(Ok(Ok(None))) => return Err(operation_not_found(&id)),
            Some(Ok(Err(e))) if !matches!(e, DtsError::DeadlineExceeded(_)) => {
                return Err(dts_problem(&state, "WaitForInstanceCompletion", e));
            }
            _ => m = fetch(&state, &id, true).await?,
        }
    }
    let body = OperationStatusBody {
        document: StatusDocument::of(&id, &m),
        callback: crate::callback::state_of(&state, &m).await?,
        links: edge.links(&id),
    };
    let mut resp = json_response(StatusCode::OK, &body, JSON);
    if !m.runtime_status.is_terminal() {
        retry_after(&mut resp, state.config.retry_after_seconds);
    }
    Ok(resp)
}
