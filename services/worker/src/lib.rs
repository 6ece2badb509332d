//! The worker service: pulls work items from DTS (or the local scheduler) and runs the async
//! HTTP API's orchestration and activity (`orchestrations`), the completion callbacks
//! (`callbacks`), with metrics and health on an admin listener. `run` is the process; `main.rs`
//! only calls it (or the `versions` subcommand).

// `pub` inside the modules only means "used across modules".
#![allow(unreachable_pub)]

mod callbacks;
mod metrics;
mod orchestrations;
pub mod settings;
pub mod versions;

use std::sync::Arc;
use std::time::Duration;

use durabletask::{Connection, Worker, WorkerOptions};
use service_kit::RunError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::settings::{Runs, Settings};

/// Runs the worker with `settings` until SIGTERM (or Ctrl-C) and the drain that follows.
pub async fn run(settings: Settings) -> Result<(), RunError> {
    let telemetry = service_kit::telemetry::init("worker", settings.log_format);
    let listener = service_kit::run::bind("admin_listen", settings.admin_listen).await?;
    let shutdown = service_kit::cancelled_on_signal("draining in-flight work items");
    serve(&settings, listener, shutdown).await?;
    tracing::info!("stopped");
    telemetry.shutdown();
    Ok(())
}

/// Connects, serves the admin routes on `admin` and runs work items until `shutdown` is
/// cancelled and the drain that follows ends: the worker without the process around it (tests
/// run it in-process).
pub async fn serve(
    settings: &Settings,
    admin: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let conn_options = settings.scheduler.connection_options()?;
    tracing::info!(endpoint = %conn_options.endpoint, taskhub = %conn_options.taskhub, "connecting");
    let conn = Connection::connect(conn_options)
        .await
        .map_err(RunError::Connect)?;

    let worker_name =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("worker-{}", std::process::id()));
    let mut registry = orchestrations::registry(worker_name);
    let callback_metrics = callbacks::CallbackMetrics::default();
    callbacks::register(
        &mut registry,
        Arc::new(callbacks::CallbackConfig::from_settings(settings).map_err(RunError::Config)?),
        durabletask::Client::new(&conn),
        callback_metrics.clone(),
    );
    let registry = match settings.runs {
        Runs::Orchestrations => registry.without_activities(),
        Runs::Activities => registry.without_orchestrators(),
        Runs::All => registry,
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
        use_work_item_filters: settings.runs != Runs::All,
        versions: settings.versions().map_err(RunError::Config)?,
        payloads: settings.payloads.payloads().map_err(RunError::Config)?,
        ..Default::default()
    };
    let worker = Worker::new(&conn, registry, options);
    let ready = worker.readiness();

    let listener = admin;
    let admin_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin = service_kit::admin::router(
        move || std::future::ready(readiness(&ready)),
        move |accept| metrics.exposition(accept),
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
    tracing::info!(%admin_addr, orchestration_version = settings.orchestration_version.as_deref().unwrap_or(""), "worker running");
    worker
        .run(shutdown.clone())
        .await
        .map_err(|e| RunError::failed("the worker stopped", e))?;
    admin_stop.cancel();
    let _ = admin_task.await;
    conn.close();
    Ok(())
}

/// Ready only while the work-item stream is connected.
fn readiness(ready: &watch::Receiver<bool>) -> Result<(), String> {
    if *ready.borrow() {
        Ok(())
    } else {
        Err("work-item stream not connected".into())
    }
}
