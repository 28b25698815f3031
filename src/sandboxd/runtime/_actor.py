"""The actor: one trio task per sandbox, the only code that changes that sandbox.

Calls reach the actor as messages in its mailbox; the backend's exit report, the stop grace
timer and the lifetime timer reach it the same way.  The actor drains its mailbox in
batches, looks every input up in the lifecycle table and carries out the effect.  Nothing it
does waits on the sandbox's process: a Stop signals and arms a timer, a Wait parks its
caller, an exit is an event.  So queries keep answering while a Stop is in progress.

The actor also owns the sandbox's execs (see :mod:`._exec`): it accepts or refuses each one
by the table, runs it in a task of its own, signals it with the sandbox, kills it when the
init exits, and holds that exit back until every exec is reaped.

The actor does not know who runs it: an :class:`ActorContext` gives it what it may reach
beyond its sandbox (the store, the default grace period, the nursery of process watchers,
the event bus, and who to tell when its sandbox is gone).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, final

import attrs
import trio

from .._errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    NotFound,
    RPCError,
    Unavailable,
)
from .._models import (
    ANNOTATION_INFO_PREFIX,
    REASON_LIFETIME_EXPIRED,
    TOPIC_CREATE,
    TOPIC_DELETE,
    TOPIC_EXEC_EXIT,
    TOPIC_EXIT,
    TOPIC_START,
    ExitStatus,
    SandboxEvent,
    SandboxInstance,
    SandboxSpec,
    SandboxStatus,
)
from ..backends import EXIT_UNKNOWN, Backend, ExecSpec, SandboxProcess, exit_reason
from ._crash import ARMED, crash_at
from ._exec import ExecRun
from ._lifecycle import Effect, Input, Phase, decide
from ._logs import LogDirectory, SandboxOutput
from ._reply import Reply
from ._store import Done, SandboxRecord, encode_record, encode_spec

log = logging.getLogger("sandboxd.runtime")

_SIGTERM: Final = int(signal.SIGTERM)
_SIGKILL: Final = int(signal.SIGKILL)


@final
@attrs.frozen(slots=True)
class ActorContext:
    """All an actor may reach beyond its own sandbox, given by whoever runs it (the
    :class:`~sandboxd.runtime.Controller`, one context for all its actors).  None of these
    blocks, and the actor calls them only from its own steps or its store callbacks."""

    #: Queues a sandbox's record with the store (``None`` as the text deletes it) and calls
    #: ``done(error)`` once it is committed or refused (:meth:`SandboxStore.write`).  ``None``
    #: keeps records in memory only: then every answer goes out at once.
    write: Callable[[str, str | None, Done], None] | None
    #: Seconds between SIGTERM and SIGKILL for a Stop that gives no timeout.
    stop_timeout: float
    #: Where backends run the tasks that watch sandbox processes.
    process_nursery: trio.Nursery
    #: Publishes a lifecycle event.
    publish: Callable[[SandboxEvent], None]
    #: Told once the actor's sandbox no longer exists (deleted, or its Create refused by the
    #: store), so that its id can be taken again.
    forget: Callable[[SandboxActor], None]
    #: Where the sandboxes' output is kept (opened); None keeps none.
    logs: LogDirectory | None = None


#: The crash point reached once a record in this phase is committed.
_RECORDED_CRASH_POINTS: Final = {
    Phase.READY: "start:ready",
    Phase.STOPPING: "stop:recorded",
    Phase.GONE: "shutdown:deleted",
}


def _crash_after(point: str, done: Done, error: Exception | None) -> None:
    if error is None:
        crash_at(point)
    done(error)


#: A held answer: the reply, and the value or the error it is to get.
_Answer = tuple[Reply, Any, "BaseException | None"]


def _give(answers: list[_Answer], failure: BaseException | None = None) -> None:
    """Give held answers; ``failure`` replaces those that would have said "done"."""
    for reply, value, error in answers:
        if error is not None:
            reply.fail(error)
        elif failure is not None:
            reply.fail(failure)
        else:
            reply.ok(value)


def _park(parked: list[Reply] | None, reply: Reply) -> list[Reply]:
    """Add ``reply`` to a parked list, first dropping callers that gave up.

    Compacting whenever the list reaches a power of two keeps a client that calls Wait with
    a short deadline in a loop from growing the list without bound, at amortised O(1).
    """
    if parked is None:
        return [reply]
    size = len(parked)
    if size >= 16 and size & (size - 1) == 0:
        parked = [r for r in parked if not r.abandoned]
    parked.append(reply)
    return parked


def _now() -> datetime:
    return datetime.now(UTC)


def _wall_clock(deadline: float) -> float | None:
    """A trio-clock deadline as wall-clock epoch seconds (None for none)."""
    if deadline == math.inf:
        return None
    return time.time() + (deadline - trio.current_time())


@final
class SandboxActor:
    """Owns one sandbox: its phase, its process, its execs, and everyone waiting on it.

    Read-only attributes (``phase``, ``pid``, ...) may be read by anyone at any time; they
    change only between two of the actor's own steps, so a read is always consistent.
    """

    __slots__ = (
        "_backend",
        "_context",
        "_current",
        "_dirty",
        "_exec_serial",
        "_execs",
        "_exit_held",
        "_expire_deadline",
        "_held",
        "_kill_deadline",
        "_launch",
        "_mailbox",
        "_shutdown_parked",
        "_sleeping",
        "_snapshot",
        "_spec_json",
        "_stop_parked",
        "_unrecorded",
        "_wait_parked",
        "created_at",
        "exit_known",
        "exit_status",
        "exited_at",
        "output",
        "phase",
        "pid",
        "process",
        "reason",
        "sandbox_id",
        "spec",
        "started_at",
    )

    def __init__(self, spec: SandboxSpec, backend: Backend, context: ActorContext) -> None:
        self.spec = spec
        self.sandbox_id = spec.sandbox_id
        self.phase = Phase.CREATED
        self.pid = 0
        self.created_at = _now()
        self.started_at: datetime | None = None
        self.exited_at: datetime | None = None
        self.exit_status: int | None = None
        #: False when exit_status is a stand-in: the process ended unobserved (a restart).
        self.exit_known = True
        #: Why the runtime ended the sandbox on its own (``lifetime_expired``), if it did.
        self.reason: str | None = None
        self.process: SandboxProcess | None = None
        #: What the sandbox's init wrote (None without a log directory).
        self.output: SandboxOutput | None = (
            None if context.logs is None else context.logs.sandbox(spec.sandbox_id)
        )
        self._backend = backend
        self._context = context
        self._mailbox: collections.deque[tuple[Input, Any, Reply | None]] = collections.deque()
        # The actor's task while it waits for its mailbox.
        self._sleeping: trio.lowlevel.Task | None = None
        self._kill_deadline = math.inf
        # When the sandbox's lifetime runs out (trio time; armed once it is ready).
        self._expire_deadline = math.inf
        # The reply of the input being carried out across an await (a Start's spawn).
        self._current: Reply | None = None
        # The last published status, rebuilt on demand after the actor's next step.
        self._snapshot: SandboxStatus | None = None
        # Parked callers, allocated when the first one arrives: most sandboxes have none.
        self._wait_parked: list[Reply] | None = None
        self._stop_parked: list[Reply] | None = None
        self._shutdown_parked: list[Reply] | None = None
        # With a store: answers held until the step that produced them is on disk, whether a
        # step changed the record, the answers waiting on the record the store is writing,
        # and the spec's JSON (it never changes).
        self._held: list[_Answer] = []
        self._dirty = False
        self._unrecorded: list[_Answer] | None = None
        self._spec_json: str | None = None
        # What starts the actor's task once its Create is recorded (see create()).
        self._launch: Callable[[], None] | None = None
        # Its execs not reaped yet, by id (allocated with the first); the number of the
        # last default exec id; and the init's exit status, held back while the execs its
        # exit killed are reaped.
        self._execs: dict[str, ExecRun] | None = None
        self._exec_serial = 0
        self._exit_held: int | None = None

    # -- the mailbox -------------------------------------------------------------------------

    def status(self, verbose: bool) -> SandboxStatus:
        """The sandbox's status as of the actor's last step.

        The non-verbose one is built once per step and shared: queries in a tight loop cost
        a lookup, not a rebuild.
        """
        if not verbose and self._snapshot is not None:
            return self._snapshot
        info = {
            key.removeprefix(ANNOTATION_INFO_PREFIX): value
            for key, value in self.spec.annotations.items()
            if key.startswith(ANNOTATION_INFO_PREFIX)
        }
        info["sandboxer"] = self.spec.sandboxer
        info["execs"] = str(len(self._execs or ()))
        if self.exit_status is not None:
            info["exit_status"] = str(self.exit_status)
            if not self.exit_known:
                info["exit_status_known"] = "false"
                info["exit_status_note"] = (
                    "the process ended while sandboxd was not watching it (a restart); "
                    "its real exit status is unknown and 255 stands for it"
                )
        if self.started_at is not None:
            info["started_at"] = self.started_at.isoformat()
        if self.reason is not None:
            info["reason"] = self.reason
        if verbose and self.process is not None:
            info.update(self.process.info())
            if self.output is not None and self.process.output is not None:
                info["log"] = self.output.path
        status = SandboxStatus(
            sandbox_id=self.spec.sandbox_id,
            pid=self.pid,
            state=self.phase.reported,
            info=info,
            created_at=self.created_at,
            exited_at=self.exited_at,
        )
        if not verbose:
            self._snapshot = status
        return status

    def post(self, input: Input, arg: Any = None, reply: Reply | None = None) -> None:
        """Queue an input for the actor; ``reply`` gets the answer.  Never blocks; safe from
        any task of the controller's trio run.

        A caller that goes away (its reply abandoned) does not take the call back: it is
        carried out as a request that was sent, but a parked Wait or Stop is simply
        forgotten and the sandbox is untouched by that.
        """
        self._mailbox.append((input, arg, reply))
        task = self._sleeping
        if task is not None:
            self._sleeping = None
            trio.lowlevel.reschedule(task)

    async def _sleep(self) -> None:
        """Wait for the mailbox (until the kill or the lifetime deadline, if one is armed)."""
        self._sleeping = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._sleeping = None
            return trio.lowlevel.Abort.SUCCEEDED

        deadline = min(self._kill_deadline, self._expire_deadline)
        if deadline == math.inf:
            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            with trio.move_on_at(deadline):
                await trio.lowlevel.wait_task_rescheduled(abort)

    def _on_exit(self, status: int) -> None:
        self.post(Input.PROCESS_EXITED, status)

    async def run(self) -> None:
        """Serve the mailbox until the sandbox is gone.

        If cancelled (the controller is closing), every caller still waiting is answered
        with UNAVAILABLE; the sandbox's process is left running.
        """
        mailbox = self._mailbox
        try:
            if self._dirty:
                self._flush()
            while self.phase is not Phase.GONE:
                if not mailbox:
                    await self._sleep()
                if self._kill_deadline <= trio.current_time():
                    self._kill_deadline = math.inf
                    self._apply(Input.STOP_GRACE_EXPIRED, None, None)
                    self._snapshot = None
                if self._expire_deadline <= trio.current_time():
                    self._expire_deadline = math.inf
                    self._apply(Input.LIFETIME_EXPIRED, None, None)
                    self._snapshot = None
                while mailbox:
                    input, arg, reply = mailbox.popleft()
                    if input is Input.START:
                        self._current = reply
                        await self._start(reply)
                        self._current = None
                    else:
                        self._apply(input, arg, reply)
                    # Whatever the step changed, the next query sees it.
                    self._snapshot = None
                if self._held or self._dirty:
                    self._flush()
        finally:
            self._abandon_all()

    def create(self, reply: Reply | None, launch: Callable[[], None]) -> None:
        """Carry out the Create that made this sandbox: record it, then call ``launch()``
        (which must start :meth:`run`), publish ``/sandboxes/create`` and answer ``reply``
        with the sandbox's id.  Called once, by whoever made the actor, instead of
        :meth:`restore`.

        Without a store this is done at once.  With one, the record goes to the store as
        every step's does, and calls posted meanwhile wait in the mailbox until it is
        written.  If the store refuses it, or ``launch`` raises an :class:`RPCError` (the
        runtime is closed), the sandbox never existed: the actor forgets it, ``reply`` gets
        the error, and calls posted meanwhile get NOT_FOUND.
        """
        self._launch = launch
        if self.output is not None:
            self.output.new()
        if self._context.write is None:
            self._created(None, [] if reply is None else [(reply, self.sandbox_id, None)])
        else:
            self._answer(reply, self.sandbox_id)
            self._dirty = True
            self._flush()

    def _created(self, error: Exception | None, answers: list[_Answer]) -> None:
        """The Create's record is written (``error`` is None) or refused: run the actor, or
        forget the sandbox."""
        launch, self._launch = self._launch, None
        assert launch is not None
        if error is None:
            try:
                launch()
            except RPCError as exc:
                error = exc
        if error is None:
            log.debug("sandbox %s: created (%s)", self.sandbox_id, self.spec.sandboxer)
            self._context.publish(SandboxEvent(TOPIC_CREATE, self.sandbox_id, self.created_at))
        else:
            self.phase = Phase.GONE
            self._context.forget(self)
            self._refuse_mailbox(NotFound(f"sandbox {self.sandbox_id!r} not found"))
        _give(answers, error)

    def _flush(self) -> None:
        """Send the sandbox's record to the store if a step changed it; give the held
        answers once it (and every earlier record of this sandbox) is on disk.

        The actor does not wait for the disk: the store's writer gives the answers.  If the
        write fails, every answer that would have said "done" says instead that the change
        could not be recorded, and the record is written again at the next step.
        """
        held, self._held = self._held, []
        if self._dirty:
            self._dirty = False
            write = self._context.write
            if write is not None:
                self._unrecorded = held
                text = None if self.phase is Phase.GONE else self._encode(self.record())
                done: Done = functools.partial(self._recorded, held)
                point = _RECORDED_CRASH_POINTS.get(self.phase) if ARMED else None
                if point is not None:
                    done = functools.partial(_crash_after, point, done)
                write(self.sandbox_id, text, done)
                return
        if self._unrecorded is not None:
            # Nothing new to write, but what these answers tell is not on disk yet.
            self._unrecorded.extend(held)
        else:
            _give(held)

    def _encode(self, record: SandboxRecord) -> str:
        if self._spec_json is None:
            self._spec_json = encode_spec(self.spec)
        return encode_record(record, self._spec_json)

    def _recorded(self, answers: list[_Answer], error: Exception | None) -> None:
        """Called by the store's writer once the record sent with ``answers`` is committed
        (``error`` is None) or refused."""
        if self._unrecorded is answers:
            self._unrecorded = None
        if self._launch is not None:
            self._created(error, answers)
            return
        failure: RPCError | None = None
        if error is not None:
            log.error("sandbox %s: cannot record its state: %s", self.sandbox_id, error)
            message = error.message if isinstance(error, RPCError) else str(error)
            failure = (type(error) if isinstance(error, RPCError) else Unavailable)(
                f"sandbox {self.sandbox_id!r}: done, but not recorded: {message}"
            )
            # Written again at the actor's next step.
            self._dirty = True
        _give(answers, failure)

    def record(self) -> SandboxRecord:
        """What the store keeps of this sandbox, as of the actor's last step."""
        process = self.process
        return SandboxRecord(
            spec=self.spec,
            phase=self.phase.value,
            created_at=self.created_at,
            pid=self.pid,
            identity={} if process is None else process.identity(),
            started_at=self.started_at,
            exited_at=self.exited_at,
            exit_status=self.exit_status,
            exit_known=self.exit_known,
            kill_at=_wall_clock(self._kill_deadline),
            expire_at=_wall_clock(self._expire_deadline),
            reason=self.reason,
        )

    def restore(self, record: SandboxRecord) -> bool:
        """Take up a sandbox recorded by an earlier run; False if it is gone for good.

        A sandbox whose process still runs (same pid, same start time) is adopted in the
        phase it was in, a Stop or Shutdown in progress resuming; one whose process died
        meanwhile is ``stopped`` with the stand-in status 255.  A ``created`` sandbox with a
        pid is a Start a crash cut short (:meth:`_spawned`): that process, held or just
        released, is killed, and the sandbox is ``created`` with no process, to be started
        again.  The resolved state is written back at the actor's first step.
        """
        self.created_at = record.created_at
        self.started_at = record.started_at
        self.pid = record.pid
        self.reason = record.reason
        phase = Phase(record.phase)
        if phase is Phase.CREATED and record.pid > 0:
            self._backend.discard(record.pid, record.identity)
            log.warning(
                "sandbox %s: killed process %d, whose start was cut short by a crash",
                self.sandbox_id,
                record.pid,
            )
            self.pid = 0
            self._dirty = True
        if phase in (Phase.CREATED, Phase.STOPPED):
            if phase is Phase.STOPPED:
                self._finish_output()
            self.phase = phase
            self.exit_status = record.exit_status
            self.exited_at = record.exited_at
            self.exit_known = record.exit_known
            return True
        self._dirty = True
        process = self._backend.adopt(
            self.spec,
            record.pid,
            record.identity,
            self._context.process_nursery,
            self._adopted_exit,
        )
        if process is None:
            if phase is Phase.SHUTTING_DOWN:
                self.phase = Phase.GONE  # it was being deleted: that is done now
                if self.output is not None:
                    self.output.remove()
                return False
            self.phase = Phase.STOPPED
            self.exit_status = EXIT_UNKNOWN
            self.exit_known = False
            self.exited_at = _now()
            self._finish_output()
            log.warning("sandbox %s: its process ended while sandboxd was down", self.sandbox_id)
            return True
        self.process = process
        self.phase = phase
        self._read_output(process)
        log.info("sandbox %s: adopted its running process %d", self.sandbox_id, self.pid)
        if phase is Phase.STOPPING:
            left = 0.0 if record.kill_at is None else record.kill_at - time.time()
            self._kill_deadline = trio.current_time() + max(0.0, left)
        elif phase is Phase.READY and record.expire_at is not None:
            # Passed while the daemon was down: it fires at the actor's first step.
            self._arm_lifetime(record.expire_at - time.time())
        elif phase is Phase.SHUTTING_DOWN:
            process.signal(_SIGKILL)
        return True

    def _adopted_exit(self, status: int) -> None:
        self.post(Input.PROCESS_EXITED, -1 if status == EXIT_UNKNOWN else status)

    def _abandon_all(self) -> None:
        gone = Unavailable(f"sandbox {self.sandbox_id!r}: the runtime is closing")
        if self._current is not None:
            self._current.fail(gone)
        for held, _, _ in self._held:
            held.fail(gone)
        self._held.clear()
        for _, _, reply in self._mailbox:
            if reply is not None:
                reply.fail(gone)
        self._mailbox.clear()
        for parked in (self._wait_parked, self._stop_parked, self._shutdown_parked):
            for reply in parked or ():
                reply.fail(gone)

    def _refuse_mailbox(self, error: BaseException) -> None:
        """Answer everything posted so far with ``error`` (a Create that failed)."""
        for _, _, reply in self._mailbox:
            if reply is not None:
                reply.fail(error)
        self._mailbox.clear()

    def abandon_waiters(self, error: BaseException) -> None:
        """Answer every parked Wait with ``error`` (the daemon is going away)."""
        waiters, self._wait_parked = self._wait_parked, None
        for reply in waiters or ():
            if not reply.abandoned:
                reply.fail(error)

    # -- effects -----------------------------------------------------------------------------

    def _answer(
        self, reply: Reply | None, value: Any = None, error: BaseException | None = None
    ) -> None:
        """Answer a caller: at once without a store, else once the step is on disk."""
        if reply is None:
            return
        if self._context.write is None:
            if error is not None:
                reply.fail(error)
            else:
                reply.ok(value)
        else:
            self._held.append((reply, value, error))

    def _apply(self, input: Input, arg: Any, reply: Reply | None) -> None:
        if input is Input.PROCESS_EXITED and self._execs:
            # The init is dead: its execs die with it, and its exit is recorded once they
            # are reaped (see RECORD_EXEC_EXIT).
            self._exit_held = int(arg)
            for run in self._execs.values():
                run.signal(_SIGKILL)
            return
        try:
            transition = decide(self.sandbox_id, self.phase, input)
        except RPCError as err:
            if reply is not None:
                self._answer(reply, None, err)
            return
        try:
            self._carry_out(transition.effect, transition.next_phase, input, arg, reply)
        except Exception as exc:
            log.exception("sandbox %s: %s failed", self.sandbox_id, input.name)
            if reply is not None:
                # Unless it was answered already (a reply takes its first answer only).
                reply.fail(Internal(f"sandbox {self.sandbox_id!r}: {input.name}: {exc}"))

    def _carry_out(
        self, effect: Effect, next_phase: Phase, input: Input, arg: Any, reply: Reply | None
    ) -> None:
        match effect:
            case Effect.REPLY:
                if reply is not None:
                    self._answer(reply, self._exit() if input is Input.WAIT else None)
            case Effect.STOP_UNSTARTED:
                self._record_exit(0, next_phase)
                if reply is not None:
                    self._answer(reply, None)
            case Effect.TERMINATE:
                grace = self._context.stop_timeout if arg is None else float(arg)
                self._terminate(next_phase, reply, grace)
            case Effect.EXPIRE:
                self._expire(next_phase)
            case Effect.JOIN_STOP:
                self._park_stop(reply)
                if arg is not None and self.phase is Phase.STOPPING:
                    self._arm_kill(float(arg))
            case Effect.PARK_WAITER:
                if reply is not None:
                    self._wait_parked = _park(self._wait_parked, reply)
            case Effect.KILL:
                self._signal(_SIGKILL)
            case Effect.RECORD_EXIT:
                self._record_exit(int(arg), next_phase)
            case Effect.KILL_FOR_SHUTDOWN:
                self.phase = next_phase
                self._dirty = True
                self._kill_deadline = math.inf
                self._park_shutdown(reply)
                self._signal(_SIGKILL)
                crash_at("shutdown:killed")
            case Effect.JOIN_SHUTDOWN:
                self._park_shutdown(reply)
            case Effect.RECORD_EXIT_AND_REMOVE:
                self._record_exit(int(arg), Phase.STOPPED)
                self._remove()
            case Effect.REMOVE_UNSTARTED:
                self._record_exit(0, Phase.STOPPED)
                self._remove()
                if reply is not None:
                    self._answer(reply, None)
            case Effect.REMOVE:
                self._remove()
                if reply is not None:
                    self._answer(reply, None)
            case Effect.START_EXEC:
                self._start_exec(arg, reply)
            case Effect.RECORD_EXEC_EXIT:
                self._record_exec_exit(arg)
            case Effect.IGNORE:
                pass
            case Effect.SPAWN:  # pragma: no cover - START goes through _start
                raise AssertionError("SPAWN is carried out by _start")

    async def _start(self, reply: Reply | None) -> None:
        try:
            transition = decide(self.sandbox_id, self.phase, Input.START)
        except RPCError as err:
            if reply is not None:
                self._answer(reply, None, err)
            return
        assert transition.effect is Effect.SPAWN
        try:
            process = await self._backend.start(
                self.spec, self._context.process_nursery, self._on_exit, self._spawned
            )
        except RPCError as err:
            log.warning("sandbox %s: start failed: %s", self.sandbox_id, err.message)
            if reply is not None:
                self._answer(reply, None, err)
            return
        except Exception as exc:
            log.exception("sandbox %s: start failed", self.sandbox_id)
            if reply is not None:
                self._answer(
                    reply,
                    None,
                    FailedPrecondition(f"cannot start sandbox {self.sandbox_id!r}: {exc}"),
                )
            return
        crash_at("start:released")
        self._read_output(process)
        self.process = process
        self.pid = process.pid
        self.started_at = _now()
        self.phase = transition.next_phase
        self._dirty = True
        self._arm_lifetime(self.spec.options.lifetime_secs)
        log.debug("sandbox %s: started, pid %d", self.sandbox_id, self.pid)
        self._context.publish(SandboxEvent(TOPIC_START, self.sandbox_id, self.started_at))
        if reply is not None:
            self._answer(
                reply,
                SandboxInstance(self.sandbox_id, self.pid, self.created_at, self.spec.labels),
            )

    async def _spawned(self, pid: int, identity: Mapping[str, Any]) -> None:
        """The backend's process exists, held before it runs anything of the sandbox's:
        return once its pid is committed (the sandbox still ``created``), so that after any
        crash from here on, recovery finds it (:meth:`restore`).  Raises the store's refusal
        (the backend then kills the process, and the Start fails with it).  The record
        carries everything the sandbox's last one did, so no change is lost by it."""
        crash_at("start:spawned")
        write = self._context.write
        if write is None:
            return
        outcome: list[Exception | None] = []
        committed = trio.Event()

        def done(error: Exception | None) -> None:
            outcome.append(error)
            committed.set()

        record = attrs.evolve(self.record(), pid=pid, identity=identity)
        write(self.sandbox_id, self._encode(record), done)
        crash_at("start:queued")
        await committed.wait()
        if outcome[0] is not None:
            raise outcome[0]
        crash_at("start:recorded")

    def _read_output(self, process: SandboxProcess) -> None:
        """Start keeping what the new (or adopted) process writes."""
        output = process.output
        if output is None:
            return
        if self.output is None:
            for fd in output:
                os.close(fd)
        else:
            self.output.attach(self._context.process_nursery, output, self.sandbox_id)

    def _finish_output(self) -> None:
        """No more output will come: what is left in the pipes is kept, readers end."""
        if self.output is not None:
            self.output.finish()

    def _exit(self) -> ExitStatus:
        assert self.exit_status is not None and self.exited_at is not None
        return ExitStatus(self.exit_status, self.exited_at)

    def _signal(self, signum: int) -> None:
        # Execs get what the sandbox gets; they may live outside its process group.
        for run in (self._execs or {}).values():
            run.signal(signum)
        if self.process is not None:
            self.process.signal(signum)

    def _start_exec(self, arg: tuple[ExecSpec, float | None], reply: Reply | None) -> None:
        """Register an exec (its id defaulted) and start it in a task of its own, which
        answers ``reply``.  Refused if the init has exited already, or the id is taken."""
        assert reply is not None
        spec, timeout = arg
        process = self.process
        if process is None or self._exit_held is not None:
            error = FailedPrecondition(f"sandbox {self.sandbox_id!r}: its init has exited")
            self._answer(reply, None, error)
            return
        execs = self._execs
        if execs is None:
            execs = self._execs = {}
        exec_id = spec.exec_id
        if not exec_id:
            while True:
                self._exec_serial += 1
                exec_id = f"exec-{self._exec_serial}"
                if exec_id not in execs:
                    break
            spec = attrs.evolve(spec, exec_id=exec_id)
        elif exec_id in execs:
            taken = AlreadyExists(
                f"sandbox {self.sandbox_id!r}: exec {exec_id!r} already exists (it runs)"
            )
            self._answer(reply, None, taken)
            return
        run = ExecRun(self.sandbox_id, spec, timeout)
        execs[exec_id] = run
        self._context.process_nursery.start_soon(
            run.run,
            process,
            reply,
            self._exec_reaped,
            self._context.publish,
            name=f"sandbox {self.sandbox_id}: exec {exec_id}",
        )

    def _exec_reaped(self, run: ExecRun) -> None:
        self.post(Input.EXEC_EXITED, run)

    def _record_exec_exit(self, run: ExecRun) -> None:
        execs = self._execs
        if execs is not None and execs.get(run.exec_id) is run:
            del execs[run.exec_id]
        run.ended.set()
        if run.started and run.result is not None:
            self._context.publish(
                SandboxEvent(
                    TOPIC_EXEC_EXIT,
                    self.sandbox_id,
                    _now(),
                    exit_status=run.result.exit_status,
                    exec_id=run.exec_id,
                )
            )
        if not execs and self._exit_held is not None:
            status, self._exit_held = self._exit_held, None
            self._apply(Input.PROCESS_EXITED, status, None)

    def _arm_kill(self, grace: float) -> None:
        if grace <= 0:
            self._kill_deadline = math.inf
            self._signal(_SIGKILL)
            return
        deadline = trio.current_time() + grace
        if deadline < self._kill_deadline:
            if self._kill_deadline == math.inf:
                self._signal(_SIGTERM)
            self._kill_deadline = deadline

    def _terminate(self, next_phase: Phase, reply: Reply | None, grace: float) -> None:
        """Stop the sandbox: SIGTERM, SIGKILL ``grace`` seconds later; park ``reply``."""
        self.phase = next_phase
        self._dirty = True
        self._park_stop(reply)
        self._arm_kill(grace)
        crash_at("stop:signalled")

    def _arm_lifetime(self, seconds: float | None) -> None:
        """Expire the sandbox ``seconds`` from now (None: never)."""
        if seconds is not None:
            self._expire_deadline = trio.current_time() + max(0.0, seconds)

    def _expire(self, next_phase: Phase) -> None:
        """The lifetime ran out: stop as a Stop with the default timeout does."""
        log.info("sandbox %s: its lifetime ran out; stopping it", self.sandbox_id)
        self.reason = REASON_LIFETIME_EXPIRED
        self._terminate(next_phase, None, self._context.stop_timeout)

    def _park_stop(self, reply: Reply | None) -> None:
        if reply is not None:
            self._stop_parked = _park(self._stop_parked, reply)

    def _park_shutdown(self, reply: Reply | None) -> None:
        if reply is not None:
            self._shutdown_parked = _park(self._shutdown_parked, reply)

    def _record_exit(self, status: int, next_phase: Phase) -> None:
        if status < 0:  # an adopted process: it ended, but how is unknowable
            status = EXIT_UNKNOWN
            self.exit_known = False
        self._dirty = True
        self.exit_status = status
        self.exited_at = _now()
        self.phase = next_phase
        self._kill_deadline = math.inf
        self._expire_deadline = math.inf
        self._finish_output()
        if self.process is not None:
            self.process.cleanup()
        # What killed it, when its backend knows (the OOM killer), else the runtime's reason.
        self.reason = exit_reason(self.process) or self.reason
        log.debug("sandbox %s: exited with status %d", self.sandbox_id, status)
        self._context.publish(
            SandboxEvent(
                TOPIC_EXIT, self.sandbox_id, self.exited_at, exit_status=status, reason=self.reason
            )
        )
        exit_status = self._exit()
        waiters, self._wait_parked = self._wait_parked, None
        for reply in waiters or ():
            if not reply.abandoned:
                self._answer(reply, exit_status)
        stoppers, self._stop_parked = self._stop_parked, None
        for reply in stoppers or ():
            if not reply.abandoned:
                self._answer(reply, None)

    def _remove(self) -> None:
        crash_at("shutdown:exited")
        self.phase = Phase.GONE
        self._dirty = True
        self._context.forget(self)
        if self.output is not None:
            self.output.remove()
        log.debug("sandbox %s: deleted", self.sandbox_id)
        self._context.publish(SandboxEvent(TOPIC_DELETE, self.sandbox_id, _now()))
        shutdowns, self._shutdown_parked = self._shutdown_parked, None
        for reply in shutdowns or ():
            if not reply.abandoned:
                self._answer(reply, None)
