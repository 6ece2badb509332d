//! Work items per second through the SDK worker against an in-process fake scheduler, next to the
//! raw ceiling (a bare tonic client reading the same stream and completing each item) in the same run.
//!
//! `cargo bench --bench worker_throughput` (or `make bench`). Prints a table; no assertions.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use durabletask::proto as pb;
use durabletask::{
    ActivityContext, Connection, ConnectionOptions, Registry, Worker, WorkerOptions,
};
use test_support::fake_scheduler::{Fake, activity_item, serve};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const ITEMS: usize = 40_000;
const CONCURRENCY: usize = 100;

async fn feed(fake: &Fake, n: usize) {
    for i in 0..n {
        fake.push(activity_item(&i.to_string(), "noop", Some("1")))
            .await;
    }
}

async fn wait_completions(fake: &Fake, n: usize) {
    assert!(
        fake.wait_until(Duration::from_secs(300), |i| i
            .activity_completions
            .lock()
            .unwrap()
            .len()
            >= n)
            .await,
        "timed out"
    );
}

async fn sdk_worker() -> f64 {
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    let conn = Connection::connect(
        ConnectionOptions::new(&format!("http://{addr}"), "bench").expect("opts"),
    )
    .await
    .expect("connect");
    let mut reg = Registry::new();
    reg.add_activity("noop", |_c: ActivityContext, n: i64| async move { Ok(n) });
    let worker = Worker::new(
        &conn,
        reg,
        WorkerOptions {
            max_concurrent_activities: CONCURRENCY,
            ..Default::default()
        },
    );
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    assert!(
        fake.wait_until(Duration::from_secs(10), |i| !i
            .streams
            .lock()
            .unwrap()
            .is_empty())
            .await
    );
    let start = Instant::now();
    let f = fake.clone();
    tokio::spawn(async move { feed(&f, ITEMS).await });
    wait_completions(&fake, ITEMS).await;
    let rate = ITEMS as f64 / start.elapsed().as_secs_f64();
    stop.cancel();
    let _ = run.await;
    rate
}

async fn raw_ceiling() -> f64 {
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let client = pb::TaskHubSidecarServiceClient::new(channel);
    let mut stream = client
        .clone()
        .get_work_items(pb::GetWorkItemsRequest::default())
        .await
        .expect("stream")
        .into_inner();
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let start = Instant::now();
    let f = fake.clone();
    tokio::spawn(async move { feed(&f, ITEMS).await });
    let reader = tokio::spawn(async move {
        while let Ok(Some(item)) = stream.message().await {
            let Some(pb::work_item::Request::ActivityRequest(req)) = item.request else {
                continue;
            };
            let permit = slots.clone().acquire_owned().await.expect("sem");
            let mut c = client.clone();
            tokio::spawn(async move {
                let _p = permit;
                let _ = c
                    .complete_activity_task(pb::ActivityResponse {
                        instance_id: "inst".into(),
                        task_id: req.task_id,
                        result: req.input,
                        failure_details: None,
                        completion_token: item.completion_token,
                    })
                    .await;
            });
        }
    });
    wait_completions(&fake, ITEMS).await;
    let rate = ITEMS as f64 / start.elapsed().as_secs_f64();
    reader.abort();
    rate
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants a quick exit.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Alternate the two paths so warm-up and machine noise hit both; report the best of each.
        let (mut raw, mut sdk) = (0f64, 0f64);
        for _ in 0..3 {
            raw = raw.max(raw_ceiling().await);
            sdk = sdk.max(sdk_worker().await);
        }
        println!("worker throughput, {ITEMS} activity work items, concurrency {CONCURRENCY}, in-process fake scheduler, best of 3");
        println!("| path | items/s |");
        println!("|---|---|");
        println!("| raw tonic stream + complete (ceiling) | {raw:.0} |");
        println!("| durabletask Worker | {sdk:.0} |");
        println!("| ratio worker / ceiling | {:.2} |", sdk / raw);
    });
}
