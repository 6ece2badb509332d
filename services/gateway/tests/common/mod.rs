//! Helpers shared by the gateway's integration tests: router calls with `oneshot`, the local
//! scheduler and the worker in this process, and the gateway as a real process on loopback.
#![allow(dead_code, unreachable_pub)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use durabletask::{Client, Connection, ConnectionOptions};
use gateway::{AppState, Settings, app};
use serde_json::Value;
use test_support::in_process::Running;
use tokio::process::Child;
use tower::ServiceExt;

pub use test_support::net::{free_port, wait_port};

pub async fn state_for(endpoint: &str, config: Settings) -> AppState {
    let conn = Connection::connect(ConnectionOptions::new(endpoint, "default").expect("opts"))
        .await
        .expect("connect");
    AppState::new(Client::new(&conn), config)
}

/// A state whose scheduler is unreachable (nothing listens on the port).
pub async fn offline_state() -> AppState {
    let cfg = Settings {
        dts_timeout_ms: 1500,
        ..Default::default()
    };
    offline_state_with(cfg).await
}

/// A state with `config` whose scheduler is unreachable.
pub async fn offline_state_with(config: Settings) -> AppState {
    state_for(&format!("http://127.0.0.1:{}", free_port()), config).await
}

pub async fn call(
    state: AppState,
    method: &str,
    uri: &str,
    ct: Option<&str>,
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = ct {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let resp = app(state)
        .oneshot(req.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, v)
}

pub fn is_problem(h: &axum::http::HeaderMap, v: &Value, status: StatusCode) {
    assert_eq!(
        h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{v}"
    );
    assert_eq!(v["status"], status.as_u16(), "{v}");
    assert!(
        v["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("/problems/")),
        "{v}"
    );
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
}

pub use test_support::process::spawn;

/// An in-memory local scheduler in this process, and its endpoint.
pub async fn local_scheduler() -> (Running, String) {
    local_scheduler_with(&[]).await
}

/// An in-memory local scheduler in this process, configured by `LOCAL_SCHEDULER__*` pairs.
pub async fn local_scheduler_with(extra: &[(&str, String)]) -> (Running, String) {
    let scheduler = test_support::in_process::scheduler(extra);
    let endpoint = scheduler.endpoint();
    (scheduler, endpoint)
}

/// A worker in this process on `endpoint`.
pub fn worker_in_process(endpoint: &str) -> Running {
    test_support::in_process::worker(endpoint, &[])
}

/// A gateway process on `endpoint` with extra environment variables: the process, its API port
/// and its admin port (probes, metrics).
pub async fn gateway(endpoint: &str, extra: &[(&str, String)]) -> (Child, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let mut env = vec![
        ("ENDPOINT", endpoint.to_string()),
        ("GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
        ("GATEWAY__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        ("GATEWAY__DRAIN_DELAY_SECONDS", "0".into()),
    ];
    // Open and without a per-caller rate unless the test says otherwise (the tests of other
    // limits send thousands of requests from one address).
    for (key, value) in [
        ("GATEWAY__AUTH", "none"),
        ("GATEWAY__RATE_LIMIT_PER_SECOND", "0"),
    ] {
        if !extra.iter().any(|(k, _)| *k == key) {
            env.push((key, value.into()));
        }
    }
    env.extend(extra.iter().cloned());
    let child = spawn("gateway", &env, port).await;
    wait_port(admin).await;
    (child, port, admin)
}

/// Minimal HTTP/1.1 over a real socket: status, headers (lower-case names), JSON body.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, Value) {
    http_with_headers(port, method, path, body, &[]).await
}

/// Like [`http`], with extra request headers.
pub async fn http_with_headers(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Value) {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    let (status, headers, body) =
        test_support::http::request(port, method, path, &headers, body.unwrap_or("")).await;
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

#[allow(unused_imports)] // not every test binary reads headers
pub use test_support::http::header as hdr;

/// A whole system on loopback, in this process: a local scheduler, a worker, and the gateway on
/// `port`. The scheduler and the worker stop when it is dropped.
pub struct System {
    _scheduler: Running,
    _worker: Running,
    pub port: u16,
}

pub async fn system(config: Settings) -> System {
    let (scheduler, endpoint) = local_scheduler().await;
    let worker = worker_in_process(&endpoint);
    let port = free_port();
    let state = state_for(&endpoint, config).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    System {
        _scheduler: scheduler,
        _worker: worker,
        port,
    }
}
