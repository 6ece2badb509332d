//! What the list page shows, read through the protocol's one query: a page of instances
//! (filtered by name here, across the scheduler's pages, since the protocol has no name filter)
//! and the counts by status over every instance the other filters match.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use durabletask::{Client, InstanceQuery, OrchestrationMetadata, OrchestrationStatus};

use contract::status::RUNTIME_STATUSES as STATUSES;

/// Rows read from the scheduler per query while counting.
const COUNT_PAGE: u32 = 1_000;
/// Rows one list page reads at most while searching by name; past that the page ends where the
/// search stopped and its next link goes on from there.
const SEARCH_BUDGET: usize = 20_000;
/// Rows counted at most: past that the counts are shown as lower bounds (a hosted scheduler
/// can hold millions; the page must still answer).
const COUNT_BUDGET: usize = 200_000;
/// How long counts are reused: the list refreshes every 5 s, and counting reads every row.
const COUNT_TTL: Duration = Duration::from_secs(5);
/// Distinct filter sets whose counts are kept.
const COUNT_CACHE_ENTRIES: usize = 64;

/// One page of the list.
pub(crate) struct Listing {
    pub rows: Vec<OrchestrationMetadata>,
    /// Where the next page starts (the scheduler's own token).
    pub next: Option<String>,
    /// Rows a name search read and passed over, when it stopped at its budget with more to read.
    pub searched: Option<usize>,
}

/// Rows read per query while searching by name: a few pages' worth, so a rare name needs few
/// queries and a common one does not read far past its page.
fn search_page(page_size: u32) -> u32 {
    (page_size * 4).min(COUNT_PAGE)
}

/// The page of `query` whose rows are named `name` (any name when empty). A name search reads
/// whole scheduler pages until it has `page_size` rows (the scheduler's token can only resume
/// after a whole page), so a page holds from `page_size` to `page_size + search_page - 1` rows,
/// or fewer at the end.
pub(crate) async fn page(
    client: &Client,
    mut query: InstanceQuery,
    name: &str,
    page_size: u32,
) -> Result<Listing, durabletask::Error> {
    if name.is_empty() {
        query.page_size = Some(page_size);
        let found = client.query_instances(query).await?;
        return Ok(Listing {
            rows: found.instances,
            next: found.continuation_token,
            searched: None,
        });
    }
    query.page_size = Some(search_page(page_size));
    let mut rows = Vec::new();
    let mut read = 0;
    loop {
        let found = client.query_instances(query.clone()).await?;
        read += found.instances.len();
        rows.extend(found.instances.into_iter().filter(|i| i.name == name));
        let next = found.continuation_token;
        let stop = next.is_none() || rows.len() >= page_size as usize;
        if stop || read >= SEARCH_BUDGET {
            let searched = (!stop).then_some(read);
            return Ok(Listing {
                rows,
                next,
                searched,
            });
        }
        query.continuation_token = next;
    }
}

/// Instances by status over everything a set of filters matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// In the order of [`STATUSES`].
    pub by_status: [usize; STATUSES.len()],
    /// Counting stopped at its budget: each figure is a lower bound.
    pub partial: bool,
}

impl Counts {
    pub(crate) fn total(&self) -> usize {
        self.by_status.iter().sum()
    }
}

/// Counts recently made, by filters; one count at a time (a burst of refreshes reads the rows
/// once).
#[derive(Default)]
pub(crate) struct CountCache {
    kept: Mutex<HashMap<String, (Instant, Counts)>>,
    counting: tokio::sync::Mutex<()>,
}

impl CountCache {
    /// The counts for `query` (its status filter and paging ignored) and `name`.
    pub(crate) async fn counts(
        &self,
        client: &Client,
        query: &InstanceQuery,
        name: &str,
    ) -> Result<Counts, durabletask::Error> {
        let key = format!(
            "{:?}|{:?}|{:?}|{name}",
            query.instance_id_prefix, query.created_from, query.created_to
        );
        if let Some(c) = self.fresh(&key) {
            return Ok(c);
        }
        let _one_at_a_time = self.counting.lock().await;
        if let Some(c) = self.fresh(&key) {
            return Ok(c);
        }
        let counts = count(client, query, name).await?;
        let mut kept = self.kept.lock().expect("count cache");
        if kept.len() >= COUNT_CACHE_ENTRIES {
            kept.retain(|_, (at, _)| at.elapsed() < COUNT_TTL);
            if kept.len() >= COUNT_CACHE_ENTRIES {
                kept.clear();
            }
        }
        kept.insert(key, (Instant::now(), counts.clone()));
        Ok(counts)
    }

    fn fresh(&self, key: &str) -> Option<Counts> {
        let kept = self.kept.lock().expect("count cache");
        kept.get(key)
            .filter(|(at, _)| at.elapsed() < COUNT_TTL)
            .map(|(_, c)| c.clone())
    }
}

async fn count(
    client: &Client,
    query: &InstanceQuery,
    name: &str,
) -> Result<Counts, durabletask::Error> {
    let mut query = InstanceQuery {
        runtime_status: Vec::new(),
        page_size: Some(COUNT_PAGE),
        continuation_token: None,
        fetch_inputs_and_outputs: false,
        ..query.clone()
    };
    let mut counts = Counts::default();
    let mut read = 0;
    loop {
        let found = client.query_instances(query.clone()).await?;
        read += found.instances.len();
        for i in found
            .instances
            .iter()
            .filter(|i| name.is_empty() || i.name == name)
        {
            if let Some(slot) = status_slot(i.runtime_status) {
                counts.by_status[slot] += 1;
            }
        }
        match found.continuation_token {
            None => return Ok(counts),
            Some(_) if read >= COUNT_BUDGET => {
                counts.partial = true;
                return Ok(counts);
            }
            next => query.continuation_token = next,
        }
    }
}

fn status_slot(s: OrchestrationStatus) -> Option<usize> {
    STATUSES.iter().position(|(st, _)| *st == s)
}
