//! Large payloads (the claim check) through the local scheduler, with blobs in Azurite: 5 MB
//! inputs and results through a Rust worker and client, past the scheduler's 1 MB payload limit;
//! the official Python SDK reading what the Rust SDK stored and the other way round; and the
//! payloads that cannot be had (over the limit, a store that is down) answered, not lost.

use std::sync::Arc;
use std::time::Duration;

use durabletask::payload::{BlobPayloadStore, LargePayloadOptions, PayloadError, Payloads};
use durabletask::{
    ActivityContext, Client, Connection, ConnectionOptions, Error, OrchestrationContext,
    OrchestrationStatus, Registry, StartOptions, Worker, WorkerOptions,
};
use test_support::azurite::Azurite;
use test_support::in_process::{Running, scheduler};
use test_support::python as pyenv;

const CONTAINER: &str = "payloads-test";
const FIVE_MB: usize = 5 * 1024 * 1024;

fn payloads(azurite: &Azurite, options: LargePayloadOptions) -> Payloads {
    let store = BlobPayloadStore::from_connection_string(&azurite.connection_string(), CONTAINER)
        .expect("store");
    Payloads::new(Arc::new(store), options)
}

async fn connect(s: &Running) -> Connection {
    Connection::connect(ConnectionOptions::new(&s.endpoint(), "default").expect("options"))
        .await
        .expect("connect")
}

/// The same text the Python peer makes: not one repeated byte.
fn text(size: usize) -> String {
    let unit = "abcdefghijklmnopqrstuvwxyz0123456789";
    unit.repeat(size / unit.len() + 1)[..size].to_string()
}

fn shouted(s: &str) -> String {
    format!("{}!", s.to_uppercase())
}

/// `rust_large`: its input through the activity `rust_shout` (upper-cased, "!" appended).
fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_orchestrator(
        "rust_large",
        |ctx: OrchestrationContext, input: String| async move {
            let out: String = ctx.call_activity("rust_shout", &input).await?;
            Ok(out)
        },
    );
    r.add_activity(
        "rust_shout",
        |_: ActivityContext, input: String| async move { Ok(shouted(&input)) },
    );
    r
}

fn start_worker(conn: &Connection, payloads: Payloads) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::new(
        conn,
        registry(),
        WorkerOptions {
            payloads: Some(payloads),
            ..Default::default()
        },
    );
    tokio::spawn(worker.run(stop.clone()));
    stop
}

async fn completed(client: &Client, id: &str) -> durabletask::OrchestrationMetadata {
    let m = client
        .wait_for_instance_completion(id, true, Duration::from_secs(60))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(
        m.runtime_status,
        OrchestrationStatus::Completed,
        "{:?}",
        m.failure_details
    );
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mb_input_and_result_pass_through_a_rust_worker_by_claim_check() {
    let azurite = Azurite::start().await;
    let s = scheduler(&[]);
    let conn = connect(&s).await;
    let stop = start_worker(&conn, payloads(&azurite, LargePayloadOptions::default()));
    let client =
        Client::new(&conn).with_payloads(payloads(&azurite, LargePayloadOptions::default()));
    let input = text(FIVE_MB);
    let id = client
        .schedule_new_orchestration("rust_large", &input, StartOptions::default())
        .await
        .expect("start");
    let m = completed(&client, &id).await;
    let got: String =
        serde_json::from_str(m.serialized_input.as_deref().expect("input")).expect("json");
    assert_eq!(got, input);
    assert_eq!(m.output::<String>().expect("output"), shouted(&input));

    // The scheduler holds tokens, in the SDKs' format, each blob under the instance's id.
    let plain = Client::new(&conn);
    let raw = plain
        .get_instance(&id, true)
        .await
        .expect("get")
        .expect("exists");
    for token in [
        raw.serialized_input.as_deref(),
        raw.serialized_output.as_deref(),
    ] {
        let token = token.expect("a payload");
        assert!(
            token.starts_with(&format!("blob:v1:{CONTAINER}:{id}/")),
            "{}",
            &token[..token.len().min(200)]
        );
    }
    // The history holds the activity's 5 MB input and result, read back too.
    let history = client
        .get_history(&id)
        .await
        .expect("history")
        .expect("exists");
    let sizes: Vec<usize> = history
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(durabletask::proto::history_event::EventType::TaskScheduled(t)) => {
                t.input.as_ref().map(String::len)
            }
            Some(durabletask::proto::history_event::EventType::TaskCompleted(t)) => {
                t.result.as_ref().map(String::len)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        sizes,
        [FIVE_MB + 2, FIVE_MB + 3],
        "JSON strings of the input and the result"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_limit_are_refused_with_the_reason() {
    let azurite = Azurite::start().await;
    let s = scheduler(&[]);
    let conn = connect(&s).await;
    let small = LargePayloadOptions {
        threshold_bytes: 1024,
        max_stored_payload_bytes: 1024 * 1024,
    };
    let client = Client::new(&conn).with_payloads(payloads(&azurite, small));
    // Over the maximum: refused before anything is started.
    let e = client
        .schedule_new_orchestration(
            "rust_large",
            &text(2 * 1024 * 1024),
            StartOptions {
                instance_id: Some("too-large".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Payload(PayloadError::TooLarge { .. })),
        "{e}"
    );
    assert!(!e.is_transient());
    assert!(
        client
            .get_instance("too-large", false)
            .await
            .expect("get")
            .is_none()
    );

    // A result over the worker's maximum fails the activity, and so the orchestration, with
    // the reason; nothing is retried forever. (Input 600 KB, result the same size: the worker
    // allows 512 KB.)
    let worker_limits = LargePayloadOptions {
        threshold_bytes: 1024,
        max_stored_payload_bytes: 512 * 1024,
    };
    let stop = start_worker(&conn, payloads(&azurite, worker_limits));
    let id = client
        .schedule_new_orchestration("rust_large", &text(600 * 1024), StartOptions::default())
        .await
        .expect("start");
    let m = client
        .wait_for_instance_completion(&id, true, Duration::from_secs(60))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(m.runtime_status, OrchestrationStatus::Failed);
    let failure = m.failure_details.expect("failure");
    assert!(failure.message.contains("over the limit"), "{failure:?}");

    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_store_delays_work_and_loses_none() {
    let mut azurite = Azurite::start().await;
    let s = scheduler(&[]);
    let conn = connect(&s).await;
    let options = LargePayloadOptions {
        threshold_bytes: 1024,
        ..Default::default()
    };
    let client = Client::new(&conn).with_payloads(payloads(&azurite, options));
    let input = text(100 * 1024);
    // Started (its input stored) before the outage, run during it.
    let id = client
        .schedule_new_orchestration("rust_large", &input, StartOptions::default())
        .await
        .expect("start");
    azurite.stop().await;
    let e = client
        .schedule_new_orchestration("rust_large", &input, StartOptions::default())
        .await
        .unwrap_err();
    assert!(
        e.is_transient(),
        "a store that is down is worth a retry: {e}"
    );
    let stop = start_worker(&conn, payloads(&azurite, options));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = Client::new(&conn)
        .get_instance(&id, false)
        .await
        .expect("get")
        .expect("exists");
    assert!(
        !m.runtime_status.is_terminal(),
        "it cannot have run without its input: {m:?}"
    );
    azurite.start_again().await;
    let m = completed(&client, &id).await;
    assert_eq!(m.output::<String>().expect("output"), shouted(&input));
    stop.cancel();
}

/// The official Python SDK's worker on its own claim check, until dropped.
async fn python_worker(s: &Running, azurite: &Azurite) -> tokio::process::Child {
    let args = [
        peer().display().to_string(),
        s.addr.to_string(),
        azurite.connection_string(),
        CONTAINER.into(),
        "worker".into(),
    ];
    pyenv::spawn_python_until(&args, "worker started").await
}

fn peer() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/payloads_peer.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_what_the_rust_sdk_stored_and_the_other_way_round() {
    let azurite = Azurite::start().await;
    let s = scheduler(&[]);
    let conn = connect(&s).await;
    let client =
        Client::new(&conn).with_payloads(payloads(&azurite, LargePayloadOptions::default()));

    // Rust client -> Python worker: the Python SDK reads the Rust SDK's blob, and the Rust SDK
    // reads the Python SDK's result.
    let mut python = python_worker(&s, &azurite).await;
    let input = text(FIVE_MB);
    let id = client
        .schedule_new_orchestration("py_large", &input, StartOptions::default())
        .await
        .expect("start");
    let m = completed(&client, &id).await;
    assert_eq!(m.output::<String>().expect("output"), shouted(&input));
    let raw = Client::new(&conn)
        .get_instance(&id, true)
        .await
        .expect("get")
        .expect("exists");
    assert!(
        raw.serialized_output
            .expect("output")
            .starts_with("blob:v1:")
    );

    // Python client -> Rust worker: the other way round (the Python worker gone first).
    python.kill().await.expect("stop the python worker");
    let stop = start_worker(&conn, payloads(&azurite, LargePayloadOptions::default()));
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(pyenv::python())
            .arg(peer())
            .arg(s.addr.to_string())
            .arg(azurite.connection_string())
            .arg(CONTAINER)
            .args(["client", "rust_large", &FIVE_MB.to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("in time")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok "),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py_id = stdout.trim().trim_start_matches("ok ");
    let raw = Client::new(&conn)
        .get_instance(py_id, true)
        .await
        .expect("get")
        .expect("exists");
    assert!(
        raw.serialized_input.expect("input").starts_with("blob:v1:"),
        "the Python client stored the input"
    );
    stop.cancel();
}
