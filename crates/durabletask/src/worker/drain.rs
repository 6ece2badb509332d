//! Shutdown without repeated work.
//!
//! A scheduler hands a work item to another worker when the stream it was dispatched on ends, so
//! a worker that closed its stream on SIGTERM had its running activities run a second time
//! elsewhere while they were still running here. The drain instead:
//!
//! 1. tells the scheduler, with DTS's `BackendService.BeginWorkerDrain`, to stop dispatching to
//!    this worker while keeping its stream open (a scheduler without it answers UNIMPLEMENTED;
//!    nothing else changes then);
//! 2. keeps reading the stream and hands back (abandons) whatever still arrives, so it goes to
//!    another worker at once: the one rule that works against any scheduler, Azure DTS included;
//! 3. waits for the items it holds to complete over the open stream, up to the drain deadline;
//!    past it, cancels them and abandons them (another worker runs them again);
//! 4. closes the stream.

use std::time::Duration;

use durabletask_proto as pb;
use tokio::time::Instant;

use super::{
    Shared, WorkItemKind, WorkItemOutcome, Worker, abandon_activity, abandon_orchestration, bump,
};
use crate::connection::MetadataInterceptor;

pub(super) type BackendClient = pb::backend::backend_service_client::BackendServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, MetadataInterceptor>,
>;

/// Bound on the `BeginWorkerDrain` call: the drain goes on without it.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on abandoning what is still running once the deadline passed: shutdown always ends.
const ABANDON_GRACE: Duration = Duration::from_secs(10);

/// How the scheduler took the drain announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Announced {
    /// It stopped dispatching to this worker.
    Stopped,
    /// It knows the RPC but found no stream of this worker (already gone).
    NotFound,
    /// It does not serve `BeginWorkerDrain` (or the call failed): work that arrives is handed back.
    Unsupported,
}

impl Worker {
    /// The deadline of the drain, fixed the first time shutdown is noticed.
    fn drain_deadline(&self) -> Instant {
        *self
            .drain_deadline
            .get_or_init(|| Instant::now() + self.options.drain_timeout)
    }

    /// Drains on the open stream (see the module's steps), then drops it.
    pub(super) async fn drain_on_stream(&self, mut stream: tonic::Streaming<pb::WorkItem>) {
        let deadline = self.drain_deadline();
        let shared = &self.shared;
        shared.tracker.close();
        self.ready.send_replace(false);
        if let Some(o) = &shared.observer {
            o.draining();
        }
        tracing::info!(
            in_flight = shared.tracker.len(),
            deadline = ?self.options.drain_timeout,
            "draining: no new work; the work items held finish over the open stream"
        );
        let announce = announce(shared, self.options.drain_timeout);
        tokio::pin!(announce);
        let mut announced = false;
        let mut open = true;
        let mut handed_back = 0u64;
        loop {
            tokio::select! {
                _ = shared.tracker.wait() => break,
                _ = tokio::time::sleep_until(deadline) => {
                    self.abandon_the_rest().await;
                    break;
                }
                a = &mut announce, if !announced => {
                    announced = true;
                    match a {
                        Announced::Stopped => tracing::info!("the scheduler stopped dispatching to this worker"),
                        Announced::NotFound => tracing::info!("the scheduler holds no stream of this worker"),
                        Announced::Unsupported => tracing::info!("the scheduler has no BeginWorkerDrain: work that still arrives is handed back"),
                    }
                }
                m = stream.message(), if open => match m {
                    Ok(Some(item)) => {
                        if hand_back(shared, item).await {
                            handed_back += 1;
                        }
                    }
                    Ok(None) => {
                        open = false;
                        tracing::info!("the scheduler closed the work-item stream during the drain");
                    }
                    Err(status) => {
                        open = false;
                        tracing::warn!(code = ?status.code(), message = status.message(), "the work-item stream broke during the drain: the scheduler may give what still runs here to another worker");
                    }
                },
            }
        }
        tracing::info!(handed_back, "drained; closing the work-item stream");
        drop(stream);
    }

    /// Waits for what still runs until the drain deadline, then cancels and abandons it.
    pub(super) async fn wait_for_in_flight(&self) {
        let deadline = self.drain_deadline();
        let tracker = &self.shared.tracker;
        tracker.close();
        if tracker.is_empty() {
            return;
        }
        tracing::info!(
            in_flight = tracker.len(),
            "draining in-flight work items (no open stream)"
        );
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            self.abandon_the_rest().await;
        }
    }

    async fn abandon_the_rest(&self) {
        let tracker = &self.shared.tracker;
        tracing::warn!(
            in_flight = tracker.len(),
            "drain deadline passed; cancelling and abandoning what is still running (another worker runs it again)"
        );
        self.shared.abort.cancel();
        let _ = tokio::time::timeout(ABANDON_GRACE, tracker.wait()).await;
    }
}

/// `BeginWorkerDrain` for this worker (its `workerid` header), within [`ANNOUNCE_TIMEOUT`].
async fn announce(shared: &Shared, drain_timeout: Duration) -> Announced {
    let mut backend = shared.backend.clone();
    let mut req = tonic::Request::new(pb::backend::BeginWorkerDrainRequest {
        drain_timeout: pb::Duration::try_from(drain_timeout).ok(),
    });
    req.set_timeout(ANNOUNCE_TIMEOUT);
    match backend.begin_worker_drain(req).await {
        Ok(r) if r.get_ref().worker_found => Announced::Stopped,
        Ok(_) => Announced::NotFound,
        Err(s) if s.code() == tonic::Code::Unimplemented => Announced::Unsupported,
        Err(s) => {
            tracing::warn!(code = ?s.code(), message = s.message(), "BeginWorkerDrain failed");
            Announced::Unsupported
        }
    }
}

/// Gives a work item back to the scheduler unrun (abandon), so another worker takes it at once.
/// `true` when it was a work item (not a health ping).
pub(super) async fn hand_back(shared: &Shared, item: pb::WorkItem) -> bool {
    use pb::work_item::Request;
    let token = item.completion_token;
    let (kind, name, trace) = match item.request {
        Some(Request::OrchestratorRequest(req)) => {
            let name = super::orchestration_name(&req).unwrap_or_default();
            let trace = crate::otel::orchestration_trace_id(&req);
            let since = shared.started(WorkItemKind::Orchestration, &name);
            abandon_orchestration(shared, token).await;
            (WorkItemKind::Orchestration, name, (trace, since))
        }
        Some(Request::ActivityRequest(req)) => {
            let trace = crate::otel::trace_id_of(req.parent_trace_context.as_ref());
            let since = shared.started(WorkItemKind::Activity, &req.name);
            abandon_activity(shared, token).await;
            (WorkItemKind::Activity, req.name, (trace, since))
        }
        Some(Request::EntityRequest(_) | Request::EntityRequestV2(_)) => {
            super::items::abandon_entity(shared, token).await;
            return true;
        }
        Some(Request::HealthPing(_)) => {
            bump(&shared.stats.health_pings);
            return false;
        }
        None => return false,
    };
    let (trace, since) = trace;
    shared.finished(
        kind,
        &name,
        WorkItemOutcome::Abandoned,
        since,
        trace.as_deref(),
    );
    true
}
