//! A stand-in for kube-proxy in the image's end-to-end test (`.ci/image/e2e.py`): one per
//! Kubernetes Service, reachable under the Service's name, forwarding each Service port to the
//! target port of the Service's pods (named, round-robin, the next one tried when one refuses).
//!
//! `service-proxy PORT=HOST:PORT[,HOST:PORT...] ...`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn main() -> std::process::ExitCode {
    let mut routes = Vec::new();
    for arg in std::env::args().skip(1) {
        let Some((port, targets)) = arg.split_once('=') else {
            eprintln!("service-proxy: '{arg}' is not PORT=HOST:PORT[,HOST:PORT...]");
            return std::process::ExitCode::from(2);
        };
        let Ok(port) = port.parse::<u16>() else {
            eprintln!("service-proxy: '{port}' is not a port");
            return std::process::ExitCode::from(2);
        };
        let targets: Vec<String> = targets.split(',').map(str::to_string).collect();
        routes.push((port, Arc::new(targets)));
    }
    if routes.is_empty() {
        eprintln!("usage: service-proxy PORT=HOST:PORT[,HOST:PORT...] ...");
        return std::process::ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for (port, targets) in routes {
            let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("service-proxy: cannot listen on {port}: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            eprintln!("service-proxy: {port} -> {}", targets.join(","));
            tasks.push(tokio::spawn(serve(listener, targets)));
        }
        for t in tasks {
            let _ = t.await;
        }
        std::process::ExitCode::SUCCESS
    })
}

async fn serve(listener: tokio::net::TcpListener, targets: Arc<Vec<String>>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let (targets, next) = (targets.clone(), next.clone());
        tokio::spawn(async move {
            let first = next.fetch_add(1, Ordering::Relaxed);
            for i in 0..targets.len() {
                let target = &targets[(first + i) % targets.len()];
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target.as_str()).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
            }
        });
    }
}
