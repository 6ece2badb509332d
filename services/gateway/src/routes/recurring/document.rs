//! What `/api/recurring` reads and answers: the request, the document of a recurring operation
//! (made from the schedule's description), a page of them.

use contract::{PROCESS_ORCHESTRATION, ProcessRequest};
use durabletask::schedule::run_instance_id;
use durabletask::{ScheduleDescription, ScheduleStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Settings;
use crate::edge::Edge;
use crate::extract::FieldRules;
use crate::links::encode;
use crate::model::rfc3339;

/// A new recurring operation: the body of `POST /api/process`, started every
/// `interval_seconds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecurringRequest {
    /// Who each run greets (as for `POST /api/process`).
    #[schema(example = "Ada", min_length = 1)]
    pub name: String,
    /// Seconds of work of each run (as for `POST /api/process`).
    #[schema(example = 5, minimum = 0)]
    pub delay_seconds: u64,
    /// Seconds between runs, `min_recurring_interval_seconds` (60 by default) to
    /// `max_recurring_interval_seconds` (366 days by default).
    #[schema(example = 3600)]
    pub interval_seconds: u64,
    /// The first run, an RFC 3339 time; by default one interval after the creation.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub start_at: Option<String>,
    /// No run after this RFC 3339 time (in the future, after `start_at`); the recurring
    /// operation is deleted then.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub end_at: Option<String>,
}

impl FieldRules for RecurringRequest {
    fn rule(field: &str, config: &Settings) -> Option<String> {
        match field {
            "interval_seconds" => Some(interval_rule(config)),
            "start_at" | "end_at" => Some("must be an RFC 3339 time".into()),
            other => ProcessRequest::rule(other, config),
        }
    }
}

pub(super) fn interval_rule(config: &Settings) -> String {
    format!(
        "must be an integer between {} and {}",
        config.limits.min_recurring_interval_seconds, config.limits.max_recurring_interval_seconds
    )
}

/// Whether a recurring operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum RecurringStatus {
    Active,
    Paused,
}

/// Where to find a recurring operation and what it started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecurringLinks {
    /// This document (`GET`); `DELETE` ends it.
    #[serde(rename = "self")]
    pub this: String,
    /// Stops its runs (`POST`).
    pub pause: String,
    /// Starts its runs again (`POST`).
    pub resume: String,
    /// The operations its runs started (`GET`).
    pub runs: String,
    /// The status monitor of the operation its last run started.
    pub last_operation: Option<String>,
}

/// A recurring operation and where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecurringOperation {
    pub id: String,
    pub status: RecurringStatus,
    pub name: String,
    pub delay_seconds: u64,
    pub interval_seconds: u64,
    pub start_at: Option<String>,
    pub end_at: Option<String>,
    pub created_at: Option<String>,
    pub last_run_at: Option<String>,
    /// When it runs next (none while paused).
    pub next_run_at: Option<String>,
    /// The operation its last run started.
    pub last_operation_id: Option<String>,
    pub links: RecurringLinks,
}

/// One page of recurring operations (Azure paging).
#[derive(Debug, Serialize, ToSchema)]
pub struct RecurringPage {
    pub value: Vec<RecurringOperation>,
    /// The next page, or null on the last one. A page may hold fewer than `page_size`.
    #[serde(rename = "nextLink")]
    pub next_link: Option<String>,
}

/// The document of `d`, or `None` for a schedule the gateway did not make (another
/// orchestration, an input that is not a request).
pub(super) fn document(edge: &Edge, d: ScheduleDescription) -> Option<RecurringOperation> {
    if d.orchestration_name.as_deref() != Some(PROCESS_ORCHESTRATION) {
        return None;
    }
    let request: ProcessRequest = serde_json::from_value(d.orchestration_input?).ok()?;
    let status = match d.status {
        ScheduleStatus::Active => RecurringStatus::Active,
        ScheduleStatus::Paused => RecurringStatus::Paused,
        ScheduleStatus::Uninitialized => return None,
    };
    let last_operation_id = d.last_run_at.map(|at| {
        d.orchestration_instance_id
            .clone()
            .unwrap_or_else(|| run_instance_id(&d.schedule_id, at))
    });
    let base = format!("{}/api/recurring/{}", edge.base, d.schedule_id);
    let links = RecurringLinks {
        pause: format!("{base}/pause"),
        resume: format!("{base}/resume"),
        runs: format!(
            "{}/api/operations?recurring={}",
            edge.base,
            encode(&d.schedule_id)
        ),
        last_operation: last_operation_id
            .as_deref()
            .map(|id| edge.links(&encode(id)).status),
        this: base,
    };
    Some(RecurringOperation {
        id: d.schedule_id,
        status,
        name: request.name,
        delay_seconds: request.delay_seconds,
        interval_seconds: d.interval.map_or(0, |i| i.as_secs()),
        start_at: rfc3339(d.start_at),
        end_at: rfc3339(d.end_at),
        created_at: rfc3339(d.created_at),
        last_run_at: rfc3339(d.last_run_at),
        next_run_at: rfc3339(d.next_run_at),
        last_operation_id,
        links,
    })
}
