//! Recurring schedules, built on durable entities the way the Durable Task SDKs build them, so
//! that a schedule made by one SDK is run, described and changed by another.
//!
//! A schedule is an entity named `schedule` whose key is the schedule id. Its state (written in
//! the .NET SDK's shape: PascalCase keys, the status as an ordinal, the interval as a `TimeSpan`
//! string) holds the configuration and the run bookkeeping; its `run_schedule` operation starts
//! the target orchestration when due and signals itself again for the next run, carrying an
//! execution token so that a pause, an update or a delete makes older signals stale. Clients
//! change a schedule through the `execute_schedule_operation_orchestrator` orchestration, which
//! calls the entity and so reports the operation's failure (an invalid transition) back.
//!
//! - [`entity`]: the entity and the orchestration, registered by
//!   [`crate::Registry::add_schedules`].
//! - [`client`]: create, describe, list, update, pause, resume and delete, on [`crate::Client`].

pub mod client;
pub(crate) mod entity;
mod wire;

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use client::{ScheduleError, ScheduleQuery, Schedules};
pub use wire::ScheduleStatus;

/// The name of the entity every schedule is.
pub const SCHEDULE_ENTITY: &str = "schedule";
/// The orchestration clients change schedules through.
pub const SCHEDULE_OPERATION_ORCHESTRATOR: &str = "execute_schedule_operation_orchestrator";
/// The shortest interval a schedule may have (the SDKs' rule).
pub const MINIMUM_INTERVAL: Duration = Duration::from_secs(1);

/// The schedule entity's operation names (the Python SDK's method names).
pub mod operations {
    pub const CREATE: &str = "create_schedule";
    pub const UPDATE: &str = "update_schedule";
    pub const PAUSE: &str = "pause_schedule";
    pub const RESUME: &str = "resume_schedule";
    pub const RUN: &str = "run_schedule";
    pub const DELETE: &str = "delete";
}

/// The instance id of a schedule's run at `at`, unless the schedule names one for every run.
pub fn run_instance_id(schedule_id: &str, at: DateTime<Utc>) -> String {
    format!("{schedule_id}-{}", wire::iso(at))
}

/// Why a schedule's settings are refused, naming the field.
pub(crate) fn check_interval(interval: Duration) -> Result<(), String> {
    if interval.is_zero() {
        return Err("interval: must be positive".into());
    }
    if interval < MINIMUM_INTERVAL {
        return Err("interval: must be at least 1 second".into());
    }
    Ok(())
}

fn check_window(
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
) -> Result<(), String> {
    match (start_at, end_at) {
        (Some(s), Some(e)) if s > e => Err("start_at: cannot be later than end_at".into()),
        _ => Ok(()),
    }
}

/// A new schedule: run `orchestration_name` every `interval`, from `start_at` (or its creation)
/// until `end_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleCreationOptions {
    pub schedule_id: String,
    pub orchestration_name: String,
    pub interval: Duration,
    /// The input every run gets.
    pub orchestration_input: Option<serde_json::Value>,
    /// Every run's instance id; by default `<schedule id>-<run time>`, one per run.
    pub orchestration_instance_id: Option<String>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    /// Run at once when created after `start_at`, rather than at the next interval.
    pub start_immediately_if_late: bool,
}

impl ScheduleCreationOptions {
    /// The options with the defaults, or why they are refused (the message names the field).
    pub fn new(
        schedule_id: &str,
        orchestration_name: &str,
        interval: Duration,
    ) -> Result<Self, String> {
        let options = Self {
            schedule_id: schedule_id.to_string(),
            orchestration_name: orchestration_name.to_string(),
            interval,
            orchestration_input: None,
            orchestration_instance_id: None,
            start_at: None,
            end_at: None,
            start_immediately_if_late: false,
        };
        options.validate()?;
        Ok(options)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.schedule_id.is_empty() {
            return Err("schedule_id: must not be empty".into());
        }
        if self.orchestration_name.is_empty() {
            return Err("orchestration_name: must not be empty".into());
        }
        check_interval(self.interval)?;
        check_window(self.start_at, self.end_at)
    }
}

/// A change to a schedule: only the fields that are set change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleUpdateOptions {
    pub orchestration_name: Option<String>,
    pub orchestration_input: Option<serde_json::Value>,
    pub orchestration_instance_id: Option<String>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub interval: Option<Duration>,
    pub start_immediately_if_late: Option<bool>,
}

/// What a schedule is and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDescription {
    pub schedule_id: String,
    pub orchestration_name: Option<String>,
    pub orchestration_input: Option<serde_json::Value>,
    pub orchestration_instance_id: Option<String>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub interval: Option<Duration>,
    pub start_immediately_if_late: Option<bool>,
    pub status: ScheduleStatus,
    pub execution_token: String,
    pub last_run_at: Option<DateTime<Utc>>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_modified_at: Option<DateTime<Utc>>,
}
