//! The instances of one task hub: found by id, and walked in (created, id) order for queries.
//!
//! Instances live in slots that never move; both indexes point at a slot. A query page walks
//! the creation index and reads each instance straight from its slot, so its cost does not
//! include a lookup by id per row (at 100,000 instances that lookup, a B-tree descent comparing
//! strings on the heap, was most of a page's time). The two indexes are kept here, together, so
//! they cannot drift apart.
//!
//! Not a hash map: instances accumulate until purged, and a hash map's doubling rehashes every
//! entry under the engine lock (at 57k instances that stalled every call for ~90 ms). B-trees
//! grow a node at a time; the slot vector's doubling copies one pointer per instance.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::model::Instance;

/// Where a query page starts or ends: (created, instance id).
pub type CreatedKey = (DateTime<Utc>, Arc<str>);

#[derive(Default)]
pub struct Instances {
    slots: Vec<Option<Box<Instance>>>,
    free: Vec<usize>,
    by_id: BTreeMap<Arc<str>, usize>,
    by_created: BTreeMap<CreatedKey, usize>,
}

impl Instances {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn get(&self, id: &str) -> Option<&Instance> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot].as_deref()
    }

    /// The instance to change. Its id and creation time are its keys here and must not change
    /// (nothing does: a new execution under the same id is a new instance, inserted anew).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Instance> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot].as_deref_mut()
    }

    /// Adds an instance, replacing the one with the same id.
    pub fn insert(&mut self, instance: Box<Instance>) {
        self.remove(&instance.row.instance_id);
        let id: Arc<str> = Arc::from(instance.row.instance_id.as_str());
        let created = instance.row.created;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(instance);
                slot
            }
            None => {
                self.slots.push(Some(instance));
                self.slots.len() - 1
            }
        };
        self.by_created.insert((created, id.clone()), slot);
        self.by_id.insert(id, slot);
    }

    pub fn remove(&mut self, id: &str) -> Option<Box<Instance>> {
        let (id, slot) = self.by_id.remove_entry(id)?;
        let instance = self.slots[slot].take()?;
        self.by_created.remove(&(instance.row.created, id));
        self.free.push(slot);
        Some(instance)
    }

    /// Every instance, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Instance)> {
        self.by_id
            .iter()
            .filter_map(|(id, slot)| Some((id.as_ref(), self.slots[*slot].as_deref()?)))
    }

    pub fn values(&self) -> impl Iterator<Item = &Instance> {
        self.iter().map(|(_, i)| i)
    }

    /// The instances from `lower` on, in (created, id) order, each with its key.
    pub fn created_from(
        &self,
        lower: Bound<CreatedKey>,
    ) -> impl Iterator<Item = (&CreatedKey, &Instance)> {
        self.by_created
            .range((lower, Bound::Unbounded))
            .filter_map(|(key, slot)| Some((key, self.slots[*slot].as_deref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceRow;

    fn instance(id: &str, created_secs: i64) -> Box<Instance> {
        let created = DateTime::from_timestamp(created_secs, 0).expect("time");
        Box::new(Instance {
            row: InstanceRow {
                instance_id: id.into(),
                execution_id: "e".into(),
                name: "o".into(),
                version: None,
                status: 0,
                created,
                last_updated: created,
                completed: None,
                scheduled_start: None,
                input: None,
                output: None,
                custom_status: None,
                failure: None,
                tags: Default::default(),
                parent: None,
                trace: None,
                lost_dispatches: 0,
            },
            history: Vec::new(),
            inbox: Default::default(),
            lease: None,
            dispatched: Vec::new(),
            terminate_children: false,
            history_on_disk: None,
        })
    }

    fn created_order(all: &Instances) -> Vec<String> {
        all.created_from(Bound::Unbounded)
            .map(|(_, i)| i.row.instance_id.clone())
            .collect()
    }

    #[test]
    fn both_indexes_follow_inserts_replacements_and_removals() {
        let mut all = Instances::default();
        all.insert(instance("b", 2));
        all.insert(instance("a", 3));
        all.insert(instance("c", 1));
        assert_eq!(created_order(&all), ["c", "b", "a"]);
        assert_eq!(
            all.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );

        // A new execution under an existing id replaces it, in both orders.
        all.insert(instance("c", 4));
        assert_eq!(all.len(), 3);
        assert_eq!(created_order(&all), ["b", "a", "c"]);

        assert_eq!(all.remove("b").map(|i| i.row.created.timestamp()), Some(2));
        assert!(all.get("b").is_none());
        assert!(all.remove("b").is_none());
        assert_eq!(created_order(&all), ["a", "c"]);

        // The freed slot is reused, and the instance it held is not visible through it.
        all.insert(instance("d", 0));
        assert_eq!(all.slots.len(), 3);
        assert_eq!(created_order(&all), ["d", "a", "c"]);
        all.get_mut("d").expect("d").row.name = "changed".into();
        assert_eq!(all.get("d").map(|i| i.row.name.as_str()), Some("changed"));
    }

    #[test]
    fn created_from_starts_after_an_excluded_key() {
        let mut all = Instances::default();
        for (id, t) in [("x", 1), ("y", 1), ("z", 2)] {
            all.insert(instance(id, t));
        }
        let after_x = (
            DateTime::from_timestamp(1, 0).expect("time"),
            Arc::from("x"),
        );
        let rest: Vec<_> = all
            .created_from(Bound::Excluded(after_x))
            .map(|(_, i)| i.row.instance_id.as_str())
            .collect();
        assert_eq!(rest, ["y", "z"]);
    }
}
