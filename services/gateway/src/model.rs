//! The response bodies of the API and the mapping from DTS statuses to its vocabulary.

use durabletask::{OrchestrationMetadata, OrchestrationStatus};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use contract::{ProcessResult, SampleResult};

use crate::links::OperationLinks;

/// The status vocabulary of this API (Azure LRO style). `Succeeded`, `Failed` and `Canceled`
/// are terminal; `Canceling` only answers a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum OperationState {
    NotStarted,
    Running,
    Suspended,
    Succeeded,
    Failed,
    Canceled,
    Canceling,
}

impl std::fmt::Display for OperationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Maps DTS runtime statuses to this API's vocabulary, in one place.
pub fn operation_status(s: OrchestrationStatus) -> OperationState {
    match s {
        OrchestrationStatus::Pending => OperationState::NotStarted,
        OrchestrationStatus::Running | OrchestrationStatus::ContinuedAsNew => {
            OperationState::Running
        }
        OrchestrationStatus::Suspended => OperationState::Suspended,
        OrchestrationStatus::Completed => OperationState::Succeeded,
        OrchestrationStatus::Failed => OperationState::Failed,
        OrchestrationStatus::Terminated | OrchestrationStatus::Canceled => OperationState::Canceled,
    }
}

/// The DTS runtime statuses behind one status of this API's vocabulary (list filters).
pub(crate) fn runtime_statuses(status: &str) -> Option<Vec<OrchestrationStatus>> {
    use OrchestrationStatus as S;
    Some(match status {
        "NotStarted" => vec![S::Pending],
        "Running" => vec![S::Running, S::ContinuedAsNew],
        "Suspended" => vec![S::Suspended],
        "Succeeded" => vec![S::Completed],
        "Failed" => vec![S::Failed],
        "Canceled" => vec![S::Terminated, S::Canceled],
        _ => return None,
    })
}

/// Why an operation failed or was canceled: the innermost error's type and message, never a
/// stack trace.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OperationError {
    #[serde(rename = "type")]
    #[schema(example = "TimeoutError")]
    pub kind: String,
    pub message: String,
}

/// An operation accepted (`202`) or not finished yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationAccepted {
    /// The operation id (the orchestration instance id).
    #[schema(example = "9f1c2e0b6a2d4d7e8b3f5a6c7d8e9f01")]
    pub id: String,
    pub status: OperationState,
    pub links: OperationLinks,
}

/// The status monitor's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationStatusBody {
    pub id: String,
    pub status: OperationState,
    /// The DTS runtime status, e.g. `RUNNING`.
    #[schema(example = "RUNNING")]
    pub runtime_status: &'static str,
    /// RFC 3339 UTC.
    pub created_at: Option<String>,
    /// RFC 3339 UTC.
    pub last_updated_at: Option<String>,
    /// Progress the orchestration reports (any JSON value).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub custom_status: Option<Value>,
    /// Present when the operation failed or was canceled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
    /// Where the delivery of the completion callback stands, when the start named one
    /// (`Callback-Url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<contract::CallbackState>,
    pub links: OperationLinks,
}

/// What `/api/result/{id}` returns for a succeeded operation: the output of its orchestration.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OperationOutput {
    Process(ProcessResult),
    Sample(SampleResult),
}

/// One operation in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationSummary {
    pub id: String,
    /// The orchestration that runs it.
    pub name: String,
    pub status: OperationState,
    pub runtime_status: &'static str,
    pub created_at: Option<String>,
    pub last_updated_at: Option<String>,
    pub links: OperationLinks,
}

/// One page of operations (Azure paging: `value` and `nextLink`).
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationPage {
    pub value: Vec<OperationSummary>,
    /// The next page, or null on the last one.
    #[serde(rename = "nextLink")]
    pub next_link: Option<String>,
}

pub(crate) fn rfc3339(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Why an operation failed or was canceled, from its metadata.
pub(crate) fn error_of(m: &OrchestrationMetadata) -> Option<OperationError> {
    match m.runtime_status {
        OrchestrationStatus::Failed => {
            // The innermost failure is the useful one (the activity's), never a stack trace.
            let mut f = m.failure_details.as_ref()?;
            while let Some(inner) = f.inner.as_deref() {
                f = inner;
            }
            Some(OperationError {
                kind: f.error_type.clone(),
                message: f.message.clone(),
            })
        }
        OrchestrationStatus::Terminated => Some(OperationError {
            kind: "Canceled".into(),
            // The terminate reason, when there was one.
            message: m
                .output::<Value>()
                .ok()
                .filter(|v| !v.is_null())
                .map_or("the operation was canceled".into(), |v| {
                    v.as_str().map_or(v.to_string(), str::to_string)
                }),
        }),
        _ => None,
    }
}
