//! Completion callbacks at the gateway: the `Callback-Url` of a start, refused at once (`422`)
//! when the policy does not allow it, and the callback orchestration started beside the
//! operation; then, in the status document, where the delivery stands.

use axum::http::{HeaderMap, StatusCode};
use contract::{
    CALLBACK_ORCHESTRATION, CALLBACK_TAG, CallbackJob, CallbackState, callback_instance_id,
};
use durabletask::{OrchestrationMetadata, StartOptions};

use crate::AppState;
use crate::auth::Caller;
use crate::problem::Problem;
use crate::scheduler::{create_span, owner_tags, start_once, with_deadline};

/// The header a start names its callback URL in.
pub(crate) const CALLBACK_HEADER: &str = "callback-url";

/// The start's callback URL, if it has one and the policy allows it (its host resolved, every
/// address allowed); else a `422` problem saying why.
pub(crate) async fn requested(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(CALLBACK_HEADER) else {
        return Ok(None);
    };
    let raw = value
        .to_str()
        .map_err(|_| refused("the callback URL is not ASCII"))?
        .trim();
    let policy = &state.callback_policy;
    let url = policy.check_url(raw).map_err(|r| refused(&r.0))?;
    policy.resolve(&url).await.map_err(|r| refused(&r.0))?;
    Ok(Some(url.to_string()))
}

fn refused(why: &str) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "callback-refused",
        "Unprocessable Content",
        format!("{why} (Callback-Url)"),
    )
}

/// The tags that mark an operation as having a callback (none without one).
pub(crate) fn tags(callback: Option<&String>, operation_id: &str) -> Vec<(String, String)> {
    callback
        .map(|_| (CALLBACK_TAG.to_string(), callback_instance_id(operation_id)))
        .into_iter()
        .collect()
}

/// Starts the callback orchestration of `operation_id`; starting it again is harmless (a retried
/// start finds it there).
pub(crate) async fn start_delivery(
    state: &AppState,
    edge: &crate::edge::Edge,
    caller: &Caller,
    operation_id: &str,
    url: String,
) -> Result<(), Problem> {
    let links = serde_json::to_value(edge.links(operation_id)).unwrap_or_default();
    let job = CallbackJob {
        operation_id: operation_id.to_string(),
        url,
        webhook_id: format!("msg_{operation_id}"),
        links,
        owner: caller.owner.clone(),
        checks: 0,
    };
    let id = callback_instance_id(operation_id);
    // In the operation's trace: the delivery attempts are spans of the same trace.
    let (span, trace) = create_span(CALLBACK_ORCHESTRATION, operation_id, edge.trace.as_ref());
    let opts = StartOptions {
        instance_id: Some(id),
        parent_trace_context: trace,
        tags: owner_tags(caller),
        ..Default::default()
    };
    start_once(state, CALLBACK_ORCHESTRATION, &job, opts, span)
        .await
        .map(|_| ())
}

/// Where the delivery of `m`'s callback stands, when it has one.
pub(crate) async fn state_of(
    state: &AppState,
    m: &OrchestrationMetadata,
) -> Result<Option<CallbackState>, Problem> {
    let Some(id) = m.tags.get(CALLBACK_TAG) else {
        return Ok(None);
    };
    let delivery = with_deadline(state, "GetInstance", state.client.get_instance(id, true)).await?;
    Ok(Some(
        delivery
            .and_then(|d| d.custom_status::<CallbackState>().ok())
            .unwrap_or_else(|| CallbackState {
                state: "waiting".into(),
                attempts: 0,
                webhook_id: format!("msg_{}", m.instance_id),
                last_status: None,
                last_error: None,
            }),
    ))
}
