//! `worker`: pulls work items from DTS (or the local scheduler) and runs the async HTTP API's
//! orchestration and activity.
//!
//! Configuration: defaults, then an optional TOML file (`--config <path>` or `WORKER_CONFIG`),
//! then `WORKER__<KEY>` variables. The original sample's `ENDPOINT` / `TASKHUB` work as there,
//! and `DURABLE_TASK_SCHEDULER_CONNECTION_STRING` (or `WORKER__CONNECTION_STRING`) takes a DTS
//! connection string.

// A binary: `pub` inside its modules only means "used across modules".
#![allow(unreachable_pub)]

mod callbacks;
mod metrics;
mod orchestrations;
mod settings;
mod versions;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use durabletask::{Connection, Worker, WorkerOptions};
use service_kit::settings::Startup;

use crate::settings::{SOURCE, Settings};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("versions") {
        versions::command(args[1..].to_vec()).await
    } else {
        run().await.map(|()| 0)
    };
    match outcome {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("worker: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings: Settings = match service_kit::settings::load(&SOURCE)? {
        Startup::Run(s) => s,
        Startup::Print(text) => {
            println!("{text}");
            return Ok(());
        }
    };
    let conn_options = service_kit::connection_options(
        &settings.endpoint,
        &settings.taskhub,
        settings.connection_string.as_deref(),
    )
    .context("`endpoint` / `taskhub` / `connection_string`")?;
    let telemetry = service_kit::telemetry::init("worker", &settings.log_format);
    tracing::info!(endpoint = %conn_options.endpoint, taskhub = %conn_options.taskhub, "connecting");
    let conn = Connection::connect(conn_options)
        .await
        .context("connecting to the scheduler")?;

    let worker_name =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("worker-{}", std::process::id()));
    let mut registry = orchestrations::registry(worker_name);
    let callback_metrics = callbacks::CallbackMetrics::default();
    callbacks::register(
        &mut registry,
        Arc::new(callbacks::CallbackConfig::from_settings(&settings).map_err(anyhow::Error::msg)?),
        durabletask::Client::new(&conn),
        callback_metrics.clone(),
    );
    let registry = match settings.runs.as_str() {
        "orchestrations" => registry.without_activities(),
        "activities" => registry.without_orchestrators(),
        _ => registry,
    };
    let runs_kind = |names: usize, limit: usize| if names > 0 { limit } else { 0 };
    let metrics = Arc::new(
        metrics::WorkerMetrics::default()
            .with_names(registry.orchestrator_names(), registry.activity_names())
            .with_limits(
                runs_kind(
                    registry.orchestrator_names().count(),
                    settings.max_concurrent_orchestrations,
                ),
                runs_kind(
                    registry.activity_names().count(),
                    settings.max_concurrent_activities,
                ),
            )
            .with_callbacks(&callback_metrics),
    );
    let options = WorkerOptions {
        max_concurrent_orchestrations: settings.max_concurrent_orchestrations,
        max_concurrent_activities: settings.max_concurrent_activities,
        drain_timeout: Duration::from_secs(settings.drain_timeout_seconds),
        observer: Some(metrics.clone()),
        // A worker that runs one kind asks the scheduler for its names only.
        use_work_item_filters: settings.runs != "all",
        versions: settings.versions().map_err(anyhow::Error::msg)?,
        ..Default::default()
    };
    let worker = Worker::new(&conn, registry, options);
    let ready = worker.readiness();

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(&settings.admin_listen)
        .await
        .with_context(|| format!("`admin_listen`: cannot bind {}", settings.admin_listen))?;
    let admin_addr = listener.local_addr()?;
    let admin = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ready)
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let m = metrics.clone();
                async move {
                    let accept = headers
                        .get(axum::http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    let (content_type, body) = m.exposition(accept);
                    ([(axum::http::header::CONTENT_TYPE, content_type)], body)
                }
            }),
        );
    // The admin listener outlives the drain (which may take as long as the longest activity):
    // /metrics shows it (worker_draining, what is still in flight) and /healthz stays 200, so
    // no liveness probe kills a worker that is finishing its work; /readyz is 503 meanwhile.
    let admin_stop = CancellationToken::new();
    let admin_stopped = admin_stop.clone();
    let admin_task = tokio::spawn(service_kit::http_server::serve(
        listener,
        admin,
        service_kit::http_server::ServerLimits::admin("worker admin listener"),
        Default::default(),
        admin_stopped,
        Duration::from_secs(1),
    ));
    let signal = shutdown.clone();
    tokio::spawn(async move {
        service_kit::shutdown_signal().await;
        tracing::info!("shutting down: draining in-flight work items");
        signal.cancel();
    });
    tracing::info!(%admin_addr, orchestration_version = settings.orchestration_version.as_deref().unwrap_or(""), "worker running");
    worker.run(shutdown.clone()).await?;
    admin_stop.cancel();
    let _ = admin_task.await;
    conn.close();
    tracing::info!("stopped");
    telemetry.shutdown();
    Ok(())
}

/// Ready only while the work-item stream is connected.
async fn readyz(
    axum::extract::State(ready): axum::extract::State<watch::Receiver<bool>>,
) -> (StatusCode, &'static str) {
    if *ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "work-item stream not connected\n",
        )
    }
}
