//! Traces over OTLP: an OTLP receiver in the test collects what the real gateway process exports.
//! A caller's `traceparent` is continued by the gateway's server span, `create_orchestration`
//! is its child, both carry `operation.id`, the 202 names the trace in `traceresponse`, and the
//! context reaches the orchestration through the scheduler (`parentTraceContext`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use durabletask::{
    Connection, ConnectionOptions, OrchestrationContext, Registry, Worker, WorkerOptions,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

#[derive(Debug, Clone)]
struct Collected {
    service: String,
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
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(Collected {
                        service: service.clone(),
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

async fn post_with_trace(port: u16, traceparent: &str) -> (u16, HashMap<String, String>, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"name":"Traced","delay_seconds":0}"#;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!(
        "POST /api/process HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\ntraceparent: {traceparent}\r\ntracestate: vendor=1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (
        status,
        headers,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_continues_through_the_gateway_into_the_orchestration() {
    // The OTLP receiver.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp_port = listener.local_addr().expect("addr").port();
    let server = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let (_sched, endpoint) = local_scheduler().await;
    // A worker in this process whose `process_request` reports the trace context it was given.
    let conn = Connection::connect(ConnectionOptions::new(&endpoint, "default").expect("opts"))
        .await
        .expect("connect");
    let mut registry = Registry::new();
    registry.add_orchestrator(
        "process_request",
        |ctx: OrchestrationContext, _: Value| async move {
            Ok(ctx.trace_context().map(|t| t.traceparent))
        },
    );
    let stop = CancellationToken::new();
    let worker =
        tokio::spawn(Worker::new(&conn, registry, WorkerOptions::default()).run(stop.clone()));

    let port = free_port();
    let _gateway = spawn(
        "gateway",
        &[
            ("ENDPOINT", endpoint.clone()),
            ("GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp_port}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
        port,
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

    // Through the scheduler to the orchestration: same trace, below create_orchestration.
    let client = durabletask::Client::new(&conn);
    let done = client
        .wait_for_instance_completion(&id, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    let seen: Option<String> = done.output().expect("json");
    let seen = seen.expect("the orchestration got a trace context");
    assert_eq!(seen.split('-').nth(1), Some(caller_trace), "{seen}");
    stop.cancel();
    let _ = worker.await;
}
