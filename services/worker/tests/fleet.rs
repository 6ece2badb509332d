//! A worker fleet scaled in and replaced by SIGTERM, as an HPA, KEDA or a rolling update does it:
//! real processes (local scheduler on SQLite, workers), and the activities' own records of where
//! they ran.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use durabletask::{Client, Connection, ConnectionOptions, OrchestrationStatus, StartOptions};
use serde_json::{Value, json};
use test_support::exposition;
use test_support::fleet::{Fleet, repeated};
use test_support::net::free_port;

const OPERATIONS: usize = 200;

async fn client(endpoint: &str) -> Client {
    let conn = Connection::connect(ConnectionOptions::new(endpoint, "default").expect("opts"))
        .await
        .expect("connect");
    Client::new(&conn)
}

async fn scheduler_metrics(admin: u16) -> String {
    test_support::http::request(admin, "GET", "/metrics", &[], "")
        .await
        .2
}

/// Once worker `name` says it drains (its admin listener serves through the drain: `/metrics`,
/// `/healthz` 200 for the liveness probe, `/readyz` 503), the activities it still holds.
async fn draining_worker_holds(fleet: &Fleet, name: &str) -> f64 {
    let admin = fleet.worker(name).admin;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = fleet.metrics(name).await;
        if exposition::value(&m, "worker_draining") == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never said it drains:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let probe = |path: &'static str| async move {
        test_support::http::request(admin, "GET", path, &[], "")
            .await
            .0
    };
    assert_eq!(probe("/healthz").await, 200, "{name}: alive while draining");
    assert_eq!(
        probe("/readyz").await,
        503,
        "{name}: not ready while draining"
    );
    fleet.activities_in_flight(name).await
}

/// Two workers run 200 operations of 2-10 s. One is SIGTERMed mid-run; once it is gone, the
/// other is SIGTERMed while a third starts. Every operation succeeds, every activity ran exactly
/// once by the workers' own logs, the scheduler redelivered nothing, and each SIGTERMed worker
/// finished what it held itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_and_replacement_by_sigterm_run_every_activity_exactly_once() {
    let dir = std::env::temp_dir().join(format!("fleet-drain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, admin) = (free_port(), free_port());
    let _scheduler = test_support::process::spawn(
        "local-scheduler",
        &[
            ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port}")),
            (
                "LOCAL_SCHEDULER__ADMIN_LISTEN",
                format!("127.0.0.1:{admin}"),
            ),
            ("LOCAL_SCHEDULER__STORE", "sqlite".into()),
            (
                "LOCAL_SCHEDULER__SQLITE_PATH",
                dir.join("state.db").display().to_string(),
            ),
        ],
        port,
    )
    .await;
    let endpoint = format!("http://127.0.0.1:{port}");
    // 40 activities each: with two workers part of the 200 waits, so work is dispatched while
    // each drain runs (it must not go to the draining worker).
    let mut fleet = Fleet::new(
        &dir,
        &endpoint,
        &[
            ("WORKER__MAX_CONCURRENT_ACTIVITIES", "40"),
            ("WORKER__DRAIN_TIMEOUT_SECONDS", "25"),
        ],
    );
    fleet.start("w1").await;
    fleet.start("w2").await;
    fleet.wait_ready("w1").await;
    fleet.wait_ready("w2").await;

    let c = client(&endpoint).await;
    let mut ids = Vec::new();
    for i in 0..OPERATIONS {
        let delay = 2 + (i % 9) as u64;
        let id = c
            .schedule_new_orchestration(
                "process_request",
                &json!({"name": format!("op-{i}"), "delay_seconds": delay}),
                StartOptions::default(),
            )
            .await
            .expect("start");
        ids.push(id);
    }

    // Scale-in: w1 goes while it holds activities.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.activities_in_flight("w1").await < 1.0 {
        assert!(Instant::now() < deadline, "w1 never took an activity");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let w1_term = chrono::Utc::now();
    fleet.signal("w1", "TERM");
    // Read after the signal (its admin listener serves through the drain): nothing is added to
    // a draining worker, so this is at most what it held at SIGTERM, and all of it completes
    // after SIGTERM.
    let held_by_w1 = draining_worker_holds(&fleet, "w1").await;
    // The scheduler learns of the drain (BeginWorkerDrain) and dispatches nothing more to w1.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scheduler_metrics(admin).await;
        if exposition::value(&m, "dts_local_draining_worker_streams") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no draining stream:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = fleet.wait_exit("w1", Duration::from_secs(40)).await;
    assert!(exit.success(), "w1 drained and exited cleanly: {exit:?}");

    // Replacement: w3 starts while w2 is SIGTERMed.
    fleet.start("w3").await;
    let w2_term = chrono::Utc::now();
    fleet.signal("w2", "TERM");
    let held_by_w2 = draining_worker_holds(&fleet, "w2").await;
    let exit = fleet.wait_exit("w2", Duration::from_secs(40)).await;
    assert!(exit.success(), "w2 drained and exited cleanly: {exit:?}");

    let mut finished_by: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for id in &ids {
        let m = c
            .wait_for_instance_completion(id, true, Duration::from_secs(120))
            .await
            .expect("wait")
            .expect("exists");
        assert_eq!(
            m.runtime_status,
            OrchestrationStatus::Completed,
            "{id}: {m:?}"
        );
        let out: Value = m.output().expect("json");
        finished_by
            .entry(out["worker"].as_str().unwrap_or("?").to_string())
            .or_default()
            .push(out);
    }

    let runs = fleet.activity_runs();
    let ran: BTreeSet<&String> = runs.keys().collect();
    let wanted: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ran, wanted, "every operation's activity ran (and no other)");
    assert!(
        repeated(&runs).is_empty(),
        "activities run more than once: {:?}",
        repeated(&runs)
    );
    let m = scheduler_metrics(admin).await;
    assert_eq!(
        exposition::value(&m, "dts_local_work_items_redelivered_total"),
        0.0,
        "nothing was taken from a worker and given to another"
    );
    // One dispatch per activity, but for an item that reached a worker as its drain began: it
    // was handed back unrun (abandoned) and dispatched again. (The abandon counter has both
    // kinds: a draining worker hands back orchestration episodes too.)
    let abandoned = exposition::value(&m, "dts_local_work_items_abandoned_total");
    let dispatched = exposition::value(
        &m,
        "dts_local_work_items_dispatched_total{kind=\"activity\"}",
    );
    assert!(
        (OPERATIONS as f64..=OPERATIONS as f64 + abandoned).contains(&dispatched),
        "{dispatched} activity dispatches for {OPERATIONS} activities and {abandoned} hand-backs"
    );
    // Each SIGTERMed worker finished what it held, after its SIGTERM, and its metrics said it
    // was draining meanwhile.
    for (name, term, held) in [("w1", w1_term, held_by_w1), ("w2", w2_term, held_by_w2)] {
        let after = finished_by
            .get(name)
            .map(|outs| {
                outs.iter()
                    .filter(|o| {
                        o["completed_at"]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .is_some_and(|t| t > term)
                    })
                    .count()
            })
            .unwrap_or(0);
        assert!(
            held >= 1.0 && after as f64 >= held,
            "{name} held {held} activities at SIGTERM and completed {after} after it"
        );
    }
    eprintln!(
        "activities: {} runs for {} operations; by worker: {:?}; held at SIGTERM: w1 {held_by_w1}, w2 {held_by_w2}",
        runs.values().map(Vec::len).sum::<usize>(),
        ids.len(),
        finished_by
            .iter()
            .map(|(w, v)| (w.clone(), v.len()))
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A gateway process on `endpoint`, open (no authentication, no rate limit), with `extra`
/// variables; its API port.
async fn gateway(endpoint: &str, extra: &[(&str, String)]) -> (tokio::process::Child, u16) {
    let (port, admin) = (free_port(), free_port());
    let mut env = vec![
        ("ENDPOINT", endpoint.to_string()),
        ("GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
        ("GATEWAY__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        ("GATEWAY__DRAIN_DELAY_SECONDS", "0".into()),
        ("GATEWAY__AUTH", "none".into()),
        ("GATEWAY__RATE_LIMIT_PER_SECOND", "0".into()),
    ];
    env.extend(extra.iter().cloned());
    let child = test_support::process::spawn("gateway", &env, port).await;
    (child, port)
}

async fn start_over_http(port: u16, name: &str, delay: u64) -> String {
    let body = json!({"name": name, "delay_seconds": delay}).to_string();
    let (status, _, text) = test_support::http::request(
        port,
        "POST",
        "/api/process",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["id"].as_str().expect("id").to_string()
}

/// Long-polls the gateway's status until the operation ends; its final status document.
async fn until_done(port: u16, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, _, text) =
            test_support::http::request(port, "GET", &format!("/api/status/{id}?wait=10"), &[], "")
                .await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        if ["Succeeded", "Failed", "Canceled"].contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} did not finish: {v}");
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// An activity that panics fails its operation with the panic's message; the worker process
/// lives on and serves the next operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_that_panics_fails_its_operation_and_the_worker_keeps_serving() {
    let dir = temp_dir("fleet-panic");
    let (_scheduler, endpoint) = test_support::process::local_scheduler(&[]).await;
    let mut fleet = Fleet::new(&dir, &endpoint, &[]);
    fleet.start_program("w1", "test-worker", &[]).await;
    fleet.wait_ready("w1").await;
    let pid = fleet.worker("w1").child.id();
    let (_gw, port) = gateway(&endpoint, &[]).await;

    let failed = until_done(port, &start_over_http(port, "panic", 0).await).await;
    assert_eq!(failed["status"], "Failed", "{failed}");
    let error = failed["error"].to_string();
    assert!(
        error.contains("panicked on purpose"),
        "the operation's error says what happened: {failed}"
    );
    assert!(!fleet.has_exited("w1"), "the worker survived the panic");

    let ok = until_done(port, &start_over_http(port, "after the panic", 0).await).await;
    assert_eq!(ok["status"], "Succeeded", "{ok}");
    assert_eq!(
        fleet.worker("w1").child.id(),
        pid,
        "the same process served it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A work item that kills its worker every time (here the activity aborts the process, as an
/// out-of-memory kill would) is dispatched `max_dispatches` times, each to a restarted worker,
/// then fails its operation with a reason naming the count; it is not dispatched again, and the
/// scheduler counts and logs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_item_that_kills_its_worker_fails_after_max_dispatches_not_in_a_loop() {
    let dir = temp_dir("fleet-poison");
    let (port_s, admin_s) = (free_port(), free_port());
    let scheduler_log = dir.join("scheduler.log");
    let mut scheduler =
        tokio::process::Command::new(test_support::process::binary("local-scheduler"));
    scheduler
        .env("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port_s}"))
        .env(
            "LOCAL_SCHEDULER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin_s}"),
        )
        .env("LOCAL_SCHEDULER__STORE", "sqlite")
        .env("LOCAL_SCHEDULER__SQLITE_PATH", dir.join("state.db"))
        .env("LOCAL_SCHEDULER__MAX_DISPATCHES", "3")
        .env("LOCAL_SCHEDULER__LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&scheduler_log).expect("log"))
        .kill_on_drop(true);
    let _scheduler = scheduler.spawn().expect("spawn scheduler");
    test_support::net::wait_port(port_s).await;
    let endpoint = format!("http://127.0.0.1:{port_s}");
    let (_gw, port) = gateway(&endpoint, &[]).await;
    let mut fleet = Fleet::new(&dir, &endpoint, &[]);
    fleet.start_program("w1", "test-worker", &[]).await;
    fleet.wait_ready("w1").await;

    let id = start_over_http(port, "abort", 0).await;
    // Kubernetes restarts a crashed pod; so does this loop, until the operation has ended.
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, _, text) =
            test_support::http::request(port, "GET", &format!("/api/status/{id}"), &[], "").await;
        let v: Value = serde_json::from_str(&text).expect("json");
        if v["status"] == "Failed" || v["status"] == "Succeeded" {
            break v;
        }
        if fleet.has_exited("w1") {
            fleet.forget("w1");
            restarts += 1;
            fleet.start_program("w1", "test-worker", &[]).await;
        }
        assert!(
            Instant::now() < deadline,
            "never ended: {v} after {restarts} restarts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["status"], "Failed", "{done}");
    let error = done["error"].to_string();
    assert!(
        error.contains("dispatched 3 times") && error.contains("max_dispatches"),
        "the reason names the count and the setting: {done}"
    );
    eprintln!("the poison operation's status: {done}");

    // Not in a loop: three runs (three dead workers), and nothing after the failure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = fleet.activity_runs();
    assert_eq!(runs.get(&id).map(Vec::len), Some(3), "{runs:?}");
    assert_eq!(restarts, 3, "each dispatch killed a worker");
    if fleet.has_exited("w1") {
        panic!("a fourth dispatch killed the restarted worker");
    }
    let ok = until_done(port, &start_over_http(port, "healthy", 0).await).await;
    assert_eq!(ok["status"], "Succeeded", "the fleet serves on: {ok}");

    let m = scheduler_metrics(admin_s).await;
    assert_eq!(
        exposition::value(&m, "dts_local_poison_work_items_total{kind=\"activity\"}"),
        1.0
    );
    let log = std::fs::read_to_string(&scheduler_log).expect("scheduler log");
    assert!(
        log.lines()
            .any(|l| l.contains("poison work item") && l.contains(&id)),
        "the scheduler logs it:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `worker versions --free <v>` (the product's binary) against `endpoint`: its exit code and
/// what it printed.
async fn versions_free(endpoint: &str, version: &str) -> (i32, String) {
    let out = tokio::process::Command::new(test_support::process::binary("worker"))
        .args(["versions", "--free", version])
        .env("ENDPOINT", endpoint)
        .env("TASKHUB", "default")
        .output()
        .await
        .expect("worker versions");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Waits until every id shows `stage` in its custom status (its first episode has run).
async fn until_stage(port: u16, ids: &[String], code: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in ids {
        loop {
            let (_, _, text) =
                test_support::http::request(port, "GET", &format!("/api/status/{id}"), &[], "")
                    .await;
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["custom_status"]["code"] == code {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached its timer: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The hazard a versioned rollout avoids: code 2 picking up an operation that code 1 started
/// (its durable timer waiting) replays code 1's history and fails with a non-determinism error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_new_code_fails_an_operation_old_code_started() {
    let dir = temp_dir("fleet-unpinned");
    let (_scheduler, endpoint) = test_support::process::local_scheduler(&[]).await;
    let (_gw, port) = gateway(&endpoint, &[]).await;
    let mut fleet = Fleet::new(&dir, &endpoint, &[]);
    fleet
        .start_program("old", "test-worker", &[("TEST_WORKER_CODE", "1")])
        .await;
    fleet.wait_ready("old").await;
    let id = start_over_http(port, "pinned", 2).await;
    until_stage(port, std::slice::from_ref(&id), 1).await;
    fleet.signal("old", "TERM");
    assert!(
        fleet
            .wait_exit("old", Duration::from_secs(30))
            .await
            .success()
    );
    fleet
        .start_program("new", "test-worker", &[("TEST_WORKER_CODE", "2")])
        .await;
    let done = until_done(port, &id).await;
    assert_eq!(done["status"], "Failed", "{done}");
    assert!(
        done["error"].to_string().contains("NonDeterminism"),
        "{done}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rollout from code 1 to code 2 with 100 operations in flight, their durable timers waiting
/// across it: version-2 workers start beside the version-1 ones, the gateway is replaced by one
/// that starts at version 2, and the old fleet shrinks to one worker. Every version-1 operation
/// finishes on code 1, every new one runs on code 2, nothing fails; `worker versions --free 1`
/// says when the last version-1 worker can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_keeps_every_operation_on_the_code_that_started_it() {
    let dir = temp_dir("fleet-rollout");
    let (port_s, admin_s) = (free_port(), free_port());
    let _scheduler = test_support::process::spawn(
        "local-scheduler",
        &[
            ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port_s}")),
            (
                "LOCAL_SCHEDULER__ADMIN_LISTEN",
                format!("127.0.0.1:{admin_s}"),
            ),
            ("LOCAL_SCHEDULER__STORE", "sqlite".into()),
            (
                "LOCAL_SCHEDULER__SQLITE_PATH",
                dir.join("state.db").display().to_string(),
            ),
        ],
        port_s,
    )
    .await;
    let endpoint = format!("http://127.0.0.1:{port_s}");
    let v1: [(&str, &str); 2] = [
        ("TEST_WORKER_CODE", "1"),
        ("WORKER__ORCHESTRATION_VERSION", "1"),
    ];
    let v2: [(&str, &str); 2] = [
        ("TEST_WORKER_CODE", "2"),
        ("WORKER__ORCHESTRATION_VERSION", "2"),
    ];
    let mut fleet = Fleet::new(&dir, &endpoint, &[]);
    for name in ["v1a", "v1b"] {
        fleet.start_program(name, "test-worker", &v1).await;
        fleet.wait_ready(name).await;
    }
    let (mut g1, port1) =
        gateway(&endpoint, &[("GATEWAY__ORCHESTRATION_VERSION", "1".into())]).await;
    let mut old_ids = Vec::new();
    for i in 0..100 {
        old_ids.push(start_over_http(port1, &format!("old-{i}"), 4 + (i % 5)).await);
    }
    until_stage(port1, &old_ids, 1).await;
    let (code, text) = versions_free(&endpoint, "1").await;
    assert_eq!(
        code, 1,
        "version 1 is pinned while its operations wait:\n{text}"
    );

    // The rollout: new code beside the old, the gateway replaced, the old fleet scaled to one.
    for name in ["v2a", "v2b"] {
        fleet.start_program(name, "test-worker", &v2).await;
        fleet.wait_ready(name).await;
    }
    let (_g2, port2) = gateway(&endpoint, &[("GATEWAY__ORCHESTRATION_VERSION", "2".into())]).await;
    let pid = g1.id().expect("pid").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let _ = tokio::time::timeout(Duration::from_secs(30), g1.wait()).await;
    fleet.signal("v1b", "TERM");
    assert!(
        fleet
            .wait_exit("v1b", Duration::from_secs(30))
            .await
            .success()
    );
    let mut new_ids = Vec::new();
    for i in 0..50 {
        new_ids.push(start_over_http(port2, &format!("new-{i}"), 1).await);
    }

    for (ids, code) in [(&old_ids, "code-1"), (&new_ids, "code-2")] {
        for id in ids {
            let done = until_done(port2, id).await;
            assert_eq!(done["status"], "Succeeded", "{done}");
            let (_, _, text) =
                test_support::http::request(port2, "GET", &format!("/api/result/{id}"), &[], "")
                    .await;
            let result: Value = serde_json::from_str(&text).expect("json");
            assert!(
                result["worker"].as_str().is_some_and(|w| w.ends_with(code)),
                "{id} should have run on {code}: {result}"
            );
        }
    }
    let c = client(&endpoint).await;
    for (id, version) in [(&old_ids[0], "1"), (&new_ids[0], "2")] {
        let m = c
            .get_instance(id, false)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(m.version.as_deref(), Some(version), "{id}");
    }
    let (code, text) = versions_free(&endpoint, "1").await;
    assert_eq!(code, 0, "no operation pins version 1 any more:\n{text}");
    fleet.signal("v1a", "TERM");
    assert!(
        fleet
            .wait_exit("v1a", Duration::from_secs(30))
            .await
            .success()
    );
    let runs = fleet.activity_runs();
    assert_eq!(runs.len(), 150);
    assert!(repeated(&runs).is_empty(), "{:?}", repeated(&runs));
    let m = scheduler_metrics(admin_s).await;
    assert_eq!(
        exposition::value(&m, "dts_local_instances{status=\"FAILED\"}"),
        0.0,
        "no non-determinism failure, nothing failed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
