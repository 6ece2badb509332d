//! What the scheduler's bounded-state work buys, measured in one run:
//! - `list`: a list page (`QueryInstances`, 50 per page) with 1,000 and with 100,000 instances,
//!   timed in process on the engine, three ways (see `Walk`): with keyset paging the cost of a
//!   page does not depend on the number of instances, only on whether its rows are in cache;
//! - `polls`: new starts at a fixed rate while 10,000 `WaitForInstanceCompletion` long polls
//!   (30 s) wait on running operations, against the same rate with none: start latency p50/p99
//!   and the scheduler's CPU (long polls wake only for their own instance);
//! - `memory`: RSS per finished instance kept (200,000 operations, SQLite store, no retention),
//!   a restart on that file, and 200,000 operations with a 1 s retention.
//!
//! `cargo bench -p local-scheduler --bench scheduler_state [-- list|polls|memory]` (or `make
//! bench`). Prints tables; no assertions.

use std::process::Stdio;
use std::time::{Duration, Instant};

use durabletask::{Client, Connection, ConnectionOptions, StartOptions};
use durabletask_proto as pb;
use local_scheduler::engine::Engine;
use test_support::net::{free_port, wait_port};
use test_support::process::{cpu_seconds, rss_mib};
use tokio::process::{Child, Command};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// An engine (in memory, no store) holding `instances` started instances.
fn engine_with(instances: usize) -> Engine {
    let mut e = Engine::new(&["h".to_string()]).without_persistence();
    for i in 0..instances {
        e.start_instance(
            "h",
            pb::CreateInstanceRequest {
                instance_id: format!("i{i:07}"),
                name: "o".into(),
                ..Default::default()
            },
        )
        .expect("start");
        if i % 10_000 == 0 {
            e.take_changes();
            e.take_touched();
        }
    }
    e
}

/// How a list-page run moves through the instances.
#[derive(Clone, Copy)]
enum Walk {
    /// Every page from the first, again from the first at the end: at 1,000 instances the same
    /// 20 pages over and over (all in cache), at 100,000 each page once (none in cache).
    Every,
    /// The first 20 pages (1,000 instances) over and over, as a dashboard refreshing its first
    /// pages does: the same rows in both sizes, so only the index's size differs.
    First20,
    /// The caches evicted before each page (a 64 MiB buffer written), as a page served between
    /// other requests is: the same (cold) memory in both sizes, so only the index's size differs.
    Cold,
}

/// Median and p99 time of one 50-instance page over 2,000 pages.
fn page_latency(e: &mut Engine, walk: Walk) -> (Duration, Duration) {
    const PAGES: usize = 2_000;
    let mut evict = vec![0u8; 64 << 20];
    let mut times = Vec::with_capacity(PAGES);
    let mut token = None;
    let mut in_walk = 0;
    while times.len() < PAGES {
        if matches!(walk, Walk::First20) && in_walk == 20 {
            token = None;
            in_walk = 0;
        }
        if matches!(walk, Walk::Cold) {
            for b in evict.iter_mut().step_by(64) {
                *b = b.wrapping_add(1);
            }
            std::hint::black_box(&evict);
        }
        let q = pb::InstanceQuery {
            max_instance_count: 50,
            continuation_token: token.take(),
            ..Default::default()
        };
        let t = Instant::now();
        let page = e.query("h", &q).expect("query");
        times.push(t.elapsed());
        in_walk += 1;
        token = page.continuation_token;
        if token.is_none() {
            in_walk = 0;
        }
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// A scheduler process with the instance and backlog limits lifted (the bench decides what
/// accumulates) and `env` on top.
async fn scheduler_with(env: &[(&str, String)]) -> (Child, u16) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_local-scheduler"));
    cmd.env("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "LOCAL_SCHEDULER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("LOCAL_SCHEDULER__STORE", "memory")
        .env("LOCAL_SCHEDULER__MAX_INSTANCES", "0")
        .env("LOCAL_SCHEDULER__MAX_BACKLOG", "0")
        .env("LOCAL_SCHEDULER__MAX_STATE_BYTES", "0")
        .env("RUST_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn local-scheduler");
    wait_port(port).await;
    (child, port)
}

async fn scheduler() -> (Child, u16) {
    scheduler_with(&[]).await
}

/// Runs `n` one-activity orchestrations to their end, 64 at a time, with an in-process worker.
async fn run_operations(port: u16, n: usize) {
    let conn = connect(port).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(
        durabletask::Worker::new(
            &conn,
            test_support::scenarios::registry(),
            durabletask::WorkerOptions::default(),
        )
        .run(stop.clone()),
    );
    let client = Client::new(&conn);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = slots.clone().acquire_owned().await.expect("semaphore");
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            let id = c
                .schedule_new_orchestration("sequence", &["bench"], StartOptions::default())
                .await
                .expect("start");
            c.wait_for_instance_completion(&id, false, Duration::from_secs(120))
                .await
                .expect("wait");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    stop.cancel();
    let _ = worker.await;
}

/// RSS once the scheduler answers gRPC: it binds its port before loading its store, and serves
/// only after.
async fn rss_once_serving(child: &Child, port: u16) -> (f64, f64) {
    let client = Client::new(&connect(port).await);
    client
        .get_instance("any", false)
        .await
        .expect("the scheduler answers");
    rss_mib(child.id().expect("pid"))
}

struct Memory {
    /// KiB of resident memory per finished instance kept (SQLite store, no retention).
    per_instance_kib: f64,
    /// Peak and current RSS of a scheduler restarted on that file, once it has loaded it.
    restarted_mib: (f64, f64),
    empty_mib: f64,
    /// How long the restarted scheduler took to serve.
    restart_secs: f64,
    kept: usize,
    /// Peak and final RSS after `churned` operations with a 1 s retention.
    churn_peak_mib: f64,
    churn_final_mib: f64,
    churned: usize,
}

async fn finished_memory() -> Memory {
    const KEPT: usize = 200_000;
    const CHURNED: usize = 200_000;
    let dir = std::env::temp_dir().join(format!("scheduler-state-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (child, port) = scheduler_with(&[
        ("LOCAL_SCHEDULER__STORE", "sqlite".into()),
        (
            "LOCAL_SCHEDULER__SQLITE_PATH",
            dir.join("kept.db").display().to_string(),
        ),
        ("LOCAL_SCHEDULER__RETENTION_COMPLETED_SECONDS", "0".into()),
    ])
    .await;
    let pid = child.id().expect("pid");
    run_operations(port, 200).await;
    let before = rss_mib(pid).1;
    run_operations(port, KEPT).await;
    let after = rss_mib(pid).1;
    drop(child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same file, loaded by a new process: what a restart costs.
    let restart_began = Instant::now();
    let (child, restarted_port) = scheduler_with(&[
        ("LOCAL_SCHEDULER__STORE", "sqlite".into()),
        (
            "LOCAL_SCHEDULER__SQLITE_PATH",
            dir.join("kept.db").display().to_string(),
        ),
    ])
    .await;
    let restarted_mib = rss_once_serving(&child, restarted_port).await;
    let restart_secs = restart_began.elapsed().as_secs_f64();
    drop(child);
    let (child, empty_port) = scheduler_with(&[
        ("LOCAL_SCHEDULER__STORE", "sqlite".into()),
        (
            "LOCAL_SCHEDULER__SQLITE_PATH",
            dir.join("empty.db").display().to_string(),
        ),
    ])
    .await;
    let empty_mib = rss_once_serving(&child, empty_port).await.1;
    drop(child);

    let (child, port) = scheduler_with(&[
        ("LOCAL_SCHEDULER__STORE", "sqlite".into()),
        (
            "LOCAL_SCHEDULER__SQLITE_PATH",
            dir.join("churn.db").display().to_string(),
        ),
        ("LOCAL_SCHEDULER__RETENTION_COMPLETED_SECONDS", "1".into()),
    ])
    .await;
    let pid = child.id().expect("pid");
    run_operations(port, CHURNED).await;
    // Past the retention and a sweep, the last ones are purged too.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (peak, last) = rss_mib(pid);
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    Memory {
        per_instance_kib: (after - before) * 1024.0 / KEPT as f64,
        restarted_mib,
        empty_mib,
        restart_secs,
        kept: KEPT,
        churn_peak_mib: peak,
        churn_final_mib: last,
        churned: CHURNED,
    }
}

async fn connect(port: u16) -> Connection {
    Connection::connect(
        ConnectionOptions::new(&format!("http://127.0.0.1:{port}"), "default").expect("opts"),
    )
    .await
    .expect("connect")
}

struct StartFigures {
    p50: Duration,
    p99: Duration,
    cpu_share: f64,
    rss: f64,
}

/// Starts at `rate` per second for `secs` seconds on a fixed schedule (latency from each start's
/// due time); the scheduler's CPU share over the window.
async fn starts_at_rate(client: &Client, pid: u32, rate: u32, secs: u32) -> StartFigures {
    let total = rate * secs;
    let interval = Duration::from_secs(1) / rate;
    let cpu0 = cpu_seconds(pid);
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = began + interval * i;
        tokio::time::sleep_until(due.into()).await;
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.schedule_new_orchestration("waits", &(), StartOptions::default())
                .await
                .expect("start");
            due.elapsed()
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    for t in tasks {
        lat.push(t.await.expect("task"));
    }
    let wall = began.elapsed().as_secs_f64();
    lat.sort();
    StartFigures {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        cpu_share: (cpu_seconds(pid) - cpu0) / wall,
        rss: rss_mib(pid).1,
    }
}

async fn long_polls() -> (StartFigures, StartFigures, usize) {
    const POLLS: usize = 10_000;
    const CONNECTIONS: usize = 50;
    const RATE: u32 = 500;
    let (child, port) = scheduler().await;
    let pid = child.id().expect("pid");
    let conn = connect(port).await;
    let client = Client::new(&conn);

    let baseline = starts_at_rate(&client, pid, RATE, 5).await;

    // 10,000 running operations (no worker: they wait), each with a long poll on it.
    let mut ids = Vec::with_capacity(POLLS);
    for _ in 0..POLLS {
        ids.push(
            client
                .schedule_new_orchestration("waits", &(), StartOptions::default())
                .await
                .expect("start"),
        );
    }
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(Client::new(&connect(port).await));
    }
    let mut polls = Vec::with_capacity(POLLS);
    for (i, id) in ids.into_iter().enumerate() {
        let c = clients[i % CONNECTIONS].clone();
        polls.push(tokio::spawn(async move {
            c.wait_for_instance_completion(&id, false, Duration::from_secs(30))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = polls.iter().filter(|p| !p.is_finished()).count();
    let loaded = starts_at_rate(&client, pid, RATE, 5).await;
    for p in polls {
        p.abort();
    }
    drop(child);
    (baseline, loaded, open)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too; only `cargo bench` passes `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `cargo bench --bench scheduler_state -- list` (or `polls`, `memory`) runs one section.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    if runs("list") {
        list_pages();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if runs("polls") {
        rt.block_on(report_long_polls());
    }
    if runs("memory") {
        rt.block_on(report_memory());
    }
}

fn list_pages() {
    let walks = [
        (Walk::Every, "every page in turn"),
        (Walk::First20, "first 20 pages, repeated"),
        (Walk::Cold, "caches evicted before each page"),
    ];
    let mut small = engine_with(1_000);
    let small: Vec<_> = walks
        .iter()
        .map(|(w, _)| page_latency(&mut small, *w))
        .collect();
    let mut large = engine_with(100_000);
    let large: Vec<_> = walks
        .iter()
        .map(|(w, _)| page_latency(&mut large, *w))
        .collect();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("\nList page (50 instances, QueryInstances on the engine, in process):\n");
    println!("| walk | 1,000: p50 / p99 µs | 100,000: p50 / p99 µs | ratio p50 / p99 |");
    println!("|---|---|---|---|");
    for (((_, label), s), l) in walks.iter().zip(&small).zip(&large) {
        println!(
            "| {label} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2}x / {:.2}x |",
            us(s.0),
            us(s.1),
            us(l.0),
            us(l.1),
            us(l.0) / us(s.0),
            us(l.1) / us(s.1)
        );
    }
}

async fn report_long_polls() {
    let (baseline, loaded, open) = long_polls().await;
    println!("\nStarts at 500/s for 5 s (open loop), local scheduler in memory:\n");
    println!(
        "| long polls waiting | start p50 ms | start p99 ms | scheduler CPU (cores) | scheduler RSS MiB |"
    );
    println!("|---|---|---|---|---|");
    for (label, f) in [("none", &baseline), (&*format!("{open}"), &loaded)] {
        println!(
            "| {label} | {} | {} | {:.2} | {:.1} |",
            ms(f.p50),
            ms(f.p99),
            f.cpu_share,
            f.rss
        );
    }
}

async fn report_memory() {
    let memory = finished_memory().await;
    println!("\nMemory of finished operations (one activity each):\n");
    println!(
        "- kept (SQLite store, no retention): {:.1} KiB of scheduler RSS per finished instance, over {}",
        memory.per_instance_kib, memory.kept
    );
    println!(
        "- restarted on that file: serving after {:.1} s, RSS {:.1} MiB (peak {:.1} MiB; {:.1} MiB on an empty file): {:.2} KiB per finished instance",
        memory.restart_secs,
        memory.restarted_mib.1,
        memory.restarted_mib.0,
        memory.empty_mib,
        (memory.restarted_mib.1 - memory.empty_mib) * 1024.0 / memory.kept as f64
    );
    println!(
        "- {} operations through a scheduler with a 1 s retention (SQLite store): peak RSS {:.1} MiB, {:.1} MiB at the end",
        memory.churned, memory.churn_peak_mib, memory.churn_final_mib
    );
}
