//! Orchestrations: the context orchestrator code uses, retry policies, and the replay executor.

pub mod context;
pub mod executor;
pub mod retry;

pub use context::{
    BoxedTask, DurableTask, DurableTimer, EntityLock, OrchestrationContext, TaskError, WhenAny,
};
pub use executor::{
    ExecutionResult, ExecutionStatus, NonDeterminismError, OrchestratorFn, execute,
};
pub use retry::RetryPolicy;
