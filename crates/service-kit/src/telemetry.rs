//! Logs and traces. Logs go to stderr (text or JSON lines, `RUST_LOG` filters). Spans are
//! exported over OTLP/gRPC when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the other `OTEL_*` variables honoured by
//! the OpenTelemetry SDK (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`). Export is batched on its own thread, so it never
//! blocks a request; [`Telemetry::shutdown`] flushes what is left.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the exporter alive; call [`Telemetry::shutdown`] before exiting.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("telemetry: could not flush spans: {e}");
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// Sets up logging and, when configured, span export. `service` is the default
/// `service.name` (`OTEL_SERVICE_NAME` wins).
pub fn init(service: &str, log_format: crate::settings::LogFormat) -> Telemetry {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = otlp_configured()
        .then(|| build_provider(service))
        .and_then(|r| match r {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("telemetry: OTLP export is off: {e}");
                None
            }
        });
    // Boxed layers in a Vec: a layer that is absent must not exist at all (an `Option` layer
    // set to `None` declares interest in everything, which would create every span).
    let mut layers: Vec<
        Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>,
    > = Vec::new();
    // `RUST_LOG` filters the logs only; spans at INFO and above are traced regardless, except
    // the Durable Task SDK's log-context spans (it exports its own spans with the protocol's ids).
    if let Some(p) = &provider {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer(service.to_string()))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_default(tracing::Level::INFO)
                        .with_target(
                            durabletask::otel::LOG_CONTEXT_TARGET,
                            tracing_subscriber::filter::LevelFilter::OFF,
                        ),
                )
                .boxed(),
        );
    }
    // Replay-safe orchestration logs: events written while the SDK replays history are dropped.
    let filter = tracing_subscriber::filter::FilterExt::and(
        filter,
        // Dynamic: decided per event (a plain `filter_fn` would be cached per call site).
        tracing_subscriber::filter::dynamic_filter_fn(|m, _| {
            !(m.is_event() && durabletask::otel::replaying_now())
        }),
    );
    // `auto`: readable text on a terminal, JSON lines otherwise (containers, files).
    use crate::settings::LogFormat;
    let json = match log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    layers.push(if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    });
    tracing_subscriber::registry().with(layers).init();
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    Telemetry { provider }
}

fn build_provider(service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(SdkTracerProvider::builder()
        .with_id_generator(PinnableIds::default())
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The W3C `traceparent` of a tracing span, when it is being traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The one strict W3C `traceparent` parser, from the SDK (re-exported for the services).
pub use durabletask::TraceParent;

/// Continues the caller's trace: makes `span` a child of the context in `traceparent` /
/// `tracestate` (when well-formed).
pub fn set_remote_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    struct Headers<'a>(Option<&'a str>, Option<&'a str>);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0,
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    if traceparent.is_none() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&Headers(traceparent, tracestate))
    });
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Random ids, except where the Durable Task SDK pins the id of the span it is starting (the
/// orchestration span, stable across episodes; the activity call's client span).
#[derive(Debug, Default)]
struct PinnableIds(opentelemetry_sdk::trace::RandomIdGenerator);

impl opentelemetry_sdk::trace::IdGenerator for PinnableIds {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        self.0.new_trace_id()
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        durabletask::otel::take_pinned_span_id().unwrap_or_else(|| self.0.new_span_id())
    }
}

/// A span that already happened, for work a service times itself rather than running inside a
/// `tracing` span (the local scheduler's queue waits): exported as a child of the W3C
/// `traceparent` `parent`. Nothing happens when the parent is malformed or nothing is exported.
pub fn record_finished_span(
    scope: &'static str,
    name: String,
    kind: opentelemetry::trace::SpanKind,
    parent: &str,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
    attributes: Vec<opentelemetry::KeyValue>,
) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    struct Parent<'a>(&'a str);
    impl opentelemetry::propagation::Extractor for Parent<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Parent(parent)));
    if !cx.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer(scope);
    let mut span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &cx);
    span.end_with_timestamp(end);
}
