//! Authentication and ownership, end to end: tokens are minted here (signed with keys made
//! here), the issuer's discovery document and JWKS are served over real HTTP by this test, and
//! a real gateway process checks them. API keys come from a file the test rewrites.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::oidc::{
    Issuer, Key, claims, hmac_token, issuer, now, sha256_hex, unsigned_token,
};

mod common;
use common::*;

const AUDIENCE: &str = "api://async-http-api";
const SECRET: &str = "id secret for the tests, at least 32 characters";

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
    _scheduler: test_support::in_process::Running,
    _gateway: tokio::process::Child,
    port: u16,
    issuer: Issuer,
    rsa: Key,
    keys_file: std::path::PathBuf,
}

impl Drop for Setup {
    /// The keys file's directory goes with the test, whichever way it ends.
    fn drop(&mut self) {
        if let Some(dir) = self.keys_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
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
    let alice = bearer(
        &s.rsa
            .sign(&claims(&s.issuer.url, AUDIENCE, "alice", json!({}))),
    );
    let bob = bearer(
        &s.rsa
            .sign(&claims(&s.issuer.url, AUDIENCE, "bob", json!({}))),
    );
    let admin = bearer(&s.rsa.sign(&claims(
        &s.issuer.url,
        AUDIENCE,
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
        ("GET", format!("/api/status/{a_op}/events")),
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_do_not_hold_are_refused_with_401() {
    let s = setup().await;
    let port = s.port;
    let iss = s.issuer.url.clone();
    // Signed with HMAC keyed by the RSA key's public modulus, naming its key id (the classic
    // key-confusion attack), and not signed at all.
    let modulus = s.rsa.jwk()["n"].as_str().expect("n").to_string();
    let hmac_token = hmac_token(
        "rsa-1",
        modulus.as_bytes(),
        &claims(&iss, AUDIENCE, "mallory", json!({})),
    );
    let none_token = unsigned_token(&claims(&iss, AUDIENCE, "mallory", json!({})));
    let stranger = Key::rsa("rsa-1"); // the right key id, the wrong key
    let unpublished = Key::ec("not-published");
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            s.rsa
                .sign(&claims(&iss, AUDIENCE, "a", json!({"exp": now() - 120}))),
        ),
        (
            "not yet valid",
            s.rsa
                .sign(&claims(&iss, AUDIENCE, "a", json!({"nbf": now() + 600}))),
        ),
        (
            "wrong audience",
            s.rsa.sign(&claims(
                &iss,
                AUDIENCE,
                "a",
                json!({"aud": "api://someone-else"}),
            )),
        ),
        (
            "wrong issuer",
            s.rsa.sign(&claims(
                &iss,
                AUDIENCE,
                "a",
                json!({"iss": "https://evil.example"}),
            )),
        ),
        (
            "no subject",
            s.rsa.sign(&claims(&iss, AUDIENCE, "a", json!({"sub": ""}))),
        ),
        ("alg none", none_token),
        ("HMAC", hmac_token),
        (
            "wrong key",
            stranger.sign(&claims(&iss, AUDIENCE, "a", json!({}))),
        ),
        (
            "unknown kid",
            unpublished.sign(&claims(&iss, AUDIENCE, "a", json!({}))),
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
        .sign(&claims(&iss, AUDIENCE, "a", json!({"aud": "api://other"})));
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
    let first = bearer(&s.rsa.sign(&claims(&iss, AUDIENCE, "alice", json!({}))));
    let (status, _, _) = call(
        port,
        "GET",
        "/api/operations",
        None,
        &[("authorization", &first)],
    )
    .await;
    assert_eq!(status, 200);
    let fetched = s.issuer.fetches();

    // The issuer rotates: a new key appears. Tokens signed with it work at once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = Key::ec("ec-2");
    s.issuer.keys.lock().expect("keys").push(rotated.jwk());
    let token = bearer(&rotated.sign(&claims(&iss, AUDIENCE, "alice", json!({}))));
    let (status, _, v) = call(
        port,
        "GET",
        "/api/operations",
        None,
        &[("authorization", &token)],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.issuer.fetches(), fetched + 1);

    // A flood of tokens with made-up key ids costs the issuer at most one fetch a second.
    let fetched = s.issuer.fetches();
    let began = std::time::Instant::now();
    for i in 0..30 {
        let junk = Key::ec(&format!("made-up-{i}"));
        let token = bearer(&junk.sign(&claims(&iss, AUDIENCE, "x", json!({}))));
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
    let extra = s.issuer.fetches() - fetched;
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
}

/// Refused credentials are limited per client address (behind a trusted proxy, the address it
/// recorded, whatever the client wrote before it): past the burst an address gets `429` with
/// `Retry-After` before any check, its valid credentials included, until it is back under the
/// rate; other addresses are not affected. Before, every bad credential was checked and
/// answered `401`, however many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_limited_per_client_address() {
    let dir =
        std::env::temp_dir().join(format!("auth-fail-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys_file = dir.join("api-keys.json");
    std::fs::write(
        &keys_file,
        json!({"keys": [{"id": "batch", "name": "Batch", "role": "user", "sha256": sha256_hex("batch-key-0123456789abcdef")}]})
            .to_string(),
    )
    .expect("keys file");
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_gw, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__AUTH", "api_key".into()),
            ("GATEWAY__ID_SECRET", SECRET.into()),
            ("GATEWAY__API_KEYS_FILE", keys_file.display().to_string()),
            ("GATEWAY__AUTH_FAILURES_PER_SECOND", "1".into()),
            ("GATEWAY__AUTH_FAILURES_BURST", "5".into()),
            ("GATEWAY__TRUST_FORWARDED", "true".into()),
        ],
    )
    .await;
    let good = ("x-api-key", "batch-key-0123456789abcdef");
    let bad = ("x-api-key", "guessed-key-0123456789abcdef");
    // Client A, behind the proxy; it prepends a made-up address, which is not believed.
    let a = ("x-forwarded-for", "203.0.113.77, 198.51.100.1");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (status, headers, v) = call(port, "GET", "/api/operations", None, &[bad, a]).await;
        if status == 429 {
            assert_eq!(v["type"], "/problems/too-many-refused-credentials", "{v}");
            assert!(hdr(&headers, "retry-after").is_some(), "{headers:?}");
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..5], [401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Its valid key waits too (nothing is checked for a blocked address) ...
    let (status, ..) = call(port, "GET", "/api/operations", None, &[good, a]).await;
    assert_eq!(status, 429);
    // ... another client (its own address, and one that spoofs A's as the first entry) is not
    // affected ...
    for b in ["198.51.100.2", "198.51.100.1, 198.51.100.2"] {
        let (status, _, v) = call(
            port,
            "GET",
            "/api/operations",
            None,
            &[good, ("x-forwarded-for", b)],
        )
        .await;
        assert_eq!(status, 200, "{b}: {v}");
    }
    // ... and A is let in again once under the rate.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, v) = call(port, "GET", "/api/operations", None, &[good, a]).await;
    assert_eq!(status, 200, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
