//! Durable timers and scheduled starts.

use chrono::{DateTime, Utc};

use super::Engine;
use crate::model::{Change, now_ts};

impl Engine {
    /// Moves timers that are due into inboxes; returns the next due time.
    pub fn fire_due_timers(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let hubs: Vec<String> = self.hubs.keys().cloned().collect();
        let mut next: Option<DateTime<Utc>> = None;
        for hub in hubs {
            while let Some(h) = self.hubs.get_mut(&hub) {
                let Some((&(due, seq), _)) = h.timers.iter().next() else {
                    break;
                };
                if due > now {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    break;
                }
                let Some((instance_id, mut msg)) = h.timers.remove(&(due, seq)) else {
                    break;
                };
                self.changes.push(Change::DeleteTimer {
                    hub: hub.clone(),
                    seq,
                });
                msg.timestamp = Some(now_ts());
                self.deliver(&hub, &instance_id, msg, None);
            }
        }
        next
    }

    // ------------------------------------------------------------ client side
}
