//! Interop against an independent server: the official Python SDK's in-memory DTS backend
//! (PyPI `durabletask`, `durabletask.testing`), and the reverse with an official Python worker.
//!
//! Needs the project virtualenv (`make venv`, done by `make test` and `.ci/run`); the path can be
//! overridden with `DURABLETASK_PYTHON`. Without it these tests fail: they never skip.

use durabletask::{Client, Connection, ConnectionOptions, OrchestrationStatus};
use serde_json::{Value, json};
use test_support::python::{script, spawn_python};
use test_support::scenarios::{self, run_to_end, start_worker};
use tokio::process::Child;

struct PyServer {
    _child: Child,
    address: String,
}

async fn python_server() -> PyServer {
    let port = test_support::net::free_port();
    let child = spawn_python(&[
        script("in_memory_backend.py").display().to_string(),
        port.to_string(),
    ])
    .await;
    PyServer {
        _child: child,
        address: format!("localhost:{port}"),
    }
}

async fn connection(server: &PyServer) -> Connection {
    let opts =
        ConnectionOptions::new(&format!("http://{}", server.address), "default").expect("options");
    Connection::connect(opts).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_and_worker_against_python_server() {
    let server = python_server().await;
    let conn = connection(&server).await;
    let client = Client::new(&conn);
    client
        .hello(std::time::Duration::from_secs(10))
        .await
        .expect("hello");
    let worker = start_worker(&conn);
    scenarios::core(&client).await;
    scenarios::rewind(&client).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_event_terminate_suspend_and_purge_against_python_server() {
    let server = python_server().await;
    let conn = connection(&server).await;
    let client = Client::new(&conn);
    let worker = start_worker(&conn);
    scenarios::lifecycle(&client).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_query_against_python_server() {
    let server = python_server().await;
    let conn = connection(&server).await;
    let client = Client::new(&conn);
    let worker = start_worker(&conn);
    scenarios::paged_query(&client, "paged-").await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_versions_purge_by_time_and_filters_against_python_server() {
    let server = python_server().await;
    let conn = connection(&server).await;
    let client = Client::new(&conn);
    let worker = start_worker(&conn);
    scenarios::more(&client).await;
    worker.shutdown().await;
    scenarios::work_item_filters(&conn, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_runs_what_the_rust_client_starts() {
    let server = python_server().await;
    let _py_worker = spawn_python(&[
        script("py_worker.py").display().to_string(),
        server.address.clone(),
        "default".into(),
    ])
    .await;
    let conn = connection(&server).await;
    let client = Client::new(&conn);

    let m = run_to_end(&client, "py_greeting_sequence", json!(["Ada", "Grace"])).await;
    assert_eq!(m.runtime_status, OrchestrationStatus::Completed, "{m:?}");
    assert_eq!(
        m.output::<Value>().expect("json"),
        json!(["Hello Ada from Python", "Hello Grace from Python"])
    );

    // The original sample's orchestration, as our gateway will start it.
    let m = run_to_end(
        &client,
        "async_http_api_orchestrator",
        json!({"operation_id": "op-1", "processing_time": 0}),
    )
    .await;
    assert_eq!(m.runtime_status, OrchestrationStatus::Completed, "{m:?}");
    let out: Value = m.output().expect("json");
    assert_eq!(out["operation_id"], "op-1");
    assert_eq!(out["status"], "completed");
}
