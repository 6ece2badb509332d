//! The SQLite store alone, on the durable path's writes: each operation of the sample (one
//! activity) is four writes of its instance (started; the activity scheduled; its result
//! delivered; completed) and an activity row put and deleted, 64 operations in flight, each
//! transaction holding one step of each (what group commit hands the writer at 64 connections).
//! Prints the writer's time (its transactions and checkpoints; not making the changes, which the
//! engine encodes under its lock) and the WAL frames (4 KiB pages) written per operation, with the
//! checkpoints as the journal makes them; frames per operation do not depend on the machine.
//!
//! `cargo bench -p local-scheduler --bench store_writes` (in `make bench`). No assertions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use durabletask_proto as pb;
use local_scheduler::model::{Change, InstanceRow, StoredInstance};
use local_scheduler::settings::Synchronous;
use local_scheduler::store::{SqliteStore, StoreOptions};

const OPERATIONS: usize = 20_000;
const IN_FLIGHT: usize = 64;
const HUB: &str = "default";

fn event(id: i32, kind: pb::history_event::EventType) -> pb::HistoryEvent {
    pb::HistoryEvent {
        event_id: id,
        timestamp: Some(prost_types::Timestamp {
            seconds: Utc::now().timestamp(),
            nanos: 0,
        }),
        event_type: Some(kind),
    }
}

/// The sample's instance at `step` (0: started .. 3: completed): its row, history and inbox.
fn instance(id: &str, step: usize) -> Change {
    use pb::history_event::EventType as E;
    let input = format!(r#"{{"operation_id":"{id}","processing_time":0}}"#);
    let output = format!(
        r#"{{"operation_id":"{id}","processed_at":1796600706.569726,"result":"Operation {id} completed successfully","status":"completed"}}"#
    );
    let started = event(
        -1,
        E::ExecutionStarted(pb::ExecutionStartedEvent {
            name: "async_http_api_orchestrator".into(),
            input: Some(input.clone()),
            orchestration_instance: Some(pb::OrchestrationInstance {
                instance_id: id.into(),
                execution_id: Some(uuid::Uuid::new_v4().simple().to_string()),
            }),
            ..Default::default()
        }),
    );
    let mut history = Vec::new();
    let mut inbox = Vec::new();
    match step {
        0 => inbox.push(started),
        _ => {
            history.push(event(-1, E::OrchestratorStarted(Default::default())));
            history.push(started);
            history.push(event(
                0,
                E::TaskScheduled(pb::TaskScheduledEvent {
                    name: "process_operation".into(),
                    input: Some(input.clone()),
                    ..Default::default()
                }),
            ));
            let completed = event(
                -1,
                E::TaskCompleted(pb::TaskCompletedEvent {
                    task_scheduled_id: 0,
                    result: Some(output.clone()),
                }),
            );
            match step {
                1 => {}
                2 => inbox.push(completed),
                _ => {
                    history.push(event(-1, E::OrchestratorStarted(Default::default())));
                    history.push(completed);
                    history.push(event(
                        1,
                        E::ExecutionCompleted(pb::ExecutionCompletedEvent {
                            orchestration_status: pb::OrchestrationStatus::Completed as i32,
                            result: Some(output.clone()),
                            failure_details: None,
                        }),
                    ));
                }
            }
        }
    }
    let now = Utc::now();
    let row = InstanceRow {
        instance_id: id.into(),
        execution_id: uuid::Uuid::new_v4().simple().to_string(),
        name: "async_http_api_orchestrator".into(),
        version: None,
        status: if step == 3 {
            pb::OrchestrationStatus::Completed as i32
        } else {
            pb::OrchestrationStatus::Running as i32
        },
        created: now,
        last_updated: now,
        completed: (step == 3).then_some(now),
        scheduled_start: None,
        input: Some(input),
        output: (step == 3).then_some(output),
        custom_status: None,
        failure: None,
        tags: HashMap::new(),
        parent: None,
        trace: None,
        lost_dispatches: 0,
    };
    // As the engine makes it: encoded from its own state under its lock.
    Change::PutInstance {
        hub: HUB.into(),
        instance: Box::new(StoredInstance::encode(&row, Some(&history), inbox.iter())),
    }
}

fn activity(id: &str, put: bool) -> Change {
    let key = format!("{id}|{}|0", uuid::Uuid::new_v4().simple());
    if put {
        Change::PutActivity {
            hub: HUB.into(),
            key,
            request: pb::ActivityRequest {
                name: "process_operation".into(),
                input: Some(format!(r#"{{"operation_id":"{id}","processing_time":0}}"#)),
                orchestration_instance: Some(pb::OrchestrationInstance {
                    instance_id: id.into(),
                    execution_id: None,
                }),
                ..Default::default()
            },
        }
    } else {
        Change::DeleteActivity {
            hub: HUB.into(),
            key,
        }
    }
}

struct Run {
    seconds: f64,
    frames: u64,
    transactions: u64,
    checkpoint_seconds: f64,
}

fn run(synchronous: Synchronous) -> Run {
    let dir = std::env::temp_dir().join(format!("store-writes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = SqliteStore::open(
        &dir.join("s.db"),
        &StoreOptions {
            synchronous,
            max_bytes: 0,
            checkpoint_frames: local_scheduler::store::CHECKPOINT_FRAMES,
            busy_timeout: Duration::from_secs(5),
        },
    )
    .expect("open the store");
    let ids: Vec<String> = (0..OPERATIONS)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    // Operation i takes step s in transaction i / IN_FLIGHT * ... : op i starts in transaction
    // i / IN_FLIGHT and takes one step per transaction, so each holds one step of 64 operations
    // at each of the four stages.
    let batches = OPERATIONS / IN_FLIGHT + 3;
    let (mut frames, mut transactions, mut checkpoint) = (0u64, 0u64, Duration::ZERO);
    let mut writing = Duration::ZERO;
    for b in 0..batches {
        let mut changes = Vec::with_capacity(IN_FLIGHT * 5);
        for step in 0..4 {
            let Some(first) = b.checked_sub(step).map(|s| s * IN_FLIGHT) else {
                continue;
            };
            for id in ids.iter().skip(first).take(IN_FLIGHT) {
                changes.push(instance(id, step));
                match step {
                    1 => changes.push(activity(id, true)),
                    2 => changes.push(activity(id, false)),
                    _ => {}
                }
            }
        }
        let before = store.wal_frames();
        let t = Instant::now();
        store.apply(changes).expect("write");
        writing += t.elapsed();
        frames += u64::from(store.wal_frames().saturating_sub(before));
        transactions += 1;
        if store.checkpoint_due() {
            let t = Instant::now();
            store.checkpoint().expect("checkpoint");
            checkpoint += t.elapsed();
        }
    }
    let seconds = (writing + checkpoint).as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        seconds,
        frames,
        transactions,
        checkpoint_seconds: checkpoint.as_secs_f64(),
    }
}

fn main() {
    println!(
        "{OPERATIONS} operations of the sample, {IN_FLIGHT} in flight, one step of each per transaction"
    );
    println!(
        "| synchronous | operations/s | µs per operation | WAL frames per operation | of which checkpoints (s) | transactions |"
    );
    println!("|---|---|---|---|---|---|");
    for synchronous in [Synchronous::Normal, Synchronous::Full] {
        // Best of three: the machine is shared.
        let best = (0..3)
            .map(|_| run(synchronous))
            .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
            .expect("three runs");
        println!(
            "| {} | {:.0} | {:.1} | {:.2} | {:.2} | {} |",
            synchronous.as_str(),
            OPERATIONS as f64 / best.seconds,
            best.seconds * 1e6 / OPERATIONS as f64,
            best.frames as f64 / OPERATIONS as f64,
            best.checkpoint_seconds,
            best.transactions
        );
    }
}
