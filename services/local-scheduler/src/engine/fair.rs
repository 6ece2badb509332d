//! Work queues served round-robin across owners (the `owner` tag the gateway puts on every
//! operation), so that one caller's backlog does not stand in front of another's work: a work
//! item of a caller with nothing else queued waits for at most one item of each other caller
//! with work queued, however many those have. Within an owner, first in, first out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The instance tag naming the caller an operation belongs to.
pub const OWNER_TAG: &str = "owner";

/// The owner of an instance, by its tags; instances without one (sub-orchestrations, starts
/// that do not come through the gateway) share one turn.
pub fn owner_of(tags: &HashMap<String, String>) -> &str {
    tags.get(OWNER_TAG).map_or("", String::as_str)
}

/// What [`FairQueue::take`] does with an item it looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Dispatch it: taken out of the queue.
    Take,
    /// Not for this taker (a work-item filter): stays where it is.
    Skip,
    /// Gone meanwhile (completed, purged): removed.
    Drop,
}

#[derive(Debug, Default)]
pub struct FairQueue {
    by_owner: HashMap<Arc<str>, VecDeque<String>>,
    /// Owners with queued items, in the order they are served.
    turn: VecDeque<Arc<str>>,
    len: usize,
}

impl FairQueue {
    fn queue(&mut self, owner: &str) -> &mut VecDeque<String> {
        if !self.by_owner.contains_key(owner) {
            let key: Arc<str> = Arc::from(owner);
            self.turn.push_back(key.clone());
            self.by_owner.insert(key, VecDeque::new());
        }
        self.by_owner.get_mut(owner).expect("inserted just above")
    }

    /// Queues `item` last among `owner`'s.
    pub fn push_back(&mut self, owner: &str, item: String) {
        self.queue(owner).push_back(item);
        self.len += 1;
    }

    /// Queues `item` first among `owner`'s (work handed back keeps its place).
    pub fn push_front(&mut self, owner: &str, item: String) {
        self.queue(owner).push_front(item);
        self.len += 1;
    }

    /// Items queued (stale ones included until a `take` meets them).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Owners with items queued.
    #[cfg(test)]
    fn owners(&self) -> usize {
        self.turn.len()
    }

    /// The first item `judge` takes, looking at the owners in turn (each owner's items in
    /// order); the owner it came from goes to the back of the turn.
    pub fn take(&mut self, mut judge: impl FnMut(&str) -> Verdict) -> Option<String> {
        let mut i = 0;
        while i < self.turn.len() {
            let owner = self.turn[i].clone();
            let Some(queue) = self.by_owner.get_mut(&owner) else {
                self.turn.remove(i);
                continue;
            };
            let mut taken = None;
            let mut j = 0;
            while j < queue.len() {
                match judge(&queue[j]) {
                    Verdict::Take => {
                        taken = queue.remove(j);
                        break;
                    }
                    Verdict::Skip => j += 1,
                    Verdict::Drop => {
                        queue.remove(j);
                        self.len -= 1;
                    }
                }
            }
            let empty = queue.is_empty();
            if empty {
                self.by_owner.remove(&owner);
                self.turn.remove(i);
            }
            if let Some(item) = taken {
                self.len -= 1;
                if !empty {
                    // Served: its next item waits for every other owner's turn.
                    if let Some(o) = self.turn.remove(i) {
                        self.turn.push_back(o);
                    }
                }
                return Some(item);
            }
            if !empty {
                i += 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_any(q: &mut FairQueue) -> Option<String> {
        q.take(|_| Verdict::Take)
    }

    #[test]
    fn owners_are_served_in_turn_whatever_their_backlog() {
        let mut q = FairQueue::default();
        for i in 0..1000 {
            q.push_back("a", format!("a{i}"));
        }
        q.push_back("b", "b0".into());
        q.push_back("c", "c0".into());
        let first: Vec<String> = (0..4).filter_map(|_| take_any(&mut q)).collect();
        assert_eq!(first, ["a0", "b0", "c0", "a1"]);
        assert_eq!(q.len(), 998);
        assert_eq!(q.owners(), 1);
    }

    #[test]
    fn skipped_items_stay_and_stale_ones_go() {
        let mut q = FairQueue::default();
        for item in ["x1", "stale", "x2"] {
            q.push_back("a", item.into());
        }
        q.push_back("b", "y1".into());
        // A taker that takes only b's items; a's stale item is dropped on the way.
        let got = q.take(|i| match i {
            "stale" => Verdict::Drop,
            i if i.starts_with('y') => Verdict::Take,
            _ => Verdict::Skip,
        });
        assert_eq!(got.as_deref(), Some("y1"));
        assert_eq!(q.len(), 2);
        assert_eq!(take_any(&mut q).as_deref(), Some("x1"));
        assert_eq!(take_any(&mut q).as_deref(), Some("x2"));
        assert!(q.len() == 0 && q.owners() == 0);
    }

    #[test]
    fn handed_back_work_goes_first_among_its_owners() {
        let mut q = FairQueue::default();
        q.push_back("a", "a1".into());
        q.push_front("a", "a0".into());
        assert_eq!(take_any(&mut q).as_deref(), Some("a0"));
    }
}
