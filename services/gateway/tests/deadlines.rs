//! Every connection has a deadline, as its answer is written too: clients that ask and never
//! read, clients that read too slowly, and heads trickled to an admin listener, against a real
//! gateway process.

use std::time::{Duration, Instant};

use test_support::clients::{closed_within, never_reading, trickle};
use test_support::exposition::value;
use test_support::process::{allow_open_files, rss_mib};
use tokio::io::AsyncReadExt;

mod common;
use common::*;

/// One test of this file at a time: one opens a thousand connections.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BUNDLE: &[u8] = b"GET /docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: localhost\r\n\r\n";

async fn open_connections(admin: u16) -> f64 {
    let (_, _, text) = test_support::http::request(admin, "GET", "/metrics", &[], "").await;
    value(&text, "gateway_connections_open")
}

/// 1,000 clients ask for the 1.5 MB Swagger UI bundle and never read: each is disconnected once
/// its answer has made no progress for the write-stall deadline, new clients are served
/// meanwhile, and the gateway's memory stays bounded. (Before, they were all still open 150 s
/// later, and a connection cap of their number refused everyone else.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_clients_are_cut_off_at_the_write_stall_and_others_are_served() {
    let _one = ONE_AT_A_TIME.lock().await;
    allow_open_files(8192);
    let (_scheduler, endpoint) = local_scheduler().await;
    let (gw, port, admin) = gateway(
        &endpoint,
        &[("GATEWAY__WRITE_STALL_TIMEOUT_SECONDS", "5".into())],
    )
    .await;
    let mut clients = Vec::new();
    let opened = Instant::now();
    for _ in 0..1000 {
        clients.push(never_reading(port, BUNDLE).await);
    }
    let all_open_after = opened.elapsed();
    // The gateway accepts them as fast as it can; all are held at once before any stalls out.
    let mut held = open_connections(admin).await;
    while held < 1000.0 && opened.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        held = open_connections(admin).await;
    }
    assert!(
        held >= 1000.0,
        "{held} of 1,000 connections open {:?} after the first",
        opened.elapsed()
    );
    // Served meanwhile, at once.
    let t = Instant::now();
    let (status, _, _) = test_support::http::request(port, "GET", "/openapi.json", &[], "").await;
    assert_eq!(status, 200);
    let served_in = t.elapsed();
    assert!(served_in < Duration::from_secs(2), "{served_in:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let cut_off_after = loop {
        if open_connections(admin).await <= 0.0 {
            break opened.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "still open: {}",
            open_connections(admin).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (peak, _) = rss_mib(gw.id().expect("pid"));
    eprintln!(
        "1,000 never-reading clients: opened in {:.1} s, {held} held at once, all disconnected {:.1} s after the first opened (stall deadline 5 s); a new client served meanwhile in {served_in:?}; gateway peak RSS {peak:.1} MiB",
        all_open_after.as_secs_f64(),
        cut_off_after.as_secs_f64()
    );
    assert!(
        cut_off_after < all_open_after + Duration::from_secs(9),
        "cut off {cut_off_after:?} after the first opened"
    );
    assert!(
        peak < 128.0,
        "peak RSS {peak:.1} MiB (the chart's limit is 128 MiB)"
    );
    // From the clients' side: closed.
    for c in clients.iter_mut().take(20) {
        assert!(closed_within(c, Duration::from_secs(5)).await);
    }
}

/// A client that keeps reading, slowly (4 KiB every 25 ms, at most 160 KB/s: fast enough that
/// the answer never stalls for 2 s, too slow for 1.5 MB in 3 s), is cut off at the answer
/// deadline: the gateway closes the connection (what was already in the
/// kernel's send buffer still reaches the client, which is why this is watched on the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_off_at_the_answer_deadline() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_gw, port, admin) = gateway(
        &endpoint,
        &[
            ("GATEWAY__WRITE_STALL_TIMEOUT_SECONDS", "2".into()),
            ("GATEWAY__ANSWER_TIMEOUT_SECONDS", "3".into()),
        ],
    )
    .await;
    let mut s = never_reading(port, BUNDLE).await;
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        let mut got = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(120), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
                Ok(Ok(n)) => got += n,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    while open_connections(admin).await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(2), "never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let closed_after = loop {
        if open_connections(admin).await <= 0.0 {
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "still open after 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        closed_after >= Duration::from_secs(3) && closed_after < Duration::from_secs(8),
        "closed after {closed_after:?}"
    );
    let got = reader.await.expect("join");
    assert!(
        got < 1_000_000,
        "the 1.5 MB answer was not cut short ({got} bytes)"
    );
}

/// `GATEWAY__DOCS=admin` serves the Swagger UI on the admin listener only; `/openapi.json` stays
/// with the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swagger_ui_can_live_on_the_admin_listener_only() {
    let (_scheduler, endpoint) = local_scheduler().await;
    let (_gw, port, admin) = gateway(&endpoint, &[("GATEWAY__DOCS", "admin".into())]).await;
    let get = |p: u16, path: &'static str| async move {
        test_support::http::request(p, "GET", path, &[], "").await.0
    };
    assert_eq!(get(port, "/docs/").await, 404);
    assert_eq!(get(port, "/docs/swagger-ui-bundle.js").await, 404);
    assert_eq!(get(port, "/openapi.json").await, 200);
    assert_eq!(get(admin, "/docs/").await, 200);
    assert_eq!(get(admin, "/openapi.json").await, 200);
    let (_gw, off, off_admin) = gateway(&endpoint, &[("GATEWAY__DOCS", "off".into())]).await;
    assert_eq!(get(off, "/docs/").await, 404);
    assert_eq!(get(off_admin, "/docs/").await, 404);
    assert_eq!(get(off, "/openapi.json").await, 200);
}

/// The admin listener (probes and metrics) has the same deadlines: heads trickled a line a
/// second are cut off at its 5 s head timeout, and a client that pipelines requests for
/// `/metrics` and never reads is cut off once the answers stall for 10 s; probes are answered
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_cuts_off_slow_heads_and_never_reading_clients() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_scheduler, endpoint) = local_scheduler().await;
    let (gw, _port, admin) = gateway(&endpoint, &[]).await;
    let slow = tokio::spawn(trickle(
        admin,
        Duration::from_secs(1),
        Duration::from_secs(30),
    ));
    let pipelined: Vec<u8> = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(2000);
    let mut reader = never_reading(admin, &pipelined).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        test_support::http::request(admin, "GET", "/healthz", &[], "")
            .await
            .0,
        200,
        "probes answered meanwhile"
    );
    let kept = slow.await.expect("join");
    assert!(
        kept >= Duration::from_secs(4) && kept < Duration::from_secs(9),
        "a trickled head kept its connection {kept:?}"
    );
    // The stall clock starts once the client's window and the server's buffers are full.
    assert!(
        closed_within(&mut reader, Duration::from_secs(25)).await,
        "the never-reading client is still connected"
    );
    let (peak, _) = rss_mib(gw.id().expect("pid"));
    assert!(peak < 128.0, "peak RSS {peak:.1} MiB");
}
