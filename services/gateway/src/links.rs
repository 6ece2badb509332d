//! Where to find an operation: absolute links built from the configured public address or the
//! request, never from unchecked client input.

use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// Where to find an operation. Absolute when the gateway knows its public address.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OperationLinks {
    /// The status monitor (`GET`).
    pub status: String,
    /// The result (`GET`).
    pub result: String,
    /// Cancels the operation (`POST`).
    pub cancel: String,
}

/// The links of operation `id` under `base` (scheme and authority; empty: relative links).
pub(crate) fn links_at(base: &str, id: &str) -> OperationLinks {
    let link = |parts: &[&str]| {
        let mut url = String::with_capacity(base.len() + 40 + id.len());
        url.push_str(base);
        parts.iter().for_each(|p| url.push_str(p));
        url
    };
    OperationLinks {
        status: link(&["/api/status/", id]),
        result: link(&["/api/result/", id]),
        cancel: link(&["/api/operations/", id, "/cancel"]),
    }
}

/// Scheme and authority for absolute links: the configured public URL; else, when trusted, the
/// proxy's `Forwarded` / `X-Forwarded-*` headers; else the `Host` header. Values that do not look
/// like a host are ignored (links then stay relative) so a client cannot inject text into them.
pub(crate) fn base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(b) = &state.config.public_base_url {
        return b.clone();
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let ok_host = |h: &str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
    };
    let ok_proto = |p: &str| p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https");
    if state.config.trust_forwarded {
        if let Some(fwd) = text("forwarded") {
            let (mut host, mut proto) = (None, None);
            for pair in fwd.split(',').next().unwrap_or("").split(';') {
                if let Some((k, v)) = pair.split_once('=') {
                    let v = v.trim().trim_matches('"');
                    match k.trim().to_ascii_lowercase().as_str() {
                        "host" => host = Some(v),
                        "proto" => proto = Some(v),
                        _ => {}
                    }
                }
            }
            if let Some(h) = host.filter(|h| ok_host(h)) {
                let p = proto.filter(|p| ok_proto(p)).unwrap_or("http");
                return format!("{}://{h}", p.to_ascii_lowercase());
            }
        }
        if let Some(h) = text("x-forwarded-host")
            .and_then(|h| h.split(',').next())
            .map(str::trim)
            .filter(|h| ok_host(h))
        {
            let p = text("x-forwarded-proto")
                .filter(|p| ok_proto(p))
                .unwrap_or("http");
            return format!("{}://{h}", p.to_ascii_lowercase());
        }
    }
    match text("host").filter(|h| ok_host(h)) {
        Some(h) => format!("http://{h}"),
        None => String::new(),
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(crate) fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
