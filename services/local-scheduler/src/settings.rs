//! The scheduler's settings: [`Settings::default`] is the single source of every default.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use service_kit::settings::LogFormat;

service_kit::choice! {
    /// Where instances are kept.
    pub enum Store {
        /// A SQLite file: durable.
        Sqlite = "sqlite",
        /// Memory only: gone with the process.
        Memory = "memory",
    }
}

service_kit::choice! {
    /// How SQLite commits (WAL either way: a commit survives a killed process).
    pub enum Synchronous {
        /// Power loss may lose the last commits.
        Normal = "normal",
        /// Every commit is on disk before the answer.
        Full = "full",
    }
}

/// Everything configurable, with its default in [`Default`]. Loaded by
/// `service_kit::settings::load` (defaults, TOML file, `LOCAL_SCHEDULER__<KEY>`), plus
/// `DTS_TASK_HUB_NAMES=a,b` as the DTS emulator reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// gRPC address (plaintext HTTP/2).
    pub listen: SocketAddr,
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    pub task_hubs: Vec<String>,
    /// `sqlite` (file, durable) or `memory`.
    pub store: Store,
    pub sqlite_path: PathBuf,
    /// `normal` (a commit survives a killed process; power loss may lose the last ones) or
    /// `full` (commits survive power loss; each write waits for the disk).
    pub sqlite_synchronous: Synchronous,
    /// A cap on the SQLite file, in bytes (0: none). Past it, writes fail as on a full disk,
    /// and the scheduler stops (fail-stop).
    pub sqlite_max_bytes: u64,
    /// WAL frames (pages of 4 KiB) after which the WAL is copied into the database file, on a
    /// thread of its own, off the callers' path. More: fewer copies of pages that change often,
    /// a larger WAL file (and a longer replay of it after a crash).
    pub sqlite_checkpoint_frames: u32,
    /// Instances per task hub, finished ones included (0: no limit); past it, starts are refused
    /// with `RESOURCE_EXHAUSTED` until retention or a purge makes room.
    pub max_instances: usize,
    /// Work items waiting per task hub (0: no limit); past it, new starts are refused likewise.
    pub max_backlog: usize,
    /// Instance state held in memory, estimated in bytes (payloads, tags, histories of unfinished
    /// instances, queued work, and a fixed cost per instance and event); past it new starts are
    /// refused likewise, so that memory (and a restart's) stays bounded whatever each start
    /// carries. 0: no limit.
    pub max_state_bytes: usize,
    /// Finished instances are purged this long after they end, by outcome (0: kept for ever).
    pub retention_completed_seconds: u64,
    pub retention_failed_seconds: u64,
    pub retention_terminated_seconds: u64,
    /// How long a worker may stop answering (HTTP/2 pings) before its connection is dropped and
    /// its work items are offered to others. A lease lasts as long as its stream otherwise,
    /// however long the activity runs.
    pub lease_seconds: u64,
    /// A work item whose worker is lost this many times while it runs it (the worker crashed, was
    /// killed or disconnected before answering) fails instead of being dispatched again: a
    /// poison input cannot take down worker after worker. 0: no limit.
    pub max_dispatches: u32,
    /// gRPC connections open at once; past it a new one is closed at once (clients retry).
    pub max_connections: usize,
    /// A gRPC connection must send the HTTP/2 preface within this long of its opening.
    pub handshake_timeout_seconds: u64,
    /// Idle work-item streams get a health ping this often.
    pub health_ping_seconds: u64,
    pub max_message_bytes: usize,
    /// `auto` (text on a terminal, else JSON), `text` or `json`.
    pub log_format: LogFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            task_hubs: vec!["default".into()],
            store: Store::Sqlite,
            sqlite_path: ".data/local-scheduler.db".into(),
            sqlite_synchronous: Synchronous::Normal,
            sqlite_max_bytes: 0,
            sqlite_checkpoint_frames: crate::store::CHECKPOINT_FRAMES,
            lease_seconds: 120,
            max_dispatches: 5,
            max_instances: 25_000,
            max_backlog: 10_000,
            max_state_bytes: 128 * 1024 * 1024,
            retention_completed_seconds: 3600,
            retention_failed_seconds: 86_400,
            retention_terminated_seconds: 86_400,
            health_ping_seconds: 30,
            max_connections: 1024,
            handshake_timeout_seconds: 10,
            max_message_bytes: 16 * 1024 * 1024,
            log_format: LogFormat::Auto,
        }
    }
}

impl service_kit::settings::Validate for Settings {
    fn validate(&self) -> Result<(), String> {
        if self.task_hubs.is_empty() {
            return Err("`task_hubs` must name at least one task hub".into());
        }
        if let Some(h) = self
            .task_hubs
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!("`task_hubs`: '{h}' is not a valid task hub name"));
        }
        if !(1..=1_000_000).contains(&self.sqlite_checkpoint_frames) {
            return Err("`sqlite_checkpoint_frames` must be from 1 to 1000000".into());
        }
        if self.lease_seconds < 1 {
            return Err("`lease_seconds` must be at least 1".into());
        }
        if self.max_connections < 1 {
            return Err("`max_connections` must be at least 1".into());
        }
        if self.handshake_timeout_seconds < 1 {
            return Err("`handshake_timeout_seconds` must be at least 1".into());
        }
        if self.health_ping_seconds < 1 {
            return Err("`health_ping_seconds` must be at least 1".into());
        }
        if self.max_message_bytes < 4 * 1024 * 1024 {
            return Err("`max_message_bytes` must be at least 4 MiB (4194304)".into());
        }
        Ok(())
    }
}

/// Where the settings come from.
pub const SOURCE: service_kit::settings::Source<'static> = service_kit::settings::Source {
    service: "local-scheduler",
    file_var: "LOCAL_SCHEDULER_CONFIG",
    env_prefix: "LOCAL_SCHEDULER",
    list_keys: &["task_hubs"],
    sections: &[],
    seed_variables: false,
    help: "DTS_TASK_HUB_NAMES=a,b names the task hubs, as for the DTS emulator.",
};

impl Settings {
    /// The engine's bounds.
    pub fn limits(&self) -> crate::engine::Limits {
        let keep = |s: u64| {
            i64::try_from(s)
                .ok()
                .filter(|s| *s > 0)
                .and_then(chrono::Duration::try_seconds)
        };
        crate::engine::Limits {
            max_instances: self.max_instances,
            max_backlog: self.max_backlog,
            retention: crate::engine::Retention {
                completed: keep(self.retention_completed_seconds),
                failed: keep(self.retention_failed_seconds),
                terminated: keep(self.retention_terminated_seconds),
            },
            max_dispatches: self.max_dispatches,
            max_state_bytes: self.max_state_bytes,
        }
    }

    /// How the SQLite store writes.
    pub(crate) fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            synchronous: self.sqlite_synchronous,
            max_bytes: self.sqlite_max_bytes,
            checkpoint_frames: self.sqlite_checkpoint_frames,
            busy_timeout: std::time::Duration::from_secs(5),
        }
    }

    /// `DTS_TASK_HUB_NAMES=a,b` over `task_hubs`, as the DTS emulator reads it.
    pub fn with_emulator_variables(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(hubs) = env("DTS_TASK_HUB_NAMES") {
            self.task_hubs = hubs.split(',').map(|s| s.trim().to_string()).collect();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_page_documents_every_setting_with_its_default() {
        let defaults = service_kit::settings::flat_defaults::<Settings>(&SOURCE);
        test_support::readme::assert_documented("LOCAL_SCHEDULER", &defaults);
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        use service_kit::settings::{SettingsError, load_from};
        for (var, value, key) in [
            ("LOCAL_SCHEDULER__STORE", "postgres", "`store`"),
            ("LOCAL_SCHEDULER__LEASE_SECONDS", "0", "`lease_seconds`"),
            ("LOCAL_SCHEDULER__LEASE_SECONDS", "soon", "lease_seconds"),
            (
                "LOCAL_SCHEDULER__SQLITE_CHECKPOINT_FRAMES",
                "0",
                "`sqlite_checkpoint_frames`",
            ),
            ("LOCAL_SCHEDULER__BOGUS", "1", "bogus"),
        ] {
            let env = [(var.to_string(), value.to_string())];
            let err = load_from::<Settings>(&SOURCE, None, env)
                .map(|_| ())
                .expect_err("refused");
            let text = match &err {
                SettingsError::Read { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            assert!(text.contains(key), "{var}={value}: {text}");
        }
    }
}
