//! The dashboard's actions, clicked and typed in real headless Chromium against the real
//! binaries; what is refused: another site's form, a read-only dashboard, a missing admin key.

mod common;

use common::{start, status, system, wait_status};
use serde_json::json;
use test_support::browser::Tab;
use test_support::http::{header, request};
use test_support::net::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_clicked_in_chromium_suspend_resume_terminate_restart_raise_and_purge() {
    let s = system(&[]).await;
    // Running operations to act on (their activity takes two minutes).
    let (a, b) = (
        start(s.gateway, "a", 120).await,
        start(s.gateway, "b", 120).await,
    );
    let mut tab = Tab::open().await;

    // Suspend asks first; dismissed, nothing happens.
    tab.goto(&s.page(&format!("/instances/{b}"))).await;
    tab.accept_dialogs = false;
    tab.click("button[value=suspend]").await;
    assert_eq!(tab.dialogs, [format!("Suspend {b}?")]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(tab.url().await.ends_with(&format!("/instances/{b}")));
    assert_eq!(
        status(s.gateway, &b, 0).await.expect("b")["status"],
        "Running"
    );

    // Accepted: suspended, and the page says so.
    tab.accept_dialogs = true;
    tab.click_and_load("button[value=suspend]").await;
    assert!(
        tab.url().await.ends_with("?done=suspend"),
        "{}",
        tab.url().await
    );
    assert!(tab.text().await.contains("Done: suspend."));
    wait_status(s.gateway, &b, "suspended", |v| v["status"] == "Suspended").await;
    tab.goto(&s.page(&format!("/instances/{b}"))).await;
    assert_eq!(
        tab.eval("document.querySelector('[data-status]').dataset.status")
            .await,
        "Suspended"
    );
    tab.click_and_load("button[value=resume]").await;
    wait_status(s.gateway, &b, "resumed", |v| v["status"] == "Running").await;

    // Terminate with the keyboard alone: Tab to the button, Enter, confirm.
    tab.goto(&s.page(&format!("/instances/{a}"))).await;
    let mut focused = String::new();
    for _ in 0..40 {
        tab.press("Tab").await;
        focused = tab
            .eval("document.activeElement?.getAttribute('value') ?? document.activeElement?.textContent ?? ''")
            .await
            .as_str()
            .unwrap_or("")
            .to_string();
        if focused == "terminate" {
            break;
        }
    }
    assert_eq!(focused, "terminate", "Tab never reached Terminate");
    tab.forget_events();
    tab.press("Enter").await;
    tab.wait_for("Page.loadEventFired").await;
    assert_eq!(tab.dialogs.last(), Some(&format!("Terminate {a}?")));
    let ended = status(s.gateway, &a, 10).await.expect("a");
    assert_eq!(ended["status"], "Canceled", "{ended}");

    // Restart runs it again under the same id.
    tab.click_and_load("button[value=restart]").await;
    assert!(tab.text().await.contains("Done: restart."));
    wait_status(s.gateway, &a, "restarted", |v| v["status"] == "Running").await;

    // Raise an event: typed into the form, confirmed; the history shows it with its data.
    tab.click("form.raise input[name=event_name]").await;
    tab.type_text("approval").await;
    tab.click("form.raise input[name=event_data]").await;
    tab.type_text(r#"{"approved": true}"#).await;
    tab.click_and_load("form.raise button[type=submit]").await;
    assert_eq!(
        tab.dialogs.last(),
        Some(&format!("Raise this event on {a}?"))
    );
    assert!(tab.text().await.contains("Done: raise-event."));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        tab.goto(&s.page(&format!("/instances/{a}"))).await;
        let raised = tab
            .eval("[...document.querySelectorAll('tr[data-kind=EventRaised]')].map(r => r.innerText).join(' ')")
            .await;
        let raised = raised.as_str().unwrap_or("").to_string();
        if raised.contains("approval") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no EventRaised in the history"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Event data that is not JSON is refused with a clear message.
    tab.click("form.raise input[name=event_name]").await;
    tab.type_text("bad").await;
    tab.click("form.raise input[name=event_data]").await;
    tab.type_text("{not json").await;
    tab.click_and_load("form.raise button[type=submit]").await;
    assert!(tab.text().await.contains("The event data is not JSON"));

    // Terminated again, then purged: back to the list, and the gateway no longer finds it.
    tab.goto(&s.page(&format!("/instances/{a}"))).await;
    tab.click_and_load("button[value=terminate]").await;
    wait_status(s.gateway, &a, "terminated", |v| v["status"] == "Canceled").await;
    // Purge: back to the list, and the gateway no longer finds it.
    tab.click_and_load("button[value=purge]").await;
    assert!(
        tab.url().await.contains("/?purged=1"),
        "{}",
        tab.url().await
    );
    assert!(
        status(s.gateway, &a, 0).await.is_none(),
        "purged, yet the gateway finds it"
    );
    tab.goto(&s.page(&format!("/instances/{a}"))).await;
    assert!(tab.text().await.contains("No instance"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_text_and_another_sites_form_is_refused() {
    let s = system(&[]).await;
    // An input that would run script if it were markup.
    let xss = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let hostile = start(s.gateway, xss, 0).await;
    status(s.gateway, &hostile, 20).await.expect("status");
    let mut tab = Tab::open().await;
    tab.goto(&s.page(&format!("/instances/{hostile}"))).await;
    let input = tab
        .eval("document.querySelector('section[aria-label=\"Input\"] pre').textContent")
        .await;
    assert!(input.as_str().expect("input").contains(xss), "{input}");
    let injected = tab
        .eval("document.querySelectorAll('main script, main img').length")
        .await;
    assert_eq!(injected, 0, "the payload became markup");
    assert!(tab.dialogs.is_empty(), "script ran: {:?}", tab.dialogs);

    // Another site (another origin on loopback) serves a form aimed at an action, even with a
    // leaked token; the user clicks it in the same browser.
    let victim = start(s.gateway, "victim", 120).await;
    let (_, _, html) = request(s.dashboard, "GET", &format!("/instances/{victim}"), &[], "").await;
    let token = html
        .split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the action forms carry a token")
        .to_string();
    let evil_port = free_port();
    let evil_page = format!(
        "<!doctype html><form method=post action=\"http://127.0.0.1:{}/instances/{victim}/actions/terminate\">\
         <input type=hidden name=token value=\"{token}\"><button id=go>Win a prize</button></form>",
        s.dashboard
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", evil_port))
        .await
        .expect("bind");
    let evil = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = evil_page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, evil).await });
    tab.goto(&format!("http://127.0.0.1:{evil_port}/")).await;
    tab.click_and_load("#go").await;
    assert!(tab.text().await.contains("Refused"), "{}", tab.text().await);
    assert_eq!(
        status(s.gateway, &victim, 0).await.expect("victim")["status"],
        "Running"
    );
    server.abort();

    // Forms not from a browser: without the token, or with another Origin.
    let origin = format!("http://localhost:{}", s.dashboard);
    for (headers, body) in [
        (vec![("Origin", origin.as_str())], String::new()),
        (
            vec![("Origin", "http://evil.example")],
            format!("token={token}"),
        ),
    ] {
        let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
        h.extend(headers);
        let (code, _, body) = request(
            s.dashboard,
            "POST",
            &format!("/instances/{victim}/actions/terminate"),
            &h,
            &body,
        )
        .await;
        assert_eq!(code, 403, "{body}");
    }
    assert_eq!(
        status(s.gateway, &victim, 0).await.expect("victim")["status"],
        "Running"
    );
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
    // In the browser: anonymous, no page (headless Chromium has no prompt to show); with the
    // admin key as the password, the list.
    let mut tab = Tab::open().await;
    assert_eq!(
        tab.navigate(&s.page("/?paused=1")).await,
        Err("net::ERR_INVALID_AUTH_CREDENTIALS".to_string())
    );
    tab.goto(&format!(
        "http://ops:admin-key-0123456789@127.0.0.1:{}/?paused=1",
        s.dashboard
    ))
    .await;
    assert!(
        tab.text().await.contains("Orchestration instances"),
        "{}",
        tab.text().await
    );
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
