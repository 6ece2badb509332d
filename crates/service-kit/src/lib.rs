//! Start-up and shutdown plumbing shared by `local-scheduler`, `worker` and `gateway`.

pub mod metrics;
pub mod telemetry;

use durabletask::{ConfigError, ConnectionOptions};

/// Resolves when the process is asked to stop (SIGTERM, or Ctrl-C on a terminal).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The path of `--config <path>`, else of the `<env_var>` variable.
pub fn config_file(env_var: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env_var).ok())
}

/// Applies the original sample's `ENDPOINT` / `TASKHUB` and the DTS connection string variable
/// (`DURABLE_TASK_SCHEDULER_CONNECTION_STRING`) over the keys `endpoint`, `taskhub` and
/// `connection_string`.
pub fn with_seed_variables(
    mut b: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, config::ConfigError> {
    for (var, key) in [
        ("ENDPOINT", "endpoint"),
        ("TASKHUB", "taskhub"),
        (
            "DURABLE_TASK_SCHEDULER_CONNECTION_STRING",
            "connection_string",
        ),
    ] {
        if let Ok(v) = std::env::var(var) {
            b = b.set_override(key, v)?;
        }
    }
    Ok(b)
}

/// Where the scheduler is: the connection string when given, else endpoint + task hub.
pub fn connection_options(
    endpoint: &str,
    taskhub: &str,
    connection_string: Option<&str>,
) -> Result<ConnectionOptions, ConfigError> {
    match connection_string {
        Some(cs) => ConnectionOptions::from_connection_string(cs),
        None => ConnectionOptions::new(endpoint, taskhub),
    }
}
