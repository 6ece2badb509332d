//! Start throughput and latency of the gateway at 64 keep-alive connections, next to the
//! original sample's FastAPI client (recreated in `sample_client.py`) against the same local
//! scheduler, in one run. One Rust worker runs the started operations (delay 0) throughout, and
//! the peak RSS of the gateway and the worker is read from /proc.
//!
//! `make bench` (or `cargo build --release -p local-scheduler -p worker && cargo bench -p gateway
//! --bench gateway_throughput`). Prints a table; no assertions.

#[path = "../../../crates/durabletask/tests/pyenv/mod.rs"]
mod pyenv;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const CONNECTIONS: usize = 64;
const WARM_UP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(10);

fn release_bin(name: &str) -> PathBuf {
    // target/release/deps/<bench> -> target/release/<name>
    let exe = std::env::current_exe().expect("exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: `cargo build --release -p local-scheduler -p worker` first (make bench does)",
        bin.display()
    );
    bin
}

async fn wait_port(port: u16) {
    for _ in 0..600 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listening on {port}");
}

async fn spawn(bin: PathBuf, env: &[(&str, String)], port: u16) -> Child {
    let mut cmd = Command::new(bin);
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn");
    wait_port(port).await;
    child
}

/// Peak and current resident set size of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Reads one HTTP/1.1 response (Content-Length bodies); returns the status code.
async fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).await?;
    Ok(status)
}

struct Outcome {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// `CONNECTIONS` keep-alive connections posting `body` to `path` as fast as answers come back.
async fn load(port: u16, path: &str, body: &str, want: u16) -> Outcome {
    let request = Arc::new(format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (request, measuring, stop) = (request.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut conn = BufReader::new(stream);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match conn.get_mut().write_all(request.as_bytes()).await {
                    Ok(()) => read_response(&mut conn).await.map(|s| s == want),
                    Err(e) => Err(e),
                };
                if measuring.load(Ordering::Relaxed) {
                    match ok {
                        Ok(true) => latencies.push(t.elapsed().as_secs_f64() * 1000.0),
                        Ok(false) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("join");
        all.extend(l);
        errors += e;
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Outcome {
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    }
}

fn free_port() -> u16 {
    pyenv::free_port()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sched_port = free_port();
        let _scheduler = spawn(
            release_bin("local-scheduler"),
            &[
                ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{sched_port}")),
                ("LOCAL_SCHEDULER__ADMIN_LISTEN", format!("127.0.0.1:{}", free_port())),
                ("LOCAL_SCHEDULER__STORE", "memory".into()),
            ],
            sched_port,
        )
        .await;
        let endpoint = format!("http://127.0.0.1:{sched_port}");
        let worker_admin = free_port();
        let worker = spawn(
            release_bin("worker"),
            &[
                ("ENDPOINT", endpoint.clone()),
                ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{worker_admin}")),
            ],
            worker_admin,
        )
        .await;
        let gw_port = free_port();
        let gateway = spawn(
            PathBuf::from(env!("CARGO_BIN_EXE_gateway")),
            &[
                ("ENDPOINT", endpoint.clone()),
                ("GATEWAY__LISTEN", format!("127.0.0.1:{gw_port}")),
            ],
            gw_port,
        )
        .await;

        let ours = load(gw_port, "/api/process", r#"{"name":"bench","delay_seconds":0}"#, 202).await;
        let ours_sample_route =
            load(gw_port, "/api/start-operation", r#"{"processing_time":0}"#, 202).await;
        let (gw_peak, gw_now) = rss_mib(gateway.id().expect("pid"));
        let (wk_peak, wk_now) = rss_mib(worker.id().expect("pid"));

        let py_port = free_port();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/sample_client.py");
        let _fastapi = {
            let child = Command::new(pyenv::python())
                .arg(&script)
                .arg(py_port.to_string())
                .env("ENDPOINT", &endpoint)
                .env("TASKHUB", "default")
                .stdout(Stdio::null())
                // The SDK logs every start at INFO, as in the sample; keep the table readable.
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start the FastAPI client");
            wait_port(py_port).await;
            child
        };
        let fastapi = load(py_port, "/api/start-operation", r#"{"processing_time":0}"#, 200).await;

        println!(
            "gateway start throughput: {CONNECTIONS} keep-alive connections, {}s measured after {}s warm-up, local scheduler in memory, one Rust worker running the operations, all on this machine",
            MEASURE.as_secs(),
            WARM_UP.as_secs()
        );
        println!("| server | route | starts/s | p50 ms | p99 ms | errors |");
        println!("|---|---|---|---|---|---|");
        for (name, route, o) in [
            ("our gateway", "POST /api/process", &ours),
            ("our gateway", "POST /api/start-operation", &ours_sample_route),
            ("sample FastAPI client (recreated)", "POST /api/start-operation", &fastapi),
        ] {
            println!(
                "| {name} | {route} | {:.0} | {:.2} | {:.2} | {} |",
                o.rate, o.p50_ms, o.p99_ms, o.errors
            );
        }
        println!(
            "| ratio ours / FastAPI, same route | | {:.1} | | | |",
            ours_sample_route.rate / fastapi.rate
        );
        println!();
        println!(
            "RSS after our runs: gateway peak {gw_peak:.1} MiB (now {gw_now:.1}), worker peak {wk_peak:.1} MiB (now {wk_now:.1})"
        );
    });
}
