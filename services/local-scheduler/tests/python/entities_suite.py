"""Durable entities through the official Durable Task Python SDK against a running local
scheduler. Usage: entities_suite.py HOST:PORT [TASKHUB]

  entities_suite.py HOST:PORT                 every scenario; the last line is "N passed, M failed"
  entities_suite.py HOST:PORT signal-only RUN  signals 20 adds to @counter@<RUN>, no worker
  entities_suite.py HOST:PORT check RUN        runs a worker and expects @counter@<RUN> at 20
  entities_suite.py HOST:PORT client-only      the client scenarios, against another SDK's worker
                                               (which must have the counter and account
                                               entities, the schedules and `tick`)
  entities_suite.py HOST:PORT worker           runs this suite's worker until stdin closes

The two phases let a test kill and restart the scheduler in between.
"""
import sys
import time
import traceback
import uuid
from datetime import datetime, timedelta, timezone

from durabletask import client as dtc
from durabletask import entities, task
from durabletask.azuremanaged.client import DurableTaskSchedulerClient
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.worker import EntityWorkItemFilter, WorkItemFilters
from google.protobuf import wrappers_pb2

ADDRESS = sys.argv[1]
TASKHUB = "default"
S = dtc.OrchestrationStatus
E = entities.EntityInstanceId


# ------------------------------------------------------------------ entities

def counter(ctx: entities.EntityContext, input):
    """Function-based: add, get, reset, fail (raises after changing the state), delete."""
    value = ctx.get_state(int, 0)
    if ctx.operation == "add":
        ctx.set_state(value + input)
    elif ctx.operation == "get":
        return value
    elif ctx.operation == "fail":
        ctx.set_state(value + 1000)
        raise ValueError("this operation fails")
    elif ctx.operation == "delete":
        ctx.set_state(None)
    elif ctx.operation == "forward":
        # Signals another entity and starts an orchestration, both as side effects.
        ctx.signal_entity(E("counter", input), "add", 1)
        ctx.schedule_new_orchestration("calls_counter", input=input, instance_id=f"started-by-{input}")
    return None


class Account(entities.DurableEntity):
    """Class-based: one method per operation."""

    def deposit(self, amount: int):
        self.set_state(self.get_state(int, 0) + amount)

    def withdraw(self, amount: int):
        balance = self.get_state(int, 0)
        if amount > balance:
            raise ValueError("insufficient funds")
        self.set_state(balance - amount)

    def balance(self, _=None):
        return self.get_state(int, 0)


def alpha(ctx: entities.EntityContext, input):
    ctx.set_state(ctx.get_state(int, 0) + 1)


def beta(ctx: entities.EntityContext, input):
    ctx.set_state(ctx.get_state(int, 0) + 100)


def calls_counter(ctx: task.OrchestrationContext, key):
    """Signals the counter, then calls it: a call sees the signal (one queue, in order)."""
    target = E("counter", key)
    ctx.signal_entity(target, "add", 7)
    value = yield ctx.call_entity(target, "get")
    return value


def calls_failing(ctx: task.OrchestrationContext, key):
    try:
        yield ctx.call_entity(E("counter", key), "fail")
    except Exception as e:  # noqa: BLE001 - the failure is the result
        return f"failed: {type(e).__name__}"
    return "did not fail"


def locked_transfer(ctx: task.OrchestrationContext, args):
    """Locks two accounts, reads one, waits for "go" holding both, then moves the amount."""
    a, b = E("account", args["a"]), E("account", args["b"])
    lock = yield ctx.lock_entities([a, b])
    with lock:
        ctx.set_custom_status("locked")
        balance = yield ctx.call_entity(a, "balance")
        yield ctx.wait_for_external_event("go")
        if balance >= args["amount"]:
            yield ctx.call_entity(a, "withdraw", args["amount"])
            yield ctx.call_entity(b, "deposit", args["amount"])
    return balance


def lock_and_wait(ctx: task.OrchestrationContext, k):
    lock = yield ctx.lock_entities([E("counter", k)])
    with lock:
        ctx.set_custom_status("locked")
        yield ctx.wait_for_external_event("never")


def tick(ctx: task.OrchestrationContext, counter_key):
    """One run of a recurring schedule: counts itself on a counter entity."""
    ctx.signal_entity(E("counter", counter_key), "add", 1)
    return counter_key


ORCHESTRATORS = (calls_counter, calls_failing, locked_transfer, lock_and_wait, tick)


def new_worker(entity_fns=(counter, Account), orchestrators=ORCHESTRATORS, filters="auto"):
    """A worker; `filters` "auto" takes only what it registered, as the SDK derives it."""
    w = DurableTaskSchedulerWorker(host_address=ADDRESS, taskhub=TASKHUB, token_credential=None,
                                   secure_channel=False)
    for o in orchestrators:
        w.add_orchestrator(o)
    for e in entity_fns:
        w.add_entity(e)
    if tuple(orchestrators) == ORCHESTRATORS:
        w.configure_scheduled_tasks()
    if filters == "auto":
        w.use_work_item_filters()
    elif filters is not None:
        w.use_work_item_filters(filters)
    return w


c = DurableTaskSchedulerClient(host_address=ADDRESS, taskhub=TASKHUB, token_credential=None,
                               secure_channel=False)


def state_of(entity_id, timeout=20, want=None, kind=int):
    """The entity's state (as `kind`) once `want` holds (or once it exists, with no `want`)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        m = c.get_entity(entity_id, include_state=True)
        last = m.get_state(kind) if m is not None else None
        if m is not None and (want is None or want(last)):
            return last
        time.sleep(0.05)
    raise AssertionError(f"{entity_id}: state never matched; last {last!r}")


def key():
    return uuid.uuid4().hex[:12]


# ------------------------------------------------------------------ scenarios

def function_entity_signals_and_get():
    e = E("counter", key())
    assert c.get_entity(e) is None, "an entity nobody signalled exists"
    for n in (5, 3, 2):
        c.signal_entity(e, "add", n)
    assert state_of(e, want=lambda s: s == 10) == 10
    m = c.get_entity(e, include_state=False)
    assert m is not None and m.backlog_queue_size == 0, m
    assert m.last_modified <= datetime.now(timezone.utc)


def class_entity_and_its_failure():
    e = E("account", key())
    c.signal_entity(e, "deposit", 100)
    c.signal_entity(e, "withdraw", 500)   # fails: the state stays as it was
    c.signal_entity(e, "withdraw", 30)
    assert state_of(e, want=lambda s: s == 70) == 70


def delayed_signal():
    e = E("counter", key())
    c.signal_entity(e, "add", 1)
    state_of(e, want=lambda s: s == 1)
    c.signal_entity(e, "add", 10, signal_time=datetime.now(timezone.utc) + timedelta(seconds=2))
    time.sleep(0.8)
    assert c.get_entity(e).get_state(int) == 1, "the delayed signal ran early"
    assert state_of(e, want=lambda s: s == 11) == 11


def orchestration_signals_and_calls_an_entity():
    k = key()
    iid = c.schedule_new_orchestration(calls_counter, input=k)
    st = c.wait_for_orchestration_completion(iid, timeout=30)
    assert st is not None and st.runtime_status == S.COMPLETED, st
    assert st.get_output() == 7, st.get_output()


def a_failed_operation_fails_the_call_and_rolls_back():
    k = key()
    e = E("counter", k)
    c.signal_entity(e, "add", 1)
    state_of(e, want=lambda s: s == 1)
    iid = c.schedule_new_orchestration(calls_failing, input=k)
    st = c.wait_for_orchestration_completion(iid, timeout=30)
    assert st is not None and st.runtime_status == S.COMPLETED, st
    assert st.get_output().startswith("failed"), st.get_output()
    c.signal_entity(e, "add", 1)
    assert state_of(e, want=lambda s: s == 2) == 2, "the failed operation's change was kept"


def entity_side_effects_signal_and_start():
    k = key()
    c.signal_entity(E("counter", "source-" + k), "forward", k)
    # The forwarded signal adds 1; the orchestration it started adds 7 and reads 8.
    iid = f"started-by-{k}"
    deadline = time.time() + 20
    while c.get_orchestration_state(iid) is None and time.time() < deadline:
        time.sleep(0.05)
    st = c.wait_for_orchestration_completion(iid, timeout=30)
    assert st is not None and st.runtime_status == S.COMPLETED, st
    assert state_of(E("counter", k), want=lambda s: s == 8) == 8


def query_and_paging():
    prefix = "q" + key()
    ids = [E("counter", f"{prefix}-{i}") for i in range(5)]
    for i, e in enumerate(ids):
        c.signal_entity(e, "add", i + 1)
    for i, e in enumerate(ids):
        state_of(e, want=lambda s, i=i: s == i + 1)
    found = c.get_all_entities(dtc.EntityQuery(instance_id_starts_with=f"@counter@{prefix}",
                                               include_state=True, page_size=2))
    assert [str(m.id) for m in found] == [str(e) for e in ids], [str(m.id) for m in found]
    assert [m.get_state(int) for m in found] == [1, 2, 3, 4, 5]
    none = c.get_all_entities(dtc.EntityQuery(instance_id_starts_with=f"@counter@{prefix}",
                                              last_modified_to=datetime.now(timezone.utc) - timedelta(hours=1)))
    assert none == [], none


def clean_removes_empty_entities():
    e = E("counter", key())
    c.signal_entity(e, "add", 1)
    state_of(e, want=lambda s: s == 1)
    c.signal_entity(e, "delete")
    deadline = time.time() + 20
    while c.get_entity(e) is not None and time.time() < deadline:
        time.sleep(0.05)
    assert c.get_entity(e) is None, "a deleted state still shows"
    transient = c.get_all_entities(dtc.EntityQuery(instance_id_starts_with=str(e), include_transient=True))
    assert [str(m.id) for m in transient] == [str(e)], "an empty entity is kept until cleaned"
    result = c.clean_entity_storage()
    assert result.empty_entities_removed >= 1, result
    transient = c.get_all_entities(dtc.EntityQuery(instance_id_starts_with=str(e), include_transient=True))
    assert transient == [], transient


def entity_filters_route_entity_work():
    wa = new_worker(entity_fns=[alpha], orchestrators=[],
                    filters=WorkItemFilters(entities=[EntityWorkItemFilter(name="alpha")]))
    wb = new_worker(entity_fns=[beta], orchestrators=[],
                    filters=WorkItemFilters(entities=[EntityWorkItemFilter(name="beta")]))
    wa.start()
    wb.start()
    try:
        k = key()
        for _ in range(3):
            c.signal_entity(E("alpha", k), "run")
            c.signal_entity(E("beta", k), "run")
        # Each ran on the one worker that has it (another would fail the operation).
        assert state_of(E("alpha", k), want=lambda s: s == 3) == 3
        assert state_of(E("beta", k), want=lambda s: s == 300) == 300
    finally:
        wa.stop()
        wb.stop()


def bad_input_is_refused():
    import grpc
    for bad in ["no-at-sign", "@Upper@k", "@@k"]:
        try:
            c._stub.SignalEntity(pb.SignalEntityRequest(instanceId=bad, name="add"))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, err.code())
            assert "entity id" in err.details(), err.details()
        else:
            raise AssertionError(f"{bad!r} was accepted")
    try:
        c._stub.SignalEntity(pb.SignalEntityRequest(instanceId="@counter@big", name="add",
                                                    input=wrappers_pb2.StringValue(value="x" * (1024 * 1024 + 1))))
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.code()
    else:
        raise AssertionError("an input over 1 MB was accepted")
    assert c.get_entity(E("counter", "big")) is None


def wait_custom_status(iid, want, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = c.get_orchestration_state(iid)
        if st is not None and st.serialized_custom_status == f'"{want}"':
            return
        time.sleep(0.05)
    raise AssertionError(f"{iid} never showed custom status {want!r}")


def a_lock_holds_other_operations_until_released():
    a, b = E("account", key()), E("account", key())
    c.signal_entity(a, "deposit", 100)
    state_of(a, want=lambda s: s == 100)
    iid = c.schedule_new_orchestration(locked_transfer, input={"a": a.key, "b": b.key, "amount": 30})
    wait_custom_status(iid, "locked")
    m = c.get_entity(a, include_state=False)
    assert m._locked_by == iid, f"locked by {m._locked_by!r}, want {iid}"
    c.signal_entity(a, "deposit", 5)   # waits for the lock
    time.sleep(1.0)
    assert c.get_entity(a).get_state(int) == 100, "an operation ran on a locked entity"
    assert c.get_entity(a, include_state=False).backlog_queue_size >= 1
    c.raise_orchestration_event(iid, "go")
    st = c.wait_for_orchestration_completion(iid, timeout=30)
    assert st is not None and st.runtime_status == S.COMPLETED, st
    assert st.get_output() == 100, st.get_output()
    assert state_of(a, want=lambda s: s == 75) == 75
    assert state_of(b, want=lambda s: s == 30) == 30
    assert not c.get_entity(a, include_state=False)._locked_by, "still locked"


def an_ended_holder_releases_its_locks():
    k = key()
    e = E("counter", k)
    iid = c.schedule_new_orchestration(lock_and_wait, input=k)
    wait_custom_status(iid, "locked")
    c.signal_entity(e, "add", 1)
    time.sleep(0.8)
    assert c.get_entity(e) is None, "an operation ran on a locked entity"
    # Terminated while it holds the lock: it never runs again to send its unlock.
    c.terminate_orchestration(iid)
    c.wait_for_orchestration_completion(iid, timeout=30)
    assert state_of(e, want=lambda s: s == 1) == 1


def recurring_schedule():
    """The SDK's scheduled-task client (built on an entity and an orchestrator): a schedule
    runs its orchestration at its interval, pauses, resumes, lists and deletes."""
    from durabletask.scheduled import (ScheduleCreationOptions, ScheduledTaskClient,
                                       ScheduleQuery, ScheduleStatus)
    sc = ScheduledTaskClient(c)
    sid = "sched-" + key()
    runs = E("counter", sid)
    schedule = sc.create_schedule(ScheduleCreationOptions(
        schedule_id=sid, orchestration_name="tick", interval=timedelta(seconds=1),
        orchestration_input=sid))
    state_of(runs, timeout=30, want=lambda n: n is not None and n >= 2)
    d = schedule.describe()
    assert d.status == ScheduleStatus.ACTIVE and d.interval == timedelta(seconds=1), d
    assert any(x.schedule_id == sid for x in sc.list_schedules(ScheduleQuery(schedule_id_prefix=sid))), "not listed"
    schedule.pause()
    assert schedule.describe().status == ScheduleStatus.PAUSED
    time.sleep(1.5)  # a run already started may still count
    paused_at = c.get_entity(runs).get_state(int)
    time.sleep(2.5)
    assert c.get_entity(runs).get_state(int) == paused_at, "a paused schedule ran"
    schedule.resume()
    state_of(runs, timeout=30, want=lambda n: n is not None and n >= paused_at + 2)
    schedule.delete()
    assert sc.get_schedule(sid) is None, "a deleted schedule is still there"


SCENARIOS = [
    function_entity_signals_and_get,
    class_entity_and_its_failure,
    delayed_signal,
    orchestration_signals_and_calls_an_entity,
    a_failed_operation_fails_the_call_and_rolls_back,
    entity_side_effects_signal_and_start,
    query_and_paging,
    clean_removes_empty_entities,
    entity_filters_route_entity_work,
    bad_input_is_refused,
    a_lock_holds_other_operations_until_released,
    an_ended_holder_releases_its_locks,
    recurring_schedule,
]


CLIENT_ONLY = [
    function_entity_signals_and_get,
    class_entity_and_its_failure,
    delayed_signal,
    query_and_paging,
    clean_removes_empty_entities,
    bad_input_is_refused,
    recurring_schedule,
]


def run_scenarios(scenarios) -> tuple[int, int]:
    passed = failed = 0
    for scenario in scenarios:
        started = time.time()
        try:
            scenario()
            passed += 1
            print(f"PASS {scenario.__name__} ({time.time() - started:.2f}s)", flush=True)
        except Exception:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {scenario.__name__}", flush=True)
            traceback.print_exc()
    return passed, failed


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[2] == "client-only":
        passed, failed = run_scenarios(CLIENT_ONLY)
        print(f"{passed} passed, {failed} failed", flush=True)
        return 0 if failed == 0 else 1
    if len(sys.argv) == 3 and sys.argv[2] == "worker":
        w = new_worker()
        w.start()
        print("worker started", flush=True)
        try:
            sys.stdin.read()
        finally:
            w.stop()
        return 0
    if len(sys.argv) > 3:
        phase, run = sys.argv[2], sys.argv[3]
        e = E("counter", run)
        if phase == "signal-only":
            for _ in range(20):
                c.signal_entity(e, "add", 1)
            print("signalled", flush=True)
            return 0
        if phase == "check":
            w = new_worker()
            w.start()
            try:
                value = state_of(e, timeout=30, want=lambda s: s is not None and s >= 20)
                time.sleep(0.5)
                value = c.get_entity(e).get_state(int)
                assert value == 20, f"state {value}, want 20 (a signal lost or applied twice)"
            finally:
                w.stop()
            print("checked 20", flush=True)
            return 0
        raise SystemExit(f"unknown phase {phase}")
    main_worker = new_worker()
    main_worker.start()
    try:
        passed, failed = run_scenarios(SCENARIOS)
    finally:
        main_worker.stop()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
