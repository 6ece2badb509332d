//! The pages. maud escapes every interpolated value: payloads, names and ids are always text.

use axum::http::StatusCode;
use durabletask::OrchestrationMetadata;
use durabletask::history::EventSummary;
use maud::{DOCTYPE, Markup, html};

use crate::listing::{Counts, Listing};
use crate::{EntityListQuery, ListQuery};

/// The statuses a list can be filtered by, with the names the form uses (an operator's view:
/// the scheduler's runtime statuses, named in `contract::status`).
pub(crate) use contract::status::RUNTIME_STATUSES as STATUSES;
use contract::status::runtime_name as status_name;

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "—".to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// `id` as one path segment (ids may hold `/`, `?`, `#`, `%`, spaces).
pub(crate) fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_value(v: &str) -> String {
    path_segment(v)
}

fn layout(title: &str, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · Durable Task dashboard" }
                link rel="stylesheet" href="/assets/dashboard.css";
                script src="/assets/dashboard.js" defer {}
            }
            body {
                header {
                    a.home href="/" { "Durable Task dashboard" }
                    nav aria-label="Sections" {
                        a href="/" { "Instances" }
                        " · "
                        a href="/entities" { "Entities" }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Markup {
    layout(
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error role="alert" { (message) }
            p { a href="/" { "Back to the instances" } }
        },
    )
}

pub(crate) fn instances_page(q: &ListQuery, page: &Listing, counts: &Counts) -> Markup {
    let paused = q.paused == "1";
    // The same filters, to carry into the pause link and the next page.
    let filters = format!(
        "status={}&name={}&prefix={}&from={}&to={}",
        query_value(&q.status),
        query_value(&q.name),
        query_value(&q.prefix),
        query_value(&q.from),
        query_value(&q.to)
    );
    // The filters but the status, for the counts' links.
    let other_filters = format!(
        "name={}&prefix={}&from={}&to={}&paused={}",
        query_value(&q.name),
        query_value(&q.prefix),
        query_value(&q.from),
        query_value(&q.to),
        query_value(&q.paused)
    );
    let at_least = if counts.partial { "≥ " } else { "" };
    layout(
        "Instances",
        (!paused).then_some(5),
        html! {
            h1 { "Orchestration instances" }
            form.filters method="get" action="/" aria-label="Filter instances" {
                label { "Status "
                    select name="status" {
                        option value="" selected[q.status.is_empty()] { "Any" }
                        @for (_, name) in STATUSES {
                            option value=(name) selected[q.status == name] { (name) }
                        }
                    }
                }
                label { "Name " input type="text" name="name" value=(q.name); }
                label { "Id prefix " input type="text" name="prefix" value=(q.prefix); }
                label { "Created from " input type="datetime-local" name="from" value=(q.from); }
                label { "to " input type="datetime-local" name="to" value=(q.to); }
                input type="hidden" name="paused" value=(q.paused);
                button type="submit" { "Filter" }
            }
            p.toolbar {
                @if paused {
                    a href={ "/?" (filters) } { "Resume auto-refresh" }
                } @else {
                    "Refreshing every 5 s. "
                    a href={ "/?" (filters) "&paused=1" } { "Pause" }
                }
            }
            nav.counts aria-label="Counts by status" {
                a href={ "/?" (other_filters) } aria-current=[q.status.is_empty().then_some("true")] data-count="All" {
                    "All: " (at_least) (counts.total())
                }
                @for ((_, name), count) in STATUSES.iter().zip(counts.by_status) {
                    " "
                    a class={ "badge status-" (name.to_lowercase()) } href={ "/?" (other_filters) "&status=" (name) }
                        aria-current=[(q.status == *name).then_some("true")] data-count=(name) {
                        (name) ": " (at_least) (count)
                    }
                }
            }
            @if let Some(read) = page.searched {
                p.notice role="status" { "Searched " (read) " instances for this name; the next page goes on searching." }
            }
            @if page.rows.is_empty() {
                p { "No instances match." }
            } @else {
                table.instances {
                    thead { tr { th { "Instance" } th { "Name" } th { "Status" } th { "Created" } th { "Last updated" } } }
                    tbody {
                        @for i in &page.rows {
                            tr data-instance=(i.instance_id) {
                                td { a href={ "/instances/" (path_segment(&i.instance_id)) } { (i.instance_id) } }
                                td { (i.name) }
                                td { span class={ "badge status-" (status_name(i.runtime_status).to_lowercase()) } { (status_name(i.runtime_status)) } }
                                td { (time(i.created_at)) }
                                td { (time(i.last_updated_at)) }
                            }
                        }
                    }
                }
            }
            @if let Some(token) = &page.next {
                p { a rel="next" href={ "/?" (filters) "&paused=" (query_value(&q.paused)) "&page=" (query_value(token)) } { "Next page" } }
            }
        },
    )
}

fn payload(title: &str, json: Option<&str>) -> Markup {
    // Pretty when it is JSON; as sent otherwise.
    let shown = json.map(|j| {
        serde_json::from_str::<serde_json::Value>(j)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| j.to_string())
    });
    html! {
        section.payload aria-label=(title) {
            h3 { (title) }
            @match shown {
                Some(text) => pre { (text) },
                None => p.none { "None" },
            }
        }
    }
}

pub(crate) fn instance_page(
    m: &OrchestrationMetadata,
    events: &[EventSummary],
    form_token: Option<&str>,
    done: &str,
) -> Markup {
    let status = status_name(m.runtime_status);
    let base = format!("/instances/{}/actions", path_segment(&m.instance_id));
    layout(
        &m.instance_id,
        None,
        html! {
            h1 { "Instance " code { (m.instance_id) } }
            @if !done.is_empty() {
                p.notice role="status" { "Done: " (done) "." }
            }
            dl.summary {
                dt { "Name" } dd { (m.name) }
                dt { "Status" } dd { span class={ "badge status-" (status.to_lowercase()) } data-status=(status) { (status) } }
                dt { "Created" } dd { (time(m.created_at)) }
                dt { "Last updated" } dd { (time(m.last_updated_at)) }
                dt { "Completed" } dd { (time(m.completed_at)) }
                @if let Some(cs) = &m.serialized_custom_status {
                    dt { "Custom status" } dd { code { (cs) } }
                }
                @if let Some(f) = &m.failure_details {
                    dt { "Failure" } dd.error { (f.error_type) ": " (f.message) }
                }
            }
            @if let Some(token) = form_token {
                section.actions aria-label="Actions" {
                    h2 { "Actions" }
                    @for (action, label) in [("terminate", "Terminate"), ("suspend", "Suspend"), ("resume", "Resume"), ("rewind", "Rewind"), ("restart", "Restart"), ("purge", "Purge")] {
                        form method="post" action={ (base) "/" (action) } data-confirm={ (label) " " (m.instance_id) "?" } {
                            input type="hidden" name="token" value=(token);
                            button type="submit" name="action" value=(action) { (label) }
                        }
                    }
                    form.raise method="post" action={ (base) "/raise-event" } data-confirm={ "Raise this event on " (m.instance_id) "?" } {
                        input type="hidden" name="token" value=(token);
                        label { "Event " input type="text" name="event_name" required; }
                        label { "Data (JSON) " input type="text" name="event_data"; }
                        button type="submit" { "Raise event" }
                    }
                }
            }
            h2 { "Input / Output" }
            div.payloads {
                (payload("Input", m.serialized_input.as_deref()))
                (payload("Output", m.serialized_output.as_deref()))
            }
            h2 { "Timeline" }
            (crate::diagrams::timeline(events))
            h2 { "Sequence" }
            (crate::diagrams::sequence(events))
            h2 { "History" }
            table.history {
                thead { tr { th { "#" } th { "Event" } th { "Time" } th { "Name" } th { "Details" } } }
                tbody {
                    @for e in events {
                        tr data-kind=(e.kind) {
                            td { (e.event_id) }
                            td { (e.kind) }
                            td { (time(e.timestamp)) }
                            td { (e.name.as_deref().unwrap_or("")) }
                            td {
                                @if let Some(id) = e.scheduled_id { "answers #" (id) " " }
                                @if let Some((kind, message)) = &e.failure { span.error { (kind) ": " (message) } " " }
                                @if let Some(at) = e.fire_at { "fires " (time(Some(at))) " " }
                                @if let Some(i) = &e.instance_id { "instance " code { (i) } " " }
                                @if let Some(s) = e.runtime_status { "status " (s) " " }
                                @if let Some(d) = &e.data {
                                    details { summary { "Data" } pre { (d) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A state as JSON text, pretty when it parses.
fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_string())
}

/// The name the SDKs give the entity behind a recurring schedule.
const SCHEDULE_ENTITY: &str = "schedule";

pub(crate) fn entities_page(q: &EntityListQuery, page: &durabletask::EntityPage) -> Markup {
    let (schedules, others): (Vec<_>, Vec<_>) = page
        .entities
        .iter()
        .partition(|e| e.id.name == SCHEDULE_ENTITY);
    let table = |rows: &[&durabletask::EntityMetadata], label: &str| {
        html! {
            table.entities aria-label=(label) {
                thead { tr { th { "Entity" } th { "Key" } th { "State" } th { "Last modified" } th { "Locked by" } th { "Waiting" } } }
                tbody {
                    @for e in rows {
                        tr data-entity=(e.id.to_string()) data-locked=(e.locked_by.is_some()) {
                            td { (e.id.name) }
                            td { code { (e.id.key) } }
                            td { @match &e.serialized_state {
                                Some(s) => pre.payload { (pretty_json(s)) },
                                None => span.muted { "no state" },
                            } }
                            td { (time(e.last_modified)) }
                            td { @match &e.locked_by {
                                Some(holder) => a href={ "/instances/" (path_segment(holder)) } { (holder) },
                                None => "—",
                            } }
                            td { (e.backlog_queue_size) }
                        }
                    }
                }
            }
        }
    };
    layout(
        "Entities",
        None,
        html! {
            h1 { "Entities" }
            form.filters method="get" action="/entities" {
                label { "Id prefix " input type="text" name="prefix" value=(q.prefix) placeholder="@counter@"; }
                button type="submit" { "Filter" }
            }
            @if page.entities.is_empty() {
                p.empty { "No entities." }
            }
            @if !schedules.is_empty() {
                h2 { "Recurring schedules" }
                (table(&schedules, "Schedules"))
            }
            @if !others.is_empty() {
                h2 { "Entities" }
                (table(&others, "Entities"))
            }
            @if let Some(token) = &page.continuation_token {
                p { a.next href={ "/entities?prefix=" (query_value(&q.prefix)) "&page=" (query_value(token)) } { "Next page" } }
            }
        },
    )
}
