//! Durable entities: signals from clients and from other entities (now or at a time), entity
//! work items and their completion, reads, queries and storage cleaning, with DTS's wire
//! messages.
//!
//! An entity is addressed as `@name@key` (the name in lower case). Its operations queue in
//! arrival order; a worker gets them in batches (`EntityRequest`, DTS's newer form, whose
//! operations are the history events that carried them) and one batch at a time per entity, so
//! operations apply in order and never concurrently. A delayed signal is a timer whose target is
//! the entity (`deliver` routes ids starting with `@`, which orchestration ids may not).
//!
//! Locks (an orchestration's critical section) are the scheduler's own business: a lock request
//! travels the lock set in its (sorted) order, each entity taking it when the request reaches
//! the front of its queue, and the last one grants it to the orchestration. A locked entity runs
//! only its holder's calls; everything else waits until the holder's unlock arrives, or until the
//! holder ends (its locks are released then, so a failed orchestration cannot leave an entity
//! locked), or until `CleanEntityStorage` finds the holder gone.

//!
//! `locks.rs` serves the locks, `work.rs` the work items (dispatch, abandon, completion); reads,
//! signals, accounting and restore are here.

mod locks;
#[cfg(test)]
mod tests;
mod work;

use durabletask_proto as pb;
use pb::history_event::EventType;

use super::query::MAX_QUERY_ANSWER_BYTES;
use super::stats::event_bytes;
use super::{Engine, EngineError, validate_name, validate_payload};
use crate::model::{Change, Entity, event, from_ts};

/// What an entity costs besides its id, state and queued operations (a guess in the spirit of
/// the instances' overhead).
const ENTITY_OVERHEAD_BYTES: usize = 400;
/// Operations of one entity work item.
const MAX_OPERATIONS_PER_BATCH: usize = 100;
/// Bytes of one entity work item's state and operations, past its first operation.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// An entity id as DTS bounds an instance id, plus its two `@`s.
const MAX_ENTITY_ID_BYTES: usize = 256;
/// Request ids are GUIDs in every SDK; bounded like the other fields.
const MAX_REQUEST_ID_BYTES: usize = 100;
/// Entities in one query page, when the caller names no page size.
const DEFAULT_ENTITY_PAGE: usize = 100;
const MAX_ENTITY_PAGE: usize = 1000;

/// Whether `id` addresses an entity (`@name@key`).
pub fn is_entity_id(id: &str) -> bool {
    id.starts_with('@')
}

/// The name of entity `id` (`@name@key`), checked: printable ASCII, a non-empty name in lower
/// case (as every SDK writes it) followed by `@`.
pub fn entity_name(id: &str) -> Result<&str, EngineError> {
    let bad = |why: &str| {
        EngineError::invalid_argument(format!(
            "entity id '{id}' is not valid: {why} (expected '@name@key')"
        ))
    };
    if id.len() > MAX_ENTITY_ID_BYTES {
        return Err(bad(&format!(
            "longer than {MAX_ENTITY_ID_BYTES} characters"
        )));
    }
    if !id.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(bad("not printable ASCII"));
    }
    let rest = id.strip_prefix('@').ok_or_else(|| bad("no leading '@'"))?;
    let (name, _key) = rest
        .split_once('@')
        .ok_or_else(|| bad("no '@' between name and key"))?;
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("the name must be lower case"));
    }
    Ok(name)
}

/// Whether `m` came from orchestration `holder` (a call, a lock request or an unlock it sent).
fn sent_by(m: &pb::HistoryEvent, holder: &str) -> bool {
    let parent = match &m.event_type {
        Some(EventType::EntityOperationCalled(c)) => c.parent_instance_id.as_deref(),
        Some(EventType::EntityUnlockSent(u)) => u.parent_instance_id.as_deref(),
        Some(EventType::EntityLockRequested(l)) => l.parent_instance_id.as_deref(),
        _ => None,
    };
    parent == Some(holder)
}

fn is_operation(m: &pb::HistoryEvent) -> bool {
    matches!(
        m.event_type,
        Some(EventType::EntityOperationSignaled(_) | EventType::EntityOperationCalled(_))
    )
}

/// Whether a worker has something to run for `e`: unlocked, an operation at the front;
/// locked, a call from the holder before the holder's unlock.
fn runnable(e: &Entity) -> bool {
    match &e.locked_by {
        None => e.queue.front().is_some_and(is_operation),
        Some(holder) => e
            .queue
            .iter()
            .find(|m| sent_by(m, holder))
            .is_some_and(is_operation),
    }
}

impl Engine {
    /// Queues an operation for an entity (a client's signal), now or at `scheduledTime`.
    pub fn signal_entity(
        &mut self,
        hub: &str,
        req: pb::SignalEntityRequest,
    ) -> Result<(), EngineError> {
        entity_name(&req.instance_id)?;
        validate_name("entity operation name", &req.name)?;
        validate_payload("entity operation input", req.input.as_ref())?;
        if req.request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(EngineError::invalid_argument(format!(
                "request id is longer than {MAX_REQUEST_ID_BYTES} characters"
            )));
        }
        self.hub(hub)?;
        self.check_entity_room(hub)?;
        let request_id = if req.request_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            req.request_id
        };
        let at = req.scheduled_time.as_ref().map(from_ts);
        let signal = event(
            -1,
            EventType::EntityOperationSignaled(pb::EntityOperationSignaledEvent {
                request_id,
                operation: req.name,
                scheduled_time: req.scheduled_time,
                input: req.input,
                target_instance_id: Some(req.instance_id.clone()),
            }),
        );
        self.deliver(hub, &req.instance_id, signal, at);
        Ok(())
    }

    /// An operation arrives at an entity (a signal now, or a delayed one whose time came).
    pub(in crate::engine) fn deliver_to_entity(
        &mut self,
        hub: &str,
        id: &str,
        msg: pb::HistoryEvent,
    ) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let entity = h
            .entities
            .entry(id.to_string())
            .or_insert_with(|| Entity::new(id.to_string()));
        entity.queue.push_back(msg);
        self.settle_entity(hub, id);
        self.persist_entity(hub, id);
    }

    pub(in crate::engine) fn persist_entity(&mut self, hub: &str, id: &str) {
        self.account_entity(hub, id);
        if !self.record_instances {
            return;
        }
        let change = match self.hubs.get(hub).and_then(|h| h.entities.get(id)) {
            Some(e) => Change::PutEntity {
                hub: hub.to_string(),
                entity: e.row(),
            },
            None => Change::DeleteEntity {
                hub: hub.to_string(),
                id: id.to_string(),
            },
        };
        self.changes.push(change);
    }

    /// Counts the entity again into the hub's state estimate and backlog (or out, when it is
    /// gone; `clean_entity_storage` takes a removed entity's share out itself).
    pub(in crate::engine) fn account_entity(&mut self, hub: &str, id: &str) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let Some(e) = h.entities.get_mut(id) else {
            return;
        };
        let bytes = ENTITY_OVERHEAD_BYTES
            + e.id.len()
            + e.state.as_ref().map_or(0, String::len)
            + e.queue
                .iter()
                .chain(&e.dispatched)
                .map(event_bytes)
                .sum::<usize>();
        let operations = e.queue.len() + e.dispatched.len();
        let (old_bytes, old_operations) = std::mem::replace(&mut e.counted, (bytes, operations));
        h.entity_bytes = h.entity_bytes - old_bytes + bytes;
        h.entity_operations = h.entity_operations - old_operations + operations;
        self.state_bytes = self
            .state_bytes
            .saturating_sub(old_bytes)
            .saturating_add(bytes);
    }

    /// Refuses a new signal past the hub's backlog or the scheduler's state limit, as a start is
    /// refused: operations already queued still run, and callers retry.
    pub(in crate::engine) fn check_entity_room(&self, hub: &str) -> Result<(), EngineError> {
        let Some(h) = self.hubs.get(hub) else {
            return Ok(());
        };
        let l = &self.limits;
        if l.max_backlog > 0 && h.entity_operations >= l.max_backlog {
            return Err(EngineError::resource_exhausted(format!(
                "task hub '{hub}' has {} entity operations waiting, its limit (max_backlog); try again when workers catch up",
                h.entity_operations
            )));
        }
        if l.max_state_bytes > 0 && self.state_bytes >= l.max_state_bytes {
            return Err(EngineError::resource_exhausted(format!(
                "the scheduler holds {} MiB of state, its limit (max_state_bytes, {} MiB); try again when workers catch up",
                self.state_bytes >> 20,
                l.max_state_bytes >> 20
            )));
        }
        Ok(())
    }

    /// The entity's metadata, when it exists (has state), with its state if asked.
    pub fn get_entity(
        &mut self,
        hub: &str,
        req: &pb::GetEntityRequest,
    ) -> Result<pb::GetEntityResponse, EngineError> {
        entity_name(&req.instance_id)?;
        let entity = self
            .hub(hub)?
            .entities
            .get(&req.instance_id)
            .filter(|e| e.state.is_some());
        Ok(pb::GetEntityResponse {
            exists: entity.is_some(),
            entity: entity.map(|e| e.metadata(req.include_state)),
        })
    }

    /// A page of entities in id order: those with state, and with `includeTransient` also those
    /// without; by id prefix and last-modified time.
    pub fn query_entities(
        &mut self,
        hub: &str,
        q: &pb::EntityQuery,
    ) -> Result<pb::QueryEntitiesResponse, EngineError> {
        let h = self.hub(hub)?;
        let page = match q.page_size {
            Some(n) if n <= 0 => {
                return Err(EngineError::invalid_argument(
                    "entity query page size must be positive",
                ));
            }
            Some(n) => usize::try_from(n)
                .unwrap_or(MAX_ENTITY_PAGE)
                .min(MAX_ENTITY_PAGE),
            None => DEFAULT_ENTITY_PAGE,
        };
        let prefix = q.instance_id_starts_with.as_deref().unwrap_or("");
        let from = q.last_modified_from.as_ref().map(from_ts);
        let to = q.last_modified_to.as_ref().map(from_ts);
        let after = q
            .continuation_token
            .as_deref()
            .filter(|t| !t.is_empty() && *t != "0");
        let lower = match after {
            Some(t) => std::ops::Bound::Excluded(t.to_string()),
            None => std::ops::Bound::Included(prefix.to_string()),
        };
        let mut entities = Vec::new();
        let mut last = None;
        let mut bytes = 0;
        let mut more = false;
        for (id, e) in h.entities.range((lower, std::ops::Bound::Unbounded)) {
            if !id.starts_with(prefix) {
                break;
            }
            // Transient: no state (operations waiting, a lock held, or nothing at all yet
            // cleaned away).
            if e.state.is_none() && !q.include_transient {
                continue;
            }
            if from.is_some_and(|f| e.last_modified < f) || to.is_some_and(|t| e.last_modified > t)
            {
                continue;
            }
            // Bounded as it is built, as instance query pages are: past the byte cap the page
            // ends early, with a continuation token.
            if entities.len() == page || (bytes >= MAX_QUERY_ANSWER_BYTES && !entities.is_empty()) {
                more = true;
                break;
            }
            let m = e.metadata(q.include_state);
            bytes += prost::Message::encoded_len(&m);
            entities.push(m);
            last = Some(id.clone());
        }

        Ok(pb::QueryEntitiesResponse {
            entities,
            continuation_token: if more { last } else { None },
        })
    }

    /// Removes the entities that hold nothing (no state, nothing waiting or running, no lock),
    /// and releases locks whose holder is gone or finished.
    pub fn clean_entity_storage(
        &mut self,
        hub: &str,
        req: &pb::CleanEntityStorageRequest,
    ) -> Result<pb::CleanEntityStorageResponse, EngineError> {
        let mut orphaned = 0;
        if req.release_orphaned_locks {
            let h = self.hub(hub)?;
            let gone: Vec<String> = h
                .locks
                .keys()
                .filter(|holder| {
                    h.instances
                        .get(holder)
                        .is_none_or(|i| crate::model::is_terminal(i.row.status))
                })
                .cloned()
                .collect();
            for holder in gone {
                orphaned += self.release_locks_of(hub, &holder);
            }
        }
        let h = self.hub(hub)?;
        let mut removed = Vec::new();
        if req.remove_empty_entities {
            removed = h
                .entities
                .values()
                .filter(|e| e.is_empty())
                .map(|e| e.id.clone())
                .collect();
            let mut freed = 0;
            for id in &removed {
                if let Some(e) = h.entities.remove(id) {
                    h.entity_bytes -= e.counted.0;
                    h.entity_operations -= e.counted.1;
                    freed += e.counted.0;
                }
            }
            self.state_bytes = self.state_bytes.saturating_sub(freed);
        }
        for id in &removed {
            self.persist_entity(hub, id);
        }
        Ok(pb::CleanEntityStorageResponse {
            continuation_token: None,
            empty_entities_removed: i32::try_from(removed.len()).unwrap_or(i32::MAX),
            orphaned_locks_released: i32::try_from(orphaned).unwrap_or(i32::MAX),
        })
    }

    /// Restores the entities the store loaded: each with operations waiting is runnable.
    pub fn restore_entities(&mut self, hub: &str, rows: Vec<crate::model::EntityRow>) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        let mut ids = Vec::new();
        for row in rows {
            let entity = Entity::from_row(row);
            if let Some(holder) = &entity.locked_by {
                h.locks
                    .entry(holder.clone())
                    .or_default()
                    .insert(entity.id.clone());
            }
            ids.push(entity.id.clone());
            h.entities.insert(entity.id.clone(), entity);
        }
        for id in ids {
            self.settle_entity(hub, &id);
            self.account_entity(hub, &id);
        }
    }
}
