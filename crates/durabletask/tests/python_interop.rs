//! Interop against an independent server: the official Python SDK's in-memory DTS backend
//! (PyPI `durabletask`, `durabletask.testing`), and the reverse with an official Python worker.
//!
//! Needs the project virtualenv (`make venv`, done by `make test` and `.ci/run`); the path can be
//! overridden with `DURABLETASK_PYTHON`. Without it these tests fail: they never skip.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use durabletask::{
    ActivityContext, Client, Connection, ConnectionOptions, FailureDetails, InstanceQuery,
    OrchestrationContext, OrchestrationStatus, Registry, RetryPolicy, StartOptions, Worker,
    WorkerOptions,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const DONE: Duration = Duration::from_secs(30);

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("DURABLETASK_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "the Python interop tests need the project virtualenv at {}: run `make venv` (or set DURABLETASK_PYTHON)",
        venv.display()
    );
    venv
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts a Python helper and waits for its READY line. Killed when dropped.
async fn spawn_python(args: &[String]) -> Child {
    let mut child = Command::new(python())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "READY" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        ready.ok(),
        Some(true),
        "python helper {args:?} did not become ready"
    );
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

struct PyServer {
    _child: Child,
    address: String,
}

async fn python_server() -> PyServer {
    let port = free_port();
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

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_activity("greet", |_c: ActivityContext, name: String| async move {
        Ok(format!("Hello {name}"))
    });
    r.add_activity(
        "square",
        |_c: ActivityContext, n: i64| async move { Ok(n * n) },
    );
    r.add_activity("flaky_once", |c: ActivityContext, _: ()| async move {
        // Fails on the first schedule (task id 0), succeeds on the retry.
        if c.task_id() == 0 {
            return Err::<String, _>(FailureDetails::new("Transient", "first attempt fails"));
        }
        Ok("recovered".to_string())
    });
    r.add_orchestrator(
        "sequence",
        |ctx: OrchestrationContext, names: Vec<String>| async move {
            let mut out = Vec::new();
            for n in names {
                out.push(ctx.call_activity::<_, String>("greet", &n).await?);
            }
            Ok(out)
        },
    );
    r.add_orchestrator("fan_out", |ctx: OrchestrationContext, n: i64| async move {
        let tasks: Vec<_> = (1..=n)
            .map(|i| ctx.call_activity::<_, i64>("square", &i))
            .collect();
        let mut sum = 0;
        for r in ctx.when_all(tasks).await {
            sum += r?;
        }
        Ok(sum)
    });
    r.add_orchestrator("timer", |ctx: OrchestrationContext, _: ()| async move {
        let before = ctx.current_utc_datetime();
        ctx.create_timer_after(Duration::from_secs(1)).await;
        Ok((ctx.current_utc_datetime() - before).num_milliseconds() >= 1000)
    });
    r.add_orchestrator("approval", |ctx: OrchestrationContext, _: ()| async move {
        ctx.set_custom_status("waiting for approval");
        let v: Value = ctx.wait_for_external_event("Approval").await?;
        Ok(v)
    });
    r.add_orchestrator("parent", |ctx: OrchestrationContext, _: ()| async move {
        let child: Vec<String> = ctx
            .call_sub_orchestrator("sequence", &["x", "y"], None)
            .await?;
        Ok(json!({ "child": child }))
    });
    r.add_orchestrator("forever", |ctx: OrchestrationContext, _: ()| async move {
        ctx.wait_for_external_event::<()>("never").await?;
        Ok(())
    });
    r.add_orchestrator("retrying", |ctx: OrchestrationContext, _: ()| async move {
        let p = RetryPolicy::new(3, Duration::from_millis(200));
        Ok(ctx
            .call_activity_with_retry::<_, String>("flaky_once", &(), p)
            .await?)
    });
    r.add_orchestrator(
        "countdown",
        |ctx: OrchestrationContext, n: u32| async move {
            if n == 0 {
                return Ok("liftoff".to_string());
            }
            ctx.continue_as_new(&(n - 1), false);
            Ok(String::new())
        },
    );
    r
}

struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), durabletask::Error>>,
}

impl Running {
    async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

fn start_worker(conn: &Connection) -> Running {
    let worker = Worker::new(
        conn,
        registry(),
        WorkerOptions {
            max_reconnect_delay: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    Running { stop, handle }
}

async fn run_to_end(
    client: &Client,
    name: &str,
    input: Value,
) -> durabletask::OrchestrationMetadata {
    let id = client
        .schedule_new_orchestration(name, &input, StartOptions::default())
        .await
        .expect("start");
    client
        .wait_for_instance_completion(&id, true, DONE)
        .await
        .expect("wait")
        .expect("instance exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_and_worker_against_python_server() {
    let server = python_server().await;
    let conn = connection(&server).await;
    let client = Client::new(&conn);
    client.hello(Duration::from_secs(10)).await.expect("hello");
    let worker = start_worker(&conn);

    // Sequence of activities.
    let m = run_to_end(&client, "sequence", json!(["Tokyo", "Seattle", "London"])).await;
    assert_eq!(m.runtime_status, OrchestrationStatus::Completed, "{m:?}");
    assert_eq!(
        m.output::<Value>().expect("json"),
        json!(["Hello Tokyo", "Hello Seattle", "Hello London"])
    );

    // Fan-out / fan-in.
    let m = run_to_end(&client, "fan_out", json!(10)).await;
    assert_eq!(m.output::<i64>().expect("json"), 385);

    // Durable timer.
    let m = run_to_end(&client, "timer", json!(null)).await;
    assert!(m.output::<bool>().expect("json"), "{m:?}");

    // Sub-orchestration.
    let m = run_to_end(&client, "parent", json!(null)).await;
    assert_eq!(
        m.output::<Value>().expect("json"),
        json!({"child": ["Hello x", "Hello y"]})
    );

    // Retry policy: the first attempt fails, the retry succeeds.
    let m = run_to_end(&client, "retrying", json!(null)).await;
    assert_eq!(m.output::<String>().expect("json"), "recovered", "{m:?}");

    // Continue-as-new.
    let m = run_to_end(&client, "countdown", json!(3)).await;
    assert_eq!(m.output::<String>().expect("json"), "liftoff");

    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_event_terminate_suspend_and_purge_against_python_server() {
    let server = python_server().await;
    let conn = connection(&server).await;
    let client = Client::new(&conn);
    let worker = start_worker(&conn);

    // External event with custom status.
    let id = client
        .schedule_new_orchestration("approval", &(), StartOptions::default())
        .await
        .expect("start");
    let started = client
        .wait_for_instance_start(&id, false, DONE)
        .await
        .expect("wait start")
        .expect("exists");
    assert_ne!(started.runtime_status, OrchestrationStatus::Pending);
    // Wait until the first episode ran (custom status set), then suspend / resume / raise.
    let mut status = None;
    for _ in 0..200 {
        let m = client
            .get_instance(&id, true)
            .await
            .expect("get")
            .expect("exists");
        if m.serialized_custom_status.is_some() {
            status = m.custom_status::<String>().ok();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.as_deref(), Some("waiting for approval"));
    client.suspend(&id, Some("hold on")).await.expect("suspend");
    let mut suspended = false;
    for _ in 0..200 {
        let m = client
            .get_instance(&id, false)
            .await
            .expect("get")
            .expect("exists");
        if m.runtime_status == OrchestrationStatus::Suspended {
            suspended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(suspended, "instance never showed SUSPENDED");
    client.resume(&id, None).await.expect("resume");
    client
        .raise_event(&id, "approval", &json!({"approved": true}))
        .await
        .expect("raise");
    let m = client
        .wait_for_instance_completion(&id, true, DONE)
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(
        m.output::<Value>().expect("json"),
        json!({"approved": true})
    );

    // Purge a completed instance.
    let purged = client.purge_instance(&id, false).await.expect("purge");
    assert_eq!(purged.deleted_instance_count, 1);
    assert!(
        client
            .get_instance(&id, false)
            .await
            .expect("get")
            .is_none()
    );

    // Terminate a waiting instance.
    let id = client
        .schedule_new_orchestration("forever", &(), StartOptions::default())
        .await
        .expect("start");
    client
        .wait_for_instance_start(&id, false, DONE)
        .await
        .expect("wait start");
    client
        .terminate(&id, &"stopped by test", false)
        .await
        .expect("terminate");
    let m = client
        .wait_for_instance_completion(&id, true, DONE)
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(m.runtime_status, OrchestrationStatus::Terminated);

    // Starting an id that is still running is refused.
    let id = client
        .schedule_new_orchestration("forever", &(), StartOptions::default())
        .await
        .expect("start");
    let dup = client
        .schedule_new_orchestration(
            "forever",
            &(),
            StartOptions {
                instance_id: Some(id.clone()),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(dup, Err(durabletask::Error::AlreadyExists(_))),
        "{dup:?}"
    );
    client.terminate(&id, &(), false).await.expect("terminate");

    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_query_against_python_server() {
    let server = python_server().await;
    let conn = connection(&server).await;
    let client = Client::new(&conn);
    let worker = start_worker(&conn);
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = client
            .schedule_new_orchestration(
                "sequence",
                &[format!("n{i}")],
                StartOptions {
                    instance_id: Some(format!("paged-{i}")),
                    ..Default::default()
                },
            )
            .await
            .expect("start");
        ids.push(id);
    }
    for id in &ids {
        client
            .wait_for_instance_completion(id, false, DONE)
            .await
            .expect("wait");
    }
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = client
            .query_instances(InstanceQuery {
                instance_id_prefix: Some("paged-".into()),
                page_size: Some(2),
                continuation_token: token.clone(),
                runtime_status: vec![OrchestrationStatus::Completed],
                ..Default::default()
            })
            .await
            .expect("query");
        pages += 1;
        assert!(page.instances.len() <= 2);
        seen.extend(page.instances.into_iter().map(|m| m.instance_id));
        token = page.continuation_token;
        if token.is_none() || pages > 10 {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ids);
    assert!(
        pages >= 3,
        "5 results at 2 per page need at least 3 pages, got {pages}"
    );

    // Purge by filter removes them all.
    let r = client
        .purge_instances(
            durabletask::PurgeFilter {
                runtime_status: vec![OrchestrationStatus::Completed],
                ..Default::default()
            },
            false,
        )
        .await
        .expect("purge");
    assert_eq!(r.deleted_instance_count, 5);
    worker.shutdown().await;
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
