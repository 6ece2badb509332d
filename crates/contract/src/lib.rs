//! The contract between the gateway, which starts operations, and the worker, which runs them:
//! the orchestration and activity names and their input and output shapes. One definition, so
//! the two services cannot drift apart; and what an operation's status is called (`status`),
//! shared with the dashboard.

use serde::{Deserialize, Serialize};

pub mod status;

/// The orchestration the product runs.
pub const PROCESS_ORCHESTRATION: &str = "process_request";
/// The activity `process_request` calls.
pub const PROCESS_ACTIVITY: &str = "simulate_long_running_activity";
/// The original sample's orchestration, for the compatibility routes.
pub const SAMPLE_ORCHESTRATION: &str = "async_http_api_orchestrator";
/// The original sample's activity.
pub const SAMPLE_ACTIVITY: &str = "process_long_running_operation";
/// The original sample's `processing_time` when the request leaves it out.
pub const SAMPLE_DEFAULT_SECONDS: i64 = 5;

/// Starts an operation: greet `name` after `delay_seconds` of (simulated) work. The body of
/// `POST /api/process` and the input of `process_request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessRequest {
    /// Who to greet: 1 to `max_name_chars` (200 by default) characters once trimmed, so not
    /// only white space.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "Ada", min_length = 1, pattern = r"\S")
    )]
    pub name: String,
    /// Seconds of work, 0 to `max_delay_seconds` (3600 by default).
    #[cfg_attr(feature = "openapi", schema(example = 5, minimum = 0))]
    pub delay_seconds: u64,
}

/// The output of a succeeded `process_request` operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessResult {
    #[cfg_attr(
        feature = "openapi",
        schema(example = "Hello Ada! Your request took 5 seconds.")
    )]
    pub message: String,
    pub name: String,
    pub processing_time_seconds: u64,
    /// The worker instance that ran the activity.
    pub worker: String,
    /// RFC 3339 UTC.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub completed_at: chrono::DateTime<chrono::Utc>,
}

/// The input of the original sample's orchestration and activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleInput {
    #[serde(default)]
    pub operation_id: Option<String>,
    #[serde(default)]
    pub processing_time: Option<i64>,
}

/// The output of the original sample's `async_http_api_orchestrator`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SampleResult {
    pub operation_id: String,
    #[cfg_attr(feature = "openapi", schema(example = "completed"))]
    pub status: String,
    #[cfg_attr(
        feature = "openapi",
        schema(example = "Operation 3f2a... completed successfully")
    )]
    pub result: String,
    /// Unix time in seconds, as the sample's Python `time.time()`.
    pub processed_at: f64,
}

/// The orchestration that tells a callback URL how an operation ended: started beside the
/// operation (under [`callback_instance_id`]), it waits for the operation to end, then delivers.
pub const CALLBACK_ORCHESTRATION: &str = "deliver_completion_callback";
/// Reads the operation: its CloudEvent once it has ended.
pub const CALLBACK_READ_ACTIVITY: &str = "read_operation_outcome";
/// One delivery attempt.
pub const CALLBACK_DELIVER_ACTIVITY: &str = "deliver_callback_attempt";
/// The tag on an operation started with a callback (its value: the callback instance's id).
pub const CALLBACK_TAG: &str = "callback";

/// What [`callback_instance_id`] appends to the operation's id.
pub const CALLBACK_SUFFIX: &str = "~callback";

/// The instance that delivers `operation_id`'s callback. Same caller prefix as the operation.
pub fn callback_instance_id(operation_id: &str) -> String {
    format!("{operation_id}{CALLBACK_SUFFIX}")
}

/// The input of [`CALLBACK_ORCHESTRATION`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackJob {
    pub operation_id: String,
    /// Checked at start; checked again at each attempt.
    pub url: String,
    /// The same on every attempt, so receivers can drop repeats.
    pub webhook_id: String,
    /// The operation's links (status, result, cancel), absolute, as the gateway made them.
    pub links: serde_json::Value,
    /// Who started the operation, when callers have identities (for per-caller secrets).
    #[serde(default)]
    pub owner: Option<String>,
    /// Status reads made so far while waiting (the orchestration continues as new past a
    /// bound, keeping its history short).
    #[serde(default)]
    pub checks: u32,
}

/// What [`CALLBACK_READ_ACTIVITY`] finds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperationOutcome {
    /// Not ended yet.
    Running,
    /// Ended: the CloudEvent to deliver (JSON text, the same bytes on every attempt).
    Ended { event_type: String, event: String },
    /// The operation does not exist (purged, or never started).
    Missing,
}

/// The input of [`CALLBACK_DELIVER_ACTIVITY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub url: String,
    pub webhook_id: String,
    pub event: String,
    pub attempt: u32,
    #[serde(default)]
    pub owner: Option<String>,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptResult {
    /// `delivered` (2xx), `retry` (another answer, a timeout or a network error), or `stop`
    /// (410, a redirect, which is not followed, or a URL now refused).
    pub outcome: String,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// Where a delivery stands: the callback instance's custom status, shown in the operation's
/// status document as `callback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallbackState {
    /// `waiting` (for the operation to end), `delivering`, `delivered`, `failed` (attempts
    /// exhausted, or the receiver answered 410 or redirected).
    pub state: String,
    pub attempts: u32,
    pub webhook_id: String,
    /// The last answer's status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last attempt's error, when it had no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
