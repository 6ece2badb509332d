//! The Timeline and Sequence views of one instance, drawn as SVG on the server from its history.

use chrono::{DateTime, Utc};
use durabletask::history::EventSummary;
use maud::{Markup, html};

/// Something that took time: an activity, a timer or a sub-orchestration, from the event that
/// started it to the one that answered it (still running: to the last event).
struct Span {
    kind: &'static str,
    label: String,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    failed: bool,
}

fn spans(events: &[EventSummary]) -> Vec<Span> {
    let mut out: Vec<(i32, Span)> = Vec::new();
    for e in events {
        let Some(at) = e.timestamp else { continue };
        let started = match e.kind {
            "TaskScheduled" => Some(("activity", e.name.clone().unwrap_or_default())),
            "TimerCreated" => Some(("timer", "timer".to_string())),
            "SubOrchestrationInstanceCreated" => {
                Some(("sub-orchestration", e.name.clone().unwrap_or_default()))
            }
            _ => None,
        };
        if let Some((kind, label)) = started {
            out.push((
                e.event_id,
                Span {
                    kind,
                    label,
                    start: at,
                    end: None,
                    failed: false,
                },
            ));
            continue;
        }
        if let Some(id) = e.scheduled_id
            && let Some((_, span)) = out
                .iter_mut()
                .find(|(sid, s)| *sid == id && s.end.is_none())
        {
            span.end = Some(at);
            span.failed = e.kind.ends_with("Failed");
        }
    }
    out.into_iter().map(|(_, s)| s).collect()
}

const WIDTH: f64 = 760.0;
const LABEL: f64 = 280.0;
const ROW: f64 = 26.0;

/// Bars over time: the orchestration itself, then each activity, timer and sub-orchestration.
pub(crate) fn timeline(events: &[EventSummary]) -> Markup {
    let times: Vec<DateTime<Utc>> = events.iter().filter_map(|e| e.timestamp).collect();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return html! { p { "No events yet." } };
    };
    let total = (*last - *first).num_microseconds().unwrap_or(1).max(1) as f64;
    let x = |t: DateTime<Utc>| {
        LABEL + (t - *first).num_microseconds().unwrap_or(0) as f64 / total * (WIDTH - LABEL - 10.0)
    };
    let spans = spans(events);
    let height = ROW * (spans.len() as f64 + 2.0);
    let whole = (*last - *first).num_milliseconds();
    html! {
        svg.timeline role="img" aria-label="Timeline" viewBox={ "0 0 " (WIDTH) " " (height) } width="100%" {
            title { "Timeline: the orchestration and what it waited on, over " (whole) " ms" }
            g data-kind="orchestration" {
                text x="4" y=(ROW * 0.7) { "orchestration" }
                rect.bar.orchestration x=(LABEL) y=(ROW * 0.2) width=((x(*last) - LABEL).max(2.0)) height=(ROW * 0.6) {
                    title { (whole) " ms" }
                }
            }
            @for (i, s) in spans.iter().enumerate() {
                @let y = ROW * (i as f64 + 1.0);
                @let end = s.end.unwrap_or(*last);
                @let ms = (end - s.start).num_milliseconds();
                g data-kind=(s.kind) {
                    text x="4" y=(y + ROW * 0.7) { (short(&format!("{}: {}", s.kind, s.label))) }
                    rect class={ "bar " (s.kind) @if s.failed { " failed" } @if s.end.is_none() { " open" } }
                        x=(x(s.start)) y=(y + ROW * 0.2) width=((x(end) - x(s.start)).max(2.0)) height=(ROW * 0.6) {
                        title { (s.kind) " " (s.label) ": " (ms) " ms" @if s.end.is_none() { " so far" } @if s.failed { ", failed" } }
                    }
                }
            }
        }
    }
}

/// Who sent what to whom, in history order: the orchestration, its activities and
/// sub-orchestrations as lifelines, the history's messages as arrows.
pub(crate) fn sequence(events: &[EventSummary]) -> Markup {
    let mut parties: Vec<String> = vec!["orchestration".into()];
    let mut names_by_id: Vec<(i32, String)> = Vec::new();
    let mut messages: Vec<(&'static str, String, String, String)> = Vec::new();
    let orchestration = "orchestration".to_string();
    for e in events {
        let name = e.name.clone().unwrap_or_default();
        let counterpart = match e.kind {
            "TaskScheduled" | "SubOrchestrationInstanceCreated" => {
                names_by_id.push((e.event_id, name.clone()));
                Some((
                    orchestration.clone(),
                    name.clone(),
                    format!("{} {}", verb(e.kind), name),
                ))
            }
            "TaskCompleted"
            | "TaskFailed"
            | "SubOrchestrationInstanceCompleted"
            | "SubOrchestrationInstanceFailed" => {
                let from = e
                    .scheduled_id
                    .and_then(|id| names_by_id.iter().find(|(i, _)| *i == id))
                    .map_or_else(|| "?".to_string(), |(_, n)| n.clone());
                Some((from, orchestration.clone(), verb(e.kind).to_string()))
            }
            "EventRaised" => Some((
                "caller".into(),
                orchestration.clone(),
                format!("event {name}"),
            )),
            "ExecutionStarted" => Some(("caller".into(), orchestration.clone(), "start".into())),
            "ExecutionCompleted" | "ExecutionTerminated" => Some((
                orchestration.clone(),
                "caller".into(),
                verb(e.kind).to_string(),
            )),
            "TimerCreated" | "TimerFired" => Some((
                orchestration.clone(),
                orchestration.clone(),
                verb(e.kind).to_string(),
            )),
            _ => None,
        };
        if let Some((from, to, label)) = counterpart {
            for p in [&from, &to] {
                if !parties.contains(p) {
                    parties.push(p.clone());
                }
            }
            messages.push((e.kind, from, to, label));
        }
    }
    // The caller first, then the orchestration, then the others in order of appearance.
    parties.sort_by_key(|p| match p.as_str() {
        "caller" => 0,
        "orchestration" => 1,
        _ => 2,
    });
    let column = (WIDTH / parties.len().max(1) as f64).min(220.0);
    let x = |p: &str| {
        let i = parties.iter().position(|q| q == p).unwrap_or(0);
        column * (i as f64 + 0.5)
    };
    let height = 40.0 + ROW * (messages.len() as f64 + 1.0);
    html! {
        svg.sequence role="img" aria-label="Sequence diagram" viewBox={ "0 0 " (WIDTH) " " (height) } width="100%" {
            title { "Sequence: " (messages.len()) " messages between " (parties.len()) " parties" }
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" {}
                }
            }
            @for p in &parties {
                g data-party=(p) {
                    text.party x=(x(p)) y="16" text-anchor="middle" { (p) }
                    line.lifeline x1=(x(p)) y1="24" x2=(x(p)) y2=(height) {}
                }
            }
            @for (i, (kind, from, to, label)) in messages.iter().enumerate() {
                @let y = 40.0 + ROW * i as f64;
                g data-message=(kind) {
                    @if from == to {
                        path.message d={ "M " (x(from)) " " (y) " h 30 v 10 h -28" } marker-end="url(#arrow)" fill="none" {}
                        text x=(x(from) + 34.0) y=(y + 4.0) { (label) }
                    } @else {
                        line.message x1=(x(from)) y1=(y) x2=(x(to)) y2=(y) marker-end="url(#arrow)" {}
                        text x=((x(from) + x(to)) / 2.0) y=(y - 4.0) text-anchor="middle" { (label) }
                    }
                }
            }
        }
    }
}

/// A label that fits left of the bars (the whole one is in the bar's tooltip).
fn short(label: &str) -> String {
    const MAX: usize = 40;
    if label.chars().count() <= MAX {
        return label.to_string();
    }
    let cut: String = label.chars().take(MAX - 1).collect();
    format!("{cut}…")
}

fn verb(kind: &str) -> &'static str {
    match kind {
        "TaskScheduled" => "call",
        "SubOrchestrationInstanceCreated" => "start",
        "TaskCompleted" | "SubOrchestrationInstanceCompleted" => "result",
        "TaskFailed" | "SubOrchestrationInstanceFailed" => "failed",
        "ExecutionCompleted" => "completed",
        "ExecutionTerminated" => "terminated",
        "TimerCreated" => "timer set",
        "TimerFired" => "timer fired",
        _ => "",
    }
}
