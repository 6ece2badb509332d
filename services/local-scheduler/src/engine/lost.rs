//! Streams that went away: their leases come back, and a work item whose worker was lost
//! `max_dispatches` times fails as poison instead of taking down worker after worker.

use durabletask_proto as pb;
use pb::orchestrator_action::OrchestratorActionType as Action;

use super::{Engine, LeaseKind};
use crate::model::{Change, status_i32};

/// What a stream that went away left behind.
#[derive(Debug, Default)]
pub struct Released {
    /// Work items queued again for other workers.
    pub requeued: usize,
    /// Work items that failed instead: their workers were lost `max_dispatches` times.
    pub poisoned: Vec<Poisoned>,
}

/// A work item failed as poison: every worker that took it was lost before it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poisoned {
    /// `orchestration` or `activity`.
    pub kind: &'static str,
    pub name: String,
    pub instance_id: String,
    /// Dispatches whose worker was lost.
    pub dispatches: u32,
}

/// Why a poison work item failed: names the count and the setting.
fn poison_failure(what: &str, dispatches: u32) -> pb::TaskFailureDetails {
    pb::TaskFailureDetails {
        error_type: "PoisonWorkItem".into(),
        error_message: format!(
            "{what} was dispatched {dispatches} times and each time its worker was lost before it answered (crashed, killed or disconnected); it is not dispatched again (max_dispatches = {dispatches})"
        ),
        is_non_retriable: true,
        ..Default::default()
    }
}

impl Engine {
    /// Releases every lease held by a stream that went away. `lost`: the worker went away while
    /// it held them (not a scheduler shutdown), so each counts as a lost dispatch, and an item
    /// lost `max_dispatches` times fails instead of being dispatched again (poison).
    pub fn release_stream(&mut self, stream: u64, lost: bool) -> Released {
        let tokens: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.stream == stream)
            .map(|(t, _)| t.clone())
            .collect();
        let mut released = Released::default();
        for token in tokens {
            if lost && let Some(p) = self.lose(&token) {
                released.poisoned.push(p);
                continue;
            }
            if self.release(&token) {
                released.requeued += 1;
            }
        }
        released
    }

    /// Counts a lost dispatch of the item behind `token`. Below the limit it stays leased (the
    /// caller releases it) and the count is stored; at the limit the item fails, and what failed
    /// is returned.
    fn lose(&mut self, token: &str) -> Option<Poisoned> {
        let lease = self.leases.get(token)?.clone();
        let max = self.limits.max_dispatches;
        let hub = lease.hub.clone();
        match lease.kind {
            // Entity operations are not counted: a batch goes back and is sent again.
            LeaseKind::Entity { .. } => None,
            LeaseKind::Activity { key } => {
                let item = self.hubs.get_mut(&hub)?.activities.get_mut(&key)?;
                item.request.dispatch_count = item.request.dispatch_count.saturating_add(1);
                let lost = u32::try_from(item.request.dispatch_count).unwrap_or(u32::MAX);
                let request = item.request.clone();
                if max == 0 || lost < max {
                    self.changes.push(Change::PutActivity { hub, key, request });
                    return None;
                }
                let instance_id = request
                    .orchestration_instance
                    .as_ref()
                    .map(|i| i.instance_id.clone())
                    .unwrap_or_default();
                let failure = poison_failure(
                    &format!(
                        "activity '{}' (task {} of '{instance_id}')",
                        request.name, request.task_id
                    ),
                    lost,
                );
                self.complete_activity(
                    &hub,
                    pb::ActivityResponse {
                        instance_id: instance_id.clone(),
                        task_id: request.task_id,
                        result: None,
                        failure_details: Some(failure),
                        completion_token: token.to_string(),
                    },
                )
                .ok()?;
                Some(Poisoned {
                    kind: "activity",
                    name: request.name,
                    instance_id,
                    dispatches: lost,
                })
            }
            LeaseKind::Orchestration { instance_id } => {
                let inst = self.hubs.get_mut(&hub)?.instances.get_mut(&instance_id)?;
                inst.row.lost_dispatches = inst.row.lost_dispatches.saturating_add(1);
                let lost = inst.row.lost_dispatches;
                let name = inst.row.name.clone();
                if max == 0 || lost < max {
                    self.persist(&hub, &instance_id);
                    return None;
                }
                // Chunks of a completion that never finished are not applied.
                if let Some(l) = self.leases.get_mut(token) {
                    l.partial = None;
                }
                let failure = poison_failure(
                    &format!("the work item of orchestration '{name}' ('{instance_id}')"),
                    lost,
                );
                let complete = pb::OrchestratorAction {
                    id: -1,
                    orchestrator_action_type: Some(Action::CompleteOrchestration(
                        pb::CompleteOrchestrationAction {
                            orchestration_status: status_i32(pb::OrchestrationStatus::Failed),
                            failure_details: Some(failure),
                            ..Default::default()
                        },
                    )),
                };
                self.complete_orchestration(
                    &hub,
                    pb::OrchestratorResponse {
                        instance_id: instance_id.clone(),
                        actions: vec![complete],
                        completion_token: token.to_string(),
                        ..Default::default()
                    },
                )
                .ok()?;
                Some(Poisoned {
                    kind: "orchestration",
                    name,
                    instance_id,
                    dispatches: lost,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use crate::engine::StreamFilter;
    use pb::history_event::EventType;

    fn engine(max_dispatches: u32) -> Engine {
        Engine::new(&["h".to_string()]).with_limits(Limits {
            max_dispatches,
            ..Default::default()
        })
    }

    use crate::engine::start_for_test as start;

    fn token_of(item: &pb::WorkItem) -> String {
        item.completion_token.clone()
    }

    /// Runs the first episode, which schedules activity `a`; returns the activity's key.
    fn schedule_activity(e: &mut Engine, id: &str) {
        let (item, _) = e
            .take_orchestration("h", 1, &StreamFilter::default())
            .expect("runnable");
        let action = pb::OrchestratorAction {
            id: 0,
            orchestrator_action_type: Some(Action::ScheduleTask(pb::ScheduleTaskAction {
                name: "a".into(),
                ..Default::default()
            })),
        };
        e.complete_orchestration(
            "h",
            pb::OrchestratorResponse {
                instance_id: id.into(),
                actions: vec![action],
                completion_token: token_of(&item),
                ..Default::default()
            },
        )
        .expect("complete");
    }

    fn dispatch_count(item: &pb::WorkItem) -> i32 {
        match &item.request {
            Some(pb::work_item::Request::ActivityRequest(r)) => r.dispatch_count,
            other => panic!("not an activity: {other:?}"),
        }
    }

    #[test]
    fn an_activity_whose_worker_is_lost_max_times_fails_its_orchestration_step() {
        let mut e = engine(3);
        start(&mut e, "i");
        schedule_activity(&mut e, "i");
        let any = StreamFilter::default();
        for attempt in 1..=2 {
            let (item, _) = e.take_activity("h", 10 + attempt, &any).expect("queued");
            assert_eq!(dispatch_count(&item), attempt as i32);
            let r = e.release_stream(10 + attempt, true);
            assert_eq!((r.requeued, r.poisoned.len()), (1, 0), "attempt {attempt}");
        }
        // A hand-back (abandon) and a scheduler shutdown are not lost dispatches.
        let (item, _) = e.take_activity("h", 20, &any).expect("queued");
        assert_eq!(dispatch_count(&item), 3);
        assert!(e.release(&token_of(&item)));
        let (item, _) = e.take_activity("h", 21, &any).expect("queued");
        assert_eq!(dispatch_count(&item), 3);
        assert_eq!(e.release_stream(21, false).requeued, 1);
        // The third lost dispatch: failed, not queued again.
        let (item, _) = e.take_activity("h", 22, &any).expect("queued");
        assert_eq!(dispatch_count(&item), 3);
        let r = e.release_stream(22, true);
        assert_eq!(r.requeued, 0);
        assert_eq!(
            r.poisoned,
            [Poisoned {
                kind: "activity",
                name: "a".into(),
                instance_id: "i".into(),
                dispatches: 3
            }]
        );
        assert!(
            e.take_activity("h", 23, &any).is_none(),
            "never dispatched again"
        );
        // The orchestration hears of it as a failed task naming the count.
        let (item, _) = e.take_orchestration("h", 24, &any).expect("runnable");
        let Some(pb::work_item::Request::OrchestratorRequest(req)) = item.request else {
            panic!("not an orchestration");
        };
        let failed = req
            .new_events
            .iter()
            .find_map(|ev| match &ev.event_type {
                Some(EventType::TaskFailed(f)) => f.failure_details.clone(),
                _ => None,
            })
            .expect("TaskFailed");
        assert_eq!(failed.error_type, "PoisonWorkItem");
        assert!(
            failed.error_message.contains("dispatched 3 times")
                && failed.error_message.contains("max_dispatches = 3"),
            "{}",
            failed.error_message
        );
        assert!(failed.is_non_retriable);
    }

    #[test]
    fn an_orchestration_whose_worker_is_lost_max_times_fails() {
        let mut e = engine(2);
        start(&mut e, "i");
        let any = StreamFilter::default();
        let _ = e.take_orchestration("h", 1, &any).expect("runnable");
        assert_eq!(e.release_stream(1, true).requeued, 1);
        assert_eq!(
            e.get("h", "i", false)
                .expect("get")
                .expect("exists")
                .orchestration_status,
            status_i32(pb::OrchestrationStatus::Pending)
        );
        let _ = e.take_orchestration("h", 2, &any).expect("runnable again");
        let r = e.release_stream(2, true);
        assert_eq!(r.poisoned.len(), 1, "{r:?}");
        assert_eq!(r.poisoned[0].kind, "orchestration");
        let state = e.get("h", "i", false).expect("get").expect("exists");
        assert_eq!(
            state.orchestration_status,
            status_i32(pb::OrchestrationStatus::Failed)
        );
        let f = state.failure_details.expect("failure");
        assert_eq!(f.error_type, "PoisonWorkItem");
        assert!(
            f.error_message.contains("orchestration 'o'")
                && f.error_message.contains("dispatched 2 times"),
            "{}",
            f.error_message
        );
        assert!(e.take_orchestration("h", 3, &any).is_none());
    }

    #[test]
    fn an_answered_episode_resets_the_count_and_zero_means_no_limit() {
        let mut e = engine(2);
        start(&mut e, "i");
        let any = StreamFilter::default();
        let _ = e.take_orchestration("h", 1, &any).expect("runnable");
        assert_eq!(e.release_stream(1, true).requeued, 1);
        // Answered: the next episode starts from zero again.
        schedule_activity(&mut e, "i");
        let inst = e.hubs["h"].instances.get("i").expect("instance");
        assert_eq!(inst.row.lost_dispatches, 0);

        let mut e = engine(0);
        start(&mut e, "j");
        for stream in 1..=20 {
            let _ = e.take_orchestration("h", stream, &any).expect("runnable");
            assert_eq!(e.release_stream(stream, true).requeued, 1);
        }
    }
}
