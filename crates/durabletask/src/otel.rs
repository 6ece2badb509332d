//! OpenTelemetry spans for work the worker runs, through the global tracer provider (a no-op
//! unless the process installed one). Names and attributes follow the official SDKs:
//! `orchestration:<name>` (server) once per orchestration with a span id stable across episodes
//! (`orchestrationTraceContext`), `activity:<name>` as a client span from the orchestration for
//! each scheduled task (its id is the one sent in `ScheduleTaskAction.parentTraceContext`), and
//! `activity:<name>` as a server span where the activity runs. Every span carries
//! `operation.id` (the instance id).

use std::cell::Cell;
use std::time::SystemTime;

use durabletask_proto as pb;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue, global};
use pb::history_event::EventType;

use crate::types::TraceContext;

const SCOPE: &str = "durabletask";

/// Target of the `tracing` spans the worker enters around each work item, so that log lines
/// written inside carry `operation_id`, `trace_id` and `span_id`. They are for logs only:
/// a process exporting `tracing` spans should leave this target out (`service-kit` does).
pub const LOG_CONTEXT_TARGET: &str = "durabletask::work";

thread_local! {
    static PINNED_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
    static REPLAYING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the orchestrator code running on this thread is replaying history. A log filter
/// that drops events while this is `true` makes orchestration logging replay-safe: each line is
/// written once, when the code first runs (`service-kit` installs such a filter).
pub fn replaying_now() -> bool {
    REPLAYING.with(Cell::get)
}

pub(crate) fn set_replaying(replaying: bool) {
    REPLAYING.with(|c| c.set(replaying));
}

/// The `tracing` span an orchestration episode runs in, for log correlation: the operation,
/// the trace it belongs to, and the orchestration's span when already known.
pub(crate) fn orchestration_log_context(
    req: &pb::OrchestratorRequest,
    name: &str,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: "durabletask::work",
        "orchestration",
        orchestration = %name,
        operation_id = %req.instance_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent = created_in(req)
        .and_then(TraceContext::from_proto)
        .and_then(|t| parse(&t.traceparent));
    if let Some((trace, _, _)) = parent {
        span.record("trace_id", trace.to_string());
        if let Some(id) = req
            .orchestration_trace_context
            .as_ref()
            .and_then(|t| t.span_id.as_deref())
        {
            span.record("span_id", id);
        }
    }
    span
}

/// The span id the next span started on this thread must have, if any. A process's tracer
/// provider calls this from its id generator (`service-kit` does), so that the orchestration
/// span keeps its id across episodes and the activity client span has the id already sent to
/// the scheduler in `parentTraceContext`. Without such a generator, ids are random and those
/// two links are lost (the spans are still exported).
pub fn take_pinned_span_id() -> Option<SpanId> {
    PINNED_SPAN_ID.with(Cell::take)
}

/// Starts a span with a given id (see [`take_pinned_span_id`]).
fn start_pinned(
    tracer: &global::BoxedTracer,
    builder: opentelemetry::trace::SpanBuilder,
    id: SpanId,
    parent: &Context,
) -> global::BoxedSpan {
    PINNED_SPAN_ID.with(|c| c.set(Some(id)));
    let span = builder.start_with_context(tracer, parent);
    PINNED_SPAN_ID.with(|c| c.set(None));
    span
}

/// The trace id (hex) in a propagated trace context, when it is well-formed.
pub(crate) fn trace_id_of(tc: Option<&pb::TraceContext>) -> Option<String> {
    let tc = TraceContext::from_proto(tc?)?;
    parse(&tc.traceparent).map(|(trace, _, _)| trace.to_string())
}

/// The trace an orchestration belongs to: the one its `ExecutionStarted` was created in.
pub(crate) fn orchestration_trace_id(req: &pb::OrchestratorRequest) -> Option<String> {
    trace_id_of(created_in(req))
}

/// The trace context the orchestration was created in (its `ExecutionStarted`'s parent).
fn created_in(req: &pb::OrchestratorRequest) -> Option<&pb::TraceContext> {
    req.past_events
        .iter()
        .chain(req.new_events.iter())
        .find_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(es)) => es.parent_trace_context.as_ref(),
            _ => None,
        })
}

/// `(trace id, span id, flags)` of a well-formed `traceparent`.
fn parse(traceparent: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let tp = crate::TraceParent::parse(traceparent)?;
    Some((
        TraceId::from_hex(tp.trace_id).ok()?,
        SpanId::from_hex(tp.span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(tp.flags, 16).ok()?),
    ))
}

fn remote(trace: TraceId, span: SpanId, flags: TraceFlags) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        trace,
        span,
        flags,
        true,
        TraceState::default(),
    ))
}

fn time(ts: Option<&pb::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    let d = std::time::Duration::new(
        u64::try_from(ts.seconds).ok()?,
        u32::try_from(ts.nanos).ok()?,
    );
    SystemTime::UNIX_EPOCH.checked_add(d)
}

/// A live span around one activity execution.
pub(crate) struct ActivitySpan(Option<global::BoxedSpan>, Option<(TraceId, SpanId)>);

impl ActivitySpan {
    pub(crate) fn start(req: &pb::ActivityRequest, instance_id: &str) -> Self {
        let Some((trace, parent, flags)) = req
            .parent_trace_context
            .as_ref()
            .and_then(TraceContext::from_proto)
            .and_then(|t| parse(&t.traceparent))
        else {
            return Self(None, None);
        };
        let tracer = global::tracer(SCOPE);
        let span = tracer
            .span_builder(format!("activity:{}", req.name))
            .with_kind(SpanKind::Server)
            .with_attributes(vec![
                KeyValue::new("durabletask.type", "activity"),
                KeyValue::new("durabletask.task.name", req.name.clone()),
                KeyValue::new("durabletask.task.instance_id", instance_id.to_string()),
                KeyValue::new("durabletask.task.task_id", i64::from(req.task_id)),
                KeyValue::new("operation.id", instance_id.to_string()),
            ])
            .start_with_context(&tracer, &remote(trace, parent, flags));
        // Without an exporter the span is a no-op: log the scheduling context's ids instead.
        let sc = span.span_context();
        let ids = if sc.is_valid() {
            (sc.trace_id(), sc.span_id())
        } else {
            (trace, parent)
        };
        Self(Some(span), Some(ids))
    }

    /// The `tracing` span to run the activity in, for log correlation.
    pub(crate) fn log_context(&self, name: &str, instance_id: &str, task_id: i32) -> tracing::Span {
        let span = tracing::info_span!(
            target: "durabletask::work",
            "activity",
            activity = %name,
            task_id,
            operation_id = %instance_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let Some((t, s)) = self.1 {
            span.record("trace_id", t.to_string());
            span.record("span_id", s.to_string());
        }
        span
    }

    pub(crate) fn end(self, failure: Option<&str>) {
        if let Some(mut span) = self.0 {
            if let Some(message) = failure {
                span.set_status(Status::error(message.to_string()));
            }
            span.end();
        }
    }
}

/// Spans an orchestration episode completes: a client span for each task whose result arrived
/// in this episode, and the orchestration's own span when this episode ends it.
pub(crate) fn orchestration_episode(
    req: &pb::OrchestratorRequest,
    response: &pb::OrchestratorResponse,
    name: &str,
) {
    let all = || req.past_events.iter().chain(req.new_events.iter());
    let Some((started_at, parent)) = all().find_map(|e| match &e.event_type {
        Some(EventType::ExecutionStarted(es)) => Some((
            e.timestamp,
            es.parent_trace_context
                .as_ref()
                .and_then(TraceContext::from_proto)
                .and_then(|t| parse(&t.traceparent)),
        )),
        _ => None,
    }) else {
        return;
    };
    let Some((trace, parent_span, flags)) = parent else {
        return;
    };
    let trace_cx = response
        .orchestration_trace_context
        .as_ref()
        .or(req.orchestration_trace_context.as_ref());
    let Some(orch_span) = trace_cx
        .and_then(|t| t.span_id.as_deref())
        .and_then(|id| SpanId::from_hex(id).ok())
    else {
        return;
    };
    let tracer = global::tracer(SCOPE);
    let id = req.instance_id.clone();

    // Tasks that finished in this episode: the client side of each activity call.
    for e in &req.new_events {
        let (scheduled_id, failed) = match &e.event_type {
            Some(EventType::TaskCompleted(c)) => (c.task_scheduled_id, false),
            Some(EventType::TaskFailed(f)) => (f.task_scheduled_id, true),
            _ => continue,
        };
        let Some((scheduled, at)) = all().find_map(|s| match &s.event_type {
            Some(EventType::TaskScheduled(t)) if s.event_id == scheduled_id => {
                Some((t, s.timestamp))
            }
            _ => None,
        }) else {
            continue;
        };
        let Some((_, span_id, _)) = scheduled
            .parent_trace_context
            .as_ref()
            .and_then(TraceContext::from_proto)
            .and_then(|t| parse(&t.traceparent))
        else {
            continue;
        };
        let mut builder = tracer
            .span_builder(format!("activity:{}", scheduled.name))
            .with_kind(SpanKind::Client)
            .with_attributes(vec![
                KeyValue::new("durabletask.type", "activity"),
                KeyValue::new("durabletask.task.name", scheduled.name.clone()),
                KeyValue::new("durabletask.task.instance_id", id.clone()),
                KeyValue::new("durabletask.task.task_id", i64::from(scheduled_id)),
                KeyValue::new("operation.id", id.clone()),
            ]);
        if let Some(t) = time(at.as_ref()) {
            builder = builder.with_start_time(t);
        }
        let mut span = start_pinned(&tracer, builder, span_id, &remote(trace, orch_span, flags));
        if failed {
            span.set_status(Status::error("the activity failed"));
        }
        match time(e.timestamp.as_ref()) {
            Some(t) => span.end_with_timestamp(t),
            None => span.end(),
        }
    }

    // The orchestration's span, once, when it ends.
    let ended = response
        .actions
        .iter()
        .find_map(|a| match &a.orchestrator_action_type {
            Some(pb::orchestrator_action::OrchestratorActionType::CompleteOrchestration(c)) => {
                Some(c.orchestration_status)
            }
            _ => None,
        });
    let Some(status) = ended else {
        return;
    };
    let start = trace_cx
        .and_then(|t| time(t.span_start_time.as_ref()))
        .or_else(|| time(started_at.as_ref()));
    let mut builder = tracer
        .span_builder(format!("orchestration:{name}"))
        .with_kind(SpanKind::Server)
        .with_attributes(vec![
            KeyValue::new("durabletask.type", "orchestration"),
            KeyValue::new("durabletask.task.name", name.to_string()),
            KeyValue::new("durabletask.task.instance_id", id.clone()),
            KeyValue::new("operation.id", id),
        ]);
    if let Some(t) = start {
        builder = builder.with_start_time(t);
    }
    let mut span = start_pinned(
        &tracer,
        builder,
        orch_span,
        &remote(trace, parent_span, flags),
    );
    if status == pb::OrchestrationStatus::Failed as i32 {
        span.set_status(Status::error("the orchestration failed"));
    }
    span.end();
}
