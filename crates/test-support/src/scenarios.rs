//! Orchestration scenarios shared by every server we test against: the official Python SDK's
//! in-memory server (`tests/python_interop.rs`) and our local scheduler
//! (`services/local-scheduler/tests`). Each scenario asserts outputs and statuses.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test here

use std::time::Duration;

use durabletask::{
    ActivityContext, Client, Connection, FailureDetails, InstanceQuery, OrchestrationContext,
    OrchestrationStatus, Registry, RetryPolicy, StartOptions, Worker, WorkerOptions,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const DONE: Duration = Duration::from_secs(30);

/// Keys whose `fails_until_fixed` activity succeeds (set by the rewind scenario).
static FIXED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_activity(
        "fails_until_fixed",
        |_c: ActivityContext, key: String| async move {
            if FIXED.lock().unwrap().contains(&key) {
                Ok("fixed".to_string())
            } else {
                Err(FailureDetails::new("NotYet", "the dependency is down"))
            }
        },
    );
    r.add_orchestrator(
        "rewindable",
        |ctx: OrchestrationContext, key: String| async move {
            let first: String = ctx.call_activity("greet", &"before").await?;
            let second: String = ctx.call_activity("fails_until_fixed", &key).await?;
            Ok(vec![first, second])
        },
    );
    r.add_orchestrator(
        "rewindable_parent",
        |ctx: OrchestrationContext, key: String| async move {
            let child: Vec<String> = ctx.call_sub_orchestrator("rewindable", &key, None).await?;
            Ok(child)
        },
    );
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
        "report_version",
        |ctx: OrchestrationContext, _: ()| async move { Ok(ctx.version()) },
    );
    r.add_orchestrator(
        "parent_of_waiters",
        |ctx: OrchestrationContext, _: ()| async move {
            let me = ctx.instance_id();
            let children: Vec<_> = (0..2)
                .map(|i| {
                    ctx.call_sub_orchestrator::<_, ()>("forever", &(), Some(&format!("{me}-c{i}")))
                })
                .collect();
            for r in ctx.when_all(children).await {
                r?;
            }
            Ok(())
        },
    );
    r.add_orchestrator(
        "activity_timer_child",
        |ctx: OrchestrationContext, _: ()| async move {
            let greeting: String = ctx.call_activity("greet", &"Ada").await?;
            ctx.create_timer_after(Duration::from_millis(100)).await;
            let version: Option<String> = ctx
                .call_sub_orchestrator("report_version", &(), None)
                .await?;
            Ok(json!({ "greeting": greeting, "child_version": version }))
        },
    );
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

pub struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), durabletask::Error>>,
}

impl Running {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

pub fn start_worker(conn: &Connection) -> Running {
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

pub async fn run_to_end(
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

/// Sequence, fan-out/fan-in, timer, sub-orchestration, retry, continue-as-new.
pub async fn core(client: &Client) {
    // Sequence of activities.
    let m = run_to_end(client, "sequence", json!(["Tokyo", "Seattle", "London"])).await;
    assert_eq!(m.runtime_status, OrchestrationStatus::Completed, "{m:?}");
    assert_eq!(
        m.output::<Value>().expect("json"),
        json!(["Hello Tokyo", "Hello Seattle", "Hello London"])
    );

    // Fan-out / fan-in.
    let m = run_to_end(client, "fan_out", json!(10)).await;
    assert_eq!(m.output::<i64>().expect("json"), 385);

    // Durable timer.
    let m = run_to_end(client, "timer", json!(null)).await;
    assert!(m.output::<bool>().expect("json"), "{m:?}");

    // Sub-orchestration.
    let m = run_to_end(client, "parent", json!(null)).await;
    assert_eq!(
        m.output::<Value>().expect("json"),
        json!({"child": ["Hello x", "Hello y"]})
    );

    // Retry policy: the first attempt fails, the retry succeeds.
    let m = run_to_end(client, "retrying", json!(null)).await;
    assert_eq!(m.output::<String>().expect("json"), "recovered", "{m:?}");

    // Continue-as-new.
    let m = run_to_end(client, "countdown", json!(3)).await;
    assert_eq!(m.output::<String>().expect("json"), "liftoff");
}

/// External event, custom status, suspend/resume, purge, terminate, duplicate-id refusal.
pub async fn lifecycle(client: &Client) {
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
}

/// Paged query over 5 instances (prefix `<prefix>`), then purge by filter.
pub async fn paged_query(client: &Client, prefix: &str) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = client
            .schedule_new_orchestration(
                "sequence",
                &[format!("n{i}")],
                StartOptions {
                    instance_id: Some(format!("{prefix}{i}")),
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
                instance_id_prefix: Some(prefix.to_string()),
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

    // Purge by filter (completed instances: ours and any earlier scenario's) removes them all.
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
    assert!(
        r.deleted_instance_count >= 5,
        "deleted {}",
        r.deleted_instance_count
    );
    let left = client
        .query_instances(InstanceQuery {
            instance_id_prefix: Some(prefix.to_string()),
            ..Default::default()
        })
        .await
        .expect("query");
    assert!(left.instances.is_empty(), "purged instances are gone");
}

/// A failed instance is rewound after its cause is fixed and completes; the step that had
/// succeeded is not run again.
/// The history DTS keeps for an orchestration with an activity, a timer and a
/// sub-orchestration, one after the other: `OrchestratorStarted` once per episode, then that
/// episode's events, and no `OrchestratorCompleted` (12 events in this order).
pub async fn dts_history_shape(client: &Client) {
    let id = client
        .schedule_new_orchestration("activity_timer_child", &(), StartOptions::default())
        .await
        .unwrap();
    let done = client
        .wait_for_instance_completion(&id, true, DONE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.runtime_status, OrchestrationStatus::Completed);
    let history = client.get_history(&id).await.unwrap().unwrap();
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| durabletask::history::EventSummary::of(e).kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "OrchestratorStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "OrchestratorStarted",
            "TaskCompleted",
            "TimerCreated",
            "OrchestratorStarted",
            "TimerFired",
            "SubOrchestrationInstanceCreated",
            "OrchestratorStarted",
            "SubOrchestrationInstanceCompleted",
            "ExecutionCompleted",
        ],
        "{id}"
    );
}

/// A reuse policy that would replace a live instance but not a terminated one contradicts
/// itself: DTS refuses it with its reason and leaves the suspended instance as it was; a policy
/// that also replaces terminated instances replaces it.
pub async fn contradictory_reuse_policy(client: &Client, id: &str) {
    use OrchestrationStatus as S;
    let options = |replaceable: Option<Vec<S>>| StartOptions {
        instance_id: Some(id.to_string()),
        replaceable_statuses: replaceable,
        ..StartOptions::default()
    };
    client
        .schedule_new_orchestration("forever", &(), options(None))
        .await
        .unwrap();
    client
        .wait_for_instance_start(id, false, DONE)
        .await
        .unwrap();
    client.suspend(id, Some("hold")).await.unwrap();
    wait_for_status(client, id, S::Suspended).await;
    let before = client.get_instance(id, false).await.unwrap().unwrap();

    // The JavaScript SDK's dedupeStatuses Terminated, Running, Pending: every other status is
    // replaceable, Suspended among them.
    let contradictory = vec![
        S::Completed,
        S::Failed,
        S::Canceled,
        S::ContinuedAsNew,
        S::Suspended,
    ];
    let refused = client
        .schedule_new_orchestration("forever", &(), options(Some(contradictory)))
        .await;
    match refused {
        Err(durabletask::Error::InvalidArgument(status)) => assert_eq!(
            status.message(),
            "Invalid reusable statuses: cannot exclude 'Terminated' while also allowing reuse of running instances"
        ),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    let after = client.get_instance(id, false).await.unwrap().unwrap();
    assert_eq!(after.runtime_status, S::Suspended);
    assert_eq!(
        after.execution_id, before.execution_id,
        "the instance was replaced"
    );
    assert_eq!(after.created_at, before.created_at);

    client
        .schedule_new_orchestration(
            "forever",
            &(),
            options(Some(vec![S::Suspended, S::Terminated])),
        )
        .await
        .unwrap();
    let replaced = client.get_instance(id, false).await.unwrap().unwrap();
    assert_ne!(replaced.execution_id, before.execution_id, "not replaced");
    client.terminate(id, &(), false).await.unwrap();
    wait_for_status(client, id, S::Terminated).await;
}

pub async fn rewind(client: &Client) {
    let key = uuid::Uuid::new_v4().simple().to_string();
    let m = run_to_end(client, "rewindable", json!(key)).await;
    assert_eq!(m.runtime_status, OrchestrationStatus::Failed, "{m:?}");
    FIXED.lock().unwrap().push(key);
    client
        .rewind(&m.instance_id, Some("dependency is back"))
        .await
        .expect("rewind");
    let mut done = None;
    for _ in 0..300 {
        let s = client
            .get_instance(&m.instance_id, true)
            .await
            .expect("get")
            .expect("exists");
        if s.runtime_status == OrchestrationStatus::Completed {
            done = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = done.expect("the rewound instance completes");
    assert_eq!(
        done.output::<Value>().expect("json"),
        json!(["Hello before", "fixed"])
    );
    let again = client.rewind(&m.instance_id, None).await;
    assert!(
        matches!(again, Err(durabletask::Error::FailedPrecondition(_))),
        "{again:?}"
    );
}

/// A failed parent whose failed sub-orchestration was purged is rewound: the child is scheduled
/// again (as DTS does) and the parent completes with the child's new result.
pub async fn rewind_after_child_purged(client: &Client) {
    let key = uuid::Uuid::new_v4().simple().to_string();
    let parent = run_to_end(client, "rewindable_parent", json!(key)).await;
    assert_eq!(
        parent.runtime_status,
        OrchestrationStatus::Failed,
        "{parent:?}"
    );
    let child_id = format!("{}:0000", parent.instance_id);
    let child = client
        .get_instance(&child_id, false)
        .await
        .expect("get")
        .expect("the child exists");
    assert_eq!(child.runtime_status, OrchestrationStatus::Failed);
    let purged = client
        .purge_instance(&child_id, false)
        .await
        .expect("purge");
    assert_eq!(purged.deleted_instance_count, 1);
    FIXED.lock().unwrap().push(key);
    client
        .rewind(&parent.instance_id, Some("dependency is back"))
        .await
        .expect("rewind");
    let done = client
        .wait_for_instance_completion(&parent.instance_id, true, DONE)
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(
        done.runtime_status,
        OrchestrationStatus::Completed,
        "{done:?}"
    );
    assert_eq!(
        done.output::<Value>().expect("json"),
        json!(["Hello before", "fixed"])
    );
    let child = client
        .get_instance(&child_id, false)
        .await
        .expect("get")
        .expect("the child was scheduled again");
    assert_eq!(child.runtime_status, OrchestrationStatus::Completed);
}

async fn wait_for_status(client: &Client, id: &str, want: OrchestrationStatus) {
    for _ in 0..400 {
        if let Some(m) = client.get_instance(id, false).await.expect("get")
            && m.runtime_status == want
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never reached {want:?}");
}

/// Activity failure, restart (same and new id), versions, purge by creation time.
/// Returns the id of the instance started with version "2.0".
pub async fn more(client: &Client) -> String {
    // An activity failure fails the orchestration with the activity's message.
    let key = uuid::Uuid::new_v4().simple().to_string();
    let m = run_to_end(client, "rewindable", json!(key)).await;
    assert_eq!(m.runtime_status, OrchestrationStatus::Failed, "{m:?}");
    let failure = m.failure_details.expect("failure details");
    assert!(
        failure.message.contains("the dependency is down"),
        "{failure:?}"
    );

    // Restart with the same id and with a new one: both run the same input again.
    let m = run_to_end(client, "sequence", json!(["again"])).await;
    let same = client
        .restart(&m.instance_id, false)
        .await
        .expect("restart");
    assert_eq!(same, m.instance_id);
    wait_for_status(client, &same, OrchestrationStatus::Completed).await;
    let fresh = client
        .restart(&m.instance_id, true)
        .await
        .expect("restart new");
    assert_ne!(fresh, m.instance_id);
    let r = client
        .wait_for_instance_completion(&fresh, true, DONE)
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(r.output::<Value>().expect("json"), json!(["Hello again"]));

    // A versioned start: the orchestration sees its version, and so does the client.
    let id = client
        .schedule_new_orchestration(
            "report_version",
            &(),
            StartOptions {
                version: Some("2.0".into()),
                ..Default::default()
            },
        )
        .await
        .expect("start");
    let m = client
        .wait_for_instance_completion(&id, true, DONE)
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(
        m.output::<Option<String>>().expect("json").as_deref(),
        Some("2.0")
    );
    // The Python in-memory server leaves the version out of the instance state, so callers
    // check `version` on the returned id where the server keeps it.
    let versioned = id.clone();

    // Purge by creation time: only the instance created inside the window goes.
    let before = run_to_end(client, "sequence", json!(["early"])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let from = chrono::Utc::now();
    let inside = run_to_end(client, "sequence", json!(["late"])).await;
    let to = chrono::Utc::now() + chrono::Duration::milliseconds(1);
    let r = client
        .purge_instances(
            durabletask::PurgeFilter {
                created_from: Some(from),
                created_to: Some(to),
                runtime_status: vec![OrchestrationStatus::Completed],
                ..Default::default()
            },
            false,
        )
        .await
        .expect("purge");
    assert_eq!(r.deleted_instance_count, 1);
    assert!(
        client
            .get_instance(&inside.instance_id, false)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        client
            .get_instance(&before.instance_id, false)
            .await
            .expect("get")
            .is_some()
    );
    versioned
}

/// Recursive terminate reaches the children (the Python in-memory server does not do this).
pub async fn recursive_terminate(client: &Client) {
    let id = client
        .schedule_new_orchestration("parent_of_waiters", &(), StartOptions::default())
        .await
        .expect("start");
    let children = [format!("{id}-c0"), format!("{id}-c1")];
    for c in &children {
        wait_for_status(client, c, OrchestrationStatus::Running).await;
    }
    client
        .terminate(&id, &"stop all", true)
        .await
        .expect("terminate");
    wait_for_status(client, &id, OrchestrationStatus::Terminated).await;
    for c in &children {
        wait_for_status(client, c, OrchestrationStatus::Terminated).await;
    }
}

/// Two workers that each ask only for their own names (work-item filters) on one hub: every
/// orchestration and activity runs on the worker that registered it. Run it with no unfiltered
/// worker on the hub.
pub async fn work_item_filters(conn: &Connection, client: &Client) {
    let only = |tag: &'static str| {
        let mut r = Registry::new();
        r.add_activity(
            &format!("act_{tag}"),
            move |_c: ActivityContext, _: ()| async move { Ok(tag.to_string()) },
        );
        r.add_orchestrator(
            &format!("only_{tag}"),
            move |ctx: OrchestrationContext, _: ()| async move {
                Ok(ctx
                    .call_activity::<_, String>(&format!("act_{tag}"), &())
                    .await?)
            },
        );
        let stop = CancellationToken::new();
        let worker = Worker::new(
            conn,
            r,
            WorkerOptions {
                use_work_item_filters: true,
                max_reconnect_delay: Duration::from_millis(200),
                drain_timeout: Duration::from_secs(2),
                ..Default::default()
            },
        );
        let handle = tokio::spawn(worker.run(stop.clone()));
        Running { stop, handle }
    };
    let (a, b) = (only("a"), only("b"));
    for _ in 0..3 {
        for tag in ["a", "b"] {
            let m = run_to_end(client, &format!("only_{tag}"), json!(null)).await;
            assert_eq!(m.runtime_status, OrchestrationStatus::Completed, "{m:?}");
            assert_eq!(m.output::<String>().expect("json"), tag);
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}
