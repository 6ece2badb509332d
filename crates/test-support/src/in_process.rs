//! The local scheduler and the worker as libraries inside the test process, each on a thread and
//! runtime of its own: no binary to build first, no process to start, and a test that blocks
//! its own thread (a Python peer, a blocking read) cannot stall them. Configured with the same
//! `<PREFIX>__<KEY>` pairs as the processes, read by the services' own settings loader. Tests
//! that exist to test processes (signals, crashes, memory, the image) use [`crate::process`].

use std::future::Future;
use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// A service running in this process; it stops when dropped.
pub struct Running {
    /// The address it serves on (gRPC for the scheduler, the admin routes for the worker).
    pub addr: SocketAddr,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: SocketAddr,
    stop: CancellationToken,
}

impl Running {
    /// `http://127.0.0.1:<port>`, what a client connects to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it now (what dropping it does).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Not joined: a worker drains for up to its drain timeout, which no test waits for.
        self.stop.cancel();
    }
}

fn listener() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

fn addr(l: &std::net::TcpListener) -> SocketAddr {
    l.local_addr().expect("local address")
}

/// Runs `serve` on a thread with its own runtime until `stop` is cancelled; panics there end
/// only that thread (the test then fails on what it no longer gets).
fn on_own_thread<F, Fut>(name: &str, serve: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(serve());
        })
        .expect("spawn a thread");
}

fn vars(extra: &[(&str, String)]) -> Vec<(String, String)> {
    extra
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect()
}

/// A local scheduler, in memory unless `extra` says otherwise (`LOCAL_SCHEDULER__STORE`, …).
pub fn scheduler(extra: &[(&str, String)]) -> Running {
    let mut env = vec![("LOCAL_SCHEDULER__STORE".to_string(), "memory".to_string())];
    env.extend(vars(extra));
    let settings: local_scheduler::Settings =
        service_kit::settings::load_from(&local_scheduler::settings::SOURCE, None, env)
            .expect("scheduler settings");
    let (grpc, admin) = (listener(), listener());
    let running = Running {
        addr: addr(&grpc),
        admin: addr(&admin),
        stop: CancellationToken::new(),
    };
    let stop = running.stop.clone();
    on_own_thread("local-scheduler", move || async move {
        let listeners = local_scheduler::Listeners {
            grpc: tokio::net::TcpListener::from_std(grpc).expect("grpc listener"),
            admin: tokio::net::TcpListener::from_std(admin).expect("admin listener"),
        };
        let runtime = local_scheduler::Runtime::default();
        if let Err(e) = local_scheduler::serve(listeners, &settings, runtime, stop).await {
            panic!("the in-process scheduler stopped: {e}");
        }
    });
    running
}

/// A worker on `endpoint` (and `extra`: `WORKER__…`); its admin routes are at `addr`.
pub fn worker(endpoint: &str, extra: &[(&str, String)]) -> Running {
    let mut env = vec![
        ("ENDPOINT".to_string(), endpoint.to_string()),
        // A test that ends with work in flight need not wait for it.
        ("WORKER__DRAIN_TIMEOUT_SECONDS".to_string(), "1".to_string()),
    ];
    env.extend(vars(extra));
    let settings: worker::settings::Settings =
        service_kit::settings::load_from(&worker::settings::SOURCE, None, env)
            .expect("worker settings");
    let admin = listener();
    let running = Running {
        addr: addr(&admin),
        admin: addr(&admin),
        stop: CancellationToken::new(),
    };
    let stop = running.stop.clone();
    on_own_thread("worker", move || async move {
        let admin = tokio::net::TcpListener::from_std(admin).expect("admin listener");
        if let Err(e) = worker::serve(&settings, admin, stop).await {
            panic!("the in-process worker stopped: {e}");
        }
    });
    running
}
