//! Every field the scheduler keeps is bounded, and so is what it keeps in all: raw gRPC against
//! the real binary, as a peer that needs no credentials would call it.

use std::collections::HashMap;
use std::time::Duration;

use durabletask::proto as pb;
use test_support::net::free_port;
use tonic::metadata::AsciiMetadataValue;

type Raw = pb::TaskHubSidecarServiceClient<tonic::transport::Channel>;

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("taskhub", AsciiMetadataValue::from_static("default"));
    r
}

async fn raw(port: u16) -> Raw {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    pb::TaskHubSidecarServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A scheduler process with `env`; its gRPC and admin ports.
async fn scheduler(env: &[(&str, String)]) -> (tokio::process::Child, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let mut all = vec![
        ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port}")),
        (
            "LOCAL_SCHEDULER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        ),
    ];
    all.extend(env.iter().cloned());
    let child = test_support::process::spawn("local-scheduler", &all, port).await;
    (child, port, admin)
}

fn start(id: &str) -> pb::CreateInstanceRequest {
    pb::CreateInstanceRequest {
        instance_id: id.into(),
        name: "o".into(),
        ..Default::default()
    }
}

fn trace(parent: usize, state: usize) -> Option<pb::TraceContext> {
    #[allow(deprecated)]
    Some(pb::TraceContext {
        trace_parent: "0".repeat(parent),
        span_id: String::new(),
        trace_state: (state > 0).then(|| "k".repeat(state)),
    })
}

fn tags(n: usize, key: usize, value: usize) -> HashMap<String, String> {
    (0..n)
        .map(|i| {
            (
                format!("{i:0>width$}", width = key.max(3)),
                "v".repeat(value),
            )
        })
        .collect()
}

fn expect_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, field: &str, limit: &str) {
    let e = r.expect_err(field);
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
    assert!(
        e.message().contains(field) && e.message().contains(limit),
        "the refusal names '{field}' and '{limit}': {}",
        e.message()
    );
}

/// Each field over its limit is refused with `INVALID_ARGUMENT` naming it and its limit, and the
/// same field at its limit is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_oversized_field_is_refused_by_name() {
    let (_s, port, _) = scheduler(&[("LOCAL_SCHEDULER__STORE", "memory".into())]).await;
    let mut c = raw(port).await;
    let cases: Vec<(pb::CreateInstanceRequest, &str, &str)> = vec![
        (
            pb::CreateInstanceRequest {
                name: "n".repeat(257),
                ..start("a")
            },
            "orchestration name",
            "256",
        ),
        (
            pb::CreateInstanceRequest {
                name: String::new(),
                ..start("a")
            },
            "orchestration name",
            "empty",
        ),
        (
            pb::CreateInstanceRequest {
                version: Some("v".repeat(101)),
                ..start("a")
            },
            "orchestration version",
            "100",
        ),
        (
            pb::CreateInstanceRequest {
                execution_id: Some("e".repeat(101)),
                ..start("a")
            },
            "execution id",
            "100",
        ),
        (
            pb::CreateInstanceRequest {
                tags: tags(65, 3, 1),
                ..start("a")
            },
            "tags",
            "64",
        ),
        (
            pb::CreateInstanceRequest {
                tags: tags(1, 257, 1),
                ..start("a")
            },
            "tag key",
            "256",
        ),
        (
            pb::CreateInstanceRequest {
                tags: tags(1, 3, 4097),
                ..start("a")
            },
            "value of tag",
            "4096",
        ),
        (
            pb::CreateInstanceRequest {
                tags: tags(5, 3, 4000),
                ..start("a")
            },
            "bytes of tags",
            "16384",
        ),
        (
            pb::CreateInstanceRequest {
                parent_trace_context: trace(129, 0),
                ..start("a")
            },
            "traceparent",
            "128",
        ),
        (
            pb::CreateInstanceRequest {
                parent_trace_context: trace(55, 513),
                ..start("a")
            },
            "tracestate",
            "512",
        ),
    ];
    for (r, field, limit) in cases {
        expect_refused(c.start_instance(req(r)).await, field, limit);
    }
    // At the limits: accepted.
    c.start_instance(req(pb::CreateInstanceRequest {
        name: "n".repeat(256),
        version: Some("v".repeat(100)),
        tags: tags(4, 256, 3800),
        parent_trace_context: trace(128, 512),
        ..start("at-the-limits")
    }))
    .await
    .expect("every field at its limit");
    expect_refused(
        c.raise_event(req(pb::RaiseEventRequest {
            instance_id: "at-the-limits".into(),
            name: "e".repeat(257),
            input: None,
        }))
        .await,
        "event name",
        "256",
    );
    expect_refused(
        c.suspend_instance(req(pb::SuspendRequest {
            instance_id: "at-the-limits".into(),
            reason: Some("r".repeat((1 << 20) + 1)),
        }))
        .await,
        "suspend reason",
        "1 MB",
    );

    // What a worker sends back: an episode's actions and status, an activity's failure.
    let mut stream = c
        .get_work_items(req(pb::GetWorkItemsRequest {
            max_concurrent_orchestration_work_items: 1,
            max_concurrent_activity_work_items: 1,
            ..Default::default()
        }))
        .await
        .expect("stream")
        .into_inner();
    let token = loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an item")
            .expect("ok")
            .expect("open");
        if let Some(pb::work_item::Request::OrchestratorRequest(_)) = item.request {
            break item.completion_token;
        }
    };
    let respond = |actions: Vec<pb::OrchestratorAction>, custom: Option<String>| {
        req(pb::OrchestratorResponse {
            instance_id: "at-the-limits".into(),
            actions,
            custom_status: custom,
            completion_token: token.clone(),
            ..Default::default()
        })
    };
    let task = |name: String, t: HashMap<String, String>| pb::OrchestratorAction {
        id: 0,
        orchestrator_action_type: Some(
            pb::orchestrator_action::OrchestratorActionType::ScheduleTask(pb::ScheduleTaskAction {
                name,
                tags: t,
                ..Default::default()
            }),
        ),
    };
    expect_refused(
        c.complete_orchestrator_task(respond(vec![], Some("s".repeat((1 << 20) + 1))))
            .await,
        "custom status",
        "1 MB",
    );
    expect_refused(
        c.complete_orchestrator_task(respond(vec![task("a".repeat(257), HashMap::new())], None))
            .await,
        "activity name",
        "256",
    );
    expect_refused(
        c.complete_orchestrator_task(respond(vec![task("a".into(), tags(65, 3, 1))], None))
            .await,
        "activity tags",
        "64",
    );
    // Refused completions leave the lease: the same token still completes.
    c.complete_orchestrator_task(respond(vec![task("a".into(), HashMap::new())], None))
        .await
        .expect("a valid completion with the same token");
    let activity = loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an item")
            .expect("ok")
            .expect("open");
        if let Some(pb::work_item::Request::ActivityRequest(r)) = item.request {
            break (r, item.completion_token);
        }
    };
    let fail = |f: pb::TaskFailureDetails| {
        req(pb::ActivityResponse {
            instance_id: "at-the-limits".into(),
            task_id: activity.0.task_id,
            result: None,
            failure_details: Some(f),
            completion_token: activity.1.clone(),
        })
    };
    expect_refused(
        c.complete_activity_task(fail(pb::TaskFailureDetails {
            error_type: "E".into(),
            error_message: "m".repeat(65 * 1024),
            ..Default::default()
        }))
        .await,
        "activity failure details",
        "65536",
    );
    let mut deep = pb::TaskFailureDetails::default();
    for _ in 0..20 {
        deep = pb::TaskFailureDetails {
            error_type: "E".into(),
            inner_failure: Some(Box::new(deep)),
            ..Default::default()
        };
    }
    expect_refused(
        c.complete_activity_task(fail(deep)).await,
        "activity failure details",
        "16",
    );
}

/// A query's answer is bounded as it is built: rows of 1 MB come a few per page with a
/// continuation token, however many the caller asks for, and every row is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_answer_is_bounded_before_it_is_built() {
    let (_s, port, _) = scheduler(&[("LOCAL_SCHEDULER__STORE", "memory".into())]).await;
    let mut c = raw(port).await;
    for i in 0..12 {
        c.start_instance(req(pb::CreateInstanceRequest {
            input: Some("x".repeat(1 << 20)),
            ..start(&format!("big-{i:02}"))
        }))
        .await
        .expect("start");
    }
    let mut token = None;
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = c
            .query_instances(req(pb::QueryInstancesRequest {
                query: Some(pb::InstanceQuery {
                    max_instance_count: 100_000,
                    fetch_inputs_and_outputs: true,
                    continuation_token: token,
                    ..Default::default()
                }),
            }))
            .await
            .expect("query")
            .into_inner();
        let size = prost::Message::encoded_len(&page);
        assert!(size <= 6 << 20, "a page of {size} bytes");
        seen += page.orchestration_state.len();
        pages += 1;
        token = page.continuation_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, 12);
    assert!(pages >= 3, "12 MB came in {pages} pages");
}

/// The worst start the scheduler accepts (every field at its limit: a 1 MB input, 16 KiB of
/// tags, the longest name, version and trace context), sent 1,000 times: past the state limit
/// the rest is refused with `RESOURCE_EXHAUSTED` (which callers retry), and the process stays
/// inside the chart's memory limit (256 MiB), before and after a restart on the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worst_accepted_start_1000_times_and_a_restart_stay_inside_the_memory_limit() {
    const LIMIT_MIB: f64 = 256.0;
    let dir = std::env::temp_dir().join(format!("bounds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let env = [
        ("LOCAL_SCHEDULER__STORE", "sqlite".to_string()),
        (
            "LOCAL_SCHEDULER__SQLITE_PATH",
            dir.join("state.db").display().to_string(),
        ),
    ];
    let (s, port, admin) = scheduler(&env).await;
    let pid = s.id().expect("pid");
    let mut c = raw(port).await;
    let worst = |i: usize| pb::CreateInstanceRequest {
        name: format!("{i:06}").repeat(43)[..256].to_string(),
        version: Some("v".repeat(100)),
        input: Some("x".repeat(1 << 20)),
        tags: tags(4, 256, 3800),
        parent_trace_context: trace(128, 512),
        ..start(&format!("worst-{i:04}"))
    };
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..1000 {
        match c.start_instance(req(worst(i))).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("max_state_bytes"), "{}", e.message());
                refused += 1;
            }
        }
    }
    let (peak, _) = test_support::process::rss_mib(pid);
    let metrics = test_support::http::request(admin, "GET", "/metrics", &[], "")
        .await
        .2;
    let state = test_support::exposition::value(&metrics, "dts_local_state_bytes");
    eprintln!(
        "worst start x1000: {accepted} accepted, {refused} refused; state {:.1} MiB; peak RSS {peak:.1} MiB",
        state / 1048576.0
    );
    assert!(accepted > 0 && refused > 0, "{accepted} / {refused}");
    assert!(peak < LIMIT_MIB, "peak RSS {peak:.1} MiB");
    drop(c);
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (s, port, _) = scheduler(&env).await;
    let pid = s.id().expect("pid");
    let mut c = raw(port).await;
    let kept = c
        .get_instance(req(pb::GetInstanceRequest {
            instance_id: "worst-0000".into(),
            get_inputs_and_outputs: true,
        }))
        .await
        .expect("get")
        .into_inner();
    assert!(kept.exists, "the accepted starts survive the restart");
    let (peak, _) = test_support::process::rss_mib(pid);
    eprintln!("after a restart on that file: peak RSS {peak:.1} MiB");
    assert!(peak < LIMIT_MIB, "peak RSS after the restart {peak:.1} MiB");
    // Still full: a start is refused with the reason.
    let e = c.start_instance(req(worst(1000))).await.expect_err("full");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the peer closed `s` within `within` (what it sends first, its HTTP/2 settings, is
/// read and dropped).
async fn closed(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// The gRPC port's connections are capped and must send the HTTP/2 preface in time: idle sockets
/// past the cap are closed at once, those under it once the handshake deadline passes, and real
/// clients are served again as soon as they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_meet_the_cap_and_the_handshake_deadline() {
    let (_s, port, admin) = scheduler(&[
        ("LOCAL_SCHEDULER__STORE", "memory".into()),
        ("LOCAL_SCHEDULER__MAX_CONNECTIONS", "20".into()),
        ("LOCAL_SCHEDULER__HANDSHAKE_TIMEOUT_SECONDS", "2".into()),
    ])
    .await;
    let mut idle = Vec::new();
    for _ in 0..25 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = std::time::Instant::now();
    for s in &mut idle[20..] {
        assert!(
            closed(s, Duration::from_secs(1)).await,
            "past the cap: closed at once"
        );
    }
    for s in &mut idle[..20] {
        assert!(
            closed(s, Duration::from_secs(5)).await,
            "closed at the handshake deadline"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "the idle connections were held {took:?}"
    );
    let mut c = raw(port).await;
    c.hello(req(())).await.expect("a real client is served");
    let m = test_support::http::request(admin, "GET", "/metrics", &[], "")
        .await
        .2;
    let v = |s: &str| test_support::exposition::value(&m, s);
    assert_eq!(
        v("dts_local_grpc_connections_refused_total{reason=\"max_connections\"}"),
        5.0
    );
    assert_eq!(
        v("dts_local_grpc_connections_refused_total{reason=\"handshake_timeout\"}"),
        20.0
    );
    assert_eq!(v("dts_local_grpc_connections"), 1.0);
}
