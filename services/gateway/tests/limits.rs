//! The gateway's limits against clients that misbehave, over real sockets to a real gateway
//! process: slow heads, idle and slow requests, large heads, too many connections, requests and
//! long polls, and trace headers that must not reach durable state whole.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::exposition::value;
use test_support::process::{allow_open_files, rss_mib};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

/// One test of this file at a time: two of them flood the machine (2,000 and 10,000
/// connections), and the others time what a gateway does under their limits.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One HTTP/1.1 response read off a kept-alive connection: status, lower-case headers, body.
/// `None` when the server closed the connection first.
async fn read_response<R: AsyncRead + Unpin>(
    s: &mut R,
) -> Option<(u16, Vec<(String, String)>, String)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = hdr(&headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..]).to_string();
    Some((status, headers, body))
}

/// Whether the server has closed `s` (EOF or reset), waiting at most `within`.
async fn closed_within<R: AsyncRead + Unpin>(s: &mut R, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn problem(headers: &[(String, String)], body: &str, status: u16) -> Value {
    assert_eq!(
        hdr(headers, "content-type"),
        Some("application/problem+json"),
        "{headers:?} {body}"
    );
    let v: Value = serde_json::from_str(body).expect("problem json");
    assert_eq!(v["status"], status, "{v}");
    v
}

async fn start(port: u16) -> String {
    let body = json!({"name": "held", "delay_seconds": 60}).to_string();
    let (status, _, v) = http(port, "POST", "/api/process", Some(&body)).await;
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().expect("id").to_string()
}

async fn metrics(admin: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", admin))
        .await
        .expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_response(&mut s).await.expect("metrics").2
}

/// Opens a connection and sends a request head one header line per 500 ms, for at most 30 s;
/// returns how long the server kept it open.
async fn trickle(port: u16) -> Duration {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let opened = Instant::now();
    if s.write_all(b"POST /api/process HTTP/1.1\r\nHost: x\r\n")
        .await
        .is_err()
    {
        return opened.elapsed();
    }
    while opened.elapsed() < Duration::from_secs(30) {
        if closed_within(&mut s, Duration::from_millis(500)).await
            || s.write_all(b"X-Slow: still-coming\r\n").await.is_err()
        {
            return opened.elapsed();
        }
    }
    opened.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_their_heads_are_cut_off_while_others_are_served() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const SLOW: usize = 2_000;
    let files = allow_open_files(2 * SLOW as u64 + 512);
    assert!(
        files >= 2 * SLOW as u64 + 512,
        "this machine's hard open-file limit ({files}) is below what {SLOW} connections need"
    );
    let (_scheduler, endpoint) = local_scheduler().await;
    let (gw, port, _) = gateway(
        &endpoint,
        &[("GATEWAY__HEADER_READ_TIMEOUT_SECONDS", "2".into())],
    )
    .await;
    let slow: Vec<_> = (0..SLOW).map(|_| tokio::spawn(trickle(port))).collect();
    // Meanwhile, ordinary starts are answered.
    let began = Instant::now();
    let mut served = 0;
    while began.elapsed() < Duration::from_secs(3) {
        start(port).await;
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut longest = Duration::ZERO;
    for t in slow {
        longest = longest.max(t.await.expect("trickle"));
    }
    let (peak, _) = rss_mib(gw.id().expect("pid"));
    println!(
        "{SLOW} slow heads: longest kept {longest:?}; {served} starts served; gateway peak RSS {peak:.1} MiB"
    );
    // The header timeout (2 s) plus a margin for a loaded machine; they would otherwise stay 30 s.
    assert!(longest < Duration::from_secs(8), "kept {longest:?}");
    assert!(served >= 5, "only {served} starts in 3 s");
    // hyper holds two 8 KiB buffers per connection: about 20 MiB for 2,000, over a debug
    // build's 20 MiB at rest.
    assert!(peak < 80.0, "gateway peak RSS {peak:.1} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_outlives_the_header_timeout_but_not_the_idle_timeout() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_gw, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__HEADER_READ_TIMEOUT_SECONDS", "1".into()),
            ("GATEWAY__IDLE_TIMEOUT_SECONDS", "4".into()),
        ],
    )
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let get = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(get).await.expect("write");
    assert_eq!(read_response(&mut s).await.expect("first").0, 200);
    // Idle past the header timeout, within the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(get).await.expect("write");
    assert_eq!(read_response(&mut s).await.expect("second").0, 200);
    // Idle past the idle timeout: closed by the server.
    let idle = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    assert!(
        idle.elapsed() >= Duration::from_secs(3),
        "{:?}",
        idle.elapsed()
    );

    // A head that starts and stops is cut off at the header timeout.
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(get).await.expect("write");
    assert_eq!(read_response(&mut s).await.expect("first").0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"GET /openapi.json HTTP/1.1\r\nHost:")
        .await
        .expect("write");
    let began = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    assert!(
        began.elapsed() < Duration::from_millis(3500),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_and_large_heads_get_431() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_gw, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__MAX_WAIT_SECONDS", "1".into()),
            ("GATEWAY__DTS_TIMEOUT_MS", "1000".into()),
            ("GATEWAY__REQUEST_TIMEOUT_SECONDS", "4".into()),
        ],
    )
    .await;
    // A body sent a byte a second.
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"POST /api/process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{")
        .await
        .expect("write");
    let began = Instant::now();
    let (mut reader, mut writer) = s.split();
    let feeder = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = writer.write_all(b" ").await;
        }
    };
    let answer = tokio::select! {
        a = read_response(&mut reader) => a,
        _ = feeder => None,
    };
    let (status, headers, body) = answer.expect("an answer before the body ends");
    assert_eq!(status, 408, "{body}");
    let v = problem(&headers, &body, 408);
    assert_eq!(v["type"], "/problems/request-timeout");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );

    // A head over max_header_bytes (16 KiB): a problem.
    let pad = "a".repeat(20_000);
    let (status, headers, v) =
        http_with_headers(port, "GET", "/api/operations", None, &[("x-pad", &pad)]).await;
    assert_eq!(status, 431);
    assert_eq!(
        hdr(&headers, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(v["type"], "/problems/headers-too-large", "{v}");
    // Far over it (a 300 KB tracestate): refused before any handler, and nothing is started.
    let huge = "k=".to_string() + &"v".repeat(300_000);
    let body = json!({"name": "huge", "delay_seconds": 0}).to_string();
    let (status, _, _) = http_with_headers(
        port,
        "POST",
        "/api/process",
        Some(&body),
        &[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", &huge),
        ],
    )
    .await;
    assert_eq!(status, 431);
    let (status, _, page) = http(port, "GET", "/api/operations", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["value"].as_array().map(Vec::len), Some(0), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_and_request_limits_the_answer_is_503_with_retry_after() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_gw, port, admin) = gateway(
        &endpoint,
        &[
            ("GATEWAY__MAX_CONNECTIONS", "12".into()),
            ("GATEWAY__MAX_CONCURRENT_REQUESTS", "4".into()),
            ("GATEWAY__MAX_WAIT_SECONDS", "20".into()),
        ],
    )
    .await;
    let id = start(port).await;
    // Four long polls hold the four request places.
    let mut polls = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(format!("GET /api/status/{id}?wait=20 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        polls.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&metrics(admin).await, "gateway_long_polls_waiting") < 4.0 {
        assert!(Instant::now() < deadline, "the polls never waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, headers, v) = http(port, "GET", &format!("/api/status/{id}"), None).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["type"], "/problems/overloaded", "{v}");
    assert!(hdr(&headers, "retry-after").is_some(), "{headers:?}");

    // Idle connections up to the cap (12, four of them the polls): the next one is refused.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (status, headers, body) = read_response(&mut s).await.expect("a refusal");
    assert_eq!(status, 503);
    let v = problem(&headers, &body, 503);
    assert_eq!(v["type"], "/problems/too-many-connections");
    assert!(hdr(&headers, "retry-after").is_some());
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    assert!(value(&metrics(admin).await, "gateway_connections_refused_total") >= 1.0);

    // Places free again: served.
    drop(idle);
    drop(polls);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, v) = http(port, "GET", &format!("/api/status/{id}"), None).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {status} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_long_polls_past_the_caps_are_answered_at_once_and_starts_go_on() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const POLLS: usize = 10_000;
    let files = allow_open_files(POLLS as u64 + 1_024);
    assert!(
        files >= POLLS as u64 + 1_024,
        "this machine's hard open-file limit ({files}) is below what {POLLS} connections need"
    );
    let (_scheduler, endpoint) = local_scheduler().await;
    // The default limits: 4,096 connections, 2,048 requests in progress, 1,000 long polls.
    let (gw, port, admin) = gateway(&endpoint, &[]).await;
    // 100 operations that stay pending (no worker), 100 polls on each.
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(start(port).await);
    }
    let began = Instant::now();
    let polls: Vec<_> = (0..POLLS)
        .map(|i| {
            let path = format!("/api/status/{}?wait=30", ids[i % ids.len()]);
            tokio::spawn(async move {
                let (status, headers, v) = http(port, "GET", &path, None).await;
                (
                    status,
                    hdr(&headers, "retry-after").is_some(),
                    v,
                    began.elapsed(),
                )
            })
        })
        .collect();
    // The long-poll cap waits; everything else is answered at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while polls.iter().filter(|p| p.is_finished()).count() < POLLS - 1_000 {
        assert!(
            Instant::now() < deadline,
            "polls past the caps were not answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let burst = began.elapsed();
    // The last of the polls within the cap may still be reading the status before they wait.
    while value(&metrics(admin).await, "gateway_long_polls_waiting") < 1_000.0 {
        assert!(Instant::now() < deadline, "the cap was never filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New starts are answered while they wait.
    let t = Instant::now();
    for _ in 0..5 {
        start(port).await;
    }
    let starts = t.elapsed();
    let (peak, _) = rss_mib(gw.id().expect("pid"));
    // Done: cancel the operations, which ends the waiting polls.
    for id in &ids {
        let (status, _, v) =
            http(port, "POST", &format!("/api/operations/{id}/cancel"), None).await;
        assert_eq!(status, 202, "{v}");
    }
    let mut answers = std::collections::BTreeMap::new();
    for p in polls {
        let (status, retry_after, v, took) = p.await.expect("poll");
        let kind = match (status, v["status"].as_str(), v["type"].as_str()) {
            (200, Some("Canceled"), _) => "waited, then Canceled",
            (200, Some(_), _) => {
                assert!(took < Duration::from_secs(30) && retry_after, "{v}");
                "200 at once"
            }
            (503, _, Some(t)) => {
                assert!(retry_after, "{v}");
                if t.ends_with("too-many-connections") {
                    "503 too many connections"
                } else {
                    "503 too many requests"
                }
            }
            _ => panic!("unexpected answer {status}: {v}"),
        };
        *answers.entry(kind).or_insert(0) += 1;
    }
    println!(
        "{POLLS} long polls: {answers:?}; the burst answered in {burst:?}; 5 starts took {starts:?}; gateway peak RSS {peak:.1} MiB"
    );
    assert_eq!(answers.get("waited, then Canceled"), Some(&1_000));
    assert!(starts < Duration::from_secs(10), "{starts:?}");
    // Bounded by the caps (4,096 connections, 2,048 requests in progress), under the chart's
    // memory limit (128 MiB), even for this debug build (a release build needs less).
    assert!(peak < 128.0, "gateway peak RSS {peak:.1} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_headers_reach_the_operation_only_in_their_w3c_form() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_gw, port, _) = gateway(
        &endpoint,
        // Traces are made (nothing listens there: spans are dropped, their ids still exist).
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        )],
    )
    .await;
    // A worker, so that each operation runs and its history (with the trace context it was
    // started with) is written.
    let worker_admin = free_port();
    let _worker = spawn(
        "worker",
        &[
            ("ENDPOINT", endpoint.clone()),
            ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{worker_admin}")),
        ],
        worker_admin,
    )
    .await;
    let conn = durabletask::Connection::connect(
        durabletask::ConnectionOptions::new(&endpoint, "default").expect("opts"),
    )
    .await
    .expect("connect");
    let client = durabletask::Client::new(&conn);
    let persisted = |id: String| {
        let client = client.clone();
        async move {
            let (status, _, v) =
                http(port, "GET", &format!("/api/status/{id}?wait=20"), None).await;
            assert_eq!(v["status"], "Succeeded", "{status} {v}");
            let history = client
                .get_history(&id)
                .await
                .expect("history")
                .expect("instance");
            history
                .into_iter()
                .find_map(|e| match e.event_type {
                    Some(durabletask::proto::history_event::EventType::ExecutionStarted(s)) => {
                        Some(s.parent_trace_context)
                    }
                    _ => None,
                })
                .expect("ExecutionStarted")
        }
    };
    let body = json!({"name": "traced", "delay_seconds": 0}).to_string();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // 60 members of about 100 characters: 6 KB, under the head limit.
    let state: Vec<String> = (0..60)
        .map(|i| format!("v{i:02}={}", "x".repeat(96)))
        .collect();
    let state = state.join(",");
    let (status, _, v) = http_with_headers(
        port,
        "POST",
        "/api/process",
        Some(&body),
        &[("traceparent", parent), ("tracestate", &state)],
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let tc = persisted(v["id"].as_str().expect("id").to_string())
        .await
        .expect("a trace context");
    assert!(
        tc.trace_parent.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{tc:?}"
    );
    let kept = tc.trace_state.unwrap_or_default();
    assert!(
        !kept.is_empty() && kept.len() <= 512,
        "{} characters",
        kept.len()
    );
    assert!(kept.split(',').count() <= 32);
    assert!(kept.starts_with("v00="), "{kept}");

    // An invalid traceparent: a fresh trace, and its tracestate goes with it.
    let (status, headers, v) = http_with_headers(
        port,
        "POST",
        "/api/process",
        Some(&body),
        &[("traceparent", "00-not-a-trace-01"), ("tracestate", "a=1")],
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let fresh = hdr(&headers, "traceresponse").expect("traceresponse");
    let fresh_trace = fresh.split('-').nth(1).expect("trace id").to_string();
    assert_eq!(fresh_trace.len(), 32, "{fresh}");
    let tc = persisted(v["id"].as_str().expect("id").to_string())
        .await
        .expect("a trace context");
    assert!(tc.trace_parent.contains(&fresh_trace), "{tc:?} vs {fresh}");
    assert!(!tc.trace_parent.contains("not-a-trace"));
    assert_eq!(tc.trace_state.as_deref().unwrap_or(""), "", "{tc:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_has_its_own_rate_and_past_it_gets_429() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let sha = |k: &str| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, k.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let dir = std::env::temp_dir().join(format!("rate-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys = dir.join("keys.json");
    std::fs::write(
        &keys,
        json!({"keys": [
            {"id": "a", "name": "A", "role": "user", "sha256": sha("key-a-0123456789")},
            {"id": "b", "name": "B", "role": "user", "sha256": sha("key-b-0123456789")},
        ]})
        .to_string(),
    )
    .expect("keys");
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_gw, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__AUTH", "api_key".into()),
            (
                "GATEWAY__ID_SECRET",
                "an id secret of at least 32 characters".into(),
            ),
            ("GATEWAY__API_KEYS_FILE", keys.display().to_string()),
            // One request a second, three at once.
            ("GATEWAY__RATE_LIMIT_PER_SECOND", "1".into()),
            ("GATEWAY__RATE_LIMIT_BURST", "3".into()),
        ],
    )
    .await;
    let get = |key: &'static str| async move {
        http_with_headers(port, "GET", "/api/operations", None, &[("x-api-key", key)]).await
    };
    for left in [2, 1, 0] {
        let (status, headers, v) = get("key-a-0123456789").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            hdr(&headers, "ratelimit-policy"),
            Some(r#""per-caller";q=3;w=3"#)
        );
        let r = hdr(&headers, "ratelimit").expect("RateLimit");
        assert!(r.starts_with(&format!(r#""per-caller";r={left};"#)), "{r}");
    }
    let (status, headers, v) = get("key-a-0123456789").await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["type"], "/problems/rate-limited");
    let retry: u64 = hdr(&headers, "retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(
        hdr(&headers, "ratelimit")
            .expect("RateLimit")
            .contains("r=0")
    );
    // Another caller is not held back by the first.
    let (status, _, v) = get("key-b-0123456789").await;
    assert_eq!(status, 200, "{v}");
    // After Retry-After, the first may call again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, _, v) = get("key-a-0123456789").await;
    assert_eq!(status, 200, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
