//! The gateway's Prometheus metrics. Labels are bounded: routes are the router's templates
//! (never an operation id), methods outside the usual set count as `other`.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use service_kit::telemetry::TraceParent;
use tracing::Instrument;

// Labels hold static strings, integers and the router's own template (a reference count):
// building them on every request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: RouteLabel,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: RouteLabel,
}

/// The route template the router matched (`/api/status/{id}`, never an operation id), or
/// `unmatched`. Taken from the router itself, so a new route is labelled with no list to keep:
/// the set stays bounded because only the router's own templates can match.
#[derive(Clone, Debug)]
struct RouteLabel(Option<MatchedPath>);

impl RouteLabel {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for RouteLabel {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteLabel {}

impl std::hash::Hash for RouteLabel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// Exemplar labels: the trace of one request in a histogram bucket.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabels {
    trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcErrorLabels {
    method: &'static str,
    code: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Everything the gateway counts.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    request_duration: Family<
        RouteLabels,
        HistogramWithExemplars<TraceLabels>,
        fn() -> HistogramWithExemplars<TraceLabels>,
    >,
    pub(crate) started: Counter,
    pub(crate) deduplicated: Counter,
    pub(crate) canceled: Counter,
    rpc_duration: Histograms<RpcLabels>,
    rpc_errors: Family<RpcErrorLabels, Counter>,
    pub(crate) long_polls_waiting: Gauge,
    pub(crate) long_polls_refused: Counter,
    pub(crate) streams_open: Gauge,
    pub(crate) streams_refused: Counter,
    /// Starts refused because their caller had `max_unfinished_per_caller` operations unfinished.
    pub(crate) unfinished_refused: Counter,
    /// Of the public listener.
    pub connections: crate::serve::ConnectionMetrics,
}

fn http_buckets() -> HistogramWithExemplars<TraceLabels> {
    // 1 ms to about 33 s (long polls).
    HistogramWithExemplars::new(exponential_buckets(0.001, 2.0, 16))
}

fn rpc_buckets() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = service_kit::metrics::registry("gateway");
        let requests = Family::<HttpLabels, Counter>::default();
        let request_duration: Family<_, _, fn() -> HistogramWithExemplars<TraceLabels>> =
            Family::new_with_constructor(http_buckets);
        let (started, deduplicated, canceled) =
            (Counter::default(), Counter::default(), Counter::default());
        let rpc_duration: Histograms<RpcLabels> = Family::new_with_constructor(rpc_buckets);
        let rpc_errors = Family::<RpcErrorLabels, Counter>::default();
        registry.register(
            "gateway_http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "gateway_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            request_duration.clone(),
        );
        registry.register(
            "gateway_operations_started",
            "Operations started (a new orchestration instance)",
            started.clone(),
        );
        registry.register(
            "gateway_operations_deduplicated",
            "Starts answered with an existing operation (same Idempotency-Key and body)",
            deduplicated.clone(),
        );
        registry.register(
            "gateway_operations_canceled",
            "Cancel requests accepted",
            canceled.clone(),
        );
        registry.register(
            "gateway_dts_rpc_duration_seconds",
            "Duration of calls to the Durable Task Scheduler, by gRPC method",
            rpc_duration.clone(),
        );
        registry.register(
            "gateway_dts_rpc_errors",
            "Calls to the Durable Task Scheduler that failed, by gRPC method and code",
            rpc_errors.clone(),
        );
        let long_polls_waiting = Gauge::default();
        registry.register(
            "gateway_long_polls_waiting",
            "Long polls (?wait=) waiting for their operation to end",
            long_polls_waiting.clone(),
        );
        let long_polls_refused = Counter::default();
        registry.register(
            "gateway_long_polls_refused",
            "Long polls answered at once because max_long_polls were already waiting",
            long_polls_refused.clone(),
        );
        let streams_open = Gauge::default();
        registry.register(
            "gateway_status_streams_open",
            "Status streams (text/event-stream) open",
            streams_open.clone(),
        );
        let streams_refused = Counter::default();
        registry.register(
            "gateway_status_streams_refused",
            "Status streams refused with 503 because max_long_polls were already held",
            streams_refused.clone(),
        );
        let unfinished_refused = Counter::default();
        registry.register(
            "gateway_starts_refused_unfinished",
            "Starts refused with 429 because their caller had max_unfinished_per_caller operations unfinished",
            unfinished_refused.clone(),
        );
        let connections = crate::serve::ConnectionMetrics::default();
        registry.register(
            "gateway_connections_open",
            "Open connections on the public listener",
            connections.open.clone(),
        );
        registry.register(
            "gateway_connections_refused",
            "Connections answered 503 and closed because max_connections were open",
            connections.refused.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            started,
            deduplicated,
            canceled,
            rpc_duration,
            rpc_errors,
            long_polls_waiting,
            long_polls_refused,
            streams_open,
            streams_refused,
            unfinished_refused,
            connections,
        }
    }
}

impl GatewayMetrics {
    /// The scrape body and its content type, negotiated on `Accept`.
    pub fn exposition(&self, accept: Option<&str>) -> (&'static str, String) {
        service_kit::metrics::exposition(&self.registry, accept)
    }

    /// Records one scheduler call; `code` is `None` on success.
    pub(crate) fn rpc(&self, method: &'static str, took: Duration, code: Option<&str>) {
        self.rpc_duration
            .get_or_create(&RpcLabels { method })
            .observe(took.as_secs_f64());
        if let Some(code) = code {
            self.rpc_errors
                .get_or_create(&RpcErrorLabels {
                    method,
                    code: code.to_string(),
                })
                .inc();
        }
    }
}

/// Middleware: counts and times every request by its route template.
pub(crate) async fn track(
    State(state): State<crate::AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = RouteLabel(request.extensions().get::<MatchedPath>().cloned());
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    // The server span: continues the caller's trace (W3C `traceparent`), and its context goes
    // back in `traceresponse` so the caller can find the trace of its operation.
    // (Owned copies: a borrow of the request must not live across the await below.)
    let (parent, state_header) = {
        let h = request.headers();
        let get = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (get("traceparent"), get("tracestate"))
    };
    let span = tracing::info_span!(
        "http_request",
        otel.name = %format!("{method} {}", route.as_str()),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route.as_str(),
        http.response.status_code = tracing::field::Empty,
        operation.id = tracing::field::Empty,
        // The same, for log lines written while handling the request.
        operation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    service_kit::telemetry::set_remote_parent(&span, parent.as_deref(), state_header.as_deref());
    if let Some(tp) = service_kit::telemetry::traceparent(&span)
        && let Some(ids) = TraceParent::parse(&tp)
    {
        span.record("trace_id", ids.trace_id);
        span.record("span_id", ids.span_id);
    }
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let traceparent = service_kit::telemetry::traceparent(&span);
    if let Some(v) = traceparent
        .as_deref()
        .and_then(|tp| axum::http::HeaderValue::from_str(tp).ok())
    {
        response.headers_mut().insert("traceresponse", v);
    }
    let m = &state.metrics;
    // The request's trace as exemplar, so a slow bucket leads to a trace.
    let exemplar = traceparent
        .as_deref()
        .and_then(TraceParent::parse)
        .map(|tp| TraceLabels {
            trace_id: tp.trace_id.to_string(),
        });
    m.request_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64(), exemplar, None);
    m.requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
