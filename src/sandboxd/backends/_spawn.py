"""Two-phase spawn: a sandbox's process is created held, and runs its command only once
released.

Theory of operation.  :meth:`Gate.spawn` forks the daemon.  The child leads a new session,
puts its stdio in place, closes every other descriptor it inherited (so that it holds no
other start's gate open) and changes to the sandbox's working directory; then it blocks on
its gate, a pipe whose only write end the daemon holds.  The daemon records the child's pid
and start time (exec keeps both), then writes one byte: the child execs the command.  If the
daemon dies first, the child reads end of file and exits with :data:`GATE_CLOSED_STATUS`
without running anything of the sandbox's (runc holds its init on an exec fifo to the same
end).  No crash can leave a sandbox process running that the daemon has no record of.

Until it execs, the child runs nothing but a few system calls from Python, with every signal
blocked and the garbage collector off, so none of the daemon's state (locks held by other
threads, finalizers, signal handlers) is touched.  A failed chdir or exec is reported on a
second pipe, which a successful exec closes; the command's exec follows the PATH rules
:mod:`subprocess` follows, with exactly the environment given.

The price is a fork of the daemon instead of subprocess's vfork: the kernel copies the
daemon's page tables, and frees them again at the exec (a few ms per Start on a small
virtual machine, much less on most hosts).  The alternatives cost more or promise less: a
gate program in Python costs an interpreter's start (several ms of CPU), and one in
``/bin/sh`` cannot exec with exactly the given environment (dash rewrites ``PWD`` and
``PPID``, drops names that are not shell identifiers, and dies of a bad ``OPTIND``).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import importlib
import os
import signal as _signal
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Final, NoReturn, final

import trio

from .._errors import FailedPrecondition, InvalidArgument
from ._base import SpawnCallback
from ._forkserver import close_all_but

#: The exit status of a held process whose daemon went away before releasing it.
GATE_CLOSED_STATUS: Final = 125
#: How long Start waits for a released process to exec its command.
EXEC_TIMEOUT: Final = 30.0

# The signal module's own functions turn every signal number they return into an enum member
# (about 0.1 ms a call over all signals); its C half does not.  A spawn makes three such
# calls: about 0.3 ms of each Start.
_csignal: Any = importlib.import_module("_signal")
_ALL_SIGNALS: Final = frozenset(_csignal.valid_signals())

# Signals Python ignores at start, which a command expects at their default (as
# subprocess's restore_signals gives it).
_RESTORED_SIGNALS: Final = tuple(
    getattr(_signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(_signal, name)
)


@final
class Child:
    """A process the daemon forked: its pid, and a way to wait for and reap it."""

    __slots__ = ("_pidfd", "pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        #: Its exit code (-N after death by signal N) once reaped, else None.
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        """Reap it if it has ended; its :attr:`returncode`."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                os.close(self._pidfd)
                self._pidfd = -1
        return self.returncode

    async def wait(self) -> int:
        """Return its exit code once it has ended, reaping it.  Cancelling the wait leaves
        the process alone."""
        await trio.lowlevel.checkpoint()
        while (returncode := self.poll()) is None:
            await trio.lowlevel.wait_readable(self._pidfd)  # readable once it has ended
        return returncode


def kill_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to a process group; nothing if it is gone.  An invalid signal number
    is InvalidArgument."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if not 0 <= signum < _signal.NSIG:
            raise InvalidArgument(f"signal {signum}: not a valid signal number") from exc
        raise


async def kill_and_reap(process: Child) -> None:
    """SIGKILL ``process`` and its group, and reap it (shielded from cancellation)."""
    # The process itself too: a child just forked may not lead its group yet.
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, _signal.SIGKILL)
    kill_group(process.pid, _signal.SIGKILL)
    with trio.CancelScope(shield=True):
        await process.wait()


@final
class Gate:
    """The pipes of one held spawn: the gate the child waits on, and the one it reports a
    failed chdir or exec on.  A context manager: every end still open is closed on exit."""

    def __init__(self) -> None:
        self._hold_r, self._hold_w = os.pipe2(os.O_CLOEXEC)
        self._report_r, self._report_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._report_r, False)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        output: tuple[int, int],
        pass_fds: tuple[int, ...] = (),
    ) -> Child:
        """Fork the child that will exec ``argv`` once released: the leader of a new
        session and process group, stdin on /dev/null, stdout and stderr on ``output``
        (two descriptors),
        keeping ``pass_fds`` (made inheritable) and nothing else.  OSError if the fork
        fails; then nothing runs."""
        command = [os.fsencode(a) for a in argv]
        environment = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
        name = command[0]
        if b"/" in name:
            executables = [name]
        else:
            executables = [os.path.join(os.fsencode(d), name) for d in os.get_exec_path(dict(env))]
        keep = sorted({self._hold_r, self._report_w, *pass_fds})
        # Looked up here, not in the child, where every page touched is copied.
        handled = [n for n in _ALL_SIGNALS if callable(_csignal.getsignal(n))]
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        mask: set[int] = _csignal.pthread_sigmask(_signal.SIG_BLOCK, _ALL_SIGNALS)
        collecting = gc.isenabled()
        gc.disable()
        try:
            with warnings.catch_warnings():
                # Python 3.12 warns of fork() in a process with threads: the child only
                # makes system calls until it execs, so no lock of another thread matters.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                _child(
                    executables, command, environment, os.fsencode(cwd), devnull, output,
                    keep, pass_fds, self._hold_r, self._report_w, handled, mask,
                )  # fmt: skip
        finally:
            if collecting:
                gc.enable()
            _csignal.pthread_sigmask(_signal.SIG_SETMASK, mask)
            os.close(devnull)
        os.close(self._hold_r)
        os.close(self._report_w)
        self._hold_r = self._report_w = -1
        return Child(pid)

    async def open(
        self,
        process: Child,
        sandbox_id: str,
        argv0: str,
        cwd: str,
        identity: Mapping[str, Any],
        on_spawned: SpawnCallback | None,
    ) -> None:
        """Await ``on_spawned(process.pid, identity)``, release the process, and return
        once it has exec'ed.  Whenever this raises (a failed chdir or exec is
        FailedPrecondition naming the directory or ``argv0``), the process was killed and
        reaped; Cancelled included."""
        try:
            if on_spawned is not None:
                await on_spawned(process.pid, identity)
            with contextlib.suppress(BrokenPipeError):  # it died: its exit is reported
                os.write(self._hold_w, b"G")
            os.close(self._hold_w)
            self._hold_w = -1
            report = await _read_until_eof(self._report_r, EXEC_TIMEOUT)
        except BaseException:
            await kill_and_reap(process)
            raise
        if report == b"":
            return
        await kill_and_reap(process)
        if report is None:
            raise FailedPrecondition(
                f"cannot start sandbox {sandbox_id}: its process did not exec the command "
                f"within {EXEC_TIMEOUT:g} s"
            )
        what = cwd if report.startswith(b"c") else argv0
        raise FailedPrecondition(
            f"cannot start sandbox {sandbox_id}: {os.strerror(int(report[1:]))}: {what}"
        )

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self._hold_r, self._hold_w, self._report_r, self._report_w):
            if fd >= 0:
                os.close(fd)
        self._hold_r = self._hold_w = self._report_r = self._report_w = -1


def _child(
    executables: list[bytes],
    argv: list[bytes],
    env: dict[bytes, bytes],
    cwd: bytes,
    devnull: int,
    output: tuple[int, int],
    keep: list[int],
    pass_fds: tuple[int, ...],
    hold: int,
    report: int,
    handled: list[int],
    mask: set[int],
) -> NoReturn:
    """The forked child, until it execs: never returns."""
    try:
        os.setsid()
        os.dup2(devnull, 0)
        os.dup2(output[0], 1)
        os.dup2(output[1], 2)
        close_all_but(keep)
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        try:
            os.chdir(cwd)
        except OSError as exc:
            os.write(report, b"c%d" % (exc.errno or errno.ENOENT))
            os._exit(127)
        if os.read(hold, 1) != b"G":
            os._exit(GATE_CLOSED_STATUS)
        os.close(hold)
        # The daemon's handlers and the signals Python ignores go back to their defaults
        # (exec would keep an ignored signal ignored).
        for signum in (*_RESTORED_SIGNALS, *handled):
            _signal.signal(signum, _signal.SIG_DFL)
        _csignal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        failure = 0
        for path in executables:
            try:
                os.execve(path, argv, env)
            except OSError as exc:
                # As subprocess reports it: the first error that is not "not here".
                if not failure or failure in (errno.ENOENT, errno.ENOTDIR):
                    failure = exc.errno or errno.ENOENT
        os.write(report, b"e%d" % failure)
    finally:
        os._exit(127)


async def read_some(fd: int, size: int = 4096) -> bytes:
    """One read of the non-blocking ``fd``, once it is readable; ``b""`` at end of file."""
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)


async def _read_until_eof(fd: int, timeout: float) -> bytes | None:
    """Everything read from ``fd`` until end of file; None after ``timeout`` seconds."""
    data = b""
    with trio.move_on_after(timeout):
        while chunk := await read_some(fd):
            data += chunk
        return data
    return None
