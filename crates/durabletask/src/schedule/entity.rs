//! The schedule entity and the orchestration clients change it through. Operation for
//! operation, the same rules as the Python SDK's `Schedule` entity, so either SDK's worker can
//! run a schedule the other's client made.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::operations as op;
use super::wire::{Configuration, CreateInput, OperationRequest, State, UpdateInput};
use super::{SCHEDULE_ENTITY, SCHEDULE_OPERATION_ORCHESTRATOR, ScheduleStatus};
use crate::entity::{EntityContext, EntityId};
use crate::orchestration::OrchestrationContext;
use crate::registry::Registry;
use crate::types::FailureDetails;

pub(crate) fn register(r: &mut Registry) {
    r.add_entity(SCHEDULE_ENTITY, run_operation);
    r.add_orchestrator(
        SCHEDULE_OPERATION_ORCHESTRATOR,
        |ctx: OrchestrationContext, req: OperationRequest| async move {
            let id = EntityId::parse(&req.entity_id).ok_or_else(|| {
                FailureDetails::new(
                    "InvalidEntityId",
                    format!("entity_id: '{}' is not an entity id", req.entity_id),
                )
                .non_retriable()
            })?;
            let out: Value = ctx
                .call_entity(&id, &req.operation_name, &req.input)
                .await?;
            Ok(out)
        },
    );
}

fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn refused(message: String) -> FailureDetails {
    FailureDetails::new("ScheduleError", message).non_retriable()
}

fn invalid_transition(state: &State, operation: &str, to: ScheduleStatus) -> FailureDetails {
    let id = state
        .schedule_configuration
        .as_ref()
        .map_or("", |c| c.schedule_id.as_str());
    FailureDetails::new(
        "ScheduleInvalidTransitionError",
        format!(
            "Invalid state transition for schedule '{id}': operation '{operation}' cannot \
             transition from '{}' to '{}'.",
            state.status.as_str(),
            to.as_str()
        ),
    )
    .non_retriable()
}

fn load(ctx: &EntityContext) -> Result<State, FailureDetails> {
    let mut state: State = ctx.state()?.unwrap_or_default();
    // A state without a token gets one, or every run signal would look stale.
    state.execution_token.get_or_insert_with(new_token);
    Ok(state)
}

fn token(state: &State) -> String {
    state.execution_token.clone().unwrap_or_default()
}

fn config(state: &State) -> Result<&Configuration, FailureDetails> {
    state
        .schedule_configuration
        .as_ref()
        .ok_or_else(|| refused("Schedule configuration is missing.".into()))
}

fn signal_run(
    ctx: &mut EntityContext,
    state: &State,
    at: Option<DateTime<Utc>>,
) -> Result<(), FailureDetails> {
    let me = ctx.id().clone();
    ctx.signal_entity(&me, op::RUN, &token(state), at)
}

/// One operation on a schedule.
pub(crate) fn run_operation(
    ctx: &mut EntityContext,
    input: Value,
) -> Result<Value, FailureDetails> {
    let now = Utc::now();
    let operation = ctx.operation().to_string();
    match operation.as_str() {
        op::CREATE => create(ctx, input, now)?,
        op::UPDATE => update(ctx, input, now)?,
        op::PAUSE => {
            let mut state = load(ctx)?;
            if state.status != ScheduleStatus::Active {
                return Err(invalid_transition(
                    &state,
                    op::PAUSE,
                    ScheduleStatus::Paused,
                ));
            }
            config(&state)?;
            state.status = ScheduleStatus::Paused;
            state.next_run_at = None;
            state.execution_token = Some(new_token());
            ctx.set_state(&state)?;
        }
        op::RESUME => {
            let mut state = load(ctx)?;
            if state.status != ScheduleStatus::Paused {
                return Err(invalid_transition(
                    &state,
                    op::RESUME,
                    ScheduleStatus::Active,
                ));
            }
            config(&state)?;
            state.status = ScheduleStatus::Active;
            state.next_run_at = None;
            ctx.set_state(&state)?;
            signal_run(ctx, &state, None)?;
        }
        op::RUN => run(ctx, input, now)?,
        op::DELETE => ctx.delete_state(),
        other => {
            return Err(refused(format!(
                "'{other}' is not an operation of the schedule entity"
            )));
        }
    }
    Ok(Value::Null)
}

fn create(ctx: &mut EntityContext, input: Value, now: DateTime<Utc>) -> Result<(), FailureDetails> {
    let options = serde_json::from_value::<CreateInput>(input)
        .map_err(|e| refused(format!("the schedule's options are not valid: {e}")))?
        .options()
        .map_err(refused)?;
    let mut state = load(ctx)?;
    // Creating is allowed from every status (it replaces the configuration).
    let existed = state.schedule_created_at.is_some();
    state.schedule_configuration = Some(Configuration::from_create(&options));
    if existed {
        state.schedule_last_modified_at = Some(now);
        state.execution_token = Some(new_token());
        state.next_run_at = None;
    } else {
        state.status = ScheduleStatus::Active;
        state.schedule_created_at = Some(now);
        state.schedule_last_modified_at = Some(now);
    }
    ctx.set_state(&state)?;
    signal_run(ctx, &state, None)
}

fn update(ctx: &mut EntityContext, input: Value, now: DateTime<Utc>) -> Result<(), FailureDetails> {
    let options = serde_json::from_value::<UpdateInput>(input)
        .map_err(|e| refused(format!("the schedule's update is not valid: {e}")))?
        .options()
        .map_err(refused)?;
    let mut state = load(ctx)?;
    if !matches!(
        state.status,
        ScheduleStatus::Active | ScheduleStatus::Paused
    ) {
        return Err(invalid_transition(&state, op::UPDATE, state.status));
    }
    let Some(c) = state.schedule_configuration.as_mut() else {
        return Err(refused("Schedule configuration is missing.".into()));
    };
    let mut changed = Vec::new();
    if let Some(v) = options
        .orchestration_name
        .filter(|v| !v.is_empty() && *v != c.orchestration_name)
    {
        c.orchestration_name = v;
        changed.push("orchestration_name");
    }
    if let Some(v) = options.orchestration_input.filter(|v| !v.is_null())
        && c.input().as_ref() != Some(&v)
    {
        c.orchestration_input = Some(v.to_string());
        changed.push("orchestration_input");
    }
    if let Some(v) = options.orchestration_instance_id.filter(|v| !v.is_empty())
        && c.orchestration_instance_id.as_ref() != Some(&v)
    {
        c.orchestration_instance_id = Some(v);
        changed.push("orchestration_instance_id");
    }
    if let Some(v) = options.start_at.filter(|v| c.start_at != Some(*v)) {
        c.start_at = Some(v);
        changed.push("start_at");
    }
    if let Some(v) = options.end_at.filter(|v| c.end_at != Some(*v)) {
        c.end_at = Some(v);
        changed.push("end_at");
    }
    if let Some(v) = options.interval.filter(|v| *v != c.interval) {
        c.interval = v;
        changed.push("interval");
    }
    if let Some(v) = options
        .start_immediately_if_late
        .filter(|v| *v != c.start_immediately_if_late)
    {
        c.start_immediately_if_late = v;
        changed.push("start_immediately_if_late");
    }
    if let (Some(s), Some(e)) = (c.start_at, c.end_at)
        && s > e
    {
        return Err(refused("start_at: cannot be later than end_at".into()));
    }
    if changed.is_empty() {
        ctx.set_state(&state)?;
        return Ok(());
    }
    state.schedule_last_modified_at = Some(now);
    if changed
        .iter()
        .any(|f| matches!(*f, "start_at" | "interval" | "start_immediately_if_late"))
    {
        state.next_run_at = None;
    }
    state.execution_token = Some(new_token());
    ctx.set_state(&state)?;
    if state.status == ScheduleStatus::Active {
        signal_run(ctx, &state, None)?;
    }
    Ok(())
}

/// The heartbeat: starts the orchestration when due, then signals itself for the next run.
fn run(ctx: &mut EntityContext, input: Value, now: DateTime<Utc>) -> Result<(), FailureDetails> {
    let mut state = load(ctx)?;
    if state.status == ScheduleStatus::Uninitialized {
        // Deleted since this signal was sent.
        ctx.delete_state();
        return Ok(());
    }
    let c = config(&state)?.clone();
    if input.as_str() != state.execution_token.as_deref() {
        // Stale: paused, updated or re-created since.
        return Ok(());
    }
    if state.status != ScheduleStatus::Active {
        return Err(refused("Schedule must be in Active status to run.".into()));
    }
    if c.end_at.is_some_and(|end| now > end) {
        state.next_run_at = None;
        ctx.set_state(&state)?;
        let me = ctx.id().clone();
        return ctx.signal_entity(&me, op::DELETE, &Value::Null, None);
    }
    let due = next_run(&state, &c, now);
    state.next_run_at = Some(due);
    if due <= now {
        let instance_id = c
            .orchestration_instance_id
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| super::run_instance_id(&c.schedule_id, due));
        ctx.start_orchestration(
            &c.orchestration_name,
            &c.input().unwrap_or(Value::Null),
            Some(&instance_id),
        )?;
        state.last_run_at = Some(due);
        state.next_run_at = None;
        state.next_run_at = Some(next_run(&state, &c, now));
    }
    ctx.set_state(&state)?;
    signal_run(ctx, &state, state.next_run_at)
}

/// When the schedule runs next: the time already set, else the first interval boundary after
/// `now` counted from its start (or `now` for a late first run, when asked).
fn next_run(state: &State, c: &Configuration, now: DateTime<Utc>) -> DateTime<Utc> {
    if let Some(next) = state.next_run_at {
        return next;
    }
    let start = c.start_at.or(state.schedule_created_at).unwrap_or(now);
    if now < start {
        return start;
    }
    if state.last_run_at.is_none() && c.start_immediately_if_late {
        return now;
    }
    let interval = c.interval.as_nanos().max(1);
    let since = (now - start).num_nanoseconds().unwrap_or(i64::MAX).max(0) as u128;
    let n = since / interval + 1;
    let offset = i64::try_from(interval * n).unwrap_or(i64::MAX);
    start + chrono::Duration::nanoseconds(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn config(interval: u64) -> Configuration {
        Configuration {
            schedule_id: "s".into(),
            orchestration_name: "o".into(),
            interval: Duration::from_secs(interval),
            orchestration_input: None,
            orchestration_instance_id: None,
            start_at: None,
            end_at: None,
            start_immediately_if_late: false,
        }
    }

    #[test]
    fn the_next_run_is_the_first_interval_boundary_after_now() {
        let state = State {
            schedule_created_at: Some(at("2026-12-06T20:00:00Z")),
            ..Default::default()
        };
        let c = config(10);
        // Created just now: the first run is one interval later.
        assert_eq!(
            next_run(&state, &c, at("2026-12-06T20:00:00Z")),
            at("2026-12-06T20:00:10Z")
        );
        assert_eq!(
            next_run(&state, &c, at("2026-12-06T20:00:25Z")),
            at("2026-12-06T20:00:30Z")
        );
        // A start in the future is the first run.
        let mut later = c.clone();
        later.start_at = Some(at("2026-12-07T00:00:00Z"));
        assert_eq!(
            next_run(&state, &later, at("2026-12-06T20:00:25Z")),
            at("2026-12-07T00:00:00Z")
        );
        // Late, and asked to run at once when late.
        let mut eager = c.clone();
        eager.start_immediately_if_late = true;
        let now = at("2026-12-06T20:00:25Z");
        assert_eq!(next_run(&state, &eager, now), now);
        // A time already set stands.
        let set = State {
            next_run_at: Some(at("2026-12-06T21:00:00Z")),
            ..state.clone()
        };
        assert_eq!(next_run(&set, &c, now), at("2026-12-06T21:00:00Z"));
    }
}
