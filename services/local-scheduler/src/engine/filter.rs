//! Work-item filters: which orchestrations and activities a stream takes.

use durabletask_proto as pb;
use std::collections::{HashMap, HashSet};

/// What a work-item stream asks for. `None`: everything. `Some(map)`: only those names (an
/// empty map means nothing of that kind), each with its accepted versions (empty: any version).
#[derive(Debug, Clone, Default)]
pub struct StreamFilter {
    pub orchestrations: Option<HashMap<String, HashSet<String>>>,
    pub activities: Option<HashMap<String, HashSet<String>>>,
    /// Entity names (lower case, as entity ids carry them).
    pub entities: Option<HashSet<String>>,
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
            entities: Some(f.entities.iter().map(|e| e.name.to_lowercase()).collect()),
        }
    }

    pub(super) fn accepts_entity(&self, name: &str) -> bool {
        self.entities
            .as_ref()
            .is_none_or(|names| names.contains(name))
    }

    pub(super) fn accepts_orchestration(&self, name: &str, version: Option<&str>) -> bool {
        accepts(&self.orchestrations, name, version)
    }

    /// An activity scheduled without a version is matched by its orchestration's version
    /// (`orchestration_version`, looked up only when the filter names versions): DTS
    /// dispatches the activities of an orchestration started at `3.0.0` to a worker whose
    /// filters name `3.0.0` for both, although the JavaScript and Python SDKs schedule
    /// activities without a version (the Go SDK sends the orchestration's).
    pub(super) fn accepts_activity<'a>(
        &self,
        name: &str,
        version: Option<&'a str>,
        orchestration_version: impl FnOnce() -> Option<&'a str>,
    ) -> bool {
        let Some(m) = &self.activities else {
            return true;
        };
        let Some(versions) = m.get(name) else {
            return false;
        };
        if versions.is_empty() {
            return true;
        }
        let version = match version.filter(|v| !v.is_empty()) {
            Some(v) => Some(v),
            None => orchestration_version(),
        };
        versions.contains(version.unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(versions: &[&str]) -> StreamFilter {
        let versions = versions.iter().map(|v| v.to_string()).collect();
        StreamFilter {
            orchestrations: None,
            activities: Some(HashMap::from([("greet".to_string(), versions)])),
            entities: None,
        }
    }

    #[test]
    fn an_activity_without_a_version_is_matched_by_its_orchestrations() {
        let f = filter(&["3.0.0"]);
        assert!(f.accepts_activity("greet", Some("3.0.0"), || None));
        assert!(!f.accepts_activity("greet", Some("2.0.0"), || Some("3.0.0")));
        assert!(f.accepts_activity("greet", None, || Some("3.0.0")));
        assert!(f.accepts_activity("greet", Some(""), || Some("3.0.0")));
        assert!(!f.accepts_activity("greet", None, || Some("2.0.0")));
        assert!(!f.accepts_activity("greet", None, || None));
        assert!(!f.accepts_activity("other", None, || Some("3.0.0")));
        // No versions named: the orchestration is not looked up.
        let any = filter(&[]);
        assert!(any.accepts_activity("greet", None, || panic!("looked up")));
        assert!(StreamFilter::default().accepts_activity("x", None, || panic!("looked up")));
    }
}
