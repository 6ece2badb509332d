//! A Durable Task Scheduler-compatible gRPC server with an embedded store, as a library:
//! [`serve`] runs it on listeners the caller bound, until `shutdown` is cancelled, so tests run it
//! in-process and the binary is a thin `main`.
//!
//! - [`settings`]: what is configurable, with every default in one place.
//! - `model`: what the scheduler keeps per instance, shared by the engine and the store.
//! - [`engine`]: all state and every state change (dispatch and leases, episodes, client
//!   operations, timers), with its own error type.
//! - `store`: SQLite persistence of the engine's changes.
//! - `server`: the gRPC service; maps engine errors to gRPC statuses.
//! - `admin` and `metrics`: `/healthz`, `/readyz`, `/metrics`.

// Internal modules are `pub` only to be reachable by the unit tests and the binary.
#![allow(unreachable_pub)]

mod admin;
pub mod engine;
mod incoming;
mod metrics;
pub mod model;
mod server;
pub mod settings;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use durabletask_proto as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use engine::{Limits, Retention};
pub use settings::Settings;

use crate::engine::Engine;
use crate::server::{Backend, Service, Shared};
use crate::store::SqliteStore;

/// Streams a client may reset before the server takes them, per connection (see [`serve`]).
const PENDING_RESET_STREAMS: usize = 4096;

/// The sockets the scheduler serves on, bound by the caller (port 0 works: tests bind first and
/// read the address).
pub struct Listeners {
    /// The gRPC `TaskHubSidecarService` and `BackendService` (plaintext HTTP/2).
    pub grpc: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("`sqlite_path`: cannot open {path}")]
    OpenStore {
        path: String,
        #[source]
        source: store::StoreError,
    },
    #[error("loading the store")]
    LoadStore(#[source] store::StoreError),
    #[error("the gRPC server failed")]
    Grpc(#[from] tonic::transport::Error),
    /// The scheduler stopped itself (fail-stop): memory could be ahead of the store.
    #[error("stopped after a failure: {0}")]
    Stopped(String),
}

/// Pings every half lease, each answered within half a lease: a silent peer is dropped within
/// about `lease_seconds`.
fn keepalive_interval(lease_seconds: u64) -> Duration {
    Duration::from_millis(lease_seconds.saturating_mul(500).max(500))
}

/// Options that are not configuration: how the process around the scheduler is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Runtime {
    /// Record spans (dispatch waits, `StartInstance`); only worth it when they are exported.
    pub export_spans: bool,
}

/// The scheduler as a process: `settings` completed by the DTS emulator's variables
/// (`DTS_TASK_HUB_NAMES`) and checked, its listeners bound, served until SIGTERM (or Ctrl-C).
pub async fn run(settings: Settings) -> Result<(), service_kit::RunError> {
    use service_kit::RunError;
    use service_kit::settings::Validate;
    let settings = settings.with_emulator_variables(|k| std::env::var(k).ok());
    settings
        .validate()
        .map_err(|m| RunError::Config(format!("invalid local-scheduler configuration: {m}")))?;
    let telemetry = service_kit::telemetry::init("local-scheduler", settings.log_format);
    let grpc = service_kit::run::bind("listen", settings.listen).await?;
    let admin = service_kit::run::bind("admin_listen", settings.admin_listen).await?;
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(grpc_addr = %addr(&grpc), admin_addr = %addr(&admin), hubs = ?settings.task_hubs, store = %settings.store, "local scheduler listening");
    let shutdown = service_kit::cancelled_on_signal("ending work-item streams");
    let runtime = Runtime {
        export_spans: telemetry.exporting(),
    };
    serve(Listeners { grpc, admin }, &settings, runtime, shutdown)
        .await
        .map_err(RunError::service)?;
    tracing::info!("stopped");
    telemetry.shutdown();
    Ok(())
}

/// Restores the store, then serves gRPC and the admin routes until `shutdown` is cancelled;
/// work-item streams then end with OK and the function returns.
pub async fn serve(
    listeners: Listeners,
    settings: &Settings,
    runtime: Runtime,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut engine = Engine::new(&settings.task_hubs).with_limits(settings.limits());
    let store = if settings.store == settings::Store::Sqlite {
        let store = SqliteStore::open(&settings.sqlite_path, &settings.store_options()).map_err(
            |source| ServeError::OpenStore {
                path: settings.sqlite_path.display().to_string(),
                source,
            },
        )?;
        for hub in &settings.task_hubs {
            let loaded = store.load(hub).map_err(ServeError::LoadStore)?;
            let (i, a, t) = (
                loaded.instances.len(),
                loaded.activities.len(),
                loaded.timers.len(),
            );
            engine.restore(hub, loaded.instances, loaded.activities, loaded.timers);
            engine.restore_entities(hub, loaded.entities);
            tracing::info!(hub = %hub, instances = i, activities = a, timers = t, "restored from store");
        }
        let state = engine.recount_state();
        tracing::info!(state_mib = state >> 20, "instance state restored");
        Some(store)
    } else {
        engine = engine.without_persistence();
        None
    };

    let shared = Shared::new(
        engine,
        store,
        Duration::from_secs(settings.health_ping_seconds),
        shutdown.clone(),
    );
    shared.set_trace_spans(runtime.export_spans);
    tokio::spawn(shared.clone().run_timers());

    let connections = Arc::new(incoming::ConnectionCounts::default());
    let (registry, latency) = metrics::registry(shared.clone(), connections.clone());
    shared.set_dispatch_latency(latency);
    let admin_router = admin::router(shared.clone(), registry);
    let admin_task = tokio::spawn(service_kit::http_server::serve(
        listeners.admin,
        admin_router,
        service_kit::http_server::ServerLimits::admin("local scheduler admin listener"),
        Default::default(),
        shutdown.clone(),
        Duration::from_secs(1),
    ));

    let svc = pb::TaskHubSidecarServiceServer::new(Service {
        shared: shared.clone(),
    })
    .max_decoding_message_size(settings.max_message_bytes)
    .max_encoding_message_size(settings.max_message_bytes);
    let backend = pb::backend::backend_service_server::BackendServiceServer::new(Backend {
        shared: shared.clone(),
    });
    tonic::transport::Server::builder()
        // hyper sends GOAWAY after 20 streams reset before they were taken (its rapid-reset
        // guard), failing every call on the connection. A client's cancelled calls (an HTTP
        // caller that hung up) reach that under load; this is a local server, so allow many.
        .http2_max_pending_accept_reset_streams(Some(PENDING_RESET_STREAMS))
        // A worker's leases last as long as its stream. A worker that stops answering (a hung
        // process, a half-open connection) is found by HTTP/2 pings: unanswered for
        // `lease_seconds`, the connection closes, its streams end and their work is redelivered.
        .http2_keepalive_interval(Some(keepalive_interval(settings.lease_seconds)))
        .http2_keepalive_timeout(Some(keepalive_interval(settings.lease_seconds)))
        .add_service(svc)
        .add_service(backend)
        .serve_with_incoming_shutdown(
            // Capped, each with a handshake deadline (and no Nagle: small request/response pairs
            // would otherwise wait for delayed ACKs, ~40 ms).
            incoming::incoming(
                listeners.grpc,
                settings.max_connections,
                Duration::from_secs(settings.handshake_timeout_seconds),
                connections,
                shutdown.clone(),
            ),
            async move {
                shutdown.cancelled().await;
                // Give streams a moment to end with OK before connections close.
                tokio::time::sleep(Duration::from_millis(200)).await;
            },
        )
        .await?;
    let _ = admin_task.await;
    match shared.failure() {
        Some(reason) => Err(ServeError::Stopped(reason.to_string())),
        None => Ok(()),
    }
}
