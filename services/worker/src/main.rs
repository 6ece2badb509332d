//! `worker`: pulls work items from DTS (or the local scheduler) and runs the async HTTP API's
//! orchestration and activity.
//!
//! Configuration: defaults, then an optional TOML file (`--config <path>` or `WORKER_CONFIG`),
//! then `WORKER__<KEY>` variables. The original sample's `ENDPOINT` / `TASKHUB` work as there,
//! and `DURABLE_TASK_SCHEDULER_CONNECTION_STRING` (or `WORKER__CONNECTION_STRING`) takes a DTS
//! connection string.

// A binary: `pub` inside its modules only means "used across modules".
#![allow(unreachable_pub)]

mod orchestrations;

use std::net::SocketAddr;
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
}

fn load_settings() -> anyhow::Result<(Settings, ConnectionOptions)> {
    let args: Vec<String> = std::env::args().collect();
    let file = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("WORKER_CONFIG").ok());
    let mut b = config::Config::builder()
        .set_default("endpoint", "http://localhost:8080")?
        .set_default("taskhub", "default")?
        .set_default("max_concurrent_orchestrations", 100)?
        .set_default("max_concurrent_activities", 100)?
        .set_default("drain_timeout_seconds", 25)?
        .set_default("admin_listen", "127.0.0.1:9091")?
        .set_default("log_format", "text")?;
    if let Some(f) = file {
        b = b.add_source(config::File::with_name(&f).required(true));
    }
    // The original sample's variables.
    if let Ok(v) = std::env::var("ENDPOINT") {
        b = b.set_override("endpoint", v)?;
    }
    if let Ok(v) = std::env::var("TASKHUB") {
        b = b.set_override("taskhub", v)?;
    }
    if let Ok(v) = std::env::var("DURABLE_TASK_SCHEDULER_CONNECTION_STRING") {
        b = b.set_override("connection_string", v)?;
    }
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
        matches!(s.log_format.as_str(), "text" | "json"),
        "`log_format` must be `text` or `json`"
    );
    s.admin_listen.parse::<SocketAddr>().with_context(|| {
        format!(
            "`admin_listen`: '{}' is not an address like 127.0.0.1:9091",
            s.admin_listen
        )
    })?;
    let conn = match &s.connection_string {
        Some(cs) => ConnectionOptions::from_connection_string(cs).context("`connection_string`")?,
        None => {
            ConnectionOptions::new(&s.endpoint, &s.taskhub).context("`endpoint` / `taskhub`")?
        }
    };
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
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if settings.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    tracing::info!(endpoint = %conn_options.endpoint, taskhub = %conn_options.taskhub, "connecting");
    let conn = Connection::connect(conn_options)
        .await
        .context("connecting to the scheduler")?;
    let options = WorkerOptions {
        max_concurrent_orchestrations: settings.max_concurrent_orchestrations,
        max_concurrent_activities: settings.max_concurrent_activities,
        drain_timeout: Duration::from_secs(settings.drain_timeout_seconds),
        ..Default::default()
    };
    let worker_name =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("worker-{}", std::process::id()));
    let worker = Worker::new(&conn, orchestrations::registry(worker_name), options);
    let ready = worker.readiness();

    let shutdown = CancellationToken::new();
    let admin_addr: SocketAddr = settings.admin_listen.parse()?;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("`admin_listen`: cannot bind {admin_addr}"))?;
    let admin = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ready);
    let admin_stop = shutdown.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(listener, admin)
            .with_graceful_shutdown(async move { admin_stop.cancelled().await })
            .await
    });
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight work items");
        signal.cancel();
    });
    tracing::info!(%admin_addr, "worker running");
    worker.run(shutdown.clone()).await?;
    shutdown.cancel();
    let _ = admin_task.await;
    conn.close();
    tracing::info!("stopped");
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

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
