//! `dashboard`: the Durable Task dashboard over any DTS endpoint (the local scheduler, or Azure
//! DTS with the worker's connection settings).

use anyhow::Context;
use dashboard::settings::{SOURCE, Settings};
use dashboard::{DashState, app};
use durabletask::{Client, Connection};
use service_kit::api_keys::ApiKeys;
use service_kit::settings::Startup;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("dashboard: {e:#}");
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
    let options =
        service_kit::connection_options(&s.endpoint, &s.taskhub, s.connection_string.as_deref())
            .context("`endpoint` / `taskhub` / `connection_string`")?;
    let telemetry = service_kit::telemetry::init("dashboard", &s.log_format);
    let conn = Connection::connect(options)
        .await
        .context("connecting to the scheduler")?;
    let admin_keys = match &s.admin_keys_file {
        Some(path) => {
            let keys = std::sync::Arc::new(
                ApiKeys::load(std::path::Path::new(path))
                    .map_err(|e| anyhow::anyhow!("`admin_keys_file`: {e}"))?,
            );
            keys.clone().watch(std::time::Duration::from_secs(5));
            Some(keys)
        }
        None => None,
    };
    let state = DashState::with_admin_keys(
        Client::new(&conn),
        s.actions_enabled(),
        s.page_size,
        admin_keys,
        s.allowed_hosts(),
    );
    let listener = tokio::net::TcpListener::bind(&s.listen)
        .await
        .with_context(|| format!("`listen`: cannot bind {}", s.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        actions = s.actions_enabled(),
        "dashboard listening"
    );
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            service_kit::shutdown_signal().await;
            stop.cancel();
        }
    });
    service_kit::http_server::serve(
        listener,
        app(state),
        dashboard::server_limits(),
        Default::default(),
        stop,
        std::time::Duration::from_secs(5),
    )
    .await;
    conn.close();
    telemetry.shutdown();
    Ok(())
}
