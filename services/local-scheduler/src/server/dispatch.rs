//! Feeding a worker's work-item stream, and the spans of the time items waited.

use super::*;

/// The instrumentation scope of the scheduler's spans.
pub(super) const SPAN_SCOPE: &str = "local-scheduler";

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

/// Work items a stream may hold at once, by kind (the worker's `maxConcurrent*`).
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamLimits {
    pub orchestrations: usize,
    pub activities: usize,
    pub entities: usize,
}

/// Feeds one worker stream: as many items as its limits allow, health pings when idle. Once the
/// worker begins a drain (`draining`), nothing more is taken for it; pings go on, and the stream
/// stays open until the worker closes it, so the items it holds stay its own.
pub(super) async fn dispatch_loop(
    shared: &Arc<Shared>,
    hub: &str,
    stream_id: u64,
    limits: StreamLimits,
    filter: &StreamFilter,
    draining: &AtomicBool,
    tx: mpsc::Sender<Result<pb::WorkItem, Status>>,
) {
    let StreamLimits {
        orchestrations: max_orch,
        activities: max_act,
        entities: max_ent,
    } = limits;
    let mut ping = tokio::time::interval(shared.ping_interval);
    ping.reset();
    loop {
        let notified = shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Sent only once what they come from is durable (see `Shared::observe`).
        let items = shared
            .observe(|e| {
                let mut items = Vec::new();
                // Read under the engine lock, so nothing is taken after the drain began.
                if draining.load(Ordering::Relaxed) {
                    return items;
                }
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
                    if e.entities_in_flight(stream_id) < max_ent
                        && let Some(item) = e.take_entity(hub, stream_id, filter)
                    {
                        items.push((item, None));
                        took = true;
                    }
                    if !took || items.len() >= 256 {
                        break;
                    }
                }
                items
            })
            .await;
        let Ok(items) = items else {
            // Stopped after a failure: the stream ends.
            return;
        };
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
                Some(pb::work_item::Request::ActivityRequest(_)) => {
                    &shared.counters.activities_dispatched
                }
                _ => &shared.counters.entities_dispatched,
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
