//! The gateway as a process: connect to the scheduler, listen on the public and admin
//! addresses, serve until SIGTERM, then hand over (readiness fails at once, serving goes on for
//! `drain_delay_seconds`, then open requests get `shutdown_timeout_seconds`).

use std::sync::Arc;
use std::time::Duration;

use durabletask::{Client, Connection};
use service_kit::RunError;
use tokio_util::sync::CancellationToken;

use crate::auth::{ApiKeys, Authenticator, Ids, JwtVerifier};
use crate::config::{AuthMode, Settings};
use crate::serve::{ServerLimits, serve};
use crate::{AppState, admin_app, app};

/// Runs the gateway with `s` until SIGTERM (or Ctrl-C) and the hand-over that follows.
pub async fn run(s: Settings) -> Result<(), RunError> {
    let conn_options = s.scheduler.connection_options()?;
    let telemetry = service_kit::telemetry::init("gateway", s.log_format);
    raise_open_file_limit(s.server.max_connections);
    let conn = Connection::connect(conn_options)
        .await
        .map_err(RunError::Connect)?;
    // Large inputs go to the payload store; large results are streamed from it by the result
    // route, so the client leaves their tokens unread.
    let client = match s.payloads.payloads().map_err(RunError::Config)? {
        Some(p) => Client::new(&conn).with_payloads(p).leaving_tokens_unread(),
        None => Client::new(&conn),
    };
    let state = AppState::secured(
        client,
        s.clone(),
        authenticator(&s)?,
        Ids::new(s.id_secret.as_deref()),
    );
    prune_limiters(&state);
    let backlog = u32::try_from(s.server.max_connections).unwrap_or(u32::MAX);
    let bind = |key: &'static str, addr: std::net::SocketAddr, backlog: u32| async move {
        crate::serve::bind(addr, backlog)
            .await
            .map_err(|source| RunError::Bind {
                key,
                addr: addr.to_string(),
                source,
            })
    };
    let public = bind("listen", s.listen, backlog).await?;
    let admin = bind("admin_listen", s.admin_listen, 128).await?;
    let addr =
        |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(addr = %addr(&public), admin = %addr(&admin), "gateway listening");

    let stop_public = CancellationToken::new();
    tokio::spawn(hand_over(
        state.clone(),
        stop_public.clone(),
        Duration::from_secs(s.drain_delay_seconds),
    ));
    let stop_admin = CancellationToken::new();
    // Probes and metrics keep answering until the public listener is done.
    let admin_server = tokio::spawn(serve(
        admin,
        admin_app(state.clone()),
        ServerLimits::admin("gateway admin listener"),
        Default::default(),
        stop_admin.clone(),
        Duration::from_secs(1),
    ));
    serve(
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

/// On SIGTERM: readiness fails at once while the gateway keeps serving for `drain_delay` (load
/// balancers take a moment to stop sending requests), then it stops accepting connections and
/// answers waiting long polls.
async fn hand_over(state: AppState, stop_public: CancellationToken, drain_delay: Duration) {
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

/// Every connection is a file descriptor, and the usual soft limit (1,024) is below
/// `max_connections`: raised to the hard limit, as Go's runtime does for its servers.
fn raise_open_file_limit(max_connections: usize) {
    let wanted = (max_connections as u64).saturating_mul(2) + 256;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            open_files = got,
            wanted,
            "the open-file limit is below what max_connections needs; connections past it fail to be accepted"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// Callers that stopped calling drop out of the limiters' tables, once a minute.
fn prune_limiters(state: &AppState) {
    if state.rate_limiter.is_none() && state.auth_failures.is_none() {
        return;
    }
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

/// The authentication `auth` asks for; with none, a warning that stays in the log.
fn authenticator(s: &Settings) -> Result<Authenticator, RunError> {
    let modes = s.auth_modes().map_err(RunError::Config)?;
    if modes.is_empty() {
        tracing::warn!(
            "AUTHENTICATION IS OFF (auth = none): anyone who reaches this gateway can read, cancel and purge every operation; set `auth` to `jwt` and/or `api_key` for anything but a laptop"
        );
        return Ok(Authenticator::default());
    }
    let mut auth = Authenticator::default();
    if modes.contains(&AuthMode::Jwt) {
        let config = s
            .jwt_config()
            .ok_or_else(|| RunError::Config("`jwt_issuer` is required".into()))?;
        tracing::info!(issuer = %config.issuer, audiences = ?config.audiences, "bearer tokens accepted");
        auth.jwt = Some(Arc::new(JwtVerifier::new(config)));
    }
    if modes.contains(&AuthMode::ApiKey) {
        let path = s.api_keys_file.as_deref().unwrap_or_default();
        let keys = Arc::new(
            ApiKeys::load(std::path::Path::new(path))
                .map_err(|e| RunError::config("`api_keys_file`", e))?,
        );
        tracing::info!(keys = keys.len(), file = %path, "API keys accepted");
        keys.clone()
            .watch(Duration::from_secs(s.api_keys_reload_seconds));
        auth.api_keys = Some(keys);
    }
    Ok(auth)
}
