//! The worker: holds a `GetWorkItems` stream open, runs what arrives, and reports back.
//!
//! - `Hello`, then the stream with explicit `maxConcurrent*` so the scheduler never sends more
//!   than we are willing to run; local semaphores enforce the same bound.
//! - Every completion and abandon echoes the work item's `completionToken`.
//! - Health pings (or any message) reset a silent-disconnect timer; when it runs out the stream
//!   is presumed dead and rebuilt.
//! - Any end of the stream other than shutdown leads to a reconnect with full-jitter backoff,
//!   forever: a worker outliving a scheduler restart is the normal case.
//! - Shutdown is a drain that repeats nothing (`drain`): the stream stays open while the items
//!   this worker holds finish, so the scheduler never hands them to another worker; what still
//!   arrives is handed back at once. Past a deadline the rest is cancelled and abandoned.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use durabletask_proto as pb;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::client::GrpcClient;
use crate::connection::{Caller, Connection, MAX_DECODE_BYTES, default_worker_id};

mod drain;
mod items;
mod payloads;

use items::{
    abandon_activity, abandon_orchestration, orchestration_name, run_activity, run_entity,
    run_orchestration,
};

use crate::registry::Registry;

/// Tuning knobs; the defaults suit one worker process on a small node.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub max_concurrent_orchestrations: usize,
    pub max_concurrent_activities: usize,
    /// Entity work items at once (each one batch of one entity's operations).
    pub max_concurrent_entities: usize,
    /// With no message (health pings included) for this long, the stream is rebuilt.
    pub silent_disconnect_timeout: Duration,
    pub hello_timeout: Duration,
    /// Cap of the full-jitter reconnect backoff.
    pub max_reconnect_delay: Duration,
    /// How long in-flight work items may run after shutdown starts before they are cancelled and
    /// abandoned (another worker then runs them again). Cover the longest activity.
    pub drain_timeout: Duration,
    /// Ask the scheduler for registered names only (`workItemFilters`).
    pub use_work_item_filters: bool,
    /// The orchestration versions this worker's code replays. `Some`: it asks only for work of
    /// these versions (work-item filters on every registered name; `""` is an unversioned
    /// instance), so workers of several code versions share a task hub during a rollout and each
    /// instance runs on the code that started it. `None`: any version.
    pub versions: Option<Vec<String>>,
    /// Sent as `workerid`; `<host>,<pid>,<uuid>` when `None`.
    pub worker_id: Option<String>,
    /// Told about every work item, stream state change and finished orchestration (metrics).
    pub observer: Option<Arc<dyn WorkerObserver>>,
    /// Large payloads (the claim check): read back in work items, stored from completions over
    /// the threshold; the worker then tells the scheduler it has the `LARGE_PAYLOADS`
    /// capability.
    pub payloads: Option<crate::payload::Payloads>,
}

/// The kinds of work this worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkItemKind {
    Orchestration,
    Activity,
    Entity,
}

impl WorkItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Orchestration => "orchestration",
            Self::Activity => "activity",
            Self::Entity => "entity",
        }
    }
}

/// How a work item ended on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkItemOutcome {
    /// Completed and reported (an orchestration episode, or an activity that returned a value).
    Completed,
    /// Reported as a failure (an activity error, or an episode that failed its orchestration).
    Failed,
    /// Handed back to the scheduler (shutdown) or never reported (the completion call failed):
    /// the scheduler will run it again.
    Abandoned,
}

impl WorkItemOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
        }
    }
}

/// Hooks for metrics. Every method has an empty default; they run on the worker's tasks, so
/// keep them cheap and never block.
pub trait WorkerObserver: Send + Sync + std::fmt::Debug + 'static {
    /// A work item arrived and is about to run.
    fn work_item_started(&self, _kind: WorkItemKind, _name: &str) {}
    /// A work item ended on this worker after `took`. `trace_id` is the operation's trace (hex),
    /// when it has one: for exemplars, so a slow bucket leads to a trace.
    fn work_item_finished(
        &self,
        _kind: WorkItemKind,
        _name: &str,
        _outcome: WorkItemOutcome,
        _took: Duration,
        _trace_id: Option<&str>,
    ) {
    }
    /// The work-item stream connected (`true`) or went away (`false`).
    fn stream_state(&self, _connected: bool) {}
    /// Shutdown began: this worker takes no new work and waits for what it holds.
    fn draining(&self) {}
    /// An orchestration episode ended its instance; `age` is the time since it started.
    fn orchestration_ended(
        &self,
        _name: &str,
        _failed: bool,
        _age: Option<Duration>,
        _trace_id: Option<&str>,
    ) {
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            max_concurrent_orchestrations: 100,
            max_concurrent_activities: 100,
            max_concurrent_entities: 100,
            silent_disconnect_timeout: Duration::from_secs(120),
            hello_timeout: Duration::from_secs(30),
            max_reconnect_delay: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            use_work_item_filters: false,
            versions: None,
            worker_id: None,
            observer: None,
            payloads: None,
        }
    }
}

/// Running totals, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub orchestrations_completed: AtomicU64,
    pub activities_completed: AtomicU64,
    pub activities_failed: AtomicU64,
    pub work_items_abandoned: AtomicU64,
    pub completion_errors: AtomicU64,
    pub health_pings: AtomicU64,
    pub streams_opened: AtomicU64,
}

impl WorkerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

enum StreamEnd {
    /// Shutdown began (and, on an open stream, the drain is done).
    Shutdown,
    /// The server closed the stream with OK: a drain or rolling upgrade. Reconnect.
    ServerClosed,
    Failed(String),
}

struct Shared {
    grpc: GrpcClient,
    /// DTS's `BackendService` on the same channel and headers: `BeginWorkerDrain`.
    backend: drain::BackendClient,
    registry: Arc<Registry>,
    orchestration_slots: Arc<Semaphore>,
    activity_slots: Arc<Semaphore>,
    entity_slots: Arc<Semaphore>,
    tracker: TaskTracker,
    /// Cancelled when the drain deadline passes: in-flight activities stop and are abandoned.
    abort: CancellationToken,
    stats: Arc<WorkerStats>,
    observer: Option<Arc<dyn WorkerObserver>>,
    payloads: Option<crate::payload::Payloads>,
}

impl Shared {
    fn started(&self, kind: WorkItemKind, name: &str) -> std::time::Instant {
        if let Some(o) = &self.observer {
            o.work_item_started(kind, name);
        }
        std::time::Instant::now()
    }

    fn finished(
        &self,
        kind: WorkItemKind,
        name: &str,
        outcome: WorkItemOutcome,
        since: std::time::Instant,
        trace_id: Option<&str>,
    ) {
        if let Some(o) = &self.observer {
            o.work_item_finished(kind, name, outcome, since.elapsed(), trace_id);
        }
    }
}

/// A Durable Task worker. Build it, then `run` it until the shutdown token is cancelled.
pub struct Worker {
    shared: Arc<Shared>,
    options: WorkerOptions,
    ready: watch::Sender<bool>,
    worker_id: String,
    /// Set when shutdown is first noticed: `drain_timeout` later.
    drain_deadline: std::sync::OnceLock<tokio::time::Instant>,
}

impl Worker {
    pub fn new(conn: &Connection, registry: Registry, options: WorkerOptions) -> Self {
        let worker_id = options.worker_id.clone().unwrap_or_else(default_worker_id);
        let grpc = pb::TaskHubSidecarServiceClient::with_interceptor(
            conn.channel(),
            conn.interceptor(Caller::Worker, Some(&worker_id)),
        )
        .max_decoding_message_size(MAX_DECODE_BYTES)
        .max_encoding_message_size(MAX_DECODE_BYTES);
        let backend = pb::backend::backend_service_client::BackendServiceClient::with_interceptor(
            conn.channel(),
            conn.interceptor(Caller::Worker, Some(&worker_id)),
        );
        let shared = Arc::new(Shared {
            grpc,
            backend,
            registry: Arc::new(registry),
            orchestration_slots: Arc::new(Semaphore::new(
                options.max_concurrent_orchestrations.max(1),
            )),
            activity_slots: Arc::new(Semaphore::new(options.max_concurrent_activities.max(1))),
            entity_slots: Arc::new(Semaphore::new(options.max_concurrent_entities.max(1))),
            tracker: TaskTracker::new(),
            abort: CancellationToken::new(),
            stats: Arc::new(WorkerStats::default()),
            observer: options.observer.clone(),
            payloads: options.payloads.clone(),
        });
        let (ready, _) = watch::channel(false);
        Self {
            shared,
            options,
            ready,
            worker_id,
            drain_deadline: std::sync::OnceLock::new(),
        }
    }

    /// `true` while the work-item stream is connected; for readiness probes.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.shared.stats.clone()
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Processes work until `shutdown` is cancelled, then drains. Only returns after the drain.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut attempt: u32 = 0;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let end = self.stream_once(&shutdown, &mut attempt).await;
            if self.ready.send_replace(false)
                && let Some(o) = &self.shared.observer
            {
                o.stream_state(false);
            }
            match end {
                StreamEnd::Shutdown => break,
                StreamEnd::ServerClosed => {
                    tracing::info!("scheduler closed the work-item stream; reconnecting")
                }
                StreamEnd::Failed(reason) => {
                    tracing::warn!(%reason, attempt, "work-item stream failed; reconnecting")
                }
            }
            let delay = full_jitter(attempt, self.options.max_reconnect_delay);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        // Shutdown came while no stream was open (or the drain on it is done): what still runs
        // gets the rest of the deadline. Without a stream its completions may be refused.
        self.wait_for_in_flight().await;
        Ok(())
    }

    async fn stream_once(&self, shutdown: &CancellationToken, attempt: &mut u32) -> StreamEnd {
        let mut grpc = self.shared.grpc.clone();
        let mut hello = tonic::Request::new(());
        hello.set_timeout(self.options.hello_timeout);
        let opened = async {
            grpc.hello(hello).await?;
            grpc.get_work_items(self.work_items_request()).await
        };
        let mut stream = tokio::select! {
            _ = shutdown.cancelled() => return StreamEnd::Shutdown,
            r = opened => match r {
                Ok(resp) => resp.into_inner(),
                Err(status) => return StreamEnd::Failed(format!("{:?}: {}", status.code(), status.message())),
            },
        };
        bump(&self.shared.stats.streams_opened);
        self.ready.send_replace(true);
        if let Some(o) = &self.shared.observer {
            o.stream_state(true);
        }
        tracing::info!(worker_id = %self.worker_id, "work-item stream connected");
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.drain_on_stream(stream).await;
                    return StreamEnd::Shutdown;
                }
                r = tokio::time::timeout(self.options.silent_disconnect_timeout, stream.message()) => r,
            };
            match next {
                Err(_) => {
                    return StreamEnd::Failed(format!(
                        "no message for {:?} (silent disconnect)",
                        self.options.silent_disconnect_timeout
                    ));
                }
                Ok(Err(status)) => {
                    return StreamEnd::Failed(format!("{:?}: {}", status.code(), status.message()));
                }
                Ok(Ok(None)) => return StreamEnd::ServerClosed,
                Ok(Ok(Some(item))) => {
                    *attempt = 0;
                    self.dispatch(item, shutdown).await;
                }
            }
        }
    }

    fn work_items_request(&self) -> pb::GetWorkItemsRequest {
        let as_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let versions = self.options.versions.clone().unwrap_or_default();
        let filters =
            (self.options.use_work_item_filters || self.options.versions.is_some()).then(|| {
                pb::WorkItemFilters {
                    orchestrations: self
                        .shared
                        .registry
                        .orchestrator_names()
                        .map(|n| pb::OrchestrationFilter {
                            name: n.to_string(),
                            versions: versions.clone(),
                        })
                        .collect(),
                    // Activities carry the version of the orchestration that scheduled them.
                    activities: self
                        .shared
                        .registry
                        .activity_names()
                        .map(|n| pb::ActivityFilter {
                            name: n.to_string(),
                            versions: versions.clone(),
                        })
                        .collect(),
                    entities: self
                        .shared
                        .registry
                        .entity_names()
                        .map(|n| pb::EntityFilter {
                            name: n.to_string(),
                        })
                        .collect(),
                }
            });
        pb::GetWorkItemsRequest {
            max_concurrent_orchestration_work_items: as_i32(
                self.options.max_concurrent_orchestrations,
            ),
            max_concurrent_activity_work_items: as_i32(self.options.max_concurrent_activities),
            // 0 without entities, as before they existed here (a scheduler may still send
            // entity work, which this worker then hands back).
            max_concurrent_entity_work_items: if self
                .shared
                .registry
                .entity_names()
                .next()
                .is_some()
            {
                as_i32(self.options.max_concurrent_entities)
            } else {
                0
            },
            capabilities: self.shared.capabilities(),
            work_item_filters: filters,
        }
    }

    /// Starts one work item. When shutdown begins while it waits for a slot, it goes back to the
    /// scheduler at once.
    async fn dispatch(&self, item: pb::WorkItem, shutdown: &CancellationToken) {
        use pb::work_item::Request;
        let shared = self.shared.clone();
        let slots = match &item.request {
            Some(Request::OrchestratorRequest(_)) => &shared.orchestration_slots,
            Some(Request::ActivityRequest(_)) => &shared.activity_slots,
            Some(Request::HealthPing(_)) => {
                bump(&shared.stats.health_pings);
                return;
            }
            Some(Request::EntityRequestV2(_))
                if shared.registry.entity_names().next().is_some() =>
            {
                &shared.entity_slots
            }
            Some(Request::EntityRequest(_) | Request::EntityRequestV2(_)) => {
                tracing::warn!(
                    "received an entity work item, and this worker has no entities (or the older form); abandoning it"
                );
                drain::hand_back(&shared, item).await;
                return;
            }
            None => {
                tracing::warn!("received an empty work item");
                return;
            }
        };
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            _ = shutdown.cancelled() => {
                drain::hand_back(&shared, item).await;
                return;
            }
        };
        let token = item.completion_token;
        let s = shared.clone();
        match item.request {
            Some(Request::OrchestratorRequest(req)) => {
                shared.tracker.spawn(async move {
                    let _permit = permit;
                    run_orchestration(&s, req, token).await;
                });
            }
            Some(Request::ActivityRequest(req)) => {
                shared.tracker.spawn(async move {
                    let _permit = permit;
                    run_activity(&s, req, token).await;
                });
            }
            Some(Request::EntityRequestV2(req)) => {
                shared.tracker.spawn(async move {
                    let _permit = permit;
                    run_entity(&s, req, token).await;
                });
            }
            _ => {}
        }
    }
}

/// Full jitter: uniform in `[0, min(cap, 1 s × 2^attempt)]`.
pub(crate) fn full_jitter(attempt: u32, cap: Duration) -> Duration {
    let ceiling = Duration::from_secs(1u64 << attempt.min(20)).min(cap);
    let ms = ceiling.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rand::random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_the_cap() {
        for attempt in 0..40 {
            let d = full_jitter(attempt, Duration::from_secs(30));
            assert!(d <= Duration::from_secs(30));
            assert!(d <= Duration::from_secs(1u64 << attempt.min(20)));
        }
    }
}
