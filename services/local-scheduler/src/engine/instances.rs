//! The instances of one task hub: found by id, by id prefix, and walked in (created, id) order
//! for queries.
//!
//! Instances live in slots that never move; the indexes point at a slot. A query page walks
//! the creation index and reads each instance straight from its slot, so its cost does not
//! include a lookup by id per row (at 100,000 instances that lookup, a B-tree descent comparing
//! strings on the heap, was most of a page's time). The indexes are kept here, together, so
//! they cannot drift apart.
//!
//! The id index is ordered case-insensitively (ASCII), exact bytes breaking ties, so that the
//! instances whose id starts with a prefix, in any case, are one range of it: a prefix query
//! (one caller's operations: the gateway's list, its unfinished-operations cap) reads that range
//! and not every instance of the hub. The instances not yet finished have an index of their own
//! in the same order; a status changes through [`Instances::get_mut`], so that index is brought
//! up to date from the slots handed out since ([`Instances::settle`]) before it is read.
//!
//! Not a hash map: instances accumulate until purged, and a hash map's doubling rehashes every
//! entry under the engine lock (at 57k instances that stalled every call for ~90 ms). B-trees
//! grow a node at a time; the slot vector's doubling copies one pointer per instance.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::stats::instance_bytes;
use crate::model::{Instance, is_terminal};

/// Where a query page starts or ends: (created, instance id).
pub type CreatedKey = (DateTime<Utc>, Arc<str>);

/// An instance id as the id indexes order it: ASCII case folded first, then the exact bytes.
/// `head` holds its first bytes folded, so that most comparisons of a descent read only the
/// B-tree node and not the id on the heap (a cache miss each, ~18 per descent at 200,000 ids).
#[derive(Clone)]
struct IdKey {
    head: u128,
    id: Arc<str>,
}

impl IdKey {
    fn new(id: Arc<str>) -> Self {
        Self {
            head: folded_head(&id),
            id,
        }
    }
}

/// The first 16 bytes of `id`, ASCII case folded, zero-padded, as one big-endian number: where
/// two heads differ, they order as the folded ids do (a shorter id pads with zeros, below any
/// byte that could follow, as a prefix orders before the ids it starts); where they are equal,
/// the ids decide ([`compare_ids`]).
fn folded_head(id: &str) -> u128 {
    let mut bytes = [0u8; 16];
    for (to, from) in bytes.iter_mut().zip(id.as_bytes()) {
        *to = from.to_ascii_lowercase();
    }
    u128::from_be_bytes(bytes)
}

/// What the id indexes compare: an owned [`IdKey`] or a borrowed id to look up (a trait object,
/// so that a `&str` can be looked up without building a key).
trait IdView {
    fn head(&self) -> u128;
    fn id(&self) -> &str;
}

impl IdView for IdKey {
    fn head(&self) -> u128 {
        self.head
    }
    fn id(&self) -> &str {
        &self.id
    }
}

/// An id to look up in an id index.
struct Lookup<'a> {
    head: u128,
    id: &'a str,
}

impl IdView for Lookup<'_> {
    fn head(&self) -> u128 {
        self.head
    }
    fn id(&self) -> &str {
        self.id
    }
}

fn lookup(id: &str) -> Lookup<'_> {
    Lookup {
        head: folded_head(id),
        id,
    }
}

fn compare_ids(a: &str, b: &str) -> Ordering {
    // Ids share long prefixes (the gateway's start with the caller's 22-character tag), and a
    // descent compares ~18 of them: skip the bytes that are equal as they are, 8 at a time, and
    // fold case only from the first difference. Equal bytes fold equal, so the order is that of
    // folding the whole ids.
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let same = common_prefix_len(a, b);
    let (ra, rb) = (&a[same..], &b[same..]);
    ra.iter()
        .map(u8::to_ascii_lowercase)
        .cmp(rb.iter().map(u8::to_ascii_lowercase))
        .then_with(|| ra.cmp(rb))
}

/// How many leading bytes `a` and `b` have in common.
fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let word = |s: &[u8]| u64::from_ne_bytes(s[i..i + 8].try_into().unwrap_or_default());
        if word(a) != word(b) {
            break;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

impl PartialEq for dyn IdView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for dyn IdView + '_ {}

impl PartialOrd for dyn IdView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn IdView + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head()
            .cmp(&other.head())
            .then_with(|| compare_ids(self.id(), other.id()))
    }
}

impl PartialEq for IdKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for IdKey {}

impl PartialOrd for IdKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IdKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| compare_ids(&self.id, &other.id))
    }
}

impl<'a> Borrow<dyn IdView + 'a> for IdKey {
    fn borrow(&self) -> &(dyn IdView + 'a) {
        self
    }
}

/// Whether `id` starts with `prefix`, ASCII case ignored.
pub fn has_prefix(id: &str, prefix: &str) -> bool {
    id.len() >= prefix.len()
        && id.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The ids of an index that start with `prefix` (any case), with their slots.
fn prefix_range<'a>(
    index: &'a BTreeMap<IdKey, usize>,
    prefix: &'a str,
) -> impl Iterator<Item = usize> + 'a {
    // Of the ids that fold to the same string, the all-upper-case one orders first.
    let lowest = IdKey::new(Arc::from(prefix.to_ascii_uppercase()));
    index
        .range((Bound::Included(lowest), Bound::Unbounded))
        .take_while(move |(key, _)| has_prefix(&key.id, prefix))
        .map(|(_, slot)| *slot)
}

/// Slots handed out for change before the unfinished index is brought up to date anyway.
const MAX_UNSETTLED: usize = 4096;

#[derive(Default)]
pub struct Instances {
    slots: Vec<Option<Box<Instance>>>,
    free: Vec<usize>,
    by_id: BTreeMap<IdKey, usize>,
    by_created: BTreeMap<CreatedKey, usize>,
    /// The instances not finished (as of the last [`Instances::settle`]).
    unfinished: BTreeMap<IdKey, usize>,
    /// Slots handed out by `get_mut` since the last settle: their status may have changed.
    unsettled: Vec<usize>,
    /// Each slot's share of the state estimate as last counted ([`instance_bytes`]), and their
    /// sum: kept as instances come, change (counted again when settled) and go, so that the
    /// estimate never walks every instance under the engine lock.
    counted: Vec<usize>,
    bytes: usize,
}

impl Instances {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn get(&self, id: &str) -> Option<&Instance> {
        let slot = *self.by_id.get(&lookup(id) as &dyn IdView)?;
        self.slots[slot].as_deref()
    }

    /// The instance to change. Its id and creation time are its keys here and must not change
    /// (nothing does: a new execution under the same id is a new instance, inserted anew).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Instance> {
        let slot = *self.by_id.get(&lookup(id) as &dyn IdView)?;
        if self.unsettled.len() >= MAX_UNSETTLED {
            self.settle();
        }
        self.unsettled.push(slot);
        self.slots[slot].as_deref_mut()
    }

    /// Brings the unfinished index and the byte count up to date with the slots changed since.
    pub fn settle(&mut self) {
        for slot in std::mem::take(&mut self.unsettled) {
            let Some(i) = self.slots[slot].as_deref() else {
                continue;
            };
            let now = instance_bytes(i);
            self.bytes = self.bytes - self.counted[slot] + now;
            self.counted[slot] = now;
            let id = i.row.instance_id.as_str();
            if is_terminal(i.row.status) {
                self.unfinished.remove(&lookup(id) as &dyn IdView);
            } else if !self.unfinished.contains_key(&lookup(id) as &dyn IdView) {
                self.unfinished.insert(IdKey::new(Arc::from(id)), slot);
            }
        }
    }

    /// Adds an instance, replacing the one with the same id.
    pub fn insert(&mut self, instance: Box<Instance>) {
        self.remove(&instance.row.instance_id);
        let id: Arc<str> = Arc::from(instance.row.instance_id.as_str());
        let created = instance.row.created;
        let finished = is_terminal(instance.row.status);
        let bytes = instance_bytes(&instance);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(instance);
                self.counted[slot] = bytes;
                slot
            }
            None => {
                self.slots.push(Some(instance));
                self.counted.push(bytes);
                self.slots.len() - 1
            }
        };
        self.bytes += bytes;
        self.by_created.insert((created, id.clone()), slot);
        let key = IdKey::new(id);
        if !finished {
            self.unfinished.insert(key.clone(), slot);
        }
        self.by_id.insert(key, slot);
    }

    pub fn remove(&mut self, id: &str) -> Option<Box<Instance>> {
        let (IdKey { id, .. }, slot) = self.by_id.remove_entry(&lookup(id) as &dyn IdView)?;
        self.unfinished.remove(&lookup(&id) as &dyn IdView);
        let instance = self.slots[slot].take()?;
        self.bytes -= std::mem::take(&mut self.counted[slot]);
        self.by_created.remove(&(instance.row.created, id));
        self.free.push(slot);
        Some(instance)
    }

    /// Every instance, in id order (case-insensitive).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Instance)> {
        self.by_id
            .iter()
            .filter_map(|(key, slot)| Some((key.id.as_ref(), self.slots[*slot].as_deref()?)))
    }

    /// Every instance, in no particular order (slot order: a walk of one vector rather than of
    /// a B-tree, for the sweeps that visit every instance).
    pub fn values(&self) -> impl Iterator<Item = &Instance> {
        self.slots.iter().filter_map(|s| s.as_deref())
    }

    /// The instances' share of the state estimate ([`instance_bytes`]), as of the last settle
    /// for the instances changed since.
    pub fn bytes(&self) -> usize {
        self.bytes
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

    /// The instances whose id starts with `prefix` (ASCII case ignored), all of them or only
    /// the unfinished ones, in id order; `None` past `limit` of them (the caller then walks the
    /// creation index instead). Call [`Instances::settle`] first for the unfinished ones.
    pub fn with_prefix(
        &self,
        prefix: &str,
        unfinished_only: bool,
        limit: usize,
    ) -> Option<Vec<&Instance>> {
        let index = if unfinished_only {
            &self.unfinished
        } else {
            &self.by_id
        };
        let mut found = Vec::new();
        for slot in prefix_range(index, prefix) {
            if found.len() == limit {
                return None;
            }
            if let Some(i) = self.slots[slot].as_deref() {
                found.push(i);
            }
        }
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceRow;

    fn instance(id: &str, created_secs: i64) -> Box<Instance> {
        let created = DateTime::from_timestamp(created_secs, 0).expect("time");
        Box::new(Instance {
            row: InstanceRow::for_test(id, "o", 0, created),
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
    fn the_id_order_skipping_common_bytes_is_the_folded_order() {
        fn naive(a: &str, b: &str) -> Ordering {
            let (a, b) = (a.as_bytes(), b.as_bytes());
            a.iter()
                .map(u8::to_ascii_lowercase)
                .cmp(b.iter().map(u8::to_ascii_lowercase))
                .then_with(|| a.cmp(b))
        }
        let stems = [
            "",
            "a",
            "A",
            "ab",
            "aB",
            "abcdefgh",
            "ABCDEFGH",
            "abcdefghi",
        ];
        let tails = [
            "",
            "x",
            "X",
            "0123456789",
            "0123456789abcdefZ",
            "_",
            "é",
            "\0",
            "\0a",
        ];
        let ids: Vec<String> = ["", "caller-", "caller-tag-0123456789"]
            .iter()
            .flat_map(|p| stems.iter().map(move |s| format!("{p}{s}")))
            .flat_map(|ps| tails.iter().map(move |t| format!("{ps}{t}")))
            .chain(["", "b", "B", "caller", "\0", "a\0", "a\0\0b"].map(String::from))
            .collect();
        for a in &ids {
            for b in &ids {
                let want = naive(a, b);
                assert_eq!(compare_ids(a, b), want, "{a:?} vs {b:?}");
                // The keys, with their folded heads, and a lookup against a key.
                let (ka, kb) = (
                    IdKey::new(Arc::from(a.as_str())),
                    IdKey::new(Arc::from(b.as_str())),
                );
                assert_eq!(ka.cmp(&kb), want, "keys {a:?} vs {b:?}");
                let la = lookup(a);
                assert_eq!(
                    (&la as &dyn IdView).cmp(&kb as &dyn IdView),
                    want,
                    "lookup {a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn the_byte_count_follows_inserts_changes_replacements_and_removals() {
        let walked = |all: &Instances| all.values().map(instance_bytes).sum::<usize>();
        let mut all = Instances::default();
        all.insert(instance("a", 1));
        all.insert(instance("b", 2));
        assert_eq!(all.bytes(), walked(&all));
        all.get_mut("a").expect("a").row.output = Some("x".repeat(10_000));
        all.settle();
        assert_eq!(all.bytes(), walked(&all));
        assert!(all.bytes() > 10_000);
        let mut bigger = instance("b", 2);
        bigger.row.input = Some("y".repeat(5_000));
        all.insert(bigger);
        assert_eq!(all.bytes(), walked(&all));
        all.remove("a");
        assert_eq!(all.bytes(), walked(&all));
        assert!(all.bytes() < 10_000);
        all.insert(instance("c", 3));
        all.remove("b");
        all.remove("c");
        assert_eq!(all.bytes(), 0);
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

    fn ids(found: Option<Vec<&Instance>>) -> Vec<&str> {
        found
            .expect("within the limit")
            .into_iter()
            .map(|i| i.row.instance_id.as_str())
            .collect()
    }

    #[test]
    fn a_prefix_is_one_range_of_the_id_index_in_any_case() {
        let mut all = Instances::default();
        for (n, id) in ["abc1", "ABC2", "aBd", "ab", "Abc3", "abcz", "b", "aa"]
            .into_iter()
            .enumerate()
        {
            all.insert(instance(id, n as i64));
        }
        assert_eq!(
            ids(all.with_prefix("abc", false, 100)),
            ["abc1", "ABC2", "Abc3", "abcz"]
        );
        assert_eq!(
            ids(all.with_prefix("ABC", false, 100)),
            ["abc1", "ABC2", "Abc3", "abcz"]
        );
        assert_eq!(ids(all.with_prefix("abd", false, 100)), ["aBd"]);
        assert!(ids(all.with_prefix("abe", false, 100)).is_empty());
        assert_eq!(all.with_prefix("ab", false, 5).map(|v| v.len()), None);
        // Exact lookups still tell cases apart.
        assert!(all.get("ABC1").is_none());
        assert_eq!(all.get("ABC2").map(|i| i.row.created.timestamp()), Some(1));
    }

    #[test]
    fn the_unfinished_index_follows_status_changes_once_settled() {
        use durabletask_proto::OrchestrationStatus as S;
        let mut all = Instances::default();
        for (n, id) in ["op-1", "op-2", "op-3", "other"].into_iter().enumerate() {
            all.insert(instance(id, n as i64));
        }
        assert_eq!(
            ids(all.with_prefix("op-", true, 100)),
            ["op-1", "op-2", "op-3"]
        );
        all.get_mut("op-2").expect("op-2").row.status = S::Completed as i32;
        all.get_mut("op-3").expect("op-3").row.status = S::Failed as i32;
        all.settle();
        assert_eq!(ids(all.with_prefix("op-", true, 100)), ["op-1"]);
        // A rewound instance runs again.
        all.get_mut("op-3").expect("op-3").row.status = S::Running as i32;
        all.settle();
        assert_eq!(ids(all.with_prefix("op-", true, 100)), ["op-1", "op-3"]);
        // A finished instance inserted (a restart loading the store) is not unfinished; removal
        // takes an instance out of every index.
        let mut done = instance("op-4", 9);
        done.row.status = S::Terminated as i32;
        all.insert(done);
        all.remove("op-1");
        assert_eq!(ids(all.with_prefix("op-", true, 100)), ["op-3"]);
        assert_eq!(
            ids(all.with_prefix("op-", false, 100)),
            ["op-2", "op-3", "op-4"]
        );
        // Many changes without a query settle on their own, so the list of them stays bounded.
        for _ in 0..(MAX_UNSETTLED * 3) {
            all.get_mut("op-3");
        }
        assert!(all.unsettled.len() <= MAX_UNSETTLED);
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
