"""Lifecycle programs, and the runner that makes their calls and records the history.

Theory of operation
-------------------

A :class:`Program` is a list of *groups*, run one after the other.  A group is one or more
*sequences* run at once, each by a client of its own; a sequence is calls made one after the
other.  So ``[create, start, start]`` is three calls in a row, and ``[create, start, [stop,
wait]]`` ends with a Stop and a Wait racing each other.  A :class:`Call` names its sandbox by
number (0, 1, ...), so one program runs on whatever ids its caller picks.

:func:`run_program` makes the calls through a :class:`~sandboxd.testing.HistoryRecorder`;
the history it returns is what :func:`~sandboxd.testing.check_linearizable` judges.

Some calls wait for something the program may never do: a Wait on a sandbox nobody stops, a
Stop whose grace period is long.  A *reaper* watches the run: when every task has been
blocked for ``cushion`` seconds and some client is waiting in a Wait or a Stop, it shuts
those sandboxes down, which answers those calls.  Its Shutdowns are recorded too, so the
checker sees them.  When calls stay unanswered for ``hang_after`` seconds of such rounds, the
program has hung: :class:`ProgramHung`.

Nothing here imports Hypothesis; :mod:`sandboxd.testing.strategies` draws programs.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Final, final

import attrs
import trio
import trio.testing

from .._errors import RPCError
from .._models import TOPIC_DELETE, TOPIC_DROPPED, SandboxEvent, SandboxOptions
from ._faults import process_faults_of
from ._linearize import HistoryRecorder, Operation
from ._model import CALL_NAMES, EXEC_CALL

__all__ = [
    "Call",
    "EventLog",
    "Group",
    "Program",
    "ProgramHung",
    "recording_events",
    "render_call",
    "render_program",
    "run_program",
]

#: Calls that may wait until something else happens to the sandbox (an exec that runs until
#: it is killed, say).
_PARKING: Final = frozenset({"wait", "stop", EXEC_CALL})

#: At most how many times a client yields before a call, with ``jitter``.
MAX_JITTER: Final = 3

#: The label of the reaper's calls in a history.
REAPER: Final = "reaper"


def _args(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value) if value else {}


def _call_name(instance: object, attribute: object, value: str) -> None:
    if value not in CALL_NAMES:
        raise ValueError(f"unknown call {value!r} (known: {', '.join(CALL_NAMES)})")


def _sandbox_number(instance: object, attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a call's sandbox is a number >= 0, not {value!r}")


@final
@attrs.frozen(slots=True, repr=False)
class Call:
    """One call of a program: the Controller method ``name`` on the program's sandbox number
    ``sandbox``, with ``args``, its keyword arguments besides the id (a Create's
    ``sandboxer`` and ``options``, a Stop's ``timeout_secs``; an exec's are the fields of
    its :class:`~sandboxd.ExecRequest`, and it runs to its end)."""

    name: str = attrs.field(validator=_call_name)
    sandbox: int = attrs.field(default=0, validator=_sandbox_number)
    args: Mapping[str, Any] = attrs.field(factory=dict, converter=_args)

    def __repr__(self) -> str:
        return render_call(self)


#: Sequences run at once, each a tuple of calls made one after the other.
Group = tuple[tuple[Call, ...], ...]


def _groups(value: Iterable[Any]) -> tuple[Group, ...]:
    """Groups from lists; a Call stands for a group (or a sequence) of that one call."""
    groups: list[Group] = []
    for group in value:
        if isinstance(group, Call):
            groups.append(((group,),))
            continue
        sequences: list[tuple[Call, ...]] = []
        for sequence in group:
            calls = (sequence,) if isinstance(sequence, Call) else tuple(sequence)
            for call in calls:
                if not isinstance(call, Call):
                    raise TypeError(f"a program is made of Call values, not {call!r}")
            sequences.append(calls)
        groups.append(tuple(sequences))
    return tuple(groups)


@final
@attrs.frozen(slots=True, repr=False)
class Program:
    """Groups of calls, run one group after the other; the sequences of a group run at once.

    ``Program([Call("create"), Call("start"), [Call("stop"), Call("wait")]])``: a Create, a
    Start, then a Stop and a Wait at once.  Where a group or a sequence is expected, a single
    :class:`Call` stands for one of just that call.  ``repr()`` is Python that builds the
    same program (options of ``sim`` faults as :func:`~sandboxd.testing.sim_faults` calls,
    real processes' as :func:`~sandboxd.testing.process_faults` calls).
    """

    groups: tuple[Group, ...] = attrs.field(converter=_groups)

    @property
    def calls(self) -> tuple[Call, ...]:
        """Every call, group by group, sequence by sequence."""
        return tuple(call for group in self.groups for sequence in group for call in sequence)

    @property
    def sandboxes(self) -> int:
        """How many sandbox ids the program needs (its highest sandbox number + 1)."""
        return max((call.sandbox + 1 for call in self.calls), default=0)

    @property
    def clients(self) -> int:
        """How many clients run at once at most (its widest group)."""
        return max((len(group) for group in self.groups), default=0)

    @property
    def sequential(self) -> bool:
        """Whether no two calls ever run at once."""
        return all(len(group) <= 1 for group in self.groups)

    def __len__(self) -> int:
        return sum(len(sequence) for group in self.groups for sequence in group)

    def __iter__(self) -> Iterator[Call]:
        return iter(self.calls)

    def __repr__(self) -> str:
        return render_program(self)


# -- rendering as Python ---------------------------------------------------------------------


def _render_value(value: Any) -> str:
    if isinstance(value, SandboxOptions) and value.sim and value == SandboxOptions(sim=value.sim):
        inner = ", ".join(f"{k}={v!r}" for k, v in value.sim.items())
        return f"sim_faults({inner})"
    faults = process_faults_of(value) if isinstance(value, SandboxOptions) else None
    if faults:
        inner = ", ".join(f"{k}={v!r}" for k, v in faults.items())
        return f"process_faults({inner})"
    return repr(value)


def render_call(call: Call) -> str:
    """``Call('stop', 0, {'timeout_secs': 0})``, as Python."""
    parts = [repr(call.name), str(call.sandbox)]
    if call.args:
        items = ", ".join(f"{k!r}: {_render_value(v)}" for k, v in call.args.items())
        parts.append("{" + items + "}")
    return f"Call({', '.join(parts)})"


def _render_group(group: Group) -> str:
    if len(group) == 1 and len(group[0]) == 1:
        return render_call(group[0][0])
    sequences = [
        render_call(seq[0]) if len(seq) == 1 else "[" + ", ".join(map(render_call, seq)) + "]"
        for seq in group
    ]
    return "[" + ", ".join(sequences) + "]"


def render_program(program: Program, indent: str = "") -> str:
    """The program as Python (``Program([...])``), one group a line, each line after the
    first indented by ``indent``."""
    if not program.groups:
        return "Program([])"
    body = "".join(f"{indent}        {_render_group(group)},\n" for group in program.groups)
    return f"Program(\n{indent}    [\n{body}{indent}    ]\n{indent})"


# -- running ---------------------------------------------------------------------------------


class ProgramHung(Exception):
    """Calls of a program stayed unanswered although the reaper shut their sandboxes down.

    ``pending`` lists them as ``(call, sandbox id)``; ``history`` holds what was recorded.
    """

    def __init__(
        self, pending: Sequence[tuple[Call, str]], waited: float, history: Sequence[Operation]
    ) -> None:
        self.pending = tuple(pending)
        self.waited = waited
        self.history = tuple(history)
        calls = ", ".join(f"{call.name}({sandbox_id!r})" for call, sandbox_id in self.pending)
        super().__init__(
            f"{len(self.pending)} call(s) unanswered {waited:.1f} s after the reaper shut "
            f"their sandboxes down: {calls}"
        )


@final
class _Run:
    """The state of one run of a program: who waits in which call, how many answered."""

    def __init__(
        self,
        recorder: HistoryRecorder,
        sandbox_ids: Sequence[str],
        reaper: Any,
        cushion: float,
        hang_after: float,
        trace: MutableMapping[tuple[int, int, int], Operation] | None,
        jitter: random.Random | None,
        schedule: Sequence[tuple[int, int, int]] | None = None,
        settle: float = 0.0,
        patience: float = 0.0,
    ) -> None:
        self.jitter = jitter
        self.patience = patience
        # With a schedule, call k of it is made once call k - 1 has been made and every task
        # has been blocked for ``settle`` seconds since: its request is out, and handled as
        # far as it goes without the others.
        self.turns = {key: turn for turn, key in enumerate(schedule or ())}
        self.turn = 0
        self.settle = settle
        self.passing = 0
        self.recorder = recorder
        self.sandbox_ids = sandbox_ids
        self.reaper = reaper
        self.cushion = cushion
        self.hang_after = hang_after
        self.trace = trace
        self.pending: dict[tuple[int, int], tuple[Call, str]] = {}
        self.answered = 0
        self._changed = trio.Event()

    def _touch(self) -> None:
        self._changed.set()

    async def _changes(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()

    async def client(
        self, target: Any, group: int, client: int, calls: Sequence[Call], nursery: trio.Nursery
    ) -> None:
        for index, call in enumerate(calls):
            if self.jitter is not None:
                for _ in range(self.jitter.randrange(MAX_JITTER + 1)):
                    await trio.lowlevel.checkpoint()
            turn = self.turns.get((group, client, index))
            if turn is not None:
                while self.turn < turn:
                    await self._changes()
                self.passing += 1
                nursery.start_soon(self._pass_turn)
            sandbox_id = self.sandbox_ids[call.sandbox]
            self.pending[group, client] = (call, sandbox_id)
            self._touch()
            try:
                await self.recorder.call(
                    target, call.name, sandbox_id, client=f"client {client}", **call.args
                )
            finally:
                del self.pending[group, client]
            if self.trace is not None:
                # recorder.call appended the operation and returned without a checkpoint.
                self.trace[group, client, index] = self.recorder.operations[-1]
            self.answered += 1
            self._touch()

    async def _pass_turn(self) -> None:
        """The next call of the schedule may go once this one is out (everyone blocked)."""
        await trio.testing.wait_all_tasks_blocked(self.settle)
        self.turn += 1
        self.passing -= 1
        self._touch()

    async def reap(self) -> None:
        answered_before = -1
        stuck_since: float | None = None
        backoff = self.cushion
        while True:
            await trio.testing.wait_all_tasks_blocked(self.cushion)
            parked = sorted({sid for call, sid in self.pending.values() if call.name in _PARKING})
            if not parked or self.passing:  # a scheduled call is about to go: not stuck
                await self._changes()
                continue
            if self.patience > 0 and await self._answered_within(self.patience):
                continue  # a timer (a Stop's grace period, say) answered someone
            if self.answered == answered_before:
                # The last round answered nobody: answers may be on their way.  Back off.
                now = trio.current_time()
                if stuck_since is None:
                    stuck_since = now
                elif now - stuck_since >= self.hang_after:
                    raise ProgramHung(
                        list(self.pending.values()), now - stuck_since, self.recorder.operations
                    )
                with trio.move_on_after(backoff):
                    await self._changes()
                backoff = min(2 * backoff, max(self.cushion, self.hang_after / 4))
                if self.answered != answered_before:
                    continue
            else:
                stuck_since = None
                backoff = self.cushion
            answered_before = self.answered
            async with trio.open_nursery() as nursery:
                for sandbox_id in parked:
                    nursery.start_soon(self._shutdown, sandbox_id)

    async def _answered_within(self, seconds: float) -> bool:
        """Whether some call is answered within ``seconds`` (timers may fire meanwhile)."""
        before = self.answered
        with trio.move_on_after(seconds):
            while self.answered == before:
                await self._changes()
        return self.answered != before

    async def _shutdown(self, sandbox_id: str) -> None:
        await self.recorder.call(self.reaper, "shutdown", sandbox_id, client=REAPER)


async def run_program(
    program: Program,
    targets: Sequence[Any],
    sandbox_ids: Sequence[str],
    *,
    reaper: Any = None,
    recorder: HistoryRecorder | None = None,
    cushion: float = 0.001,
    hang_after: float = 5.0,
    cleanup: bool = False,
    trace: MutableMapping[tuple[int, int, int], Operation] | None = None,
    jitter: random.Random | None = None,
    schedule: Sequence[tuple[int, int, int]] | None = None,
    settle: float = 0.0,
    patience: float = 0.0,
) -> list[Operation]:
    """Run ``program`` and return the recorded history (a list of
    :class:`~sandboxd.testing.Operation`, for :func:`~sandboxd.testing.check_linearizable`).

    ``targets`` are Controllers, RemoteControllers or anything with their methods; sequence
    ``i`` of every group runs on ``targets[i % len(targets)]``.  Sandbox number ``n`` of the
    program is ``sandbox_ids[n]``.  The reaper (see the module's docstring) calls ``reaper``
    (default ``targets[0]``), once every task has been blocked for ``cushion`` seconds; give a
    remote target a larger ``cushion`` than an in-process one, so that answers on their way
    are not taken for parked calls.  ``cleanup`` shuts every sandbox of ``sandbox_ids`` down
    afterwards (not recorded).  ``trace``, if given, maps ``(group, sequence, call index)`` to
    each answered call's operation.  ``jitter``, if given, makes each client yield to the
    others 0 to :data:`MAX_JITTER` times before each call, as it says: under Hypothesis, which
    makes trio's scheduling deterministic, a ``random.Random`` seeded with a drawn integer
    varies the interleavings, reproducibly.  ``patience``: seconds the reaper lets pass
    before it shuts down sandboxes with parked calls, so that timers (a Stop's grace
    period) may answer them first; cheap with an autojump clock.

    ``schedule``, if given, replays an interleaving: a list of ``(group, sequence, call
    index)`` keys (as in ``trace``), in the order their calls are to be made.  A call in it
    is made only once the one before it was made and every task has been blocked for
    ``settle`` seconds since (so its request is written, and in process, handled as far as
    it goes); a sequence still makes its calls one after the other.  Give the order in which
    a run started its calls (``trace``, by start time) and the requests of each group go out
    in that order, on one connection if ``targets`` is one -- so that the server reads them
    in that order too.  Calls not in it go when their sequence gets to them.

    Raises :class:`ProgramHung` when calls stay unanswered ``hang_after`` seconds after the
    reaper shut their sandboxes down.  An exception other than an
    :class:`~sandboxd.RPCError` from a call propagates (in an exception group); an
    :class:`~sandboxd.RPCError` is the call's outcome.
    """
    if not targets:
        raise ValueError("run_program needs at least one target")
    if len(sandbox_ids) < program.sandboxes:
        raise ValueError(
            f"the program uses {program.sandboxes} sandboxes; {len(sandbox_ids)} ids given"
        )
    if recorder is None:
        recorder = HistoryRecorder()
    reaper_target = targets[0] if reaper is None else reaper
    run = _Run(
        recorder,
        sandbox_ids,
        reaper_target,
        cushion,
        hang_after,
        trace,
        jitter,
        schedule,
        settle,
        patience,
    )
    try:
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(run.reap, name="reaper")
                for number, group in enumerate(program.groups):
                    async with trio.open_nursery() as nursery:
                        for client, calls in enumerate(group):
                            target = targets[client % len(targets)]
                            nursery.start_soon(run.client, target, number, client, calls, nursery)
                outer.cancel_scope.cancel()
        except* ProgramHung as group:
            hung = group.exceptions[0]
            raise hung from None
    finally:
        if cleanup:
            await _clean_up(reaper_target, sandbox_ids[: program.sandboxes])
    return recorder.operations


async def _clean_up(target: Any, sandbox_ids: Sequence[str], limit: float = 10.0) -> None:
    """Shut every sandbox of ``sandbox_ids`` down, whatever happened before (bounded)."""
    with trio.CancelScope(shield=True), trio.move_on_after(limit):
        async with trio.open_nursery() as nursery:
            for sandbox_id in sandbox_ids:
                nursery.start_soon(_shutdown_quietly, target, sandbox_id)


async def _shutdown_quietly(target: Any, sandbox_id: str) -> None:
    with contextlib.suppress(RPCError):
        await target.shutdown(sandbox_id)


# -- the events a program causes ---------------------------------------------------------------


@final
class EventLog:
    """The lifecycle events published while a block of :func:`recording_events` ran.

    ``events`` holds them in the order they arrived, those of the marker sandbox left out;
    ``complete`` is true when every one of them is there: the subscription had begun before
    the block (the marker's first delete was seen), the block's last event had arrived after
    it (the marker's second delete was seen), and none was dropped for a slow subscriber.
    """

    def __init__(self) -> None:
        self.events: list[SandboxEvent] = []
        self._subscribed = trio.Event()
        self._arrived = trio.Event()

    @property
    def complete(self) -> bool:
        dropped = any(event.topic == TOPIC_DROPPED for event in self.events)
        return self._subscribed.is_set() and self._arrived.is_set() and not dropped

    async def _collect(self, subscription: AsyncIterator[SandboxEvent], marker: str) -> None:
        async for event in subscription:
            if event.sandbox_id != marker:
                if self._subscribed.is_set():
                    self.events.append(event)
            elif event.topic == TOPIC_DELETE:
                if self._subscribed.is_set():
                    self._arrived.set()
                    return
                self._subscribed.set()


async def _mark(target: Any, marker: str, seen: trio.Event, limit: float) -> None:
    """Create and shut down the ``marker`` sandbox, and wait (``limit`` seconds at most)
    until its delete is ``seen`` on the event stream."""
    with contextlib.suppress(RPCError), trio.move_on_after(limit):
        await target.create(marker)
        await target.shutdown(marker)
        await seen.wait()


@contextlib.asynccontextmanager
async def recording_events(
    target: Any, marker: str, *, limit: float = 5.0
) -> AsyncIterator[EventLog]:
    """Subscribe to ``target``'s Events (a Controller, or a remote one) and yield an
    :class:`EventLog` of what is published during the block, for
    :func:`~sandboxd.testing.check_events`.

    A remote subscription begins only once the daemon has read it, and events keep arriving
    after the calls that caused them returned: the block is bracketed by a Create and a
    Shutdown of the sandbox ``marker`` (an id nothing else uses), whose deletes, seen on the
    stream, say where the block's events begin and end.  Each bracket waits ``limit``
    seconds at most; if one is not seen, the log is not ``complete``.  Leaving the block by
    an exception skips the closing bracket and ends the subscription.
    """
    async with target.events() as subscription, trio.open_nursery() as nursery:
        log = EventLog()
        nursery.start_soon(log._collect, subscription, marker)
        await _mark(target, marker, log._subscribed, limit)
        yield log
        await _mark(target, marker, log._arrived, limit)
        nursery.cancel_scope.cancel()
