//! `test-worker`, the fixture the fleet tests build on, does what they assume: its two codes write
//! different histories (so one cannot replay the other's), and with a version it takes only that
//! version's work. (Being an integration test of this package also makes `cargo test` build the
//! package's binaries, which the other packages' tests run.)

use std::time::Duration;

use durabletask::{Client, Connection, ConnectionOptions, OrchestrationStatus, StartOptions};
use serde_json::json;
use test_support::fleet::Fleet;

async fn client(endpoint: &str) -> Client {
    let conn = Connection::connect(ConnectionOptions::new(endpoint, "default").expect("opts"))
        .await
        .expect("connect");
    Client::new(&conn)
}

/// The kinds of the history's scheduling events, in order: `timer` and `activity`.
async fn schedule_order(c: &Client, id: &str) -> Vec<&'static str> {
    use durabletask::proto::history_event::EventType;
    c.get_history(id)
        .await
        .expect("history")
        .expect("exists")
        .into_iter()
        .filter_map(|e| match e.event_type {
            Some(EventType::TimerCreated(_)) => Some("timer"),
            Some(EventType::TaskScheduled(_)) => Some("activity"),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_two_codes_write_different_histories_and_a_version_filters_its_work() {
    let dir = std::env::temp_dir().join(format!("test-worker-{}", std::process::id()));
    let (_scheduler, endpoint) = test_support::process::local_scheduler(&[]).await;
    let c = client(&endpoint).await;
    let mut fleet = Fleet::new(&dir, &endpoint, &[]);
    fleet
        .start_program(
            "one",
            "test-worker",
            &[
                ("TEST_WORKER_CODE", "1"),
                ("WORKER__ORCHESTRATION_VERSION", "1"),
            ],
        )
        .await;
    fleet.wait_ready("one").await;
    let start = |version: &'static str| {
        let c = c.clone();
        async move {
            c.schedule_new_orchestration(
                "process_request",
                &json!({"name": format!("v{version}"), "delay_seconds": 0}),
                StartOptions {
                    version: Some(version.into()),
                    ..Default::default()
                },
            )
            .await
            .expect("start")
        }
    };
    let v1 = start("1").await;
    let v2 = start("2").await;
    let done = c
        .wait_for_instance_completion(&v1, false, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(done.runtime_status, OrchestrationStatus::Completed);
    assert_eq!(schedule_order(&c, &v1).await, ["timer", "activity"]);
    // Version 2 waits: the only worker takes version 1 alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = c
        .get_instance(&v2, false)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        waiting.runtime_status,
        OrchestrationStatus::Pending,
        "{waiting:?}"
    );

    fleet
        .start_program(
            "two",
            "test-worker",
            &[
                ("TEST_WORKER_CODE", "2"),
                ("WORKER__ORCHESTRATION_VERSION", "2"),
            ],
        )
        .await;
    let done = c
        .wait_for_instance_completion(&v2, false, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(done.runtime_status, OrchestrationStatus::Completed);
    assert_eq!(schedule_order(&c, &v2).await, ["activity", "timer"]);
    let _ = std::fs::remove_dir_all(&dir);
}
