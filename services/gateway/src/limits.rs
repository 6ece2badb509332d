//! The limits every request meets before its handler: the size of its head (`431`), the trace
//! headers it may hand on, requests in progress (`503` with `Retry-After`, shed at once rather
//! than queued), the time a whole request may take (`408`), and each caller's rate (`429`). The
//! connection-level limits are in `serve`.

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};

use crate::auth::Caller;
use crate::problem::Problem;
use crate::{AppState, Settings};

/// Wraps the routes in the request limits of `config`.
pub(crate) fn apply(router: Router<AppState>, config: &Settings) -> Router<AppState> {
    let retry = config.retry_after_seconds;
    let timeout = config.limits.request_timeout();
    router
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |e: BoxError| async move {
                    refused(e, retry, timeout)
                }))
                .load_shed()
                // Global: `Router::layer` wraps each route on its own, and the limit is one
                // for the whole gateway.
                .layer(GlobalConcurrencyLimitLayer::new(
                    config.limits.max_concurrent_requests,
                ))
                .timeout(timeout),
        )
        .layer(from_fn_with_state(
            config.server.max_header_bytes,
            inspect_head,
        ))
}

fn refused(e: BoxError, retry_after_seconds: u64, timeout: Duration) -> Response {
    if e.is::<tower::timeout::error::Elapsed>() {
        let mut r = Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request Timeout",
            format!(
                "the request was not complete within {} s (request_timeout_seconds)",
                timeout.as_secs()
            ),
        )
        .into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let detail = if e.is::<tower::load_shed::error::Overloaded>() {
        "the gateway is answering as many requests as it is configured for (max_concurrent_requests); try again shortly".to_string()
    } else {
        format!("request refused: {e}")
    };
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "Service Unavailable",
        detail,
    )
    .retry_after(retry_after_seconds)
    .into_response()
}

/// Each caller's rate: a token bucket per caller (governor's GCRA), keyed by identity, or by
/// address when authentication is off.
pub type CallerLimiter = governor::RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
    governor::middleware::StateInformationMiddleware,
>;

/// The limiter of `config`, `None` without a rate.
pub fn caller_limiter(config: &Settings) -> Option<CallerLimiter> {
    let rate = std::num::NonZeroU32::new(config.limits.rate_limit_per_second)?;
    let burst = std::num::NonZeroU32::new(config.limits.rate_limit_burst).unwrap_or(rate);
    Some(
        governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
            .with_middleware::<governor::middleware::StateInformationMiddleware>(),
    )
}

/// After authentication (`auth::admit`): `429` past the caller's share or rate, with `Retry-After` and
/// the IETF `RateLimit-Policy` / `RateLimit` fields (on every answer, so clients can pace
/// themselves before they are refused).
pub(crate) async fn per_caller(state: &AppState, mut request: Request, next: Next) -> Response {
    use governor::clock::{Clock, DefaultClock};
    let owner = request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.owner.clone());
    // The caller's share of the requests in progress (callers with an identity).
    let _share = match &owner {
        Some(owner) => {
            let key: std::sync::Arc<str> = owner.as_str().into();
            let Some(share) = state.request_shares.take(&key) else {
                return Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-requests-in-progress",
                    "Too Many Requests",
                    format!(
                        "this caller has {} requests in progress, its share (max_requests_per_caller); try again when one has been answered",
                        state.request_shares.max()
                    ),
                )
                .retry_after(state.config.retry_after_seconds)
                .into_response();
            };
            request
                .extensions_mut()
                .insert(crate::shares::CallerKey(key));
            Some(share)
        }
        None => None,
    };
    let key = match owner {
        Some(owner) => owner,
        None => client_ip(&request, state.config.trust_forwarded)
            .map_or_else(|| "anonymous".to_string(), |ip| format!("ip:{ip}")),
    };
    let Some(limiter) = &state.rate_limiter else {
        return next.run(request).await;
    };
    let rate = f64::from(state.config.limits.rate_limit_per_second);
    let burst = state.config.limits.rate_limit_burst;
    let policy = format!(
        r#""per-caller";q={burst};w={}"#,
        (f64::from(burst) / rate).ceil().max(1.0)
    );
    let (mut response, remaining, reset) = match limiter.check_key(&key) {
        Ok(snapshot) => {
            let remaining = snapshot.remaining_burst_capacity();
            let refill = (f64::from(burst.saturating_sub(remaining)) / rate).ceil();
            (next.run(request).await, remaining, refill as u64)
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let response = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too Many Requests",
                format!(
                    "over {} requests a second (burst {burst}) for this caller; try again in {seconds} s",
                    state.config.limits.rate_limit_per_second
                ),
            )
            .retry_after(seconds)
            .into_response();
            (response, 0, seconds)
        }
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(r#""per-caller";r={remaining};t={reset}"#)) {
        headers.insert("ratelimit", v);
    }
    response
}

/// The client's address: the peer's, or behind a trusted proxy (`trust_forwarded`) the address
/// the nearest proxy recorded, the last of `X-Forwarded-For` or the last `for=` of `Forwarded`
/// (earlier entries come from the client and prove nothing).
pub(crate) fn client_ip(request: &Request, trust_forwarded: bool) -> Option<std::net::IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if !trust_forwarded {
        return peer;
    }
    let header = |name: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .rev()
            .find_map(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let forwarded = header("forwarded").and_then(|f| {
        let last = f.rsplit(',').next()?;
        let value = last.split(';').find_map(|p| {
            p.trim()
                .strip_prefix("for=")
                .or(p.trim().strip_prefix("For="))
        })?;
        parse_node(value.trim_matches('"'))
    });
    let x_forwarded = || {
        header("x-forwarded-for")
            .and_then(|f| f.rsplit(',').next().and_then(|v| parse_node(v.trim())))
    };
    forwarded.or_else(x_forwarded).or(peer)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`.
fn parse_node(v: &str) -> Option<std::net::IpAddr> {
    v.parse()
        .ok()
        .or_else(|| v.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            v.strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .and_then(|ip| ip.parse().ok())
        })
}

/// `431` for a head over `max_header_bytes`; then the trace headers are made safe to keep.
async fn inspect_head(
    State(max_header_bytes): State<usize>,
    mut request: Request,
    next: Next,
) -> Response {
    let size = head_size(&request);
    if size > max_header_bytes {
        return Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request Header Fields Too Large",
            format!(
                "the request head is {size} bytes, over the limit of {max_header_bytes} (max_header_bytes)"
            ),
        )
        .into_response();
    }
    trace_headers(request.headers_mut());
    next.run(request).await
}

/// Bytes of the request line and headers as sent (close enough: HTTP/1.1 framing).
fn head_size(request: &Request) -> usize {
    let line = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    line + request
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// The W3C trace headers reach the scheduler, and are stored with each operation, so only what
/// the W3C format allows goes on: `traceparent` when it parses (else both headers go, and the
/// request starts a fresh trace), `tracestate` cut to its limits.
pub(crate) fn trace_headers(headers: &mut HeaderMap) {
    let parent_ok = headers
        .get_all("traceparent")
        .iter()
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(service_kit::telemetry::TraceParent::parse)
        })
        .collect::<Vec<_>>();
    if !matches!(parent_ok.as_slice(), [Some(_)]) {
        headers.remove("traceparent");
        headers.remove("tracestate");
        return;
    }
    // Several `tracestate` lines are one list, in order.
    let joined: Vec<&str> = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let cut = tracestate(&joined.join(","));
    headers.remove("tracestate");
    if let Some(v) = cut.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert("tracestate", v);
    }
}

/// The W3C limits of `tracestate`: well-formed members only, each key once, at most 32, and at
/// most 512 characters (members over 128 characters are dropped first, then from the end).
fn tracestate(list: &str) -> Option<String> {
    const MAX_MEMBERS: usize = 32;
    const MAX_CHARS: usize = 512;
    let mut members: Vec<&str> = Vec::new();
    let mut keys = std::collections::HashSet::new();
    for m in list.split(',').map(|m| m.trim_matches([' ', '\t'])) {
        if m.is_empty() {
            continue;
        }
        let Some((key, value)) = m.split_once('=') else {
            continue;
        };
        if valid_key(key) && valid_value(value) && keys.insert(key) {
            members.push(m);
        }
        if members.len() == MAX_MEMBERS {
            break;
        }
    }
    let length =
        |ms: &[&str]| ms.iter().map(|m| m.len()).sum::<usize>() + ms.len().saturating_sub(1);
    if length(&members) > MAX_CHARS {
        members.retain(|m| m.len() <= 128);
    }
    while length(&members) > MAX_CHARS {
        members.pop();
    }
    (!members.is_empty()).then(|| members.join(","))
}

fn valid_key(key: &str) -> bool {
    let allowed = |c: u8| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
    };
    let part = |p: &str, max: usize| {
        !p.is_empty()
            && p.len() <= max
            && p.bytes().all(allowed)
            && p.as_bytes()[0].is_ascii_alphanumeric()
    };
    match key.split_once('@') {
        // `tenant@system`
        Some((tenant, system)) => {
            part(tenant, 241) && part(system, 14) && system.as_bytes()[0].is_ascii_lowercase()
        }
        None => part(key, 256) && key.as_bytes()[0].is_ascii_lowercase(),
    }
}

fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn an_invalid_or_repeated_traceparent_takes_the_tracestate_with_it() {
        for bad in [
            vec![("traceparent", "00-xyz"), ("tracestate", "a=1")],
            vec![
                ("traceparent", PARENT),
                ("traceparent", PARENT),
                ("tracestate", "a=1"),
            ],
            vec![("tracestate", "a=1")],
        ] {
            let mut h = headers(&bad);
            trace_headers(&mut h);
            assert!(
                h.get("traceparent").is_none() && h.get("tracestate").is_none(),
                "{bad:?}"
            );
        }
        let mut h = headers(&[("traceparent", PARENT), ("tracestate", "a=1")]);
        trace_headers(&mut h);
        assert_eq!(h.get("traceparent").expect("kept"), PARENT);
        assert_eq!(h.get("tracestate").expect("kept"), "a=1");
    }

    #[test]
    fn tracestate_keeps_well_formed_unique_members_within_the_w3c_limits() {
        assert_eq!(
            tracestate("a=1, Bad=2,c=x=y, t@sys=3,a=4,,d=ok ").as_deref(),
            Some("a=1,t@sys=3,d=ok")
        );
        let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        let cut = tracestate(&many.join(",")).expect("some");
        assert_eq!(cut.split(',').count(), 32);
        assert_eq!(cut.split(',').next_back(), Some("k31=v"));
        // Long members go first, then members from the end, until 512 characters remain.
        let long = format!("big={}", "x".repeat(200));
        let mut list = vec![long.clone()];
        list.extend((0..30).map(|i| format!("m{i:02}={}", "y".repeat(20))));
        let cut = tracestate(&list.join(",")).expect("some");
        assert!(cut.len() <= 512, "{}", cut.len());
        assert!(!cut.contains("big="));
        assert!(cut.starts_with("m00="));
        assert_eq!(tracestate("=,,"), None);
    }
}
