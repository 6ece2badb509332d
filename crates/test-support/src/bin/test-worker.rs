//! A worker process for the tests that need code the product's worker must not have: an activity
//! that panics or kills its own process, and two versions of `process_request` whose histories
//! differ, so that replaying one on the other is a non-determinism failure.
//!
//! The same environment as the product's worker where they overlap (`ENDPOINT`, `TASKHUB`,
//! `HOSTNAME`, `WORKER__ADMIN_LISTEN`, `WORKER__DRAIN_TIMEOUT_SECONDS`,
//! `WORKER__ORCHESTRATION_VERSION`), plus `TEST_WORKER_CODE` (`1` or `2`, the code it runs).
//!
//! - code 1: a durable timer of `delay_seconds`, then the activity;
//! - code 2: the activity, then the timer.
//!
//! The activity logs `processing request` with the operation's id (as the product's does, so
//! [`test_support::fleet`] counts its runs), then answers at once; a `name` of `panic` makes it
//! panic, `abort` kills the process (as an out-of-memory kill would).

use std::time::Duration;

use axum::routing::get;
use contract::{PROCESS_ACTIVITY, PROCESS_ORCHESTRATION, ProcessRequest, ProcessResult};
use durabletask::{
    ActivityContext, Connection, ConnectionOptions, OrchestrationContext, Registry, Worker,
    WorkerOptions,
};

fn env(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn registry(worker: String, code: u32) -> Registry {
    let mut r = Registry::new();
    r.add_orchestrator(
        PROCESS_ORCHESTRATION,
        move |ctx: OrchestrationContext, req: ProcessRequest| async move {
            let wait = chrono::Duration::seconds(req.delay_seconds as i64);
            let result: ProcessResult = if code == 1 {
                ctx.set_custom_status(&serde_json::json!({"stage": "waiting", "code": 1}));
                ctx.create_timer(ctx.current_utc_datetime() + wait).await;
                ctx.call_activity(PROCESS_ACTIVITY, &req).await?
            } else {
                let result = ctx.call_activity(PROCESS_ACTIVITY, &req).await?;
                ctx.set_custom_status(&serde_json::json!({"stage": "waiting", "code": 2}));
                ctx.create_timer(ctx.current_utc_datetime() + wait).await;
                result
            };
            Ok(result)
        },
    );
    r.add_activity(
        PROCESS_ACTIVITY,
        move |_ctx: ActivityContext, req: ProcessRequest| {
            let worker = worker.clone();
            async move {
                tracing::info!(name = %req.name, "processing request");
                match req.name.as_str() {
                    "panic" => panic!("the activity panicked on purpose"),
                    "abort" => std::process::abort(),
                    _ => {}
                }
                Ok(ProcessResult {
                    message: format!("Hello {}! (code {code})", req.name),
                    name: req.name,
                    processing_time_seconds: req.delay_seconds,
                    worker: format!("{worker}@code-{code}"),
                    completed_at: chrono::Utc::now(),
                })
            }
        },
    );
    r
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry =
        service_kit::telemetry::init("test-worker", service_kit::settings::LogFormat::Json);
    let code: u32 = env("TEST_WORKER_CODE", "1").parse()?;
    let name = env("HOSTNAME", "test-worker");
    let conn = Connection::connect(ConnectionOptions::new(
        &env("ENDPOINT", "http://localhost:8080"),
        &env("TASKHUB", "default"),
    )?)
    .await?;
    let version = std::env::var("WORKER__ORCHESTRATION_VERSION").ok();
    let options = WorkerOptions {
        drain_timeout: Duration::from_secs(env("WORKER__DRAIN_TIMEOUT_SECONDS", "25").parse()?),
        versions: version.clone().map(|v| vec![v]),
        ..Default::default()
    };
    let worker = Worker::new(&conn, registry(name.clone(), code), options);
    let ready = worker.readiness();
    let admin = tokio::net::TcpListener::bind(env("WORKER__ADMIN_LISTEN", "127.0.0.1:0")).await?;
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(admin, router).await });
    let shutdown = service_kit::cancelled_on_signal("");
    tracing::info!(%name, code, version = version.as_deref().unwrap_or(""), "test worker running");
    worker.run(shutdown).await?;
    telemetry.shutdown();
    Ok(())
}
