//! `worker versions [--free <version>]`: the unfinished operations (pending, running, suspended)
//! per orchestration version, read through the protocol's instance query, so it answers for Azure
//! DTS as for the local scheduler. During a rollout, the old code's Deployment can be removed once
//! its version has none: `--free <version>` exits 0 then, and 1 while any remains.

use std::collections::BTreeMap;

use durabletask::{Client, InstanceQuery, OrchestrationStatus};
use service_kit::RunError;

/// Unfinished instances by version (`None`: started without one), by status.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unfinished(pub BTreeMap<Option<String>, [usize; 3]>);

const STATUSES: [OrchestrationStatus; 3] = [
    OrchestrationStatus::Pending,
    OrchestrationStatus::Running,
    OrchestrationStatus::Suspended,
];

impl Unfinished {
    /// Reads every unfinished instance of the task hub, a thousand at a time.
    pub async fn read(client: &Client) -> Result<Self, durabletask::Error> {
        let mut out = Self::default();
        let mut token = None;
        loop {
            let page = client
                .query_instances(InstanceQuery {
                    runtime_status: STATUSES.to_vec(),
                    page_size: Some(1000),
                    continuation_token: token,
                    ..Default::default()
                })
                .await?;
            for m in page.instances {
                if let Some(i) = STATUSES.iter().position(|s| *s == m.runtime_status) {
                    out.0
                        .entry(m.version.filter(|v| !v.is_empty()))
                        .or_default()[i] += 1;
                }
            }
            token = page.continuation_token;
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Unfinished instances of `version` (`unversioned` for those without one).
    pub fn of(&self, version: &str) -> usize {
        let key = (version != crate::settings::UNVERSIONED).then(|| version.to_string());
        self.0.get(&key).map_or(0, |c| c.iter().sum())
    }

    /// A table: version, pending, running, suspended.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<24} {:>9} {:>9} {:>9}\n",
            "version", "pending", "running", "suspended"
        );
        if self.0.is_empty() {
            out.push_str("(no unfinished operations)\n");
        }
        for (version, [p, r, s]) in &self.0 {
            let v = version.as_deref().unwrap_or(crate::settings::UNVERSIONED);
            out.push_str(&format!("{v:<24} {p:>9} {r:>9} {s:>9}\n"));
        }
        out
    }
}

/// The subcommand: prints the table; with `--free <version>`, the exit code says whether that
/// version still pins unfinished operations.
pub async fn command(args: Vec<String>) -> Result<i32, RunError> {
    let mut free = None;
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--free" {
            free = Some(
                it.next()
                    .ok_or_else(|| RunError::Config("--free needs a version".into()))?,
            );
        } else {
            rest.push(a);
        }
    }
    let settings: crate::settings::Settings =
        match service_kit::settings::load_args(&crate::settings::SOURCE, rest)? {
            service_kit::settings::Startup::Run(s) => s,
            service_kit::settings::Startup::Print(text) => {
                println!("{text}");
                return Ok(0);
            }
        };
    let options = settings.scheduler.connection_options()?;
    let conn = durabletask::Connection::connect(options)
        .await
        .map_err(RunError::Connect)?;
    let unfinished = Unfinished::read(&Client::new(&conn))
        .await
        .map_err(|e| RunError::failed("reading the unfinished operations", e))?;
    print!("{}", unfinished.table());
    Ok(match free {
        None => 0,
        Some(v) => {
            let n = unfinished.of(&v);
            if n == 0 {
                println!("version {v} pins no unfinished operation: its workers can go");
                0
            } else {
                println!("version {v} still pins {n} unfinished operations: keep its workers");
                1
            }
        }
    })
}
