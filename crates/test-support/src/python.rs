//! Locating and running the project's Python (official Durable Task SDK) helpers.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("DURABLETASK_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "the Python interop tests need the project virtualenv at {}: run `make venv` (or set DURABLETASK_PYTHON)",
        venv.display()
    );
    venv
}

/// A helper script in `crates/durabletask/tests/python`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/durabletask/tests/python")
        .join(name)
}

/// Starts a Python helper and waits for its READY line. Killed when dropped.
pub async fn spawn_python(args: &[String]) -> Child {
    spawn_python_until(args, "READY").await
}

/// Starts a Python program and waits until it prints the line `ready` (its stdin stays open:
/// a worker runs until it closes). Killed when dropped.
pub async fn spawn_python_until(args: &[String], ready: &str) -> Child {
    let mut child = Command::new(python())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == ready {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        ready.ok(),
        Some(true),
        "python helper {args:?} did not become ready"
    );
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}
