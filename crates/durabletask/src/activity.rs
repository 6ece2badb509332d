//! Activities: plain async functions that do the real work, at least once.

use tokio_util::sync::CancellationToken;

use crate::types::TraceContext;

/// What an activity knows about the call it serves.
#[derive(Debug, Clone)]
pub struct ActivityContext {
    pub(crate) instance_id: String,
    pub(crate) task_id: i32,
    pub(crate) name: String,
    pub(crate) parent_trace_context: Option<TraceContext>,
    pub(crate) cancellation: CancellationToken,
    pub(crate) dispatch_count: u32,
}

impl ActivityContext {
    /// For tests and for running activities outside a worker.
    pub fn new(instance_id: impl Into<String>, task_id: i32, name: impl Into<String>) -> Self {
        Self {
            instance_id: instance_id.into(),
            task_id,
            name: name.into(),
            parent_trace_context: None,
            cancellation: CancellationToken::new(),
            dispatch_count: 1,
        }
    }

    /// The orchestration instance that scheduled this activity.
    pub fn orchestration_id(&self) -> &str {
        &self.instance_id
    }

    /// The id of the `ScheduleTask` action; unique within the orchestration execution.
    pub fn task_id(&self) -> i32 {
        self.task_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The W3C context the orchestration scheduled this activity under.
    pub fn parent_trace_context(&self) -> Option<&TraceContext> {
        self.parent_trace_context.as_ref()
    }

    /// Which dispatch of this work item this is: 1 the first time, more after a worker running it
    /// was lost (it crashed or its connection broke). 1 when the scheduler does not say (the
    /// field is new in the protocol). An activity can use it to resume or to skip a repeat.
    pub fn dispatch_count(&self) -> u32 {
        self.dispatch_count
    }

    /// Cancelled when the worker is shutting down and its drain deadline has passed; a long
    /// activity should stop then (its work item is abandoned and delivered again elsewhere).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancellation
    }
}
