//! What this worker runs.
//!
//! - `process_request` → `simulate_long_running_activity`: the product's contract
//!   (`{"name", "delay_seconds"}` in, a greeting out).
//! - `async_http_api_orchestrator` → `process_long_running_operation`: the original Python
//!   sample's pair with its input and output shapes, so either half of the sample can be
//!   swapped for ours.
//! - the schedule entity and its operation orchestration: the gateway's recurring operations
//!   (and any SDK's schedules) run here.

use std::time::Duration;

use durabletask::{ActivityContext, FailureDetails, OrchestrationContext, Registry};

use contract::{PROCESS_ACTIVITY, PROCESS_ORCHESTRATION, SAMPLE_ACTIVITY, SAMPLE_ORCHESTRATION};
use contract::{ProcessRequest, ProcessResult, SampleInput, SampleResult};

pub fn registry(worker_name: String) -> Registry {
    let mut r = Registry::new();
    r.add_schedules();
    r.add_orchestrator(
        PROCESS_ORCHESTRATION,
        |ctx: OrchestrationContext, req: ProcessRequest| async move {
            // Written once per operation: replays do not repeat it.
            tracing::info!(name = %req.name, "starting the activity");
            ctx.set_custom_status(&serde_json::json!({"stage": "processing"}));
            let result: ProcessResult = ctx.call_activity(PROCESS_ACTIVITY, &req).await?;
            ctx.set_custom_status(&serde_json::json!({"stage": "done"}));
            Ok(result)
        },
    );
    let name = worker_name.clone();
    r.add_activity(
        PROCESS_ACTIVITY,
        move |ctx: ActivityContext, req: ProcessRequest| {
            let worker = name.clone();
            async move {
                tracing::info!(name = %req.name, delay_seconds = req.delay_seconds, "processing request");
                // A timer, not a blocked thread; it gives way at once when the worker must stop, and the
                // work item then goes back to the scheduler for another worker.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(req.delay_seconds)) => {}
                    _ = ctx.cancellation().cancelled() => {
                        return Err(FailureDetails::new("Cancelled", "the worker is shutting down"));
                    }
                }
                Ok(ProcessResult {
                    message: format!(
                        "Hello {}! Your request took {} seconds.",
                        req.name, req.delay_seconds
                    ),
                    name: req.name,
                    processing_time_seconds: req.delay_seconds,
                    worker,
                    completed_at: chrono::Utc::now(),
                })
            }
        },
    );
    r.add_orchestrator(
        SAMPLE_ORCHESTRATION,
        |ctx: OrchestrationContext, input: serde_json::Value| async move {
            let result: serde_json::Value = ctx.call_activity(SAMPLE_ACTIVITY, &input).await?;
            Ok(result)
        },
    );
    r.add_activity(SAMPLE_ACTIVITY, |ctx: ActivityContext, input: SampleInput| async move {
        let id = input.operation_id.unwrap_or_else(|| "unknown".into());
        let secs = input.processing_time.unwrap_or(contract::SAMPLE_DEFAULT_SECONDS);
        if secs < 0 {
            // Same outcome as the sample (its time.sleep raises), with a clearer message.
            return Err(FailureDetails::new("ValueError", "processing_time must be non-negative").non_retriable());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs as u64)) => {}
            _ = ctx.cancellation().cancelled() => return Err(FailureDetails::new("Cancelled", "the worker is shutting down")),
        }
        let processed_at = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        Ok(SampleResult {
            result: format!("Operation {id} completed successfully"),
            operation_id: id,
            status: "completed".into(),
            processed_at,
        })
    });
    r
}
