//! JSON bodies, serialized once into a sized buffer. A leaf: problems and successful answers
//! both build on it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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
