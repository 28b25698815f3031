"""The sandbox lifecycle as a caller sees it: a specification written on its own.

Theory of operation
-------------------

The runtime decides what a call does from its own table (``runtime/_lifecycle.py``).  Were
the reference model to read that table too, a change to one of its entries would change the
model with it, and no test built on the model could notice.  So the expected behaviour is
written here a second time, in the words of someone who uses the Controller, and a test
checks that the two agree entry by entry (``tests/test_spec.py``).

For every state of a sandbox and every call or event, :data:`SPEC` says what happens as an
:class:`Expect`: what the caller gets (:class:`Caller`: an answer at once, parked until the
exit is recorded or until the sandbox is gone, or a refusal with its status code), what
happens to the process (:class:`Process`), to the execs running in the sandboxes
(:class:`Execs`), what is recorded (:class:`Record`), and the state afterwards.  Who is woken
follows from the record: an exit wakes every parked Wait (with the exit status) and Stop; a
removal completes every parked Shutdown.

Execs: an Exec is answered with a running command only in ``ready`` (:data:`EXEC`); in every
other state it is refused with FAILED_PRECONDITION, and nothing runs.  A running exec gets
the signals a Stop sends the sandbox (SIGTERM at once, SIGKILL when the grace period ends),
is SIGKILLed by Shutdown, and is SIGKILLed when the sandbox's process exits for any reason;
each exec's caller gets its command's real exit status (128 + N for signal N), or
``timed_out`` when the exec's own timeout killed it.  The process's exit is recorded (and
the calls parked on it answered) only once every exec has ended, so a Wait, Stop or Shutdown
that returns leaves no exec behind; ``PROCESS_EXITED`` is that record.

Lifetimes: a sandbox created with ``lifetime_secs`` that has been ``ready`` that long is
stopped as a Stop with the default grace period stops it (``LIFETIME_EXPIRED``: SIGTERM to
the process and the execs, SIGKILL when the grace ends), nobody being answered; its status
and exit event then give ``reason: lifetime_expired``.  In any other state the lifetime no
longer matters.  An exec's end
(``EXEC_EXITED``) changes nothing else a caller sees.

The states and inputs are named with the runtime's :class:`~sandboxd.runtime.Phase` and
:class:`~sandboxd.runtime.Input` (they are only names); nothing else is taken from it.

This module imports neither trio nor Hypothesis.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, final

import attrs

from .._errors import Code
from ..runtime import Input, Phase

__all__ = [
    "EXEC",
    "SPEC",
    "Caller",
    "Execs",
    "Expect",
    "Process",
    "Record",
    "expect",
    "expect_exec",
]


class Caller(enum.Enum):
    """What the caller of the input gets."""

    #: An answer at once, from the state (a Start's pid once the process runs).
    ANSWERED = "answered at once"
    #: Nothing until the exit is recorded (a Wait gets the exit status, a Stop None).
    PARKED_ON_EXIT = "parked until the exit is recorded"
    #: Nothing until the sandbox is gone.
    PARKED_ON_REMOVAL = "parked until the sandbox is gone"
    #: The refusal's status code, and nothing changes.
    REFUSED = "refused"
    #: An Exec: its command runs, and the caller gets its exit status once it ends.
    EXEC_RUNS = "answered with a running exec"
    #: An event: nobody called.
    NOBODY = "nobody (an event)"


class Process(enum.Enum):
    """What happens to the sandbox's process."""

    UNTOUCHED = "untouched"
    #: Started; if that fails the caller gets the error and nothing changes.
    SPAWNED = "spawned"
    #: SIGTERM, and SIGKILL when the Stop's grace period ends (at once for a zero timeout).
    TERMINATED = "SIGTERM, SIGKILL at the deadline"
    #: A Stop joining one in progress: its deadline replaces the armed one if earlier.
    EARLIER_DEADLINE = "the earlier deadline wins"
    #: SIGKILL now (and no grace timer any more).
    KILLED = "SIGKILL"


class Execs(enum.Enum):
    """What happens to the execs running in the sandbox."""

    UNTOUCHED = "untouched"
    #: The signals the Stop sends the sandbox's process: SIGTERM, SIGKILL at the deadline
    #: (at once for a zero timeout).
    TERMINATED = "SIGTERM, SIGKILL at the deadline"
    #: SIGKILL now.
    KILLED = "SIGKILL"


class Record(enum.Enum):
    """What the sandbox's record keeps afterwards."""

    NOTHING = "nothing new"
    #: Exit status 0, for a sandbox that never ran: wakes parked Waits and Stops.
    EXIT_0 = "exit status 0"
    #: The process's exit status: wakes parked Waits and Stops.
    EXIT = "the exit status"
    #: Exit status 0, then the sandbox is gone: wakes everyone parked.
    EXIT_0_REMOVED = "exit status 0, then removed"
    #: The process's exit status, then the sandbox is gone: wakes everyone parked.
    EXIT_REMOVED = "the exit status, then removed"
    #: The sandbox is gone (its exit was recorded before): completes parked Shutdowns.
    REMOVED = "removed"


@final
@attrs.frozen(slots=True)
class Expect:
    """What one input does in one state: the caller's lot, the process's, the record's, and
    the state afterwards (``None``: it no longer exists).  ``code`` is the refusal's; ``execs``
    what happens to the execs running in the sandbox."""

    caller: Caller
    then: Phase | None
    process: Process = Process.UNTOUCHED
    record: Record = Record.NOTHING
    code: Code | None = None
    execs: Execs = Execs.UNTOUCHED

    @property
    def exit_recorded(self) -> bool:
        """Whether an exit status is recorded (which wakes parked Waits and Stops)."""
        return self.record in (
            Record.EXIT_0,
            Record.EXIT,
            Record.EXIT_0_REMOVED,
            Record.EXIT_REMOVED,
        )

    @property
    def removed(self) -> bool:
        """Whether the sandbox is removed (which completes parked Shutdowns)."""
        return self.record in (Record.EXIT_0_REMOVED, Record.EXIT_REMOVED, Record.REMOVED)


def _answered(state: Phase, process: Process = Process.UNTOUCHED) -> Expect:
    return Expect(Caller.ANSWERED, state, process)


def _refused(code: Code, state: Phase | None) -> Expect:
    return Expect(Caller.REFUSED, state, code=code)


def _ignored(state: Phase) -> Expect:
    return Expect(Caller.NOBODY, state)


def _queries(state: Phase) -> dict[Input, Expect]:
    """Status, Platform, Ping and Metrics answer from the state and change nothing."""
    queries = (Input.STATUS, Input.PLATFORM, Input.PING, Input.METRICS)
    return {query: _answered(state) for query in queries}


_CREATED, _READY, _STOPPING = Phase.CREATED, Phase.READY, Phase.STOPPING
_STOPPED, _SHUTTING_DOWN = Phase.STOPPED, Phase.SHUTTING_DOWN
_EXISTS = _refused(Code.ALREADY_EXISTS, None)  # the state is kept: see expect()
_NOT_STARTABLE = _refused(Code.FAILED_PRECONDITION, None)
_NOT_READY = _refused(Code.FAILED_PRECONDITION, None)

#: state -> what an Exec does: its command runs only in ``ready``; elsewhere it is refused
#: and nothing runs (a sandbox that does not exist: NOT_FOUND, see :func:`expect_exec`).
EXEC: Final[Mapping[Phase, Expect]] = {
    _CREATED: _NOT_READY,
    _READY: Expect(Caller.EXEC_RUNS, _READY),
    _STOPPING: _NOT_READY,
    _STOPPED: _NOT_READY,
    _SHUTTING_DOWN: _NOT_READY,
}


def _execs(state: Phase) -> dict[Input, Expect]:
    """An Exec as :data:`EXEC` says; an exec's end, as an event, changes nothing else."""
    return {Input.EXEC: EXEC[state], Input.EXEC_EXITED: _ignored(state)}


#: state -> input -> what happens.  The sandbox that does not exist (GONE, or never created)
#: refuses every call with NOT_FOUND, but Create, which makes it (see :func:`expect`).
SPEC: Final[Mapping[Phase, Mapping[Input, Expect]]] = {
    # Created: nothing runs yet.
    _CREATED: {
        Input.CREATE: _EXISTS,
        Input.START: _answered(_READY, Process.SPAWNED),
        Input.STOP: Expect(Caller.ANSWERED, _STOPPED, record=Record.EXIT_0),
        Input.WAIT: Expect(Caller.PARKED_ON_EXIT, _CREATED),
        **_queries(_CREATED),
        Input.SHUTDOWN: Expect(Caller.ANSWERED, None, record=Record.EXIT_0_REMOVED),
        Input.PROCESS_EXITED: _ignored(_CREATED),
        Input.STOP_GRACE_EXPIRED: _ignored(_CREATED),
        Input.LIFETIME_EXPIRED: _ignored(_CREATED),
        **_execs(_CREATED),
    },
    # Ready: the process runs.
    _READY: {
        Input.CREATE: _EXISTS,
        Input.START: _NOT_STARTABLE,
        Input.STOP: Expect(
            Caller.PARKED_ON_EXIT, _STOPPING, Process.TERMINATED, execs=Execs.TERMINATED
        ),
        Input.WAIT: Expect(Caller.PARKED_ON_EXIT, _READY),
        **_queries(_READY),
        Input.SHUTDOWN: Expect(
            Caller.PARKED_ON_REMOVAL, _SHUTTING_DOWN, Process.KILLED, execs=Execs.KILLED
        ),
        Input.PROCESS_EXITED: Expect(
            Caller.NOBODY, _STOPPED, record=Record.EXIT, execs=Execs.KILLED
        ),
        Input.STOP_GRACE_EXPIRED: _ignored(_READY),
        Input.LIFETIME_EXPIRED: Expect(
            Caller.NOBODY, _STOPPING, Process.TERMINATED, execs=Execs.TERMINATED
        ),
        **_execs(_READY),
    },
    # Stopping: signalled by a Stop, the process has not exited yet.
    _STOPPING: {
        Input.CREATE: _EXISTS,
        Input.START: _NOT_STARTABLE,
        Input.STOP: Expect(Caller.PARKED_ON_EXIT, _STOPPING, Process.EARLIER_DEADLINE),
        Input.WAIT: Expect(Caller.PARKED_ON_EXIT, _STOPPING),
        **_queries(_STOPPING),
        Input.SHUTDOWN: Expect(
            Caller.PARKED_ON_REMOVAL, _SHUTTING_DOWN, Process.KILLED, execs=Execs.KILLED
        ),
        Input.PROCESS_EXITED: Expect(
            Caller.NOBODY, _STOPPED, record=Record.EXIT, execs=Execs.KILLED
        ),
        Input.STOP_GRACE_EXPIRED: Expect(
            Caller.NOBODY, _STOPPING, Process.KILLED, execs=Execs.KILLED
        ),
        Input.LIFETIME_EXPIRED: _ignored(_STOPPING),
        **_execs(_STOPPING),
    },
    # Stopped: the exit status is known; a sandbox runs once.
    _STOPPED: {
        Input.CREATE: _EXISTS,
        Input.START: _NOT_STARTABLE,
        Input.STOP: _answered(_STOPPED),
        Input.WAIT: _answered(_STOPPED),
        **_queries(_STOPPED),
        Input.SHUTDOWN: Expect(Caller.ANSWERED, None, record=Record.REMOVED),
        Input.PROCESS_EXITED: _ignored(_STOPPED),
        Input.STOP_GRACE_EXPIRED: _ignored(_STOPPED),
        Input.LIFETIME_EXPIRED: _ignored(_STOPPED),
        **_execs(_STOPPED),
    },
    # Shutting down: killed by Shutdown (reported as stopping), gone once the exit is in.
    _SHUTTING_DOWN: {
        Input.CREATE: _EXISTS,
        Input.START: _NOT_STARTABLE,
        Input.STOP: Expect(Caller.PARKED_ON_EXIT, _SHUTTING_DOWN, Process.EARLIER_DEADLINE),
        Input.WAIT: Expect(Caller.PARKED_ON_EXIT, _SHUTTING_DOWN),
        **_queries(_SHUTTING_DOWN),
        Input.SHUTDOWN: Expect(Caller.PARKED_ON_REMOVAL, _SHUTTING_DOWN),
        Input.PROCESS_EXITED: Expect(
            Caller.NOBODY, None, record=Record.EXIT_REMOVED, execs=Execs.KILLED
        ),
        Input.STOP_GRACE_EXPIRED: _ignored(_SHUTTING_DOWN),
        Input.LIFETIME_EXPIRED: _ignored(_SHUTTING_DOWN),
        **_execs(_SHUTTING_DOWN),
    },
}

_MISSING: Final = _refused(Code.NOT_FOUND, None)
_IGNORED_GONE: Final = Expect(Caller.NOBODY, None)


def expect(state: Phase | None, input: Input) -> Expect:
    """What ``input`` does to a sandbox in ``state``.  ``None``: no sandbox has the id, and
    only Create succeeds (it makes one); ``GONE``: the sandbox was removed while the input
    was on its way, and every call is NOT_FOUND.  A refusal keeps the state: its ``then`` is
    ``state``."""
    if state is None and input is Input.CREATE:
        return Expect(Caller.ANSWERED, Phase.CREATED)
    if state is None or state is Phase.GONE:
        return _IGNORED_GONE if input.is_event else _MISSING
    entry = SPEC[state][input]
    if entry.caller is Caller.REFUSED:
        return attrs.evolve(entry, then=state)
    return entry


def expect_exec(state: Phase | None) -> Expect:
    """What an Exec does to a sandbox in ``state`` (``None`` or ``GONE``: no sandbox has the
    id, NOT_FOUND)."""
    return expect(state, Input.EXEC)
