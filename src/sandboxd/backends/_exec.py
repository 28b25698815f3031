"""Running more commands in a running sandbox: the backend half of Exec.

Theory of operation.  :func:`exec_on_host` (the ``process`` sandboxer) forks the daemon; the
child leads a new session, puts the command's stdio in place (three pipes, or a
pseudo-terminal that becomes its controlling terminal), closes every other descriptor,
changes to the sandbox's working directory and execs the command.  It isolates nothing: the
command runs as the daemon's user (another ``uid``/``gid`` only when that is root), as the
sandbox's own processes do.

:func:`exec_in_namespaces` (the ``bwrap`` sandboxer) forks the daemon too, but that child
(the *relay*) first enters the sandbox, in this order, before it runs anything of the
sandbox's: not dumpable (so no process of the sandbox can ptrace the daemon's memory it
still holds), a session of its own, setns(2) into each namespace of the sandbox's init
that differs from the daemon's (through /proc/<init>/ns/*, opened by the daemon and checked
to be the init's; setns on a pidfd answers ESRCH for an unprivileged bwrap init, whose user
namespace is nested in the one owning its other namespaces: that owner first, then mount,
pid, uts, ipc, net, cgroup, time, then the init's own user namespace), a chroot to
the init's root, the capability bounding set emptied, ambient capabilities cleared,
no_new_privs, the ``uid``/``gid`` asked for, every capability set emptied, and the working
directory.  Only then does it start the command -- a pid namespace is joined by the
children of who joins it -- with posix_spawn (vfork: no second copy of the daemon's page
tables), or, for a tty, with fork (the command must set its controlling terminal itself);
a tty is then one of the sandbox's own, opened from its /dev/ptmx (so that ``tty`` names
it inside) and its master sent back to the daemon, or the daemon's when there is none.
The relay waits for the command and exits with its status (dying of the same signal), so
the daemon reaps the relay to learn the command's.  A command so started runs as root
with no capability at all, or as the sandbox's user in its user namespace: it can never
mount, unshare what the sandbox cannot, or reach a host file it cannot.  When its init exits,
the kernel kills every process of its pid namespace, execs included.

Why this shape: ExecSync of ``true`` must stay within 1.5x of ``subprocess.run(["nsenter",
"-t", PID, "-a", "true"])`` (which is not safe: nsenter execs a binary of the sandbox with
every capability, so only code loaded before the setns can drop them).  Measured here (Linux
6.18, 2 cores, a Python with trio and sandboxd loaded, 33 MB resident; p50 of 300 runs,
synchronous prototypes): nsenter 2.12 ms; fork+exec of /bin/true 1.92 ms; fork, enter,
posix_spawn, relay 2.50 ms (chosen); fork, enter, clone(CLONE_PARENT) so that the daemon
reaps the command itself 3.08 ms (a second copy of the page tables); fork, enter, fork
3.49 ms.  Through this module from a trio loop (:func:`measure`, same machine, quiet):
``process`` 3.2 ms, ``bwrap`` 3.8 ms, nsenter 1.9 ms.  Within 5 ms, not yet within 1.5x:
the fork of the daemon dominates (2.2 ms for a bare fork+exec from the loaded daemon, 0.46
ms of it in the parent, plus the relay's exit tearing down its copy, 0.4 ms).  The next
step is a small fork server (a ``python -I -S`` holding only this module's child side,
started once): fork, enter, posix_spawn and relay from it measure 1.04 ms.

:meth:`ExecChild.kill` reaches the command's whole tree: its session, and every descendant
found through /proc/<pid>/task/*/children while its parent still lives, even one that left
the session.  For SIGKILL the tree is frozen first, top down (SIGSTOP, and a wait until each
is stopped, so that no process forks or reaps behind the walk and no pid is reused under
it), then killed.  The relay is stopped meanwhile, so the command's pid stays its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import importlib
import os
import signal as _signal
import socket
import struct
import subprocess
import termios
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, NoReturn, final

import trio

from .._errors import FailedPrecondition, InvalidArgument
from .._models import WindowSize
from ._base import ExecSpec, SandboxProcess
from ._spawn import Child, read_some

#: How long :func:`exec_in_namespaces` and :func:`exec_on_host` wait for the command to exec.
EXEC_TIMEOUT: Final = 30.0
#: The pipe size asked for the command's stdout and stderr (fewer wake-ups for bulk output).
PIPE_SIZE: Final = 1 << 20

# Namespace types, in the order nsenter joins them (setns on a pidfd joins them at once).
NAMESPACES: Final = (
    ("user", 0x10000000),
    ("mnt", 0x00020000),
    ("pid", 0x20000000),
    ("uts", 0x04000000),
    ("ipc", 0x08000000),
    ("net", 0x40000000),
    ("cgroup", 0x02000000),
    ("time", 0x00000080),
)
_CLONE_NEWUSER: Final = 0x10000000
_NS_GET_USERNS: Final = 0xB701  # ioctl: the user namespace that owns a namespace
_NS_OPEN: Final = os.O_RDONLY | os.O_CLOEXEC
_MAX_FD: Final = os.sysconf("SC_OPEN_MAX")
_CAP_LAST: Final = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
_PR_SET_DUMPABLE: Final = 4
_PR_CAPBSET_DROP: Final = 24
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_CAPABILITY_VERSION_3: Final = 0x20080522
_TIOCGPTN: Final = 0x80045430
_TIOCSPTLCK: Final = 0x40045431
_TIOCGPTPEER: Final = 0x5441
_STOP_WAIT: Final = 0.1  # seconds a kill waits for one process to stop
# The C functions: signal's wrappers make an enum of each signal, 0.3 ms per fork.
_sigmask: Callable[[int, Iterable[int]], set[int]] = importlib.import_module(
    "_signal"
).pthread_sigmask
_EVERY_SIGNAL: Final = {int(n) for n in _signal.valid_signals()}
# Every signal a process can catch or ignore, for posix_spawn to put back to default.
_ALL_SIGNALS: Final = tuple(
    int(n) for n in _signal.valid_signals() if n not in (_signal.SIGKILL, _signal.SIGSTOP)
)
_RESTORED_SIGNALS: Final = tuple(
    getattr(_signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(_signal, name)
)

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _prctl(option: int, arg: int = 0) -> int:
    zero = ctypes.c_ulong(0)
    return int(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero))


def namespaces_to_join(pid: int) -> int:
    """The CLONE_NEW* flags of ``pid``'s namespaces that are not the daemon's."""
    flags = 0
    for name, flag in NAMESPACES:
        try:
            theirs = os.stat(f"/proc/{pid}/ns/{name}")
        except FileNotFoundError:
            continue  # a namespace type this kernel does not have
        mine = os.stat(f"/proc/self/ns/{name}")
        if (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino):
            flags |= flag
    return flags


def open_namespaces(pid: int) -> list[tuple[int, int]]:
    """``(descriptor, CLONE_NEW* flag)`` of each of ``pid``'s namespaces that is not the
    daemon's, in the order to join them.  OSError when ``pid`` is gone; the caller checks
    that ``pid`` still is the same process afterwards.

    The user namespace that owns the others comes first (it grants the right to join
    them); when ``pid``'s own user namespace is another one, nested in it (unprivileged
    bubblewrap makes one), that one comes last."""
    flags = namespaces_to_join(pid)
    opened: list[tuple[int, int]] = []
    try:
        for name, flag in NAMESPACES[1:]:
            if flags & flag:
                opened.append((os.open(f"/proc/{pid}/ns/{name}", _NS_OPEN), flag))
        if flags & _CLONE_NEWUSER:
            own = os.open(f"/proc/{pid}/ns/user", _NS_OPEN)
            opened.append((own, _CLONE_NEWUSER))
            if opened[:-1]:
                owner = fcntl.ioctl(opened[0][0], _NS_GET_USERNS)
                if _same_file(owner, own):
                    os.close(owner)
                    opened.insert(0, opened.pop())  # the usual case: user first
                elif _same_file(owner, os.open("/proc/self/ns/user", _NS_OPEN), close=True):
                    os.close(owner)
                else:
                    opened.insert(0, (owner, _CLONE_NEWUSER))
    except BaseException:
        for fd, _ in opened:
            os.close(fd)
        raise
    return opened


def _same_file(fd: int, other: int, *, close: bool = False) -> bool:
    try:
        one, two = os.fstat(fd), os.fstat(other)
        return (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)
    finally:
        if close:
            os.close(other)


# -- the streams ---------------------------------------------------------------------------------


@final
class _TerminalOutput(trio.abc.ReceiveStream):
    """A pty master read as a stream: the end of file is the EIO Linux gives once every
    descriptor of the terminal's other side is closed."""

    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self._stream = stream

    def fileno(self) -> int:
        return self._stream.fileno()

    def close(self) -> None:
        self._stream.close()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            if isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EIO:
                return b""
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()


@final
class _TerminalInput(trio.abc.SendStream):
    """Writing to a pty master; closing sends the terminal's end-of-file character (a
    terminal cannot be half-closed)."""

    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self._stream = stream

    def close(self) -> None:
        self._stream.close()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        fd = self._stream.fileno()
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.write(fd, termios.tcgetattr(fd)[6][termios.VEOF])
        await self._stream.aclose()


def _set_window(fd: int, window: WindowSize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", window.rows, window.cols, 0, 0))


class _Stdio:
    """The command's stdin, stdout and stderr (what the child gets) and the daemon's ends
    of them.  A context manager: the child's ends are closed on exit (the child has its
    own copies by then); the daemon's ends are closed too if the block raised."""

    def __init__(self, spec: ExecSpec) -> None:
        self.stdin: trio.abc.SendStream | None = None
        self.stdout: trio.abc.ReceiveStream
        self.stderr: trio.abc.ReceiveStream | None = None
        self._theirs: list[int] = []
        ours: list[int] = []
        try:
            if spec.tty:
                master, slave = os.openpty()
                ours.append(master)
                self._theirs.append(slave)
                if spec.window is not None:
                    _set_window(slave, spec.window)
                self.child = (slave, slave, slave)
                ours.remove(master)
                self._terminal(master, spec.stdin)
                return
            if spec.stdin:
                stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
                self._theirs.append(stdin_r)
                ours.append(stdin_w)
                self.stdin = trio.lowlevel.FdStream(stdin_w)
            else:
                stdin_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                self._theirs.append(stdin_r)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            ours.append(out_r)
            self._theirs.append(out_w)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            ours.append(err_r)
            self._theirs.append(err_w)
            for fd in (out_w, err_w):
                with contextlib.suppress(OSError):
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            self.child = (stdin_r, out_w, err_w)
            self.stdout = trio.lowlevel.FdStream(out_r)
            self.stderr = trio.lowlevel.FdStream(err_r)
        except BaseException:
            for fd in ours + self._theirs:
                os.close(fd)
            raise

    def _terminal(self, master: int, stdin: bool) -> None:
        try:
            writer = os.dup(master) if stdin else -1
        except BaseException:
            os.close(master)
            raise
        self.stdout = _TerminalOutput(trio.lowlevel.FdStream(master))
        if writer >= 0:
            self.stdin = _TerminalInput(trio.lowlevel.FdStream(writer))

    def adopt_terminal(self, master: int, stdin: bool) -> None:
        """Use the terminal of pty master ``master`` instead of the one made here."""
        for stream in (self.stdin, self.stdout):
            if isinstance(stream, _TerminalInput | _TerminalOutput):
                stream.close()
        self.stdin = None
        self._terminal(master, stdin)

    def __enter__(self) -> _Stdio:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        for fd in set(self._theirs):
            os.close(fd)
        self._theirs = []
        if kind is not None:
            for stream in (self.stdin, self.stdout, self.stderr):
                if isinstance(stream, trio.lowlevel.FdStream | _TerminalInput | _TerminalOutput):
                    stream.close()


# -- the process ---------------------------------------------------------------------------------


@final
class ExecChild:
    """A command started in a sandbox (an :class:`ExecProcess`)."""

    __slots__ = ("_relay", "_waiter", "pid", "stderr", "stdin", "stdout")

    def __init__(self, pid: int, waiter: Child, stdio: _Stdio, *, relay: bool) -> None:
        #: The command's host pid (0 when it could not be exec'ed).
        self.pid = pid
        # The daemon's child: the command itself, or the relay that waits for it.
        self._waiter = waiter
        self._relay = relay
        self.stdin = stdio.stdin
        self.stdout = stdio.stdout
        self.stderr = stdio.stderr

    def resize(self, rows: int, cols: int) -> None:
        """TIOCSWINSZ on the terminal; nothing without a tty or once closed."""
        if not (0 <= rows <= 0xFFFF and 0 <= cols <= 0xFFFF):
            raise InvalidArgument(f"window {rows}x{cols}: rows and cols must be in 0..65535")
        if isinstance(self.stdout, _TerminalOutput):
            with contextlib.suppress(OSError, ValueError):  # closed
                _set_window(self.stdout.fileno(), WindowSize(rows, cols))

    def kill(self, signum: int = _signal.SIGKILL) -> None:
        """``signum`` to the command's session and every descendant (see the module's
        theory); nothing once :meth:`wait` has returned.  A kill by SIGKILL waits up to
        0.1 s for each process to stop (one in an uninterruptible sleep).  An invalid
        signal number is InvalidArgument."""
        if not 0 < signum < _signal.NSIG:
            raise InvalidArgument(f"signal {signum}: not a valid signal number")
        if self._waiter.returncode is not None:
            return
        if not self._relay:
            kill_tree(self._waiter.pid, self._waiter.pid, signum)
            return
        relay = self._waiter.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(relay, _signal.SIGSTOP)  # it cannot reap the command meanwhile
        try:
            _wait_stopped(relay, time.monotonic() + _STOP_WAIT)
            root = self.pid if self.pid and self.pid in children(relay) else 0
            if self.pid:
                kill_tree(root, self.pid, signum)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(relay, _signal.SIGCONT)

    async def wait(self) -> int:
        """The command's return code (``-N``: signal N), once it has ended and been reaped."""
        return await self._waiter.wait()

    async def aclose(self) -> None:
        """Close the streams; the process is left alone."""
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.aclose()


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (empty when it is gone)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()


def _wait_stopped(pid: int, deadline: float) -> None:
    """Return once ``pid`` is stopped, dead or gone (or at ``deadline``: a process in an
    uninterruptible sleep does no fork or wait meanwhile)."""
    while (fields := _stat_fields(pid)) is not None and fields[0] not in b"TtZX":
        if time.monotonic() > deadline:
            return
        os.sched_yield()


def _session_members(sid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None and len(fields) > 3 and int(fields[3]) == sid:
                members.append(int(name))
    return members


def _pidfd(pid: int, parent: int | None, sid: int | None) -> int | None:
    """A pidfd of ``pid`` if, once opened, it still is the child of ``parent`` (or in
    session ``sid``): a pid found in /proc may have been reused since."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    fields = _stat_fields(pid)
    if fields is not None and (
        (parent is None or int(fields[1]) == parent) and (sid is None or int(fields[3]) == sid)
    ):
        return fd
    os.close(fd)
    return None


def kill_tree(root: int, sid: int, signum: int) -> None:
    """Send ``signum`` to ``root`` and its descendants (0: none) and to every member of
    session ``sid``; for SIGKILL, freeze them all first.  ``root`` must be a process whose
    pid cannot be reused meanwhile (a child not yet reaped, or one whose parent is
    stopped)."""
    freeze = signum == _signal.SIGKILL
    seen: set[int] = set()
    targets: list[int] = []
    stack: list[tuple[int, int | None]] = [(root, None)] if root > 0 else []
    try:
        while stack:
            pid, parent = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            fd = _pidfd(pid, parent, None)
            if fd is None:
                continue
            targets.append(fd)
            if freeze:
                with contextlib.suppress(ProcessLookupError):
                    _signal.pidfd_send_signal(fd, _signal.SIGSTOP)
                _wait_stopped(pid, time.monotonic() + _STOP_WAIT)
            stack += [(child, pid) for child in children(pid)]
        for pid in _session_members(sid):
            if pid not in seen and (fd := _pidfd(pid, None, sid)) is not None:
                targets.append(fd)
        for fd in targets:
            with contextlib.suppress(ProcessLookupError):
                _signal.pidfd_send_signal(fd, signum)
    finally:
        for fd in targets:
            os.close(fd)


# -- starting it ---------------------------------------------------------------------------------


def _executables(command: Sequence[str], env: Mapping[str, str]) -> list[bytes]:
    """Where exec looks for ``command[0]`` (as :mod:`subprocess` does, in ``env``'s PATH)."""
    name = os.fsencode(command[0])
    if b"/" in name:
        return [name]
    return [os.path.join(os.fsencode(d), name) for d in os.get_exec_path(dict(env))]


@final
class _Fork:
    """What a forked child needs, prepared before the fork (every page the child touches is
    copied): the command, its environment, and the signals to put back to default."""

    def __init__(self, spec: ExecSpec, stdio: _Stdio, report: int, keep: Sequence[int]) -> None:
        self.spec = spec
        self.argv = [os.fsencode(a) for a in spec.command]
        self.env = {os.fsencode(k): os.fsencode(v) for k, v in spec.env.items()}
        self.executables = _executables(spec.command, spec.env)
        self.cwd = os.fsencode(spec.cwd)
        self.stdio = stdio.child
        self.report = report
        #: Where the relay sends the sandbox's own terminal (-1: none).
        self.terminal = -1
        self.keep = sorted({report, *keep})

    def fork(self, child: Callable[[_Fork], NoReturn]) -> int:
        """Fork, the child running ``child(self)`` (which never returns), with every signal
        blocked and the collector off around it.  OSError if the fork fails."""
        mask = _sigmask(_signal.SIG_BLOCK, _EVERY_SIGNAL)
        collecting = gc.isenabled()
        gc.disable()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
                pid = os.fork()
            if pid == 0:
                try:
                    child(self)
                finally:
                    os._exit(127)
            return pid
        finally:
            if collecting:
                gc.enable()
            _sigmask(_signal.SIG_SETMASK, mask)

    # The rest runs in forked children only.

    def setup_stdio(self) -> None:
        """A session of its own; stdio in place; every other descriptor but ``keep``
        closed."""
        os.setsid()
        stdin, stdout, stderr = self.stdio
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        low = 3
        for fd in self.keep:
            if fd > low:
                os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, _MAX_FD)

    def fail(self, kind: bytes, err: int) -> NoReturn:
        os.write(self.report, b"%s%d\n" % (kind, err))
        os._exit(126)

    def set_user(self) -> None:
        spec = self.spec
        try:
            if spec.gid is not None:
                os.setgroups([])
                os.setgid(spec.gid)
            if spec.uid is not None:
                os.setuid(spec.uid)
        except OSError as exc:
            self.fail(b"u", exc.errno or errno.EPERM)

    def chdir(self) -> None:
        try:
            os.chdir(self.cwd)
        except OSError as exc:
            self.fail(b"c", exc.errno or errno.ENOENT)

    def execute(self) -> NoReturn:
        """Become the command: default signals, the controlling terminal, exec."""
        if self.spec.tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        # exec resets handled signals; ignored ones it keeps (Python ignores these).
        for signum in _RESTORED_SIGNALS:
            _signal.signal(signum, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
        failure = 0
        for path in self.executables:
            try:
                os.execve(path, self.argv, self.env)
            except OSError as exc:
                # As subprocess reports it: the first error that is not "not here".
                if not failure or failure in (errno.ENOENT, errno.ENOTDIR):
                    failure = exc.errno or errno.ENOENT
        self.exec_failed(failure)

    def exec_failed(self, err: int) -> NoReturn:
        with contextlib.suppress(OSError):
            os.write(2, b"sandboxd: %s: %s\n" % (self.argv[0], os.strerror(err).encode()))
        os.write(self.report, b"e%d\n" % err)
        os._exit(127 if err in (errno.ENOENT, errno.ENOTDIR) else 126)


def _host_child(fork: _Fork) -> NoReturn:
    """The forked child of :func:`exec_on_host`: it becomes the command."""
    fork.setup_stdio()
    fork.chdir()
    fork.set_user()
    fork.execute()


def _relay_child(fork: _Fork, namespaces: Sequence[tuple[int, int]], root: int) -> NoReturn:
    """The forked child of :func:`exec_in_namespaces`: enter the sandbox, give up every
    privilege, start the command, and exit as it exits."""
    _prctl(_PR_SET_DUMPABLE, 0)
    fork.setup_stdio()
    for fd, flag in namespaces:
        if _libc.setns(fd, flag) != 0:
            fork.fail(b"s", ctypes.get_errno())
        os.close(fd)
    try:
        os.fchdir(root)
        os.chroot(".")
    except OSError as exc:
        fork.fail(b"s", exc.errno or errno.EPERM)
    os.close(root)
    for cap in range(_CAP_LAST + 1):
        if _prctl(_PR_CAPBSET_DROP, cap) != 0:
            fork.fail(b"s", ctypes.get_errno())
    if (
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL) != 0
        or _prctl(_PR_SET_NO_NEW_PRIVS, 1) != 0
    ):
        fork.fail(b"s", ctypes.get_errno())
    fork.set_user()
    header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        fork.fail(b"s", ctypes.get_errno())
    fork.chdir()
    if fork.spec.tty:
        _sandbox_terminal(fork.terminal)
        command = os.fork()
        if command == 0:
            os.setsid()
            fork.execute()
    else:
        command = _spawn(fork)
    os.write(fork.report, b"p%d\n" % command)
    os.close(fork.report)
    os.closerange(0, 3)  # the command's output ends when the command's tree closes it
    _, status = os.waitpid(command, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # die of the same signal
        if -code not in (_signal.SIGKILL, _signal.SIGSTOP):
            _signal.signal(-code, _signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {-code})
    os._exit(code & 0xFF)


def _sandbox_terminal(channel: int) -> None:
    """In the relay, with no privilege left: open a terminal from the sandbox's own
    /dev/ptmx (so that ``tty`` names it inside), of the size of the one given, put it on
    0, 1 and 2, and send its master to the daemon on ``channel``.  Keeps the daemon's
    terminal when the sandbox has no usable /dev/ptmx."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4)  # it is a pty master
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
        socket.send_fds(socket.socket(fileno=channel), [b"t"], [master])
    except OSError:
        return
    finally:
        os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


def _spawn(fork: _Fork) -> int:
    """posix_spawn the command in a session of its own (vfork: no copy of the page tables)."""
    failure = 0
    for path in fork.executables:
        if not os.access(path, os.X_OK):  # cheaper than a spawn that fails
            err = errno.EACCES if os.path.exists(path) else errno.ENOENT
        else:
            try:
                return os.posix_spawn(
                    path, fork.argv, fork.env,
                    setsid=True, setsigmask=(), setsigdef=_ALL_SIGNALS,
                )  # fmt: skip
            except OSError as exc:
                err = exc.errno or errno.ENOENT
        # As subprocess reports it: the first error that is not "not here".
        if not failure or failure in (errno.ENOENT, errno.ENOTDIR):
            failure = err
    fork.exec_failed(failure)


async def _started(
    pid: int,
    report: int,
    spec: ExecSpec,
    exec_id: str,
    stdio: _Stdio,
    relay: bool,
    terminal: socket.socket | None,
) -> ExecChild:
    """Read the child's report until end of file (it exec'ed, or said why not) and make the
    :class:`ExecChild`; FailedPrecondition, with the child killed and reaped, if it cannot
    run.  Whenever this raises, Cancelled included, nothing is left running."""
    waiter = Child(pid)
    data = b""
    try:
        with trio.move_on_after(EXEC_TIMEOUT) as late:
            while chunk := await read_some(report):
                data += chunk
    except BaseException:
        kill_tree(pid, pid, _signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await waiter.wait()
        raise
    reports = {line[:1]: int(line[1:]) for line in data.split()}
    command = reports.get(b"p", 0 if relay or b"e" in reports else pid)
    problem = next((k for k in (b"s", b"c", b"u") if k in reports), None)
    if late.cancelled_caught or problem is not None or (relay and not reports):
        kill_tree(pid, pid, _signal.SIGKILL)
        with trio.CancelScope(shield=True):
            status = await waiter.wait()
        where = f"cannot start exec {exec_id}"
        if late.cancelled_caught:
            raise FailedPrecondition(f"{where}: the command did not start in {EXEC_TIMEOUT:g} s")
        if problem is None:
            raise FailedPrecondition(f"{where}: its helper process ended ({status})")
        reason = os.strerror(reports[problem])
        if problem == b"c":
            raise FailedPrecondition(f"{where}: {reason}: {spec.cwd}")
        if problem == b"u":
            raise FailedPrecondition(
                f"{where}: cannot run as uid {spec.uid}, gid {spec.gid}: {reason}"
            )
        if reports[problem] == errno.ESRCH:
            reason = "the sandbox has ended"
        raise FailedPrecondition(f"{where}: cannot enter its namespaces: {reason}")
    if terminal is not None:
        with contextlib.suppress(BlockingIOError):  # sent before the report ended, if at all
            _, fds, _, _ = socket.recv_fds(terminal, 1, 1)
            for fd in fds[1:]:
                os.close(fd)
            if fds:
                stdio.adopt_terminal(fds[0], spec.stdin)
    return ExecChild(command, waiter, stdio, relay=relay)


async def exec_on_host(spec: ExecSpec, exec_id: str) -> ExecChild:
    """Start ``spec`` as a host process (the ``process`` sandboxer; see the module's
    theory).  FailedPrecondition when it cannot run; 127 from ``wait()`` when the command
    is not found."""
    if os.geteuid() != 0 and (
        spec.uid not in (None, os.geteuid()) or spec.gid not in (None, os.getegid())
    ):
        raise FailedPrecondition(
            f"cannot start exec {exec_id}: the daemon does not run as root, so a "
            f"command runs as its user only (uid {os.geteuid()}, gid {os.getegid()})"
        )
    return await _start(spec, exec_id, _host_child, (), relay=False)


async def exec_in_namespaces(
    spec: ExecSpec, exec_id: str, namespaces: Sequence[tuple[int, int]], root: int
) -> ExecChild:
    """Start ``spec`` inside ``namespaces`` (see :func:`open_namespaces`), chrooted to
    ``root`` (a descriptor of the root directory to run in), with no privilege (the
    ``bwrap`` sandboxer; see the module's theory)."""

    def relay(fork: _Fork) -> NoReturn:
        _relay_child(fork, namespaces, root)

    keep = (root, *(fd for fd, _ in namespaces))
    return await _start(spec, exec_id, relay, keep, relay=True)


async def _start(
    spec: ExecSpec,
    exec_id: str,
    child: Callable[[_Fork], NoReturn],
    keep: Sequence[int],
    *,
    relay: bool,
) -> ExecChild:
    if not spec.command or not all(spec.command) or any("\0" in a for a in spec.command):
        raise FailedPrecondition(f"cannot start exec {exec_id}: empty command or NUL")
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    terminal, theirs = socket.socketpair() if relay and spec.tty else (None, None)
    try:
        os.set_blocking(report_r, False)
        with _Stdio(spec) as stdio:
            try:
                fork = _Fork(
                    spec, stdio, report_w, [*keep, *([theirs.fileno()] if theirs else [])]
                )
                if theirs is not None:
                    fork.terminal = theirs.fileno()
                pid = fork.fork(child)
            except (OSError, ValueError) as exc:
                raise FailedPrecondition(f"cannot start exec {exec_id}: {exc}") from exc
            finally:
                os.close(report_w)
                if theirs is not None:
                    theirs.close()
            if terminal is not None:
                terminal.setblocking(False)
            return await _started(pid, report_r, spec, exec_id, stdio, relay, terminal)
    finally:
        os.close(report_r)
        if terminal is not None:
            terminal.close()


async def measure(sandbox: SandboxProcess, runs: int = 300) -> dict[str, float]:
    """Seconds (p50 and p99 over ``runs``) to run ``true`` through ``sandbox.exec`` to its
    end (output read, exit reaped), and the same for the baseline
    ``subprocess.run(["nsenter", "-t", PID, "-a", "true"])`` into the same sandbox.  For the
    benchmark; it blocks the event loop during each baseline run."""
    request = ExecSpec("measure", ("true",), {"PATH": "/usr/bin:/bin"}, "/")

    async def ours() -> None:
        process = await sandbox.exec(request)
        while await process.stdout.receive_some():
            pass
        if process.stderr is not None:
            while await process.stderr.receive_some():
                pass
        await process.wait()
        await process.aclose()

    async def baseline() -> None:
        _nsenter_true(sandbox.pid)
        await trio.lowlevel.checkpoint()

    figures: dict[str, float] = {}
    for name, run in (("exec", ours), ("nsenter", baseline)):
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            await run()
            times.append(time.perf_counter() - start)
        times.sort()
        figures[f"{name}_p50"] = times[len(times) // 2]
        figures[f"{name}_p99"] = times[min(len(times) - 1, len(times) * 99 // 100)]
    return figures


def _nsenter_true(pid: int) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-a", "true"], check=True)
