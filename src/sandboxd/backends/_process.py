"""The ``process`` backend: every sandbox is a real host process in a session of its own.

Theory of operation.  Start spawns the sandbox's init process with ``start_new_session=True``,
so it leads a new session and a new process group whose id is its pid; everything it forks
stays in that group unless it calls setsid/setpgid itself.  Signals go to the whole group
(``killpg``), cleanup SIGKILLs the group, and usage sums the group's members found in /proc.

Start is two-phase (see :mod:`._spawn`): the process is created held, its pid recorded by
the caller, and only then released to exec the command, so that no crash can leave a
running sandbox the daemon has no record of.

One watcher task per sandbox, in the nursery given to :meth:`ProcessBackend.start`, awaits the
init process's exit and reports it.  The daemon does not own the sandboxes' lives: cancelling
the watcher (the daemon shutting down) leaves the process running.

There is no namespace, rootfs or cgroup here: the process sees the host as the daemon does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import shutil
import signal as _signal
import stat
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import trio

from .._errors import FailedPrecondition, InvalidArgument
from .._models import Platform, SandboxSpec, check_sandbox_id
from ._base import EXIT_UNKNOWN, ExecSpec, ExitCallback, SpawnCallback
from ._exec import ExecChild, exec_on_host
from ._files import open_in_root
from ._platform import host_platform
from ._spawn import Child, Gate, kill_and_reap, kill_group, read_some

#: The PATH a sandbox gets when its env has none, as OCI runtimes set it.
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The init process of a sandbox with no command, like Kubernetes' pause container: it waits
# for a signal; SIGTERM or SIGINT end it with status 0, any other deadly signal kills it.
# -I -S keep the interpreter's start light (no site, no user environment).
#
# It blocks both signals and takes them with sigwait() instead of installing handlers and
# calling signal.pause(): Python runs a handler only between bytecodes, so a signal arriving
# after the handler is installed but just before pause() would be lost, and the process would
# never stop (seen under load).  A blocked signal stays pending until sigwait() takes it.
# Once the mask is set it writes one byte to a pipe and Start returns only then, so a Stop
# right after Start is always the clean exit 0, never a death by SIGTERM.
_PAUSE_SOURCE: Final = """\
import os, signal, sys
stop = {signal.SIGINT, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, stop)
fd = int(sys.argv[1])
os.write(fd, b"R")
os.close(fd)
signal.sigwait(stop)
os._exit(0)
"""
#: The interpreter that runs the pause process: the real one behind a virtual environment
#: (``-I -S`` needs nothing of the environment), which sandboxes can see more often than a
#: venv that may live under a directory they do not mount, such as /tmp.
PAUSE_INTERPRETER: Final = os.path.realpath(sys.executable)
#: The directory holding everything the pause interpreter needs (its standard library).
PAUSE_PREFIX: Final = os.path.realpath(sys.base_prefix)
#: How long Start waits for the pause process to say it is ready.
PAUSE_READY_TIMEOUT: Final = 30.0

_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
_NS_PER_S: Final = 1_000_000_000


@final
class ProcessBackend:
    """Sandboxes as host processes (sandboxer name ``"process"``).

    The init process runs ``options.command`` (or a pause process when it is ``None``) with
    exactly ``options.env`` as its environment, plus :data:`DEFAULT_PATH` as ``PATH`` when the
    env has none, in ``options.cwd`` (default ``/``), with stdin on /dev/null and stdout and
    stderr on pipes whose read ends the sandbox gives the runtime
    (:attr:`ProcessSandbox.output`; see :class:`OutputPipes`).  With ``log_dir`` the pipes
    are FIFOs in that directory (``<sandbox_id>.stdout``, ``.stderr``), so that a daemon
    restarted on the same directory reads them again when it adopts the sandbox.

    ``rootfs`` and ``netns_path`` cannot be honoured and are refused at Create;
    ``options.hostname`` and ``options.host_network`` are ignored (a sandbox always shares
    the host's hostname and network).
    """

    __slots__ = ("_log_dir",)

    def __init__(self, *, log_dir: str | os.PathLike[str] | None = None) -> None:
        self._log_dir = None if log_dir is None else os.fspath(log_dir)

    @property
    def name(self) -> str:
        return "process"

    def unavailable_reason(self) -> str | None:
        """Always ``None``: any Linux host can run processes."""
        return None

    def platform(self) -> Platform:
        """The host's platform."""
        return host_platform()

    def validate(self, spec: SandboxSpec) -> None:
        """Raise InvalidArgument naming the field when ``spec`` cannot run here.

        Checks that the executable is found (in the sandbox's PATH, relative to its cwd, as
        exec will look for it), that ``options.cwd`` is an absolute existing directory, that
        env keys and values can be passed to exec, and that no rootfs, netns_path or
        seccomp filter was asked for.  Only stats a few files: never blocks for long.
        Passing says nothing of Start: the executable may be gone by then.
        """
        refuse_resources(spec, "process")
        if spec.rootfs:
            raise InvalidArgument(
                "rootfs: the process backend runs sandboxes on the host's filesystem and "
                "cannot honour rootfs mounts; use the bwrap sandboxer"
            )
        if spec.netns_path is not None:
            raise InvalidArgument(
                "netns_path: the process backend runs sandboxes in the host's network "
                "namespace and cannot join another; use the bwrap sandboxer"
            )
        if spec.options.seccomp is not None:
            raise InvalidArgument(
                "options.seccomp: the process backend cannot filter a sandbox's system calls "
                "(it runs them as host processes); use the bwrap sandboxer"
            )
        if self._log_dir is not None:
            check_sandbox_id(spec.sandbox_id)  # it names a file
        options = spec.options
        check_env(options.env)
        cwd = _check_cwd(options.cwd)
        if options.command is not None:
            check_command(options.command, options.env.get("PATH", DEFAULT_PATH), cwd)

    async def start(
        self,
        spec: SandboxSpec,
        nursery: trio.Nursery,
        on_exit: ExitCallback,
        on_spawned: SpawnCallback | None = None,
    ) -> ProcessSandbox:
        """Spawn the sandbox's init process held at its gate, await ``on_spawned(pid,
        {"start_time": ...})``, release it, and watch it in ``nursery``.

        ``on_exit(status)`` is called exactly once, from the watcher task, when the init
        process has ended: its exit code, or 128+N after death by signal N.  If ``nursery``
        is cancelled first, the watcher ends without calling it and without touching the
        process, which keeps running.

        Raises FailedPrecondition (``cannot start sandbox <id>: <reason>: <path>``) when the
        process cannot be spawned or its command cannot be exec'ed, and whatever
        ``on_spawned`` raises; nothing is left running then.  Cancellation: if this raises
        Cancelled, nothing was started (a held process is killed).  Once the process is
        released, Start completes and the cancellation is delivered at the caller's next
        checkpoint.
        """
        options = spec.options
        cwd = options.cwd or "/"
        env = dict(options.env)
        env.setdefault("PATH", DEFAULT_PATH)
        ready = ReadyPipe() if options.command is None else None
        argv = ready.pause_argv() if ready is not None else list(options.command or ())
        with Gate() as gate, ready or contextlib.nullcontext():
            with OutputPipes(self._log_dir, spec.sandbox_id) as pipes:
                process = launch(
                    spec.sandbox_id,
                    gate,
                    argv,
                    env=env,
                    cwd=cwd,
                    output=pipes.child,
                    pass_fds=ready.pass_fds if ready is not None else (),
                )
                pipes.spawned()
                output = pipes.take()
            try:
                identity = {"start_time": start_time(process.pid)}
                await gate.open(process, spec.sandbox_id, argv[0], cwd, identity, on_spawned)
                if ready is not None:
                    await ready.wait(process, spec.sandbox_id)
                watch(nursery, process, on_exit, spec.sandbox_id)
            except BaseException:
                for fd in output:
                    os.close(fd)
                remove_output(self._log_dir, spec.sandbox_id)
                raise
        return ProcessSandbox(
            process.pid,
            shlex.join(argv),
            cwd,
            process,
            started=identity["start_time"],
            output=output,
            outputs=(self._log_dir, spec.sandbox_id),
        )

    def discard(self, pid: int, identity: Mapping[str, Any]) -> None:
        """SIGKILL the process group of a held (or just released) ``pid``, if it is still
        the process spawned (see :meth:`Backend.discard`)."""
        if same_process(pid, identity.get("start_time")):
            kill_group(pid, _signal.SIGKILL)

    def adopt(
        self,
        spec: SandboxSpec,
        pid: int,
        identity: Mapping[str, Any],
        nursery: trio.Nursery,
        on_exit: ExitCallback,
    ) -> ProcessSandbox | None:
        """The sandbox whose init is ``pid``, if that process still runs with the start
        time recorded (see :meth:`Backend.adopt`)."""
        if not same_process(pid, identity.get("start_time")):
            return None
        if not watch_pid(nursery, pid, on_exit, spec.sandbox_id):
            return None
        command = shlex.join(spec.options.command or ("<pause>",))
        return ProcessSandbox(
            pid,
            command,
            spec.options.cwd or "/",
            started=identity["start_time"],
            output=reopen_output(self._log_dir, spec.sandbox_id),
            outputs=(self._log_dir, spec.sandbox_id),
        )


def same_process(pid: object, recorded: object) -> bool:
    """Whether ``pid`` still runs and is the process whose start time was recorded as
    ``recorded`` (a reused pid has another): what lets a record name a process."""
    return (
        isinstance(pid, int)
        and pid > 0
        and isinstance(recorded, int)
        and start_time(pid) == recorded
    )


class ReadyPipe:
    """The pipe on which a pause process says it is ready for its stop signals.

    A context manager: both ends are closed on exit.  Spawn the process with
    :meth:`pause_argv` and :attr:`pass_fds`, then :meth:`wait`.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.write_fd,)

    def pause_argv(self) -> list[str]:
        return [PAUSE_INTERPRETER, "-I", "-S", "-c", _PAUSE_SOURCE, str(self.write_fd)]

    def close_write_end(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    async def wait(self, process: Child, sandbox_id: str) -> None:
        self.close_write_end()
        await _await_ready(self.read_fd, process, sandbox_id)

    def __enter__(self) -> ReadyPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_write_end()
        os.close(self.read_fd)


def refuse_resources(spec: SandboxSpec, backend: str) -> None:
    """FailedPrecondition for ``options.resources`` given to a backend with no cgroups of its
    own: limits asked for are never silently dropped (a :class:`CgroupBackend` applies
    them, and checks the inner backend with none)."""
    if spec.options.resources is not None:
        raise FailedPrecondition(
            f"options.resources: this {backend} sandboxer applies no limits: it was set up "
            "without cgroups (sandboxd serve and a default Controller use them where they can)"
        )


def launch(
    sandbox_id: str,
    gate: Gate,
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    output: tuple[int, int],
    pass_fds: tuple[int, ...] = (),
) -> Child:
    """Spawn ``argv`` held at ``gate`` (:meth:`Gate.spawn`), stdout and stderr on
    ``output``.  A failure to spawn is FailedPrecondition naming what failed; nothing runs
    then."""
    try:
        return gate.spawn(argv, env=env, cwd=cwd, output=output, pass_fds=pass_fds)
    except (OSError, ValueError, TypeError) as exc:
        raise _start_error(sandbox_id, exc, argv[0]) from exc


#: The buffer asked for each output pipe: what a sandbox may write while nobody reads (the
#: daemon restarting) before its writes block.  The kernel may give less to a user over
#: its quota of pipe memory.
OUTPUT_PIPE_SIZE: Final = 1 << 20
_OUTPUT_NAMES: Final = ("stdout", "stderr")


@final
class OutputPipes:
    """The pipes a sandbox's init writes its stdout and stderr to.

    With a directory they are FIFOs, ``<dir>/<sandbox_id>.stdout`` and ``.stderr``, which
    :func:`reopen_output` finds again after a restart; without one, anonymous pipes.  Either
    way the process gets each opened for reading *and* writing, so that it holds a reader
    itself: it never gets SIGPIPE while the daemon is away, only blocks once the buffer is
    full.  The daemon keeps non-blocking read ends (:meth:`take`).  A context manager: the
    ends not taken are closed on exit.
    """

    def __init__(self, directory: str | None, sandbox_id: str) -> None:
        self._where = (directory, sandbox_id)
        self.child: tuple[int, int] = (-1, -1)
        self._read: tuple[int, int] = (-1, -1)
        ends = []
        try:
            for name in _OUTPUT_NAMES:
                ends.append(_output_pipe(directory, f"{sandbox_id}.{name}"))
        except OSError as exc:
            for pair in ends:
                for fd in pair:
                    os.close(fd)
            raise _start_error(sandbox_id, exc, "its output pipes") from exc
        self._read = (ends[0][0], ends[1][0])
        self.child = (ends[0][1], ends[1][1])

    def spawned(self) -> None:
        """The process has its copies: the daemon's read-write ends go, so that the read
        ends see the end of file once every process of the sandbox has gone."""
        for fd in self.child:
            if fd >= 0:
                os.close(fd)
        self.child = (-1, -1)

    @property
    def stderr(self) -> int:
        """The read end of stderr, until taken."""
        return self._read[1]

    def take(self) -> tuple[int, int]:
        """The read ends (non-blocking), now the caller's to close."""
        taken, self._read = self._read, (-1, -1)
        return taken

    def __enter__(self) -> OutputPipes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.spawned()
        taken = self._read[0] < 0
        for fd in self.take():
            if fd >= 0:
                os.close(fd)
        if not taken:  # the start failed: nothing will read them
            remove_output(*self._where)


def _output_pipe(directory: str | None, name: str) -> tuple[int, int]:
    """``(read end, read-write end)`` of a new pipe (a FIFO ``<directory>/<name>``)."""
    if directory is None:
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            both = os.open(f"/proc/self/fd/{write}", os.O_RDWR | os.O_CLOEXEC)
        finally:
            os.close(write)
    else:
        path = os.path.join(directory, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            os.mkfifo(path, 0o600)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None
        both = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        read = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(read, False)
    with contextlib.suppress(OSError):  # EPERM past the user's pipe quota: keep the default
        fcntl.fcntl(both, fcntl.F_SETPIPE_SZ, OUTPUT_PIPE_SIZE)
    return read, both


def reopen_output(directory: str | None, sandbox_id: str) -> tuple[int, int] | None:
    """Non-blocking read ends of the FIFOs a sandbox started by an earlier run of the
    daemon writes to, or None (no directory, or they are gone)."""
    if directory is None:
        return None
    ends: list[int] = []
    try:
        for name in _OUTPUT_NAMES:
            path = os.path.join(directory, f"{sandbox_id}.{name}")
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            ends.append(fd)
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a FIFO", path)
    except OSError:
        for fd in ends:
            os.close(fd)
        return None
    return ends[0], ends[1]


def remove_output(directory: str | None, sandbox_id: str) -> None:
    """Remove a sandbox's FIFOs (once it has ended: nothing will reopen them)."""
    if directory is not None:
        for name in _OUTPUT_NAMES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, f"{sandbox_id}.{name}"))


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot; None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def watch_pid(nursery: trio.Nursery, pid: int, on_exit: ExitCallback, sandbox_id: str) -> bool:
    """Report the end of ``pid`` -- not our child, so its status is unknown -- as
    :data:`EXIT_UNKNOWN`, from a task in ``nursery`` waiting on a pidfd.  False if ``pid``
    is already gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    nursery.start_soon(_watch_pidfd, pidfd, on_exit, name=f"sandboxd: watch sandbox {sandbox_id}")
    return True


async def _watch_pidfd(pidfd: int, on_exit: ExitCallback) -> None:
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    on_exit(EXIT_UNKNOWN)


def watch(nursery: trio.Nursery, process: Child, on_exit: ExitCallback, sandbox_id: str) -> None:
    """Report ``process``'s exit to ``on_exit`` from a task in ``nursery``."""
    try:
        nursery.start_soon(_watch, process, on_exit, name=f"sandboxd: watch sandbox {sandbox_id}")
    except BaseException:
        # A closed nursery: nothing may stay running without a watcher.
        kill_group(process.pid, _signal.SIGKILL)
        raise


async def _await_ready(fd: int, process: Child, sandbox_id: str) -> None:
    """Wait until the pause process wrote its byte (or died: end of file, its exit is
    reported as usual).  If it stays silent or the wait is cancelled, kill it."""
    try:
        with trio.fail_after(PAUSE_READY_TIMEOUT):
            await read_some(fd, 1)
    except trio.TooSlowError:
        await kill_and_reap(process)
        raise FailedPrecondition(
            f"cannot start sandbox {sandbox_id}: the pause process did not get ready "
            f"within {PAUSE_READY_TIMEOUT:g} s"
        ) from None
    except BaseException:
        await kill_and_reap(process)
        raise


def _start_error(sandbox_id: str, exc: Exception, argv0: str) -> FailedPrecondition:
    if isinstance(exc, OSError):
        # A failed fork names nothing.  (A failed chdir or exec comes later, from Gate.open.)
        what = exc.filename if exc.filename is not None else argv0
        reason = exc.strerror or str(exc)
        return FailedPrecondition(f"cannot start sandbox {sandbox_id}: {reason}: {what}")
    # A spec that skipped validate (NUL in an argument, a bad env key...).
    return FailedPrecondition(f"cannot start sandbox {sandbox_id}: {exc}")


async def _watch(process: Child, on_exit: ExitCallback) -> None:
    # Child.wait() waits for readability of a pidfd opened right after the fork, and only
    # then reaps: no thread, no SIGCHLD handler.  Cancelling it neither signals nor reaps.
    returncode = await process.wait()
    on_exit(returncode if returncode >= 0 else 128 - returncode)


@final
class ProcessSandbox:
    """A started sandbox of the process backend: a process group led by :attr:`pid`."""

    __slots__ = (
        "_command",
        "_cwd",
        "_killed",
        "_outputs",
        "_pid",
        "_process",
        "_start_time",
        "output",
    )

    def __init__(
        self,
        pid: int,
        command: str,
        cwd: str,
        process: Child | None = None,
        *,
        started: int | None,
        output: tuple[int, int] | None,
        outputs: tuple[str | None, str] = (None, ""),
    ) -> None:
        self._pid = pid
        # Our child (None when adopted after a restart): kept so it can still be reaped.
        self._process = process
        # Its start time, as read when it was spawned or checked at adoption.
        self._start_time = started
        self._command = command
        self._cwd = cwd
        #: The read ends (non-blocking) of the init's stdout and stderr, for the runtime to
        #: read and close; None when they could not be found again after a restart.
        self.output = output
        # Where its FIFOs are (the directory, if any, and the sandbox id): removed at cleanup.
        self._outputs = outputs
        self._killed = False

    @property
    def pid(self) -> int:
        """The init process's pid, which is also the sandbox's process group id."""
        return self._pid

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every process of the group; nothing once the group is gone or
        after :meth:`cleanup`.  An invalid signal number is InvalidArgument."""
        if not self._killed:
            kill_group(self.pid, signum)

    def cleanup(self) -> None:
        """SIGKILL whatever is left of the process group, so nothing the sandbox forked
        survives it, and remove its output FIFOs (not :attr:`output`: the runtime closes
        that).  Later calls, and later signals, do nothing."""
        if not self._killed:
            self._killed = True
            kill_group(self.pid, _signal.SIGKILL)
            remove_output(*self._outputs)

    def info(self) -> Mapping[str, str]:
        """``command`` (shell-quoted argv), ``cwd`` and ``pgid``."""
        return {"command": self._command, "cwd": self._cwd, "pgid": str(self.pid)}

    @property
    def usage_blocks(self) -> bool:
        """True: :meth:`usage` scans /proc (it is safe to call from a worker thread)."""
        return True

    def identity(self) -> Mapping[str, Any]:
        """The init's start time (clock ticks after boot, /proc/<pid>/stat field 22)."""
        return {"start_time": self._start_time}

    def usage(self) -> tuple[int, int, int]:
        """``(cpu_ns, memory_rss_bytes, pids)`` summed over the live members of the process
        group (not zombies, nor children that left the group).  Reads /proc: a scan of the
        host's processes, with no await."""
        return _group_usage(self.pid)

    async def exec(self, spec: ExecSpec) -> ExecChild:
        """Run ``spec`` as a host process in a session of its own (see :mod:`._exec`): no
        isolation, and the daemon's user unless the daemon is root and ``spec`` names
        another."""
        return await exec_on_host(spec, spec.exec_id)

    def open_file(self, path: str, *, write: bool, mode: int | None = None) -> int:
        """Open ``path`` on the host, a relative one from the sandbox's cwd: a process
        sandbox isolates nothing, so its root is the host's ``/`` (only /proc magic links
        are refused, and only regular files opened; see :mod:`._files`)."""
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return open_in_root(root, os.path.join(self._cwd, path), write=write, mode=mode)
        finally:
            os.close(root)


def _group_usage(pgid: int) -> tuple[int, int, int]:
    return proc_usage(lambda pid, fields: int(fields[2]) == pgid)


def proc_usage(select: Callable[[int, list[bytes]], bool]) -> tuple[int, int, int]:
    """``(cpu_ns, rss_bytes, count)`` summed over the live processes ``select`` picks.

    ``select(pid, fields)`` sees the fields of /proc/<pid>/stat after the command name
    (``fields[0]`` is field 3 of proc(5), the state; ``fields[2]`` the process group).
    Zombies are never counted: they hold nothing but their pid.
    """
    ticks = pages = count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
        except OSError:  # gone since listdir
            continue
        try:
            stat = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split
        # after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 22 or fields[0] in (b"Z", b"X") or not select(int(name), fields):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        pages += int(fields[21])  # rss
        count += 1
    return ticks * _NS_PER_S // _CLOCK_TICKS, pages * _PAGE_SIZE, count


def check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidArgument(
                f"options.env: key {key!r}: must be non-empty text without '=' or NUL"
            )
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgument(f"options.env[{key!r}]: must be text without NUL")


def _check_cwd(cwd: str | None) -> str:
    if cwd is None:
        return "/"
    if not isinstance(cwd, str) or "\0" in cwd or not os.path.isabs(cwd):
        raise InvalidArgument(f"options.cwd: {cwd!r} is not an absolute path")
    if not os.path.isdir(cwd):
        raise InvalidArgument(f"options.cwd: {cwd!r} is not an existing directory")
    return cwd


def check_command(command: object, path: str, cwd: str) -> None:
    if not isinstance(command, tuple) or not command:
        raise InvalidArgument("options.command: must be a non-empty list of text")
    for index, arg in enumerate(command):
        if not isinstance(arg, str) or "\0" in arg:
            raise InvalidArgument(f"options.command[{index}]: must be text without NUL")
    argv0: str = command[0]
    if not argv0:
        raise InvalidArgument("options.command[0]: must not be empty")
    # Look where exec will look: a name with a '/' relative to the sandbox's cwd, any other
    # in the sandbox's PATH, whose relative entries are relative to that cwd too.
    if "/" in argv0:
        if shutil.which(os.path.join(cwd, argv0)) is None:
            raise InvalidArgument(
                f"options.command: executable {argv0!r} does not exist or is not executable"
            )
    else:
        search = os.pathsep.join(os.path.join(cwd, entry) for entry in path.split(os.pathsep))
        if shutil.which(argv0, path=search) is None:
            raise InvalidArgument(
                f"options.command: executable {argv0!r} not found in PATH ({path}) "
                "or not executable"
            )
