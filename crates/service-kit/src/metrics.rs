//! Prometheus basics every service exposes: `build_info` and the process metrics (CPU, memory,
//! open file descriptors, start time), read from `/proc` on Linux at scrape time.

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// A registry with `<service>_build_info{version}` = 1 and the `process_*` metrics.
pub fn registry(service: &str) -> Registry {
    let mut registry = Registry::default();
    let build_info = Family::<Vec<(String, String)>, Gauge>::default();
    build_info
        .get_or_create(&vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )])
        .set(1);
    registry.register(
        format!("{service}_build_info"),
        "Build information; the value is always 1",
        build_info,
    );
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// The text exposition (OpenMetrics, which Prometheus scrapes natively).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
        let _ = writeln!(out, "# EOF");
    }
    out
}

/// The content type that goes with [`encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format's content type.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition for a scrape: OpenMetrics when the client asks for it (Prometheus does),
/// otherwise the classic text format (curl, `promtool check metrics`, older scrapers).
pub fn exposition(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let openmetrics = encode(registry);
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (CONTENT_TYPE, openmetrics)
    } else {
        (TEXT_CONTENT_TYPE, to_text_format(&openmetrics))
    }
}

/// OpenMetrics to the classic text format: counter families are named with their `_total`
/// suffix (as their samples are), and the `# EOF` / `# UNIT` lines go.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(h) = help.take() {
                let _ = writeln!(out, "# HELP {h}");
            }
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        if let Some(h) = help.take() {
            let _ = writeln!(out, "# HELP {h}");
        }
        // Exemplars (` # {trace_id="…"} value`) exist in OpenMetrics only.
        let sample = line.split_once(" # {").map_or(line, |(s, _)| s);
        let _ = writeln!(out, "{sample}");
    }
    out
}

#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(p) = read_proc() else {
            return Ok(());
        };
        let counter = ConstCounter::new(p.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent",
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size",
                p.rss_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size",
                p.vsize_bytes,
            ),
            ("process_open_fds", "Open file descriptors", p.open_fds),
            (
                "process_start_time_seconds",
                "Start time since the Unix epoch",
                p.start_time_seconds,
            ),
        ] {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

struct ProcStats {
    cpu_seconds: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    open_fds: f64,
    start_time_seconds: f64,
}

/// Linux `/proc/self`; `None` elsewhere.
fn read_proc() -> Option<ProcStats> {
    // The kernel's clock tick is 100 Hz on every Linux we ship to.
    const TICKS: f64 = 100.0;
    const PAGE: f64 = 4096.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Indices are the stat(5) field numbers minus 3.
    let (utime, stime, starttime, vsize, rss) = (num(11), num(12), num(19), num(20), num(21));
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as f64)
        .unwrap_or(0.0);
    Some(ProcStats {
        cpu_seconds: (utime + stime) / TICKS,
        rss_bytes: rss * PAGE,
        vsize_bytes: vsize,
        open_fds,
        start_time_seconds: boot + starttime / TICKS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_build_info_and_process_metrics() {
        // Use some CPU so that the counter has ticked.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let text = encode(&registry("demo"));
        assert!(
            text.contains(&format!(
                "demo_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("number");
            assert!(value > 0.0, "{line}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn text_format_names_counter_families_with_total() {
        let om = "# HELP demo_started Operations started.\n# TYPE demo_started counter\ndemo_started_total 3\n# HELP demo_up Up.\n# TYPE demo_up gauge\ndemo_up 1\n# EOF\n";
        let text = to_text_format(om);
        assert_eq!(
            text,
            "# HELP demo_started_total Operations started.\n# TYPE demo_started_total counter\ndemo_started_total 3\n# HELP demo_up Up.\n# TYPE demo_up gauge\ndemo_up 1\n"
        );
        let (ct, _) = exposition(
            &registry("demo"),
            Some("application/openmetrics-text;version=1.0.0"),
        );
        assert_eq!(ct, CONTENT_TYPE);
        let (ct, body) = exposition(&registry("demo"), None);
        assert_eq!(ct, TEXT_CONTENT_TYPE);
        assert!(
            body.contains("# TYPE process_cpu_seconds_total counter"),
            "{body}"
        );
        assert!(!body.contains("# EOF"));
    }
}
