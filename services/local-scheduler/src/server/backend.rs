//! DTS's `BackendService`, the two RPCs of it a worker fleet needs:
//!
//! - `BeginWorkerDrain`: the calling worker (its `workerid` header, in its task hub) gets no more
//!   work on its open streams, which stay open with their leases until it closes them. So an
//!   activity still running on a worker that is shutting down completes there, once, instead of
//!   being handed to another worker when its stream closes.
//! - `GetMetrics`: the queues per kind (waiting, running, oldest wait) and the connected workers,
//!   the same figures `/metrics` exports, for a scaler that speaks gRPC.

use super::*;
use pb::backend as be;

/// The `BackendService` on the scheduler's shared state.
#[derive(Clone)]
pub struct Backend {
    pub shared: Arc<Shared>,
}

fn saturating_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn kind_metrics(k: crate::engine::KindStats) -> be::WorkItemMetrics {
    be::WorkItemMetrics {
        pending: saturating_i32(k.pending),
        active: saturating_i32(k.active),
        oldest_age_in_seconds: i32::try_from(k.oldest_wait.as_secs()).unwrap_or(i32::MAX),
    }
}

#[tonic::async_trait]
impl be::backend_service_server::BackendService for Backend {
    async fn get_metrics(
        &self,
        _req: Request<be::GetMetricsRequest>,
    ) -> Result<Response<be::GetMetricsResponse>, Status> {
        let q = self
            .shared
            .quiet(|e| e.queue_stats())
            .ok_or_else(|| self.shared.no_engine())?;
        Ok(Response::new(be::GetMetricsResponse {
            metrics: Some(be::BackendMetrics {
                activity_work_items: Some(kind_metrics(q.activities)),
                orchestrator_work_items: Some(kind_metrics(q.orchestrations)),
                entity_work_items: Some(be::WorkItemMetrics::default()),
                connected_workers: Some(be::ConnectedWorkerMetrics {
                    count: saturating_i32(self.shared.connected_workers()),
                }),
            }),
        }))
    }

    async fn begin_worker_drain(
        &self,
        req: Request<be::BeginWorkerDrainRequest>,
    ) -> Result<Response<be::BeginWorkerDrainResponse>, Status> {
        let hub = hub_of(&req)?;
        if self.shared.failure().is_some() {
            return Err(self.shared.no_engine());
        }
        let Some(worker_id) = worker_id_of(&req) else {
            return Err(Status::invalid_argument(
                "missing `workerid` header: BeginWorkerDrain drains the streams of the worker that calls it",
            ));
        };
        let timeout = req
            .get_ref()
            .drain_timeout
            .and_then(|d| Duration::try_from(d).ok());
        let streams = self.shared.begin_drain(&hub, &worker_id);
        tracing::info!(%hub, %worker_id, streams, drain_timeout = ?timeout, "worker draining: no more work is dispatched to it; its streams stay open for its completions");
        Ok(Response::new(be::BeginWorkerDrainResponse {
            worker_found: streams > 0,
        }))
    }
}
