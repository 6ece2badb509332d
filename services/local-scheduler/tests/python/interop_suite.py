"""Compatibility suite: the official Durable Task Python SDK (durabletask-azuremanaged, no
credential) against a running local scheduler. Usage: interop_suite.py HOST:PORT [TASKHUB]

Each scenario is a function; all run, and the last line is "N passed, M failed".
Exit status is non-zero when any scenario fails.
"""
import sys
import time
import traceback
import uuid
from datetime import datetime, timedelta, timezone

from durabletask import client as dtc
from durabletask import task
from durabletask.azuremanaged.client import DurableTaskSchedulerClient
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker
from durabletask.worker import ConcurrencyOptions

ADDRESS = sys.argv[1]
TASKHUB = sys.argv[2] if len(sys.argv) > 2 else "default"
TIMEOUT = 60
S = dtc.OrchestrationStatus


# ------------------------------------------------------------------ functions

def hello(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name}"


def square(ctx: task.ActivityContext, i: int) -> int:
    return i * i


_attempts: dict = {}


def flaky(ctx: task.ActivityContext, key: str) -> int:
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] < 3:
        raise ValueError(f"transient failure {_attempts[key]}")
    return _attempts[key]


def always_fails(ctx: task.ActivityContext, _):
    raise RuntimeError("boom")


def sequence(ctx: task.OrchestrationContext, names):
    out = []
    for n in names:
        out.append((yield ctx.call_activity(hello, input=n)))
    return out


def retrying(ctx: task.OrchestrationContext, key):
    policy = task.RetryPolicy(first_retry_interval=timedelta(milliseconds=100), max_number_of_attempts=5)
    return (yield ctx.call_activity(flaky, input=key, retry_policy=policy))


def failing(ctx: task.OrchestrationContext, _):
    return (yield ctx.call_activity(always_fails, input=None))


def child_sum(ctx: task.OrchestrationContext, n):
    results = yield task.when_all([ctx.call_activity(square, input=i) for i in range(1, n + 1)])
    return sum(results)


def parent(ctx: task.OrchestrationContext, _):
    return (yield task.when_all([ctx.call_sub_orchestrator(child_sum, input=n) for n in (2, 3, 4)]))


def approval(ctx: task.OrchestrationContext, _):
    ctx.set_custom_status({"stage": "waiting"})
    value = yield ctx.wait_for_external_event("approve")
    ctx.set_custom_status({"stage": "approved"})
    return value


def timer(ctx: task.OrchestrationContext, _):
    start = ctx.current_utc_datetime
    yield ctx.create_timer(start + timedelta(seconds=1))
    return (ctx.current_utc_datetime - start).total_seconds() >= 1


def waits_forever(ctx: task.OrchestrationContext, _):
    yield ctx.wait_for_external_event("never")


def parent_of_waiters(ctx: task.OrchestrationContext, _):
    yield task.when_all([
        ctx.call_sub_orchestrator(waits_forever, input=None, instance_id=f"{ctx.instance_id}-child-{i}")
        for i in range(2)
    ])


def counter(ctx: task.OrchestrationContext, n):
    if n >= 3:
        return n
    yield ctx.call_activity(hello, input=str(n))
    ctx.continue_as_new(n + 1)


_rewind_ok: set = set()


def fails_until_fixed(ctx: task.ActivityContext, key: str) -> str:
    if key not in _rewind_ok:
        raise RuntimeError("not yet")
    return "fixed"


def rewindable(ctx: task.OrchestrationContext, key):
    first = yield ctx.call_activity(hello, input="before")
    second = yield ctx.call_activity(fails_until_fixed, input=key)
    return [first, second]


def report_version(ctx: task.OrchestrationContext, _):
    return ctx.version


def whoami_a(ctx: task.ActivityContext, _):
    time.sleep(0.05)
    return "A"


def whoami_b(ctx: task.ActivityContext, _):
    time.sleep(0.05)
    return "B"


whoami_a.__name__ = "whoami"
whoami_b.__name__ = "whoami"


def spread(ctx: task.OrchestrationContext, n):
    return (yield task.when_all([ctx.call_activity("whoami", input=i) for i in range(n)]))


def only_on_a(ctx: task.OrchestrationContext, _):
    return (yield ctx.call_activity(act_a, input=None))


def only_on_b(ctx: task.OrchestrationContext, _):
    return (yield ctx.call_activity(act_b, input=None))


def act_a(ctx: task.ActivityContext, _):
    return "ran on the A worker"


def act_b(ctx: task.ActivityContext, _):
    return "ran on the B worker"


def greet_v3(ctx: task.ActivityContext, name):
    return f"Hello v3, {name}!"


def greet_v3_orch(ctx: task.OrchestrationContext, name):
    # The Python SDK schedules the activity without a version.
    return (yield ctx.call_activity(greet_v3, input=name))


ORCHESTRATORS = [sequence, retrying, failing, child_sum, parent, approval, timer, waits_forever,
                 parent_of_waiters, counter, report_version, spread, rewindable]
ACTIVITIES = [hello, square, flaky, always_fails, fails_until_fixed]


def new_worker(extra_orchestrators=(), extra_activities=(), filters=False, standard=True, max_activities=None):
    concurrency = ConcurrencyOptions(maximum_concurrent_activity_work_items=max_activities) if max_activities else None
    w = DurableTaskSchedulerWorker(host_address=ADDRESS, taskhub=TASKHUB, token_credential=None, secure_channel=False,
                                   concurrency_options=concurrency)
    for o in (ORCHESTRATORS if standard else []) + list(extra_orchestrators):
        w.add_orchestrator(o)
    for a in (ACTIVITIES if standard else []) + list(extra_activities):
        w.add_activity(a)
    if filters:
        w.use_work_item_filters()
    return w


c = DurableTaskSchedulerClient(host_address=ADDRESS, taskhub=TASKHUB, token_credential=None, secure_channel=False)


def run(orchestrator, input=None, **kw):
    iid = c.schedule_new_orchestration(orchestrator, input=input, **kw)
    state = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state is not None, f"{iid} vanished"
    return iid, state


def wait_status(iid, status, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = c.get_orchestration_state(iid)
        if s is not None and s.runtime_status == status:
            return s
        time.sleep(0.05)
    raise AssertionError(f"{iid} never reached {status}; last {s.runtime_status if s else None}")


# ------------------------------------------------------------------ scenarios

def activity_sequence():
    _, s = run(sequence, ["Tokyo", "Seattle", "London"])
    assert s.runtime_status == S.COMPLETED, s
    assert s.get_output() == ["Hello Tokyo", "Hello Seattle", "Hello London"], s.serialized_output


def activity_failure_and_retry_policy():
    _, s = run(retrying, uuid.uuid4().hex)
    assert s.runtime_status == S.COMPLETED, s
    assert s.get_output() == 3, s.serialized_output
    _, f = run(failing)
    assert f.runtime_status == S.FAILED, f
    assert "boom" in f.failure_details.message, f.failure_details


def fan_out_fan_in_with_sub_orchestrations():
    _, s = run(parent)
    assert s.runtime_status == S.COMPLETED, s
    assert s.get_output() == [5, 14, 30], s.serialized_output


def external_events_and_custom_status():
    iid = c.schedule_new_orchestration(approval)
    s = wait_status(iid, S.RUNNING)
    deadline = time.time() + 10
    while s.serialized_custom_status is None and time.time() < deadline:
        time.sleep(0.05)
        s = c.get_orchestration_state(iid)
    assert s.get_custom_status() == {"stage": "waiting"}, s.serialized_custom_status
    c.raise_orchestration_event(iid, "approve", data={"by": "ops"})
    s = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert s.get_output() == {"by": "ops"}, s.serialized_output
    assert s.get_custom_status() == {"stage": "approved"}


def durable_timer():
    _, s = run(timer)
    assert s.runtime_status == S.COMPLETED and s.get_output() is True, s


def terminate_recursive():
    iid = c.schedule_new_orchestration(parent_of_waiters)
    for i in range(2):
        wait_status(f"{iid}-child-{i}", S.RUNNING)
    c.terminate_orchestration(iid, output="stop", recursive=True)
    s = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert s.runtime_status == S.TERMINATED, s
    for i in range(2):
        ch = c.wait_for_orchestration_completion(f"{iid}-child-{i}", timeout=TIMEOUT)
        assert ch.runtime_status == S.TERMINATED, ch


def suspend_and_resume():
    iid = c.schedule_new_orchestration(approval)
    wait_status(iid, S.RUNNING)
    c.suspend_orchestration(iid, reason="maintenance")
    wait_status(iid, S.SUSPENDED)
    c.raise_orchestration_event(iid, "approve", data="while suspended")
    time.sleep(0.5)
    assert c.get_orchestration_state(iid).runtime_status == S.SUSPENDED, "events must wait while suspended"
    c.resume_orchestration(iid, reason="done")
    s = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert s.runtime_status == S.COMPLETED and s.get_output() == "while suspended", s


def restart_same_and_new_id():
    iid, s = run(sequence, ["again"])
    assert s.runtime_status == S.COMPLETED
    same = c.restart_orchestration(iid)
    assert same == iid
    s2 = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert s2.runtime_status == S.COMPLETED and s2.get_output() == ["Hello again"], s2
    other = c.restart_orchestration(iid, restart_with_new_instance_id=True)
    assert other != iid
    s3 = c.wait_for_orchestration_completion(other, timeout=TIMEOUT)
    assert s3.runtime_status == S.COMPLETED and s3.get_output() == ["Hello again"], s3


def continue_as_new():
    _, s = run(counter, 0)
    assert s.runtime_status == S.COMPLETED and s.get_output() == 3, s


def versioned_orchestration():
    _, s = run(report_version, version="2.1")
    assert s.get_output() == "2.1", s.serialized_output


def purge_one_by_status_and_by_time():
    iid, _ = run(sequence, ["purge"])
    r = c.purge_orchestration(iid)
    assert r.deleted_instance_count == 1, r
    assert c.get_orchestration_state(iid) is None
    failed_id, f = run(failing)
    assert f.runtime_status == S.FAILED
    r = c.purge_orchestrations_by(runtime_status=[S.FAILED])
    assert r.deleted_instance_count >= 1, r
    assert c.get_orchestration_state(failed_id) is None
    old_id, _ = run(sequence, ["old"])
    time.sleep(0.05)
    cut = datetime.now(timezone.utc)
    new_ids = [run(sequence, [f"new{i}"])[0] for i in range(3)]
    r = c.purge_orchestrations_by(created_time_from=cut, runtime_status=[S.COMPLETED])
    assert r.deleted_instance_count == 3, r
    assert all(c.get_orchestration_state(i) is None for i in new_ids)
    assert c.get_orchestration_state(old_id) is not None, "instances before the range stay"


def rewind_failed_instance():
    key = uuid.uuid4().hex
    iid, s = run(rewindable, key)
    assert s.runtime_status == S.FAILED, s
    _rewind_ok.add(key)
    c.rewind_orchestration(iid, reason="fixed the activity")
    s = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert s.runtime_status == S.COMPLETED, s
    assert s.get_output() == ["Hello before", "fixed"], s.serialized_output
    # A completed instance cannot be rewound.
    try:
        c.rewind_orchestration(iid)
    except Exception as e:  # noqa: BLE001 - grpc.RpcError
        assert "FAILED_PRECONDITION" in str(e), e
    else:
        raise AssertionError("rewinding a completed instance must fail")


def query_with_paging():
    prefix = f"pg-{uuid.uuid4().hex[:6]}-"
    ids = [run(sequence, [str(i)], instance_id=f"{prefix}{i}")[0] for i in range(5)]
    states = c.get_all_orchestration_states(dtc.OrchestrationQuery(instance_id_prefix=prefix, max_instance_count=2))
    assert sorted(s.instance_id for s in states) == sorted(ids), [s.instance_id for s in states]
    seen, token, pages = [], None, 0
    while True:
        page = c.list_instance_ids(runtime_status=[S.COMPLETED], page_size=2, continuation_token=token)
        pages += 1
        seen += page.items
        token = page.continuation_token
        if not token or pages > 100:
            break
    assert set(ids) <= set(seen), "every completed id is listed"
    assert pages >= 3


def several_workers_share_a_hub():
    # Two extra workers with different "whoami" implementations; fan out and see both answer.
    # Filtered, so they only ever get "whoami"; the main worker runs the orchestration.
    # Two in flight each: the scheduler must spread the 40 activities over both streams.
    wa = new_worker(extra_activities=[whoami_a], standard=False, filters=True, max_activities=2)
    wb = new_worker(extra_activities=[whoami_b], standard=False, filters=True, max_activities=2)
    wa.start()
    wb.start()
    time.sleep(1)  # let both streams connect
    try:
        _, s = run(spread, 40)
        assert s.runtime_status == S.COMPLETED, s
        who = set(s.get_output())
        assert who == {"A", "B"}, f"expected both workers, got {who}"
    finally:
        wa.stop()
        wb.stop()


def work_item_filters():
    wa = new_worker(extra_orchestrators=[only_on_a], extra_activities=[act_a], filters=True, standard=False)
    wb = new_worker(extra_orchestrators=[only_on_b], extra_activities=[act_b], filters=True, standard=False)
    wa.start()
    wb.start()
    try:
        _, a = run(only_on_a)
        _, b = run(only_on_b)
        assert a.runtime_status == S.COMPLETED and a.get_output() == "ran on the A worker", a
        assert b.runtime_status == S.COMPLETED and b.get_output() == "ran on the B worker", b
    finally:
        wa.stop()
        wb.stop()


def versioned_work_item_filters():
    # A worker whose filters name version 3.0.0 for the orchestration and for its activity runs
    # an orchestration started at 3.0.0 to the end, as on DTS (the activity, scheduled without
    # a version, is matched by its orchestration's).
    from durabletask.worker import ActivityWorkItemFilter, OrchestrationWorkItemFilter, WorkItemFilters
    w = new_worker(extra_orchestrators=[greet_v3_orch], extra_activities=[greet_v3], standard=False)
    w.use_work_item_filters(WorkItemFilters(
        orchestrations=[OrchestrationWorkItemFilter(name="greet_v3_orch", versions=["3.0.0"])],
        activities=[ActivityWorkItemFilter(name="greet_v3", versions=["3.0.0"])],
    ))
    w.start()
    try:
        iid = c.schedule_new_orchestration(greet_v3_orch, input="VersionTest", version="3.0.0")
        s = c.wait_for_orchestration_completion(iid, timeout=20)
        assert s is not None and s.runtime_status == S.COMPLETED, s
        assert s.get_output() == "Hello v3, VersionTest!", s
    finally:
        w.stop()


SCENARIOS = [
    activity_sequence,
    activity_failure_and_retry_policy,
    fan_out_fan_in_with_sub_orchestrations,
    external_events_and_custom_status,
    durable_timer,
    terminate_recursive,
    suspend_and_resume,
    restart_same_and_new_id,
    continue_as_new,
    versioned_orchestration,
    purge_one_by_status_and_by_time,
    rewind_failed_instance,
    query_with_paging,
    several_workers_share_a_hub,
    work_item_filters,
    versioned_work_item_filters,
]


def main() -> int:
    passed = failed = 0
    # The main worker has no "whoami" activity and uses no filters, so the filter and
    # multi-worker scenarios are decided by the workers they start.
    main_worker = new_worker(filters=True)
    main_worker.start()
    try:
        for scenario in SCENARIOS:
            started = time.time()
            try:
                scenario()
                passed += 1
                print(f"PASS {scenario.__name__} ({time.time() - started:.2f}s)", flush=True)
            except Exception:  # noqa: BLE001 - report every failure and go on
                failed += 1
                print(f"FAIL {scenario.__name__}", flush=True)
                traceback.print_exc()
    finally:
        main_worker.stop()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
