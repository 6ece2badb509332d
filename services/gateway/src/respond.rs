//! Building successful responses: the headers of the async pattern (JSON bodies are `json.rs`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::AppState;
use crate::json::{JSON, json_response};
use crate::model::{OperationAccepted, OperationState};
use crate::problem::{Problem, internal};

pub(crate) fn retry_after(resp: &mut Response, secs: u64) {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
}

/// `Location` and `Operation-Location` (Azure LRO) pointing at `url`.
pub(crate) fn location(resp: &mut Response, url: &str) -> Result<(), Problem> {
    let v = HeaderValue::from_str(url).map_err(|_| internal("could not build a link"))?;
    resp.headers_mut().insert(header::LOCATION, v.clone());
    resp.headers_mut().insert("operation-location", v);
    Ok(())
}

/// `202 Accepted` pointing at the status monitor.
pub(crate) fn accepted(
    state: &AppState,
    edge: &crate::edge::Edge,
    id: String,
    status: OperationState,
) -> Result<Response, Problem> {
    let links = edge.links(&id);
    let status_url = links.status.clone();
    let mut resp = json_response(
        StatusCode::ACCEPTED,
        &OperationAccepted { id, status, links },
        JSON,
    );
    location(&mut resp, &status_url)?;
    retry_after(&mut resp, state.config.retry_after_seconds);
    Ok(resp)
}
