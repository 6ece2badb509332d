//! Replay scenarios: canned histories through the executor, asserting the actions it returns.

use std::time::Duration;

use durabletask::orchestration::{ExecutionResult, ExecutionStatus, execute};
use durabletask::proto as pb;
use durabletask::testing::HistoryBuilder;
use durabletask::{FailureDetails, OrchestrationContext, Registry, RetryPolicy, TaskError};
use pb::orchestrator_action::OrchestratorActionType as A;
use serde_json::{Value, json};

type Res<T> = Result<T, FailureDetails>;

fn run(
    reg: &Registry,
    h: &HistoryBuilder,
    past: Vec<pb::HistoryEvent>,
    new: Vec<pb::HistoryEvent>,
) -> ExecutionResult {
    let orch = reg.orchestrator("o").expect("orchestrator 'o' registered");
    execute(orch.as_ref(), &h.request(past, new))
}

fn reg<I, O, F, Fut>(f: F) -> Registry
where
    I: serde::de::DeserializeOwned + 'static,
    O: serde::Serialize + 'static,
    F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Res<O>> + 'static,
{
    let mut r = Registry::new();
    r.add_orchestrator("o", f);
    r
}

/// Compact description of the actions: `task:0:A`, `timer:1`, `sub:2:S:id`, `send:3:inst:ev`, `complete:4:COMPLETED`.
fn kinds(r: &ExecutionResult) -> Vec<String> {
    r.actions
        .iter()
        .map(
            |a| match a.orchestrator_action_type.as_ref().expect("action type") {
                A::ScheduleTask(s) => format!("task:{}:{}", a.id, s.name),
                A::CreateTimer(_) => format!("timer:{}", a.id),
                A::CreateSubOrchestration(c) => {
                    format!("sub:{}:{}:{}", a.id, c.name, c.instance_id)
                }
                A::SendEvent(e) => format!(
                    "send:{}:{}:{}",
                    a.id,
                    e.instance
                        .as_ref()
                        .map(|i| i.instance_id.clone())
                        .unwrap_or_default(),
                    e.name
                ),
                A::CompleteOrchestration(c) => format!(
                    "complete:{}:{}",
                    a.id,
                    pb::OrchestrationStatus::try_from(c.orchestration_status)
                        .map(|s| s.as_str_name())
                        .unwrap_or("?")
                ),
                other => format!("other:{other:?}"),
            },
        )
        .collect()
}

fn completion(r: &ExecutionResult) -> &pb::CompleteOrchestrationAction {
    r.actions
        .iter()
        .find_map(|a| match &a.orchestrator_action_type {
            Some(A::CompleteOrchestration(c)) => Some(c),
            _ => None,
        })
        .expect("a completion action")
}

fn output(r: &ExecutionResult) -> Value {
    serde_json::from_str(completion(r).result.as_deref().unwrap_or("null")).expect("json output")
}

fn failure_type(r: &ExecutionResult) -> String {
    completion(r)
        .failure_details
        .as_ref()
        .map(|f| f.error_type.clone())
        .unwrap_or_default()
}

fn task_input(r: &ExecutionResult, i: usize) -> Value {
    match &r.actions[i].orchestrator_action_type {
        Some(A::ScheduleTask(s)) => {
            serde_json::from_str(s.input.as_deref().unwrap_or("null")).expect("json")
        }
        other => panic!("not a task: {other:?}"),
    }
}

fn timer_fire_at(r: &ExecutionResult, i: usize) -> chrono::DateTime<chrono::Utc> {
    match &r.actions[i].orchestrator_action_type {
        Some(A::CreateTimer(t)) => {
            let ts = t.fire_at.expect("fire_at");
            chrono::DateTime::from_timestamp(ts.seconds, ts.nanos as u32).expect("valid")
        }
        other => panic!("not a timer: {other:?}"),
    }
}

fn sequence3() -> Registry {
    reg(|ctx: OrchestrationContext, name: String| async move {
        let a: String = ctx.call_activity("hello", &format!("{name}-1")).await?;
        let b: String = ctx.call_activity("hello", &format!("{name}-2")).await?;
        let c: String = ctx.call_activity("hello", &format!("{name}-3")).await?;
        Ok(vec![a, b, c])
    })
}

fn nd_message(r: &ExecutionResult) -> String {
    match &r.status {
        ExecutionStatus::NonDeterministic(e) => e.to_string(),
        other => panic!("expected non-determinism, got {other:?}"),
    }
}

// ------------------------------------------------------------- activities

#[test]
fn first_episode_schedules_first_activity() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\""));
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(kinds(&res), ["task:0:hello"]);
    assert_eq!(task_input(&res, 0), json!("x-1"));
    assert_eq!(res.status, ExecutionStatus::Running);
}

#[test]
fn middle_episode_emits_only_the_new_action() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    let past = h.take();
    h.episode().task_completed(0, Some("\"a\""));
    let res = run(&r, &h, past, h.events());
    assert_eq!(kinds(&res), ["task:1:hello"]);
    assert_eq!(task_input(&res, 0), json!("x-2"));
}

#[test]
fn full_sequence_completes_with_all_results() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    h.episode()
        .task_completed(0, Some("\"a\""))
        .task_scheduled(1, "hello");
    h.episode()
        .task_completed(1, Some("\"b\""))
        .task_scheduled(2, "hello");
    let past = h.take();
    h.episode().task_completed(2, Some("\"c\""));
    let res = run(&r, &h, past, h.events());
    assert_eq!(kinds(&res), ["complete:3:ORCHESTRATION_STATUS_COMPLETED"]);
    assert_eq!(output(&res), json!(["a", "b", "c"]));
}

#[test]
fn whole_history_in_new_events_works_too() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\""))
        .task_scheduled(0, "hello")
        .task_completed(0, Some("\"a\""));
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(kinds(&res), ["task:1:hello"]);
}

#[test]
fn activity_failure_fails_the_orchestration_with_inner_details() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    let past = h.take();
    h.episode()
        .task_failed(0, FailureDetails::new("IOError", "disk full"));
    let res = run(&r, &h, past, h.events());
    assert_eq!(kinds(&res), ["complete:1:ORCHESTRATION_STATUS_FAILED"]);
    let f = completion(&res).failure_details.as_ref().expect("details");
    assert_eq!(f.error_type, "TaskFailedError");
    assert!(
        f.error_message.contains("activity 'hello' failed"),
        "{}",
        f.error_message
    );
    assert_eq!(
        f.inner_failure.as_ref().expect("inner").error_type,
        "IOError"
    );
}

#[test]
fn activity_failure_can_be_handled_by_code() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        match ctx.call_activity::<_, i32>("risky", &()).await {
            Ok(v) => Ok(v),
            Err(e) => {
                assert_eq!(e.failure().map(|f| f.error_type.as_str()), Some("Boom"));
                ctx.call_activity::<_, i32>("fallback", &())
                    .await
                    .map_err(Into::into)
            }
        }
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "risky");
    let past = h.take();
    h.episode()
        .task_failed(0, FailureDetails::new("Boom", "no"));
    let res = run(&r, &h, past, h.events());
    assert_eq!(kinds(&res), ["task:1:fallback"]);
}

#[test]
fn orchestrator_error_fails_with_its_details() {
    let r = reg(|_: OrchestrationContext, _: ()| async move {
        Err::<(), _>(FailureDetails::new("Validation", "bad order"))
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(failure_type(&res), "Validation");
    assert!(matches!(res.status, ExecutionStatus::Failed(_)));
}

#[test]
fn wrong_result_type_is_a_deserialization_failure() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        Ok(ctx.call_activity::<_, i32>("a", &()).await?)
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let past = h.take();
    h.episode().task_completed(0, Some("\"not a number\""));
    let res = run(&r, &h, past, h.events());
    assert_eq!(failure_type(&res), "DeserializationError");
}

#[test]
fn bad_input_fails_non_retriably() {
    let r = reg(|_: OrchestrationContext, n: u32| async move { Ok(n) });
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("{\"oops\":1}"));
    let res = run(&r, &h, vec![], h.events());
    let f = completion(&res).failure_details.clone().expect("details");
    assert_eq!(f.error_type, "InputDeserializationError");
    assert!(f.is_non_retriable);
}

#[test]
fn missing_input_reads_as_null() {
    let r = reg(|_: OrchestrationContext, v: Option<String>| async move { Ok(v.is_none()) });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    assert_eq!(output(&run(&r, &h, vec![], h.events())), json!(true));
}

#[test]
fn unit_output_is_null() {
    let r = reg(|_: OrchestrationContext, _: ()| async move { Ok(()) });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(completion(&res).result.as_deref(), Some("null"));
}

#[test]
fn fire_and_forget_activity_is_sent_with_the_completion() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let _ignored = ctx.call_activity::<_, ()>("notify", &());
        Ok(1)
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(
        kinds(&res),
        ["task:0:notify", "complete:1:ORCHESTRATION_STATUS_COMPLETED"]
    );
}

#[test]
fn action_ids_are_shared_across_kinds() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let a = ctx.call_activity::<_, ()>("a", &());
        let t = ctx.create_timer_after(Duration::from_secs(5));
        let s = ctx.call_sub_orchestrator::<_, ()>("s", &(), None);
        ctx.send_event("other", "ping", &1);
        let _ = (a, t, s);
        Ok(())
    });
    let mut h = HistoryBuilder::new("p");
    h.started("o", None);
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(
        kinds(&res),
        [
            "task:0:a",
            "timer:1",
            "sub:2:s:p:0002",
            "send:3:other:ping",
            "complete:4:ORCHESTRATION_STATUS_COMPLETED"
        ]
    );
}

#[test]
fn duplicate_completion_is_ignored() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    let past = h.take();
    h.episode()
        .task_completed(0, Some("\"a\""))
        .task_completed(0, Some("\"a\""));
    let res = run(&r, &h, past, h.events());
    assert_eq!(kinds(&res), ["task:1:hello"]);
}

#[test]
fn completion_for_unknown_task_is_ignored() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    let past = h.take();
    h.episode().task_completed(42, Some("\"?\""));
    let res = run(&r, &h, past, h.events());
    assert!(kinds(&res).is_empty());
    assert_eq!(res.status, ExecutionStatus::Running);
}

#[test]
fn history_without_execution_started_fails_cleanly() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.episode();
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(failure_type(&res), "InvalidHistory");
}

#[test]
fn panic_in_orchestrator_fails_it_instead_of_crashing() {
    let r = reg(|_: OrchestrationContext, _: ()| async move {
        if true {
            panic!("kaboom");
        }
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(failure_type(&res), "Panic");
    assert!(
        completion(&res)
            .failure_details
            .as_ref()
            .is_some_and(|f| f.error_message.contains("kaboom"))
    );
}

// -------------------------------------------------------- non-determinism

#[test]
fn nd_activity_renamed() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "greet");
    let past = h.take();
    h.episode().task_completed(0, Some("\"a\""));
    let res = run(&r, &h, past, h.events());
    let msg = nd_message(&res);
    assert!(
        msg.contains("TaskScheduled 'greet'") && msg.contains("scheduled activity 'hello'"),
        "{msg}"
    );
    let k = kinds(&res);
    assert_eq!(k.len(), 1);
    assert!(k[0].ends_with("ORCHESTRATION_STATUS_FAILED"), "{k:?}");
}

#[test]
fn nd_failure_is_typed_and_non_retriable() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "other");
    let res = run(&r, &h, h.events(), vec![]);
    let f = completion(&res).failure_details.clone().expect("details");
    assert_eq!(f.error_type, "NonDeterminismError");
    assert!(f.is_non_retriable);
    assert!(matches!(res.status, ExecutionStatus::NonDeterministic(ref e) if e.action_id == 0));
}

#[test]
fn nd_activity_replaced_by_timer() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.create_timer_after(Duration::from_secs(1)).await;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let res = run(&r, &h, h.events(), vec![]);
    assert!(nd_message(&res).contains("created a timer"));
}

#[test]
fn nd_timer_replaced_by_activity() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        Ok(ctx.call_activity::<_, ()>("a", &()).await?)
    });
    let mut h = HistoryBuilder::new("i");
    let at = h.now();
    h.started("o", None).timer_created(0, at);
    let res = run(&r, &h, h.events(), vec![]);
    assert!(nd_message(&res).contains("TimerCreated"));
}

#[test]
fn nd_activity_removed_from_code() {
    let r = reg(|_: OrchestrationContext, _: ()| async move { Ok(()) });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let res = run(&r, &h, h.events(), vec![]);
    assert!(nd_message(&res).contains("had already completed"));
}

#[test]
fn nd_code_waits_where_history_scheduled() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let v: i32 = ctx.wait_for_external_event("go").await?;
        Ok(v)
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let res = run(&r, &h, h.events(), vec![]);
    assert!(nd_message(&res).contains("did not schedule anything"));
}

#[test]
fn nd_activity_inserted_before_existing_one() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.call_activity::<_, ()>("new-step", &()).await?;
        ctx.call_activity::<_, ()>("a", &()).await?;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let res = run(&r, &h, h.events(), vec![]);
    assert!(nd_message(&res).contains("new-step"));
}

#[test]
fn nd_sub_orchestration_renamed() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        Ok(ctx
            .call_sub_orchestrator::<_, ()>("child-v2", &(), None)
            .await?)
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None)
        .sub_orchestration_created(0, "child", "i:0000");
    let res = run(&r, &h, h.events(), vec![]);
    assert!(nd_message(&res).contains("SubOrchestrationInstanceCreated 'child'"));
}

#[test]
fn nd_event_sent_to_other_target() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.send_event("b", "ping", &());
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).event_sent(0, "a", "ping");
    let res = run(&r, &h, h.events(), vec![]);
    assert!(nd_message(&res).contains("sent event 'ping' to 'b'"));
}

#[test]
fn appending_new_steps_after_history_is_not_nd() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.call_activity::<_, ()>("a", &()).await?;
        ctx.call_activity::<_, ()>("b", &()).await?;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let past = h.take();
    h.episode().task_completed(0, None);
    let res = run(&r, &h, past, h.events());
    assert_eq!(kinds(&res), ["task:1:b"]);
}

#[test]
fn nd_stops_processing_and_drops_pending_actions() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let a = ctx.call_activity::<_, ()>("x", &());
        let b = ctx.call_activity::<_, ()>("y", &());
        ctx.when_all([a, b]).await;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None)
        .task_scheduled(0, "x")
        .task_scheduled(1, "z");
    let res = run(&r, &h, h.events(), vec![]);
    assert_eq!(res.actions.len(), 1);
    assert!(nd_message(&res).contains("TaskScheduled 'z'"));
}

// ------------------------------------------------------------------ timers

#[test]
fn timer_is_scheduled_relative_to_deterministic_now() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.create_timer_after(Duration::from_secs(30)).await;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let start = h.now();
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(kinds(&res), ["timer:0"]);
    assert_eq!(
        timer_fire_at(&res, 0),
        start + chrono::Duration::seconds(30)
    );
}

#[test]
fn timer_fired_resumes_the_orchestration() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.create_timer_after(Duration::from_secs(30)).await;
        Ok("woke")
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let at = h.now() + chrono::Duration::seconds(30);
    h.timer_created(0, at);
    let past = h.take();
    h.advance(30).episode().timer_fired(0, at);
    let res = run(&r, &h, past, h.events());
    assert_eq!(output(&res), json!("woke"));
}

#[test]
fn timer_at_absolute_time() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let at = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .expect("time")
            .to_utc();
        ctx.create_timer(at).await;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(
        timer_fire_at(&res, 0).to_rfc3339(),
        "2030-01-01T00:00:00+00:00"
    );
}

#[test]
fn current_time_follows_orchestrator_started() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let t1 = ctx.current_utc_datetime();
        ctx.call_activity::<_, ()>("a", &()).await?;
        let t2 = ctx.current_utc_datetime();
        Ok((t2 - t1).num_seconds())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let past = h.take();
    h.advance(59).episode().task_completed(0, None);
    assert_eq!(output(&run(&r, &h, past, h.events())), json!(60));
}

#[test]
fn is_replaying_is_true_only_for_past_events() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let first = ctx.is_replaying();
        ctx.call_activity::<_, ()>("a", &()).await?;
        let second = ctx.is_replaying();
        Ok((first, second))
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let past = h.take();
    h.episode().task_completed(0, None);
    assert_eq!(output(&run(&r, &h, past, h.events())), json!([true, false]));
}

#[test]
fn first_episode_is_not_replaying() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move { Ok(ctx.is_replaying()) });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    assert_eq!(output(&run(&r, &h, vec![], h.events())), json!(false));
}

// ---------------------------------------------------------- external events

fn approval() -> Registry {
    reg(|ctx: OrchestrationContext, _: ()| async move {
        let v: String = ctx.wait_for_external_event("Approval").await?;
        Ok(v)
    })
}

#[test]
fn external_event_resumes_waiter() {
    let r = approval();
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let past = h.take();
    h.episode().event_raised("Approval", Some("\"yes\""));
    assert_eq!(output(&run(&r, &h, past, h.events())), json!("yes"));
}

#[test]
fn external_event_names_are_case_insensitive() {
    let r = approval();
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let past = h.take();
    h.episode().event_raised("APPROVAL", Some("\"ok\""));
    assert_eq!(output(&run(&r, &h, past, h.events())), json!("ok"));
}

#[test]
fn external_event_before_wait_is_buffered() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.call_activity::<_, ()>("a", &()).await?;
        let v: i32 = ctx.wait_for_external_event("e").await?;
        Ok(v)
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let past = h.take();
    h.episode()
        .event_raised("e", Some("7"))
        .task_completed(0, None);
    assert_eq!(output(&run(&r, &h, past, h.events())), json!(7));
}

#[test]
fn same_name_events_are_delivered_in_order() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let a: i32 = ctx.wait_for_external_event("n").await?;
        let b: i32 = ctx.wait_for_external_event("n").await?;
        Ok(vec![a, b])
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let past = h.take();
    h.episode()
        .event_raised("n", Some("1"))
        .event_raised("n", Some("2"));
    assert_eq!(output(&run(&r, &h, past, h.events())), json!([1, 2]));
}

#[test]
fn unrelated_events_do_not_wake_waiter() {
    let r = approval();
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let past = h.take();
    h.episode().event_raised("Other", Some("1"));
    let res = run(&r, &h, past, h.events());
    assert_eq!(res.status, ExecutionStatus::Running);
    assert!(res.actions.is_empty());
}

#[test]
fn event_payload_of_wrong_type_fails_cleanly() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        Ok(ctx.wait_for_external_event::<u8>("n").await?)
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let past = h.take();
    h.episode().event_raised("n", Some("\"text\""));
    assert_eq!(
        failure_type(&run(&r, &h, past, h.events())),
        "DeserializationError"
    );
}

fn event_or_timeout() -> Registry {
    reg(|ctx: OrchestrationContext, _: ()| async move {
        let ev = Box::pin(async { ctx.wait_for_external_event::<String>("approve").await.ok() });
        let timeout = Box::pin(async {
            ctx.create_timer_after(Duration::from_secs(60)).await;
            None
        });
        let ev: std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>>>> = ev;
        let (idx, v) = ctx.when_any([ev, timeout]).await;
        Ok((idx, v))
    })
}

#[test]
fn when_any_event_beats_timer() {
    let r = event_or_timeout();
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let at = h.now() + chrono::Duration::seconds(60);
    h.timer_created(0, at);
    let past = h.take();
    h.episode().event_raised("approve", Some("\"yes\""));
    assert_eq!(output(&run(&r, &h, past, h.events())), json!([0, "yes"]));
}

#[test]
fn when_any_timer_wins_when_no_event() {
    let r = event_or_timeout();
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let at = h.now() + chrono::Duration::seconds(60);
    h.timer_created(0, at);
    let past = h.take();
    h.advance(60)
        .episode()
        .timer_fired(0, at)
        .event_raised("approve", Some("\"late\""));
    assert_eq!(output(&run(&r, &h, past, h.events())), json!([1, null]));
}

// ------------------------------------------------------------ fan-out/fan-in

fn fan_out(n: usize) -> Registry {
    reg(move |ctx: OrchestrationContext, _: ()| async move {
        let tasks: Vec<_> = (0..n)
            .map(|i| ctx.call_activity::<_, i64>("work", &i))
            .collect();
        let results = ctx.when_all(tasks).await;
        let mut sum = 0;
        for r in results {
            sum += r?;
        }
        Ok(sum)
    })
}

#[test]
fn fan_out_schedules_all_in_one_episode() {
    let r = fan_out(3);
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(kinds(&res), ["task:0:work", "task:1:work", "task:2:work"]);
    assert_eq!(task_input(&res, 2), json!(2));
}

#[test]
fn fan_in_waits_for_every_result_in_any_order() {
    let r = fan_out(3);
    let mut h = HistoryBuilder::new("i");
    h.started("o", None)
        .task_scheduled(0, "work")
        .task_scheduled(1, "work")
        .task_scheduled(2, "work");
    let past = h.take();
    h.episode()
        .task_completed(2, Some("30"))
        .task_completed(0, Some("10"));
    let partial = run(&r, &h, past.clone(), h.events());
    assert_eq!(partial.status, ExecutionStatus::Running);
    h.task_completed(1, Some("20"));
    assert_eq!(output(&run(&r, &h, past, h.events())), json!(60));
}

#[test]
fn fan_in_reports_a_failed_branch() {
    let r = fan_out(2);
    let mut h = HistoryBuilder::new("i");
    h.started("o", None)
        .task_scheduled(0, "work")
        .task_scheduled(1, "work");
    let past = h.take();
    h.episode()
        .task_completed(0, Some("1"))
        .task_failed(1, FailureDetails::new("E", "bad"));
    assert_eq!(
        failure_type(&run(&r, &h, past, h.events())),
        "TaskFailedError"
    );
}

#[test]
fn fan_out_of_one_hundred_replays() {
    let r = fan_out(100);
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    for i in 0..100 {
        h.task_scheduled(i, "work");
    }
    let past = h.take();
    h.episode();
    for i in 0..100 {
        h.task_completed(i, Some("1"));
    }
    let res = run(&r, &h, past, h.events());
    assert_eq!(output(&res), json!(100));
    assert_eq!(kinds(&res), ["complete:100:ORCHESTRATION_STATUS_COMPLETED"]);
}

#[test]
fn long_sequential_history_replays() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let mut total = 0i64;
        for i in 0..300 {
            total += ctx.call_activity::<_, i64>("inc", &i).await?;
        }
        Ok(total)
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    for i in 0..300 {
        h.task_scheduled(i, "inc")
            .episode()
            .task_completed(i, Some("2"));
    }
    let res = run(&r, &h, h.events(), vec![]);
    assert_eq!(output(&res), json!(600));
}

// --------------------------------------------------------- sub-orchestrations

#[test]
fn sub_orchestration_gets_a_stable_default_id() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.call_activity::<_, ()>("prep", &()).await?;
        Ok(ctx
            .call_sub_orchestrator::<_, i32>("child", &5, None)
            .await?)
    });
    let mut h = HistoryBuilder::new("parent");
    h.started("o", None).task_scheduled(0, "prep");
    let past = h.take();
    h.episode().task_completed(0, None);
    assert_eq!(
        kinds(&run(&r, &h, past, h.events())),
        ["sub:1:child:parent:0001"]
    );
}

#[test]
fn sub_orchestration_with_explicit_id() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        Ok(ctx
            .call_sub_orchestrator::<_, i32>("child", &5, Some("kid-1"))
            .await?)
    });
    let mut h = HistoryBuilder::new("parent");
    h.started("o", None);
    assert_eq!(
        kinds(&run(&r, &h, vec![], h.events())),
        ["sub:0:child:kid-1"]
    );
}

#[test]
fn sub_orchestration_result_is_returned() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        Ok(ctx
            .call_sub_orchestrator::<_, i32>("child", &5, None)
            .await?
            * 2)
    });
    let mut h = HistoryBuilder::new("p");
    h.started("o", None)
        .sub_orchestration_created(0, "child", "p:0000");
    let past = h.take();
    h.episode().sub_orchestration_completed(0, Some("21"));
    assert_eq!(output(&run(&r, &h, past, h.events())), json!(42));
}

#[test]
fn sub_orchestration_failure_propagates() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        Ok(ctx
            .call_sub_orchestrator::<_, i32>("child", &5, None)
            .await?)
    });
    let mut h = HistoryBuilder::new("p");
    h.started("o", None)
        .sub_orchestration_created(0, "child", "p:0000");
    let past = h.take();
    h.episode()
        .sub_orchestration_failed(0, FailureDetails::new("ChildError", "x"));
    let res = run(&r, &h, past, h.events());
    let f = completion(&res).failure_details.clone().expect("details");
    assert!(f.error_message.contains("sub-orchestration 'child' failed"));
    assert_eq!(f.inner_failure.expect("inner").error_type, "ChildError");
}

#[test]
fn sub_orchestration_retry_reuses_the_instance_id() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let p = RetryPolicy::new(3, Duration::from_secs(1));
        Ok(ctx
            .call_sub_orchestrator_with_retry::<_, i32>("child", &(), None, p)
            .await?)
    });
    let mut h = HistoryBuilder::new("p");
    h.started("o", None)
        .sub_orchestration_created(0, "child", "p:0000");
    h.episode()
        .sub_orchestration_failed(0, FailureDetails::new("E", "x"));
    let at = h.now() + chrono::Duration::seconds(1);
    h.timer_created(1, at);
    let past = h.take();
    h.advance(1).episode().timer_fired(1, at);
    assert_eq!(
        kinds(&run(&r, &h, past, h.events())),
        ["sub:2:child:p:0000"]
    );
}

// ---------------------------------------------------------------- retries

fn retrying(policy: RetryPolicy) -> Registry {
    reg(move |ctx: OrchestrationContext, _: ()| {
        let p = policy.clone();
        async move {
            Ok(ctx
                .call_activity_with_retry::<_, i32>("flaky", &(), p)
                .await?)
        }
    })
}

#[test]
fn retry_waits_on_a_durable_timer_after_failure() {
    let r = retrying(RetryPolicy::new(3, Duration::from_secs(10)));
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "flaky");
    let past = h.take();
    h.episode().task_failed(0, FailureDetails::new("E", "x"));
    let now = h.now();
    let res = run(&r, &h, past, h.events());
    assert_eq!(kinds(&res), ["timer:1"]);
    assert_eq!(timer_fire_at(&res, 0), now + chrono::Duration::seconds(10));
}

#[test]
fn retry_succeeds_on_second_attempt() {
    let r = retrying(RetryPolicy::new(3, Duration::from_secs(10)));
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "flaky");
    h.episode().task_failed(0, FailureDetails::new("E", "x"));
    let at = h.now() + chrono::Duration::seconds(10);
    h.timer_created(1, at);
    h.advance(10)
        .episode()
        .timer_fired(1, at)
        .task_scheduled(2, "flaky");
    let past = h.take();
    h.episode().task_completed(2, Some("5"));
    assert_eq!(output(&run(&r, &h, past, h.events())), json!(5));
}

#[test]
fn retry_gives_up_after_max_attempts() {
    let r = retrying(RetryPolicy::new(2, Duration::from_secs(1)));
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "flaky");
    h.episode().task_failed(0, FailureDetails::new("E", "1"));
    let at = h.now() + chrono::Duration::seconds(1);
    h.timer_created(1, at);
    h.advance(1)
        .episode()
        .timer_fired(1, at)
        .task_scheduled(2, "flaky");
    let past = h.take();
    h.episode().task_failed(2, FailureDetails::new("E", "2"));
    let res = run(&r, &h, past, h.events());
    assert_eq!(kinds(&res), ["complete:3:ORCHESTRATION_STATUS_FAILED"]);
    let inner = completion(&res)
        .failure_details
        .clone()
        .and_then(|f| f.inner_failure)
        .expect("inner");
    assert_eq!(inner.error_message, "2");
}

#[test]
fn retry_skips_non_retriable_failures() {
    let r = retrying(RetryPolicy::new(5, Duration::from_secs(1)));
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "flaky");
    let past = h.take();
    h.episode()
        .task_failed(0, FailureDetails::new("E", "x").non_retriable());
    assert_eq!(
        kinds(&run(&r, &h, past, h.events())),
        ["complete:1:ORCHESTRATION_STATUS_FAILED"]
    );
}

#[test]
fn retry_handle_can_refuse() {
    let r = retrying(
        RetryPolicy::new(5, Duration::from_secs(1)).with_handle(|f| f.error_type == "Transient"),
    );
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "flaky");
    let past = h.take();
    h.episode()
        .task_failed(0, FailureDetails::new("Permanent", "x"));
    assert_eq!(
        kinds(&run(&r, &h, past, h.events())),
        ["complete:1:ORCHESTRATION_STATUS_FAILED"]
    );
}

#[test]
fn retry_backoff_grows() {
    let r = retrying(RetryPolicy::new(5, Duration::from_secs(2)).with_backoff_coefficient(3.0));
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "flaky");
    h.episode().task_failed(0, FailureDetails::new("E", "1"));
    let at = h.now() + chrono::Duration::seconds(2);
    h.timer_created(1, at);
    h.advance(2)
        .episode()
        .timer_fired(1, at)
        .task_scheduled(2, "flaky");
    let past = h.take();
    h.episode().task_failed(2, FailureDetails::new("E", "2"));
    let now = h.now();
    let res = run(&r, &h, past, h.events());
    assert_eq!(timer_fire_at(&res, 0), now + chrono::Duration::seconds(6));
}

#[test]
fn retry_timeout_stops_retrying() {
    let r = retrying(
        RetryPolicy::new(10, Duration::from_secs(30)).with_retry_timeout(Duration::from_secs(20)),
    );
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "flaky");
    let past = h.take();
    h.episode().task_failed(0, FailureDetails::new("E", "x"));
    assert_eq!(
        kinds(&run(&r, &h, past, h.events())),
        ["complete:1:ORCHESTRATION_STATUS_FAILED"]
    );
}

// ------------------------------------------------------------ continue-as-new

fn counter() -> Registry {
    reg(|ctx: OrchestrationContext, n: u32| async move {
        if n >= 3 {
            return Ok(n);
        }
        ctx.call_activity::<_, ()>("tick", &n).await?;
        ctx.continue_as_new(&(n + 1), true);
        Ok(n)
    })
}

#[test]
fn continue_as_new_restarts_with_new_input() {
    let r = counter();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("1")).task_scheduled(0, "tick");
    let past = h.take();
    h.episode().task_completed(0, None);
    let res = run(&r, &h, past, h.events());
    assert_eq!(
        kinds(&res),
        ["complete:1:ORCHESTRATION_STATUS_CONTINUED_AS_NEW"]
    );
    assert_eq!(completion(&res).result.as_deref(), Some("2"));
    assert_eq!(
        res.status,
        ExecutionStatus::ContinuedAsNew(Some("2".into()))
    );
}

#[test]
fn continue_as_new_final_generation_completes() {
    let r = counter();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("3"));
    assert_eq!(output(&run(&r, &h, vec![], h.events())), json!(3));
}

#[test]
fn continue_as_new_carries_unhandled_events_when_asked() {
    let r = counter();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("0")).task_scheduled(0, "tick");
    let past = h.take();
    h.episode()
        .event_raised("later", Some("\"x\""))
        .task_completed(0, None)
        .event_raised("after", None);
    let res = run(&r, &h, past, h.events());
    let carried: Vec<String> = completion(&res)
        .carryover_events
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(pb::history_event::EventType::EventRaised(er)) => Some(er.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(carried, ["later", "after"]);
}

#[test]
fn continue_as_new_without_save_events_drops_them() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.continue_as_new(&1, false);
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).event_raised("e", None);
    let res = run(&r, &h, vec![], h.events());
    assert!(completion(&res).carryover_events.is_empty());
}

#[test]
fn continue_as_new_can_change_version() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.continue_as_new_versioned(&1, false, "2.0");
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    assert_eq!(
        completion(&run(&r, &h, vec![], h.events()))
            .new_version
            .as_deref(),
        Some("2.0")
    );
}

#[test]
fn continue_as_new_takes_effect_without_returning() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.continue_as_new(&9, false);
        ctx.wait_for_external_event::<()>("never").await?;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    assert_eq!(
        kinds(&run(&r, &h, vec![], h.events())),
        ["complete:0:ORCHESTRATION_STATUS_CONTINUED_AS_NEW"]
    );
}

// ----------------------------------------------------- custom status, guids

#[test]
fn custom_status_is_reported() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.set_custom_status(&json!({"stage": "charging"}));
        ctx.call_activity::<_, ()>("a", &()).await?;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(
        res.custom_status.as_deref(),
        Some("{\"stage\":\"charging\"}")
    );
}

#[test]
fn custom_status_reflects_latest_value() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.set_custom_status("step1");
        ctx.call_activity::<_, ()>("a", &()).await?;
        ctx.set_custom_status("step2");
        ctx.call_activity::<_, ()>("b", &()).await?;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).task_scheduled(0, "a");
    let past = h.take();
    h.episode().task_completed(0, None);
    assert_eq!(
        run(&r, &h, past, h.events()).custom_status.as_deref(),
        Some("\"step2\"")
    );
}

#[test]
fn clear_custom_status_removes_it() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.set_custom_status("x");
        ctx.clear_custom_status();
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    assert_eq!(run(&r, &h, vec![], h.events()).custom_status, None);
}

#[test]
fn new_guid_is_stable_across_replays_and_unique_within_one() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        let a = ctx.new_guid();
        let b = ctx.new_guid();
        assert_ne!(a, b);
        ctx.call_activity::<_, ()>("use", &a).await?;
        Ok(a.to_string())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let first = run(&r, &h, vec![], h.events());
    let id_first = task_input(&first, 0);
    h.task_scheduled(0, "use");
    let past = h.take();
    h.episode().task_completed(0, None);
    let second = run(&r, &h, past, h.events());
    assert_eq!(output(&second), id_first);
}

#[test]
fn context_exposes_instance_name_and_execution() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        Ok((ctx.instance_id(), ctx.name(), ctx.execution_id()))
    });
    let mut h = HistoryBuilder::new("inst-9");
    h.started("o", None);
    assert_eq!(
        output(&run(&r, &h, vec![], h.events())),
        json!(["inst-9", "o", "exec-1"])
    );
}

// -------------------------------------------------- suspend, resume, terminate

#[test]
fn suspended_instance_holds_new_events() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    let past = h.take();
    h.episode()
        .suspended(Some("maintenance"))
        .task_completed(0, Some("\"a\""));
    let res = run(&r, &h, past, h.events());
    assert!(res.actions.is_empty());
    assert_eq!(res.status, ExecutionStatus::Running);
}

#[test]
fn resume_releases_held_events_in_order() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    h.episode().suspended(None).task_completed(0, Some("\"a\""));
    let past = h.take();
    h.episode().resumed(None);
    assert_eq!(kinds(&run(&r, &h, past, h.events())), ["task:1:hello"]);
}

#[test]
fn resume_without_suspend_is_ignored() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    let past = h.take();
    h.episode().resumed(None).task_completed(0, Some("\"a\""));
    assert_eq!(kinds(&run(&r, &h, past, h.events())), ["task:1:hello"]);
}

#[test]
fn events_raised_while_suspended_wait_for_resume() {
    let r = approval();
    let mut h = HistoryBuilder::new("i");
    h.started("o", None)
        .suspended(None)
        .event_raised("approval", Some("\"y\""));
    let held = run(&r, &h, vec![], h.events());
    assert_eq!(held.status, ExecutionStatus::Running);
    h.resumed(None);
    assert_eq!(output(&run(&r, &h, vec![], h.events())), json!("y"));
}

#[test]
fn terminate_completes_as_terminated_with_reason() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    let past = h.take();
    h.episode()
        .terminated(Some("\"canceled by user\""))
        .task_completed(0, Some("\"a\""));
    let res = run(&r, &h, past, h.events());
    assert_eq!(kinds(&res), ["complete:1:ORCHESTRATION_STATUS_TERMINATED"]);
    assert_eq!(output(&res), json!("canceled by user"));
    assert!(matches!(res.status, ExecutionStatus::Terminated(_)));
}

#[test]
fn terminate_drops_actions_the_code_would_emit() {
    let r = fan_out(3);
    let mut h = HistoryBuilder::new("i");
    h.started("o", None).terminated(None);
    let res = run(&r, &h, vec![], h.events());
    assert_eq!(kinds(&res), ["complete:3:ORCHESTRATION_STATUS_TERMINATED"]);
}

#[test]
fn terminate_applies_while_suspended() {
    let r = approval();
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    let past = h.take();
    h.episode().suspended(None).terminated(None);
    assert!(matches!(
        run(&r, &h, past, h.events()).status,
        ExecutionStatus::Terminated(_)
    ));
}

// ------------------------------------------------------------- send event

#[test]
fn send_event_is_emitted_and_confirmed_on_replay() {
    let r = reg(|ctx: OrchestrationContext, _: ()| async move {
        ctx.send_event("target", "ping", &json!({"n": 1}));
        ctx.call_activity::<_, ()>("after", &()).await?;
        Ok(())
    });
    let mut h = HistoryBuilder::new("i");
    h.started("o", None);
    assert_eq!(
        kinds(&run(&r, &h, vec![], h.events())),
        ["send:0:target:ping", "task:1:after"]
    );
    h.event_sent(0, "target", "ping").task_scheduled(1, "after");
    let past = h.take();
    h.episode().task_completed(1, None);
    assert_eq!(
        kinds(&run(&r, &h, past, h.events())),
        ["complete:2:ORCHESTRATION_STATUS_COMPLETED"]
    );
}

// -------------------------------------------------------------- tracing

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn scheduled_work_carries_a_child_trace_context() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started_with("o", Some("\"x\""), Some(TRACEPARENT));
    let res = run(&r, &h, vec![], h.events());
    let Some(A::ScheduleTask(t)) = &res.actions[0].orchestrator_action_type else {
        panic!("expected a task")
    };
    let tp = &t
        .parent_trace_context
        .as_ref()
        .expect("trace context")
        .trace_parent;
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(
        !tp.contains("b7ad6b7169203331"),
        "child must get a new span id: {tp}"
    );
    let otc = res.trace_context.expect("orchestration trace context");
    assert_eq!(otc.span_id.as_deref().map(str::len), Some(16));
}

#[test]
fn orchestration_span_id_is_kept_across_episodes() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started_with("o", Some("\"x\""), Some(TRACEPARENT))
        .task_scheduled(0, "hello");
    let past = h.take();
    h.episode().task_completed(0, Some("\"a\""));
    let mut req = h.request(past, h.events());
    req.orchestration_trace_context = Some(pb::OrchestrationTraceContext {
        span_id: Some("1111222233334444".into()),
        span_start_time: None,
    });
    let orch = r.orchestrator("o").expect("registered");
    let res = execute(orch.as_ref(), &req);
    assert_eq!(
        res.trace_context.and_then(|t| t.span_id).as_deref(),
        Some("1111222233334444")
    );
}

#[test]
fn no_trace_context_without_a_parent() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\""));
    let res = run(&r, &h, vec![], h.events());
    assert!(res.trace_context.is_none());
}

// --------------------------------------------------------- error conversions

#[test]
fn task_error_converts_to_failure_with_inner() {
    let e = TaskError::Failed {
        kind: "activity",
        name: "a".into(),
        details: FailureDetails::new("X", "y"),
    };
    let f: FailureDetails = e.into();
    assert_eq!(f.error_type, "TaskFailedError");
    assert_eq!(f.inner.expect("inner").error_type, "X");
}

#[test]
fn std_errors_convert_with_their_type_name() {
    let e = "x".parse::<i32>().unwrap_err();
    let f: FailureDetails = e.into();
    assert_eq!(f.error_type, "ParseIntError");
}

// ------------------------------------------------------------------ rewind

fn failed_sequence() -> (Registry, HistoryBuilder, Vec<pb::HistoryEvent>) {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    h.episode()
        .task_completed(0, Some("\"a\""))
        .task_scheduled(1, "hello");
    h.episode().task_failed(1, FailureDetails::new("E", "down"));
    h.execution_completed(
        2,
        pb::OrchestrationStatus::Failed,
        Some(FailureDetails::new("TaskFailedError", "x")),
    );
    let past = h.take();
    (r, h, past)
}

#[test]
fn rewind_drops_the_failure_and_keeps_the_successes() {
    let (r, mut h, past) = failed_sequence();
    h.episode().rewound(Some("fixed"));
    let res = run(&r, &h, past, h.events());
    assert_eq!(res.actions.len(), 1);
    assert_eq!(res.actions[0].id, -1);
    let Some(A::RewindOrchestration(rw)) = &res.actions[0].orchestrator_action_type else {
        panic!("expected a rewind action, got {:?}", res.actions)
    };
    use pb::history_event::EventType as E;
    let kinds: Vec<&str> = rw
        .new_history
        .iter()
        .map(|e| match &e.event_type {
            Some(E::TaskScheduled(_)) => "scheduled",
            Some(E::TaskCompleted(_)) => "completed",
            Some(E::TaskFailed(_)) => "failed",
            Some(E::ExecutionCompleted(_)) => "execution-completed",
            Some(E::ExecutionRewound(_)) => "rewound",
            Some(E::ExecutionStarted(_)) => "started",
            _ => "other",
        })
        .filter(|k| *k != "other")
        .collect();
    assert_eq!(kinds, ["started", "scheduled", "completed", "rewound"]);
    let new_exec = rw.new_history.iter().find_map(|e| match &e.event_type {
        Some(E::ExecutionStarted(es)) => es
            .orchestration_instance
            .as_ref()
            .and_then(|i| i.execution_id.clone()),
        _ => None,
    });
    assert_ne!(
        new_exec.as_deref(),
        Some("exec-1"),
        "a rewound run gets a new execution id"
    );
}

#[test]
fn replay_after_rewind_reruns_only_the_failed_activity() {
    let (r, mut h, past) = failed_sequence();
    h.episode().rewound(None);
    let res = run(&r, &h, past, h.events());
    let Some(A::RewindOrchestration(rw)) = &res.actions[0].orchestrator_action_type else {
        panic!("expected a rewind action")
    };
    let mut next = HistoryBuilder::new("i");
    next.episode();
    let res = run(&r, &next, rw.new_history.clone(), next.events());
    assert_eq!(kinds(&res), ["task:1:hello"]);
}

#[test]
fn rewound_event_without_a_completion_replays_normally() {
    let r = sequence3();
    let mut h = HistoryBuilder::new("i");
    h.started("o", Some("\"x\"")).task_scheduled(0, "hello");
    let past = h.take();
    h.episode().rewound(None).task_completed(0, Some("\"a\""));
    assert_eq!(kinds(&run(&r, &h, past, h.events())), ["task:1:hello"]);
}

// ------------------------------------------------------------- entities

fn signal_then_call() -> Registry {
    reg(|ctx: OrchestrationContext, _: ()| async move {
        let counter = durabletask::EntityId::new("counter", "a");
        ctx.signal_entity(&counter, "add", &7, None);
        let value: i64 = ctx.call_entity(&counter, "get", &()).await?;
        Ok(value)
    })
}

/// The request id of the entity call among `r`'s actions.
fn call_request_id(r: &ExecutionResult) -> String {
    use pb::send_entity_message_action::EntityMessageType as M;
    r.actions
        .iter()
        .find_map(|a| match &a.orchestrator_action_type {
            Some(A::SendEntityMessage(pb::SendEntityMessageAction {
                entity_message_type: Some(M::EntityOperationCalled(c)),
            })) => Some(c.request_id.clone()),
            _ => None,
        })
        .expect("an entity call")
}

#[test]
fn entity_signal_and_call_replay_to_the_result() {
    let r = signal_then_call();
    let mut h = HistoryBuilder::new("i");
    let first = run(&r, &h, vec![], h.clone().started("o", None).take());
    assert_eq!(first.actions.len(), 2, "{:?}", first.actions);
    let request = call_request_id(&first);
    // The same request id on every replay: the result finds its call.
    let again = run(&r, &h, vec![], h.clone().started("o", None).take());
    assert_eq!(call_request_id(&again), request);
    let past = h
        .started("o", None)
        .entity_signaled(0, "@counter@a", "add")
        .entity_called(1, &request, "@counter@a", "get")
        .take();
    let new = h.episode().entity_completed(&request, Some("7")).take();
    let done = run(&r, &h, past, new);
    assert_eq!(output(&done), json!(7));
}

#[test]
fn a_failed_entity_call_fails_the_await() {
    let r = signal_then_call();
    let mut h = HistoryBuilder::new("i");
    let first = run(&r, &h, vec![], h.clone().started("o", None).take());
    let request = call_request_id(&first);
    let past = h
        .started("o", None)
        .entity_signaled(0, "@counter@a", "add")
        .entity_called(1, &request, "@counter@a", "get")
        .take();
    let new = h
        .episode()
        .entity_failed(&request, "ValueError", "boom")
        .take();
    let done = run(&r, &h, past, new);
    assert_eq!(failure_type(&done), "TaskFailedError");
}

#[test]
fn an_entity_signal_to_another_entity_than_recorded_is_non_deterministic() {
    let r = signal_then_call();
    let mut h = HistoryBuilder::new("i");
    let past = h
        .started("o", None)
        .entity_signaled(0, "@counter@b", "add")
        .take();
    let res = run(&r, &h, past, h.clone().episode().take());
    let msg = nd_message(&res);
    assert!(
        msg.contains("@counter@b") && msg.contains("@counter@a"),
        "{msg}"
    );
}

fn locked_call() -> Registry {
    reg(|ctx: OrchestrationContext, _: ()| async move {
        // Given out of order: locked in order.
        let (b, a) = (
            durabletask::EntityId::new("counter", "b"),
            durabletask::EntityId::new("counter", "a"),
        );
        let lock = ctx.lock_entities(&[b.clone(), a]).await?;
        let value: i64 = ctx.call_entity(&b, "get", &()).await?;
        lock.release();
        Ok(value)
    })
}

/// The lock request's section id and the call's request id among `r`'s actions.
fn lock_section(r: &ExecutionResult) -> (String, Vec<String>) {
    use pb::send_entity_message_action::EntityMessageType as M;
    r.actions
        .iter()
        .find_map(|a| match &a.orchestrator_action_type {
            Some(A::SendEntityMessage(pb::SendEntityMessageAction {
                entity_message_type: Some(M::EntityLockRequested(l)),
            })) => Some((l.critical_section_id.clone(), l.lock_set.clone())),
            _ => None,
        })
        .expect("a lock request")
}

#[test]
fn a_critical_section_locks_in_order_calls_and_releases() {
    let r = locked_call();
    let mut h = HistoryBuilder::new("i");
    let first = run(&r, &h, vec![], h.clone().started("o", None).take());
    let (section, set) = lock_section(&first);
    assert_eq!(set, ["@counter@a", "@counter@b"], "sorted");
    // Granted: the call goes out.
    let mut h2 = h.clone();
    let past = h2
        .started("o", None)
        .entity_lock_requested(0, &section, &["@counter@a", "@counter@b"])
        .take();
    let granted = run(
        &r,
        &h2,
        past.clone(),
        h2.clone().episode().entity_lock_granted(&section).take(),
    );
    let request = call_request_id(&granted);
    // The result: the unlocks go out, one per entity, and the orchestration completes.
    let past = h
        .started("o", None)
        .entity_lock_requested(0, &section, &["@counter@a", "@counter@b"])
        .episode()
        .entity_lock_granted(&section)
        .entity_called(1, &request, "@counter@b", "get")
        .take();
    let done = run(
        &r,
        &h,
        past,
        h.clone()
            .episode()
            .entity_completed(&request, Some("3"))
            .take(),
    );
    assert_eq!(output(&done), json!(3));
    use pb::send_entity_message_action::EntityMessageType as M;
    let unlocks: Vec<String> = done
        .actions
        .iter()
        .filter_map(|a| match &a.orchestrator_action_type {
            Some(A::SendEntityMessage(pb::SendEntityMessageAction {
                entity_message_type: Some(M::EntityUnlockSent(u)),
            })) => u.target_instance_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(unlocks, ["@counter@a", "@counter@b"]);
}
