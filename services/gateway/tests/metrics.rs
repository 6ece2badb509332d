//! The gateway's `/metrics`: names, label sets, and counters that move when their event happens.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::{AppState, Settings, admin_app, app};
use tower::ServiceExt;

mod common;
use common::*;
use test_support::exposition::value;

async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    // Metrics are on the admin listener's router, not the public API's.
    let router = if uri == "/metrics" {
        admin_app(state.clone())
    } else {
        app(state.clone())
    };
    let resp = router
        .oneshot(req.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    (
        status,
        if uri == "/metrics" {
            format!("{ct}\n{text}")
        } else {
            text
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_their_events_and_labels_stay_bounded() {
    let (_sched, endpoint) = local_scheduler().await;
    let st = state_for(&endpoint, Settings::default()).await;
    let body = r#"{"name":"Ada","delay_seconds":60}"#;

    let (s, _) = send(&st, "GET", "/metrics", None, "").await;
    assert_eq!(s, StatusCode::OK);
    let (s, plain) = send(&st, "POST", "/api/process", None, body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{plain}");
    let (s, _) = send(&st, "POST", "/api/process", Some("k-1"), body).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, again) = send(&st, "POST", "/api/process", Some("k-1"), body).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let id = serde_json::from_str::<serde_json::Value>(&again).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (s, _) = send(
        &st,
        "POST",
        &format!("/api/operations/{id}/cancel"),
        None,
        "",
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = send(&st, "GET", "/api/status/does-not-exist", None, "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = send(&st, "GET", "/no/such/route", None, "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (_, text) = send(&st, "GET", "/metrics", None, "").await;
    // Without `Accept`, the classic text format (what curl and promtool read).
    assert!(
        text.starts_with("text/plain; version=0.0.4"),
        "{}",
        &text[..80.min(text.len())]
    );
    assert_eq!(value(&text, "gateway_operations_started_total"), 2.0);
    assert_eq!(value(&text, "gateway_operations_deduplicated_total"), 1.0);
    assert_eq!(value(&text, "gateway_operations_canceled_total"), 1.0);
    assert_eq!(
        value(
            &text,
            r#"gateway_http_requests_total{route="/api/process",method="POST",status="202"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_http_requests_total{route="/api/status/{id}",method="GET",status="404"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_http_request_duration_seconds_count{route="/api/process"}"#
        ),
        3.0
    );
    // Two fresh starts and one refused as a duplicate.
    assert_eq!(
        value(
            &text,
            r#"gateway_dts_rpc_duration_seconds_count{method="StartInstance"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_dts_rpc_errors_total{method="StartInstance",code="AlreadyExists"}"#
        ),
        1.0
    );
    assert!(
        !text.contains(r#"code="DeadlineExceeded""#),
        "no timeouts against a healthy scheduler:\n{text}"
    );
    assert!(text.contains(r#"gateway_build_info{version=""#), "{text}");
    assert!(value(&text, "process_resident_memory_bytes") > 1e6);
    // Never an operation id in a label.
    assert!(!text.contains(&id), "operation id leaked into labels");
    assert!(!text.contains("does-not-exist"));
}
