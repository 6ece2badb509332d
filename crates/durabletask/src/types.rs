//! SDK-level types shared by the client, the worker and the executor.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use durabletask_proto as pb;

use crate::TraceParent;

/// Runtime status of an orchestration instance, as DTS reports it.
///
/// Mirrors `OrchestrationStatus` on the wire; note that the protocol's zero value is
/// `Running`, so an unset status means running, not pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrchestrationStatus {
    Running,
    Completed,
    ContinuedAsNew,
    Failed,
    Canceled,
    Terminated,
    Pending,
    Suspended,
}

impl OrchestrationStatus {
    /// All statuses, in wire order.
    pub const ALL: [OrchestrationStatus; 8] = [
        Self::Running,
        Self::Completed,
        Self::ContinuedAsNew,
        Self::Failed,
        Self::Canceled,
        Self::Terminated,
        Self::Pending,
        Self::Suspended,
    ];

    /// Whether the instance has reached a final state (it will not run again unless restarted).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Terminated | Self::Canceled
        )
    }

    /// The protocol enum name without its prefix, e.g. `RUNNING`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::ContinuedAsNew => "CONTINUED_AS_NEW",
            Self::Failed => "FAILED",
            Self::Canceled => "CANCELED",
            Self::Terminated => "TERMINATED",
            Self::Pending => "PENDING",
            Self::Suspended => "SUSPENDED",
        }
    }

    /// Parses the protocol name, case-insensitively, with or without the `ORCHESTRATION_STATUS_` prefix.
    pub fn parse(s: &str) -> Option<Self> {
        let upper = s.trim().to_ascii_uppercase();
        let bare = upper
            .strip_prefix("ORCHESTRATION_STATUS_")
            .unwrap_or(&upper);
        Self::ALL.into_iter().find(|st| st.as_str() == bare)
    }
}

impl fmt::Display for OrchestrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<pb::OrchestrationStatus> for OrchestrationStatus {
    fn from(s: pb::OrchestrationStatus) -> Self {
        use pb::OrchestrationStatus as P;
        match s {
            P::Running => Self::Running,
            P::Completed => Self::Completed,
            P::ContinuedAsNew => Self::ContinuedAsNew,
            P::Failed => Self::Failed,
            P::Canceled => Self::Canceled,
            P::Terminated => Self::Terminated,
            P::Pending => Self::Pending,
            P::Suspended => Self::Suspended,
        }
    }
}

impl From<OrchestrationStatus> for pb::OrchestrationStatus {
    fn from(s: OrchestrationStatus) -> Self {
        use pb::OrchestrationStatus as P;
        match s {
            OrchestrationStatus::Running => P::Running,
            OrchestrationStatus::Completed => P::Completed,
            OrchestrationStatus::ContinuedAsNew => P::ContinuedAsNew,
            OrchestrationStatus::Failed => P::Failed,
            OrchestrationStatus::Canceled => P::Canceled,
            OrchestrationStatus::Terminated => P::Terminated,
            OrchestrationStatus::Pending => P::Pending,
            OrchestrationStatus::Suspended => P::Suspended,
        }
    }
}

impl OrchestrationStatus {
    /// Decodes a raw wire value; unknown numbers (a newer server) are reported as `None`.
    pub fn from_wire(v: i32) -> Option<Self> {
        pb::OrchestrationStatus::try_from(v).ok().map(Into::into)
    }
}

/// Wire values for a list of statuses (filters, reuse policies).
pub(crate) fn statuses_to_wire(statuses: Vec<OrchestrationStatus>) -> Vec<i32> {
    statuses
        .into_iter()
        .map(|s| pb::OrchestrationStatus::from(s) as i32)
        .collect()
}

/// Why a task, activity or orchestration failed. Travels as `TaskFailureDetails`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailureDetails {
    pub error_type: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner: Option<Box<FailureDetails>>,
    #[serde(default)]
    pub non_retriable: bool,
}

impl FailureDetails {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
            stack_trace: None,
            inner: None,
            non_retriable: false,
        }
    }

    /// Marks the failure as one that retry policies must not retry.
    pub fn non_retriable(mut self) -> Self {
        self.non_retriable = true;
        self
    }

    pub fn with_inner(mut self, inner: FailureDetails) -> Self {
        self.inner = Some(Box::new(inner));
        self
    }

    pub(crate) fn to_proto(&self) -> pb::TaskFailureDetails {
        pb::TaskFailureDetails {
            error_type: self.error_type.clone(),
            error_message: self.message.clone(),
            stack_trace: self.stack_trace.clone(),
            inner_failure: self.inner.as_ref().map(|i| Box::new(i.to_proto())),
            is_non_retriable: self.non_retriable,
            properties: HashMap::new(),
        }
    }

    pub(crate) fn from_proto(p: &pb::TaskFailureDetails) -> Self {
        Self {
            error_type: p.error_type.clone(),
            message: p.error_message.clone(),
            stack_trace: p.stack_trace.clone(),
            inner: p
                .inner_failure
                .as_ref()
                .map(|i| Box::new(Self::from_proto(i))),
            non_retriable: p.is_non_retriable,
        }
    }
}

impl FailureDetails {
    /// Failure for a caught panic; keeps the panic message when it is text.
    pub(crate) fn from_panic(panic: &(dyn std::any::Any + Send)) -> Self {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panicked with a non-text payload".to_string());
        Self::new("Panic", msg)
    }
}

impl fmt::Display for FailureDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

/// Any error converts into failure details, so orchestrators and activities can use `?`.
///
/// `FailureDetails` itself deliberately does not implement `std::error::Error`, otherwise this
/// blanket conversion would collide with the reflexive `From<T> for T`.
impl<E: std::error::Error + 'static> From<E> for FailureDetails {
    fn from(err: E) -> Self {
        let any: &dyn std::any::Any = &err;
        if let Some(task) = any.downcast_ref::<crate::TaskError>() {
            return task.to_failure_details();
        }
        let full = std::any::type_name::<E>();
        let short = full.rsplit("::").next().unwrap_or(full);
        let mut details = FailureDetails::new(short, err.to_string());
        if let Some(source) = err.source() {
            details.inner = Some(Box::new(FailureDetails::new("Source", source.to_string())));
        }
        details
    }
}

/// W3C trace context carried through the protocol's `TraceContext` fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    pub(crate) fn to_proto(&self) -> pb::TraceContext {
        #[allow(deprecated)]
        pb::TraceContext {
            trace_parent: self.traceparent.clone(),
            span_id: String::new(),
            trace_state: self.tracestate.clone(),
        }
    }

    pub(crate) fn from_proto(p: &pb::TraceContext) -> Option<Self> {
        if p.trace_parent.is_empty() {
            return None;
        }
        Some(Self {
            traceparent: p.trace_parent.clone(),
            tracestate: p.trace_state.clone(),
        })
    }

    /// Trace id (32 hex chars) of a well-formed `traceparent`.
    pub fn trace_id(&self) -> Option<&str> {
        TraceParent::parse(&self.traceparent).map(|tp| tp.trace_id)
    }

    /// A child context: same trace and flags, a fresh span id. `None` when malformed.
    pub fn child(&self) -> Option<Self> {
        let parent = TraceParent::parse(&self.traceparent)?;
        let span: u64 = rand::random::<u64>() | 1;
        Some(Self {
            traceparent: parent.with_span(&format!("{span:016x}")),
            tracestate: self.tracestate.clone(),
        })
    }
}

/// A snapshot of an orchestration instance, as returned by the client.
#[derive(Debug, Clone, PartialEq)]
pub struct OrchestrationMetadata {
    pub instance_id: String,
    pub name: String,
    pub version: Option<String>,
    pub runtime_status: OrchestrationStatus,
    pub created_at: Option<DateTime<Utc>>,
    pub last_updated_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub scheduled_start_at: Option<DateTime<Utc>>,
    /// JSON text, present only when payloads were requested.
    pub serialized_input: Option<String>,
    pub serialized_output: Option<String>,
    pub serialized_custom_status: Option<String>,
    pub failure_details: Option<FailureDetails>,
    pub execution_id: Option<String>,
    pub parent_instance_id: Option<String>,
    pub tags: HashMap<String, String>,
}

impl OrchestrationMetadata {
    pub(crate) fn from_proto(s: pb::OrchestrationState) -> Self {
        Self {
            runtime_status: OrchestrationStatus::from_wire(s.orchestration_status)
                .unwrap_or(OrchestrationStatus::Running),
            instance_id: s.instance_id,
            name: s.name,
            version: s.version,
            created_at: s.created_timestamp.as_ref().and_then(from_timestamp),
            last_updated_at: s.last_updated_timestamp.as_ref().and_then(from_timestamp),
            completed_at: s.completed_timestamp.as_ref().and_then(from_timestamp),
            scheduled_start_at: s
                .scheduled_start_timestamp
                .as_ref()
                .and_then(from_timestamp),
            serialized_input: s.input,
            serialized_output: s.output,
            serialized_custom_status: s.custom_status,
            failure_details: s.failure_details.as_ref().map(FailureDetails::from_proto),
            execution_id: s.execution_id,
            parent_instance_id: s.parent_instance_id,
            tags: s.tags,
        }
    }

    /// Deserializes the output JSON; `null` when there is none.
    pub fn output<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.serialized_output.as_deref().unwrap_or("null"))
    }

    /// Deserializes the custom status JSON; `null` when there is none.
    pub fn custom_status<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.serialized_custom_status.as_deref().unwrap_or("null"))
    }
}

pub(crate) fn to_timestamp(t: DateTime<Utc>) -> pb::Timestamp {
    pb::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) fn from_timestamp(t: &pb::Timestamp) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.seconds, t.nanos.max(0) as u32).single()
}
