//! `worker`: pulls work items from DTS (or the local scheduler) and runs the async HTTP API's
//! orchestration and activity.
//!
//! Configuration: defaults, then an optional TOML file (`--config <path>` or `WORKER_CONFIG`),
//! then `WORKER__<KEY>` variables. The original sample's `ENDPOINT` / `TASKHUB` work as there,
//! and `DURABLE_TASK_SCHEDULER_CONNECTION_STRING` (or `WORKER__CONNECTION_STRING`) takes a DTS
//! connection string.

// A binary: `pub` inside its modules only means "used across modules".
#![allow(unreachable_pub)]

mod metrics;
mod orchestrations;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use durabletask::{Connection, ConnectionOptions, Worker, WorkerOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    endpoint: String,
    taskhub: String,
    connection_string: Option<String>,
    max_concurrent_orchestrations: usize,
    max_concurrent_activities: usize,
    drain_timeout_seconds: u64,
    admin_listen: String,
    log_format: String,
    /// `all`, `orchestrations` or `activities`: split the two kinds across deployments.
    runs: String,
}

fn load_settings() -> anyhow::Result<(Settings, ConnectionOptions)> {
    let file = service_kit::config_file("worker", "WORKER_CONFIG", "WORKER", "ENDPOINT, TASKHUB and DURABLE_TASK_SCHEDULER_CONNECTION_STRING work as in the original sample.")
        .map_err(anyhow::Error::msg)?;
    let mut b = config::Config::builder()
        .set_default("endpoint", "http://localhost:8080")?
        .set_default("taskhub", "default")?
        .set_default("max_concurrent_orchestrations", 100)?
        .set_default("max_concurrent_activities", 100)?
        .set_default("drain_timeout_seconds", 25)?
        .set_default("admin_listen", "127.0.0.1:9091")?
        .set_default("log_format", "auto")?
        .set_default("runs", "all")?;
    if let Some(f) = file {
        b = b.add_source(config::File::with_name(&f).required(true));
    }
    // The original sample's variables.
    b = service_kit::with_seed_variables(b)?;
    b = b.add_source(
        config::Environment::with_prefix("WORKER")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    );
    let s: Settings = b
        .build()?
        .try_deserialize()
        .context("invalid worker configuration")?;
    anyhow::ensure!(
        s.max_concurrent_orchestrations >= 1,
        "`max_concurrent_orchestrations` must be at least 1"
    );
    anyhow::ensure!(
        s.max_concurrent_activities >= 1,
        "`max_concurrent_activities` must be at least 1"
    );
    anyhow::ensure!(
        matches!(s.log_format.as_str(), "auto" | "text" | "json"),
        "`log_format` must be `auto`, `text` or `json`"
    );
    anyhow::ensure!(
        matches!(s.runs.as_str(), "all" | "orchestrations" | "activities"),
        "`runs` must be `all`, `orchestrations` or `activities` (got '{}')",
        s.runs
    );
    s.admin_listen.parse::<SocketAddr>().with_context(|| {
        format!(
            "`admin_listen`: '{}' is not an address like 127.0.0.1:9091",
            s.admin_listen
        )
    })?;
    let conn =
        service_kit::connection_options(&s.endpoint, &s.taskhub, s.connection_string.as_deref())
            .context("`endpoint` / `taskhub` / `connection_string`")?;
    Ok((s, conn))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("worker: {e:#}");
        std::process::exit(2);
    }
}

async fn run() -> anyhow::Result<()> {
    let (settings, conn_options) = load_settings()?;
    let telemetry = service_kit::telemetry::init("worker", &settings.log_format);
    tracing::info!(endpoint = %conn_options.endpoint, taskhub = %conn_options.taskhub, "connecting");
    let conn = Connection::connect(conn_options)
        .await
        .context("connecting to the scheduler")?;

    let worker_name =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("worker-{}", std::process::id()));
    let registry = match settings.runs.as_str() {
        "orchestrations" => orchestrations::registry(worker_name).without_activities(),
        "activities" => orchestrations::registry(worker_name).without_orchestrators(),
        _ => orchestrations::registry(worker_name),
    };
    let metrics = Arc::new(
        metrics::WorkerMetrics::default()
            .with_names(registry.orchestrator_names(), registry.activity_names()),
    );
    let options = WorkerOptions {
        max_concurrent_orchestrations: settings.max_concurrent_orchestrations,
        max_concurrent_activities: settings.max_concurrent_activities,
        drain_timeout: Duration::from_secs(settings.drain_timeout_seconds),
        observer: Some(metrics.clone()),
        // A worker that runs one kind asks the scheduler for its names only.
        use_work_item_filters: settings.runs != "all",
        ..Default::default()
    };
    let worker = Worker::new(&conn, registry, options);
    let ready = worker.readiness();

    let shutdown = CancellationToken::new();
    let admin_addr: SocketAddr = settings.admin_listen.parse()?;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("`admin_listen`: cannot bind {admin_addr}"))?;
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
    let admin_stop = shutdown.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(listener, admin)
            .with_graceful_shutdown(async move { admin_stop.cancelled().await })
            .await
    });
    let signal = shutdown.clone();
    tokio::spawn(async move {
        service_kit::shutdown_signal().await;
        tracing::info!("shutting down: draining in-flight work items");
        signal.cancel();
    });
    tracing::info!(%admin_addr, "worker running");
    worker.run(shutdown.clone()).await?;
    shutdown.cancel();
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
