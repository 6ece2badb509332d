//! A fair share for every caller, against real processes (local scheduler, worker, one or two
//! gateways): one caller's flood of long operations cannot take the worker's slots, the
//! scheduler's queues or the gateway's caps from another.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::oidc::sha256_hex;

mod common;
use common::*;

const SECRET: &str = "id secret for the fairness tests, 32+ chars";
const A: &str = "key-of-caller-a-0123456789abcdef";
const B: &str = "key-of-caller-b-0123456789abcdef";

/// One test of this file at a time: both flood one worker.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn keys_file() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fair-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("api-keys.json");
    std::fs::write(
        &path,
        json!({"keys": [
            {"id": "a", "name": "A", "role": "user", "sha256": sha256_hex(A)},
            {"id": "b", "name": "B", "role": "user", "sha256": sha256_hex(B)},
        ]})
        .to_string(),
    )
    .expect("keys");
    path
}

async fn fair_gateway(
    endpoint: &str,
    keys: &std::path::Path,
    cap: usize,
) -> (tokio::process::Child, u16) {
    let (child, port, _) = gateway(
        endpoint,
        &[
            ("GATEWAY__AUTH", "api_key".into()),
            ("GATEWAY__ID_SECRET", SECRET.into()),
            ("GATEWAY__API_KEYS_FILE", keys.display().to_string()),
            ("GATEWAY__MAX_UNFINISHED_PER_CALLER", cap.to_string()),
        ],
    )
    .await;
    (child, port)
}

async fn start(port: u16, key: &str, name: &str, delay: u64) -> (u16, Value) {
    let body = json!({"name": name, "delay_seconds": delay}).to_string();
    let (status, _, v) = http_with_headers(
        port,
        "POST",
        "/api/process",
        Some(&body),
        &[("x-api-key", key)],
    )
    .await;
    (status, v)
}

/// A worker in this process with `slots` activity slots.
async fn worker(endpoint: &str, slots: usize) -> test_support::in_process::Running {
    test_support::in_process::worker(
        endpoint,
        &[("WORKER__MAX_CONCURRENT_ACTIVITIES", slots.to_string())],
    )
}

/// Starts one of `key`'s operations of 0 s and waits for it: the time to `Succeeded`.
async fn round_trip(port: u16, key: &str) -> Duration {
    let t = Instant::now();
    let (status, v) = start(port, key, "quick", 0).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    loop {
        let (status, _, v) = http_with_headers(
            port,
            "GET",
            &format!("/api/status/{id}?wait=10"),
            None,
            &[("x-api-key", key)],
        )
        .await;
        assert_eq!(status, 200, "{v}");
        if v["status"] == "Succeeded" {
            return t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{v}");
    }
}

/// Caller A floods starts of one-hour operations through two gateway replicas; it gets `429`
/// past its cap of 4 unfinished (passed by at most the 4 starts in flight on the other replica),
/// so its activities hold at most 8 of the worker's 10 slots. Caller B's operations meanwhile all start
/// (no `503`) and finish within 2 s of their idle round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_long_operations_leaves_another_caller_its_share() {
    let _one = ONE_AT_A_TIME.lock().await;
    let keys = keys_file();
    let (_scheduler, endpoint) = local_scheduler_with(&[]).await;
    let _worker = worker(&endpoint, 10).await;
    let (_g1, g1) = fair_gateway(&endpoint, &keys, 4).await;
    let (_g2, g2) = fair_gateway(&endpoint, &keys, 4).await;
    let idle = round_trip(g1, B).await;

    let flood: Vec<_> = (0..60)
        .map(|i| {
            let port = if i % 2 == 0 { g1 } else { g2 };
            tokio::spawn(async move { start(port, A, &format!("long-{i}"), 3600).await })
        })
        .collect();
    let mut accepted = 0;
    let mut refused = 0;
    for f in flood {
        let (status, v) = f.await.expect("join");
        match status {
            202 => accepted += 1,
            429 => {
                assert_eq!(v["type"], "/problems/too-many-unfinished-operations", "{v}");
                refused += 1;
            }
            other => panic!("A's start answered {other}: {v}"),
        }
    }
    // Each replica stays within the cap by itself; neither sees the other's starts in flight
    // (at most 4 at once each, the default): passed by at most 4.
    assert!(
        (4..=8).contains(&accepted),
        "A got {accepted} starts past a cap of 4 with two replicas ({refused} refused)"
    );
    let mut worst = Duration::ZERO;
    for i in 0..6 {
        let port = if i % 2 == 0 { g1 } else { g2 };
        worst = worst.max(round_trip(port, B).await);
    }
    eprintln!(
        "A: {accepted} accepted, {refused} refused (cap 4, two replicas); B: idle round trip {idle:?}, worst under A's flood {worst:?}"
    );
    assert!(
        worst < idle + Duration::from_secs(2),
        "B waited {worst:?} (idle {idle:?})"
    );
    let _ = std::fs::remove_dir_all(keys.parent().expect("dir"));
}

/// The scheduler hands work out round-robin across callers: with one activity slot and caller
/// A's backlog of 40 one-second operations queued, caller B's operation waits for at most the
/// one A activity running and one more turn, not for A's backlog (40 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_one_caller_does_not_queue_another_behind_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let keys = keys_file();
    let (_scheduler, endpoint) = local_scheduler_with(&[]).await;
    let _worker = worker(&endpoint, 1).await;
    let (_gw, port) = fair_gateway(&endpoint, &keys, 1000).await;
    for i in 0..40 {
        let (status, v) = start(port, A, &format!("backlog-{i}"), 1).await;
        assert_eq!(status, 202, "{v}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waited = round_trip(port, B).await;
    eprintln!("B behind A's backlog of 40 one-second operations on one slot: {waited:?}");
    assert!(waited < Duration::from_secs(6), "B waited {waited:?}");
    let _ = std::fs::remove_dir_all(keys.parent().expect("dir"));
}

/// Each caller has a share of the gateway's caps: caller A's status streams and slow request
/// bodies fill A's share (`429`), not the gateway's cap, and caller B is served (before, A's 20
/// streams and 50 slow bodies filled caps of 20 and 50 and B got `503`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_slow_bodies_of_one_caller_fill_its_share_not_the_gateway() {
    use tokio::io::AsyncWriteExt;
    let _one = ONE_AT_A_TIME.lock().await;
    let keys = keys_file();
    let (_scheduler, endpoint) = local_scheduler_with(&[]).await;
    let (_gw, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__AUTH", "api_key".into()),
            ("GATEWAY__ID_SECRET", SECRET.into()),
            ("GATEWAY__API_KEYS_FILE", keys.display().to_string()),
            ("GATEWAY__MAX_LONG_POLLS", "6".into()),
            ("GATEWAY__MAX_LONG_POLLS_PER_CALLER", "3".into()),
            ("GATEWAY__MAX_CONCURRENT_REQUESTS", "12".into()),
            ("GATEWAY__MAX_REQUESTS_PER_CALLER", "4".into()),
        ],
    )
    .await;
    let (status, v) = start(port, A, "watched", 600).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let path = format!("/api/status/{id}/events");
    let mut streams = Vec::new();
    for _ in 0..3 {
        let stream = test_support::http::event_stream(port, &path, &[("x-api-key", A)]).await;
        assert_eq!(stream.status, 200, "within A's share: {}", stream.body());
        streams.push(stream);
    }
    let (status, _, v) = http_with_headers(port, "GET", &path, None, &[("x-api-key", A)]).await;
    assert_eq!(status, 429, "A's fourth stream is over its share: {v}");
    assert_eq!(v["type"], "/problems/too-many-waiting-for-caller", "{v}");
    let (status, v) = start(port, B, "b's own", 600).await;
    assert_eq!(status, 202, "{v}");
    let b_id = v["id"].as_str().expect("id").to_string();
    let b_stream = test_support::http::event_stream(
        port,
        &format!("/api/status/{b_id}/events"),
        &[("x-api-key", B)],
    )
    .await;
    assert_eq!(
        b_stream.status,
        200,
        "B's stream opens: {}",
        b_stream.body()
    );
    drop(streams);

    // Slow bodies: A's requests in progress stop at its share of 4.
    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(
            format!("POST /api/process HTTP/1.1\r\nHost: localhost\r\nx-api-key: {A}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{").as_bytes(),
        )
        .await
        .expect("write");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, v) =
        http_with_headers(port, "GET", "/api/operations", None, &[("x-api-key", A)]).await;
    assert_eq!(status, 429, "A is at its share: {v}");
    assert_eq!(v["type"], "/problems/too-many-requests-in-progress", "{v}");
    let (status, _, v) =
        http_with_headers(port, "GET", "/api/operations", None, &[("x-api-key", B)]).await;
    assert_eq!(status, 200, "B is served: {v}");
    drop(slow);
    let _ = std::fs::remove_dir_all(keys.parent().expect("dir"));
}

/// At its cap, a caller's new start is refused but the retry of a start it already made (same
/// `Idempotency-Key`) is answered as the first time: it starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_start_is_answered_at_the_cap() {
    let _one = ONE_AT_A_TIME.lock().await;
    let keys = keys_file();
    let (_scheduler, endpoint) = local_scheduler_with(&[]).await;
    let (_gw, port) = fair_gateway(&endpoint, &keys, 1).await;
    let body = json!({"name": "once", "delay_seconds": 60}).to_string();
    let with_key = |k: &'static str| [("x-api-key", A), ("idempotency-key", k)];
    let (status, _, first) =
        http_with_headers(port, "POST", "/api/process", Some(&body), &with_key("k-1")).await;
    assert_eq!(status, 202, "{first}");
    let (status, _, v) =
        http_with_headers(port, "POST", "/api/process", Some(&body), &with_key("k-2")).await;
    assert_eq!(status, 429, "a second operation is past the cap of 1: {v}");
    assert_eq!(v["type"], "/problems/too-many-unfinished-operations", "{v}");
    let (status, _, again) =
        http_with_headers(port, "POST", "/api/process", Some(&body), &with_key("k-1")).await;
    assert_eq!(status, 202, "the retry: {again}");
    assert_eq!(again["id"], first["id"]);
    let _ = std::fs::remove_dir_all(keys.parent().expect("dir"));
}

/// One replica never passes the cap, however many of a caller's starts arrive at once: 80
/// concurrent starts against a cap of 5 make exactly 5 operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_never_passes_the_cap() {
    let _one = ONE_AT_A_TIME.lock().await;
    let keys = keys_file();
    let (_scheduler, endpoint) = local_scheduler_with(&[]).await;
    let (_gw, port) = fair_gateway(&endpoint, &keys, 5).await;
    let starts: Vec<_> = (0..80)
        .map(|i| tokio::spawn(async move { start(port, A, &format!("burst-{i}"), 600).await.0 }))
        .collect();
    let mut accepted = 0;
    for s in starts {
        match s.await.expect("join") {
            202 => accepted += 1,
            429 => {}
            other => panic!("a start answered {other}"),
        }
    }
    assert_eq!(accepted, 5, "exactly the cap");
    let (status, _, v) =
        http_with_headers(port, "GET", "/api/operations", None, &[("x-api-key", A)]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["value"].as_array().map(Vec::len), Some(5), "{v}");
    let _ = std::fs::remove_dir_all(keys.parent().expect("dir"));
}
