"""The sandbox lifecycle: every legal transition, in one table.

Theory of operation
-------------------

A sandbox is always in one :class:`Phase`.  Four of them are what Status reports
(``created``, ``ready``, ``stopping``, ``stopped``); two more exist only inside the runtime:
``SHUTTING_DOWN`` (Shutdown killed the process and waits for it to die; reported as
``stopping``) and ``GONE`` (Shutdown finished; the sandbox no longer exists, and any call that
still reaches it is NOT_FOUND).

Something happens to a sandbox in exactly two ways, both an :class:`Input`:

* a **call** of the Controller contract (Start, Stop, Wait, Status, ...), and
* an **event** its backend or its own timer reports: the init process exited
  (``PROCESS_EXITED``), the grace period of a Stop ran out (``STOP_GRACE_EXPIRED``), the
  sandbox has been ready for its ``lifetime_secs`` (``LIFETIME_EXPIRED``), or one of its
  execs was reaped (``EXEC_EXITED``).

For every ``(phase, input)`` pair, :data:`TRANSITIONS` names either a :class:`Transition` --
the :class:`Effect` the actor carries out and the phase it moves to -- or a :class:`Refusal`,
the status code and reason the caller gets while nothing changes.  The table is total: a
property test checks that every pair has an entry, so there is no "this cannot happen" path.
Events arriving where they mean nothing (an exit already recorded, a timer of a stop that has
finished) map to ``IGNORE``; they are stale, not errors.

The actor owning a sandbox is the only code that changes it: it takes its inputs one at a
time, looks each up here with :func:`decide`, and does what the entry says.  An effect that
can fail (spawning the process for Start) leaves the phase unchanged when it fails; the
caller gets the error.  Queries (Status, Platform, Ping, Metrics) are answered from the
state the actor last published and go through :func:`decide` as well, so a sandbox that is
gone is NOT_FOUND everywhere.

Blocking calls do not block the actor.  Wait in a phase before ``STOPPED`` *parks* the caller
(``PARK_WAITER``); Stop of a running sandbox signals it and parks the caller until the exit is
recorded (``TERMINATE``, ``JOIN_STOP``); Shutdown kills and parks until the sandbox is gone
(``KILL_FOR_SHUTDOWN``, ``JOIN_SHUTDOWN``).  ``RECORD_EXIT`` wakes everyone parked on the exit;
``RECORD_EXIT_AND_REMOVE`` also completes the Shutdown.

Lifetimes.  A sandbox created with ``lifetime_secs`` arms a second timer when it becomes
``ready``; when it fires in ``ready``, ``EXPIRE`` stops the sandbox exactly as a Stop with
the default timeout would (SIGTERM, the grace, SIGKILL), with no caller to answer, and
records why (``reason: lifetime_expired``).  Anywhere else it is stale: a Stop, a Shutdown
or the process's own exit came first.  Its deadline is recorded, so it survives a restart.

Execs.  ``EXEC`` (run a command in the sandbox; reading and writing its files are checked
against the same entries) is legal only in ``ready``: anywhere else it is FAILED_PRECONDITION
naming the phase.  ``START_EXEC`` registers the exec with the actor and starts it in a task
of its own -- the actor never waits on an exec -- and that task reports the reap as
``EXEC_EXITED``, which ``RECORD_EXEC_EXIT`` records in any phase.  The execs share the
sandbox's fate: they get the signals a Stop or Shutdown sends, and when the init exits, by
any cause, every exec still running is killed.  ``PROCESS_EXITED`` reaches the table only
once those execs are reaped (the actor holds it back until then), so a Stop, a Wait or a
Shutdown that returns leaves no exec of the sandbox behind.  Starting an exec can fail (the
backend cannot run it, or the init has already exited): the caller gets the error and
nothing changes.

This module is pure: no trio, no I/O.  The docs' state diagram is generated from it
(:func:`mermaid_diagram`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, NamedTuple, final

from .._errors import Code, RPCError
from .._models import SandboxState


class Phase(enum.Enum):
    CREATED = "created"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SHUTTING_DOWN = "shutting_down"
    GONE = "gone"

    # Members are singletons compared by identity, so identity hashing is consistent, and it
    # costs a fraction of Enum's (the table is looked up on every call).
    __hash__ = object.__hash__

    @property
    def reported(self) -> SandboxState:
        """The state Status reports for this phase (``GONE`` is never reported)."""
        return _REPORTED[self]


_REPORTED: Final = {
    Phase.CREATED: SandboxState.CREATED,
    Phase.READY: SandboxState.READY,
    Phase.STOPPING: SandboxState.STOPPING,
    Phase.STOPPED: SandboxState.STOPPED,
    Phase.SHUTTING_DOWN: SandboxState.STOPPING,
    Phase.GONE: SandboxState.STOPPED,
}


class Input(enum.Enum):
    # Calls.  CREATE is a Create naming a sandbox that already exists.
    CREATE = "create"
    START = "start"
    STOP = "stop"
    WAIT = "wait"
    STATUS = "status"
    PLATFORM = "platform"
    PING = "ping"
    METRICS = "metrics"
    SHUTDOWN = "shutdown"
    #: Exec (and file access): something done inside the running sandbox.
    EXEC = "exec"
    # Events.
    PROCESS_EXITED = "process_exited"
    STOP_GRACE_EXPIRED = "stop_grace_expired"
    LIFETIME_EXPIRED = "lifetime_expired"
    EXEC_EXITED = "exec_exited"

    __hash__ = object.__hash__  # as Phase's

    @property
    def is_event(self) -> bool:
        return self in _EVENTS


_EVENTS: Final = frozenset(
    {Input.PROCESS_EXITED, Input.STOP_GRACE_EXPIRED, Input.LIFETIME_EXPIRED, Input.EXEC_EXITED}
)
CALLS: Final = tuple(i for i in Input if i not in _EVENTS)
EVENTS: Final = tuple(i for i in Input if i in _EVENTS)


class Effect(enum.Enum):
    #: Answer from the current state (queries; Stop or Wait of a stopped sandbox).
    REPLY = "reply"
    #: Start the init process; answer with its pid.  On failure nothing changes.
    SPAWN = "spawn"
    #: Stop of a sandbox that never started: record exit status 0, wake waiters, answer.
    STOP_UNSTARTED = "stop_unstarted"
    #: SIGTERM (SIGKILL for a zero timeout), arm the grace timer, park the caller.
    TERMINATE = "terminate"
    #: Park the caller until the exit is recorded; an earlier kill deadline wins.
    JOIN_STOP = "join_stop"
    #: Park the caller until the exit is recorded, then answer the exit status.
    PARK_WAITER = "park_waiter"
    #: The grace period ran out: SIGKILL.
    KILL = "kill"
    #: The lifetime ran out: record the reason, then as TERMINATE with the default timeout,
    #: nobody to answer.
    EXPIRE = "expire"
    #: Record the exit status, clean up leftovers, wake everyone parked on the exit.
    RECORD_EXIT = "record_exit"
    #: SIGKILL and park the caller until the sandbox is gone.
    KILL_FOR_SHUTDOWN = "kill_for_shutdown"
    #: Park the caller until the shutdown in progress completes.
    JOIN_SHUTDOWN = "join_shutdown"
    #: Record the exit, wake everyone, remove the sandbox, complete parked Shutdowns.
    RECORD_EXIT_AND_REMOVE = "record_exit_and_remove"
    #: Shutdown of a sandbox that never started: record exit 0, wake waiters, remove.
    REMOVE_UNSTARTED = "remove_unstarted"
    #: Shutdown of a stopped sandbox: remove it.
    REMOVE = "remove"
    #: Register an exec and start it in a task of its own, which answers the caller once it
    #: runs (or with the error that kept it from running).
    START_EXEC = "start_exec"
    #: An exec was reaped: publish its exit and forget it; the last one of a dead sandbox
    #: lets its held-back exit through.
    RECORD_EXEC_EXIT = "record_exec_exit"
    #: A stale event: nothing to do, nobody to answer.
    IGNORE = "ignore"


@final
class Transition(NamedTuple):
    effect: Effect
    next_phase: Phase


@final
class Refusal(NamedTuple):
    """The call is refused with ``code``; nothing changes."""

    code: Code
    reason: str

    def error(self, sandbox_id: str) -> RPCError:
        return RPCError.from_status(self.code, f"sandbox {sandbox_id!r} {self.reason}")


_P = Phase
_I = Input
_E = Effect
_T = Transition

_EXISTS: Final = Refusal(Code.ALREADY_EXISTS, "already exists")
_GONE: Final = Refusal(Code.NOT_FOUND, "not found")


def _not_startable(why: str) -> Refusal:
    return Refusal(Code.FAILED_PRECONDITION, f"cannot be started: {why}")


def _not_ready(phase: str) -> Refusal:
    return Refusal(
        Code.FAILED_PRECONDITION,
        f"is {phase}: commands run and files move only while it is ready",
    )


#: (phase, input) -> Transition | Refusal.  Read a row as "in this phase, on this input".
TRANSITIONS: Final[Mapping[tuple[Phase, Input], Transition | Refusal]] = {
    # -- created: Create succeeded, nothing runs yet.
    (_P.CREATED, _I.CREATE): _EXISTS,
    (_P.CREATED, _I.START): _T(_E.SPAWN, _P.READY),
    (_P.CREATED, _I.STOP): _T(_E.STOP_UNSTARTED, _P.STOPPED),
    (_P.CREATED, _I.WAIT): _T(_E.PARK_WAITER, _P.CREATED),
    (_P.CREATED, _I.STATUS): _T(_E.REPLY, _P.CREATED),
    (_P.CREATED, _I.PLATFORM): _T(_E.REPLY, _P.CREATED),
    (_P.CREATED, _I.PING): _T(_E.REPLY, _P.CREATED),
    (_P.CREATED, _I.METRICS): _T(_E.REPLY, _P.CREATED),
    (_P.CREATED, _I.SHUTDOWN): _T(_E.REMOVE_UNSTARTED, _P.GONE),
    (_P.CREATED, _I.EXEC): _not_ready("created"),
    (_P.CREATED, _I.PROCESS_EXITED): _T(_E.IGNORE, _P.CREATED),
    (_P.CREATED, _I.STOP_GRACE_EXPIRED): _T(_E.IGNORE, _P.CREATED),
    (_P.CREATED, _I.LIFETIME_EXPIRED): _T(_E.IGNORE, _P.CREATED),
    (_P.CREATED, _I.EXEC_EXITED): _T(_E.RECORD_EXEC_EXIT, _P.CREATED),
    # -- ready: the init process runs.
    (_P.READY, _I.CREATE): _EXISTS,
    (_P.READY, _I.START): _not_startable("it is already running"),
    (_P.READY, _I.STOP): _T(_E.TERMINATE, _P.STOPPING),
    (_P.READY, _I.WAIT): _T(_E.PARK_WAITER, _P.READY),
    (_P.READY, _I.STATUS): _T(_E.REPLY, _P.READY),
    (_P.READY, _I.PLATFORM): _T(_E.REPLY, _P.READY),
    (_P.READY, _I.PING): _T(_E.REPLY, _P.READY),
    (_P.READY, _I.METRICS): _T(_E.REPLY, _P.READY),
    (_P.READY, _I.SHUTDOWN): _T(_E.KILL_FOR_SHUTDOWN, _P.SHUTTING_DOWN),
    (_P.READY, _I.EXEC): _T(_E.START_EXEC, _P.READY),
    (_P.READY, _I.PROCESS_EXITED): _T(_E.RECORD_EXIT, _P.STOPPED),
    (_P.READY, _I.STOP_GRACE_EXPIRED): _T(_E.IGNORE, _P.READY),
    (_P.READY, _I.LIFETIME_EXPIRED): _T(_E.EXPIRE, _P.STOPPING),
    (_P.READY, _I.EXEC_EXITED): _T(_E.RECORD_EXEC_EXIT, _P.READY),
    # -- stopping: signalled, waiting for the init process to end.
    (_P.STOPPING, _I.CREATE): _EXISTS,
    (_P.STOPPING, _I.START): _not_startable("it is stopping"),
    (_P.STOPPING, _I.STOP): _T(_E.JOIN_STOP, _P.STOPPING),
    (_P.STOPPING, _I.WAIT): _T(_E.PARK_WAITER, _P.STOPPING),
    (_P.STOPPING, _I.STATUS): _T(_E.REPLY, _P.STOPPING),
    (_P.STOPPING, _I.PLATFORM): _T(_E.REPLY, _P.STOPPING),
    (_P.STOPPING, _I.PING): _T(_E.REPLY, _P.STOPPING),
    (_P.STOPPING, _I.METRICS): _T(_E.REPLY, _P.STOPPING),
    (_P.STOPPING, _I.SHUTDOWN): _T(_E.KILL_FOR_SHUTDOWN, _P.SHUTTING_DOWN),
    (_P.STOPPING, _I.EXEC): _not_ready("stopping"),
    (_P.STOPPING, _I.PROCESS_EXITED): _T(_E.RECORD_EXIT, _P.STOPPED),
    (_P.STOPPING, _I.STOP_GRACE_EXPIRED): _T(_E.KILL, _P.STOPPING),
    (_P.STOPPING, _I.LIFETIME_EXPIRED): _T(_E.IGNORE, _P.STOPPING),
    (_P.STOPPING, _I.EXEC_EXITED): _T(_E.RECORD_EXEC_EXIT, _P.STOPPING),
    # -- stopped: the exit status is known.  A sandbox is never started twice.
    (_P.STOPPED, _I.CREATE): _EXISTS,
    (_P.STOPPED, _I.START): _not_startable("it has stopped; a sandbox runs once"),
    (_P.STOPPED, _I.STOP): _T(_E.REPLY, _P.STOPPED),
    (_P.STOPPED, _I.WAIT): _T(_E.REPLY, _P.STOPPED),
    (_P.STOPPED, _I.STATUS): _T(_E.REPLY, _P.STOPPED),
    (_P.STOPPED, _I.PLATFORM): _T(_E.REPLY, _P.STOPPED),
    (_P.STOPPED, _I.PING): _T(_E.REPLY, _P.STOPPED),
    (_P.STOPPED, _I.METRICS): _T(_E.REPLY, _P.STOPPED),
    (_P.STOPPED, _I.SHUTDOWN): _T(_E.REMOVE, _P.GONE),
    (_P.STOPPED, _I.EXEC): _not_ready("stopped"),
    (_P.STOPPED, _I.PROCESS_EXITED): _T(_E.IGNORE, _P.STOPPED),
    (_P.STOPPED, _I.STOP_GRACE_EXPIRED): _T(_E.IGNORE, _P.STOPPED),
    (_P.STOPPED, _I.LIFETIME_EXPIRED): _T(_E.IGNORE, _P.STOPPED),
    (_P.STOPPED, _I.EXEC_EXITED): _T(_E.RECORD_EXEC_EXIT, _P.STOPPED),
    # -- shutting down: killed by Shutdown, removed once the exit is recorded.
    (_P.SHUTTING_DOWN, _I.CREATE): _EXISTS,
    (_P.SHUTTING_DOWN, _I.START): _not_startable("it is shutting down"),
    (_P.SHUTTING_DOWN, _I.STOP): _T(_E.JOIN_STOP, _P.SHUTTING_DOWN),
    (_P.SHUTTING_DOWN, _I.WAIT): _T(_E.PARK_WAITER, _P.SHUTTING_DOWN),
    (_P.SHUTTING_DOWN, _I.STATUS): _T(_E.REPLY, _P.SHUTTING_DOWN),
    (_P.SHUTTING_DOWN, _I.PLATFORM): _T(_E.REPLY, _P.SHUTTING_DOWN),
    (_P.SHUTTING_DOWN, _I.PING): _T(_E.REPLY, _P.SHUTTING_DOWN),
    (_P.SHUTTING_DOWN, _I.METRICS): _T(_E.REPLY, _P.SHUTTING_DOWN),
    (_P.SHUTTING_DOWN, _I.SHUTDOWN): _T(_E.JOIN_SHUTDOWN, _P.SHUTTING_DOWN),
    (_P.SHUTTING_DOWN, _I.EXEC): _not_ready("shutting down"),
    (_P.SHUTTING_DOWN, _I.PROCESS_EXITED): _T(_E.RECORD_EXIT_AND_REMOVE, _P.GONE),
    (_P.SHUTTING_DOWN, _I.STOP_GRACE_EXPIRED): _T(_E.IGNORE, _P.SHUTTING_DOWN),
    (_P.SHUTTING_DOWN, _I.LIFETIME_EXPIRED): _T(_E.IGNORE, _P.SHUTTING_DOWN),
    (_P.SHUTTING_DOWN, _I.EXEC_EXITED): _T(_E.RECORD_EXEC_EXIT, _P.SHUTTING_DOWN),
    # -- gone: removed.  Calls that were already on their way get NOT_FOUND.
    (_P.GONE, _I.CREATE): _GONE,
    (_P.GONE, _I.START): _GONE,
    (_P.GONE, _I.STOP): _GONE,
    (_P.GONE, _I.WAIT): _GONE,
    (_P.GONE, _I.STATUS): _GONE,
    (_P.GONE, _I.PLATFORM): _GONE,
    (_P.GONE, _I.PING): _GONE,
    (_P.GONE, _I.METRICS): _GONE,
    (_P.GONE, _I.SHUTDOWN): _GONE,
    (_P.GONE, _I.EXEC): _GONE,
    (_P.GONE, _I.PROCESS_EXITED): _T(_E.IGNORE, _P.GONE),
    (_P.GONE, _I.STOP_GRACE_EXPIRED): _T(_E.IGNORE, _P.GONE),
    (_P.GONE, _I.LIFETIME_EXPIRED): _T(_E.IGNORE, _P.GONE),
    (_P.GONE, _I.EXEC_EXITED): _T(_E.IGNORE, _P.GONE),
}


class LifecycleError(Exception):
    """The table has no entry for a pair: a bug in the table, never the caller's fault."""


def decide(sandbox_id: str, phase: Phase, input: Input) -> Transition:
    """The transition for ``input`` in ``phase``.

    Raises the refusal as its typed error (ALREADY_EXISTS, FAILED_PRECONDITION, NOT_FOUND)
    naming ``sandbox_id``.
    """
    entry = TRANSITIONS.get((phase, input))
    if type(entry) is Transition:
        return entry
    if type(entry) is Refusal:
        raise entry.error(sandbox_id)
    raise LifecycleError(f"no transition for {input.name} in {phase.name}")


def mermaid_diagram() -> str:
    """The lifecycle as a Mermaid state diagram, generated from :data:`TRANSITIONS`.

    Queries and ignored events are left out: they change nothing.
    """
    lines = ["stateDiagram-v2", "    [*] --> created: Create"]
    edges: dict[tuple[Phase, Phase], list[str]] = {}
    for (phase, input), entry in TRANSITIONS.items():
        if type(entry) is not Transition or entry.effect in (Effect.REPLY, Effect.IGNORE):
            continue
        if entry.next_phase is phase:
            continue
        edges.setdefault((phase, entry.next_phase), []).append(input.name.replace("_", " "))
    for (src, dst), inputs in edges.items():
        dst_name = "[*]" if dst is Phase.GONE else dst.value
        lines.append(f"    {src.value} --> {dst_name}: {', '.join(inputs)}")
    lines.append("    shutting_down: shutting down (reported as stopping)")
    return "\n".join(lines) + "\n"
