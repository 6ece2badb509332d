//! `Idempotency-Key` (IETF httpapi draft): at most one operation per key, with no state in the
//! gateway.

use axum::http::{HeaderMap, StatusCode};
use contract::{PROCESS_ORCHESTRATION, ProcessRequest};
use durabletask::StartOptions;

use crate::AppState;
use crate::auth::Caller;
use crate::problem::Problem;
use crate::scheduler::{create_span, owner_tags, start_once, with_deadline};

/// Namespace of the body fingerprints (ours, so they collide with nothing else).
const FINGERPRINT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3b8e_51d2_7c40_4a1f_9e63_0d5a_c2f8_7b19);
const FINGERPRINT_TAG: &str = "idempotency-fingerprint";

/// The `Idempotency-Key` header, if present and well-formed.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let raw = v.to_str().unwrap_or("");
    // The draft makes the value a structured-field string (`"..."`); a bare token is accepted
    // too and names the same key. Escapes are not supported, so no `"` or `\` inside quotes.
    let key = match raw.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .filter(|k| !k.is_empty() && k.len() <= 253 && !k.contains(['"', '\\'])),
        None => Some(raw).filter(|k| {
            !k.is_empty()
                && k.len() <= 255
                && !k.contains('"')
                && !k.starts_with(' ')
                && !k.ends_with(' ')
        }),
    }
    .filter(|k| k.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    match key {
        Some(k) => Ok(Some(k.to_string())),
        None => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Bad Request",
            "`Idempotency-Key` must be 1 to 255 printable ASCII characters, optionally in double quotes",
        )),
    }
}

/// Starts `process_request` for `key`: the instance id is derived from the key, the scheduler
/// refuses a second instance with that id (no status is replaceable), and a fingerprint of the
/// request in the instance's tags tells a retry (same body: same operation) from a misuse of the
/// key (different body: 422).
/// Whether `caller`'s start under `key` has been made already (whatever its body was).
pub(crate) async fn already_started(
    state: &AppState,
    caller: &Caller,
    key: &str,
) -> Result<bool, Problem> {
    let id = state.ids.idempotent_id(caller, key);
    Ok(
        with_deadline(state, "GetInstance", state.client.get_instance(&id, false))
            .await?
            .is_some(),
    )
}

pub(crate) async fn start_idempotent(
    state: &AppState,
    edge: &crate::edge::Edge,
    caller: &Caller,
    key: &str,
    input: &ProcessRequest,
    callback: Option<&str>,
) -> Result<String, Problem> {
    // Scoped to the caller: another caller's same key is another operation.
    let id = state.ids.idempotent_id(caller, key);
    // Through `Value`, whose keys are sorted: the fingerprint does not depend on field order.
    // The callback URL is part of what is asked: the same key with another one is refused.
    let canonical = serde_json::to_value(input)
        .map(|v| v.to_string())
        .unwrap_or_default()
        + callback.unwrap_or_default();
    let fingerprint = uuid::Uuid::new_v5(&FINGERPRINT_NAMESPACE, canonical.as_bytes())
        .simple()
        .to_string();
    let (span, trace) = create_span(PROCESS_ORCHESTRATION, &id, edge.trace.as_ref());
    let opts = StartOptions {
        instance_id: Some(id.clone()),
        tags: owner_tags(caller)
            .into_iter()
            .chain([(FINGERPRINT_TAG.to_string(), fingerprint.clone())])
            .chain(crate::callback::tags(
                callback.map(str::to_string).as_ref(),
                &id,
            ))
            .collect(),
        parent_trace_context: trace,
        ..Default::default()
    };
    if start_once(state, PROCESS_ORCHESTRATION, input, opts, span).await? {
        state.metrics.started.inc();
        return Ok(id);
    }
    let existing =
        with_deadline(state, "GetInstance", state.client.get_instance(&id, false)).await?;
    match existing.and_then(|m| m.tags.get(FINGERPRINT_TAG).cloned()) {
        Some(fp) if fp == fingerprint => {
            state.metrics.deduplicated.inc();
            Ok(id)
        }
        _ => Err(key_reused()),
    }
}

/// The request's `Idempotency-Key` was used before with another request.
pub(crate) fn key_reused() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "Unprocessable Content",
        "this Idempotency-Key was already used with a different request body",
    )
}
