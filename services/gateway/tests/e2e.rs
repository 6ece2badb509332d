//! End to end over loopback with real processes: local scheduler, two workers and the gateway,
//! driven over HTTP only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Child;

mod common;
use common::*;

/// A worker process named `name` (the name shows in results), with at most `activities` in
/// flight. Returns once its work-item stream is connected.
async fn worker(endpoint: &str, name: &str, activities: usize) -> (Child, u16) {
    let admin = free_port();
    let child = spawn(
        "worker",
        &[
            ("ENDPOINT", endpoint.to_string()),
            ("HOSTNAME", name.to_string()),
            ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
            ("WORKER__MAX_CONCURRENT_ACTIVITIES", activities.to_string()),
            ("WORKER__DRAIN_TIMEOUT_SECONDS", "1".into()),
        ],
        admin,
    )
    .await;
    wait_for(admin, "/readyz", 200).await;
    (child, admin)
}

async fn wait_for(port: u16, path: &str, want: u16) {
    for _ in 0..400 {
        if http(port, "GET", path, None).await.0 == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} on {port} never answered {want}");
}

async fn start(port: u16, name: &str, delay: u64) -> String {
    let body = json!({"name": name, "delay_seconds": delay}).to_string();
    let (status, headers, v) = http(port, "POST", "/api/process", Some(&body)).await;
    assert_eq!(status, 202, "{v}");
    assert!(hdr(&headers, "location").is_some());
    v["id"].as_str().expect("id").to_string()
}

/// Long-polls the status monitor until the operation ends; returns the final status body.
async fn until_done(port: u16, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, _, v) = http(port, "GET", &format!("/api/status/{id}?wait=10"), None).await;
        assert_eq!(status, 200, "{v}");
        if ["Succeeded", "Failed", "Canceled"].contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} did not finish: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_operations_complete_across_two_workers_with_ordered_transitions() {
    let (_sched, endpoint) = local_scheduler().await;
    // Four activities each at most: 24 operations of 1 s need both workers.
    let _a = worker(&endpoint, "worker-a", 4).await;
    let _b = worker(&endpoint, "worker-b", 4).await;
    let (_gw, port, _) = gateway(&endpoint, &[]).await;

    // One operation watched closely: its statuses only move forward.
    let watched = start(port, "watched", 2).await;
    let mut seen: Vec<String> = Vec::new();
    let mut stages = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, headers, v) = http(port, "GET", &format!("/api/status/{watched}"), None).await;
        assert_eq!(status, 200, "{v}");
        let s = v["status"].as_str().expect("status").to_string();
        if let Some(stage) = v["custom_status"]["stage"].as_str() {
            stages.insert(stage.to_string());
        }
        let terminal = s == "Succeeded";
        assert_eq!(
            hdr(&headers, "retry-after").is_some(),
            !terminal,
            "Retry-After only while not finished: {v}"
        );
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        if terminal {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let order = ["NotStarted", "Running", "Succeeded"];
    let ranks: Vec<usize> = seen
        .iter()
        .map(|s| order.iter().position(|o| o == s).expect("known status"))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(seen.contains(&"Running".to_string()), "{seen:?}");
    assert!(stages.contains("processing"), "{stages:?}");

    // Many at once.
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(start(port, &format!("user-{i}"), 1).await);
    }
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let done = until_done(port, id).await;
        assert_eq!(done["status"], "Succeeded", "{done}");
        let (status, _, result) = http(port, "GET", &format!("/api/result/{id}"), None).await;
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["name"], format!("user-{i}"));
        *by_worker
            .entry(result["worker"].as_str().expect("worker").to_string())
            .or_default() += 1;
    }
    assert_eq!(by_worker.values().sum::<usize>(), 24);
    assert!(
        by_worker.contains_key("worker-a") && by_worker.contains_key("worker-b"),
        "both workers ran activities: {by_worker:?}"
    );

    // The list shows them all as Succeeded, page by page.
    let mut listed = BTreeSet::new();
    let mut next = Some("/api/operations?status=Succeeded&page_size=10".to_string());
    while let Some(link) = next {
        let path = link.trim_start_matches(&format!("http://localhost:{port}"));
        let (status, _, page) = http(port, "GET", path, None).await;
        assert_eq!(status, 200, "{page}");
        for op in page["value"].as_array().expect("value") {
            listed.insert(op["id"].as_str().expect("id").to_string());
        }
        next = page["nextLink"].as_str().map(str::to_string);
    }
    for id in ids.iter().chain([&watched]) {
        assert!(listed.contains(id), "{id} missing from the list");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_worker_mid_activity_loses_no_operation() {
    let (_sched, endpoint) = local_scheduler().await;
    let (mut a, _) = worker(&endpoint, "worker-a", 10).await;
    let (_gw, port, _) = gateway(&endpoint, &[]).await;
    let id = start(port, "Grace", 3).await;
    // The activity is running on A once the orchestration reports its stage.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, v) = http(port, "GET", &format!("/api/status/{id}"), None).await;
        if v["custom_status"]["stage"] == "processing" {
            break;
        }
        assert!(Instant::now() < deadline, "never started: {v}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pid = a.id().expect("pid").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(15), a.wait())
        .await
        .expect("the worker drains and exits in time")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let (_, _, mid) = http(port, "GET", &format!("/api/status/{id}"), None).await;
    assert_eq!(mid["status"], "Running", "still open, not failed: {mid}");
    let (status, headers, pending) = http(port, "GET", &format!("/api/result/{id}"), None).await;
    assert_eq!(status, 202, "{pending}");
    assert!(hdr(&headers, "retry-after").is_some());

    let _b = worker(&endpoint, "worker-b", 10).await;
    let done = until_done(port, &id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let (_, _, result) = http(port, "GET", &format!("/api/result/{id}"), None).await;
    assert_eq!(
        result["worker"], "worker-b",
        "the activity ran again on B: {result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_outage_is_503_and_everything_recovers_when_it_is_back() {
    let dir = std::env::temp_dir().join(format!("gw-outage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("state.db");
    let port_s = free_port();
    let scheduler = |db: std::path::PathBuf| async move {
        spawn(
            "local-scheduler",
            &[
                ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port_s}")),
                (
                    "LOCAL_SCHEDULER__ADMIN_LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                ),
                ("LOCAL_SCHEDULER__STORE", "sqlite".into()),
                ("LOCAL_SCHEDULER__SQLITE_PATH", db.display().to_string()),
            ],
            port_s,
        )
        .await
    };
    let endpoint = format!("http://127.0.0.1:{port_s}");
    let mut sched = scheduler(db.clone()).await;
    let _w = worker(&endpoint, "worker-a", 10).await;
    let (_gw, port, admin) =
        gateway(&endpoint, &[("GATEWAY__DTS_TIMEOUT_MS", "1000".into())]).await;
    wait_for(admin, "/readyz", 200).await;
    let id = start(port, "before the outage", 2).await;

    sched.kill().await.expect("kill scheduler");
    let t = Instant::now();
    let (status, headers, v) = http(port, "GET", &format!("/api/status/{id}"), None).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["type"], "/problems/scheduler-unavailable");
    assert!(hdr(&headers, "retry-after").is_some());
    assert!(
        hdr(&headers, "content-type") == Some("application/problem+json"),
        "{headers:?}"
    );
    let body = json!({"name": "during", "delay_seconds": 0}).to_string();
    let (status, _, v) = http(port, "POST", "/api/process", Some(&body)).await;
    assert_eq!(status, 503, "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "answers come within the deadline, not a hang ({:?})",
        t.elapsed()
    );
    wait_for(admin, "/readyz", 503).await;

    // Back on the same port with the same file: the operation is still there and finishes.
    let _sched = scheduler(db).await;
    wait_for(admin, "/readyz", 200).await;
    let done = until_done(port, &id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let after = start(port, "after the outage", 0).await;
    let done = until_done(port, &after).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let _ = std::fs::remove_dir_all(&dir);
}
