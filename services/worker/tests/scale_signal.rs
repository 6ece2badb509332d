//! The chart's scale signal, evaluated by a real Prometheus scraping real processes: the KEDA
//! query the chart renders, and the prometheus-adapter query the HPA reads, rise under a backlog
//! and fall to the minimum when idle, with the local scheduler's metrics and with only the
//! workers' (as against Azure DTS, which exports no backlog).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use durabletask::{Client, Connection, ConnectionOptions, StartOptions};
use serde_json::json;
use test_support::net::free_port;
use test_support::prometheus::{Job, Prometheus};

const NAMESPACE: &str = "apps";
const MIN: f64 = 1.0;
const MAX: f64 = 10.0;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The KEDA trigger the chart renders for workers with 5 activity slots: (query, threshold).
fn chart_trigger() -> (String, f64) {
    let helm = repo(".tools/bin/helm");
    assert!(
        helm.exists(),
        "helm is needed: `make tools` (make test does it)"
    );
    let out = std::process::Command::new(helm)
        .args(["template", "api"])
        .arg(repo("charts/async-http-api"))
        .args([
            "--namespace",
            NAMESPACE,
            "--set",
            "localScheduler.enabled=true",
            "--set",
            "gateway.auth.mode=none",
            "--set",
            "worker.keda.enabled=true",
            "--set",
            "worker.maxConcurrentActivities=5",
            "--show-only",
            "templates/worker.yaml",
        ])
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        let raw = line.trim_start()[name.len() + 2..].trim();
        serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_string())
    };
    (
        field("query"),
        field("threshold").parse().expect("threshold"),
    )
}

/// The external metric's query of k8s/monitoring/prometheus-adapter-values.yaml, for one
/// namespace (what the adapter makes of `<<.LabelMatchers>>`).
fn adapter_query() -> String {
    let text = std::fs::read_to_string(repo("k8s/monitoring/prometheus-adapter-values.yaml"))
        .expect("adapter values");
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("metricsQuery: "))
        .expect("metricsQuery");
    line.trim_matches('\'')
        .replace("<<.LabelMatchers>>", &format!("namespace=\"{NAMESPACE}\""))
}

/// Replicas as KEDA's HPA computes them from an AverageValue target.
fn desired(value: f64, threshold: f64) -> f64 {
    (value / threshold).ceil().clamp(MIN, MAX)
}

async fn until(p: &Prometheus, expr: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = p.scalar(expr).await.unwrap_or(f64::NAN);
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: `{expr}` is {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_query_rises_under_a_backlog_and_falls_to_the_minimum_when_idle() {
    let (query, threshold) = chart_trigger();
    assert_eq!(threshold, 4.0, "80 % of 5 activity slots");
    let adapter = adapter_query();

    let (port, admin) = (free_port(), free_port());
    let _scheduler = test_support::process::spawn(
        "local-scheduler",
        &[
            ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port}")),
            (
                "LOCAL_SCHEDULER__ADMIN_LISTEN",
                format!("127.0.0.1:{admin}"),
            ),
            ("LOCAL_SCHEDULER__STORE", "memory".into()),
        ],
        port,
    )
    .await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let worker_admin = free_port();
    let _worker = test_support::process::spawn(
        "worker",
        &[
            ("ENDPOINT", endpoint.clone()),
            ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{worker_admin}")),
            ("WORKER__MAX_CONCURRENT_ACTIVITIES", "5".into()),
        ],
        worker_admin,
    )
    .await;

    // As the chart's PodMonitor labels them: job from the component, the pod's namespace.
    let dir = std::env::temp_dir().join(format!("scale-signal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let labels = vec![("namespace", NAMESPACE)];
    let worker_job = || Job {
        name: "worker",
        ports: vec![worker_admin],
        labels: labels.clone(),
    };
    let with_scheduler = Prometheus::start(
        &dir.join("local"),
        &[
            worker_job(),
            Job {
                name: "local-scheduler",
                ports: vec![admin],
                labels: labels.clone(),
            },
        ],
        None,
    )
    .await;
    // Azure DTS exports nothing: only the workers are scraped.
    let workers_only = Prometheus::start(&dir.join("dts"), &[worker_job()], None).await;

    for (name, p) in [("local", &with_scheduler), ("workers only", &workers_only)] {
        let v = until(p, &query, name, |v| v == 0.0).await;
        assert_eq!(desired(v, threshold), MIN, "{name}: idle is the minimum");
    }

    // 20 operations of 4 s on 5 activity slots: 5 run, 15 wait.
    let conn = Connection::connect(ConnectionOptions::new(&endpoint, "default").expect("opts"))
        .await
        .expect("connect");
    let client = Client::new(&conn);
    for i in 0..20 {
        client
            .schedule_new_orchestration(
                "process_request",
                &json!({"name": format!("load-{i}"), "delay_seconds": 4}),
                StartOptions::default(),
            )
            .await
            .expect("start");
    }
    let local = until(&with_scheduler, &query, "local, under load", |v| v >= 15.0).await;
    let local_replicas = desired(local, threshold);
    assert!(
        local_replicas >= 4.0,
        "running + waiting {local} asks for {local_replicas} replicas"
    );
    let adapter_value = until(&with_scheduler, &adapter, "adapter, under load", |v| {
        v >= 15.0
    })
    .await;
    assert!(
        desired(adapter_value, threshold) >= 4.0,
        "the HPA's metric: {adapter_value}"
    );
    let oldest = until(
        &with_scheduler,
        &format!("max(dts_local_oldest_work_item_age_seconds{{kind=\"activity\",namespace=\"{NAMESPACE}\"}})"),
        "the oldest wait",
        |v| v > 0.0,
    )
    .await;
    let saturated = until(&workers_only, &query, "workers only, under load", |v| {
        v >= 5.0
    })
    .await;
    let dts_replicas = desired(saturated, threshold);
    assert!(
        dts_replicas > MIN,
        "a saturated worker ({saturated} of 5 slots) asks for more than the minimum: {dts_replicas}"
    );
    eprintln!(
        "under load: local {local} -> {local_replicas} replicas (oldest wait {oldest:.1} s); workers only {saturated} -> {dts_replicas} replicas"
    );

    // All done: back to the minimum.
    for (name, p) in [("local", &with_scheduler), ("workers only", &workers_only)] {
        let v = until(p, &query, name, |v| v == 0.0).await;
        assert_eq!(desired(v, threshold), MIN, "{name}: idle again");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
