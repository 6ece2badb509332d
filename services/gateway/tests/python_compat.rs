//! Either half of the original sample can be swapped for ours: the official Python SDK (PyPI) as
//! the worker behind our gateway, and as a client of our worker.

use test_support::python as pyenv;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sample_worker_runs_operations_started_through_our_gateway() {
    let (_sched, endpoint) = local_scheduler().await;
    let address = endpoint.trim_start_matches("http://").to_string();
    let _py =
        pyenv::spawn_python(&[pyenv::script("py_worker.py").display().to_string(), address]).await;
    let (_gw, port, _) = gateway(&endpoint, &[]).await;

    // The sample's own routes and field names.
    let (status, headers, accepted) = http(
        port,
        "POST",
        "/api/start-operation",
        Some(r#"{"processing_time": 1}"#),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["operation_id"].as_str().expect("operation_id");
    let status_url = accepted["status_url"].as_str().expect("status_url");
    assert_eq!(status_url, format!("/api/operations/{id}"));
    assert!(hdr(&headers, "retry-after").is_some());
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (status, _, v) = http(port, "GET", status_url, None).await;
        assert_eq!(status, 200, "{v}");
        if v["status"] == "Completed" {
            break v;
        }
        assert_ne!(v["status"], "Failed", "{v}");
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // What the Python activity returned, passed through untouched.
    assert_eq!(done["operation_id"], id);
    assert_eq!(done["result"]["operation_id"], id);
    assert_eq!(
        done["result"]["result"],
        format!("Operation {id} completed successfully")
    );
    assert!(done["result"]["processed_at"].is_f64(), "{done}");

    // Our own routes see the same operation.
    let (status, _, v) = http(port, "GET", &format!("/api/status/{id}"), None).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("Succeeded")),
        "{v}"
    );
    let (status, _, result) = http(port, "GET", &format!("/api/result/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(result, done["result"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_starts_process_request_and_our_worker_completes_it() {
    let (_sched, endpoint) = local_scheduler().await;
    let admin = free_port();
    let _worker = spawn(
        "worker",
        &[
            ("ENDPOINT", endpoint.clone()),
            ("HOSTNAME", "rust-worker".into()),
            ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        ],
        admin,
    )
    .await;
    let (_gw, port, _) = gateway(&endpoint, &[]).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/py_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(pyenv::python())
            .arg(&script)
            .args([endpoint.trim_start_matches("http://"), "Ada", "1"])
            .output(),
    )
    .await
    .expect("the Python client finished in time")
    .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(v["status"], "COMPLETED", "{v}");
    let output = &v["output"];
    assert_eq!(output["name"], "Ada");
    assert_eq!(output["processing_time_seconds"], 1);
    assert_eq!(output["worker"], "rust-worker");
    assert_eq!(
        output["message"],
        json!("Hello Ada! Your request took 1 seconds.")
    );

    // The gateway reports the Python-started operation like its own.
    let id = v["id"].as_str().expect("id");
    let (status, _, s) = http(port, "GET", &format!("/api/status/{id}"), None).await;
    assert_eq!(
        (status, s["status"].as_str()),
        (200, Some("Succeeded")),
        "{s}"
    );
    let (status, _, result) = http(port, "GET", &format!("/api/result/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(&result, output);
}
