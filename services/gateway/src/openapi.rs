//! The OpenAPI 3.1 document, generated from the handlers' annotations and the body types.

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
    /// annotations cannot carry them). Patched on the typed document: a round trip through JSON
    /// would silently lose the patch for schemas that do not read back.
    pub fn for_config(config: &GatewayConfig) -> utoipa::openapi::OpenApi {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{Object, Schema};
        let mut doc = Self::openapi();
        let sample_default = contract::SAMPLE_DEFAULT_SECONDS
            .unsigned_abs()
            .min(config.max_delay_seconds);
        let max_delay = usize::try_from(config.max_delay_seconds).unwrap_or(usize::MAX);
        if let Some(components) = doc.components.as_mut() {
            let mut property = |schema: &str, field: &str, patch: &dyn Fn(&mut Object)| {
                if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(schema)
                    && let Some(RefOr::T(Schema::Object(p))) = o.properties.get_mut(field)
                {
                    patch(p);
                }
            };
            property("ProcessRequest", "name", &|p| {
                p.max_length = Some(config.max_name_chars);
            });
            property("ProcessRequest", "delay_seconds", &|p| {
                p.maximum = Some(max_delay.into());
            });
            property("SampleStartRequest", "processing_time", &|p| {
                p.maximum = Some(max_delay.into());
                p.default = Some(sample_default.into());
            });
        }
        doc
    }
}
