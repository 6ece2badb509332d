//! What DTS refuses, refused the same way: payload sizes, instance ids, actions.

use super::*;

/// Payload limit per input, output or event, as DTS.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Messages taken into one orchestration episode.
pub(super) const MAX_EVENTS_PER_EPISODE: usize = 1000;

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

/// Checks the payloads and ids an orchestrator sends back, with a message naming what is wrong.
pub fn validate_actions(actions: &[pb::OrchestratorAction]) -> Result<(), EngineError> {
    for a in actions {
        match &a.orchestrator_action_type {
            Some(Action::ScheduleTask(t)) => validate_payload("activity input", t.input.as_ref())?,
            Some(Action::CreateSubOrchestration(c)) => {
                // Empty: the scheduler derives the child's id from the parent's.
                if !c.instance_id.is_empty() {
                    validate_instance_id(&c.instance_id)?;
                }
                validate_payload("sub-orchestration input", c.input.as_ref())?;
            }
            Some(Action::SendEvent(e)) => validate_payload("event data", e.data.as_ref())?,
            Some(Action::CompleteOrchestration(c)) => {
                validate_payload("orchestration output", c.result.as_ref())?
            }
            _ => {}
        }
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
