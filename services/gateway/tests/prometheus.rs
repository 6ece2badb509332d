//! A real Prometheus server (Debian package) scrapes the gateway, two workers and the local
//! scheduler during an end-to-end run that includes failing operations; then every PromQL
//! expression of the dashboard and of the alert rules must be valid and return data, the rules
//! must load in the server, and `promtool` must accept the rules and every `/metrics` page.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use durabletask::{Client, Connection, ConnectionOptions, StartOptions};
use serde_json::{Value, json};
use test_support::prometheus::{Job, Prometheus, encode, get_json, get_text, query, tool};
use tokio::process::Command;

mod common;
use common::*;

fn chart_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../charts/async-http-api/files")
        .join(name)
}

/// Polls until `expr` returns at least one series (rates need a few scrapes).
async fn eventually_data(port: u16, expr: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = query(port, expr).await;
        assert_eq!(v["status"], "success", "invalid PromQL `{expr}`: {v}");
        if v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            return v;
        }
        assert!(Instant::now() < deadline, "`{expr}` returned no data: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The alert's signal: its expression without the final top-level comparison.
fn signal(expr: &str) -> &str {
    let bytes = expr.as_bytes();
    let mut depth = 0i32;
    let mut cut = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'>' | b'<' if depth == 0 && bytes.get(i + 1) != Some(&b'=') => cut = Some(i),
            _ => {}
        }
    }
    cut.map_or(expr, |i| expr[..i].trim())
}

fn rule_exprs(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_string)
        .collect()
}

fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} uses the datasource variable",
            panel["title"]
        );
        for t in panel["targets"].as_array().expect("targets") {
            out.push((
                panel["title"].as_str().unwrap_or("").to_string(),
                t["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

async fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(tool("promtool", "PROMTOOL"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .await
        .expect("write");
    drop(input);
    let out = child.wait_with_output().await.expect("promtool output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_everything_and_every_dashboard_and_alert_query_returns_data() {
    let rules_file = chart_file("alerts.rules.yaml");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_file("dashboard.json")).expect("read"))
            .expect("dashboard json");
    let (ok, out) = promtool(&["check", "rules", &rules_file.display().to_string()], None).await;
    assert!(ok, "promtool check rules: {out}");

    // The system: scheduler, two workers, gateway, each with its metrics port.
    let store_dir = std::env::temp_dir().join(format!("prom-store-{}", std::process::id()));
    std::fs::create_dir_all(&store_dir).expect("store dir");
    let sched_port = free_port();
    let sched_admin = free_port();
    let _sched = spawn(
        "local-scheduler",
        &[
            ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{sched_port}")),
            (
                "LOCAL_SCHEDULER__ADMIN_LISTEN",
                format!("127.0.0.1:{sched_admin}"),
            ),
            // SQLite, as in a cluster: its store's metrics are in the alert rules.
            ("LOCAL_SCHEDULER__STORE", "sqlite".into()),
            (
                "LOCAL_SCHEDULER__SQLITE_PATH",
                store_dir.join("store.db").display().to_string(),
            ),
        ],
        sched_port,
    )
    .await;
    let endpoint = format!("http://127.0.0.1:{sched_port}");
    let mut workers = Vec::new();
    let mut worker_ports = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let admin = free_port();
        workers.push(
            spawn(
                "worker",
                &[
                    ("ENDPOINT", endpoint.clone()),
                    ("HOSTNAME", name.into()),
                    ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
                ],
                admin,
            )
            .await,
        );
        worker_ports.push(admin);
    }
    let (_gateway, gw, gw_admin) = gateway(
        &endpoint,
        &[
            // Traced requests, so that latency buckets carry trace ids as exemplars (nothing
            // listens there: spans are dropped, their ids still exist).
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", free_port()),
            ),
        ],
    )
    .await;

    let dir = std::env::temp_dir().join(format!("prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let job = |name, ports| Job {
        name,
        ports,
        labels: vec![],
    };
    let prometheus = Prometheus::start(
        &dir,
        &[
            job("gateway", vec![gw_admin]),
            job("worker", worker_ports.clone()),
            job("local-scheduler", vec![sched_admin]),
        ],
        Some(&rules_file),
    )
    .await;
    let prom_port = prometheus.port;

    // Traffic: successes, an idempotent repeat, a cancel, unknown ids, and failing operations.
    // Spread over a few scrapes, so that rates see the counters move.
    let mut ids = Vec::new();
    for i in 0..20 {
        if i % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let body = json!({"name": format!("user-{i}"), "delay_seconds": i % 2}).to_string();
        let (s, _, v) = http(gw, "POST", "/api/process", Some(&body)).await;
        assert_eq!(s, 202, "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    let body = json!({"name": "once", "delay_seconds": 0}).to_string();
    for _ in 0..3 {
        let (s, ..) = http_with_headers(
            gw,
            "POST",
            "/api/process",
            Some(&body),
            &[("Idempotency-Key", "metrics-key")],
        )
        .await;
        assert_eq!(s, 202);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let long = json!({"name": "long", "delay_seconds": 600}).to_string();
    let (_, _, v) = http(gw, "POST", "/api/process", Some(&long)).await;
    let long_id = v["id"].as_str().expect("id").to_string();
    let (s, ..) = http(
        gw,
        "POST",
        &format!("/api/operations/{long_id}/cancel"),
        None,
    )
    .await;
    assert_eq!(s, 202);
    let (s, ..) = http(gw, "GET", "/api/status/nope", None).await;
    assert_eq!(s, 404);
    let conn = Connection::connect(ConnectionOptions::new(&endpoint, "default").expect("opts"))
        .await
        .expect("connect");
    let client = Client::new(&conn);
    for i in 0..3 {
        client
            .schedule_new_orchestration(
                "async_http_api_orchestrator",
                &json!({"operation_id": format!("bad-{i}"), "processing_time": -1}),
                StartOptions::default(),
            )
            .await
            .expect("start failing operation");
    }
    for id in &ids {
        let (s, _, v) = http(gw, "GET", &format!("/api/status/{id}?wait=10"), None).await;
        assert_eq!(s, 200, "{v}");
    }

    // Let a few scrapes see the final counts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The dashboard's queries, with Grafana's rate interval set as Grafana would at 1 s scrapes.
    let mut report = Vec::new();
    for (title, expr) in dashboard_exprs(&dashboard) {
        let concrete = expr.replace("$__rate_interval", "30s");
        let v = eventually_data(prom_port, &concrete).await;
        report.push(format!(
            "{title}: {} series, e.g. {}",
            v["data"]["result"].as_array().map_or(0, Vec::len),
            v["data"]["result"][0]["value"][1]
        ));
    }
    assert!(report.len() >= 16, "{report:?}");
    // And the run shows in them: counters moved while Prometheus watched.
    for expr in [
        "sum(rate(gateway_operations_started_total[30s]))",
        "sum(rate(gateway_operations_deduplicated_total[30s]))",
        "sum(rate(gateway_operations_canceled_total[30s]))",
        r#"sum(rate(worker_operation_duration_seconds_count{status="completed"}[30s]))"#,
        r#"sum(rate(worker_operation_duration_seconds_count{status="failed"}[30s]))"#,
        r#"sum(rate(gateway_http_requests_total{route="/api/process"}[30s]))"#,
        r#"sum(rate(gateway_dts_rpc_errors_total{code="AlreadyExists"}[30s]))"#,
        "sum(worker_stream_connected)",
    ] {
        let v = eventually_data(prom_port, expr).await;
        let x: f64 = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        assert!(x > 0.0, "{expr} = {x}");
    }

    // The alert rules: loaded and healthy in the server, every expression valid, every signal
    // with data (the failure ratio too: operations failed above).
    let exprs = rule_exprs(&std::fs::read_to_string(&rules_file).expect("rules"));
    assert_eq!(exprs.len(), 9, "{exprs:?}");
    for expr in &exprs {
        let v = query(prom_port, expr).await;
        assert_eq!(v["status"], "success", "{expr}: {v}");
        let sig = signal(expr);
        assert_ne!(sig, expr.as_str(), "no comparison in {expr}");
        eventually_data(prom_port, sig).await;
    }
    let failed = eventually_data(
        prom_port,
        r#"sum(worker_operation_duration_seconds_count{status="failed"})"#,
    )
    .await;
    assert_eq!(failed["data"]["result"][0]["value"][1], "3", "{failed}");
    let rules = get_json(prom_port, "/api/v1/rules").await;
    let loaded: Vec<Value> = rules["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(loaded.len(), 9, "{rules}");
    for r in loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }

    // Exemplars: latency buckets point at traces.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // The gateway's request latency, the workers' execution and end-to-end durations, the
    // scheduler's dispatch latency.
    for histogram in [
        "gateway_http_request_duration_seconds_bucket",
        "worker_work_item_duration_seconds_bucket",
        "worker_operation_duration_seconds_bucket",
        "dts_local_dispatch_latency_seconds_bucket",
    ] {
        let exemplars = get_json(
            prom_port,
            &format!(
                "/api/v1/query_exemplars?query={}&start={}&end={}",
                encode(histogram),
                now - 300,
                now + 60
            ),
        )
        .await;
        let trace_ids: Vec<String> = exemplars["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_string))
            .collect();
        assert!(
            trace_ids
                .iter()
                .any(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())),
            "{histogram}: no exemplar with a trace id: {exemplars}"
        );
    }

    // promtool accepts every exposition.
    for port in [gw_admin, worker_ports[0], worker_ports[1], sched_admin] {
        let text = get_text(port, "/metrics").await;
        let (ok, out) = promtool(&["check", "metrics"], Some(&text)).await;
        assert!(ok, "promtool check metrics on :{port}: {out}\n{text}");
    }
    println!("dashboard queries:\n{}", report.join("\n"));
    drop(workers);
    drop(_sched);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&store_dir);
}
