//! A Durable Task SDK for Rust that speaks the Azure Durable Task Scheduler (DTS) protocol.
//!
//! - [`Connection`]: endpoint, task hub and credential (DTS connection strings included).
//! - [`Client`]: start, query, wait for, signal, terminate and purge orchestrations.
//! - [`Worker`]: runs registered orchestrators, activities and entities from the work-item
//!   stream.
//! - [`entity`]: durable entities (ids, the operation context, batch execution).
//! - [`orchestration`]: the context orchestrator code uses and the strict replay executor.
//! - [`payload`]: large payloads (the claim check the SDKs share, in Azure Blob Storage).
//! - [`schedule`]: recurring schedules (on entities, as the other SDKs keep them).
//! - [`testing`]: a fluent history builder for replay tests.

pub mod activity;
pub mod auth;
pub mod client;
pub mod connection;
pub mod entity;
mod error;
pub mod history;
pub mod orchestration;
pub mod otel;
pub mod payload;
pub mod registry;
pub mod schedule;
pub mod testing;
mod traceparent;
pub mod types;
pub mod worker;

pub use activity::ActivityContext;
pub use client::{Client, InstancePage, InstanceQuery, PurgeFilter, PurgeResult, StartOptions};
pub use connection::{Authentication, ConfigError, Connection, ConnectionOptions};
pub use durabletask_proto as proto;
pub use entity::{
    CleanEntityStorageResult, EntityContext, EntityId, EntityMetadata, EntityPage, EntityQuery,
    EntityType,
};
pub use error::{Error, is_transient_status};
pub use orchestration::{
    DurableTask, DurableTimer, EntityLock, NonDeterminismError, OrchestrationContext, RetryPolicy,
    TaskError,
};
pub use registry::Registry;
pub use schedule::{
    ScheduleCreationOptions, ScheduleDescription, ScheduleError, ScheduleQuery, ScheduleStatus,
    ScheduleUpdateOptions,
};
pub use traceparent::TraceParent;
pub use types::{FailureDetails, OrchestrationMetadata, OrchestrationStatus, TraceContext};
pub use worker::{
    WorkItemKind, WorkItemOutcome, Worker, WorkerObserver, WorkerOptions, WorkerStats,
};
