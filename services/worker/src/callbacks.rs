//! Completion callbacks, delivered durably by an orchestration of their own.
//!
//! The gateway starts `deliver_completion_callback` beside an operation that asked for a
//! callback. It reads the operation's status (after 1 s, 2 s, 4 s … up to
//! `callback_poll_max_ms`) until it has ended, however it ended (succeeded, failed, canceled
//! from the gateway or terminated anywhere), then delivers one CloudEvent: an activity per
//! attempt, with back-off and jitter between attempts, within `callback_max_attempts` and
//! `callback_max_total_seconds`. A worker that dies mid-attempt leaves the activity to another
//! worker: at least once, with the same `webhook-id` every time. Where the delivery stands is the
//! orchestration's custom status, which the gateway shows in the operation's status document.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use contract::status::StatusDocument;
use contract::{
    AttemptResult, CALLBACK_DELIVER_ACTIVITY, CALLBACK_ORCHESTRATION, CALLBACK_READ_ACTIVITY,
    CallbackJob, CallbackState, DeliveryAttempt, OperationOutcome,
};
use durabletask::{
    ActivityContext, Client, FailureDetails, OrchestrationContext, OrchestrationStatus, Registry,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Value, json};
use service_kit::callbacks::{Policy, Signer};

use crate::settings::Settings;

/// Status reads while waiting before the orchestration continues as new (short history).
const CHECKS_PER_EXECUTION: u32 = 50;
/// Of an answer's body, at most this much is read (and dropped).
const MAX_ANSWER_BYTES: usize = 4096;

/// What deliveries are told by the settings.
pub struct CallbackConfig {
    policy: Policy,
    signer: Option<Signer>,
    /// Per-caller secrets, re-read from `callback_secrets_file`.
    per_caller: Option<(String, RwLock<HashMap<String, Signer>>)>,
    max_attempts: u32,
    first_retry: Duration,
    max_retry: Duration,
    max_total: Duration,
    attempt_timeout: Duration,
    poll_max: Duration,
}

impl CallbackConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, String> {
        let per_caller = match &s.callbacks.secrets_file {
            Some(path) => Some((path.clone(), RwLock::new(read_secrets(path)?))),
            None => None,
        };
        Ok(Self {
            policy: s.callback_targets.policy()?,
            signer: s
                .callbacks
                .secret
                .as_deref()
                .map(|secret| Signer::new(secret, "callback_secret"))
                .transpose()?,
            per_caller,
            max_attempts: s.callbacks.max_attempts,
            first_retry: Duration::from_millis(s.callbacks.first_retry_ms),
            max_retry: Duration::from_millis(s.callbacks.max_retry_ms),
            max_total: Duration::from_secs(s.callbacks.max_total_seconds),
            attempt_timeout: Duration::from_millis(s.callbacks.attempt_timeout_ms),
            poll_max: Duration::from_millis(s.callbacks.poll_max_ms),
        })
    }

    /// The caller's own secret when it has one, else the shared one.
    fn signer(&self, owner: Option<&str>) -> Option<Signer> {
        if let (Some(owner), Some((path, secrets))) = (owner, &self.per_caller) {
            // Re-read on each delivery: a rotated secret applies without a restart.
            if let Ok(fresh) = read_secrets(path) {
                *secrets.write().expect("secrets") = fresh;
            }
            if let Some(s) = secrets.read().expect("secrets").get(owner) {
                return Some(s.clone());
            }
        }
        self.signer.clone()
    }

    /// The wait before attempt `next` (2, 3, …): doubling from `first_retry` up to `max_retry`,
    /// then between half of it and all of it (`jitter` in 0..1, deterministic in the
    /// orchestration).
    fn backoff(&self, next: u32, jitter: f64) -> Duration {
        let doubled = self
            .first_retry
            .saturating_mul(1u32 << (next.saturating_sub(2)).min(20));
        doubled.min(self.max_retry).mul_f64(0.5 + jitter / 2.0)
    }
}

fn read_secrets(path: &str) -> Result<HashMap<String, Signer>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("`callback_secrets_file`: cannot read {path}: {e}"))?;
    let raw: HashMap<String, String> = serde_json::from_str(&text).map_err(|e| {
        format!("`callback_secrets_file`: {path} is not a JSON object of owner to secret: {e}")
    })?;
    raw.into_iter()
        .map(|(owner, secret)| {
            Signer::new(&secret, &format!("callback_secrets_file[{owner}]")).map(|s| (owner, s))
        })
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// `worker_callback_attempts_total{result}` and `worker_callback_deliveries_total{result}`.
#[derive(Clone, Default)]
pub struct CallbackMetrics {
    attempts: Family<ResultLabels, Counter>,
    deliveries: Family<ResultLabels, Counter>,
}

impl CallbackMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "worker_callback_attempts",
            "Callback delivery attempts, by result: delivered (2xx), retry (another answer, a timeout or a network error), stop (410, a redirect, a refused address)",
            self.attempts.clone(),
        );
        registry.register(
            "worker_callback_deliveries",
            "Callbacks ended, by result: delivered, failed (attempts or time exhausted, or stopped by the receiver or the policy)",
            self.deliveries.clone(),
        );
    }

    fn attempt(&self, result: &str) {
        self.attempts
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    fn delivery(&self, result: &str) {
        self.deliveries
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}

/// Registers the callback orchestration and its two activities.
pub fn register(
    r: &mut Registry,
    config: Arc<CallbackConfig>,
    client: Client,
    metrics: CallbackMetrics,
) {
    let orchestration_config = config.clone();
    let orchestration_metrics = metrics.clone();
    r.add_orchestrator(
        CALLBACK_ORCHESTRATION,
        move |ctx: OrchestrationContext, job: CallbackJob| {
            let config = orchestration_config.clone();
            let metrics = orchestration_metrics.clone();
            async move { deliver(ctx, job, &config, &metrics).await }
        },
    );
    r.add_activity(
        CALLBACK_READ_ACTIVITY,
        move |_ctx: ActivityContext, operation_id: String| {
            let client = client.clone();
            async move { read_outcome(&client, &operation_id).await }
        },
    );
    r.add_activity(
        CALLBACK_DELIVER_ACTIVITY,
        move |_ctx: ActivityContext, attempt: DeliveryAttempt| {
            let config = config.clone();
            let metrics = metrics.clone();
            async move {
                let result = attempt_delivery(&config, &attempt).await;
                metrics.attempt(&result.outcome);
                tracing::info!(
                    attempt = attempt.attempt,
                    outcome = %result.outcome,
                    status = ?result.status,
                    error = ?result.error,
                    "callback delivery attempt"
                );
                Ok(result)
            }
        },
    );
}

async fn deliver(
    ctx: OrchestrationContext,
    mut job: CallbackJob,
    config: &CallbackConfig,
    metrics: &CallbackMetrics,
) -> Result<CallbackState, FailureDetails> {
    let mut state = CallbackState {
        state: "waiting".into(),
        attempts: 0,
        webhook_id: job.webhook_id.clone(),
        last_status: None,
        last_error: None,
    };
    ctx.set_custom_status(&state);
    // Until the operation has ended.
    let event = loop {
        let outcome: OperationOutcome = ctx
            .call_activity(CALLBACK_READ_ACTIVITY, &job.operation_id)
            .await?;
        match outcome {
            OperationOutcome::Ended { event, .. } => break finish_event(&event, &job),
            OperationOutcome::Missing => {
                state.state = "failed".into();
                state.last_error = Some("the operation no longer exists".into());
                ctx.set_custom_status(&state);
                return Ok(state);
            }
            OperationOutcome::Running => {}
        }
        job.checks += 1;
        if job.checks.is_multiple_of(CHECKS_PER_EXECUTION) {
            ctx.continue_as_new(&job, false);
            return Ok(state);
        }
        let wait = Duration::from_secs(1u64 << (job.checks - 1).min(16)).min(config.poll_max);
        ctx.create_timer_after(wait).await;
    };
    let began = ctx.current_utc_datetime();
    for n in 1..=config.max_attempts {
        state.state = "delivering".into();
        state.attempts = n;
        ctx.set_custom_status(&state);
        let result: AttemptResult = ctx
            .call_activity(
                CALLBACK_DELIVER_ACTIVITY,
                &DeliveryAttempt {
                    url: job.url.clone(),
                    webhook_id: job.webhook_id.clone(),
                    event: event.clone(),
                    attempt: n,
                    owner: job.owner.clone(),
                },
            )
            .await?;
        state.last_status = result.status;
        state.last_error = result.error.clone();
        match result.outcome.as_str() {
            "delivered" => {
                state.state = "delivered".into();
                break;
            }
            "stop" => {
                state.state = "failed".into();
                break;
            }
            _ => {}
        }
        // Jitter that replays the same: from the orchestration's deterministic GUID.
        let jitter = f64::from(ctx.new_guid().as_u128() as u16) / f64::from(u16::MAX);
        let wait = config.backoff(n + 1, jitter);
        let elapsed = (ctx.current_utc_datetime() - began)
            .to_std()
            .unwrap_or_default();
        if n == config.max_attempts || elapsed + wait > config.max_total {
            state.state = "failed".into();
            let bound = if n == config.max_attempts {
                format!("{n} attempts")
            } else {
                format!("{} s", config.max_total.as_secs())
            };
            let last = state.last_error.take().or_else(|| {
                state
                    .last_status
                    .map(|s| format!("the receiver answered {s}"))
            });
            state.last_error = Some(format!(
                "gave up after {bound}{}",
                last.map(|l| format!(": {l}")).unwrap_or_default()
            ));
            break;
        }
        ctx.create_timer_after(wait).await;
    }
    ctx.set_custom_status(&state);
    if !durabletask::otel::replaying_now() {
        metrics.delivery(if state.state == "delivered" {
            "delivered"
        } else {
            "failed"
        });
    }
    Ok(state)
}

async fn read_outcome(
    client: &Client,
    operation_id: &str,
) -> Result<OperationOutcome, FailureDetails> {
    let m = client
        .get_instance(operation_id, true)
        .await
        .map_err(|e| FailureDetails::new("SchedulerError", e.to_string()))?;
    let Some(m) = m else {
        return Ok(OperationOutcome::Missing);
    };
    if !m.runtime_status.is_terminal() {
        return Ok(OperationOutcome::Running);
    }
    // The status document the gateway's status route answers, plus the result.
    let doc = StatusDocument::of(operation_id, &m);
    let state = doc.status;
    let time = doc
        .completed_at
        .clone()
        .or_else(|| contract::status::rfc3339(Some(chrono::Utc::now())));
    let mut document = serde_json::to_value(&doc)
        .map_err(|e| FailureDetails::new("SerializationError", e.to_string()))?;
    if m.runtime_status == OrchestrationStatus::Completed {
        document["result"] = m
            .serialized_output
            .as_deref()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .unwrap_or(Value::Null);
    }
    let event_type = state.event_type();
    // `links` and `id` are filled in by the orchestration's job: the same event on each attempt.
    let event = json!({
        "specversion": "1.0",
        "type": event_type,
        "source": "/api/operations",
        "subject": operation_id,
        "time": time,
        "datacontenttype": "application/json",
        "data": document,
    });
    Ok(OperationOutcome::Ended {
        event_type,
        event: event.to_string(),
    })
}

fn result(outcome: &str, status: Option<u16>, error: Option<String>) -> AttemptResult {
    AttemptResult {
        outcome: outcome.into(),
        status,
        error,
    }
}

/// One POST of the event, signed; never follows a redirect, never reads more than a little of
/// the answer, and connects only to the addresses it checked.
async fn attempt_delivery(config: &CallbackConfig, a: &DeliveryAttempt) -> AttemptResult {
    let Some(signer) = config.signer(a.owner.as_deref()) else {
        return result(
            "stop",
            None,
            Some("no signing secret is configured (callback_secret)".into()),
        );
    };
    let url = match config.policy.check_url(&a.url) {
        Ok(u) => u,
        Err(r) => return result("stop", None, Some(r.0)),
    };
    let addrs = match config.policy.resolve(&url).await {
        Ok(addrs) => addrs,
        Err(r) if r.0.contains("not public") => return result("stop", None, Some(r.0)),
        Err(r) => return result("retry", None, Some(r.0)),
    };
    let host = url.host_str().unwrap_or_default().to_string();
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(config.attempt_timeout)
        .resolve_to_addrs(&host, &addrs)
        .user_agent(concat!(
            "async-http-api-callbacks/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
    {
        Ok(c) => c,
        Err(e) => return result("retry", None, Some(format!("client: {e}"))),
    };
    let id = &a.webhook_id;
    let body = a.event.clone();
    let timestamp = chrono::Utc::now().timestamp();
    let signature = signer.sign(id, timestamp, body.as_bytes());
    let sent = client
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return result(
                "retry",
                None,
                Some(format!(
                    "no answer within {} ms",
                    config.attempt_timeout.as_millis()
                )),
            );
        }
        Err(e) => return result("retry", None, Some(format!("not delivered: {e}"))),
    };
    let status = response.status();
    // A little of the answer, then drop the connection.
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    let code = Some(status.as_u16());
    if status.is_success() {
        result("delivered", code, None)
    } else if status == reqwest::StatusCode::GONE {
        result("stop", code, Some("the receiver answered 410 Gone".into()))
    } else if status.is_redirection() {
        result(
            "stop",
            code,
            Some("the receiver redirected; redirects are not followed".into()),
        )
    } else {
        result("retry", code, None)
    }
}

/// The event as delivered, the same bytes on every attempt: its CloudEvents `id` is the
/// webhook id, and its data carries the operation's links.
fn finish_event(event: &str, job: &CallbackJob) -> String {
    match serde_json::from_str::<Value>(event) {
        Ok(Value::Object(mut o)) => {
            o.insert("id".into(), Value::String(job.webhook_id.clone()));
            if let Some(Value::Object(data)) = o.get_mut("data") {
                data.insert("links".into(), job.links.clone());
            }
            Value::Object(o).to_string()
        }
        _ => event.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CallbackConfig {
        let s = Settings {
            callbacks: crate::settings::CallbackDelivery {
                first_retry_ms: 1000,
                max_retry_ms: 8000,
                ..Default::default()
            },
            ..Settings::default()
        };
        CallbackConfig::from_settings(&s).expect("config")
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_between_half_and_all() {
        let c = config();
        assert_eq!(c.backoff(2, 1.0), Duration::from_secs(1));
        assert_eq!(c.backoff(3, 1.0), Duration::from_secs(2));
        assert_eq!(c.backoff(5, 1.0), Duration::from_secs(8));
        assert_eq!(c.backoff(9, 1.0), Duration::from_secs(8));
        assert_eq!(c.backoff(3, 0.0), Duration::from_secs(1));
        assert_eq!(c.backoff(60, 0.5), Duration::from_secs(6));
    }

    #[test]
    fn the_event_carries_the_webhook_id_and_the_links() {
        let job = CallbackJob {
            operation_id: "op".into(),
            url: "https://example.com/".into(),
            webhook_id: "msg_1".into(),
            links: json!({"status": "https://api/x"}),
            owner: None,
            checks: 0,
        };
        let e = finish_event(r#"{"type":"t","data":{"id":"op"}}"#, &job);
        let v: Value = serde_json::from_str(&e).expect("json");
        assert_eq!(v["id"], "msg_1");
        assert_eq!(v["data"]["links"]["status"], "https://api/x");
        assert_eq!(v["data"]["id"], "op");
    }
}
