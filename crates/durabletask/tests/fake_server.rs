//! Client and worker against an in-process fake scheduler: headers, tokens, reconnects, drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use durabletask::auth::{AuthError, Token, TokenSource};
use durabletask::testing::HistoryBuilder;
use durabletask::{
    ActivityContext, Client, Connection, ConnectionOptions, Error, Registry, StartOptions, Worker,
    WorkerOptions,
};
use test_support::fake_scheduler::{Fake, activity_item, health_ping, serve};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct CountingTokens {
    issued: AtomicU32,
    lifetime: Duration,
}

#[async_trait]
impl TokenSource for CountingTokens {
    async fn token(&self) -> Result<Token, AuthError> {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Token {
            secret: format!("token-{n}"),
            expires_at: SystemTime::now() + self.lifetime,
        })
    }
}

struct FailingTokens;

#[async_trait]
impl TokenSource for FailingTokens {
    async fn token(&self) -> Result<Token, AuthError> {
        Err(AuthError {
            message: "no identity endpoint".into(),
        })
    }
}

async fn connect(fake: &Fake) -> Connection {
    let addr = serve(fake.clone()).await;
    let opts = ConnectionOptions::new(&format!("http://{addr}"), "hub-a").expect("options");
    Connection::connect(opts).await.expect("connect")
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_activity("echo", |_ctx: ActivityContext, s: String| async move {
        Ok(format!("echo:{s}"))
    });
    r.add_activity("slow", |ctx: ActivityContext, ms: u64| async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok("done".to_string()),
            _ = ctx.cancellation().cancelled() => Ok("cancelled".to_string()),
        }
    });
    r.add_orchestrator("orch", |ctx, name: String| async move {
        Ok(ctx.call_activity::<_, String>("echo", &name).await?)
    });
    r
}

fn fast_options() -> WorkerOptions {
    WorkerOptions {
        max_concurrent_orchestrations: 7,
        max_concurrent_activities: 9,
        max_reconnect_delay: Duration::from_millis(50),
        worker_id: Some("test-worker,1,abc".into()),
        ..Default::default()
    }
}

fn header(md: &tonic::metadata::MetadataMap, key: &str) -> Option<String> {
    md.get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test]
async fn client_calls_carry_task_hub_and_user_agent_but_no_token_without_credential() {
    let fake = Fake::default();
    let conn = connect(&fake).await;
    let client = Client::new(&conn);
    let id = client
        .schedule_new_orchestration("orch", &"x", StartOptions::default())
        .await
        .expect("start");
    assert_eq!(id.len(), 32, "random ids are 32 hex chars: {id}");
    let md = fake
        .calls_named("StartInstance")
        .pop()
        .expect("call recorded");
    assert_eq!(header(&md, "taskhub").as_deref(), Some("hub-a"));
    assert!(
        header(&md, "x-user-agent")
            .is_some_and(|ua| ua.starts_with("durabletask-rust/") && ua.contains("Client"))
    );
    assert!(md.get("authorization").is_none());
    assert!(md.get("workerid").is_none(), "clients do not send workerid");
}

#[tokio::test]
async fn start_options_reach_the_wire() {
    let fake = Fake::default();
    let client = Client::new(&connect(&fake).await);
    let mut tags = std::collections::HashMap::new();
    tags.insert("k".to_string(), "v".to_string());
    client
        .schedule_new_orchestration(
            "orch",
            &serde_json::json!({"a": 1}),
            StartOptions {
                instance_id: Some("fixed-id".into()),
                version: Some("2".into()),
                tags,
                parent_trace_context: Some(durabletask::TraceContext {
                    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    tracestate: None,
                }),
                replaceable_statuses: Some(vec![durabletask::OrchestrationStatus::Failed]),
                scheduled_start: None,
            },
        )
        .await
        .expect("start");
    let req = fake.0.starts.lock().unwrap().pop().expect("start recorded");
    assert_eq!(req.instance_id, "fixed-id");
    assert_eq!(req.version.as_deref(), Some("2"));
    assert_eq!(req.input.as_deref(), Some("{\"a\":1}"));
    assert_eq!(req.tags.get("k").map(String::as_str), Some("v"));
    assert!(
        req.parent_trace_context
            .expect("trace")
            .trace_parent
            .contains("0af7651916cd43dd")
    );
    assert_eq!(
        req.orchestration_id_reuse_policy
            .expect("policy")
            .replaceable_status,
        vec![3]
    );
}

#[tokio::test]
async fn bearer_token_is_sent_and_refreshed_in_the_background() {
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    let opts = ConnectionOptions::new(&format!("http://{addr}"), "hub").expect("options");
    let tokens = Arc::new(CountingTokens {
        issued: AtomicU32::new(0),
        // Expires 300 ms after the 1 s margin: the refresher must replace it after ~300 ms.
        lifetime: Duration::from_millis(1300),
    });
    let conn =
        Connection::connect_with_token_source(opts, Some(tokens.clone()), Duration::from_secs(1))
            .await
            .expect("connect");
    let client = Client::new(&conn);
    client.get_instance("a", false).await.expect("call");
    let first = header(&fake.calls_named("GetInstance")[0], "authorization");
    assert_eq!(first.as_deref(), Some("Bearer token-1"));
    assert!(
        fake.wait_until(WAIT, |_| tokens.issued.load(Ordering::SeqCst) >= 2)
            .await,
        "token was not refreshed before expiry"
    );
    client.get_instance("a", false).await.expect("call");
    let second = header(
        fake.calls_named("GetInstance").last().expect("call"),
        "authorization",
    );
    assert!(second.is_some_and(|h| h != "Bearer token-1" && h.starts_with("Bearer token-")));
    conn.close();
}

#[tokio::test]
async fn token_refresh_stops_when_the_last_user_is_dropped() {
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    let opts = ConnectionOptions::new(&format!("http://{addr}"), "hub").expect("options");
    let tokens = Arc::new(CountingTokens {
        issued: AtomicU32::new(0),
        // Always inside the margin: the refresher asks again every second while alive.
        lifetime: Duration::from_millis(100),
    });
    let conn =
        Connection::connect_with_token_source(opts, Some(tokens.clone()), Duration::from_secs(1))
            .await
            .expect("connect");
    let client = Client::new(&conn);
    drop(conn);
    // The client still uses the cache, so refreshing continues.
    assert!(
        fake.wait_until(WAIT, |_| tokens.issued.load(Ordering::SeqCst) >= 2)
            .await
    );
    drop(client);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after_drop = tokens.issued.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        tokens.issued.load(Ordering::SeqCst),
        after_drop,
        "refresher kept running after drop"
    );
}

#[tokio::test]
async fn broken_credential_fails_at_connect() {
    let opts = ConnectionOptions::new("http://127.0.0.1:9", "hub").expect("options");
    let err = Connection::connect_with_token_source(
        opts,
        Some(Arc::new(FailingTokens)),
        Duration::from_secs(300),
    )
    .await
    .err()
    .expect("must fail");
    assert!(matches!(err, Error::Auth(_)), "{err}");
    assert!(err.to_string().contains("durabletask.io"), "{err}");
}

#[tokio::test]
async fn grpc_errors_are_typed() {
    let fake = Fake::default();
    let client = Client::new(&connect(&fake).await);
    let cases = [
        (
            tonic::Status::not_found("Task hub not found: x"),
            "NotFound",
        ),
        (tonic::Status::already_exists("dup"), "AlreadyExists"),
        (
            tonic::Status::failed_precondition("running"),
            "FailedPrecondition",
        ),
        (tonic::Status::unavailable("down"), "Unavailable"),
        (tonic::Status::invalid_argument("bad"), "InvalidArgument"),
        (tonic::Status::permission_denied("role"), "Unauthorized"),
    ];
    for (status, want) in cases {
        let code = status.code();
        *fake.0.fail_with.lock().unwrap() = Some(status);
        let err = client
            .schedule_new_orchestration("o", &(), StartOptions::default())
            .await
            .expect_err("must fail");
        assert!(format!("{err:?}").starts_with(want), "{want}: {err:?}");
        assert_eq!(err.status().map(tonic::Status::code), Some(code));
    }
}

#[tokio::test]
async fn wait_for_completion_is_bounded_by_the_callers_deadline() {
    let fake = Fake::default();
    let client = Client::new(&connect(&fake).await);
    let started = std::time::Instant::now();
    let err = client
        .wait_for_instance_completion("x", true, Duration::from_millis(300))
        .await
        .expect_err("must time out");
    assert!(matches!(err, Error::DeadlineExceeded(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn worker_sends_limits_and_worker_id_and_echoes_completion_tokens() {
    let fake = Fake::default();
    let conn = connect(&fake).await;
    let worker = Worker::new(&conn, registry(), fast_options());
    let mut ready = worker.readiness();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    assert!(
        fake.wait_until(WAIT, |i| !i.streams.lock().unwrap().is_empty())
            .await
    );
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("ready in time")
        .expect("ready");

    let req = fake.0.stream_requests.lock().unwrap()[0].clone();
    assert_eq!(req.max_concurrent_orchestration_work_items, 7);
    assert_eq!(req.max_concurrent_activity_work_items, 9);
    assert_eq!(req.max_concurrent_entity_work_items, 0);
    let md = fake.calls_named("GetWorkItems").pop().expect("call");
    assert_eq!(
        header(&md, "workerid").as_deref(),
        Some("test-worker,1,abc")
    );
    assert_eq!(header(&md, "taskhub").as_deref(), Some("hub-a"));

    fake.push(activity_item("tok-1", "echo", Some("\"hi\"")))
        .await;
    assert!(
        fake.wait_until(WAIT, |i| !i.activity_completions.lock().unwrap().is_empty())
            .await
    );
    let done = fake.0.activity_completions.lock().unwrap()[0].clone();
    assert_eq!(done.completion_token, "tok-1");
    assert_eq!(done.result.as_deref(), Some("\"echo:hi\""));
    assert_eq!(done.instance_id, "inst");
    assert_eq!(done.task_id, 3);
    let md = fake
        .calls_named("CompleteActivityTask")
        .pop()
        .expect("call");
    assert_eq!(
        header(&md, "workerid").as_deref(),
        Some("test-worker,1,abc")
    );

    // An orchestration work item: replayed and completed with its token.
    let mut h = HistoryBuilder::new("inst-o");
    h.started("orch", Some("\"bob\""));
    fake.push(durabletask::proto::WorkItem {
        request: Some(durabletask::proto::work_item::Request::OrchestratorRequest(
            h.request(vec![], h.events()),
        )),
        completion_token: "tok-o".into(),
    })
    .await;
    assert!(
        fake.wait_until(WAIT, |i| !i
            .orchestrator_completions
            .lock()
            .unwrap()
            .is_empty())
            .await
    );
    let oc = fake.0.orchestrator_completions.lock().unwrap()[0].clone();
    assert_eq!(oc.completion_token, "tok-o");
    assert_eq!(oc.instance_id, "inst-o");
    assert_eq!(oc.actions.len(), 1);

    stop.cancel();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("stops")
        .expect("join")
        .expect("ok");
}

#[tokio::test]
async fn unknown_activity_and_orchestrator_fail_non_retriably() {
    let fake = Fake::default();
    let conn = connect(&fake).await;
    let worker = Worker::new(&conn, registry(), fast_options());
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    assert!(
        fake.wait_until(WAIT, |i| !i.streams.lock().unwrap().is_empty())
            .await
    );

    fake.push(activity_item("t1", "nope", None)).await;
    let mut h = HistoryBuilder::new("x");
    h.started("missing-orch", None);
    fake.push(durabletask::proto::WorkItem {
        request: Some(durabletask::proto::work_item::Request::OrchestratorRequest(
            h.request(vec![], h.events()),
        )),
        completion_token: "t2".into(),
    })
    .await;
    assert!(
        fake.wait_until(WAIT, |i| !i.activity_completions.lock().unwrap().is_empty()
            && !i.orchestrator_completions.lock().unwrap().is_empty())
            .await
    );
    let a = fake.0.activity_completions.lock().unwrap()[0].clone();
    let f = a.failure_details.expect("failure");
    assert_eq!(f.error_type, "ActivityTaskNotFound");
    assert!(f.is_non_retriable);
    let o = fake.0.orchestrator_completions.lock().unwrap()[0].clone();
    assert_eq!(o.actions[0].id, -1);
    let Some(
        durabletask::proto::orchestrator_action::OrchestratorActionType::CompleteOrchestration(c),
    ) = &o.actions[0].orchestrator_action_type
    else {
        panic!("expected completion")
    };
    assert_eq!(
        c.failure_details.as_ref().expect("failure").error_type,
        "OrchestratorTaskNotFound"
    );
    stop.cancel();
    run.await.expect("join").expect("ok");
}

#[tokio::test]
async fn worker_reconnects_after_the_stream_breaks_and_readiness_follows() {
    let fake = Fake::default();
    let conn = connect(&fake).await;
    let worker = Worker::new(&conn, registry(), fast_options());
    let mut ready = worker.readiness();
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("ready")
        .expect("ready");

    fake.break_stream(tonic::Status::unavailable("scheduler restarting"))
        .await;
    tokio::time::timeout(WAIT, ready.wait_for(|r| !*r))
        .await
        .expect("not ready")
        .expect("watch");
    assert!(
        fake.wait_until(WAIT, |_| fake.stream_count() >= 2).await,
        "no reconnect after error"
    );
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("ready again")
        .expect("ready");

    // A graceful close (OK) also leads to a reconnect.
    fake.close_streams();
    assert!(
        fake.wait_until(WAIT, |_| fake.stream_count() >= 3).await,
        "no reconnect after close"
    );
    assert!(
        fake.calls_named("Hello").len() >= 3,
        "each stream is preceded by Hello"
    );

    // Work still flows on the new stream.
    assert!(
        fake.wait_until(WAIT, |i| !i.streams.lock().unwrap().is_empty())
            .await
    );
    fake.push(activity_item("after", "echo", Some("\"x\"")))
        .await;
    assert!(
        fake.wait_until(WAIT, |i| !i.activity_completions.lock().unwrap().is_empty())
            .await
    );
    assert!(durabletask::WorkerStats::get(&stats.streams_opened) >= 3);
    stop.cancel();
    run.await.expect("join").expect("ok");
}

#[tokio::test]
async fn silence_longer_than_the_timeout_rebuilds_the_stream_and_pings_prevent_it() {
    let fake = Fake::default();
    let conn = connect(&fake).await;
    let opts = WorkerOptions {
        silent_disconnect_timeout: Duration::from_millis(1000),
        ..fast_options()
    };
    let worker = Worker::new(&conn, registry(), opts);
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    assert!(fake.wait_until(WAIT, |_| fake.stream_count() == 1).await);
    // Keep it alive with pings for ~1.5 s (longer than the timeout): no new stream.
    for _ in 0..15 {
        fake.push(health_ping()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.stream_count(), 1, "pings must keep the stream");
    assert!(durabletask::WorkerStats::get(&stats.health_pings) >= 10);
    // Now stay silent: the worker gives up on the stream and opens a new one.
    assert!(
        fake.wait_until(WAIT, |_| fake.stream_count() >= 2).await,
        "silent stream not rebuilt"
    );
    stop.cancel();
    run.await.expect("join").expect("ok");
}

#[tokio::test]
async fn shutdown_drains_in_flight_work_and_abandons_what_overruns() {
    let fake = Fake::default();
    let conn = connect(&fake).await;
    let opts = WorkerOptions {
        drain_timeout: Duration::from_millis(1500),
        ..fast_options()
    };
    let worker = Worker::new(&conn, registry(), opts);
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    assert!(
        fake.wait_until(WAIT, |i| !i.streams.lock().unwrap().is_empty())
            .await
    );

    fake.push(activity_item("quick", "slow", Some("200"))).await;
    fake.push(activity_item("long", "slow", Some("60000")))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    let started = std::time::Instant::now();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("drain ends")
        .expect("join")
        .expect("ok");
    assert!(started.elapsed() < Duration::from_secs(5));

    let completed: Vec<String> = fake
        .0
        .activity_completions
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.completion_token.clone())
        .collect();
    assert_eq!(
        completed,
        ["quick"],
        "the short activity finishes within the drain deadline"
    );
    assert_eq!(
        *fake.0.abandoned.lock().unwrap(),
        ["long"],
        "the overrunning one is abandoned, not completed"
    );
    assert_eq!(
        durabletask::WorkerStats::get(&stats.work_items_abandoned),
        1
    );
    // No new stream after shutdown began.
    assert_eq!(fake.stream_count(), 1);
}

/// Against a scheduler that has only `TaskHubSidecarService` (as Azure DTS's SDK endpoint may):
/// the stream stays open while the held activity runs, so the scheduler cannot hand it to another
/// worker; work that arrives meanwhile goes back at once; the stream closes when nothing is held.
#[tokio::test]
async fn a_draining_worker_keeps_its_stream_open_and_hands_back_new_work() {
    let fake = Fake::default();
    let conn = connect(&fake).await;
    let opts = WorkerOptions {
        drain_timeout: Duration::from_secs(30),
        ..fast_options()
    };
    let worker = Worker::new(&conn, registry(), opts);
    let stats = worker.stats();
    let ready = worker.readiness();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    assert!(
        fake.wait_until(WAIT, |i| !i.streams.lock().unwrap().is_empty())
            .await
    );
    let stream = fake.0.streams.lock().unwrap()[0].clone();

    fake.push(activity_item("held", "slow", Some("1500"))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!*ready.borrow(), "a draining worker is not ready for work");
    // Pushed to the draining worker: handed back, not run.
    fake.push(activity_item("late", "echo", Some("\"x\"")))
        .await;
    fake.push(health_ping()).await;
    assert!(
        fake.wait_until(WAIT, |i| i.abandoned.lock().unwrap().len() == 1)
            .await
    );
    assert_eq!(*fake.0.abandoned.lock().unwrap(), ["late"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stream.is_closed(),
        "the stream stays open while an item is held"
    );
    assert!(fake.0.activity_completions.lock().unwrap().is_empty());

    tokio::time::timeout(WAIT, run)
        .await
        .expect("drain ends")
        .expect("join")
        .expect("ok");
    let completed: Vec<String> = fake
        .0
        .activity_completions
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.completion_token.clone())
        .collect();
    assert_eq!(completed, ["held"], "the held activity completed, once");
    assert_eq!(
        fake.0.activity_completions.lock().unwrap()[0]
            .result
            .as_deref(),
        Some("\"done\""),
        "ran to its end, not cancelled"
    );
    assert!(
        fake.wait_until(WAIT, |_| stream.is_closed()).await,
        "the stream is closed once nothing is held"
    );
    assert_eq!(fake.stream_count(), 1, "no new stream while draining");
    assert_eq!(
        durabletask::WorkerStats::get(&stats.work_items_abandoned),
        1
    );
}

#[tokio::test]
async fn rejected_completion_is_reported_not_retried_forever() {
    let fake = Fake::default();
    let conn = connect(&fake).await;
    let worker = Worker::new(&conn, registry(), fast_options());
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    assert!(
        fake.wait_until(WAIT, |i| !i.streams.lock().unwrap().is_empty())
            .await
    );
    *fake.0.fail_completions_with.lock().unwrap() =
        Some(tonic::Status::not_found("stale completion token"));
    fake.push(activity_item("stale", "echo", Some("\"x\"")))
        .await;
    assert!(
        fake.wait_until(WAIT, |_| durabletask::WorkerStats::get(
            &stats.completion_errors
        ) == 1)
            .await
    );
    assert_eq!(
        fake.calls_named("CompleteActivityTask").len(),
        1,
        "NOT_FOUND is final"
    );
    stop.cancel();
    run.await.expect("join").expect("ok");
}

#[tokio::test]
async fn worker_keeps_retrying_while_the_scheduler_is_down() {
    // Nothing listens on this port at first.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let opts = ConnectionOptions::new(&format!("http://{addr}"), "hub").expect("options");
    let conn = Connection::connect(opts).await.expect("lazy connect");
    let worker = Worker::new(&conn, registry(), fast_options());
    let mut ready = worker.readiness();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*ready.borrow_and_update());

    // Bring the scheduler up on that address: the worker connects by itself.
    let fake = Fake::default();
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let f2 = fake.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(durabletask::proto::TaskHubSidecarServiceServer::new(f2))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("serve");
    });
    tokio::time::timeout(Duration::from_secs(20), ready.wait_for(|r| *r))
        .await
        .expect("connects")
        .expect("ready");
    stop.cancel();
    run.await.expect("join").expect("ok");
}
