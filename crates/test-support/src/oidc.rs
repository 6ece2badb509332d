//! An OIDC identity provider for tests and benches: signing keys made here, tokens signed by
//! hand (independently of the library the gateway checks them with), and the discovery
//! document and JWKS served over real HTTP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

/// An OIDC issuer on loopback: discovery document and JWKS, which the test may change.
pub struct Issuer {
    pub url: String,
    /// The published keys (JWKs); change them to rotate.
    pub keys: Arc<Mutex<Vec<Value>>>,
    /// How often the JWKS was fetched.
    pub jwks_fetches: Arc<AtomicUsize>,
}

impl Issuer {
    pub fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

/// Serves `/.well-known/openid-configuration` and `/keys` on a free loopback port.
pub async fn issuer() -> Issuer {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let keys: Arc<Mutex<Vec<Value>>> = Arc::default();
    let jwks_fetches = Arc::new(AtomicUsize::new(0));
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/keys")});
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/keys",
            get({
                let keys = keys.clone();
                let fetches = jwks_fetches.clone();
                move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let keys = keys.lock().expect("keys").clone();
                    axum::Json(json!({ "keys": keys }))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Issuer {
        url,
        keys,
        jwks_fetches,
    }
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A signing key and its key id.
pub struct Key {
    pub kid: String,
    signer: Signer,
}

impl Key {
    /// An RS256 key (RSA 2048).
    pub fn rsa(kid: &str) -> Self {
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa key");
        Self {
            kid: kid.into(),
            signer: Signer::Rsa(pair),
        }
    }

    /// An ES256 key (P-256).
    pub fn ec(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("ec key");
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .expect("ec key");
        Self {
            kid: kid.into(),
            signer: Signer::Ec(pair),
        }
    }

    /// The public key as the issuer publishes it.
    pub fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Rsa(pair) => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                    "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Signer::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({
                    "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": self.kid,
                    "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
                })
            }
        }
    }

    /// A compact JWS of `claims`, with this key's id in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let alg = match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        };
        let header = json!({"alg": alg, "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .expect("sign");
                sig
            }
            Signer::Ec(pair) => pair
                .sign(&rng, input.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", B64.encode(sig))
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Valid claims for `sub` from `issuer` for `audience`, with `extra` on top.
pub fn claims(issuer: &str, audience: &str, sub: &str, extra: Value) -> Value {
    let mut c = json!({
        "iss": issuer, "aud": audience, "sub": sub,
        "iat": now(), "nbf": now() - 10, "exp": now() + 600,
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// Hex SHA-256, as the gateway's API keys file stores keys.
pub fn sha256_hex(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An HS256 token over `claims` keyed by `secret`, naming `kid`: what a key-confusion attack
/// sends.
pub fn hmac_token(kid: &str, secret: &[u8], claims: &Value) -> String {
    let header = B64.encode(json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string());
    let input = format!("{header}.{}", B64.encode(claims.to_string()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

/// An unsigned token (`alg: none`).
pub fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64.encode(claims.to_string())
    )
}
