"""Unit tests of the reference model (sandboxd.testing._model) and the linearizability checker
(sandboxd.testing._linearize), on hand-written call sequences and histories."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import trio

from sandboxd import Code, FailedPrecondition, NotFound
from sandboxd._models import (
    ExecExit,
    ExitStatus,
    Platform,
    SandboxEvent,
    SandboxInstance,
    SandboxMetrics,
    SandboxState,
    SandboxStatus,
)
from sandboxd.runtime import CALLS, TRANSITIONS, Input, Phase, Refusal
from sandboxd.testing import (
    CALL_INPUTS,
    SIGKILL_STATUS,
    SIGTERM_STATUS,
    Blocks,
    HistoryRecorder,
    Operation,
    Outcome,
    ProcessBehaviour,
    ReferenceModel,
    SandboxModel,
    StatusView,
    Timing,
    call_step,
    check_events,
    check_fields,
    check_linearizable,
    observe,
    pending_events,
    process_exec_behaviour,
    process_model,
    sim_exec_behaviour,
    sim_faults,
    sim_model,
)

OK = Outcome.success
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def status(state: str, exit_status: int | None = None, *, started: bool) -> Outcome:
    return OK(StatusView(SandboxState(state), exit_status, started))


def fail(code: Code) -> Outcome:
    return Outcome.failure(code)


def run(model: ReferenceModel, *calls: tuple[Any, ...]) -> list[Outcome | Blocks]:
    results = []
    for call in calls:
        name, sandbox_id, *rest = call
        args: dict[str, Any] = rest[0] if rest else {}
        results.append(model.apply(name, sandbox_id, **args))
    return results


# -- the sequential model ----------------------------------------------------------------------


def test_the_model_knows_every_call_of_the_table() -> None:
    assert set(CALL_INPUTS.values()) == set(CALLS)


def test_a_full_lifecycle() -> None:
    model = ReferenceModel()
    assert run(
        model,
        ("create", "a"),
        ("status", "a"),
        ("start", "a"),
        ("status", "a"),
        ("stop", "a"),
        ("status", "a"),
        ("wait", "a"),
        ("stop", "a"),
        ("shutdown", "a"),
        ("status", "a"),
    ) == [
        OK("a"),
        status("created", started=False),
        OK(True),
        status("ready", started=True),
        OK(None),
        status("stopped", SIGTERM_STATUS, started=True),
        OK(143),
        OK(None),
        OK(None),
        fail(Code.NOT_FOUND),
    ]
    assert model.sandbox_ids == frozenset()


@pytest.mark.parametrize(
    ("stop_args", "exit_status"),
    [({}, 143), ({"timeout_secs": 0}, 137), ({"timeout_secs": 5}, 143)],
)
def test_stop_of_a_ready_sandbox(stop_args: dict[str, Any], exit_status: int) -> None:
    model = ReferenceModel()
    run(model, ("create", "a"), ("start", "a"))
    assert model.apply("stop", "a", **stop_args) == OK(None)
    assert model.phase("a") is Phase.STOPPED
    assert model.apply("wait", "a") == OK(exit_status)


def test_the_sigterm_exit_status_is_a_parameter() -> None:
    model = ReferenceModel(sigterm_exit_status=0)
    run(model, ("create", "a"), ("start", "a"), ("stop", "a"))
    assert model.apply("wait", "a") == OK(0)
    assert model.apply("status", "a") == status("stopped", 0, started=True)


def test_stop_of_a_created_sandbox_records_exit_0_without_a_pid() -> None:
    model = ReferenceModel()
    run(model, ("create", "a"))
    assert model.apply("stop", "a", timeout_secs=0) == OK(None)
    assert model.apply("status", "a") == status("stopped", 0, started=False)
    assert model.apply("start", "a") == fail(Code.FAILED_PRECONDITION)


def test_shutdown_of_a_ready_sandbox_kills_it_and_wakes_waiters() -> None:
    model = ReferenceModel()
    run(model, ("create", "a"), ("start", "a"))
    wait = model.apply("wait", "a")
    assert wait == Blocks(Input.PROCESS_EXITED, wait.ticket if isinstance(wait, Blocks) else -1)
    assert isinstance(wait, Blocks)
    assert model.apply("shutdown", "a") == OK(None)
    assert model.resolved[wait.ticket] == OK(SIGKILL_STATUS)
    assert model.phase("a") is None
    # The id is free again.
    assert run(model, ("create", "a"), ("status", "a")) == [
        OK("a"),
        status("created", started=False),
    ]


def test_a_wait_on_a_created_sandbox_is_answered_by_stop_with_0() -> None:
    model = ReferenceModel()
    run(model, ("create", "a"))
    wait = model.apply("wait", "a")
    assert isinstance(wait, Blocks)
    assert wait.until is Input.PROCESS_EXITED
    assert model.apply("stop", "a") == OK(None)
    assert model.resolved[wait.ticket] == OK(0)


def test_a_wait_on_a_created_sandbox_is_answered_by_shutdown_with_0() -> None:
    model = ReferenceModel()
    run(model, ("create", "a"))
    wait = model.apply("wait", "a")
    assert isinstance(wait, Blocks)
    assert model.apply("shutdown", "a") == OK(None)
    assert model.resolved[wait.ticket] == OK(0)


def test_a_process_ignoring_sigterm_stops_when_the_grace_period_ends() -> None:
    model = ReferenceModel(sigterm_exit_status=None)
    run(model, ("create", "a"), ("start", "a"))
    stop = model.apply("stop", "a")
    assert isinstance(stop, Blocks)
    assert stop.until is Input.STOP_GRACE_EXPIRED
    assert model.apply("status", "a") == status("stopping", started=True)
    assert model.apply("start", "a") == fail(Code.FAILED_PRECONDITION)
    join = model.apply("stop", "a")  # joins the stop in progress
    assert isinstance(join, Blocks)
    model.expire_grace("a")
    assert model.resolved[stop.ticket] == OK(None)
    assert model.resolved[join.ticket] == OK(None)
    assert model.apply("wait", "a") == OK(SIGKILL_STATUS)


def test_a_zero_timeout_stop_kills_a_stop_in_progress() -> None:
    model = ReferenceModel(sigterm_exit_status=None)
    run(model, ("create", "a"), ("start", "a"))
    stop = model.apply("stop", "a")
    assert isinstance(stop, Blocks)
    assert model.apply("stop", "a", timeout_secs=0) == OK(None)
    assert model.resolved[stop.ticket] == OK(None)
    assert model.apply("wait", "a") == OK(SIGKILL_STATUS)


def test_the_process_may_exit_on_its_own() -> None:
    model = ReferenceModel()
    run(model, ("create", "a"), ("start", "a"))
    model.process_exited("a", 3)
    assert model.apply("status", "a") == status("stopped", 3, started=True)
    assert model.apply("stop", "a") == OK(None)
    assert model.apply("wait", "a") == OK(3)


@pytest.mark.parametrize("call", sorted(CALL_INPUTS))
def test_an_invalid_id_is_invalid_argument_before_the_lookup(call: str) -> None:
    model = ReferenceModel()
    assert model.apply(call, "not a valid id!") == fail(Code.INVALID_ARGUMENT)
    assert model.apply(call, "") == fail(Code.INVALID_ARGUMENT)
    assert model.sandbox_ids == frozenset()


@pytest.mark.parametrize("call", sorted(set(CALL_INPUTS) - {"create"}))
def test_an_unknown_id_is_not_found(call: str) -> None:
    assert ReferenceModel().apply(call, "never-created") == fail(Code.NOT_FOUND)


def test_an_invalid_stop_timeout_is_checked_first() -> None:
    model = ReferenceModel()
    assert model.apply("stop", "never-created", timeout_secs=-1) == fail(Code.INVALID_ARGUMENT)
    assert model.apply("stop", "never-created", timeout_secs=math.inf) == fail(
        Code.INVALID_ARGUMENT
    )


def test_create_twice_is_already_exists() -> None:
    model = ReferenceModel()
    assert run(model, ("create", "a"), ("create", "a")) == [OK("a"), fail(Code.ALREADY_EXISTS)]


def test_peek_changes_nothing() -> None:
    model = ReferenceModel()
    run(model, ("create", "a"), ("start", "a"))
    assert model.peek("stop", "a") == OK(None)
    assert isinstance(model.peek("wait", "a"), Blocks)
    assert model.phase("a") is Phase.READY
    assert model.resolved == {}


@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.GONE])
@pytest.mark.parametrize("input", CALLS)
def test_every_refusal_of_the_table_is_the_models(phase: Phase, input: Input) -> None:
    call = next(name for name, i in CALL_INPUTS.items() if i is input)
    started = phase not in (Phase.CREATED,)
    exit_status = 137 if phase is Phase.STOPPED else None
    sandbox = SandboxModel(phase, started=started, exit_status=exit_status)
    step = call_step(sandbox, call, "a", {}, 0)
    entry = TRANSITIONS[(phase, input)]
    if isinstance(entry, Refusal):
        assert step.reply == fail(entry.code)
        assert step.sandbox == sandbox
    else:
        assert step.reply is None or step.reply.ok
        next_phase = None if step.sandbox is None else step.sandbox.phase
        assert next_phase in (entry.next_phase, None)


def test_signals_race_lets_a_kill_overtake_a_sigterm() -> None:
    behaviour = ProcessBehaviour(sigterm_exit_status=0, signals_race=True)
    sandbox = SandboxModel(Phase.READY, behaviour, started=True)
    stopping = call_step(sandbox, "stop", "a", {}, 0).sandbox
    assert stopping is not None
    killed = call_step(stopping, "shutdown", "a", {}, 1).sandbox
    assert killed is not None
    assert {status for _, status in pending_events(killed)} == {0, 137}


# -- observe -----------------------------------------------------------------------------------


def test_observe_reduces_results_to_outcomes() -> None:
    assert observe("create", "a") == OK("a")
    assert observe("start", SandboxInstance("a", 42, NOW)) == OK(True)
    assert observe("start", SandboxInstance("a", 0, NOW)) == OK(False)
    assert observe("wait", ExitStatus(143, NOW)) == OK(143)
    assert observe(
        "status", SandboxStatus("a", 7, SandboxState.STOPPED, {"exit_status": "0"}, NOW)
    ) == status("stopped", 0, started=True)
    assert observe("status", SandboxStatus("a", 0, SandboxState.CREATED, {}, NOW)) == status(
        "created", started=False
    )
    assert observe("platform", Platform("linux", "amd64")) == OK(None)
    assert observe("metrics", SandboxMetrics("a", NOW, 0, 0, 0)) == OK(None)
    assert observe("stop", None) == OK(None)
    assert observe("start", error=FailedPrecondition("no")) == fail(Code.FAILED_PRECONDITION)
    with pytest.raises(ZeroDivisionError):
        observe("stop", error=ZeroDivisionError())


# -- the checker -------------------------------------------------------------------------------


def op(
    call: str,
    start: float,
    end: float,
    outcome: Outcome | None,
    sandbox_id: str = "a",
    **args: Any,
) -> Operation:
    return Operation(call, sandbox_id, args, start, end, outcome)


def test_a_sequential_history_is_accepted() -> None:
    history = [
        op("create", 0, 1, OK("a")),
        op("start", 2, 3, OK(True)),
        op("stop", 4, 5, OK(None)),
        op("wait", 6, 7, OK(143)),
        op("shutdown", 8, 9, OK(None)),
        op("status", 10, 11, fail(Code.NOT_FOUND)),
    ]
    result = check_linearizable(history)
    assert result.ok, result.describe()


def test_a_correct_concurrent_history_is_accepted() -> None:
    history = [
        op("create", 0, 1, OK("a")),
        op("start", 2, 6, OK(True)),
        # Overlaps the Start: it may see either side of it.
        op("status", 3, 4, status("created", started=False)),
        op("status", 3.5, 6.5, status("ready", started=True)),
        # Parked until the Stop's SIGTERM ends the process.
        op("wait", 5, 12, OK(143)),
        op("wait", 11, 13, OK(143)),
        op("stop", 7, 10, OK(None)),
        # Between the Stop's signal and the exit, the sandbox is stopping.
        op("status", 8, 9, status("stopping", started=True)),
        op("start", 8, 9.5, fail(Code.FAILED_PRECONDITION)),
        op("status", 10.5, 11, status("stopped", 143, started=True)),
        # A stopped sandbox is removed at once: a second Shutdown misses it.
        op("shutdown", 14, 16, OK(None)),
        op("shutdown", 15, 18, fail(Code.NOT_FOUND)),
        op("create", 18.5, 19, OK("a")),
        op("ping", 19.5, 20, OK(None)),
        # A running one is killed first: Shutdowns meanwhile join the one in progress.
        op("create", 0, 1, OK("b"), sandbox_id="b"),
        op("start", 1, 2, OK(True), sandbox_id="b"),
        op("wait", 3, 9, OK(137), sandbox_id="b"),
        op("shutdown", 4, 8, OK(None), sandbox_id="b"),
        op("shutdown", 4.5, 7, OK(None), sandbox_id="b"),
        op("status", 5, 6, status("stopping", started=True), sandbox_id="b"),
        # An invalid id fails before any lookup, whatever else happens.
        op("start", 3, 4, fail(Code.INVALID_ARGUMENT), sandbox_id="bad id"),
    ]
    result = check_linearizable(history)
    assert result.ok, result.describe()


def test_a_wait_parked_before_a_shutdown_gets_the_exit_status() -> None:
    history = [
        op("create", 0, 1, OK("a")),
        op("start", 2, 3, OK(True)),
        op("wait", 4, 8, OK(137)),
        op("shutdown", 5, 7, OK(None)),
        op("wait", 6, 9, fail(Code.NOT_FOUND)),
    ]
    result = check_linearizable(history)
    assert result.ok, result.describe()


def test_a_history_is_checked_against_the_models_process_behaviour() -> None:
    history = [
        op("create", 0, 1, OK("a")),
        op("start", 2, 3, OK(True)),
        op("stop", 4, 5, OK(None)),
        op("wait", 6, 7, OK(0)),
    ]
    assert not check_linearizable(history).ok
    assert check_linearizable(history, ReferenceModel(sigterm_exit_status=0)).ok


def test_a_stop_that_changes_nothing_early_may_stop_a_new_sandbox_later() -> None:
    # The second Stop would be a no-op right after the first; it must be placed after the
    # re-create instead, or the Wait could never be answered.
    history = [
        op("create", 0, 1, OK("a")),
        op("stop", 1.5, 2, OK(None)),
        op("stop", 2.5, 9, OK(None)),
        op("shutdown", 3, 4, OK(None)),
        op("create", 5, 6, OK("a")),
        op("status", 6.5, 7, status("created", started=False)),
        op("wait", 10, 11, OK(0)),
    ]
    result = check_linearizable(history)
    assert result.ok, result.describe()


def test_start_succeeding_twice_is_rejected() -> None:
    create = op("create", 0, 1, OK("a"))
    start1 = op("start", 2, 3, OK(True))
    status_ = op("status", 3.5, 4, status("ready", started=True))
    start2 = op("start", 5, 6, OK(True))
    result = check_linearizable([create, start1, status_, start2])
    assert not result.ok
    assert not result.inconclusive
    assert result.sandbox_id == "a"
    assert result.conflict == (start1, start2), result.describe()


def test_two_overlapping_starts_cannot_both_succeed() -> None:
    create = op("create", 0, 1, OK("a"))
    start1 = op("start", 2, 5, OK(True))
    start2 = op("start", 3, 4, OK(True))
    result = check_linearizable([create, start1, start2])
    assert not result.ok
    assert set(result.conflict) == {start1, start2}, result.describe()


def test_a_wait_answered_before_anything_could_stop_the_sandbox_is_rejected() -> None:
    create = op("create", 0, 1, OK("a"))
    start = op("start", 1.5, 2, OK(True))
    wait = op("wait", 3, 4, OK(143))
    stop = op("stop", 5, 6, OK(None))
    result = check_linearizable([create, start, wait, stop])
    assert not result.ok
    assert wait in result.conflict, result.describe()
    assert stop not in result.conflict  # it began after the Wait had returned: not involved


def test_a_wait_overlapping_the_stop_is_accepted() -> None:
    history = [
        op("create", 0, 1, OK("a")),
        op("start", 1.5, 2, OK(True)),
        op("wait", 3, 5.5, OK(143)),
        op("stop", 5, 6, OK(None)),
    ]
    assert check_linearizable(history).ok


def test_status_ready_after_a_stop_returned_is_rejected() -> None:
    create = op("create", 0, 1, OK("a"))
    start = op("start", 2, 3, OK(True))
    stop = op("stop", 4, 5, OK(None))
    late = op("status", 6, 7, status("ready", started=True))
    result = check_linearizable([create, start, stop, late])
    assert not result.ok
    assert set(result.conflict) == {stop, late}, result.describe()
    assert "status('a') -> ok(" in result.describe()


def test_status_ready_overlapping_the_stop_is_accepted() -> None:
    history = [
        op("create", 0, 1, OK("a")),
        op("start", 2, 3, OK(True)),
        op("stop", 4, 6, OK(None)),
        op("status", 5, 7, status("ready", started=True)),
    ]
    assert check_linearizable(history).ok


def test_only_the_failing_sandbox_is_named() -> None:
    good = [
        op("create", 0, 1, OK("good"), "good"),
        op("start", 2, 3, OK(True), "good"),
        op("start", 4, 5, fail(Code.FAILED_PRECONDITION), "good"),
    ]
    bad_start = op("start", 2, 3, OK(True), "bad")  # never created
    result = check_linearizable([*good, bad_start])
    assert not result.ok
    assert result.sandbox_id == "bad"
    assert result.conflict == (bad_start,)


def test_an_operation_without_an_answer_may_or_may_not_have_happened() -> None:
    base = [
        op("create", 0, 1, OK("a")),
        op("start", 2, 3, OK(True)),
        op("stop", 4, math.inf, None),  # cancelled: the stop goes on, or never arrived
    ]
    stopped = op("status", 6, 7, status("stopped", 143, started=True))
    ready = op("status", 6, 7, status("ready", started=True))
    assert check_linearizable([*base, stopped]).ok
    assert check_linearizable([*base, ready]).ok
    assert check_linearizable([*base, ready, op("wait", 8, 9, OK(143))]).ok


def test_the_initial_state_comes_from_the_model() -> None:
    model = ReferenceModel()
    model.apply("create", "a")
    model.apply("start", "a")
    history = [op("start", 0, 1, fail(Code.FAILED_PRECONDITION)), op("stop", 2, 3, OK(None))]
    assert check_linearizable(history, model).ok
    assert not check_linearizable(history).ok


def test_a_search_out_of_budget_is_inconclusive() -> None:
    # Overlapping creates and shutdowns: many orders to try before giving up.
    history = [op("create", 0, 10, OK("a")) for _ in range(4)]
    history += [op("shutdown", 0, 10, OK(None)) for _ in range(4)]
    history.append(op("start", 0, 10, OK(False)))  # impossible: no pid
    result = check_linearizable(history, max_states=5)
    assert not result.ok
    assert result.inconclusive
    result = check_linearizable(history)
    assert not result.ok
    assert not result.inconclusive
    assert [o.call for o in result.conflict] == ["start"]


async def test_the_recorder_records_calls_with_their_outcomes() -> None:
    class Target:
        async def ping(self, sandbox_id: str) -> None:
            await trio.lowlevel.checkpoint()
            if sandbox_id != "a":
                raise NotFound("no")

        async def wait(self, sandbox_id: str) -> ExitStatus:
            await trio.sleep_forever()
            raise AssertionError

    recorder = HistoryRecorder()
    target = Target()
    assert await recorder.call(target, "ping", "a", client=1) == OK(None)
    assert await recorder.call(target, "ping", "b") == fail(Code.NOT_FOUND)
    with trio.move_on_after(0.01):
        await recorder.call(target, "wait", "a")
    first, second, third = recorder.operations
    assert (first.call, first.client, first.outcome) == ("ping", 1, OK(None))
    assert first.start_time <= first.end_time <= second.start_time
    assert third.outcome is None and third.end_time == math.inf
    assert check_linearizable(recorder.operations, _existing("a")).ok


def _existing(*sandbox_ids: str) -> ReferenceModel:
    model = ReferenceModel()
    for sandbox_id in sandbox_ids:
        model.apply("create", sandbox_id)
    return model


# -- deadlines ---------------------------------------------------------------------------------

IGNORES_SIGTERM = ReferenceModel(sigterm_exit_status=None, timing=Timing(tolerance=0.001))


def stops(first: float, second: float, returned: float) -> list[Operation]:
    """Two Stops with these timeouts at once on a process that ignores SIGTERM, and a Wait,
    all returning at ``returned``."""
    return [
        op("create", 0, 0, OK("a")),
        op("start", 0, 0, OK(True)),
        op("stop", 1, returned, OK(None), timeout_secs=first),
        op("stop", 1, returned, OK(None), timeout_secs=second),
        op("wait", 1, returned, OK(137)),
    ]


def test_of_two_stops_the_earlier_deadline_kills() -> None:
    assert check_linearizable(stops(5, 1, 2), IGNORES_SIGTERM).ok
    assert check_linearizable(stops(1, 5, 2), IGNORES_SIGTERM).ok
    # Answered at the later deadline: the earlier one was missed.
    assert not check_linearizable(stops(5, 1, 6), IGNORES_SIGTERM).ok
    # Without a tolerance, only a grace ending early is wrong.
    assert check_linearizable(stops(5, 1, 6), ReferenceModel(sigterm_exit_status=None)).ok


def test_a_grace_period_ends_when_it_ends_not_before() -> None:
    early = stops(5, 5, 3)
    assert not check_linearizable(early, IGNORES_SIGTERM).ok
    assert not check_linearizable(early, ReferenceModel(sigterm_exit_status=None)).ok
    assert check_linearizable(stops(5, 5, 6), IGNORES_SIGTERM).ok


def test_the_default_grace_period_is_the_timings() -> None:
    model = ReferenceModel(sigterm_exit_status=None, timing=Timing(2, tolerance=0.001))
    history = stops(5, 5, 6)
    history[2] = op("stop", 1, 3, OK(None))  # the Controller's 2 s
    history[3:] = [op("wait", 1, 3, OK(137))]
    assert check_linearizable(history, model).ok
    history[3:] = [op("status", 2.5, 2.5, status("stopped", 137, started=True))]
    assert not check_linearizable(history, model).ok  # not before 3


def test_a_sigkilled_process_exit_is_recorded_within_the_tolerance() -> None:
    model = ReferenceModel(timing=Timing(tolerance=0.5))
    history = [
        op("create", 0, 0, OK("a")),
        op("start", 0, 0, OK(True)),
        op("shutdown", 1, 1.2, OK(None)),
        op("wait", 1, 1.2, OK(137)),
    ]
    assert check_linearizable(history, model).ok
    history[2:] = [op("shutdown", 1, 3, OK(None)), op("wait", 1, 3, OK(137))]
    assert not check_linearizable(history, model).ok


# -- events and fields -------------------------------------------------------------------------


def event(topic: str, exit_status: int | None = None) -> SandboxEvent:
    return SandboxEvent(f"/sandboxes/{topic}", "a", NOW, exit_status=exit_status)


def one_life() -> list[Operation]:
    return [
        Operation("create", "a", {}, 0, 0, OK("a"), order=(1, 2)),
        Operation("start", "a", {}, 0, 0, OK(True), order=(3, 4)),
        Operation("stop", "a", {}, 0, 1, OK(None), order=(5, 6)),
        Operation("wait", "a", {}, 1, 1, OK(143), order=(7, 8)),
        Operation("shutdown", "a", {}, 1, 1, OK(None), order=(9, 10)),
    ]


def test_every_event_once_in_order_with_the_exit_status_seen() -> None:
    model = ReferenceModel()
    life = ["create", "start", "exit", "delete"]
    right = [event(t, 143 if t == "exit" else None) for t in life]
    assert check_events(one_life(), right, model) == []
    twice = [*right[:2], right[1], *right[2:]]
    assert "event /sandboxes/start where the lifecycle is at 'started'" in "".join(
        check_events(one_life(), twice, model)
    )
    missing = [right[0], right[1], right[3]]
    assert "event /sandboxes/delete where" in "".join(check_events(one_life(), missing, model))
    wrong = [*right[:2], event("exit", 137), right[3]]
    assert "its exit event says 137, but" in "".join(check_events(one_life(), wrong, model))
    never_created = check_events(one_life()[:1], [event("create"), event("create")], model)
    assert "event /sandboxes/create where the lifecycle is at 'created'" in never_created[0]


def test_fields_are_stable_within_a_life_and_in_order() -> None:
    later = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    history = one_life()

    def with_status(created_at: datetime, exited_at: datetime | None) -> list[Operation]:
        info = {"exit_status": "143"} if exited_at else {}
        answer = SandboxStatus("a", 7, SandboxState.STOPPED, info, created_at, exited_at)
        return [
            *history,
            Operation("status", "a", {}, 1, 1, OK(None), result=answer, order=(11, 12)),
            Operation("status", "a", {}, 1, 1, OK(None), result=answer, order=(13, 14)),
        ]

    # Wall-clock bounds aside (these calls have none recorded), these agree.
    assert not [p for p in check_fields(with_status(NOW, later)) if "within" not in p]
    problems = check_fields(with_status(later, NOW))
    assert any("exited_at" in p and "is before created_at" in p for p in problems), problems


# -- execs -------------------------------------------------------------------------------------


def exited(status: int, *, timed_out: bool = False, signal: int | None = None) -> Outcome:
    return OK(ExecExit(status, timed_out, signal))


KILLED = exited(137, signal=9)
TERMED = exited(143, signal=15)


def sim_exec(*command: str, **fields: Any) -> dict[str, Any]:
    return {"command": command, **fields}


def test_an_exec_runs_only_in_ready_and_a_sequential_caller_waits_for_its_end() -> None:
    model = sim_model()
    assert run(
        model,
        ("exec", "a", sim_exec("true")),
        ("create", "a"),
        ("exec", "a", sim_exec("true")),
        ("start", "a"),
        ("exec", "a", sim_exec("true")),
        ("exec", "a", sim_exec("exit", "3")),
        ("exec", "a", sim_exec("sleep", "5")),
        ("exec", "a", sim_exec("sleep", "5", timeout_secs=1)),
        ("exec", "a", sim_exec("hang", timeout_secs=1)),
        ("exec", "bad id", sim_exec("true")),
    ) == [
        fail(Code.NOT_FOUND),
        OK("a"),
        fail(Code.FAILED_PRECONDITION),
        OK(True),
        exited(0),
        exited(3),
        exited(0),
        exited(137, timed_out=True, signal=9),
        exited(137, timed_out=True, signal=9),
        fail(Code.INVALID_ARGUMENT),
    ]
    assert model.sandbox("a") == SandboxModel(Phase.READY, started=True)
    blocked = model.apply("exec", "a", **sim_exec("hang"))
    assert isinstance(blocked, Blocks) and blocked.until is Input.PROCESS_EXITED
    assert model.apply("status", "a") == OK(StatusView(SandboxState.READY, None, True, 1))
    # The Stop's SIGTERM reaches the exec too; then Exec is refused.
    assert run(model, ("stop", "a"), ("exec", "a", sim_exec("true"))) == [
        OK(None),
        fail(Code.FAILED_PRECONDITION),
    ]
    assert model.resolved[blocked.ticket] == TERMED


@pytest.mark.parametrize(
    ("ending", "outcome"),
    [
        ("stop", TERMED),
        ("shutdown", KILLED),
        ("exit", KILLED),
        ("stop0", KILLED),
    ],
)
def test_what_stop_shutdown_and_the_init_exit_do_to_a_running_exec(
    ending: str, outcome: Outcome
) -> None:
    model = sim_model()
    run(model, ("create", "a"), ("start", "a"))
    blocked = model.apply("exec", "a", **sim_exec("hang"))
    assert isinstance(blocked, Blocks)
    if ending == "exit":
        model.process_exited("a", 0)
    elif ending == "stop0":
        model.apply("stop", "a", timeout_secs=0)
    else:
        model.apply(ending, "a")
    assert model.resolved[blocked.ticket] == outcome


def test_an_exec_of_a_sandbox_whose_process_ignores_sigterm_dies_of_it_anyway() -> None:
    # Signals go to each process: the exec's command does not ignore SIGTERM.
    model = ReferenceModel(sigterm_exit_status=None, exec_behaviour_of=sim_exec_behaviour)
    run(model, ("create", "a"), ("start", "a"))
    blocked = model.apply("exec", "a", **sim_exec("hang"))
    stop = model.apply("stop", "a")
    assert isinstance(blocked, Blocks) and isinstance(stop, Blocks)
    assert model.resolved[blocked.ticket] == TERMED


def exec_op(start: float, end: float, outcome: Outcome | None, *command: str) -> Operation:
    return op("exec", start, end, outcome, command=command or ("hang",))


def started_sandbox() -> list[Operation]:
    return [op("create", 0, 0, OK("a")), op("start", 0, 0, OK(True))]


EXACT = sim_model(Timing(tolerance=0.001))


def test_an_exec_racing_a_stop_ends_by_its_signals() -> None:
    history = [
        *started_sandbox(),
        exec_op(1, 2, TERMED, "sleep", "5"),
        op("stop", 2, 2, OK(None)),
    ]
    assert check_linearizable(history, EXACT).ok
    # Left running after the Stop, it ended on its own: no order explains it.
    history[2] = exec_op(1, 6, exited(0), "sleep", "5")
    result = check_linearizable(history, EXACT)
    assert not result.ok
    # Ending on its own as the Stop arrives, it may have ended first; not once it arrived.
    history[2:] = [exec_op(1, 1.5, exited(0), "sleep", "0.5"), op("stop", 1.5, 2, OK(None))]
    assert check_linearizable(history, EXACT).ok
    history[3] = op("stop", 1.2, 2, OK(None))
    assert not check_linearizable(history, EXACT).ok


def test_an_exec_starting_while_a_stop_is_made_is_refused_or_signalled() -> None:
    for outcome in (TERMED, fail(Code.FAILED_PRECONDITION)):
        history = [*started_sandbox(), exec_op(1, 2, outcome), op("stop", 1, 2, OK(None))]
        assert check_linearizable(history, EXACT).ok, outcome
    # Allowed in stopping: it ran, although the Stop had returned before it began.
    history = [*started_sandbox(), op("stop", 1, 1, OK(None)), exec_op(2, 3, exited(0), "true")]
    assert not check_linearizable(history, EXACT).ok


def test_a_stop_or_shutdown_returns_once_the_execs_have_ended() -> None:
    history = [
        *started_sandbox(),
        exec_op(1, 2, KILLED),
        op("shutdown", 2, 2, OK(None)),
        op("create", 2.0001, 2.0001, OK("a")),
        op("status", 2.0002, 2.0002, status("created", started=False)),
    ]
    assert check_linearizable(history, EXACT).ok
    history[2] = exec_op(1, 2.5, KILLED)  # it ended after the Shutdown returned
    assert not check_linearizable(history, EXACT).ok
    # The exit is recorded once the exec has ended: not before.
    history = [
        *started_sandbox(),
        exec_op(1, 3, KILLED),
        op("wait", 1, 3, OK(0)),
        op("status", 2, 2, OK(StatusView(SandboxState.READY, None, True, 1))),
    ]
    model = sim_model(Timing(tolerance=0.001))
    run(model, ("create", "a", {"options": sim_faults(exit_after=2)}), ("start", "a"))
    history[:2] = []
    assert check_linearizable(history, model).ok
    history[2] = op("status", 2.5, 2.5, OK(StatusView(SandboxState.STOPPED, 0, True, 0)))
    assert not check_linearizable(history, model).ok


def test_a_timeout_kills_an_exec_when_it_is_due() -> None:
    history = [*started_sandbox(), op("exec", 1, 3, None, command=("hang",), timeout_secs=2)]
    history[2] = attrs.evolve(history[2], outcome=exited(137, timed_out=True, signal=9))
    assert check_linearizable(history, EXACT).ok
    early = attrs.evolve(history[2], end_time=2)
    assert not check_linearizable([*history[:2], early], EXACT).ok
    # Its own end comes first: not timed out.
    history[2] = op("exec", 1, 2, exited(0), command=("sleep", "1"), timeout_secs=2)
    assert check_linearizable(history, EXACT).ok
    history[2] = op("exec", 1, 3, exited(0), command=("sleep", "3"), timeout_secs=2)
    assert not check_linearizable(history, EXACT).ok


def test_status_counts_the_running_execs() -> None:
    history = [
        *started_sandbox(),
        exec_op(1, 4, TERMED),
        op("status", 2, 2, OK(StatusView(SandboxState.READY, None, True, 1))),
        op("stop", 4, 4, OK(None)),
        op("status", 6, 6, OK(StatusView(SandboxState.STOPPED, 143, True, 0))),
    ]
    assert check_linearizable(history, EXACT).ok
    history[3] = op("status", 2, 2, OK(StatusView(SandboxState.READY, None, True, 0)))
    assert not check_linearizable(history, EXACT).ok


def test_real_execs_may_end_by_either_signal() -> None:
    model = process_model(Timing(tolerance=0.5))
    history = [
        op("create", 0, 0, OK("a"), sandboxer="process"),
        op("start", 0, 0, OK(True)),
        exec_op(1, 3, KILLED, "sleep", "30"),
        op("stop", 2, 3, OK(None), timeout_secs=0.1),
    ]
    assert check_linearizable(history, model).ok
    history[2] = exec_op(1, 3, TERMED, "sleep", "30")
    assert check_linearizable(history, model).ok
    assert process_exec_behaviour({"command": ("sh", "-c", "exit 4")}).exit_status == 4
    assert process_exec_behaviour({"command": ("sleep", "0.5")}).runs_for == 0.5


def test_an_exec_that_cannot_start_is_refused_and_counted_until_then() -> None:
    model = sim_model(Timing(tolerance=0.001))
    faults = sim_faults(exec_error="no", exec_delay=1)
    run(model, ("create", "a", {"options": faults}), ("start", "a"))
    history = [
        exec_op(1, 2, fail(Code.FAILED_PRECONDITION), "true"),
        op("status", 1.5, 1.5, OK(StatusView(SandboxState.READY, None, True, 1))),
    ]
    assert check_linearizable(history, model).ok
    history[0] = exec_op(1, 1.2, fail(Code.FAILED_PRECONDITION), "true")  # before its delay
    assert not check_linearizable(history[:1], model).ok
    assert run(sim_model(), ("create", "b", {"options": faults}), ("start", "b")) == [
        OK("b"),
        OK(True),
    ]


def test_an_exec_starting_when_the_process_dies_may_fail_to_start() -> None:
    model = sim_model(Timing(tolerance=0.001))
    run(model, ("create", "a", {"options": sim_faults(exec_delay=1)}), ("start", "a"))
    for outcome in (fail(Code.FAILED_PRECONDITION), KILLED):
        history = [exec_op(1, 1.5, outcome, "true"), op("shutdown", 1.5, 1.5, OK(None))]
        assert check_linearizable(history, model).ok, outcome
    # Once it ran, a Shutdown kills it.
    history = [
        exec_op(1, 3, fail(Code.FAILED_PRECONDITION), "hang"),
        op("shutdown", 3, 3, OK(None)),
    ]
    assert not check_linearizable(history, model).ok


def test_an_exec_refused_after_it_was_counted_is_no_refusal_at_once() -> None:
    # The process exits on its own as it starts; an exec taken meanwhile is counted by a
    # Status, then fails to start: it was not refused at once (before the Start, say).
    model = sim_model(Timing(tolerance=0.001))
    faults = sim_faults(exit_on="start", exit_code=0)
    history = [
        Operation("create", "a", {"options": faults}, 0, 0, OK("a"), order=(1, 2)),
        Operation("start", "a", {}, 0, 0, OK(True), order=(3, 6)),
        Operation(
            "exec", "a", {"command": ("hang",)}, 0, 0, fail(Code.FAILED_PRECONDITION), order=(4, 8)
        ),
        Operation(
            "status",
            "a",
            {},
            0,
            0,
            OK(StatusView(SandboxState.READY, None, True, 1)),
            order=(5, 7),
        ),
    ]
    assert check_linearizable(history, model).ok


def test_a_lifetime_stops_a_ready_sandbox_as_a_stop_would() -> None:
    model = ReferenceModel(
        behaviour_of=lambda _: ProcessBehaviour(sigterm_exit_status=None, lifetime=5.0)
    )
    run(model, ("create", "a"))
    model.expire_lifetime("a")  # not armed before Start: nothing happens
    assert model.apply("status", "a") == status("created", started=False)
    run(model, ("start", "a"))
    sandbox = model.sandbox("a")
    assert sandbox is not None and sandbox.lifetime_armed
    assert (Input.LIFETIME_EXPIRED, None) in pending_events(sandbox)
    wait = model.apply("wait", "a")
    assert isinstance(wait, Blocks)
    model.expire_lifetime("a")  # SIGTERM (ignored), the grace timer armed
    assert model.apply("status", "a") == status("stopping", started=True)
    model.expire_grace("a")
    assert model.resolved[wait.ticket] == OK(SIGKILL_STATUS)


def test_a_lifetime_no_longer_matters_once_the_sandbox_is_stopping() -> None:
    model = ReferenceModel(behaviour_of=lambda _: ProcessBehaviour(lifetime=5.0))
    run(model, ("create", "a"), ("start", "a"))
    assert model.apply("stop", "a") == OK(None)
    sandbox = model.sandbox("a")
    assert sandbox is not None and not sandbox.lifetime_armed
