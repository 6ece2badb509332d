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
    let held_by_w1 = fleet.activities_in_flight("w1").await;
    let w1_term = chrono::Utc::now();
    fleet.signal("w1", "TERM");
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
    let held_by_w2 = fleet.activities_in_flight("w2").await;
    let w2_term = chrono::Utc::now();
    fleet.signal("w2", "TERM");
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
    assert_eq!(
        exposition::value(
            &m,
            "dts_local_work_items_dispatched_total{kind=\"activity\"}"
        ),
        OPERATIONS as f64,
        "one dispatch per activity"
    );
    // Each SIGTERMed worker finished what it held, after its SIGTERM.
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
