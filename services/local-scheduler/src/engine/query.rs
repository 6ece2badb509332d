//! Queries: pages of instances in (created, id) order with keyset continuation tokens, by
//! prefix from the id index, and pages of ids.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use durabletask_proto as pb;

use super::{Engine, EngineError, instances};
use crate::model::{Instance, from_ts, is_terminal};

impl Engine {
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

    use crate::engine::start_for_test as start;

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
