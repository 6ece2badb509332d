//! Durable entities: ids, the context an entity operation runs with, the type-erased entity
//! function the registry keeps, and the execution of an entity work item (a batch of
//! operations, each applied to the state the one before it left, a failed one rolled back).
//!
//! Operations are synchronous functions of `(&mut EntityContext, input)`: an entity is a small
//! state machine, and a batch runs its operations one after the other.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::FailureDetails;

/// An entity's id: its name (lower case, as every SDK writes it) and its key; `@name@key` on the
/// wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId {
    pub name: String,
    pub key: String,
}

impl EntityId {
    pub fn new(name: &str, key: &str) -> Self {
        Self {
            name: name.to_lowercase(),
            key: key.to_string(),
        }
    }

    /// Parses `@name@key`.
    pub fn parse(id: &str) -> Option<Self> {
        let (name, key) = id.strip_prefix('@')?.split_once('@')?;
        (!name.is_empty()).then(|| Self::new(name, key))
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}@{}", self.name, self.key)
    }
}

/// What a client reads of an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityMetadata {
    pub id: EntityId,
    pub last_modified: Option<DateTime<Utc>>,
    /// Operations waiting for it.
    pub backlog_queue_size: u32,
    /// The orchestration holding its lock.
    pub locked_by: Option<String>,
    /// Its state as JSON text, when asked for and when it has one.
    pub serialized_state: Option<String>,
}

impl EntityMetadata {
    pub(crate) fn from_proto(m: pb::EntityMetadata) -> Option<Self> {
        Some(Self {
            id: EntityId::parse(&m.instance_id)?,
            last_modified: m
                .last_modified_time
                .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)),
            backlog_queue_size: m.backlog_queue_size.max(0) as u32,
            locked_by: m.locked_by.filter(|l| !l.is_empty()),
            serialized_state: m.serialized_state,
        })
    }

    /// The state, deserialized.
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        self.serialized_state
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
    }
}

/// A filter for [`crate::Client::query_entities`].
#[derive(Debug, Clone, Default)]
pub struct EntityQuery {
    /// A prefix of the entity id, `@name@` for all entities of one name.
    pub instance_id_starts_with: Option<String>,
    pub last_modified_from: Option<DateTime<Utc>>,
    pub last_modified_to: Option<DateTime<Utc>>,
    pub include_state: bool,
    /// Also entities without state (operations waiting, or a lock held).
    pub include_transient: bool,
    pub page_size: Option<u32>,
    pub continuation_token: Option<String>,
}

/// One page of entities; `continuation_token` asks for the next.
#[derive(Debug, Clone)]
pub struct EntityPage {
    pub entities: Vec<EntityMetadata>,
    pub continuation_token: Option<String>,
}

/// What [`crate::Client::clean_entity_storage`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanEntityStorageResult {
    pub empty_entities_removed: u32,
    pub orphaned_locks_released: u32,
}

/// What an entity operation sees and changes: its entity's id, the operation's name, the
/// state, and the signals and orchestration starts it makes (sent only if it succeeds).
pub struct EntityContext {
    id: EntityId,
    operation: String,
    state: Option<String>,
    /// Set by `delete_state` (a type-based entity then does not write its value back).
    deleted: bool,
    actions: Vec<pb::operation_action::OperationActionType>,
}

impl EntityContext {
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The state, or `None` before any was set (or after [`EntityContext::delete_state`]).
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>, FailureDetails> {
        self.state
            .as_deref()
            .map(|s| {
                serde_json::from_str(s).map_err(|e| {
                    FailureDetails::new(
                        "StateDeserializationError",
                        format!("the entity's state is not what the operation expects: {e}"),
                    )
                })
            })
            .transpose()
    }

    pub fn set_state<T: Serialize>(&mut self, state: &T) -> Result<(), FailureDetails> {
        self.deleted = false;
        self.state = Some(
            serde_json::to_string(state)
                .map_err(|e| FailureDetails::new("StateSerializationError", e.to_string()))?,
        );
        Ok(())
    }

    /// Deletes the state: the entity no longer exists for clients.
    pub fn delete_state(&mut self) {
        self.state = None;
        self.deleted = true;
    }

    /// Signals another entity (one-way), now or at `at`.
    pub fn signal_entity<I: Serialize + ?Sized>(
        &mut self,
        target: &EntityId,
        operation: &str,
        input: &I,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), FailureDetails> {
        let input = serde_json::to_string(input)
            .map_err(|e| FailureDetails::new("InputSerializationError", e.to_string()))?;
        self.actions
            .push(pb::operation_action::OperationActionType::SendSignal(
                pb::SendSignalAction {
                    instance_id: target.to_string(),
                    name: operation.to_string(),
                    input: Some(input),
                    scheduled_time: at.map(crate::types::to_timestamp),
                    request_time: Some(crate::types::to_timestamp(Utc::now())),
                    parent_trace_context: None,
                },
            ));
        Ok(())
    }

    /// Starts an orchestration (a random instance id when `instance_id` is `None`).
    pub fn start_orchestration<I: Serialize + ?Sized>(
        &mut self,
        name: &str,
        input: &I,
        instance_id: Option<&str>,
    ) -> Result<(), FailureDetails> {
        let input = serde_json::to_string(input)
            .map_err(|e| FailureDetails::new("InputSerializationError", e.to_string()))?;
        self.actions.push(
            pb::operation_action::OperationActionType::StartNewOrchestration(
                pb::StartNewOrchestrationAction {
                    instance_id: instance_id
                        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string),
                    name: name.to_string(),
                    version: None,
                    input: Some(input),
                    scheduled_time: None,
                    request_time: Some(crate::types::to_timestamp(Utc::now())),
                    parent_trace_context: None,
                },
            ),
        );
        Ok(())
    }
}

/// An entity written as a type: its value is the entity's state (`Default` before the first
/// operation), and [`EntityType::dispatch`] runs the operation `ctx.operation()` names on it.
/// Registered with [`crate::Registry::add_entity_type`]; the value is written back after each
/// successful operation unless it called [`EntityContext::delete_state`].
pub trait EntityType: Default + Serialize + DeserializeOwned + 'static {
    fn dispatch(
        &mut self,
        ctx: &mut EntityContext,
        input: serde_json::Value,
    ) -> Result<serde_json::Value, FailureDetails>;
}

/// The entity function of a type-based entity `T`.
pub(crate) fn erase_type<T: EntityType>() -> Arc<EntityFn> {
    erase(|ctx: &mut EntityContext, input: serde_json::Value| {
        let mut value: T = ctx.state::<T>()?.unwrap_or_default();
        let out = value.dispatch(ctx, input)?;
        if !ctx.deleted {
            ctx.set_state(&value)?;
        }
        Ok(out)
    })
}

/// The type-erased entity: context and JSON input in, JSON output out.
pub type EntityFn = dyn Fn(&mut EntityContext, Option<String>) -> Result<Option<String>, FailureDetails>
    + Send
    + Sync;

/// Erases an entity operation function `fn(&mut EntityContext, input) -> Result<output, _>`.
pub(crate) fn erase<I, O, F>(f: F) -> Arc<EntityFn>
where
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
    F: Fn(&mut EntityContext, I) -> Result<O, FailureDetails> + Send + Sync + 'static,
{
    Arc::new(move |ctx: &mut EntityContext, input: Option<String>| {
        let input: I = serde_json::from_str(input.as_deref().unwrap_or("null")).map_err(|e| {
            FailureDetails::new(
                "InputDeserializationError",
                format!("the input is not what the operation expects: {e}"),
            )
            .non_retriable()
        })?;
        let out = f(ctx, input)?;
        serde_json::to_string(&out)
            .map(Some)
            .map_err(|e| FailureDetails::new("OutputSerializationError", e.to_string()))
    })
}

/// Runs an entity work item's operations in order against `entity` (`None`: no entity of that
/// name is registered, and every operation fails). A failed operation leaves the state and the
/// actions as they were before it.
pub(crate) fn execute_batch(
    entity: Option<&EntityFn>,
    req: &pb::EntityRequest,
    completion_token: String,
) -> pb::EntityBatchResult {
    use pb::history_event::EventType;
    let id = EntityId::parse(&req.instance_id).unwrap_or_else(|| EntityId::new("", ""));
    let mut state = req.entity_state.clone();
    let mut actions = Vec::new();
    let mut results = Vec::new();
    let mut infos = Vec::new();
    for op in &req.operation_requests {
        let (request_id, operation, input, destination) = match &op.event_type {
            Some(EventType::EntityOperationSignaled(s)) => (
                s.request_id.clone(),
                s.operation.clone(),
                s.input.clone(),
                None,
            ),
            Some(EventType::EntityOperationCalled(c)) => (
                c.request_id.clone(),
                c.operation.clone(),
                c.input.clone(),
                c.parent_instance_id
                    .clone()
                    .map(|instance_id| pb::OrchestrationInstance {
                        instance_id,
                        execution_id: c.parent_execution_id.clone(),
                    }),
            ),
            _ => continue,
        };
        let start = crate::types::to_timestamp(Utc::now());
        let mut ctx = EntityContext {
            id: id.clone(),
            operation: operation.clone(),
            state: state.clone(),
            deleted: false,
            actions: Vec::new(),
        };
        let outcome = match entity {
            Some(f) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut ctx, input)))
                    .unwrap_or_else(|panic| Err(FailureDetails::from_panic(panic.as_ref())))
            }
            None => Err(FailureDetails::new(
                "EntityTaskNotFound",
                format!(
                    "no entity named '{}' is registered with this worker",
                    id.name
                ),
            )
            .non_retriable()),
        };
        let end = Some(crate::types::to_timestamp(Utc::now()));
        let result_type = match outcome {
            Ok(result) => {
                state = ctx.state;
                actions.extend(ctx.actions);
                pb::operation_result::ResultType::Success(pb::OperationResultSuccess {
                    result,
                    start_time_utc: Some(start),
                    end_time_utc: end,
                })
            }
            Err(f) => pb::operation_result::ResultType::Failure(pb::OperationResultFailure {
                failure_details: Some(f.to_proto()),
                start_time_utc: Some(start),
                end_time_utc: end,
            }),
        };
        results.push(pb::OperationResult {
            result_type: Some(result_type),
        });
        infos.push(pb::OperationInfo {
            request_id,
            response_destination: destination,
        });
    }
    pb::EntityBatchResult {
        results,
        actions: actions
            .into_iter()
            .enumerate()
            .map(|(i, a)| pb::OperationAction {
                id: i32::try_from(i).unwrap_or(i32::MAX),
                operation_action_type: Some(a),
            })
            .collect(),
        entity_state: state,
        failure_details: None,
        completion_token,
        operation_infos: infos,
        requires_state: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(op: &str, input: &str) -> pb::HistoryEvent {
        pb::HistoryEvent {
            event_id: -1,
            timestamp: None,
            event_type: Some(pb::history_event::EventType::EntityOperationSignaled(
                pb::EntityOperationSignaledEvent {
                    request_id: format!("r-{op}-{input}"),
                    operation: op.into(),
                    scheduled_time: None,
                    input: Some(input.into()),
                    target_instance_id: Some("@counter@k".into()),
                },
            )),
        }
    }

    #[test]
    fn a_batch_applies_in_order_and_rolls_back_a_failed_operation() {
        let counter = erase(|ctx: &mut EntityContext, n: i64| {
            let value = ctx.state::<i64>()?.unwrap_or(0);
            match ctx.operation() {
                "add" => ctx.set_state(&(value + n))?,
                "fail" => {
                    ctx.set_state(&(value + 1000))?;
                    ctx.signal_entity(&EntityId::new("other", "x"), "add", &1, None)?;
                    return Err(FailureDetails::new(
                        "Boom",
                        "fails after changing the state",
                    ));
                }
                "forward" => ctx.signal_entity(&EntityId::new("Other", "x"), "add", &n, None)?,
                _ => {}
            }
            Ok(value)
        });
        let req = pb::EntityRequest {
            instance_id: "@counter@k".into(),
            execution_id: String::new(),
            entity_state: Some("1".into()),
            operation_requests: vec![
                signal("add", "2"),
                signal("fail", "0"),
                signal("forward", "5"),
                signal("add", "3"),
            ],
        };
        let r = execute_batch(Some(counter.as_ref()), &req, "t".into());
        assert_eq!(r.entity_state.as_deref(), Some("6"));
        assert_eq!(r.results.len(), 4);
        assert!(matches!(
            r.results[1].result_type,
            Some(pb::operation_result::ResultType::Failure(_))
        ));
        // Only the successful operation's signal, to the lower-cased name.
        assert_eq!(r.actions.len(), 1);
        let Some(pb::operation_action::OperationActionType::SendSignal(s)) =
            &r.actions[0].operation_action_type
        else {
            panic!("{:?}", r.actions);
        };
        assert_eq!(
            (s.instance_id.as_str(), s.input.as_deref()),
            ("@other@x", Some("5"))
        );
        assert_eq!(r.operation_infos[3].request_id, "r-add-3");
        assert_eq!(r.completion_token, "t");
    }

    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Account {
        balance: i64,
        history: Vec<i64>,
    }

    impl EntityType for Account {
        fn dispatch(
            &mut self,
            ctx: &mut EntityContext,
            input: serde_json::Value,
        ) -> Result<serde_json::Value, FailureDetails> {
            let amount = input.as_i64().unwrap_or(0);
            match ctx.operation() {
                "deposit" => self.balance += amount,
                "withdraw" if amount > self.balance => {
                    return Err(FailureDetails::new("Insufficient", "not enough"));
                }
                "withdraw" => self.balance -= amount,
                "close" => ctx.delete_state(),
                _ => {}
            }
            self.history.push(amount);
            Ok(serde_json::json!(self.balance))
        }
    }

    #[test]
    fn a_type_based_entity_keeps_its_value_as_state() {
        let account = erase_type::<Account>();
        let req = pb::EntityRequest {
            instance_id: "@account@k".into(),
            execution_id: String::new(),
            entity_state: None,
            operation_requests: vec![
                signal("deposit", "100"),
                signal("withdraw", "500"),
                signal("withdraw", "30"),
            ],
        };
        let r = execute_batch(Some(account.as_ref()), &req, "t".into());
        let state: serde_json::Value =
            serde_json::from_str(r.entity_state.as_deref().expect("state")).expect("json");
        // The failed withdrawal left no trace, not even in the history.
        assert_eq!(
            state,
            serde_json::json!({"balance": 70, "history": [100, 30]})
        );
        let closing = pb::EntityRequest {
            entity_state: r.entity_state,
            operation_requests: vec![signal("close", "0")],
            ..req
        };
        let r = execute_batch(Some(account.as_ref()), &closing, "t2".into());
        assert_eq!(r.entity_state, None, "closed: the state is deleted");
    }

    #[test]
    fn entity_ids_round_trip() {
        let id = EntityId::new("Counter", "A@b");
        assert_eq!(id.to_string(), "@counter@A@b");
        assert_eq!(EntityId::parse("@counter@A@b"), Some(id));
        assert_eq!(EntityId::parse("counter@a"), None);
        assert_eq!(EntityId::parse("@@a"), None);
    }
}
