//! A fair share for every caller, measured against real processes (release local scheduler and
//! worker, the gateway built for the bench), two callers with API keys:
//!
//! 1. Caller B's round trip (start a 0 s operation, wait for `Succeeded`) idle, then while caller
//!    A floods starts of 20 s operations through two gateway replicas onto a worker with 10
//!    activity slots: with A's cap of unfinished operations at 4 (so at most 8 with two
//!    replicas), and with no cap.
//! 2. The scheduler's round-robin across callers: one activity slot, A's backlog of 40 one-second
//!    operations queued, then B's round trip (first come, first served it would be ~40 s).
//! 3. What the cap costs a start: one caller's starts per second with the cap off and on (at
//!    the default of 1,000, counted by the scheduler before each start, with 1, 4 (the default)
//!    or 16 of the caller's starts in flight at once per replica), on a hub that also holds
//!    20,000 unfinished operations of another caller.
//!
//! `cargo bench -p gateway --bench fair_share` (or `make bench`). Prints tables; no assertions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::net::free_port;
use test_support::oidc::sha256_hex;
use test_support::process::{binary, spawn_path};

const SECRET: &str = "id secret for the fair-share bench, 32+ chars";
const A: &str = "key-of-caller-a-0123456789abcdef";
const B: &str = "key-of-caller-b-0123456789abcdef";
const C: &str = "key-of-caller-c-0123456789abcdef";

fn keys_file(dir: &Path) -> PathBuf {
    let path = dir.join("api-keys.json");
    let keys: Vec<_> = [("a", A), ("b", B), ("c", C)]
        .iter()
        .map(|(id, key)| json!({"id": id, "name": id, "role": "user", "sha256": sha256_hex(key)}))
        .collect();
    std::fs::write(&path, json!({ "keys": keys }).to_string()).expect("keys file");
    path
}

async fn scheduler() -> (tokio::process::Child, String) {
    let port = free_port();
    let child = spawn_path(
        binary("local-scheduler"),
        &[
            ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port}")),
            (
                "LOCAL_SCHEDULER__ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
            ("LOCAL_SCHEDULER__STORE", "memory".into()),
            // Part 3 holds 20,000 pending operations of another caller.
            ("LOCAL_SCHEDULER__MAX_BACKLOG", "0".into()),
            ("LOCAL_SCHEDULER__MAX_INSTANCES", "0".into()),
        ],
        port,
    )
    .await;
    (child, format!("http://127.0.0.1:{port}"))
}

async fn worker(endpoint: &str, slots: usize) -> tokio::process::Child {
    let admin = free_port();
    spawn_path(
        binary("worker"),
        &[
            ("ENDPOINT", endpoint.to_string()),
            ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
            ("WORKER__MAX_CONCURRENT_ACTIVITIES", slots.to_string()),
        ],
        admin,
    )
    .await
}

async fn gateway(endpoint: &str, keys: &Path, cap: usize) -> (tokio::process::Child, u16) {
    gateway_with(endpoint, keys, cap, 4).await
}

async fn gateway_with(
    endpoint: &str,
    keys: &Path,
    cap: usize,
    in_flight: usize,
) -> (tokio::process::Child, u16) {
    let port = free_port();
    let child = spawn_path(
        PathBuf::from(env!("CARGO_BIN_EXE_gateway")),
        &[
            ("ENDPOINT", endpoint.to_string()),
            ("GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
            (
                "GATEWAY__ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
            ("GATEWAY__AUTH", "api_key".into()),
            ("GATEWAY__ID_SECRET", SECRET.into()),
            ("GATEWAY__API_KEYS_FILE", keys.display().to_string()),
            ("GATEWAY__MAX_UNFINISHED_PER_CALLER", cap.to_string()),
            (
                "GATEWAY__MAX_STARTS_IN_FLIGHT_PER_CALLER",
                in_flight.to_string(),
            ),
            // The callers' request rates are not what is measured.
            ("GATEWAY__RATE_LIMIT_PER_SECOND", "0".into()),
            ("GATEWAY__LOG_FORMAT", "json".into()),
        ],
        port,
    )
    .await;
    (child, port)
}

/// Starts one of `key`'s operations: (status, operation id).
async fn start(port: u16, key: &str, delay: u64) -> (u16, String) {
    let body = json!({"name": "fair", "delay_seconds": delay}).to_string();
    let (status, _, answer) = test_support::http::request(
        port,
        "POST",
        "/api/process",
        &[("Content-Type", "application/json"), ("x-api-key", key)],
        &body,
    )
    .await;
    let id = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["id"].as_str().map(String::from))
        .unwrap_or_default();
    (status, id)
}

/// Start a 0 s operation of `key` and wait for `Succeeded`; `None` past `limit`.
async fn round_trip(port: u16, key: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let (status, id) = start(port, key, 0).await;
    assert_eq!(status, 202, "B's start");
    while t.elapsed() < limit {
        let (status, _, body) = test_support::http::request(
            port,
            "GET",
            &format!("/api/status/{id}?wait=5"),
            &[("x-api-key", key)],
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if body.contains("\"Succeeded\"") {
            return Some(t.elapsed());
        }
    }
    None
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn p50_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (ms(v[v.len() / 2]), ms(*v.last().expect("some")))
}

/// Part 1 with caller A's cap at `cap` (0: none): (A accepted, A refused, B's round trips).
async fn flood(keys: &Path, cap: usize) -> (usize, usize, Vec<Option<Duration>>, Vec<Duration>) {
    let (_s, endpoint) = scheduler().await;
    let _w = worker(&endpoint, 10).await;
    let (_g1, g1) = gateway(&endpoint, keys, cap).await;
    let (_g2, g2) = gateway(&endpoint, keys, cap).await;
    let mut idle = Vec::new();
    for i in 0..10 {
        let port = if i % 2 == 0 { g1 } else { g2 };
        idle.push(
            round_trip(port, B, Duration::from_secs(60))
                .await
                .expect("idle"),
        );
    }
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let port = if i % 2 == 0 { g1 } else { g2 };
            tokio::spawn(async move { start(port, A, 20).await.0 })
        })
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for f in flood {
        match f.await.expect("join") {
            202 => accepted += 1,
            429 => refused += 1,
            other => panic!("A's start answered {other}"),
        }
    }
    let mut busy = Vec::new();
    for i in 0..10 {
        let port = if i % 2 == 0 { g1 } else { g2 };
        let rt = round_trip(port, B, Duration::from_secs(30)).await;
        let gave_up = rt.is_none();
        busy.push(rt);
        if gave_up {
            break;
        }
    }
    (accepted, refused, busy, idle)
}

/// Part 3: `n` starts of one caller, 16 at a time: starts per second.
async fn starts_per_second(port: u16, key: &'static str, n: usize) -> f64 {
    starts_per_second_of(port, key, n, 3600).await
}

async fn starts_per_second_of(port: u16, key: &'static str, n: usize, delay: u64) -> f64 {
    let t = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("permit");
        tasks.push(tokio::spawn(async move {
            let (status, _) = start(port, key, delay).await;
            drop(permit);
            status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), 202, "a start within the cap");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    test_support::process::allow_open_files(8192);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("fair-share-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys = keys_file(&dir);
    rt.block_on(async {
        println!("\n1. Caller A floods 200 starts of 20 s operations through two gateway replicas, worker with 10 activity slots; caller B's round trip (0 s operation, start to Succeeded):\n");
        println!("| A's cap of unfinished | A accepted | A refused (429) | B idle p50 / max ms | B under A's flood p50 / max ms | B max / idle max |");
        println!("|---|---|---|---|---|---|");
        for cap in [4, 0] {
            let (accepted, refused, busy, idle) = flood(&keys, cap).await;
            let (ip50, imax) = p50_max(idle);
            let finished: Vec<Duration> = busy.iter().flatten().copied().collect();
            let under = if finished.len() == busy.len() {
                let (p50, max) = p50_max(finished);
                format!("{p50:.1} / {max:.1} | {:.2}", max / imax)
            } else {
                "not finished after 30 s | -".to_string()
            };
            let cap_text = if cap == 0 { "none".to_string() } else { cap.to_string() };
            println!("| {cap_text} | {accepted} | {refused} | {ip50:.1} / {imax:.1} | {under} |");
        }

        println!("\n2. One activity slot, caller A's backlog of 40 one-second operations queued, then caller B's round trip:\n");
        let (_s, endpoint) = scheduler().await;
        let _w = worker(&endpoint, 1).await;
        let (_g, port) = gateway(&endpoint, &keys, 1000).await;
        let idle = round_trip(port, B, Duration::from_secs(60)).await.expect("idle");
        for _ in 0..40 {
            assert_eq!(start(port, A, 1).await.0, 202);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let behind = round_trip(port, B, Duration::from_secs(90)).await.expect("B");
        println!("| B idle ms | B behind A's backlog ms | first come, first served would be |");
        println!("|---|---|---|");
        println!("| {:.1} | {:.1} | ~40,000 ms |", ms(idle), ms(behind));
        drop((_g, _w, _s));

        println!("\n3. Starts per second of one caller (16 at a time, 900 starts, nothing running them), the hub also holding 20,000 unfinished operations of another caller:\n");
        println!("| A's cap of unfinished | A's starts in flight per replica | starts/s | against no cap |");
        println!("|---|---|---|---|");
        let mut none = 0.0;
        for (cap, in_flight) in [(0, 4), (1000, 4), (1000, 16), (1000, 1)] {
            let (_s, endpoint) = scheduler().await;
            let (_g, port) = gateway_with(&endpoint, &keys, cap, in_flight).await;
            let (_g0, others) = gateway(&endpoint, &keys, 0).await;
            starts_per_second(others, C, 20_000).await;
            let rate = starts_per_second(port, A, 900).await;
            if cap == 0 {
                none = rate;
                println!("| none | - | {rate:.0} | 1.00 |");
            } else {
                println!("| {cap} | {in_flight} | {rate:.0} | {:.2} |", rate / none);
            }
        }

        println!("\n   The same with a worker running A's operations (0 s each, so that few are unfinished at a time), 2,000 starts:\n");
        println!("| A's cap of unfinished | A's starts in flight per replica | starts/s | against no cap |");
        println!("|---|---|---|---|");
        let mut none = 0.0;
        for (cap, in_flight) in [(0, 4), (1000, 4), (1000, 16)] {
            let (_s, endpoint) = scheduler().await;
            let _w = worker(&endpoint, 100).await;
            let (_g, port) = gateway_with(&endpoint, &keys, cap, in_flight).await;
            let rate = starts_per_second_of(port, A, 2_000, 0).await;
            if cap == 0 {
                none = rate;
                println!("| none | - | {rate:.0} | 1.00 |");
            } else {
                println!("| {cap} | {in_flight} | {rate:.0} | {:.2} |", rate / none);
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
