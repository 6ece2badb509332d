//! The Durable Task dashboard: the list of instances, one instance's status, history and
//! payloads, and actions on it. It reads and acts only through the DTS protocol (the SDK's
//! client), so it works against the local scheduler and against Azure DTS alike.
//!
//! Pages are rendered on the server (maud escapes every value it interpolates, so a payload of
//! `<script>` is text); the assets are embedded; actions are POST forms that carry a token only
//! this process hands out, and are refused from another site.

mod diagrams;
mod listing;
mod run;
pub mod settings;
mod views;

pub use run::run;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use durabletask::{Client, InstanceQuery, OrchestrationStatus};
use serde::Deserialize;
use service_kit::api_keys::{ApiKeys, Role};

/// What every request shares.
#[derive(Clone)]
pub struct DashState(Arc<Shared>);

pub struct Shared {
    client: Client,
    /// When set, every page needs one of these keys with the admin role.
    admin_keys: Option<Arc<ApiKeys>>,
    /// Whether the action forms are shown and accepted.
    actions: bool,
    page_size: u32,
    /// The token every action form carries: random per process, never in a cookie, so another
    /// site's page cannot know it.
    form_token: String,
    counts: listing::CountCache,
    /// The names a request may carry in `Host` (see `settings::Settings::allowed_hosts`).
    hosts: Vec<String>,
}

impl DashState {
    /// Answering to the loopback names only.
    pub fn new(client: Client, actions: bool, page_size: u32) -> Self {
        let hosts = settings::Settings::default().allowed_hosts();
        Self::with_admin_keys(client, actions, page_size, None, hosts)
    }

    pub fn with_admin_keys(
        client: Client,
        actions: bool,
        page_size: u32,
        admin_keys: Option<Arc<ApiKeys>>,
        hosts: Vec<String>,
    ) -> Self {
        Self(Arc::new(Shared {
            client,
            admin_keys,
            actions,
            page_size,
            form_token: uuid::Uuid::new_v4().simple().to_string(),
            counts: listing::CountCache::default(),
            hosts,
        }))
    }
}

impl std::ops::Deref for DashState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The dashboard's connection limits: it is opened by a few people at a time, so a small cap;
/// the deadlines of every listener of the project (`service_kit::http_server`).
pub fn server_limits() -> service_kit::http_server::ServerLimits {
    service_kit::http_server::ServerLimits {
        header_read_timeout: std::time::Duration::from_secs(10),
        idle_timeout: std::time::Duration::from_secs(75),
        write_stall_timeout: std::time::Duration::from_secs(10),
        answer_timeout: std::time::Duration::from_secs(60),
        max_header_bytes: 16 * 1024,
        max_connections: 128,
        send_buffer_bytes: 128 * 1024,
        retry_after_seconds: 1,
        service: "dashboard",
    }
}

pub fn app(state: DashState) -> Router {
    Router::new()
        .route("/", get(instances))
        .route("/instances/{id}", get(instance))
        .route("/instances/{id}/actions/{action}", post(act))
        .route("/entities", get(entities))
        .route("/assets/dashboard.css", get(css))
        .route("/assets/dashboard.js", get(js))
        .fallback(|| async { page_error(StatusCode::NOT_FOUND, "No such page.") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_own_name,
        ))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// A `Host` (lower case) without its port: `localhost:8082` is `localhost`, `[::1]:8082` is
/// `[::1]`.
pub(crate) fn host_name(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map_or(host.clone(), |h| format!("{h}]"));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
        _ => host,
    }
}

/// Only requests that name this dashboard (`Host`) get pages; others `421`. A page served under
/// another name whose DNS points at this address (DNS rebinding) would otherwise be same-origin
/// with it for the browser, and could read every tenant's payloads and, with actions on, act.
async fn require_own_name(
    State(state): State<DashState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .map(host_name);
    match host {
        Some(h) if state.hosts.contains(&h) => next.run(request).await,
        other => page_error(
            StatusCode::MISDIRECTED_REQUEST,
            &format!(
                "This dashboard does not answer to the name '{}'. Open it as localhost (kubectl port-forward), or add the name to DASHBOARD__HOSTS.",
                other.unwrap_or_default()
            ),
        ),
    }
}

/// With admin keys configured, every page (not `/healthz`) needs one: the browser's Basic
/// prompt with the key as the password, or `X-API-Key` from a script.
async fn require_admin(
    State(state): State<DashState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(keys) = &state.admin_keys else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let presented = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| basic_password(headers));
    let admin = presented
        .and_then(|key| keys.check(&key))
        .is_some_and(|k| k.role == Role::Admin);
    if admin {
        return next.run(request).await;
    }
    let mut response = page_error(
        StatusCode::UNAUTHORIZED,
        "This dashboard needs an admin key of the gateway (as the password).",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="Durable Task dashboard", charset="UTF-8""#),
    );
    response
}

/// The password of `Authorization: Basic`.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// Pages load nothing but this server's own assets, run no inline script, and are not framed.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/dashboard.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/dashboard.js"),
    )
        .into_response()
}

/// A rendered page.
fn page(markup: maud::Markup) -> Response {
    axum::response::Html(markup.into_string()).into_response()
}

fn page_error(status: StatusCode, message: &str) -> Response {
    (status, page(views::error_page(status, message))).into_response()
}

/// The list's filters, as the form sends them.
/// The entities page's filters: an id prefix (`@name@` for one entity name) and the page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EntityListQuery {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub page: String,
}

/// Durable entities, with their state, last change, lock holder and waiting operations; the
/// SDKs' recurring schedules are entities named `schedule`, shown apart.
async fn entities(State(state): State<DashState>, Query(q): Query<EntityListQuery>) -> Response {
    let query = durabletask::EntityQuery {
        instance_id_starts_with: Some(q.prefix.trim().to_string()).filter(|p| !p.is_empty()),
        include_state: true,
        include_transient: true,
        page_size: Some(state.page_size),
        continuation_token: Some(q.page.clone()).filter(|p| !p.is_empty()),
        ..Default::default()
    };
    match state.client.query_entities(query).await {
        Ok(found) => page(views::entities_page(&q, &found)),
        Err(e) => page_error(
            StatusCode::BAD_GATEWAY,
            &format!("The scheduler did not answer the entity query: {e}"),
        ),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub page: String,
    /// `1`: no automatic refresh.
    #[serde(default)]
    pub paused: String,
}

fn parse_time(t: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = t.trim();
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.to_utc())
        .or_else(|_| {
            // What a datetime-local input sends.
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M").map(|n| n.and_utc())
        })
        .ok()
}

async fn instances(State(state): State<DashState>, Query(q): Query<ListQuery>) -> Response {
    let statuses: Vec<OrchestrationStatus> = q
        .status
        .split(',')
        .filter_map(|s| views::STATUSES.iter().find(|(_, name)| *name == s.trim()))
        .map(|(st, _)| *st)
        .collect();
    let query = InstanceQuery {
        runtime_status: statuses,
        created_from: parse_time(&q.from),
        created_to: parse_time(&q.to),
        instance_id_prefix: Some(q.prefix.trim().to_string()).filter(|p| !p.is_empty()),
        page_size: None,
        continuation_token: Some(q.page.clone()).filter(|p| !p.is_empty()),
        fetch_inputs_and_outputs: false,
    };
    let name = q.name.trim();
    let (found, counts) = tokio::join!(
        listing::page(&state.client, query.clone(), name, state.page_size),
        state.counts.counts(&state.client, &query, name)
    );
    match (found, counts) {
        (Ok(found), Ok(counts)) => page(views::instances_page(&q, &found, &counts)),
        (Err(e), _) | (_, Err(e)) => page_error(
            StatusCode::BAD_GATEWAY,
            &format!("The scheduler did not answer the query: {e}"),
        ),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct InstanceQueryParams {
    /// The action just done, to say so.
    #[serde(default)]
    pub done: String,
}

async fn instance(
    State(state): State<DashState>,
    Path(id): Path<String>,
    Query(q): Query<InstanceQueryParams>,
) -> Response {
    let metadata = match state.client.get_instance(&id, true).await {
        Ok(Some(m)) => m,
        Ok(None) => return page_error(StatusCode::NOT_FOUND, &format!("No instance '{id}'.")),
        Err(e) => {
            return page_error(
                StatusCode::BAD_GATEWAY,
                &format!("The scheduler did not answer: {e}"),
            );
        }
    };
    let history = state
        .client
        .get_history(&id)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let events: Vec<_> = history
        .iter()
        .map(durabletask::history::EventSummary::of)
        .collect();
    let token = state.actions.then_some(state.form_token.as_str());
    page(views::instance_page(&metadata, &events, token, &q.done))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    /// Missing is refused like wrong (403), not as a malformed form.
    #[serde(default)]
    token: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    event_name: String,
    #[serde(default)]
    event_data: String,
}

/// Whether a POST comes from this dashboard's own pages: browsers say where a request comes
/// from (`Sec-Fetch-Site`, `Origin`); another site's form or script is refused.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

async fn act(
    State(state): State<DashState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if !state.actions {
        return page_error(
            StatusCode::FORBIDDEN,
            "This dashboard is read-only (set DASHBOARD__ACTIONS=true to allow actions).",
        );
    }
    if !same_origin(&headers) || form.token != state.form_token {
        return page_error(
            StatusCode::FORBIDDEN,
            "Refused: the request did not come from this dashboard's own page.",
        );
    }
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    let c = &state.client;
    let result = match action.as_str() {
        "terminate" => {
            c.terminate(
                &id,
                &reason.unwrap_or("terminated from the dashboard"),
                true,
            )
            .await
        }
        "suspend" => c.suspend(&id, reason).await,
        "resume" => c.resume(&id, reason).await,
        "rewind" => c.rewind(&id, reason).await,
        "restart" => c.restart(&id, false).await.map(|_| ()),
        "raise-event" => {
            let data: serde_json::Value = if form.event_data.trim().is_empty() {
                serde_json::Value::Null
            } else {
                match serde_json::from_str(&form.event_data) {
                    Ok(v) => v,
                    Err(e) => {
                        return page_error(
                            StatusCode::BAD_REQUEST,
                            &format!("The event data is not JSON: {e}"),
                        );
                    }
                }
            };
            c.raise_event(&id, form.event_name.trim(), &data).await
        }
        "purge" => match c.purge_instance(&id, false).await {
            Ok(_) => return Redirect::to("/?purged=1").into_response(),
            Err(e) => Err(e),
        },
        _ => return page_error(StatusCode::NOT_FOUND, "No such action."),
    };
    match result {
        Ok(()) => Redirect::to(&format!(
            "/instances/{}?done={action}",
            views::path_segment(&id)
        ))
        .into_response(),
        Err(e) => page_error(
            StatusCode::CONFLICT,
            &format!("The scheduler refused to {action} '{id}': {e}"),
        ),
    }
}
