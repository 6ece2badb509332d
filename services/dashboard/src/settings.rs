//! The dashboard's settings: [`Settings::default`] is the single source of every default.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use service_kit::settings::{LogFormat, SchedulerSettings};

/// Everything configurable. Loaded by `service_kit::settings::load` (defaults, TOML file,
/// `DASHBOARD__<KEY>`; the sample's `ENDPOINT`, `TASKHUB` and connection-string variables).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the dashboard listens: loopback by default (the emulator's port).
    pub listen: SocketAddr,
    /// Where the scheduler is (`endpoint`, `taskhub`, `connection_string`).
    pub scheduler: SchedulerSettings,
    /// Whether the dashboard may act on instances (terminate, suspend, ...). Unset: yes on a
    /// loopback address or with `admin_keys_file`, no (read-only) otherwise.
    pub actions: Option<bool>,
    /// The gateway's API keys file: when set, every page needs one of its `admin` keys (HTTP
    /// Basic, the key as the password, or `X-API-Key`).
    pub admin_keys_file: Option<String>,
    /// Instances per page of the list.
    pub page_size: u32,
    /// Names the dashboard answers to besides `localhost`, `127.0.0.1`, `[::1]` and its listen
    /// address; a request naming another `Host` gets `421` (a page on another name, DNS rebinding,
    /// cannot read the dashboard or act through it).
    pub hosts: Vec<String>,
    /// `auto` (text on a terminal, else JSON), `text` or `json`.
    pub log_format: LogFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            scheduler: SchedulerSettings::default(),
            actions: None,
            admin_keys_file: None,
            page_size: 50,
            hosts: Vec::new(),
            log_format: LogFormat::Auto,
        }
    }
}

/// Where the settings come from.
pub const SOURCE: service_kit::settings::Source<'static> = service_kit::settings::Source {
    service: "dashboard",
    file_var: "DASHBOARD_CONFIG",
    env_prefix: "DASHBOARD",
    list_keys: &["hosts"],
    seed_variables: true,
    sections: &[SchedulerSettings::SECTION],
    help: "ENDPOINT, TASKHUB and DURABLE_TASK_SCHEDULER_CONNECTION_STRING work as for the worker.",
};

impl service_kit::settings::Validate for Settings {
    fn validate(&self) -> Result<(), String> {
        if !(1..=500).contains(&self.page_size) {
            return Err("`page_size` must be between 1 and 500".into());
        }
        if let Some(h) = self.hosts.iter().find(|h| {
            let h = h.trim();
            h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'))
        }) {
            return Err(format!("`hosts`: '{h}' is not a host name"));
        }
        Ok(())
    }
}

impl Settings {
    /// The names requests may carry in `Host` (lower case, without a port).
    pub fn allowed_hosts(&self) -> Vec<String> {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ip = self.listen.ip();
        if !ip.is_unspecified() {
            names.push(match ip {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            });
        }
        names.extend(self.hosts.iter().map(|h| crate::host_name(h.trim())));
        names
    }

    /// Whether actions are on: as configured, else only when bound to loopback.
    pub fn actions_enabled(&self) -> bool {
        self.actions
            .unwrap_or_else(|| self.admin_keys_file.is_some() || self.listen.ip().is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_page_documents_every_setting_with_its_default() {
        let defaults = service_kit::settings::flat_defaults::<Settings>(&SOURCE);
        test_support::readme::assert_documented("DASHBOARD", &defaults);
    }

    #[test]
    fn actions_default_to_on_only_on_loopback() {
        let loopback = Settings::default();
        assert!(loopback.actions_enabled());
        let exposed = Settings {
            listen: "0.0.0.0:8082".parse().expect("address"),
            ..Default::default()
        };
        assert!(!exposed.actions_enabled());
        let allowed = Settings {
            actions: Some(true),
            ..exposed
        };
        assert!(allowed.actions_enabled());
    }
}
