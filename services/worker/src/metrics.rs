//! The worker's Prometheus metrics, fed by the SDK's `WorkerObserver` hooks. Labels are the
//! work-item kind and the registered orchestration/activity name (a bounded set), never ids.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use durabletask::{WorkItemKind, WorkItemOutcome, WorkerObserver};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    kind: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: String,
    name: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    name: String,
    status: String,
}

/// Exemplar labels: the trace of the operation a work item belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabels {
    trace_id: String,
}

/// Histograms whose observations carry the operation's trace id as exemplar (OpenMetrics).
type Histograms<L> =
    Family<L, HistogramWithExemplars<TraceLabels>, fn() -> HistogramWithExemplars<TraceLabels>>;

fn execution_buckets() -> HistogramWithExemplars<TraceLabels> {
    // 0.1 ms to about 55 min: replays are sub-millisecond, activities may take an hour.
    HistogramWithExemplars::new(exponential_buckets(0.0001, 2.5, 18))
}

fn operation_buckets() -> HistogramWithExemplars<TraceLabels> {
    // 10 ms to about 3 h.
    HistogramWithExemplars::new(exponential_buckets(0.01, 2.5, 15))
}

fn exemplar(trace_id: Option<&str>) -> Option<TraceLabels> {
    trace_id.map(|t| TraceLabels {
        trace_id: t.to_string(),
    })
}

#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    received: Family<ItemLabels, Counter>,
    finished: Family<OutcomeLabels, Counter>,
    duration: Histograms<ItemLabels>,
    in_flight: Family<KindLabels, Gauge>,
    limit: Family<KindLabels, Gauge>,
    draining: Gauge,
    connected: Gauge,
    connects: Counter,
    reconnects: Counter,
    ever_connected: AtomicBool,
    operation_duration: Histograms<EndLabels>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut registry = service_kit::metrics::registry("worker");
        let m = Self {
            registry: Registry::default(),
            received: Family::default(),
            finished: Family::default(),
            duration: Family::new_with_constructor(execution_buckets),
            in_flight: Family::default(),
            limit: Family::default(),
            draining: Gauge::default(),
            connected: Gauge::default(),
            connects: Counter::default(),
            reconnects: Counter::default(),
            ever_connected: AtomicBool::new(false),
            operation_duration: Family::new_with_constructor(operation_buckets),
        };
        registry.register(
            "worker_work_items_received",
            "Work items received, by kind and orchestration/activity name",
            m.received.clone(),
        );
        registry.register(
            "worker_work_items_finished",
            "Work items ended on this worker, by kind, name and outcome (completed, failed, abandoned)",
            m.finished.clone(),
        );
        registry.register(
            "worker_work_item_duration_seconds",
            "Execution time of work items (orchestration episodes and activities), by kind and name",
            m.duration.clone(),
        );
        registry.register(
            "worker_work_items_in_flight",
            "Work items running now, by kind",
            m.in_flight.clone(),
        );
        registry.register(
            "worker_work_items_limit",
            "Work items this worker runs at once at most, by kind (0 for a kind it does not run): with worker_work_items_in_flight, its saturation",
            m.limit.clone(),
        );
        registry.register(
            "worker_draining",
            "1 once shutdown began: the worker takes no new work and finishes what it holds",
            m.draining.clone(),
        );
        registry.register(
            "worker_stream_connected",
            "1 while the work-item stream to the scheduler is connected",
            m.connected.clone(),
        );
        registry.register(
            "worker_stream_connects",
            "Work-item streams opened",
            m.connects.clone(),
        );
        registry.register(
            "worker_stream_reconnects",
            "Work-item streams opened again after the first",
            m.reconnects.clone(),
        );
        registry.register(
            "worker_operation_duration_seconds",
            "Time from an orchestration's start to its end, by name and final status",
            m.operation_duration.clone(),
        );
        Self { registry, ..m }
    }
}

impl WorkerMetrics {
    /// Creates every series of the registered names at zero, so that the first failure (or
    /// completion) is an increase Prometheus can see, not a series appearing at 1.
    /// With the completion callbacks' counters in the same exposition.
    pub fn with_callbacks(mut self, callbacks: &crate::callbacks::CallbackMetrics) -> Self {
        callbacks.register(&mut self.registry);
        self
    }

    pub fn with_names<'a>(
        self,
        orchestrations: impl IntoIterator<Item = &'a str>,
        activities: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let outcomes = [
            WorkItemOutcome::Completed,
            WorkItemOutcome::Failed,
            WorkItemOutcome::Abandoned,
        ];
        let touch = |kind: WorkItemKind, name: &str| {
            let _ = self.received.get_or_create(&item(kind, name));
            let _ = self.duration.get_or_create(&item(kind, name));
            for o in outcomes {
                let _ = self.finished.get_or_create(&OutcomeLabels {
                    kind: kind.as_str().to_string(),
                    name: name.to_string(),
                    outcome: o.as_str().to_string(),
                });
            }
        };
        for name in orchestrations {
            touch(WorkItemKind::Orchestration, name);
            for status in ["completed", "failed"] {
                let _ = self.operation_duration.get_or_create(&EndLabels {
                    name: name.to_string(),
                    status: status.to_string(),
                });
            }
        }
        for name in activities {
            touch(WorkItemKind::Activity, name);
        }
        for kind in [WorkItemKind::Orchestration, WorkItemKind::Activity] {
            let _ = self.in_flight.get_or_create(&KindLabels {
                kind: kind.as_str().to_string(),
            });
        }
        self
    }

    /// The most work items of each kind this worker runs at once (0: a kind it does not run).
    pub fn with_limits(self, orchestrations: usize, activities: usize) -> Self {
        for (kind, n) in [
            (WorkItemKind::Orchestration, orchestrations),
            (WorkItemKind::Activity, activities),
        ] {
            self.limit
                .get_or_create(&KindLabels {
                    kind: kind.as_str().to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self
    }

    /// The scrape body and its content type, negotiated on `Accept`.
    pub fn exposition(&self, accept: Option<&str>) -> (&'static str, String) {
        service_kit::metrics::exposition(&self.registry, accept)
    }
}

fn item(kind: WorkItemKind, name: &str) -> ItemLabels {
    ItemLabels {
        kind: kind.as_str().to_string(),
        name: name.to_string(),
    }
}

impl WorkerObserver for WorkerMetrics {
    fn work_item_started(&self, kind: WorkItemKind, name: &str) {
        self.received.get_or_create(&item(kind, name)).inc();
        self.in_flight
            .get_or_create(&KindLabels {
                kind: kind.as_str().to_string(),
            })
            .inc();
    }

    fn work_item_finished(
        &self,
        kind: WorkItemKind,
        name: &str,
        outcome: WorkItemOutcome,
        took: Duration,
        trace_id: Option<&str>,
    ) {
        self.in_flight
            .get_or_create(&KindLabels {
                kind: kind.as_str().to_string(),
            })
            .dec();
        self.finished
            .get_or_create(&OutcomeLabels {
                kind: kind.as_str().to_string(),
                name: name.to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
        self.duration.get_or_create(&item(kind, name)).observe(
            took.as_secs_f64(),
            exemplar(trace_id),
            None,
        );
    }

    fn draining(&self) {
        self.draining.set(1);
    }

    fn stream_state(&self, connected: bool) {
        self.connected.set(i64::from(connected));
        if connected {
            self.connects.inc();
            if self.ever_connected.swap(true, Ordering::Relaxed) {
                self.reconnects.inc();
            }
        }
    }

    fn orchestration_ended(
        &self,
        name: &str,
        failed: bool,
        age: Option<Duration>,
        trace_id: Option<&str>,
    ) {
        if let Some(age) = age {
            self.operation_duration
                .get_or_create(&EndLabels {
                    name: name.to_string(),
                    status: if failed { "failed" } else { "completed" }.to_string(),
                })
                .observe(age.as_secs_f64(), exemplar(trace_id), None);
        }
    }
}
