//! Authentication and ownership, end to end: tokens are minted here (signed with keys made
//! here), the issuer's discovery document and JWKS are served over real HTTP by this test, and
//! a real gateway process checks them. API keys come from a file the test rewrites.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

mod common;
use common::*;

const AUDIENCE: &str = "api://async-http-api";
const SECRET: &str = "id secret for the tests, at least 32 characters";

/// An OIDC issuer on loopback: discovery document and JWKS, which the test may change.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    jwks_fetches: Arc<AtomicUsize>,
}

async fn issuer() -> Issuer {
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
struct Key {
    kid: String,
    signer: Signer,
}

impl Key {
    fn rsa(kid: &str) -> Self {
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa key");
        Self {
            kid: kid.into(),
            signer: Signer::Rsa(pair),
        }
    }

    fn ec(kid: &str) -> Self {
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
    fn jwk(&self) -> Value {
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

    fn sign(&self, claims: &Value) -> String {
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

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Valid claims for `sub` from `issuer`, with `extra` on top.
fn claims(issuer: &str, sub: &str, extra: Value) -> Value {
    let mut c = json!({
        "iss": issuer, "aud": AUDIENCE, "sub": sub,
        "iat": now(), "nbf": now() - 10, "exp": now() + 600,
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn sha256_hex(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A request with credentials: `("authorization", "Bearer …")` or `("x-api-key", …)`.
async fn call(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Value) {
    http_with_headers(port, method, path, body, auth).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const START: &str = r#"{"name":"owned","delay_seconds":60}"#;

struct Setup {
    _scheduler: tokio::process::Child,
    _gateway: tokio::process::Child,
    port: u16,
    issuer: Issuer,
    rsa: Key,
    keys_file: std::path::PathBuf,
}

async fn setup() -> Setup {
    let issuer = issuer().await;
    let rsa = Key::rsa("rsa-1");
    let ec = Key::ec("ec-1");
    issuer
        .keys
        .lock()
        .expect("keys")
        .extend([rsa.jwk(), ec.jwk()]);
    let dir = std::env::temp_dir().join(format!("auth-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys_file = dir.join("api-keys.json");
    std::fs::write(
        &keys_file,
        json!({"keys": [
            {"id": "batch", "name": "Nightly batch", "role": "user", "sha256": sha256_hex("batch-key-0123456789abcdef")},
            {"id": "ops", "name": "Operations", "role": "admin", "sha256": sha256_hex("ops-key-0123456789abcdef")},
        ]})
        .to_string(),
    )
    .expect("keys file");
    let (scheduler, endpoint) = local_scheduler().await;
    let (gateway, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__AUTH", "jwt,api_key".into()),
            ("GATEWAY__ID_SECRET", SECRET.into()),
            ("GATEWAY__JWT_ISSUER", issuer.url.clone()),
            ("GATEWAY__JWT_AUDIENCES", format!("{AUDIENCE},api://other")),
            ("GATEWAY__JWT_LEEWAY_SECONDS", "5".into()),
            ("GATEWAY__JWT_JWKS_MIN_REFETCH_SECONDS", "1".into()),
            ("GATEWAY__API_KEYS_FILE", keys_file.display().to_string()),
            ("GATEWAY__API_KEYS_RELOAD_SECONDS", "1".into()),
        ],
    )
    .await;
    Setup {
        _scheduler: scheduler,
        _gateway: gateway,
        port,
        issuer,
        rsa,
        keys_file,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_see_only_their_own_operations_and_admins_see_all() {
    let s = setup().await;
    let port = s.port;
    let alice = bearer(&s.rsa.sign(&claims(&s.issuer.url, "alice", json!({}))));
    let bob = bearer(&s.rsa.sign(&claims(&s.issuer.url, "bob", json!({}))));
    let admin = bearer(&s.rsa.sign(&claims(
        &s.issuer.url,
        "carol",
        json!({"roles": ["Operations.Admin"]}),
    )));

    // No credentials: 401 with both challenges.
    let (status, headers, v) = call(port, "POST", "/api/process", Some(START), &[]).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["type"], "/problems/unauthorized");
    let challenges: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("ApiKey")),
        "{challenges:?}"
    );
    let (status, _, _) = call(port, "GET", "/api/operations", None, &[]).await;
    assert_eq!(status, 401);
    // The document stays public.
    assert_eq!(http(port, "GET", "/openapi.json", None).await.0, 200);

    let (status, _, v) = call(
        port,
        "POST",
        "/api/process",
        Some(START),
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let a_op = v["id"].as_str().expect("id").to_string();
    let (status, _, v) = call(
        port,
        "POST",
        "/api/start-operation",
        Some("{}"),
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let a_sample = v["operation_id"].as_str().expect("id").to_string();

    // Bob cannot reach Alice's operations: the same 404 as for an id that names nothing.
    let (_, _, nothing) = call(
        port,
        "GET",
        "/api/status/0000000000000000-nothing",
        None,
        &[("authorization", &bob)],
    )
    .await;
    for (method, path) in [
        ("GET", format!("/api/status/{a_op}")),
        ("GET", format!("/api/result/{a_op}")),
        ("GET", format!("/api/operations/{a_op}/history")),
        ("POST", format!("/api/operations/{a_op}/cancel")),
        ("DELETE", format!("/api/operations/{a_op}")),
        ("GET", format!("/api/operations/{a_sample}")),
    ] {
        let (status, _, v) = call(port, method, &path, None, &[("authorization", &bob)]).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
        assert_eq!(v["type"], nothing["type"], "{v}");
        assert_eq!(v["title"], nothing["title"], "{v}");
    }
    // Alice can.
    let (status, _, v) = call(
        port,
        "GET",
        &format!("/api/status/{a_op}"),
        None,
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, _, v) = call(
        port,
        "GET",
        &format!("/api/operations/{a_sample}"),
        None,
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // The same Idempotency-Key from Alice and from Bob: two operations.
    let key = [("idempotency-key", "order-42")];
    let (status, _, v) = call(
        port,
        "POST",
        "/api/process",
        Some(START),
        &[("authorization", &alice), key[0]],
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let a_keyed = v["id"].as_str().expect("id").to_string();
    let (status, _, v) = call(
        port,
        "POST",
        "/api/process",
        Some(START),
        &[("authorization", &bob), key[0]],
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let b_keyed = v["id"].as_str().expect("id").to_string();
    assert_ne!(a_keyed, b_keyed);
    // A retry of Alice's is Alice's.
    let (_, _, v) = call(
        port,
        "POST",
        "/api/process",
        Some(START),
        &[("authorization", &alice), key[0]],
    )
    .await;
    assert_eq!(v["id"], a_keyed.as_str());

    // An API key caller is an owner like any other.
    let batch = [("x-api-key", "batch-key-0123456789abcdef")];
    let (status, _, v) = call(port, "POST", "/api/process", Some(START), &batch).await;
    assert_eq!(status, 202, "{v}");
    let k_op = v["id"].as_str().expect("id").to_string();
    let (status, _, _) = call(port, "GET", &format!("/api/status/{a_op}"), None, &batch).await;
    assert_eq!(status, 404);

    let ids = |page: &Value| -> Vec<String> {
        page["value"]
            .as_array()
            .expect("value")
            .iter()
            .map(|o| o["id"].as_str().expect("id").to_string())
            .collect()
    };
    let (status, _, page) = call(
        port,
        "GET",
        "/api/operations",
        None,
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let mut mine = ids(&page);
    mine.sort();
    let mut want = vec![a_op.clone(), a_sample.clone(), a_keyed.clone()];
    want.sort();
    assert_eq!(mine, want);
    let (_, _, page) = call(
        port,
        "GET",
        "/api/operations",
        None,
        &[("authorization", &bob)],
    )
    .await;
    assert_eq!(ids(&page), vec![b_keyed.clone()]);
    let (_, _, page) = call(port, "GET", "/api/operations", None, &batch).await;
    assert_eq!(ids(&page), vec![k_op.clone()]);
    // Bob may not list by owner.
    let (status, _, v) = call(
        port,
        "GET",
        "/api/operations?owner=jwt:alice",
        None,
        &[("authorization", &bob)],
    )
    .await;
    assert_eq!(status, 403, "{v}");

    // Admins (a token's role, or an admin key) see and act on everything, and filter by owner.
    for admin in [
        vec![("authorization", admin.as_str())],
        vec![("x-api-key", "ops-key-0123456789abcdef")],
    ] {
        let (status, _, page) =
            call(port, "GET", "/api/operations?page_size=100", None, &admin).await;
        assert_eq!(status, 200, "{page}");
        let all = ids(&page);
        for id in [&a_op, &a_sample, &a_keyed, &b_keyed, &k_op] {
            assert!(all.contains(id), "{id} not in {all:?}");
        }
        let (_, _, page) = call(port, "GET", "/api/operations?owner=jwt:alice", None, &admin).await;
        let mut theirs = ids(&page);
        theirs.sort();
        assert_eq!(theirs, want);
        let (status, _, v) =
            call(port, "GET", &format!("/api/status/{b_keyed}"), None, &admin).await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, _, v) = call(
        port,
        "POST",
        &format!("/api/operations/{k_op}/cancel"),
        None,
        &[("x-api-key", "ops-key-0123456789abcdef")],
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let _ = std::fs::remove_dir_all(s.keys_file.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_do_not_hold_are_refused_with_401() {
    let s = setup().await;
    let port = s.port;
    let iss = s.issuer.url.clone();
    let hmac_token = {
        // Signed with HMAC, naming the RSA key's id (the classic key-confusion attack).
        let header = B64.encode(json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).to_string());
        let body = B64.encode(claims(&iss, "mallory", json!({})).to_string());
        let input = format!("{header}.{body}");
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            s.rsa.jwk()["n"].as_str().expect("n").as_bytes(),
        );
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", B64.encode(tag.as_ref()))
    };
    let none_token = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64.encode(claims(&iss, "mallory", json!({})).to_string())
    );
    let stranger = Key::rsa("rsa-1"); // the right key id, the wrong key
    let unpublished = Key::ec("not-published");
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            s.rsa.sign(&claims(&iss, "a", json!({"exp": now() - 120}))),
        ),
        (
            "not yet valid",
            s.rsa.sign(&claims(&iss, "a", json!({"nbf": now() + 600}))),
        ),
        (
            "wrong audience",
            s.rsa
                .sign(&claims(&iss, "a", json!({"aud": "api://someone-else"}))),
        ),
        (
            "wrong issuer",
            s.rsa
                .sign(&claims(&iss, "a", json!({"iss": "https://evil.example"}))),
        ),
        (
            "no subject",
            s.rsa.sign(&claims(&iss, "a", json!({"sub": ""}))),
        ),
        ("alg none", none_token),
        ("HMAC", hmac_token),
        ("wrong key", stranger.sign(&claims(&iss, "a", json!({})))),
        (
            "unknown kid",
            unpublished.sign(&claims(&iss, "a", json!({}))),
        ),
        ("garbage", "not.a.token".into()),
    ];
    for (what, token) in &cases {
        let (status, headers, v) = call(
            port,
            "GET",
            "/api/operations",
            None,
            &[("authorization", &bearer(token))],
        )
        .await;
        assert_eq!(status, 401, "{what}: {v}");
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "www-authenticate" && v.contains("invalid_token")),
            "{what}: {headers:?}"
        );
    }
    // A wrong API key, too.
    let (status, _, _) = call(
        port,
        "GET",
        "/api/operations",
        None,
        &[("x-api-key", "guessed")],
    )
    .await;
    assert_eq!(status, 401);
    // While valid RS256 and ES256 tokens, and a second accepted audience, pass.
    let ec = s.issuer.keys.lock().expect("keys").len();
    assert_eq!(ec, 2);
    let ok_rsa = s
        .rsa
        .sign(&claims(&iss, "a", json!({"aud": "api://other"})));
    let (status, _, v) = call(
        port,
        "GET",
        "/api/operations",
        None,
        &[("authorization", &bearer(&ok_rsa))],
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwks_and_a_revoked_key_take_effect_without_a_restart() {
    let s = setup().await;
    let port = s.port;
    let iss = s.issuer.url.clone();
    let first = bearer(&s.rsa.sign(&claims(&iss, "alice", json!({}))));
    let (status, _, _) = call(
        port,
        "GET",
        "/api/operations",
        None,
        &[("authorization", &first)],
    )
    .await;
    assert_eq!(status, 200);
    let fetched = s.issuer.jwks_fetches.load(Ordering::SeqCst);

    // The issuer rotates: a new key appears. Tokens signed with it work at once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = Key::ec("ec-2");
    s.issuer.keys.lock().expect("keys").push(rotated.jwk());
    let token = bearer(&rotated.sign(&claims(&iss, "alice", json!({}))));
    let (status, _, v) = call(
        port,
        "GET",
        "/api/operations",
        None,
        &[("authorization", &token)],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.issuer.jwks_fetches.load(Ordering::SeqCst), fetched + 1);

    // A flood of tokens with made-up key ids costs the issuer at most one fetch a second.
    let fetched = s.issuer.jwks_fetches.load(Ordering::SeqCst);
    let began = std::time::Instant::now();
    for i in 0..30 {
        let junk = Key::ec(&format!("made-up-{i}"));
        let token = bearer(&junk.sign(&claims(&iss, "x", json!({}))));
        let (status, _, _) = call(
            port,
            "GET",
            "/api/operations",
            None,
            &[("authorization", &token)],
        )
        .await;
        assert_eq!(status, 401);
    }
    let seconds = began.elapsed().as_secs() as usize;
    let extra = s.issuer.jwks_fetches.load(Ordering::SeqCst) - fetched;
    assert!(extra <= seconds + 1, "{extra} fetches in {seconds} s");

    // An API key revoked in the file stops working without a restart.
    let batch = [("x-api-key", "batch-key-0123456789abcdef")];
    assert_eq!(
        call(port, "GET", "/api/operations", None, &batch).await.0,
        200
    );
    std::fs::write(&s.keys_file, r#"{"keys": []}"#).expect("rewrite");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while call(port, "GET", "/api/operations", None, &batch).await.0 != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked key still works"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(s.keys_file.parent().expect("dir"));
}
