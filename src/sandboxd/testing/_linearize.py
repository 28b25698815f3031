"""A linearizability checker for concurrent histories of Controller calls.

Theory of operation
-------------------

A history is a list of :class:`Operation`: a call, when it began and ended (on one clock),
and its :class:`~sandboxd.testing.Outcome`.  It is *linearizable* when the calls can be put
in one sequential order that respects real time -- an operation that ended before another
began comes first -- and in which the :mod:`reference model <sandboxd.testing._model>`
explains every outcome.

Sandboxes are independent (every input of the lifecycle table concerns one sandbox, and the
model's state is one :class:`~sandboxd.testing.SandboxModel` per id), so a history is
linearizable iff each sandbox's sub-history is: the checker takes them one id at a time.

For one sandbox it runs a Wing & Gong search: from the model state and the set of operations
already linearized, try every operation that may go next -- one whose real-time predecessors
have all completed -- and every event that may happen next (the exit of a process a signal
ended, the expiry of a grace or lifetime timer), keep the moves whose outcomes match the
history, and memoise the ``(model state, linearized set)`` pairs already explored.  A call
that waits (Wait before the exit, Stop while the process runs, Shutdown) is *parked* at its
linearization point and completes at the step that wakes it, so both points lie in its
``[start, end]``; operations that began after it ended wait for that step.

Real time is the operations' clock, and, where it cannot tell (a virtual clock stands still
while calls run), the order in which one :class:`HistoryRecorder` saw calls begin and return
(:attr:`Operation.order`).  Each step of a linearization also has a time, never decreasing:
a call takes effect between its start and its end (an answered one within the model's
tolerance of its end, a parked one when it reaches the sandbox, within the tolerance of its
start, or right after a Start that kept the sandbox busy); a grace or lifetime timer fires
within its window; a SIGKILLed process's exit is recorded within the tolerance; and a woken
call returns within the tolerance of the step that woke it.  So deadlines are checked with
the outcomes (:class:`~sandboxd.testing.Timing`).

An operation whose outcome is ``None`` (cancelled, lost, still pending) may have taken effect
at any time after it began, or not at all, and its outcome is not checked.

When a sub-history is not linearizable, the checker shrinks it to a *conflict*: it relaxes
operations one by one (treating each as if its outcome were unknown) while the rest stays
unexplainable, so the conflict is a set of operations whose outcomes cannot all hold, from
which no single one can be dropped.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, final

import attrs
import trio

from ..runtime import Input
from ._model import (
    EXEC_CALL,
    Outcome,
    ReferenceModel,
    SandboxModel,
    Step,
    call_step,
    event_step,
    exec_exit_step,
    pending_events,
    pending_exec_exits,
    perform_keeping,
)

__all__ = [
    "DEFAULT_MAX_STATES",
    "HistoryRecorder",
    "LinearizabilityResult",
    "Operation",
    "check_linearizable",
]

_NEVER: Final = 2**62

#: How many (model state, linearized set) pairs one search may explore per sandbox.
DEFAULT_MAX_STATES: Final = 200_000


def _args(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value) if value else {}


@final
@attrs.frozen(slots=True, eq=False)
class Operation:
    """One call of a concurrent history.

    ``start_time`` is taken before the call is made and ``end_time`` after it returned, on the
    same clock for every operation.  ``outcome`` is ``None`` when the call never answered
    (then ``end_time`` does not matter).  ``client`` only labels the operation in reports.
    """

    call: str
    sandbox_id: str
    args: Mapping[str, Any] = attrs.field(converter=_args)
    start_time: float
    end_time: float
    outcome: Outcome | None
    client: object = None
    #: What the call returned (a SandboxStatus, an ExitStatus...), if recorded.
    result: object = None
    #: Wall-clock (epoch) seconds when it began and returned, to compare with timestamps.
    wall: tuple[float, float] = (0.0, 0.0)
    #: Where its beginning and its return stand among all the recorded calls' (``order[1]``
    #: is huge for a call that never returned): exact even where clocks cannot tell.
    order: tuple[int, int] = (0, 0)

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.args.items())
        who = "" if self.client is None else f"{self.client}: "
        answer = "no answer" if self.outcome is None else repr(self.outcome)
        return (
            f"[{self.start_time:.6f}, {self.end_time:.6f}] {who}"
            f"{self.call}({self.sandbox_id!r}{args}) -> {answer}"
        )


@final
@attrs.frozen(slots=True)
class LinearizabilityResult:
    """The verdict on a history.

    ``ok`` is true when every sandbox's sub-history is linearizable.  Otherwise
    ``sandbox_id`` names the first sandbox whose sub-history is not, ``conflict`` holds the
    smallest set of its operations found whose outcomes cannot all hold (by start time), and
    ``inconclusive`` is true when the search ran out of budget instead of exhausting the
    possibilities.  ``explored`` counts the states the searches visited.
    """

    ok: bool
    sandbox_id: str | None = None
    conflict: tuple[Operation, ...] = ()
    inconclusive: bool = False
    explored: int = 0

    def __bool__(self) -> bool:
        return self.ok

    def describe(self) -> str:
        if self.ok:
            return "linearizable"
        if self.inconclusive:
            head = f"sandbox {self.sandbox_id!r}: gave up after {self.explored} states"
        else:
            head = (
                f"sandbox {self.sandbox_id!r}: no order of these {len(self.conflict)} "
                "operations respects real time and explains every outcome"
            )
        return "\n".join([head, *(f"  {op!r}" for op in self.conflict)])


#: Calls that never change a sandbox (a Wait parks, but a parked unchecked Wait matters to
#: nobody).
_QUERIES: Final = frozenset({"status", "ping", "platform", "metrics", "wait"})


def _ok(outcome: Outcome | None) -> bool:
    return outcome is not None and outcome.ok


def _before(a: Operation, b: Operation) -> bool:
    """Whether ``a`` returned before ``b`` began: by their clock, or by the order in which
    one recorder saw them (exact where a virtual clock stands still)."""
    return a.end_time < b.start_time or 0 < a.order[1] < b.order[0]


class _OutOfBudget(Exception):
    pass


def _bits(mask: int) -> Iterable[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


@final
class _Search:
    """Wing & Gong search over one sandbox's operations (indices are tickets)."""

    def __init__(
        self,
        ops: Sequence[Operation],
        checked: int,
        initial: SandboxModel | None,
        model: ReferenceModel,
        max_states: int,
    ) -> None:
        self.ops = ops
        self.checked = checked
        self.initial = initial
        self.max_states = max_states
        self.seen: set[tuple[SandboxModel | None, int, float]] = set()
        self.timing = model.timing
        self.tolerance = model.timing.tolerance
        self.behaviours = [model.step_behaviours(op.call, op.args) for op in ops]
        # An unchecked operation never has to precede anything: it may not have ended.
        self.pred = [
            sum(1 << j for j in _bits(checked) if j != i and _before(ops[j], op))
            for i, op in enumerate(ops)
        ]
        # Unchecked queries change nothing and are not checked: leave them out.
        self.order = sorted(
            (i for i, op in enumerate(ops) if checked >> i & 1 or op.call not in _QUERIES),
            key=lambda i: (ops[i].start_time, i),
        )
        # A refused call is inert, but for an exec: one that failed to start may have been
        # counted by a Status meanwhile.
        self.inert = [
            i
            for i in self.order
            if checked >> i & 1
            and (ops[i].call in _QUERIES or not (_ok(ops[i].outcome) or ops[i].call == EXEC_CALL))
        ]
        self.active = [i for i in self.order if i not in self.inert]

    def run(self) -> bool:
        """Whether some linearization exists; raises _OutOfBudget.  Each level of recursion
        takes one call or one event, so the depth stays a small multiple of len(ops)."""
        return self._dfs(self.initial, 0, -math.inf)

    def _end(self, i: int) -> float:
        """When operation ``i`` ended at the latest (never, if it is not checked)."""
        return self.ops[i].end_time if self.checked >> i & 1 else math.inf

    def _step(self, sandbox: SandboxModel | None, i: int, at: float) -> Step:
        """Operation ``i`` on ``sandbox`` at ``at``, under its ticket ``i``."""
        op = self.ops[i]
        behaviour, command = self.behaviours[i]
        return call_step(
            sandbox,
            op.call,
            op.sandbox_id,
            op.args,
            i,
            behaviour,
            now=at,
            timing=self.timing,
            exec_behaviour=command,
        )

    def _answered_at(self, i: int, now: float) -> float:
        """The earliest time, from ``now`` on, operation ``i`` can have taken effect if it was
        answered at once: within the tolerance of its end."""
        return max(now, self.ops[i].start_time, self._end(i) - self.tolerance)

    def _matches(self, woken: tuple[tuple[int, Outcome], ...], at: float) -> bool:
        """Whether the calls woken at ``at`` got these outcomes, returned no earlier, and
        returned promptly (within the tolerance)."""
        checked, ops = self.checked, self.ops
        for t, outcome in woken:
            if checked >> t & 1 and (
                ops[t].outcome != outcome or not at <= ops[t].end_time <= at + self.tolerance
            ):
                return False
        return True

    def _event_time(
        self,
        sandbox: SandboxModel,
        event: Input,
        woken: tuple[tuple[int, Outcome], ...],
        now: float,
    ) -> float:
        """The time, from ``now`` on, to place an event that wakes ``woken``: the earliest
        it may happen, but a SIGKILL -- a grace timer's, or the one the process's exit sends
        the execs -- as late as the calls the deaths it causes will wake need (an exit must
        follow a SIGKILL within the tolerance)."""
        execs = [run.ticket for run in sandbox.execs]
        if event is Input.STOP_GRACE_EXPIRED:
            earliest = max(now, sandbox.kill_at)
            ends = [self._end(t) for t in [*sandbox.waiters, *sandbox.stoppers, *execs]]
            needed = max((end for end in ends if end != math.inf), default=-math.inf)
            return max(earliest, min(needed - self.tolerance, sandbox.kill_by))
        if event is Input.LIFETIME_EXPIRED:
            # A SIGTERM and a grace timer: the sooner, the more the grace leaves room for.
            return max(now, sandbox.expire_at)
        at = now
        if event is Input.PROCESS_EXITED and execs and not woken:  # its execs are killed
            ends = [self._end(t) for t in execs]
            needed = max((end for end in ends if end != math.inf), default=-math.inf)
            at = max(at, min(needed - self.tolerance, sandbox.deadline))
        for t, _ in woken:
            if self.checked >> t & 1:
                at = max(at, self.ops[t].end_time - self.tolerance)
        return at

    def _dfs(self, sandbox: SandboxModel | None, done: int, now: float) -> bool:
        ops, checked, timing = self.ops, self.checked, self.timing
        parked = 0
        deadline = math.inf
        if sandbox is not None:
            deadline = sandbox.deadline
            for t in sandbox.parked:
                parked |= 1 << t
        # Reduction: an operation that changes nothing for others wherever it matches (a
        # query, a Wait, a refused call) and that may go now with its recorded outcome,
        # leaving the state as it is, can always go now -- moving it there from its place in
        # any linearization changes no other outcome and only meets real-time constraints
        # sooner, as long as time does not pass a deadline.  (Not so for a Stop that is a
        # no-op now: later it may stop a new sandbox.)
        # Nor may it move time past when another operation or a timer may act.
        horizon = min(
            (ops[i].start_time for i in self.active if not done >> i & 1), default=math.inf
        )
        if sandbox is not None:
            horizon = min(
                horizon, deadline, sandbox.kill_at, sandbox.expire_at, *_exec_timers(sandbox)
            )
        progress = True
        while progress:
            progress = False
            complete = done & ~parked
            for i in self.inert:
                if done >> i & 1 or self.pred[i] & ~complete:
                    continue
                op = ops[i]
                at = self._answered_at(i, now)
                if at > horizon:
                    continue
                step = self._step(sandbox, i, at)
                if step.reply == op.outcome and step.sandbox == sandbox and not step.woken:
                    done |= 1 << i
                    now = at
                    progress = True
        complete = done & ~parked
        if complete & checked == checked:
            return True
        key = (sandbox, done, now)
        if key in self.seen:
            return False
        self.seen.add(key)
        if len(self.seen) > self.max_states:
            raise _OutOfBudget
        # A call reaches the sandbox within the tolerance of its start: time may not pass
        # that while it has not taken effect -- but for a Start, which keeps the sandbox
        # busy until it ends (calls arriving meanwhile take effect after it, at once).
        # The ops are in start order and _bits yields indices upwards: the first two pending
        # are the two that must arrive first.
        pending = itertools.islice(_bits(checked & ~done), 2)
        waiting = [(ops[i].start_time + self.tolerance, i) for i in pending]
        arrival = waiting[0][0] if waiting else math.inf
        for i in self.order:
            if done >> i & 1 or self.pred[i] & ~complete:
                continue
            op = ops[i]
            at = max(now, op.start_time)
            if at > deadline or at > self._end(i):
                continue
            step = self._step(sandbox, i, at)
            if checked >> i & 1:
                if step.reply is None:
                    # Parked calls end well; but an exec may fail to start.
                    if op.outcome is None or not (op.outcome.ok or op.call == EXEC_CALL):
                        continue
                elif step.reply != op.outcome:
                    continue
                else:  # an answered call takes effect by its end (a Start's spawn)
                    effective = self._answered_at(i, now)
                    if effective > deadline:
                        continue
                    if effective != at and op.call == "start":
                        # A lifetime counts from when the Start took effect.
                        step = self._step(sandbox, i, effective)
                    at = effective
            elif step.sandbox == sandbox and not step.woken:
                continue  # an unchecked operation that changes nothing here: pointless
            if at > now and op.call != "start":
                others = [t for t, j in waiting if j != i]
                if others and at > others[0]:
                    continue
            if self._matches(step.woken, at) and self._dfs(step.sandbox, done | 1 << i, at):
                return True
        if sandbox is not None:
            latest = max(now, arrival)
            for event, status in pending_events(sandbox):
                at_time = functools.partial(event_step, sandbox, event, status, timing=timing)
                if self._event(sandbox, event, at_time, -math.inf, done, now, latest):
                    return True
            for ticket, exit, earliest in pending_exec_exits(sandbox):
                at_time = functools.partial(exec_exit_step, sandbox, ticket, exit, timing=timing)
                if self._event(sandbox, Input.EXEC_EXITED, at_time, earliest, done, now, latest):
                    return True
        return False

    def _event(
        self,
        sandbox: SandboxModel,
        event: Input,
        at_time: Callable[..., Step],
        earliest: float,
        done: int,
        now: float,
        latest: float,
    ) -> bool:
        """Whether ``event`` next (its step ``at_time(now=...)``, no earlier than
        ``earliest``, no later than ``latest`` or the sandbox's deadline) leads to a
        linearization."""
        step = at_time(now=now)
        at = max(earliest, self._event_time(sandbox, event, step.woken, now))
        if at > sandbox.deadline or at > latest:
            return False
        if at != now:
            step = at_time(now=at)
        return self._matches(step.woken, at) and self._dfs(step.sandbox, done, at)


def _exec_timers(sandbox: SandboxModel) -> Iterable[float]:
    """When the sandbox's execs may end by themselves (on their own, or by a timeout)."""
    for run in sandbox.execs:
        yield run.exits_at
        yield run.times_out_at


def _linearizable(
    ops: Sequence[Operation],
    checked: int,
    initial: SandboxModel | None,
    model: ReferenceModel,
    max_states: int,
) -> tuple[bool | None, int]:
    """``(verdict, states explored)``; the verdict is ``None`` when out of budget."""
    search = _Search(ops, checked, initial, model, max_states)
    try:
        verdict: bool | None = search.run()
    except _OutOfBudget:
        verdict = None
    return verdict, len(search.seen)


def check_linearizable(
    history: Iterable[Operation],
    model: ReferenceModel | None = None,
    *,
    max_states: int = DEFAULT_MAX_STATES,
) -> LinearizabilityResult:
    """Whether ``history`` is linearizable under ``model``.

    ``model`` gives the state before the history (default: no sandbox exists) and how
    processes answer signals (:class:`~sandboxd.testing.ProcessBehaviour`); it is not changed.
    Each sandbox's search explores at most ``max_states`` states; past that the result is not
    ok and ``inconclusive``.
    """
    if model is None:
        model = ReferenceModel()
    by_sandbox: dict[str, list[Operation]] = defaultdict(list)
    for op in history:
        by_sandbox[op.sandbox_id].append(op)
    explored = 0
    for sandbox_id in sorted(by_sandbox):
        ops = sorted(
            by_sandbox[sandbox_id], key=lambda op: (op.start_time, op.order[0], op.end_time)
        )
        initial = model.sandbox(sandbox_id)
        checked = sum(1 << i for i, op in enumerate(ops) if op.outcome is not None)
        verdict, states = _linearizable(ops, checked, initial, model, max_states)
        explored += states
        if verdict:
            continue
        if verdict is None:
            return LinearizabilityResult(
                False, sandbox_id, tuple(ops), inconclusive=True, explored=explored
            )
        checked, states = _shrink(ops, checked, initial, model, max_states)
        explored += states
        conflict = tuple(op for i, op in enumerate(ops) if checked >> i & 1)
        return LinearizabilityResult(False, sandbox_id, conflict, explored=explored)
    return LinearizabilityResult(True, explored=explored)


def _shrink(
    ops: Sequence[Operation],
    checked: int,
    initial: SandboxModel | None,
    model: ReferenceModel,
    max_states: int,
) -> tuple[int, int]:
    """Relax checked operations one at a time while the rest stays unexplainable."""
    explored = 0
    budget = max(1000, max_states // 4)
    # Later operations first: what went wrong is usually an answer, not the setup before it.
    for i in sorted(_bits(checked), key=lambda i: ops[i].start_time, reverse=True):
        trial = checked & ~(1 << i)
        verdict, states = _linearizable(ops, trial, initial, model, budget)
        explored += states
        if verdict is False:
            checked = trial
    return checked, explored


@final
class HistoryRecorder:
    """Records the calls made through it as :class:`Operation` values.

    ``clock`` defaults to :func:`trio.current_time`.  A call that is cancelled, or raises
    anything but an :class:`~sandboxd.RPCError`, is recorded with no outcome and the
    exception propagates.
    """

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self.clock = clock
        self.operations: list[Operation] = []
        self._events = 0

    def _next(self) -> int:
        self._events += 1
        return self._events

    async def call(
        self, target: Any, call: str, sandbox_id: str, *, client: object = None, **args: Any
    ) -> Outcome:
        start, wall, first = self.clock(), time.time(), self._next()
        outcome: Outcome | None = None
        result: object = None
        end, wall_end, last = math.inf, math.inf, _NEVER
        try:
            outcome, result = await perform_keeping(target, call, sandbox_id, **args)
            end, wall_end, last = self.clock(), time.time(), self._next()
        finally:
            self.operations.append(
                Operation(
                    call,
                    sandbox_id,
                    args,
                    start,
                    end,
                    outcome,
                    client,
                    result=result,
                    wall=(wall, wall_end),
                    order=(first, last),
                )
            )
        assert outcome is not None
        return outcome
