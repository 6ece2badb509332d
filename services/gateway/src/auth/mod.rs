//! Who the caller is, and what they may see.
//!
//! A request is authenticated once, by [`require`], before any API handler runs: an OIDC bearer
//! token ([`JwtVerifier`]) or an API key ([`ApiKeys`]), as configured. The [`Caller`] it yields
//! travels in the request's extensions. Operations belong to the caller that started them: the
//! owner is a tag of the instance and, through [`Ids`], the prefix of its id, so that a list is a
//! prefix query and an id names its owner without a call to the scheduler. A caller who asks
//! for an operation it does not own gets the same `404` as for one that does not exist.

mod failures;
mod jwt;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use failures::FailureLimiter;
pub use jwt::{JwtConfig, JwtVerifier};
pub use service_kit::api_keys::{API_KEY_HEADER, ApiKeys, Role};

use crate::AppState;
use crate::problem::Problem;

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `jwt:<identity claims>` or `key:<key id>`; `None` when authentication is off.
    pub owner: Option<String>,
    pub role: Role,
}

impl Caller {
    /// Authentication off: one caller, who sees everything.
    pub fn anonymous() -> Self {
        Self {
            owner: None,
            role: Role::Admin,
        }
    }

    /// Whether the operation `id` is this caller's to see (an admin's: all of them).
    pub fn may_see(&self, ids: &Ids, id: &str) -> bool {
        match (&self.owner, self.role) {
            (_, Role::Admin) | (None, _) => true,
            (Some(owner), Role::User) => id.starts_with(&ids.owner_prefix(owner)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        // Every API route is behind `require`; a router without it (tests) is open.
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous))
    }
}

/// Operation ids. With a server secret, an owner's operations share a prefix keyed by it
/// (`<16 hex>-`), and an idempotent start's id is a keyed hash of its owner and key: nobody can
/// compute another caller's ids, or claim their keys first. Without one (authentication off and
/// no secret set), ids are random and an idempotent id is a UUIDv5 of the key.
pub struct Ids {
    key: Option<aws_lc_rs::hmac::Key>,
}

/// Namespace of the ids derived from idempotency keys without a secret.
const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3b8e_51d2_7c40_4a1f_9e63_0d5a_c2f8_7b19);
/// Likewise for recurring operations.
const RECURRING_IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x8c1f_6a3e_52d9_4b07_a4e8_19f2_d06b_3c75);

impl Ids {
    pub fn new(secret: Option<&str>) -> Self {
        Self {
            key: secret
                .map(|s| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, s.as_bytes())),
        }
    }

    fn keyed(&self, parts: &[&str]) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut ctx = aws_lc_rs::hmac::Context::with_key(key);
        for p in parts {
            // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p.as_bytes());
        }
        Some(hex::encode(ctx.sign().as_ref()))
    }

    /// The prefix of every id `owner` starts.
    pub fn owner_prefix(&self, owner: &str) -> String {
        let mac = self.keyed(&["owner", owner]).unwrap_or_default();
        format!("{}-", &mac[..16.min(mac.len())])
    }

    /// The prefix of `caller`'s ids (empty without an owner or a secret).
    pub fn prefix_of(&self, caller: &Caller) -> String {
        match &caller.owner {
            Some(owner) if self.key.is_some() => self.owner_prefix(owner),
            _ => String::new(),
        }
    }

    /// A new random operation id for `caller`.
    pub fn new_id(&self, caller: &Caller) -> String {
        format!(
            "{}{}",
            self.prefix_of(caller),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// The operation id of `caller`'s start with idempotency key `key`.
    pub fn idempotent_id(&self, caller: &Caller, key: &str) -> String {
        self.keyed_id(caller, "idempotency", &IDEMPOTENCY_NAMESPACE, key)
    }

    /// The id of `caller`'s recurring operation created with idempotency key `key`: another
    /// id than a start's with the same key, so that one key may serve both.
    pub fn idempotent_recurring_id(&self, caller: &Caller, key: &str) -> String {
        self.keyed_id(
            caller,
            "idempotency-recurring",
            &RECURRING_IDEMPOTENCY_NAMESPACE,
            key,
        )
    }

    fn keyed_id(
        &self,
        caller: &Caller,
        purpose: &str,
        namespace: &uuid::Uuid,
        key: &str,
    ) -> String {
        let owner = caller.owner.as_deref().unwrap_or("");
        match self.keyed(&[purpose, owner, key]) {
            Some(mac) => format!("{}{}", self.prefix_of(caller), &mac[..32]),
            None => uuid::Uuid::new_v5(namespace, key.as_bytes())
                .simple()
                .to_string(),
        }
    }
}

/// The instance tag that records who started an operation.
pub const OWNER_TAG: &str = "owner";

/// How callers prove who they are; neither means authentication is off.
#[derive(Default)]
pub struct Authenticator {
    pub jwt: Option<Arc<JwtVerifier>>,
    pub api_keys: Option<Arc<ApiKeys>>,
}

/// Why a request was not let in.
#[derive(Debug)]
pub enum Refusal {
    /// No credentials (`401`).
    Missing,
    /// Credentials that do not hold (`401`).
    Invalid(String),
    /// Credentials that hold, for a caller without the role (`403`).
    Forbidden(String),
    /// The identity provider's keys cannot be had (`503`).
    Unavailable(String),
}

impl Authenticator {
    pub fn is_open(&self) -> bool {
        self.jwt.is_none() && self.api_keys.is_none()
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        if self.is_open() {
            return Ok(Caller::anonymous());
        }
        if let Some(presented) = headers.get(API_KEY_HEADER) {
            let Some(keys) = &self.api_keys else {
                return Err(Refusal::Invalid("API keys are not accepted here".into()));
            };
            let presented = presented.to_str().unwrap_or("");
            return keys
                .check(presented)
                .map(|k| Caller {
                    owner: Some(format!("key:{}", k.id)),
                    role: k.role,
                })
                .ok_or_else(|| Refusal::Invalid("unknown or revoked API key".into()));
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim())
            });
        match (bearer, &self.jwt) {
            (Some(token), Some(jwt)) => jwt.verify(token).await,
            (Some(_), None) => Err(Refusal::Invalid(
                "bearer tokens are not accepted here".into(),
            )),
            (None, _) => Err(Refusal::Missing),
        }
    }

    /// The `WWW-Authenticate` challenges of a `401`.
    fn challenges(&self, refusal: &Refusal) -> Vec<String> {
        let mut out = Vec::new();
        if self.jwt.is_some() {
            out.push(match refusal {
                Refusal::Invalid(why) => format!(
                    r#"Bearer realm="api", error="invalid_token", error_description="{}""#,
                    why.replace(['"', '\\'], "'")
                ),
                _ => r#"Bearer realm="api""#.to_string(),
            });
        }
        if self.api_keys.is_some() {
            out.push(format!(r#"ApiKey realm="api", header="{API_KEY_HEADER}""#));
        }
        out
    }
}

/// Who the caller of an API request is, put in the request (a `Caller` extension), or the
/// refusal to answer with.
pub(crate) async fn identify(state: &AppState, request: &mut Request) -> Result<(), Response> {
    let failures = state
        .auth_failures
        .as_ref()
        .filter(|_| !state.auth.is_open());
    let client = failures.and(crate::limits::client_ip(
        request,
        state.config.trust_forwarded,
    ));
    if let (Some(limiter), Some(ip)) = (failures, client)
        && let Some(wait) = limiter.blocked(ip)
    {
        return Err(too_many_refusals(state, wait));
    }
    match state.auth.authenticate(request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            Ok(())
        }
        Err(refusal) => {
            // Credentials missing or not holding count against the address; a caller without
            // the role, or an identity provider out of reach, do not.
            let counted = matches!(refusal, Refusal::Missing | Refusal::Invalid(_));
            if let (true, Some(limiter), Some(ip)) = (counted, failures, client)
                && let Some(wait) = limiter.refused(ip)
            {
                return Err(too_many_refusals(state, wait));
            }
            Err(refused(state, refusal))
        }
    }
}

fn too_many_refusals(state: &AppState, wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-refused-credentials",
        "Too Many Requests",
        format!(
            "over {} refused credentials a second (burst {}) from this address; try again in {seconds} s",
            state.config.limits.auth_failures_per_second, state.config.limits.auth_failures_burst
        ),
    )
    .retry_after(seconds)
    .into_response()
}

fn refused(state: &AppState, refusal: Refusal) -> Response {
    let challenges = state.auth.challenges(&refusal);
    let mut response = match refusal {
        Refusal::Missing => unauthorized(
            "this API needs credentials: a bearer token in `Authorization` or an API key in `X-API-Key`",
        ),
        Refusal::Invalid(why) => unauthorized(format!("the credentials were refused: {why}")),
        Refusal::Forbidden(why) => return forbidden(why).into_response(),
        Refusal::Unavailable(why) => {
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "identity-provider-unavailable",
                "Service Unavailable",
                format!("tokens cannot be checked now: {why}"),
            )
            .retry_after(state.config.retry_after_seconds)
            .into_response();
        }
    }
    .into_response();
    for c in challenges {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    response
}

fn unauthorized(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
}

pub(crate) fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
}

/// The one route layer of every API route: the caller (`identify`), then the caller's share
/// and rate (`limits::per_caller`). One layer, not two: each `from_fn` layer boxes the request's
/// future and moves it again, which showed in the profile of the start path.
pub(crate) async fn admit(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Err(refused) = identify(&state, &mut request).await {
        return refused;
    }
    crate::limits::per_caller(&state, request, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(owner: &str) -> Caller {
        Caller {
            owner: Some(owner.into()),
            role: Role::User,
        }
    }

    #[test]
    fn ids_are_keyed_by_owner_and_secret() {
        let ids = Ids::new(Some("a secret of at least thirty-two bytes"));
        let (a, b) = (user("jwt:alice"), user("jwt:bob"));
        let id = ids.new_id(&a);
        assert!(a.may_see(&ids, &id));
        assert!(!b.may_see(&ids, &id));
        let admin = Caller {
            owner: Some("key:ops".into()),
            role: Role::Admin,
        };
        assert!(admin.may_see(&ids, &id));
        // The same idempotency key: one id per owner, stable, and another secret gives others.
        let (ka, kb) = (ids.idempotent_id(&a, "k"), ids.idempotent_id(&b, "k"));
        assert_ne!(ka, kb);
        assert_eq!(ka, ids.idempotent_id(&a, "k"));
        assert!(a.may_see(&ids, &ka) && !a.may_see(&ids, &kb));
        let other = Ids::new(Some("another secret of thirty-two bytes!!"));
        assert_ne!(ka, other.idempotent_id(&a, "k"));
        // Length-prefixed parts: no ambiguity between owner and key.
        assert_ne!(
            ids.idempotent_id(&user("ab"), "c"),
            ids.idempotent_id(&user("a"), "bc")
        );
        // A recurring operation's key: stable, the caller's own, and not a start's id.
        let ra = ids.idempotent_recurring_id(&a, "k");
        assert_eq!(ra, ids.idempotent_recurring_id(&a, "k"));
        assert_ne!(ra, ka);
        assert_ne!(ra, ids.idempotent_recurring_id(&b, "k"));
        assert!(a.may_see(&ids, &ra) && !b.may_see(&ids, &ra));
        let open = Ids::new(None);
        assert_ne!(
            open.idempotent_recurring_id(&a, "k"),
            open.idempotent_id(&a, "k")
        );
    }

    #[test]
    fn without_a_secret_ids_are_as_before() {
        let ids = Ids::new(None);
        let anyone = Caller::anonymous();
        assert_eq!(ids.new_id(&anyone).len(), 32);
        assert_eq!(
            ids.idempotent_id(&anyone, "k"),
            uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, b"k")
                .simple()
                .to_string()
        );
    }
}
