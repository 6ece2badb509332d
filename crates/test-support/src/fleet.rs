//! A fleet of worker processes on one scheduler, scaled and killed by signal as Kubernetes does
//! it, and what their activities recorded: the scale-in tests and the chaos benchmark share it.
//!
//! The record of which activity ran where is the activities' own log (the worker logs one
//! `processing request` line per execution, with the operation's id), not anything the
//! scheduler says: a duplicate is two such lines for one operation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// One worker process of the fleet.
pub struct FleetWorker {
    pub child: Child,
    pub admin: u16,
    pub log: PathBuf,
}

/// Worker processes named by the test, each logging (JSON) into its own file under `dir`.
pub struct Fleet {
    dir: PathBuf,
    endpoint: String,
    env: Vec<(String, String)>,
    workers: BTreeMap<String, FleetWorker>,
    /// Every log file written, including those of workers that have exited.
    logs: Vec<PathBuf>,
}

impl Fleet {
    /// Workers on `endpoint` (task hub `default`), with `env` on top of the defaults.
    pub fn new(dir: &Path, endpoint: &str, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).expect("fleet dir");
        Self {
            dir: dir.to_path_buf(),
            endpoint: endpoint.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            workers: BTreeMap::new(),
            logs: Vec::new(),
        }
    }

    /// Starts worker `name` (also its `HOSTNAME`, which results name) and returns once its admin
    /// port listens (or it has exited).
    pub async fn start(&mut self, name: &str) {
        self.start_with(name, &[]).await;
    }

    /// Like [`Fleet::start`] with more environment variables for this worker alone.
    pub async fn start_with(&mut self, name: &str, env: &[(&str, &str)]) {
        self.start_program(name, "worker", env).await;
    }

    /// Starts `program` (a workspace binary that reads the worker's variables: `worker`, or the
    /// example `test-worker` for code the product must not have) as worker `name`.
    pub async fn start_program(&mut self, name: &str, program: &str, env: &[(&str, &str)]) {
        let admin = crate::net::free_port();
        let log = self.dir.join(format!("{name}.{}.log", self.logs.len()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(crate::process::binary(program));
        cmd.env("ENDPOINT", &self.endpoint)
            .env("TASKHUB", "default")
            .env("HOSTNAME", name)
            .env("WORKER__ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("WORKER__LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn worker");
        // Until its admin port listens, or it has already died (a poison item can kill it at once).
        for _ in 0..600 {
            let listening = tokio::net::TcpStream::connect(("127.0.0.1", admin))
                .await
                .is_ok();
            if listening || child.try_wait().ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.logs.push(log.clone());
        self.workers
            .insert(name.to_string(), FleetWorker { child, admin, log });
    }

    pub fn worker(&self, name: &str) -> &FleetWorker {
        self.workers
            .get(name)
            .unwrap_or_else(|| panic!("no worker {name}"))
    }

    /// The names of the workers still in the fleet.
    pub fn names(&self) -> Vec<String> {
        self.workers.keys().cloned().collect()
    }

    /// Waits until worker `name` says it is ready (its work-item stream is connected).
    pub async fn wait_ready(&self, name: &str) {
        let admin = self.worker(name).admin;
        for _ in 0..600 {
            if crate::http::request(admin, "GET", "/readyz", &[], "")
                .await
                .0
                == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("worker {name} never became ready");
    }

    /// Sends `signal` (`TERM`, `KILL`) to worker `name`, as the kubelet does.
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self
            .worker(name)
            .child
            .id()
            .expect("the worker still runs")
            .to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} {name}");
    }

    /// Whether worker `name`'s process has exited (it stays in the fleet).
    pub fn has_exited(&mut self, name: &str) -> bool {
        self.workers
            .get_mut(name)
            .is_some_and(|w| w.child.try_wait().ok().flatten().is_some())
    }

    /// Removes worker `name`, which has exited, from the fleet.
    pub fn forget(&mut self, name: &str) {
        self.workers.remove(name);
    }

    /// Waits for worker `name` to exit (within `timeout`) and removes it from the fleet.
    pub async fn wait_exit(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        let mut w = self
            .workers
            .remove(name)
            .unwrap_or_else(|| panic!("no worker {name}"));
        tokio::time::timeout(timeout, w.child.wait())
            .await
            .unwrap_or_else(|_| panic!("worker {name} did not exit within {timeout:?}"))
            .expect("wait")
    }

    /// Worker `name`'s `/metrics` page.
    pub async fn metrics(&self, name: &str) -> String {
        let admin = self.worker(name).admin;
        crate::http::request(admin, "GET", "/metrics", &[], "")
            .await
            .2
    }

    /// Activities worker `name` runs now.
    pub async fn activities_in_flight(&self, name: &str) -> f64 {
        crate::exposition::value(
            &self.metrics(name).await,
            "worker_work_items_in_flight{kind=\"activity\"}",
        )
    }

    /// Every activity execution any worker of the fleet (past or present) logged: operation id
    /// to the workers that ran it, in log order per worker.
    pub fn activity_runs(&self) -> BTreeMap<String, Vec<String>> {
        let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for log in &self.logs {
            let worker = log
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('.').next())
                .unwrap_or("?")
                .to_string();
            for (id, _) in activity_log_lines(log) {
                runs.entry(id).or_default().push(worker.clone());
            }
        }
        runs
    }
}

/// (operation id, log line) for each `processing request` line of a worker's JSON log.
pub fn activity_log_lines(log: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            if v["fields"]["message"] != "processing request" {
                return None;
            }
            let id = v["span"]["operation_id"].as_str()?.to_string();
            Some((id, line.to_string()))
        })
        .collect()
}

/// Activities run more than once: operation id to its runs.
pub fn repeated(runs: &BTreeMap<String, Vec<String>>) -> BTreeMap<&str, &[String]> {
    runs.iter()
        .filter(|(_, w)| w.len() > 1)
        .map(|(id, w)| (id.as_str(), w.as_slice()))
        .collect()
}
