//! `gateway`: the async HTTP API in front of DTS (or the local scheduler).
//!
//! Configuration: defaults, then an optional TOML file (`--config <path>` or `GATEWAY_CONFIG`),
//! then `GATEWAY__<KEY>` variables; the sample's `ENDPOINT` / `TASKHUB` and
//! `DURABLE_TASK_SCHEDULER_CONNECTION_STRING` as for the worker. Every key is in
//! `gateway::config::Settings`.

use std::time::Duration;

use anyhow::Context;
use durabletask::{Client, Connection};
use gateway::auth::{ApiKeys, Authenticator, Ids, JwtVerifier};
use gateway::config::AuthMode;
use gateway::config::{SOURCE, Settings};
use gateway::{AppState, admin_app, app};
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
    // Every connection is a file descriptor, and the usual soft limit (1,024) is below
    // `max_connections`: raised to the hard limit, as Go's runtime does for its servers.
    let wanted = (s.max_connections as u64).saturating_mul(2) + 256;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            open_files = got,
            wanted,
            "the open-file limit is below what max_connections needs; connections past it fail to be accepted"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let conn = Connection::connect(conn_options)
        .await
        .context("connecting to the scheduler")?;
    let state = AppState::secured(
        Client::new(&conn),
        s.gateway_config(),
        authenticator(&s)?,
        Ids::new(s.id_secret.as_deref()),
    );
    let backlog = u32::try_from(s.max_connections).unwrap_or(u32::MAX);
    if state.rate_limiter.is_some() || state.auth_failures.is_some() {
        // Callers that stopped calling drop out of the limiters' tables.
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Some(limiter) = &state.rate_limiter {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
                if let Some(limiter) = &state.auth_failures {
                    limiter.prune();
                }
            }
        });
    }
    let public = gateway::serve::bind(&s.listen, backlog)
        .await
        .with_context(|| format!("`listen`: cannot bind {}", s.listen))?;
    let admin = gateway::serve::bind(&s.admin_listen, 128)
        .await
        .with_context(|| format!("`admin_listen`: cannot bind {}", s.admin_listen))?;
    tracing::info!(addr = %public.local_addr()?, admin = %admin.local_addr()?, "gateway listening");

    // The hand-over on SIGTERM: readiness fails at once while the gateway keeps serving for
    // `drain_delay_seconds` (load balancers take a moment to stop sending requests), then it
    // stops accepting connections, answers waiting long polls, and open requests get
    // `shutdown_timeout_seconds`.
    let stop_public = tokio_util::sync::CancellationToken::new();
    let drain_delay = Duration::from_secs(s.drain_delay_seconds);
    tokio::spawn({
        let state = state.clone();
        let stop_public = stop_public.clone();
        async move {
            service_kit::shutdown_signal().await;
            tracing::info!(
                delay_seconds = drain_delay.as_secs(),
                "shutting down: readiness fails, still serving"
            );
            state.draining.cancel();
            tokio::time::sleep(drain_delay).await;
            tracing::info!("no longer accepting connections; finishing open requests");
            state.releasing.cancel();
            stop_public.cancel();
        }
    });
    let stop_admin = tokio_util::sync::CancellationToken::new();
    // Probes and metrics keep answering until the public listener is done.
    let admin_server = tokio::spawn(gateway::serve::serve(
        admin,
        admin_app(state.clone()),
        gateway::serve::ServerLimits::admin("gateway admin listener"),
        Default::default(),
        stop_admin.clone(),
        Duration::from_secs(1),
    ));
    gateway::serve::serve(
        public,
        app(state.clone()),
        s.server_limits(),
        state.metrics.connections.clone(),
        stop_public,
        Duration::from_secs(s.shutdown_timeout_seconds),
    )
    .await;
    stop_admin.cancel();
    let _ = admin_server.await;
    conn.close();
    telemetry.shutdown();
    Ok(())
}

/// The authentication `auth` asks for; with none, a warning that stays in the log.
fn authenticator(s: &Settings) -> anyhow::Result<Authenticator> {
    let modes = s.auth_modes().map_err(anyhow::Error::msg)?;
    if modes.is_empty() {
        tracing::warn!(
            "AUTHENTICATION IS OFF (auth = none): anyone who reaches this gateway can read, cancel and purge every operation; set `auth` to `jwt` and/or `api_key` for anything but a laptop"
        );
        return Ok(Authenticator::default());
    }
    let mut auth = Authenticator::default();
    if modes.contains(&AuthMode::Jwt) {
        let config = s.jwt_config().context("`jwt_issuer` is required")?;
        tracing::info!(issuer = %config.issuer, audiences = ?config.audiences, "bearer tokens accepted");
        auth.jwt = Some(std::sync::Arc::new(JwtVerifier::new(config)));
    }
    if modes.contains(&AuthMode::ApiKey) {
        let path = s.api_keys_file.as_deref().unwrap_or_default();
        let keys = std::sync::Arc::new(
            ApiKeys::load(std::path::Path::new(path))
                .map_err(|e| anyhow::anyhow!("`api_keys_file`: {e}"))?,
        );
        tracing::info!(keys = keys.len(), file = %path, "API keys accepted");
        keys.clone()
            .watch(Duration::from_secs(s.api_keys_reload_seconds));
        auth.api_keys = Some(keys);
    }
    Ok(auth)
}
