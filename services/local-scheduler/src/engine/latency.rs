//! Dispatch latency: the histograms `/metrics` exposes and the exemplars they carry.

use durabletask_proto as pb;
use pb::history_event::EventType;

/// Exemplar labels: the trace of the operation a work item belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TraceLabels {
    trace_id: String,
}

/// A latency histogram whose observations carry the operation's trace id as exemplar.
pub type LatencyHistogram =
    prometheus_client::metrics::exemplar::HistogramWithExemplars<TraceLabels>;

/// Time from a work item becoming runnable to its dispatch, by kind.
#[derive(Debug, Clone)]
pub struct DispatchLatency {
    pub orchestration: LatencyHistogram,
    pub activity: LatencyHistogram,
}

impl DispatchLatency {
    pub fn buckets() -> LatencyHistogram {
        // 50 µs to about 1.6 s.
        LatencyHistogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.00005, 2.0, 16,
        ))
    }
}

impl Default for DispatchLatency {
    fn default() -> Self {
        Self {
            orchestration: Self::buckets(),
            activity: Self::buckets(),
        }
    }
}

/// The `ExecutionStarted` event of a dispatched orchestration (in its history, or new).
pub fn execution_started(req: &pb::OrchestratorRequest) -> Option<&pb::ExecutionStartedEvent> {
    req.past_events
        .iter()
        .chain(&req.new_events)
        .find_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(s)) => Some(s),
            _ => None,
        })
}

/// The exemplar for a work item whose trace context is `tc`.
pub(super) fn exemplar(tc: Option<&pb::TraceContext>) -> Option<TraceLabels> {
    service_kit::telemetry::TraceParent::parse(&tc?.trace_parent).map(|tp| TraceLabels {
        trace_id: tp.trace_id.to_string(),
    })
}
