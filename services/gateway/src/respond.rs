//! Building successful responses: JSON bodies and the headers of the async pattern.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::AppState;
use crate::links::links;
use crate::model::{OperationAccepted, OperationState};
use crate::problem::{Problem, internal};

pub(crate) const JSON: &str = "application/json";

/// A JSON response. Serialized into one buffer sized for our bodies (axum's `Json` grows a
/// small one write by write, which showed in the profile of the start path).
pub(crate) fn json_response<T: Serialize>(
    status: StatusCode,
    body: &T,
    content_type: &'static str,
) -> Response {
    let mut buf = Vec::with_capacity(512);
    match serde_json::to_writer(&mut buf, body) {
        Ok(()) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            buf,
        )
            .into_response(),
        // Our bodies are plain data; this is only here so a bug answers 500 rather than panics.
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            r#"{"type":"/problems/internal","title":"Internal Server Error","status":500}"#,
        )
            .into_response(),
    }
}

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
    headers: &HeaderMap,
    id: String,
    status: OperationState,
) -> Result<Response, Problem> {
    let links = links(state, headers, &id);
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
