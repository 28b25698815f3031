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
C, P, R, X = Caller, Process, Record, Execs
MEANS: Mapping[Effect, tuple[Caller, Process, Record, Execs]] = {
    Effect.REPLY: (C.ANSWERED, P.UNTOUCHED, R.NOTHING, X.UNTOUCHED),
    Effect.SPAWN: (C.ANSWERED, P.SPAWNED, R.NOTHING, X.UNTOUCHED),
    Effect.STOP_UNSTARTED: (C.ANSWERED, P.UNTOUCHED, R.EXIT_0, X.UNTOUCHED),
    Effect.TERMINATE: (C.PARKED_ON_EXIT, P.TERMINATED, R.NOTHING, X.TERMINATED),
    Effect.JOIN_STOP: (C.PARKED_ON_EXIT, P.EARLIER_DEADLINE, R.NOTHING, X.UNTOUCHED),
    Effect.PARK_WAITER: (C.PARKED_ON_EXIT, P.UNTOUCHED, R.NOTHING, X.UNTOUCHED),
    Effect.KILL: (C.NOBODY, P.KILLED, R.NOTHING, X.KILLED),
    Effect.EXPIRE: (C.NOBODY, P.TERMINATED, R.NOTHING, X.TERMINATED),
    Effect.RECORD_EXIT: (C.NOBODY, P.UNTOUCHED, R.EXIT, X.KILLED),
    Effect.KILL_FOR_SHUTDOWN: (C.PARKED_ON_REMOVAL, P.KILLED, R.NOTHING, X.KILLED),
    Effect.JOIN_SHUTDOWN: (C.PARKED_ON_REMOVAL, P.UNTOUCHED, R.NOTHING, X.UNTOUCHED),
    Effect.RECORD_EXIT_AND_REMOVE: (C.NOBODY, P.UNTOUCHED, R.EXIT_REMOVED, X.KILLED),
    Effect.REMOVE_UNSTARTED: (C.ANSWERED, P.UNTOUCHED, R.EXIT_0_REMOVED, X.UNTOUCHED),
    Effect.REMOVE: (C.ANSWERED, P.UNTOUCHED, R.REMOVED, X.UNTOUCHED),
    Effect.START_EXEC: (C.EXEC_RUNS, P.UNTOUCHED, R.NOTHING, X.UNTOUCHED),
    Effect.RECORD_EXEC_EXIT: (C.NOBODY, P.UNTOUCHED, R.NOTHING, X.UNTOUCHED),
    Effect.IGNORE: (C.NOBODY, P.UNTOUCHED, R.NOTHING, X.UNTOUCHED),
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
