//! Traces over OTLP: an OTLP receiver in the test collects what the real gateway process exports.
//! A caller's `traceparent` is continued by the gateway's server span, `create_orchestration`
//! is its child, both carry `operation.id`, the 202 names the trace in `traceresponse`, and the
//! context reaches the orchestration through the scheduler (`parentTraceContext`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;

mod common;
use common::*;

#[derive(Debug, Clone)]
struct Collected {
    service: String,
    instance: String,
    span: Span,
}

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Collected>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let resource = |key: &str| {
                rs.resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == key)
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(AnyValue::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            let (service, instance) = (resource("service.name"), resource("service.instance.id"));
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(Collected {
                        service: service.clone(),
                        instance: instance.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

/// The span is in the caller's trace and names the operation.
fn assert_in_operation(c: &Collected, trace: &str, operation_id: &str) {
    assert_eq!(hex(&c.span.trace_id), trace, "{}", c.span.name);
    assert_eq!(
        attrs(&c.span).get("operation.id").map(String::as_str),
        Some(operation_id),
        "{}",
        c.span.name
    );
}

/// An OTLP receiver on loopback: what it collects, and its port.
async fn otlp_receiver() -> (Receiver, u16) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (receiver, port)
}

async fn post_with_trace(port: u16, traceparent: &str) -> (u16, HashMap<String, String>, Value) {
    let (status, headers, body) = http_with_headers(
        port,
        "POST",
        "/api/process",
        Some(r#"{"name":"Traced","delay_seconds":0}"#),
        &[("traceparent", traceparent), ("tracestate", "vendor=1")],
    )
    .await;
    (status, headers.into_iter().collect(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_continues_through_the_gateway_into_the_orchestration() {
    let (receiver, otlp_port) = otlp_receiver().await;

    // Two worker processes exporting to the same receiver, told apart by service.instance.id:
    // one runs only orchestrations, the other only activities, so the trace has to cross them.
    // The scheduler exports its spans there too.
    let otlp = format!("http://127.0.0.1:{otlp_port}");
    // A process: its telemetry is set up from these variables as in production.
    let (_sched, endpoint) = test_support::process::local_scheduler(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ])
    .await;
    let mut workers = Vec::new();
    // Both write JSON logs to files, to check what their log lines carry.
    let log_of =
        |name: &str| std::env::temp_dir().join(format!("{name}-{}.log", std::process::id()));
    let log_path = log_of("worker-b");
    for (name, runs) in [("worker-a", "orchestrations"), ("worker-b", "activities")] {
        let admin = free_port();
        let mut cmd = tokio::process::Command::new(test_support::process::binary("worker"));
        cmd.env("ENDPOINT", &endpoint)
            .env("HOSTNAME", name)
            .env("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("service.instance.id={name}"),
            )
            .env("WORKER__RUNS", runs)
            .env("WORKER__LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd.stderr(std::fs::File::create(log_of(name)).expect("log file"));
        workers.push(cmd.spawn().expect("spawn worker"));
        wait_port(admin).await;
    }

    let (_gateway, port, _) = gateway(
        &endpoint,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp_port}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    )
    .await;

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (status, headers, body) =
        post_with_trace(port, &format!("00-{caller_trace}-{caller_span}-01")).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    let traceresponse = headers.get("traceresponse").expect("traceresponse header");
    let parts: Vec<&str> = traceresponse.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceresponse}");
    assert_eq!(parts[1], caller_trace, "the 202 names the caller's trace");

    // The spans arrive at the receiver.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (server, create) = loop {
        let spans = receiver.spans.lock().expect("lock").clone();
        let find = |name: &str| spans.iter().find(|c| c.span.name == name).cloned();
        if let (Some(s), Some(c)) = (
            find("POST /api/process"),
            find("create_orchestration:process_request"),
        ) {
            break (s, c);
        }
        assert!(
            Instant::now() < deadline,
            "spans never arrived: {:?}",
            spans
                .iter()
                .map(|c| c.span.name.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(server.service, "gateway");
    assert_eq!(hex(&server.span.trace_id), caller_trace);
    assert_eq!(
        hex(&server.span.parent_span_id),
        caller_span,
        "continues the caller's span"
    );
    assert_eq!(server.span.kind, 2, "server span");
    assert_eq!(
        hex(&server.span.span_id),
        parts[2],
        "traceresponse names the server span"
    );
    let a = attrs(&server.span);
    assert_eq!(a.get("operation.id"), Some(&id), "{a:?}");
    assert_eq!(
        a.get("http.route").map(String::as_str),
        Some("/api/process")
    );
    assert_eq!(
        a.get("http.response.status_code").map(String::as_str),
        Some("202")
    );

    assert_eq!(hex(&create.span.trace_id), caller_trace);
    assert_eq!(
        create.span.parent_span_id, server.span.span_id,
        "child of the server span"
    );
    assert_eq!(create.span.kind, 3, "client span");
    let a = attrs(&create.span);
    assert_eq!(a.get("operation.id"), Some(&id), "{a:?}");
    assert_eq!(a.get("durabletask.task.instance_id"), Some(&id));
    assert_eq!(
        a.get("durabletask.type").map(String::as_str),
        Some("orchestration")
    );

    // The operation runs; its orchestration and activity spans join the same trace.
    let (status, _, done) = http(port, "GET", &format!("/api/status/{id}?wait=20"), None).await;
    assert_eq!(
        (status, done["status"].as_str()),
        (200, Some("Succeeded")),
        "{done}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let (orch, call, run) = loop {
        let spans = receiver.spans.lock().expect("lock").clone();
        let find = |name: &str, kind: i32| {
            spans
                .iter()
                .find(|c| c.span.name == name && c.span.kind == kind)
                .cloned()
        };
        let act = "activity:simulate_long_running_activity";
        if let (Some(o), Some(c), Some(r)) = (
            find("orchestration:process_request", 2),
            find(act, 3),
            find(act, 2),
        ) {
            break (o, c, r);
        }
        assert!(
            Instant::now() < deadline,
            "worker spans never arrived: {:?}",
            spans
                .iter()
                .map(|c| (c.span.name.clone(), c.span.kind))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(orch.instance, "worker-a");
    assert_eq!(
        call.instance, "worker-a",
        "the orchestration records the call"
    );
    assert_eq!(
        run.instance, "worker-b",
        "the activity ran in the other process"
    );
    for c in [&orch, &call, &run] {
        assert_eq!(c.service, "worker");
        assert_in_operation(c, caller_trace, &id);
    }
    assert_eq!(
        orch.span.parent_span_id, create.span.span_id,
        "orchestration below create_orchestration"
    );
    assert_eq!(
        call.span.parent_span_id, orch.span.span_id,
        "the activity call below the orchestration"
    );
    assert_eq!(
        run.span.parent_span_id, call.span.span_id,
        "the activity run below its scheduling context"
    );
    // The scheduler's spans: its StartInstance below create_orchestration, the queue wait of
    // each orchestration episode below create_orchestration (first) or the orchestration span,
    // and the activity's wait below the call that scheduled it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let scheduler_spans = loop {
        let spans: Vec<_> = receiver
            .spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|c| c.service == "local-scheduler")
            .cloned()
            .collect();
        let names: Vec<&str> = spans.iter().map(|c| c.span.name.as_str()).collect();
        if names.contains(&"TaskHubSidecarService/StartInstance")
            && names
                .iter()
                .filter(|n| **n == "dispatch orchestration:process_request")
                .count()
                >= 2
            && names.contains(&"dispatch activity:simulate_long_running_activity")
        {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "scheduler spans never arrived: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for c in &scheduler_spans {
        assert_in_operation(c, caller_trace, &id);
        assert!(c.span.end_time_unix_nano >= c.span.start_time_unix_nano);
    }
    let named = |name: &str| {
        scheduler_spans
            .iter()
            .filter(|c| c.span.name == name)
            .collect::<Vec<_>>()
    };
    let start = named("TaskHubSidecarService/StartInstance");
    assert_eq!(start[0].span.kind, 2, "server span");
    assert_eq!(start[0].span.parent_span_id, create.span.span_id);
    let mut episodes = named("dispatch orchestration:process_request");
    episodes.sort_by_key(|c| c.span.start_time_unix_nano);
    assert_eq!(
        episodes[0].span.parent_span_id, create.span.span_id,
        "the first episode waits before the orchestration span exists"
    );
    assert!(
        episodes[1..]
            .iter()
            .all(|c| c.span.parent_span_id == orch.span.span_id),
        "later episodes wait below the orchestration span"
    );
    let waits = named("dispatch activity:simulate_long_running_activity");
    assert_eq!(waits[0].span.parent_span_id, call.span.span_id);
    assert!(
        attrs(&waits[0].span).contains_key("durabletask.dispatch.wait_ms"),
        "{:?}",
        attrs(&waits[0].span)
    );
    // One orchestration span, though the orchestration ran in two episodes.
    let spans = receiver.spans.lock().expect("lock").clone();
    assert_eq!(
        spans
            .iter()
            .filter(|c| c.span.name == "orchestration:process_request")
            .count(),
        1
    );
    // The log-context spans stay out of the export (the SDK exports its own, with protocol ids).
    assert!(
        !spans.iter().any(|c| c.span.name == "activity"),
        "log-context span exported"
    );
    // worker-b's log line from inside the activity carries the operation and its trace.
    let logs = std::fs::read_to_string(&log_path).expect("worker log");
    let line: Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "processing request")
        .unwrap_or_else(|| panic!("no activity log line in:\n{logs}"));
    assert_eq!(line["span"]["operation_id"], id.as_str(), "{line}");
    assert_eq!(line["span"]["trace_id"], caller_trace, "{line}");
    assert_eq!(line["span"]["span_id"], hex(&run.span.span_id), "{line}");
    let _ = std::fs::remove_file(&log_path);
    // worker-a's orchestration log line: once, though the orchestration ran two episodes
    // (replay-safe), with the operation and its trace.
    let logs = std::fs::read_to_string(log_of("worker-a")).expect("worker log");
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "starting the activity")
        .collect();
    assert_eq!(lines.len(), 1, "replays must not repeat the line:\n{logs}");
    assert_eq!(
        lines[0]["span"]["operation_id"],
        id.as_str(),
        "{}",
        lines[0]
    );
    assert_eq!(lines[0]["span"]["trace_id"], caller_trace, "{}", lines[0]);
    let _ = std::fs::remove_file(log_of("worker-a"));
    // The whole trace as a tree, for the record (`cargo test -p gateway --test tracing --
    // --nocapture`).
    let spans: Vec<Collected> = receiver
        .spans
        .lock()
        .expect("lock")
        .iter()
        .filter(|c| hex(&c.span.trace_id) == caller_trace)
        .cloned()
        .collect();
    fn print_below(spans: &[Collected], parent: &[u8], depth: usize) {
        let mut children: Vec<&Collected> = spans
            .iter()
            .filter(|c| c.span.parent_span_id == parent)
            .collect();
        children.sort_by_key(|c| c.span.start_time_unix_nano);
        for c in children {
            let kind = match c.span.kind {
                2 => " server",
                3 => " client",
                _ => "",
            };
            let took = c
                .span
                .end_time_unix_nano
                .saturating_sub(c.span.start_time_unix_nano) as f64
                / 1e6;
            let who = if c.instance.is_empty() {
                c.service.clone()
            } else {
                c.instance.clone()
            };
            println!(
                "{}└ {} {}{kind} ({who}) {took:.2} ms",
                "  ".repeat(depth + 1),
                c.span.name,
                hex(&c.span.span_id),
            );
            print_below(spans, &c.span.span_id, depth + 1);
        }
    }
    println!("trace {caller_trace}:\n  caller {caller_span}");
    let caller = (0..8)
        .map(|i| u8::from_str_radix(&caller_span[2 * i..2 * i + 2], 16).expect("hex"))
        .collect::<Vec<u8>>();
    print_below(&spans, &caller, 1);
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callbacks_delivery_attempts_are_spans_of_the_operations_trace() {
    let (receiver, otlp_port) = otlp_receiver().await;
    let otlp = format!("http://127.0.0.1:{otlp_port}");
    // The callback's receiver: answers 204.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_port = hook.local_addr().expect("addr").port();
    tokio::spawn(async move {
        axum::serve(
            hook,
            axum::Router::new().route(
                "/hook",
                axum::routing::post(|| async { axum::http::StatusCode::NO_CONTENT }),
            ),
        )
        .await
    });
    let (_sched, endpoint) = local_scheduler().await;
    let admin = free_port();
    let _worker = test_support::process::spawn(
        "worker",
        &[
            ("ENDPOINT", endpoint.clone()),
            ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            (
                "WORKER__CALLBACK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            ),
            ("WORKER__CALLBACK_ALLOW_HTTP", "true".into()),
            ("WORKER__CALLBACK_ALLOWED_NETWORKS", "127.0.0.1/32".into()),
            ("WORKER__CALLBACK_POLL_MAX_MS", "300".into()),
        ],
        admin,
    )
    .await;
    let (_gateway, port, _) = gateway(
        &endpoint,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("GATEWAY__CALLBACK_ALLOW_HTTP", "true".into()),
            ("GATEWAY__CALLBACK_ALLOWED_NETWORKS", "127.0.0.1/32".into()),
        ],
    )
    .await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let callback = format!("http://127.0.0.1:{hook_port}/hook");
    let (status, _, body) = http_with_headers(
        port,
        "POST",
        "/api/process",
        Some(r#"{"name":"Traced","delay_seconds":0}"#),
        &[
            ("traceparent", &format!("00-{trace}-b7ad6b7169203331-01")),
            ("callback-url", &callback),
        ],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let attempt = loop {
        let spans = receiver.spans.lock().expect("lock").clone();
        if let Some(c) = spans
            .iter()
            .find(|c| c.span.name == "activity:deliver_callback_attempt" && c.span.kind == 2)
        {
            break c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no delivery attempt span: {:?}",
            spans
                .iter()
                .map(|c| c.span.name.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(attempt.service, "worker");
    assert_eq!(
        hex(&attempt.span.trace_id),
        trace,
        "the attempt is in the operation's trace"
    );
}
