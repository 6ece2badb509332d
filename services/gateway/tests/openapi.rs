//! The OpenAPI document and the docs page: structure checked with `oneshot`, conformance of the
//! running gateway checked by Schemathesis (PyPI), and the docs page rendered offline by headless
//! Chromium.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::{Settings, app};
use serde_json::Value;
use tower::ServiceExt;

mod common;
use common::*;

async fn get(state: gateway::AppState, uri: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app(state)
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body")
        .to_vec();
    (status, headers, body)
}

/// Every `$ref` in the document, e.g. `#/components/schemas/ProblemDetails`.
fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    out.extend(v.as_str().map(str::to_string));
                }
                refs(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_covers_every_route_status_and_schema() {
    let state = offline_state_with(Settings {
        limits: gateway::config::Limits {
            max_delay_seconds: 120,
            max_name_chars: 40,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (status, headers, body) = get(state, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("application/json")
    );
    let doc: Value = serde_json::from_slice(&body).expect("json");
    assert!(
        doc["openapi"].as_str().expect("version").starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    // Every route of the router, with the status codes its handler can answer.
    // (Every route also has the limits' 408, 429, 431 and 503.)
    let expected: &[(&str, &str, &[u16])] = &[
        ("/api/process", "post", &[202, 400, 413, 415, 422, 502]),
        ("/api/status/{id}", "get", &[200, 400, 404, 502]),
        ("/api/status/{id}/events", "get", &[200, 204, 404, 502]),
        ("/api/result/{id}", "get", &[200, 202, 404, 409, 502]),
        ("/api/operations/{id}/cancel", "post", &[202, 404, 409, 502]),
        ("/api/operations", "get", &[200, 400, 403, 502]),
        (
            "/api/start-operation",
            "post",
            &[202, 400, 413, 415, 422, 502],
        ),
        ("/api/operations/{id}", "get", &[200, 404, 502]),
        ("/api/operations/{id}", "delete", &[204, 404, 409, 502]),
        ("/api/operations/{id}/history", "get", &[200, 404, 502]),
        (
            "/api/recurring",
            "post",
            &[201, 400, 413, 415, 422, 429, 502],
        ),
        ("/api/recurring", "get", &[200, 400, 502]),
        ("/api/recurring/{id}", "get", &[200, 404, 502]),
        ("/api/recurring/{id}", "delete", &[204, 404, 502]),
        ("/api/recurring/{id}/pause", "post", &[200, 404, 409, 502]),
        ("/api/recurring/{id}/resume", "post", &[200, 404, 409, 502]),
    ];
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    let routes: BTreeSet<&str> = expected.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(paths, routes, "documented paths differ from the router's");
    for (path, method, codes) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        let documented: BTreeSet<u16> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(|c| c.parse().expect("numeric status"))
            .collect();
        let want: BTreeSet<u16> = codes.iter().chain(&[408, 429, 431, 503]).copied().collect();
        assert_eq!(documented, want, "{method} {path}");
        for code in want.iter().filter(|c| **c >= 400) {
            let content = &op["responses"][code.to_string()]["content"];
            assert_eq!(
                content["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/ProblemDetails",
                "{method} {path} {code}"
            );
        }
    }
    // The stream's events are described, the data as JSON.
    let stream = &doc["paths"]["/api/status/{id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
        ["schema"]["$ref"];
    assert_eq!(stream, "#/components/schemas/StatusEvent");
    let event = &doc["components"]["schemas"]["StatusEvent"];
    assert_eq!(
        event["properties"]["data"]["contentMediaType"], "application/json",
        "{event}"
    );
    // The 202 of a start carries the polling headers.
    let h = &doc["paths"]["/api/process"]["post"]["responses"]["202"]["headers"];
    for name in ["Location", "Operation-Location", "Retry-After"] {
        assert!(h[name].is_object(), "202 lacks {name}");
    }
    // This deployment's limits are in the schema.
    let req = &doc["components"]["schemas"]["ProcessRequest"];
    assert_eq!(req["properties"]["delay_seconds"]["maximum"], 120);
    assert_eq!(req["properties"]["name"]["maxLength"], 40);
    assert_eq!(req["additionalProperties"], false);
    let recurring = &doc["components"]["schemas"]["RecurringRequest"];
    assert_eq!(recurring["properties"]["interval_seconds"]["minimum"], 60);
    assert_eq!(
        recurring["properties"]["interval_seconds"]["maximum"],
        366 * 24 * 3600
    );
    assert_eq!(recurring["properties"]["delay_seconds"]["maximum"], 120);
    assert_eq!(recurring["additionalProperties"], false);
    // The list's status filter names exactly the states of `contract::status`.
    let status = doc["paths"]["/api/operations"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "status")
        .expect("a status filter");
    let names = contract::status::OperationState::LISTABLE
        .map(|s| s.as_str())
        .join("|");
    assert_eq!(
        status["schema"]["pattern"],
        format!("^({names})(,({names}))*$"),
        "{status}"
    );
    // The status document is `contract::status`'s, with the callback and links beside it.
    assert!(
        doc["components"]["schemas"]["StatusDocument"]["properties"]["completed_at"].is_object(),
        "{}",
        doc["components"]["schemas"]["StatusDocument"]
    );
    // Every reference resolves.
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    assert!(all.len() >= 10, "{all:?}");
    for r in all {
        let pointer = r.strip_prefix('#').expect("local ref");
        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
    }
    assert!(
        doc["components"]["securitySchemes"].is_null(),
        "no auth, no schemes"
    );
}

#[test]
fn with_authentication_the_document_has_its_schemes_and_401_everywhere() {
    let config = Settings {
        auth: Some("jwt,api_key".parse().expect("modes")),
        ..Default::default()
    };
    let doc = serde_json::to_value(gateway::ApiDoc::for_config(&config)).expect("json");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    assert_eq!(schemes["apiKey"]["in"], "header");
    assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let security = op["security"].as_array().expect("security");
            assert_eq!(security.len(), 2, "{method} {path}: either scheme");
            for code in ["401", "403"] {
                assert_eq!(
                    op["responses"][code]["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/ProblemDetails",
                    "{method} {path} {code}"
                );
            }
        }
    }
}

#[tokio::test]
async fn docs_page_and_its_assets_are_served_from_the_binary() {
    let state = offline_state().await;
    let (status, headers, _) = get(state.clone(), "/docs").await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(headers[header::LOCATION], "/docs/");
    let (status, _, body) = get(state.clone(), "/docs/").await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8(body).expect("utf8");
    assert!(html.contains("swagger-ui-bundle.js"), "{html}");
    // No asset comes from another host.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    let (status, _, js) = get(state.clone(), "/docs/swagger-ui-bundle.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        js.len() > 100_000,
        "the bundle is embedded ({} bytes)",
        js.len()
    );
    let (status, _, init) = get(state, "/docs/swagger-initializer.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&init).contains("/openapi.json"),
        "the page loads our document"
    );
}

// ------------------------------------------------------------------ real processes

const API_KEY: &str = "schemathesis-key-0123456789abcdef";

/// The whole system on loopback: scheduler, worker and gateway (short limits, so that operations
/// started by the tools finish quickly and long polls stay short).
async fn system() -> (
    (
        test_support::in_process::Running,
        test_support::in_process::Running,
        tokio::process::Child,
    ),
    u16,
) {
    // Authentication on: an API key of the `user` role, which Schemathesis presents.
    let dir = std::env::temp_dir().join(format!("st-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keys = dir.join("keys.json");
    let hash: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, API_KEY.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        &keys,
        format!(r#"{{"keys":[{{"id":"schemathesis","name":"conformance","role":"user","sha256":"{hash}"}}]}}"#),
    )
    .expect("keys");
    let (scheduler, endpoint) = local_scheduler().await;
    let worker = worker_in_process(&endpoint);
    let (gateway, port, _) = gateway(
        &endpoint,
        &[
            ("GATEWAY__MAX_WAIT_SECONDS", "1".into()),
            ("GATEWAY__MAX_DELAY_SECONDS", "2".into()),
            // A status stream of a pending operation ends well within the tool's timeout.
            ("GATEWAY__MAX_STREAM_SECONDS", "3".into()),
            ("GATEWAY__AUTH", "api_key".into()),
            (
                "GATEWAY__ID_SECRET",
                "an id secret of at least 32 characters".into(),
            ),
            ("GATEWAY__API_KEYS_FILE", keys.display().to_string()),
        ],
    )
    .await;
    ((scheduler, worker, gateway), port)
}

fn venv_tool(name: &str) -> PathBuf {
    let python = std::env::var_os("DURABLETASK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    let tool = python.parent().expect("venv bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: run `make venv` (it installs the pinned Python tools)",
        tool.display()
    );
    tool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_deviation_from_the_document() {
    let (_procs, port) = system().await;
    let config =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/schemathesis.toml");
    let work = std::env::temp_dir().join(format!("st-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("dir");
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(venv_tool("schemathesis"))
            .current_dir(&work)
            .arg("--config-file")
            .arg(&config)
            .args(["run", &format!("http://127.0.0.1:{port}/openapi.json")])
            .args(["--checks", "all", "--no-color"])
            .args(["--header", &format!("X-API-Key: {API_KEY}")])
            .output(),
    )
    .await
    .expect("schemathesis finished in time")
    .expect("run schemathesis");
    let _ = std::fs::remove_dir_all(&work);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found deviations:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really exercised the API: all operations, and hundreds of generated cases.
    assert!(text.contains("Tested: 16"), "{text}");
    let generated: u32 = text
        .lines()
        .filter_map(|l| l.trim().split_once(" generated"))
        .find_map(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 'N generated' line:\n{text}"));
    assert!(generated >= 200, "only {generated} cases:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_renders_every_operation_in_headless_chromium_offline() {
    let (_procs, port) = system().await;
    let dom = test_support::browser::dump_dom(&format!("http://127.0.0.1:{port}/docs/")).await;
    // Swagger UI ran (from the embedded assets), fetched /openapi.json and rendered each path.
    for path in [
        "/api/process",
        "/api/status/{id}",
        "/api/result/{id}",
        "/api/operations/{id}/cancel",
        "/api/operations",
        "/api/start-operation",
        "/api/operations/{id}",
        "/api/operations/{id}/history",
    ] {
        assert!(
            dom.contains(&format!("data-path=\"{path}\"")),
            "{path} not rendered; DOM:\n{}",
            &dom[..dom.len().min(4000)]
        );
    }
    assert!(dom.contains("Async HTTP API on the Durable Task Scheduler"));
    // Authentication is on in this system: the page offers to authorize (the API key scheme).
    assert!(
        dom.contains("btn authorize"),
        "no Authorize button; DOM:\n{}",
        &dom[..dom.len().min(4000)]
    );
}
