//! What open status streams (`GET /api/status/{id}/events`) cost the gateway: 1,000 streams on
//! pending operations (each read from the scheduler once a second, the default), against none,
//! in one run: the gateway's resident memory and CPU, the scheduler's CPU, and the latency of
//! starts made meanwhile at a steady 100/s.
//!
//! `cargo bench -p gateway --bench status_streams` (or `make bench`; release binaries of the
//! local scheduler). Prints a table; no assertions.

use std::time::{Duration, Instant};

use test_support::http::event_stream;
use test_support::net::free_port;
use test_support::process::{allow_open_files, cpu_seconds, rss_mib, spawn_path};

const STREAMS: usize = 1_000;
const START_RATE: f64 = 100.0;
const MEASURE: Duration = Duration::from_secs(10);

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

async fn start(port: u16) -> (Duration, String) {
    let t = Instant::now();
    let (status, _, body) = test_support::http::request(
        port,
        "POST",
        "/api/process",
        &[("Content-Type", "application/json")],
        r#"{"name":"bench","delay_seconds":0}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    (t.elapsed(), v["id"].as_str().expect("id").to_string())
}

/// Starts at a steady rate for `MEASURE`, with the gateway's and scheduler's CPU over the same
/// window: (sorted latencies, gateway cores, scheduler cores).
async fn paced_starts(port: u16, gateway: u32, scheduler: u32) -> (Vec<Duration>, f64, f64) {
    let (g0, s0, t0) = (cpu_seconds(gateway), cpu_seconds(scheduler), Instant::now());
    let interval = Duration::from_secs_f64(1.0 / START_RATE);
    let mut due = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    while t0.elapsed() < MEASURE {
        tokio::time::sleep_until(due).await;
        due += interval;
        tasks.push(tokio::spawn(start(port)));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.push(t.await.expect("start").0);
    }
    let seconds = t0.elapsed().as_secs_f64();
    latencies.sort();
    (
        latencies,
        (cpu_seconds(gateway) - g0) / seconds,
        (cpu_seconds(scheduler) - s0) / seconds,
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    allow_open_files(8 * STREAMS as u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sched = free_port();
        let scheduler = spawn_path(
            test_support::process::binary("local-scheduler"),
            &[
                ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{sched}")),
                ("LOCAL_SCHEDULER__ADMIN_LISTEN", format!("127.0.0.1:{}", free_port())),
                ("LOCAL_SCHEDULER__STORE", "memory".into()),
            ],
            sched,
        )
        .await;
        let port = free_port();
        let gateway = spawn_path(
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_gateway")),
            &[
                ("ENDPOINT", format!("http://127.0.0.1:{sched}")),
                ("GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
                ("GATEWAY__ADMIN_LISTEN", format!("127.0.0.1:{}", free_port())),
                ("GATEWAY__AUTH", "none".into()),
                // One address opens every stream: the per-caller rate is not what is measured.
                ("GATEWAY__RATE_LIMIT_PER_SECOND", "0".into()),
                ("GATEWAY__MAX_LONG_POLLS", (STREAMS + 10).to_string()),
                ("GATEWAY__LOG_FORMAT", "json".into()),
                ("RUST_LOG", "warn".into()),
            ],
            port,
        )
        .await;
        let (gw_pid, sched_pid) = (
            gateway.id().expect("gateway pid"),
            scheduler.id().expect("scheduler pid"),
        );
        // Pending operations (no worker): their streams stay open.
        let mut ids = Vec::new();
        for _ in 0..STREAMS {
            ids.push(start(port).await.1);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_before = rss_mib(gw_pid).1;
        let (without, gw_cpu0, sched_cpu0) = paced_starts(port, gw_pid, sched_pid).await;

        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(STREAMS);
        let mut streams = Vec::new();
        for id in ids {
            let ready = ready_tx.clone();
            streams.push(tokio::spawn(async move {
                let mut s = event_stream(port, &format!("/api/status/{id}/events"), &[]).await;
                assert_eq!(s.status, 200);
                let mut n = 0;
                while s.next().await.is_some() {
                    n += 1;
                    if n == 1 {
                        let _ = ready.send(()).await;
                    }
                }
                n
            }));
        }
        let opened = Instant::now();
        for _ in 0..STREAMS {
            ready_rx.recv().await.expect("a stream's first event");
        }
        let open_time = opened.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (with, gw_cpu1, sched_cpu1) = paced_starts(port, gw_pid, sched_pid).await;
        let rss_with = rss_mib(gw_pid).1;
        for s in &streams {
            s.abort();
        }

        println!("\nStatus streams: {STREAMS} open on pending operations (read once a second each), starts at {START_RATE:.0}/s for {}s meanwhile:\n", MEASURE.as_secs());
        println!("| streams open | start p50 ms | start p99 ms | gateway RSS MiB | gateway CPU (cores) | scheduler CPU (cores) |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| 0 | {:.2} | {:.2} | {:.1} | {:.3} | {:.3} |",
            percentile(&without, 0.5),
            percentile(&without, 0.99),
            rss_before,
            gw_cpu0,
            sched_cpu0
        );
        println!(
            "| {STREAMS} | {:.2} | {:.2} | {:.1} | {:.3} | {:.3} |",
            percentile(&with, 0.5),
            percentile(&with, 0.99),
            rss_with,
            gw_cpu1,
            sched_cpu1
        );
        println!(
            "\n{STREAMS} streams opened (first event each) in {:.2} s; they cost the gateway {:.1} MiB ({:.1} KiB each) and {:.3} cores",
            open_time.as_secs_f64(),
            rss_with - rss_before,
            (rss_with - rss_before) * 1024.0 / STREAMS as f64,
            gw_cpu1 - gw_cpu0
        );
    });
}
