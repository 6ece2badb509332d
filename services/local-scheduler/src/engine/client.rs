//! Client operations: start, read, raise events, terminate, rewind, suspend, resume, restart,
//! purge and query.

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use pb::history_event::EventType;

use super::{
    CreateSpec, Engine, EngineError, MAX_EXECUTION_ID_BYTES, MAX_VERSION_BYTES, instances,
    mark_ready, owner_of, validate_instance_id, validate_len, validate_name, validate_payload,
    validate_tags, validate_trace,
};
use crate::model::{Change, Instance, event, from_ts, is_terminal, status_i32};

use std::sync::Arc;

impl Engine {
    pub fn start_instance(
        &mut self,
        hub: &str,
        req: pb::CreateInstanceRequest,
    ) -> Result<String, EngineError> {
        validate_instance_id(&req.instance_id)?;
        validate_name("orchestration name", &req.name)?;
        validate_len(
            "orchestration version",
            req.version.as_deref(),
            MAX_VERSION_BYTES,
        )?;
        validate_len(
            "execution id",
            req.execution_id.as_deref(),
            MAX_EXECUTION_ID_BYTES,
        )?;
        validate_payload("input", req.input.as_ref())?;
        validate_tags("tags", &req.tags)?;
        validate_trace("trace context", req.parent_trace_context.as_ref())?;
        let h = self.hub(hub)?;
        if let Some(existing) = h.instances.get(&req.instance_id) {
            let replaceable: Vec<i32> = match &req.orchestration_id_reuse_policy {
                Some(p) => p.replaceable_status.clone(),
                // No policy: terminal instances may be replaced, live ones may not.
                None => vec![
                    status_i32(pb::OrchestrationStatus::Completed),
                    status_i32(pb::OrchestrationStatus::Failed),
                    status_i32(pb::OrchestrationStatus::Terminated),
                    status_i32(pb::OrchestrationStatus::Canceled),
                ],
            };
            if !replaceable.contains(&existing.row.status) {
                return Err(EngineError::already_exists(format!(
                    "an orchestration with instance id '{}' already exists and is {}",
                    req.instance_id,
                    pb::OrchestrationStatus::try_from(existing.row.status)
                        .map(|s| s.as_str_name())
                        .unwrap_or("?")
                )));
            }
            self.drop_instance(hub, &req.instance_id);
        } else {
            self.check_room(hub)?;
        }
        let id = req.instance_id.clone();
        // Counted at once, so that a burst of starts between two recounts meets the limit too.
        self.state_bytes = self.state_bytes.saturating_add(start_bytes(&req));
        self.create_instance(
            hub,
            CreateSpec {
                instance_id: req.instance_id,
                name: req.name,
                version: req.version,
                input: req.input,
                tags: req.tags,
                parent: None,
                parent_trace: req.parent_trace_context,
                scheduled_start: req.scheduled_start_timestamp.as_ref().map(from_ts),
            },
        );
        Ok(id)
    }

    pub fn get(
        &mut self,
        hub: &str,
        id: &str,
        with_payloads: bool,
    ) -> Result<Option<pb::OrchestrationState>, EngineError> {
        Ok(self
            .hub(hub)?
            .instances
            .get(id)
            .map(|i| i.state(with_payloads)))
    }

    pub(super) fn require_live(&mut self, hub: &str, id: &str) -> Result<(), EngineError> {
        let inst = self.hub(hub)?.instances.get(id).ok_or_else(|| {
            EngineError::not_found(format!("no orchestration instance with id '{id}'"))
        })?;
        if is_terminal(inst.row.status) {
            return Err(EngineError::failed_precondition(format!(
                "orchestration '{id}' has already completed"
            )));
        }
        Ok(())
    }

    pub fn raise_event(
        &mut self,
        hub: &str,
        req: pb::RaiseEventRequest,
    ) -> Result<(), EngineError> {
        validate_payload("event data", req.input.as_ref())?;
        validate_name("event name", &req.name)?;
        self.require_live(hub, &req.instance_id)?;
        let msg = event(
            -1,
            EventType::EventRaised(pb::EventRaisedEvent {
                name: req.name,
                input: req.input,
            }),
        );
        self.deliver(hub, &req.instance_id, msg, None);
        Ok(())
    }

    pub fn terminate(&mut self, hub: &str, req: pb::TerminateRequest) -> Result<(), EngineError> {
        validate_payload("output", req.output.as_ref())?;
        let exists = self
            .hub(hub)?
            .instances
            .get(&req.instance_id)
            .map(|i| i.row.status);
        match exists {
            None => {
                return Err(EngineError::not_found(format!(
                    "no orchestration instance with id '{}'",
                    req.instance_id
                )));
            }
            // Terminating a finished instance is a no-op, as in DTS.
            Some(s) if is_terminal(s) => return Ok(()),
            Some(_) => {}
        }
        let never_ran = self
            .hub(hub)?
            .instances
            .get(&req.instance_id)
            .is_some_and(|i| i.history.is_empty() && i.lease.is_none());
        if never_ran {
            // Still pending (maybe a scheduled start): no worker has seen it, so end it here.
            let now = Utc::now();
            self.drop_pending_messages(hub, &req.instance_id);
            if let Some(i) = self.hub(hub)?.instances.get_mut(&req.instance_id) {
                i.row.status = status_i32(pb::OrchestrationStatus::Terminated);
                i.row.output = req.output;
                i.row.completed = Some(now);
                i.row.last_updated = now;
                i.inbox.clear();
            }
            self.persist(hub, &req.instance_id);
            return Ok(());
        }
        if let Some(i) = self.hub(hub)?.instances.get_mut(&req.instance_id) {
            i.terminate_children |= req.recursive;
        }
        let msg = event(
            -1,
            EventType::ExecutionTerminated(pb::ExecutionTerminatedEvent {
                input: req.output,
                recurse: req.recursive,
            }),
        );
        self.deliver(hub, &req.instance_id, msg, None);
        Ok(())
    }

    /// Rewinds a failed instance: the worker rewrites its history without the failures
    /// (`RewindOrchestrationAction`) and the failed work runs again.
    pub fn rewind(
        &mut self,
        hub: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        validate_payload("rewind reason", reason.as_ref())?;
        let status = self
            .hub(hub)?
            .instances
            .get(id)
            .map(|i| i.row.status)
            .ok_or_else(|| {
                EngineError::not_found(format!("no orchestration instance with id '{id}'"))
            })?;
        if status != status_i32(pb::OrchestrationStatus::Failed) {
            return Err(EngineError::failed_precondition(format!(
                "orchestration '{id}' is not in a failed state; only failed instances can be rewound"
            )));
        }
        self.prepare_rewind(hub, id, reason);
        Ok(())
    }

    pub(super) fn prepare_rewind(&mut self, hub: &str, id: &str, reason: Option<String>) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let Some(inst) = h.instances.get_mut(id) else {
            return;
        };
        inst.row.status = status_i32(pb::OrchestrationStatus::Running);
        inst.row.output = None;
        inst.row.failure = None;
        inst.row.completed = None;
        inst.row.last_updated = Utc::now();
        inst.inbox.clear();
        inst.inbox.push_back(event(
            -1,
            EventType::ExecutionRewound(pb::ExecutionRewoundEvent {
                reason,
                ..Default::default()
            }),
        ));
        if inst.lease.is_none() && mark_ready(&mut h.ready_set, id.to_string()) {
            h.ready.push_back(owner_of(&inst.row.tags), id.to_string());
        }
        self.persist(hub, id);
    }

    /// Removes an instance's not-yet-visible messages (scheduled start, timers).
    pub(super) fn drop_pending_messages(&mut self, hub: &str, instance_id: &str) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let keys: Vec<(DateTime<Utc>, u64)> = h
            .timers
            .iter()
            .filter(|(_, (id, _))| id == instance_id)
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            h.timers.remove(k);
        }
        for (_, seq) in keys {
            self.changes.push(Change::DeleteTimer {
                hub: hub.to_string(),
                seq,
            });
        }
    }

    pub fn suspend(
        &mut self,
        hub: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        validate_payload("suspend reason", reason.as_ref())?;
        self.require_live(hub, id)?;
        let msg = event(
            -1,
            EventType::ExecutionSuspended(pb::ExecutionSuspendedEvent { input: reason }),
        );
        self.deliver(hub, id, msg, None);
        Ok(())
    }

    pub fn resume(
        &mut self,
        hub: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        validate_payload("resume reason", reason.as_ref())?;
        self.require_live(hub, id)?;
        let suspended = self.hub(hub)?.instances.get(id).is_some_and(|i| {
            i.row.status == status_i32(pb::OrchestrationStatus::Suspended)
                || i.inbox
                    .iter()
                    .any(|e| matches!(e.event_type, Some(EventType::ExecutionSuspended(_))))
        });
        // Resuming something that is not suspended is ignored (the Python SDK would fail on it).
        if suspended {
            let msg = event(
                -1,
                EventType::ExecutionResumed(pb::ExecutionResumedEvent { input: reason }),
            );
            self.deliver(hub, id, msg, None);
        }
        Ok(())
    }

    pub fn restart(&mut self, hub: &str, id: &str, new_id: bool) -> Result<String, EngineError> {
        let inst = self.hub(hub)?.instances.get(id).cloned().ok_or_else(|| {
            EngineError::not_found(format!("no orchestration instance with id '{id}'"))
        })?;
        let target = if new_id {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            id.to_string()
        };
        if !new_id && !is_terminal(inst.row.status) {
            return Err(EngineError::failed_precondition(format!(
                "orchestration '{id}' is still running; terminate it first or restart with a new instance id"
            )));
        }
        let original_input = inst.history.iter().find_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(es)) => Some(es.input.clone()),
            _ => None,
        });
        self.start_instance(
            hub,
            pb::CreateInstanceRequest {
                instance_id: target.clone(),
                name: inst.row.name.clone(),
                version: inst.row.version.clone(),
                input: original_input.unwrap_or(inst.row.input.clone()),
                tags: inst.row.tags.clone(),
                ..Default::default()
            },
        )?;
        Ok(target)
    }

    /// Purges terminal instances; returns how many were deleted.
    pub fn purge_one(&mut self, hub: &str, id: &str, recursive: bool) -> Result<i32, EngineError> {
        let Some(inst) = self.hub(hub)?.instances.get(id).cloned() else {
            return Ok(0);
        };
        if !is_terminal(inst.row.status) {
            return Err(EngineError::failed_precondition(format!(
                "orchestration '{id}' is not in a terminal state; only completed, failed or terminated instances can be purged"
            )));
        }
        let mut count = 1;
        if recursive {
            for child in inst.children() {
                count += self.purge_one(hub, &child, true).unwrap_or(0);
            }
        }
        self.drop_instance(hub, id);
        Ok(count)
    }

    pub fn purge_filter(
        &mut self,
        hub: &str,
        f: &pb::PurgeInstanceFilter,
        recursive: bool,
    ) -> Result<i32, EngineError> {
        let from = f.created_time_from.as_ref().map(from_ts);
        let to = f.created_time_to.as_ref().map(from_ts);
        let ids: Vec<String> = self
            .hub(hub)?
            .instances
            .values()
            .filter(|i| is_terminal(i.row.status))
            .filter(|i| f.runtime_status.is_empty() || f.runtime_status.contains(&i.row.status))
            .filter(|i| {
                from.is_none_or(|t| i.row.created >= t) && to.is_none_or(|t| i.row.created <= t)
            })
            .map(|i| i.row.instance_id.clone())
            .collect();
        let mut count = 0;
        for id in ids {
            count += self.purge_one(hub, &id, recursive).unwrap_or(0);
        }
        Ok(count)
    }

    /// One page of instances in (created, id) order, from where the continuation token says
    /// the last page ended: the cost of a page does not depend on how many instances exist
    /// (only on how many it skips for not matching a filter).
    pub fn query(
        &mut self,
        hub: &str,
        q: &pb::InstanceQuery,
    ) -> Result<pb::QueryInstancesResponse, EngineError> {
        use std::ops::Bound;
        let from = q.created_time_from.as_ref().map(from_ts);
        let to = q.created_time_to.as_ref().map(from_ts);
        let prefix = q.instance_id_prefix.as_deref().filter(|p| !p.is_empty());
        let after = match q.continuation_token.as_deref() {
            None | Some("") => None,
            Some(t) => Some(parse_page_token(t)?),
        };
        let lower = match (after, from) {
            (Some(key), Some(f)) if key.0 < f => Bound::Included((f, Arc::from(""))),
            (Some(key), _) => Bound::Excluded(key),
            (None, Some(f)) => Bound::Included((f, Arc::from(""))),
            (None, None) => Bound::Unbounded,
        };
        let page = if q.max_instance_count > 0 {
            (q.max_instance_count as usize).min(MAX_QUERY_PAGE)
        } else {
            100
        };
        let unfinished_only =
            !q.runtime_status.is_empty() && q.runtime_status.iter().all(|s| !is_terminal(*s));
        let h = self.hub(hub)?;
        if unfinished_only {
            h.instances.settle();
        }
        let wanted = |created: &DateTime<Utc>, i: &Instance| {
            to.is_none_or(|t| *created <= t)
                && (q.runtime_status.is_empty() || q.runtime_status.contains(&i.row.status))
                && prefix.is_none_or(|p| instances::has_prefix(&i.row.instance_id, p))
        };
        // One caller's operations (an id prefix) are read from the id index when there are not
        // too many of them, rather than by walking every instance of the hub in creation order.
        let by_prefix = prefix.and_then(|p| {
            h.instances
                .with_prefix(p, unfinished_only, MAX_PREFIX_CANDIDATES)
                .map(|mut found| {
                    found.retain(|i| {
                        wanted(&i.row.created, i)
                            && bound_admits(&lower, i.row.created, &i.row.instance_id)
                    });
                    found.sort_by(|a, b| {
                        (a.row.created, a.row.instance_id.as_str())
                            .cmp(&(b.row.created, b.row.instance_id.as_str()))
                    });
                    found
                })
        });
        let matching: Box<dyn Iterator<Item = &Instance>> = match by_prefix {
            Some(found) => Box::new(found.into_iter()),
            None => Box::new(
                h.instances
                    .created_from(lower)
                    .take_while(|((created, _), _)| to.is_none_or(|t| *created <= t))
                    .filter(|((created, _), i)| wanted(created, i))
                    .map(|(_, i)| i),
            ),
        };
        let mut states = Vec::new();
        let mut last = None;
        let mut more = false;
        // The answer is bounded as it is built: past MAX_QUERY_ANSWER_BYTES the page ends early,
        // with a continuation token (payloads are up to 1 MB each, three of them per row).
        let mut bytes = 0;
        for i in matching {
            if states.len() == page || (bytes >= MAX_QUERY_ANSWER_BYTES && !states.is_empty()) {
                more = true;
                break;
            }
            let state = i.state(q.fetch_inputs_and_outputs);
            bytes += prost::Message::encoded_len(&state);
            states.push(state);
            last = Some((i.row.created, i.row.instance_id.as_str()));
        }
        Ok(pb::QueryInstancesResponse {
            orchestration_state: states,
            continuation_token: more
                .then_some(last)
                .flatten()
                .map(|(created, id)| page_token(created, id)),
        })
    }

    pub fn list_ids(
        &mut self,
        hub: &str,
        r: &pb::ListInstanceIdsRequest,
    ) -> Result<pb::ListInstanceIdsResponse, EngineError> {
        let from = r.completed_time_from.as_ref().map(from_ts);
        let to = r.completed_time_to.as_ref().map(from_ts);
        let mut done: Vec<(DateTime<Utc>, String)> = self
            .hub(hub)?
            .instances
            .values()
            .filter(|i| is_terminal(i.row.status))
            .filter(|i| r.runtime_status.is_empty() || r.runtime_status.contains(&i.row.status))
            .filter_map(|i| i.row.completed.map(|c| (c, i.row.instance_id.clone())))
            .filter(|(c, _)| from.is_none_or(|t| *c >= t) && to.is_none_or(|t| *c <= t))
            .collect();
        done.sort();
        let key =
            |c: &DateTime<Utc>, id: &str| format!("{}|{id}", c.timestamp_nanos_opt().unwrap_or(0));
        let start = match &r.last_instance_key {
            Some(k) if !k.is_empty() => done
                .iter()
                .position(|(c, id)| key(c, id) == *k)
                .map_or(0, |p| p + 1),
            _ => 0,
        };
        let page = if r.page_size > 0 {
            (r.page_size as usize).min(MAX_ID_PAGE)
        } else {
            100
        };
        let slice: Vec<_> = done.iter().skip(start).take(page).collect();
        let more = start + slice.len() < done.len();
        Ok(pb::ListInstanceIdsResponse {
            instance_ids: slice.iter().map(|(_, id)| id.clone()).collect(),
            last_instance_key: if more {
                slice.last().map(|(c, id)| key(c, id))
            } else {
                None
            },
        })
    }

    // ------------------------------------------------------------ worker side
}

/// What a start adds to the state: its payload twice (the row and the `ExecutionStarted` event),
/// its tags, names and the fixed costs of an instance and an event.
fn start_bytes(req: &pb::CreateInstanceRequest) -> usize {
    let input = req.input.as_ref().map_or(0, String::len);
    let tags: usize = req.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    2 * (input + tags + req.name.len() + req.instance_id.len()) + 800 + 512
}

/// Rows of a query page at most, whatever the caller asks for.
pub const MAX_QUERY_PAGE: usize = 1000;

/// A prefix query reads the instances with that prefix from the id index up to this many;
/// past it, it walks the creation index (which stops once the page is full).
const MAX_PREFIX_CANDIDATES: usize = 20_000;

/// Whether a page that starts at `lower` includes the instance (created, id).
fn bound_admits(
    lower: &std::ops::Bound<instances::CreatedKey>,
    created: DateTime<Utc>,
    id: &str,
) -> bool {
    match lower {
        std::ops::Bound::Unbounded => true,
        std::ops::Bound::Included((c, i)) => (created, id) >= (*c, i.as_ref()),
        std::ops::Bound::Excluded((c, i)) => (created, id) > (*c, i.as_ref()),
    }
}
/// Encoded size after which a query page ends (with a continuation token): well under the gRPC
/// message limit, whatever the rows' payloads.
pub const MAX_QUERY_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Ids of a `ListInstanceIds` page at most (ids are at most 100 bytes).
pub const MAX_ID_PAGE: usize = 10_000;

/// The continuation token of a query page: where it ended, as (created, id).
fn page_token(created: DateTime<Utc>, id: &str) -> String {
    format!("{}:{id}", created.timestamp_nanos_opt().unwrap_or(0))
}

fn parse_page_token(t: &str) -> Result<instances::CreatedKey, EngineError> {
    t.split_once(':')
        .and_then(|(nanos, id)| Some((nanos.parse::<i64>().ok()?, id)))
        .map(|(nanos, id)| (DateTime::from_timestamp_nanos(nanos), Arc::from(id)))
        .ok_or_else(|| {
            EngineError::invalid_argument(format!(
                "continuation token '{t}' is not one this server issued"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(e: &mut Engine, id: &str) {
        e.start_instance(
            "h",
            pb::CreateInstanceRequest {
                instance_id: id.into(),
                name: "o".into(),
                ..Default::default()
            },
        )
        .expect("start");
    }

    fn page(e: &mut Engine, size: i32, token: Option<String>) -> pb::QueryInstancesResponse {
        e.query(
            "h",
            &pb::InstanceQuery {
                max_instance_count: size,
                continuation_token: token,
                ..Default::default()
            },
        )
        .expect("query")
    }

    #[test]
    fn pages_follow_each_other_by_keyset_in_creation_order() {
        let mut e = Engine::new(&["h".to_string()]);
        let ids: Vec<String> = (0..7).map(|i| format!("i{i}")).collect();
        for id in &ids {
            start(&mut e, id);
        }
        let mut seen = Vec::new();
        let mut token = None;
        let mut pages = 0;
        loop {
            let p = page(&mut e, 3, token.take());
            pages += 1;
            seen.extend(p.orchestration_state.iter().map(|s| s.instance_id.clone()));
            match p.continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let mut by_creation: Vec<(DateTime<Utc>, String)> = e.hubs["h"]
            .instances
            .values()
            .map(|i| (i.row.created, i.row.instance_id.clone()))
            .collect();
        by_creation.sort();
        let expected: Vec<String> = by_creation.into_iter().map(|(_, id)| id).collect();
        assert_eq!(
            seen, expected,
            "every instance once, in (created, id) order"
        );

        // A page that started before an instance was purged still continues after it.
        let first = page(&mut e, 2, None);
        let token = first.continuation_token.expect("more");
        let next_id = seen[2].clone();
        e.hubs.get_mut("h").map(|h| {
            h.instances.get_mut(&next_id).map(|i| {
                i.row.status = pb::OrchestrationStatus::Completed as i32;
            })
        });
        e.purge_one("h", &next_id, false).expect("purge");
        let second = page(&mut e, 2, Some(token));
        assert_eq!(second.orchestration_state[0].instance_id, seen[3]);

        assert!(matches!(
            e.query(
                "h",
                &pb::InstanceQuery {
                    continuation_token: Some("not-a-token".into()),
                    ..Default::default()
                }
            ),
            Err(EngineError::InvalidArgument(_))
        ));
    }

    /// Every page of `q`, followed by its continuation tokens: the ids in order.
    fn all_pages(e: &mut Engine, mut q: pb::InstanceQuery) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let p = e.query("h", &q).expect("query");
            seen.extend(p.orchestration_state.iter().map(|s| s.instance_id.clone()));
            match p.continuation_token {
                Some(t) => q.continuation_token = Some(t),
                None => return seen,
            }
        }
    }

    /// What a prefix query must answer: every instance in (created, id) order, filtered.
    fn expected(e: &Engine, prefix: &str, statuses: &[i32]) -> Vec<String> {
        let mut all: Vec<(DateTime<Utc>, String, i32)> = e.hubs["h"]
            .instances
            .values()
            .map(|i| (i.row.created, i.row.instance_id.clone(), i.row.status))
            .collect();
        all.sort();
        all.into_iter()
            .filter(|(_, id, s)| {
                id.to_ascii_lowercase()
                    .starts_with(&prefix.to_ascii_lowercase())
                    && (statuses.is_empty() || statuses.contains(s))
            })
            .map(|(_, id, _)| id)
            .collect()
    }

    #[test]
    fn prefix_queries_read_the_id_index_and_page_like_any_other() {
        use pb::OrchestrationStatus as S;
        let mut e = Engine::new(&["h".to_string()]);
        for i in 0..60 {
            let owner = ["owna", "OWNA", "ownb", "OwnA"][i % 4];
            start(&mut e, &format!("{owner}-{i:02}"));
        }
        for i in (0..60).step_by(3) {
            let id = format!("{}-{i:02}", ["owna", "OWNA", "ownb", "OwnA"][i % 4]);
            let h = e.hubs.get_mut("h").expect("hub");
            h.instances.get_mut(&id).expect("instance").row.status = S::Completed as i32;
        }
        let unfinished = vec![S::Pending as i32, S::Running as i32, S::Suspended as i32];
        for (prefix, statuses, size) in [
            ("owna-", unfinished.clone(), 4),
            ("OWNA-", vec![], 7),
            ("ownb-", vec![S::Completed as i32], 2),
            ("owna-0", unfinished.clone(), 1),
            ("nobody-", unfinished.clone(), 5),
        ] {
            let got = all_pages(
                &mut e,
                pb::InstanceQuery {
                    instance_id_prefix: Some(prefix.into()),
                    runtime_status: statuses.clone(),
                    max_instance_count: size,
                    ..Default::default()
                },
            );
            assert_eq!(got, expected(&e, prefix, &statuses), "prefix {prefix}");
        }
        // Past MAX_PREFIX_CANDIDATES instances with the prefix, the creation index is walked
        // instead; the answer is the same.
        for i in 0..(MAX_PREFIX_CANDIDATES + 10) {
            start(&mut e, &format!("many-{i:06}"));
        }
        let q = pb::InstanceQuery {
            instance_id_prefix: Some("MANY-0000".into()),
            max_instance_count: 1000,
            ..Default::default()
        };
        assert_eq!(all_pages(&mut e, q), expected(&e, "many-0000", &[]));
        let q = pb::InstanceQuery {
            instance_id_prefix: Some("many-".into()),
            runtime_status: unfinished.clone(),
            max_instance_count: 1000,
            ..Default::default()
        };
        assert_eq!(
            all_pages(&mut e, q).len(),
            MAX_PREFIX_CANDIDATES + 10,
            "every one, through the creation index"
        );
    }
}
