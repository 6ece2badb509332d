//! Azurite, the Azure Storage emulator (npm, `.ci/azurite`, installed by `make test`): a real
//! Blob service on loopback for the large-payload tests, one per test, in a directory of its own.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::net::{free_port, wait_port};

/// The emulator's documented development account (public, the same in every Azurite).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Blob service; stopped (and its files removed) when dropped.
pub struct Azurite {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AZURITE_BLOB") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.ci/azurite/node_modules/.bin/azurite-blob");
    assert!(
        p.exists(),
        "{} is missing: run `make azurite` (make test does), or set AZURITE_BLOB",
        p.display()
    );
    p
}

fn spawn(port: u16, dir: &std::path::Path) -> Child {
    Command::new(binary())
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .arg("--location")
        .arg(dir)
        .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start azurite-blob")
}

impl Azurite {
    /// Starts the Blob service on a free port and waits until it listens.
    pub async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("azurite-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("azurite dir");
        let child = spawn(port, &dir);
        wait_port(port).await;
        Self {
            port,
            dir,
            child: Some(child),
        }
    }

    /// Stops the service (an outage) as an operator would, with SIGTERM, so that it writes its
    /// blob index out; its blobs stay on disk.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(std::time::Duration::from_secs(15), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }

    /// Starts it again on the same port with the same blobs.
    pub async fn start_again(&mut self) {
        self.stop().await;
        self.child = Some(spawn(self.port, &self.dir));
        wait_port(self.port).await;
    }

    /// The connection string the SDKs take.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{}/{ACCOUNT};",
            self.port
        )
    }
}
