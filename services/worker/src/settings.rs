//! The worker's settings: [`Settings::default`] is the single source of every default.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use service_kit::settings::{LogFormat, SchedulerSettings, Section};

service_kit::choice! {
    /// Which work items a worker takes: split the two kinds across deployments.
    pub enum Runs {
        All = "all",
        Orchestrations = "orchestrations",
        Activities = "activities",
    }
}

/// Everything configurable. Loaded by `service_kit::settings::load` (defaults, TOML file,
/// `WORKER__<KEY>`; the sample's `ENDPOINT`, `TASKHUB` and connection-string variables).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the scheduler is (`endpoint`, `taskhub`, `connection_string`).
    pub scheduler: SchedulerSettings,
    pub max_concurrent_orchestrations: usize,
    pub max_concurrent_activities: usize,
    /// After SIGTERM: time for running work items to finish before they are abandoned.
    pub drain_timeout_seconds: u64,
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// `auto` (text on a terminal, else JSON), `text` or `json`.
    pub log_format: LogFormat,
    /// `all`, `orchestrations` or `activities`: split the two kinds across deployments.
    pub runs: Runs,
    /// The version of the orchestration code this worker runs (the gateway starts new operations
    /// at its own `orchestration_version`). Set: the worker takes only work of that version (and
    /// of `replays_versions`), so old and new code run side by side during a rollout. Empty: any
    /// version.
    pub orchestration_version: Option<String>,
    /// Older versions this code also replays correctly (`unversioned`: instances started without
    /// a version); needs `orchestration_version`.
    pub replays_versions: Vec<String>,
    /// Completion callbacks (`callback_*`): how they are signed and retried.
    pub callbacks: CallbackDelivery,
    /// Where callbacks may go (`callback_allow_http`, `callback_hosts`,
    /// `callback_allowed_networks`): keep them equal to the gateway's.
    pub callback_targets: service_kit::callbacks::Targets,
    /// Large payloads (`payload_*`): inputs, results and states over the threshold in blob
    /// storage.
    pub payloads: service_kit::payloads::PayloadSettings,
}

impl Default for Settings {
    fn default() -> Self {
        let sdk = durabletask::WorkerOptions::default();
        Self {
            scheduler: SchedulerSettings::default(),
            // The SDK's defaults: one number, in one place.
            max_concurrent_orchestrations: sdk.max_concurrent_orchestrations,
            max_concurrent_activities: sdk.max_concurrent_activities,
            drain_timeout_seconds: 25,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            log_format: LogFormat::Auto,
            runs: Runs::All,
            orchestration_version: None,
            replays_versions: Vec::new(),
            callbacks: CallbackDelivery::default(),
            callback_targets: Default::default(),
            payloads: Default::default(),
        }
    }
}

/// Completion callbacks, how they are signed and retried: the keys `callback_<field>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackDelivery {
    /// The Standard Webhooks signing secret (`whsec_` and base64 of at
    /// least 24 random bytes). Without it, callbacks are not delivered (each ends `failed`).
    pub secret: Option<String>,
    /// A JSON file of per-caller secrets, `{"<owner>": "whsec_…"}`: a caller's callbacks are
    /// signed with its own secret when it has one.
    pub secrets_file: Option<String>,
    /// Attempts per delivery, at most.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each next one (with jitter), up to
    /// `callback_max_retry_ms`.
    pub first_retry_ms: u64,
    pub max_retry_ms: u64,
    /// No attempt starts later than this after the first one.
    pub max_total_seconds: u64,
    /// Each attempt's time for an answer.
    pub attempt_timeout_ms: u64,
    /// While the operation runs, its status is read after 1 s, 2 s, 4 s … up to this interval.
    pub poll_max_ms: u64,
}

impl Default for CallbackDelivery {
    fn default() -> Self {
        Self {
            secret: None,
            secrets_file: None,
            max_attempts: 8,
            first_retry_ms: 1000,
            max_retry_ms: 300_000,
            max_total_seconds: 3600,
            attempt_timeout_ms: 10_000,
            poll_max_ms: 30_000,
        }
    }
}

/// Where the settings come from.
pub const SOURCE: service_kit::settings::Source<'static> = service_kit::settings::Source {
    service: "worker",
    file_var: "WORKER_CONFIG",
    env_prefix: "WORKER",
    list_keys: &[
        "callback_hosts",
        "callback_allowed_networks",
        "replays_versions",
    ],
    seed_variables: true,
    sections: &[
        SchedulerSettings::SECTION,
        Section {
            field: "callbacks",
            prefix: "callback_",
        },
        Section {
            field: "callback_targets",
            prefix: service_kit::callbacks::Targets::PREFIX,
        },
        service_kit::payloads::PayloadSettings::SECTION,
    ],
    help: "ENDPOINT, TASKHUB and DURABLE_TASK_SCHEDULER_CONNECTION_STRING work as in the original sample.\n`worker versions [--free <version>]` prints the unfinished operations per orchestration version; with --free, exits 0 when that version has none (its workers can go), 1 otherwise.",
};

impl service_kit::settings::Validate for Settings {
    fn validate(&self) -> Result<(), String> {
        self.payloads.store()?;
        if self.max_concurrent_orchestrations < 1 {
            return Err("`max_concurrent_orchestrations` must be at least 1".into());
        }
        if self.max_concurrent_activities < 1 {
            return Err("`max_concurrent_activities` must be at least 1".into());
        }
        self.versions()?;
        self.callback_targets.policy()?;
        if let Some(secret) = &self.callbacks.secret {
            service_kit::callbacks::Signer::new(secret, "callback_secret")?;
        }
        if !(1..=100).contains(&self.callbacks.max_attempts) {
            return Err("`callback_max_attempts` must be between 1 and 100".into());
        }
        for (key, value, least) in [
            ("callback_first_retry_ms", self.callbacks.first_retry_ms, 10),
            ("callback_max_retry_ms", self.callbacks.max_retry_ms, 10),
            (
                "callback_attempt_timeout_ms",
                self.callbacks.attempt_timeout_ms,
                100,
            ),
            ("callback_poll_max_ms", self.callbacks.poll_max_ms, 100),
            (
                "callback_max_total_seconds",
                self.callbacks.max_total_seconds,
                1,
            ),
        ] {
            if value < least {
                return Err(format!("`{key}` must be at least {least}"));
            }
        }
        if self.callbacks.max_retry_ms < self.callbacks.first_retry_ms {
            return Err(
                "`callback_max_retry_ms` must be at least `callback_first_retry_ms`".into(),
            );
        }
        Ok(())
    }
}

/// How `replays_versions` names instances started without a version.
pub const UNVERSIONED: &str = "unversioned";

impl Settings {
    /// The versions this worker takes (its work-item filters), `None` for any.
    pub fn versions(&self) -> Result<Option<Vec<String>>, String> {
        let Some(version) = &self.orchestration_version else {
            if !self.replays_versions.is_empty() {
                return Err(
                    "`replays_versions` needs `orchestration_version` (the version this code runs)"
                        .into(),
                );
            }
            return Ok(None);
        };
        service_kit::settings::orchestration_version("orchestration_version", version)?;
        let mut versions = vec![version.clone()];
        for v in &self.replays_versions {
            let v = v.trim();
            if v == UNVERSIONED {
                versions.push(String::new());
            } else {
                service_kit::settings::orchestration_version("replays_versions", v)?;
                versions.push(v.to_string());
            }
        }
        versions.dedup();
        Ok(Some(versions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_page_documents_every_setting_with_its_default() {
        let defaults = service_kit::settings::flat_defaults::<Settings>(&SOURCE);
        test_support::readme::assert_documented("WORKER", &defaults);
    }
}
