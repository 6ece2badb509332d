//! `POST /api/process`: starts `process_request` and answers `202` at once.

use axum::extract::State;
use axum::response::Response;
use contract::{PROCESS_ORCHESTRATION, ProcessRequest};

use crate::auth::Caller;
use crate::edge::{CallbackUrl, Edge, IdempotencyKey};
use crate::extract::{FieldRules, JsonBody};
use crate::idempotency::{already_started, start_idempotent};
use crate::model::OperationState;
use crate::problem::{Problem, invalid};
use crate::respond::accepted;
use crate::scheduler::{NewOperation, start_orchestration};
use crate::{AppState, Settings};

impl FieldRules for ProcessRequest {
    fn rule(field: &str, config: &Settings) -> Option<String> {
        match field {
            "name" => Some(format!(
                "must be a string of 1 to {} characters",
                config.limits.max_name_chars
            )),
            "delay_seconds" => Some(format!(
                "must be an integer between 0 and {}",
                config.limits.max_delay_seconds
            )),
            _ => None,
        }
    }
}

/// The request with its name trimmed, within the limits; else a `422` naming the field. (A
/// recurring operation's request meets the same rules.)
pub(crate) fn checked(state: &AppState, req: &ProcessRequest) -> Result<ProcessRequest, Problem> {
    let name = req.name.trim();
    if name.is_empty() {
        return Err(invalid("`name` must not be empty"));
    }
    if name.chars().count() > state.config.limits.max_name_chars {
        return Err(invalid(format!(
            "`name` must be at most {} characters",
            state.config.limits.max_name_chars
        )));
    }
    if req.delay_seconds > state.config.limits.max_delay_seconds {
        return Err(invalid(format!(
            "`delay_seconds` must be between 0 and {}",
            state.config.limits.max_delay_seconds
        )));
    }
    Ok(ProcessRequest {
        name: name.to_string(),
        delay_seconds: req.delay_seconds,
    })
}

/// Starts `process_request` and answers at once.
#[utoipa::path(
    post,
    path = "/api/process",
    tag = "operations",
    request_body(content = ProcessRequest, content_type = "application/json"),
    params(
        ("Callback-Url" = Option<String>, Header, max_length = 2048,
            description = "Be told when the operation ends: one CloudEvent (JSON, `type` io.async-http-api.operation.succeeded, .failed or .canceled; `subject` the operation id; `data` the status document with its links) POSTed here, signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`), retried with back-off. `https` only unless configured; the host must be allowed, and must not resolve to a loopback, private, link-local or metadata address: else `422`. The status document's `callback` says where the delivery stands."),
        ("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = r#"^(?:"[ !#-\[\]-~]{1,253}"|[!#-~](?:[ !#-~]{0,253}[!#-~])?)$"#,
            description = "Repeat a start safely: the same key and body return the same operation; the same key with another body is refused (422). 1-255 printable ASCII."),
    ),
    responses(
        (status = 202, description = "Accepted; poll the status monitor", body = crate::model::OperationAccepted,
            headers(
                ("Location" = String, description = "The status monitor"),
                ("Operation-Location" = String, description = "The status monitor (Azure LRO)"),
                ("Retry-After" = u64, description = "Seconds to wait before polling"),
            )),
        (status = 400, description = "Malformed JSON or `Idempotency-Key`", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = crate::ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Wrong, missing or unknown fields, values out of range, an `Idempotency-Key` reused with another body or callback, or a `Callback-Url` that is refused", body = crate::ProblemDetails, content_type = "application/problem+json"),
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn start_process(
    State(state): State<AppState>,
    edge: Edge,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    CallbackUrl(callback): CallbackUrl,
    JsonBody(req): JsonBody<ProcessRequest>,
) -> Result<Response, Problem> {
    let input = checked(&state, &req)?;
    // The operation's id: from the key (a retry finds the same one), else random and
    // unguessable, under the caller's prefix.
    let id = match &key {
        Some(key) => state.ids.idempotent_id(&caller, key),
        None => state.ids.new_id(&caller),
    };
    // Held until the start is made: the caller's next start counts this one.
    let _turn = match crate::scheduler::check_unfinished(&state, &caller, &id).await {
        Ok(turn) => turn,
        // A retry of a start already made starts nothing: answered as before, cap or not.
        Err(refused) => match &key {
            Some(key)
                if refused.status() == axum::http::StatusCode::TOO_MANY_REQUESTS
                    && already_started(&state, &caller, key).await? =>
            {
                None
            }
            _ => return Err(refused),
        },
    };
    match key {
        Some(key) => {
            let started =
                start_idempotent(&state, &edge, &caller, &key, &input, callback.as_deref()).await?;
            debug_assert_eq!(started, id);
        }
        None => {
            let op = NewOperation {
                name: PROCESS_ORCHESTRATION,
                id: &id,
                input: &input,
                tags: crate::callback::tags(callback.as_ref(), &id),
            };
            start_orchestration(&state, &edge, &caller, op).await?;
        }
    }
    if let Some(url) = callback {
        crate::callback::start_delivery(&state, &edge, &caller, &id, url).await?;
    }
    accepted(&state, &edge, id, OperationState::NotStarted)
}
