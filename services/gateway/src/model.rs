//! The response bodies of the API. The status vocabulary, its mapping from DTS statuses and the
//! status document are `contract::status`, shared with the worker's callbacks and the dashboard.

use serde::Serialize;
use utoipa::ToSchema;

use contract::{ProcessResult, SampleResult};

use crate::links::OperationLinks;

pub(crate) use contract::status::rfc3339;
pub use contract::status::{OperationError, OperationState, StatusDocument};

/// An operation accepted (`202`) or not finished yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationAccepted {
    /// The operation id (the orchestration instance id).
    #[schema(example = "9f1c2e0b6a2d4d7e8b3f5a6c7d8e9f01")]
    pub id: String,
    pub status: OperationState,
    pub links: OperationLinks,
}

/// The status monitor's answer: the operation's status document (the same one its status events
/// and its completion callback carry), where its callback delivery stands and its links.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationStatusBody {
    #[serde(flatten)]
    pub document: StatusDocument,
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
