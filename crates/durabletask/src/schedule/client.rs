//! Managing schedules from a client: [`Client::schedules`].
//!
//! Changes go through the schedule-operation orchestration (as the other SDKs send them), and
//! wait for it, so that a refused change (an invalid transition, bad options) comes back as an
//! error; reads go to the entity directly.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::operations as op;
use super::wire::{CreateInput, OperationRequest, State, UpdateInput};
use super::{
    SCHEDULE_ENTITY, SCHEDULE_OPERATION_ORCHESTRATOR, ScheduleCreationOptions, ScheduleDescription,
    ScheduleStatus, ScheduleUpdateOptions,
};
use crate::client::{Client, StartOptions};
use crate::entity::{EntityId, EntityQuery};
use crate::error::Error;
use crate::types::OrchestrationStatus;

/// Why a schedule operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Options refused before anything was sent; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("Schedule with ID '{0}' was not found.")]
    NotFound(String),
    /// The schedule refused the operation (an invalid transition, for one).
    #[error("'{operation}' of schedule '{schedule_id}' failed: {message}")]
    Failed {
        schedule_id: String,
        operation: String,
        error_type: String,
        message: String,
    },
    /// The operation did not finish in time; it may still happen.
    #[error("'{operation}' of schedule '{schedule_id}' did not finish in {timeout:?}")]
    TimedOut {
        schedule_id: String,
        operation: String,
        timeout: Duration,
    },
    #[error(transparent)]
    Client(#[from] Error),
    #[error("schedule '{0}' has a state this SDK cannot read: {1}")]
    State(String, serde_json::Error),
}

/// A filter for [`Schedules::list`]. The status and creation window are applied to each page
/// of entities (bounds exclusive, as in the other SDKs).
#[derive(Debug, Clone, Default)]
pub struct ScheduleQuery {
    pub status: Option<ScheduleStatus>,
    pub schedule_id_prefix: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// Entities read per page (100 by default).
    pub page_size: Option<u32>,
}

impl ScheduleQuery {
    fn matches(&self, d: &ScheduleDescription) -> bool {
        self.status.is_none_or(|s| d.status == s)
            && self
                .created_from
                .is_none_or(|from| d.created_at.is_some_and(|c| c > from))
            && self
                .created_to
                .is_none_or(|to| d.created_at.is_some_and(|c| c < to))
    }
}

/// The schedules of a task hub, through `client`.
pub struct Schedules<'a> {
    client: &'a Client,
    timeout: Duration,
}

impl Client {
    /// Schedules, with changes waited for up to 60 s (the other SDKs' default).
    pub fn schedules(&self) -> Schedules<'_> {
        Schedules {
            client: self,
            timeout: Duration::from_secs(60),
        }
    }
}

fn entity_of(schedule_id: &str) -> EntityId {
    EntityId::new(SCHEDULE_ENTITY, schedule_id)
}

impl Schedules<'_> {
    /// How long a change is waited for.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Creates the schedule (or replaces the configuration of one with the same id).
    pub async fn create(&self, options: &ScheduleCreationOptions) -> Result<(), ScheduleError> {
        options.validate().map_err(ScheduleError::Invalid)?;
        let input = serde_json::to_value(CreateInput::of(options))
            .map_err(|e| ScheduleError::Client(e.into()))?;
        self.operate(&options.schedule_id, op::CREATE, input).await
    }

    pub async fn update(
        &self,
        schedule_id: &str,
        options: &ScheduleUpdateOptions,
    ) -> Result<(), ScheduleError> {
        if let Some(i) = options.interval {
            super::check_interval(i).map_err(ScheduleError::Invalid)?;
        }
        let input = serde_json::to_value(UpdateInput::of(options))
            .map_err(|e| ScheduleError::Client(e.into()))?;
        self.operate(schedule_id, op::UPDATE, input).await
    }

    pub async fn pause(&self, schedule_id: &str) -> Result<(), ScheduleError> {
        self.operate(schedule_id, op::PAUSE, Value::Null).await
    }

    pub async fn resume(&self, schedule_id: &str) -> Result<(), ScheduleError> {
        self.operate(schedule_id, op::RESUME, Value::Null).await
    }

    /// Deletes the schedule: no run starts after this returns.
    pub async fn delete(&self, schedule_id: &str) -> Result<(), ScheduleError> {
        self.operate(schedule_id, op::DELETE, Value::Null).await
    }

    /// The schedule, or `None` when there is none of that id.
    pub async fn describe(
        &self,
        schedule_id: &str,
    ) -> Result<Option<ScheduleDescription>, ScheduleError> {
        let Some(meta) = self
            .client
            .get_entity(&entity_of(schedule_id), true)
            .await?
        else {
            return Ok(None);
        };
        let state: Option<State> = meta
            .state()
            .map_err(|e| ScheduleError::State(schedule_id.to_string(), e))?;
        Ok(state
            .filter(|s| s.schedule_configuration.is_some())
            .map(|s| s.describe()))
    }

    /// One page of schedules matching `query`, and the token of the next page (`None` at the
    /// end). A page may hold fewer matches than its size, or none, with more to come.
    pub async fn list_page(
        &self,
        query: &ScheduleQuery,
        continuation_token: Option<String>,
    ) -> Result<(Vec<ScheduleDescription>, Option<String>), ScheduleError> {
        let page = self
            .client
            .query_entities(EntityQuery {
                instance_id_starts_with: Some(format!(
                    "@{SCHEDULE_ENTITY}@{}",
                    query.schedule_id_prefix.as_deref().unwrap_or("")
                )),
                include_state: true,
                page_size: Some(query.page_size.unwrap_or(100)),
                continuation_token,
                ..Default::default()
            })
            .await?;
        let mut out = Vec::new();
        for meta in page.entities {
            // A schedule another writer left unreadable is skipped, not the whole list.
            let Ok(Some(state)) = meta.state::<State>() else {
                continue;
            };
            if state.schedule_configuration.is_none() {
                continue;
            }
            let d = state.describe();
            if query.matches(&d) {
                out.push(d);
            }
        }
        Ok((out, page.continuation_token))
    }

    /// Every schedule matching `query`.
    pub async fn list(
        &self,
        query: &ScheduleQuery,
    ) -> Result<Vec<ScheduleDescription>, ScheduleError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let (mut page, next) = self.list_page(query, token).await?;
            out.append(&mut page);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// Runs one operation on the schedule through the orchestration and waits for it.
    async fn operate(
        &self,
        schedule_id: &str,
        operation: &str,
        input: Value,
    ) -> Result<(), ScheduleError> {
        if schedule_id.is_empty() {
            return Err(ScheduleError::Invalid(
                "schedule_id: must not be empty".into(),
            ));
        }
        let request = OperationRequest {
            entity_id: entity_of(schedule_id).to_string(),
            operation_name: operation.to_string(),
            input,
        };
        let instance = self
            .client
            .schedule_new_orchestration(
                SCHEDULE_OPERATION_ORCHESTRATOR,
                &request,
                StartOptions::default(),
            )
            .await?;
        let done = match self
            .client
            .wait_for_instance_completion(&instance, false, self.timeout)
            .await
        {
            Ok(done) => done,
            Err(Error::DeadlineExceeded(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(done) = done.filter(|d| d.runtime_status.is_terminal()) else {
            return Err(ScheduleError::TimedOut {
                schedule_id: schedule_id.to_string(),
                operation: operation.to_string(),
                timeout: self.timeout,
            });
        };
        // The operation's instance has served its purpose; a failure to purge it is harmless.
        let _ = self.client.purge_instance(&instance, false).await;
        if done.runtime_status == OrchestrationStatus::Completed {
            return Ok(());
        }
        let (error_type, message) = done
            .failure_details
            .map(|f| (f.error_type, f.message))
            .unwrap_or_else(|| (String::new(), format!("ended {:?}", done.runtime_status)));
        Err(ScheduleError::Failed {
            schedule_id: schedule_id.to_string(),
            operation: operation.to_string(),
            error_type,
            message,
        })
    }
}
