//! The local scheduler as a real process, driven by our Rust SDK and by raw gRPC calls.

use test_support::net::free_port;
use test_support::python as pyenv;
use test_support::{exposition, scenarios};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use durabletask::proto as pb;
use durabletask::{
    Client, Connection, ConnectionOptions, EntityContext, EntityId, EntityQuery, FailureDetails,
    OrchestrationStatus, Registry, StartOptions, Worker, WorkerOptions,
};
use tokio::process::{Child, Command};
use tonic::metadata::AsciiMetadataValue;

/// A running `local-scheduler` process, killed when dropped.
struct Scheduler {
    child: Child,
    port: u16,
    admin_port: u16,
}

#[derive(Clone)]
enum Store<'a> {
    Memory,
    Sqlite(&'a Path),
}

impl Scheduler {
    async fn start(store: Store<'_>, env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), store, env).await
    }

    async fn start_on(port: u16, store: Store<'_>, env: &[(&str, &str)]) -> Self {
        let admin_port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_local-scheduler"));
        cmd.env("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "LOCAL_SCHEDULER__ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        match store {
            Store::Memory => {
                cmd.env("LOCAL_SCHEDULER__STORE", "memory");
            }
            Store::Sqlite(path) => {
                cmd.env("LOCAL_SCHEDULER__STORE", "sqlite")
                    .env("LOCAL_SCHEDULER__SQLITE_PATH", path);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start local-scheduler");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self {
                    child,
                    port,
                    admin_port,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("local-scheduler did not start listening on {port}");
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn connect(&self, hub: &str) -> Connection {
        Connection::connect(ConnectionOptions::new(&self.endpoint(), hub).expect("options"))
            .await
            .expect("connect")
    }

    async fn raw(&self) -> pb::TaskHubSidecarServiceClient<tonic::transport::Channel> {
        let ch = tonic::transport::Endpoint::from_shared(self.endpoint())
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        pb::TaskHubSidecarServiceClient::new(ch)
    }

    async fn metrics(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port))
            .await
            .expect("admin");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    fn kill(mut self) {
        let _ = self.child.start_kill();
    }
}

fn with_hub<T>(msg: T, hub: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("taskhub", AsciiMetadataValue::try_from(hub).expect("ascii"));
    r
}

/// A store file in a directory of its own, removed with it when the test ends (declared before
/// the scheduler that uses it, so it outlives it).
struct TempDb(PathBuf);

impl std::ops::Deref for TempDb {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn temp_db(name: &str) -> TempDb {
    let dir = std::env::temp_dir().join(format!(
        "local-scheduler-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDb(dir.join("store.db"))
}

// ------------------------------------------------------------- the SDK scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_scenarios_in_memory() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    client.hello(Duration::from_secs(5)).await.expect("hello");
    let worker = scenarios::start_worker(&conn);
    scenarios::core(&client).await;
    scenarios::dts_history_shape(&client).await;
    scenarios::contradictory_reuse_policy(&client, &format!("reuse-{}", uuid::Uuid::new_v4()))
        .await;
    scenarios::lifecycle(&client).await;
    scenarios::paged_query(&client, "mem-paged-").await;
    scenarios::rewind(&client).await;
    scenarios::rewind_after_child_purged(&client).await;
    let versioned = scenarios::more(&client).await;
    let m = client
        .get_instance(&versioned, false)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(m.version.as_deref(), Some("2.0"));
    scenarios::recursive_terminate(&client).await;
    worker.shutdown().await;
    scenarios::work_item_filters(&conn, &client).await;

    // What the scheduler counted for all of that.
    let text = s.metrics().await;
    let value = |series: &str| exposition::value(&text, series);
    for kind in ["orchestration", "activity"] {
        let dispatched = value(&format!(
            r#"dts_local_work_items_dispatched_total{{kind="{kind}"}}"#
        ));
        let timed = value(&format!(
            r#"dts_local_dispatch_latency_seconds_count{{kind="{kind}"}}"#
        ));
        assert!(dispatched >= 20.0, "{kind}: {dispatched}");
        assert_eq!(timed, dispatched, "every {kind} dispatch is timed");
        assert_eq!(
            value(&format!(r#"dts_local_backlog_work_items{{kind="{kind}"}}"#)),
            0.0
        );
    }
    assert!(value(r#"dts_local_instances{status="COMPLETED"}"#) >= 5.0);
    assert!(value(r#"dts_local_instances{status="TERMINATED"}"#) >= 1.0);
    assert!(
        text.contains("local_scheduler_build_info{version="),
        "{text}"
    );
    assert!(value("process_resident_memory_bytes") > 1e6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_scenarios_on_sqlite() {
    let db = temp_db("scenarios");
    let s = Scheduler::start(Store::Sqlite(&db), &[]).await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    let worker = scenarios::start_worker(&conn);
    scenarios::core(&client).await;
    scenarios::dts_history_shape(&client).await;
    scenarios::contradictory_reuse_policy(&client, &format!("reuse-{}", uuid::Uuid::new_v4()))
        .await;
    scenarios::lifecycle(&client).await;
    scenarios::paged_query(&client, "sql-paged-").await;
    scenarios::rewind(&client).await;
    scenarios::rewind_after_child_purged(&client).await;
    let versioned = scenarios::more(&client).await;
    let m = client
        .get_instance(&versioned, false)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(m.version.as_deref(), Some("2.0"));
    scenarios::recursive_terminate(&client).await;
    worker.shutdown().await;
    scenarios::work_item_filters(&conn, &client).await;
}

// ------------------------------------------------------------- protocol edges

#[tokio::test]
async fn unknown_task_hub_is_not_found_like_dts() {
    let s = Scheduler::start(Store::Memory, &[("DTS_TASK_HUB_NAMES", "alpha,beta")]).await;
    let mut raw = s.raw().await;
    let err = raw
        .hello(with_hub((), "default"))
        .await
        .expect_err("unknown hub");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "Task hub not found: default");
    raw.hello(with_hub((), "beta"))
        .await
        .expect("configured hub");
    let err = raw
        .hello(tonic::Request::new(()))
        .await
        .expect_err("no header");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("taskhub"), "{}", err.message());
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_with_a_reason() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let mut raw = s.raw().await;
    let start = |id: &str, input: Option<String>| pb::CreateInstanceRequest {
        instance_id: id.into(),
        name: "o".into(),
        input,
        ..Default::default()
    };
    for (req, needle) in [
        (start("", None), "1 to 100"),
        (start(&"x".repeat(101), None), "1 to 100"),
        (start("@entity", None), "reserved"),
        (start("tab\tid", None), "printable"),
        (start("ok", Some("x".repeat(1024 * 1024 + 1))), "1 MB"),
    ] {
        let err = raw
            .start_instance(with_hub(req, "default"))
            .await
            .expect_err("must be rejected");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains(needle),
            "{}: {}",
            needle,
            err.message()
        );
    }
    // Entities: a malformed id, a missing operation name.
    for (req, needle) in [
        (pb::SignalEntityRequest::default(), "entity id"),
        (
            pb::SignalEntityRequest {
                instance_id: "@counter@k".into(),
                ..Default::default()
            },
            "operation name",
        ),
    ] {
        let err = raw
            .signal_entity(with_hub(req, "default"))
            .await
            .expect_err("must be rejected");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains(needle),
            "{needle}: {}",
            err.message()
        );
    }
    let err = raw
        .get_entity(with_hub(
            pb::GetEntityRequest {
                instance_id: "not-an-entity".into(),
                include_state: true,
            },
            "default",
        ))
        .await
        .expect_err("must be rejected");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn stale_completion_token_is_rejected_and_changes_nothing() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let mut raw = s.raw().await;
    raw.start_instance(with_hub(
        pb::CreateInstanceRequest {
            instance_id: "stale-1".into(),
            name: "o".into(),
            ..Default::default()
        },
        "default",
    ))
    .await
    .expect("start");
    let mut stream = raw
        .get_work_items(with_hub(pb::GetWorkItemsRequest::default(), "default"))
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("msg").expect("item");
    assert!(matches!(
        first.request,
        Some(pb::work_item::Request::OrchestratorRequest(_))
    ));
    // Hand it back: it is delivered again with a new token.
    raw.abandon_task_orchestrator_work_item(with_hub(
        pb::AbandonOrchestrationTaskRequest {
            completion_token: first.completion_token.clone(),
        },
        "default",
    ))
    .await
    .expect("abandon");
    let second = stream.message().await.expect("msg").expect("item");
    assert_ne!(second.completion_token, first.completion_token);
    let Some(pb::work_item::Request::OrchestratorRequest(req)) = &second.request else {
        panic!("orchestration expected")
    };
    assert!(
        req.new_events.iter().any(|e| matches!(
            e.event_type,
            Some(pb::history_event::EventType::ExecutionStarted(_))
        )),
        "redelivery carries the same messages"
    );
    let complete = |token: String| pb::OrchestratorResponse {
        instance_id: "stale-1".into(),
        completion_token: token,
        actions: vec![pb::OrchestratorAction {
            id: 0,
            orchestrator_action_type: Some(
                pb::orchestrator_action::OrchestratorActionType::CompleteOrchestration(
                    pb::CompleteOrchestrationAction {
                        orchestration_status: pb::OrchestrationStatus::Completed as i32,
                        result: Some("\"done\"".into()),
                        ..Default::default()
                    },
                ),
            ),
        }],
        ..Default::default()
    };
    let err = raw
        .complete_orchestrator_task(with_hub(complete(first.completion_token), "default"))
        .await
        .expect_err("stale token");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let state = raw
        .get_instance(with_hub(
            pb::GetInstanceRequest {
                instance_id: "stale-1".into(),
                get_inputs_and_outputs: true,
            },
            "default",
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        state
            .orchestration_state
            .expect("state")
            .orchestration_status,
        pb::OrchestrationStatus::Pending as i32
    );
    raw.complete_orchestrator_task(with_hub(complete(second.completion_token), "default"))
        .await
        .expect("current token");
    let state = raw
        .get_instance(with_hub(
            pb::GetInstanceRequest {
                instance_id: "stale-1".into(),
                get_inputs_and_outputs: true,
            },
            "default",
        ))
        .await
        .expect("get")
        .into_inner()
        .orchestration_state
        .expect("state");
    assert_eq!(
        state.orchestration_status,
        pb::OrchestrationStatus::Completed as i32
    );
    assert_eq!(state.output.as_deref(), Some("\"done\""));
}

type Raw = pb::TaskHubSidecarServiceClient<tonic::transport::Channel>;

fn schedule_task(id: i32, name: &str, input: Option<String>) -> pb::OrchestratorAction {
    pb::OrchestratorAction {
        id,
        orchestrator_action_type: Some(
            pb::orchestrator_action::OrchestratorActionType::ScheduleTask(pb::ScheduleTaskAction {
                name: name.into(),
                input,
                ..Default::default()
            }),
        ),
    }
}

#[tokio::test]
#[allow(deprecated)]
async fn chunked_completion_is_applied_once_with_all_its_chunks() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let mut raw = s.raw().await;
    raw.start_instance(with_hub(
        pb::CreateInstanceRequest {
            instance_id: "chunked-1".into(),
            name: "o".into(),
            ..Default::default()
        },
        "default",
    ))
    .await
    .expect("start");
    let mut stream = raw
        .get_work_items(with_hub(pb::GetWorkItemsRequest::default(), "default"))
        .await
        .expect("stream")
        .into_inner();
    let item = stream.message().await.expect("msg").expect("item");
    let token = item.completion_token.clone();
    let chunk = |index: Option<i32>, partial: bool, actions: Vec<pb::OrchestratorAction>| {
        pb::OrchestratorResponse {
            instance_id: "chunked-1".into(),
            completion_token: token.clone(),
            actions,
            is_partial: partial,
            chunk_index: index,
            custom_status: (index == Some(0)).then(|| "\"stage-1\"".to_string()),
            ..Default::default()
        }
    };

    // An oversized payload is refused with a reason and the work item stays leased to us.
    let err = raw
        .complete_orchestrator_task(with_hub(
            chunk(
                Some(0),
                true,
                vec![schedule_task(0, "a", Some("x".repeat(1024 * 1024 + 1)))],
            ),
            "default",
        ))
        .await
        .expect_err("oversized input");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("activity input"),
        "{}",
        err.message()
    );

    raw.complete_orchestrator_task(with_hub(
        chunk(Some(0), true, vec![schedule_task(0, "a", None)]),
        "default",
    ))
    .await
    .expect("chunk 0");
    raw.complete_orchestrator_task(with_hub(
        chunk(Some(1), true, vec![schedule_task(1, "b", None)]),
        "default",
    ))
    .await
    .expect("chunk 1");
    let err = raw
        .complete_orchestrator_task(with_hub(
            chunk(Some(5), true, vec![schedule_task(9, "z", None)]),
            "default",
        ))
        .await
        .expect_err("out of order");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("expected chunk 2"),
        "{}",
        err.message()
    );

    // Nothing is applied before the last chunk.
    let state = |raw: &mut Raw| {
        let mut raw = raw.clone();
        async move {
            raw.get_instance(with_hub(
                pb::GetInstanceRequest {
                    instance_id: "chunked-1".into(),
                    get_inputs_and_outputs: true,
                },
                "default",
            ))
            .await
            .expect("get")
            .into_inner()
            .orchestration_state
            .expect("state")
        }
    };
    assert_eq!(
        state(&mut raw).await.orchestration_status,
        pb::OrchestrationStatus::Pending as i32
    );
    raw.complete_orchestrator_task(with_hub(
        chunk(Some(2), false, vec![schedule_task(2, "c", None)]),
        "default",
    ))
    .await
    .expect("last chunk");
    let st = state(&mut raw).await;
    assert_eq!(
        st.orchestration_status,
        pb::OrchestrationStatus::Running as i32
    );
    assert_eq!(st.custom_status.as_deref(), Some("\"stage-1\""));

    let mut scheduled = Vec::new();
    while scheduled.len() < 3 {
        let item = stream.message().await.expect("msg").expect("item");
        if let Some(pb::work_item::Request::ActivityRequest(a)) = item.request {
            scheduled.push((a.task_id, a.name));
        }
    }
    scheduled.sort();
    assert_eq!(
        scheduled,
        vec![
            (0, "a".to_string()),
            (1, "b".to_string()),
            (2, "c".to_string())
        ]
    );
    // The token is spent: a late chunk changes nothing.
    let err = raw
        .complete_orchestrator_task(with_hub(
            chunk(Some(3), true, vec![schedule_task(3, "d", None)]),
            "default",
        ))
        .await
        .expect_err("spent token");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// Callers cancel calls: a gateway's HTTP client hangs up, a poll times out. Each cancel is an
/// HTTP/2 stream reset, and under load many arrive before the server has taken their streams.
/// hyper's default answers more than 20 such resets with GOAWAY, which failed every other call
/// on the connection (seen in `make bench` when the load generator stopped); the scheduler
/// allows far more, so one caller's cancels do not fail its neighbours' calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_do_not_break_the_connection() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let call = |hub: &str| {
        http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://127.0.0.1:{}/TaskHubSidecarService/Hello",
                s.port
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("taskhub", hub)
            .body(())
            .expect("request")
    };
    // 200 calls, each reset as soon as it is sent, with no pause in between.
    for _ in 0..200 {
        let (response, mut stream) = client.send_request(call("default"), false).expect("send");
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
        client = client.ready().await.expect("connection still open");
    }
    // A normal call on the same connection still gets its answer.
    let (response, mut stream) = client.send_request(call("default"), false).expect("send");
    // An empty protobuf message: no compression flag, zero length.
    stream
        .send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("body");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer in time")
        .expect("the call is answered, not refused with GOAWAY");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.expect("body");
    }
    let trailers = body.trailers().await.expect("trailers").expect("some");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..]),
        "{trailers:?}"
    );
    driver.abort();
}

#[tokio::test]
async fn concurrency_limits_and_health_pings_are_honoured() {
    let s = Scheduler::start(
        Store::Memory,
        &[("LOCAL_SCHEDULER__HEALTH_PING_SECONDS", "1")],
    )
    .await;
    let mut raw = s.raw().await;
    for i in 0..5 {
        raw.start_instance(with_hub(
            pb::CreateInstanceRequest {
                instance_id: format!("lim-{i}"),
                name: "o".into(),
                ..Default::default()
            },
            "default",
        ))
        .await
        .expect("start");
    }
    let mut stream = raw
        .get_work_items(with_hub(
            pb::GetWorkItemsRequest {
                max_concurrent_orchestration_work_items: 2,
                max_concurrent_activity_work_items: 2,
                ..Default::default()
            },
            "default",
        ))
        .await
        .expect("stream")
        .into_inner();
    let mut orchestrations = 0;
    let mut pinged = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(2500), stream.message()).await {
            Ok(Ok(Some(item))) => match item.request {
                Some(pb::work_item::Request::OrchestratorRequest(_)) => orchestrations += 1,
                Some(pb::work_item::Request::HealthPing(_)) => {
                    pinged = true;
                    break;
                }
                _ => {}
            },
            _ => break,
        }
    }
    assert_eq!(
        orchestrations, 2,
        "only maxConcurrentOrchestrationWorkItems are in flight"
    );
    assert!(pinged, "an idle stream gets health pings");
}

/// The value of a counter on the scheduler's `/metrics`, 0 when absent.
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A lease lasts as long as the worker's stream, not a fixed time: with a 2 s lease, an activity
/// of 6 s completes once, and nothing is redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_longer_than_the_lease_completes_exactly_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = Scheduler::start(Store::Memory, &[("LOCAL_SCHEDULER__LEASE_SECONDS", "2")]).await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    let runs = Arc::new(AtomicUsize::new(0));
    let mut reg = durabletask::Registry::new();
    let counted = runs.clone();
    reg.add_activity(
        "long",
        move |_ctx: durabletask::ActivityContext, ms: u64| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok("done".to_string())
            }
        },
    );
    reg.add_orchestrator(
        "long_one",
        |ctx: durabletask::OrchestrationContext, ms: u64| async move {
            let out: String = ctx.call_activity("long", &ms).await?;
            Ok(out)
        },
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(
        durabletask::Worker::new(&conn, reg, durabletask::WorkerOptions::default())
            .run(stop.clone()),
    );
    let id = client
        .schedule_new_orchestration("long_one", &6000u64, StartOptions::default())
        .await
        .expect("start");
    let done = client
        .wait_for_instance_completion(&id, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(
        done.runtime_status,
        OrchestrationStatus::Completed,
        "{done:?}"
    );
    assert_eq!(done.output::<String>().expect("json"), "done");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the activity ran exactly once"
    );
    let metrics = s.metrics().await;
    assert_eq!(
        counter(&metrics, "dts_local_work_items_redelivered_total"),
        0,
        "nothing was redelivered:\n{metrics}"
    );
    stop.cancel();
    let _ = worker.await;
}

/// A worker that stops answering (SIGSTOP: its connection stays open, but nothing answers the
/// scheduler's HTTP/2 pings) loses its work items to another worker after about the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_answering_loses_its_work_to_another() {
    let s = Scheduler::start(Store::Memory, &[("LOCAL_SCHEDULER__LEASE_SECONDS", "2")]).await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    let mut a = spawn_worker_process(&s.endpoint(), "A");
    let id = client
        .schedule_new_orchestration("slow_fan", &30_000u64, StartOptions::default())
        .await
        .expect("start");
    // Worker A holds the three 30 s activities; then it freezes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while counter(
        &s.metrics().await,
        "dts_local_work_items_dispatched_total{kind=\"activity\"}",
    ) < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker A never took the activities"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = a.id().expect("pid").to_string();
    let stopped = Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .await
        .expect("kill -STOP");
    assert!(stopped.success());
    let _b = spawn_worker_process(&s.endpoint(), "B");
    // B's activities take 30 s too; the point is that B got them, well before A's would end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let redelivered = loop {
        let n = counter(&s.metrics().await, "dts_local_work_items_redelivered_total");
        if n >= 3 {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the frozen worker's activities were not redelivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        redelivered, 3,
        "exactly the frozen worker's three activities"
    );
    let m = client
        .get_instance(&id, false)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(m.runtime_status, OrchestrationStatus::Running);
    let _ = Command::new("kill").args(["-KILL", &pid]).status().await;
    let _ = a.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_load() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let conn_a = s.connect("default").await;
    let conn_b = s.connect("default").await;
    let client = Client::new(&conn_a);
    let reg = scenarios::registry;
    let wa = durabletask::Worker::new(
        &conn_a,
        reg(),
        durabletask::WorkerOptions {
            max_concurrent_activities: 2,
            ..Default::default()
        },
    );
    let wb = durabletask::Worker::new(
        &conn_b,
        reg(),
        durabletask::WorkerOptions {
            max_concurrent_activities: 2,
            ..Default::default()
        },
    );
    let (sa, sb) = (wa.stats(), wb.stats());
    let stop = tokio_util::sync::CancellationToken::new();
    let ha = tokio::spawn(wa.run(stop.clone()));
    let hb = tokio::spawn(wb.run(stop.clone()));
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            client
                .schedule_new_orchestration("fan_out", &6, StartOptions::default())
                .await
                .expect("start"),
        );
    }
    for id in &ids {
        let m = client
            .wait_for_instance_completion(id, true, Duration::from_secs(60))
            .await
            .expect("wait")
            .expect("exists");
        assert_eq!(m.output::<i64>().expect("json"), 91);
    }
    let a = durabletask::WorkerStats::get(&sa.activities_completed);
    let b = durabletask::WorkerStats::get(&sb.activities_completed);
    assert_eq!(a + b, 120);
    assert!(a > 0 && b > 0, "both workers did activities: {a} / {b}");
    stop.cancel();
    let _ = ha.await;
    let _ = hb.await;
}

// ------------------------------------------------------------- durability

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_loses_nothing_with_synchronous_normal() {
    sigkill_and_restart_loses_nothing("normal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_loses_nothing_with_synchronous_full() {
    sigkill_and_restart_loses_nothing("full").await;
}

/// SIGKILL while the writer commits group after group and the checkpoint thread copies the WAL
/// (every 8 pages here, so checkpoints run all through): every start that was answered survives.
async fn sigkill_and_restart_loses_nothing(synchronous: &str) {
    let db = temp_db(&format!("restart-{synchronous}"));
    let port = free_port();
    let env = [
        ("LOCAL_SCHEDULER__SQLITE_SYNCHRONOUS", synchronous),
        ("LOCAL_SCHEDULER__SQLITE_CHECKPOINT_FRAMES", "8"),
    ];
    let s = Scheduler::start_on(port, Store::Sqlite(&db), &env).await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    let worker = scenarios::start_worker(&conn);
    // 200 orchestrations, each waiting on a 2 s durable timer, plus one waiting for an event.
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = client
            .schedule_new_orchestration(
                "timer",
                &(),
                StartOptions {
                    instance_id: Some(format!("durable-{i}")),
                    ..Default::default()
                },
            )
            .await
            .expect("start");
        ids.push(id);
    }
    let waiting = client
        .schedule_new_orchestration("approval", &(), StartOptions::default())
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let metrics = s.metrics().await;
    let (transactions, operations, frames, checkpoints) = (
        counter(&metrics, "dts_local_store_transactions_total"),
        counter(&metrics, "dts_local_store_operations_total"),
        counter(&metrics, "dts_local_store_wal_frames_total"),
        counter(&metrics, "dts_local_store_checkpoints_total"),
    );
    assert!(
        transactions > 0 && operations >= 201 && frames >= transactions,
        "the writer's counts:\n{metrics}"
    );
    assert!(
        checkpoints > 0,
        "checkpoints ran before the kill:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dts_local_store_writer_checkpoint_seconds_total ")),
        "the writer's own checkpoint time is shown:\n{metrics}"
    );
    s.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Same file, same port: the worker reconnects by itself.
    let s = Scheduler::start_on(port, Store::Sqlite(&db), &env).await;
    client
        .raise_event(&waiting, "Approval", &"after restart")
        .await
        .expect("raise after restart");
    let mut completed = 0;
    for id in &ids {
        let m = client
            .wait_for_instance_completion(id, true, Duration::from_secs(60))
            .await
            .expect("wait")
            .expect("exists");
        assert_eq!(
            m.runtime_status,
            OrchestrationStatus::Completed,
            "{id}: {m:?}"
        );
        assert!(m.output::<bool>().expect("json"));
        completed += 1;
    }
    assert_eq!(completed, 200);
    let m = client
        .wait_for_instance_completion(&waiting, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(m.output::<String>().expect("json"), "after restart");
    // None twice: each instance completed exactly once (one ExecutionCompleted, status stable).
    let page = client
        .query_instances(durabletask::InstanceQuery {
            instance_id_prefix: Some("durable-".into()),
            page_size: Some(500),
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(page.instances.len(), 200);
    assert!(
        page.instances
            .iter()
            .all(|m| m.runtime_status == OrchestrationStatus::Completed)
    );
    worker.shutdown().await;
    drop(s);
}

// ------------------------------------------------------------- official Python SDK

async fn python_suite(s: &Scheduler) {
    let suite =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop_suite.py");
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(pyenv::python())
            .arg(suite)
            .arg(format!("localhost:{}", s.port))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("suite finished in time")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        out.status.success() && summary.ends_with(" passed, 0 failed"),
        "python suite failed ({summary}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: u32 = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 15, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_suite_in_memory() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    python_suite(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_suite_on_sqlite() {
    let db = temp_db("python");
    let s = Scheduler::start(Store::Sqlite(&db), &[]).await;
    python_suite(&s).await;
}

// ------------------------------------------------------------- durable entities

/// `tests/python/entities_suite.py` (the official Python SDK's entities, orchestrations that
/// signal and call them, queries, cleaning, filters, bad input) with `args` after the address;
/// its stdout.
async fn entities_suite(s: &Scheduler, args: &[&str]) -> String {
    let suite =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/entities_suite.py");
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(pyenv::python())
            .arg(suite)
            .arg(format!("localhost:{}", s.port))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("suite finished in time")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "entities suite {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn entities_all_pass(s: &Scheduler) {
    let stdout = entities_suite(s, &[]).await;
    let summary = stdout.lines().last().unwrap_or_default();
    assert_eq!(summary, "13 passed, 0 failed", "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_entities_in_memory() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    entities_all_pass(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_entities_on_sqlite() {
    let db = temp_db("entities");
    let s = Scheduler::start(Store::Sqlite(&db), &[]).await;
    entities_all_pass(&s).await;
}

/// The suite's account entity as a Rust type: deposit, withdraw (refused past the balance),
/// balance.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Balance(i64);

impl durabletask::EntityType for Balance {
    fn dispatch(
        &mut self,
        ctx: &mut EntityContext,
        input: serde_json::Value,
    ) -> Result<serde_json::Value, FailureDetails> {
        let amount = input.as_i64().unwrap_or(0);
        match ctx.operation() {
            "deposit" => self.0 += amount,
            "withdraw" if amount > self.0 => {
                return Err(FailureDetails::new("ValueError", "insufficient funds"));
            }
            "withdraw" => self.0 -= amount,
            _ => {}
        }
        Ok(serde_json::json!(self.0))
    }
}

/// The suite's counter and account entities, in Rust, with the same operations; the schedule
/// entity and the suite's `tick` orchestration.
fn rust_entities() -> Registry {
    let mut r = Registry::new();
    r.add_entity(
        "counter",
        |ctx: &mut EntityContext, input: serde_json::Value| {
            let value = ctx.state::<i64>()?.unwrap_or(0);
            match ctx.operation() {
                "add" => ctx.set_state(&(value + input.as_i64().unwrap_or(0)))?,
                "get" => return Ok(Some(value)),
                "fail" => {
                    ctx.set_state(&(value + 1000))?;
                    return Err(FailureDetails::new("ValueError", "this operation fails"));
                }
                "delete" => ctx.delete_state(),
                other => {
                    return Err(FailureDetails::new(
                        "UnknownOperation",
                        format!("no operation '{other}'"),
                    ));
                }
            }
            Ok(None)
        },
    );
    // Type-based: its value is the state (a plain number, as the Python suite reads it).
    r.add_entity_type::<Balance>("account");
    // Recurring schedules, and the suite's `tick`: one run counts itself on a counter.
    r.add_schedules();
    r.add_orchestrator(
        "tick",
        |ctx: durabletask::OrchestrationContext, key: String| async move {
            ctx.signal_entity(&EntityId::new("counter", &key), "add", &1, None);
            Ok(key)
        },
    );
    r
}

/// Adds a Rust orchestration that signals the counter entity `@counter@<key>` (add 7), then
/// calls it.
fn add_rust_calls_counter(r: &mut Registry) {
    r.add_orchestrator(
        "rust_calls_counter",
        |ctx: durabletask::OrchestrationContext, key: String| async move {
            let counter = EntityId::new("counter", &key);
            ctx.signal_entity(&counter, "add", &7, None);
            let value: i64 = ctx.call_entity(&counter, "get", &()).await?;
            Ok(value)
        },
    );
}

async fn run_rust_calls_counter(client: &Client, key: &str) -> i64 {
    let id = client
        .schedule_new_orchestration("rust_calls_counter", key, StartOptions::default())
        .await
        .expect("start");
    let m = client
        .wait_for_instance_completion(&id, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(m.runtime_status, OrchestrationStatus::Completed, "{m:?}");
    m.output::<i64>().expect("json")
}

/// Python clients drive Rust entities: the suite's client scenarios against a Rust worker; and a
/// Rust orchestration signals and calls them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_drive_rust_entities() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let conn = s.connect("default").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::new(
        &conn,
        rust_entities(),
        WorkerOptions {
            use_work_item_filters: true,
            ..Default::default()
        },
    );
    let handle = tokio::spawn(worker.run(stop.clone()));
    let stdout = entities_suite(&s, &["client-only"]).await;
    assert_eq!(
        stdout.lines().last().unwrap_or_default(),
        "7 passed, 0 failed",
        "{stdout}"
    );
    stop.cancel();
    let _ = handle.await;
    // Orchestration and entities in Rust, on one worker.
    let mut both = rust_entities();
    add_rust_calls_counter(&mut both);
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(Worker::new(&conn, both, WorkerOptions::default()).run(stop.clone()));
    let client = Client::new(&conn);
    assert_eq!(run_rust_calls_counter(&client, "from-rust").await, 7);
    stop.cancel();
    let _ = handle.await;
}

/// The Rust client drives Python entities: signal (now and later), get, query and clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_drives_python_entities() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let suite =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/entities_suite.py");
    let mut python = Command::new(pyenv::python())
        .arg(suite)
        .arg(format!("localhost:{}", s.port))
        .arg("worker")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python worker");
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    let key = format!("rust-{}", std::process::id());
    let counter = EntityId::new("counter", &key);
    assert!(
        client
            .get_entity(&counter, true)
            .await
            .expect("get")
            .is_none()
    );
    for n in [5, 3] {
        client
            .signal_entity(&counter, "add", &n, None)
            .await
            .expect("signal");
    }
    client
        .signal_entity(
            &counter,
            "add",
            &10,
            Some(chrono::Utc::now() + chrono::Duration::milliseconds(1500)),
        )
        .await
        .expect("delayed signal");
    let state = |want: i64| {
        let (client, counter) = (client.clone(), counter.clone());
        async move {
            for _ in 0..400 {
                let m = client.get_entity(&counter, true).await.expect("get");
                if let Some(m) = m
                    && m.state::<i64>().expect("json") == Some(want)
                {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{counter} never reached {want}");
        }
    };
    state(8).await;
    let m = state(18).await;
    assert_eq!(m.id, counter);
    assert!(m.last_modified.is_some());
    let page = client
        .query_entities(EntityQuery {
            instance_id_starts_with: Some(format!("@counter@{key}")),
            include_state: true,
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(page.entities.len(), 1);
    assert_eq!(page.entities[0].state::<i64>().expect("json"), Some(18));
    client
        .signal_entity(&counter, "delete", &(), None)
        .await
        .expect("signal");
    for _ in 0..400 {
        if client
            .get_entity(&counter, false)
            .await
            .expect("get")
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        client
            .get_entity(&counter, false)
            .await
            .expect("get")
            .is_none()
    );
    let cleaned = client
        .clean_entity_storage(true, true)
        .await
        .expect("clean");
    assert!(cleaned.empty_entities_removed >= 1, "{cleaned:?}");
    // A Rust orchestration signals and calls the Python entity (this worker takes only
    // orchestrations: its filters name no entity).
    let stop = tokio_util::sync::CancellationToken::new();
    let mut orchestrations = Registry::new();
    add_rust_calls_counter(&mut orchestrations);
    let orchestrations_only = Worker::new(
        &conn,
        orchestrations,
        WorkerOptions {
            use_work_item_filters: true,
            ..Default::default()
        },
    );
    let handle = tokio::spawn(orchestrations_only.run(stop.clone()));
    assert_eq!(
        run_rust_calls_counter(&client, &format!("{key}-orch")).await,
        7
    );
    stop.cancel();
    let _ = handle.await;
    drop(python.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), python.wait()).await;
}

/// A Rust critical section: while a Rust orchestration holds the counter's lock, a client's
/// signal waits; released, it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_critical_section_holds_the_entity_until_released() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let conn = s.connect("default").await;
    let mut r = rust_entities();
    r.add_orchestrator(
        "rust_locked",
        |ctx: durabletask::OrchestrationContext, key: String| async move {
            let counter = EntityId::new("counter", &key);
            let lock = ctx.lock_entities(std::slice::from_ref(&counter)).await?;
            ctx.set_custom_status(&"locked");
            ctx.wait_for_external_event::<()>("go").await?;
            let value: i64 = ctx.call_entity(&counter, "get", &()).await?;
            lock.release();
            Ok(value)
        },
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(Worker::new(&conn, r, WorkerOptions::default()).run(stop.clone()));
    let client = Client::new(&conn);
    let key = "locked-by-rust";
    let counter = EntityId::new("counter", key);
    let id = client
        .schedule_new_orchestration("rust_locked", key, StartOptions::default())
        .await
        .expect("start");
    for _ in 0..400 {
        let m = client
            .get_instance(&id, true)
            .await
            .expect("get")
            .expect("exists");
        if m.serialized_custom_status.as_deref() == Some("\"locked\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let locked = client
        .query_entities(EntityQuery {
            instance_id_starts_with: Some(counter.to_string()),
            include_transient: true,
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(
        locked.entities.first().and_then(|m| m.locked_by.clone()),
        Some(id.clone())
    );
    client
        .signal_entity(&counter, "add", &5, None)
        .await
        .expect("signal");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        client
            .get_entity(&counter, true)
            .await
            .expect("get")
            .is_none(),
        "an operation ran on a locked entity"
    );
    client.raise_event(&id, "go", &()).await.expect("go");
    let m = client
        .wait_for_instance_completion(&id, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(m.output::<i64>().expect("json"), 0, "{m:?}");
    let mut value = None;
    for _ in 0..400 {
        value = client
            .get_entity(&counter, true)
            .await
            .expect("get")
            .and_then(|m| m.state::<i64>().ok().flatten());
        if value == Some(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        value,
        Some(5),
        "the waiting signal did not run after the release"
    );
    stop.cancel();
    let _ = handle.await;
}

/// A SIGKILL while a worker runs entity batches and while an orchestration holds a lock: after
/// the restart every acknowledged signal is applied exactly once (a batch in flight is run
/// again, its stale completion refused) and the lock is still held, then released once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_entity_work_loses_no_signal_and_keeps_the_lock() {
    let db = temp_db("entities-work-kill");
    let port = free_port();
    let s = Scheduler::start_on(port, Store::Sqlite(&db), &[]).await;
    let conn = s.connect("default").await;
    let mut r = Registry::new();
    // Slow operations, so that batches are out with the worker when the scheduler dies.
    r.add_entity("slow", |ctx: &mut EntityContext, n: i64| {
        std::thread::sleep(Duration::from_millis(10));
        let value = ctx.state::<i64>()?.unwrap_or(0);
        ctx.set_state(&(value + n))?;
        Ok(())
    });
    r.add_orchestrator(
        "hold",
        |ctx: durabletask::OrchestrationContext, key: String| async move {
            let lock = ctx
                .lock_entities(&[EntityId::new("slow", &format!("{key}-locked"))])
                .await?;
            ctx.set_custom_status(&"locked");
            ctx.wait_for_external_event::<()>("go").await?;
            lock.release();
            Ok(())
        },
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(
        Worker::new(
            &conn,
            r,
            WorkerOptions {
                max_reconnect_delay: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .run(stop.clone()),
    );
    let client = Client::new(&conn);
    let key = "kill";
    let holder = client
        .schedule_new_orchestration("hold", key, StartOptions::default())
        .await
        .expect("start");
    for _ in 0..400 {
        let m = client
            .get_instance(&holder, true)
            .await
            .expect("get")
            .expect("exists");
        if m.serialized_custom_status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let entities: Vec<EntityId> = (0..4)
        .map(|i| EntityId::new("slow", &format!("{key}-{i}")))
        .collect();
    for _ in 0..50 {
        for e in &entities {
            client
                .signal_entity(e, "add", &1, None)
                .await
                .expect("signal");
        }
    }
    // Signals to the locked entity wait for the lock.
    let locked = EntityId::new("slow", &format!("{key}-locked"));
    client
        .signal_entity(&locked, "add", &1, None)
        .await
        .expect("signal");
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = Scheduler::start_on(port, Store::Sqlite(&db), &[]).await;
    let state = |e: EntityId| {
        let client = client.clone();
        async move {
            client
                .get_entity(&e, true)
                .await
                .ok()
                .flatten()
                .and_then(|m| m.state::<i64>().ok().flatten())
        }
    };
    for e in &entities {
        let mut value = None;
        for _ in 0..600 {
            value = state(e.clone()).await;
            if value == Some(50) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(value, Some(50), "{e}: a signal lost or applied twice");
    }
    // The lock survived the restart: its entity has run nothing yet.
    let held = client
        .query_entities(EntityQuery {
            instance_id_starts_with: Some(locked.to_string()),
            include_transient: true,
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(
        held.entities.first().and_then(|m| m.locked_by.clone()),
        Some(holder.clone())
    );
    assert_eq!(state(locked.clone()).await, None);
    client.raise_event(&holder, "go", &()).await.expect("go");
    client
        .wait_for_instance_completion(&holder, false, Duration::from_secs(30))
        .await
        .expect("wait");
    let mut value = None;
    for _ in 0..400 {
        value = state(locked.clone()).await;
        if value.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(value, Some(1), "released once, the waiting signal ran once");
    let cleaned = client
        .clean_entity_storage(false, true)
        .await
        .expect("clean");
    assert_eq!(
        cleaned.orphaned_locks_released, 0,
        "a lock left behind: {cleaned:?}"
    );
    stop.cancel();
    let _ = handle.await;
    drop(s);
}

/// Signals acknowledged before a SIGKILL are all applied after the restart, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_signals_survive_sigkill() {
    let db = temp_db("entities-kill");
    let port = free_port();
    let s = Scheduler::start_on(port, Store::Sqlite(&db), &[]).await;
    let run = format!("kill{}", std::process::id());
    entities_suite(&s, &["signal-only", &run]).await;
    s.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = Scheduler::start_on(port, Store::Sqlite(&db), &[]).await;
    let stdout = entities_suite(&s, &["check", &run]).await;
    assert!(stdout.contains("checked 20"), "{stdout}");
}

// ------------------------------------------------------------- worker crash

/// Not a test: the body of a worker process that `sigkilled_worker_loses_no_activity` starts by
/// re-running this test binary (`--ignored --exact`). Runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for the worker-process tests"]
async fn worker_process_entry() {
    let endpoint = std::env::var("LS_TEST_WORKER_ENDPOINT").expect("endpoint");
    let name = std::env::var("LS_TEST_WORKER_NAME").expect("name");
    let conn = Connection::connect(ConnectionOptions::new(&endpoint, "default").expect("options"))
        .await
        .expect("connect");
    let mut reg = durabletask::Registry::new();
    reg.add_activity(
        "slow_whoami",
        move |_ctx: durabletask::ActivityContext, ms: u64| {
            let name = name.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(name)
            }
        },
    );
    reg.add_orchestrator(
        "slow_fan",
        |ctx: durabletask::OrchestrationContext, ms: u64| async move {
            let tasks: Vec<_> = (0..3)
                .map(|_| ctx.call_activity::<_, String>("slow_whoami", &ms))
                .collect();
            let mut out = Vec::new();
            for r in ctx.when_all(tasks).await {
                out.push(r?);
            }
            Ok(out)
        },
    );
    let worker = durabletask::Worker::new(&conn, reg, durabletask::WorkerOptions::default());
    println!("READY");
    worker
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .expect("run");
}

fn spawn_worker_process(endpoint: &str, name: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "worker_process_entry",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("LS_TEST_WORKER_ENDPOINT", endpoint)
        .env("LS_TEST_WORKER_NAME", name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_loses_no_activity() {
    let s = Scheduler::start(Store::Memory, &[("LOCAL_SCHEDULER__LEASE_SECONDS", "3")]).await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    let mut a = spawn_worker_process(&s.endpoint(), "A");
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            client
                .schedule_new_orchestration("slow_fan", &1500u64, StartOptions::default())
                .await
                .expect("start"),
        );
    }
    // Wait until worker A holds activity work items, then SIGKILL it mid-activity.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = s.metrics().await;
        let dispatched = m
            .lines()
            .find(|l| l.starts_with("dts_local_work_items_dispatched_total{kind=\"activity\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if dispatched >= 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker A never took activities"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.start_kill().expect("SIGKILL worker A");
    let _ = a.wait().await;
    let _b = spawn_worker_process(&s.endpoint(), "B");
    let mut ran_on_b = 0;
    for id in &ids {
        let m = client
            .wait_for_instance_completion(id, true, Duration::from_secs(60))
            .await
            .expect("wait")
            .expect("exists");
        assert_eq!(m.runtime_status, OrchestrationStatus::Completed, "{m:?}");
        let who: Vec<String> = m.output().expect("json");
        assert_eq!(who.len(), 3);
        ran_on_b += who.iter().filter(|w| *w == "B").count();
    }
    assert!(
        ran_on_b >= 10,
        "activities held by the killed worker were redone on B ({ran_on_b})"
    );
    assert!(
        s.metrics()
            .await
            .contains("dts_local_work_items_redelivered_total")
    );
}

/// A full store (the file capped by `SQLITE_MAX_BYTES`, as a full disk would): the write fails,
/// the scheduler refuses the call, turns unready and exits non-zero. Restarted on the same file
/// without the cap, it finishes every operation it had acknowledged, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_stops_the_scheduler_and_a_restart_loses_nothing_acknowledged() {
    let db = temp_db("full");
    let port = free_port();
    let mut s = Scheduler::start_on(
        port,
        Store::Sqlite(&db),
        &[("LOCAL_SCHEDULER__SQLITE_MAX_BYTES", "98304")],
    )
    .await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    // Timer orchestrations (no worker yet), each with a 4 KB tag, until the file is full.
    let padding = "x".repeat(4096);
    let mut acknowledged = Vec::new();
    let refusal = loop {
        assert!(acknowledged.len() < 500, "the store never filled up");
        let id = format!("full-{}", acknowledged.len());
        match client
            .schedule_new_orchestration(
                "timer",
                &(),
                StartOptions {
                    instance_id: Some(id.clone()),
                    tags: [("padding".to_string(), padding.clone())].into(),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => acknowledged.push(id),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refusal, durabletask::Error::Unavailable(_)),
        "{refusal:?}"
    );
    assert!(!acknowledged.is_empty());
    // The process stops by itself, with a non-zero exit code naming the failure.
    let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
        .await
        .expect("the scheduler exits after a failed write")
        .expect("wait");
    assert!(!status.success(), "{status:?}");

    // Same file, no cap: everything acknowledged completes, exactly once.
    let s = Scheduler::start_on(port, Store::Sqlite(&db), &[]).await;
    let worker = scenarios::start_worker(&conn);
    for id in &acknowledged {
        let m = client
            .wait_for_instance_completion(id, true, Duration::from_secs(60))
            .await
            .expect("wait")
            .expect("an acknowledged start survives");
        assert_eq!(
            m.runtime_status,
            OrchestrationStatus::Completed,
            "{id}: {m:?}"
        );
        assert!(
            m.output::<bool>().expect("json"),
            "{id}: the timer fired on time"
        );
        let history = client
            .get_history(id)
            .await
            .expect("history")
            .expect("exists");
        let fired = history
            .iter()
            .filter(|e| {
                matches!(
                    e.event_type,
                    Some(pb::history_event::EventType::TimerFired(_))
                )
            })
            .count();
        assert_eq!(fired, 1, "{id}: the timer fired exactly once");
    }
    assert!(
        client
            .get_history("never-was")
            .await
            .expect("history")
            .is_none(),
        "no history for an unknown instance"
    );
    let page = client
        .query_instances(durabletask::InstanceQuery {
            instance_id_prefix: Some("full-".into()),
            page_size: Some(1000),
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(
        page.instances.len(),
        acknowledged.len(),
        "the refused start was never committed, so it is gone after the restart"
    );
    worker.shutdown().await;
    drop(s);
}

/// Bounded state: past `MAX_INSTANCES` a start is refused with `RESOURCE_EXHAUSTED`; finished
/// instances are purged after their retention, which makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_starts_and_retention_makes_room() {
    let s = Scheduler::start(
        Store::Memory,
        &[
            ("LOCAL_SCHEDULER__MAX_INSTANCES", "3"),
            ("LOCAL_SCHEDULER__RETENTION_COMPLETED_SECONDS", "1"),
        ],
    )
    .await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            client
                .schedule_new_orchestration("sequence", &["a"], StartOptions::default())
                .await
                .expect("start within the limit"),
        );
    }
    let refused = client
        .schedule_new_orchestration("sequence", &["a"], StartOptions::default())
        .await
        .expect_err("the fourth start is refused");
    let status = refused.status().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_instances"), "{status:?}");
    assert!(refused.is_transient(), "callers are told to retry");

    // They complete; a second after, retention purges them and a start fits again.
    let worker = scenarios::start_worker(&conn);
    for id in &ids {
        let m = client
            .wait_for_instance_completion(id, false, Duration::from_secs(30))
            .await
            .expect("wait")
            .expect("exists");
        assert_eq!(m.runtime_status, OrchestrationStatus::Completed);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let gone = futures_all_gone(&client, &ids).await;
        if gone {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "finished instances were not purged after their retention"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .schedule_new_orchestration("sequence", &["a"], StartOptions::default())
        .await
        .expect("room again after the purge");
    worker.shutdown().await;
}

async fn futures_all_gone(client: &Client, ids: &[String]) -> bool {
    for id in ids {
        if client.get_instance(id, false).await.expect("get").is_some() {
            return false;
        }
    }
    true
}

/// A long poll wakes only for its own instance: other instances running to completion, and the
/// scheduler idling with its timer task, wake it not once; its own instance's end does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_only_for_its_own_instance() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    let waiting = client
        .schedule_new_orchestration("approval", &(), StartOptions::default())
        .await
        .expect("start");
    let poll = tokio::spawn({
        let client = client.clone();
        let waiting = waiting.clone();
        async move {
            client
                .wait_for_instance_completion(&waiting, true, Duration::from_secs(60))
                .await
        }
    });
    let worker = scenarios::start_worker(&conn);
    // Let the waited-for instance reach its event wait (its own episode may wake the poll).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = client
            .get_instance(&waiting, true)
            .await
            .expect("get")
            .expect("exists");
        if m.custom_status::<String>().ok().as_deref() == Some("waiting for approval") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = counter(&s.metrics().await, "dts_local_long_poll_wakeups_total");
    // Twenty other operations, then two idle seconds (two timer-task ticks).
    for _ in 0..20 {
        run_to_end_quietly(&client).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_others = counter(&s.metrics().await, "dts_local_long_poll_wakeups_total");
    assert_eq!(
        after_others, before,
        "other instances' changes and idle ticks woke the long poll"
    );
    assert!(!poll.is_finished());
    client
        .raise_event(&waiting, "Approval", &"yes")
        .await
        .expect("raise");
    let done = poll.await.expect("task").expect("wait").expect("exists");
    assert_eq!(done.runtime_status, OrchestrationStatus::Completed);
    assert!(counter(&s.metrics().await, "dts_local_long_poll_wakeups_total") > before);
    worker.shutdown().await;
}

/// Runs one orchestration to its end, watching it with plain reads (a long poll of its own would
/// count in the wake-ups).
async fn run_to_end_quietly(client: &Client) {
    let id = client
        .schedule_new_orchestration("sequence", &["x"], StartOptions::default())
        .await
        .expect("start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = client
            .get_instance(&id, false)
            .await
            .expect("get")
            .expect("exists");
        if m.runtime_status == OrchestrationStatus::Completed {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------- configuration and shutdown

#[tokio::test]
async fn bad_configuration_names_the_key_and_exits_non_zero() {
    for (key, value, needle) in [
        ("LOCAL_SCHEDULER__STORE", "postgres", "`store`"),
        ("LOCAL_SCHEDULER__LISTEN", "not-an-address", "`listen`"),
        ("LOCAL_SCHEDULER__LEASE_SECONDS", "0", "`lease_seconds`"),
        ("LOCAL_SCHEDULER__LEASE_SECONDS", "soon", "lease_seconds"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_local-scheduler"))
            .env(key, value)
            .env(
                "LOCAL_SCHEDULER__STORE",
                if key.ends_with("STORE") {
                    value
                } else {
                    "memory"
                },
            )
            .output()
            .await
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{key}={value}: message should name {needle}: {stderr}"
        );
    }
}

/// The command line: a typo is refused before anything starts; `--help` and `--version` answer
/// and exit 0.
#[tokio::test]
async fn command_line_is_strict_and_answers_help() {
    let run = |args: &'static [&'static str]| async move {
        // Were the arguments ignored, this would start a server that never exits.
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            Command::new(env!("CARGO_BIN_EXE_local-scheduler"))
                .args(args)
                .env("LOCAL_SCHEDULER__STORE", "memory")
                .env("LOCAL_SCHEDULER__LISTEN", "127.0.0.1:0")
                .env("LOCAL_SCHEDULER__ADMIN_LISTEN", "127.0.0.1:0")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the process answers and exits instead of serving")
        .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, err) = run(&["--confg", "x.toml"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown argument '--confg'"), "{err}");
    let (code, _, err) = run(&["--config"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--config needs a file path"), "{err}");
    let (code, out, _) = run(&["--help"]).await;
    assert_eq!(code, Some(0));
    assert!(out.starts_with("usage: local-scheduler"), "{out}");
    assert!(out.contains("LOCAL_SCHEDULER__<KEY>"), "{out}");
    let (code, out, _) = run(&["--version"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        format!("local-scheduler {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_gracefully_and_the_process_exits() {
    let mut s = Scheduler::start(Store::Memory, &[]).await;
    let conn = s.connect("default").await;
    let worker = durabletask::Worker::new(
        &conn,
        scenarios::registry(),
        durabletask::WorkerOptions::default(),
    );
    let mut ready = worker.readiness();
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
        .await
        .expect("ready")
        .expect("watch");

    let pid = s.child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(exit.success(), "graceful exit, got {exit:?}");
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| !*r))
        .await
        .expect("stream ended")
        .expect("watch");
    stop.cancel();
    let _ = handle.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_start_waits_and_a_pending_instance_can_be_terminated() {
    let s = Scheduler::start(Store::Memory, &[]).await;
    let conn = s.connect("default").await;
    let client = Client::new(&conn);
    let worker = scenarios::start_worker(&conn);
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let later = client
        .schedule_new_orchestration(
            "sequence",
            &["later"],
            StartOptions {
                scheduled_start: Some(at),
                ..Default::default()
            },
        )
        .await
        .expect("start");
    let never = client
        .schedule_new_orchestration(
            "sequence",
            &["never"],
            StartOptions {
                scheduled_start: Some(at + chrono::Duration::hours(1)),
                ..Default::default()
            },
        )
        .await
        .expect("start");
    let m = client
        .get_instance(&later, false)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(m.runtime_status, OrchestrationStatus::Pending);
    assert_eq!(
        m.scheduled_start_at.map(|t| t.timestamp_millis()),
        Some(at.timestamp_millis())
    );

    client
        .terminate(&never, &"not needed", false)
        .await
        .expect("terminate");
    let t = client
        .get_instance(&never, true)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        t.runtime_status,
        OrchestrationStatus::Terminated,
        "a never-started instance ends at once"
    );
    assert_eq!(t.output::<String>().expect("json"), "not needed");

    let done = client
        .wait_for_instance_completion(&later, true, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(done.runtime_status, OrchestrationStatus::Completed);
    assert!(
        chrono::Utc::now() >= at,
        "ran no earlier than its scheduled start"
    );
    assert!(
        !s.metrics().await.contains("dts_local_pending_timers 1"),
        "the terminated instance's start was dropped"
    );
    worker.shutdown().await;
}
