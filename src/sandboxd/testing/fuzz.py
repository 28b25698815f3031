"""The lifecycle fuzzer: random concurrent programs against a daemon or a Controller, every
history checked, a failing program shrunk to a minimal reproducer.

This is the engine of ``sandboxctl fuzz``.  It needs Hypothesis (``pip install
'sandboxd[testing]'``).

Theory of operation
-------------------

Programs are drawn by :func:`sandboxd.testing.strategies.programs` inside a Hypothesis test
run in-process (``@given``, seeded with ``seed``, no example database): lifecycle calls and,
where the target runs them (:func:`runs_execs`), execs racing them, each run to its end.
Each example runs
its program with :func:`~sandboxd.testing.run_program` -- ``clients`` connections to a daemon,
or one fresh in-process controller -- and the history goes to
:func:`~sandboxd.testing.check_linearizable` under the ``sim`` model
(:func:`~sandboxd.testing.sim_model`, with deadlines: exact in process, where each example
runs on an autojump clock, within a tolerance over a socket).  Then the fields of every answer
go to :func:`~sandboxd.testing.check_fields`, and the lifecycle events published meanwhile --
the fuzzer subscribes for every program, between two create/delete of a marker sandbox that
say the subscription is live and every event has arrived -- to
:func:`~sandboxd.testing.check_events`.  A history that is not linearizable, wrong fields or
events, a program that hangs, or a call that raises something other than a status is a
*violation*.

A violation is shrunk in two stages, each given half of ``shrink_limit``.  First Hypothesis
shrinks the choices that drew the program, re-running every candidate.  Then the program
itself is polished: its calls one after the other, one call fewer, one argument or fault
fewer, one sandbox fewer -- whichever still fails, until none does.  (A guided call is drawn
for what the program did before it, so removing an earlier choice can change a later call:
the second stage removes calls without touching the others.)  Concurrency makes a failure
come and go: against a daemon a candidate is tried ``retries`` times, and the smallest
failing program seen is kept even if Hypothesis's last replay passes.

Under Hypothesis, trio schedules tasks deterministically, so an in-process run of a program
is the same every time; each example also draws a *jitter*, how often its clients yield
before their calls, so that the interleavings vary from example to example, reproducibly.

Generation does not depend on the target's answers, so a seed draws the same programs in the
same order on every run (the progress lines show a digest of them); with the ``sim``
sandboxer, whose behaviour is deterministic, a seed reproduces a run up to the interleaving
of concurrent calls (in process: exactly, timers aside).

Sandbox ids are ``<prefix><n>`` (``fuzz-<seed>-<n>``): a fresh one for every sandbox of
every example, shut down once the example has run.  Against a daemon, leftovers with the
prefix (from an interrupted run) are shut down before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Final, final

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from .._errors import Code, RPCError
from .._models import ExecRequest, SandboxEvent
from .._version import __version__
from ..api import RemoteController, connect
from ..backends._bwrap import BwrapSandbox
from ..backends._process import ProcessSandbox
from . import strategies
from ._faults import model_for
from ._linearize import HistoryRecorder, Operation, check_linearizable
from ._model import ReferenceModel, Timing
from ._observed import check_events, check_fields
from ._programs import Call, EventLog, Program, ProgramHung, recording_events, run_program
from ._reproduce import explain_conflict, replay_order, reproducer_script, reproducer_test

__all__ = [
    "FuzzProgress",
    "FuzzReport",
    "Target",
    "Violation",
    "default_programs",
    "fuzz",
    "runs_execs",
]

#: A daemon's socket path, or a factory of in-process controllers (an async context manager
#: yielding something with the Controller's methods), called once per example.
Target = str | os.PathLike[str] | Callable[[], AbstractAsyncContextManager[Any]]

#: The kinds of violation.
NOT_LINEARIZABLE: Final = "not linearizable"
HUNG: Final = "hang"
ERROR: Final = "error"
WRONG_FIELDS: Final = "wrong fields"
WRONG_EVENTS: Final = "wrong events"

#: Seconds a Stop's grace period and the like may take to answer a parked call before the
#: reaper shuts its sandbox down, in process (virtual seconds: the clock jumps).
_PATIENCE: Final = 1.0
#: How late a deadline may be met: in process the autojump clock is exact; over a socket
#: the scheduling of two processes on a busy machine is not.
IN_PROCESS_TOLERANCE: Final = 1e-6
SOCKET_TOLERANCE: Final = 1.0
#: How long to wait for the events of a program to arrive after it.
_EVENTS_LIMIT: Final = 5.0


@final
@attrs.frozen(slots=True)
class Violation:
    """A program whose run the reference model cannot explain, shrunk.

    ``kind`` is ``"not linearizable"`` (``description`` is the checker's, naming the
    conflicting calls), ``"wrong fields"`` (an answer's pid, timestamps or labels are not
    what it said before, or out of order), ``"wrong events"`` (a lifecycle event missing,
    repeated, out of order or with a wrong exit status), ``"hang"`` (calls never answered)
    or ``"error"`` (a call raised something other than a status; ``description`` is the
    traceback).  ``program`` ran on
    ``sandbox_ids`` and recorded ``history``; ``script`` and ``test`` reproduce it as a
    ``sandboxctl`` script and a pytest module.  ``found_after`` counts the programs run
    before the first failure, ``shrunk_from`` the calls of that first failing program.
    """

    kind: str
    program: Program
    sandbox_ids: tuple[str, ...]
    description: str
    history: tuple[Operation, ...]
    script: str
    test: str
    found_after: int = 0
    shrunk_from: int = 0

    def describe(self) -> str:
        return (
            f"{self.kind}: {self.description}\n\n"
            f"minimal reproducer ({len(self.program)} calls on {self.program.sandboxes} "
            f"sandbox{'es' if self.program.sandboxes != 1 else ''}, shrunk from "
            f"{self.shrunk_from} calls):\n\n"
            f"--- sandboxctl script ---\n{self.script}\n"
            f"--- Python test (pytest) ---\n{self.test}"
        )


@final
@attrs.frozen(slots=True)
class FuzzProgress:
    """Where a fuzzing run is: ``programs`` drawn and run (not counting shrinking), their
    ``calls``, seconds ``elapsed``, ``digest`` of the programs so far (equal for equal seeds),
    ``inconclusive`` checks (out of search budget), and while ``shrinking`` the number of
    calls of the ``smallest`` failing program so far."""

    programs: int
    calls: int
    elapsed: float
    digest: str
    inconclusive: int = 0
    shrinking: bool = False
    smallest: int | None = None
    attempts: int = 0


@final
@attrs.frozen(slots=True)
class FuzzReport:
    """The outcome of :func:`fuzz`: ``violation`` is ``None`` when every history passed
    every check (outcomes, deadlines, fields and events)."""

    seed: int
    programs: int
    calls: int
    elapsed: float
    digest: str
    inconclusive: int
    violation: Violation | None

    @property
    def ok(self) -> bool:
        return self.violation is None

    def summary(self) -> str:
        head = (
            f"{self.programs} programs, {self.calls} calls in {self.elapsed:.1f} s "
            f"(seed {self.seed}, digest {self.digest})"
        )
        if self.inconclusive:
            head += f"; {self.inconclusive} histories too large to decide"
        if self.violation is None:
            # Outcomes, deadlines, fields and events: see _Session.check.
            return f"{head}: every check passed"
        return f"{head}: VIOLATION ({self.violation.kind})"


class _Failed(Exception):
    """Raised in the Hypothesis test: this example is a violation."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(violation.kind)
        self.violation = violation


class _Stop(BaseException):
    """Ends the Hypothesis run at once (time is up): not a failure, nothing to shrink."""


class _Abort(BaseException):
    """The target itself failed (no daemon at the socket): not the program's fault."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def default_programs(
    sandboxes: int = 2, clients: int = 4, sandboxer: str | None = "sim", *, execs: bool = True
) -> st.SearchStrategy[Program]:
    """The programs ``sandboxctl fuzz`` draws: up to 16 calls over ``sandboxes`` sandboxes,
    at most ``clients`` at once, Creates with up to two ``sim`` faults each and execs of sim
    scripts (:func:`~sandboxd.testing.strategies.exec_args`) -- or, for any other
    ``sandboxer`` (``process``, ``bwrap``), real short-lived processes
    (:func:`~sandboxd.testing.strategies.process_options`), execs of real commands, and
    Stops that SIGKILL at once, after 50 ms or after the daemon's grace period.  Without
    ``execs``, no Exec is drawn."""
    create = strategies.create_args(sandboxer)
    names = strategies.CALLS_WITH_EXECS if execs else strategies.CALL_WEIGHTS
    drawn = strategies.exec_args(sandboxer)
    if sandboxer in (None, "sim"):
        return strategies.programs(
            sandboxes, clients=clients, create=create, names=names, execs=drawn
        )
    timeouts = strategies.stop_timeouts((None, 0, 0.05))
    return strategies.programs(
        sandboxes, clients=clients, create=create, stop_timeout=timeouts, names=names, execs=drawn
    )


def runs_execs(target: Target, sandboxer: str | None = "sim") -> bool:
    """Whether ``target`` runs execs in sandboxes of ``sandboxer``: a daemon that serves Exec
    (asked with an Exec of a sandbox that does not exist: NOT_FOUND, not UNIMPLEMENTED), or
    any in-process controller; and a backend of real processes that can run them."""
    if sandboxer not in (None, "sim"):
        sandbox = BwrapSandbox if sandboxer == "bwrap" else ProcessSandbox
        if not hasattr(sandbox, "exec"):
            return False
    if callable(target):
        return True
    if not hasattr(RemoteController, "exec"):
        return False
    return trio.run(_serves_exec, os.fspath(target))


async def _serves_exec(path: str) -> bool:
    try:
        async with connect(path) as remote:
            client: Any = remote  # a client of another version may lack exec
            try:
                async with client.exec("fuzz-probe", ExecRequest(["true"])):
                    pass  # pragma: no cover - no sandbox has that id
            except RPCError as err:
                return err.code is not Code.UNIMPLEMENTED
    except RPCError as err:
        raise _Abort(err) from err
    return True  # pragma: no cover


@asynccontextmanager
async def _open(target: Target, clients: int) -> AsyncIterator[tuple[list[Any], Any]]:
    """``(client targets, reaper target)`` for one example."""
    if callable(target):
        async with target() as controller:
            yield [controller], controller
        return
    async with AsyncExitStack() as stack:
        try:
            remotes = [await stack.enter_async_context(connect(target)) for _ in range(clients)]
            reaper = await stack.enter_async_context(connect(target))
        except RPCError as err:
            raise _Abort(err) from err
        yield remotes, reaper


async def _sweep(path: str | os.PathLike[str], prefix: str) -> int:
    """Shut down the sandboxes whose id starts with ``prefix``; how many there were."""
    try:
        async with connect(path) as remote:
            left = [s.sandbox_id for s in await remote.list() if s.sandbox_id.startswith(prefix)]
            async with trio.open_nursery() as nursery:
                for sandbox_id in left:
                    nursery.start_soon(_shutdown, remote, sandbox_id)
    except RPCError as err:
        raise _Abort(err) from err
    return len(left)


async def _shutdown(remote: Any, sandbox_id: str) -> None:
    with contextlib.suppress(RPCError):
        await remote.shutdown(sandbox_id)


@final
class _Session:
    """The state of one :func:`fuzz` run, shared by the examples Hypothesis runs."""

    def __init__(
        self,
        target: Target,
        *,
        seed: int,
        clients: int,
        model: ReferenceModel,
        prefix: str,
        socket: str | None,
        cushion: float,
        hang_after: float,
        guard: float,
        retries: int,
        max_states: int,
        deadline: float,
        max_programs: int,
        shrink_limit: float,
        progress: Callable[[FuzzProgress], None] | None,
        progress_every: int,
        virtual_time: bool,
    ) -> None:
        self.target = target
        self.seed = seed
        self.clients = clients
        self.model = model
        self.prefix = prefix
        self.socket = socket
        self.cushion = cushion
        self.hang_after = hang_after
        self.guard = guard
        self.retries = retries
        self.max_states = max_states
        self.deadline = deadline
        self.max_programs = max_programs
        self.shrink_limit = shrink_limit
        self.progress = progress
        self.progress_every = progress_every
        self.virtual_time = virtual_time
        self.started = time.monotonic()
        self.programs = 0
        self.calls = 0
        self.inconclusive = 0
        self.attempts = 0  # runs while shrinking
        self.next_id = 0
        self._hash = hashlib.sha256()
        self.failing_since: float | None = None
        self.first: Violation | None = None
        self.smallest: Violation | None = None

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()[:12]

    def report(self) -> None:
        if self.progress is not None:
            self.progress(
                FuzzProgress(
                    programs=self.programs,
                    calls=self.calls,
                    elapsed=time.monotonic() - self.started,
                    digest=self.digest,
                    inconclusive=self.inconclusive,
                    shrinking=self.smallest is not None,
                    smallest=None if self.smallest is None else len(self.smallest.program),
                    attempts=self.attempts,
                )
            )

    def example(self, program: Program, jitter: random.Random | None) -> None:
        """The body of the Hypothesis test."""
        now = time.monotonic()
        if self.failing_since is None:
            if now >= self.deadline or self.programs >= self.max_programs:
                raise _Stop
            self.programs += 1
            self.calls += len(program)
            self._hash.update(repr(program).encode())
        else:
            if now - self.failing_since >= self.shrink_limit / 2:
                raise _Stop  # the other half is the polishing's
            self.attempts += 1
        # In process, a run under Hypothesis is deterministic: trying again shows nothing new.
        tries = 1 if self.failing_since is None or self.socket is None else self.retries
        for _ in range(tries):
            violation = self.run(program, jitter)
            if violation is not None:
                self.note(violation)
                raise _Failed(violation)
        if self.failing_since is None and self.programs % self.progress_every == 0:
            self.report()

    def note(self, violation: Violation) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            self.first = violation
        if self.smallest is None or _size(violation.program) < _size(self.smallest.program):
            self.smallest = violation
            self.report()

    def run(self, program: Program, jitter: random.Random | None = None) -> Violation | None:
        ids = tuple(f"{self.prefix}{self.next_id + i}" for i in range(program.sandboxes))
        marker = f"{self.prefix}{self.next_id + program.sandboxes}"
        self.next_id += program.sandboxes + 1
        trace: dict[tuple[int, int, int], Operation] = {}
        recorder = HistoryRecorder()
        kind = description = None
        # In process, time is virtual and exact (see _PATIENCE and the model's Timing).
        clock = trio.testing.MockClock(autojump_threshold=0) if self.virtual_time else None
        try:
            history, log = trio.run(
                self._attempt, program, ids, marker, recorder, trace, jitter, clock=clock
            )
        except trio.TooSlowError:
            kind, history = HUNG, recorder.operations
            description = f"the program did not finish within {self.guard:g} s"
        except Exception as exc:
            # A hang comes out of the nurseries it crossed in exception groups.
            hung = _program_hung(exc)
            if hung is not None:
                kind, description, history = HUNG, str(hung), list(hung.history)
            else:
                kind, history = ERROR, recorder.operations
                description = "a call raised:\n" + "".join(traceback.format_exception(exc))
        else:
            kind, description = self.check(history, log.events if log.complete else None)
        if kind is None or description is None:
            return None
        notes = [
            f"Found by the sandboxd {__version__} fuzzer (seed {self.seed}): {kind}.",
            description,
        ]
        return Violation(
            kind=kind,
            program=program,
            sandbox_ids=ids,
            description=description,
            history=tuple(history),
            script=reproducer_script(
                program, ids, socket=self.socket, notes=notes, observed=trace, history=history
            ),
            test=reproducer_test(
                program,
                ids,
                socket=self.socket,
                notes=notes,
                name=f"test_fuzz_seed_{self.seed}",
                schedule=replay_order(trace),
                # A reproducer runs against a daemon, in real time.
                timing=attrs.evolve(self.model.timing, tolerance=SOCKET_TOLERANCE)
                if self.virtual_time
                else self.model.timing,
            ),
            found_after=self.programs,
            shrunk_from=len(self.first.program) if self.first is not None else len(program),
        )

    def check(
        self, history: Sequence[Operation], events: Sequence[SandboxEvent] | None
    ) -> tuple[str | None, str | None]:
        """``(kind, description)`` of what is wrong with a run, or ``(None, None)``.
        ``events`` is ``None`` when they did not all arrive."""
        result = check_linearizable(history, self.model, max_states=self.max_states)
        if result.inconclusive:
            self.inconclusive += 1
        elif not result.ok:
            said = explain_conflict(result.conflict, history, self.model)
            return NOT_LINEARIZABLE, f"{said}.\n{result.describe()}"
        problems = check_fields(history)
        if problems:
            return WRONG_FIELDS, "\n".join(problems)
        if events is not None:
            problems = check_events(history, events, self.model)
            if problems:
                return WRONG_EVENTS, "\n".join(problems)
        return None, None

    async def _attempt(
        self,
        program: Program,
        ids: Sequence[str],
        marker: str,
        recorder: HistoryRecorder,
        trace: dict[tuple[int, int, int], Operation],
        jitter: random.Random | None,
    ) -> tuple[list[Operation], EventLog]:
        """The program's history, and the events it caused."""
        async with (
            _open(self.target, self.clients) as (targets, reaper),
            recording_events(reaper, marker, limit=_EVENTS_LIMIT) as log,
        ):
            with trio.fail_after(self.guard):
                history = await run_program(
                    program,
                    targets,
                    ids,
                    reaper=reaper,
                    recorder=recorder,
                    cushion=self.cushion,
                    hang_after=self.hang_after,
                    cleanup=True,
                    trace=trace,
                    jitter=jitter,
                    patience=_PATIENCE if self.virtual_time else 0.0,
                )
        return history, log


def _program_hung(error: BaseException) -> ProgramHung | None:
    """The :class:`ProgramHung` that ``error`` is, or the one in its groups, if any."""
    if isinstance(error, ProgramHung):
        return error
    if isinstance(error, BaseExceptionGroup):
        found: BaseException | None = error.split(ProgramHung)[0]
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        if isinstance(found, ProgramHung):
            return found
    return None


@contextlib.contextmanager
def _without_local_constants() -> Iterator[None]:
    """Generation that does not depend on where sandboxd, or the caller's code, lives.

    Hypothesis (6.131 and later) now and then draws a constant found in the source of the
    "local" modules loaded -- those outside site-packages and the standard library -- so a
    seed drew other programs from a source tree than from an installed wheel, and other
    ones again once the caller imported a module of its own.  For the length of a run this
    makes the set of local constants empty (its global constants stay: they are fixed), and
    empties the cache of allowed constants, on entry and on exit, so that nothing drawn
    before or after sees the difference.  Without that internal API (an older or newer
    Hypothesis) it does nothing.
    """
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - the layout of another Hypothesis
        yield
        return
    cache = getattr(providers, "CONSTANTS_CACHE", None)
    local = getattr(providers, "_get_local_constants", None)
    constants = getattr(providers, "Constants", None)
    if cache is None or local is None or constants is None:  # pragma: no cover
        yield
        return
    empty = constants()
    cache.cache.clear()
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = local
        cache.cache.clear()


def _size(program: Program) -> tuple[int, int, int, int, int, int]:
    """Smaller is simpler: fewer calls, fewer at once, fewer in concurrent groups, fewer
    groups, fewer sandboxes, fewer arguments and faults."""
    arguments = 0
    for call in program.calls:
        arguments += len(call.args)
        options = call.args.get("options")
        arguments += len(getattr(options, "sim", None) or ())
    concurrent = sum(sum(map(len, group)) for group in program.groups if len(group) > 1)
    return (
        len(program),
        program.clients,
        concurrent,
        len(program.groups),
        program.sandboxes,
        arguments,
    )


def _without(program: Program, position: int) -> Program:
    """``program`` without its call number ``position`` (in :attr:`Program.calls` order)."""
    groups: list[list[list[Call]]] = []
    index = 0
    for group in program.groups:
        sequences: list[list[Call]] = []
        for sequence in group:
            kept = [c for i, c in enumerate(sequence, index) if i != position]
            index += len(sequence)
            if kept:
                sequences.append(kept)
        if sequences:
            groups.append(sequences)
    return Program(groups)


def _plainer(call: Call) -> Call | None:
    """``call`` with one argument fewer (a Create's faults, a Stop's timeout), if any."""
    if call.name == "create" and "options" in call.args:
        return attrs.evolve(call, args={k: v for k, v in call.args.items() if k != "options"})
    if call.name == "stop" and "timeout_secs" in call.args:
        return attrs.evolve(call, args={})
    return None


def _one_after_another(program: Program) -> Iterator[Program]:
    """The calls of a concurrent program one after the other: in the program's order, and
    with the clients of each group the other way round (which went first may matter)."""
    if program.sequential:
        return
    yield Program(list(program.calls))
    yield Program([call for group in program.groups for seq in group[::-1] for call in seq])


def _groups_one_after_another(program: Program) -> Iterator[Program]:
    """The calls of one concurrent group one after the other (each way round), the other
    groups as they are: which race matters, when a program has several."""
    for number, group in enumerate(program.groups):
        if len(group) < 2:
            continue
        for order in (group, group[::-1]):
            serial = (tuple(call for sequence in order for call in sequence),)
            yield Program([*program.groups[:number], serial, *program.groups[number + 1 :]])


def _without_sandbox(program: Program, sandbox: int) -> Program:
    """``program`` without the calls on ``sandbox``, the sandboxes after it renumbered."""
    groups: list[list[list[Call]]] = []
    for group in program.groups:
        sequences = [
            [
                c if c.sandbox < sandbox else attrs.evolve(c, sandbox=c.sandbox - 1)
                for c in sequence
                if c.sandbox != sandbox
            ]
            for sequence in group
        ]
        kept = [sequence for sequence in sequences if sequence]
        if kept:
            groups.append(kept)
    return Program(groups)


def _candidates(program: Program) -> Iterator[Program]:
    """Simpler programs to try, simplest first: the calls one after the other; those of
    one group one after the other; one sandbox fewer, with all its calls; one call fewer
    (later calls first), one after the other if that fails too; one argument fewer; every
    call on one sandbox."""
    yield from _one_after_another(program)
    yield from _groups_one_after_another(program)
    if program.sandboxes > 1:
        for sandbox in range(program.sandboxes):
            yield _without_sandbox(program, sandbox)
    for position in reversed(range(len(program))):
        smaller = _without(program, position)
        yield from _one_after_another(smaller)
        yield smaller
    calls = program.calls
    for position, call in enumerate(calls):
        plainer = _plainer(call)
        if plainer is not None:
            yield _replace(program, {position: plainer})
    if program.sandboxes > 1:
        yield _replace(program, {i: attrs.evolve(c, sandbox=0) for i, c in enumerate(calls)})


def _replace(program: Program, calls: Mapping[int, Call]) -> Program:
    index = 0
    groups: list[list[list[Call]]] = []
    for group in program.groups:
        groups.append([])
        for sequence in group:
            groups[-1].append([calls.get(i, c) for i, c in enumerate(sequence, index)])
            index += len(sequence)
    return Program(groups)


def _polish(session: _Session, violation: Violation) -> Violation:
    """Finish Hypothesis's shrinking on the calls themselves: keep taking the first simpler
    program that still fails (each tried several times) until none does, or until the
    shrinking time is up.  Hypothesis shrinks the choices that drew the program; a call
    drawn for what the program did before may change when an earlier one goes, so this
    pass removes calls without touching the others.  Outside Hypothesis trio schedules
    at random again, and each try jitters differently."""
    started = session.failing_since or time.monotonic()
    # In process a try costs little: more of them find a racy failure again more surely.
    tries = 2 * session.retries if session.socket is not None else 4 * session.retries
    improved = True
    while improved and time.monotonic() - started < session.shrink_limit:
        improved = False
        for candidate in _candidates(violation.program):
            if _size(candidate) >= _size(violation.program):
                continue  # not simpler (a call that was already plain, say)
            found = None
            # Each try with another jitter: the ordering that failed may take a few.
            for attempt in range(tries):
                session.attempts += 1
                found = session.run(candidate, random.Random(attempt) if attempt else None)
                if found is not None:
                    break
            if found is not None:
                violation = found
                session.note(found)
                improved = True
                break
    return violation


def fuzz(
    target: Target,
    *,
    seed: int = 0,
    duration: float | None = 10.0,
    max_programs: int | None = None,
    clients: int = 4,
    sandboxes: int = 2,
    sandboxer: str | None = "sim",
    programs: st.SearchStrategy[Program] | None = None,
    model: ReferenceModel | None = None,
    stop_timeout: float | None = None,
    tolerance: float | None = None,
    virtual_time: bool = True,
    progress: Callable[[FuzzProgress], None] | None = None,
    progress_every: int = 50,
    cushion: float | None = None,
    hang_after: float = 2.0,
    guard: float = 60.0,
    retries: int = 3,
    max_states: int = 50_000,
    shrink_limit: float = 60.0,
    prefix: str | None = None,
) -> FuzzReport:
    """Fuzz ``target`` with random concurrent lifecycle programs; blocks until done.

    ``target`` is a daemon's socket path (each example connects ``clients`` times, plus once
    for the reaper), or a factory of in-process controllers: a function returning an async
    context manager that yields something with the Controller's methods, entered once per
    example.  Runs until ``duration`` seconds or ``max_programs`` programs (whichever comes
    first; at least one of them must be given), or until a violation, which it then shrinks
    for at most ``shrink_limit`` seconds.

    ``programs`` draws the programs (default :func:`default_programs` with ``sandboxes``,
    ``clients`` and ``sandboxer``: ``sim``, or ``process`` and ``bwrap`` for real processes);
    ``model`` judges them (default :func:`~sandboxd.testing.sim_model` for ``sim``,
    :func:`~sandboxd.testing.process_model` for real processes, keeping time: a Stop
    without a timeout waits ``stop_timeout``, the target's grace period, if given; deadlines
    are met within ``tolerance`` seconds, default exact in process and 1 s over a socket).
    Besides the outcomes, every answer's fields and the events published are checked (see
    :func:`~sandboxd.testing.check_fields` and :func:`~sandboxd.testing.check_events`).
    In process each example runs on an autojump clock (unless ``virtual_time`` is false, as
    it is for sandboxers whose processes are real, which take real time to die): time is
    virtual, and timers fire as soon as everything waits on them.

    ``progress`` is called every ``progress_every`` programs, and as shrinking finds smaller
    failures.  ``cushion``, ``hang_after``: see :func:`~sandboxd.testing.run_program`
    (``cushion`` defaults to 0.02 s for a socket, 0.001 s in process); ``guard`` bounds one
    example (in virtual seconds, in process).  Sandbox ids start with ``prefix``
    (default ``fuzz-<seed>-``).

    Runs trio itself, example by example: call it from synchronous code (from trio code, in
    a worker thread).  Raises :class:`~sandboxd.Unavailable` when no daemon answers at the
    socket.
    """
    if seed < 0:
        raise ValueError("the seed must be >= 0")
    if duration is None and max_programs is None:
        raise ValueError("give a duration or a max_programs")
    if clients < 1 or sandboxes < 1:
        raise ValueError("need at least one client and one sandbox")
    socket = None if callable(target) else os.fspath(target)
    prefix = f"fuzz-{seed}-" if prefix is None else prefix
    if cushion is None:
        cushion = 0.001 if socket is None else 0.02
    # Real processes take real time to die: only sim sandboxes run on a virtual clock.
    virtual_time = socket is None and virtual_time and sandboxer in (None, "sim")
    if tolerance is None:
        tolerance = IN_PROCESS_TOLERANCE if virtual_time else SOCKET_TOLERANCE
    if programs is None:
        try:
            execs = runs_execs(target, sandboxer)
        except _Abort as abort:
            raise abort.error from None
        programs = default_programs(sandboxes, clients, sandboxer, execs=execs)
    strategy = programs
    session = _Session(
        target,
        seed=seed,
        clients=clients,
        model=model_for(sandboxer, Timing(stop_timeout, tolerance)) if model is None else model,
        prefix=prefix,
        socket=socket,
        cushion=cushion,
        hang_after=hang_after,
        guard=guard,
        retries=max(1, retries),
        max_states=max_states,
        deadline=time.monotonic() + (math.inf if duration is None else duration),
        max_programs=max_programs if max_programs is not None else 2**62,
        shrink_limit=shrink_limit,
        progress=progress,
        progress_every=max(1, progress_every),
        virtual_time=virtual_time,
    )

    @settings(
        database=None,
        max_examples=min(session.max_programs, 10**9),
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        report_multiple_bugs=False,
        print_blob=False,
    )
    @hypothesis_seed(seed)
    # Under Hypothesis trio schedules deterministically: each example draws how its clients
    # jitter (0: not at all), so that interleavings vary, reproducibly.
    @given(strategy, st.integers(0, 2**32 - 1))
    def run_examples(program: Program, jitter: int) -> None:
        session.example(program, random.Random(jitter) if jitter else None)

    violation: Violation | None = None
    try:
        if socket is not None:
            trio.run(_sweep, socket, prefix)
        try:
            with _without_local_constants():
                run_examples()
        except _Failed as failed:
            violation = failed.violation  # Hypothesis's minimal example, replayed
        except _Stop:
            violation = session.smallest
        except Exception:
            # Hypothesis gave up on a failure it could not replay (flaky): keep the smallest
            # failing program seen, if any; anything else is a bug worth seeing.
            if session.smallest is None:
                raise
            violation = session.smallest
        smallest = session.smallest
        if violation and smallest and _size(smallest.program) < _size(violation.program):
            violation = smallest
        if violation is not None:
            violation = _polish(session, violation)
    except _Abort as abort:
        raise abort.error from None
    finally:
        if socket is not None:
            with contextlib.suppress(_Abort):  # the daemon went away: nothing to clean
                trio.run(_sweep, socket, prefix)
    if violation is not None and session.first is not None:
        violation = attrs.evolve(
            violation,
            found_after=session.first.found_after,
            shrunk_from=len(session.first.program),
        )
    return FuzzReport(
        seed=seed,
        programs=session.programs,
        calls=session.calls,
        elapsed=time.monotonic() - session.started,
        digest=session.digest,
        inconclusive=session.inconclusive,
        violation=violation,
    )
