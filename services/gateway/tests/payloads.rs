//! Large payloads through the whole system: a gateway process and the worker, both on the claim
//! check in Azurite, and the local scheduler (whose payload limit is 1 MB). A 5 MB name goes in
//! through `POST /api/process`, the worker's 10 MB result comes out of `/api/result/{id}`,
//! streamed from the store.

use std::time::Duration;

use serde_json::Value;
use test_support::azurite::Azurite;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mb_input_and_its_10_mb_result_pass_through_the_gateway_and_the_worker() {
    let azurite = Azurite::start().await;
    let cs = azurite.connection_string();
    let (_scheduler, endpoint) = local_scheduler().await;
    let _worker = test_support::in_process::worker(
        &endpoint,
        &[
            ("WORKER__PAYLOAD_CONNECTION_STRING", cs.clone()),
            ("WORKER__PAYLOAD_CONTAINER", "system-payloads".into()),
        ],
    );
    let (_gateway, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__PAYLOAD_CONNECTION_STRING", cs.clone()),
            ("GATEWAY__PAYLOAD_CONTAINER", "system-payloads".into()),
            ("GATEWAY__MAX_BODY_BYTES", (6 * 1024 * 1024).to_string()),
            ("GATEWAY__MAX_NAME_CHARS", "5000000".into()),
        ],
    )
    .await;
    // No white space at either end: the gateway trims names.
    let unit = "Ada_Lovelace_1815-1852;";
    let name: String = unit.repeat(5_000_000 / unit.len() + 1)[..5_000_000].to_string();
    let body = serde_json::json!({"name": name, "delay_seconds": 0}).to_string();
    let (status, _, v) = http(port, "POST", "/api/process", Some(&body)).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();

    let mut answer = None;
    for _ in 0..300 {
        let (status, headers, body) =
            test_support::http::request(port, "GET", &format!("/api/result/{id}"), &[], "").await;
        if status == 200 {
            answer = Some((headers, body));
            break;
        }
        assert_eq!(status, 202, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (headers, body) = answer.expect("a result within 30 s");
    assert!(body.len() > 10_000_000, "{} bytes", body.len());
    let result: Value = serde_json::from_str(&body).expect("the result is JSON");
    // (Compared without printing megabytes when they differ.)
    assert!(
        result["name"].as_str() == Some(name.as_str()),
        "the name came back changed"
    );
    let message = format!("Hello {name}! Your request took 0 seconds.");
    assert!(
        result["message"].as_str() == Some(message.as_str()),
        "the message differs"
    );
    // Streamed from the store, not buffered: no length known up front.
    assert_eq!(
        hdr(&headers, "transfer-encoding"),
        Some("chunked"),
        "{headers:?}"
    );
    assert_eq!(hdr(&headers, "content-type"), Some("application/json"));
    // The status route still answers small.
    let (status, _, v) = http(port, "GET", &format!("/api/status/{id}"), None).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("Succeeded")),
        "{v}"
    );
    assert!(
        v.to_string().len() < 10_000,
        "the status document holds no payload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_result_without_a_store_configured_is_a_clear_problem() {
    let azurite = Azurite::start().await;
    let cs = azurite.connection_string();
    let (_scheduler, endpoint) = local_scheduler().await;
    // The worker stores results over 1 KiB; the gateway has no store.
    let _worker = test_support::in_process::worker(
        &endpoint,
        &[
            ("WORKER__PAYLOAD_CONNECTION_STRING", cs.clone()),
            ("WORKER__PAYLOAD_THRESHOLD_BYTES", "1024".into()),
        ],
    );
    let (_gateway, port, _) =
        gateway(&endpoint, &[("GATEWAY__MAX_NAME_CHARS", "4000".into())]).await;
    let body = serde_json::json!({"name": "n".repeat(3000), "delay_seconds": 0}).to_string();
    let (status, _, v) = http(port, "POST", "/api/process", Some(&body)).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let mut last = Value::Null;
    for _ in 0..300 {
        let (status, _, v) = http(port, "GET", &format!("/api/result/{id}"), None).await;
        if status != 202 {
            assert_eq!(status, 502, "{v}");
            last = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last["type"], "/problems/payload-store-unavailable",
        "{last}"
    );
    // Misconfigured: a gateway with a bad connection string does not start, naming the key.
    let out = tokio::process::Command::new(test_support::process::binary("gateway"))
        .env("GATEWAY__AUTH", "none")
        .env("GATEWAY__PAYLOAD_CONNECTION_STRING", "AccountName=only")
        .output()
        .await
        .expect("run the gateway");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("payload_connection_string"), "{stderr}");
}
