//! Work items per second through the local scheduler with our Rust worker, next to the official
//! Python SDK's in-memory server in the same run. Orchestration = 1 activity, no delay, so each
//! orchestration is 3 work items (start episode, activity, completion episode).
//!
//! Entity operations per second too: signals to 64 counter entities, run by a Rust worker, from
//! the first signal until every counter shows all of its operations.
//!
//! `cargo bench -p local-scheduler` (or `make bench`). Prints a table; no assertions.

use test_support::net::{free_port, wait_port};
use test_support::python as pyenv;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use durabletask::{
    ActivityContext, Client, Connection, ConnectionOptions, EntityContext, EntityId,
    OrchestrationContext, Registry, StartOptions, Worker, WorkerOptions,
};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

async fn local_scheduler(store: &str, db: &std::path::Path) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_local-scheduler"))
        .env("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "LOCAL_SCHEDULER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("LOCAL_SCHEDULER__STORE", store)
        .env("LOCAL_SCHEDULER__SQLITE_PATH", db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn local-scheduler");
    wait_port(port).await;
    (child, port)
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_activity("noop", |_c: ActivityContext, n: u64| async move { Ok(n) });
    r.add_orchestrator("one", |ctx: OrchestrationContext, n: u64| async move {
        Ok(ctx.call_activity::<_, u64>("noop", &n).await?)
    });
    r
}

/// Runs `n` orchestrations with at most `in_flight` outstanding; returns work items per second.
async fn measure(port: u16, n: usize, in_flight: usize) -> f64 {
    let conn = Connection::connect(
        ConnectionOptions::new(&format!("http://127.0.0.1:{port}"), "default").expect("opts"),
    )
    .await
    .expect("connect");
    let stop = CancellationToken::new();
    let worker =
        tokio::spawn(Worker::new(&conn, registry(), WorkerOptions::default()).run(stop.clone()));
    let client = Client::new(&conn);
    // Warm-up, so connections and the worker stream exist before the clock starts.
    for i in 0..20u64 {
        let id = client
            .schedule_new_orchestration("one", &i, StartOptions::default())
            .await
            .expect("start");
        client
            .wait_for_instance_completion(&id, false, Duration::from_secs(60))
            .await
            .expect("wait");
    }
    let slots = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let permit = slots.clone().acquire_owned().await.expect("sem");
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            let id = c
                .schedule_new_orchestration("one", &i, StartOptions::default())
                .await
                .expect("start");
            let m = c
                .wait_for_instance_completion(&id, false, Duration::from_secs(120))
                .await
                .expect("wait")
                .expect("exists");
            assert_eq!(
                m.runtime_status,
                durabletask::OrchestrationStatus::Completed
            );
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let rate = (3 * n) as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = worker.await;
    rate
}

/// Signals `per_entity` "add 1" operations to each of `entities` counters (64 senders), with a
/// Rust worker running them; returns entity operations per second, from the first signal until
/// every counter shows all of its operations.
async fn measure_entities(port: u16, entities: usize, per_entity: usize) -> f64 {
    let conn = Connection::connect(
        ConnectionOptions::new(&format!("http://127.0.0.1:{port}"), "default").expect("opts"),
    )
    .await
    .expect("connect");
    let mut r = Registry::new();
    r.add_entity("counter", |ctx: &mut EntityContext, n: i64| {
        let value = ctx.state::<i64>()?.unwrap_or(0);
        ctx.set_state(&(value + n))?;
        Ok(())
    });
    let stop = CancellationToken::new();
    let worker = tokio::spawn(Worker::new(&conn, r, WorkerOptions::default()).run(stop.clone()));
    let client = Client::new(&conn);
    let run = uuid_like();
    let ids: Vec<EntityId> = (0..entities)
        .map(|i| EntityId::new("counter", &format!("{run}-{i}")))
        .collect();
    let started = Instant::now();
    let senders = 64;
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (c, ids) = (client.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = s;
            while k < ids.len() * per_entity {
                c.signal_entity(&ids[k % ids.len()], "add", &1, None)
                    .await
                    .expect("signal");
                k += senders;
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    for id in &ids {
        loop {
            let done = client
                .get_entity(id, true)
                .await
                .expect("get")
                .and_then(|m| m.state::<i64>().ok().flatten())
                == Some(per_entity as i64);
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let rate = (entities * per_entity) as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = worker.await;
    rate
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}

/// Enqueue-to-delivery latency of orchestration work items at a paced start rate: the time from
/// sending `StartInstance` to the work item arriving on a (raw) worker stream.
async fn dispatch_latency(port: u16, rate_per_s: f64, n: usize) -> (f64, f64, f64) {
    use durabletask::proto as pb;
    use std::collections::HashMap;
    use std::sync::Mutex;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    let hub = |r: &mut tonic::metadata::MetadataMap| {
        r.insert(
            "taskhub",
            tonic::metadata::AsciiMetadataValue::from_static("default"),
        );
    };
    let raw = pb::TaskHubSidecarServiceClient::new(channel);
    let mut req = tonic::Request::new(pb::GetWorkItemsRequest {
        max_concurrent_orchestration_work_items: 1000,
        ..Default::default()
    });
    hub(req.metadata_mut());
    let mut stream = raw
        .clone()
        .get_work_items(req)
        .await
        .expect("stream")
        .into_inner();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (s2, l2, c2) = (sent.clone(), latencies.clone(), raw.clone());
    let reader = tokio::spawn(async move {
        while let Ok(Some(item)) = stream.message().await {
            let Some(pb::work_item::Request::OrchestratorRequest(r)) = item.request else {
                continue;
            };
            let now = Instant::now();
            if let Some(t) = s2
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&r.instance_id)
            {
                l2.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(now.duration_since(*t).as_secs_f64() * 1000.0);
            }
            let mut c = c2.clone();
            tokio::spawn(async move {
                let mut done = tonic::Request::new(pb::OrchestratorResponse {
                    instance_id: r.instance_id,
                    completion_token: item.completion_token,
                    actions: vec![pb::OrchestratorAction {
                        id: 0,
                        orchestrator_action_type: Some(
                            pb::orchestrator_action::OrchestratorActionType::CompleteOrchestration(
                                pb::CompleteOrchestrationAction {
                                    orchestration_status: pb::OrchestrationStatus::Completed as i32,
                                    ..Default::default()
                                },
                            ),
                        ),
                    }],
                    ..Default::default()
                });
                done.metadata_mut().insert(
                    "taskhub",
                    tonic::metadata::AsciiMetadataValue::from_static("default"),
                );
                let _ = c.complete_orchestrator_task(done).await;
            });
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate_per_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut starters = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        let (mut c, s3) = (raw.clone(), sent.clone());
        starters.push(tokio::spawn(async move {
            let id = format!("lat-{i}");
            s3.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), Instant::now());
            let mut r = tonic::Request::new(pb::CreateInstanceRequest {
                instance_id: id,
                name: "o".into(),
                ..Default::default()
            });
            r.metadata_mut().insert(
                "taskhub",
                tonic::metadata::AsciiMetadataValue::from_static("default"),
            );
            c.start_instance(r).await.expect("start");
        }));
    }
    for s in starters {
        let _ = s.await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.lock().unwrap_or_else(|e| e.into_inner()).len() < n && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (pct(0.5), pct(0.99), l.len() as f64)
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
        let dir = std::env::temp_dir().join(format!("ls-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");

        // The Python server answers every RPC, long polls included, on a pool of 10 threads, so it
        // cannot take more than 8 waiting clients: it runs at 4 and 8 in flight, ours at 64 and 8.
        // Both ratios are printed: best against best, and equal concurrency.
        let (child, port) = local_scheduler("memory", &dir.join("unused.db")).await;
        let memory64 = measure(port, 3000, 64).await;
        let memory8 = measure(port, 1500, 8).await;
        drop(child);

        // Half the peak: the peak orchestration rate is a third of the work-item rate.
        let half_peak_starts = memory64 / 3.0 / 2.0;
        let (child, port) = local_scheduler("memory", &dir.join("unused2.db")).await;
        let (p50, p99, seen) = dispatch_latency(port, half_peak_starts, 4000).await;
        drop(child);

        let (child, port) = local_scheduler("sqlite", &dir.join("bench.db")).await;
        let sqlite64 = measure(port, 3000, 64).await;
        drop(child);

        let (child, port) = local_scheduler("memory", &dir.join("unused3.db")).await;
        let entities_memory = measure_entities(port, 64, 100).await;
        drop(child);
        let (child, port) = local_scheduler("sqlite", &dir.join("entities.db")).await;
        let entities_sqlite = measure_entities(port, 64, 100).await;
        drop(child);

        let port = free_port();
        let _py = pyenv::spawn_python(&[pyenv::script("in_memory_backend.py").display().to_string(), port.to_string()]).await;
        let python4 = measure(port, 300, 4).await;
        let python8 = measure(port, 300, 8).await;
        let python_peak = python4.max(python8);
        let memory_peak = memory64.max(memory8);

        println!("local scheduler throughput: orchestration = 1 activity (3 work items), Rust worker, all on this machine");
        println!("| server | orchestrations in flight | work items/s |");
        println!("|---|---|---|");
        println!("| local-scheduler, in-memory | 64 | {memory64:.0} |");
        println!("| local-scheduler, SQLite file (WAL) | 64 | {sqlite64:.0} |");
        println!("| local-scheduler, in-memory | 8 | {memory8:.0} |");
        println!("| Python SDK in-memory server (durabletask.testing) | 4 | {python4:.0} |");
        println!("| Python SDK in-memory server (durabletask.testing) | 8 | {python8:.0} |");
        println!("| ratio in-memory / Python, each at its best concurrency | | {:.1} |", memory_peak / python_peak);
        println!("| ratio in-memory / Python, both at 8 in flight | | {:.1} |", memory8 / python8);
        println!();
        println!("entity operations: 6,400 signals to 64 counter entities (64 senders), Rust worker, until every counter shows all of its operations");
        println!("| store | entity operations/s | against orchestration work items/s (64 in flight) |");
        println!("|---|---|---|");
        println!("| in-memory | {entities_memory:.0} | {:.2} |", entities_memory / memory64);
        println!("| SQLite file (WAL) | {entities_sqlite:.0} | {:.2} |", entities_sqlite / sqlite64);
        println!();
        println!(
            "dispatch latency (StartInstance sent -> work item received), in-memory, {half_peak_starts:.0} starts/s (half the peak), {seen} items: p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
