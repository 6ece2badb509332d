//! What the engine holds and waits on, counted: the state estimate behind `max_state_bytes`
//! (and the room check of a start), instances by status, and the queues for `/metrics` and
//! `GetMetrics`.

use std::collections::BTreeMap;

use durabletask_proto as pb;

use super::{Engine, EngineError, LeaseKind};
use crate::model::Instance;

impl Engine {
    /// Refuses a new instance in `hub` when it is at its instance or backlog limit.
    pub(super) fn check_room(&self, hub: &str) -> Result<(), EngineError> {
        let Some(h) = self.hubs.get(hub) else {
            return Ok(());
        };
        let l = &self.limits;
        if l.max_instances > 0 && h.instances.len() >= l.max_instances {
            return Err(EngineError::resource_exhausted(format!(
                "task hub '{hub}' holds {} instances, its limit (max_instances); finished ones are purged after their retention, or purge them",
                h.instances.len()
            )));
        }
        let backlog = h.ready.len() + h.activity_order.len() + h.entity_operations;
        if l.max_backlog > 0 && backlog >= l.max_backlog {
            return Err(EngineError::resource_exhausted(format!(
                "task hub '{hub}' has {backlog} work items waiting, its limit (max_backlog); try again when workers catch up"
            )));
        }
        if l.max_state_bytes > 0 && self.state_bytes >= l.max_state_bytes {
            return Err(EngineError::resource_exhausted(format!(
                "the scheduler holds {} MiB of instance state, its limit (max_state_bytes, {} MiB); finished instances are purged after their retention, or purge them",
                self.state_bytes >> 20,
                l.max_state_bytes >> 20
            )));
        }
        Ok(())
    }

    /// The memory the engine's instance state takes, estimated: each instance's payloads, tags,
    /// names and the events it holds (histories of finished instances are on disk), each queued
    /// activity and timer, and a fixed cost per instance and per event for what Rust keeps
    /// around them (measured: a finished instance takes 0.8 KiB, an event about 0.5 KiB).
    pub fn state_bytes(&self) -> usize {
        self.state_bytes
    }

    /// Counts [`Engine::state_bytes`] again from what is held (the timer task does, every few
    /// seconds; starts add to it in between). The instances keep their own count as they change
    /// ([`super::instances::Instances::bytes`]); the queues are walked.
    pub fn recount_state(&mut self) -> usize {
        let mut total = 0;
        for h in self.hubs.values_mut() {
            h.instances.settle();
            total += h.instances.bytes();
            total += h.entity_bytes;
            total += h
                .activities
                .values()
                .map(|a| EVENT_OVERHEAD_BYTES + prost::Message::encoded_len(&a.request))
                .sum::<usize>();
            total += h
                .timers
                .values()
                .map(|(_, e)| event_bytes(e))
                .sum::<usize>();
        }
        self.state_bytes = total;
        total
    }

    pub fn status_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for h in self.hubs.values() {
            for i in h.instances.values() {
                let name = pb::OrchestrationStatus::try_from(i.row.status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN");
                *m.entry(name.trim_start_matches("ORCHESTRATION_STATUS_"))
                    .or_default() += 1;
            }
        }
        m
    }

    /// The queues, for `/metrics` and `GetMetrics`: waiting and leased work items by kind, and
    /// how long the oldest waiting one has waited. Reads only what waits (the ready queue, the
    /// activities) and the leases, not every instance.
    pub fn queue_stats(&self) -> QueueStats {
        let now = std::time::Instant::now();
        let mut q = QueueStats::default();
        for h in self.hubs.values() {
            for (id, since) in &h.ready_set {
                if h.instances
                    .get(id)
                    .is_some_and(|i| i.lease.is_none() && !i.inbox.is_empty())
                {
                    q.orchestrations
                        .waiting(now.saturating_duration_since(*since));
                }
            }
            for a in h.activities.values().filter(|a| a.lease.is_none()) {
                q.activities
                    .waiting(now.saturating_duration_since(a.queued));
            }
            q.timers += h.timers.len();
        }
        for lease in self.leases.values() {
            match lease.kind {
                LeaseKind::Orchestration { .. } => q.orchestrations.active += 1,
                LeaseKind::Activity { .. } => q.activities.active += 1,
                LeaseKind::Entity { .. } => {}
            }
        }
        q
    }
}

/// One kind's queue: see [`Engine::queue_stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KindStats {
    /// Waiting to be dispatched.
    pub pending: usize,
    /// Dispatched, not yet completed or handed back.
    pub active: usize,
    /// The longest wait of a waiting item (zero when none waits).
    pub oldest_wait: std::time::Duration,
}

impl KindStats {
    fn waiting(&mut self, waited: std::time::Duration) {
        self.pending += 1;
        self.oldest_wait = self.oldest_wait.max(waited);
    }
}

/// Every kind's queue, and the timers not yet due.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueStats {
    pub orchestrations: KindStats,
    pub activities: KindStats,
    pub timers: usize,
}

/// What Rust keeps around an instance besides its payloads and events (measured: 0.8 KiB of RSS
/// per finished instance with small payloads).
const INSTANCE_OVERHEAD_BYTES: usize = 800;
/// Likewise per event held in memory (a `HistoryEvent` is about 0.5 KiB before its strings).
const EVENT_OVERHEAD_BYTES: usize = 512;

pub(super) fn event_bytes(e: &pb::HistoryEvent) -> usize {
    EVENT_OVERHEAD_BYTES + prost::Message::encoded_len(e)
}

/// An instance's share of [`Engine::state_bytes`].
pub(super) fn instance_bytes(i: &Instance) -> usize {
    let r = &i.row;
    let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    INSTANCE_OVERHEAD_BYTES
        + r.instance_id.len()
        + r.execution_id.len()
        + r.name.len()
        + len(&r.version)
        + len(&r.input)
        + len(&r.output)
        + len(&r.custom_status)
        + r.tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + r.failure
            .as_ref()
            .map_or(0, |f| prost::Message::encoded_len(f.as_ref()))
        + i.history.iter().map(event_bytes).sum::<usize>()
        + i.inbox.iter().map(event_bytes).sum::<usize>()
        + i.dispatched.iter().map(event_bytes).sum::<usize>()
}

/// What a start adds to the state: its payload twice (the row and the `ExecutionStarted` event),
/// its tags, names and the fixed costs of an instance and an event.
pub(super) fn start_bytes(req: &pb::CreateInstanceRequest) -> usize {
    let input = req.input.as_ref().map_or(0, String::len);
    let tags: usize = req.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    2 * (input + tags + req.name.len() + req.instance_id.len())
        + INSTANCE_OVERHEAD_BYTES
        + EVENT_OVERHEAD_BYTES
}
