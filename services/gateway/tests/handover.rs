//! SIGTERM under load, as Kubernetes sends it: readiness fails at once, the gateway keeps serving
//! for the drain delay (while load balancers stop sending it requests), then stops accepting;
//! waiting long polls are answered with the current status, and nothing accepted is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A complete answer with this status.
    Answered(u16),
    /// The connection was refused.
    Refused,
    /// Connected, but the connection ended without a complete answer.
    Dropped,
}

/// One start on a new connection, reporting what became of it instead of panicking.
async fn try_start(port: u16) -> Outcome {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return Outcome::Refused;
    };
    let body = json!({"name": "load", "delay_seconds": 0}).to_string();
    let req = format!(
        "POST /api/process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return Outcome::Dropped;
    }
    let mut raw = Vec::new();
    if s.read_to_end(&mut raw).await.is_err() {
        return Outcome::Dropped;
    }
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Dropped;
    };
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    match head.split(' ').nth(1).and_then(|c| c.parse().ok()) {
        Some(status) if body.len() >= length => Outcome::Answered(status),
        _ => Outcome::Dropped,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drops_nothing_and_refuses_nothing_while_ready() {
    let (_scheduler, endpoint) = local_scheduler().await;
    let (mut gw, port, admin) = gateway(
        &endpoint,
        &[
            ("GATEWAY__DRAIN_DELAY_SECONDS", "3".into()),
            ("GATEWAY__SHUTDOWN_TIMEOUT_SECONDS", "10".into()),
        ],
    )
    .await;
    let ready = move |want: u16| async move { http(admin, "GET", "/readyz", None).await.0 == want };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(200).await {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An operation that stays pending (no worker), and a long poll on it.
    let (status, _, v) = http(
        port,
        "POST",
        "/api/process",
        Some(&json!({"name": "held", "delay_seconds": 60}).to_string()),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let held = v["id"].as_str().expect("id").to_string();
    let began = Instant::now();
    let poll = tokio::spawn(async move {
        let (status, headers, v) =
            http(port, "GET", &format!("/api/status/{held}?wait=30"), None).await;
        (
            status,
            hdr(&headers, "retry-after").is_some(),
            v,
            began.elapsed(),
        )
    });

    // A load balancer's stand-in: it sends requests while it routes to the gateway, and stops
    // routing one second after readiness fails (its own propagation delay, under the drain
    // delay of three).
    let routed = Arc::new(AtomicBool::new(true));
    let not_ready_at = tokio::spawn({
        let routed = routed.clone();
        async move {
            loop {
                if ready(503).await {
                    let at = began.elapsed();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    routed.store(false, Ordering::Release);
                    return at;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let load: Vec<_> = (0..8)
        .map(|_| {
            let routed = routed.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while routed.load(Ordering::Acquire) {
                    outcomes.push((began.elapsed(), try_start(port).await));
                }
                outcomes
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let term_at = began.elapsed();
    let pid = gw.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());

    let not_ready_at = not_ready_at.await.expect("readiness watcher");
    let mut outcomes = Vec::new();
    for l in load {
        outcomes.extend(l.await.expect("load"));
    }
    let exit = tokio::time::timeout(Duration::from_secs(20), gw.wait())
        .await
        .expect("the gateway exits within its drain delay and grace period")
        .expect("wait");
    let exited_at = began.elapsed();
    let (status, retry_after, v, answered_at) = poll.await.expect("poll");

    let during_drain = outcomes
        .iter()
        .filter(|(at, o)| *at > term_at && *o == Outcome::Answered(202))
        .count();
    println!(
        "SIGTERM at {term_at:?}: not ready at {not_ready_at:?}; {} starts, {during_drain} of them after SIGTERM; long poll answered at {answered_at:?}; exited at {exited_at:?}",
        outcomes.len()
    );
    assert!(exit.success(), "{exit:?}");
    assert!(
        not_ready_at < term_at + Duration::from_secs(1),
        "readiness failed {:?} after SIGTERM",
        not_ready_at - term_at
    );
    let bad: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| *o != Outcome::Answered(202))
        .collect();
    assert!(bad.is_empty(), "refused or dropped while routed: {bad:?}");
    assert!(during_drain > 0, "nothing was served after SIGTERM");
    // The long poll was answered when the gateway stopped accepting (3 s after SIGTERM), with
    // the current status, not held for its 30 s.
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["runtime_status"], "PENDING", "{v}");
    assert!(retry_after);
    assert!(
        answered_at >= term_at + Duration::from_secs(3)
            && answered_at < term_at + Duration::from_secs(8),
        "answered at {answered_at:?}, SIGTERM at {term_at:?}"
    );
}
