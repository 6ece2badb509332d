//! `GET /api/status/{id}/events`: the status monitor as a live stream (`text/event-stream`).
//!
//! Each event is the status document, sent when its status, custom status or error changes; its
//! id is the operation's `last_updated_at` in milliseconds, which every gateway replica reads
//! the same from the scheduler, so a client that reconnects anywhere with `Last-Event-ID` gets
//! only what is newer. The stream ends after the operation does (and on shutdown, and after
//! `max_stream_seconds`; the client then reconnects). A stream holds one of the `max_long_polls`
//! places while open.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use durabletask::OrchestrationMetadata;
use tokio::sync::mpsc;

use crate::AppState;
use crate::edge::{Edge, LastEventId};
use crate::extract::OperationPath;
use crate::model::{OperationError, OperationState, OperationStatusBody, StatusDocument};
use crate::problem::Problem;
use crate::scheduler::fetch;

/// One event of the stream, as a client's SSE parser reads it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only documents the stream; events are built with axum's `Event`.
pub(crate) struct StatusEvent {
    /// Always `status`.
    #[schema(example = "status")]
    event: String,
    /// The operation's `last_updated_at` in milliseconds: send it back as `Last-Event-ID`.
    #[schema(example = "1764664806492")]
    id: String,
    /// The status document (`OperationStatusBody`), as JSON text.
    #[schema(content_media_type = "application/json")]
    data: String,
    /// Milliseconds a client waits before it reconnects (`retry_after_seconds`).
    retry: Option<u64>,
}

/// Keep-alive comments: below the idle timeouts of proxies in front (ingress-nginx: 60 s).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The status document as a stream of events.
#[utoipa::path(
    get,
    path = "/api/status/{id}/events",
    tag = "operations",
    params(
        ("id" = String, Path, description = "The operation id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: only newer ones are sent"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: events named `status`, each the status document (JSON) with the operation's `last_updated_at` in milliseconds as its id, sent when the status, custom status or error changes; keep-alive comments every 15 s; the stream ends after the operation does", content_type = "text/event-stream", body = StatusEvent),
        (status = 204, description = "The operation has ended and `Last-Event-ID` already names its last state: nothing more will come (a browser's EventSource stops reconnecting)"),
        (status = 503, description = "`max_long_polls` long polls and streams are already open, or the gateway is shutting down; retry after `Retry-After`", body = crate::ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
        super::OperationNotFound,
        super::SchedulerProblems,
    ),
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    edge: Edge,
    LastEventId(last_seen): LastEventId,
    caller: Option<axum::Extension<crate::shares::CallerKey>>,
    OperationPath(id): OperationPath,
) -> Result<Response, Problem> {
    // An unknown (or another caller's) id is a 404 before any stream opens.
    let first = fetch(&state, &id, true).await?;
    if first.runtime_status.is_terminal() && last_seen.is_some_and(|seen| seen >= version(&first)) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let slot = match state.stream_slot(caller.as_ref().map(|c| &*c.0.0)) {
        Ok(slot) => slot,
        Err(share_full) => {
            state.metrics.streams_refused.inc();
            let problem = if share_full {
                Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-waiting-for-caller",
                    "Too Many Requests",
                    "this caller has as many long polls and status streams open as its share allows (max_long_polls_per_caller); close one, poll the status instead, or retry shortly",
                )
            } else {
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too-many-waiting",
                    "Service Unavailable",
                    "as many long polls and status streams are open as this gateway allows (max_long_polls), or it is shutting down; poll the status instead, or retry shortly",
                )
            };
            return Err(problem.retry_after(state.config.retry_after_seconds));
        }
    };
    let links = edge.links(&id);
    // A task reads and sends; the response streams what it sends. When the client goes, the
    // channel closes and the task ends with it.
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(4);
    tokio::spawn(async move {
        let _slot = slot;
        let mut watch = Watch {
            last_id: last_seen,
            last_sent: None,
        };
        let deadline = tokio::time::Instant::now() + state.config.limits.max_stream();
        let mut current = first;
        loop {
            if let Some(event) = watch.event(&current, &id, &links) {
                let event = event.retry(Duration::from_secs(state.config.retry_after_seconds));
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if current.runtime_status.is_terminal() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(state.config.limits.stream_poll_interval()) => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = state.releasing.cancelled() => return,
            }
            match fetch(&state, &id, true).await {
                Ok(m) => current = m,
                // Purged meanwhile: nothing more will come.
                Err(p) if p.status() == StatusCode::NOT_FOUND => return,
                // The scheduler is slow or away: the next read may do better.
                Err(_) => {}
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The version of an operation's state: its last update, in milliseconds.
fn version(m: &OrchestrationMetadata) -> i64 {
    m.last_updated_at.map_or(0, |t| t.timestamp_millis())
}

/// What a stream has sent so far.
struct Watch {
    last_id: Option<i64>,
    /// Status, custom status and error of the last event.
    last_sent: Option<(OperationState, Option<String>, Option<OperationError>)>,
}

impl Watch {
    /// The event for `m`, if it is newer than what the client has and differs from the last.
    fn event(
        &mut self,
        m: &OrchestrationMetadata,
        id: &str,
        links: &crate::links::OperationLinks,
    ) -> Option<Event> {
        let v = version(m);
        if self.last_id.is_some_and(|seen| v <= seen) {
            return None;
        }
        let document = StatusDocument::of(id, m);
        let key = (
            document.status,
            m.serialized_custom_status.clone(),
            document.error.clone(),
        );
        if self.last_sent.as_ref() == Some(&key) {
            return None;
        }
        let body = OperationStatusBody {
            document,
            callback: None,
            links: links.clone(),
        };
        let event = Event::default()
            .event("status")
            .id(v.to_string())
            .json_data(&body)
            .ok()?;
        self.last_sent = Some(key);
        self.last_id = Some(v);
        Some(event)
    }
}
