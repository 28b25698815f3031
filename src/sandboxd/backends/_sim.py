"""The ``sim`` backend: simulated sandboxes for fuzzing lifecycle orderings.

No process is ever spawned.  A sim process is a small object with a fake pid; it "exits" when
:func:`on_exit` is called for it, which happens exactly once: on a signal that ends it, when
one of its timers fires, or through the :meth:`SimBackend.exit` test hook.  Its behaviour --
faults included -- is set by Create's ``options.sim`` (see :class:`SimBackend`), so a remote
caller can inject faults too (:func:`sandboxd.testing.sim_faults` builds the settings).

Execs are simulated too: an exec's command is a tiny script the sim interprets (see
:class:`SimExec`), its output goes through bounded in-memory pipes that block a writer when
full, as a kernel pipe does, so backpressure can be tested without a process.

Timers (``exit_after``, ``stop_delay``, ``exec_delay``, an exec's ``sleep``) use trio's
clock, so a test with an autojump clock runs hours of simulated time at once.  A process has
at most one timer task at a time, in the nursery given to Start, and none at all when nothing
is due, so tens of thousands of idle sim sandboxes cost a few hundred bytes each.
"""

from __future__ import annotations

import math
import signal as _signal
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import trio

from .._errors import FailedPrecondition, InvalidArgument
from .._models import Platform, SandboxSpec, WindowSize
from ._base import ExecSpec, ExitCallback, SpawnCallback
from ._platform import host_platform

#: The first pid a :class:`SimBackend` hands out.
FIRST_SIM_PID: Final = 1000

_STOP_SIGNALS: Final = frozenset({_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP})


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"options.sim.{key}: must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"options.sim.{key}: must be a finite number >= 0, not {value!r}")
    return float(value)


def _exit_code(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"options.sim.{key}: must be an integer, not {type(value).__name__}")
    if not 0 <= value <= 255:
        raise InvalidArgument(f"options.sim.{key}: must be in 0..255, not {value}")
    return value


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"options.sim.{key}: must be a boolean, not {type(value).__name__}")
    return value


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"options.sim.{key}: must be text, not {type(value).__name__}")
    return value


#: The points ``exit_on`` may name.
EXIT_POINTS: Final = ("start", "stop")


def _exit_point(key: str, value: object) -> str:
    if not isinstance(value, str) or value not in EXIT_POINTS:
        raise InvalidArgument(f"options.sim.{key}: must be 'start' or 'stop', not {value!r}")
    return value


# options.sim keys -> their checker, which returns the value in its canonical type.
_SETTINGS: Final = {
    "exit_after": _number,
    "exit_code": _exit_code,
    "ignore_sigterm": _flag,
    "stop_delay": _number,
    "start_error": _text,
    "start_delay": _number,
    "exit_on": _exit_point,
    "exec_error": _text,
    "exec_delay": _number,
}


def _settings(sim: Mapping[str, Any] | None) -> dict[str, Any]:
    if sim is None:
        return {}
    if not isinstance(sim, Mapping):
        raise InvalidArgument(f"options.sim: must be a map, not {type(sim).__name__}")
    settings = {}
    for key, value in sim.items():
        check = _SETTINGS.get(key) if isinstance(key, str) else None
        if check is None:
            known = ", ".join(_SETTINGS)
            raise InvalidArgument(f"options.sim.{key}: unknown setting (known: {known})")
        settings[key] = check(key, value)
    if settings.get("exit_on") == "stop" and settings.get("ignore_sigterm"):
        raise InvalidArgument("options.sim.exit_on: 'stop' contradicts ignore_sigterm")
    return settings


@final
class SimBackend:
    """Simulated sandboxes (sandboxer name ``"sim"``), driven by ``options.sim``:

    ``exit_after`` (seconds >= 0)
        the process exits on its own after this long, with ``exit_code`` (0..255, default 0);
    ``ignore_sigterm`` (bool)
        SIGTERM, SIGINT and SIGHUP do nothing;
    ``stop_delay`` (seconds >= 0)
        after SIGTERM, SIGINT or SIGHUP the process exits (with 128+N) only this much later;
    ``start_error`` (text)
        Start fails with FailedPrecondition carrying this text;
    ``start_delay`` (seconds >= 0)
        Start takes this long (before failing, if ``start_error`` is set too);
    ``exit_on`` (``"start"`` or ``"stop"``)
        the process exits with ``exit_code`` at that point of its life: ``"start"`` as soon
        as it has started (Start still returns its pid; the exit follows at once), ``"stop"``
        when a stop signal (SIGTERM, SIGINT, SIGHUP) reaches it -- a process that handles
        SIGTERM by exiting with its own status, after ``stop_delay`` if set.  ``"stop"``
        together with ``ignore_sigterm`` is refused;
    ``exec_error`` (text)
        every Exec fails to start, with FailedPrecondition carrying this text;
    ``exec_delay`` (seconds >= 0)
        starting an exec takes this long (before failing, if ``exec_error`` is set too).

    An exec runs a script (see :class:`SimExec`); ``open_file`` is FailedPrecondition: a sim
    sandbox has no filesystem.

    Unknown keys are refused.  ``options.command`` is accepted and ignored.  Signals:
    SIGKILL ends the process with 137 at once; any other signal but 0 with 128+N (at once, or
    as said above for the stop signals); signal 0 and any signal after the exit do nothing.

    Pids come from a counter of this backend, starting at :data:`FIRST_SIM_PID`, so a run is
    deterministic.  :meth:`exit`, :attr:`running` and :attr:`started_count` are test hooks.
    """

    __slots__ = ("_next_pid", "_running", "_started")

    def __init__(self) -> None:
        self._next_pid = FIRST_SIM_PID
        self._started = 0
        self._running: dict[int, SimProcess] = {}

    @property
    def name(self) -> str:
        return "sim"

    def unavailable_reason(self) -> str | None:
        """Always ``None``."""
        return None

    def platform(self) -> Platform:
        """The host's platform."""
        return host_platform()

    def validate(self, spec: SandboxSpec) -> None:
        """Raise InvalidArgument naming ``options.sim.<key>`` when a setting is unknown or
        of the wrong type or range."""
        _settings(spec.options.sim)

    async def start(
        self,
        spec: SandboxSpec,
        nursery: trio.Nursery,
        on_exit: ExitCallback,
        on_spawned: SpawnCallback | None = None,
    ) -> SimProcess:
        """Start a sim process: after ``start_delay`` (trio time), fail with ``start_error``
        or return the process, with the next pid.  One step: ``on_spawned`` is not called
        (a simulated process cannot outlive the daemon).

        ``on_exit(status)`` is called exactly once, either synchronously inside
        :meth:`SimProcess.signal`, :meth:`SimProcess.cleanup` or :meth:`exit`, or from a timer
        task in ``nursery``.  If ``nursery`` is cancelled, its timers die and the process
        stays running (until a signal or :meth:`exit`).  Cancelled during ``start_delay``:
        nothing was started.
        """
        settings = _settings(spec.options.sim)
        start_delay = settings.get("start_delay", 0.0)
        if start_delay > 0:
            await trio.sleep(start_delay)
        else:
            await trio.lowlevel.checkpoint()
        start_error = settings.get("start_error")
        if start_error is not None:
            raise FailedPrecondition(f"cannot start sandbox {spec.sandbox_id}: {start_error}")
        pid = self._new_pid()
        self._started += 1
        exit_on = settings.get("exit_on")
        exit_code: int = settings.get("exit_code", 0)
        process = SimProcess(
            pid,
            self._running,
            nursery,
            on_exit,
            ignore_sigterm=settings.get("ignore_sigterm", False),
            stop_delay=settings.get("stop_delay", 0.0),
            stop_status=exit_code if exit_on == "stop" else None,
            new_pid=self._new_pid,
            exec_error=settings.get("exec_error"),
            exec_delay=settings.get("exec_delay", 0.0),
        )
        self._running[pid] = process
        if exit_on == "start":
            process._exit_later(0.0, exit_code)
        exit_after = settings.get("exit_after")
        if exit_after is not None:
            process._exit_later(exit_after, exit_code)
        return process

    def _new_pid(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        return pid

    # -- test hooks --------------------------------------------------------------------------

    def discard(self, pid: int, identity: Mapping[str, Any]) -> None:
        """Nothing to do: simulated processes end with the daemon that simulated them."""

    def adopt(
        self,
        spec: SandboxSpec,
        pid: int,
        identity: Mapping[str, Any],
        nursery: trio.Nursery,
        on_exit: ExitCallback,
    ) -> None:
        """Simulated processes end with the daemon that simulated them: never adopted."""
        return None

    def exit(self, pid: int, status: int) -> None:
        """Make the running sim process ``pid`` exit now with ``status`` (0..255); its
        ``on_exit`` is called before this returns.  LookupError if it is not running."""
        if not 0 <= status <= 255:
            raise ValueError(f"exit status {status}: must be in 0..255")
        try:
            process = self._running[pid]
        except KeyError:
            raise LookupError(f"no running sim process with pid {pid}") from None
        process._exit(status)

    @property
    def running(self) -> frozenset[int]:
        """The pids of the sim processes that have not exited yet."""
        return frozenset(self._running)

    @property
    def started_count(self) -> int:
        """How many sim processes Start has started (failed starts not counted)."""
        return self._started


@final
class SimProcess:
    """One simulated sandbox process."""

    __slots__ = (
        "_exec_delay",
        "_exec_error",
        "_ignore_sigterm",
        "_new_pid",
        "_nursery",
        "_on_exit",
        "_registry",
        "_stop_delay",
        "_stop_status",
        "_timer",
        "_timer_status",
        "pid",
    )

    pid: int
    _on_exit: ExitCallback | None  # None once exited
    _nursery: trio.Nursery | None
    _timer: trio.CancelScope | None

    def __init__(
        self,
        pid: int,
        registry: dict[int, SimProcess],
        nursery: trio.Nursery,
        on_exit: ExitCallback,
        *,
        ignore_sigterm: bool,
        stop_delay: float,
        stop_status: int | None = None,
        new_pid: Callable[[], int] | None = None,
        exec_error: str | None = None,
        exec_delay: float = 0.0,
    ) -> None:
        self.pid = pid
        self._new_pid = new_pid
        self._exec_error = exec_error
        self._exec_delay = exec_delay
        self._registry = registry
        self._nursery = nursery
        self._on_exit = on_exit
        self._ignore_sigterm = ignore_sigterm
        self._stop_delay = stop_delay
        # The status a stop signal ends it with; None: 128 + the signal's number.
        self._stop_status = stop_status
        self._timer = None
        self._timer_status = 0

    def signal(self, signum: int) -> None:
        """Deliver ``signum`` as described in :class:`SimBackend`; may call ``on_exit``
        before returning.  An invalid signal number is InvalidArgument."""
        if not 0 <= signum < _signal.NSIG:
            raise InvalidArgument(f"signal {signum}: not a valid signal number")
        if self._on_exit is None or signum == 0:
            return
        if signum == _signal.SIGKILL:
            self._exit(128 + signum)
        elif signum in _STOP_SIGNALS:
            if self._ignore_sigterm:
                return
            status = 128 + signum if self._stop_status is None else self._stop_status
            if self._stop_delay > 0:
                self._exit_later(self._stop_delay, status)
            else:
                self._exit(status)
        else:
            self._exit(128 + signum)

    def cleanup(self) -> None:
        """Nothing is left after the exit; a process still running is killed (exit 137)."""
        self.signal(_signal.SIGKILL)

    def info(self) -> Mapping[str, str]:
        return {"sim": "true", "pid": str(self.pid)}

    @property
    def usage_blocks(self) -> bool:
        """False: :meth:`usage` reads nothing, call it on the event loop."""
        return False

    def identity(self) -> Mapping[str, Any]:
        return {}

    def usage(self) -> tuple[int, int, int]:
        """``(0, 0, 1)`` while running, ``(0, 0, 0)`` after."""
        return (0, 0, 0 if self._on_exit is None else 1)

    @property
    def output(self) -> None:
        """``None``: a sim sandbox writes nothing."""
        return None

    def open_file(self, path: str, *, write: bool, mode: int | None = None) -> int:
        """FailedPrecondition: a sim sandbox has no filesystem."""
        raise FailedPrecondition(f"{path!r}: a sim sandbox has no files")

    async def exec(self, spec: ExecSpec) -> SimExec:
        """Start a :class:`SimExec` running ``spec.command`` as its script, after the
        sandbox's ``exec_delay``; FailedPrecondition with its ``exec_error``, or when the
        sandbox's process has exited.  Cancelled meanwhile: nothing was started."""
        if self._exec_delay > 0:
            await trio.sleep(self._exec_delay)
        else:
            await trio.lowlevel.checkpoint()
        if self._exec_error is not None:
            raise FailedPrecondition(f"cannot run exec {spec.exec_id!r}: {self._exec_error}")
        nursery = self._nursery
        if self._on_exit is None or nursery is None:
            raise FailedPrecondition(f"cannot run exec {spec.exec_id!r}: the sandbox has exited")
        pid = self._new_pid() if self._new_pid is not None else self.pid
        run = SimExec(pid, spec)
        nursery.start_soon(run._run, name=f"sim exec {spec.exec_id}")
        return run

    def _exit_later(self, delay: float, status: int) -> None:
        # One timer per process: a later deadline than the armed one can never fire first.
        deadline = trio.current_time() + delay
        if self._timer is None:
            assert self._nursery is not None
            self._timer = trio.CancelScope(deadline=deadline)
            self._timer_status = status
            self._nursery.start_soon(self._run_timer, self._timer)
        elif deadline < self._timer.deadline:
            self._timer.deadline = deadline
            self._timer_status = status

    async def _run_timer(self, timer: trio.CancelScope) -> None:
        with timer:
            await trio.sleep_forever()
        # Cancelled by its deadline, or by _exit (then _on_exit is already None).
        if self._on_exit is not None:
            self._exit(self._timer_status)

    def _exit(self, status: int) -> None:
        on_exit = self._on_exit
        if on_exit is None:
            return
        self._on_exit = None
        self._nursery = None
        del self._registry[self.pid]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        on_exit(status)


#: What a sim pipe holds before its writer waits (a Linux pipe's default).
SIM_PIPE_CAPACITY: Final = 64 * 1024


@final
class _Pipe:
    """A one-way byte pipe holding at most :data:`SIM_PIPE_CAPACITY` bytes: a writer waits
    while it is full, a reader while it is empty; closing the read end breaks the writer
    (as EPIPE does), closing the write end gives the reader the end of file once it has read
    what is left."""

    __slots__ = ("buffer", "read_closed", "readable", "writable", "write_closed")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.read_closed = False
        self.write_closed = False
        self.readable = trio.lowlevel.ParkingLot()
        self.writable = trio.lowlevel.ParkingLot()

    def close_write(self) -> None:
        self.write_closed = True
        self.readable.unpark_all()
        self.writable.unpark_all()

    def close_read(self) -> None:
        self.read_closed = True
        self.buffer.clear()
        self.readable.unpark_all()
        self.writable.unpark_all()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        parked = False
        while view:
            if self.write_closed:
                raise trio.ClosedResourceError("the pipe's write end is closed")
            if self.read_closed:
                raise trio.BrokenResourceError("the pipe's read end is closed")
            room = SIM_PIPE_CAPACITY - len(self.buffer)
            if room == 0:
                parked = True
                await self.writable.park()
                continue
            self.buffer += view[:room]
            view = view[room:]
            self.readable.unpark_all()
        if not parked:
            await trio.lowlevel.checkpoint()

    async def read(self, max_bytes: int | None) -> bytes:
        parked = False
        while not self.buffer and not self.write_closed and not self.read_closed:
            parked = True
            await self.readable.park()
        if self.read_closed:
            raise trio.ClosedResourceError("the pipe's read end is closed")
        if not parked:
            await trio.lowlevel.checkpoint()
        size = len(self.buffer) if max_bytes is None else max_bytes
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.writable.unpark_all()
        return data


@final
class _PipeWriter(trio.abc.SendStream):
    __slots__ = ("_pipe",)

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._pipe.write(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._pipe.close_write()
        await trio.lowlevel.checkpoint()


@final
class _PipeReader(trio.abc.ReceiveStream):
    __slots__ = ("_pipe",)

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._pipe.read(max_bytes)

    async def aclose(self) -> None:
        self._pipe.close_read()
        await trio.lowlevel.checkpoint()


@final
class SimExec:
    """A simulated exec: its command is a script of commands separated by ``";"`` words,
    run in order on trio's clock; the last one's status is the exec's:

    ``true`` / ``false``
        status 0 / 1;
    ``exit N``
        ends the script with status N (0..255);
    ``sleep S``
        waits S seconds (then 0);
    ``hang``
        waits until a signal ends the exec;
    ``trap``
        from now on SIGTERM, SIGINT and SIGHUP do nothing (0);
    ``echo WORDS...`` / ``stderr WORDS...``
        writes the words, space-separated, and a newline to stdout / stderr (stdout with a
        tty);
    ``cat``
        copies stdin to stdout until its end (at once without stdin);
    ``yes N``
        writes N bytes of ``y`` to stdout;
    ``stty``
        writes the terminal's ``ROWS COLS`` (1 and a message on stderr without a tty).

    Any other word is status 127 with ``sim: WORD: command not found`` on stderr, as a shell
    says it.  Output blocks while its pipe is full (64 KiB), as a process's does.  A signal
    (but 0, and the ones ``trap`` ignores) ends the exec at once: :meth:`wait` returns
    ``-N``, as subprocess reports a death by signal N.
    """

    __slots__ = (
        "_done",
        "_err",
        "_in",
        "_out",
        "_returncode",
        "_scope",
        "_spec",
        "_trapped",
        "_window",
        "pid",
        "stderr",
        "stdin",
        "stdout",
    )

    def __init__(self, pid: int, spec: ExecSpec) -> None:
        self.pid = pid
        self._spec = spec
        self._window: WindowSize | None = spec.window if spec.tty else None
        self._in = _Pipe() if spec.stdin else None
        self._out = _Pipe()
        self._err = None if spec.tty else _Pipe()
        self.stdin: trio.abc.SendStream | None = (
            None if self._in is None else _PipeWriter(self._in)
        )
        self.stdout: trio.abc.ReceiveStream = _PipeReader(self._out)
        self.stderr: trio.abc.ReceiveStream | None = (
            None if self._err is None else _PipeReader(self._err)
        )
        self._returncode: int | None = None
        self._done = trio.Event()
        self._scope = trio.CancelScope()
        self._trapped = False

    def resize(self, rows: int, cols: int) -> None:
        """Set the window size ``stty`` reports (nothing without a tty)."""
        if self._spec.tty:
            self._window = WindowSize(rows, cols)

    def kill(self, signum: int = _signal.SIGKILL) -> None:
        """End the exec with ``-signum`` (see the class); nothing once it has ended."""
        if self._returncode is not None or signum == 0:
            return
        if self._trapped and signum in _STOP_SIGNALS:
            return
        self._end(-int(signum))

    async def wait(self) -> int:
        await self._done.wait()
        assert self._returncode is not None
        return self._returncode

    async def aclose(self) -> None:
        """Close the caller's ends of the pipes."""
        if self._in is not None:
            self._in.close_write()
        self._out.close_read()
        if self._err is not None:
            self._err.close_read()
        await trio.lowlevel.checkpoint()

    def _end(self, returncode: int) -> None:
        self._returncode = returncode
        self._scope.cancel()
        # Its pipes close with it: the reader gets what is left, then the end of file.
        self._out.close_write()
        if self._err is not None:
            self._err.close_write()
        if self._in is not None:
            self._in.close_read()
        self._done.set()

    async def _run(self) -> None:
        status = 0
        with self._scope:
            script = list(self._spec.command)
            try:
                while script:
                    end = script.index(";") if ";" in script else len(script)
                    words, script = script[:end], script[end + 1 :]
                    if not words:
                        continue
                    status = await self._command(words[0], words[1:])
                    if words[0] == "exit":
                        break
            except trio.BrokenResourceError:
                status = -int(_signal.SIGPIPE)  # its reader went away, as EPIPE kills a process
            except trio.ClosedResourceError:
                pass  # killed while it waited on a pipe: its status is the signal's
        if self._returncode is None:
            self._end(status)

    async def _command(self, word: str, args: list[str]) -> int:
        match word:
            case "true":
                return 0
            case "false":
                return 1
            case "exit":
                return int(args[0]) % 256 if args and args[0].isdigit() else 0
            case "sleep":
                try:
                    seconds = float(args[0]) if args else 0.0
                except ValueError:
                    seconds = math.nan
                if not 0 <= seconds < math.inf:
                    await (self._err or self._out).write(b"sleep: invalid time\n")
                    return 1
                await trio.sleep(seconds)
                return 0
            case "hang":
                await trio.sleep_forever()
            case "trap":
                self._trapped = True
                return 0
            case "echo":
                await self._out.write((" ".join(args) + "\n").encode())
                return 0
            case "stderr":
                await (self._err or self._out).write((" ".join(args) + "\n").encode())
                return 0
            case "cat":
                while self._in is not None and (data := await self._in.read(SIM_PIPE_CAPACITY)):
                    await self._out.write(data)
                return 0
            case "yes":
                left = int(args[0]) if args and args[0].isdigit() else 0
                while left > 0:
                    size = min(left, SIM_PIPE_CAPACITY)
                    await self._out.write(b"y" * size)
                    left -= size
                return 0
            case "stty":
                if self._window is None:
                    await (self._err or self._out).write(b"stty: not a tty\n")
                    return 1
                await self._out.write(f"{self._window.rows} {self._window.cols}\n".encode())
                return 0
        await (self._err or self._out).write(f"sim: {word}: command not found\n".encode())
        return 127
