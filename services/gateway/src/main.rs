//! `gateway`: the async HTTP API in front of DTS (or the local scheduler).
//!
//! Configuration: defaults, then an optional TOML file (`--config <path>` or `GATEWAY_CONFIG`),
//! then `GATEWAY__<KEY>` variables; the sample's `ENDPOINT` / `TASKHUB` and
//! `DURABLE_TASK_SCHEDULER_CONNECTION_STRING` as for the worker.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use durabletask::{Client, Connection, ConnectionOptions};
use gateway::{AppState, GatewayConfig, app};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    listen: String,
    endpoint: String,
    taskhub: String,
    connection_string: Option<String>,
    public_base_url: Option<String>,
    max_delay_seconds: u64,
    max_name_chars: usize,
    max_body_bytes: usize,
    dts_timeout_ms: u64,
    retry_after_seconds: u64,
    max_wait_seconds: u64,
    trust_forwarded: bool,
    shutdown_timeout_seconds: u64,
    log_format: String,
}

fn load() -> anyhow::Result<(Settings, ConnectionOptions)> {
    let file = service_kit::config_file("gateway", "GATEWAY_CONFIG", "GATEWAY", "ENDPOINT, TASKHUB and DURABLE_TASK_SCHEDULER_CONNECTION_STRING work as in the original sample.")
        .map_err(anyhow::Error::msg)?;
    let mut b = config::Config::builder()
        .set_default("listen", "127.0.0.1:8000")?
        .set_default("endpoint", "http://localhost:8080")?
        .set_default("taskhub", "default")?
        .set_default("max_delay_seconds", 3600)?
        .set_default("max_name_chars", 200)?
        .set_default("max_body_bytes", 16 * 1024)?
        .set_default("dts_timeout_ms", 5000)?
        .set_default("retry_after_seconds", 1)?
        .set_default("max_wait_seconds", 30)?
        .set_default("trust_forwarded", false)?
        .set_default("shutdown_timeout_seconds", 20)?
        .set_default("log_format", "auto")?;
    if let Some(f) = file {
        b = b.add_source(config::File::with_name(&f).required(true));
    }
    b = service_kit::with_seed_variables(b)?;
    b = b.add_source(
        config::Environment::with_prefix("GATEWAY")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    );
    let s: Settings = b
        .build()?
        .try_deserialize()
        .context("invalid gateway configuration")?;
    s.listen.parse::<SocketAddr>().with_context(|| {
        format!(
            "`listen`: '{}' is not an address like 127.0.0.1:8000",
            s.listen
        )
    })?;
    anyhow::ensure!(
        s.max_body_bytes >= 256,
        "`max_body_bytes` must be at least 256"
    );
    anyhow::ensure!(s.max_name_chars >= 1, "`max_name_chars` must be at least 1");
    anyhow::ensure!(
        s.dts_timeout_ms >= 100,
        "`dts_timeout_ms` must be at least 100"
    );
    anyhow::ensure!(
        matches!(s.log_format.as_str(), "auto" | "text" | "json"),
        "`log_format` must be `auto`, `text` or `json`"
    );
    if let Some(u) = &s.public_base_url {
        anyhow::ensure!(
            (u.starts_with("http://") || u.starts_with("https://")) && !u.ends_with('/'),
            "`public_base_url` must be an absolute http(s) URL without a trailing slash, like https://api.example.com"
        );
    }
    let conn =
        service_kit::connection_options(&s.endpoint, &s.taskhub, s.connection_string.as_deref())
            .context("`endpoint` / `taskhub` / `connection_string`")?;
    Ok((s, conn))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("gateway: {e:#}");
        std::process::exit(2);
    }
}

async fn run() -> anyhow::Result<()> {
    let (s, conn_options) = load()?;
    let telemetry = service_kit::telemetry::init("gateway", &s.log_format);
    let conn = Connection::connect(conn_options)
        .await
        .context("connecting to the scheduler")?;
    let state = AppState::new(
        Client::new(&conn),
        GatewayConfig {
            public_base_url: s.public_base_url.clone(),
            max_delay_seconds: s.max_delay_seconds,
            max_name_chars: s.max_name_chars,
            max_body_bytes: s.max_body_bytes,
            dts_timeout: Duration::from_millis(s.dts_timeout_ms),
            retry_after_seconds: s.retry_after_seconds,
            max_wait_seconds: s.max_wait_seconds,
            trust_forwarded: s.trust_forwarded,
        },
    );
    let addr: SocketAddr = s.listen.parse()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("`listen`: cannot bind {addr}"))?;
    tracing::info!(%addr, "gateway listening");
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
