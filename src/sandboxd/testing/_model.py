"""A reference model of the sandbox lifecycle, derived from the lifecycle table.

Theory of operation
-------------------

The model does not restate the rules: every call and every event is looked up in
:data:`~sandboxd.runtime.TRANSITIONS` on the sandbox's :class:`~sandboxd.runtime.Phase`, as
the actor does through :func:`~sandboxd.runtime.decide`, and the model carries out the
:class:`~sandboxd.runtime.Effect` it names, or answers the refusal's code.
What the table leaves to the effects -- which signal a Stop sends, who is parked, who is woken
with what -- is interpreted here the way the effects' documentation states it.

One sandbox is a :class:`SandboxModel`: an immutable, hashable value, so a checker can
memoise on it.  Its process is not simulated in time.  A signal that ends the process makes
the model remember the exit status the process *will* report (``dying``); the
``PROCESS_EXITED`` event that records it is a separate step, and so is the expiry of an armed
grace timer (``STOP_GRACE_EXPIRED``).  :func:`pending_events` lists the events that may come
next; a linearizability checker interleaves them with the calls, while the sequential
:class:`ReferenceModel` lets a dying process die at once (what a sequential caller sees once
its call has returned) and fires timers only when told (:meth:`ReferenceModel.expire_grace`).

Calls that wait (Wait before the exit, Stop or Shutdown while the process runs) *park* the
caller under a ticket; the step that wakes it reports ``(ticket, outcome)``.  A sequential
:meth:`ReferenceModel.apply` of such a call returns :class:`Blocks`, naming the input that
would have to happen before it returns.

How a process answers signals is a :class:`ProcessBehaviour`, a parameter of the model and
not of the table: a sim process killed by SIGTERM reports 143 (128 + 15), the process
backend's pause process catches SIGTERM and exits 0, a process that ignores SIGTERM only ends
by SIGKILL (137).

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
    ExitStatus,
    Platform,
    SandboxInstance,
    SandboxMetrics,
    SandboxState,
    SandboxStatus,
    check_sandbox_id,
)
from ..runtime._lifecycle import TRANSITIONS, Effect, Input, Phase, Refusal, Transition, decide

__all__ = [
    "CALL_INPUTS",
    "SIGKILL_STATUS",
    "SIGTERM_STATUS",
    "Blocks",
    "Outcome",
    "ProcessBehaviour",
    "ReferenceModel",
    "SandboxModel",
    "StatusView",
    "Step",
    "call_step",
    "event_step",
    "observe",
    "pending_events",
    "perform",
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
}


# -- what a call returns ---------------------------------------------------------------------


@final
@attrs.frozen(slots=True)
class StatusView:
    """What the model predicts of a Status: the reported state, the exit status (present iff
    the exit was recorded) and whether the sandbox has a pid (iff it was started)."""

    state: SandboxState
    exit_status: int | None
    started: bool


@final
@attrs.frozen(slots=True)
class Outcome:
    """The result of a call, reduced to what the model can predict.

    ``code is None`` for success, with ``value``:

    * create: the sandbox id;
    * start: ``True`` (a pid > 0 was returned);
    * wait: the exit status (an ``int``);
    * status: a :class:`StatusView`;
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
    if call not in CALL_INPUTS:
        raise ValueError(f"unknown call {call!r}")
    if call == "start":
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
    if call not in CALL_INPUTS:
        raise ValueError(f"unknown call {call!r}")
    try:
        result = await getattr(target, call)(sandbox_id, **args)
    except RPCError as err:
        return Outcome.failure(err.code)
    return observe(call, result)


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
    """

    sigterm_exit_status: int | None = SIGTERM_STATUS
    signals_race: bool = False
    own_exit_status: int | None = None
    start_fails: bool = False


@final
@attrs.frozen(slots=True, cache_hash=True)
class SandboxModel:
    """The model of one existing sandbox.  Immutable and hashable.

    ``dying`` holds the exit statuses its process may still report because a signal ended it
    (in the order the signals were sent); ``grace_armed`` says a Stop's grace timer may still
    fire.  ``waiters``, ``stoppers`` and ``shutdowns`` are the tickets of parked Wait, Stop and
    Shutdown calls.
    """

    phase: Phase
    behaviour: ProcessBehaviour = ProcessBehaviour()
    started: bool = False
    exit_status: int | None = None
    dying: tuple[int, ...] = ()
    grace_armed: bool = False
    waiters: frozenset[int] = frozenset()
    stoppers: frozenset[int] = frozenset()
    shutdowns: frozenset[int] = frozenset()

    @property
    def parked(self) -> frozenset[int]:
        """The tickets of every call parked on this sandbox."""
        return self.waiters | self.stoppers | self.shutdowns

    def status(self) -> StatusView:
        return StatusView(self.phase.reported, self.exit_status, self.started)


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


def _lookup(phase: Phase, input: Input) -> Transition | Code:
    """The table's entry: the transition, or the refusal's code."""
    entry = TRANSITIONS.get((phase, input))
    if type(entry) is Transition:
        return entry
    if type(entry) is Refusal:
        return entry.code
    return decide("", phase, input)  # no entry: raises LifecycleError


def _signal(sandbox: SandboxModel, signum: int) -> SandboxModel:
    """Deliver ``signum`` to the sandbox's process, if it has one that has not exited."""
    if not sandbox.started or sandbox.exit_status is not None:
        return sandbox
    if signum == _SIGKILL:
        status: int | None = SIGKILL_STATUS
    else:
        status = sandbox.behaviour.sigterm_exit_status
    if status is None:  # ignored
        return sandbox
    if not sandbox.dying:
        return attrs.evolve(sandbox, dying=(status,))
    if sandbox.behaviour.signals_race and signum == _SIGKILL and status not in sandbox.dying:
        return attrs.evolve(sandbox, dying=(*sandbox.dying, status))
    return sandbox


def _record_exit(
    sandbox: SandboxModel, status: int, next_phase: Phase
) -> tuple[SandboxModel, _Woken]:
    """RECORD_EXIT: record ``status`` and wake everyone parked on the exit."""
    woken = tuple((t, Outcome.success(status)) for t in sorted(sandbox.waiters)) + tuple(
        (t, Outcome.success(None)) for t in sorted(sandbox.stoppers)
    )
    recorded = attrs.evolve(
        sandbox,
        phase=next_phase,
        exit_status=status,
        dying=(),
        grace_armed=False,
        waiters=frozenset(),
        stoppers=frozenset(),
    )
    return recorded, woken


def _remove(sandbox: SandboxModel) -> _Woken:
    """The sandbox is gone: complete the parked Shutdowns."""
    return tuple((t, Outcome.success(None)) for t in sorted(sandbox.shutdowns))


def _stop_timeout(args: Mapping[str, Any]) -> float | None:
    timeout = args.get("timeout_secs")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgument("timeout_secs: must be a number")
    if not 0 <= timeout < math.inf:
        raise InvalidArgument("timeout_secs: must be a finite number >= 0")
    return float(timeout)


def call_step(
    sandbox: SandboxModel | None,
    call: str,
    sandbox_id: str,
    args: Mapping[str, Any],
    ticket: int,
    behaviour: ProcessBehaviour = ProcessBehaviour(),
) -> Step:
    """One call on the sandbox whose model is ``sandbox`` (``None`` if it does not exist).

    ``ticket`` names the caller if it is parked; ``behaviour`` is the new sandbox's process
    behaviour when the call is a successful create.  Arguments are checked as the Controller
    checks them: a Stop's ``timeout_secs``, then the id (INVALID_ARGUMENT), then its existence
    (NOT_FOUND).
    """
    try:
        input = CALL_INPUTS[call]
    except KeyError:
        raise ValueError(f"unknown call {call!r}") from None
    try:
        timeout = _stop_timeout(args) if input is Input.STOP else None
        check_sandbox_id(sandbox_id)
    except InvalidArgument as err:
        return Step(sandbox, Outcome.failure(err.code))
    if sandbox is None:
        if input is Input.CREATE:
            return Step(SandboxModel(Phase.CREATED, behaviour), Outcome.success(sandbox_id))
        return Step(None, Outcome.failure(Code.NOT_FOUND))
    transition = _lookup(sandbox.phase, input)
    if not isinstance(transition, Transition):
        return Step(sandbox, Outcome.failure(transition))
    effect, next_phase = transition.effect, transition.next_phase

    if effect is Effect.REPLY:
        value: Any = None
        if input is Input.WAIT:
            value = sandbox.exit_status
        elif input is Input.STATUS:
            value = sandbox.status()
        return Step(attrs.evolve(sandbox, phase=next_phase), Outcome.success(value))
    if effect is Effect.SPAWN:
        if sandbox.behaviour.start_fails:  # the effect failed: nothing changes
            return Step(sandbox, Outcome.failure(Code.FAILED_PRECONDITION))
        return Step(attrs.evolve(sandbox, phase=next_phase, started=True), Outcome.success(True))
    if effect is Effect.STOP_UNSTARTED:
        recorded, woken = _record_exit(sandbox, 0, next_phase)
        return Step(recorded, Outcome.success(None), woken)
    if effect is Effect.TERMINATE:
        parked = attrs.evolve(sandbox, phase=next_phase, stoppers=sandbox.stoppers | {ticket})
        if timeout == 0:
            return Step(_signal(parked, _SIGKILL))
        return Step(attrs.evolve(_signal(parked, _SIGTERM), grace_armed=True))
    if effect is Effect.JOIN_STOP:
        parked = attrs.evolve(sandbox, phase=next_phase, stoppers=sandbox.stoppers | {ticket})
        if timeout is not None and sandbox.phase is Phase.STOPPING:
            # An earlier kill deadline wins: a zero timeout kills now, another arms a timer.
            if timeout == 0:
                parked = _signal(attrs.evolve(parked, grace_armed=False), _SIGKILL)
            elif not parked.grace_armed:
                parked = attrs.evolve(_signal(parked, _SIGTERM), grace_armed=True)
        return Step(parked)
    if effect is Effect.PARK_WAITER:
        return Step(attrs.evolve(sandbox, phase=next_phase, waiters=sandbox.waiters | {ticket}))
    if effect is Effect.KILL_FOR_SHUTDOWN:
        parked = attrs.evolve(
            sandbox,
            phase=next_phase,
            grace_armed=False,
            shutdowns=sandbox.shutdowns | {ticket},
        )
        return Step(_signal(parked, _SIGKILL))
    if effect is Effect.JOIN_SHUTDOWN:
        return Step(
            attrs.evolve(sandbox, phase=next_phase, shutdowns=sandbox.shutdowns | {ticket})
        )
    if effect is Effect.REMOVE_UNSTARTED:
        recorded, woken = _record_exit(sandbox, 0, Phase.STOPPED)
        return Step(None, Outcome.success(None), woken + _remove(recorded))
    if effect is Effect.REMOVE:
        return Step(None, Outcome.success(None), _remove(sandbox))
    # KILL, RECORD_EXIT, RECORD_EXIT_AND_REMOVE and IGNORE answer events, never calls.
    raise AssertionError(f"{effect.name} for the call {input.name}")


def event_step(sandbox: SandboxModel, event: Input, status: int | None = None) -> Step:
    """An event on the sandbox: its process exited with ``status`` (``PROCESS_EXITED``) or
    the grace period of a Stop ran out (``STOP_GRACE_EXPIRED``)."""
    if event is Input.STOP_GRACE_EXPIRED:
        sandbox = attrs.evolve(sandbox, grace_armed=False)
    elif event is Input.PROCESS_EXITED:
        if status is None:
            raise ValueError("PROCESS_EXITED needs the exit status")
    else:
        raise ValueError(f"{event.name} is not an event")
    transition = _lookup(sandbox.phase, event)
    assert isinstance(transition, Transition), "events are never refused"
    effect, next_phase = transition.effect, transition.next_phase
    if effect is Effect.IGNORE:
        return Step(attrs.evolve(sandbox, phase=next_phase))
    if effect is Effect.KILL:
        return Step(_signal(attrs.evolve(sandbox, phase=next_phase), _SIGKILL))
    assert status is not None
    if effect is Effect.RECORD_EXIT:
        recorded, woken = _record_exit(sandbox, status, next_phase)
        return Step(recorded, None, woken)
    if effect is Effect.RECORD_EXIT_AND_REMOVE:
        recorded, woken = _record_exit(sandbox, status, Phase.STOPPED)
        return Step(None, None, woken + _remove(recorded))
    raise AssertionError(f"{effect.name} for the event {event.name}")


def pending_events(sandbox: SandboxModel) -> tuple[tuple[Input, int | None], ...]:
    """The events that may happen next to the sandbox, as ``(event, status)``: the exit of a
    process a signal ended (one per status it may report), its exit on its own (if its
    behaviour has an ``own_exit_status``), and the expiry of an armed grace timer."""
    events: list[tuple[Input, int | None]] = [(Input.PROCESS_EXITED, s) for s in sandbox.dying]
    own = sandbox.behaviour.own_exit_status
    if (
        own is not None
        and sandbox.started
        and sandbox.exit_status is None
        and own not in sandbox.dying
    ):
        # Even after a signal: the process may have ended on its own before it arrived.
        events.append((Input.PROCESS_EXITED, own))
    if sandbox.grace_armed:
        events.append((Input.STOP_GRACE_EXPIRED, None))
    return tuple(events)


# -- the sequential model --------------------------------------------------------------------


@final
class ReferenceModel:
    """What a sequential caller of the Controller sees, sandbox by sandbox.

    :meth:`apply` predicts the :class:`Outcome` of a call made after every earlier call has
    returned, or says that it :class:`Blocks`.  A process a signal ended dies before the call
    that signalled it returns; grace timers fire only through :meth:`expire_grace`, and a
    process exits on its own only through :meth:`process_exited`.

    A Stop without ``timeout_secs`` is taken to use a grace period > 0 (the Controller's
    ``stop_timeout``): SIGTERM first.

    ``sigterm_exit_status`` and ``signals_race`` make the default :class:`ProcessBehaviour`;
    ``behaviour_of`` (given a create's arguments) may choose another per sandbox.
    """

    def __init__(
        self,
        *,
        sigterm_exit_status: int | None = SIGTERM_STATUS,
        signals_race: bool = False,
        behaviour_of: Callable[[Mapping[str, Any]], ProcessBehaviour] | None = None,
    ) -> None:
        self.default_behaviour = ProcessBehaviour(sigterm_exit_status, signals_race)
        self.behaviour_of = behaviour_of
        self._sandboxes: dict[str, SandboxModel] = {}
        self._next_ticket = 0
        #: The outcomes of calls that blocked, by ticket, once they returned.
        self.resolved: dict[int, Outcome] = {}

    def copy(self) -> ReferenceModel:
        other = ReferenceModel(behaviour_of=self.behaviour_of)
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
        step = call_step(
            self._sandboxes.get(sandbox_id),
            call,
            sandbox_id,
            args,
            ticket,
            self.behaviour_for(args) if call == "create" else self.default_behaviour,
        )
        self._take(sandbox_id, step)
        self._settle(sandbox_id)
        if step.reply is not None:
            return step.reply
        if ticket in self.resolved:
            return self.resolved.pop(ticket)
        sandbox = self._sandboxes.get(sandbox_id)
        assert sandbox is not None and ticket in sandbox.parked
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

    def _take(self, sandbox_id: str, step: Step) -> None:
        if step.sandbox is None:
            self._sandboxes.pop(sandbox_id, None)
        else:
            self._sandboxes[sandbox_id] = step.sandbox
        self.resolved.update(step.woken)

    def _settle(self, sandbox_id: str) -> None:
        # A process a signal ended exits before the signalling call returns.
        sandbox = self._sandboxes.get(sandbox_id)
        while sandbox is not None and sandbox.dying:
            self._take(sandbox_id, event_step(sandbox, Input.PROCESS_EXITED, sandbox.dying[0]))
            sandbox = self._sandboxes.get(sandbox_id)
