//! The public HTTP API of the async request-reply pattern.
//!
//! `POST /api/process` starts `process_request` and answers `202 Accepted` at once, with the
//! status monitor in `Location`/`Operation-Location` and a `Retry-After`. The operation id is the
//! orchestration instance id. Every error is `application/problem+json` (RFC 9457).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use durabletask::{
    Client, Error as DtsError, OrchestrationMetadata, OrchestrationStatus, StartOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

mod metrics;
mod openapi;
pub use metrics::GatewayMetrics;
pub use openapi::ApiDoc;

/// Gateway behaviour settings (validated by the binary).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Absolute base for links, e.g. `https://api.example.com`; relative links when `None`.
    pub public_base_url: Option<String>,
    pub max_delay_seconds: u64,
    pub max_name_chars: usize,
    pub max_body_bytes: usize,
    /// Deadline for each call to the scheduler; past it the client gets 503.
    pub dts_timeout: Duration,
    pub retry_after_seconds: u64,
    /// Cap of `?wait=` on the status monitor.
    pub max_wait_seconds: u64,
    /// Build links from `Forwarded` / `X-Forwarded-*` (only behind a proxy that sets them).
    pub trust_forwarded: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            public_base_url: None,
            max_delay_seconds: 3600,
            max_name_chars: 200,
            max_body_bytes: 16 * 1024,
            dts_timeout: Duration::from_secs(5),
            retry_after_seconds: 1,
            max_wait_seconds: 30,
            trust_forwarded: false,
        }
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What every request shares. Behind one `Arc`: axum clones the state for each extractor, so
/// that clone is a reference count, not a copy of the client.
pub struct Shared {
    pub client: Client,
    pub config: GatewayConfig,
    pub metrics: GatewayMetrics,
}

impl AppState {
    pub fn new(client: Client, config: GatewayConfig) -> Self {
        Self(Arc::new(Shared {
            client,
            config,
            metrics: GatewayMetrics::default(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

const JSON: &str = "application/json";

/// The orchestration the product runs.
pub const PROCESS_ORCHESTRATION: &str = "process_request";
/// The original sample's orchestration, for the compatibility routes.
pub const SAMPLE_ORCHESTRATION: &str = "async_http_api_orchestrator";

pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route(
            "/api/process",
            post(start_process).layer(from_fn(run_to_completion)),
        )
        .route("/api/status/{id}", get(status))
        .route("/api/result/{id}", get(result))
        .route(
            "/api/operations/{id}/cancel",
            post(cancel).layer(from_fn(run_to_completion)),
        )
        .route("/api/operations", get(list))
        // The original sample's routes, with its field names.
        .route(
            "/api/start-operation",
            post(sample_start).layer(from_fn(run_to_completion)),
        )
        .route("/api/operations/{id}", get(sample_status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        // `/openapi.json` is served by the Swagger UI router, from the same generated document.
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::for_config(&state.config)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// For the routes that change state (start, cancel): the handler runs in a task of its own, so
/// a caller that hangs up does not abandon the change half-way. Dropped, the scheduler call would
/// be reset mid-flight, leaving it unknown whether the change happened; and a burst of resets
/// (many callers giving up at once) is what HTTP/2 servers treat as an attack, answered with
/// GOAWAY for every call on the connection.
async fn run_to_completion(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::spawn(next.run(request).in_current_span()).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            "Internal Server Error",
            "the request failed inside the gateway",
        )
        .into_response(),
    }
}

// ------------------------------------------------------------------ problems

/// An RFC 9457 problem response.
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
    fn new(
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

    fn about(mut self, id: &str, error: Option<OperationError>) -> Self {
        self.id = Some(id.to_string());
        self.error = error;
        self
    }
}

/// A JSON response. Serialized into one buffer sized for our bodies (axum's `Json` grows a
/// small one write by write, which showed in the profile of the start path).
fn json_response<T: Serialize>(
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

async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not Found",
        "no such route",
    )
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method Not Allowed",
        "this route does not support that method",
    )
}

/// Maps a scheduler error to a problem; unreachable or slow means 503 with `Retry-After`.
fn dts_problem(err: DtsError) -> Problem {
    match err {
        DtsError::Unavailable(_) | DtsError::DeadlineExceeded(_) | DtsError::Rpc(_) => {
            tracing::warn!(error = %err, "scheduler call failed");
            unavailable()
        }
        other => {
            tracing::error!(error = %other, "unexpected scheduler error");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "scheduler-error",
                "Bad Gateway",
                "the Durable Task Scheduler rejected the request",
            )
        }
    }
}

fn unavailable() -> Problem {
    let mut p = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "scheduler-unavailable",
        "Service Unavailable",
        "the Durable Task Scheduler did not answer in time; try again shortly",
    );
    p.retry_after = Some(5);
    p
}

/// The span around starting an orchestration, and the trace context to hand to it: this span's
/// when traces are exported, else the caller's `traceparent` passed through unchanged.
fn create_span(
    name: &str,
    id: &str,
    headers: &HeaderMap,
) -> (tracing::Span, Option<durabletask::TraceContext>) {
    tracing::Span::current().record("operation.id", id);
    tracing::Span::current().record("operation_id", id);
    let span = tracing::info_span!(
        "create_orchestration",
        otel.name = %format!("create_orchestration:{name}"),
        otel.kind = "client",
        durabletask.type = "orchestration",
        durabletask.task.name = %name,
        durabletask.task.instance_id = %id,
        operation.id = %id,
    );
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let context = service_kit::telemetry::traceparent(&span)
        .map(|traceparent| durabletask::TraceContext {
            traceparent,
            tracestate: header("tracestate"),
        })
        .or_else(|| {
            header("traceparent").map(|traceparent| durabletask::TraceContext {
                traceparent,
                tracestate: header("tracestate"),
            })
        });
    (span, context)
}

/// One scheduler call under `limit`, timed and counted by method and outcome.
///
/// The call's future is boxed before anything else holds it: a tonic call's future is
/// kilobytes, and held inline it would make every handler's future that size, copied on each
/// move (the profile of `make bench` showed the memcpy). So these are plain functions returning
/// a future, not `async fn`s, which would keep the unboxed argument in their own state.
fn dts_call<T>(
    state: &AppState,
    method: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, DtsError>>,
) -> impl Future<Output = Result<Result<T, DtsError>, tokio::time::error::Elapsed>> {
    let fut = Box::pin(fut);
    async move {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(limit, fut).await;
        let code = match &r {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(
                e.status()
                    .map_or_else(|| "Unknown".to_string(), |s| format!("{:?}", s.code())),
            ),
            Err(_) => Some("DeadlineExceeded".to_string()),
        };
        state
            .metrics
            .rpc(method, started.elapsed(), code.as_deref());
        r
    }
}

/// A scheduler call under the configured deadline; errors become problems.
fn with_deadline<T>(
    state: &AppState,
    method: &'static str,
    fut: impl Future<Output = Result<T, DtsError>>,
) -> impl Future<Output = Result<T, Problem>> {
    let call = dts_call(state, method, state.config.dts_timeout, fut);
    async move {
        match call.await {
            Ok(r) => r.map_err(dts_problem),
            Err(_) => Err(unavailable()),
        }
    }
}

// ------------------------------------------------------------------ bodies

/// Starts an operation: greet `name` after `delay_seconds` of (simulated) work.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessRequest {
    /// Who to greet: 1 to `max_name_chars` (200 by default) characters once trimmed, so not
    /// only white space.
    #[schema(example = "Ada", min_length = 1, pattern = r"\S")]
    name: String,
    /// Seconds of work, 0 to `max_delay_seconds` (3600 by default).
    #[schema(example = 5, minimum = 0)]
    delay_seconds: u64,
}

/// The original sample's `processing_time` when the request leaves it out.
pub const SAMPLE_DEFAULT_SECONDS: i64 = 5;

/// The original sample's start request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleStartRequest {
    /// Seconds of work, 0 to `max_delay_seconds`; 5 (or `max_delay_seconds` if lower) when
    /// left out.
    #[schema(example = 5, minimum = 0, default = 5)]
    processing_time: Option<i64>,
}

/// Reads a JSON body: 415 for another media type, 413 when too large, 400 when not JSON,
/// 422 when the fields are wrong.
fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
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
    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
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

// ------------------------------------------------------------------ links and status

/// Scheme and authority for absolute links: the configured public URL; else, when trusted, the
/// proxy's `Forwarded` / `X-Forwarded-*` headers; else the `Host` header. Values that do not look
/// like a host are ignored (links then stay relative) so a client cannot inject text into them.
fn base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(b) = &state.config.public_base_url {
        return b.clone();
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let ok_host = |h: &str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
    };
    let ok_proto = |p: &str| p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https");
    if state.config.trust_forwarded {
        if let Some(fwd) = text("forwarded") {
            let (mut host, mut proto) = (None, None);
            for pair in fwd.split(',').next().unwrap_or("").split(';') {
                if let Some((k, v)) = pair.split_once('=') {
                    let v = v.trim().trim_matches('"');
                    match k.trim().to_ascii_lowercase().as_str() {
                        "host" => host = Some(v),
                        "proto" => proto = Some(v),
                        _ => {}
                    }
                }
            }
            if let Some(h) = host.filter(|h| ok_host(h)) {
                let p = proto.filter(|p| ok_proto(p)).unwrap_or("http");
                return format!("{}://{h}", p.to_ascii_lowercase());
            }
        }
        if let Some(h) = text("x-forwarded-host")
            .and_then(|h| h.split(',').next())
            .map(str::trim)
            .filter(|h| ok_host(h))
        {
            let p = text("x-forwarded-proto")
                .filter(|p| ok_proto(p))
                .unwrap_or("http");
            return format!("{}://{h}", p.to_ascii_lowercase());
        }
    }
    match text("host").filter(|h| ok_host(h)) {
        Some(h) => format!("http://{h}"),
        None => String::new(),
    }
}

/// Where to find an operation. Absolute when the gateway knows its public address.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OperationLinks {
    /// The status monitor (`GET`).
    pub status: String,
    /// The result (`GET`).
    pub result: String,
    /// Cancels the operation (`POST`).
    pub cancel: String,
}

fn links(state: &AppState, headers: &HeaderMap, id: &str) -> OperationLinks {
    let b = base(state, headers);
    let link = |parts: &[&str]| {
        let mut url = String::with_capacity(b.len() + 40 + id.len());
        url.push_str(&b);
        parts.iter().for_each(|p| url.push_str(p));
        url
    };
    OperationLinks {
        status: link(&["/api/status/", id]),
        result: link(&["/api/result/", id]),
        cancel: link(&["/api/operations/", id, "/cancel"]),
    }
}

/// The status vocabulary of this API (Azure LRO style). `Succeeded`, `Failed` and `Canceled`
/// are terminal; `Canceling` only answers a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum OperationState {
    NotStarted,
    Running,
    Suspended,
    Succeeded,
    Failed,
    Canceled,
    Canceling,
}

impl std::fmt::Display for OperationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Maps DTS runtime statuses to this API's vocabulary, in one place.
pub fn operation_status(s: OrchestrationStatus) -> OperationState {
    match s {
        OrchestrationStatus::Pending => OperationState::NotStarted,
        OrchestrationStatus::Running | OrchestrationStatus::ContinuedAsNew => {
            OperationState::Running
        }
        OrchestrationStatus::Suspended => OperationState::Suspended,
        OrchestrationStatus::Completed => OperationState::Succeeded,
        OrchestrationStatus::Failed => OperationState::Failed,
        OrchestrationStatus::Terminated | OrchestrationStatus::Canceled => OperationState::Canceled,
    }
}

/// Why an operation failed or was canceled: the innermost error's type and message, never a
/// stack trace.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OperationError {
    #[serde(rename = "type")]
    #[schema(example = "TimeoutError")]
    pub kind: String,
    pub message: String,
}

/// An operation accepted (`202`) or not finished yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationAccepted {
    /// The operation id (the orchestration instance id).
    #[schema(example = "9f1c2e0b6a2d4d7e8b3f5a6c7d8e9f01")]
    pub id: String,
    pub status: OperationState,
    pub links: OperationLinks,
}

/// The status monitor's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationStatusBody {
    pub id: String,
    pub status: OperationState,
    /// The DTS runtime status, e.g. `RUNNING`.
    #[schema(example = "RUNNING")]
    pub runtime_status: &'static str,
    /// RFC 3339 UTC.
    pub created_at: Option<String>,
    /// RFC 3339 UTC.
    pub last_updated_at: Option<String>,
    /// Progress the orchestration reports (any JSON value).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub custom_status: Option<Value>,
    /// Present when the operation failed or was canceled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
    pub links: OperationLinks,
}

/// What `/api/result/{id}` returns for a succeeded operation: the output of its orchestration.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OperationOutput {
    Process(ProcessResult),
    Sample(SampleResult),
}

/// The output of the original sample's `async_http_api_orchestrator`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SampleResult {
    pub operation_id: String,
    #[schema(example = "completed")]
    pub status: String,
    #[schema(example = "Operation 3f2a... completed successfully")]
    pub result: String,
    /// Unix time in seconds, as the sample's Python `time.time()`.
    pub processed_at: f64,
}

/// The output of a succeeded `process_request` operation, as the bundled worker produces it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessResult {
    #[schema(example = "Hello Ada! Your request took 5 seconds.")]
    pub message: String,
    pub name: String,
    pub processing_time_seconds: u64,
    /// The worker instance that ran the activity.
    pub worker: String,
    /// RFC 3339 UTC.
    pub completed_at: String,
}

fn rfc3339(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn error_of(m: &OrchestrationMetadata) -> Option<OperationError> {
    match m.runtime_status {
        OrchestrationStatus::Failed => {
            // The innermost failure is the useful one (the activity's), never a stack trace.
            let mut f = m.failure_details.as_ref()?;
            while let Some(inner) = f.inner.as_deref() {
                f = inner;
            }
            Some(OperationError {
                kind: f.error_type.clone(),
                message: f.message.clone(),
            })
        }
        OrchestrationStatus::Terminated => Some(OperationError {
            kind: "Canceled".into(),
            // The terminate reason, when there was one.
            message: m
                .output::<Value>()
                .ok()
                .filter(|v| !v.is_null())
                .map_or("the operation was canceled".into(), |v| {
                    v.as_str().map_or(v.to_string(), str::to_string)
                }),
        }),
        _ => None,
    }
}

// ------------------------------------------------------------------ idempotency

/// Namespace for ids derived from idempotency keys (ours, so they collide with nothing else).
const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3b8e_51d2_7c40_4a1f_9e63_0d5a_c2f8_7b19);
const FINGERPRINT_TAG: &str = "idempotency-fingerprint";

/// The `Idempotency-Key` header (IETF httpapi draft), if present and well-formed.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
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

/// Starts at most one operation per key, with no state in the gateway: the instance id is
/// derived from the key, the scheduler refuses a second instance with that id (no status is
/// replaceable), and a fingerprint of the request in the instance's tags tells a retry (same
/// body: same operation) from a misuse of the key (different body: 422).
async fn start_idempotent(
    state: &AppState,
    headers: &HeaderMap,
    key: &str,
    input: &Value,
) -> Result<String, Problem> {
    let id = uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key.as_bytes())
        .simple()
        .to_string();
    let fingerprint = uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, input.to_string().as_bytes())
        .simple()
        .to_string();
    let (span, trace) = create_span(PROCESS_ORCHESTRATION, &id, headers);
    let opts = StartOptions {
        instance_id: Some(id.clone()),
        tags: [(FINGERPRINT_TAG.to_string(), fingerprint.clone())].into(),
        replaceable_statuses: Some(vec![]),
        parent_trace_context: trace,
        ..Default::default()
    };
    let started = dts_call(
        state,
        "StartInstance",
        state.config.dts_timeout,
        state
            .client
            .schedule_new_orchestration(PROCESS_ORCHESTRATION, input, opts),
    )
    .instrument(span)
    .await
    .map_err(|_| unavailable())?;
    match started {
        Ok(_) => {
            state.metrics.started.inc();
            Ok(id)
        }
        Err(DtsError::AlreadyExists(_)) => {
            let existing =
                with_deadline(state, "GetInstance", state.client.get_instance(&id, false)).await?;
            match existing.and_then(|m| m.tags.get(FINGERPRINT_TAG).cloned()) {
                Some(fp) if fp == fingerprint => {
                    state.metrics.deduplicated.inc();
                    Ok(id)
                }
                _ => Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    "Unprocessable Content",
                    "this Idempotency-Key was already used with a different request body",
                )),
            }
        }
        Err(e) => Err(dts_problem(e)),
    }
}

fn operation_not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "operation-not-found",
        "Not Found",
        format!("no operation with id '{id}'"),
    )
}

fn retry_after(resp: &mut Response, secs: u64) {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
}

fn location(resp: &mut Response, url: &str) -> Result<(), Problem> {
    let v = HeaderValue::from_str(url).map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad-link",
            "Internal Server Error",
            "could not build a link",
        )
    })?;
    resp.headers_mut().insert(header::LOCATION, v.clone());
    resp.headers_mut().insert("operation-location", v);
    Ok(())
}

fn valid_id(id: &str) -> Result<(), Problem> {
    // Operation ids are instance ids: 1-100 printable ASCII.
    if id.is_empty() || id.len() > 100 || !id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(operation_not_found(id));
    }
    Ok(())
}

// ------------------------------------------------------------------ handlers

/// Starts `process_request` and answers at once.
#[utoipa::path(
    post,
    path = "/api/process",
    tag = "operations",
    request_body(content = ProcessRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = r#"^(?:"[ !#-\[\]-~]{1,253}"|[!#-~](?:[ !#-~]{0,253}[!#-~])?)$"#,
            description = "Repeat a start safely: the same key and body return the same operation; the same key with another body is refused (422). 1-255 printable ASCII."),
    ),
    responses(
        (status = 202, description = "Accepted; poll the status monitor", body = OperationAccepted,
            headers(
                ("Location" = String, description = "The status monitor"),
                ("Operation-Location" = String, description = "The status monitor (Azure LRO)"),
                ("Retry-After" = u64, description = "Seconds to wait before polling"),
            )),
        (status = 400, description = "Malformed JSON or `Idempotency-Key`", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Wrong, missing or unknown fields, values out of range, or an `Idempotency-Key` reused with another body", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 502, description = "The scheduler rejected the request", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The scheduler is unreachable or slow; retry after `Retry-After`", body = ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
    ),
)]
async fn start_process(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let req: ProcessRequest = parse_json(&headers, body)?;
    let name = req.name.trim();
    if name.is_empty() {
        return Err(invalid("`name` must not be empty"));
    }
    if name.chars().count() > state.config.max_name_chars {
        return Err(invalid(format!(
            "`name` must be at most {} characters",
            state.config.max_name_chars
        )));
    }
    if req.delay_seconds > state.config.max_delay_seconds {
        return Err(invalid(format!(
            "`delay_seconds` must be between 0 and {}",
            state.config.max_delay_seconds
        )));
    }
    let input = json!({"name": name, "delay_seconds": req.delay_seconds});
    let id = match idempotency_key(&headers)? {
        Some(key) => start_idempotent(&state, &headers, &key, &input).await?,
        None => {
            // Random and unguessable: the id is the only key to the operation's status and result.
            let id = uuid::Uuid::new_v4().simple().to_string();
            let (span, trace) = create_span(PROCESS_ORCHESTRATION, &id, &headers);
            let opts = StartOptions {
                instance_id: Some(id.clone()),
                parent_trace_context: trace,
                ..Default::default()
            };
            with_deadline(
                &state,
                "StartInstance",
                state
                    .client
                    .schedule_new_orchestration(PROCESS_ORCHESTRATION, &input, opts),
            )
            .instrument(span)
            .await?;
            state.metrics.started.inc();
            id
        }
    };
    accepted(&state, &headers, id, OperationState::NotStarted)
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
        "Unprocessable Content",
        detail,
    )
}

/// `202 Accepted` pointing at the status monitor.
fn accepted(
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

async fn fetch(
    state: &AppState,
    id: &str,
    payloads: bool,
) -> Result<OrchestrationMetadata, Problem> {
    valid_id(id)?;
    tracing::Span::current().record("operation.id", id);
    tracing::Span::current().record("operation_id", id);
    with_deadline(
        state,
        "GetInstance",
        state.client.get_instance(id, payloads),
    )
    .await?
    .ok_or_else(|| operation_not_found(id))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    /// Long poll: hold the request up to this many seconds (capped by `max_wait_seconds`, 30 by
    /// default) until the operation ends.
    #[param(minimum = 0)]
    wait: Option<i32>,
}

/// The status monitor.
#[utoipa::path(
    get,
    path = "/api/status/{id}",
    tag = "operations",
    params(("id" = String, Path, description = "The operation id"), StatusQuery),
    responses(
        (status = 200, description = "The operation's status; `Retry-After` while it is not finished", body = OperationStatusBody,
            headers(("Retry-After" = u64, description = "Present while the operation is not finished"))),
        (status = 400, description = "Bad query parameters", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such operation", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 502, description = "The scheduler rejected the request", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The scheduler is unreachable or slow", body = ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
    ),
)]
async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| bad_query(e.body_text()))?;
    let wait = match q.wait {
        Some(w) => u64::try_from(w)
            .map_err(|_| bad_query("`wait` must be a number of seconds, 0 or more"))?,
        None => 0,
    }
    .min(state.config.max_wait_seconds);
    let mut m = fetch(&state, &id, true).await?;
    if wait > 0 && !m.runtime_status.is_terminal() {
        let deadline = Duration::from_secs(wait);
        // WaitForInstanceCompletion on the scheduler; running out of time is a normal answer.
        match dts_call(
            &state,
            "WaitForInstanceCompletion",
            deadline + state.config.dts_timeout,
            state
                .client
                .wait_for_instance_completion(&id, true, deadline),
        )
        .await
        {
            Ok(Ok(Some(done))) => m = done,
            Ok(Ok(None)) => return Err(operation_not_found(&id)),
            Ok(Err(DtsError::DeadlineExceeded(_))) | Err(_) => m = fetch(&state, &id, true).await?,
            Ok(Err(e)) => return Err(dts_problem(e)),
        }
    }
    let body = OperationStatusBody {
        id: id.clone(),
        status: operation_status(m.runtime_status),
        runtime_status: m.runtime_status.as_str(),
        created_at: rfc3339(m.created_at),
        last_updated_at: rfc3339(m.last_updated_at),
        custom_status: m.custom_status::<Value>().ok().filter(|v| !v.is_null()),
        error: error_of(&m),
        links: links(&state, &headers, &id),
    };
    let mut resp = json_response(StatusCode::OK, &body, JSON);
    if !m.runtime_status.is_terminal() {
        retry_after(&mut resp, state.config.retry_after_seconds);
    }
    Ok(resp)
}

/// The result of an operation.
#[utoipa::path(
    get,
    path = "/api/result/{id}",
    tag = "operations",
    params(("id" = String, Path, description = "The operation id")),
    responses(
        (status = 200, description = "The operation succeeded: its output (a `ProcessResult` for `/api/process` operations, a `SampleResult` for `/api/start-operation` ones)",
            body = OperationOutput),
        (status = 202, description = "Not finished yet; poll the status monitor", body = OperationAccepted,
            headers(
                ("Location" = String, description = "The status monitor"),
                ("Operation-Location" = String, description = "The status monitor"),
                ("Retry-After" = u64),
            )),
        (status = 404, description = "No such operation", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "The operation failed (`/problems/operation-failed`) or was canceled (`/problems/operation-canceled`); `error` says why", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 502, description = "The scheduler rejected the request", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The scheduler is unreachable or slow", body = ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
    ),
)]
async fn result(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let m = fetch(&state, &id, true).await?;
    match m.runtime_status {
        OrchestrationStatus::Completed => Ok(json_response(
            StatusCode::OK,
            &m.output::<Value>().unwrap_or(Value::Null),
            JSON,
        )),
        OrchestrationStatus::Failed => Err(Problem::new(
            StatusCode::CONFLICT,
            "operation-failed",
            "Operation Failed",
            "the operation failed; see `error`",
        )
        .about(&id, error_of(&m))),
        OrchestrationStatus::Terminated | OrchestrationStatus::Canceled => Err(Problem::new(
            StatusCode::CONFLICT,
            "operation-canceled",
            "Operation Canceled",
            "the operation was canceled before it produced a result",
        )
        .about(&id, error_of(&m))),
        other => accepted(&state, &headers, id, operation_status(other)),
    }
}

/// Cancels an operation (terminates its orchestration, and any it started, with a reason).
#[utoipa::path(
    post,
    path = "/api/operations/{id}/cancel",
    tag = "operations",
    params(("id" = String, Path, description = "The operation id")),
    responses(
        (status = 202, description = "Cancellation requested; the status monitor shows `Canceled` once done", body = OperationAccepted,
            headers(
                ("Location" = String, description = "The status monitor"),
                ("Operation-Location" = String, description = "The status monitor"),
                ("Retry-After" = u64),
            )),
        (status = 404, description = "No such operation", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "The operation already ended", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 502, description = "The scheduler rejected the request", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The scheduler is unreachable or slow", body = ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
    ),
)]
async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let m = fetch(&state, &id, false).await?;
    if m.runtime_status.is_terminal() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "operation-finished",
            "Conflict",
            format!(
                "the operation already ended as {}",
                operation_status(m.runtime_status)
            ),
        ));
    }
    with_deadline(
        &state,
        "TerminateInstance",
        state.client.terminate(&id, "canceled by the client", true),
    )
    .await?;
    state.metrics.canceled.inc();
    accepted(&state, &headers, id, OperationState::Canceling)
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Metrics: OpenMetrics when asked for in `Accept` (as Prometheus does), else the classic text format", body = String,
        content_type = "text/plain")),
)]
async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = state.metrics.exposition(accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the scheduler answered just now.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "The scheduler is unreachable", body = String, content_type = "text/plain"),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    match dts_call(
        &state,
        "Hello",
        Duration::from_secs(2),
        state.client.hello(Duration::from_secs(2)),
    )
    .await
    {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "scheduler unreachable\n").into_response(),
    }
}

// ------------------------------------------------------------------ the sample's routes

/// The original sample's `202` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct SampleAccepted {
    pub operation_id: String,
    /// Relative URL of the sample's status route.
    pub status_url: String,
}

/// The original sample's status body: `result` when completed, `error` when failed,
/// `last_updated` otherwise.
#[derive(Debug, Serialize, ToSchema)]
pub struct SampleStatus {
    pub operation_id: String,
    /// `Completed`, `Failed`, or the DTS runtime status name while not finished.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

/// The original sample's start route: starts `async_http_api_orchestrator`.
#[utoipa::path(
    post,
    path = "/api/start-operation",
    tag = "sample compatibility",
    request_body(content = Option<SampleStartRequest>, content_type = "application/json",
        description = "May be empty (then `processing_time` is 5)"),
    responses(
        (status = 202, description = "Accepted", body = SampleAccepted,
            headers(("Location" = String), ("Operation-Location" = String), ("Retry-After" = u64))),
        (status = 400, description = "Malformed JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Wrong or unknown fields, or `processing_time` out of range", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 502, description = "The scheduler rejected the request", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The scheduler is unreachable or slow", body = ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
    ),
)]
async fn sample_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    // The sample accepted an empty body as `{}`.
    let empty = body.as_ref().is_ok_and(|b| b.is_empty());
    let max = i64::try_from(state.config.max_delay_seconds).unwrap_or(i64::MAX);
    let requested = if empty {
        None
    } else {
        // FastAPI took a JSON `null` body like an empty one.
        parse_json::<Option<SampleStartRequest>>(&headers, body)?.and_then(|r| r.processing_time)
    };
    // The sample's default of 5 s, within this deployment's limit.
    let processing_time = requested.unwrap_or_else(|| SAMPLE_DEFAULT_SECONDS.min(max));
    if !(0..=max).contains(&processing_time) {
        return Err(invalid(format!(
            "`processing_time` must be between 0 and {max}"
        )));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let input = json!({"operation_id": id, "processing_time": processing_time});
    let (span, trace) = create_span(SAMPLE_ORCHESTRATION, &id, &headers);
    let opts = StartOptions {
        instance_id: Some(id.clone()),
        parent_trace_context: trace,
        ..Default::default()
    };
    with_deadline(
        &state,
        "StartInstance",
        state
            .client
            .schedule_new_orchestration(SAMPLE_ORCHESTRATION, &input, opts),
    )
    .instrument(span)
    .await?;
    state.metrics.started.inc();
    let status_url = format!("/api/operations/{id}");
    let absolute = format!("{}{status_url}", base(&state, &headers));
    let mut resp = json_response(
        StatusCode::ACCEPTED,
        &SampleAccepted {
            operation_id: id,
            status_url,
        },
        JSON,
    );
    location(&mut resp, &absolute)?;
    retry_after(&mut resp, state.config.retry_after_seconds);
    Ok(resp)
}

/// The original sample's status route, with its field names.
#[utoipa::path(
    get,
    path = "/api/operations/{id}",
    tag = "sample compatibility",
    params(("id" = String, Path, description = "The operation id")),
    responses(
        (status = 200, description = "The operation's status", body = SampleStatus,
            headers(("Retry-After" = u64, description = "Present while the operation is not finished"))),
        (status = 404, description = "No such operation", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 502, description = "The scheduler rejected the request", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The scheduler is unreachable or slow", body = ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
    ),
)]
async fn sample_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let m = fetch(&state, &id, true).await?;
    let mut body = SampleStatus {
        operation_id: id,
        status: m.runtime_status.as_str().to_string(),
        result: None,
        error: None,
        last_updated: None,
    };
    match m.runtime_status {
        OrchestrationStatus::Completed => {
            body.status = "Completed".into();
            body.result = Some(m.output::<Value>().unwrap_or(Value::Null));
        }
        OrchestrationStatus::Failed => {
            body.status = "Failed".into();
            body.error = Some(
                error_of(&m).map_or_else(|| "the operation failed".to_string(), |e| e.message),
            );
        }
        _ => body.last_updated = rfc3339(m.last_updated_at),
    }
    let mut resp = json_response(StatusCode::OK, &body, JSON);
    if !m.runtime_status.is_terminal() {
        retry_after(&mut resp, state.config.retry_after_seconds);
    }
    Ok(resp)
}

// ------------------------------------------------------------------ list

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Comma-separated statuses: NotStarted, Running, Suspended, Succeeded, Failed, Canceled.
    #[param(
        example = "Running,NotStarted",
        pattern = "^(NotStarted|Running|Suspended|Succeeded|Failed|Canceled)(,(NotStarted|Running|Suspended|Succeeded|Failed|Canceled))*$"
    )]
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
}

/// One operation in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationSummary {
    pub id: String,
    /// The orchestration that runs it.
    pub name: String,
    pub status: OperationState,
    pub runtime_status: &'static str,
    pub created_at: Option<String>,
    pub last_updated_at: Option<String>,
    pub links: OperationLinks,
}

/// One page of operations (Azure paging: `value` and `nextLink`).
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationPage {
    pub value: Vec<OperationSummary>,
    /// The next page, or null on the last one.
    #[serde(rename = "nextLink")]
    pub next_link: Option<String>,
}

fn runtime_statuses(status: &str) -> Option<Vec<OrchestrationStatus>> {
    use OrchestrationStatus as S;
    Some(match status {
        "NotStarted" => vec![S::Pending],
        "Running" => vec![S::Running, S::ContinuedAsNew],
        "Suspended" => vec![S::Suspended],
        "Succeeded" => vec![S::Completed],
        "Failed" => vec![S::Failed],
        "Canceled" => vec![S::Terminated, S::Canceled],
        _ => return None,
    })
}

fn bad_query(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Bad Request",
        detail,
    )
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
        (status = 400, description = "Bad query parameters", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 502, description = "The scheduler rejected the request", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The scheduler is unreachable or slow", body = ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
    ),
)]
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| bad_query(e.body_text()))?;
    let statuses = match q.status.as_deref() {
        None => vec![],
        Some(list) => {
            let mut out = Vec::new();
            for s in list.split(',') {
                out.extend(runtime_statuses(s).ok_or_else(|| {
                    bad_query(format!("unknown status '{s}'; use NotStarted, Running, Suspended, Succeeded, Failed or Canceled"))
                })?);
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
        ..Default::default()
    };
    let page = match dts_call(
        &state,
        "QueryInstances",
        state.config.dts_timeout,
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
        Ok(Err(e)) => return Err(dts_problem(e)),
        Err(_) => return Err(unavailable()),
    };
    let value = page
        .instances
        .iter()
        .map(|m| OperationSummary {
            id: m.instance_id.clone(),
            name: m.name.clone(),
            status: operation_status(m.runtime_status),
            runtime_status: m.runtime_status.as_str(),
            created_at: rfc3339(m.created_at),
            last_updated_at: rfc3339(m.last_updated_at),
            links: links(&state, &headers, &m.instance_id),
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
        ] {
            if let Some(v) = v {
                params.push(format!("{k}={}", encode(v)));
            }
        }
        format!(
            "{}/api/operations?{}",
            base(&state, &headers),
            params.join("&")
        )
    });
    Ok(json_response(
        StatusCode::OK,
        &OperationPage { value, next_link },
        JSON,
    ))
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
