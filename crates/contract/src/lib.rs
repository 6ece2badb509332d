//! The contract between the gateway, which starts operations, and the worker, which runs them:
//! the orchestration and activity names and their input and output shapes. One definition, so
//! the two services cannot drift apart.

use serde::{Deserialize, Serialize};

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
