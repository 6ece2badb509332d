//! `/api/recurring`: operations that start again and again at an interval, owned by their
//! caller. Each is a recurring schedule on the scheduler (the schedule entity the Durable Task
//! SDKs share) whose id carries the caller's prefix, so its runs (`process_request` instances
//! `<id>-<run time>`) are ordinary operations in the caller's list, and another caller sees
//! neither.

mod document;

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use contract::{PROCESS_ORCHESTRATION, ProcessRequest};
use durabletask::{ScheduleCreationOptions, ScheduleDescription, ScheduleError, ScheduleQuery};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::edge::{Edge, IdempotencyKey};
use crate::extract::{ApiQuery, JsonBody};
use crate::idempotency::key_reused;
use crate::json::{JSON, json_response};
use crate::links::encode;
use crate::problem::{Problem, bad_query, invalid};
use crate::respond::location;
use crate::scheduler::{dts_problem, timed_out};

pub use document::{
    RecurringLinks, RecurringOperation, RecurringPage, RecurringRequest, RecurringStatus,
};
use document::{document, interval_rule};

fn not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "recurring-not-found",
        "Not Found",
        format!("no recurring operation with id '{id}'"),
    )
}

/// A schedule call under the scheduler deadline (a change waits for the schedule to take it),
/// timed and counted like every scheduler call; its errors as problems.
async fn call<T>(
    state: &AppState,
    method: &'static str,
    fut: impl Future<Output = Result<T, ScheduleError>>,
) -> Result<T, Problem> {
    let started = std::time::Instant::now();
    // The change itself waits up to the deadline; this bounds the calls around it too.
    let r = tokio::time::timeout(state.config.dts_timeout() * 2, Box::pin(fut)).await;
    let code = match &r {
        Ok(Ok(_)) => None,
        Ok(Err(ScheduleError::Client(e))) => Some(
            e.status()
                .map_or_else(|| "Unknown".to_string(), |s| format!("{:?}", s.code())),
        ),
        Ok(Err(ScheduleError::Failed { .. })) => Some("Refused".to_string()),
        Ok(Err(_)) | Err(_) => Some("DeadlineExceeded".to_string()),
    };
    state
        .metrics
        .rpc(method, started.elapsed(), code.as_deref());
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(ScheduleError::Invalid(m))) => Err(invalid(m)),
        Ok(Err(ScheduleError::NotFound(id))) => Err(not_found(&id)),
        Ok(Err(ScheduleError::Failed { message, .. })) => {
            tracing::info!(method, %message, "a recurring operation refused a change");
            Err(conflict(
                "the recurring operation changed meanwhile; read it and try again",
            ))
        }
        Ok(Err(ScheduleError::Client(e))) => Err(dts_problem(state, method, e)),
        Ok(Err(ScheduleError::State(id, e))) => {
            tracing::error!(method, %id, error = %e, "unreadable schedule state");
            Err(Problem::new(
                StatusCode::BAD_GATEWAY,
                "scheduler-error",
                "Bad Gateway",
                "the recurring operation's state on the scheduler cannot be read",
            ))
        }
        Ok(Err(ScheduleError::TimedOut { .. })) | Err(_) => Err(timed_out(state)),
    }
}

fn conflict(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "recurring-conflict",
        "Conflict",
        detail,
    )
}

fn parse_time(
    field: &str,
    v: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Problem> {
    v.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.to_utc())
            .map_err(|_| {
                invalid(format!(
                    "`{field}` must be an RFC 3339 time like 2026-01-31T12:00:00Z"
                ))
            })
    })
    .transpose()
}

/// Creates a recurring operation.
#[utoipa::path(
    post,
    path = "/api/recurring",
    tag = "recurring",
    request_body(content = RecurringRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = r#"^(?:"[ !#-\[\]-~]{1,253}"|[!#-~](?:[ !#-~]{0,253}[!#-~])?)$"#,
            description = "Repeat a create safely: the same key and body return the same recurring operation (`201`, even at the cap); the same key with another body is refused (422). 1-255 printable ASCII. After a delete, the key creates a new one."),
    ),
    responses(
        (status = 201, description = "Created (or, with an `Idempotency-Key` used before with this body, the one it created); its runs start at its interval", body = RecurringOperation,
            headers(("Location" = String, description = "The recurring operation"))),
        (status = 400, description = "Malformed JSON or `Idempotency-Key`", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Wrong, missing or unknown fields: an interval out of range, a time that is not RFC 3339, an end in the past or before the start; or an `Idempotency-Key` used before with another body", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 429, description = "The caller has `max_recurring_per_caller` recurring operations; delete one first", body = crate::ProblemDetails, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    edge: Edge,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(req): JsonBody<RecurringRequest>,
) -> Result<Response, Problem> {
    let request = super::process::checked(
        &state,
        &ProcessRequest {
            name: req.name,
            delay_seconds: req.delay_seconds,
        },
    )?;
    let limits = &state.config.limits;
    if !(limits.min_recurring_interval_seconds..=limits.max_recurring_interval_seconds)
        .contains(&req.interval_seconds)
    {
        return Err(invalid(format!(
            "`interval_seconds` {}",
            interval_rule(&state.config)
        )));
    }
    let start_at = parse_time("start_at", req.start_at.as_deref())?;
    let end_at = parse_time("end_at", req.end_at.as_deref())?;
    if let Some(end) = end_at {
        if end <= chrono::Utc::now() {
            return Err(invalid("`end_at` must be in the future"));
        }
        if start_at.is_some_and(|s| s >= end) {
            return Err(invalid("`end_at` must be after `start_at`"));
        }
    }
    // From the key, a retry names the same recurring operation; else random, under the
    // caller's prefix.
    let id = match &key {
        Some(key) => state.ids.idempotent_recurring_id(&caller, key),
        None => state.ids.new_id(&caller),
    };
    let mut options = ScheduleCreationOptions::new(
        &id,
        PROCESS_ORCHESTRATION,
        Duration::from_secs(req.interval_seconds),
    )
    .map_err(invalid)?;
    options.orchestration_input = serde_json::to_value(&request).ok();
    options.start_at = start_at;
    options.end_at = end_at;
    let schedules = schedules(&state);
    if key.is_some()
        && let Some(existing) = call(&state, "GetEntity", schedules.describe(&id)).await?
    {
        // Made already: the same answer for the same request (even at the cap), a refusal for
        // another.
        return created(&edge, existing, &options, true);
    }
    let prefix = state.ids.prefix_of(&caller);
    let cap = limits.max_recurring_per_caller;
    let query = ScheduleQuery {
        schedule_id_prefix: Some(prefix.clone()),
        page_size: Some(u32::try_from(cap + 1).unwrap_or(1001)),
        ..Default::default()
    };
    let (held, _) = call(&state, "QueryEntities", schedules.list_page(&query, None)).await?;
    if held.len() >= cap {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-recurring",
            "Too Many Requests",
            format!("you have {cap} recurring operations, the most allowed; delete one first"),
        )
        .retry_after(60));
    }
    call(&state, "CreateSchedule", schedules.create(&options)).await?;
    let made = call(&state, "GetEntity", schedules.describe(&id))
        .await?
        .ok_or_else(|| not_found(&id))?;
    // With a key, a concurrent request with the same key and another body may have replaced
    // ours: what is read back tells.
    created(&edge, made, &options, key.is_some())
}

/// `201` with recurring operation `d`. Under an `Idempotency-Key` (`keyed`), only if `d` is what
/// `options` make; else the key was used with another request (`422`).
fn created(
    edge: &Edge,
    d: ScheduleDescription,
    options: &ScheduleCreationOptions,
    keyed: bool,
) -> Result<Response, Problem> {
    if keyed && !made_by(&d, options) {
        return Err(key_reused());
    }
    let id = d.schedule_id.clone();
    let doc = document(edge, d).ok_or_else(|| not_found(&id))?;
    let mut resp = json_response(StatusCode::CREATED, &doc, JSON);
    location(&mut resp, &doc.links.this)?;
    resp.headers_mut().remove("operation-location");
    Ok(resp)
}

/// Whether schedule `d` is configured as `options` configure it (times are kept to the
/// microsecond).
fn made_by(d: &ScheduleDescription, options: &ScheduleCreationOptions) -> bool {
    let micros = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_micros());
    d.orchestration_name.as_deref() == Some(options.orchestration_name.as_str())
        && d.orchestration_input == options.orchestration_input
        && d.interval == Some(options.interval)
        && micros(d.start_at) == micros(options.start_at)
        && micros(d.end_at) == micros(options.end_at)
}

async fn describe(state: &AppState, edge: &Edge, id: &str) -> Result<RecurringOperation, Problem> {
    let d = call(state, "GetEntity", state.client.schedules().describe(id)).await?;
    d.and_then(|d| document(edge, d))
        .ok_or_else(|| not_found(id))
}

/// The `{id}` of a recurring route, which the caller may see. An id that cannot be read (bad
/// percent-encoding, not 1-100 printable ASCII) or another caller's is a `404` like any unknown
/// id.
pub(crate) struct RecurringPath(String);

impl FromRequestParts<AppState> for RecurringPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found(parts.uri.path()))?;
        let caller = Caller::from_request_parts(parts, state).await?;
        let printable =
            !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if !printable || !caller.may_see(&state.ids, &id) {
            return Err(not_found(&id));
        }
        Ok(Self(id))
    }
}

/// One recurring operation.
#[utoipa::path(
    get,
    path = "/api/recurring/{id}",
    tag = "recurring",
    params(("id" = String, Path, description = "The recurring operation's id")),
    responses(
        (status = 200, description = "The recurring operation", body = RecurringOperation),
        (status = 404, description = "No such recurring operation (or another caller's)", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    edge: Edge,
    RecurringPath(id): RecurringPath,
) -> Result<Response, Problem> {
    let doc = describe(&state, &edge, &id).await?;
    Ok(json_response(StatusCode::OK, &doc, JSON))
}

/// The schedule client for a write, bounded by the gateway's deadline for scheduler calls.
fn schedules(state: &AppState) -> durabletask::schedule::Schedules<'_> {
    state
        .client
        .schedules()
        .with_timeout(state.config.dts_timeout())
}

/// Pauses or resumes `id`, then answers its document.
async fn change(
    state: AppState,
    edge: Edge,
    id: String,
    to: RecurringStatus,
) -> Result<Response, Problem> {
    let now = describe(&state, &edge, &id).await?;
    if now.status == to {
        return Err(conflict(match to {
            RecurringStatus::Paused => "the recurring operation is already paused",
            RecurringStatus::Active => "the recurring operation is not paused",
        }));
    }
    let schedules = schedules(&state);
    match to {
        RecurringStatus::Paused => call(&state, "PauseSchedule", schedules.pause(&id)).await?,
        RecurringStatus::Active => call(&state, "ResumeSchedule", schedules.resume(&id)).await?,
    }
    let doc = describe(&state, &edge, &id).await?;
    Ok(json_response(StatusCode::OK, &doc, JSON))
}

/// Pauses a recurring operation: no run starts until it is resumed.
#[utoipa::path(
    post,
    path = "/api/recurring/{id}/pause",
    tag = "recurring",
    params(("id" = String, Path, description = "The recurring operation's id")),
    responses(
        (status = 200, description = "Paused", body = RecurringOperation),
        (status = 404, description = "No such recurring operation (or another caller's)", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "Already paused", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn pause(
    State(state): State<AppState>,
    edge: Edge,
    RecurringPath(id): RecurringPath,
) -> Result<Response, Problem> {
    change(state, edge, id, RecurringStatus::Paused).await
}

/// Resumes a paused recurring operation: runs start again at the next interval.
#[utoipa::path(
    post,
    path = "/api/recurring/{id}/resume",
    tag = "recurring",
    params(("id" = String, Path, description = "The recurring operation's id")),
    responses(
        (status = 200, description = "Active again", body = RecurringOperation),
        (status = 404, description = "No such recurring operation (or another caller's)", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "Not paused", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn resume(
    State(state): State<AppState>,
    edge: Edge,
    RecurringPath(id): RecurringPath,
) -> Result<Response, Problem> {
    change(state, edge, id, RecurringStatus::Active).await
}

/// Deletes a recurring operation: no run starts after the answer (runs already started go on).
#[utoipa::path(
    delete,
    path = "/api/recurring/{id}",
    tag = "recurring",
    params(("id" = String, Path, description = "The recurring operation's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such recurring operation (or another caller's)", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    edge: Edge,
    RecurringPath(id): RecurringPath,
) -> Result<Response, Problem> {
    describe(&state, &edge, &id).await?;
    let schedules = schedules(&state);
    call(&state, "DeleteSchedule", schedules.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecurringListQuery {
    /// Schedules read per page, 1 to 1000 (50 by default).
    #[param(minimum = 1, maximum = 1000)]
    page_size: Option<u32>,
    /// Opaque token from a previous page's `nextLink`.
    continuation_token: Option<String>,
}

/// The caller's recurring operations (an admin's: everyone's), one page at a time.
#[utoipa::path(
    get,
    path = "/api/recurring",
    tag = "recurring",
    params(RecurringListQuery),
    responses(
        (status = 200, description = "One page; follow `nextLink` for the next", body = RecurringPage),
        (status = 400, description = "Bad query parameters", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    edge: Edge,
    caller: Caller,
    ApiQuery(q): ApiQuery<RecurringListQuery>,
) -> Result<Response, Problem> {
    let page_size = q.page_size.unwrap_or(50);
    if !(1..=1000).contains(&page_size) {
        return Err(bad_query("`page_size` must be between 1 and 1000"));
    }
    let prefix = match caller.role {
        Role::Admin => String::new(),
        Role::User => state.ids.prefix_of(&caller),
    };
    let query = ScheduleQuery {
        schedule_id_prefix: Some(prefix),
        page_size: Some(page_size),
        ..Default::default()
    };
    let page = call(
        &state,
        "QueryEntities",
        state
            .client
            .schedules()
            .list_page(&query, q.continuation_token.clone()),
    )
    .await;
    let (found, next) = match page {
        Ok(page) => page,
        Err(p) if p.status() == StatusCode::BAD_GATEWAY && q.continuation_token.is_some() => {
            return Err(bad_query(
                "`continuation_token` is not valid; use the `nextLink` of a previous page",
            ));
        }
        Err(p) => return Err(p),
    };
    let value = found
        .into_iter()
        .filter_map(|d| document(&edge, d))
        .collect();
    let next_link = next.map(|t| {
        format!(
            "{}/api/recurring?page_size={page_size}&continuation_token={}",
            edge.base,
            encode(&t)
        )
    });
    Ok(json_response(
        StatusCode::OK,
        &RecurringPage { value, next_link },
        JSON,
    ))
}
