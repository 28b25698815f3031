"""Execs: commands run inside a running sandbox, owned by the sandbox's actor.

Theory of operation.  An Exec reaches the sandbox's actor as the lifecycle input ``EXEC``
(legal only in ``ready``).  The actor registers an :class:`ExecRun` under the exec's id and
starts :meth:`ExecRun.run` in a task of its own, so it never waits on the exec: that task
asks the backend to start the command, answers the caller with the running exec, pumps the
command's output to the caller, enforces its timeout, reaps it, and reports the reap to the
actor (``EXEC_EXITED``), which publishes ``/sandboxes/exec-exit`` and forgets the id.

Output is handed over one chunk at a time: a pump reads a chunk from the command's pipe and
waits until the caller has taken it before reading the next, so a caller that lags leaves
the pipe unread and the command blocks in its own write (backpressure reaches the process;
nothing is dropped).  At most one chunk per stream is held.

An exec ends once its process is reaped and its output streams are closed: a background
process that keeps them open keeps the exec's output open (as with containerd), until it
ends or the exec is killed.

Execs are the daemon's: their pipes end with it.  When the runtime closes, every exec still
running is killed; they never survive a daemon restart (the sandboxes do).
"""

from __future__ import annotations

import math
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, final

import trio

from .._errors import FailedPrecondition, InvalidArgument, RPCError, Unavailable
from .._models import (
    STDERR,
    STDOUT,
    TOPIC_EXEC_START,
    ExecExit,
    ExecOutput,
    ExecRequest,
    SandboxEvent,
    SandboxSpec,
    check_sandbox_id,
)
from ..backends import DEFAULT_PATH, ExecProcess, ExecSpec, SandboxProcess
from ._reply import Reply, Waiter

#: How much of a stream one read takes (and one chunk carries at most).
CHUNK_SIZE: Final = 64 * 1024
#: The most ExecSync keeps of each stream: 2 MiB less 64 KiB, so that both streams and the
#: reply's envelope fit one frame of 4 MiB (the wire's largest payload).
MAX_EXEC_SYNC_OUTPUT: Final = 2 * 1024 * 1024 - 64 * 1024
#: How long a killed exec may take to be reaped while the runtime closes.
_REAP_ON_CLOSE: Final = 5.0
#: The largest uid or gid (2**32 - 1 is "no id").
_MAX_ID: Final = 2**32 - 2

_SIGKILL: Final = int(signal.SIGKILL)


def _check_texts(field: str, values: object) -> tuple[str, ...]:
    if not isinstance(values, tuple) or not values:
        raise InvalidArgument(f"{field}: must be a non-empty array of text")
    for index, value in enumerate(values):
        if type(value) is not str or "\0" in value:
            raise InvalidArgument(f"{field}[{index}]: must be text without NUL")
    return values


def _check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if type(key) is not str or not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"env: key {key!r}: must be non-empty text without '=' or NUL")
        if type(value) is not str or "\0" in value:
            raise InvalidArgument(f"env[{key!r}]: must be text without NUL")


def _user(user: object) -> tuple[int | None, int | None]:
    if user is None:
        return None, None
    if type(user) is not str:
        raise InvalidArgument("user: must be text, 'uid' or 'uid:gid'")
    parts = user.split(":")
    if len(parts) > 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise InvalidArgument(f"user {user!r}: must be 'uid' or 'uid:gid', in numbers")
    ids = [int(p) for p in parts]
    if any(i > _MAX_ID for i in ids):
        raise InvalidArgument(f"user {user!r}: ids are at most {_MAX_ID}")
    return ids[0], ids[1] if len(ids) == 2 else None


def check_timeout(timeout_secs: object) -> float | None:
    """``timeout_secs`` as a number of seconds (None: no timeout), else InvalidArgument."""
    if timeout_secs is None:
        return None
    if isinstance(timeout_secs, bool) or not isinstance(timeout_secs, int | float):
        raise InvalidArgument("timeout_secs: must be a number")
    if not 0 < timeout_secs < math.inf:
        raise InvalidArgument("timeout_secs: must be a finite number > 0")
    return float(timeout_secs)


def resolve(request: ExecRequest, sandbox: SandboxSpec) -> ExecSpec:
    """What the backend runs for ``request`` in ``sandbox``: every default filled in.

    The environment is the sandbox's, ``PATH`` defaulted, then the request's on top; the cwd
    defaults to the sandbox's (``/`` when it has none); ``user`` is ``"uid"`` or
    ``"uid:gid"`` in numbers.  The exec id is left empty when the request has none (the
    actor chooses it).  InvalidArgument naming the field for anything malformed.
    """
    exec_id = "" if request.exec_id is None else check_sandbox_id(request.exec_id, "exec_id")
    command = _check_texts("command", request.command)
    _check_env(request.env)
    env = dict(sandbox.options.env)
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(request.env)
    cwd = request.cwd if request.cwd is not None else (sandbox.options.cwd or "/")
    if type(cwd) is not str or not cwd.startswith("/") or "\0" in cwd:
        raise InvalidArgument(f"cwd {cwd!r}: must be an absolute path")
    uid, gid = _user(request.user)
    window = request.window
    if window is not None:
        check_window(window.rows, window.cols)
    return ExecSpec(
        exec_id=exec_id,
        command=command,
        env=env,
        cwd=cwd,
        tty=bool(request.tty),
        stdin=bool(request.stdin),
        uid=uid,
        gid=gid,
        window=window,
    )


def check_window(rows: object, cols: object) -> None:
    """InvalidArgument unless ``rows`` and ``cols`` are whole numbers in 1..65535."""
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise InvalidArgument(f"window.{name}: must be a whole number in 1..65535")


def exit_of(returncode: int, timed_out: bool) -> ExecExit:
    """A returncode as subprocess gives it (``-N``: signal N) as an exit of 128+N.

    ``timed_out`` holds only for a command the timeout's SIGKILL ended: one that ended on its
    own as its timeout fired (the kill then finds it gone) reports its own exit."""
    if returncode < 0:
        return ExecExit(128 - returncode, timed_out and returncode == -_SIGKILL, -returncode)
    return ExecExit(returncode, False)


@final
class ExecRun:
    """One exec of a sandbox, from its acceptance by the actor to its end.

    The actor keeps it under :attr:`exec_id` until it is reaped and signals it with the
    sandbox (:meth:`signal`); :meth:`run` is its task; an :class:`ExecSession` is its
    caller's view.
    """

    __slots__ = (
        "_pending_signal",
        "_receive",
        "_send",
        "ended",
        "exec_id",
        "process",
        "reaped",
        "result",
        "sandbox_id",
        "spec",
        "started",
        "timed_out",
        "timeout",
    )

    def __init__(self, sandbox_id: str, spec: ExecSpec, timeout: float | None) -> None:
        self.sandbox_id = sandbox_id
        self.exec_id = spec.exec_id
        self.spec = spec
        self.timeout = timeout
        #: The backend's process, once started.
        self.process: ExecProcess | None = None
        #: Whether the command ran (and its exit is to be published).
        self.started = False
        self.timed_out = False
        #: The exit, once reaped (None if the runtime closed first).
        self.result: ExecExit | None = None
        #: Set once the process is reaped, or will never be (it did not start, or the
        #: runtime closed).
        self.reaped = trio.Event()
        #: Set once the actor has recorded the end (or the runtime closed): what the
        #: exec's caller waits for, so that a Status after it counts the exec no more.
        self.ended = trio.Event()
        # A signal that reached the exec while its process was being started.
        self._pending_signal: int | None = None
        # The hand-over of output: no buffer, so each pump holds at most the chunk it read.
        self._send, self._receive = trio.open_memory_channel[ExecOutput](0)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the exec's process tree (once it runs, if it is starting: a
        SIGKILL is never forgotten for a later, milder signal).  Never blocks; nothing once
        it is reaped."""
        if self.reaped.is_set():
            return
        if self.process is not None:
            self.process.kill(signum)
        elif self._pending_signal != _SIGKILL:
            self._pending_signal = signum

    async def run(
        self,
        sandbox: SandboxProcess,
        reply: Reply,
        on_reaped: Callable[[ExecRun], None],
        publish: Callable[[SandboxEvent], None],
    ) -> None:
        """Start the command, answer ``reply`` with this run (or the error
        that kept it from starting), pump its output, and reap it; ``on_reaped(self)`` is
        called exactly once, as soon as the exec's end is known.  Cancelled (the runtime is
        closing): the exec is killed and reaped (within a few seconds), and its caller's
        :meth:`ExecSession.wait` returns at once, raising UNAVAILABLE unless it was reaped."""
        closing = True  # unless the end is an ordinary one
        failure: RPCError | None = None
        try:
            try:
                process = await sandbox.exec(self.spec)
            except RPCError as err:
                failure = err
            except Exception as exc:
                failure = FailedPrecondition(
                    f"sandbox {self.sandbox_id!r}: cannot run exec {self.exec_id!r}: {exc}"
                )
            if failure is not None:
                # The caller hears of it once the actor has forgotten the exec.
                self.reaped.set()
                on_reaped(self)
                await self.ended.wait()
                closing = False
                reply.fail(failure)
                return
            self.process = process
            self.started = True
            if self._pending_signal is not None:
                process.kill(self._pending_signal)
            if reply.abandoned:  # the caller went away while it started
                process.kill(_SIGKILL)
            publish(
                SandboxEvent(
                    TOPIC_EXEC_START, self.sandbox_id, datetime.now(UTC), exec_id=self.exec_id
                )
            )
            reply.ok(self)
            await self._supervise(process, on_reaped)
            closing = False
        finally:
            await self._end(reply, on_reaped, closing)

    async def _supervise(self, process: ExecProcess, on_reaped: Callable[[ExecRun], None]) -> None:
        send = self._send
        async with trio.open_nursery() as pumps:
            if process.stderr is not None:
                pumps.start_soon(self._pump, process.stderr, STDERR, send.clone())
            pumps.start_soon(self._pump, process.stdout, STDOUT, send)
            timer = trio.CancelScope()
            if self.timeout is not None:
                deadline = trio.current_time() + self.timeout
                pumps.start_soon(self._time_out, process, deadline, timer)
            returncode = await process.wait()
            timer.cancel()
            self.result = exit_of(returncode, self.timed_out)
            self.reaped.set()
            on_reaped(self)

    async def _time_out(
        self, process: ExecProcess, deadline: float, timer: trio.CancelScope
    ) -> None:
        with timer:
            await trio.sleep_until(deadline)
            self.timed_out = True
            process.kill(_SIGKILL)

    async def _pump(
        self,
        stream: trio.abc.ReceiveStream,
        name: str,
        send: trio.MemorySendChannel[ExecOutput],
    ) -> None:
        async with send:
            try:
                while data := await stream.receive_some(CHUNK_SIZE):
                    await send.send(ExecOutput(name, bytes(data)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the caller left (its end closed), or the stream was closed under us

    async def _end(
        self, reply: Reply, on_reaped: Callable[[ExecRun], None], closing: bool
    ) -> None:
        """However :meth:`run` ends: a process not reaped is killed and reaped (briefly,
        shielded from the cancellation that got us here), its streams are closed, and the
        actor is told; if the runtime is ``closing``, the caller is told at once, since no
        actor may be left to record the end."""
        self._send.close()
        process = self.process
        if process is None:
            # Unless it was answered already: the runtime closed while it started.
            reply.fail(Unavailable(f"sandbox {self.sandbox_id!r}: the runtime is closing"))
        else:
            with trio.CancelScope(shield=True):
                if not self.reaped.is_set():
                    process.kill(_SIGKILL)
                    with trio.move_on_after(_REAP_ON_CLOSE):
                        self.result = exit_of(await process.wait(), self.timed_out)
                await process.aclose()
        if not self.reaped.is_set():
            self.reaped.set()
            on_reaped(self)
        if closing:
            self.ended.set()

    def exit(self) -> ExecExit:
        """How the exec ended, once :attr:`ended`; UNAVAILABLE if the runtime closed before
        it could be reaped."""
        if self.result is None:
            raise Unavailable(
                f"sandbox {self.sandbox_id!r}: exec {self.exec_id!r}: the runtime is closing"
            )
        return self.result


@final
class ExecSession:
    """A command running inside a sandbox, as its caller drives it: what
    :meth:`Controller.exec <sandboxd.runtime.Controller.exec>` returns, an async context
    manager that starts the command on entering and yields itself.

    Entering raises what kept the command from starting: INVALID_ARGUMENT for a malformed
    request, NOT_FOUND for an unknown sandbox, FAILED_PRECONDITION naming its state when it
    is not ``ready`` (or when the backend cannot run the command; a command that is not
    found is no error: it exits with 127), ALREADY_EXISTS when an exec with the same id
    still runs.  Cancelled while entering: the command, if it started, is killed.

    Leaving the block while the command runs kills it (its whole process tree): a caller
    that goes away ends its execs, as containerd's do.  Leaving waits until it is reaped,
    unless cancelled.

    Iterate it for the command's output: :class:`~sandboxd.ExecOutput` chunks of stdout and
    stderr, each stream in order; iteration ends once both are closed.  While the caller
    does not take a chunk, the command's output is not read (it blocks once its pipe is
    full): nothing is dropped.  One task may iterate at a time; another may write stdin
    meanwhile.
    """

    __slots__ = ("_begin", "_run")

    def __init__(self, begin: Callable[[Reply], None]) -> None:
        # Posts the Exec, answered with the ExecRun once the command runs.
        self._begin = begin
        self._run: ExecRun | None = None

    @property
    def _started(self) -> ExecRun:
        if self._run is None:
            raise RuntimeError("the exec is not started: use it as 'async with'")
        return self._run

    @property
    def exec_id(self) -> str:
        return self._started.exec_id

    @property
    def pid(self) -> int:
        """The command's pid, as seen from the host."""
        process = self._started.process
        assert process is not None
        return process.pid

    def __aiter__(self) -> AsyncIterator[ExecOutput]:
        return self._output(self._started)

    @staticmethod
    async def _output(run: ExecRun) -> AsyncIterator[ExecOutput]:
        while True:
            try:
                chunk = await run._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            yield chunk

    def _stdin(self) -> trio.abc.SendStream:
        process = self._started.process
        assert process is not None
        if process.stdin is None:
            raise FailedPrecondition(
                f"exec {self.exec_id!r} has no stdin (run it with stdin=True)"
            )
        return process.stdin

    async def write(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin; returns once it is all in the pipe, so it
        waits while the command does not read.  FAILED_PRECONDITION when the exec has no
        stdin, stdin was closed, or the command no longer reads it (it exited).
        Cancelled: part of ``data`` may have been written."""
        stdin = self._stdin()
        try:
            await stdin.send_all(data)
        except trio.ClosedResourceError:
            raise FailedPrecondition(f"exec {self.exec_id!r}: stdin is closed") from None
        except trio.BrokenResourceError:
            raise FailedPrecondition(
                f"exec {self.exec_id!r}: the command no longer reads its stdin"
            ) from None

    async def close_stdin(self) -> None:
        """Close the command's stdin (it reads end of file).  Idempotent; nothing for an
        exec without stdin."""
        process = self._started.process
        if process is not None and process.stdin is not None:
            await process.stdin.aclose()
        else:
            await trio.lowlevel.checkpoint()

    async def resize(self, rows: int, cols: int) -> None:
        """Set the terminal's window size.  INVALID_ARGUMENT for sizes outside 1..65535;
        FAILED_PRECONDITION for an exec without a tty.  Nothing once the command ended."""
        run = self._started
        check_window(rows, cols)
        await trio.lowlevel.checkpoint()
        if not run.spec.tty:
            raise FailedPrecondition(f"exec {self.exec_id!r} has no tty to resize")
        if run.process is not None and not run.reaped.is_set():
            run.process.resize(rows, cols)

    async def wait(self) -> ExecExit:
        """Wait for the command to end; how it ended (128+N for death by signal N, and
        whether its timeout killed it).

        Output not taken yet is read and dropped meanwhile, so a command that writes much
        never blocks a caller that only waits.  Cancelling the wait leaves the command
        running.  UNAVAILABLE if the runtime closed before the command was reaped.
        """
        run = self._started
        async for _ in self:
            pass
        await run.ended.wait()
        return run.exit()

    def kill(self, signum: int = _SIGKILL) -> None:
        """Send ``signum`` to the command's process tree.  Never blocks; nothing once it has
        ended."""
        self._started.signal(signum)

    async def __aenter__(self) -> ExecSession:
        if self._run is not None:
            raise RuntimeError("an ExecSession is entered once")
        waiter = Waiter()
        self._begin(waiter)
        self._run = await waiter.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run = self._started
        run.signal(_SIGKILL)
        run._receive.close()
        await run.ended.wait()
