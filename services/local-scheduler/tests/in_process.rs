//! The scheduler as a library: `serve` on listeners the test bound, in this process, driven by the
//! SDK's scenarios, then stopped through its shutdown token.

use std::time::Duration;

use durabletask::{Client, Connection, ConnectionOptions};
use local_scheduler::{Listeners, Runtime, Settings, serve};
use test_support::scenarios;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_in_process_and_stops_on_its_token() {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (grpc_port, admin_port) = (
        grpc.local_addr().expect("addr").port(),
        admin.local_addr().expect("addr").port(),
    );
    let settings = Settings {
        store: local_scheduler::settings::Store::Memory,
        ..Settings::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            serve(
                Listeners { grpc, admin },
                &settings,
                Runtime::default(),
                shutdown,
            )
            .await
        }
    });

    let conn = Connection::connect(
        ConnectionOptions::new(&format!("http://127.0.0.1:{grpc_port}"), "default")
            .expect("options"),
    )
    .await
    .expect("connect");
    let client = Client::new(&conn);
    let worker = scenarios::start_worker(&conn);
    scenarios::core(&client).await;

    let ready = http_get(admin_port, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    worker.shutdown().await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns once its token is cancelled")
        .expect("task");
    assert!(stopped.is_ok(), "{stopped:?}");
}

/// One plain HTTP/1.1 GET on loopback, the response as text.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}
