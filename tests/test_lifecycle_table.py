"""The lifecycle table, checked as data: total, faithful to the contract, and consistent.

Pure: no trio, no I/O.  Each contract cell is written out again here, from the issue's table,
so a change to the table that changes the contract fails a test naming the cell.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandboxd import Code, RPCError
from sandboxd._models import SandboxState
from sandboxd.runtime import (
    CALLS,
    EVENTS,
    TRANSITIONS,
    Effect,
    Input,
    LifecycleError,
    Phase,
    Refusal,
    Transition,
    _lifecycle,
    decide,
    mermaid_diagram,
)

SID = "sb-1"
#: The phases Status can report, in the order of the issue's table.
VISIBLE = (Phase.CREATED, Phase.READY, Phase.STOPPING, Phase.STOPPED)
QUERIES = (Input.STATUS, Input.PLATFORM, Input.PING, Input.METRICS)
#: Effects that record an exit status (and wake the waiters).
EXIT_RECORDING = frozenset(
    {
        Effect.STOP_UNSTARTED,
        Effect.RECORD_EXIT,
        Effect.RECORD_EXIT_AND_REMOVE,
        Effect.REMOVE_UNSTARTED,
    }
)
#: Effects that leave the phase as it is.
STAYING = frozenset(
    {
        Effect.REPLY,
        Effect.IGNORE,
        Effect.PARK_WAITER,
        Effect.JOIN_STOP,
        Effect.JOIN_SHUTDOWN,
        Effect.KILL,
        Effect.START_EXEC,
        Effect.RECORD_EXEC_EXIT,
    }
)


def entry(phase: Phase, input: Input) -> Transition | Refusal:
    return TRANSITIONS[(phase, input)]


def refusal_code(phase: Phase, input: Input) -> Code:
    found = entry(phase, input)
    assert type(found) is Refusal, f"{input.name} in {phase.name}: {found}"
    return found.code


# -- totality ----------------------------------------------------------------------------------


def test_table_has_exactly_one_entry_per_pair() -> None:
    assert len(TRANSITIONS) == len(Phase) * len(Input)
    for phase, input in TRANSITIONS:
        assert type(phase) is Phase
        assert type(input) is Input
    assert set(CALLS) | set(EVENTS) == set(Input)
    assert not set(CALLS) & set(EVENTS)
    assert set(EVENTS) == {
        Input.PROCESS_EXITED,
        Input.STOP_GRACE_EXPIRED,
        Input.LIFETIME_EXPIRED,
        Input.EXEC_EXITED,
    }
    assert all(i.is_event for i in EVENTS)
    assert not any(i.is_event for i in CALLS)


@given(st.sampled_from(Phase), st.sampled_from(Input))
def test_decide_is_total(phase: Phase, input: Input) -> None:
    assert (phase, input) in TRANSITIONS
    found = TRANSITIONS[(phase, input)]
    assert type(found) in (Transition, Refusal)
    try:
        transition = decide(SID, phase, input)
    except LifecycleError as exc:  # pragma: no cover - the failure this test looks for
        raise AssertionError(f"no entry for {input.name} in {phase.name}") from exc
    except RPCError as err:
        assert type(found) is Refusal
        assert err.code is found.code
        assert type(err) is type(RPCError.from_status(found.code, ""))
        assert SID in str(err)
        assert found.reason in str(err)
    else:
        assert type(transition) is Transition
        assert transition == found
        assert type(transition.effect) is Effect
        assert type(transition.next_phase) is Phase


def test_decide_raises_lifecycle_error_for_a_missing_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    partial = dict(TRANSITIONS)
    del partial[(Phase.READY, Input.STOP)]
    monkeypatch.setattr(_lifecycle, "TRANSITIONS", partial)
    with pytest.raises(LifecycleError):
        decide(SID, Phase.READY, Input.STOP)


# -- the contract, cell by cell ------------------------------------------------------------------


@pytest.mark.parametrize("phase", [*VISIBLE, Phase.SHUTTING_DOWN])
def test_create_of_an_existing_sandbox_is_already_exists(phase: Phase) -> None:
    assert refusal_code(phase, Input.CREATE) is Code.ALREADY_EXISTS


def test_start() -> None:
    assert entry(Phase.CREATED, Input.START) == Transition(Effect.SPAWN, Phase.READY)
    for phase in (Phase.READY, Phase.STOPPING, Phase.STOPPED, Phase.SHUTTING_DOWN):
        assert refusal_code(phase, Input.START) is Code.FAILED_PRECONDITION, phase


def test_stop() -> None:
    # created -> stopped (exit 0); ready -> stopping (-> stopped on the exit); stopping joins
    # the stop in progress; stopped: OK, no change.
    assert entry(Phase.CREATED, Input.STOP) == Transition(Effect.STOP_UNSTARTED, Phase.STOPPED)
    assert entry(Phase.READY, Input.STOP) == Transition(Effect.TERMINATE, Phase.STOPPING)
    assert entry(Phase.STOPPING, Input.STOP) == Transition(Effect.JOIN_STOP, Phase.STOPPING)
    assert entry(Phase.STOPPED, Input.STOP) == Transition(Effect.REPLY, Phase.STOPPED)
    # A Stop during Shutdown waits for the same exit.
    assert entry(Phase.SHUTTING_DOWN, Input.STOP) == Transition(
        Effect.JOIN_STOP, Phase.SHUTTING_DOWN
    )


def test_wait() -> None:
    for phase in (Phase.CREATED, Phase.READY, Phase.STOPPING, Phase.SHUTTING_DOWN):
        assert entry(phase, Input.WAIT) == Transition(Effect.PARK_WAITER, phase), phase
    assert entry(Phase.STOPPED, Input.WAIT) == Transition(Effect.REPLY, Phase.STOPPED)


@pytest.mark.parametrize("input", QUERIES)
@pytest.mark.parametrize("phase", [*VISIBLE, Phase.SHUTTING_DOWN])
def test_queries_answer_in_every_state(phase: Phase, input: Input) -> None:
    assert entry(phase, input) == Transition(Effect.REPLY, phase)


def test_shutdown() -> None:
    # created: stops (exit 0) and is gone; ready/stopping: kills and waits; stopped: gone.
    assert entry(Phase.CREATED, Input.SHUTDOWN) == Transition(Effect.REMOVE_UNSTARTED, Phase.GONE)
    for phase in (Phase.READY, Phase.STOPPING):
        assert entry(phase, Input.SHUTDOWN) == Transition(
            Effect.KILL_FOR_SHUTDOWN, Phase.SHUTTING_DOWN
        ), phase
    assert entry(Phase.SHUTTING_DOWN, Input.SHUTDOWN) == Transition(
        Effect.JOIN_SHUTDOWN, Phase.SHUTTING_DOWN
    )
    assert entry(Phase.STOPPED, Input.SHUTDOWN) == Transition(Effect.REMOVE, Phase.GONE)


def test_process_exited() -> None:
    for phase in (Phase.READY, Phase.STOPPING):
        assert entry(phase, Input.PROCESS_EXITED) == Transition(
            Effect.RECORD_EXIT, Phase.STOPPED
        ), phase
    assert entry(Phase.SHUTTING_DOWN, Input.PROCESS_EXITED) == Transition(
        Effect.RECORD_EXIT_AND_REMOVE, Phase.GONE
    )
    # Nothing runs in these phases: a report is stale.
    for phase in (Phase.CREATED, Phase.STOPPED, Phase.GONE):
        assert entry(phase, Input.PROCESS_EXITED) == Transition(Effect.IGNORE, phase), phase


def test_stop_grace_expired() -> None:
    assert entry(Phase.STOPPING, Input.STOP_GRACE_EXPIRED) == Transition(
        Effect.KILL, Phase.STOPPING
    )
    for phase in Phase:
        if phase is not Phase.STOPPING:
            assert entry(phase, Input.STOP_GRACE_EXPIRED) == Transition(Effect.IGNORE, phase)


def test_exec_is_legal_only_in_ready() -> None:
    assert entry(Phase.READY, Input.EXEC) == Transition(Effect.START_EXEC, Phase.READY)
    for phase, name in (
        (Phase.CREATED, "created"),
        (Phase.STOPPING, "stopping"),
        (Phase.STOPPED, "stopped"),
        (Phase.SHUTTING_DOWN, "shutting down"),
    ):
        assert refusal_code(phase, Input.EXEC) is Code.FAILED_PRECONDITION, phase
        with pytest.raises(RPCError, match=f"'{SID}' is {name}: .* only while it is ready"):
            decide(SID, phase, Input.EXEC)


def test_an_exec_exit_is_recorded_wherever_the_sandbox_still_exists() -> None:
    for phase in Phase:
        expected = Effect.IGNORE if phase is Phase.GONE else Effect.RECORD_EXEC_EXIT
        assert entry(phase, Input.EXEC_EXITED) == Transition(expected, phase), phase


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("input", EVENTS)
def test_events_are_never_refused(phase: Phase, input: Input) -> None:
    assert type(entry(phase, input)) is Transition
    decide(SID, phase, input)  # does not raise


@pytest.mark.parametrize("input", CALLS)
def test_gone_refuses_every_call_with_not_found(input: Input) -> None:
    assert refusal_code(Phase.GONE, input) is Code.NOT_FOUND
    with pytest.raises(RPCError) as info:
        decide(SID, Phase.GONE, input)
    assert info.value.code is Code.NOT_FOUND


def test_reported_states() -> None:
    assert Phase.CREATED.reported is SandboxState.CREATED
    assert Phase.READY.reported is SandboxState.READY
    assert Phase.STOPPING.reported is SandboxState.STOPPING
    assert Phase.STOPPED.reported is SandboxState.STOPPED
    assert Phase.SHUTTING_DOWN.reported is SandboxState.STOPPING
    # Every reported state is the state of some phase a sandbox can be seen in.
    assert {p.reported for p in Phase if p is not Phase.GONE} == set(SandboxState)


# -- invariants over the whole table -------------------------------------------------------------


def transitions() -> list[tuple[Phase, Input, Transition]]:
    return [(p, i, t) for (p, i), t in TRANSITIONS.items() if type(t) is Transition]


def test_nothing_transitions_into_created() -> None:
    for phase, input, t in transitions():
        if t.next_phase is Phase.CREATED:
            assert phase is Phase.CREATED, (phase, input, t)


def test_stopped_is_only_entered_by_recording_an_exit() -> None:
    for phase, input, t in transitions():
        if t.next_phase is Phase.STOPPED and phase is not Phase.STOPPED:
            assert t.effect in EXIT_RECORDING, (phase, input, t)


def test_gone_is_only_entered_by_removing() -> None:
    removing = {Effect.REMOVE, Effect.REMOVE_UNSTARTED, Effect.RECORD_EXIT_AND_REMOVE}
    for phase, input, t in transitions():
        if t.next_phase is Phase.GONE and phase is not Phase.GONE:
            assert t.effect in removing, (phase, input, t)
        if t.effect in removing:
            assert t.next_phase is Phase.GONE, (phase, input, t)


def test_gone_is_final() -> None:
    for phase, input, t in transitions():
        if phase is Phase.GONE:
            assert t == Transition(Effect.IGNORE, Phase.GONE), (input, t)


def test_waiting_and_replying_effects_never_change_the_phase() -> None:
    for phase, input, t in transitions():
        if t.effect in STAYING:
            assert t.next_phase is phase, (phase, input, t)


def test_a_refusal_never_changes_the_phase() -> None:
    # A refusal carries no next phase at all; only calls are refused.
    assert Refusal._fields == ("code", "reason")
    for (phase, input), found in TRANSITIONS.items():
        if type(found) is Refusal:
            assert not input.is_event, (phase, input)
            assert found.code in (Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION, Code.NOT_FOUND)


def test_every_phase_is_reachable_from_created() -> None:
    seen = {Phase.CREATED}
    frontier = [Phase.CREATED]
    while frontier:
        phase = frontier.pop()
        for input in Input:
            found = entry(phase, input)
            if type(found) is Transition and found.next_phase not in seen:
                seen.add(found.next_phase)
                frontier.append(found.next_phase)
    assert seen == set(Phase)


@given(st.lists(st.sampled_from(Input), max_size=40))
def test_random_walks_keep_the_lifecycle_monotonic(inputs: list[Input]) -> None:
    # A sandbox runs once: once it left `created` it never returns there, once it stopped it
    # never runs again; refused calls change nothing.
    order = {
        Phase.CREATED: 0,
        Phase.READY: 1,
        Phase.STOPPING: 2,
        Phase.SHUTTING_DOWN: 2,
        Phase.STOPPED: 3,
        Phase.GONE: 4,
    }
    phase = Phase.CREATED
    for input in inputs:
        before = phase
        try:
            phase = decide(SID, phase, input).next_phase
        except RPCError:
            assert not input.is_event
            assert phase is before
            continue
        assert order[phase] >= order[before], (before, input, phase)
        if before is Phase.SHUTTING_DOWN:
            assert phase in (Phase.SHUTTING_DOWN, Phase.GONE)


# -- the generated diagram ---------------------------------------------------------------------


def test_mermaid_diagram_mentions_every_reported_state() -> None:
    diagram = mermaid_diagram()
    assert diagram.startswith("stateDiagram-v2\n")
    for state in SandboxState:
        assert state.value in diagram, state


def test_mermaid_diagram_has_an_edge_for_every_phase_change() -> None:
    diagram = mermaid_diagram()
    edge_lines = [line.strip() for line in diagram.splitlines() if "-->" in line]
    for phase, input, t in transitions():
        if t.effect in (Effect.REPLY, Effect.IGNORE) or t.next_phase is phase:
            continue
        dst = "[*]" if t.next_phase is Phase.GONE else t.next_phase.value
        prefix = f"{phase.value} --> {dst}: "
        matching = [line for line in edge_lines if line.startswith(prefix)]
        assert len(matching) == 1, (prefix, edge_lines)
        assert input.name.replace("_", " ") in matching[0]


def test_mermaid_diagram_is_derived_from_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    original = mermaid_diagram()
    changed = dict(TRANSITIONS)
    changed[(Phase.READY, Input.STOP)] = Refusal(Code.FAILED_PRECONDITION, "test")
    monkeypatch.setattr(_lifecycle, "TRANSITIONS", changed)
    diagram = mermaid_diagram()
    assert diagram != original
    assert "ready --> stopping: STOP" not in diagram
    assert "ready --> stopping: STOP" in original
