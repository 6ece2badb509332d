//! The live status stream (`GET /api/status/{id}/events`) against the real binaries: events as
//! the operation changes, the end of the stream, resuming with `Last-Event-ID`, and its cap.

use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::http::{event_stream, header};

mod common;
use common::*;

async fn start(port: u16, name: &str, delay: u64) -> String {
    let body = format!(r#"{{"name":"{name}","delay_seconds":{delay}}}"#);
    let (status, _, v) = http(port, "POST", "/api/process", Some(&body)).await;
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sends_each_change_until_the_operation_ends_and_resumes_after_the_last_event() {
    let (_scheduler, endpoint) = local_scheduler().await;
    let _worker = worker_in_process(&endpoint);
    let (_gateway, port, admin) = gateway(
        &endpoint,
        &[("GATEWAY__STREAM_POLL_INTERVAL_MS", "200".into())],
    )
    .await;
    let id = start(port, "streamed", 3).await;
    let opened = Instant::now();
    let mut stream = event_stream(port, &format!("/api/status/{id}/events"), &[]).await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        header(&stream.headers, "content-type"),
        Some("text/event-stream")
    );
    let mut events = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the stream ends after the operation")
    {
        events.push(e);
    }
    let docs: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(&e.data).expect("a JSON status document"))
        .collect();
    let statuses: Vec<&str> = docs
        .iter()
        .map(|d| d["status"].as_str().unwrap_or(""))
        .collect();
    // NotStarted when the stream opened before a worker took the operation, then Running,
    // then Succeeded, each once.
    let expected: &[&str] = if statuses.first() == Some(&"NotStarted") {
        &["NotStarted", "Running", "Succeeded"]
    } else {
        &["Running", "Succeeded"]
    };
    let mut distinct = statuses.clone();
    distinct.dedup();
    assert_eq!(distinct, expected, "{statuses:?}");
    // The first event came at once, Running while the activity still had seconds to go, and
    // Succeeded after.
    let at = |i: usize| events[i].at.expect("time") - opened;
    let running = statuses
        .iter()
        .position(|s| *s == "Running")
        .expect("Running");
    let last = events.len() - 1;
    assert!(
        at(0) < Duration::from_millis(1500)
            && at(running) < Duration::from_millis(2000)
            && at(last) > Duration::from_millis(2500),
        "first after {:?}, Running after {:?}, last after {:?}",
        at(0),
        at(running),
        at(last)
    );
    assert!(events.iter().all(|e| e.event.as_deref() == Some("status")));
    assert_eq!(docs.last().expect("last")["custom_status"]["stage"], "done");
    // Event ids grow with each change; every document is different from the one before.
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e.id.as_deref().expect("an id").parse().expect("a number"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(docs.windows(2).all(|w| w[0] != w[1]));

    // Reconnecting after the first event: only what came after it.
    let first = ids[0].to_string();
    let mut resumed = event_stream(
        port,
        &format!("/api/status/{id}/events"),
        &[("Last-Event-ID", &first)],
    )
    .await;
    let mut again = Vec::new();
    while let Some(e) = resumed.next().await {
        again.push(e);
    }
    assert!(!again.is_empty());
    assert!(
        again
            .iter()
            .all(|e| e.id.as_deref().and_then(|i| i.parse::<i64>().ok()) > Some(ids[0])),
        "{again:?}"
    );
    let last: Value = serde_json::from_str(&again.last().expect("one").data).expect("json");
    assert_eq!(last["status"], "Succeeded");
    // After the last event of an ended operation: 204, nothing more will come.
    let last_id = ids.last().expect("last").to_string();
    let done = event_stream(
        port,
        &format!("/api/status/{id}/events"),
        &[("Last-Event-ID", &last_id)],
    )
    .await;
    assert_eq!(done.status, 204);

    // No stream is left open, by the gateway's own count.
    let (_, _, text) = test_support::http::request(admin, "GET", "/metrics", &[], "").await;
    assert!(
        text.lines().any(|l| l == "gateway_status_streams_open 0"),
        "{}",
        text.lines()
            .filter(|l| l.contains("streams"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_share_the_long_poll_cap_and_past_it_get_503_with_retry_after() {
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_gateway, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__MAX_LONG_POLLS", "2".into()),
            ("GATEWAY__MAX_STREAM_SECONDS", "3".into()),
        ],
    )
    .await;
    // No worker: the operations stay pending, their streams open.
    let (a, b, c) = (
        start(port, "a", 0).await,
        start(port, "b", 0).await,
        start(port, "c", 0).await,
    );
    let mut open_a = event_stream(port, &format!("/api/status/{a}/events"), &[]).await;
    let mut open_b = event_stream(port, &format!("/api/status/{b}/events"), &[]).await;
    assert_eq!((open_a.status, open_b.status), (200, 200));
    let first = open_a.next().await.expect("the current status at once");
    assert_eq!(
        serde_json::from_str::<Value>(&first.data).expect("json")["status"],
        "NotStarted"
    );
    let refused = event_stream(port, &format!("/api/status/{c}/events"), &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.body());
    assert!(header(&refused.headers, "retry-after").is_some());
    assert_eq!(
        header(&refused.headers, "content-type"),
        Some("application/problem+json")
    );
    // A long poll past the cap answers at once rather than waiting.
    let t = Instant::now();
    let (status, _, _) = http(port, "GET", &format!("/api/status/{c}?wait=10"), None).await;
    assert_eq!(status, 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    // Streams end after max_stream_seconds, freeing their places.
    let t = Instant::now();
    while open_b.next().await.is_some() {}
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(open_a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = event_stream(port, &format!("/api/status/{c}/events"), &[]).await;
        if s.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the places were never freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An unknown id is a 404 problem, not a stream.
    let none = event_stream(port, "/api/status/0000000000000000nothing/events", &[]).await;
    assert_eq!(none.status, 404);
}
