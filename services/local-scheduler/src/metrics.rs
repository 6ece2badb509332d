//! The local scheduler's `/metrics`: what DTS itself does not expose, above all the backlog of
//! work items (what an autoscaler needs), plus instances by status, dispatch latency, and the
//! build and process basics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::engine::{DispatchLatency, LatencyHistogram};
use crate::server::Shared;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// The registry, and the histograms the engine observes into.
pub fn registry(
    shared: Arc<Shared>,
    connections: Arc<crate::incoming::ConnectionCounts>,
) -> (Registry, DispatchLatency) {
    let mut registry = service_kit::metrics::registry("local_scheduler");
    let family =
        Family::<KindLabels, LatencyHistogram, fn() -> LatencyHistogram>::new_with_constructor(
            DispatchLatency::buckets,
        );
    let handle = |kind: &str| {
        family
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .clone()
    };
    let latency = DispatchLatency {
        orchestration: handle("orchestration"),
        activity: handle("activity"),
    };
    registry.register(
        "dts_local_dispatch_latency_seconds",
        "Time from a work item becoming runnable to its dispatch to a worker, by kind",
        family,
    );
    registry.register_collector(Box::new(StateCollector {
        shared,
        connections,
    }));
    (registry, latency)
}

struct StateCollector {
    shared: Arc<Shared>,
    connections: Arc<crate::incoming::ConnectionCounts>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(&str, &str, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (key, value, v) in series {
        if key.is_empty() {
            ConstGauge::new(*v).encode(family.encode_family(&Vec::<(&str, &str)>::new())?)?;
        } else {
            ConstGauge::new(*v).encode(family.encode_family(&vec![(*key, *value)])?)?;
        }
    }
    Ok(())
}

fn gauge_f64(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(&str, &str, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (key, value, v) in series {
        ConstGauge::new(*v).encode(family.encode_family(&vec![(*key, *value)])?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(&str, &str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (key, value, v) in series {
        if key.is_empty() {
            ConstCounter::new(*v).encode(family.encode_family(&Vec::<(&str, &str)>::new())?)?;
        } else {
            ConstCounter::new(*v).encode(family.encode_family(&vec![(*key, *value)])?)?;
        }
    }
    Ok(())
}

const STATUSES: [&str; 8] = [
    "PENDING",
    "RUNNING",
    "SUSPENDED",
    "COMPLETED",
    "FAILED",
    "TERMINATED",
    "CANCELED",
    "CONTINUED_AS_NEW",
];

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        if let Some((q, statuses, state)) = self
            .shared
            .engine_snapshot(|e| (e.queue_stats(), e.status_counts(), e.state_bytes()))
        {
            gauge(
                &mut encoder,
                "dts_local_state_bytes",
                "Instance state held in memory, estimated (payloads, tags, histories, queued work); new starts are refused past max_state_bytes",
                &[("", "", as_i64(state))],
            )?;
            let (o, a) = (q.orchestrations, q.activities);
            gauge(
                &mut encoder,
                "dts_local_backlog_work_items",
                "Work items waiting to be dispatched, by kind",
                &[
                    ("kind", "orchestration", as_i64(o.pending)),
                    ("kind", "activity", as_i64(a.pending)),
                ],
            )?;
            gauge(
                &mut encoder,
                "dts_local_active_work_items",
                "Work items dispatched to workers and not yet completed or handed back, by kind",
                &[
                    ("kind", "orchestration", as_i64(o.active)),
                    ("kind", "activity", as_i64(a.active)),
                ],
            )?;
            gauge_f64(
                &mut encoder,
                "dts_local_oldest_work_item_age_seconds",
                "How long the oldest waiting work item has waited, by kind (0 when none waits)",
                &[
                    ("kind", "orchestration", o.oldest_wait.as_secs_f64()),
                    ("kind", "activity", a.oldest_wait.as_secs_f64()),
                ],
            )?;
            gauge(
                &mut encoder,
                "dts_local_pending_timers",
                "Durable timers and scheduled starts not yet due",
                &[("", "", as_i64(q.timers))],
            )?;
            let series: Vec<(&str, &str, i64)> = STATUSES
                .iter()
                .map(|s| ("status", *s, as_i64(statuses.get(s).copied().unwrap_or(0))))
                .collect();
            gauge(
                &mut encoder,
                "dts_local_instances",
                "Orchestration instances by runtime status",
                &series,
            )?;
        }
        let c = &self.shared.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut encoder,
            "dts_local_work_items_dispatched",
            "Work items sent to workers, by kind",
            &[
                ("kind", "orchestration", load(&c.orchestrations_dispatched)),
                ("kind", "activity", load(&c.activities_dispatched)),
                ("kind", "entity", load(&c.entities_dispatched)),
            ],
        )?;
        counter(
            &mut encoder,
            "dts_local_work_items_completed",
            "Work items completed by workers, by kind",
            &[
                ("kind", "orchestration", load(&c.orchestrations_completed)),
                ("kind", "activity", load(&c.activities_completed)),
                ("kind", "entity", load(&c.entities_completed)),
            ],
        )?;
        counter(
            &mut encoder,
            "dts_local_poison_work_items",
            "Work items failed as poison, by kind: their worker was lost (crashed, killed, disconnected) max_dispatches times while running them",
            &[
                ("kind", "orchestration", load(&c.poisoned_orchestrations)),
                ("kind", "activity", load(&c.poisoned_activities)),
            ],
        )?;
        for (name, help, v) in [
            (
                "dts_local_work_items_abandoned",
                "Work items handed back by workers",
                load(&c.abandoned),
            ),
            (
                "dts_local_work_items_redelivered",
                "Work items queued again after their worker's stream ended",
                load(&c.redelivered),
            ),
            (
                "dts_local_long_poll_wakeups",
                "Times a waiting WaitForInstance* call was woken to look at its instance again",
                load(&c.long_poll_wakeups),
            ),
            (
                "dts_local_store_errors",
                "State changes the store failed to persist",
                load(&c.store_errors),
            ),
        ] {
            counter(&mut encoder, name, help, &[("", "", v)])?;
        }
        if let Some(store) = self.shared.store_stats() {
            for (name, help, v) in [
                (
                    "dts_local_store_transactions",
                    "SQLite transactions written (group commit: many operations' changes each)",
                    load(&store.transactions),
                ),
                (
                    "dts_local_store_operations",
                    "Engine operations whose changes were written (divided by the transactions: the batch size)",
                    load(&store.operations),
                ),
                (
                    "dts_local_store_wal_frames",
                    "Pages (4 KiB) written to the WAL",
                    load(&store.wal_frames),
                ),
                (
                    "dts_local_store_checkpoints",
                    "WAL checkpoints completed",
                    load(&store.checkpoints),
                ),
            ] {
                counter(&mut encoder, name, help, &[("", "", v)])?;
            }
            for (name, help, nanos) in [
                (
                    "dts_local_store_write_seconds",
                    "Time spent writing transactions (callers wait for it)",
                    &store.write_nanos,
                ),
                (
                    "dts_local_store_writer_checkpoint_seconds",
                    "Time the writer spent copying the WAL itself (changes queued meanwhile wait for it)",
                    &store.writer_checkpoint_nanos,
                ),
            ] {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(load(nanos) as f64 / 1e9)
                    .encode(family.encode_family(&Vec::<(&str, &str)>::new())?)?;
            }
        }
        let conns = &self.connections;
        gauge(
            &mut encoder,
            "dts_local_grpc_connections",
            "gRPC connections open (max_connections caps them)",
            &[("", "", i64::try_from(load(&conns.open)).unwrap_or(i64::MAX))],
        )?;
        counter(
            &mut encoder,
            "dts_local_grpc_connections_refused",
            "gRPC connections closed at once: past max_connections, or no HTTP/2 preface within handshake_timeout_seconds",
            &[
                ("reason", "max_connections", load(&conns.refused)),
                (
                    "reason",
                    "handshake_timeout",
                    load(&conns.handshake_timeouts),
                ),
            ],
        )?;
        let (open, draining) = self.shared.stream_counts();
        gauge(
            &mut encoder,
            "dts_local_worker_streams",
            "Open work-item streams",
            &[("", "", as_i64(open))],
        )?;
        gauge(
            &mut encoder,
            "dts_local_draining_worker_streams",
            "Open work-item streams whose worker began a drain (BeginWorkerDrain): nothing more is dispatched on them",
            &[("", "", as_i64(draining))],
        )?;
        Ok(())
    }
}
