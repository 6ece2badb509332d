//! An in-process fake scheduler (tonic server) that records what the SDK sends and lets a test
//! feed work items into the stream.
#![allow(clippy::unwrap_used)] // test code: a poisoned lock should stop the test here

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durabletask::proto as pb;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

#[derive(Default)]
pub struct Inner {
    pub calls: Mutex<Vec<(String, MetadataMap)>>,
    pub stream_requests: Mutex<Vec<pb::GetWorkItemsRequest>>,
    pub streams: Mutex<Vec<mpsc::Sender<Result<pb::WorkItem, Status>>>>,
    pub activity_completions: Mutex<Vec<pb::ActivityResponse>>,
    pub orchestrator_completions: Mutex<Vec<pb::OrchestratorResponse>>,
    pub abandoned: Mutex<Vec<String>>,
    pub starts: Mutex<Vec<pb::CreateInstanceRequest>>,
    /// When set, unary client calls fail with this status.
    pub fail_with: Mutex<Option<Status>>,
    /// When set, completions are answered with this status (stale token simulation).
    pub fail_completions_with: Mutex<Option<Status>>,
    pub changed: Notify,
}

#[derive(Clone, Default)]
pub struct Fake(pub Arc<Inner>);

impl Fake {
    fn record<T>(&self, method: &str, req: &Request<T>) -> Result<(), Status> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push((method.to_string(), req.metadata().clone()));
        self.0.changed.notify_waiters();
        Ok(())
    }

    fn check_fail(&self) -> Result<(), Status> {
        match self.0.fail_with.lock().unwrap().clone() {
            Some(s) => Err(s),
            None => Ok(()),
        }
    }

    /// Sends a work item into the newest stream.
    pub async fn push(&self, item: pb::WorkItem) {
        let tx = self
            .0
            .streams
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a stream is open");
        tx.send(Ok(item)).await.expect("stream alive");
    }

    /// Ends the newest stream with an error status.
    pub async fn break_stream(&self, status: Status) {
        let tx = self
            .0
            .streams
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a stream is open");
        let _ = tx.send(Err(status)).await;
        self.0.streams.lock().unwrap().clear();
    }

    /// Ends every stream gracefully (status OK).
    pub fn close_streams(&self) {
        self.0.streams.lock().unwrap().clear();
    }

    pub fn stream_count(&self) -> usize {
        self.0.stream_requests.lock().unwrap().len()
    }

    pub fn calls_named(&self, method: &str) -> Vec<MetadataMap> {
        self.0
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, md)| md.clone())
            .collect()
    }

    /// Polls `cond` until it holds or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&Inner) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(&self.0) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::TaskHubSidecarService for Fake {
    async fn hello(&self, req: Request<()>) -> Res<()> {
        self.record("Hello", &req)?;
        Ok(Response::new(()))
    }

    async fn start_instance(
        &self,
        req: Request<pb::CreateInstanceRequest>,
    ) -> Res<pb::CreateInstanceResponse> {
        self.record("StartInstance", &req)?;
        self.check_fail()?;
        let r = req.into_inner();
        let id = r.instance_id.clone();
        self.0.starts.lock().unwrap().push(r);
        Ok(Response::new(pb::CreateInstanceResponse {
            instance_id: id,
        }))
    }

    async fn get_instance(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Res<pb::GetInstanceResponse> {
        self.record("GetInstance", &req)?;
        self.check_fail()?;
        Ok(Response::new(pb::GetInstanceResponse {
            exists: false,
            orchestration_state: None,
        }))
    }

    async fn wait_for_instance_completion(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Res<pb::GetInstanceResponse> {
        self.record("WaitForInstanceCompletion", &req)?;
        // Never completes: the caller's deadline must end the call.
        std::future::pending::<()>().await;
        unreachable!()
    }

    async fn get_work_items(
        &self,
        req: Request<pb::GetWorkItemsRequest>,
    ) -> Res<std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WorkItem, Status>> + Send>>>
    {
        self.record("GetWorkItems", &req)?;
        let (tx, rx) = mpsc::channel(1024);
        self.0.streams.lock().unwrap().push(tx);
        self.0
            .stream_requests
            .lock()
            .unwrap()
            .push(req.into_inner());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn complete_activity_task(
        &self,
        req: Request<pb::ActivityResponse>,
    ) -> Res<pb::CompleteTaskResponse> {
        self.record("CompleteActivityTask", &req)?;
        if let Some(s) = self.0.fail_completions_with.lock().unwrap().clone() {
            return Err(s);
        }
        self.0
            .activity_completions
            .lock()
            .unwrap()
            .push(req.into_inner());
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn complete_orchestrator_task(
        &self,
        req: Request<pb::OrchestratorResponse>,
    ) -> Res<pb::CompleteTaskResponse> {
        self.record("CompleteOrchestratorTask", &req)?;
        if let Some(s) = self.0.fail_completions_with.lock().unwrap().clone() {
            return Err(s);
        }
        self.0
            .orchestrator_completions
            .lock()
            .unwrap()
            .push(req.into_inner());
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn abandon_task_activity_work_item(
        &self,
        req: Request<pb::AbandonActivityTaskRequest>,
    ) -> Res<pb::AbandonActivityTaskResponse> {
        self.record("AbandonTaskActivityWorkItem", &req)?;
        self.0
            .abandoned
            .lock()
            .unwrap()
            .push(req.into_inner().completion_token);
        Ok(Response::new(pb::AbandonActivityTaskResponse {}))
    }

    async fn abandon_task_orchestrator_work_item(
        &self,
        req: Request<pb::AbandonOrchestrationTaskRequest>,
    ) -> Res<pb::AbandonOrchestrationTaskResponse> {
        self.record("AbandonTaskOrchestratorWorkItem", &req)?;
        self.0
            .abandoned
            .lock()
            .unwrap()
            .push(req.into_inner().completion_token);
        Ok(Response::new(pb::AbandonOrchestrationTaskResponse {}))
    }
}

/// Serves the fake on a random loopback port.
pub async fn serve(fake: Fake) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pb::TaskHubSidecarServiceServer::new(fake))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .expect("fake server");
    });
    addr
}

pub fn activity_item(token: &str, name: &str, input: Option<&str>) -> pb::WorkItem {
    pb::WorkItem {
        request: Some(pb::work_item::Request::ActivityRequest(
            pb::ActivityRequest {
                name: name.into(),
                version: None,
                input: input.map(str::to_string),
                orchestration_instance: Some(pb::OrchestrationInstance {
                    instance_id: "inst".into(),
                    execution_id: None,
                }),
                task_id: 3,
                parent_trace_context: None,
                tags: Default::default(),
                dispatch_count: 1,
            },
        )),
        completion_token: token.into(),
    }
}

pub fn health_ping() -> pb::WorkItem {
    pb::WorkItem {
        request: Some(pb::work_item::Request::HealthPing(pb::HealthPing {})),
        completion_token: String::new(),
    }
}
