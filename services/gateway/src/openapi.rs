//! The OpenAPI 3.1 document, generated from the handlers' annotations and the body types.

use serde_json::Value;
use utoipa::OpenApi;

use crate::GatewayConfig;
use crate::links::OperationLinks;
use crate::model::{
    OperationAccepted, OperationError, OperationOutput, OperationPage, OperationState,
    OperationStatusBody, OperationSummary,
};
use crate::problem::ProblemDetails;
use crate::routes::sample::{SampleAccepted, SampleStartRequest, SampleStatus};
use contract::{ProcessRequest, ProcessResult, SampleResult};

/// Served at `/openapi.json` and rendered at `/docs`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Async HTTP API on the Durable Task Scheduler",
        description = "Start a long-running operation with `POST /api/process` and get `202 Accepted` at once; poll the status monitor in `Location` (honouring `Retry-After`), then read the result. Every error is `application/problem+json` (RFC 9457)."
    ),
    paths(
        crate::routes::process::start_process,
        crate::routes::status::status,
        crate::routes::result::result,
        crate::routes::cancel::cancel,
        crate::routes::list::list,
        crate::routes::history::history,
        crate::routes::purge::purge,
        crate::routes::sample::sample_start,
        crate::routes::sample::sample_status,
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        crate::routes::health::metrics_text,
    ),
    components(schemas(
        ProcessRequest,
        OperationAccepted,
        OperationLinks,
        OperationState,
        OperationStatusBody,
        OperationError,
        ProcessResult,
        OperationOutput,
        SampleResult,
        OperationSummary,
        OperationPage,
        ProblemDetails,
        SampleStartRequest,
        SampleAccepted,
        SampleStatus,
        crate::routes::history::OperationHistory,
        crate::routes::history::HistoryEntry,
    )),
    tags(
        (name = "operations", description = "The async request-reply API"),
        (name = "sample compatibility", description = "The original Python sample's routes and field names"),
        (name = "health", description = "Kubernetes probes and Prometheus metrics"),
    )
)]
pub struct ApiDoc;

impl ApiDoc {
    /// The document with this deployment's limits filled in (they are configurable, so the
    /// annotations cannot carry them).
    pub fn for_config(config: &GatewayConfig) -> utoipa::openapi::OpenApi {
        let doc = Self::openapi();
        let Ok(mut json) = serde_json::to_value(&doc) else {
            return doc;
        };
        let limits = [
            (
                "/components/schemas/ProcessRequest/properties/name",
                "maxLength",
                config.max_name_chars as u64,
            ),
            (
                "/components/schemas/ProcessRequest/properties/delay_seconds",
                "maximum",
                config.max_delay_seconds,
            ),
            (
                "/components/schemas/SampleStartRequest/properties/processing_time",
                "maximum",
                config.max_delay_seconds,
            ),
        ];
        let sample_default = contract::SAMPLE_DEFAULT_SECONDS
            .unsigned_abs()
            .min(config.max_delay_seconds);
        let limits = limits.into_iter().chain([(
            "/components/schemas/SampleStartRequest/properties/processing_time",
            "default",
            sample_default,
        )]);
        for (pointer, key, value) in limits {
            if let Some(Value::Object(schema)) = json.pointer_mut(pointer) {
                schema.insert(key.to_string(), value.into());
            }
        }
        serde_json::from_value(json).unwrap_or(doc)
    }
}
