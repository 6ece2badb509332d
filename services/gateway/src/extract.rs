//! Extractors whose rejections are the API's own problems: a JSON body, a query string and an
//! operation id in the path. Handlers take these instead of axum's, so no error reaches a caller
//! as plain text.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::Caller;
use crate::problem::{Problem, bad_query, invalid, operation_not_found};
use crate::{AppState, Settings};

/// What a body type says about its fields, so that a wrong value is answered with the field's
/// name and its allowed range, not only serde's `expected u64`.
pub(crate) trait FieldRules {
    /// The rule for `field` (a path such as `delay_seconds`) under this configuration.
    fn rule(field: &str, config: &Settings) -> Option<String>;
}

/// A JSON object body: 415 for another media type, 413 when too large, 400 when not JSON,
/// 422 when the fields are wrong.
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + FieldRules> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Problem> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = Bytes::from_request(req, state).await;
        parse_json(content_type.as_ref(), bytes, &state.config).map(JsonBody)
    }
}

/// A body that may be left out: empty means `None`, and so does a JSON `null` (the original
/// sample, a FastAPI app, read both that way).
pub(crate) struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned + FieldRules> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Problem> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = Bytes::from_request(req, state).await;
        if bytes.as_ref().is_ok_and(|b| b.is_empty()) {
            return Ok(Self(None));
        }
        parse_json::<Option<T>>(content_type.as_ref(), bytes, &state.config).map(Self)
    }
}

impl<T: FieldRules> FieldRules for Option<T> {
    fn rule(field: &str, config: &Settings) -> Option<String> {
        T::rule(field, config)
    }
}

/// A query string; unknown or malformed parameters are a 400 problem.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e| bad_query(e.body_text()))
    }
}

/// The `{id}` of an operation route, which the caller may see. A path that cannot be read (bad
/// percent-encoding) names no operation, and another caller's operation is none of this one's:
/// both are a 404 like any unknown id.
pub(crate) struct OperationPath(pub String);

impl FromRequestParts<AppState> for OperationPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| operation_not_found(parts.uri.path()))?;
        let caller = Caller::from_request_parts(parts, state).await?;
        if !caller.may_see(&state.ids, &id) {
            return Err(operation_not_found(&id));
        }
        Ok(Self(id))
    }
}

/// Operation ids are instance ids: 1-100 printable ASCII. Anything else names no operation.
pub(crate) fn valid_id(id: &str) -> Result<(), Problem> {
    if id.is_empty() || id.len() > 100 || !id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(operation_not_found(id));
    }
    Ok(())
}

fn parse_json<T: DeserializeOwned + FieldRules>(
    content_type: Option<&HeaderValue>,
    body: Result<Bytes, BytesRejection>,
    config: &Settings,
) -> Result<T, Problem> {
    let ct = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/json"
        && !(media.starts_with("application/") && media.ends_with("+json"))
    {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported Media Type",
            format!("send the body as application/json (got '{ct}')"),
        ));
    }
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Content Too Large",
                "the request body is larger than allowed",
            )
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Bad Request",
                e.body_text(),
            )
        }
    })?;
    // The common case, a well-formed object of the right shape, in one pass. Anything else
    // takes the slower path below, which gives the precise error (or accepts `5.0`): a body
    // that this pass accepts, the slower one accepts the same way.
    if bytes.trim_ascii_start().starts_with(b"{")
        && let Ok(v) = serde_json::from_slice::<T>(&bytes)
    {
        return Ok(v);
    }
    let mut value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Bad Request",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    // serde would also read a struct from an array; the API only takes objects.
    if !(value.is_object() || value.is_null()) {
        return Err(invalid("the body must be a JSON object"));
    }
    integral_floats_to_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let cause = e.into_inner();
        match T::rule(&field, config) {
            Some(rule) => invalid(format!("`{field}` {rule} ({cause})")),
            None => invalid(cause.to_string()),
        }
    })
}

/// JSON Schema counts `5.0` as an integer (and so do JavaScript and pydantic); serde does not.
fn integral_floats_to_integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
                // Exact: |f| < 2^53.
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}
