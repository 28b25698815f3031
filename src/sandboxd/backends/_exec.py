"""Running more commands in a running sandbox: the backend half of Exec.

Theory of operation.  Every exec starts from the daemon's *fork server*
(:mod:`._forkserver`, :func:`fork_server`): a ``python -I -S`` process running one module
file that imports nothing of sandboxd (a few MB, where the daemon is 33), started at the
first exec and again after it died.  The daemon prepares the command's stdio (three pipes,
or a pseudo-terminal), opens what the command must enter, and sends the request over a
SOCK_SEQPACKET socket that only it and the server hold: argv, environment, cwd,
``uid``/``gid``, tty, and by SCM_RIGHTS the stdio, the exec's *channel* (a socket pair of
its own) and, for a sandbox, its root and namespaces.  The server hands the request to a
*relay* it forked ahead of time (the next one is forked when a relay says its command
has ended, while the daemon answers for it, or when a request finds none).

The relay, before it runs anything of the sandbox's: is not dumpable (the server made
itself so, and a fork keeps it: no process of the sandbox can ptrace it or open its /proc
files), dies with the server (PR_SET_PDEATHSIG), leads a session of its own, puts the stdio
on 0, 1 and 2 and closes every other descriptor but the channel, a pipe to the server and
what it enters.  For the ``bwrap`` sandboxer (:func:`exec_in_namespaces`) it then enters
the sandbox, in this order: setns(2) into each namespace of the sandbox's init that differs
from the daemon's (through /proc/<init>/ns/*, opened by the daemon and checked to be the
init's; setns on a pidfd answers ESRCH for an unprivileged bwrap init, whose user namespace
is nested in the one owning its other namespaces: that owner first, then mount, pid, uts,
ipc, net, cgroup, time, then the init's own user namespace), a chroot to the init's root,
the capability bounding set emptied, ambient capabilities cleared, no_new_privs, the
``uid``/``gid`` asked for, every capability set emptied; last, just before it starts the
command, it installs the sandbox's system-call filter (the BPF program sent with the
request; :mod:`._seccomp`), which the command and all it starts inherit.  For the
``process`` sandboxer (:func:`exec_on_host`) it isolates nothing: the command runs as the
daemon's user (another ``uid``/``gid`` only when that is root), as the sandbox's own
processes do.  Then the
working directory, and the command, started -- a pid namespace is joined by the children of
who joins it -- with posix_spawn (vfork), or, for a tty, with fork (the command must set
its controlling terminal itself); in a sandbox a tty is one of its own, opened from its
/dev/ptmx (so that ``tty`` names it inside) and its master sent back to the daemon, or the
daemon's when there is none.  The relay reports on the channel (``p`` with pidfds of the
command and of itself, or why the command could not start), waits for the command, sends
its return code (``x``) and exits as it exited.  A relay that dies first is reaped by the
server, which sends the relay's own code instead.  A command so started in a sandbox runs
as root with no capability at all, or as the sandbox's user in its user namespace: it can
never mount, unshare what the sandbox cannot, or reach a host file it cannot.  When its
init exits, the kernel kills every process of its pid namespace, execs included.  No
descriptor of the daemon's or the server's reaches a command (the channel and everything
received are close-on-exec).

The fork server's death hangs nothing: its relays die with it (PR_SET_PDEATHSIG), so
every running exec's channel ends; :meth:`ExecChild.wait` then kills the command (its
pidfd and its session) and returns -9, an exec being started fails with
FailedPrecondition (``its helper process ended``), and the next exec starts a new server
(also when the request cannot be sent).  The server dies with the daemon: its own
PR_SET_PDEATHSIG, and end of file on its socket.

Why this shape: ExecSync of ``true`` must stay within 1.5x of ``subprocess.run(["nsenter",
"-t", PID, "-a", "true"])`` (which is not safe: nsenter execs a binary of the sandbox with
every capability, so only code loaded before the setns can drop them).  Measured here
(Linux 6.18, 2 cores shared with other work, p50 of 300 runs).  Forking the daemon itself
(the previous design) cost ``process`` 3.2 ms and ``bwrap`` 3.8 ms through this module
(:func:`measure`) against nsenter's 1.9 ms: the copy of the daemon's page tables and its
teardown dominated.  From the fork server, through :func:`measure`: ``process`` 2.2-2.3 ms,
``bwrap`` 2.55-2.65 ms, nsenter 2.2-2.3 ms.  In a ``bwrap`` relay: its fork 0.24 ms (off
the request's path when a spare relay is ready: a request that finds none, as when execs
follow each other with nothing in between, waits for it), setns into the mount namespace
0.2 ms, emptying the bounding set 0.05 ms, posix_spawn and ``true`` to its end 0.9 ms.  End
to end through the socket (``python -m bench.exec --seq 300 --duration 3 --stream-mib
100``; see bench/README.md), three runs with a load average of 0.7 to 4 (the benchmark's
own included), ExecSync p50: ``process`` 2.67-2.86 ms (1.14x-1.17x nsenter), ``bwrap``
3.02-3.15 ms (1.32x-1.35x); at 8 in flight 606-641 and 535-570 execs/s (nsenter 862-928);
``cat`` of 100 MiB 322-563 MiB/s.  Forking the daemon, it was 4.2 and 7.0 ms (2.1x and
3.1x), 215 and 257 execs/s.  On a busier machine (load average 3 to 5 from other work) runs
gave up to 1.47x (``process``) and 1.64x (``bwrap``): an exec crosses five processes
(client, daemon, fork server, relay, command) where nsenter crosses three, and pays for
each wake-up that waits for a core.  The rest of the cost is the RPC, the runtime and the
client: a ``sim`` ExecSync, which starts no process, takes 0.4 ms, and a real exec costs
the daemon another 0.4 ms of CPU (its stdio, the request, four wake-ups).

:meth:`ExecChild.kill` reaches the command's whole tree: its session, and every descendant
found through /proc/<pid>/task/*/children while its parent still lives, even one that left
the session.  For SIGKILL the tree is frozen first, top down (SIGSTOP, and a wait until each
is stopped, so that no process forks or reaps behind the walk and no pid is reused under
it), then killed.  The relay is stopped meanwhile (through its pidfd), so the command's pid
stays its own: it is the relay's child, read while the relay's pidfd says it lives.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import marshal
import os
import select
import signal as _signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, final

import trio

from .._errors import FailedPrecondition, InvalidArgument
from .._models import WindowSize
from ._base import ExecSpec, SandboxProcess
from ._forkserver import INLINE_MAX, receive_fds

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
_STOP_WAIT: Final = 0.1  # seconds a kill waits for one process to stop


def namespaces_to_join(pid: int) -> int:
    """The CLONE_NEW* flags of ``pid``'s namespaces that are not the daemon's."""
    flags = 0
    for name, flag in NAMESPACES:
        try:
            theirs = os.stat(f"/proc/{pid}/ns/{name}")
        except FileNotFoundError:
            continue  # a namespace type this kernel does not have
        if (theirs.st_dev, theirs.st_ino) != _own_namespace(name):
            flags |= flag
    return flags


@functools.cache
def _own_namespace(name: str) -> tuple[int, int]:
    """The daemon's namespace ``name`` (it never changes its own)."""
    mine = os.stat(f"/proc/self/ns/{name}")
    return (mine.st_dev, mine.st_ino)


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
    """A command started in a sandbox (an :class:`ExecProcess`), through the fork server."""

    __slots__ = (
        "_channel", "_command_fd", "_relay", "_relay_fd", "pid", "returncode", "stderr",
        "stdin", "stdout",
    )  # fmt: skip

    def __init__(
        self, pid: int, relay: int, pidfds: Sequence[int], channel: socket.socket, stdio: _Stdio
    ) -> None:
        #: The command's host pid (0 when it could not be exec'ed).
        self.pid = pid
        #: Its return code once :meth:`wait` has returned, else None.
        self.returncode: int | None = None
        # The relay that waits for the command (the fork server's child), and pidfds of
        # the command and the relay (none when it could not be exec'ed).
        self._relay = relay
        self._command_fd, self._relay_fd = pidfds if pidfds else (-1, -1)
        # Where the fork server sends the relay's return code once it has reaped it.
        self._channel = channel
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
        if self.returncode is not None or self._relay_fd < 0:
            return
        with contextlib.suppress(ProcessLookupError):
            _signal.pidfd_send_signal(self._relay_fd, _signal.SIGSTOP)  # it cannot reap
        try:
            _wait_stopped(self._relay, time.monotonic() + _STOP_WAIT)
            # The relay's children read while the relay was alive (its pidfd says so):
            # then the command's pid is still the command's.
            mine = self.pid in children(self._relay) and not _ended(self._relay_fd)
            kill_tree(self.pid if mine else 0, self.pid, signum)
        finally:
            with contextlib.suppress(ProcessLookupError):
                _signal.pidfd_send_signal(self._relay_fd, _signal.SIGCONT)

    async def wait(self) -> int:
        """The command's return code (``-N``: signal N), once it has ended and been reaped.
        Should the fork server die first, the command is killed and this returns ``-9``."""
        await trio.lowlevel.checkpoint()
        if self.returncode is None:
            while True:
                data, fds = await _receive(self._channel)
                for fd in fds:
                    os.close(fd)
                if not data:  # the fork server died: nothing will reap or report it
                    if self._command_fd >= 0:
                        with contextlib.suppress(ProcessLookupError):
                            _signal.pidfd_send_signal(self._command_fd, _signal.SIGKILL)
                        kill_tree(0, self.pid, _signal.SIGKILL)
                    self.returncode = -_signal.SIGKILL
                    break
                if data[:1] == b"x":
                    self.returncode = int(data[1:])
                    break
            self._channel.close()
            for fd in (self._command_fd, self._relay_fd):
                if fd >= 0:
                    os.close(fd)
            self._command_fd = self._relay_fd = -1
        return self.returncode

    async def aclose(self) -> None:
        """Close the streams; the process is left alone."""
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.aclose()


def _ended(pidfd: int) -> bool:
    """Whether the process of ``pidfd`` has exited (its pidfd is readable)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


async def _receive(channel: socket.socket) -> tuple[bytes, list[int]]:
    """The next message on an exec's channel (empty at end of file), with its descriptors."""
    while True:
        try:
            data, fds = receive_fds(channel, 64, 2)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(channel)
        else:
            return data, fds


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

_SERVER: Final = Path(__file__).with_name("_forkserver.py")


@final
class ForkServer:
    """The daemon's fork server (see :mod:`._forkserver`): a ``python -I -S`` process,
    started by :func:`fork_server`, that forks every exec's relay and reaps it.  It dies
    with the daemon, and with the thread that started it (PR_SET_PDEATHSIG follows the
    thread): an event loop run in a thread that ends loses it, its running execs are
    killed, and the next exec starts a new one."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [
                sys.executable,
                "-I",
                "-S",
                str(_SERVER),
                str(os.getpid()),
                str(theirs.fileno()),
            ]
            #: The server's process (a child of the daemon).  Through /proc/self/exe: the
            #: daemon's interpreter even where its path is not searchable by the daemon.
            self.process = subprocess.Popen(
                argv, executable="/proc/self/exe", stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    async def send(self, request: bytes, fds: Sequence[int]) -> None:
        """Send one request (see :mod:`._forkserver`).  OSError when the server is gone."""
        memfd = -1
        if len(request) > INLINE_MAX:
            memfd = os.memfd_create("exec-request", os.MFD_CLOEXEC)
            os.write(memfd, request)  # a new memfd takes it whole
            request, fds = b"M", [memfd, *fds]
        try:
            while True:
                try:
                    socket.send_fds(self._control, [request], fds)
                    return
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._control)
        finally:
            if memfd >= 0:
                os.close(memfd)

    def close(self) -> None:
        """Close the server's socket, so that it exits (its running execs are killed), and
        reap it; SIGKILL if it has not exited within a second."""
        self._control.close()
        try:
            self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_server: ForkServer | None = None


def fork_server(*, restart: bool = False) -> ForkServer:
    """The daemon's fork server, started now if there is none or it has died (or if
    ``restart``)."""
    global _server
    if _server is None or restart or not _server.alive():
        if _server is not None:
            _server.close()
        _server = ForkServer()
    return _server


def _executables(command: Sequence[str], env: Mapping[str, str]) -> list[bytes]:
    """Where exec looks for ``command[0]`` (as :mod:`subprocess` does, in ``env``'s PATH)."""
    name = os.fsencode(command[0])
    if b"/" in name:
        return [name]
    return [os.path.join(os.fsencode(d), name) for d in os.get_exec_path(dict(env))]


def _request(
    spec: ExecSpec, namespaces: Sequence[tuple[int, int]], isolate: bool, seccomp: bytes | None
) -> bytes:
    return marshal.dumps(
        {
            "argv": [os.fsencode(a) for a in spec.command],
            "env": {os.fsencode(k): os.fsencode(v) for k, v in spec.env.items()},
            "executables": _executables(spec.command, spec.env),
            "cwd": os.fsencode(spec.cwd),
            "uid": spec.uid,
            "gid": spec.gid,
            "tty": spec.tty,
            "isolate": isolate,
            "namespaces": [flag for _, flag in namespaces],
            "seccomp": seccomp,
            "cgroups": [os.fsencode(p) for p in spec.cgroups],
        }
    )


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
    return await _start(spec, exec_id, (), -1, None)


async def exec_in_namespaces(
    spec: ExecSpec,
    exec_id: str,
    namespaces: Sequence[tuple[int, int]],
    root: int,
    seccomp: bytes | None = None,
) -> ExecChild:
    """Start ``spec`` inside ``namespaces`` (see :func:`open_namespaces`), chrooted to
    ``root`` (a descriptor of the root directory to run in), with no privilege (the
    ``bwrap`` sandboxer; see the module's theory), under the system-call filter
    ``seccomp`` (a BPF program, see :mod:`._seccomp`) when given."""
    return await _start(spec, exec_id, namespaces, root, seccomp)


async def _start(
    spec: ExecSpec,
    exec_id: str,
    namespaces: Sequence[tuple[int, int]],
    root: int,
    seccomp: bytes | None,
) -> ExecChild:
    """Have the fork server start ``spec`` (in the sandbox of ``root`` and ``namespaces``
    when ``root >= 0``) and wait until the command runs or cannot.  Whenever this raises,
    Cancelled included, nothing is left running."""
    where = f"cannot start exec {exec_id}"
    if not spec.command or not all(spec.command) or any("\0" in a for a in spec.command):
        raise FailedPrecondition(f"{where}: empty command or NUL")
    isolate = root >= 0
    try:
        request = _request(spec, namespaces, isolate, seccomp)
    except ValueError as exc:
        raise FailedPrecondition(f"{where}: {exc}") from exc
    channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        channel.setblocking(False)
        with _Stdio(spec) as stdio:
            fds = [theirs.fileno(), *stdio.child]
            if isolate:
                fds += [root, *(fd for fd, _ in namespaces)]
            try:
                await _send(request, fds)
            except OSError as exc:
                raise FailedPrecondition(f"{where}: the fork server is gone: {exc}") from exc
            finally:
                theirs.close()
            return await _started(spec, where, stdio, channel)
    except BaseException:
        channel.close()
        raise


async def _send(request: bytes, fds: Sequence[int]) -> None:
    """Send to the fork server, restarting it once if it cannot be reached."""
    try:
        await fork_server().send(request, fds)
    except OSError:
        await fork_server(restart=True).send(request, fds)


async def _started(spec: ExecSpec, where: str, stdio: _Stdio, channel: socket.socket) -> ExecChild:
    """Read the relay's reports until the command runs or cannot, and make the
    :class:`ExecChild`; FailedPrecondition, once the relay has been reaped, if it cannot
    run.  Cancelled: the command, if it started, is killed."""
    reports: dict[bytes, int] = {}
    ended = False
    try:
        with trio.move_on_after(EXEC_TIMEOUT) as late:
            while True:
                data, fds = await _receive(channel)
                kind = data[:1]
                if kind == b"t" and fds:
                    stdio.adopt_terminal(fds[0], spec.stdin)
                    continue
                if kind == b"p":
                    command, relay = (int(n) for n in data[1:].split())
                    return ExecChild(command, relay, fds, channel, stdio)
                for fd in fds:
                    os.close(fd)
                if not data or kind == b"x":
                    ended = True
                    break
                reports[kind] = int(data[1:])
                if kind == b"e":  # not found: 127 from wait()
                    return ExecChild(0, 0, (), channel, stdio)
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(_STOP_WAIT * 10):
            await _abandon(channel)
        raise
    if late.cancelled_caught:
        raise FailedPrecondition(f"{where}: the command did not start in {EXEC_TIMEOUT:g} s")
    problem = next((k for k in (b"f", b"g", b"s", b"c", b"u") if k in reports), None)
    if problem is None:
        status = data[1:].decode() if ended and data else "the fork server died"
        raise FailedPrecondition(f"{where}: its helper process ended ({status})")
    reason = os.strerror(reports[problem])
    if problem == b"c":
        raise FailedPrecondition(f"{where}: {reason}: {spec.cwd}")
    if problem == b"u":
        raise FailedPrecondition(
            f"{where}: cannot run as uid {spec.uid}, gid {spec.gid}: {reason}"
        )
    if problem == b"f":
        raise FailedPrecondition(f"{where}: fork: {reason}")
    if problem == b"g":
        raise FailedPrecondition(f"{where}: cannot join the sandbox's cgroup: {reason}")
    if reports[problem] == errno.ESRCH:
        reason = "the sandbox has ended"
    raise FailedPrecondition(f"{where}: cannot enter its namespaces: {reason}")


async def _abandon(channel: socket.socket) -> None:
    """Kill the command of an exec given up on before it ran, and wait for its relay's end."""
    while True:
        data, fds = await _receive(channel)
        if data[:1] == b"p" and len(fds) == 2:
            with contextlib.suppress(ProcessLookupError):
                _signal.pidfd_send_signal(fds[0], _signal.SIGKILL)
            kill_tree(0, int(data[1:].split()[0]), _signal.SIGKILL)
        for fd in fds:
            os.close(fd)
        if not data or data[:1] == b"x":
            return


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
