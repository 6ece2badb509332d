//! RFC 9457 problem responses: the one shape of every error the API returns.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::json::json_response;
use crate::model::OperationError;

/// An error answer, built by the constructors below and rendered as `application/problem+json`.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    id: Option<String>,
    error: Option<OperationError>,
    retry_after: Option<u64>,
}

/// The body of every error response (`application/problem+json`, RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemDetails {
    /// A relative URI naming the kind of problem, e.g. `/problems/invalid-request`.
    #[serde(rename = "type")]
    #[schema(example = "/problems/invalid-request")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, specifically.
    pub detail: String,
    /// The operation concerned (failed or canceled operations on `/api/result/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why the operation failed or was canceled (on `/api/result/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
}

impl Problem {
    pub(crate) fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            id: None,
            error: None,
            retry_after: None,
        }
    }

    /// Names the operation the problem is about, and why it failed.
    pub(crate) fn about(mut self, id: &str, error: Option<OperationError>) -> Self {
        self.id = Some(id.to_string());
        self.error = error;
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemDetails {
            kind: format!("/problems/{}", self.slug),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            id: self.id,
            error: self.error,
        };
        let mut resp = json_response(self.status, &body, "application/problem+json");
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

// The problems more than one place answers.

/// `422`: the body parsed but its fields are wrong.
pub(crate) fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
        "Unprocessable Content",
        detail,
    )
}

/// `400`: a query parameter is wrong.
pub(crate) fn bad_query(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Bad Request",
        detail,
    )
}

pub(crate) fn operation_not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "operation-not-found",
        "Not Found",
        format!("no operation with id '{id}'"),
    )
}

pub(crate) fn internal(detail: &'static str) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal-error",
        "Internal Server Error",
        detail,
    )
}

/// The router's fallback.
pub(crate) async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not Found",
        "no such route",
    )
}

/// The router's fallback for a known route and another method.
pub(crate) async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method Not Allowed",
        "this route does not support that method",
    )
}
