"""The exec fork server: a small process that starts every exec of a daemon.

Run as ``python -I -S _forkserver.py DAEMON_PID FD`` by :mod:`._exec`.  It imports nothing
of sandboxd, so that the process stays a few MB: forking it costs a fraction of forking the
daemon.  FD is its end of a SOCK_SEQPACKET socket pair whose other end only the daemon
holds.  Each message on it is one exec request: a marshal'ed dict (inline, or in a memfd
when large) and, by SCM_RIGHTS, the exec's channel (a SOCK_SEQPACKET socket to the
daemon), its stdin, stdout and stderr, and for a sandbox its root directory and namespaces.
A sandbox's request carries its system-call filter too, a BPF program the relay installs
just before it starts the command.

Each request is carried out by a *relay*, a child the server forked ahead of time (the next
one when a relay writes a byte on the server's pipe to say its command ended, or when a
request finds none).  The relay does what the module docstring of :mod:`._exec` describes
(enter, give up privilege, start the command, wait for it) and reports on the channel:
``p<command> <relay>`` with pidfds of both once the command runs, or why it could not
(``s``, ``c``, ``u``, ``e`` and an errno), then ``x<returncode>`` once it has reaped the
command; it exits as the command exited.  The server reaps the relays; for one that died
before its ``x`` it sends ``x`` with the relay's own code: the daemon never reaps an exec
itself.  A relay that finds the channel closed when it reports (the daemon gave up on the
exec) kills its command.

The server dies with the daemon: PR_SET_PDEATHSIG, and end of file on descriptor 3.  It is
not dumpable, ignores the terminal's signals, and holds nothing a sandbox's process gets:
a relay closes every descriptor but its own before it enters the sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import marshal
import os
import select
import signal
import socket
import struct
import sys
import termios
from collections.abc import Iterable, Sequence
from typing import Any, Final, NoReturn

#: The request's descriptors, in this order, before the namespaces (and root, if any).
CHANNEL, STDIN, STDOUT, STDERR = range(4)
#: The largest request sent inline; a larger one goes in a memfd (the first descriptor).
INLINE_MAX: Final = 1 << 16
MAX_FDS: Final = 16

_CLONE_NEWUSER: Final = 0x10000000
_MAX_FD: Final = os.sysconf("SC_OPEN_MAX")
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_DUMPABLE: Final = 4
_PR_CAPBSET_DROP: Final = 24
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_SET_SECCOMP: Final = 22
_SECCOMP_MODE_FILTER: Final = 2
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_CAPABILITY_VERSION_3: Final = 0x20080522
_TIOCGPTN: Final = 0x80045430
_TIOCSPTLCK: Final = 0x40045431
_TIOCGPTPEER: Final = 0x5441
# Every signal a process can catch or ignore, for the command to get at its default.
_ALL_SIGNALS: Final = tuple(
    int(n) for n in signal.valid_signals() if n not in (signal.SIGKILL, signal.SIGSTOP)
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


class _SockFprog(ctypes.Structure):
    """struct sock_fprog: a BPF program's length (in instructions) and address."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


# Declared, so that a call converts plain ints (a relay makes some forty of them).
_libc.prctl.argtypes = (ctypes.c_int, *(ctypes.c_ulong,) * 4)
_libc.prctl.restype = ctypes.c_int


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> int:
    return int(_libc.prctl(option, arg, arg3, 0, 0))


def _cap_last() -> int:
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


_CAP_LAST: Final = _cap_last()


# -- the relay (a forked child of the server) ----------------------------------------------------


class _Relay:
    """One request, in the relay: the fields of the request and the descriptors it came with."""

    def __init__(self, request: dict[str, Any], fds: Sequence[int], done: int) -> None:
        #: Where to tell the server, with one byte, that the command has ended.
        self.done = done
        self.argv: list[bytes] = request["argv"]
        self.env: dict[bytes, bytes] = request["env"]
        self.executables: list[bytes] = request["executables"]
        self.cwd: bytes = request["cwd"]
        self.uid: int | None = request["uid"]
        self.gid: int | None = request["gid"]
        self.tty: bool = request["tty"]
        #: In a sandbox: enter it and give up every privilege; else run as the daemon does.
        self.isolate: bool = request["isolate"]
        #: The sandbox's cgroup.procs files, joined before anything else.
        self.cgroups: list[bytes] = request.get("cgroups", [])
        self.channel = fds[CHANNEL]
        self.stdio = fds[STDIN : STDERR + 1]
        rest = fds[STDERR + 1 :]
        self.root = rest[0] if self.isolate else -1
        self.namespaces = list(zip(rest[1:], request["namespaces"], strict=True))
        #: The sandbox's system-call filter (a BPF program), or None.
        self.seccomp: bytes | None = request.get("seccomp")

    def fail(self, kind: bytes, err: int) -> NoReturn:
        with contextlib.suppress(OSError):
            os.write(self.channel, b"%s%d" % (kind, err))
        os._exit(126)

    def run(self) -> NoReturn:
        """Enter, give up privilege, start the command, and exit as it exits."""
        os.setsid()
        self.join_cgroups()
        for target, fd in enumerate(self.stdio):
            os.dup2(fd, target)
        close_all_but([self.channel, self.done, self.root, *(fd for fd, _ in self.namespaces)])
        if self.isolate:
            self.enter()
        self.set_user()
        if self.isolate:
            header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
            if _libc.capset(ctypes.byref(header), data) != 0:
                self.fail(b"s", ctypes.get_errno())
        try:
            os.chdir(self.cwd)
        except OSError as exc:
            self.fail(b"c", exc.errno or errno.ENOENT)
        if self.tty and self.isolate:
            self.sandbox_terminal()
        if self.seccomp:
            self.filter_calls(self.seccomp)
        if self.tty:
            try:
                command = os.fork()
            except OSError as exc:
                self.fork_failed(exc.errno or errno.EAGAIN)
            if command == 0:
                os.setsid()
                self.execute()
        else:
            command = self.spawn()
        try:
            pidfds = [os.pidfd_open(command), os.pidfd_open(os.getpid())]
            _send_fds(self.channel, b"p%d %d" % (command, os.getpid()), pidfds)
        except OSError:  # the daemon gave up on this exec
            with contextlib.suppress(OSError):
                os.killpg(command, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(command, signal.SIGKILL)
        os.closerange(0, 3)  # the command's output ends when the command's tree closes it
        _, status = os.waitpid(command, 0)
        code = os.waitstatus_to_exitcode(status)
        # Sent here, not by the server once it has reaped us: one wake-up less.  The server
        # hears of it first, to fork the next relay meanwhile.
        with contextlib.suppress(OSError):
            os.write(self.done, b".")
        with contextlib.suppress(OSError):
            os.write(self.channel, b"x%d" % code)
        if code < 0:  # die of the same signal
            if -code not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {-code})
        os._exit(code & 0xFF)

    def join_cgroups(self) -> None:
        """Move the relay into the sandbox's cgroup (0 names the writer): the command and
        everything it forks are born there."""
        for path in self.cgroups:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            except OSError as exc:
                self.fail(b"g", exc.errno or errno.EPERM)

    def enter(self) -> None:
        """setns into each namespace, chroot, empty the bounding and ambient sets,
        no_new_privs."""
        for fd, flag in self.namespaces:
            if _libc.setns(fd, flag) != 0:
                self.fail(b"s", ctypes.get_errno())
            os.close(fd)
        try:
            os.fchdir(self.root)
            os.chroot(".")
        except OSError as exc:
            self.fail(b"s", exc.errno or errno.EPERM)
        os.close(self.root)
        for cap in range(_CAP_LAST + 1):
            if _prctl(_PR_CAPBSET_DROP, cap) != 0:
                self.fail(b"s", ctypes.get_errno())
        if (
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL) != 0
            or _prctl(_PR_SET_NO_NEW_PRIVS, 1) != 0
        ):
            self.fail(b"s", ctypes.get_errno())

    def filter_calls(self, program: bytes) -> None:
        """Install the BPF ``program`` as this process's seccomp filter (no_new_privs is
        set): last, so that it governs the command and what the relay does after it, not
        how the relay enters the sandbox."""
        code = ctypes.create_string_buffer(program, len(program))
        fprog = _SockFprog(len(program) // 8, ctypes.addressof(code))
        if _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog)) != 0:
            self.fail(b"s", ctypes.get_errno())

    def set_user(self) -> None:
        try:
            if self.gid is not None:
                os.setgroups([])
                os.setgid(self.gid)
            if self.uid is not None:
                os.setuid(self.uid)
        except OSError as exc:
            self.fail(b"u", exc.errno or errno.EPERM)

    def sandbox_terminal(self) -> None:
        """With no privilege left: open a terminal from the sandbox's own /dev/ptmx (so that
        ``tty`` names it inside), of the size of the one given, put it on 0, 1 and 2, and
        send its master to the daemon.  Keeps the daemon's terminal when the sandbox has no
        usable /dev/ptmx."""
        try:
            master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4)  # it is a pty master
            fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
            slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
            window = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, window)
            _send_fds(self.channel, b"t", [master])
        except OSError:
            return
        finally:
            os.close(master)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.close(slave)

    def execute(self) -> NoReturn:
        """In the tty's forked command: the controlling terminal, default signals, exec."""
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        for signum in _ALL_SIGNALS:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        failure = 0
        for path in self.executables:
            try:
                os.execve(path, self.argv, self.env)
            except OSError as exc:
                # As subprocess reports it: the first error that is not "not here".
                if not failure or failure in (errno.ENOENT, errno.ENOTDIR):
                    failure = exc.errno or errno.ENOENT
        self.exec_failed(failure)

    def spawn(self) -> int:
        """posix_spawn the command in a session of its own (vfork: no copy of the page
        tables)."""
        failure = 0
        for path in self.executables:
            if not os.access(path, os.X_OK):  # cheaper than a spawn that fails
                err = errno.EACCES if os.path.exists(path) else errno.ENOENT
            else:
                try:
                    return os.posix_spawn(
                        path, self.argv, self.env,
                        setsid=True, setsigmask=(), setsigdef=_ALL_SIGNALS,
                    )  # fmt: skip
                except OSError as exc:
                    err = exc.errno or errno.ENOENT
                    if err in (errno.ENOMEM, errno.EAGAIN):  # the fork, not the exec
                        self.fork_failed(err)
            # As subprocess reports it: the first error that is not "not here".
            if not failure or failure in (errno.ENOENT, errno.ENOTDIR):
                failure = err
        self.exec_failed(failure)

    def fork_failed(self, err: int) -> NoReturn:
        """The command could not be forked.  In a sandbox, ENOMEM is the kernel's answer to a
        fork into a pid namespace whose init has exited: the sandbox has ended."""
        if self.isolate and err == errno.ENOMEM:
            self.fail(b"s", errno.ESRCH)
        self.fail(b"f", err)

    def exec_failed(self, err: int) -> NoReturn:
        with contextlib.suppress(OSError):
            os.write(2, b"sandboxd: %s: %s\n" % (self.argv[0], os.strerror(err).encode()))
        with contextlib.suppress(OSError):
            os.write(self.channel, b"e%d" % err)
        os._exit(127 if err in (errno.ENOENT, errno.ENOTDIR) else 126)


def close_all_but(keep: Iterable[int]) -> None:
    """Close every descriptor from 3 up but those of ``keep`` (negative ones are none)."""
    low = 3
    for fd in sorted(set(keep)):
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, _MAX_FD)


def receive_fds(sock: socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    """One message and its descriptors, close-on-exec (socket.recv_fds drops its flags)."""
    data, ancillary, _, _ = sock.recvmsg(
        size, socket.CMSG_SPACE(max_fds * 4), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += struct.unpack(f"{usable // 4}i", payload[:usable])
    return data, fds


def _send_fds(fd: int, data: bytes, fds: list[int]) -> None:
    sock = socket.socket(fileno=fd)
    try:
        socket.send_fds(sock, [data], fds)
    finally:
        sock.detach()  # the descriptor stays open


# -- the server ----------------------------------------------------------------------------------


def _request(data: bytes, fds: list[int]) -> tuple[dict[str, Any], list[int]]:
    """A request's fields and descriptors, from a message of the daemon."""
    if data == b"M":  # in a memfd
        memfd = fds.pop(0)
        try:
            data = os.pread(memfd, os.fstat(memfd).st_size, 0)
        finally:
            os.close(memfd)
    request: dict[str, Any] = marshal.loads(data)
    return request, fds


def _spare(sock: int, server: int, done: int) -> NoReturn:
    """A relay forked ahead of its request (off the request's path): wait for it on
    ``sock`` and carry it out; exit at end of file."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server:
        os._exit(126)
    data, fds = receive_fds(socket.socket(fileno=sock), INLINE_MAX + 1, MAX_FDS)
    if not data:
        os._exit(0)
    request, fds = _request(data, fds)
    _Relay(request, fds, done).run()


class _Spare:
    """A relay forked and waiting for a request, as the server sees it."""

    def __init__(self, server: int, done: int) -> None:
        ours, theirs = (
            s.detach() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        )
        try:
            self.pid = os.fork()
        except BaseException:
            os.close(ours)
            os.close(theirs)
            raise
        if self.pid == 0:
            try:
                # Nothing of the server's: its socket, other execs' channels.
                close_all_but([theirs, done])
                _spare(theirs, server, done)
            finally:
                os._exit(126)
        os.close(theirs)
        self.sock = ours
        self.pidfd = os.pidfd_open(self.pid)


def serve(control: socket.socket) -> None:
    """Serve requests on ``control`` until its end of file, each carried out by a spare
    relay; reap the relays meanwhile.  The next spare is forked when a relay says its
    command has ended (while the daemon answers for it, not while a relay works), or at
    once when a request finds none."""
    me = os.getpid()
    poller = select.poll()
    poller.register(control, select.POLLIN)
    done, done_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    poller.register(done, select.POLLIN)
    relays: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, channel or -1 for the spare)
    spare: _Spare | None = None

    def fork_spare() -> _Spare | None:
        try:
            new = _Spare(me, done_w)
        except OSError:
            return None  # the request says why
        relays[new.pidfd] = (new.pid, -1)
        poller.register(new.pidfd, select.POLLIN)
        return new

    spare = fork_spare()
    while True:
        for fd, _ in poller.poll():
            if fd == done:
                os.read(done, 4096)
                if spare is None:
                    spare = fork_spare()
                continue
            if fd != control.fileno():
                pid, channel = relays.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                if spare is not None and spare.pidfd == fd:  # it died waiting
                    os.close(spare.sock)
                    spare = None
                _, status = os.waitpid(pid, 0)
                if channel >= 0:
                    # Its command's exit came from the relay; this is for a relay that failed.
                    with contextlib.suppress(OSError):
                        os.write(channel, b"x%d" % os.waitstatus_to_exitcode(status))
                    os.close(channel)
                continue
            data, fds = receive_fds(control, INLINE_MAX + 1, MAX_FDS)
            if not data:
                return
            channel = fds[CHANNEL + (data == b"M")]
            if spare is None:
                spare = fork_spare()
            try:
                if spare is None:
                    raise OSError(errno.EAGAIN, "no spare relay")
                _send_fds(spare.sock, data, fds)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.write(channel, b"f%d" % (exc.errno or errno.EAGAIN))
                os.close(channel)
            else:
                relays[spare.pidfd] = (spare.pid, channel)
            for fd in fds:
                if fd != channel:
                    os.close(fd)
            if spare is not None:
                os.close(spare.sock)
                spare = None


def main(daemon: int, control_fd: int) -> None:
    """Serve the daemon ``daemon`` on descriptor ``control_fd``."""
    _prctl(_PR_SET_DUMPABLE, 0)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != daemon:  # it died before the line above
        return
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    with contextlib.suppress(KeyboardInterrupt):
        serve(control)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
    sys.exit(0)
