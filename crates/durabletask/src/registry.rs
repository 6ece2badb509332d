//! Name → function tables for orchestrators, activities and entities, with serde at the edges.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::activity::ActivityContext;
use crate::entity::{EntityContext, EntityFn};
use crate::orchestration::{OrchestrationContext, OrchestratorFn};
use crate::types::FailureDetails;

/// The type-erased activity: context and JSON input in, JSON output out.
pub type ActivityFn = dyn Fn(
        ActivityContext,
        Option<String>,
    ) -> BoxFuture<'static, Result<Option<String>, FailureDetails>>
    + Send
    + Sync;

/// Orchestrators and activities a worker can run.
#[derive(Default, Clone)]
pub struct Registry {
    orchestrators: HashMap<String, Arc<OrchestratorFn>>,
    activities: HashMap<String, Arc<ActivityFn>>,
    entities: HashMap<String, Arc<EntityFn>>,
}

fn decode_input<I: DeserializeOwned>(json: Option<&str>) -> Result<I, FailureDetails> {
    serde_json::from_str(json.unwrap_or("null")).map_err(|e| {
        FailureDetails::new(
            "InputDeserializationError",
            format!("the input is not what the function expects: {e}"),
        )
        .non_retriable()
    })
}

fn encode_output<O: Serialize>(out: &O) -> Result<Option<String>, FailureDetails> {
    serde_json::to_string(out)
        .map(Some)
        .map_err(|e| FailureDetails::new("OutputSerializationError", e.to_string()))
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an orchestrator `async fn(ctx, input) -> Result<output, FailureDetails>`.
    /// The future may be `!Send`: orchestrations run on the worker thread that replays them.
    pub fn add_orchestrator<I, O, F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, FailureDetails>> + 'static,
    {
        let erased = move |ctx: OrchestrationContext, input: Option<String>| {
            let decoded = decode_input::<I>(input.as_deref());
            let fut = decoded.map(|i| f(ctx, i));
            async move { encode_output(&fut?.await?) }.boxed_local()
        };
        self.orchestrators
            .insert(name.to_string(), Arc::new(erased));
        self
    }

    /// Registers an activity `async fn(ctx, input) -> Result<output, FailureDetails>`.
    pub fn add_activity<I, O, F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, FailureDetails>> + Send + 'static,
    {
        let erased = move |ctx: ActivityContext, input: Option<String>| {
            let decoded = decode_input::<I>(input.as_deref());
            let fut = decoded.map(|i| f(ctx, i));
            async move { encode_output(&fut?.await?) }.boxed()
        };
        self.activities.insert(name.to_string(), Arc::new(erased));
        self
    }

    /// Registers an entity: `fn(&mut EntityContext, input) -> Result<output, FailureDetails>`,
    /// called once per operation (`ctx.operation()` names it), with the state in the context.
    /// The name is lower-cased, as entity ids carry it.
    pub fn add_entity<I, O, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(&mut EntityContext, I) -> Result<O, FailureDetails> + Send + Sync + 'static,
    {
        self.entities
            .insert(name.to_lowercase(), crate::entity::erase(f));
        self
    }

    /// Registers a type-based entity (see [`crate::entity::EntityType`]).
    pub fn add_entity_type<T: crate::entity::EntityType>(&mut self, name: &str) -> &mut Self {
        self.entities
            .insert(name.to_lowercase(), crate::entity::erase_type::<T>());
        self
    }

    /// Registers the schedule entity and the orchestration clients change schedules through,
    /// so this worker runs recurring schedules (see [`crate::schedule`]).
    pub fn add_schedules(&mut self) -> &mut Self {
        crate::schedule::entity::register(self);
        self
    }

    pub fn entity(&self, name: &str) -> Option<Arc<EntityFn>> {
        self.entities.get(name).cloned()
    }

    pub fn entity_names(&self) -> impl Iterator<Item = &str> {
        self.entities.keys().map(String::as_str)
    }

    /// Keeps only the orchestrators: for a worker that leaves activities to others (run it with
    /// `WorkerOptions::use_work_item_filters`).
    pub fn without_activities(mut self) -> Self {
        self.activities.clear();
        self
    }

    /// Keeps only the activities (see [`Registry::without_activities`]).
    pub fn without_orchestrators(mut self) -> Self {
        self.orchestrators.clear();
        self
    }

    pub fn orchestrator(&self, name: &str) -> Option<Arc<OrchestratorFn>> {
        self.orchestrators.get(name).cloned()
    }

    pub fn activity(&self, name: &str) -> Option<Arc<ActivityFn>> {
        self.activities.get(name).cloned()
    }

    pub fn orchestrator_names(&self) -> impl Iterator<Item = &str> {
        self.orchestrators.keys().map(String::as_str)
    }

    pub fn activity_names(&self) -> impl Iterator<Item = &str> {
        self.activities.keys().map(String::as_str)
    }
}
