//! Real headless Chromium (Debian's package), for the web pages: the DOM a page renders to.

use std::path::PathBuf;
use std::time::Duration;

/// The Chromium binary: `CHROMIUM`, or the first of the usual names on `PATH`.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(dir) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|d| d.join(name).exists())
        {
            return dir.join(name);
        }
    }
    panic!(
        "this test needs headless Chromium: `make deps` installs it (make test runs it), or set CHROMIUM"
    );
}

/// The DOM of `url` once its scripts have run, with every host but loopback unreachable (so a
/// page that needs the internet shows it).
pub async fn dump_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "chromium-{}-{}",
        std::process::id(),
        crate::net::free_port()
    ));
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--virtual-time-budget=20000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished in time")
    .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
