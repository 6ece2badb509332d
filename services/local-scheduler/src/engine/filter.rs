//! Work-item filters: which orchestrations and activities a stream takes.

use durabletask_proto as pb;
use std::collections::{HashMap, HashSet};

/// What a work-item stream asks for. `None`: everything. `Some(map)`: only those names (an
/// empty map means nothing of that kind), each with its accepted versions (empty: any version).
#[derive(Debug, Clone, Default)]
pub struct StreamFilter {
    pub orchestrations: Option<HashMap<String, HashSet<String>>>,
    pub activities: Option<HashMap<String, HashSet<String>>>,
}

pub(super) fn filter_map<'a>(
    items: impl Iterator<Item = (&'a String, &'a Vec<String>)>,
) -> HashMap<String, HashSet<String>> {
    let mut m: HashMap<String, HashSet<String>> = HashMap::new();
    for (name, versions) in items {
        m.entry(name.clone())
            .or_default()
            .extend(versions.iter().cloned());
    }
    m
}

pub(super) fn accepts(
    filter: &Option<HashMap<String, HashSet<String>>>,
    name: &str,
    version: Option<&str>,
) -> bool {
    match filter {
        None => true,
        Some(m) => m.get(name).is_some_and(|versions| {
            versions.is_empty() || versions.contains(version.unwrap_or(""))
        }),
    }
}

impl StreamFilter {
    pub fn from_request(f: Option<&pb::WorkItemFilters>) -> Self {
        let Some(f) = f else { return Self::default() };
        Self {
            orchestrations: Some(filter_map(
                f.orchestrations.iter().map(|o| (&o.name, &o.versions)),
            )),
            activities: Some(filter_map(
                f.activities.iter().map(|a| (&a.name, &a.versions)),
            )),
        }
    }

    pub(super) fn accepts_orchestration(&self, name: &str, version: Option<&str>) -> bool {
        accepts(&self.orchestrations, name, version)
    }

    pub(super) fn accepts_activity(&self, name: &str, version: Option<&str>) -> bool {
        accepts(&self.activities, name, version)
    }
}
