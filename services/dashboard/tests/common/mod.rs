//! What the dashboard's tests share: the whole system (the local scheduler and the worker in
//! this process, the gateway and the dashboard as real processes) and the gateway's routes.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::http::request;
use test_support::in_process::Running;
use test_support::net::free_port;
use test_support::process::spawn;
use tokio::process::Child;

pub struct System {
    _in_process: (Running, Running),
    _children: Vec<Child>,
    /// The dashboard's process id.
    pub dashboard_pid: u32,
    pub endpoint: String,
    pub gateway: u16,
    pub dashboard: u16,
}

impl System {
    pub fn page(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.dashboard)
    }
}

pub async fn system(dashboard_env: &[(&str, String)]) -> System {
    let scheduler = test_support::in_process::scheduler(&[]);
    let endpoint = scheduler.endpoint();
    let worker = test_support::in_process::worker(&endpoint, &[]);
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
        ("ENDPOINT", endpoint.clone()),
        ("DASHBOARD__LISTEN", format!("127.0.0.1:{dashboard}")),
    ];
    env.extend(dashboard_env.iter().cloned());
    let dash = spawn("dashboard", &env, dashboard).await;
    let dashboard_pid = dash.id().expect("pid");
    System {
        dashboard_pid,
        _in_process: (scheduler, worker),
        _children: vec![gw, dash],
        endpoint,
        gateway,
        dashboard,
    }
}

/// An operation started through the gateway: its id.
pub async fn start(gateway: u16, name: &str, delay: u64) -> String {
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
pub async fn status(gateway: u16, id: &str, wait: u64) -> Option<Value> {
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

/// Waits up to 10 s for the gateway's `status` of `id` to satisfy `done`.
pub async fn wait_status(gateway: u16, id: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(gateway, id, 0).await.unwrap_or(Value::Null);
        if done(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never {what}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Positions of `needles` in `haystack`, each after the previous one.
pub fn in_order(haystack: &str, needles: &[&str]) -> bool {
    let mut from = 0;
    for n in needles {
        match haystack[from..].find(n) {
            Some(i) => from += i + n.len(),
            None => return false,
        }
    }
    true
}

/// Where the tests' screenshots go: `DASHBOARD_SCREENSHOTS` (`make screenshots` points it at
/// `docs/screenshots`), else the target directory.
pub fn screenshots() -> PathBuf {
    std::env::var_os("DASHBOARD_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots"),
        PathBuf::from,
    )
}

/// The width and height of a PNG, checking that it is one.
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG"
    );
    let n = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    (n(16), n(20))
}
