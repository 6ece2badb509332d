//! The claim check in the worker: a work item's payload tokens are read back before it runs, and
//! its completion's large payloads stored before it is sent. A store that fails hands the item
//! back (another try may succeed); a payload that cannot be had at all (over the limit, a token
//! that names nothing) fails the orchestration, activity or entity operations with the reason,
//! so that no work item comes back forever.

use std::sync::Arc;

use durabletask_proto as pb;
use prost::Message;

use super::Shared;
use crate::entity::EntityFn;
use crate::payload::PayloadError;
use crate::types::FailureDetails;

/// What a payload problem does to the work item.
pub(super) enum PayloadOutcome {
    /// Hand the item back; a later try may succeed.
    Retry(PayloadError),
    /// Fail it with this reason.
    Fail(FailureDetails),
}

fn outcome(e: PayloadError) -> PayloadOutcome {
    if e.is_transient() {
        return PayloadOutcome::Retry(e);
    }
    let kind = match e {
        PayloadError::TooLarge { .. } => "PayloadTooLarge",
        _ => "PayloadUnavailable",
    };
    PayloadOutcome::Fail(FailureDetails::new(kind, e.to_string()).non_retriable())
}

impl Shared {
    /// Reads back the payload tokens of an incoming work item (nothing without a store).
    pub(super) async fn read_payloads<M: Message + Default>(
        &self,
        msg: &mut M,
        type_name: &str,
    ) -> Result<(), PayloadOutcome> {
        match &self.payloads {
            Some(p) => Box::pin(p.internalize(msg, type_name))
                .await
                .map_err(outcome),
            None => Ok(()),
        }
    }

    /// Stores the large payloads of an outgoing completion (nothing without a store).
    pub(super) async fn write_payloads<M: Message + Default>(
        &self,
        msg: &mut M,
        type_name: &str,
        instance_id: &str,
    ) -> Result<(), PayloadOutcome> {
        match &self.payloads {
            Some(p) => Box::pin(p.externalize(msg, type_name, Some(instance_id)))
                .await
                .map_err(outcome),
            None => Ok(()),
        }
    }

    /// A pause before a work item goes back for a store failure, so that an outage of the store
    /// is not a loop of dispatches (cut short when the worker stops).
    pub(super) async fn store_backoff(&self) {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            () = self.abort.cancelled() => {}
        }
    }

    pub(super) fn capabilities(&self) -> Vec<i32> {
        if self.payloads.is_some() {
            vec![pb::WorkerCapability::LargePayloads as i32]
        } else {
            vec![]
        }
    }
}

/// Every operation of the batch failed with `failure`, the state as it was.
pub(super) fn failed_batch(
    req: &pb::EntityRequest,
    token: String,
    failure: FailureDetails,
) -> pb::EntityBatchResult {
    let fail: Arc<EntityFn> = Arc::new(move |_, _| Err(failure.clone()));
    crate::entity::execute_batch(Some(fail.as_ref()), req, token)
}
