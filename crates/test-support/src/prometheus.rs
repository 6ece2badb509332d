//! A real Prometheus server (Debian's package) scraping real processes, and PromQL queries
//! against it: what the metrics, dashboard and autoscaling tests evaluate their queries with.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

/// A tool from the `PATH` (or the variable `env`): `prometheus`, `promtool`.
pub fn tool(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("`{name}` is needed: `apt-get install prometheus` (.ci/run does), or set {env}")
        })
}

/// One scrape job: its name, the admin ports it scrapes on loopback, and labels every sample
/// gets (as a PodMonitor's relabelling would give them, `namespace` say).
pub struct Job<'a> {
    pub name: &'a str,
    pub ports: Vec<u16>,
    pub labels: Vec<(&'a str, &'a str)>,
}

/// A running Prometheus; stopped when dropped.
pub struct Prometheus {
    pub port: u16,
    _child: Child,
}

impl Prometheus {
    /// Starts Prometheus in `dir` scraping `jobs` every second (with the rule file `rules`),
    /// and waits until every target is up.
    pub async fn start(dir: &Path, jobs: &[Job<'_>], rules: Option<&Path>) -> Self {
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let mut cfg = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
        if let Some(rules) = rules {
            cfg.push_str(&format!("rule_files:\n  - {}\n", rules.display()));
        }
        cfg.push_str("scrape_configs:\n");
        let mut targets = 0;
        for job in jobs {
            let list: Vec<String> = job
                .ports
                .iter()
                .map(|p| format!("\"127.0.0.1:{p}\""))
                .collect();
            targets += list.len();
            cfg.push_str(&format!(
                "  - job_name: {}\n    static_configs:\n      - targets: [{}]\n",
                job.name,
                list.join(", ")
            ));
            if !job.labels.is_empty() {
                cfg.push_str("        labels:\n");
                for (k, v) in &job.labels {
                    cfg.push_str(&format!("          {k}: \"{v}\"\n"));
                }
            }
        }
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, cfg).expect("write config");
        let port = crate::net::free_port();
        let child = Command::new(tool("prometheus", "PROMETHEUS"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        crate::net::wait_port(port).await;
        let p = Self {
            port,
            _child: child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Answers null until the server is ready.
            let up = p.query("sum(up)").await["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            if up == Some(targets as f64) {
                return p;
            }
            if Instant::now() > deadline {
                let t = get_json(port, "/api/v1/targets").await;
                panic!("targets not all up:\n{t}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Evaluates `expr` now; the API's answer.
    pub async fn query(&self, expr: &str) -> Value {
        query(self.port, expr).await
    }

    /// The value of a query that returns one sample (a scalar, or a vector of one); `None` when
    /// it returns nothing. Panics on invalid PromQL.
    pub async fn scalar(&self, expr: &str) -> Option<f64> {
        let v = self.query(expr).await;
        assert_eq!(v["status"], "success", "invalid PromQL `{expr}`: {v}");
        let value = match v["data"]["resultType"].as_str() {
            Some("scalar") => v["data"]["result"][1].clone(),
            _ => v["data"]["result"][0]["value"][1].clone(),
        };
        value.as_str().and_then(|s| s.parse().ok())
    }
}

/// HTTP/1.0 GET (so the answer is never chunked), the body.
pub async fn get_text(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    text.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string())
}

/// HTTP/1.0 GET, the JSON body.
pub async fn get_json(port: u16, path: &str) -> Value {
    serde_json::from_str(&get_text(port, path).await).unwrap_or(Value::Null)
}

/// Percent-encodes a query parameter.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Evaluates `expr` now on the Prometheus at `port`; the API's answer.
pub async fn query(port: u16, expr: &str) -> Value {
    get_json(port, &format!("/api/v1/query?query={}", encode(expr))).await
}
