//! Completion callbacks against the real binaries (local scheduler, worker, gateway) and a
//! receiver in this test over real HTTP: one delivery per operation however it ends, signatures
//! the official Standard Webhooks library verifies, retries with the same `webhook-id`, a bound
//! on attempts, refusals at start, redirects not followed, and a worker killed mid-delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::in_process::Running;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use test_support::http::request;
use test_support::process::spawn;
use tokio::sync::Notify;

mod common;
use common::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone)]
struct Delivery {
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

/// What the receiver got, and how it answers: `/ok` 200; `/flaky` 500 twice, then 200;
/// `/silent` never; `/gone` 410; `/redirect` 302 to `redirect_to`; `/hold` keeps its first
/// request until `release`, then 200; `/endless` 200 with a body that never ends.
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Delivery>>,
    redirect_to: Mutex<String>,
    held: Notify,
    release: Notify,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let seen = {
        let mut got = r.got.lock().expect("got");
        got.push(Delivery {
            path: path.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body,
        });
        got.iter().filter(|d| d.path == path).count()
    };
    match path.as_str() {
        "flaky" if seen <= 2 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "silent" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        "gone" => StatusCode::GONE.into_response(),
        "endless" => {
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
            let body = futures::stream::repeat_with(move || {
                Ok::<_, std::convert::Infallible>(chunk.clone())
            });
            (StatusCode::OK, axum::body::Body::from_stream(body)).into_response()
        }
        "redirect" => (
            StatusCode::FOUND,
            [("location", r.redirect_to.lock().expect("to").clone())],
        )
            .into_response(),
        "hold" if seen == 1 => {
            r.held.notify_one();
            r.release.notified().await;
            StatusCode::OK.into_response()
        }
        _ => StatusCode::OK.into_response(),
    }
}

async fn receiver(addr: &str) -> (Arc<Receiver>, u16) {
    let r = Arc::new(Receiver::default());
    let listener = tokio::net::TcpListener::bind((addr, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new()
        .route("/{path}", axum::routing::post(receive))
        .with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, port)
}

impl Receiver {
    fn on(&self, path: &str) -> Vec<Delivery> {
        self.got
            .lock()
            .expect("got")
            .iter()
            .filter(|d| d.path == path)
            .cloned()
            .collect()
    }
}

/// What the tests' workers deliver callbacks with: quick retries, loopback receivers.
fn callback_env<'a>(extra: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
    let mut env = vec![
        ("WORKER__CALLBACK_SECRET", SECRET.into()),
        ("WORKER__CALLBACK_ALLOW_HTTP", "true".into()),
        ("WORKER__CALLBACK_ALLOWED_NETWORKS", "127.0.0.1/32".into()),
        ("WORKER__CALLBACK_MAX_ATTEMPTS", "3".into()),
        ("WORKER__CALLBACK_FIRST_RETRY_MS", "200".into()),
        ("WORKER__CALLBACK_MAX_RETRY_MS", "400".into()),
        ("WORKER__CALLBACK_ATTEMPT_TIMEOUT_MS", "1000".into()),
        ("WORKER__CALLBACK_POLL_MAX_MS", "300".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

/// A worker in this process, and its admin port.
async fn worker_with(endpoint: &str, extra: &[(&str, &str)]) -> (Running, u16) {
    let worker = test_support::in_process::worker(endpoint, &callback_env(extra));
    let admin = worker.admin.port();
    (worker, admin)
}

/// A worker process (to be killed), and its admin port.
async fn worker_process(endpoint: &str) -> (tokio::process::Child, u16) {
    let admin = free_port();
    let mut env = vec![
        ("ENDPOINT", endpoint.to_string()),
        ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
    ];
    env.extend(callback_env(&[]));
    (spawn("worker", &env, admin).await, admin)
}

async fn callback_gateway(endpoint: &str) -> (tokio::process::Child, u16) {
    let (child, port, _) = gateway(
        endpoint,
        &[
            ("GATEWAY__CALLBACK_ALLOW_HTTP", "true".into()),
            ("GATEWAY__CALLBACK_ALLOWED_NETWORKS", "127.0.0.1/32".into()),
        ],
    )
    .await;
    (child, port)
}

async fn start_with(port: u16, path: &str, body: &str, callback: &str) -> (u16, Value) {
    let (status, _, text) = request(
        port,
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Callback-Url", callback),
        ],
        body,
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn started(port: u16, body: &str, callback: &str) -> String {
    let (status, v) = start_with(port, "/api/process", body, callback).await;
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().expect("id").to_string()
}

/// Waits until `path` has received `n` requests.
async fn wait_for(r: &Receiver, path: &str, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    loop {
        let got = r.on(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {} of {n} requests after {within:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The operation's status document once its callback's delivery has settled.
async fn settled(port: u16, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, v) = http(port, "GET", &format!("/api/status/{id}"), None).await;
        let state = v["callback"]["state"].as_str().unwrap_or("").to_string();
        if state == "delivered" || state == "failed" {
            return v;
        }
        assert!(Instant::now() < deadline, "never settled: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a Python script with `input` on its stdin: (success, stdout, stderr).
async fn python(script: &str, input: &Value) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(test_support::python::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.to_string().as_bytes())
        .await
        .expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("python ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Verifies a delivery with the official Standard Webhooks library (PyPI `standardwebhooks`).
async fn verify_with_standard_webhooks(d: &Delivery) -> Result<(), String> {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
d = json.load(sys.stdin)
Webhook(d["secret"]).verify(d["body"], d["headers"])
"#;
    let input = json!({"secret": SECRET, "body": d.body, "headers": d.headers});
    match python(script, &input).await {
        (true, _, _) => Ok(()),
        (false, _, err) => Err(err),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signed_event_per_operation_whether_it_succeeds_fails_or_is_canceled() {
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_worker, worker_admin) = worker_with(&endpoint, &[]).await;
    let (_gateway, port) = callback_gateway(&endpoint).await;
    let (r, rport) = receiver("127.0.0.1").await;
    let url = format!("http://127.0.0.1:{rport}/ok");

    let succeeded = started(port, r#"{"name":"Ada","delay_seconds":0}"#, &url).await;
    // No input the gateway accepts makes an operation fail, so this one is started as the
    // gateway starts one, straight on the scheduler: the original sample's orchestration with
    // a negative processing time (its activity fails), and its callback instance beside it.
    let failed = "failing-operation-0001".to_string();
    let client = durabletask::Client::new(
        &durabletask::Connection::connect(
            durabletask::ConnectionOptions::new(&endpoint, "default").expect("options"),
        )
        .await
        .expect("connect"),
    );
    client
        .schedule_new_orchestration(
            contract::SAMPLE_ORCHESTRATION,
            &json!({"operation_id": failed, "processing_time": -1}),
            durabletask::StartOptions {
                instance_id: Some(failed.clone()),
                tags: [(
                    contract::CALLBACK_TAG.to_string(),
                    contract::callback_instance_id(&failed),
                )]
                .into(),
                ..Default::default()
            },
        )
        .await
        .expect("start the failing operation");
    client
        .schedule_new_orchestration(
            contract::CALLBACK_ORCHESTRATION,
            &contract::CallbackJob {
                operation_id: failed.clone(),
                url: url.clone(),
                webhook_id: format!("msg_{failed}"),
                links: json!({"status": format!("http://127.0.0.1:{port}/api/status/{failed}")}),
                owner: None,
                checks: 0,
            },
            durabletask::StartOptions {
                instance_id: Some(contract::callback_instance_id(&failed)),
                ..Default::default()
            },
        )
        .await
        .expect("start its callback");
    let canceled = started(port, r#"{"name":"Bo","delay_seconds":60}"#, &url).await;
    let (code, _, v) = http(
        port,
        "POST",
        &format!("/api/operations/{canceled}/cancel"),
        None,
    )
    .await;
    assert_eq!(code, 202, "{v}");

    let got = wait_for(&r, "ok", 3, Duration::from_secs(30)).await;
    // No second delivery of any of them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_later = r.on("ok");
    assert_eq!(got_later.len(), 3, "{got_later:#?}");
    let mut by_subject = HashMap::new();
    for d in &got {
        verify_with_standard_webhooks(d)
            .await
            .unwrap_or_else(|e| panic!("signature did not verify: {e}\n{d:#?}"));
        assert_eq!(
            d.headers.get("content-type").map(String::as_str),
            Some("application/cloudevents+json")
        );
        let event: Value = serde_json::from_str(&d.body).expect("a JSON CloudEvent");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(
            event["id"].as_str(),
            d.headers.get("webhook-id").map(String::as_str)
        );
        assert_eq!(event["subject"], event["data"]["id"]);
        assert!(
            event["data"]["links"]["status"].as_str().is_some(),
            "{event}"
        );
        by_subject.insert(
            event["subject"].as_str().expect("subject").to_string(),
            event,
        );
    }
    let kind = |id: &str| by_subject[id]["type"].as_str().expect("type").to_string();
    assert_eq!(kind(&succeeded), "io.async-http-api.operation.succeeded");
    assert_eq!(kind(&failed), "io.async-http-api.operation.failed");
    assert_eq!(kind(&canceled), "io.async-http-api.operation.canceled");
    assert_eq!(by_subject[&succeeded]["data"]["status"], "Succeeded");
    assert!(
        by_subject[&succeeded]["data"]["result"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Ada")),
        "{}",
        by_subject[&succeeded]
    );
    assert_eq!(by_subject[&failed]["data"]["error"]["type"], "ValueError");
    assert_eq!(by_subject[&canceled]["data"]["status"], "Canceled");
    // A callback receiver and a poller are told the same (one definition, `contract::status`):
    // the event's document is the status route's, field for field, the event adding the
    // result and each its own links.
    for id in [&succeeded, &failed, &canceled] {
        let (code, _, mut polled) = http(port, "GET", &format!("/api/status/{id}"), None).await;
        assert_eq!(code, 200, "{polled}");
        let mut sent = by_subject[id]["data"].clone();
        for (doc, own) in [
            (&mut polled, ["callback", "links"]),
            (&mut sent, ["result", "links"]),
        ] {
            for field in own {
                doc.as_object_mut().expect("an object").remove(field);
            }
        }
        assert_eq!(
            sent, polled,
            "the callback's document against the status route's"
        );
        assert!(polled["completed_at"].is_string(), "{polled}");
    }

    // The status document tells where the delivery stands.
    let doc = settled(port, &succeeded).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(doc["callback"]["attempts"], 1);
    assert_eq!(doc["callback"]["last_status"], 200);
    // The delivery instances are not operations.
    let (_, _, list) = http(port, "GET", "/api/operations", None).await;
    let listed = list["value"].as_array().expect("value");
    assert!(
        listed
            .iter()
            .all(|o| o["name"] != contract::CALLBACK_ORCHESTRATION),
        "{list}"
    );
    assert_eq!(listed.len(), 3, "{list}");
    // The worker counts them.
    let (_, _, metrics) = request(worker_admin, "GET", "/metrics", &[], "").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("worker_callback_deliveries_total{result=\"delivered\"} 3")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("callback"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_with_the_same_id_and_stop_at_the_bound() {
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_worker, _) = worker_with(&endpoint, &[]).await;
    let (_gateway, port) = callback_gateway(&endpoint).await;
    let (r, rport) = receiver("127.0.0.1").await;
    let at = |path: &str| format!("http://127.0.0.1:{rport}/{path}");
    let body = r#"{"name":"retry","delay_seconds":0}"#;
    let flaky = started(port, body, &at("flaky")).await;
    let silent = started(port, body, &at("silent")).await;
    let gone = started(port, body, &at("gone")).await;
    // A redirect to an address the policy does not allow (loopback other than 127.0.0.1).
    let (target, tport) = receiver("127.0.0.2").await;
    *r.redirect_to.lock().expect("to") = format!("http://127.0.0.2:{tport}/ok");
    let redirected = started(port, body, &at("redirect")).await;
    let endless = started(port, body, &at("endless")).await;

    // 500, 500, 200: three attempts, one webhook id.
    let got = wait_for(&r, "flaky", 3, Duration::from_secs(30)).await;
    let ids: Vec<_> = got
        .iter()
        .map(|d| d.headers["webhook-id"].clone())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(ids[0], format!("msg_{flaky}"));
    let doc = settled(port, &flaky).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(doc["callback"]["attempts"], 3);

    // Never an answer: three attempts of a second each, then no more, and the document says so.
    let doc = settled(port, &silent).await;
    assert_eq!(doc["callback"]["state"], "failed", "{doc}");
    assert_eq!(doc["callback"]["attempts"], 3);
    let why = doc["callback"]["last_error"].as_str().unwrap_or("");
    assert!(why.contains("gave up after 3 attempts"), "{doc}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.on("silent").len(), 3);

    // 410: no second attempt.
    let doc = settled(port, &gone).await;
    assert_eq!(doc["callback"]["state"], "failed", "{doc}");
    assert_eq!(doc["callback"]["last_status"], 410);
    assert_eq!(r.on("gone").len(), 1);

    // An answer whose body never ends: a little of it is read, the attempt counts as delivered.
    let doc = settled(port, &endless).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    assert_eq!(doc["callback"]["attempts"], 1);

    // A redirect is not followed: the target hears nothing.
    let doc = settled(port, &redirected).await;
    assert_eq!(doc["callback"]["state"], "failed", "{doc}");
    assert_eq!(doc["callback"]["last_status"], 302);
    assert!(target.on("ok").is_empty(), "the redirect was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_and_unlisted_hosts_are_refused_at_start() {
    let (_scheduler, endpoint) = local_scheduler().await;
    // The default policy: https only, any host, public addresses only.
    let (_open, open_port, _) = gateway(&endpoint, &[]).await;
    let body = r#"{"name":"x","delay_seconds":0}"#;
    for (url, why) in [
        ("https://127.0.0.1/hook", "not public"),
        ("https://localhost/hook", "not public"),
        ("https://10.0.0.8/hook", "not public"),
        ("https://192.168.1.10/hook", "not public"),
        ("https://169.254.169.254/latest/meta-data/", "not public"),
        ("https://[::1]/hook", "not public"),
        ("https://[::ffff:169.254.169.254]/hook", "not public"),
        // IPv6 transition ranges that route to an IPv4 address (NAT64, 6to4) or stay local.
        ("https://[64:ff9b::a9fe:a9fe]/hook", "not public"),
        ("https://[64:ff9b:1::a00:1]/hook", "not public"),
        ("https://[2002:7f00:1::1]/hook", "not public"),
        (
            "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
            "not public",
        ),
        ("http://93.184.215.14/hook", "must be https"),
        ("file:///etc/passwd", "scheme"),
        ("not a url", "not a URL"),
    ] {
        let (status, v) = start_with(open_port, "/api/process", body, url).await;
        assert_eq!(status, 422, "{url}: {v}");
        assert_eq!(v["type"], "/problems/callback-refused", "{url}: {v}");
        let detail = v["detail"].as_str().unwrap_or("");
        assert!(detail.contains(why), "{url}: {detail}");
    }
    // Nothing was started.
    let (_, _, list) = http(open_port, "GET", "/api/operations", None).await;
    assert_eq!(list["value"].as_array().map(Vec::len), Some(0), "{list}");
    // An allowlist of hosts.
    let (_listed, listed_port, _) = gateway(
        &endpoint,
        &[(
            "GATEWAY__CALLBACK_HOSTS",
            "hooks.example.com,*.example.org".into(),
        )],
    )
    .await;
    let (status, v) = start_with(
        listed_port,
        "/api/process",
        body,
        "https://elsewhere.example.net/hook",
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("not among the allowed hosts")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_delivery_leaves_it_to_another() {
    let (_scheduler, endpoint) = local_scheduler().await;
    let (mut first, _) = worker_process(&endpoint).await;
    let (_gateway, port) = callback_gateway(&endpoint).await;
    let (r, rport) = receiver("127.0.0.1").await;
    let id = started(
        port,
        r#"{"name":"kill","delay_seconds":0}"#,
        &format!("http://127.0.0.1:{rport}/hold"),
    )
    .await;
    // The first attempt is in the receiver's hands: kill the worker making it.
    tokio::time::timeout(Duration::from_secs(30), r.held.notified())
        .await
        .expect("the first attempt arrived");
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    let (_second, _) = worker_with(&endpoint, &[]).await;
    let got = wait_for(&r, "hold", 2, Duration::from_secs(60)).await;
    assert_eq!(
        got[0].headers["webhook-id"], got[1].headers["webhook-id"],
        "a repeat carries the same id"
    );
    assert_eq!(got[0].body, got[1].body, "a repeat is the same event");
    let doc = settled(port, &id).await;
    assert_eq!(doc["callback"]["state"], "delivered", "{doc}");
    r.release.notify_waiters();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_a_secret_of_its_own_gets_callbacks_signed_with_it() {
    const OWN: &str = "whsec_dGhpcyBpcyB0aGUgYmF0Y2ggY2FsbGVyJ3Mgb3duIQ==";
    let dir = std::env::temp_dir().join(format!("cb-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys = dir.join("keys.json");
    std::fs::write(
        &keys,
        json!({"keys": [{"id": "batch", "name": "Batch", "role": "user",
            "sha256": test_support::oidc::sha256_hex("batch-key-0123456789abcdef")}]})
        .to_string(),
    )
    .expect("keys");
    // Owners as the gateway records them: `key:<id>` for an API key.
    let secrets = dir.join("secrets.json");
    std::fs::write(&secrets, json!({"key:batch": OWN}).to_string()).expect("secrets");
    let (_scheduler, endpoint) = local_scheduler().await;
    let secrets_path = secrets.display().to_string();
    let (_worker, _) = worker_with(
        &endpoint,
        &[("WORKER__CALLBACK_SECRETS_FILE", secrets_path.as_str())],
    )
    .await;
    let (_gateway, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__AUTH", "api_key".into()),
            (
                "GATEWAY__ID_SECRET",
                "an id secret of at least 32 characters".into(),
            ),
            ("GATEWAY__API_KEYS_FILE", keys.display().to_string()),
            ("GATEWAY__CALLBACK_ALLOW_HTTP", "true".into()),
            ("GATEWAY__CALLBACK_ALLOWED_NETWORKS", "127.0.0.1/32".into()),
        ],
    )
    .await;
    let (r, rport) = receiver("127.0.0.1").await;
    let (status, _, text) = request(
        port,
        "POST",
        "/api/process",
        &[
            ("Content-Type", "application/json"),
            ("X-API-Key", "batch-key-0123456789abcdef"),
            ("Callback-Url", &format!("http://127.0.0.1:{rport}/ok")),
        ],
        r#"{"name":"own","delay_seconds":0}"#,
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let got = wait_for(&r, "ok", 1, Duration::from_secs(30)).await;
    let mut delivery = got[0].clone();
    // Verifies with the caller's secret, not with the shared one.
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
d = json.load(sys.stdin)
for name, secret in (("own", d["own"]), ("shared", d["shared"])):
    try:
        Webhook(secret).verify(d["body"], d["headers"])
        print(name, "verified")
    except Exception:
        print(name, "refused")
"#;
    delivery.headers.retain(|k, _| k.starts_with("webhook-"));
    let input =
        json!({"own": OWN, "shared": SECRET, "body": delivery.body, "headers": delivery.headers});
    let (_, text, _) = python(script, &input).await;
    assert!(
        text.contains("own verified") && text.contains("shared refused"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
