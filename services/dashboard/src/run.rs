//! The dashboard as a process: connect to the scheduler, serve until SIGTERM (or Ctrl-C).

use std::sync::Arc;
use std::time::Duration;

use durabletask::{Client, Connection};
use service_kit::RunError;
use service_kit::api_keys::ApiKeys;

use crate::settings::Settings;
use crate::{DashState, app, server_limits};

/// Runs the dashboard with `s` until SIGTERM (or Ctrl-C).
pub async fn run(s: Settings) -> Result<(), RunError> {
    let options = s.scheduler.connection_options()?;
    let telemetry = service_kit::telemetry::init("dashboard", s.log_format);
    let conn = Connection::connect(options)
        .await
        .map_err(RunError::Connect)?;
    let admin_keys = match &s.admin_keys_file {
        Some(path) => {
            let keys = Arc::new(
                ApiKeys::load(std::path::Path::new(path))
                    .map_err(|e| RunError::config("`admin_keys_file`", e))?,
            );
            keys.clone().watch(Duration::from_secs(5));
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
    let listener = service_kit::run::bind("listen", s.listen).await?;
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        actions = s.actions_enabled(),
        "dashboard listening"
    );
    let stop = service_kit::cancelled_on_signal("");
    service_kit::http_server::serve(
        listener,
        app(state),
        server_limits(),
        Default::default(),
        stop,
        Duration::from_secs(5),
    )
    .await;
    conn.close();
    telemetry.shutdown();
    Ok(())
}
