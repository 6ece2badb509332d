//! The gRPC face of the engine: `TaskHubSidecarService` as DTS serves it.

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

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub orchestrations_dispatched: AtomicU64,
    pub activities_dispatched: AtomicU64,
    pub orchestrations_completed: AtomicU64,
    pub activities_completed: AtomicU64,
    pub abandoned: AtomicU64,
    pub redelivered: AtomicU64,
    pub streams_open: AtomicU64,
    pub store_errors: AtomicU64,
}

pub struct Shared {
    engine: Mutex<Engine>,
    store: Option<Mutex<SqliteStore>>,
    /// Woken when new work may be available.
    work: Notify,
    /// Woken on every state change, for the long-poll RPCs.
    changed: Notify,
    /// Woken when a timer was added, so the timer task re-plans.
    timers: Notify,
    next_stream: AtomicU64,
    pub shutdown: CancellationToken,
    ping_interval: Duration,
    pub counters: Counters,
    /// Whether spans are exported (OTLP configured): only then are dispatch spans built.
    trace_spans: AtomicBool,
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
            store: store.map(Mutex::new),
            work: Notify::new(),
            changed: Notify::new(),
            timers: Notify::new(),
            next_stream: AtomicU64::new(1),
            shutdown,
            ping_interval,
            counters: Counters::default(),
            trace_spans: AtomicBool::new(false),
        })
    }

    /// Runs one engine operation, writes its changes in one transaction, then wakes whoever waits.
    pub fn with_engine<T, E: Into<Status>>(
        &self,
        f: impl FnOnce(&mut Engine) -> Result<T, E>,
    ) -> Result<T, Status> {
        let mut engine = self
            .engine
            .lock()
            .map_err(|_| Status::internal("scheduler state is poisoned"))?;
        let result = f(&mut engine);
        let changes = engine.take_changes();
        let timer_added = changes.iter().any(|c| matches!(c, Change::PutTimer { .. }));
        if let Some(store) = &self.store
            && let Err(e) = store
                .lock()
                .map_err(|_| "store lock poisoned".to_string())
                .and_then(|mut s| s.apply(changes).map_err(|e| e.to_string()))
        {
            self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "could not persist a state change");
            return Err(Status::unavailable(format!(
                "the scheduler could not persist the change: {e}"
            )));
        }
        drop(engine);
        self.work.notify_waiters();
        self.changed.notify_waiters();
        if timer_added {
            self.timers.notify_one();
        }
        result.map_err(Into::into)
    }

    /// Engine access for operations that change nothing durable and must not wake anyone
    /// (taking work: a dispatch loop waking itself would spin).
    pub fn quiet<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> Option<T> {
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

    /// Fires due timers and expires leases, forever (until shutdown).
    pub async fn run_timers(self: Arc<Self>) {
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            let planned = self.timers.notified();
            let next = self.with_engine(|e| {
                let now = Utc::now();
                let expired = e.expire_leases(now);
                Ok::<_, EngineError>((e.fire_due_timers(now), expired))
            });
            let (next, expired) = next.unwrap_or((None, 0));
            if expired > 0 {
                self.counters
                    .redelivered
                    .fetch_add(expired as u64, Ordering::Relaxed);
                tracing::info!(
                    count = expired,
                    "leases expired; work items will be redelivered"
                );
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

type Res<T> = Result<Response<T>, Status>;
type WorkStream = Pin<Box<dyn Stream<Item = Result<pb::WorkItem, Status>> + Send>>;

impl Service {
    /// A read-only call: no store write, no wake-ups.
    fn read<T, R>(
        &self,
        req: &Request<R>,
        f: impl FnOnce(&mut Engine, &str) -> Result<T, EngineError>,
    ) -> Res<T> {
        let hub = hub_of(req)?;
        self.shared
            .quiet(|e| {
                e.hub(&hub)?;
                f(e, &hub)
            })
            .ok_or_else(|| Status::internal("scheduler state is poisoned"))?
            .map(Response::new)
            .map_err(Into::into)
    }

    fn op<T, R>(
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
            .map(Response::new)
    }

    /// Hands a leased work item back to its queue; an unknown token is `NOT_FOUND`.
    fn abandon<R>(&self, req: &Request<R>, token: &str) -> Result<(), Status> {
        self.op(req, |e, _| {
            if e.release(token) {
                Ok(())
            } else {
                Err(EngineError::not_found(
                    "unknown or expired completion token",
                ))
            }
        })?;
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
        loop {
            let changed = self.shared.changed.notified();
            let state = self
                .shared
                .quiet(|e| e.get(&hub, &r.instance_id, r.get_inputs_and_outputs))
                .ok_or_else(|| Status::internal("scheduler state is poisoned"))??;
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
                _ = changed => {}
                _ = self.shared.shutdown.cancelled() => return Err(Status::unavailable("the scheduler is shutting down")),
            }
        }
    }
}

fn entities_unsupported() -> Status {
    Status::unimplemented("durable entities are not supported by the local scheduler")
}

#[tonic::async_trait]
impl pb::TaskHubSidecarService for Service {
    async fn hello(&self, req: Request<()>) -> Res<()> {
        self.read(&req, |_, _| Ok(()))
    }

    async fn start_instance(
        &self,
        req: Request<pb::CreateInstanceRequest>,
    ) -> Res<pb::CreateInstanceResponse> {
        let hub = hub_of(&req)?;
        let r = req.into_inner();
        let traced = self
            .shared
            .tracing()
            .then(|| {
                r.parent_trace_context
                    .as_ref()
                    .map(|t| (t.trace_parent.clone(), r.name.clone()))
            })
            .flatten();
        let started = std::time::SystemTime::now();
        let instance_id = self.shared.with_engine(|e| e.start_instance(&hub, r))?;
        if let Some((parent, name)) = traced {
            service_kit::telemetry::record_finished_span(
                SPAN_SCOPE,
                "TaskHubSidecarService/StartInstance".into(),
                opentelemetry::trace::SpanKind::Server,
                &parent,
                started,
                std::time::SystemTime::now(),
                vec![
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", "TaskHubSidecarService"),
                    KeyValue::new("rpc.method", "StartInstance"),
                    KeyValue::new("durabletask.type", "orchestration"),
                    KeyValue::new("durabletask.task.name", name),
                    KeyValue::new("durabletask.task.instance_id", instance_id.clone()),
                    KeyValue::new("operation.id", instance_id.clone()),
                ],
            );
        }
        Ok(Response::new(pb::CreateInstanceResponse { instance_id }))
    }

    async fn get_instance(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Res<pb::GetInstanceResponse> {
        let r = req.get_ref().clone();
        self.read(&req, |e, hub| {
            let state = e.get(hub, &r.instance_id, r.get_inputs_and_outputs)?;
            Ok(pb::GetInstanceResponse {
                exists: state.is_some(),
                orchestration_state: state,
            })
        })
    }

    async fn wait_for_instance_start(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Res<pb::GetInstanceResponse> {
        let pending = pb::OrchestrationStatus::Pending as i32;
        self.wait_for(req, |s| s.orchestration_status != pending)
            .await
    }

    async fn wait_for_instance_completion(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Res<pb::GetInstanceResponse> {
        self.wait_for(req, |s| crate::model::is_terminal(s.orchestration_status))
            .await
    }

    async fn raise_event(
        &self,
        req: Request<pb::RaiseEventRequest>,
    ) -> Res<pb::RaiseEventResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.raise_event(hub, r).map(|_| pb::RaiseEventResponse {})
        })
    }

    async fn terminate_instance(
        &self,
        req: Request<pb::TerminateRequest>,
    ) -> Res<pb::TerminateResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.terminate(hub, r).map(|_| pb::TerminateResponse {})
        })
    }

    async fn suspend_instance(&self, req: Request<pb::SuspendRequest>) -> Res<pb::SuspendResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.suspend(hub, &r.instance_id, r.reason)
                .map(|_| pb::SuspendResponse {})
        })
    }

    async fn resume_instance(&self, req: Request<pb::ResumeRequest>) -> Res<pb::ResumeResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.resume(hub, &r.instance_id, r.reason)
                .map(|_| pb::ResumeResponse {})
        })
    }

    async fn restart_instance(
        &self,
        req: Request<pb::RestartInstanceRequest>,
    ) -> Res<pb::RestartInstanceResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.restart(hub, &r.instance_id, r.restart_with_new_instance_id)
                .map(|instance_id| pb::RestartInstanceResponse { instance_id })
        })
    }

    async fn rewind_instance(
        &self,
        req: Request<pb::RewindInstanceRequest>,
    ) -> Res<pb::RewindInstanceResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.rewind(hub, &r.instance_id, r.reason)
                .map(|_| pb::RewindInstanceResponse {})
        })
    }

    async fn query_instances(
        &self,
        req: Request<pb::QueryInstancesRequest>,
    ) -> Res<pb::QueryInstancesResponse> {
        let q = req.get_ref().query.clone().unwrap_or_default();
        self.read(&req, |e, hub| e.query(hub, &q))
    }

    async fn list_instance_ids(
        &self,
        req: Request<pb::ListInstanceIdsRequest>,
    ) -> Res<pb::ListInstanceIdsResponse> {
        let r = req.get_ref().clone();
        self.read(&req, |e, hub| e.list_ids(hub, &r))
    }

    async fn purge_instances(
        &self,
        req: Request<pb::PurgeInstancesRequest>,
    ) -> Res<pb::PurgeInstancesResponse> {
        use pb::purge_instances_request::Request as R;
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            let deleted = match r.request {
                Some(R::InstanceId(id)) => e.purge_one(hub, &id, r.recursive)?,
                Some(R::PurgeInstanceFilter(f)) => e.purge_filter(hub, &f, r.recursive)?,
                Some(R::InstanceBatch(b)) => {
                    if b.instance_ids.len() > 500 {
                        return Err(EngineError::invalid_argument(
                            "at most 500 instance ids per batch purge",
                        ));
                    }
                    let mut n = 0;
                    for id in b.instance_ids {
                        n += e.purge_one(hub, &id, r.recursive).unwrap_or(0);
                    }
                    n
                }
                None => {
                    return Err(EngineError::invalid_argument(
                        "purge needs an instance id, a filter or a batch",
                    ));
                }
            };
            Ok(pb::PurgeInstancesResponse {
                deleted_instance_count: deleted,
                is_complete: Some(true),
            })
        })
    }

    async fn get_work_items(&self, req: Request<pb::GetWorkItemsRequest>) -> Res<WorkStream> {
        let hub = hub_of(&req)?;
        self.read(&req, |_, _| Ok(()))?;
        let r = req.into_inner();
        let limit = |n: i32| if n > 0 { n as usize } else { 1000 };
        let max_orch = limit(r.max_concurrent_orchestration_work_items);
        let max_act = limit(r.max_concurrent_activity_work_items);
        let filter = StreamFilter::from_request(r.work_item_filters.as_ref());
        let stream_id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(256);
        let shared = self.shared.clone();
        shared.counters.streams_open.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream_id, %hub, max_orch, max_act, "worker connected");
        tokio::spawn(async move {
            dispatch_loop(&shared, &hub, stream_id, max_orch, max_act, &filter, tx).await;
            let released = shared.with_engine(|e| {
                let n = e.release_stream(stream_id);
                e.forget_stream(stream_id);
                Ok::<_, EngineError>(n)
            });
            shared.counters.streams_open.fetch_sub(1, Ordering::Relaxed);
            let released = released.unwrap_or(0);
            if released > 0 {
                shared
                    .counters
                    .redelivered
                    .fetch_add(released as u64, Ordering::Relaxed);
            }
            tracing::info!(
                stream_id,
                released,
                "worker disconnected; its in-flight work items are queued again"
            );
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn complete_activity_task(
        &self,
        req: Request<pb::ActivityResponse>,
    ) -> Res<pb::CompleteTaskResponse> {
        let hub = hub_of(&req)?;
        let r = req.into_inner();
        self.shared.with_engine(|e| e.complete_activity(&hub, r))?;
        self.shared
            .counters
            .activities_completed
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn complete_orchestrator_task(
        &self,
        req: Request<pb::OrchestratorResponse>,
    ) -> Res<pb::CompleteTaskResponse> {
        let hub = hub_of(&req)?;
        let r = req.into_inner();
        #[allow(deprecated)]
        let partial = r.is_partial;
        self.shared
            .with_engine(|e| e.complete_orchestration(&hub, r))?;
        if partial {
            return Ok(Response::new(pb::CompleteTaskResponse {}));
        }
        self.shared
            .counters
            .orchestrations_completed
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn abandon_task_activity_work_item(
        &self,
        req: Request<pb::AbandonActivityTaskRequest>,
    ) -> Res<pb::AbandonActivityTaskResponse> {
        let token = req.get_ref().completion_token.clone();
        self.abandon(&req, &token)?;
        Ok(Response::new(pb::AbandonActivityTaskResponse {}))
    }

    async fn abandon_task_orchestrator_work_item(
        &self,
        req: Request<pb::AbandonOrchestrationTaskRequest>,
    ) -> Res<pb::AbandonOrchestrationTaskResponse> {
        let token = req.get_ref().completion_token.clone();
        self.abandon(&req, &token)?;
        Ok(Response::new(pb::AbandonOrchestrationTaskResponse {}))
    }

    async fn signal_entity(
        &self,
        _r: Request<pb::SignalEntityRequest>,
    ) -> Res<pb::SignalEntityResponse> {
        Err(entities_unsupported())
    }
    async fn get_entity(&self, _r: Request<pb::GetEntityRequest>) -> Res<pb::GetEntityResponse> {
        Err(entities_unsupported())
    }
    async fn query_entities(
        &self,
        _r: Request<pb::QueryEntitiesRequest>,
    ) -> Res<pb::QueryEntitiesResponse> {
        Err(entities_unsupported())
    }
    async fn clean_entity_storage(
        &self,
        _r: Request<pb::CleanEntityStorageRequest>,
    ) -> Res<pb::CleanEntityStorageResponse> {
        Err(entities_unsupported())
    }
    async fn complete_entity_task(
        &self,
        _r: Request<pb::EntityBatchResult>,
    ) -> Res<pb::CompleteTaskResponse> {
        Err(entities_unsupported())
    }
    async fn abandon_task_entity_work_item(
        &self,
        _r: Request<pb::AbandonEntityTaskRequest>,
    ) -> Res<pb::AbandonEntityTaskResponse> {
        Err(entities_unsupported())
    }
}

/// The instrumentation scope of the scheduler's spans.
const SPAN_SCOPE: &str = "local-scheduler";

/// A span for the time a work item waited in the scheduler before a worker got it, in the
/// operation's trace: an orchestration's below its orchestration span (or, before that span
/// exists, below `create_orchestration`), an activity's below the call that scheduled it. So a
/// trace shows queueing apart from execution.
fn dispatch_span(item: &pb::WorkItem, waited: Duration) {
    let now = std::time::SystemTime::now();
    let start = now.checked_sub(waited).unwrap_or(now);
    let (kind, name, instance_id, parent) = match &item.request {
        Some(pb::work_item::Request::OrchestratorRequest(r)) => {
            let Some(started) = crate::engine::execution_started(r) else {
                return;
            };
            let Some(created) = started.parent_trace_context.as_ref() else {
                return;
            };
            // The orchestration span (same trace, the id the worker pinned) once it exists.
            let parent = match r
                .orchestration_trace_context
                .as_ref()
                .and_then(|t| t.span_id.as_deref())
            {
                Some(span_id) => match TraceParent::parse(&created.trace_parent) {
                    Some(tp) => tp.with_span(span_id),
                    None => return,
                },
                None => created.trace_parent.clone(),
            };
            (
                "orchestration",
                started.name.clone(),
                r.instance_id.clone(),
                parent,
            )
        }
        Some(pb::work_item::Request::ActivityRequest(r)) => {
            let Some(parent) = r.parent_trace_context.as_ref() else {
                return;
            };
            let instance_id = r
                .orchestration_instance
                .as_ref()
                .map(|i| i.instance_id.clone())
                .unwrap_or_default();
            (
                "activity",
                r.name.clone(),
                instance_id,
                parent.trace_parent.clone(),
            )
        }
        _ => return,
    };
    service_kit::telemetry::record_finished_span(
        SPAN_SCOPE,
        format!("dispatch {kind}:{name}"),
        opentelemetry::trace::SpanKind::Internal,
        &parent,
        start,
        now,
        vec![
            KeyValue::new("durabletask.type", kind),
            KeyValue::new("durabletask.task.name", name),
            KeyValue::new("durabletask.task.instance_id", instance_id.clone()),
            KeyValue::new("operation.id", instance_id),
            KeyValue::new(
                "durabletask.dispatch.wait_ms",
                waited.as_secs_f64() * 1000.0,
            ),
        ],
    );
}

/// Feeds one worker stream: as many items as its limits allow, health pings when idle.
async fn dispatch_loop(
    shared: &Arc<Shared>,
    hub: &str,
    stream_id: u64,
    max_orch: usize,
    max_act: usize,
    filter: &StreamFilter,
    tx: mpsc::Sender<Result<pb::WorkItem, Status>>,
) {
    let mut ping = tokio::time::interval(shared.ping_interval);
    ping.reset();
    loop {
        let notified = shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let items = shared
            .quiet(|e| {
                let mut items = Vec::new();
                loop {
                    let (o, a) = e.in_flight(stream_id);
                    let mut took = false;
                    if o < max_orch
                        && let Some(item) = e.take_orchestration(hub, stream_id, filter)
                    {
                        items.push(item);
                        took = true;
                    }
                    if a < max_act
                        && let Some(item) = e.take_activity(hub, stream_id, filter)
                    {
                        items.push(item);
                        took = true;
                    }
                    if !took || items.len() >= 256 {
                        break;
                    }
                }
                items
            })
            .unwrap_or_default();
        let sent_any = !items.is_empty();
        let tracing = shared.tracing();
        for (item, waited) in items {
            if tracing && let Some(waited) = waited {
                dispatch_span(&item, waited);
            }
            match item.request {
                Some(pb::work_item::Request::OrchestratorRequest(_)) => {
                    &shared.counters.orchestrations_dispatched
                }
                _ => &shared.counters.activities_dispatched,
            }
            .fetch_add(1, Ordering::Relaxed);
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        if sent_any {
            ping.reset();
            continue;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = ping.tick() => {
                let ping = pb::WorkItem { request: Some(pb::work_item::Request::HealthPing(pb::HealthPing {})), completion_token: String::new() };
                if tx.send(Ok(ping)).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
            // Dropping the sender ends the stream with status OK: "drain and reconnect".
            _ = shared.shutdown.cancelled() => return,
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
