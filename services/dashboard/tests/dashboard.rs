//! The dashboard against the real binaries (local scheduler, worker, gateway, dashboard), its
//! pages rendered by real headless Chromium.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::browser::dump_dom;
use test_support::http::{header, request};
use test_support::net::free_port;
use test_support::process::spawn;
use tokio::process::Child;

struct System {
    _children: Vec<Child>,
    gateway: u16,
    dashboard: u16,
}

async fn system(dashboard_env: &[(&str, String)]) -> System {
    let (scheduler, endpoint) = test_support::process::local_scheduler(&[]).await;
    let worker = test_support::process::worker(&endpoint).await;
    let gateway = free_port();
    let gw = spawn(
        "gateway",
        &[
            ("ENDPOINT", endpoint.clone()),
            ("GATEWAY__LISTEN", format!("127.0.0.1:{gateway}")),
            (
                "GATEWAY__ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
            ("GATEWAY__AUTH", "none".into()),
            ("GATEWAY__RATE_LIMIT_PER_SECOND", "0".into()),
        ],
        gateway,
    )
    .await;
    let dashboard = free_port();
    let mut env = vec![
        ("ENDPOINT", endpoint),
        ("DASHBOARD__LISTEN", format!("127.0.0.1:{dashboard}")),
    ];
    env.extend(dashboard_env.iter().cloned());
    let dash = spawn("dashboard", &env, dashboard).await;
    System {
        _children: vec![scheduler, worker, gw, dash],
        gateway,
        dashboard,
    }
}

async fn start(gateway: u16, name: &str, delay: u64) -> String {
    let body = json!({"name": name, "delay_seconds": delay}).to_string();
    let (status, _, text) = request(
        gateway,
        "POST",
        "/api/process",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["id"].as_str().expect("id").to_string()
}

/// The gateway's status of `id` (`None`: 404), after waiting up to `wait` seconds for it to end.
async fn status(gateway: u16, id: &str, wait: u64) -> Option<Value> {
    let (code, _, text) = request(
        gateway,
        "GET",
        &format!("/api/status/{id}?wait={wait}"),
        &[],
        "",
    )
    .await;
    (code == 200).then(|| serde_json::from_str(&text).expect("json"))
}

/// Positions of `needles` in `haystack`, each after the previous one.
fn in_order(haystack: &str, needles: &[&str]) -> bool {
    let mut from = 0;
    for n in needles {
        match haystack[from..].find(n) {
            Some(i) => from += i + n.len(),
            None => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_shows_in_the_list_and_its_page_tells_its_story_in_chromium() {
    let s = system(&[]).await;
    let id = start(s.gateway, "Ada", 0).await;
    assert_eq!(
        status(s.gateway, &id, 20).await.expect("status")["status"],
        "Succeeded"
    );

    let list = dump_dom(&format!("http://127.0.0.1:{}/?paused=1", s.dashboard)).await;
    assert!(
        list.contains(&format!("data-instance=\"{id}\"")),
        "{id} not listed:\n{list}"
    );

    let page = dump_dom(&format!("http://127.0.0.1:{}/instances/{id}", s.dashboard)).await;
    assert!(
        in_order(
            &page,
            &[
                "data-kind=\"ExecutionStarted\"",
                "data-kind=\"TaskScheduled\"",
                "data-kind=\"TaskCompleted\"",
                "data-kind=\"ExecutionCompleted\"",
            ]
        ),
        "history out of order:\n{page}"
    );
    assert!(page.contains("data-status=\"Completed\""), "{page}");
    // The timeline draws the activity as a bar; the sequence diagram its call and its result.
    let timeline = page
        .split("aria-label=\"Timeline\"")
        .nth(1)
        .expect("a timeline");
    assert!(
        timeline.contains("data-kind=\"activity\"") && timeline.contains("<rect"),
        "{timeline}"
    );
    let sequence = page
        .split("aria-label=\"Sequence diagram\"")
        .nth(1)
        .expect("a sequence diagram");
    assert!(
        in_order(
            sequence,
            &[
                "data-message=\"ExecutionStarted\"",
                "data-message=\"TaskScheduled\"",
                "data-message=\"TaskCompleted\"",
                "data-message=\"ExecutionCompleted\""
            ]
        ),
        "{sequence}"
    );
    assert!(sequence.contains("data-party=\"orchestration\""));
    // The output: the greeting the activity made.
    let output = page
        .split("aria-label=\"Output\"")
        .nth(1)
        .expect("an output section");
    assert!(output.contains("Ada"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_text_and_actions_come_only_from_the_dashboards_own_pages() {
    let s = system(&[]).await;
    // An input that would run script if it were markup.
    let xss = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let hostile = start(s.gateway, xss, 0).await;
    status(s.gateway, &hostile, 20).await.expect("status");
    let page = dump_dom(&format!(
        "http://127.0.0.1:{}/instances/{hostile}",
        s.dashboard
    ))
    .await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        !page.contains("<script>alert(1)"),
        "the payload became markup:\n{page}"
    );
    assert!(
        !page.contains("<img src=\"x\""),
        "the payload became markup:\n{page}"
    );

    // Running operations to act on (their activity takes a minute).
    let (a, b) = (
        start(s.gateway, "a", 60).await,
        start(s.gateway, "b", 60).await,
    );
    let origin = format!("http://localhost:{}", s.dashboard);
    let (_, _, html) = request(s.dashboard, "GET", &format!("/instances/{a}"), &[], "").await;
    let token = html
        .split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the action forms carry a token")
        .to_string();
    let act =
        |id: String, action: &'static str, headers: Vec<(&'static str, String)>, body: String| {
            let port = s.dashboard;
            async move {
                let mut h: Vec<(&str, &str)> =
                    vec![("Content-Type", "application/x-www-form-urlencoded")];
                h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
                request(
                    port,
                    "POST",
                    &format!("/instances/{id}/actions/{action}"),
                    &h,
                    &body,
                )
                .await
            }
        };
    let ours = || {
        vec![
            ("Origin", origin.clone()),
            ("Sec-Fetch-Site", "same-origin".to_string()),
        ]
    };

    // Another site's form, even with the token; a form without the token: refused.
    for (headers, body) in [
        (
            vec![
                ("Origin", "http://evil.example".to_string()),
                ("Sec-Fetch-Site", "cross-site".to_string()),
            ],
            format!("token={token}"),
        ),
        (
            vec![("Origin", "http://evil.example".to_string())],
            format!("token={token}"),
        ),
        (ours(), String::new()),
    ] {
        let (code, _, body) = act(a.clone(), "terminate", headers, body).await;
        assert_eq!(code, 403, "{body}");
    }
    assert_eq!(
        status(s.gateway, &a, 0).await.expect("a")["runtime_status"],
        "RUNNING"
    );

    // Suspend and resume change its status.
    let (code, headers, _) = act(b.clone(), "suspend", ours(), format!("token={token}")).await;
    assert_eq!(code, 303);
    assert_eq!(
        header(&headers, "location"),
        Some(format!("/instances/{b}?done=suspend").as_str())
    );
    // The suspension is applied as the scheduler takes it in: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(s.gateway, &b, 0).await.expect("b")["status"] != "Suspended" {
        assert!(Instant::now() < deadline, "never suspended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, _) = act(b.clone(), "resume", ours(), format!("token={token}")).await;
    assert_eq!(code, 303);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(s.gateway, &b, 0).await.expect("b")["status"] == "Suspended" {
        assert!(Instant::now() < deadline, "still suspended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Terminate ends it as Canceled for the gateway; purge removes it.
    let (code, _, body) = act(
        a.clone(),
        "terminate",
        ours(),
        format!("token={token}&reason=enough"),
    )
    .await;
    assert_eq!(code, 303, "{body}");
    let done = status(s.gateway, &a, 10).await.expect("a");
    assert_eq!(done["status"], "Canceled", "{done}");
    let (code, _, _) = act(a.clone(), "purge", ours(), format!("token={token}")).await;
    assert_eq!(code, 303);
    assert!(
        status(s.gateway, &a, 0).await.is_none(),
        "purged, yet the gateway finds it"
    );
    let (code, _, _) = request(s.dashboard, "GET", &format!("/instances/{a}"), &[], "").await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_without_actions_shows_no_forms_and_refuses_them() {
    let s = system(&[("DASHBOARD__ACTIONS", "false".into())]).await;
    let id = start(s.gateway, "read-only", 60).await;
    let (code, headers, html) =
        request(s.dashboard, "GET", &format!("/instances/{id}"), &[], "").await;
    assert_eq!(code, 200);
    assert!(
        !html.contains("name=\"token\""),
        "forms shown on a read-only dashboard"
    );
    let csp = header(&headers, "content-security-policy").expect("CSP");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let (code, _, _) = request(
        s.dashboard,
        "POST",
        &format!("/instances/{id}/actions/terminate"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "token=anything",
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        status(s.gateway, &id, 0).await.expect("status")["runtime_status"],
        "RUNNING"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admin_keys_an_anonymous_or_user_request_is_refused() {
    use base64::Engine;
    let dir =
        std::env::temp_dir().join(format!("dash-keys-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys = dir.join("keys.json");
    let sha = test_support::oidc::sha256_hex;
    std::fs::write(
        &keys,
        json!({"keys": [
            {"id": "ops", "name": "Operations", "role": "admin", "sha256": sha("admin-key-0123456789")},
            {"id": "batch", "name": "Batch", "role": "user", "sha256": sha("user-key-0123456789")},
        ]})
        .to_string(),
    )
    .expect("keys");
    let s = system(&[("DASHBOARD__ADMIN_KEYS_FILE", keys.display().to_string())]).await;
    let basic = |key: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("anyone:{key}"))
        )
    };
    let (code, headers, _) = request(s.dashboard, "GET", "/", &[], "").await;
    assert_eq!(code, 401);
    assert!(header(&headers, "www-authenticate").is_some_and(|c| c.starts_with("Basic")));
    for refused in [
        vec![("Authorization", basic("user-key-0123456789"))],
        vec![("Authorization", basic("guessed"))],
        vec![("X-API-Key", "user-key-0123456789".to_string())],
    ] {
        let h: Vec<(&str, &str)> = refused.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, _, _) = request(s.dashboard, "GET", "/", &h, "").await;
        assert_eq!(code, 401, "{refused:?}");
    }
    let admin = basic("admin-key-0123456789");
    let (code, _, body) = request(
        s.dashboard,
        "GET",
        "/?paused=1",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = request(
        s.dashboard,
        "GET",
        "/?paused=1",
        &[("X-API-Key", "admin-key-0123456789")],
        "",
    )
    .await;
    assert_eq!(code, 200);
    // Probes need no key.
    assert_eq!(
        request(s.dashboard, "GET", "/healthz", &[], "").await.0,
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}
