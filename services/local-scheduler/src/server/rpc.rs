//! The `TaskHubSidecarService` methods.

use super::dispatch::{self, SPAN_SCOPE, dispatch_loop};
use super::*;
use crate::engine::HistoryView;

#[tonic::async_trait]
impl pb::TaskHubSidecarService for Service {
    async fn hello(&self, req: Request<()>) -> Res<()> {
        self.read(&req, |_, _| Ok(())).await
    }

    async fn start_instance(
        &self,
        req: Request<pb::CreateInstanceRequest>,
    ) -> Res<pb::CreateInstanceResponse> {
        let hub = hub_of(&req)?;
        let r = req.into_inner();
        let traced = self
            .shared
            .tracing()
            .then(|| {
                r.parent_trace_context
                    .as_ref()
                    .map(|t| (t.trace_parent.clone(), r.name.clone()))
            })
            .flatten();
        let started = std::time::SystemTime::now();
        let instance_id = self
            .shared
            .with_engine(|e| e.start_instance(&hub, r))
            .await?;
        if let Some((parent, name)) = traced {
            service_kit::telemetry::record_finished_span(
                SPAN_SCOPE,
                "TaskHubSidecarService/StartInstance".into(),
                opentelemetry::trace::SpanKind::Server,
                &parent,
                started,
                std::time::SystemTime::now(),
                vec![
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", "TaskHubSidecarService"),
                    KeyValue::new("rpc.method", "StartInstance"),
                    KeyValue::new("durabletask.type", "orchestration"),
                    KeyValue::new("durabletask.task.name", name),
                    KeyValue::new("durabletask.task.instance_id", instance_id.clone()),
                    KeyValue::new("operation.id", instance_id.clone()),
                ],
            );
        }
        Ok(Response::new(pb::CreateInstanceResponse { instance_id }))
    }

    async fn get_instance(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Res<pb::GetInstanceResponse> {
        let r = req.get_ref().clone();
        self.read(&req, |e, hub| {
            let state = e.get(hub, &r.instance_id, r.get_inputs_and_outputs)?;
            Ok(pb::GetInstanceResponse {
                exists: state.is_some(),
                orchestration_state: state,
            })
        })
        .await
    }

    async fn wait_for_instance_start(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Res<pb::GetInstanceResponse> {
        let pending = pb::OrchestrationStatus::Pending as i32;
        self.wait_for(req, |s| s.orchestration_status != pending)
            .await
    }

    async fn wait_for_instance_completion(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Res<pb::GetInstanceResponse> {
        self.wait_for(req, |s| crate::model::is_terminal(s.orchestration_status))
            .await
    }

    async fn raise_event(
        &self,
        req: Request<pb::RaiseEventRequest>,
    ) -> Res<pb::RaiseEventResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.raise_event(hub, r).map(|_| pb::RaiseEventResponse {})
        })
        .await
    }

    async fn terminate_instance(
        &self,
        req: Request<pb::TerminateRequest>,
    ) -> Res<pb::TerminateResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.terminate(hub, r).map(|_| pb::TerminateResponse {})
        })
        .await
    }

    async fn suspend_instance(&self, req: Request<pb::SuspendRequest>) -> Res<pb::SuspendResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.suspend(hub, &r.instance_id, r.reason)
                .map(|_| pb::SuspendResponse {})
        })
        .await
    }

    async fn resume_instance(&self, req: Request<pb::ResumeRequest>) -> Res<pb::ResumeResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.resume(hub, &r.instance_id, r.reason)
                .map(|_| pb::ResumeResponse {})
        })
        .await
    }

    async fn restart_instance(
        &self,
        req: Request<pb::RestartInstanceRequest>,
    ) -> Res<pb::RestartInstanceResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            e.restart(hub, &r.instance_id, r.restart_with_new_instance_id)
                .map(|instance_id| pb::RestartInstanceResponse { instance_id })
        })
        .await
    }

    async fn rewind_instance(
        &self,
        req: Request<pb::RewindInstanceRequest>,
    ) -> Res<pb::RewindInstanceResponse> {
        let r = req.get_ref().clone();
        // A finished subtree's histories are on disk: load them back before the engine needs
        // them (the rewound parent's, and its failed children's, which it rewinds too).
        let hub = hub_of(&req)?;
        // Observed: a history just moved to disk is there once this returns.
        let unloaded = self
            .shared
            .observe(|e| e.unloaded_subtree(&hub, &r.instance_id))
            .await?;
        for id in unloaded {
            if let Some(history) = self.shared.stored_history(&hub, &id)? {
                self.shared.quiet(|e| e.hydrate(&hub, &id, history));
            }
        }
        self.op(&req, |e, hub| {
            e.rewind(hub, &r.instance_id, r.reason)
                .map(|_| pb::RewindInstanceResponse {})
        })
        .await
    }

    async fn query_instances(
        &self,
        req: Request<pb::QueryInstancesRequest>,
    ) -> Res<pb::QueryInstancesResponse> {
        let q = req.get_ref().query.clone().unwrap_or_default();
        self.read(&req, |e, hub| e.query(hub, &q)).await
    }

    async fn list_instance_ids(
        &self,
        req: Request<pb::ListInstanceIdsRequest>,
    ) -> Res<pb::ListInstanceIdsResponse> {
        let r = req.get_ref().clone();
        self.read(&req, |e, hub| e.list_ids(hub, &r)).await
    }

    async fn purge_instances(
        &self,
        req: Request<pb::PurgeInstancesRequest>,
    ) -> Res<pb::PurgeInstancesResponse> {
        use pb::purge_instances_request::Request as R;
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| {
            let deleted = match r.request {
                Some(R::InstanceId(id)) => e.purge_one(hub, &id, r.recursive)?,
                Some(R::PurgeInstanceFilter(f)) => e.purge_filter(hub, &f, r.recursive)?,
                Some(R::InstanceBatch(b)) => {
                    if b.instance_ids.len() > 500 {
                        return Err(EngineError::invalid_argument(
                            "at most 500 instance ids per batch purge",
                        ));
                    }
                    let mut n = 0;
                    for id in b.instance_ids {
                        n += e.purge_one(hub, &id, r.recursive).unwrap_or(0);
                    }
                    n
                }
                None => {
                    return Err(EngineError::invalid_argument(
                        "purge needs an instance id, a filter or a batch",
                    ));
                }
            };
            Ok(pb::PurgeInstancesResponse {
                deleted_instance_count: deleted,
                is_complete: Some(true),
            })
        })
        .await
    }

    /// The history in chunks of at most about 256 KiB, as DTS serves it.
    async fn stream_instance_history(
        &self,
        req: Request<pb::StreamInstanceHistoryRequest>,
    ) -> Res<WorkStream<pb::HistoryChunk>> {
        let r = req.get_ref().clone();
        let not_found = || {
            Status::not_found(format!(
                "no instance '{}' (or not that execution)",
                r.instance_id
            ))
        };
        let view = self
            .read(&req, |e, hub| {
                e.history(hub, &r.instance_id, r.execution_id.as_deref())
            })
            .await?
            .into_inner()
            .ok_or_else(not_found)?;
        let events = match view {
            HistoryView::Loaded(events) => events,
            HistoryView::OnDisk => self
                .shared
                .stored_history(&hub_of(&req)?, &r.instance_id)?
                .ok_or_else(not_found)?,
        };
        let chunks = history_chunks(events, HISTORY_CHUNK_BYTES);
        Ok(Response::new(Box::pin(tokio_stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn get_work_items(&self, req: Request<pb::GetWorkItemsRequest>) -> Res<WorkStream> {
        let hub = hub_of(&req)?;
        self.read(&req, |_, _| Ok(())).await?;
        let worker_id = worker_id_of(&req);
        let r = req.into_inner();
        let limit = |n: i32| if n > 0 { n as usize } else { 1000 };
        let max_orch = limit(r.max_concurrent_orchestration_work_items);
        let max_act = limit(r.max_concurrent_activity_work_items);
        let max_ent = limit(r.max_concurrent_entity_work_items);
        let filter = StreamFilter::from_request(r.work_item_filters.as_ref());
        let stream_id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(256);
        let shared = self.shared.clone();
        let draining = shared.open_stream(stream_id, &hub, worker_id.clone());
        tracing::info!(stream_id, %hub, worker_id = worker_id.as_deref().unwrap_or(""), max_orch, max_act, "worker connected");
        tokio::spawn(async move {
            let limits = dispatch::StreamLimits {
                orchestrations: max_orch,
                activities: max_act,
                entities: max_ent,
            };
            dispatch_loop(&shared, &hub, stream_id, limits, &filter, &draining, tx).await;
            shared.close_stream(stream_id);
            // The worker went away while holding these (not our own shutdown): lost dispatches.
            let lost = !shared.shutdown.is_cancelled();
            let released = shared
                .with_engine(|e| {
                    let r = e.release_stream(stream_id, lost);
                    e.forget_stream(stream_id);
                    Ok::<_, EngineError>(r)
                })
                .await
                .unwrap_or_default();
            shared
                .counters
                .redelivered
                .fetch_add(released.requeued as u64, Ordering::Relaxed);
            for p in &released.poisoned {
                match p.kind {
                    "orchestration" => &shared.counters.poisoned_orchestrations,
                    _ => &shared.counters.poisoned_activities,
                }
                .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    kind = p.kind,
                    name = %p.name,
                    instance_id = %p.instance_id,
                    dispatches = p.dispatches,
                    "poison work item: its worker was lost {} times while running it; failed instead of dispatched again (max_dispatches)",
                    p.dispatches
                );
            }
            tracing::info!(
                stream_id,
                requeued = released.requeued,
                poisoned = released.poisoned.len(),
                "worker disconnected; its in-flight work items are queued again"
            );
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn complete_activity_task(
        &self,
        req: Request<pb::ActivityResponse>,
    ) -> Res<pb::CompleteTaskResponse> {
        let hub = hub_of(&req)?;
        let r = req.into_inner();
        self.shared
            .with_engine(|e| e.complete_activity(&hub, r))
            .await?;
        self.shared
            .counters
            .activities_completed
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn complete_orchestrator_task(
        &self,
        req: Request<pb::OrchestratorResponse>,
    ) -> Res<pb::CompleteTaskResponse> {
        let hub = hub_of(&req)?;
        let r = req.into_inner();
        #[allow(deprecated)]
        let partial = r.is_partial;
        self.shared
            .with_engine(|e| e.complete_orchestration(&hub, r))
            .await?;
        if partial {
            return Ok(Response::new(pb::CompleteTaskResponse {}));
        }
        self.shared
            .counters
            .orchestrations_completed
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn abandon_task_activity_work_item(
        &self,
        req: Request<pb::AbandonActivityTaskRequest>,
    ) -> Res<pb::AbandonActivityTaskResponse> {
        let token = req.get_ref().completion_token.clone();
        self.abandon(&req, &token).await?;
        Ok(Response::new(pb::AbandonActivityTaskResponse {}))
    }

    async fn abandon_task_orchestrator_work_item(
        &self,
        req: Request<pb::AbandonOrchestrationTaskRequest>,
    ) -> Res<pb::AbandonOrchestrationTaskResponse> {
        let token = req.get_ref().completion_token.clone();
        self.abandon(&req, &token).await?;
        Ok(Response::new(pb::AbandonOrchestrationTaskResponse {}))
    }

    async fn signal_entity(
        &self,
        req: Request<pb::SignalEntityRequest>,
    ) -> Res<pb::SignalEntityResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| e.signal_entity(hub, r)).await?;
        Ok(Response::new(pb::SignalEntityResponse {}))
    }

    async fn get_entity(&self, req: Request<pb::GetEntityRequest>) -> Res<pb::GetEntityResponse> {
        self.read(&req, |e, hub| e.get_entity(hub, req.get_ref()))
            .await
    }

    async fn query_entities(
        &self,
        req: Request<pb::QueryEntitiesRequest>,
    ) -> Res<pb::QueryEntitiesResponse> {
        let query = req.get_ref().query.clone().unwrap_or_default();
        self.read(&req, |e, hub| e.query_entities(hub, &query))
            .await
    }

    async fn clean_entity_storage(
        &self,
        req: Request<pb::CleanEntityStorageRequest>,
    ) -> Res<pb::CleanEntityStorageResponse> {
        self.op(&req, |e, hub| e.clean_entity_storage(hub, req.get_ref()))
            .await
    }

    async fn complete_entity_task(
        &self,
        req: Request<pb::EntityBatchResult>,
    ) -> Res<pb::CompleteTaskResponse> {
        let r = req.get_ref().clone();
        self.op(&req, |e, hub| e.complete_entity(hub, r)).await?;
        self.shared
            .counters
            .entities_completed
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn abandon_task_entity_work_item(
        &self,
        req: Request<pb::AbandonEntityTaskRequest>,
    ) -> Res<pb::AbandonEntityTaskResponse> {
        let token = req.get_ref().completion_token.clone();
        self.op(&req, |e, _| e.abandon_entity(&token)).await?;
        self.shared
            .counters
            .abandoned
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::AbandonEntityTaskResponse {}))
    }
}

/// Upper size of one `HistoryChunk` (the .NET DTS host uses about the same).
const HISTORY_CHUNK_BYTES: usize = 256 * 1024;

/// Splits a history into chunks of at most `max` encoded bytes (an event larger than that gets
/// a chunk of its own); an empty history is one empty chunk, so the client sees the instance.
fn history_chunks(events: Vec<pb::HistoryEvent>, max: usize) -> Vec<pb::HistoryChunk> {
    use prost::Message;
    let mut chunks = vec![pb::HistoryChunk::default()];
    let mut size = 0;
    for e in events {
        let n = e.encoded_len();
        let last = chunks.last_mut().expect("at least one chunk");
        if size + n > max && !last.events.is_empty() {
            chunks.push(pb::HistoryChunk::default());
            size = 0;
        }
        size += n;
        chunks
            .last_mut()
            .expect("at least one chunk")
            .events
            .push(e);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_are_cut_into_bounded_chunks_in_order() {
        let events: Vec<pb::HistoryEvent> = (0..100)
            .map(|i| pb::HistoryEvent {
                event_id: i,
                timestamp: None,
                event_type: Some(pb::history_event::EventType::EventRaised(
                    pb::EventRaisedEvent {
                        name: "e".into(),
                        input: Some("x".repeat(1000)),
                    },
                )),
            })
            .collect();
        let chunks = history_chunks(events, 10_000);
        assert!(chunks.len() >= 10, "{}", chunks.len());
        use prost::Message;
        assert!(chunks.iter().all(|c| c.encoded_len() <= 10_000 + 16));
        let ids: Vec<i32> = chunks
            .iter()
            .flat_map(|c| &c.events)
            .map(|e| e.event_id)
            .collect();
        assert_eq!(ids, (0..100).collect::<Vec<_>>());
        assert_eq!(
            history_chunks(vec![], 10).len(),
            1,
            "an empty history is one empty chunk"
        );
    }
}
