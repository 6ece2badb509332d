//! The worker binary against the local scheduler binary: real processes on loopback.

use test_support::exposition;
use test_support::net::{free_port, wait_port};

use std::process::Stdio;
use std::time::Duration;

use durabletask::{Client, Connection, ConnectionOptions, OrchestrationStatus, StartOptions};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

async fn scheduler() -> (Child, u16) {
    let port = free_port();
    let child = Command::new(test_support::process::binary("local-scheduler"))
        .env("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "LOCAL_SCHEDULER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("LOCAL_SCHEDULER__STORE", "memory")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn scheduler");
    wait_port(port).await;
    (child, port)
}

struct WorkerProc {
    child: Child,
    admin: u16,
}

async fn worker(port: u16, name: &str) -> WorkerProc {
    let admin = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("TASKHUB", "default")
        .env("HOSTNAME", name)
        .env("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("WORKER__DRAIN_TIMEOUT_SECONDS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker");
    wait_port(admin).await;
    WorkerProc { child, admin }
}

async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

async fn client(port: u16) -> Client {
    let conn = Connection::connect(
        ConnectionOptions::new(&format!("http://127.0.0.1:{port}"), "default").expect("opts"),
    )
    .await
    .expect("connect");
    Client::new(&conn)
}

async fn wait_ready(w: &WorkerProc) {
    for _ in 0..200 {
        if http_get(w.admin, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("worker never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_request_and_the_sample_pair_complete() {
    let (_s, port) = scheduler().await;
    let w = worker(port, "worker-a").await;
    wait_ready(&w).await;
    assert!(
        http_get(w.admin, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let c = client(port).await;

    let id = c
        .schedule_new_orchestration(
            "process_request",
            &json!({"name": "Ada", "delay_seconds": 1}),
            StartOptions::default(),
        )
        .await
        .expect("start");
    let m = c
        .wait_for_instance_completion(&id, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(m.runtime_status, OrchestrationStatus::Completed, "{m:?}");
    let out: Value = m.output().expect("json");
    assert_eq!(out["name"], "Ada");
    assert_eq!(out["processing_time_seconds"], 1);
    assert_eq!(out["worker"], "worker-a");
    assert!(
        out["message"]
            .as_str()
            .is_some_and(|s| s.contains("Hello Ada")),
        "{out}"
    );
    assert_eq!(
        m.custom_status::<Value>().expect("json"),
        json!({"stage": "done"})
    );

    let id = c
        .schedule_new_orchestration(
            "async_http_api_orchestrator",
            &json!({"operation_id": "op-7", "processing_time": 0}),
            StartOptions::default(),
        )
        .await
        .expect("start");
    let m = c
        .wait_for_instance_completion(&id, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    let out: Value = m.output().expect("json");
    assert_eq!(out["operation_id"], "op-7");
    assert_eq!(out["status"], "completed");
    assert_eq!(out["result"], "Operation op-7 completed successfully");
    assert!(out["processed_at"].as_f64().is_some_and(|t| t > 1.7e9));

    // Bad input fails the operation with a clear, non-retriable error instead of hanging.
    let id = c
        .schedule_new_orchestration(
            "process_request",
            &json!({"name": 5}),
            StartOptions::default(),
        )
        .await
        .expect("start");
    let m = c
        .wait_for_instance_completion(&id, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(m.runtime_status, OrchestrationStatus::Failed);
    assert_eq!(
        m.failure_details.expect("failure").error_type,
        "InputDeserializationError"
    );

    // What the worker counted for all of that.
    let text = http_get(w.admin, "/metrics").await;
    let value = |series: &str| exposition::value(&text, series);
    let act = "simulate_long_running_activity";
    assert_eq!(
        value(&format!(
            r#"worker_work_items_received_total{{kind="activity",name="{act}"}}"#
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            r#"worker_work_items_finished_total{{kind="activity",name="{act}",outcome="completed"}}"#
        )),
        1.0
    );
    assert_eq!(
        value(
            r#"worker_work_items_finished_total{kind="activity",name="process_long_running_operation",outcome="completed"}"#
        ),
        1.0
    );
    // Two episodes of the good run; the bad input fails in its first.
    assert_eq!(
        value(
            r#"worker_work_items_finished_total{kind="orchestration",name="process_request",outcome="completed"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            r#"worker_work_items_finished_total{kind="orchestration",name="process_request",outcome="failed"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            r#"worker_operation_duration_seconds_count{name="process_request",status="completed"}"#
        ),
        1.0
    );
    assert_eq!(
        value(r#"worker_operation_duration_seconds_count{name="process_request",status="failed"}"#),
        1.0
    );
    assert!(
        value(
            r#"worker_operation_duration_seconds_sum{name="process_request",status="completed"}"#
        ) >= 1.0
    );
    assert!(
        value(&format!(
            r#"worker_work_item_duration_seconds_sum{{kind="activity",name="{act}"}}"#
        )) >= 1.0
    );
    assert_eq!(
        value(r#"worker_work_items_in_flight{kind="activity"}"#),
        0.0
    );
    assert_eq!(
        value(r#"worker_work_items_in_flight{kind="orchestration"}"#),
        0.0
    );
    assert_eq!(value("worker_stream_connected"), 1.0);
    assert_eq!(value("worker_stream_connects_total"), 1.0);
    assert_eq!(value("worker_stream_reconnects_total"), 0.0);
    assert!(text.contains("worker_build_info{version="), "{text}");
    assert!(value("process_open_fds") > 0.0);
    assert!(!text.contains("op-7"), "no ids in labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_activity_loses_nothing() {
    let (_s, port) = scheduler().await;
    let mut a = worker(port, "worker-a").await;
    wait_ready(&a).await;
    let c = client(port).await;
    let id = c
        .schedule_new_orchestration(
            "process_request",
            &json!({"name": "Grace", "delay_seconds": 3}),
            StartOptions::default(),
        )
        .await
        .expect("start");
    // Wait until the activity is running on worker A (the orchestration reported its stage).
    for _ in 0..200 {
        let m = c
            .get_instance(&id, true)
            .await
            .expect("get")
            .expect("exists");
        if m.serialized_custom_status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pid = a.child.id().expect("pid").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), a.child.wait())
        .await
        .expect("drains in time")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let mid = c
        .get_instance(&id, false)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        mid.runtime_status,
        OrchestrationStatus::Running,
        "the operation is still open, not failed"
    );

    let _b = worker(port, "worker-b").await;
    let m = c
        .wait_for_instance_completion(&id, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(m.runtime_status, OrchestrationStatus::Completed, "{m:?}");
    assert_eq!(
        m.output::<Value>().expect("json")["worker"],
        "worker-b",
        "the abandoned activity ran again on B"
    );
}

#[tokio::test]
async fn bad_configuration_names_the_key() {
    for (key, value, needle) in [
        (
            "WORKER__MAX_CONCURRENT_ACTIVITIES",
            "0",
            "max_concurrent_activities",
        ),
        ("WORKER__ADMIN_LISTEN", "nowhere", "admin_listen"),
        (
            "DURABLE_TASK_SCHEDULER_CONNECTION_STRING",
            "Endpoint=http://x;TaskHub=h",
            "Authentication",
        ),
        ("ENDPOINT", "ftp://x", "endpoint"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_worker"))
            .env(key, value)
            .output()
            .await
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(stderr.contains(needle), "{key}={value}: {stderr}");
    }
}
