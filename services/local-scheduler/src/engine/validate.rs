//! What DTS refuses, refused the same way (payload sizes, instance ids), and a bound on every
//! other field a caller or worker sends, so that no field is bounded only by the gRPC message
//! size (24 starts with 15 MB of tags each once took the scheduler from 50 to 766 MiB). Where
//! DTS documents no limit, the limit is ours; each refusal is `INVALID_ARGUMENT` naming the field
//! and its limit.

use durabletask_proto as pb;
use pb::history_event::EventType;
use pb::orchestrator_action::OrchestratorActionType as Action;

use super::EngineError;

/// Payload limit per input, output or event, as DTS.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Orchestration, activity and event names.
pub const MAX_NAME_BYTES: usize = 256;
/// Versions (of orchestrations, activities, `newVersion`).
pub const MAX_VERSION_BYTES: usize = 100;
/// Execution ids (the scheduler makes 32-character ones).
pub const MAX_EXECUTION_ID_BYTES: usize = 100;
/// Tags of an instance or task: how many, each key and value, all of them together.
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_KEY_BYTES: usize = 256;
pub const MAX_TAG_VALUE_BYTES: usize = 4096;
pub const MAX_TAGS_BYTES: usize = 16 * 1024;
/// W3C trace context: a `traceparent` is 55 characters, a `tracestate` at most 512.
pub const MAX_TRACE_PARENT_BYTES: usize = 128;
pub const MAX_TRACE_STATE_BYTES: usize = 512;
pub const MAX_SPAN_ID_BYTES: usize = 64;
/// A failure's details (type, message, stack trace, properties, inner failures), encoded, and
/// how deep its inner failures nest.
pub const MAX_FAILURE_BYTES: usize = 64 * 1024;
pub const MAX_FAILURE_DEPTH: usize = 16;
/// Entities one critical section may lock.
pub const MAX_LOCK_SET: usize = 100;
/// Events a continue-as-new carries over.
pub const MAX_CARRYOVER_EVENTS: usize = 1000;

/// Messages taken into one orchestration episode.
pub(super) const MAX_EVENTS_PER_EPISODE: usize = 1000;

/// Refuses a reuse policy that lets a start replace a live instance (pending, running or
/// suspended) but not a terminated one, as DTS does, with its reason: replacing a live
/// instance terminates it first, so such a policy contradicts itself.
pub fn validate_reuse_policy(
    p: Option<&pb::OrchestrationIdReusePolicy>,
) -> Result<(), EngineError> {
    use pb::OrchestrationStatus as S;
    let Some(p) = p else { return Ok(()) };
    let has = |s: S| p.replaceable_status.contains(&(s as i32));
    let live = [S::Running, S::Pending, S::Suspended].into_iter().any(has);
    if live && !has(S::Terminated) {
        return Err(EngineError::invalid_argument(
            "Invalid reusable statuses: cannot exclude 'Terminated' while also allowing reuse of running instances",
        ));
    }
    Ok(())
}

/// Validates an instance id as DTS does: 1-100 printable ASCII, not starting with `@`.
pub fn validate_instance_id(id: &str) -> Result<(), EngineError> {
    if id.is_empty() || id.len() > 100 {
        return Err(EngineError::invalid_argument(format!(
            "instance id must be 1 to 100 characters long (got {})",
            id.len()
        )));
    }
    if !id.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(EngineError::invalid_argument(
            "instance id must be printable ASCII",
        ));
    }
    if id.starts_with('@') {
        return Err(EngineError::invalid_argument(
            "instance ids starting with '@' are reserved for entities",
        ));
    }
    Ok(())
}

/// Upper bound on the actions of one chunked completion held in memory until its last chunk.
pub const MAX_CHUNKED_COMPLETION_BYTES: usize = 64 * 1024 * 1024;

/// Checks the payloads, ids, names and other fields an orchestrator sends back, with a message
/// naming what is wrong.
pub fn validate_actions(actions: &[pb::OrchestratorAction]) -> Result<(), EngineError> {
    for a in actions {
        match &a.orchestrator_action_type {
            Some(Action::ScheduleTask(t)) => {
                validate_name("activity name", &t.name)?;
                validate_len("activity version", t.version.as_deref(), MAX_VERSION_BYTES)?;
                validate_payload("activity input", t.input.as_ref())?;
                validate_tags("activity tags", &t.tags)?;
                validate_trace("activity trace context", t.parent_trace_context.as_ref())?;
            }
            Some(Action::CreateSubOrchestration(c)) => {
                // Empty: the scheduler derives the child's id from the parent's.
                if !c.instance_id.is_empty() {
                    validate_instance_id(&c.instance_id)?;
                }
                validate_name("sub-orchestration name", &c.name)?;
                validate_len(
                    "sub-orchestration version",
                    c.version.as_deref(),
                    MAX_VERSION_BYTES,
                )?;
                validate_payload("sub-orchestration input", c.input.as_ref())?;
                validate_tags("sub-orchestration tags", &c.tags)?;
                validate_trace(
                    "sub-orchestration trace context",
                    c.parent_trace_context.as_ref(),
                )?;
            }
            Some(Action::SendEvent(e)) => {
                validate_name("event name", &e.name)?;
                if let Some(i) = &e.instance {
                    validate_instance_id(&i.instance_id)?;
                }
                validate_payload("event data", e.data.as_ref())?
            }
            Some(Action::SendEntityMessage(m)) => {
                use pb::send_entity_message_action::EntityMessageType as M;
                let (target, operation, input) = match &m.entity_message_type {
                    Some(M::EntityOperationSignaled(s)) => (
                        s.target_instance_id.as_deref(),
                        Some(&s.operation),
                        s.input.as_ref(),
                    ),
                    Some(M::EntityOperationCalled(c)) => (
                        c.target_instance_id.as_deref(),
                        Some(&c.operation),
                        c.input.as_ref(),
                    ),
                    Some(M::EntityLockRequested(l)) => {
                        if l.lock_set.is_empty() || l.lock_set.len() > MAX_LOCK_SET {
                            return Err(EngineError::invalid_argument(format!(
                                "an entity lock request names 1 to {MAX_LOCK_SET} entities (got {})",
                                l.lock_set.len()
                            )));
                        }
                        for id in &l.lock_set {
                            super::entity_name(id)?;
                        }
                        (None, None, None)
                    }
                    Some(M::EntityUnlockSent(u)) => {
                        super::entity_name(u.target_instance_id.as_deref().unwrap_or(""))?;
                        (None, None, None)
                    }
                    None => (None, None, None),
                };
                if let Some(op) = operation {
                    super::entity_name(target.unwrap_or(""))?;
                    validate_name("entity operation name", op)?;
                    validate_payload("entity operation input", input)?;
                }
            }
            Some(Action::TerminateOrchestration(t)) => {
                validate_instance_id(&t.instance_id)?;
                validate_payload("termination reason", t.reason.as_ref())?;
            }
            Some(Action::CompleteOrchestration(c)) => {
                validate_payload("orchestration output", c.result.as_ref())?;
                validate_payload("orchestration details", c.details.as_ref())?;
                validate_len("new version", c.new_version.as_deref(), MAX_VERSION_BYTES)?;
                validate_tags("orchestration tags", &c.tags)?;
                validate_failure("orchestration failure details", c.failure_details.as_ref())?;
                if c.carryover_events.len() > MAX_CARRYOVER_EVENTS {
                    return Err(EngineError::invalid_argument(format!(
                        "carryover events: {} of them; the limit is {MAX_CARRYOVER_EVENTS}",
                        c.carryover_events.len()
                    )));
                }
                for e in &c.carryover_events {
                    validate_event("carryover event", e)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A name: 1 to [`MAX_NAME_BYTES`] bytes.
pub fn validate_name(what: &str, name: &str) -> Result<(), EngineError> {
    if name.is_empty() {
        return Err(EngineError::invalid_argument(format!(
            "{what} must not be empty"
        )));
    }
    validate_len(what, Some(name), MAX_NAME_BYTES)
}

/// At most `max` bytes.
pub fn validate_len(what: &str, value: Option<&str>, max: usize) -> Result<(), EngineError> {
    match value {
        Some(v) if v.len() > max => Err(EngineError::invalid_argument(format!(
            "{what} is {} bytes; the limit is {max} bytes",
            v.len()
        ))),
        _ => Ok(()),
    }
}

/// Tags: at most [`MAX_TAGS`], keys of 1 to [`MAX_TAG_KEY_BYTES`], values of at most
/// [`MAX_TAG_VALUE_BYTES`], [`MAX_TAGS_BYTES`] in all.
pub fn validate_tags(
    what: &str,
    tags: &std::collections::HashMap<String, String>,
) -> Result<(), EngineError> {
    if tags.len() > MAX_TAGS {
        return Err(EngineError::invalid_argument(format!(
            "{what}: {} tags; the limit is {MAX_TAGS}",
            tags.len()
        )));
    }
    let mut total = 0;
    for (k, v) in tags {
        if k.is_empty() || k.len() > MAX_TAG_KEY_BYTES {
            return Err(EngineError::invalid_argument(format!(
                "{what}: a tag key is {} bytes; keys are 1 to {MAX_TAG_KEY_BYTES} bytes",
                k.len()
            )));
        }
        if v.len() > MAX_TAG_VALUE_BYTES {
            return Err(EngineError::invalid_argument(format!(
                "{what}: the value of tag '{}' is {} bytes; the limit is {MAX_TAG_VALUE_BYTES} bytes",
                k.chars().take(64).collect::<String>(),
                v.len()
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_TAGS_BYTES {
        return Err(EngineError::invalid_argument(format!(
            "{what}: {total} bytes of tags; the limit is {MAX_TAGS_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A W3C trace context: `traceparent`, `tracestate` and the (deprecated) span id, bounded.
pub fn validate_trace(what: &str, t: Option<&pb::TraceContext>) -> Result<(), EngineError> {
    let Some(t) = t else { return Ok(()) };
    validate_len(
        &format!("{what} (traceparent)"),
        Some(&t.trace_parent),
        MAX_TRACE_PARENT_BYTES,
    )?;
    validate_len(
        &format!("{what} (tracestate)"),
        t.trace_state.as_deref(),
        MAX_TRACE_STATE_BYTES,
    )?;
    #[allow(deprecated)]
    validate_len(
        &format!("{what} (span id)"),
        Some(&t.span_id),
        MAX_SPAN_ID_BYTES,
    )
}

/// Failure details: at most [`MAX_FAILURE_BYTES`] encoded and [`MAX_FAILURE_DEPTH`] deep.
pub fn validate_failure(what: &str, f: Option<&pb::TaskFailureDetails>) -> Result<(), EngineError> {
    let Some(f) = f else { return Ok(()) };
    let size = prost::Message::encoded_len(f);
    if size > MAX_FAILURE_BYTES {
        return Err(EngineError::invalid_argument(format!(
            "{what} are {size} bytes; the limit is {MAX_FAILURE_BYTES} bytes"
        )));
    }
    let mut depth = 1;
    let mut inner = f.inner_failure.as_deref();
    while let Some(i) = inner {
        depth += 1;
        if depth > MAX_FAILURE_DEPTH {
            return Err(EngineError::invalid_argument(format!(
                "{what} nest more than {MAX_FAILURE_DEPTH} inner failures"
            )));
        }
        inner = i.inner_failure.as_deref();
    }
    Ok(())
}

/// An event a worker hands the scheduler to keep (carried over by a continue-as-new): its
/// payloads and names bounded as if they came on their own.
fn validate_event(what: &str, e: &pb::HistoryEvent) -> Result<(), EngineError> {
    if prost::Message::encoded_len(e) > MAX_PAYLOAD_BYTES + MAX_FAILURE_BYTES {
        return Err(EngineError::invalid_argument(format!(
            "a {what} is {} bytes; the limit is {} bytes",
            prost::Message::encoded_len(e),
            MAX_PAYLOAD_BYTES + MAX_FAILURE_BYTES
        )));
    }
    if let Some(EventType::EventRaised(r)) = &e.event_type {
        validate_len(&format!("{what} name"), Some(&r.name), MAX_NAME_BYTES)?;
        validate_payload(&format!("{what} data"), r.input.as_ref())?;
    }
    Ok(())
}

pub fn validate_payload(what: &str, p: Option<&String>) -> Result<(), EngineError> {
    match p {
        Some(v) if v.len() > MAX_PAYLOAD_BYTES => Err(EngineError::invalid_argument(format!(
            "{what} is {} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes (1 MB)",
            v.len()
        ))),
        _ => Ok(()),
    }
}
