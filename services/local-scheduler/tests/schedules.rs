//! Recurring schedules on the local scheduler: the Rust SDK's schedule client against the
//! official Python SDK's schedule entity, and the Rust SDK's own entity on SQLite, with the
//! changes it must refuse. (The other direction, the Python SDK's scheduled-task client against
//! a Rust worker, is the Python suite's `recurring_schedule` scenario in `scheduler.rs`.)

use std::time::Duration;

use durabletask::schedule::{SCHEDULE_OPERATION_ORCHESTRATOR, Schedules};
use durabletask::{
    Client, Connection, ConnectionOptions, EntityContext, EntityId, InstanceQuery,
    OrchestrationStatus, Registry, ScheduleCreationOptions, ScheduleError, ScheduleQuery,
    ScheduleStatus, ScheduleUpdateOptions, StartOptions, Worker, WorkerOptions,
};
use test_support::in_process::{Running, scheduler};
use test_support::python as pyenv;

async fn connect(s: &Running) -> Connection {
    Connection::connect(ConnectionOptions::new(&s.endpoint(), "default").expect("options"))
        .await
        .expect("connect")
}

fn key(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// The value of `@counter@<key>` once `ok` holds for it, within 30 s.
async fn counter_until(client: &Client, key: &str, ok: impl Fn(i64) -> bool) -> i64 {
    let id = EntityId::new("counter", key);
    let mut last = None;
    for _ in 0..300 {
        let m = client.get_entity(&id, true).await.expect("get entity");
        last = m.and_then(|m| m.state::<i64>().expect("a number"));
        if let Some(n) = last.filter(|n| ok(*n)) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("@counter@{key} stayed at {last:?}");
}

/// Asserts the counter does not move for 2.5 s (after a grace for a run already started).
async fn counter_stays(client: &Client, key: &str) -> i64 {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = counter_until(client, key, |_| true).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = counter_until(client, key, |_| true).await;
    assert_eq!(before, after, "a paused or deleted schedule ran");
    after
}

fn every_second(id: &str, counter: &str) -> ScheduleCreationOptions {
    let mut o = ScheduleCreationOptions::new(id, "tick", Duration::from_secs(1)).expect("valid");
    o.orchestration_input = Some(serde_json::json!(counter));
    o
}

fn is_refused_transition(e: &ScheduleError, operation: &str) -> bool {
    matches!(e, ScheduleError::Failed { message, .. }
        if message.contains("Invalid state transition") && message.contains(operation))
}

/// The official Python SDK's worker (schedule entity, `tick`, counter) until dropped.
async fn python_worker(s: &Running) -> tokio::process::Child {
    let suite =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/entities_suite.py");
    let args = [
        suite.display().to_string(),
        s.addr.to_string(),
        "worker".into(),
    ];
    pyenv::spawn_python_until(&args, "worker started").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_drives_python_schedules() {
    let s = scheduler(&[]);
    let _python = python_worker(&s).await;
    let client = Client::new(&connect(&s).await);
    let schedules: Schedules<'_> = client.schedules();
    let (id, counter) = (key("py-sched"), key("py-runs"));
    schedules
        .create(&every_second(&id, &counter))
        .await
        .expect("create");
    counter_until(&client, &counter, |n| n >= 2).await;

    let d = schedules
        .describe(&id)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(d.status, ScheduleStatus::Active);
    assert_eq!(d.interval, Some(Duration::from_secs(1)));
    assert_eq!(d.orchestration_name.as_deref(), Some("tick"));
    assert_eq!(d.orchestration_input, Some(serde_json::json!(counter)));
    assert!(d.created_at.is_some() && d.last_run_at.is_some(), "{d:?}");
    let listed = schedules
        .list(&ScheduleQuery {
            schedule_id_prefix: Some(id.clone()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");

    // Resuming an active schedule is refused by the Python entity, with its reason.
    let e = schedules.resume(&id).await.unwrap_err();
    assert!(is_refused_transition(&e, "resume_schedule"), "{e}");

    schedules.pause(&id).await.expect("pause");
    assert_eq!(
        schedules
            .describe(&id)
            .await
            .expect("describe")
            .expect("exists")
            .status,
        ScheduleStatus::Paused
    );
    let paused_at = counter_stays(&client, &counter).await;
    schedules
        .update(
            &id,
            &ScheduleUpdateOptions {
                interval: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    let d = schedules
        .describe(&id)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(
        (d.status, d.interval),
        (ScheduleStatus::Paused, Some(Duration::from_secs(2)))
    );
    schedules.resume(&id).await.expect("resume");
    counter_until(&client, &counter, |n| n > paused_at).await;
    schedules.delete(&id).await.expect("delete");
    assert_eq!(schedules.describe(&id).await.expect("describe"), None);
    counter_stays(&client, &counter).await;
}

/// A Rust worker with the schedule entity, `tick` and the counter `tick` counts on.
fn rust_worker(conn: &Connection) -> tokio_util::sync::CancellationToken {
    let mut r = Registry::new();
    r.add_schedules();
    r.add_entity(
        "counter",
        |ctx: &mut EntityContext, n: i64| -> Result<(), durabletask::FailureDetails> {
            let v = ctx.state::<i64>()?.unwrap_or(0);
            ctx.set_state(&(v + n))
        },
    );
    r.add_orchestrator(
        "tick",
        |ctx: durabletask::OrchestrationContext, key: String| async move {
            ctx.signal_entity(&EntityId::new("counter", &key), "add", &1, None);
            Ok(key)
        },
    );
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(Worker::new(conn, r, WorkerOptions::default()).run(stop.clone()));
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_schedules_on_sqlite_run_at_their_interval_and_refuse_bad_changes() {
    let dir = std::env::temp_dir().join(format!("schedules-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("store.db").display().to_string();
    let s = scheduler(&[
        ("LOCAL_SCHEDULER__STORE", "sqlite".into()),
        ("LOCAL_SCHEDULER__SQLITE_PATH", db),
    ]);
    let conn = connect(&s).await;
    let stop = rust_worker(&conn);
    let client = Client::new(&conn);
    let schedules = client.schedules().with_timeout(Duration::from_secs(30));

    // Refused before anything is sent, naming the field.
    let e = ScheduleCreationOptions::new("x", "tick", Duration::from_millis(500)).unwrap_err();
    assert!(e.starts_with("interval:"), "{e}");
    let mut zero = every_second("x", "x");
    zero.interval = Duration::ZERO;
    assert!(
        matches!(schedules.create(&zero).await, Err(ScheduleError::Invalid(m)) if m.starts_with("interval:"))
    );
    // Refused by the entity, when another client sends it anyway; nothing is created.
    let bad = client
        .schedule_new_orchestration(
            SCHEDULE_OPERATION_ORCHESTRATOR,
            &serde_json::json!({"entity_id": "@schedule@too-fast", "operation_name": "create_schedule",
                "input": {"schedule_id": "too-fast", "orchestration_name": "tick", "interval_seconds": 0.2}}),
            StartOptions::default(),
        )
        .await
        .expect("start");
    let m = client
        .wait_for_instance_completion(&bad, false, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(m.runtime_status, OrchestrationStatus::Failed);
    let failure = m.failure_details.expect("a failure");
    assert!(
        failure
            .message
            .contains("interval: must be at least 1 second"),
        "{failure:?}"
    );
    assert_eq!(
        schedules.describe("too-fast").await.expect("describe"),
        None
    );
    // No such schedule: nothing to pause.
    let e = schedules.pause("nobody").await.unwrap_err();
    assert!(is_refused_transition(&e, "pause_schedule"), "{e}");
    assert_eq!(schedules.describe("nobody").await.expect("describe"), None);

    // Runs at its interval; each run an instance `<schedule id>-<run time>`.
    let (id, counter) = (key("rs-sched"), key("rs-runs"));
    schedules
        .create(&every_second(&id, &counter))
        .await
        .expect("create");
    // One that ends by itself: deleted once past its end.
    let (ending, ending_runs) = (key("rs-ending"), key("rs-ending-runs"));
    let mut o = every_second(&ending, &ending_runs);
    o.end_at = Some(chrono::Utc::now() + chrono::Duration::milliseconds(2500));
    schedules.create(&o).await.expect("create the ending one");
    counter_until(&client, &counter, |n| n >= 3).await;
    let runs = client
        .query_instances(InstanceQuery {
            instance_id_prefix: Some(format!("{id}-")),
            ..Default::default()
        })
        .await
        .expect("query");
    assert!(runs.instances.len() >= 3, "{:?}", runs.instances);
    for r in &runs.instances {
        assert_eq!(r.name, "tick");
        assert!(r.instance_id.ends_with("+00:00"), "{}", r.instance_id);
    }
    let e = schedules.resume(&id).await.unwrap_err();
    assert!(is_refused_transition(&e, "resume_schedule"), "{e}");
    schedules.pause(&id).await.expect("pause");
    let paused = schedules
        .list(&ScheduleQuery {
            status: Some(ScheduleStatus::Paused),
            schedule_id_prefix: Some("rs-".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        paused
            .iter()
            .map(|d| d.schedule_id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    let paused_at = counter_stays(&client, &counter).await;
    schedules.resume(&id).await.expect("resume");
    counter_until(&client, &counter, |n| n > paused_at).await;
    schedules.delete(&id).await.expect("delete");
    assert_eq!(schedules.describe(&id).await.expect("describe"), None);
    counter_stays(&client, &counter).await;
    // The ending one has deleted itself, after a run or two.
    for _ in 0..100 {
        if schedules
            .describe(&ending)
            .await
            .expect("describe")
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(schedules.describe(&ending).await.expect("describe"), None);
    assert!(counter_until(&client, &ending_runs, |_| true).await <= 3);
    stop.cancel();
}
