//! Entity locks (an orchestration's critical section), served by the scheduler itself.

use durabletask_proto as pb;
use pb::history_event::EventType;

use super::{runnable, sent_by};
use crate::engine::Engine;
use crate::model::event;

impl Engine {
    /// Carries out the lock messages an entity can act on now (not while a worker holds it):
    /// unlocked, a lock request at the front of its queue locks it and goes on to the next
    /// entity of the set, or is granted; locked, the holder's unlock (its first message after
    /// the calls that ran) ends the lock. Then marks the entity ready if it has work to run.
    pub(in crate::engine) fn settle_entity(&mut self, hub: &str, id: &str) {
        let mut outgoing = Vec::new();
        {
            let Some(h) = self.hubs.get_mut(hub) else {
                return;
            };
            let Some(entity) = h.entities.get_mut(id) else {
                return;
            };
            if entity.lease.is_some() {
                return;
            }
            loop {
                match entity.locked_by.clone() {
                    None => match entity.queue.front().and_then(|m| m.event_type.as_ref()) {
                        Some(EventType::EntityLockRequested(l)) => {
                            let l = l.clone();
                            entity.queue.pop_front();
                            let holder = l.parent_instance_id.clone().unwrap_or_default();
                            entity.locked_by = Some(holder.clone());
                            h.locks
                                .entry(holder.clone())
                                .or_default()
                                .insert(id.to_string());
                            let next = usize::try_from(l.position).unwrap_or(usize::MAX) + 1;
                            match l.lock_set.get(next).cloned() {
                                Some(target) => outgoing.push((
                                    target,
                                    event(
                                        -1,
                                        EventType::EntityLockRequested(
                                            pb::EntityLockRequestedEvent {
                                                position: l.position + 1,
                                                ..l
                                            },
                                        ),
                                    ),
                                )),
                                None => outgoing.push((
                                    holder,
                                    event(
                                        -1,
                                        EventType::EntityLockGranted(pb::EntityLockGrantedEvent {
                                            critical_section_id: l.critical_section_id,
                                        }),
                                    ),
                                )),
                            }
                        }
                        // An unlock of a lock this entity does not hold (the holder ended first).
                        Some(EventType::EntityUnlockSent(_)) => {
                            entity.queue.pop_front();
                        }
                        _ => break,
                    },
                    Some(holder) => {
                        let first = entity.queue.iter().position(|m| sent_by(m, &holder));
                        let unlock = first.filter(|&p| {
                            matches!(
                                entity.queue[p].event_type,
                                Some(EventType::EntityUnlockSent(_))
                            )
                        });
                        let Some(p) = unlock else { break };
                        entity.queue.remove(p);
                        entity.locked_by = None;
                        if let Some(held) = h.locks.get_mut(&holder) {
                            held.remove(id);
                            if held.is_empty() {
                                h.locks.remove(&holder);
                            }
                        }
                    }
                }
            }
            if runnable(entity) && h.entity_ready_set.insert(id.to_string()) {
                h.entity_ready.push_back(id.to_string());
            }
        }
        for (target, msg) in outgoing {
            self.deliver(hub, &target, msg, None);
        }
    }

    /// Releases the locks `holder` holds (it ended): each entity goes on with what waited.
    pub(in crate::engine) fn release_locks_of(&mut self, hub: &str, holder: &str) -> usize {
        let Some(held) = self.hubs.get_mut(hub).and_then(|h| h.locks.remove(holder)) else {
            return 0;
        };
        let mut released = 0;
        for id in held {
            let Some(entity) = self.hubs.get_mut(hub).and_then(|h| h.entities.get_mut(&id)) else {
                continue;
            };
            if entity.locked_by.as_deref() == Some(holder) {
                entity.locked_by = None;
                released += 1;
                self.settle_entity(hub, &id);
                self.persist_entity(hub, &id);
            }
        }
        released
    }

    /// Releases the locks of instances that ended since the last call (see `persist`).
    pub(in crate::engine) fn release_locks_of_ended(&mut self) {
        for (hub, holder) in std::mem::take(&mut self.ended_lock_holders) {
            self.release_locks_of(&hub, &holder);
        }
    }
}
