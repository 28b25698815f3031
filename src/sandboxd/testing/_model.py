"""A reference model of the sandbox lifecycle, following the specification.

Theory of operation
-------------------

The model does not read the runtime's table: every call and every event is looked up in the
specification (:data:`~sandboxd.testing.SPEC`, written on its own in ``_spec.py``) on the
sandbox's :class:`~sandboxd.runtime.Phase`, and the model does what the entry says -- to the
caller, to the process, to the record -- or answers the refusal's code.  How a process
answers signals, and what time it is, are the model's own parameters.

One sandbox is a :class:`SandboxModel`: an immutable, hashable value, so a checker can
memoise on it.  A signal that ends the process makes the model remember the exit status the
process *will* report (``dying``); the ``PROCESS_EXITED`` event that records it is a separate
step, and so is the expiry of an armed grace timer (``STOP_GRACE_EXPIRED``) or of the
lifetime of a ready sandbox created with one (``LIFETIME_EXPIRED``).
:func:`pending_events` lists the events that may come next; a linearizability checker
interleaves them with the calls, while the sequential :class:`ReferenceModel` lets a dying
process die at once (what a sequential caller sees once its call has returned) and fires
timers only when told (:meth:`ReferenceModel.expire_grace`,
:meth:`ReferenceModel.expire_lifetime`).

Time: each step is taken at a time ``now`` on the history's clock.  A Stop with a grace
period ``T`` arms its timer for ``now + T`` (a second Stop's earlier deadline replaces it),
which fires no earlier and, within :attr:`Timing.tolerance`, no later; a SIGKILLed process's
exit must be recorded within the tolerance.  A Start of a sandbox with a lifetime ``L`` arms
its lifetime timer for ``now + L`` in the same way; once it is no longer ``ready`` the timer
no longer matters.  The sequential model keeps no time.

Calls that wait (Wait before the exit, Stop or Shutdown while the process runs) *park* the
caller under a ticket; the step that wakes it reports ``(ticket, outcome)``.  A sequential
:meth:`ReferenceModel.apply` of such a call returns :class:`Blocks`, naming the input that
would have to happen before it returns.

How a process answers signals is a :class:`ProcessBehaviour`: a sim process killed by
SIGTERM reports 143 (128 + 15), the process backend's pause process catches SIGTERM and exits
0, a process that ignores SIGTERM only ends by SIGKILL (137).

This module imports neither trio nor Hypothesis.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import attrs

from .._errors import Code, InvalidArgument, RPCError
from .._models import (
    ExecExit,
    ExecRequest,
    ExitStatus,
    Platform,
    SandboxInstance,
    SandboxMetrics,
    SandboxState,
    SandboxStatus,
    check_sandbox_id,
)
from ..runtime import Input, Phase
from ._spec import Caller, Execs, Expect, Process, Record, expect, expect_exec

__all__ = [
    "CALL_INPUTS",
    "CALL_NAMES",
    "EXEC_CALL",
    "SIGKILL_STATUS",
    "SIGTERM_STATUS",
    "Blocks",
    "ExecBehaviour",
    "ExecModel",
    "ExecRun",
    "Outcome",
    "ProcessBehaviour",
    "ReferenceModel",
    "SandboxModel",
    "StatusView",
    "Step",
    "Timing",
    "call_step",
    "event_step",
    "exec_exit_step",
    "observe",
    "pending_events",
    "pending_exec_exits",
    "perform",
    "run_exec",
]

#: Exit status of a process ended by SIGKILL, and by an unhandled SIGTERM.
SIGKILL_STATUS: Final = 128 + int(signal.SIGKILL)
SIGTERM_STATUS: Final = 128 + int(signal.SIGTERM)

_SIGKILL: Final = int(signal.SIGKILL)
_SIGTERM: Final = int(signal.SIGTERM)

#: The calls the model knows, by the name of their Controller method.
CALL_INPUTS: Final[Mapping[str, Input]] = {
    "create": Input.CREATE,
    "start": Input.START,
    "stop": Input.STOP,
    "wait": Input.WAIT,
    "status": Input.STATUS,
    "platform": Input.PLATFORM,
    "ping": Input.PING,
    "metrics": Input.METRICS,
    "shutdown": Input.SHUTDOWN,
    "exec": Input.EXEC,
}

#: The call that runs a command in a sandbox (Exec; :data:`~sandboxd.testing.EXEC` says
#: what it does in each state).
EXEC_CALL: Final = "exec"

#: Every call the model knows, by name.
CALL_NAMES: Final[tuple[str, ...]] = tuple(CALL_INPUTS)


# -- what a call returns ---------------------------------------------------------------------


@final
@attrs.frozen(slots=True)
class StatusView:
    """What the model predicts of a Status: the reported state, the exit status (present iff
    the exit was recorded), whether the sandbox has a pid (iff it was started) and how many
    execs run in it (``info["execs"]``: those whose exit is not recorded yet)."""

    state: SandboxState
    exit_status: int | None
    started: bool
    execs: int = 0


@final
@attrs.frozen(slots=True)
class Outcome:
    """The result of a call, reduced to what the model can predict.

    ``code is None`` for success, with ``value``:

    * create: the sandbox id;
    * start: ``True`` (a pid > 0 was returned);
    * wait: the exit status (an ``int``);
    * status: a :class:`StatusView`;
    * exec: the :class:`~sandboxd.ExecExit` its command ended with;
    * stop, shutdown, ping, platform, metrics: ``None``.

    Otherwise ``code`` is the error's status code and ``value`` is ``None``.
    """

    value: Any = None
    code: Code | None = None

    @classmethod
    def success(cls, value: Any = None) -> Outcome:
        return cls(value, None)

    @classmethod
    def failure(cls, code: Code) -> Outcome:
        return cls(None, code)

    @property
    def ok(self) -> bool:
        return self.code is None

    def __repr__(self) -> str:
        if self.code is not None:
            return self.code.name
        return f"ok({self.value!r})"


@final
@attrs.frozen(slots=True)
class Blocks:
    """A sequential call that does not return until ``until`` happens to the sandbox
    (``PROCESS_EXITED``, or ``STOP_GRACE_EXPIRED`` when only the grace timer can end the
    process).  Its outcome appears in :attr:`ReferenceModel.resolved` under ``ticket``."""

    until: Input
    ticket: int


def observe(call: str, result: object = None, error: BaseException | None = None) -> Outcome:
    """The :class:`Outcome` of a real call that returned ``result`` or raised ``error``.

    Errors other than :class:`~sandboxd.RPCError` are re-raised: they are not outcomes.
    """
    if error is not None:
        if isinstance(error, RPCError):
            return Outcome.failure(error.code)
        raise error
    if call not in CALL_NAMES:
        raise ValueError(f"unknown call {call!r}")
    if call == EXEC_CALL:
        if isinstance(result, ExecRun):
            return Outcome.success(result.exit)
    elif call == "start":
        if isinstance(result, SandboxInstance):
            return Outcome.success(result.pid > 0)
    elif call == "wait":
        if isinstance(result, ExitStatus):
            return Outcome.success(result.exit_status)
    elif call == "status":
        if isinstance(result, SandboxStatus):
            recorded = result.info.get("exit_status")
            return Outcome.success(
                StatusView(
                    state=result.state,
                    exit_status=None if recorded is None else int(recorded),
                    started=result.pid != 0,
                    execs=int(result.info.get("execs", 0)),
                )
            )
    elif call == "platform":
        if isinstance(result, Platform):
            return Outcome.success(None)
    elif call == "metrics":
        if isinstance(result, SandboxMetrics):
            return Outcome.success(None)
    else:  # create returns the id; stop, shutdown and ping return None
        return Outcome.success(result)
    # A result of the wrong type: kept as it is, so it matches no prediction.
    return Outcome.success(result)


async def perform(target: Any, call: str, sandbox_id: str, **args: Any) -> Outcome:
    """Call ``target.<call>(sandbox_id, **args)`` on a Controller or RemoteController and
    return its :class:`Outcome`.  Cancellation propagates."""
    outcome, _ = await perform_keeping(target, call, sandbox_id, **args)
    return outcome


async def perform_keeping(
    target: Any, call: str, sandbox_id: str, **args: Any
) -> tuple[Outcome, object]:
    """As :func:`perform`, and the call's result itself (``None`` for an error; an
    :class:`ExecRun` for an exec)."""
    if call not in CALL_NAMES:
        raise ValueError(f"unknown call {call!r}")
    try:
        if call == EXEC_CALL:
            result: object = await run_exec(target, sandbox_id, args)
        else:
            result = await getattr(target, call)(sandbox_id, **args)
    except RPCError as err:
        return Outcome.failure(err.code), None
    return observe(call, result), result


@final
@attrs.frozen(slots=True)
class ExecRun:
    """What one exec gave its caller: its id and pid (from its first message), what it
    wrote (each stream's chunks joined) and how it ended."""

    exec_id: str
    pid: int
    exit: ExecExit
    stdout: bytes = b""
    stderr: bytes = b""


async def run_exec(target: Any, sandbox_id: str, args: Mapping[str, Any]) -> ExecRun:
    """Run an exec to its end through ``target.exec`` (a Controller or a remote one): the
    request is ``ExecRequest(**args)``; its stdin, if asked for, is closed at once.
    Cancellation (leaving the block) kills the exec, as it does for any caller."""
    request = ExecRequest(**args)
    output: dict[str, list[bytes]] = {}
    async with target.exec(sandbox_id, request) as proc:
        if request.stdin:
            await proc.close_stdin()
        async for chunk in proc:
            output.setdefault(chunk.stream, []).append(chunk.data)
        exit = await proc.wait()
        return ExecRun(
            proc.exec_id,
            proc.pid,
            exit,
            b"".join(output.get("stdout", ())),
            b"".join(output.get("stderr", ())),
        )


# -- one sandbox -----------------------------------------------------------------------------


@final
@attrs.frozen(slots=True)
class ProcessBehaviour:
    """How the model expects a sandbox's init process to answer signals.

    ``sigterm_exit_status``: the status it reports when SIGTERM ends it (143 for a process
    that does not catch it, 0 for the process backend's pause process), or ``None`` when it
    ignores SIGTERM.  SIGKILL always ends it with 137.

    ``signals_race``: ``False`` when a signal that ends the process ends it before any later
    signal can arrive (sim processes), so the first one decides the status; ``True`` when a
    SIGKILL sent while an earlier SIGTERM is still being handled may win (real processes).

    ``own_exit_status``: the status the process may exit with on its own, at any time after
    it started (a sim process with ``exit_after`` or ``exit_on="start"``); ``None`` when only
    signals end it.  A linearizability check lets that exit happen wherever it explains the
    history; the sequential :class:`ReferenceModel` only when told
    (:meth:`ReferenceModel.process_exited`).

    ``start_fails``: Start is refused (FAILED_PRECONDITION, the sandbox stays ``created``),
    as for a sim process with ``start_error``.

    ``exec_delay``: seconds an exec takes to start (a sim sandbox's ``exec_delay``); an exec
    whose start is under way when the process exits fails with FAILED_PRECONDITION.
    ``exec_fails``: every exec fails so, once its start has taken ``exec_delay`` (a sim
    sandbox's ``exec_error``).

    ``lifetime``: the sandbox's ``options.lifetime_secs`` (``None``: it has none).
    """

    sigterm_exit_status: int | None = SIGTERM_STATUS
    signals_race: bool = False
    own_exit_status: int | None = None
    start_fails: bool = False
    exec_delay: float = 0.0
    exec_fails: bool = False
    lifetime: float | None = None


@final
@attrs.frozen(slots=True)
class ExecBehaviour:
    """How the model expects an exec's command to end.

    ``exit_status``: the status it exits with on its own, ``runs_for`` seconds after it
    started (``None``: only a signal or its timeout ends it).  ``sigterm_exit_status``: the
    status SIGTERM ends it with (``None``: it ignores SIGTERM); SIGKILL always ends it with
    137.  ``signals_race`` as for :class:`ProcessBehaviour` (real processes: a SIGKILL may
    overtake a SIGTERM being handled, and a command may end on its own while a signal is on
    its way).
    """

    exit_status: int | None = 0
    runs_for: float = 0.0
    sigterm_exit_status: int | None = SIGTERM_STATUS
    signals_race: bool = False


@final
@attrs.frozen(slots=True)
class Timing:
    """What the model knows of time.

    ``stop_timeout``: the grace period of a Stop that gives no ``timeout_secs`` (the
    Controller's), or ``None`` if unknown (then its SIGKILL may come at any time).
    ``tolerance``: how late, in seconds, a deadline may be met -- a grace timer fire, a
    SIGKILLed process's exit be recorded, a woken call return -- and still count as on
    time; ``math.inf`` (the default) checks no deadline but that a grace does not end early.
    In process with an autojump clock time is exact: give a tolerance of (nearly) 0.
    """

    stop_timeout: float | None = None
    tolerance: float = math.inf


def _killed(status: int, *, timed_out: bool = False) -> Outcome:
    """How an exec that a signal ended reports it (``status`` is 128 + N)."""
    return Outcome.success(ExecExit(status, timed_out, status - 128))


_CANNOT_RUN: Final = Outcome.failure(Code.FAILED_PRECONDITION)


@final
@attrs.frozen(slots=True)
class ExecModel:
    """One exec running in a sandbox, its caller parked under ``ticket`` until it ends.

    Its caller gets an :class:`Outcome`: the :class:`~sandboxd.ExecExit` it ended with, or
    FAILED_PRECONDITION when it could not start.  ``dying`` holds how it may still end because
    a signal ended it (in the order the signals were sent); a SIGKILLed exec's exit must be
    recorded by ``due``.  It ends on its own no earlier than ``exits_at`` and no later than
    ``exits_by``, and its timeout kills it no earlier than ``times_out_at`` and no later than
    ``times_out_by`` (``inf``: never).  Its start is under way until ``starts_by``: when the
    sandbox's process dies before, it may fail to start (``may_fail``); with ``fails`` it
    fails to start at ``starts_at``, whatever else happens.
    """

    ticket: int
    behaviour: ExecBehaviour
    timeout: float | None = None
    exits_at: float = math.inf
    exits_by: float = math.inf
    times_out_at: float = math.inf
    times_out_by: float = math.inf
    dying: tuple[Outcome, ...] = ()
    due: float = math.inf
    starts_at: float = -math.inf
    starts_by: float = -math.inf
    fails: bool = False
    may_fail: bool = False

    @property
    def deadline(self) -> float:
        """The time by which this exec's exit must have been recorded."""
        return min(self.due, self.exits_by, self.times_out_by)

    def endings(self) -> tuple[tuple[Outcome, float], ...]:
        """How it may end next, each with the earliest time it may: failing to start, by a
        signal already sent, on its own, or by its timeout (the last two even after a signal,
        when signals race)."""
        if self.fails:
            return ((_CANNOT_RUN, self.starts_at),)
        endings = [(exit, -math.inf) for exit in self.dying]
        if self.may_fail:
            endings.append((_CANNOT_RUN, -math.inf))
        if self.dying and not self.behaviour.signals_race:
            return tuple(endings)  # the signal ended it at once
        own = self.behaviour.exit_status
        if own is not None and self.exits_at != math.inf:
            endings.append((Outcome.success(ExecExit(own)), self.exits_at))
        if self.times_out_at != math.inf:
            endings.append((_killed(SIGKILL_STATUS, timed_out=True), self.times_out_at))
        return tuple(endings)

    def sequential_end(self) -> Outcome | None:
        """How it ends for a sequential caller, who waits for it (``None``: it never ends
        by itself)."""
        if self.fails:
            return _CANNOT_RUN
        if self.dying:
            return self.dying[0]
        own, runs_for = self.behaviour.exit_status, self.behaviour.runs_for
        if own is not None and (self.timeout is None or runs_for < self.timeout):
            return Outcome.success(ExecExit(own))
        if self.timeout is not None:
            return _killed(SIGKILL_STATUS, timed_out=True)
        return None


def _signal_exec(run: ExecModel, signum: int, now: float, timing: Timing) -> ExecModel:
    """Deliver ``signum`` at ``now`` to one running exec."""
    if signum == _SIGKILL:
        ending: Outcome | None = _killed(SIGKILL_STATUS)
        # An exec still starting gets the signal once it has started.
        due = _by(max(now, run.starts_at), timing.tolerance)
        run = attrs.evolve(run, due=min(run.due, due))
    else:
        status = run.behaviour.sigterm_exit_status
        ending = None if status is None else _killed(status)
    if ending is None:
        return run
    if not run.dying:
        return attrs.evolve(run, dying=(ending,))
    if run.behaviour.signals_race and signum == _SIGKILL and ending not in run.dying:
        return attrs.evolve(run, dying=(*run.dying, ending))
    return run


def _signal_execs(
    sandbox: SandboxModel, signum: int | None, now: float, timing: Timing
) -> SandboxModel:
    if signum is None or not sandbox.execs:
        return sandbox
    execs = tuple(_signal_exec(run, signum, now, timing) for run in sandbox.execs)
    return attrs.evolve(sandbox, execs=execs)


def _process_dies(sandbox: SandboxModel, now: float) -> SandboxModel:
    """The sandbox's process is (or may be) ending at ``now``: execs still starting may fail
    to start (never in the sequential model: an exec has started before another call)."""
    if now == -math.inf or not any(now <= r.starts_by and not r.may_fail for r in sandbox.execs):
        return sandbox
    execs = tuple(
        attrs.evolve(run, may_fail=True) if now <= run.starts_by else run for run in sandbox.execs
    )
    return attrs.evolve(sandbox, execs=execs)


@final
@attrs.frozen(slots=True, cache_hash=True)
class SandboxModel:
    """The model of one existing sandbox.  Immutable and hashable.

    ``dying`` holds the exit statuses its process may still report because a signal ended it
    (in the order the signals were sent); a SIGKILLed process's exit must be recorded by
    ``due``.  A Stop's grace timer is armed while ``kill_at`` is finite: it fires no earlier
    than ``kill_at`` and no later than ``kill_by``; its lifetime timer, while ``expire_at`` is
    finite, no earlier than ``expire_at`` and no later than ``expire_by``.  ``waiters``,
    ``stoppers`` and ``shutdowns`` are the tickets of parked Wait, Stop and Shutdown calls.
    Times are on the history's clock (``-inf``: the sequential model, which keeps no time).

    ``execs`` are the execs running in it (:class:`ExecModel`, in the order they started).
    When its process exits while execs run, they are SIGKILLed and the exit status is
    ``held`` back: the exit is recorded (and Waits, Stops and Shutdowns answered) only once
    the last of them has ended, so no call that returns leaves an exec behind.
    """

    phase: Phase
    behaviour: ProcessBehaviour = ProcessBehaviour()
    started: bool = False
    exit_status: int | None = None
    dying: tuple[int, ...] = ()
    kill_at: float = math.inf
    kill_by: float = math.inf
    due: float = math.inf
    waiters: frozenset[int] = frozenset()
    stoppers: frozenset[int] = frozenset()
    shutdowns: frozenset[int] = frozenset()
    execs: tuple[ExecModel, ...] = ()
    held: int | None = None
    expire_at: float = math.inf
    expire_by: float = math.inf

    @property
    def alive(self) -> bool:
        """Whether its process was started and has not exited."""
        return self.started and self.exit_status is None and self.held is None

    @property
    def grace_armed(self) -> bool:
        """Whether a Stop's grace timer may still fire."""
        return self.kill_at != math.inf

    @property
    def lifetime_armed(self) -> bool:
        """Whether the lifetime's timer may still fire."""
        return self.expire_at != math.inf

    @property
    def deadline(self) -> float:
        """The time by which the next forced event (a grace or lifetime timer, a SIGKILLed
        process's exit, an exec's end) must have happened: time cannot pass it before."""
        return min(self.kill_by, self.expire_by, self.due, *(run.deadline for run in self.execs))

    @property
    def parked(self) -> frozenset[int]:
        """The tickets of every call parked on this sandbox (execs included)."""
        running = frozenset(run.ticket for run in self.execs)
        return self.waiters | self.stoppers | self.shutdowns | running

    def status(self) -> StatusView:
        return StatusView(self.phase.reported, self.exit_status, self.started, len(self.execs))


@final
@attrs.frozen(slots=True)
class Step:
    """The result of one step of the model on one sandbox.

    ``sandbox`` is its model afterwards (``None``: it does not exist).  ``reply`` is the
    caller's outcome, or ``None`` when the caller is parked (and for events).  ``woken`` lists
    the parked calls this step answered, as ``(ticket, outcome)``.
    """

    sandbox: SandboxModel | None
    reply: Outcome | None = None
    woken: tuple[tuple[int, Outcome], ...] = ()


_Woken = tuple[tuple[int, Outcome], ...]
_UNTIMED: Final = Timing()


def _disarmed(sandbox: SandboxModel) -> SandboxModel:
    return attrs.evolve(sandbox, kill_at=math.inf, kill_by=math.inf)


def _by(now: float, seconds: float) -> float:
    """The latest time for what is due ``seconds`` after ``now``: never (``inf``) when the
    time is not kept (``now`` is ``-inf`` in the sequential model) or ``seconds`` is
    ``inf`` -- rather than the NaN their sum would be."""
    return math.inf if now == -math.inf or seconds == math.inf else now + seconds


def _signal(sandbox: SandboxModel, signum: int, now: float, timing: Timing) -> SandboxModel:
    """Deliver ``signum`` at ``now`` to the sandbox's process, if it has one that has not
    exited."""
    if not sandbox.alive:
        return sandbox
    if signum == _SIGKILL:
        status: int | None = SIGKILL_STATUS
        # A SIGKILLed process's exit is recorded at once (within the tolerance).
        sandbox = attrs.evolve(sandbox, due=min(sandbox.due, _by(now, timing.tolerance)))
    else:
        status = sandbox.behaviour.sigterm_exit_status
    if status is None:  # ignored
        return sandbox
    sandbox = _process_dies(sandbox, now)
    if not sandbox.dying:
        return attrs.evolve(sandbox, dying=(status,))
    if sandbox.behaviour.signals_race and signum == _SIGKILL and status not in sandbox.dying:
        return attrs.evolve(sandbox, dying=(*sandbox.dying, status))
    return sandbox


def _arm(sandbox: SandboxModel, grace: float | None, now: float, timing: Timing) -> SandboxModel:
    """A Stop's deadline, ``grace`` seconds from ``now`` (``None``: unknown): SIGKILL at once
    for 0, else SIGTERM if no deadline is armed yet, and the earlier deadline wins."""
    if grace == 0:
        return _signal(_disarmed(sandbox), _SIGKILL, now, timing)
    if grace is None:  # any time from now on
        kill_at, kill_by = now, math.inf
    else:
        kill_at, kill_by = now + grace, _by(now, grace + timing.tolerance)
    if not sandbox.grace_armed:
        sandbox = _signal(sandbox, _SIGTERM, now, timing)
    elif kill_at >= sandbox.kill_at:
        return sandbox  # the armed deadline comes first
    return attrs.evolve(sandbox, kill_at=kill_at, kill_by=min(kill_by, sandbox.kill_by))


def _record_exit(sandbox: SandboxModel, status: int, then: Phase) -> tuple[SandboxModel, _Woken]:
    """Record ``status`` and wake everyone parked on the exit."""
    woken = tuple((t, Outcome.success(status)) for t in sorted(sandbox.waiters)) + tuple(
        (t, Outcome.success(None)) for t in sorted(sandbox.stoppers)
    )
    recorded = attrs.evolve(
        sandbox,
        phase=then,
        exit_status=status,
        dying=(),
        kill_at=math.inf,
        kill_by=math.inf,
        due=math.inf,
        waiters=frozenset(),
        stoppers=frozenset(),
    )
    return recorded, woken


def _timeout(args: Mapping[str, Any], *, zero: bool) -> float | None:
    """The ``timeout_secs`` of a Stop (0 allowed: SIGKILL at once) or of an exec (> 0)."""
    timeout = args.get("timeout_secs")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgument("timeout_secs: must be a number")
    if not (timeout >= 0 if zero else timeout > 0) or timeout == math.inf:
        bound = ">= 0" if zero else "> 0"
        raise InvalidArgument(f"timeout_secs: must be a finite number {bound}")
    return float(timeout)


def _carry_out(
    sandbox: SandboxModel,
    rule: Expect,
    status: int | None,
    grace: float | None,
    now: float,
    timing: Timing,
) -> tuple[SandboxModel | None, _Woken]:
    """What the specification's ``rule`` does to the process, the execs and the record (the
    caller aside); ``status`` is an exit's, ``grace`` a Stop's."""
    assert (rule.then is None) == rule.removed, rule
    if rule.execs is Execs.TERMINATED:
        sandbox = _signal_execs(sandbox, _stop_signal(sandbox, grace), now, timing)
    elif rule.execs is Execs.KILLED:
        sandbox = _signal_execs(sandbox, _SIGKILL, now, timing)
    after = sandbox if rule.then is None else attrs.evolve(sandbox, phase=rule.then)
    if rule.process is Process.SPAWNED:
        after = _arm_lifetime(attrs.evolve(after, started=True), now, timing)
    elif rule.process is Process.TERMINATED:
        after = _arm(after, grace, now, timing)
    elif rule.process is Process.EARLIER_DEADLINE:
        if grace is not None and after.phase is Phase.STOPPING:
            after = _arm(after, grace, now, timing)
    elif rule.process is Process.KILLED:
        after = _signal(_disarmed(after), _SIGKILL, now, timing)
    if after.lifetime_armed and after.phase is not Phase.READY:
        after = attrs.evolve(after, expire_at=math.inf, expire_by=math.inf)
    woken: _Woken = ()
    if rule.exit_recorded:
        code = 0 if rule.record in (Record.EXIT_0, Record.EXIT_0_REMOVED) else status
        assert code is not None, "an exit needs its status"
        after, woken = _record_exit(after, code, rule.then or Phase.STOPPED)
    if rule.removed:
        assert not after.execs, "an exit is recorded once the execs have ended"
        return None, woken + tuple((t, Outcome.success(None)) for t in sorted(after.shutdowns))
    return after, woken


def _arm_lifetime(sandbox: SandboxModel, now: float, timing: Timing) -> SandboxModel:
    """A Start at ``now``: the lifetime's timer, if the sandbox has one."""
    lifetime = sandbox.behaviour.lifetime
    if lifetime is None:
        return sandbox
    return attrs.evolve(
        sandbox, expire_at=now + lifetime, expire_by=_by(now, lifetime + timing.tolerance)
    )


def _stop_signal(sandbox: SandboxModel, grace: float | None) -> int | None:
    """The signal a Stop with ``grace`` sends the sandbox at once (see :func:`_arm`)."""
    if grace == 0:
        return _SIGKILL
    return None if sandbox.grace_armed else _SIGTERM


def call_step(
    sandbox: SandboxModel | None,
    call: str,
    sandbox_id: str,
    args: Mapping[str, Any],
    ticket: int,
    behaviour: ProcessBehaviour = ProcessBehaviour(),
    *,
    now: float = -math.inf,
    timing: Timing = _UNTIMED,
    exec_behaviour: ExecBehaviour = ExecBehaviour(),
) -> Step:
    """One call, made at ``now``, on the sandbox whose model is ``sandbox`` (``None`` if it
    does not exist), as :data:`~sandboxd.testing.SPEC` (and for an exec
    :data:`~sandboxd.testing.EXEC`) says.

    ``ticket`` names the caller if it is parked; ``behaviour`` is the new sandbox's process
    behaviour when the call is a successful create, ``exec_behaviour`` the command's when it
    is an exec.  Arguments are checked as the Controller checks them: a Stop's
    ``timeout_secs``, then the id (INVALID_ARGUMENT), then its existence (NOT_FOUND).
    """
    if call == EXEC_CALL:
        return _exec_step(sandbox, sandbox_id, args, ticket, exec_behaviour, now, timing)
    try:
        input = CALL_INPUTS[call]
    except KeyError:
        raise ValueError(f"unknown call {call!r}") from None
    try:
        timeout = _timeout(args, zero=True) if input is Input.STOP else None
        check_sandbox_id(sandbox_id)
    except InvalidArgument as err:
        return Step(sandbox, Outcome.failure(err.code))
    rule = expect(None if sandbox is None else sandbox.phase, input)
    if rule.caller is Caller.REFUSED:
        assert rule.code is not None
        return Step(sandbox, Outcome.failure(rule.code))
    if sandbox is None:  # a Create
        return Step(SandboxModel(Phase.CREATED, behaviour), Outcome.success(sandbox_id))
    if rule.process is Process.SPAWNED and sandbox.behaviour.start_fails:
        return Step(sandbox, Outcome.failure(Code.FAILED_PRECONDITION))  # nothing changes
    grace = timing.stop_timeout if timeout is None else timeout
    if rule.caller is Caller.PARKED_ON_EXIT:
        if input is Input.WAIT:
            sandbox = attrs.evolve(sandbox, waiters=sandbox.waiters | {ticket})
        else:
            sandbox = attrs.evolve(sandbox, stoppers=sandbox.stoppers | {ticket})
    elif rule.caller is Caller.PARKED_ON_REMOVAL:
        sandbox = attrs.evolve(sandbox, shutdowns=sandbox.shutdowns | {ticket})
    value: Any = None
    if rule.caller is Caller.ANSWERED:
        if input is Input.WAIT:
            value = sandbox.exit_status
        elif input is Input.STATUS:
            value = sandbox.status()
        elif input is Input.START:
            value = True
    after, woken = _carry_out(sandbox, rule, None, grace, now, timing)
    reply = Outcome.success(value) if rule.caller is Caller.ANSWERED else None
    return Step(after, reply, woken)


def _exec_step(
    sandbox: SandboxModel | None,
    sandbox_id: str,
    args: Mapping[str, Any],
    ticket: int,
    behaviour: ExecBehaviour,
    now: float,
    timing: Timing,
) -> Step:
    """An Exec: refused outside ``ready``; else its command runs and its caller is parked
    under ``ticket`` until it ends.  Checked as the Controller checks it: the id, its
    existence, the request (INVALID_ARGUMENT), then the state."""
    try:
        check_sandbox_id(sandbox_id)
        timeout = None if sandbox is None else _timeout(args, zero=False)
    except InvalidArgument as err:
        return Step(sandbox, Outcome.failure(err.code))
    rule = expect_exec(None if sandbox is None else sandbox.phase)
    if rule.caller is Caller.REFUSED:
        assert rule.code is not None
        return Step(sandbox, Outcome.failure(rule.code))
    assert sandbox is not None and rule.caller is Caller.EXEC_RUNS
    if sandbox.held is not None:
        # The process it would join has exited (its exit is held back): nothing runs.
        return Step(sandbox, _CANNOT_RUN)
    delay = sandbox.behaviour.exec_delay
    starts = now + delay  # its command runs from then on (-inf: no time kept)
    run = ExecModel(
        ticket,
        behaviour,
        timeout,
        starts_at=starts,
        starts_by=starts + timing.tolerance,
        fails=sandbox.behaviour.exec_fails,
    )
    if behaviour.exit_status is not None:
        run = attrs.evolve(
            run,
            exits_at=starts + behaviour.runs_for,
            exits_by=_by(now, delay + behaviour.runs_for + timing.tolerance),
        )
    if timeout is not None:
        run = attrs.evolve(
            run,
            times_out_at=starts + timeout,
            times_out_by=_by(now, delay + timeout + timing.tolerance),
        )
    if run.fails:
        run = attrs.evolve(run, exits_by=_by(now, delay + timing.tolerance))
    return Step(attrs.evolve(sandbox, execs=(*sandbox.execs, run)))


def exec_exit_step(
    sandbox: SandboxModel,
    ticket: int,
    outcome: Outcome,
    *,
    now: float = -math.inf,
    timing: Timing = _UNTIMED,
) -> Step:
    """The exec of ``ticket`` ended at ``now``, its caller getting ``outcome`` (its
    :class:`~sandboxd.ExecExit`, or FAILED_PRECONDITION when it could not start).  The last
    exec of a sandbox whose process has exited lets that exit be recorded."""
    execs = tuple(run for run in sandbox.execs if run.ticket != ticket)
    if len(execs) == len(sandbox.execs):
        raise ValueError(f"no exec runs under ticket {ticket}")
    after = attrs.evolve(sandbox, execs=execs)
    woken: _Woken = ((ticket, outcome),)
    if execs or after.held is None:
        return Step(after, None, woken)
    recorded = event_step(
        attrs.evolve(after, held=None), Input.PROCESS_EXITED, after.held, now=now, timing=timing
    )
    return Step(recorded.sandbox, None, woken + recorded.woken)


def pending_exec_exits(sandbox: SandboxModel) -> tuple[tuple[int, Outcome, float], ...]:
    """How the sandbox's execs may end next, as ``(ticket, outcome, earliest time)``."""
    return tuple(
        (run.ticket, exit, earliest) for run in sandbox.execs for exit, earliest in run.endings()
    )


def event_step(
    sandbox: SandboxModel,
    event: Input,
    status: int | None = None,
    *,
    now: float = -math.inf,
    timing: Timing = _UNTIMED,
) -> Step:
    """An event at ``now`` on the sandbox: its process exited with ``status``
    (``PROCESS_EXITED``), the grace period of a Stop ran out (``STOP_GRACE_EXPIRED``), or its
    lifetime did (``LIFETIME_EXPIRED``: a Stop with the default grace period)."""
    grace = None
    if event is Input.STOP_GRACE_EXPIRED:
        sandbox = _disarmed(sandbox)
    elif event is Input.LIFETIME_EXPIRED:
        sandbox = attrs.evolve(sandbox, expire_at=math.inf, expire_by=math.inf)
        grace = timing.stop_timeout
    elif event is Input.PROCESS_EXITED:
        if status is None:
            raise ValueError("PROCESS_EXITED needs the exit status")
    else:
        raise ValueError(f"{event.name} is not an event")
    rule = expect(sandbox.phase, event)
    assert rule.caller is Caller.NOBODY, "events are never refused"
    if event is Input.PROCESS_EXITED:
        sandbox = _process_dies(sandbox, now)
    if event is Input.PROCESS_EXITED and sandbox.execs and rule.exit_recorded:
        # Its execs are killed, and the exit is recorded once they have ended.
        killed = _signal_execs(sandbox, _SIGKILL, now, timing)
        assert status is not None
        return Step(attrs.evolve(killed, held=status, dying=(), due=math.inf))
    after, woken = _carry_out(sandbox, rule, status, grace, now, timing)
    return Step(after, None, woken)


def pending_events(sandbox: SandboxModel) -> tuple[tuple[Input, int | None], ...]:
    """The events that may happen next to the sandbox, as ``(event, status)``: the exit of a
    process a signal ended (one per status it may report), its exit on its own (if its
    behaviour has an ``own_exit_status``), and the expiry of an armed grace or lifetime
    timer."""
    events: list[tuple[Input, int | None]] = [(Input.PROCESS_EXITED, s) for s in sandbox.dying]
    own = sandbox.behaviour.own_exit_status
    if own is not None and sandbox.alive and own not in sandbox.dying:
        # Even after a signal: the process may have ended on its own before it arrived.
        events.append((Input.PROCESS_EXITED, own))
    if sandbox.grace_armed:
        events.append((Input.STOP_GRACE_EXPIRED, None))
    if sandbox.lifetime_armed:
        events.append((Input.LIFETIME_EXPIRED, None))
    return tuple(events)


# -- the sequential model --------------------------------------------------------------------


@final
class ReferenceModel:
    """What a sequential caller of the Controller sees, sandbox by sandbox.

    :meth:`apply` predicts the :class:`Outcome` of a call made after every earlier call has
    returned, or says that it :class:`Blocks`.  A process a signal ended dies before the call
    that signalled it returns; grace timers fire only through :meth:`expire_grace`, and a
    process exits on its own only through :meth:`process_exited`.

    A Stop without ``timeout_secs`` uses ``timing.stop_timeout`` (unknown by default: a
    grace period > 0, SIGTERM first).  ``timing`` also tells a linearizability check how
    closely deadlines must be met (:class:`Timing`); the sequential model keeps no time.

    ``sigterm_exit_status`` and ``signals_race`` make the default :class:`ProcessBehaviour`;
    ``behaviour_of`` (given a create's arguments) may choose another per sandbox.
    ``exec_behaviour_of`` (given an exec's arguments) says how each exec's command ends
    (default: at once, with 0).  A sequential caller of an exec waits for it to end: its
    command runs to its end (or its timeout) before the call returns, unless it never ends
    by itself (then it :class:`Blocks` until the sandbox's process exits).
    """

    def __init__(
        self,
        *,
        sigterm_exit_status: int | None = SIGTERM_STATUS,
        signals_race: bool = False,
        behaviour_of: Callable[[Mapping[str, Any]], ProcessBehaviour] | None = None,
        timing: Timing = _UNTIMED,
        exec_behaviour_of: Callable[[Mapping[str, Any]], ExecBehaviour] | None = None,
    ) -> None:
        self.default_behaviour = ProcessBehaviour(sigterm_exit_status, signals_race)
        self.behaviour_of = behaviour_of
        self.exec_behaviour_of = exec_behaviour_of
        self.timing = timing
        self._sandboxes: dict[str, SandboxModel] = {}
        self._next_ticket = 0
        #: The outcomes of calls that blocked, by ticket, once they returned.
        self.resolved: dict[int, Outcome] = {}

    def copy(self) -> ReferenceModel:
        other = ReferenceModel(
            behaviour_of=self.behaviour_of,
            timing=self.timing,
            exec_behaviour_of=self.exec_behaviour_of,
        )
        other.default_behaviour = self.default_behaviour
        other._sandboxes = dict(self._sandboxes)
        other._next_ticket = self._next_ticket
        other.resolved = dict(self.resolved)
        return other

    def behaviour_for(self, args: Mapping[str, Any]) -> ProcessBehaviour:
        """The process behaviour of a sandbox created with ``args`` (a create's arguments)."""
        if self.behaviour_of is None:
            return self.default_behaviour
        return self.behaviour_of(args)

    def exec_behaviour_for(self, args: Mapping[str, Any]) -> ExecBehaviour:
        """How the command of an exec made with ``args`` (its request's fields) ends."""
        if self.exec_behaviour_of is None:
            return ExecBehaviour()
        return self.exec_behaviour_of(args)

    def step_behaviours(
        self, call: str, args: Mapping[str, Any]
    ) -> tuple[ProcessBehaviour, ExecBehaviour]:
        """The behaviours :func:`call_step` needs for ``call`` with ``args``."""
        process = self.behaviour_for(args) if call == "create" else self.default_behaviour
        command = self.exec_behaviour_for(args) if call == EXEC_CALL else ExecBehaviour()
        return process, command

    # -- reading ---------------------------------------------------------------------------------

    @property
    def sandbox_ids(self) -> frozenset[str]:
        """The ids of the sandboxes that exist."""
        return frozenset(self._sandboxes)

    def sandbox(self, sandbox_id: str) -> SandboxModel | None:
        return self._sandboxes.get(sandbox_id)

    def phase(self, sandbox_id: str) -> Phase | None:
        """The sandbox's phase, or ``None`` if it does not exist."""
        sandbox = self._sandboxes.get(sandbox_id)
        return None if sandbox is None else sandbox.phase

    def exit_status(self, sandbox_id: str) -> int | None:
        sandbox = self._sandboxes.get(sandbox_id)
        return None if sandbox is None else sandbox.exit_status

    def started(self, sandbox_id: str) -> bool:
        sandbox = self._sandboxes.get(sandbox_id)
        return sandbox is not None and sandbox.started

    # -- changing ----------------------------------------------------------------------------

    def apply(self, call: str, sandbox_id: str, /, **args: Any) -> Outcome | Blocks:
        """Apply one call, made when every earlier call has returned."""
        ticket = self._next_ticket
        self._next_ticket += 1
        behaviour, command = self.step_behaviours(call, args)
        step = call_step(
            self._sandboxes.get(sandbox_id),
            call,
            sandbox_id,
            args,
            ticket,
            behaviour,
            timing=self.timing,
            exec_behaviour=command,
        )
        self._take(sandbox_id, step)
        self._settle(sandbox_id)
        if step.reply is not None:
            return step.reply
        if ticket in self.resolved:
            return self.resolved.pop(ticket)
        sandbox = self._sandboxes.get(sandbox_id)
        assert sandbox is not None and ticket in sandbox.parked
        # An exec that never ends by itself ends when the sandbox's process exits.
        until = Input.STOP_GRACE_EXPIRED if sandbox.grace_armed else Input.PROCESS_EXITED
        return Blocks(until, ticket)

    def peek(self, call: str, sandbox_id: str, /, **args: Any) -> Outcome | Blocks:
        """What :meth:`apply` would return, without applying it."""
        return self.copy().apply(call, sandbox_id, **args)

    def process_exited(self, sandbox_id: str, status: int) -> None:
        """The sandbox's process exited on its own with ``status``."""
        sandbox = self._sandboxes[sandbox_id]
        self._take(sandbox_id, event_step(sandbox, Input.PROCESS_EXITED, status))
        self._settle(sandbox_id)

    def expire_grace(self, sandbox_id: str) -> None:
        """The grace period of the Stop in progress ran out."""
        sandbox = self._sandboxes[sandbox_id]
        if sandbox.grace_armed:
            self._take(sandbox_id, event_step(sandbox, Input.STOP_GRACE_EXPIRED))
            self._settle(sandbox_id)

    def expire_lifetime(self, sandbox_id: str) -> None:
        """The sandbox's lifetime ran out."""
        sandbox = self._sandboxes[sandbox_id]
        if sandbox.lifetime_armed:
            self._take(sandbox_id, event_step(sandbox, Input.LIFETIME_EXPIRED, timing=self.timing))
            self._settle(sandbox_id)

    def _take(self, sandbox_id: str, step: Step) -> None:
        if step.sandbox is None:
            self._sandboxes.pop(sandbox_id, None)
        else:
            self._sandboxes[sandbox_id] = step.sandbox
        self.resolved.update(step.woken)

    def _settle(self, sandbox_id: str) -> None:
        # A process a signal ended exits before the signalling call returns; an exec runs to
        # its end before its caller makes another call.
        sandbox = self._sandboxes.get(sandbox_id)
        while sandbox is not None:
            if sandbox.dying:
                step = event_step(sandbox, Input.PROCESS_EXITED, sandbox.dying[0])
            else:
                ends = ((r.ticket, r.sequential_end()) for r in sandbox.execs)
                ended = next(((t, end) for t, end in ends if end is not None), None)
                if ended is None:
                    return
                step = exec_exit_step(sandbox, *ended)
            self._take(sandbox_id, step)
            sandbox = self._sandboxes.get(sandbox_id)
