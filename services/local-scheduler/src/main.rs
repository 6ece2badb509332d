//! `local-scheduler`: a Durable Task Scheduler-compatible gRPC server with an embedded store.
//!
//! Configuration: built-in defaults, then an optional TOML file (`--config <path>` or
//! `LOCAL_SCHEDULER_CONFIG`), then environment variables `LOCAL_SCHEDULER__<KEY>` (and
//! `DTS_TASK_HUB_NAMES=a,b`, as the DTS emulator reads it).

use anyhow::Context;
use local_scheduler::settings::SOURCE;
use local_scheduler::{Listeners, Runtime, Settings, serve};
use service_kit::settings::{Startup, Validate};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("local-scheduler: {e:#}");
        std::process::exit(2);
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
    let settings = settings.with_emulator_variables(|k| std::env::var(k).ok());
    settings
        .validate()
        .map_err(|m| anyhow::anyhow!("invalid local-scheduler configuration: {m}"))?;
    let telemetry = service_kit::telemetry::init("local-scheduler", &settings.log_format);

    let grpc = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("`listen`: cannot bind {}", settings.listen))?;
    let admin = tokio::net::TcpListener::bind(&settings.admin_listen)
        .await
        .with_context(|| format!("`admin_listen`: cannot bind {}", settings.admin_listen))?;
    tracing::info!(grpc_addr = %grpc.local_addr()?, admin_addr = %admin.local_addr()?, hubs = ?settings.task_hubs, store = %settings.store, "local scheduler listening");

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        service_kit::shutdown_signal().await;
        tracing::info!("shutting down: ending work-item streams");
        signal.cancel();
    });
    let runtime = Runtime {
        export_spans: telemetry.exporting(),
    };
    serve(Listeners { grpc, admin }, &settings, runtime, shutdown).await?;
    tracing::info!("stopped");
    telemetry.shutdown();
    Ok(())
}
