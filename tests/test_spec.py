"""The runtime's lifecycle table and the fuzzer's specification (written on its own) agree
entry by entry; and a consistent change to one entry of the table is caught, both by this
agreement and by a short fuzz run against the changed runtime."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from sandboxd.runtime import TRANSITIONS, Effect, Input, Phase, Refusal, Transition, _lifecycle
from sandboxd.testing import SPEC, Caller, Execs, Expect, Process, Record, expect
from sandboxd.testing.fuzz import fuzz
from test_fuzz import in_process

#: What each effect of the table means to a caller, in the specification's words: the
#: caller's lot, the process's, the record's and the running execs'.
MEANS: Mapping[Effect, tuple[Caller, Process, Record, Execs]] = {
    Effect.REPLY: (Caller.ANSWERED, Process.UNTOUCHED, Record.NOTHING, Execs.UNTOUCHED),
    Effect.SPAWN: (Caller.ANSWERED, Process.SPAWNED, Record.NOTHING, Execs.UNTOUCHED),
    Effect.STOP_UNSTARTED: (Caller.ANSWERED, Process.UNTOUCHED, Record.EXIT_0, Execs.UNTOUCHED),
    Effect.TERMINATE: (
        Caller.PARKED_ON_EXIT,
        Process.TERMINATED,
        Record.NOTHING,
        Execs.TERMINATED,
    ),
    Effect.JOIN_STOP: (
        Caller.PARKED_ON_EXIT,
        Process.EARLIER_DEADLINE,
        Record.NOTHING,
        Execs.UNTOUCHED,
    ),
    Effect.PARK_WAITER: (
        Caller.PARKED_ON_EXIT,
        Process.UNTOUCHED,
        Record.NOTHING,
        Execs.UNTOUCHED,
    ),
    Effect.KILL: (Caller.NOBODY, Process.KILLED, Record.NOTHING, Execs.KILLED),
    Effect.RECORD_EXIT: (Caller.NOBODY, Process.UNTOUCHED, Record.EXIT, Execs.KILLED),
    Effect.KILL_FOR_SHUTDOWN: (
        Caller.PARKED_ON_REMOVAL,
        Process.KILLED,
        Record.NOTHING,
        Execs.KILLED,
    ),
    Effect.JOIN_SHUTDOWN: (
        Caller.PARKED_ON_REMOVAL,
        Process.UNTOUCHED,
        Record.NOTHING,
        Execs.UNTOUCHED,
    ),
    Effect.RECORD_EXIT_AND_REMOVE: (
        Caller.NOBODY,
        Process.UNTOUCHED,
        Record.EXIT_REMOVED,
        Execs.KILLED,
    ),
    Effect.REMOVE_UNSTARTED: (
        Caller.ANSWERED,
        Process.UNTOUCHED,
        Record.EXIT_0_REMOVED,
        Execs.UNTOUCHED,
    ),
    Effect.REMOVE: (Caller.ANSWERED, Process.UNTOUCHED, Record.REMOVED, Execs.UNTOUCHED),
    Effect.START_EXEC: (Caller.EXEC_RUNS, Process.UNTOUCHED, Record.NOTHING, Execs.UNTOUCHED),
    Effect.RECORD_EXEC_EXIT: (Caller.NOBODY, Process.UNTOUCHED, Record.NOTHING, Execs.UNTOUCHED),
    Effect.IGNORE: (Caller.NOBODY, Process.UNTOUCHED, Record.NOTHING, Execs.UNTOUCHED),
}


def as_expected(phase: Phase, entry: Transition | Refusal) -> Expect:
    """A table entry in the specification's words."""
    if isinstance(entry, Refusal):
        return Expect(Caller.REFUSED, exists(phase), code=entry.code)
    caller, process, record, execs = MEANS[entry.effect]
    return Expect(caller, exists(entry.next_phase), process, record, execs=execs)


def exists(phase: Phase) -> Phase | None:
    """The specification says "does not exist" (``None``) for the table's GONE."""
    return None if phase is Phase.GONE else phase


def disagreements(table: Mapping[tuple[Phase, Input], Transition | Refusal]) -> Iterator[str]:
    """Every (phase, input) where ``table`` and the specification differ, in words."""
    for phase in Phase:
        for input in Input:
            entry = table.get((phase, input))
            if entry is None:
                yield f"{phase.name} x {input.name}: no entry in the table"
                continue
            table_says = as_expected(phase, entry)
            spec_says = expect(phase, input)
            if table_says != spec_says:
                yield f"{phase.name} x {input.name}: table {table_says}, spec {spec_says}"


def test_every_effect_has_a_meaning() -> None:
    assert set(MEANS) == set(Effect)


def test_the_specification_covers_every_state_and_input() -> None:
    assert set(SPEC) == set(Phase) - {Phase.GONE}
    for row in SPEC.values():
        assert set(row) == set(Input)


def test_the_table_and_the_specification_agree_entry_by_entry() -> None:
    assert list(disagreements(TRANSITIONS)) == []


@pytest.mark.parametrize(
    ("key", "changed"),
    [
        # Consistent changes: each is a legal entry the actor carries out without complaint.
        ((Phase.STOPPED, Input.START), Transition(Effect.SPAWN, Phase.READY)),
        ((Phase.CREATED, Input.STOP), Transition(Effect.REPLY, Phase.CREATED)),
        ((Phase.STOPPING, Input.STOP_GRACE_EXPIRED), Transition(Effect.IGNORE, Phase.STOPPING)),
    ],
)
def test_a_changed_entry_is_a_disagreement(
    key: tuple[Phase, Input], changed: Transition | Refusal
) -> None:
    table = dict(TRANSITIONS)
    table[key] = changed
    assert [line.split(":")[0] for line in disagreements(table)] == [
        f"{key[0].name} x {key[1].name}"
    ]


def test_a_fuzz_run_finds_a_consistently_changed_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A sandbox that stopped may be started again: the runtime obeys its changed table.
    # The model follows the specification, so the fuzzer sees a second life of the process.
    monkeypatch.setitem(
        _lifecycle.TRANSITIONS,  # type: ignore[arg-type]
        (Phase.STOPPED, Input.START),
        Transition(Effect.SPAWN, Phase.READY),
    )
    report = fuzz(in_process(), seed=3, duration=30, shrink_limit=5)
    assert report.violation is not None, report.summary()
    calls = [call.name for call in report.violation.program.calls]
    assert "start" in calls[calls.index("stop") :], report.violation.describe()
