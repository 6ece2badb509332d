//! Running one work item: an orchestration episode, an activity or an entity batch, from the
//! request (its payloads read back) to the completion (its large payloads stored), and handing
//! an item back when it cannot run now.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use durabletask_proto as pb;
use futures::FutureExt;

use super::{Shared, WorkItemKind, WorkItemOutcome, bump, payloads};
use crate::activity::ActivityContext;
use crate::orchestration::executor::{execute, failure_response};
use crate::types::{FailureDetails, TraceContext};

/// The orchestration's name and start time, from its ExecutionStarted event.
pub(super) fn execution_started(
    req: &pb::OrchestratorRequest,
) -> Option<(String, Option<pb::Timestamp>)> {
    req.past_events
        .iter()
        .chain(req.new_events.iter())
        .find_map(|e| match &e.event_type {
            Some(pb::history_event::EventType::ExecutionStarted(es)) => {
                Some((es.name.clone(), e.timestamp))
            }
            _ => None,
        })
}

pub(super) fn orchestration_name(req: &pb::OrchestratorRequest) -> Option<String> {
    execution_started(req).map(|(n, _)| n)
}

pub(super) async fn run_orchestration(
    shared: &Shared,
    mut req: pb::OrchestratorRequest,
    token: String,
) {
    use payloads::PayloadOutcome;
    let started = execution_started(&req);
    let name = started.as_ref().map(|(n, _)| n.clone());
    let label = name.clone().unwrap_or_default();
    let since = shared.started(WorkItemKind::Orchestration, &label);
    let trace = crate::otel::orchestration_trace_id(&req);
    let instance_id = req.instance_id.clone();
    let hand_back = |e: crate::payload::PayloadError, token: String| {
        let (label, trace, instance_id) = (label.clone(), trace.clone(), instance_id.clone());
        async move {
            tracing::warn!(%instance_id, error = %e, "the payload store failed; handing the orchestration work item back");
            shared.store_backoff().await;
            abandon_orchestration(shared, token).await;
            shared.finished(
                WorkItemKind::Orchestration,
                &label,
                WorkItemOutcome::Abandoned,
                since,
                trace.as_deref(),
            );
        }
    };
    let unreadable = match shared.read_payloads(&mut req, "OrchestratorRequest").await {
        Ok(()) => None,
        Err(PayloadOutcome::Retry(e)) => return hand_back(e, token).await,
        Err(PayloadOutcome::Fail(f)) => Some(f),
    };
    let mut response = match name
        .as_deref()
        .map(|n| (n, shared.registry.orchestrator(n)))
    {
        _ if unreadable.is_some() => failure_response(
            &req.instance_id,
            token,
            unreadable.as_ref().expect("checked"),
        ),
        Some((_, Some(orchestrator))) => {
            let context = crate::otel::orchestration_log_context(&req, &label);
            let _entered = context.enter();
            execute(orchestrator.as_ref(), &req).into_response(&req.instance_id, token)
        }
        Some((n, None)) => {
            let f = FailureDetails::new(
                "OrchestratorTaskNotFound",
                format!("no orchestrator named '{n}' is registered with this worker"),
            )
            .non_retriable();
            failure_response(&req.instance_id, token, &f)
        }
        None => {
            let f = FailureDetails::new(
                "InvalidHistory",
                "the work item has no ExecutionStarted event",
            )
            .non_retriable();
            failure_response(&req.instance_id, token, &f)
        }
    };
    match shared
        .write_payloads(&mut response, "OrchestratorResponse", &req.instance_id)
        .await
    {
        Ok(()) => {}
        Err(PayloadOutcome::Retry(e)) => return hand_back(e, response.completion_token).await,
        Err(PayloadOutcome::Fail(f)) => {
            response = failure_response(&req.instance_id, response.completion_token, &f);
        }
    }
    let result = deliver(|| {
        let mut grpc = shared.grpc.clone();
        let r = response.clone();
        async move { grpc.complete_orchestrator_task(r).await.map(|_| ()) }
    })
    .await;
    crate::otel::orchestration_episode(&req, &response, &label);
    // Did this episode end the instance, and how?
    let ended = response
        .actions
        .iter()
        .find_map(|a| match &a.orchestrator_action_type {
            Some(pb::orchestrator_action::OrchestratorActionType::CompleteOrchestration(c))
                if c.orchestration_status != pb::OrchestrationStatus::ContinuedAsNew as i32 =>
            {
                Some(c.orchestration_status == pb::OrchestrationStatus::Failed as i32)
            }
            _ => None,
        });
    match result {
        Ok(()) => {
            bump(&shared.stats.orchestrations_completed);
            let outcome = if ended == Some(true) {
                WorkItemOutcome::Failed
            } else {
                WorkItemOutcome::Completed
            };
            shared.finished(
                WorkItemKind::Orchestration,
                &label,
                outcome,
                since,
                trace.as_deref(),
            );
            if let (Some(failed), Some(o)) = (ended, &shared.observer) {
                let age = started.and_then(|(_, t)| t).and_then(|t| {
                    let at = chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)?;
                    (chrono::Utc::now() - at).to_std().ok()
                });
                o.orchestration_ended(&label, failed, age, trace.as_deref());
            }
        }
        Err(status) => {
            bump(&shared.stats.completion_errors);
            shared.finished(
                WorkItemKind::Orchestration,
                &label,
                WorkItemOutcome::Abandoned,
                since,
                trace.as_deref(),
            );
            tracing::warn!(instance_id = %req.instance_id, code = ?status.code(), message = status.message(), "could not complete orchestration work item");
        }
    }
}

pub(super) async fn run_entity(shared: &Shared, mut req: pb::EntityRequest, token: String) {
    use payloads::PayloadOutcome;
    let name = crate::entity::EntityId::parse(&req.instance_id)
        .map(|id| id.name)
        .unwrap_or_default();
    let since = shared.started(WorkItemKind::Entity, &name);
    let entity = shared.registry.entity(&name);
    let entity_id = req.instance_id.clone();
    let hand_back = |e: crate::payload::PayloadError, token: String| {
        let (name, entity_id) = (name.clone(), entity_id.clone());
        async move {
            tracing::warn!(entity = %entity_id, error = %e, "the payload store failed; handing the entity work item back");
            shared.store_backoff().await;
            abandon_entity(shared, token).await;
            shared.finished(
                WorkItemKind::Entity,
                &name,
                WorkItemOutcome::Abandoned,
                since,
                None,
            );
        }
    };
    let mut result = match shared.read_payloads(&mut req, "EntityRequest").await {
        Ok(()) => crate::entity::execute_batch(entity.as_deref(), &req, token),
        Err(PayloadOutcome::Retry(e)) => return hand_back(e, token).await,
        Err(PayloadOutcome::Fail(f)) => payloads::failed_batch(&req, token, f),
    };
    match shared
        .write_payloads(&mut result, "EntityBatchResult", &req.instance_id)
        .await
    {
        Ok(()) => {}
        Err(PayloadOutcome::Retry(e)) => return hand_back(e, result.completion_token).await,
        Err(PayloadOutcome::Fail(f)) => {
            result = payloads::failed_batch(&req, result.completion_token, f);
        }
    }
    let failed = result.results.iter().any(|r| {
        matches!(
            r.result_type,
            Some(pb::operation_result::ResultType::Failure(_))
        )
    });
    let delivered = deliver(|| {
        let mut grpc = shared.grpc.clone();
        let r = result.clone();
        async move { grpc.complete_entity_task(r).await.map(|_| ()) }
    })
    .await;
    let outcome = match (&delivered, failed) {
        (Ok(()), true) => WorkItemOutcome::Failed,
        (Ok(()), false) => WorkItemOutcome::Completed,
        (Err(_), _) => WorkItemOutcome::Abandoned,
    };
    shared.finished(WorkItemKind::Entity, &name, outcome, since, None);
    if let Err(status) = delivered {
        bump(&shared.stats.completion_errors);
        tracing::warn!(entity = %req.instance_id, code = ?status.code(), message = status.message(), "could not complete entity work item");
    }
}

pub(super) async fn run_activity(shared: &Shared, mut req: pb::ActivityRequest, token: String) {
    use payloads::PayloadOutcome;
    let unreadable = match shared.read_payloads(&mut req, "ActivityRequest").await {
        Ok(()) => None,
        Err(PayloadOutcome::Retry(e)) => {
            tracing::warn!(name = %req.name, error = %e, "the payload store failed; handing the activity work item back");
            shared.store_backoff().await;
            abandon_activity(shared, token).await;
            return;
        }
        Err(PayloadOutcome::Fail(f)) => Some(f),
    };
    let instance_id = req
        .orchestration_instance
        .as_ref()
        .map(|i| i.instance_id.clone())
        .unwrap_or_default();
    let ctx = ActivityContext {
        instance_id: instance_id.clone(),
        task_id: req.task_id,
        name: req.name.clone(),
        parent_trace_context: req
            .parent_trace_context
            .as_ref()
            .and_then(TraceContext::from_proto),
        cancellation: shared.abort.child_token(),
        dispatch_count: u32::try_from(req.dispatch_count).unwrap_or(0).max(1),
    };
    let since = shared.started(WorkItemKind::Activity, &req.name);
    let trace = crate::otel::trace_id_of(req.parent_trace_context.as_ref());
    let span = crate::otel::ActivitySpan::start(&req, &instance_id);
    let outcome = match shared.registry.activity(&req.name) {
        _ if unreadable.is_some() => unreadable.map(Err),
        None => Some(Err(FailureDetails::new(
            "ActivityTaskNotFound",
            format!(
                "no activity named '{}' is registered with this worker",
                req.name
            ),
        )
        .non_retriable())),
        Some(activity) => {
            use tracing::Instrument as _;
            let context = span.log_context(&req.name, &instance_id, req.task_id);
            let fut = AssertUnwindSafe(activity(ctx, req.input.clone()).instrument(context))
                .catch_unwind();
            tokio::select! {
                r = fut => Some(r.unwrap_or_else(|panic| Err(FailureDetails::from_panic(panic.as_ref())))),
                _ = shared.abort.cancelled() => None,
            }
        }
    };
    // Past the drain deadline, whatever the activity returned may be a partial result of its
    // cancellation: hand the item back instead of completing it.
    let Some(outcome) = outcome.filter(|_| !shared.abort.is_cancelled()) else {
        span.end(Some("abandoned: the worker is shutting down"));
        abandon_activity(shared, token).await;
        shared.finished(
            WorkItemKind::Activity,
            &req.name,
            WorkItemOutcome::Abandoned,
            since,
            trace.as_deref(),
        );
        return;
    };
    let failed = outcome.is_err();
    span.end(outcome.as_ref().err().map(|f| f.message.as_str()));
    let (result, failure_details) = match outcome {
        Ok(r) => (r, None),
        Err(f) => (None, Some(f.to_proto())),
    };
    let mut response = pb::ActivityResponse {
        instance_id: instance_id.clone(),
        task_id: req.task_id,
        result,
        failure_details,
        completion_token: token,
    };
    match shared
        .write_payloads(&mut response, "ActivityResponse", &instance_id)
        .await
    {
        Ok(()) => {}
        Err(PayloadOutcome::Retry(e)) => {
            tracing::warn!(name = %req.name, error = %e, "the payload store failed; handing the activity work item back");
            shared.store_backoff().await;
            abandon_activity(shared, response.completion_token).await;
            shared.finished(
                WorkItemKind::Activity,
                &req.name,
                WorkItemOutcome::Abandoned,
                since,
                trace.as_deref(),
            );
            return;
        }
        Err(PayloadOutcome::Fail(f)) => {
            response.result = None;
            response.failure_details = Some(f.to_proto());
        }
    }
    let delivered = deliver(|| {
        let mut grpc = shared.grpc.clone();
        let r = response.clone();
        async move { grpc.complete_activity_task(r).await.map(|_| ()) }
    })
    .await;
    let outcome = match (&delivered, failed) {
        (Ok(()), true) => WorkItemOutcome::Failed,
        (Ok(()), false) => WorkItemOutcome::Completed,
        (Err(_), _) => WorkItemOutcome::Abandoned,
    };
    shared.finished(
        WorkItemKind::Activity,
        &req.name,
        outcome,
        since,
        trace.as_deref(),
    );
    match delivered {
        Ok(()) if failed => bump(&shared.stats.activities_failed),
        Ok(()) => bump(&shared.stats.activities_completed),
        Err(status) => {
            bump(&shared.stats.completion_errors);
            tracing::warn!(%instance_id, task_id = req.task_id, code = ?status.code(), message = status.message(), "could not complete activity work item");
        }
    }
}

pub(super) async fn abandon_activity(shared: &Shared, token: String) {
    let mut grpc = shared.grpc.clone();
    match Box::pin(
        grpc.abandon_task_activity_work_item(pb::AbandonActivityTaskRequest {
            completion_token: token,
        }),
    )
    .await
    {
        Ok(_) => bump(&shared.stats.work_items_abandoned),
        Err(s) => {
            tracing::warn!(code = ?s.code(), message = s.message(), "could not abandon activity work item; it will be redelivered after its lease")
        }
    }
}

pub(super) async fn abandon_orchestration(shared: &Shared, token: String) {
    let mut grpc = shared.grpc.clone();
    match Box::pin(
        grpc.abandon_task_orchestrator_work_item(pb::AbandonOrchestrationTaskRequest {
            completion_token: token,
        }),
    )
    .await
    {
        Ok(_) => bump(&shared.stats.work_items_abandoned),
        Err(s) => {
            tracing::warn!(code = ?s.code(), message = s.message(), "could not abandon orchestration work item; it will be redelivered after its lease")
        }
    }
}

/// Sends a completion, retrying transport-level failures a few times with backoff.
pub(super) async fn deliver<F, Fut>(mut send: F) -> Result<(), tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    const ATTEMPTS: u32 = 6;
    let mut attempt = 0;
    loop {
        match Box::pin(send()).await {
            Ok(()) => return Ok(()),
            Err(s) if attempt + 1 < ATTEMPTS && crate::error::is_transient_status(&s) => {
                let base = Duration::from_millis(200) * 2u32.pow(attempt);
                tokio::time::sleep(base.min(Duration::from_secs(5))).await;
                attempt += 1;
            }
            Err(s) => return Err(s),
        }
    }
}

pub(super) async fn abandon_entity(shared: &Shared, token: String) {
    let mut grpc = shared.grpc.clone();
    match Box::pin(
        grpc.abandon_task_entity_work_item(pb::AbandonEntityTaskRequest {
            completion_token: token,
        }),
    )
    .await
    {
        Ok(_) => bump(&shared.stats.work_items_abandoned),
        Err(s) => {
            tracing::warn!(code = ?s.code(), message = s.message(), "could not abandon entity work item; it will be redelivered after its lease")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, Fut: std::future::Future, F: Fn(A, B, C) -> Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn work_item_futures_stay_small() {
        // Each is moved into its task when spawned, and again when it finishes; the tonic calls
        // (about 3 KB each) and the payload store's are boxed where they are awaited.
        for (name, size) in [
            ("run_orchestration", future_size(&run_orchestration)),
            ("run_activity", future_size(&run_activity)),
            ("run_entity", future_size(&run_entity)),
        ] {
            assert!(size <= 2_048, "{name}'s future is {size} bytes");
        }
    }
}
