//! The one shape of every call to the scheduler: a deadline, the `gateway_dts_rpc_*` metrics,
//! and one mapping of its errors to problems.

use std::time::Duration;

use axum::http::StatusCode;
use durabletask::{Error as DtsError, OrchestrationMetadata, StartOptions};
use tracing::Instrument;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::valid_id;
use crate::problem::{Problem, operation_not_found};

/// One scheduler call under `limit`, timed and counted by method and outcome.
///
/// The call's future is boxed before anything else holds it: a tonic call's future is
/// kilobytes, and held inline it would make every handler's future that size, copied on each
/// move (the profile of `make bench` showed the memcpy). So these are plain functions returning
/// a future, not `async fn`s, which would keep the unboxed argument in their own state.
pub(crate) fn dts_call<T>(
    state: &AppState,
    method: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, DtsError>>,
) -> impl Future<Output = Result<Result<T, DtsError>, tokio::time::error::Elapsed>> {
    let fut = Box::pin(fut);
    async move {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(limit, fut).await;
        let code = match &r {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(
                e.status()
                    .map_or_else(|| "Unknown".to_string(), |s| format!("{:?}", s.code())),
            ),
            Err(_) => Some("DeadlineExceeded".to_string()),
        };
        state
            .metrics
            .rpc(method, started.elapsed(), code.as_deref());
        r
    }
}

/// A scheduler call under the configured deadline; errors become problems.
pub(crate) fn with_deadline<T>(
    state: &AppState,
    method: &'static str,
    fut: impl Future<Output = Result<T, DtsError>>,
) -> impl Future<Output = Result<T, Problem>> {
    let call = dts_call(state, method, state.config.dts_timeout(), fut);
    async move {
        match call.await {
            Ok(r) => r.map_err(|e| dts_problem(state, method, e)),
            Err(_) => Err(timed_out(state)),
        }
    }
}

/// Maps a scheduler error to a problem, by the SDK's one rule of what is transient: a transient
/// error (down, overloaded, a broken connection) is `503` with `Retry-After`; anything else is
/// `502`, naming the call and the gRPC code (the scheduler's message goes to the log only).
pub(crate) fn dts_problem(state: &AppState, method: &str, err: DtsError) -> Problem {
    if err.is_transient() {
        tracing::warn!(method, error = %err, "scheduler call failed; transient");
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "scheduler-unavailable",
            "Service Unavailable",
            "the Durable Task Scheduler is unavailable or overloaded; try again shortly",
        )
        .retry_after(state.config.retry_after_seconds);
    }
    tracing::error!(method, error = %err, "the scheduler refused a call");
    let code = err
        .status()
        .map_or_else(|| "none".to_string(), |s| format!("{:?}", s.code()));
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "scheduler-error",
        "Bad Gateway",
        format!("the Durable Task Scheduler refused {method} (gRPC code {code})"),
    )
}

/// `503`: the scheduler did not answer within the configured deadline.
pub(crate) fn timed_out(state: &AppState) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "scheduler-unavailable",
        "Service Unavailable",
        "the Durable Task Scheduler did not answer in time; try again shortly",
    )
    .retry_after(state.config.retry_after_seconds)
}

/// `429` with `Retry-After` when `caller` already has `max_unfinished_per_caller` operations
/// pending, running or suspended (its callback deliveries are not counted). The scheduler counts
/// them (a query by the caller's id prefix), so the cap holds across any number of gateway
/// replicas; this replica adds its own starts of the caller that the count may not show yet
/// (`StartLedger`), so it never passes the cap itself, and with `R` replicas the cap is passed
/// by at most the caller's starts in flight on the others, `max_starts_in_flight_per_caller *
/// (R - 1)`. The returned start is held until the start is made. Callers without an identity
/// (authentication off) have no cap.
pub(crate) async fn check_unfinished(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Option<crate::shares::StartInFlight>, Problem> {
    use durabletask::{InstanceQuery, OrchestrationStatus as S};
    let cap = state.config.limits.max_unfinished_per_caller;
    let prefix = state.ids.prefix_of(caller);
    if cap == 0 || prefix.is_empty() {
        return Ok(None);
    }
    let reading = state.starts_in_flight.reading(&prefix, id).await;
    let page_size = u32::try_from(cap.saturating_add(1).min(1000)).unwrap_or(1000);
    let count = async || {
        let mut unfinished = std::collections::HashSet::new();
        let mut token = None;
        loop {
            let page = with_deadline(
                state,
                "QueryInstances",
                state.client.query_instances(InstanceQuery {
                    runtime_status: vec![S::Pending, S::Running, S::Suspended],
                    instance_id_prefix: Some(prefix.clone()),
                    page_size: Some(page_size),
                    continuation_token: token,
                    ..Default::default()
                }),
            )
            .await?;
            unfinished.extend(
                page.instances
                    .into_iter()
                    .map(|m| m.instance_id)
                    .filter(|id| !id.ends_with(contract::CALLBACK_SUFFIX)),
            );
            token = page.continuation_token;
            if token.is_none() || unfinished.len() >= cap {
                return Ok::<_, Problem>(unfinished);
            }
        }
    };
    reading.admit(cap, count).await?.map(Some).map_err(|_| {
        state.metrics.unfinished_refused.inc();
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-unfinished-operations",
            "Too Many Requests",
            format!(
                "this caller has {cap} operations unfinished, its cap (max_unfinished_per_caller); start more once some have ended, or cancel some"
            ),
        )
        .retry_after(state.config.retry_after_seconds.max(5))
    })
}

/// An operation to start: its orchestration, id, input and the tags beside the owner's.
pub(crate) struct NewOperation<'a, I: ?Sized> {
    pub name: &'a str,
    pub id: &'a str,
    pub input: &'a I,
    pub tags: Vec<(String, String)>,
}

/// Starts `op` in a `create_orchestration` span whose trace context the orchestration
/// continues (the caller's, `edge.trace`, when spans are not exported); counted in
/// `gateway_operations_started`.
pub(crate) async fn start_orchestration<I: serde::Serialize + ?Sized>(
    state: &AppState,
    edge: &crate::edge::Edge,
    caller: &Caller,
    op: NewOperation<'_, I>,
) -> Result<(), Problem> {
    let (span, trace) = create_span(op.name, op.id, edge.trace.as_ref());
    let opts = StartOptions {
        instance_id: Some(op.id.to_string()),
        version: state.config.orchestration_version.clone(),
        parent_trace_context: trace,
        tags: owner_tags(caller).into_iter().chain(op.tags).collect(),
        ..Default::default()
    };
    with_deadline(
        state,
        "StartInstance",
        state
            .client
            .schedule_new_orchestration(op.name, op.input, opts),
    )
    .instrument(span)
    .await?;
    state.metrics.started.inc();
    Ok(())
}

/// Starts `name` under `opts.instance_id` unless an instance with that id already exists,
/// whatever its status: `true` when this call started it.
pub(crate) async fn start_once<I: serde::Serialize + ?Sized>(
    state: &AppState,
    name: &str,
    input: &I,
    mut opts: StartOptions,
    span: tracing::Span,
) -> Result<bool, Problem> {
    opts.replaceable_statuses = Some(vec![]);
    // Every operation (and its callback delivery) runs on the code version it started at.
    opts.version = opts
        .version
        .or_else(|| state.config.orchestration_version.clone());
    let started = dts_call(
        state,
        "StartInstance",
        state.config.dts_timeout(),
        state.client.schedule_new_orchestration(name, input, opts),
    )
    .instrument(span)
    .await
    .map_err(|_| timed_out(state))?;
    match started {
        Ok(_) => Ok(true),
        Err(DtsError::AlreadyExists(_)) => Ok(false),
        Err(e) => Err(dts_problem(state, "StartInstance", e)),
    }
}

/// The tags recording who started an operation.
pub(crate) fn owner_tags(caller: &Caller) -> std::collections::HashMap<String, String> {
    caller
        .owner
        .iter()
        .map(|o| (crate::auth::OWNER_TAG.to_string(), o.clone()))
        .collect()
}

/// An operation's metadata, `404` when there is none.
pub(crate) async fn fetch(
    state: &AppState,
    id: &str,
    payloads: bool,
) -> Result<OrchestrationMetadata, Problem> {
    valid_id(id)?;
    record_operation(id);
    with_deadline(
        state,
        "GetInstance",
        state.client.get_instance(id, payloads),
    )
    .await?
    .ok_or_else(|| operation_not_found(id))
}

/// Names the operation on the request's span (for traces) and its log lines.
pub(crate) fn record_operation(id: &str) {
    tracing::Span::current().record("operation.id", id);
    tracing::Span::current().record("operation_id", id);
}

/// The span around starting an orchestration, and the trace context to hand to it: this span's
/// when traces are exported, else the caller's `traceparent` passed through unchanged.
pub(crate) fn create_span(
    name: &str,
    id: &str,
    caller_trace: Option<&durabletask::TraceContext>,
) -> (tracing::Span, Option<durabletask::TraceContext>) {
    record_operation(id);
    let span = tracing::info_span!(
        "create_orchestration",
        otel.name = %format!("create_orchestration:{name}"),
        otel.kind = "client",
        durabletask.type = "orchestration",
        durabletask.task.name = %name,
        durabletask.task.instance_id = %id,
        operation.id = %id,
    );
    let context = match service_kit::telemetry::traceparent(&span) {
        Some(traceparent) => Some(durabletask::TraceContext {
            traceparent,
            tracestate: caller_trace.and_then(|t| t.tracestate.clone()),
        }),
        None => caller_trace.cloned(),
    };
    (span, context)
}
