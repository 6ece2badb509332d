//! OIDC bearer tokens (JWT), checked against the issuer's published keys (JWKS).
//!
//! Signatures and claims are checked by `jsonwebtoken`; what is ours is which keys to trust:
//! the JWKS (configured, or found through the issuer's discovery document) is fetched once and
//! kept, refreshed every `refresh`; a token signed with a key id not in it makes one refetch, at
//! most every `min_refetch`, so that a rotation is picked up at once and a flood of made-up key
//! ids costs the identity provider nothing. Only RS256 and ES256 are accepted: `alg: none` and
//! HMAC (a shared secret, which a JWKS must never carry) are refused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{Caller, Refusal, Role};

/// What is trusted, and what a token must say.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The JWKS; `None`: from the issuer's `/.well-known/openid-configuration`.
    pub jwks_url: Option<String>,
    /// Claims whose values, joined, are the caller's identity (`sub`; Entra ID: `tid`, `oid`).
    pub identity_claims: Vec<String>,
    /// The claim listing the caller's roles (Entra ID app roles: `roles`).
    pub roles_claim: String,
    /// The role that sees every operation.
    pub admin_role: String,
    /// A role every caller must have (unless admin); `None`: any valid token.
    pub required_role: Option<String>,
    pub leeway_seconds: u64,
    pub refresh: Duration,
    pub min_refetch: Duration,
}

struct TrustedKeys {
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Instant,
}

/// A token already verified, by its SHA-256: clients send the same token with every request
/// for its whole life, and a signature check costs more than the rest of a start. An entry
/// holds until the token's `exp` (plus the leeway its check allowed), and only for the keys it
/// was checked against: a new JWKS empties the cache.
struct Verified {
    caller: Caller,
    expires: i64,
}

/// Verified tokens kept; past it, the expired ones go, and if none had, all of them.
const MAX_VERIFIED: usize = 10_000;

pub struct JwtVerifier {
    config: JwtConfig,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<TrustedKeys>>>,
    /// One fetch at a time; the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
    /// The last failed fetch, when there were no keys to fall back on: for [`NEGATIVE_CACHE`]
    /// every request gets its error at once instead of fetching again (requests waiting for a
    /// fetch of an unreachable issuer queued 5 s each behind one another).
    failed: std::sync::Mutex<Option<(Instant, String)>>,
    verified: std::sync::Mutex<HashMap<[u8; 32], Verified>>,
}

/// How long a failed fetch (with no keys to fall back on) is answered from memory.
const NEGATIVE_CACHE: Duration = Duration::from_secs(3);

/// Largest JWKS or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

impl JwtVerifier {
    pub fn new(config: JwtConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            config,
            http,
            keys: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            failed: std::sync::Mutex::new(None),
            verified: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let digest: [u8; 32] =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]);
        let now = chrono::Utc::now().timestamp();
        let keys_current = self
            .keys
            .read()
            .ok()
            .and_then(|k| {
                k.as_ref()
                    .map(|k| k.fetched.elapsed() < self.config.refresh)
            })
            .unwrap_or(false);
        if keys_current
            && let Ok(cache) = self.verified.lock()
            && let Some(v) = cache.get(&digest)
            && now < v.expires
        {
            return Ok(v.caller.clone());
        }
        let (caller, exp) = self.verify_signed(token).await?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= MAX_VERIFIED {
                cache.retain(|_, v| now < v.expires);
                if cache.len() >= MAX_VERIFIED {
                    cache.clear();
                }
            }
            cache.insert(
                digest,
                Verified {
                    caller: caller.clone(),
                    expires: exp.saturating_add(self.config.leeway_seconds as i64),
                },
            );
        }
        Ok(caller)
    }

    /// The full check: signature, then claims. Also returns the token's `exp`.
    async fn verify_signed(&self, token: &str) -> Result<(Caller, i64), Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::Invalid("not a well-formed signed JWT".into()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(Refusal::Invalid(format!(
                "algorithm {:?} is not accepted (RS256, ES256)",
                header.alg
            )));
        }
        let kid = header.kid.as_deref();
        let (alg, key) = match self.find(kid, header.alg, false).await? {
            Some(found) => found,
            // Perhaps the issuer rotated its keys: look once more, at most every min_refetch.
            None => self.find(kid, header.alg, true).await?.ok_or_else(|| {
                Refusal::Invalid("signed by a key the issuer does not publish".into())
            })?,
        };
        if alg != header.alg {
            return Err(Refusal::Invalid(
                "the token's algorithm does not match its key".into(),
            ));
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&self.config.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = self.config.leeway_seconds;
        v.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| Refusal::Invalid(reason(&e)))?
            .claims;
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        Ok((self.caller(&claims)?, exp))
    }

    fn caller(&self, claims: &Map<String, Value>) -> Result<Caller, Refusal> {
        let mut identity = Vec::with_capacity(self.config.identity_claims.len());
        for c in &self.config.identity_claims {
            match claims
                .get(c)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                Some(v) => identity.push(v),
                None => return Err(Refusal::Invalid(format!("the token has no `{c}` claim"))),
            }
        }
        let roles: Vec<&str> = match claims.get(&self.config.roles_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split(' ').collect(),
            _ => Vec::new(),
        };
        let role = if roles.contains(&self.config.admin_role.as_str()) {
            Role::Admin
        } else {
            if let Some(required) = &self.config.required_role
                && !roles.contains(&required.as_str())
            {
                return Err(Refusal::Forbidden(format!(
                    "the token lacks the role `{required}`"
                )));
            }
            Role::User
        };
        Ok(Caller {
            owner: Some(owner_of(&identity)),
            role,
        })
    }

    /// The key for `kid` (or the only key of `alg` when the token names none). Keys are fetched
    /// when there are none yet, when they are older than `refresh`, and when `refetch` asks and
    /// the last fetch is older than `min_refetch`.
    async fn find(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        refetch: bool,
    ) -> Result<Option<(Algorithm, DecodingKey)>, Refusal> {
        let current = self.keys.read().ok().and_then(|k| k.clone());
        let due = match &current {
            None => true,
            Some(k) if k.fetched.elapsed() >= self.config.refresh => true,
            Some(k) => refetch && k.fetched.elapsed() >= self.config.min_refetch,
        };
        let keys = if due {
            self.refresh(current.as_ref().map(|k| k.fetched)).await?
        } else {
            current.ok_or_else(|| Refusal::Unavailable("no keys".into()))?
        };
        Ok(match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None => {
                let mut of_alg = keys.by_kid.values().filter(|(a, _)| *a == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some(only), None) => Some(only.clone()),
                    _ => None,
                }
            }
        })
    }

    /// Fetches the keys, unless another request did since `seen`. A failed fetch keeps the keys
    /// there are (logged); with none at all, tokens cannot be checked (`503`).
    async fn refresh(&self, seen: Option<Instant>) -> Result<Arc<TrustedKeys>, Refusal> {
        let recent_failure = || {
            self.failed
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .filter(|(at, _)| at.elapsed() < NEGATIVE_CACHE)
        };
        if let Some((_, e)) = recent_failure() {
            return Err(Refusal::Unavailable(e));
        }
        let _one = self.fetching.lock().await;
        let current = self.keys.read().ok().and_then(|k| k.clone());
        if let Some(k) = &current
            && Some(k.fetched) != seen
        {
            return Ok(k.clone());
        }
        // The fetch this request waited for failed: its answer, not another 5 s wait.
        if let Some((_, e)) = recent_failure() {
            return Err(Refusal::Unavailable(e));
        }
        match self.fetch().await {
            Ok(by_kid) => {
                let keys = Arc::new(TrustedKeys {
                    by_kid,
                    fetched: Instant::now(),
                });
                if let Ok(mut k) = self.keys.write() {
                    *k = Some(keys.clone());
                }
                // Tokens are trusted for the keys they were checked against.
                if let Ok(mut cache) = self.verified.lock() {
                    cache.clear();
                }
                Ok(keys)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not fetch the issuer's keys");
                match current {
                    Some(k) => {
                        // Try again at the next min_refetch, not on every request.
                        let keys = Arc::new(TrustedKeys {
                            by_kid: k.by_kid.clone(),
                            fetched: Instant::now()
                                .checked_sub(self.config.refresh)
                                .map_or(Instant::now(), |t| t + self.config.min_refetch),
                        });
                        if let Ok(mut slot) = self.keys.write() {
                            *slot = Some(keys.clone());
                        }
                        Ok(keys)
                    }
                    None => {
                        if let Ok(mut f) = self.failed.lock() {
                            *f = Some((Instant::now(), e.clone()));
                        }
                        Err(Refusal::Unavailable(e))
                    }
                }
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, (Algorithm, DecodingKey)>, String> {
        let url = match &self.config.jwks_url {
            Some(u) => u.clone(),
            None => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let doc: Value = self.get_json(&discovery).await?;
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{discovery} has no jwks_uri"))?
                    .to_string()
            }
        };
        let set: JwkSet = self.get_json(&url).await?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // Public keys only, of the two accepted algorithms.
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                by_kid.insert(kid, (alg, key));
            }
        }
        Ok(by_kid)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("{url}: over {MAX_DOCUMENT_BYTES} bytes"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
    }
}

/// The owner a token's identity claims make: `jwt:` and the claims' values joined by `:`. With
/// several claims, `%` and `:` in a value are percent-encoded, so that no two identities make the
/// same owner (`tid='a:b', oid='c'` and `tid='a', oid='b:c'` did). One claim, or values without
/// `:` and `%` (Entra ids are GUIDs), make the owner they always made, so existing operations keep
/// their owner; only a multi-claim identity whose values hold `:` or `%` gets a new one.
fn owner_of(identity: &[&str]) -> String {
    if identity.len() == 1 {
        return format!("jwt:{}", identity[0]);
    }
    let parts: Vec<String> = identity
        .iter()
        .map(|v| v.replace('%', "%25").replace(':', "%3A"))
        .collect();
    format!("jwt:{}", parts.join(":"))
}

/// What a caller is told of a refused token.
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired",
        K::ImmatureSignature => "the token is not valid yet",
        K::InvalidAudience => "the token is for another audience",
        K::InvalidIssuer => "the token is from another issuer",
        K::InvalidSignature => "the signature does not verify",
        K::InvalidAlgorithm => "the token's algorithm does not match its key",
        K::MissingRequiredClaim(c) => return format!("the token has no `{c}` claim"),
        _ => "the token is not valid",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::oidc;

    fn config(issuer: &str) -> JwtConfig {
        JwtConfig {
            issuer: issuer.into(),
            audiences: vec!["api://t".into()],
            jwks_url: None,
            identity_claims: vec!["sub".into()],
            roles_claim: "roles".into(),
            admin_role: "Operations.Admin".into(),
            required_role: None,
            leeway_seconds: 0,
            refresh: Duration::from_secs(3600),
            min_refetch: Duration::from_secs(1),
        }
    }

    /// An issuer that accepts connections and never answers (unreachable in effect): eight
    /// concurrent requests make one fetch and all get their answer (503) within one fetch's
    /// timeout, not 5 s after each other (40 s for the last before).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_issuer_is_fetched_once_for_concurrent_requests() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        let jwt = Arc::new(JwtVerifier::new(config(&url)));
        let key = oidc::Key::rsa("k1");
        let token = key.sign(&oidc::claims(&url, "api://t", "a", serde_json::json!({})));
        let started = Instant::now();
        let answers: Vec<_> = (0..8)
            .map(|_| {
                let (jwt, token) = (jwt.clone(), token.clone());
                tokio::spawn(async move {
                    let r = jwt.verify(&token).await;
                    (r, Instant::now())
                })
            })
            .collect();
        for a in answers {
            let (r, at) = a.await.expect("join");
            assert!(matches!(r, Err(Refusal::Unavailable(_))), "{r:?}");
            assert!(
                at - started < Duration::from_secs(8),
                "answered after {:?}",
                at - started
            );
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one fetch"
        );
        // Within the negative cache, at once; after it, one more try.
        let t = Instant::now();
        assert!(jwt.verify(&token).await.is_err());
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn multi_claim_identities_cannot_collide_and_common_ones_keep_their_owner() {
        assert_ne!(owner_of(&["a:b", "c"]), owner_of(&["a", "b:c"]));
        assert_ne!(owner_of(&["a%3Ab", "c"]), owner_of(&["a:b", "c"]));
        // Entra ids (GUIDs) and single claims: the owners they had.
        let (tid, oid) = (
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "00000000-1111-2222-3333-444444444444",
        );
        assert_eq!(owner_of(&[tid, oid]), format!("jwt:{tid}:{oid}"));
        assert_eq!(owner_of(&["a:b"]), "jwt:a:b");
    }

    #[tokio::test]
    async fn a_verified_token_is_reused_only_until_it_expires() {
        let idp = oidc::issuer().await;
        let key = oidc::Key::rsa("k1");
        idp.keys.lock().expect("keys").push(key.jwk());
        let jwt = JwtVerifier::new(config(&idp.url));
        let token = key.sign(&oidc::claims(
            &idp.url,
            "api://t",
            "alice",
            serde_json::json!({"exp": oidc::now() + 2}),
        ));
        for _ in 0..3 {
            let caller = jwt.verify(&token).await.expect("valid");
            assert_eq!(caller.owner.as_deref(), Some("jwt:alice"));
        }
        assert_eq!(jwt.verified.lock().expect("cache").len(), 1);
        tokio::time::sleep(Duration::from_millis(3100)).await;
        match jwt.verify(&token).await {
            Err(Refusal::Invalid(why)) => assert!(why.contains("expired"), "{why}"),
            other => panic!("an expired token was accepted: {other:?}"),
        }
    }

    #[tokio::test]
    async fn new_keys_empty_the_cache_of_verified_tokens() {
        let idp = oidc::issuer().await;
        let (old, new) = (oidc::Key::rsa("old"), oidc::Key::ec("new"));
        idp.keys.lock().expect("keys").push(old.jwk());
        let jwt = JwtVerifier::new(config(&idp.url));
        let token = old.sign(&oidc::claims(
            &idp.url,
            "api://t",
            "a",
            serde_json::json!({}),
        ));
        jwt.verify(&token).await.expect("valid");
        // The issuer retires the old key; a token with the new one makes the gateway refetch.
        *idp.keys.lock().expect("keys") = vec![new.jwk()];
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let fresh = new.sign(&oidc::claims(
            &idp.url,
            "api://t",
            "b",
            serde_json::json!({}),
        ));
        jwt.verify(&fresh).await.expect("the new key is fetched");
        // The old token is checked again, against keys that no longer hold its key.
        assert!(matches!(jwt.verify(&token).await, Err(Refusal::Invalid(_))));
    }
}
