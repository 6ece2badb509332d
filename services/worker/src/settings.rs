//! The worker's settings: [`Settings::default`] is the single source of every default.

use serde::{Deserialize, Serialize};

/// Everything configurable. Loaded by `service_kit::settings::load` (defaults, TOML file,
/// `WORKER__<KEY>`; the sample's `ENDPOINT`, `TASKHUB` and connection-string variables).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The scheduler's gRPC endpoint.
    pub endpoint: String,
    pub taskhub: String,
    /// A DTS connection string; wins over `endpoint` and `taskhub`.
    pub connection_string: Option<String>,
    pub max_concurrent_orchestrations: usize,
    pub max_concurrent_activities: usize,
    /// After SIGTERM: time for running work items to finish before they are abandoned.
    pub drain_timeout_seconds: u64,
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: String,
    /// `auto` (text on a terminal, else JSON), `text` or `json`.
    pub log_format: String,
    /// `all`, `orchestrations` or `activities`: split the two kinds across deployments.
    pub runs: String,
}

impl Default for Settings {
    fn default() -> Self {
        let sdk = durabletask::WorkerOptions::default();
        Self {
            endpoint: "http://localhost:8080".into(),
            taskhub: "default".into(),
            connection_string: None,
            // The SDK's defaults: one number, in one place.
            max_concurrent_orchestrations: sdk.max_concurrent_orchestrations,
            max_concurrent_activities: sdk.max_concurrent_activities,
            drain_timeout_seconds: 25,
            admin_listen: "127.0.0.1:9091".into(),
            log_format: "auto".into(),
            runs: "all".into(),
        }
    }
}

/// Where the settings come from.
pub const SOURCE: service_kit::settings::Source<'static> = service_kit::settings::Source {
    service: "worker",
    file_var: "WORKER_CONFIG",
    env_prefix: "WORKER",
    list_keys: &[],
    seed_variables: true,
    help: "ENDPOINT, TASKHUB and DURABLE_TASK_SCHEDULER_CONNECTION_STRING work as in the original sample.",
};

impl service_kit::settings::Validate for Settings {
    fn validate(&self) -> Result<(), String> {
        if self.max_concurrent_orchestrations < 1 {
            return Err("`max_concurrent_orchestrations` must be at least 1".into());
        }
        if self.max_concurrent_activities < 1 {
            return Err("`max_concurrent_activities` must be at least 1".into());
        }
        service_kit::settings::log_format(&self.log_format)?;
        if !matches!(self.runs.as_str(), "all" | "orchestrations" | "activities") {
            return Err(format!(
                "`runs` must be `all`, `orchestrations` or `activities` (got '{}')",
                self.runs
            ));
        }
        service_kit::settings::socket_addr("admin_listen", &self.admin_listen, "127.0.0.1:9091")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_documents_every_setting_with_its_default() {
        let defaults = serde_json::to_value(Settings::default()).expect("serialize");
        test_support::readme::assert_documented("WORKER", &defaults);
    }
}
