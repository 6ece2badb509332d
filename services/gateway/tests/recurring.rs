//! Recurring operations over HTTP, end to end: a gateway process with API keys, a local
//! scheduler and a worker (which runs the schedule entity). A recurring operation runs at its
//! interval, pauses and resumes, shows its runs in its caller's list, is no one else's business,
//! and refuses what it must.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::oidc::sha256_hex;

mod common;
use common::*;

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef";
const OPS: &str = "ops-key-0123456789abcdef";

struct Setup {
    _scheduler: test_support::in_process::Running,
    _worker: test_support::in_process::Running,
    _gateway: tokio::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn setup() -> Setup {
    let dir =
        std::env::temp_dir().join(format!("recurring-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys_file = dir.join("api-keys.json");
    std::fs::write(
        &keys_file,
        json!({"keys": [
            {"id": "alice", "name": "Alice", "role": "user", "sha256": sha256_hex(ALICE)},
            {"id": "bob", "name": "Bob", "role": "user", "sha256": sha256_hex(BOB)},
            {"id": "ops", "name": "Operations", "role": "admin", "sha256": sha256_hex(OPS)},
        ]})
        .to_string(),
    )
    .expect("keys file");
    let (scheduler, endpoint) = local_scheduler().await;
    let worker = worker_in_process(&endpoint);
    let (gateway, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__AUTH", "api_key".into()),
            (
                "GATEWAY__ID_SECRET",
                "id secret for the tests, at least 32 characters".into(),
            ),
            ("GATEWAY__API_KEYS_FILE", keys_file.display().to_string()),
            ("GATEWAY__MIN_RECURRING_INTERVAL_SECONDS", "1".into()),
            ("GATEWAY__MAX_RECURRING_PER_CALLER", "2".into()),
        ],
    )
    .await;
    Setup {
        _scheduler: scheduler,
        _worker: worker,
        _gateway: gateway,
        port,
        dir,
    }
}

async fn call(
    port: u16,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, Value) {
    http_with_headers(port, method, path, body, &[("x-api-key", key)]).await
}

/// The path part of an absolute or relative link.
fn path_of(link: &str) -> String {
    match link.find("/api/") {
        Some(i) => link[i..].to_string(),
        None => link.to_string(),
    }
}

/// The runs of recurring operation `id` in its caller's list.
async fn runs(port: u16, key: &str, id: &str) -> Vec<Value> {
    let (status, _, v) = call(
        port,
        key,
        "GET",
        &format!("/api/operations?recurring={id}&page_size=1000"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["value"].as_array().expect("value").clone()
}

async fn runs_until(port: u16, key: &str, id: &str, ok: impl Fn(usize) -> bool) -> usize {
    let mut n = 0;
    for _ in 0..300 {
        n = runs(port, key, id).await.len();
        if ok(n) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("recurring operation {id} has {n} runs");
}

/// The runs do not grow for 2.5 s (after a grace for a run that had started).
async fn runs_stay(port: u16, key: &str, id: &str) -> usize {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = runs(port, key, id).await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runs(port, key, id).await.len(), before, "a run started");
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_operation_runs_pauses_resumes_and_is_its_callers_alone() {
    let s = setup().await;
    let port = s.port;
    let body = r#"{"name":"nightly","delay_seconds":0,"interval_seconds":1}"#;
    let (status, headers, v) = call(port, ALICE, "POST", "/api/recurring", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(
        path_of(hdr(&headers, "location").expect("Location")),
        format!("/api/recurring/{id}")
    );
    assert_eq!(v["status"], "Active");
    assert_eq!(
        (v["name"].as_str(), v["interval_seconds"].as_u64()),
        (Some("nightly"), Some(1))
    );

    // Runs at its interval; each run an operation in Alice's list, which succeeds.
    runs_until(port, ALICE, &id, |n| n >= 2).await;
    let (_, _, all) = call(port, ALICE, "GET", "/api/operations?page_size=1000", None).await;
    let listed: Vec<&str> = all["value"]
        .as_array()
        .expect("value")
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    for run in runs(port, ALICE, &id).await {
        assert_eq!(run["name"], "process_request");
        assert!(
            listed.contains(&run["id"].as_str().expect("id")),
            "{run} not in {all}"
        );
    }
    let mut succeeded = false;
    for _ in 0..100 {
        let (_, _, doc) = call(port, ALICE, "GET", &format!("/api/recurring/{id}"), None).await;
        let last = doc["links"]["last_operation"].as_str().expect("a last run");
        let (status, _, op) = call(port, ALICE, "GET", &path_of(last), None).await;
        assert_eq!(status, 200, "{op}");
        if op["status"] == "Succeeded" {
            succeeded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(succeeded, "no run of {id} succeeded");

    // Bob sees none of it, and can change none of it.
    for (method, path) in [
        ("GET", format!("/api/recurring/{id}")),
        ("POST", format!("/api/recurring/{id}/pause")),
        ("POST", format!("/api/recurring/{id}/resume")),
        ("DELETE", format!("/api/recurring/{id}")),
    ] {
        let (status, _, v) = call(port, BOB, method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
        assert_eq!(v["type"], "/problems/recurring-not-found");
    }
    let (_, _, v) = call(port, BOB, "GET", "/api/recurring", None).await;
    assert_eq!(v["value"], json!([]), "{v}");
    let (_, _, v) = call(port, BOB, "GET", "/api/operations?page_size=1000", None).await;
    assert_eq!(v["value"], json!([]), "{v}");
    let (status, _, _) = call(
        port,
        BOB,
        "GET",
        &format!("/api/operations?recurring={id}"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    // An admin sees it.
    let (_, _, v) = call(port, OPS, "GET", "/api/recurring", None).await;
    assert!(
        v["value"]
            .as_array()
            .expect("value")
            .iter()
            .any(|r| r["id"] == id.as_str()),
        "{v}"
    );

    // Paused: no run starts; pausing again is a conflict.
    let (status, _, v) = call(
        port,
        ALICE,
        "POST",
        &format!("/api/recurring/{id}/pause"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["status"].as_str(), &v["next_run_at"]),
        (Some("Paused"), &Value::Null)
    );
    let (status, _, v) = call(
        port,
        ALICE,
        "POST",
        &format!("/api/recurring/{id}/pause"),
        None,
    )
    .await;
    assert_eq!(
        (status, v["type"].as_str()),
        (409, Some("/problems/recurring-conflict"))
    );
    let paused_at = runs_stay(port, ALICE, &id).await;
    // Resumed: runs again.
    let (status, _, v) = call(
        port,
        ALICE,
        "POST",
        &format!("/api/recurring/{id}/resume"),
        None,
    )
    .await;
    assert_eq!((status, v["status"].as_str()), (200, Some("Active")), "{v}");
    let (status, _, _) = call(
        port,
        ALICE,
        "POST",
        &format!("/api/recurring/{id}/resume"),
        None,
    )
    .await;
    assert_eq!(status, 409);
    runs_until(port, ALICE, &id, |n| n > paused_at).await;

    // At most two each: the third is refused until one is deleted.
    let (status, _, second) = call(port, ALICE, "POST", "/api/recurring", Some(body)).await;
    assert_eq!(status, 201, "{second}");
    let (status, headers, v) = call(port, ALICE, "POST", "/api/recurring", Some(body)).await;
    assert_eq!(
        (status, v["type"].as_str()),
        (429, Some("/problems/too-many-recurring")),
        "{v}"
    );
    assert!(hdr(&headers, "retry-after").is_some());
    let (_, _, v) = call(port, ALICE, "GET", "/api/recurring", None).await;
    assert_eq!(v["value"].as_array().expect("value").len(), 2, "{v}");
    // Bob has his own two.
    let (status, _, _) = call(port, BOB, "POST", "/api/recurring", Some(body)).await;
    assert_eq!(status, 201);

    // Deleted: gone, and no run starts after.
    let second = second["id"].as_str().expect("id");
    for rid in [id.as_str(), second] {
        let (status, _, v) = call(
            port,
            ALICE,
            "DELETE",
            &format!("/api/recurring/{rid}"),
            None,
        )
        .await;
        assert_eq!(status, 204, "{v}");
    }
    let (status, _, _) = call(port, ALICE, "GET", &format!("/api/recurring/{id}"), None).await;
    assert_eq!(status, 404);
    let (status, _, _) = call(port, ALICE, "DELETE", &format!("/api/recurring/{id}"), None).await;
    assert_eq!(status, 404);
    runs_stay(port, ALICE, &id).await;
    let (status, _, v) = call(port, ALICE, "POST", "/api/recurring", Some(body)).await;
    assert_eq!(status, 201, "room again after deleting: {v}");
}

/// A create under `Idempotency-Key` `idem`.
async fn create_keyed(
    port: u16,
    key: &str,
    idem: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, Value) {
    http_with_headers(
        port,
        "POST",
        "/api/recurring",
        Some(body),
        &[("x-api-key", key), ("idempotency-key", idem)],
    )
    .await
}

/// A caller's recurring operations' ids, sorted.
async fn ids_of(port: u16, key: &str) -> Vec<String> {
    let (status, _, v) = call(port, key, "GET", "/api/recurring", None).await;
    assert_eq!(status, 200, "{v}");
    let mut ids: Vec<String> = v["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_with_an_idempotency_key_makes_one_recurring_operation() {
    let s = setup().await;
    let port = s.port;
    // Nanoseconds in the start: the schedule keeps microseconds, and a retry is still the same.
    let start = "2031-01-02T03:04:05.123456789Z";
    let body = format!(
        r#"{{"name":"weekly","delay_seconds":0,"interval_seconds":604800,"start_at":"{start}"}}"#
    );
    let (status, headers, first) = create_keyed(port, ALICE, "weekly-1", &body).await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().expect("id").to_string();
    assert_eq!(
        path_of(hdr(&headers, "location").expect("Location")),
        format!("/api/recurring/{id}")
    );

    // The retry: the same one, and still one.
    let (status, headers, again) = create_keyed(port, ALICE, "weekly-1", &body).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(
        again["created_at"], first["created_at"],
        "not made again: {again}"
    );
    assert_eq!(
        path_of(hdr(&headers, "location").expect("Location")),
        format!("/api/recurring/{id}")
    );
    assert_eq!(ids_of(port, ALICE).await, vec![id.clone()]);

    // The key with another body: refused, and the first is as it was.
    let other = body.replace("weekly", "daily");
    let (status, _, v) = create_keyed(port, ALICE, "weekly-1", &other).await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["type"]
            .as_str()
            .expect("type")
            .ends_with("/idempotency-key-reused"),
        "{v}"
    );
    let (_, _, doc) = call(port, ALICE, "GET", &format!("/api/recurring/{id}"), None).await;
    assert_eq!(doc["name"], "weekly", "{doc}");
    assert_eq!(ids_of(port, ALICE).await, vec![id.clone()]);

    // Bob's same key is Bob's own.
    let (status, _, bobs) = create_keyed(port, BOB, "weekly-1", &body).await;
    assert_eq!(status, 201, "{bobs}");
    assert_ne!(bobs["id"], first["id"]);
    assert_eq!(ids_of(port, ALICE).await, vec![id.clone()]);

    // At the cap (2), a retry still finds its own; a new key is refused.
    let (status, _, unkeyed) = call(port, ALICE, "POST", "/api/recurring", Some(&body)).await;
    assert_eq!(status, 201, "{unkeyed}");
    assert_ne!(unkeyed["id"], first["id"], "no key: a new one");
    let (status, _, again) = create_keyed(port, ALICE, "weekly-1", &body).await;
    assert_eq!((status, &again["id"]), (201, &first["id"]), "{again}");
    let (status, headers, v) = create_keyed(port, ALICE, "weekly-2", &body).await;
    assert_eq!(status, 429, "{v}");
    assert!(hdr(&headers, "retry-after").is_some());
    assert_eq!(ids_of(port, ALICE).await.len(), 2);

    // After a delete, the key makes it again.
    let (status, _, v) = call(port, ALICE, "DELETE", &format!("/api/recurring/{id}"), None).await;
    assert_eq!(status, 204, "{v}");
    let (status, _, made) = create_keyed(port, ALICE, "weekly-1", &other).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(
        (made["id"].as_str(), made["name"].as_str()),
        (Some(id.as_str()), Some("daily"))
    );

    // A malformed key is a 400, and makes nothing.
    let (status, _, v) = create_keyed(port, ALICE, &"k".repeat(256), &body).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["type"]
            .as_str()
            .expect("type")
            .ends_with("/invalid-idempotency-key"),
        "{v}"
    );
    assert_eq!(ids_of(port, ALICE).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_recurring_input_gets_a_problem_naming_the_field_and_creates_nothing() {
    let s = setup().await;
    let port = s.port;
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    for (body, field) in [
        (
            json!({"name": "x", "delay_seconds": 0, "interval_seconds": 0}),
            "interval_seconds",
        ),
        (
            json!({"name": "x", "delay_seconds": 0, "interval_seconds": 0.5}),
            "interval_seconds",
        ),
        (
            json!({"name": "x", "delay_seconds": 0, "interval_seconds": -5}),
            "interval_seconds",
        ),
        (
            json!({"name": "x", "delay_seconds": 0, "interval_seconds": 40_000_000}),
            "interval_seconds",
        ),
        (json!({"name": "x", "delay_seconds": 0}), "interval_seconds"),
        (
            json!({"name": "", "delay_seconds": 0, "interval_seconds": 5}),
            "name",
        ),
        (
            json!({"name": "x", "delay_seconds": 999_999, "interval_seconds": 5}),
            "delay_seconds",
        ),
        (
            json!({"name": "x", "delay_seconds": 0, "interval_seconds": 5, "start_at": "tomorrow"}),
            "start_at",
        ),
        (
            json!({"name": "x", "delay_seconds": 0, "interval_seconds": 5, "end_at": past}),
            "end_at",
        ),
        (
            json!({"name": "x", "delay_seconds": 0, "interval_seconds": 5, "start_at": later, "end_at": soon}),
            "end_at",
        ),
        (
            json!({"name": "x", "delay_seconds": 0, "interval_seconds": 5, "cron": "* * * * *"}),
            "cron",
        ),
    ] {
        let (status, _, v) = call(
            port,
            ALICE,
            "POST",
            "/api/recurring",
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(status, 422, "{body}: {v}");
        assert!(
            v["detail"].as_str().expect("detail").contains(field),
            "{body}: {v}"
        );
    }
    let (status, _, v) = call(port, ALICE, "POST", "/api/recurring", Some("{not json")).await;
    assert_eq!(status, 400, "{v}");
    let (_, _, v) = call(port, ALICE, "GET", "/api/recurring", None).await;
    assert_eq!(v["value"], json!([]), "nothing was created: {v}");
    for query in ["page_size=0", "page_size=1001", "colour=blue"] {
        let (status, _, v) =
            call(port, ALICE, "GET", &format!("/api/recurring?{query}"), None).await;
        assert_eq!(status, 400, "{query}: {v}");
    }
    // Ids that name nothing.
    for id in ["nope", "%ff", &"x".repeat(101)] {
        let (status, _, v) = call(port, ALICE, "GET", &format!("/api/recurring/{id}"), None).await;
        assert_eq!(status, 404, "{id}: {v}");
    }
}
