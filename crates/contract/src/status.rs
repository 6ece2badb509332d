//! What an operation's status is called, in one place: the API's vocabulary and its mapping from
//! the scheduler's runtime status, why an operation failed or was canceled, and the status
//! document that the status route, the status stream and the completion callback all send. The
//! gateway, the worker (callbacks) and the dashboard read it from here, so a poller and a
//! callback receiver cannot be told different things.

use durabletask::{FailureDetails, OrchestrationMetadata, OrchestrationStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The status vocabulary of the API (Azure LRO style). `Succeeded`, `Failed` and `Canceled`
/// are terminal; `Canceling` only answers a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OperationState {
    NotStarted,
    Running,
    Suspended,
    Succeeded,
    Failed,
    Canceled,
    Canceling,
}

impl OperationState {
    /// The states an operation can be found in (and a list filtered by): all but `Canceling`.
    pub const LISTABLE: [Self; 6] = [
        Self::NotStarted,
        Self::Running,
        Self::Suspended,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
    ];

    /// The state of an operation whose orchestration has runtime status `s`.
    pub const fn of(s: OrchestrationStatus) -> Self {
        use OrchestrationStatus as S;
        match s {
            S::Pending => Self::NotStarted,
            S::Running | S::ContinuedAsNew => Self::Running,
            S::Suspended => Self::Suspended,
            S::Completed => Self::Succeeded,
            S::Failed => Self::Failed,
            S::Terminated | S::Canceled => Self::Canceled,
        }
    }

    /// The runtime statuses behind this state (a list filter asks the scheduler for these).
    pub const fn runtime_statuses(self) -> &'static [OrchestrationStatus] {
        use OrchestrationStatus as S;
        match self {
            Self::NotStarted => &[S::Pending],
            Self::Running => &[S::Running, S::ContinuedAsNew],
            Self::Suspended => &[S::Suspended],
            Self::Succeeded => &[S::Completed],
            Self::Failed => &[S::Failed],
            Self::Canceled => &[S::Terminated, S::Canceled],
            Self::Canceling => &[],
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "NotStarted",
            Self::Running => "Running",
            Self::Suspended => "Suspended",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Canceled => "Canceled",
            Self::Canceling => "Canceling",
        }
    }

    /// A listable state by its name, exactly as spelled in the API.
    pub fn listable(name: &str) -> Option<Self> {
        Self::LISTABLE.into_iter().find(|s| s.as_str() == name)
    }

    /// The listable names joined for a message: "NotStarted, Running, ... or Canceled".
    pub fn listable_names() -> String {
        let names: Vec<&str> = Self::LISTABLE.iter().map(|s| s.as_str()).collect();
        let (last, rest) = names.split_last().expect("six names");
        format!("{} or {last}", rest.join(", "))
    }

    /// The CloudEvents type of the completion callback sent when an operation ends in this state.
    pub fn event_type(self) -> String {
        format!(
            "io.async-http-api.operation.{}",
            self.as_str().to_ascii_lowercase()
        )
    }
}

impl std::fmt::Display for OperationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scheduler's runtime statuses as an operator reads them (the dashboard), in their order.
pub const RUNTIME_STATUSES: [(OrchestrationStatus, &str); 7] = [
    (OrchestrationStatus::Pending, "Pending"),
    (OrchestrationStatus::Running, "Running"),
    (OrchestrationStatus::Suspended, "Suspended"),
    (OrchestrationStatus::Completed, "Completed"),
    (OrchestrationStatus::Failed, "Failed"),
    (OrchestrationStatus::Terminated, "Terminated"),
    (OrchestrationStatus::Canceled, "Canceled"),
];

/// The operator's name of a runtime status (`RUNTIME_STATUSES`).
pub fn runtime_name(s: OrchestrationStatus) -> &'static str {
    RUNTIME_STATUSES
        .iter()
        .find(|(st, _)| *st == s)
        .map_or("Unknown", |(_, n)| *n)
}

/// Why an operation failed or was canceled: the innermost error's type and message, never a
/// stack trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OperationError {
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(example = "TimeoutError"))]
    pub kind: String,
    pub message: String,
}

/// The error type of a canceled (terminated) operation.
pub const CANCELED_ERROR: &str = "Canceled";
/// The message of a canceled operation whose cancel gave no reason.
pub const CANCELED_MESSAGE: &str = "the operation was canceled";

impl OperationError {
    /// Why the operation behind `m` failed or was canceled; `None` while it has not.
    pub fn of(m: &OrchestrationMetadata) -> Option<Self> {
        match OperationState::of(m.runtime_status) {
            OperationState::Failed => {
                // The innermost failure is the useful one (the activity's).
                let f = innermost(m.failure_details.as_ref()?);
                Some(Self {
                    kind: f.error_type.clone(),
                    message: f.message.clone(),
                })
            }
            OperationState::Canceled => Some(Self {
                kind: CANCELED_ERROR.into(),
                // The cancel's reason (the orchestration's output), when there was one.
                message: m
                    .output::<Value>()
                    .ok()
                    .filter(|v| !v.is_null())
                    .map_or(CANCELED_MESSAGE.into(), |v| {
                        v.as_str().map_or(v.to_string(), str::to_string)
                    }),
            }),
            _ => None,
        }
    }
}

fn innermost(mut f: &FailureDetails) -> &FailureDetails {
    while let Some(inner) = f.inner.as_deref() {
        f = inner;
    }
    f
}

/// RFC 3339 UTC with milliseconds, as every time in the API is written.
pub fn rfc3339(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// An operation's status document: what the status route answers, each status event carries
/// and the completion callback's `data` holds (each adds its own links; the callback adds the
/// result of a succeeded operation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusDocument {
    /// The operation id (the orchestration instance id).
    pub id: String,
    pub status: OperationState,
    /// The DTS runtime status, e.g. `RUNNING`.
    #[cfg_attr(feature = "openapi", schema(example = "RUNNING"))]
    pub runtime_status: String,
    /// RFC 3339 UTC.
    pub created_at: Option<String>,
    /// RFC 3339 UTC.
    pub last_updated_at: Option<String>,
    /// When it ended (RFC 3339 UTC); present once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Progress the orchestration reports (any JSON value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub custom_status: Option<Value>,
    /// Present when the operation failed or was canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
}

impl StatusDocument {
    /// The document of operation `id` from its orchestration's metadata.
    pub fn of(id: &str, m: &OrchestrationMetadata) -> Self {
        let completed_at = m
            .runtime_status
            .is_terminal()
            .then(|| m.completed_at.or(m.last_updated_at))
            .flatten();
        Self {
            id: id.to_string(),
            status: OperationState::of(m.runtime_status),
            runtime_status: m.runtime_status.as_str().to_string(),
            created_at: rfc3339(m.created_at),
            last_updated_at: rfc3339(m.last_updated_at),
            completed_at: rfc3339(completed_at),
            custom_status: m.custom_status::<Value>().ok().filter(|v| !v.is_null()),
            error: OperationError::of(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(s: OrchestrationStatus) -> OrchestrationMetadata {
        OrchestrationMetadata {
            instance_id: "op".into(),
            name: "process_request".into(),
            version: None,
            runtime_status: s,
            created_at: None,
            last_updated_at: None,
            completed_at: None,
            scheduled_start_at: None,
            serialized_input: None,
            serialized_output: None,
            serialized_custom_status: None,
            failure_details: None,
            execution_id: None,
            parent_instance_id: None,
            tags: Default::default(),
        }
    }

    #[test]
    fn every_runtime_status_maps_to_a_listable_state_that_lists_it() {
        for (s, _) in RUNTIME_STATUSES {
            let state = OperationState::of(s);
            assert!(OperationState::LISTABLE.contains(&state), "{s:?}");
            assert!(state.runtime_statuses().contains(&s), "{s:?} in {state}");
        }
        for state in OperationState::LISTABLE {
            assert_eq!(OperationState::listable(state.as_str()), Some(state));
            let json = serde_json::to_value(state).expect("json");
            assert_eq!(json, state.as_str(), "serialized as spelled");
        }
        assert_eq!(OperationState::listable("Canceling"), None);
        assert_eq!(OperationState::listable("succeeded"), None);
        assert_eq!(
            OperationState::listable_names(),
            "NotStarted, Running, Suspended, Succeeded, Failed or Canceled"
        );
        assert_eq!(
            OperationState::Canceled.event_type(),
            "io.async-http-api.operation.canceled"
        );
    }

    #[test]
    fn the_error_is_the_innermost_failure_or_the_cancel_reason() {
        let mut failed = metadata(OrchestrationStatus::Failed);
        let mut outer = FailureDetails::new("TaskFailed", "activity failed");
        outer.inner = Some(Box::new(FailureDetails::new("TimeoutError", "too slow")));
        outer.stack_trace = Some("at somewhere".into());
        failed.failure_details = Some(outer);
        assert_eq!(
            OperationError::of(&failed),
            Some(OperationError {
                kind: "TimeoutError".into(),
                message: "too slow".into()
            })
        );
        let mut canceled = metadata(OrchestrationStatus::Terminated);
        assert_eq!(
            OperationError::of(&canceled).map(|e| e.message),
            Some(CANCELED_MESSAGE.into())
        );
        canceled.serialized_output = Some("\"no longer needed\"".into());
        let doc = StatusDocument::of("op", &canceled);
        assert_eq!(doc.status, OperationState::Canceled);
        assert_eq!(
            doc.error.map(|e| e.message).as_deref(),
            Some("no longer needed")
        );
        assert_eq!(
            OperationError::of(&metadata(OrchestrationStatus::Running)),
            None
        );
        assert_eq!(
            StatusDocument::of("op", &metadata(OrchestrationStatus::Running)).completed_at,
            None
        );
    }
}
