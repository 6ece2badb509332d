//! `GET /api/operations`: operations filtered by status and creation time, one page at a time.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use durabletask::Error as DtsError;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::{Caller, Role, forbidden};
use crate::edge::Edge;
use crate::extract::ApiQuery;
use crate::json::{JSON, json_response};
use crate::links::encode;
use crate::model::{OperationPage, OperationState, OperationSummary, rfc3339};
use crate::problem::{Problem, bad_query};
use crate::scheduler::{dts_call, dts_problem, timed_out};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Comma-separated statuses, as the status document spells them (the pattern lists them).
    // The pattern is filled in from `contract::status` (`openapi::status_filter`).
    #[param(example = "Running,NotStarted")]
    status: Option<String>,
    /// Only operations created at or after this RFC 3339 time.
    #[param(format = DateTime)]
    created_from: Option<String>,
    /// Only operations created at or before this RFC 3339 time.
    #[param(format = DateTime)]
    created_to: Option<String>,
    /// Operations per page, 1 to 1000 (50 by default).
    #[param(minimum = 1, maximum = 1000)]
    page_size: Option<u32>,
    /// Opaque token from a previous page's `nextLink`.
    continuation_token: Option<String>,
    /// Only the operations the runs of this recurring operation started.
    recurring: Option<String>,
    /// Admins only: the operations of this owner (`jwt:<identity>` or `key:<key id>`). Others
    /// always see their own.
    owner: Option<String>,
}

fn parse_time(
    key: &str,
    v: Option<&String>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Problem> {
    v.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.to_utc())
            .map_err(|_| {
                bad_query(format!(
                    "`{key}` must be an RFC 3339 time like 2026-01-31T12:00:00Z"
                ))
            })
    })
    .transpose()
}

/// Lists operations, filtered by status and creation time, one page at a time.
#[utoipa::path(
    get,
    path = "/api/operations",
    tag = "operations",
    params(ListQuery),
    responses(
        (status = 200, description = "One page; follow `nextLink` for the next", body = OperationPage),
        (status = 400, description = "Bad query parameters", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "`owner` from a caller who is not an admin", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    edge: Edge,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    // A caller's operations share their id prefix: the list is a prefix query.
    let prefix = match (&q.owner, caller.role) {
        (Some(owner), Role::Admin) => Some(state.ids.owner_prefix(owner)),
        (Some(_), Role::User) => {
            return Err(forbidden(
                "only an admin may list another owner's operations",
            ));
        }
        (None, Role::Admin) => None,
        (None, Role::User) => Some(state.ids.prefix_of(&caller)).filter(|p| !p.is_empty()),
    };
    // A recurring operation's runs are `<its id>-<run time>`; its id carries the owner's prefix,
    // so another caller's is refused like any id it may not see.
    let prefix = match &q.recurring {
        Some(id) if !caller.may_see(&state.ids, id) || id.is_empty() => {
            return Err(bad_query(format!("no recurring operation with id '{id}'")));
        }
        Some(id) => Some(format!("{id}-")),
        None => prefix,
    };
    let statuses = match q.status.as_deref() {
        None => vec![],
        Some(list) => {
            let mut out = Vec::new();
            for s in list.split(',') {
                let state = OperationState::listable(s).ok_or_else(|| {
                    bad_query(format!(
                        "unknown status '{s}'; use {}",
                        OperationState::listable_names()
                    ))
                })?;
                out.extend_from_slice(state.runtime_statuses());
            }
            out
        }
    };
    let page_size = q.page_size.unwrap_or(50);
    if !(1..=1000).contains(&page_size) {
        return Err(bad_query("`page_size` must be between 1 and 1000"));
    }
    let query = durabletask::InstanceQuery {
        runtime_status: statuses,
        created_from: parse_time("created_from", q.created_from.as_ref())?,
        created_to: parse_time("created_to", q.created_to.as_ref())?,
        page_size: Some(page_size),
        continuation_token: q.continuation_token.clone(),
        instance_id_prefix: prefix,
        ..Default::default()
    };
    let page = match dts_call(
        &state,
        "QueryInstances",
        state.config.dts_timeout(),
        state.client.query_instances(query),
    )
    .await
    {
        Ok(Ok(page)) => page,
        // The scheduler only refuses a query for a token it did not issue.
        Ok(Err(DtsError::InvalidArgument(_))) => {
            return Err(bad_query(
                "`continuation_token` is not valid; use the `nextLink` of a previous page",
            ));
        }
        Ok(Err(e)) => return Err(dts_problem(&state, "QueryInstances", e)),
        Err(_) => return Err(timed_out(&state)),
    };
    let value = page
        .instances
        .iter()
        // A callback's delivery, or a change to a recurring operation, runs as an instance of its
        // own, not an operation.
        .filter(|m| {
            m.name != contract::CALLBACK_ORCHESTRATION
                && m.name != durabletask::schedule::SCHEDULE_OPERATION_ORCHESTRATOR
        })
        .map(|m| OperationSummary {
            id: m.instance_id.clone(),
            name: m.name.clone(),
            status: OperationState::of(m.runtime_status),
            runtime_status: m.runtime_status.as_str(),
            created_at: rfc3339(m.created_at),
            last_updated_at: rfc3339(m.last_updated_at),
            links: edge.links(&m.instance_id),
        })
        .collect();
    let next_link = page.continuation_token.map(|t| {
        let mut params = vec![
            format!("page_size={page_size}"),
            format!("continuation_token={}", encode(&t)),
        ];
        for (k, v) in [
            ("status", &q.status),
            ("created_from", &q.created_from),
            ("created_to", &q.created_to),
            ("owner", &q.owner),
            ("recurring", &q.recurring),
        ] {
            if let Some(v) = v {
                params.push(format!("{k}={}", encode(v)));
            }
        }
        format!("{}/api/operations?{}", edge.base, params.join("&"))
    });
    Ok(json_response(
        StatusCode::OK,
        &OperationPage { value, next_link },
        JSON,
    ))
}
