//! `plan_episode` from canned histories.

use std::collections::VecDeque;

use durabletask::testing::HistoryBuilder;
use pb::orchestrator_action::OrchestratorActionType as A;

use super::*;
use crate::engine::activity_key;
use crate::model::{InstanceRow, ts};

const RUNNING: i32 = pb::OrchestrationStatus::Running as i32;

/// An instance as dispatch leaves it: `past` in its history, `new` handed to the worker.
fn leased(id: &str, past: Vec<pb::HistoryEvent>, new: Vec<pb::HistoryEvent>) -> Instance {
    let now = Utc::now();
    Instance {
        row: InstanceRow {
            execution_id: "exec-1".into(),
            input: Some("1".into()),
            ..InstanceRow::for_test(id, "parent", pb::OrchestrationStatus::Pending as i32, now)
        },
        history: past,
        inbox: VecDeque::new(),
        lease: Some("token".into()),
        dispatched: new,
        terminate_children: false,
        history_on_disk: None,
    }
}

fn action(id: i32, a: A) -> pb::OrchestratorAction {
    pb::OrchestratorAction {
        id,
        orchestrator_action_type: Some(a),
    }
}

fn respond(actions: Vec<pb::OrchestratorAction>) -> pb::OrchestratorResponse {
    pb::OrchestratorResponse {
        instance_id: "i".into(),
        actions,
        ..Default::default()
    }
}

fn kinds(history: &[pb::HistoryEvent]) -> Vec<&'static str> {
    history
        .iter()
        .map(|e| match &e.event_type {
            Some(EventType::OrchestratorStarted(_)) => "OrchestratorStarted",
            Some(EventType::ExecutionStarted(_)) => "ExecutionStarted",
            Some(EventType::TaskScheduled(_)) => "TaskScheduled",
            Some(EventType::TaskCompleted(_)) => "TaskCompleted",
            Some(EventType::TimerCreated(_)) => "TimerCreated",
            Some(EventType::SubOrchestrationInstanceCreated(_)) => "SubOrchestrationCreated",
            Some(EventType::ExecutionCompleted(_)) => "ExecutionCompleted",
            Some(EventType::OrchestratorCompleted(_)) => "OrchestratorCompleted",
            _ => "other",
        })
        .collect()
}

fn complete(status: pb::OrchestrationStatus, result: Option<&str>) -> A {
    A::CompleteOrchestration(pb::CompleteOrchestrationAction {
        orchestration_status: status as i32,
        result: result.map(str::to_string),
        ..Default::default()
    })
}

#[test]
fn a_first_episode_records_its_history_and_queues_the_activity() {
    let mut h = HistoryBuilder::new("i");
    let mut inst = leased("i", vec![], h.started("parent", Some("1")).take());
    let out = plan_episode(
        &mut inst,
        "i",
        respond(vec![action(
            0,
            A::ScheduleTask(pb::ScheduleTaskAction {
                name: "greet".into(),
                input: Some("\"Ada\"".into()),
                ..Default::default()
            }),
        )]),
        Utc::now(),
    );
    assert_eq!(
        kinds(&inst.history),
        ["OrchestratorStarted", "ExecutionStarted", "TaskScheduled"]
    );
    assert_eq!(inst.history[2].event_id, 0, "the event id is the action id");
    assert_eq!(inst.row.status, RUNNING);
    assert!(inst.lease.is_none() && inst.dispatched.is_empty());
    assert_eq!(out.activities.len(), 1);
    let (key, req) = &out.activities[0];
    assert_eq!(key, &activity_key("i", "exec-1", 0));
    assert_eq!((req.name.as_str(), req.task_id), ("greet", 0));
    assert!(out.messages.is_empty() && out.children.is_empty());
}

#[test]
fn a_timer_becomes_a_message_to_itself_due_at_fire_time() {
    let mut h = HistoryBuilder::new("i");
    let mut inst = leased("i", vec![], h.started("parent", None).take());
    let fire_at = Utc::now() + chrono::Duration::seconds(30);
    let out = plan_episode(
        &mut inst,
        "i",
        respond(vec![action(
            0,
            A::CreateTimer(pb::CreateTimerAction {
                fire_at: Some(ts(fire_at)),
            }),
        )]),
        Utc::now(),
    );
    assert_eq!(out.messages.len(), 1);
    let (target, msg, due) = &out.messages[0];
    assert_eq!(target, "i");
    assert!(matches!(&msg.event_type, Some(EventType::TimerFired(t)) if t.timer_id == 0));
    assert_eq!(due.map(|d| d.timestamp()), Some(fire_at.timestamp()));
}

#[test]
fn a_child_that_completes_reports_to_its_parent_and_ends() {
    let mut h = HistoryBuilder::new("p:0001");
    let mut inst = leased("p:0001", vec![], h.started("child", None).take());
    inst.row.parent = Some(Box::new(pb::ParentInstanceInfo {
        task_scheduled_id: 1,
        orchestration_instance: Some(pb::OrchestrationInstance {
            instance_id: "p".into(),
            execution_id: None,
        }),
        ..Default::default()
    }));
    inst.inbox.push_back(event(
        -1,
        EventType::EventRaised(pb::EventRaisedEvent::default()),
    ));
    let out = plan_episode(
        &mut inst,
        "p:0001",
        respond(vec![action(
            0,
            complete(pb::OrchestrationStatus::Completed, Some("42")),
        )]),
        Utc::now(),
    );
    assert_eq!(inst.row.status, pb::OrchestrationStatus::Completed as i32);
    assert_eq!(inst.row.output.as_deref(), Some("42"));
    assert!(inst.row.completed.is_some() && inst.inbox.is_empty());
    let [(target, msg, None)] = out.messages.as_slice() else {
        panic!("one message to the parent: {:?}", out.messages);
    };
    assert_eq!(target, "p");
    assert!(matches!(
        &msg.event_type,
        Some(EventType::SubOrchestrationInstanceCompleted(c))
            if c.task_scheduled_id == 1 && c.result.as_deref() == Some("42")
    ));
}

#[test]
fn a_failed_child_reports_a_failure_with_its_details() {
    let mut h = HistoryBuilder::new("c");
    let mut inst = leased("c", vec![], h.started("child", None).take());
    inst.row.parent = Some(Box::new(pb::ParentInstanceInfo {
        task_scheduled_id: 3,
        orchestration_instance: Some(pb::OrchestrationInstance {
            instance_id: "p".into(),
            execution_id: None,
        }),
        ..Default::default()
    }));
    let out = plan_episode(
        &mut inst,
        "c",
        respond(vec![action(
            0,
            A::CompleteOrchestration(pb::CompleteOrchestrationAction {
                orchestration_status: pb::OrchestrationStatus::Failed as i32,
                failure_details: Some(pb::TaskFailureDetails {
                    error_type: "Boom".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )]),
        Utc::now(),
    );
    assert_eq!(inst.row.status, pb::OrchestrationStatus::Failed as i32);
    assert!(matches!(
        &out.messages[0].1.event_type,
        Some(EventType::SubOrchestrationInstanceFailed(f))
            if f.task_scheduled_id == 3
                && f.failure_details.as_ref().is_some_and(|d| d.error_type == "Boom")
    ));
}

#[test]
fn a_sub_orchestration_without_an_id_gets_one_derived_from_the_parent() {
    let mut h = HistoryBuilder::new("p");
    let mut inst = leased("p", vec![], h.started("parent", None).take());
    let out = plan_episode(
        &mut inst,
        "p",
        respond(vec![action(
            1,
            A::CreateSubOrchestration(pb::CreateSubOrchestrationAction {
                name: "child".into(),
                ..Default::default()
            }),
        )]),
        Utc::now(),
    );
    let [child] = out.children.as_slice() else {
        panic!("one child: {:?}", out.children);
    };
    assert_eq!(child.instance_id, "p:0001");
    let parent = child.parent.as_ref().expect("parent info");
    assert_eq!(parent.task_scheduled_id, 1);
    assert_eq!(kinds(&inst.history)[2], "SubOrchestrationCreated");
}

#[test]
fn continue_as_new_starts_a_fresh_execution_and_drops_the_old_work() {
    let mut h = HistoryBuilder::new("i");
    let past = h
        .started("parent", Some("1"))
        .task_scheduled(0, "greet")
        .orchestrator_completed()
        .take();
    let new = h.episode().task_completed(0, Some("\"hi\"")).take();
    let mut inst = leased("i", past, new);
    inst.row.status = RUNNING;
    let out = plan_episode(
        &mut inst,
        "i",
        respond(vec![
            action(
                1,
                A::ScheduleTask(pb::ScheduleTaskAction {
                    name: "lost".into(),
                    ..Default::default()
                }),
            ),
            action(
                2,
                complete(pb::OrchestrationStatus::ContinuedAsNew, Some("2")),
            ),
        ]),
        Utc::now(),
    );
    assert_ne!(inst.row.execution_id, "exec-1");
    assert!(inst.history.is_empty(), "{:?}", kinds(&inst.history));
    assert_eq!(inst.row.input.as_deref(), Some("2"));
    assert!(matches!(
        inst.inbox.front().and_then(|e| e.event_type.as_ref()),
        Some(EventType::ExecutionStarted(es)) if es.input.as_deref() == Some("2")
    ));
    assert!(
        out.activities.is_empty(),
        "the old execution's work is dropped"
    );
    assert_eq!(inst.row.status, RUNNING);
}

#[test]
fn a_rewind_adopts_the_new_history_and_rewinds_unfinished_children() {
    let mut h = HistoryBuilder::new("p");
    let past = h.started("parent", None).take();
    let mut inst = leased("p", past, vec![]);
    inst.row.status = pb::OrchestrationStatus::Failed as i32;
    inst.row.output = Some("old".into());
    let mut rewritten = HistoryBuilder::new("p");
    let new_history = rewritten
        .started("parent", None)
        .sub_orchestration_created(0, "child", "p:0000")
        .sub_orchestration_created(1, "child", "p:0001")
        .sub_orchestration_completed(1, Some("1"))
        .take();
    let out = plan_episode(
        &mut inst,
        "p",
        respond(vec![action(
            -1,
            A::RewindOrchestration(pb::RewindOrchestrationAction {
                new_history: new_history.clone(),
            }),
        )]),
        Utc::now(),
    );
    assert_eq!(inst.history, new_history);
    assert_eq!(inst.row.status, RUNNING);
    assert!(inst.row.output.is_none());
    let rewound: Vec<&str> = out
        .rewind_children
        .iter()
        .map(|c| c.instance_id.as_str())
        .collect();
    assert_eq!(rewound, ["p:0000"], "only the unfinished child");
    let child = &out.rewind_children[0];
    assert_eq!(child.name, "child");
    assert_eq!(
        child.parent.as_ref().map(|p| p.task_scheduled_id),
        Some(0),
        "a child created again reports to the same task"
    );
    assert_eq!(
        kinds(&inst.inbox.iter().cloned().collect::<Vec<_>>()),
        ["OrchestratorStarted"]
    );
}
