//! The workspace's binaries, run as real processes.

use std::path::PathBuf;

/// `target/<profile>/<name>`: a workspace binary next to the running test or bench (cargo builds
/// the binaries of every package with integration tests before `cargo test --workspace` runs
/// them; test-support's own `tests/` make it build `test-worker` and `service-proxy`).
pub fn binary(name: &str) -> PathBuf {
    let bin = binary_dir().join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (`cargo test --workspace` does; for benches, `make bench` builds release binaries)",
        bin.display()
    );
    bin
}

fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf()
}

/// Peak and current resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
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

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    ticks / 100.0
}

/// Raises this process's open-file limit to at least `files` (up to the hard limit) and returns
/// it. Tests that open thousands of connections call it; child processes inherit it.
pub fn allow_open_files(files: u64) -> u64 {
    rlimit::increase_nofile_limit(files).expect("raise the open-file limit")
}

/// The workspace binary `name` as a process: see [`spawn_path`].
pub async fn spawn(name: &str, env: &[(&str, String)], port: u16) -> tokio::process::Child {
    spawn_path(binary(name), env, port).await
}

/// `bin` as a process with `env` (warnings only in its log, stdout dropped), killed when the
/// handle is dropped; returns once `port` accepts connections.
pub async fn spawn_path(bin: PathBuf, env: &[(&str, String)], port: u16) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn");
    crate::net::wait_port(port).await;
    child
}

/// An in-memory local scheduler process with `extra` environment variables, and its endpoint.
pub async fn local_scheduler(extra: &[(&str, String)]) -> (tokio::process::Child, String) {
    let port = crate::net::free_port();
    let mut env = vec![
        ("LOCAL_SCHEDULER__LISTEN", format!("127.0.0.1:{port}")),
        (
            "LOCAL_SCHEDULER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", crate::net::free_port()),
        ),
        ("LOCAL_SCHEDULER__STORE", "memory".into()),
    ];
    env.extend(extra.iter().cloned());
    let child = spawn("local-scheduler", &env, port).await;
    (child, format!("http://127.0.0.1:{port}"))
}

/// A worker process on `endpoint`; returns once its admin port listens.
pub async fn worker(endpoint: &str) -> tokio::process::Child {
    let admin = crate::net::free_port();
    spawn(
        "worker",
        &[
            ("ENDPOINT", endpoint.to_string()),
            ("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        ],
        admin,
    )
    .await
}
