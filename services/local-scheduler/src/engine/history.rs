//! Reading histories: the current execution's, from memory or (a finished instance with a store)
//! from disk through the server, and loading on-disk histories back before a rewind.

use durabletask_proto as pb;
use std::collections::HashSet;

use super::{Engine, EngineError, HistoryView};

impl Engine {
    /// The history of an instance's current execution, in order. `None` when there is no such
    /// instance, or `execution_id` names another execution (only the current one is kept).
    pub fn history(
        &mut self,
        hub: &str,
        id: &str,
        execution_id: Option<&str>,
    ) -> Result<Option<HistoryView>, EngineError> {
        Ok(self
            .hub(hub)?
            .instances
            .get(id)
            .filter(|i| execution_id.is_none_or(|e| e == i.row.execution_id))
            .map(|i| match i.history_on_disk {
                Some(_) => HistoryView::OnDisk,
                None => HistoryView::Loaded(i.history.clone()),
            }))
    }

    /// The instances of the subtree at `id` (itself and its sub-orchestrations, recursively)
    /// whose history is on disk only: what a rewind of `id` must load first.
    pub fn unloaded_subtree(&self, hub: &str, id: &str) -> Vec<String> {
        let Some(h) = self.hubs.get(hub) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut todo = vec![id.to_string()];
        let mut seen = HashSet::new();
        while let Some(next) = todo.pop() {
            if !seen.insert(next.clone()) {
                continue;
            }
            if let Some(i) = h.instances.get(&next) {
                if i.history_on_disk.is_some() {
                    out.push(next.clone());
                }
                todo.extend(i.children());
            }
        }
        out
    }

    /// Puts an on-disk history back in memory (before a rewind needs it).
    pub fn hydrate(&mut self, hub: &str, id: &str, history: Vec<pb::HistoryEvent>) {
        if let Some(i) = self
            .hubs
            .get_mut(hub)
            .and_then(|h| h.instances.get_mut(id))
            .filter(|i| i.history_on_disk.is_some())
        {
            i.history = history;
            i.history_on_disk = None;
        }
    }
}
