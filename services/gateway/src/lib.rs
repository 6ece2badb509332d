//! The public HTTP API of the async request-reply pattern.
//!
//! `POST /api/process` starts `process_request` and answers `202 Accepted` at once, with the
//! status monitor in `Location`/`Operation-Location` and a `Retry-After`. The operation id is the
//! orchestration instance id. Every error is `application/problem+json` (RFC 9457).
//!
//! The modules, by job: [`config`] what behaviour depends on; `problem` the error shape;
//! `extract` request parsing whose rejections are problems; `scheduler` the one shape of every
//! scheduler call; `links` and `respond` building answers; `model` the response bodies;
//! `idempotency` keyed starts; `routes` one file per resource; `metrics` and `openapi`;
//! `limits` what every request meets before its handler, and [`serve`] the HTTP server with the
//! connection limits and the end of serving on shutdown.

pub mod auth;
mod callback;
pub mod config;
mod edge;
mod extract;
mod idempotency;
mod json;
pub mod limits;
mod links;
mod metrics;
mod model;
mod openapi;
mod problem;
mod respond;
mod routes;
mod run;
mod scheduler;
pub mod serve;
pub mod shares;
mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tracing::Instrument;
use utoipa_swagger_ui::SwaggerUi;

pub use config::Settings;
pub use contract::{
    PROCESS_ORCHESTRATION, ProcessRequest, ProcessResult, SAMPLE_ORCHESTRATION, SampleResult,
};
pub use metrics::GatewayMetrics;
pub use model::{
    OperationAccepted, OperationError, OperationOutput, OperationPage, OperationState,
    OperationStatusBody, OperationSummary, StatusDocument,
};
pub use openapi::ApiDoc;
pub use problem::{Problem, ProblemDetails};
pub use routes::history::{HistoryEntry, OperationHistory};
pub use routes::recurring::{
    RecurringLinks, RecurringOperation, RecurringPage, RecurringRequest, RecurringStatus,
};
pub use routes::sample::{SampleAccepted, SampleStartRequest, SampleStatus};
pub use run::run;
pub use state::{AppState, Shared};

/// The whole public API. Route templates are written here once: the metrics middleware labels
/// requests with the template the router matched, and the OpenAPI document lists the same
/// handlers.
pub fn app(state: AppState) -> Router {
    use routes::{
        cancel, events, history, list, process, purge, recurring, result, sample, status,
    };
    let limit = state.config.limits.max_body_bytes;
    let api = Router::new()
        .route(
            "/api/process",
            post(process::start_process).layer(from_fn(run_to_completion)),
        )
        .route("/api/status/{id}", get(status::status))
        .route("/api/status/{id}/events", get(events::events))
        .route("/api/result/{id}", get(result::result))
        .route(
            "/api/operations/{id}/cancel",
            post(cancel::cancel).layer(from_fn(run_to_completion)),
        )
        .route("/api/operations", get(list::list))
        .route("/api/operations/{id}/history", get(history::history))
        .route(
            "/api/recurring",
            get(recurring::list).post(recurring::create.layer(from_fn(run_to_completion))),
        )
        .route(
            "/api/recurring/{id}",
            get(recurring::get_one).delete(recurring::delete.layer(from_fn(run_to_completion))),
        )
        .route(
            "/api/recurring/{id}/pause",
            post(recurring::pause).layer(from_fn(run_to_completion)),
        )
        .route(
            "/api/recurring/{id}/resume",
            post(recurring::resume).layer(from_fn(run_to_completion)),
        )
        // The original sample's routes, with its field names.
        .route(
            "/api/start-operation",
            post(sample::sample_start).layer(from_fn(run_to_completion)),
        )
        .route(
            "/api/operations/{id}",
            get(sample::sample_status).delete(purge::purge),
        )
        // Every API route needs a caller, whose share and rate are then checked; the document
        // and `/docs` are public.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::admit,
        ));
    let doc = ApiDoc::for_config(&state.config);
    let api = if state.config.docs == config::Docs::Public {
        // `/openapi.json` is served by the Swagger UI router, from the same generated document.
        api.merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
    } else {
        api.route(
            "/openapi.json",
            get(move || std::future::ready(axum::Json(doc.clone()))),
        )
    };
    let routes = api
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit));
    limits::apply(routes, &state.config)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// The admin listener's routes: probes and metrics, apart from the public API (not behind the
/// Service an Ingress uses).
pub fn admin_app(state: AppState) -> Router {
    let ready = state.clone();
    let scraped = state.clone();
    let router = service_kit::admin::router(
        move || routes::health::readiness(ready.clone()),
        move |accept| scraped.metrics.exposition(accept),
    );
    // The Swagger UI's 1.5 MB of script, away from the public listener when asked.
    let router = if state.config.docs == config::Docs::Admin {
        router
            .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::for_config(&state.config)))
    } else {
        router
    };
    router.fallback(problem::not_found)
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
        Err(_) => problem::internal("the request failed inside the gateway").into_response(),
    }
}
