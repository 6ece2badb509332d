//! What a request carries besides its body and its caller, read once at the edge as typed values
//! (as the extractors of `extract.rs` do for bodies), so that the handlers and what they call
//! never read raw headers: [`Edge`] (where links point, the caller's trace context) and, for
//! starts, [`IdempotencyKey`] and [`CallbackUrl`] (checked); for status streams,
//! [`LastEventId`].

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use durabletask::TraceContext;

use crate::AppState;
use crate::links::OperationLinks;
use crate::problem::Problem;

/// Where absolute links point, and the W3C trace context the caller sent (already cut to the
/// W3C limits by the `limits` layer).
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    /// Scheme and authority for absolute links (`links::base`); empty: relative links.
    pub base: String,
    pub trace: Option<TraceContext>,
}

impl Edge {
    pub(crate) fn read(state: &AppState, headers: &HeaderMap) -> Self {
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            base: crate::links::base(state, headers),
            trace: header("traceparent").map(|traceparent| TraceContext {
                traceparent,
                tracestate: header("tracestate"),
            }),
        }
    }

    /// The links of operation `id`.
    pub(crate) fn links(&self, id: &str) -> OperationLinks {
        crate::links::links_at(&self.base, id)
    }
}

impl FromRequestParts<AppState> for Edge {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        Ok(Self::read(state, &parts.headers))
    }
}

/// A start's `Idempotency-Key`, if it has one; a `400` problem when it is malformed.
#[derive(Debug, Clone)]
pub(crate) struct IdempotencyKey(pub Option<String>);

impl FromRequestParts<AppState> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Problem> {
        crate::idempotency::idempotency_key(&parts.headers).map(Self)
    }
}

/// A start's `Callback-Url`, if it has one, allowed by the callback policy with its host
/// resolved; a `422` problem saying why otherwise.
#[derive(Debug, Clone)]
pub(crate) struct CallbackUrl(pub Option<String>);

impl FromRequestParts<AppState> for CallbackUrl {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        crate::callback::requested(state, &parts.headers)
            .await
            .map(Self)
    }
}

/// A status stream's `Last-Event-ID` (the last event a reconnecting client saw), when it is a
/// number; anything else is taken as none (the client gets the current status).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastEventId(pub Option<i64>);

impl FromRequestParts<AppState> for LastEventId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Infallible> {
        Ok(Self(
            parts
                .headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok()),
        ))
    }
}
