//! The gRPC face of the engine: `TaskHubSidecarService` as DTS serves it.
//!
//! - this module: the shared state (`Shared`: the engine behind its mutex, the store, wake-ups),
//!   the helpers every RPC uses, and the one mapping of `EngineError` to gRPC statuses;
//! - `rpc`: the service's methods;
//! - `dispatch`: the loop that feeds one worker's work-item stream, and its spans;
//! - `backend`: DTS's `BackendService` as far as we serve it (`BeginWorkerDrain`, `GetMetrics`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use durabletask_proto as pb;
use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use opentelemetry::KeyValue;
use service_kit::telemetry::TraceParent;

use crate::engine::{Engine, EngineError, StreamFilter};
use crate::model::Change;
use crate::store::SqliteStore;

mod backend;
mod dispatch;
mod journal;
mod rpc;

pub use backend::Backend;

/// How often finished instances are checked against their retention (a scan of every instance,
/// so not on every timer tick).
const RETENTION_SWEEP: Duration = Duration::from_secs(2);

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub orchestrations_dispatched: AtomicU64,
    pub activities_dispatched: AtomicU64,
    pub entities_dispatched: AtomicU64,
    pub orchestrations_completed: AtomicU64,
    pub activities_completed: AtomicU64,
    pub entities_completed: AtomicU64,
    pub abandoned: AtomicU64,
    pub redelivered: AtomicU64,
    /// Work items failed as poison (their workers kept being lost), by kind.
    pub poisoned_orchestrations: AtomicU64,
    pub poisoned_activities: AtomicU64,
    pub store_errors: AtomicU64,
    pub long_poll_wakeups: AtomicU64,
}

pub struct Shared {
    engine: Mutex<Engine>,
    /// The store's writer (group commit); `None` in memory.
    journal: Option<Arc<journal::Journal>>,
    /// Woken when new work may be available.
    work: Notify,
    /// The long polls (`WaitForInstance*`) by (hub, instance): a change wakes only its own
    /// instance's waiters.
    waiters: Mutex<HashMap<(String, String), Arc<Notify>>>,
    /// Woken when a timer was added, so the timer task re-plans.
    timers: Notify,
    next_stream: AtomicU64,
    pub shutdown: CancellationToken,
    ping_interval: Duration,
    pub counters: Counters,
    /// The open work-item streams, by stream id: whose they are and whether they drain.
    streams: Mutex<HashMap<u64, StreamEntry>>,
    /// Whether spans are exported (OTLP configured): only then are dispatch spans built.
    trace_spans: AtomicBool,
    /// Set once a state change could not be persisted (or a lock was poisoned): memory may then be
    /// ahead of disk, so the scheduler refuses everything and stops; a restart reloads the last
    /// committed state (fail-stop).
    failed: std::sync::OnceLock<String>,
}

impl Shared {
    /// Turns the scheduler's own spans on (see [`dispatch_span`]).
    pub fn set_trace_spans(&self, on: bool) {
        self.trace_spans.store(on, Ordering::Relaxed);
    }

    fn tracing(&self) -> bool {
        self.trace_spans.load(Ordering::Relaxed)
    }

    pub fn new(
        engine: Engine,
        store: Option<SqliteStore>,
        ping_interval: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine: Mutex::new(engine),
            journal: store.map(|s| journal::Journal::start(Arc::new(Mutex::new(s)))),
            work: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
            timers: Notify::new(),
            next_stream: AtomicU64::new(1),
            shutdown,
            ping_interval,
            counters: Counters::default(),
            streams: Mutex::new(HashMap::new()),
            trace_spans: AtomicBool::new(false),
            failed: std::sync::OnceLock::new(),
        })
    }

    /// Why the scheduler stopped serving, if a storage or lock failure made it stop.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Stops the scheduler for good after a failure that may leave memory ahead of disk: every
    /// later call is refused, streams end, and `serve` returns an error (the process exits
    /// non-zero, and its restart reloads what was committed).
    fn fail_stop(&self, reason: String) -> Status {
        if self.failed.set(reason.clone()).is_ok() {
            tracing::error!(%reason, "stopping: the scheduler's state can no longer be trusted to match its store");
        }
        self.shutdown.cancel();
        self.refusal()
    }

    /// Why `quiet` had no engine to offer: stopped after a failure (the same refusal as every
    /// other call then), or a poisoned lock.
    pub fn no_engine(&self) -> Status {
        if self.failed.get().is_some() {
            self.refusal()
        } else {
            Status::internal("scheduler state is poisoned")
        }
    }

    fn refusal(&self) -> Status {
        Status::unavailable(format!(
            "the scheduler stopped after a failure ({}); it reloads its last committed state when restarted",
            self.failure().unwrap_or("unknown")
        ))
    }

    /// An instance's history from the store, for a finished instance whose history is on disk
    /// only. A read failure is a plain error: memory is not ahead of disk.
    pub fn stored_history(
        &self,
        hub: &str,
        id: &str,
    ) -> Result<Option<Vec<pb::HistoryEvent>>, Status> {
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        let store = journal
            .store()
            .lock()
            .map_err(|_| self.fail_stop("the store lock is poisoned".into()))?;
        store
            .history(hub, id)
            .map_err(|e| Status::unavailable(format!("could not read the history: {e}")))
    }

    /// The store writer's counts (`None` in memory).
    pub fn store_stats(&self) -> Option<&journal::StoreStats> {
        self.journal.as_ref().map(|j| &j.stats)
    }

    /// Health of what readiness depends on: no failure, neither lock poisoned.
    pub fn health(&self) -> Result<(), String> {
        if let Some(reason) = self.failure() {
            return Err(format!("stopped after a failure: {reason}"));
        }
        if self.engine.is_poisoned() {
            return Err("the engine lock is poisoned".into());
        }
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.store().is_poisoned())
        {
            return Err("the store lock is poisoned".into());
        }
        Ok(())
    }

    /// Runs one engine operation; once its changes (and everything queued before them) are on
    /// disk, wakes whoever waits and answers.
    pub async fn with_engine<T, E: Into<Status>>(
        &self,
        f: impl FnOnce(&mut Engine) -> Result<T, E>,
    ) -> Result<T, Status> {
        if self.failed.get().is_some() {
            return Err(self.refusal());
        }
        let (result, touched, timer_added, seq) = {
            let mut engine = self
                .engine
                .lock()
                .map_err(|_| self.fail_stop("the engine lock is poisoned".into()))?;
            let result = f(&mut engine);
            let touched = engine.take_touched();
            let changes = engine.take_changes();
            let timer_added = changes.iter().any(|c| matches!(c, Change::PutTimer { .. }));
            // Queued under the engine lock: the journal is in engine order.
            let seq = self.journal.as_ref().map(|j| j.queue(changes));
            (result, touched, timer_added, seq)
        };
        // Woken before the change is durable: dispatch loops and long polls read through
        // `observe`, which waits for it, so a work item goes out with this caller's answer
        // (after the same transaction) rather than after the one that follows it.
        self.work.notify_waiters();
        self.wake(&touched);
        if timer_added {
            self.timers.notify_one();
        }
        self.committed(seq).await?;
        result.map_err(Into::into)
    }

    /// Reads engine state and answers only once everything that state reflects is on disk, so
    /// no caller or worker sees a change a crash could take back.
    pub async fn observe<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> Result<T, Status> {
        if self.failed.get().is_some() {
            return Err(self.refusal());
        }
        let (value, seq) = {
            let mut engine = self.engine.lock().map_err(|_| self.no_engine())?;
            let value = f(&mut engine);
            (value, self.journal.as_ref().map(|j| j.queue(Vec::new())))
        };
        self.committed(seq).await?;
        Ok(value)
    }

    /// Waits for `seq` to be durable; a failed write stops the scheduler (memory is ahead of
    /// disk; undoing the change would need every engine operation to be reversible).
    async fn committed(&self, seq: Option<u64>) -> Result<(), Status> {
        let (Some(journal), Some(seq)) = (&self.journal, seq) else {
            return Ok(());
        };
        if journal.is_durable(seq) {
            return Ok(());
        }
        journal.durable(seq).await.map_err(|e| {
            self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
            self.fail_stop(format!("could not persist a state change: {e}"))
        })
    }

    /// Wakes the long polls of the instances that changed (and nobody else).
    fn wake(&self, touched: &[(String, String)]) {
        if touched.is_empty() {
            return;
        }
        let Ok(waiters) = self.waiters.lock() else {
            return;
        };
        if waiters.is_empty() {
            return;
        }
        for key in touched {
            if let Some(n) = waiters.get(key) {
                n.notify_waiters();
            }
        }
    }

    /// Registers a long poll on one instance; dropping the guard unregisters it.
    pub fn waiter(&self, hub: &str, instance_id: &str) -> Waiter<'_> {
        let key = (hub.to_string(), instance_id.to_string());
        let notify = self
            .waiters
            .lock()
            .map(|mut w| w.entry(key.clone()).or_default().clone())
            .unwrap_or_default();
        Waiter {
            shared: self,
            key,
            notify,
        }
    }

    /// Engine access for operations that change nothing durable and must not wake anyone
    /// (taking work: a dispatch loop waking itself would spin).
    pub fn quiet<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> Option<T> {
        if self.failed.get().is_some() {
            return None;
        }
        self.engine.lock().ok().map(|mut e| f(&mut e))
    }

    /// Points the engine's dispatch-latency histograms at the ones `/metrics` exposes.
    pub fn set_dispatch_latency(&self, latency: crate::engine::DispatchLatency) {
        if let Ok(mut e) = self.engine.lock() {
            e.dispatch_latency = latency;
        }
    }

    pub fn engine_snapshot<T>(&self, f: impl FnOnce(&Engine) -> T) -> Option<T> {
        self.engine.lock().ok().map(|e| f(&e))
    }

    /// Fires due timers, forever (until shutdown).
    pub async fn run_timers(self: Arc<Self>) {
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut last_purge = std::time::Instant::now();
        loop {
            let planned = self.timers.notified();
            let sweep_retention = last_purge.elapsed() >= RETENTION_SWEEP;
            // Only a due timer or the retention sweep changes anything: otherwise nothing is
            // written and nobody is woken.
            let due = self.quiet(|e| e.next_timer_due()).flatten();
            if !sweep_retention && due.is_none_or(|t| t > Utc::now()) {
                let wait = due
                    .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1));
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = planned => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let next = self
                .with_engine(|e| {
                    let now = Utc::now();
                    if sweep_retention {
                        let purged = e.purge_expired(now);
                        e.recount_state();
                        if purged > 0 {
                            tracing::info!(
                                purged,
                                "purged finished instances past their retention"
                            );
                        }
                    }
                    Ok::<_, EngineError>(e.fire_due_timers(now))
                })
                .await
                .unwrap_or(None);
            if sweep_retention {
                last_purge = std::time::Instant::now();
            }
            let wait = next
                .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = planned => {}
                _ = tokio::time::sleep(wait) => {}
                _ = sweep.tick() => {}
            }
        }
    }
}

/// One open work-item stream.
struct StreamEntry {
    hub: String,
    /// The worker's `workerid` header, which `BeginWorkerDrain` names it by.
    worker_id: Option<String>,
    /// Set by `BeginWorkerDrain`: nothing more is dispatched on the stream, which stays open
    /// (its leases with it) until the worker closes it.
    draining: Arc<AtomicBool>,
}

impl Shared {
    fn open_stream(&self, id: u64, hub: &str, worker_id: Option<String>) -> Arc<AtomicBool> {
        let draining = Arc::new(AtomicBool::new(false));
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(
                id,
                StreamEntry {
                    hub: hub.to_string(),
                    worker_id,
                    draining: draining.clone(),
                },
            );
        }
        draining
    }

    fn close_stream(&self, id: u64) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.remove(&id);
        }
    }

    /// Puts every open stream of `worker_id` in `hub` into drain; how many there were.
    pub fn begin_drain(&self, hub: &str, worker_id: &str) -> usize {
        // Under the engine lock, which dispatch loops read the flag under: once this returns,
        // no loop takes anything more for the worker.
        let engine_guard = self.engine.lock();
        let n = self.streams.lock().map_or(0, |streams| {
            streams
                .values()
                .filter(|s| s.hub == hub && s.worker_id.as_deref() == Some(worker_id))
                .inspect(|s| s.draining.store(true, Ordering::Relaxed))
                .count()
        });
        drop(engine_guard);
        // Their dispatch loops look at the flag again (and stop taking work).
        self.work.notify_waiters();
        n
    }

    /// Open streams, and how many of them drain.
    pub fn stream_counts(&self) -> (usize, usize) {
        self.streams.lock().map_or((0, 0), |streams| {
            let draining = streams
                .values()
                .filter(|s| s.draining.load(Ordering::Relaxed))
                .count();
            (streams.len(), draining)
        })
    }

    /// Distinct workers with an open stream (a stream without a `workerid` counts alone).
    pub fn connected_workers(&self) -> usize {
        self.streams.lock().map_or(0, |streams| {
            let named: std::collections::HashSet<(&str, &str)> = streams
                .values()
                .filter_map(|s| Some((s.hub.as_str(), s.worker_id.as_deref()?)))
                .collect();
            named.len() + streams.values().filter(|s| s.worker_id.is_none()).count()
        })
    }
}

#[derive(Clone)]
pub struct Service {
    pub shared: Arc<Shared>,
}

fn hub_of<T>(req: &Request<T>) -> Result<String, Status> {
    req.metadata()
        .get("taskhub")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            Status::invalid_argument("missing `taskhub` header: every call must name its task hub")
        })
}

/// The worker's `workerid` header, as the SDKs send it on their calls.
fn worker_id_of<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("workerid")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

type Res<T> = Result<Response<T>, Status>;
type WorkStream<T = pb::WorkItem> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Service {
    /// A read-only call: no store write, no wake-ups; answered once what it read is durable.
    async fn read<T, R>(
        &self,
        req: &Request<R>,
        f: impl FnOnce(&mut Engine, &str) -> Result<T, EngineError>,
    ) -> Res<T> {
        let hub = hub_of(req)?;
        self.shared
            .observe(|e| {
                e.hub(&hub)?;
                f(e, &hub)
            })
            .await?
            .map(Response::new)
            .map_err(Into::into)
    }

    async fn op<T, R>(
        &self,
        req: &Request<R>,
        f: impl FnOnce(&mut Engine, &str) -> Result<T, EngineError>,
    ) -> Res<T> {
        let hub = hub_of(req)?;
        self.shared
            .with_engine(|e| {
                e.hub(&hub)?;
                f(e, &hub)
            })
            .await
            .map(Response::new)
    }

    /// Hands a leased work item back to its queue; an unknown token is `NOT_FOUND`.
    async fn abandon<R>(&self, req: &Request<R>, token: &str) -> Result<(), Status> {
        self.op(req, |e, _| {
            if e.release(token) {
                Ok(())
            } else {
                Err(EngineError::not_found(
                    "unknown or expired completion token",
                ))
            }
        })
        .await?;
        self.shared
            .counters
            .abandoned
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn wait_for(
        &self,
        req: Request<pb::GetInstanceRequest>,
        done: impl Fn(&pb::OrchestrationState) -> bool,
    ) -> Res<pb::GetInstanceResponse> {
        let hub = hub_of(&req)?;
        let r = req.into_inner();
        let waiter = self.shared.waiter(&hub, &r.instance_id);
        loop {
            // Created before the state is read: a change in between still wakes it.
            let changed = waiter.notify.notified();
            let state = self
                .shared
                .observe(|e| e.get(&hub, &r.instance_id, r.get_inputs_and_outputs))
                .await??;
            match state {
                None => {
                    return Ok(Response::new(pb::GetInstanceResponse {
                        exists: false,
                        orchestration_state: None,
                    }));
                }
                Some(s) if done(&s) => {
                    return Ok(Response::new(pb::GetInstanceResponse {
                        exists: true,
                        orchestration_state: Some(s),
                    }));
                }
                Some(_) => {}
            }
            // Held until the state changes; the caller's deadline or disconnect cancels this future.
            tokio::select! {
                _ = changed => {
                    self.shared.counters.long_poll_wakeups.fetch_add(1, Ordering::Relaxed);
                }
                _ = self.shared.shutdown.cancelled() => return Err(Status::unavailable("the scheduler is shutting down")),
            }
        }
    }
}

/// The engine's refusals as gRPC statuses: the one place where the engine meets gRPC.
impl From<EngineError> for Status {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidArgument(m) => Status::invalid_argument(m),
            EngineError::NotFound(m) => Status::not_found(m),
            EngineError::AlreadyExists(m) => Status::already_exists(m),
            EngineError::FailedPrecondition(m) => Status::failed_precondition(m),
            EngineError::ResourceExhausted(m) => Status::resource_exhausted(m),
        }
    }
}

/// A registered long poll; see [`Shared::waiter`].
pub struct Waiter<'a> {
    shared: &'a Shared,
    key: (String, String),
    pub notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.shared.waiters.lock()
            // Ours and the map's: nobody else waits on this instance.
            && Arc::strong_count(&self.notify) == 2
        {
            waiters.remove(&self.key);
        }
    }
}
