//! The management client: start, inspect, wait for, signal and clean up orchestrations.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use durabletask_proto as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::Error;
use crate::connection::{Caller, Connection, MAX_DECODE_BYTES, MetadataInterceptor};
use crate::entity::{CleanEntityStorageResult, EntityId, EntityMetadata, EntityPage, EntityQuery};
use crate::types::{
    OrchestrationMetadata, OrchestrationStatus, TraceContext, statuses_to_wire, to_timestamp,
};

pub(crate) type GrpcClient =
    pb::TaskHubSidecarServiceClient<InterceptedService<Channel, MetadataInterceptor>>;

/// Options for [`Client::schedule_new_orchestration`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Instance id; a random one (32 hex chars) when `None`.
    pub instance_id: Option<String>,
    pub version: Option<String>,
    /// Do not run before this time.
    pub scheduled_start: Option<DateTime<Utc>>,
    pub tags: HashMap<String, String>,
    pub parent_trace_context: Option<TraceContext>,
    /// Statuses of an existing instance with the same id that may be replaced. `None` sends no
    /// policy: DTS then refuses (`ALREADY_EXISTS`) while the instance is pending, running or suspended.
    pub replaceable_statuses: Option<Vec<OrchestrationStatus>>,
}

/// Filter for [`Client::query_instances`].
#[derive(Debug, Clone, Default)]
pub struct InstanceQuery {
    pub runtime_status: Vec<OrchestrationStatus>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub instance_id_prefix: Option<String>,
    pub page_size: Option<u32>,
    pub continuation_token: Option<String>,
    pub fetch_inputs_and_outputs: bool,
}

/// One page of query results; `continuation_token` is `None` on the last page.
#[derive(Debug, Clone)]
pub struct InstancePage {
    pub instances: Vec<OrchestrationMetadata>,
    pub continuation_token: Option<String>,
}

/// Filter for [`Client::purge_instances`].
#[derive(Debug, Clone, Default)]
pub struct PurgeFilter {
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub runtime_status: Vec<OrchestrationStatus>,
    pub timeout: Option<Duration>,
}

/// Result of a purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeResult {
    pub deleted_instance_count: u32,
    /// `false` when a filter purge stopped at its timeout and more instances remain.
    pub is_complete: bool,
}

/// A task hub client. Cheap to clone; all clones share one HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    /// Its calls' futures are boxed where they are awaited (`Box::pin(self.grpc...)`): a tonic
    /// call is a future of about 3 KB, which would make each caller's future as large, and
    /// callers' futures are moved (boxed by middleware, spawned) several times per request.
    grpc: GrpcClient,
    payloads: Option<crate::payload::Payloads>,
    /// Whether tokens in answers are read back (see [`Client::leaving_tokens_unread`]).
    read_tokens: bool,
}

impl Client {
    pub fn new(conn: &Connection) -> Self {
        let grpc = pb::TaskHubSidecarServiceClient::with_interceptor(
            conn.channel(),
            conn.interceptor(Caller::Client, None),
        )
        .max_decoding_message_size(MAX_DECODE_BYTES)
        .max_encoding_message_size(MAX_DECODE_BYTES);
        Self {
            grpc,
            payloads: None,
            read_tokens: true,
        }
    }

    /// With large payloads (the claim check): inputs, event data and entity inputs over the
    /// threshold are stored and sent as tokens, and tokens in what comes back are read back.
    pub fn with_payloads(mut self, payloads: crate::payload::Payloads) -> Self {
        self.payloads = Some(payloads);
        self
    }

    /// Stores large payloads of requests, but leaves the tokens in answers as they are (their
    /// `serialized_*` fields hold `blob:v1:…`): for a caller that streams large payloads from the
    /// store itself rather than hold them whole.
    pub fn leaving_tokens_unread(mut self) -> Self {
        self.read_tokens = false;
        self
    }

    async fn outgoing<M: prost::Message + Default>(
        &self,
        msg: &mut M,
        type_name: &str,
        instance_id: &str,
    ) -> Result<(), Error> {
        if let Some(p) = &self.payloads {
            Box::pin(p.externalize(msg, type_name, Some(instance_id))).await?;
        }
        Ok(())
    }

    async fn incoming<M: prost::Message + Default>(
        &self,
        msg: &mut M,
        type_name: &str,
    ) -> Result<(), Error> {
        if let Some(p) = self.payloads.as_ref().filter(|_| self.read_tokens) {
            Box::pin(p.internalize(msg, type_name)).await?;
        }
        Ok(())
    }

    /// Checks that the scheduler answers and knows our task hub.
    pub async fn hello(&self, timeout: Duration) -> Result<(), Error> {
        let mut req = tonic::Request::new(());
        req.set_timeout(timeout);
        Box::pin(self.grpc.clone().hello(req)).await?;
        Ok(())
    }

    /// Starts an orchestration and returns its instance id.
    pub async fn schedule_new_orchestration<I: serde::Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
        options: StartOptions,
    ) -> Result<String, Error> {
        let input = serde_json::to_string(input)?;
        self.schedule_new_orchestration_raw(name, Some(input), options)
            .await
    }

    /// Like [`Client::schedule_new_orchestration`] with the input already serialized as JSON.
    pub async fn schedule_new_orchestration_raw(
        &self,
        name: &str,
        input: Option<String>,
        options: StartOptions,
    ) -> Result<String, Error> {
        let instance_id = options
            .instance_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let mut req = pb::CreateInstanceRequest {
            instance_id,
            name: name.to_string(),
            version: options.version,
            input,
            scheduled_start_timestamp: options.scheduled_start.map(to_timestamp),
            orchestration_id_reuse_policy: options.replaceable_statuses.map(|st| {
                pb::OrchestrationIdReusePolicy {
                    replaceable_status: statuses_to_wire(st),
                }
            }),
            execution_id: None,
            tags: options.tags,
            parent_trace_context: options
                .parent_trace_context
                .as_ref()
                .map(TraceContext::to_proto),
            request_time: Some(to_timestamp(Utc::now())),
        };
        let id = req.instance_id.clone();
        self.outgoing(&mut req, "CreateInstanceRequest", &id)
            .await?;
        let resp = Box::pin(self.grpc.clone().start_instance(req))
            .await?
            .into_inner();
        Ok(resp.instance_id)
    }

    /// Current state, or `None` when there is no such instance.
    pub async fn get_instance(
        &self,
        instance_id: &str,
        fetch_payloads: bool,
    ) -> Result<Option<OrchestrationMetadata>, Error> {
        let req = pb::GetInstanceRequest {
            instance_id: instance_id.to_string(),
            get_inputs_and_outputs: fetch_payloads,
        };
        let mut resp = Box::pin(self.grpc.clone().get_instance(req))
            .await?
            .into_inner();
        self.incoming(&mut resp, "GetInstanceResponse").await?;
        Ok(state_of(resp))
    }

    /// Waits until the instance has started (left `PENDING`), up to `timeout`.
    pub async fn wait_for_instance_start(
        &self,
        instance_id: &str,
        fetch_payloads: bool,
        timeout: Duration,
    ) -> Result<Option<OrchestrationMetadata>, Error> {
        let mut req = tonic::Request::new(pb::GetInstanceRequest {
            instance_id: instance_id.to_string(),
            get_inputs_and_outputs: fetch_payloads,
        });
        req.set_timeout(timeout);
        let mut resp = Box::pin(self.grpc.clone().wait_for_instance_start(req))
            .await?
            .into_inner();
        self.incoming(&mut resp, "GetInstanceResponse").await?;
        Ok(state_of(resp))
    }

    /// Long-polls until the instance is completed, failed or terminated, up to `timeout`
    /// ([`Error::DeadlineExceeded`] when it is still running then).
    pub async fn wait_for_instance_completion(
        &self,
        instance_id: &str,
        fetch_payloads: bool,
        timeout: Duration,
    ) -> Result<Option<OrchestrationMetadata>, Error> {
        let mut req = tonic::Request::new(pb::GetInstanceRequest {
            instance_id: instance_id.to_string(),
            get_inputs_and_outputs: fetch_payloads,
        });
        req.set_timeout(timeout);
        let mut resp = Box::pin(self.grpc.clone().wait_for_instance_completion(req))
            .await?
            .into_inner();
        self.incoming(&mut resp, "GetInstanceResponse").await?;
        Ok(state_of(resp))
    }

    pub async fn raise_event<I: serde::Serialize + ?Sized>(
        &self,
        instance_id: &str,
        event_name: &str,
        data: &I,
    ) -> Result<(), Error> {
        let mut req = pb::RaiseEventRequest {
            instance_id: instance_id.to_string(),
            name: event_name.to_string(),
            input: Some(serde_json::to_string(data)?),
        };
        self.outgoing(&mut req, "RaiseEventRequest", instance_id)
            .await?;
        Box::pin(self.grpc.clone().raise_event(req)).await?;
        Ok(())
    }

    /// Terminates an instance; `output` becomes its output. `recursive` also terminates sub-orchestrations.
    pub async fn terminate<O: serde::Serialize + ?Sized>(
        &self,
        instance_id: &str,
        output: &O,
        recursive: bool,
    ) -> Result<(), Error> {
        let mut req = pb::TerminateRequest {
            instance_id: instance_id.to_string(),
            output: Some(serde_json::to_string(output)?),
            recursive,
        };
        self.outgoing(&mut req, "TerminateRequest", instance_id)
            .await?;
        Box::pin(self.grpc.clone().terminate_instance(req)).await?;
        Ok(())
    }

    pub async fn suspend(&self, instance_id: &str, reason: Option<&str>) -> Result<(), Error> {
        let req = pb::SuspendRequest {
            instance_id: instance_id.to_string(),
            reason: reason.map(str::to_string),
        };
        Box::pin(self.grpc.clone().suspend_instance(req)).await?;
        Ok(())
    }

    pub async fn resume(&self, instance_id: &str, reason: Option<&str>) -> Result<(), Error> {
        let req = pb::ResumeRequest {
            instance_id: instance_id.to_string(),
            reason: reason.map(str::to_string),
        };
        Box::pin(self.grpc.clone().resume_instance(req)).await?;
        Ok(())
    }

    /// Re-runs a failed instance from its last failure point.
    pub async fn rewind(&self, instance_id: &str, reason: Option<&str>) -> Result<(), Error> {
        let req = pb::RewindInstanceRequest {
            instance_id: instance_id.to_string(),
            reason: reason.map(str::to_string),
        };
        Box::pin(self.grpc.clone().rewind_instance(req)).await?;
        Ok(())
    }

    /// Starts the instance again with its original input; returns the (possibly new) instance id.
    pub async fn restart(&self, instance_id: &str, new_instance_id: bool) -> Result<String, Error> {
        let req = pb::RestartInstanceRequest {
            instance_id: instance_id.to_string(),
            restart_with_new_instance_id: new_instance_id,
        };
        Ok(Box::pin(self.grpc.clone().restart_instance(req))
            .await?
            .into_inner()
            .instance_id)
    }

    /// Deletes one terminal instance (and its sub-orchestrations when `recursive`).
    pub async fn purge_instance(
        &self,
        instance_id: &str,
        recursive: bool,
    ) -> Result<PurgeResult, Error> {
        let req = pb::PurgeInstancesRequest {
            request: Some(pb::purge_instances_request::Request::InstanceId(
                instance_id.to_string(),
            )),
            recursive,
            is_orchestration: true,
        };
        Ok(purge_result(
            Box::pin(self.grpc.clone().purge_instances(req))
                .await?
                .into_inner(),
        ))
    }

    /// The history of an instance's current execution, in order, each event with its timestamp
    /// (`StreamInstanceHistory`, read to the end). `None` when there is no such instance.
    pub async fn get_history(
        &self,
        instance_id: &str,
    ) -> Result<Option<Vec<pb::HistoryEvent>>, Error> {
        let req = pb::StreamInstanceHistoryRequest {
            instance_id: instance_id.to_string(),
            execution_id: None,
            for_work_item_processing: false,
        };
        let mut stream = match Box::pin(self.grpc.clone().stream_instance_history(req)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        let mut events = Vec::new();
        while let Some(mut chunk) = stream.message().await? {
            self.incoming(&mut chunk, "HistoryChunk").await?;
            events.extend(chunk.events);
        }
        Ok(Some(events))
    }

    /// Deletes every terminal instance matching the filter.
    pub async fn purge_instances(
        &self,
        filter: PurgeFilter,
        recursive: bool,
    ) -> Result<PurgeResult, Error> {
        let req = pb::PurgeInstancesRequest {
            request: Some(pb::purge_instances_request::Request::PurgeInstanceFilter(
                pb::PurgeInstanceFilter {
                    created_time_from: filter.created_from.map(to_timestamp),
                    created_time_to: filter.created_to.map(to_timestamp),
                    runtime_status: statuses_to_wire(filter.runtime_status),
                    timeout: filter.timeout.and_then(|t| pb::Duration::try_from(t).ok()),
                },
            )),
            recursive,
            is_orchestration: true,
        };
        Ok(purge_result(
            Box::pin(self.grpc.clone().purge_instances(req))
                .await?
                .into_inner(),
        ))
    }

    /// One page of instances; pass the returned token back for the next page.
    pub async fn query_instances(&self, query: InstanceQuery) -> Result<InstancePage, Error> {
        let req = pb::QueryInstancesRequest {
            query: Some(pb::InstanceQuery {
                runtime_status: statuses_to_wire(query.runtime_status),
                created_time_from: query.created_from.map(to_timestamp),
                created_time_to: query.created_to.map(to_timestamp),
                task_hub_names: vec![],
                max_instance_count: query
                    .page_size
                    .map_or(100, |p| p.min(i32::MAX as u32) as i32),
                continuation_token: query.continuation_token,
                instance_id_prefix: query.instance_id_prefix,
                fetch_inputs_and_outputs: query.fetch_inputs_and_outputs,
            }),
        };
        let mut resp = Box::pin(self.grpc.clone().query_instances(req))
            .await?
            .into_inner();
        self.incoming(&mut resp, "QueryInstancesResponse").await?;
        let instances = resp
            .orchestration_state
            .into_iter()
            .map(OrchestrationMetadata::from_proto)
            .collect();
        // Servers differ in how they say "last page": absent, empty, or "0".
        let continuation_token = resp
            .continuation_token
            .filter(|t| !t.is_empty() && t != "0");
        Ok(InstancePage {
            instances,
            continuation_token,
        })
    }
}

/// Durable entities.
impl Client {
    /// Queues `operation` for an entity, now or at `at` (one-way: no result comes back).
    pub async fn signal_entity<I: serde::Serialize + ?Sized>(
        &self,
        entity: &EntityId,
        operation: &str,
        input: &I,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), Error> {
        let mut req = pb::SignalEntityRequest {
            instance_id: entity.to_string(),
            name: operation.to_string(),
            input: Some(serde_json::to_string(input)?),
            request_id: uuid::Uuid::new_v4().to_string(),
            scheduled_time: at.map(to_timestamp),
            parent_trace_context: None,
            request_time: Some(to_timestamp(Utc::now())),
        };
        let id = req.instance_id.clone();
        self.outgoing(&mut req, "SignalEntityRequest", &id).await?;
        Box::pin(self.grpc.clone().signal_entity(req)).await?;
        Ok(())
    }

    /// The entity, or `None` when it has no state.
    pub async fn get_entity(
        &self,
        entity: &EntityId,
        include_state: bool,
    ) -> Result<Option<EntityMetadata>, Error> {
        let req = pb::GetEntityRequest {
            instance_id: entity.to_string(),
            include_state,
        };
        let mut resp = Box::pin(self.grpc.clone().get_entity(req))
            .await?
            .into_inner();
        self.incoming(&mut resp, "GetEntityResponse").await?;
        if !resp.exists {
            return Ok(None);
        }
        resp.entity
            .map(|m| {
                let id = m.instance_id.clone();
                EntityMetadata::from_proto(m)
                    .ok_or_else(|| Error::Protocol(format!("entity id '{id}' is not '@name@key'")))
            })
            .transpose()
    }

    /// One page of entities; pass the returned token back for the next page.
    pub async fn query_entities(&self, query: EntityQuery) -> Result<EntityPage, Error> {
        let req = pb::QueryEntitiesRequest {
            query: Some(pb::EntityQuery {
                instance_id_starts_with: query.instance_id_starts_with,
                last_modified_from: query.last_modified_from.map(to_timestamp),
                last_modified_to: query.last_modified_to.map(to_timestamp),
                include_state: query.include_state,
                include_transient: query.include_transient,
                page_size: query.page_size.map(|p| p.min(i32::MAX as u32) as i32),
                continuation_token: query.continuation_token,
            }),
        };
        let mut resp = Box::pin(self.grpc.clone().query_entities(req))
            .await?
            .into_inner();
        self.incoming(&mut resp, "QueryEntitiesResponse").await?;
        Ok(EntityPage {
            entities: resp
                .entities
                .into_iter()
                .filter_map(EntityMetadata::from_proto)
                .collect(),
            continuation_token: resp
                .continuation_token
                .filter(|t| !t.is_empty() && t != "0"),
        })
    }

    /// Removes entities that hold nothing and releases locks whose holder is gone, every page.
    pub async fn clean_entity_storage(
        &self,
        remove_empty_entities: bool,
        release_orphaned_locks: bool,
    ) -> Result<CleanEntityStorageResult, Error> {
        let mut total = CleanEntityStorageResult {
            empty_entities_removed: 0,
            orphaned_locks_released: 0,
        };
        let mut continuation_token = None;
        loop {
            let req = pb::CleanEntityStorageRequest {
                continuation_token: continuation_token.take(),
                remove_empty_entities,
                release_orphaned_locks,
            };
            let resp = Box::pin(self.grpc.clone().clean_entity_storage(req))
                .await?
                .into_inner();
            total.empty_entities_removed += resp.empty_entities_removed.max(0) as u32;
            total.orphaned_locks_released += resp.orphaned_locks_released.max(0) as u32;
            match resp
                .continuation_token
                .filter(|t| !t.is_empty() && t != "0")
            {
                Some(t) => continuation_token = Some(t),
                None => return Ok(total),
            }
        }
    }
}

fn state_of(resp: pb::GetInstanceResponse) -> Option<OrchestrationMetadata> {
    if !resp.exists {
        return None;
    }
    resp.orchestration_state
        .map(OrchestrationMetadata::from_proto)
}

fn purge_result(r: pb::PurgeInstancesResponse) -> PurgeResult {
    PurgeResult {
        deleted_instance_count: r.deleted_instance_count.max(0) as u32,
        is_complete: r.is_complete.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, Fut: Future, F: Fn(A, B, C, D) -> Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn call_futures_stay_small() {
        // A tonic call alone is about 3 KB, and the start's was 7 KB with the payload store's:
        // both are boxed, so callers' futures, moved several times per request, stay small.
        for (name, size) in [
            (
                "schedule_new_orchestration_raw",
                future_size(&Client::schedule_new_orchestration_raw),
            ),
            (
                "wait_for_instance_completion",
                future_size(&Client::wait_for_instance_completion),
            ),
        ] {
            assert!(size <= 1_536, "{name}'s future is {size} bytes");
        }
    }
}
