//! The OpenAPI 3.1 document, generated from the handlers' annotations and the body types.

use utoipa::OpenApi;

use crate::Settings;
use crate::links::OperationLinks;
use crate::model::{
    OperationAccepted, OperationError, OperationOutput, OperationPage, OperationState,
    OperationStatusBody, OperationSummary, StatusDocument,
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
        crate::routes::events::events,
        crate::routes::result::result,
        crate::routes::cancel::cancel,
        crate::routes::list::list,
        crate::routes::history::history,
        crate::routes::purge::purge,
        crate::routes::recurring::create,
        crate::routes::recurring::list,
        crate::routes::recurring::get_one,
        crate::routes::recurring::pause,
        crate::routes::recurring::resume,
        crate::routes::recurring::delete,
        crate::routes::sample::sample_start,
        crate::routes::sample::sample_status,
    ),
    components(schemas(
        ProcessRequest,
        OperationAccepted,
        OperationLinks,
        OperationState,
        OperationStatusBody,
        StatusDocument,
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
        crate::routes::events::StatusEvent,
        crate::routes::recurring::RecurringRequest,
        crate::routes::recurring::RecurringOperation,
        crate::routes::recurring::RecurringStatus,
        crate::routes::recurring::RecurringLinks,
        crate::routes::recurring::RecurringPage,
    )),
    tags(
        (name = "operations", description = "The async request-reply API"),
        (name = "recurring", description = "Operations started again at an interval, each run an operation in the caller's list"),
        (name = "sample compatibility", description = "The original Python sample's routes and field names"),
    )
)]
pub struct ApiDoc;

impl ApiDoc {
    /// The document with this deployment's limits filled in (they are configurable, so the
    /// annotations cannot carry them). Patched on the typed document: a round trip through JSON
    /// would silently lose the patch for schemas that do not read back.
    pub fn for_config(config: &Settings) -> utoipa::openapi::OpenApi {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{Object, Schema};
        let mut doc = Self::openapi();
        let sample_default = contract::SAMPLE_DEFAULT_SECONDS
            .unsigned_abs()
            .min(config.limits.max_delay_seconds);
        let max_delay = usize::try_from(config.limits.max_delay_seconds).unwrap_or(usize::MAX);
        if let Some(components) = doc.components.as_mut() {
            let mut property = |schema: &str, field: &str, patch: &dyn Fn(&mut Object)| {
                if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(schema)
                    && let Some(RefOr::T(Schema::Object(p))) = o.properties.get_mut(field)
                {
                    patch(p);
                }
            };
            property("ProcessRequest", "name", &|p| {
                p.max_length = Some(config.limits.max_name_chars);
            });
            property("ProcessRequest", "delay_seconds", &|p| {
                p.maximum = Some(max_delay.into());
            });
            property("RecurringRequest", "name", &|p| {
                p.max_length = Some(config.limits.max_name_chars);
            });
            property("RecurringRequest", "delay_seconds", &|p| {
                p.maximum = Some(max_delay.into());
            });
            property("RecurringRequest", "interval_seconds", &|p| {
                p.minimum = Some(config.limits.min_recurring_interval_seconds.into());
                p.maximum = Some(config.limits.max_recurring_interval_seconds.into());
            });
            property("SampleStartRequest", "processing_time", &|p| {
                p.maximum = Some(max_delay.into());
                p.default = Some(sample_default.into());
            });
        }
        status_filter(&mut doc);
        limit_responses(&mut doc, config.limits.rate_limit_per_second > 0);
        security(&mut doc, &config.auth_modes().unwrap_or_default());
        doc
    }
}

/// The pattern of the list's `status` filter: the listable states of `contract::status`, so the
/// document cannot spell them differently.
fn status_filter(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    let names: Vec<&str> = contract::status::OperationState::LISTABLE
        .iter()
        .map(|s| s.as_str())
        .collect();
    let names = names.join("|");
    let pattern = format!("^({names})(,({names}))*$");
    let list = doc
        .paths
        .paths
        .get_mut("/api/operations")
        .and_then(|item| item.get.as_mut());
    for p in list
        .and_then(|op| op.parameters.as_mut())
        .into_iter()
        .flatten()
    {
        if let RefOr::T(p) = p
            && p.name == "status"
            && let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut()
        {
            o.pattern = Some(pattern.clone());
        }
    }
}

/// With authentication on: the schemes (so that `/docs` offers "Authorize"), the requirement on
/// every operation (either scheme), and the `401` and `403` every operation may answer.
fn security(doc: &mut utoipa::openapi::OpenApi, modes: &[crate::config::AuthMode]) {
    use crate::config::AuthMode;
    use utoipa::openapi::security::{
        ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    if modes.is_empty() {
        return;
    }
    let mut requirements = Vec::new();
    if let Some(components) = doc.components.as_mut() {
        if modes.contains(&AuthMode::Jwt) {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some("An OIDC access token from the configured issuer"))
                        .build(),
                ),
            );
            requirements.push(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        if modes.contains(&AuthMode::ApiKey) {
            components.add_security_scheme(
                "apiKey",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "X-API-Key",
                    "A key issued by the operator (its hash is in the gateway's keys file)",
                ))),
            );
            requirements.push(SecurityRequirement::new("apiKey", Vec::<String>::new()));
        }
    }
    let problem = |description: &str| problem_response(description, false);
    let answers = [
        (
            "401",
            problem("No credentials, or credentials that do not hold (see `WWW-Authenticate`)"),
        ),
        ("403", problem("The caller's role does not allow this")),
    ];
    for op in operations(doc) {
        op.security = Some(requirements.clone());
        for (code, response) in &answers {
            op.responses
                .responses
                .entry(code.to_string())
                .or_insert_with(|| response.clone().into());
        }
    }
}

/// The answers of the limits every request meets (`limits`), on every operation: `408` past the
/// request timeout, `431` past the head size, `503` when requests are shed, `429` past the
/// caller's rate (when there is one).
fn limit_responses(doc: &mut utoipa::openapi::OpenApi, rate_limited: bool) {
    let problem = problem_response;
    let mut limits = vec![
        (
            "408",
            problem(
                "The request was not complete within the request timeout",
                false,
            ),
        ),
        (
            "431",
            problem("The request head is over the gateway's limit", false),
        ),
        (
            "503",
            problem(
                "The gateway or the scheduler is overloaded or unreachable; retry after `Retry-After`",
                true,
            ),
        ),
    ];
    if rate_limited {
        limits.push((
            "429",
            problem(
                "Over the caller's request rate; retry after `Retry-After` (the `RateLimit` field says more)",
                true,
            ),
        ));
    }
    for op in operations(doc) {
        for (code, response) in &limits {
            op.responses
                .responses
                .entry(code.to_string())
                .or_insert_with(|| response.clone().into());
        }
    }
}

/// A response documented as a problem (`application/problem+json`), with `Retry-After` when
/// the client is told to wait.
fn problem_response(description: &str, retry_after: bool) -> utoipa::openapi::Response {
    use utoipa::openapi::schema::{Object, Ref, Type};
    use utoipa::openapi::{Content, Header, ResponseBuilder};
    let mut r = ResponseBuilder::new().description(description).content(
        "application/problem+json",
        Content::new(Some(Ref::from_schema_name("ProblemDetails"))),
    );
    if retry_after {
        r = r.header("Retry-After", Header::new(Object::with_type(Type::Integer)));
    }
    r.build()
}

/// Every operation of the document.
fn operations(
    doc: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.delete,
            &mut item.put,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
    })
}
