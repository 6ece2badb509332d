//! The dashboard's list page with 10,000 instances on the local scheduler: the time to serve it
//! (the server's answer, over HTTP, with the counts over every instance computed or reused)
//! and to serve and render it (headless Chromium: an open tab loading it, and a new browser).
//!
//! `cargo bench -p dashboard --bench dashboard_list` (or `make bench`; release binaries of the
//! local scheduler). Prints a table; no assertions.

use std::time::{Duration, Instant};

use durabletask::{Client, Connection, ConnectionOptions, StartOptions};
use test_support::net::free_port;
use test_support::process::{spawn, spawn_path};

const INSTANCES: usize = 10_000;
const SAMPLES: usize = 20;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sched = free_port();
        let _scheduler = spawn(
            "local-scheduler",
            &[
                ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{sched}")),
                (
                    "LOCAL_SCHEDULER__ADMIN_LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                ),
                ("LOCAL_SCHEDULER__STORE", "memory".into()),
            ],
            sched,
        )
        .await;
        let endpoint = format!("http://127.0.0.1:{sched}");
        let conn = Connection::connect(ConnectionOptions::new(&endpoint, "default").expect("opts"))
            .await
            .expect("connect");
        let client = Client::new(&conn);
        // Pending instances (no worker): what the list shows is the same for any status.
        for _ in 0..INSTANCES {
            client
                .schedule_new_orchestration(
                    "process_request",
                    &serde_json::json!({"name": "bench"}),
                    StartOptions::default(),
                )
                .await
                .expect("start");
        }
        let port = free_port();
        let _dashboard = spawn_path(
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_dashboard")),
            &[
                ("ENDPOINT", endpoint),
                ("DASHBOARD__LISTEN", format!("127.0.0.1:{port}")),
            ],
            port,
        )
        .await;
        let url = format!("http://127.0.0.1:{port}/?paused=1");
        // Counts over all instances are kept 5 s: the first request of a set of filters reads
        // every row, the next ones reuse them. Both are measured (a distinct `to` filter that
        // every instance matches makes each request a first one).
        let mut served_counted = Vec::new();
        for i in 0..SAMPLES {
            let path = format!("/?paused=1&to=2099-01-01T00:{i:02}");
            let t = Instant::now();
            let (status, _, body) = test_support::http::request(port, "GET", &path, &[], "").await;
            served_counted.push(t.elapsed());
            assert!(
                status == 200 && body.contains(&format!("All: {INSTANCES}")),
                "{status}"
            );
        }
        served_counted.sort();
        let mut served = Vec::new();
        for _ in 0..SAMPLES {
            let t = Instant::now();
            let (status, _, body) =
                test_support::http::request(port, "GET", "/?paused=1", &[], "").await;
            served.push(t.elapsed());
            assert!(status == 200 && body.contains("data-instance"), "{status}");
        }
        served.sort();
        // In an open browser: from navigation to the load event, counts computed each time.
        let mut tab = test_support::browser::Tab::open().await;
        let mut loaded = Vec::new();
        for i in 0..SAMPLES {
            let t = Instant::now();
            tab.goto(&format!("{url}&to=2099-01-02T00:{i:02}")).await;
            loaded.push(t.elapsed());
            let rows = tab
                .eval("document.querySelectorAll('tr[data-instance]').length")
                .await;
            assert_eq!(rows, 50);
        }
        loaded.sort();
        let mut rendered = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let dom = test_support::browser::dump_dom(&url).await;
            rendered.push(t.elapsed());
            assert!(dom.contains("data-instance"));
        }
        rendered.sort();
        println!(
            "\nDashboard list page (50 rows) with {INSTANCES} instances on the local scheduler:\n"
        );
        println!("| what | p50 ms | worst ms |");
        println!("|---|---|---|");
        let row = |what: &str, d: &[Duration]| {
            println!(
                "| {what} | {:.1} | {:.1} |",
                percentile(d, 0.5).as_secs_f64() * 1e3,
                d.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
            );
        };
        row(
            &format!("served, counts over all {INSTANCES} computed ({SAMPLES} requests)"),
            &served_counted,
        );
        row(
            &format!("served, counts reused ({SAMPLES} requests)"),
            &served,
        );
        row(
            &format!(
                "loaded and rendered in open headless Chromium, counts computed ({SAMPLES} loads)"
            ),
            &loaded,
        );
        row(
            "served and rendered by a new headless Chromium (process start included, 5 loads)",
            &rendered,
        );
    });
}
