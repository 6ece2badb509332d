//! The bounds on what the engine holds, and the retention of finished instances.

use durabletask_proto as pb;

/// Bounds on what the engine holds, so that it never grows without bound. 0 / `None`: no bound.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Instances per task hub, finished ones included. A start past it is refused with
    /// `RESOURCE_EXHAUSTED` (the gateway's `503` with `Retry-After`) until retention or a purge
    /// makes room.
    pub max_instances: usize,
    /// Work waiting per task hub (runnable orchestrations and queued activities). New starts
    /// past it are refused the same way; work already running is never refused.
    pub max_backlog: usize,
    /// How long finished instances are kept, by outcome, before they are purged automatically.
    pub retention: Retention,
    /// A work item whose worker was lost this many times while it held it fails instead of being
    /// dispatched again (a poison input that crashes every worker). 0: no limit.
    pub max_dispatches: u32,
    /// The instance state the engine holds in memory (payloads, tags, histories, queued work,
    /// estimated; see [`Engine::state_bytes`]); past it new starts are refused like the other
    /// limits, so that memory, and a restart's, stays bounded however large what each start
    /// carries. 0: no limit.
    pub max_state_bytes: usize,
}

/// Automatic purge of finished instances, as DTS's retention policies.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub completed: Option<chrono::Duration>,
    pub failed: Option<chrono::Duration>,
    /// Terminated (canceled) instances.
    pub terminated: Option<chrono::Duration>,
}

impl Retention {
    pub(super) fn of(&self, status: i32) -> Option<chrono::Duration> {
        use pb::OrchestrationStatus as S;
        match S::try_from(status).ok()? {
            S::Completed => self.completed,
            S::Failed => self.failed,
            S::Terminated | S::Canceled => self.terminated,
            _ => None,
        }
    }

    pub(super) fn any(&self) -> bool {
        self.completed.is_some() || self.failed.is_some() || self.terminated.is_some()
    }
}
