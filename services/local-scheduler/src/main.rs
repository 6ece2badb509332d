//! `local-scheduler`: a Durable Task Scheduler-compatible gRPC server with an embedded store.
//!
//! Configuration: built-in defaults, then an optional TOML file (`--config <path>` or
//! `LOCAL_SCHEDULER_CONFIG`), then environment variables `LOCAL_SCHEDULER__<KEY>` (and
//! `DTS_TASK_HUB_NAMES=a,b`, as the DTS emulator reads it).

// A binary: `pub` inside its modules only means "used across modules".
#![allow(unreachable_pub)]

/// Streams a client may reset before the server takes them, per connection (see `run`).
const PENDING_RESET_STREAMS: usize = 4096;

mod engine;
mod metrics;
mod server;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use durabletask_proto as pb;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::server::{Service, Shared};
use crate::store::SqliteStore;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// gRPC address (plaintext HTTP/2).
    listen: String,
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    admin_listen: String,
    task_hubs: Vec<String>,
    /// `sqlite` (file, durable) or `memory`.
    store: String,
    sqlite_path: PathBuf,
    lease_seconds: u64,
    health_ping_seconds: u64,
    max_message_bytes: usize,
    log_format: String,
}

fn load_settings() -> anyhow::Result<Settings> {
    let file = service_kit::config_file(
        "local-scheduler",
        "LOCAL_SCHEDULER_CONFIG",
        "LOCAL_SCHEDULER",
        "DTS_TASK_HUB_NAMES=a,b names the task hubs, as for the DTS emulator.",
    )
    .map_err(anyhow::Error::msg)?;
    let mut b = config::Config::builder()
        .set_default("listen", "127.0.0.1:8080")?
        .set_default("admin_listen", "127.0.0.1:8081")?
        .set_default("task_hubs", vec!["default"])?
        .set_default("store", "sqlite")?
        .set_default("sqlite_path", ".data/local-scheduler.db")?
        .set_default("lease_seconds", 120)?
        .set_default("health_ping_seconds", 30)?
        .set_default("max_message_bytes", 16 * 1024 * 1024)?
        .set_default("log_format", "auto")?;
    if let Some(f) = file {
        b = b.add_source(config::File::with_name(&f).required(true));
    }
    b = b.add_source(
        config::Environment::with_prefix("LOCAL_SCHEDULER")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("task_hubs")
            .try_parsing(true),
    );
    if let Ok(hubs) = std::env::var("DTS_TASK_HUB_NAMES") {
        b = b.set_override(
            "task_hubs",
            hubs.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>(),
        )?;
    }
    let s: Settings = b
        .build()?
        .try_deserialize()
        .context("invalid local-scheduler configuration")?;
    validate(&s)?;
    Ok(s)
}

fn validate(s: &Settings) -> anyhow::Result<()> {
    s.listen.parse::<SocketAddr>().with_context(|| {
        format!(
            "`listen`: '{}' is not an address like 127.0.0.1:8080",
            s.listen
        )
    })?;
    s.admin_listen.parse::<SocketAddr>().with_context(|| {
        format!(
            "`admin_listen`: '{}' is not an address like 127.0.0.1:8081",
            s.admin_listen
        )
    })?;
    anyhow::ensure!(
        !s.task_hubs.is_empty(),
        "`task_hubs` must name at least one task hub"
    );
    for h in &s.task_hubs {
        anyhow::ensure!(
            !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()),
            "`task_hubs`: '{h}' is not a valid task hub name"
        );
    }
    anyhow::ensure!(
        matches!(s.store.as_str(), "sqlite" | "memory"),
        "`store` must be `sqlite` or `memory`, not '{}'",
        s.store
    );
    anyhow::ensure!(s.lease_seconds >= 1, "`lease_seconds` must be at least 1");
    anyhow::ensure!(
        s.health_ping_seconds >= 1,
        "`health_ping_seconds` must be at least 1"
    );
    anyhow::ensure!(
        s.max_message_bytes >= 4 * 1024 * 1024,
        "`max_message_bytes` must be at least 4 MiB (4194304)"
    );
    anyhow::ensure!(
        matches!(s.log_format.as_str(), "auto" | "text" | "json"),
        "`log_format` must be `auto`, `text` or `json`"
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("local-scheduler: {e:#}");
        std::process::exit(2);
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = load_settings()?;
    let telemetry = service_kit::telemetry::init("local-scheduler", &settings.log_format);

    let mut engine = Engine::new(
        &settings.task_hubs,
        Duration::from_secs(settings.lease_seconds),
    );
    let store = if settings.store == "sqlite" {
        let store = SqliteStore::open(&settings.sqlite_path).with_context(|| {
            format!(
                "`sqlite_path`: cannot open {}",
                settings.sqlite_path.display()
            )
        })?;
        for hub in &settings.task_hubs {
            let loaded = store.load(hub).context("loading the store")?;
            let (i, a, t) = (
                loaded.instances.len(),
                loaded.activities.len(),
                loaded.timers.len(),
            );
            engine.restore(hub, loaded.instances, loaded.activities, loaded.timers);
            tracing::info!(hub = %hub, instances = i, activities = a, timers = t, "restored from store");
        }
        Some(store)
    } else {
        engine = engine.without_persistence();
        None
    };

    let shutdown = CancellationToken::new();
    let shared = Shared::new(
        engine,
        store,
        Duration::from_secs(settings.health_ping_seconds),
        shutdown.clone(),
    );
    shared.set_trace_spans(telemetry.exporting());
    tokio::spawn(shared.clone().run_timers());

    let grpc_addr: SocketAddr = settings.listen.parse()?;
    let admin_addr: SocketAddr = settings.admin_listen.parse()?;
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("`admin_listen`: cannot bind {admin_addr}"))?;
    let grpc_listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("`listen`: cannot bind {grpc_addr}"))?;
    tracing::info!(%grpc_addr, %admin_addr, hubs = ?settings.task_hubs, store = %settings.store, "local scheduler listening");

    let (registry, latency) = metrics::registry(shared.clone());
    shared.set_dispatch_latency(latency);
    let registry = Arc::new(registry);
    let admin = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared.clone())
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let r = registry.clone();
                async move {
                    let accept = headers
                        .get(axum::http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    let (content_type, body) = service_kit::metrics::exposition(&r, accept);
                    ([(axum::http::header::CONTENT_TYPE, content_type)], body)
                }
            }),
        );
    let admin_shutdown = shutdown.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(admin_listener, admin)
            .with_graceful_shutdown(async move { admin_shutdown.cancelled().await })
            .await
    });

    let svc = pb::TaskHubSidecarServiceServer::new(Service {
        shared: shared.clone(),
    })
    .max_decoding_message_size(settings.max_message_bytes)
    .max_encoding_message_size(settings.max_message_bytes);
    let signal = shutdown.clone();
    tokio::spawn(async move {
        service_kit::shutdown_signal().await;
        tracing::info!("shutting down: ending work-item streams");
        signal.cancel();
    });
    let grpc_shutdown = shutdown.clone();
    tonic::transport::Server::builder()
        // hyper sends GOAWAY after 20 streams reset before they were taken (its rapid-reset
        // guard), failing every call on the connection. A client's cancelled calls (an HTTP
        // caller that hung up) reach that under load; this is a local server, so allow many.
        .http2_max_pending_accept_reset_streams(Some(PENDING_RESET_STREAMS))
        .add_service(svc)
        .serve_with_incoming_shutdown(
            // No Nagle: small request/response pairs would otherwise wait for delayed ACKs (~40 ms).
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            async move {
                grpc_shutdown.cancelled().await;
                // Give streams a moment to end with OK before connections close.
                tokio::time::sleep(Duration::from_millis(200)).await;
            },
        )
        .await?;
    let _ = admin_task.await;
    tracing::info!("stopped");
    telemetry.shutdown();
    Ok(())
}

async fn readyz(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> (axum::http::StatusCode, &'static str) {
    if shared.shutdown.is_cancelled() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n",
        );
    }
    (axum::http::StatusCode::OK, "ready\n")
}
