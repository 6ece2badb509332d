//! The workspace's binaries, run as real processes.

use std::path::PathBuf;

/// `target/<profile>/<name>`: a workspace binary next to the running test or bench (cargo
/// builds every binary of the workspace before `cargo test --workspace` runs the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (`cargo test --workspace` does; for benches, `make bench` builds release binaries)",
        bin.display()
    );
    bin
}
