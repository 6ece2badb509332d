//! Router tests with `oneshot`, and an end-to-end run over real sockets with the local scheduler
//! and worker binaries.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::{AppState, Settings, admin_app, app};
use serde_json::Value;
use tower::ServiceExt;

mod common;
use common::*;

// ------------------------------------------------------------------ oneshot

#[tokio::test]
async fn bad_requests_get_specific_problems() {
    let st = offline_state().await;
    let json_ct = Some("application/json");
    let cases: Vec<(&str, Option<&str>, String, StatusCode, &str)> = vec![
        (
            "/api/process",
            json_ct,
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            "/api/process",
            json_ct,
            r#"{"name":"a"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "delay_seconds",
        ),
        (
            "/api/process",
            json_ct,
            r#"{"name":"a","delay_seconds":"x"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            "/api/process",
            json_ct,
            r#"{"name":"a","delay_seconds":1,"extra":true}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field",
        ),
        (
            "/api/process",
            json_ct,
            r#"{"name":"a","delay_seconds":-1}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid value",
        ),
        (
            "/api/process",
            json_ct,
            r#"{"name":"a","delay_seconds":99999}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 0 and 3600",
        ),
        (
            "/api/process",
            json_ct,
            r#"{"name":"  ","delay_seconds":1}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "must not be empty",
        ),
        (
            "/api/process",
            json_ct,
            format!(r#"{{"name":"{}","delay_seconds":1}}"#, "x".repeat(201)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most 200",
        ),
        (
            "/api/process",
            Some("text/plain"),
            r#"{"name":"a","delay_seconds":1}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            "/api/process",
            None,
            r#"{"name":"a","delay_seconds":1}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            "/api/process",
            json_ct,
            format!(r#"{{"name":"{}","delay_seconds":1}}"#, "x".repeat(20_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger",
        ),
        (
            "/api/start-operation",
            json_ct,
            r#"{"processing_time":"abc"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            "/api/start-operation",
            json_ct,
            r#"{"processing_time":-3}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 0",
        ),
    ];
    for (uri, ct, body, want, needle) in cases {
        let (status, h, v) = call(st.clone(), "POST", uri, ct, &body).await;
        assert_eq!(status, want, "{uri} {body:.60}: {v}");
        is_problem(&h, &v, want);
        assert!(
            v["detail"].as_str().unwrap_or_default().contains(needle),
            "{uri} {body:.60}: {v}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let st = offline_state().await;
    let (s, h, v) = call(st.clone(), "GET", "/nope", None, "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    is_problem(&h, &v, s);
    let (s, h, v) = call(st.clone(), "GET", "/api/process", None, "").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    is_problem(&h, &v, s);
    let (s, h, v) = call(st, "GET", "/api/status/bad%20id%0A", None, "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    is_problem(&h, &v, s);
}

#[tokio::test]
async fn scheduler_down_is_503_with_retry_after_within_the_deadline() {
    let st = offline_state().await;
    let started = std::time::Instant::now();
    let (s, h, v) = call(
        st.clone(),
        "POST",
        "/api/process",
        Some("application/json"),
        r#"{"name":"a","delay_seconds":1}"#,
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    is_problem(&h, &v, s);
    assert!(h.get(header::RETRY_AFTER).is_some());
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "bounded, not a hang"
    );
    let (s, _, _) = call(st.clone(), "GET", "/api/status/abc", None, "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let resp = admin_app(st)
        .oneshot(
            Request::builder()
                .uri("/readyz")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// A scheduler that accepts connections and never answers: the gateway's 503 is bounded by its
/// deadline (not a hang), and a start whose caller hung up is still seen through to its end
/// (the call is not reset half-way), which `gateway_dts_rpc_errors_total` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_caller_hangs_up_is_seen_through() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let st = state_for(
        &format!("http://127.0.0.1:{port}"),
        Settings {
            dts_timeout_ms: 400,
            ..Default::default()
        },
    )
    .await;
    let start = || {
        Request::builder()
            .method("POST")
            .uri("/api/process")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"name":"a","delay_seconds":1}"#))
            .expect("req")
    };
    // The caller gives up after 50 ms: its request future is dropped.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), app(st.clone()).oneshot(start())).await;
    assert!(
        gave_up.is_err(),
        "the silent scheduler cannot have answered"
    );
    // A caller that waits gets 503 at the deadline.
    let waited = std::time::Instant::now();
    let resp = app(st.clone()).oneshot(start()).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        waited.elapsed() < Duration::from_secs(5),
        "bounded, not a hang"
    );
    // Both calls ran to their deadline and were counted, the abandoned one included.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resp = admin_app(st)
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("resp");
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body")
            .to_vec(),
    )
    .expect("utf-8");
    let line = r#"gateway_dts_rpc_errors_total{method="StartInstance",code="DeadlineExceeded"}"#;
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .map(|v| v.trim().to_string());
    assert_eq!(count.as_deref(), Some("2"), "{text}");
    held.abort();
}

// ------------------------------------------------------------------ end to end

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_from_202_to_result_over_real_processes() {
    let (_sched, endpoint) = local_scheduler().await;
    let worker_admin = free_port();
    let _worker = spawn(
        "worker",
        &[
            ("ENDPOINT", endpoint.clone()),
            ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{worker_admin}")),
            ("HOSTNAME", "w1".into()),
        ],
        worker_admin,
    )
    .await;

    let gw_port = free_port();
    let state = state_for(
        &endpoint,
        Settings {
            public_base_url: Some(format!("http://localhost:{gw_port}")),
            ..Default::default()
        },
    )
    .await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", gw_port))
        .await
        .expect("bind");
    tokio::spawn(async move { axum::serve(listener, app(state)).await });

    // 202 with the monitor's absolute URL, Retry-After and links.
    let (s, h, v) = http(
        gw_port,
        "POST",
        "/api/process",
        Some(r#"{"name":"Ada","delay_seconds":2}"#),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 32);
    let status_url = format!("http://localhost:{gw_port}/api/status/{id}");
    assert_eq!(hdr(&h, "location"), Some(status_url.as_str()));
    assert_eq!(hdr(&h, "operation-location"), Some(status_url.as_str()));
    assert!(hdr(&h, "retry-after").is_some());
    assert_eq!(
        v["links"]["result"],
        format!("http://localhost:{gw_port}/api/result/{id}")
    );

    // Result before completion: 202 pointing at the monitor.
    let (s, h, _) = http(gw_port, "GET", &format!("/api/result/{id}"), None).await;
    assert_eq!(s, 202);
    assert_eq!(hdr(&h, "location"), Some(status_url.as_str()));

    // Poll the monitor until Succeeded; statuses seen are from the documented vocabulary.
    let mut seen = Vec::new();
    for _ in 0..200 {
        let (s, h, v) = http(gw_port, "GET", &format!("/api/status/{id}"), None).await;
        assert_eq!(s, 200, "{v}");
        let st = v["status"].as_str().expect("status").to_string();
        assert!(
            ["NotStarted", "Running", "Succeeded"].contains(&st.as_str()),
            "{v}"
        );
        if seen.last() != Some(&st) {
            seen.push(st.clone());
        }
        if st == "Succeeded" {
            assert!(
                hdr(&h, "retry-after").is_none(),
                "no Retry-After once terminal"
            );
            assert!(
                v["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{v}"
            );
            break;
        }
        assert!(hdr(&h, "retry-after").is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Succeeded"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s == "Running"),
        "the running state is observable: {seen:?}"
    );

    let (s, _, v) = http(gw_port, "GET", &format!("/api/result/{id}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["name"], "Ada");
    assert_eq!(v["worker"], "w1");

    // Cancel a long one: 202, then the monitor says Canceled and the result is a problem.
    let (_, _, v) = http(
        gw_port,
        "POST",
        "/api/process",
        Some(r#"{"name":"Long","delay_seconds":600}"#),
    )
    .await;
    let long = v["id"].as_str().expect("id").to_string();
    let (s, _, _) = http(
        gw_port,
        "POST",
        &format!("/api/operations/{long}/cancel"),
        None,
    )
    .await;
    assert_eq!(s, 202);
    let mut canceled = false;
    for _ in 0..200 {
        let (_, _, v) = http(gw_port, "GET", &format!("/api/status/{long}"), None).await;
        if v["status"] == "Canceled" {
            canceled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(canceled);
    let (s, h, v) = http(gw_port, "GET", &format!("/api/result/{long}"), None).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(hdr(&h, "content-type"), Some("application/problem+json"));
    let (s, _, _) = http(
        gw_port,
        "POST",
        &format!("/api/operations/{long}/cancel"),
        None,
    )
    .await;
    assert_eq!(s, 409, "cancelling a finished operation conflicts");

    // Unknown id: 404 problem.
    let (s, h, _) = http(gw_port, "GET", "/api/status/doesnotexist", None).await;
    assert_eq!(s, 404);
    assert_eq!(hdr(&h, "content-type"), Some("application/problem+json"));

    // The original sample's routes and field names.
    let (s, _, v) = http(
        gw_port,
        "POST",
        "/api/start-operation",
        Some(r#"{"processing_time":0}"#),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let op = v["operation_id"]
        .as_str()
        .expect("operation_id")
        .to_string();
    assert_eq!(v["status_url"], format!("/api/operations/{op}"));
    let mut done = Value::Null;
    for _ in 0..200 {
        let (_, _, v) = http(gw_port, "GET", &format!("/api/operations/{op}"), None).await;
        if v["status"] == "Completed" {
            done = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["result"]["operation_id"], op.as_str(), "{done}");
    assert_eq!(done["result"]["status"], "completed");
}

#[tokio::test]
async fn malformed_idempotency_key_is_a_400_problem() {
    let st = offline_state().await;
    let long_quoted = format!("\"{}\"", "k".repeat(254));
    for key in [
        "",
        &"k".repeat(256),
        "\"\"",
        "\"open",
        "a\"b",
        "\"a\\b\"",
        &long_quoted,
    ] {
        let req = Request::builder()
            .method("POST")
            .uri("/api/process")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(r#"{"name":"a","delay_seconds":1}"#))
            .expect("req");
        let resp = app(st.clone()).oneshot(req).await.expect("resp");
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "key of {} chars",
            key.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_starts_go_through_the_scheduler_not_gateway_memory() {
    let (_sched, endpoint) = local_scheduler().await;
    let post = |st: AppState, key: &'static str, body: &'static str| async move {
        let req = Request::builder()
            .method("POST")
            .uri("/api/process")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body))
            .expect("req");
        let resp = app(st).oneshot(req).await.expect("resp");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
        )
    };
    // Two gateway replicas: separate states, one scheduler.
    let a = state_for(&endpoint, Settings::default()).await;
    let b = state_for(&endpoint, Settings::default()).await;
    let body = r#"{"name":"Ada","delay_seconds":5}"#;
    let (s1, v1) = post(a.clone(), "order-42", body).await;
    let (s2, v2) = post(b.clone(), "order-42", body).await;
    assert_eq!(s1, StatusCode::ACCEPTED, "{v1}");
    assert_eq!(s2, StatusCode::ACCEPTED, "{v2}");
    assert_eq!(v1["id"], v2["id"], "a repeat returns the same operation");
    let (s3, v3) = post(b, "order-42", r#"{"name":"Bob","delay_seconds":5}"#).await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY, "{v3}");
    assert_eq!(v3["type"], "/problems/idempotency-key-reused");
    // The draft's structured-field form names the same key.
    let (s5, v5) = post(a.clone(), "\"order-42\"", body).await;
    assert_eq!(s5, StatusCode::ACCEPTED, "{v5}");
    assert_eq!(v5["id"], v1["id"], "a quoted key is the same key");
    let (_, v4) = post(a.clone(), "order-43", body).await;
    assert_ne!(v4["id"], v1["id"], "another key, another operation");
    // Exactly one instance exists for the key.
    let page = a
        .client
        .query_instances(durabletask::InstanceQuery {
            page_size: Some(100),
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(page.instances.len(), 2, "two keys, two instances");
}

#[tokio::test]
async fn bad_list_and_wait_queries_are_400_problems() {
    let st = offline_state().await;
    for uri in [
        "/api/operations?status=Bogus",
        "/api/operations?page_size=0",
        "/api/operations?page_size=5000",
        "/api/operations?created_from=yesterday",
        "/api/operations?colour=red",
        "/api/status/abc?wait=soon",
        "/api/status/abc?wait=-1",
        "/api/status/abc?wait=99999999999",
    ] {
        let (s, h, v) = call(st.clone(), "GET", uri, None, "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        is_problem(&h, &v, s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_and_long_poll_over_real_processes() {
    let sys = system(Settings::default()).await;
    let gw_port = sys.port;

    // Long poll: one request, answered when the operation ends (about 1 s), not at once.
    let (_, _, v) = http(
        gw_port,
        "POST",
        "/api/process",
        Some(r#"{"name":"Wait","delay_seconds":1}"#),
    )
    .await;
    let id = v["id"].as_str().expect("id").to_string();
    let started = std::time::Instant::now();
    let (s, h, v) = http(gw_port, "GET", &format!("/api/status/{id}?wait=20"), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "Succeeded", "{v}");
    assert!(hdr(&h, "retry-after").is_none());
    assert!(started.elapsed() < Duration::from_secs(15));

    let mut ids = vec![id];
    for i in 0..4 {
        let (_, _, v) = http(
            gw_port,
            "POST",
            "/api/process",
            Some(&format!(r#"{{"name":"n{i}","delay_seconds":0}}"#)),
        )
        .await;
        let id = v["id"].as_str().expect("id").to_string();
        let (_, _, v) = http(gw_port, "GET", &format!("/api/status/{id}?wait=20"), None).await;
        assert_eq!(v["status"], "Succeeded");
        ids.push(id);
    }
    // Page through the succeeded operations, 2 at a time, following nextLink.
    let mut seen = Vec::new();
    let mut next = Some("/api/operations?status=Succeeded&page_size=2".to_string());
    let mut pages = 0;
    while let Some(link) = next {
        let (s, _, v) = http(gw_port, "GET", &link, None).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        let items = v["value"].as_array().expect("value");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|o| o["id"].as_str().expect("id").to_string()),
        );
        assert!(items.iter().all(|o| o["status"] == "Succeeded"));
        // Links are absolute, built from the Host header.
        let origin = format!("http://localhost:{gw_port}");
        next = v["nextLink"].as_str().map(|l| {
            assert!(l.starts_with(&origin), "{l}");
            l[origin.len()..].to_string()
        });
        assert!(pages < 10, "paging must end");
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    assert_eq!(pages, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_come_from_host_or_trusted_forwarded_headers() {
    let (_sched, endpoint) = local_scheduler().await;
    let start = |st: AppState, extra: Vec<(&'static str, &'static str)>| async move {
        let mut req = Request::builder()
            .method("POST")
            .uri("/api/process")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::HOST, "gw.internal:8000");
        for (k, v) in extra {
            req = req.header(k, v);
        }
        let resp = app(st)
            .oneshot(
                req.body(Body::from(r#"{"name":"a","delay_seconds":1}"#))
                    .expect("req"),
            )
            .await
            .expect("resp");
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        resp.headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let untrusting = state_for(&endpoint, Settings::default()).await;
    let trusting = state_for(
        &endpoint,
        Settings {
            trust_forwarded: true,
            ..Default::default()
        },
    )
    .await;
    let fwd = vec![("forwarded", "for=1.2.3.4;proto=https;host=api.example.com")];
    let xfwd = vec![
        ("x-forwarded-host", "public.example.org"),
        ("x-forwarded-proto", "https"),
    ];
    let evil = vec![("forwarded", "host=\"evil.com/x?y\";proto=https")];

    assert!(
        start(untrusting.clone(), vec![])
            .await
            .starts_with("http://gw.internal:8000/api/status/")
    );
    assert!(
        start(untrusting, fwd.clone())
            .await
            .starts_with("http://gw.internal:8000/"),
        "proxy headers ignored unless trusted"
    );
    assert!(
        start(trusting.clone(), fwd)
            .await
            .starts_with("https://api.example.com/api/status/")
    );
    assert!(
        start(trusting.clone(), xfwd)
            .await
            .starts_with("https://public.example.org/api/status/")
    );
    assert!(
        start(trusting, evil)
            .await
            .starts_with("http://gw.internal:8000/"),
        "a malformed host is not used"
    );
}

/// A scheduler that answers every call, but refuses it (`UNIMPLEMENTED`, the generated server's
/// default): not transient, so the gateway answers `502` naming the call and the code, at once,
/// rather than `503` "did not answer in time".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_scheduler_is_a_502_that_says_what_happened() {
    struct Refuses;
    impl durabletask::proto::TaskHubSidecarService for Refuses {}
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(durabletask::proto::TaskHubSidecarServiceServer::new(
                Refuses,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let st = state_for(&format!("http://127.0.0.1:{port}"), Settings::default()).await;
    for (method, uri, body) in [
        ("GET", "/api/status/abc", ""),
        ("POST", "/api/process", r#"{"name":"a","delay_seconds":1}"#),
    ] {
        let (s, h, v) = call(st.clone(), method, uri, Some("application/json"), body).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{uri}: {v}");
        is_problem(&h, &v, s);
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("Unimplemented"), "{uri}: {v}");
        assert!(h.get(header::RETRY_AFTER).is_none(), "{uri}: {v}");
    }
    server.abort();
}

/// A value of the wrong type names the field and its allowed range, not only serde's words.
#[tokio::test]
async fn wrong_types_name_the_field_and_its_range() {
    let st = offline_state().await;
    let json_ct = Some("application/json");
    for (uri, body, want) in [
        (
            "/api/process",
            r#"{"name":"a","delay_seconds":"x"}"#,
            "`delay_seconds` must be an integer between 0 and 3600",
        ),
        (
            "/api/process",
            r#"{"name":7,"delay_seconds":1}"#,
            "`name` must be a string of 1 to 200 characters",
        ),
        (
            "/api/start-operation",
            r#"{"processing_time":"abc"}"#,
            "`processing_time` must be an integer between 0 and 3600",
        ),
    ] {
        let (s, h, v) = call(st.clone(), "POST", uri, json_ct, body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        is_problem(&h, &v, s);
        assert!(
            v["detail"].as_str().unwrap_or_default().contains(want),
            "{body}: {v}"
        );
    }
}

/// The history of a finished operation, in order, then its purge: `409` while an operation runs,
/// `204` once finished, and `404` for everything about it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_in_order_then_purge_over_real_processes() {
    let sys = system(Settings::default()).await;
    let gw_port = sys.port;

    let (s, _, v) = http(
        gw_port,
        "POST",
        "/api/process",
        Some(r#"{"name":"Ada","delay_seconds":0}"#),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let (_, _, v) = http(gw_port, "GET", &format!("/api/status/{id}?wait=20"), None).await;
    assert_eq!(v["status"], "Succeeded", "{v}");

    let (s, h, v) = http(
        gw_port,
        "GET",
        &format!("/api/operations/{id}/history"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(hdr(&h, "content-type"), Some("application/json"));
    assert_eq!(v["id"], id.as_str());
    let events = v["events"].as_array().expect("events");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let position = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(
        position("ExecutionStarted") < position("TaskScheduled")
            && position("TaskScheduled") < position("TaskCompleted")
            && position("TaskCompleted") < position("ExecutionCompleted"),
        "{kinds:?}"
    );
    let started = &events[position("ExecutionStarted")];
    assert_eq!(started["name"], "process_request");
    assert_eq!(started["data"]["name"], "Ada");
    let scheduled = &events[position("TaskScheduled")];
    assert_eq!(scheduled["name"], "simulate_long_running_activity");
    assert_eq!(
        events[position("TaskCompleted")]["scheduled_id"],
        scheduled["event_id"],
        "the completion answers its scheduling event"
    );
    let completed = &events[position("ExecutionCompleted")];
    assert_eq!(completed["runtime_status"], "COMPLETED");
    assert_eq!(completed["data"]["name"], "Ada");
    // Every event has its timestamp. A message keeps the time it was created (so an episode's
    // `OrchestratorStarted` can be later than the `ExecutionStarted` it delivers), but what
    // answers an event is never earlier than it.
    let at = |k: &str| {
        events[position(k)]["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("{k} has a timestamp"))
            .to_string()
    };
    assert!(
        events.iter().all(|e| e["timestamp"].is_string()),
        "{events:?}"
    );
    assert!(at("TaskCompleted") >= at("TaskScheduled"));
    assert!(at("ExecutionCompleted") >= at("ExecutionStarted"));

    // A running operation cannot be purged.
    let (_, _, v) = http(
        gw_port,
        "POST",
        "/api/process",
        Some(r#"{"name":"Long","delay_seconds":600}"#),
    )
    .await;
    let long = v["id"].as_str().expect("id").to_string();
    let (s, h, v) = http(gw_port, "DELETE", &format!("/api/operations/{long}"), None).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(hdr(&h, "content-type"), Some("application/problem+json"));
    let (s, _, _) = http(
        gw_port,
        "POST",
        &format!("/api/operations/{long}/cancel"),
        None,
    )
    .await;
    assert_eq!(s, 202);

    // The finished one is purged; afterwards nothing about it exists.
    let (s, _, v) = http(gw_port, "DELETE", &format!("/api/operations/{id}"), None).await;
    assert_eq!(s, 204, "{v}");
    for (method, path) in [
        ("GET", format!("/api/status/{id}")),
        ("GET", format!("/api/result/{id}")),
        ("GET", format!("/api/operations/{id}/history")),
        ("DELETE", format!("/api/operations/{id}")),
    ] {
        let (s, h, v) = http(gw_port, method, &path, None).await;
        assert_eq!(s, 404, "{method} {path}: {v}");
        assert_eq!(hdr(&h, "content-type"), Some("application/problem+json"));
    }
}

/// A scheduler at its limit answers `RESOURCE_EXHAUSTED`; the gateway turns it into a `503`
/// problem with `Retry-After` (transient: try again later), not a crash or a `502`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scheduler_is_a_503_with_retry_after() {
    let (_sched, endpoint) =
        local_scheduler_with(&[("LOCAL_SCHEDULER__MAX_INSTANCES", "1".into())]).await;
    let st = state_for(&endpoint, Settings::default()).await;
    let body = r#"{"name":"a","delay_seconds":1}"#;
    let (s, _, v) = call(
        st.clone(),
        "POST",
        "/api/process",
        Some("application/json"),
        body,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, h, v) = call(st, "POST", "/api/process", Some("application/json"), body).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    is_problem(&h, &v, s);
    assert_eq!(
        h.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("overloaded"),
        "{v}"
    );
}
