//! `gateway`: the async HTTP API in front of DTS (or the local scheduler).
//!
//! Configuration: defaults, then an optional TOML file (`--config <path>` or `GATEWAY_CONFIG`),
//! then `GATEWAY__<KEY>` variables; the sample's `ENDPOINT` / `TASKHUB` and
//! `DURABLE_TASK_SCHEDULER_CONNECTION_STRING` as for the worker. Every key is in
//! `gateway::config::Settings`.

use std::time::Duration;

use anyhow::Context;
use durabletask::{Client, Connection};
use gateway::config::{SOURCE, Settings};
use gateway::{AppState, app};
use service_kit::settings::Startup;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("gateway: {e:#}");
        std::process::exit(2);
    }
}

async fn run() -> anyhow::Result<()> {
    let s: Settings = match service_kit::settings::load(&SOURCE)? {
        Startup::Run(s) => s,
        Startup::Print(text) => {
            println!("{text}");
            return Ok(());
        }
    };
    let conn_options =
        service_kit::connection_options(&s.endpoint, &s.taskhub, s.connection_string.as_deref())
            .context("`endpoint` / `taskhub` / `connection_string`")?;
    let telemetry = service_kit::telemetry::init("gateway", &s.log_format);
    let conn = Connection::connect(conn_options)
        .await
        .context("connecting to the scheduler")?;
    let state = AppState::new(Client::new(&conn), s.gateway_config());
    let listener = tokio::net::TcpListener::bind(&s.listen)
        .await
        .with_context(|| format!("`listen`: cannot bind {}", s.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    let grace = Duration::from_secs(s.shutdown_timeout_seconds);
    tokio::spawn(async move {
        service_kit::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        signal.cancel();
    });
    let server = axum::serve(listener, app(state)).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    tokio::select! {
        r = server => r?,
        // In-flight requests get `shutdown_timeout_seconds`, then the process ends regardless.
        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => tracing::warn!("shutdown deadline passed"),
    }
    conn.close();
    telemetry.shutdown();
    Ok(())
}
