"""The small interface between a sandbox's actor and whatever really runs the sandbox.

A backend knows nothing of RPC or of the lifecycle table: it validates specs, starts a
sandbox's init process, signals it, measures it, and reports its exit through a callback.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from .._models import Platform, SandboxSpec, WindowSize

#: Called once when the sandbox's init process has ended, with its exit status (the exit code,
#: or 128+N for death by signal N).  Called from a task of the backend, or synchronously from
#: inside ``signal``/``cleanup`` (the sim backend does); it must neither block nor raise.
ExitCallback = Callable[[int], None]

#: Called once by :meth:`Backend.start` when the sandbox's process exists but is held before
#: it runs any code of the sandbox's, with its pid and what tells it apart from a later process
#: with that pid (``{"start_time": ...}``, see :meth:`Backend.discard`).  The process is
#: released when the callback returns, and never if it raises: it is then killed, and the
#: start raises the callback's error.  The caller makes the pid durable here, so that a crash
#: can never leave a released process nobody knows of.
SpawnCallback = Callable[[int, Mapping[str, Any]], Awaitable[None]]

#: The exit status reported when the real one cannot be known (as containerd reports it).
EXIT_UNKNOWN = 255


@attrs.frozen(slots=True)
class ExecSpec:
    """One command to run in a running sandbox, as the runtime resolved it from an
    ``ExecRequest``: the backend runs exactly this.

    ``env`` is the complete environment (the sandbox's, the default ``PATH``, the request's);
    ``cwd`` is absolute, a path inside the sandbox.  ``tty`` gives the command a
    pseudo-terminal of ``window``'s size as its stdin, stdout and stderr; ``stdin`` gives it
    a standard input the caller writes (else /dev/null).  ``uid``/``gid``: ``None`` runs it
    as the sandbox's own user.
    """

    exec_id: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    tty: bool = False
    stdin: bool = False
    uid: int | None = None
    gid: int | None = None
    window: WindowSize | None = None
    #: The ``cgroup.procs`` files the command's relay joins before it runs anything of the
    #: sandbox's (set by :class:`~._cgroups.CgroupSandbox`).
    cgroups: tuple[str, ...] = ()


class ExecProcess(Protocol):
    """A command started by :meth:`SandboxProcess.exec`, as its backend sees it.

    The caller reads :attr:`stdout` and :attr:`stderr` to their end (a command whose pipe is
    not read waits: that is the backpressure), then awaits :meth:`wait`, and finally
    :meth:`aclose`.
    """

    #: The host pid of the command; 0 when it could not be exec'ed (then :meth:`wait`
    #: returns 127, or 126, and stderr says why).
    pid: int
    #: The command's standard input; ``None`` unless ``spec.stdin``.  With a tty it writes to
    #: the terminal, and closing it sends the terminal's end-of-file character.
    stdin: trio.abc.SendStream | None
    #: The command's standard output (with a tty: everything it writes to the terminal).
    stdout: trio.abc.ReceiveStream
    #: The command's standard error, kept apart; ``None`` with a tty.
    stderr: trio.abc.ReceiveStream | None

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal's window size (the command gets SIGWINCH); nothing without a
        tty or once closed."""
        ...

    def kill(self, signum: int = _signal.SIGKILL) -> None:
        """Send ``signum`` to the command's whole process tree: its session, and every
        descendant whose parent still lives (even one that left the session).  No error once
        they are gone; nothing once :meth:`wait` has returned."""
        ...

    async def wait(self) -> int:
        """The command's return code once it has ended, as :mod:`subprocess` gives it
        (``-N`` after death by signal N), reaping it.  Cancelling the wait leaves the command
        alone."""
        ...

    async def aclose(self) -> None:
        """Close the streams (not the process)."""
        ...


class SandboxProcess(Protocol):
    """A started sandbox, as its backend sees it."""

    @property
    def pid(self) -> int:
        """The sandbox's init process, as seen from the host."""
        ...

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every process of the sandbox.  No error once they are gone; does
        nothing after :meth:`cleanup` (the pid may have been reused)."""
        ...

    def cleanup(self) -> None:
        """After the exit was reported: kill whatever of the sandbox is left, free resources."""
        ...

    def info(self) -> Mapping[str, str]:
        """Backend details for a verbose Status."""
        ...

    def usage(self) -> tuple[int, int, int]:
        """``(cpu_ns, memory_rss_bytes, pids)`` summed over the sandbox's processes."""
        ...

    def identity(self) -> Mapping[str, Any]:
        """What, besides :attr:`pid`, tells this sandbox's process apart from a later one
        that reuses the pid (start times): stored, and given back to :meth:`Backend.adopt`
        after a restart."""
        ...

    @property
    def usage_blocks(self) -> bool:
        """Whether :meth:`usage` reads the system (and so runs in a worker thread)."""
        ...

    @property
    def output(self) -> tuple[int, int] | None:
        """The read ends (non-blocking) of the pipes the init's stdout and stderr go to, for
        the runtime to read and then close; None when the sandbox has no output to read."""
        ...

    async def exec(self, spec: ExecSpec) -> ExecProcess:
        """Start ``spec``'s command in the sandbox, and return once it runs (it has exec'ed).

        FailedPrecondition naming the reason when it cannot be started (the sandbox is gone,
        ``cwd`` is missing in it, a fork failed, a ``uid`` the backend cannot give).  A
        command that is not found is no error: :meth:`ExecProcess.wait` returns 127 (126
        when it cannot be exec'ed), as docker and CRI report it.  Cancellation: if this raises
        Cancelled, nothing is left running.
        """
        ...

    def open_file(self, path: str, *, write: bool, mode: int | None = None) -> int:
        """Open the regular file ``path`` of the sandbox, resolved inside the sandbox's root
        (``..`` and symbolic links never lead out of it), and return its descriptor
        (close-on-exec, blocking).  ``write`` creates it (``mode``, default ``0o644``) or
        truncates it; else it is opened for reading.

        NotFound, InvalidArgument (not a regular file, a bad path), PermissionDenied, or
        FailedPrecondition (a read-only mount), each naming ``path``.  Blocks only as long
        as opening a file does.
        """
        ...


class Backend(Protocol):
    """How sandboxes of one ``sandboxer`` name run."""

    @property
    def name(self) -> str: ...

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run sandboxes on this host, or ``None`` when it can."""
        ...

    def validate(self, spec: SandboxSpec) -> None:
        """Check ``spec`` at Create: raise InvalidArgument (or FailedPrecondition) naming
        what is wrong.  Local file checks at most: nothing that can wait."""
        ...

    async def start(
        self,
        spec: SandboxSpec,
        nursery: trio.Nursery,
        on_exit: ExitCallback,
        on_spawned: SpawnCallback | None = None,
    ) -> SandboxProcess:
        """Start the sandbox's init process, in two phases: created held, then released.

        ``on_spawned`` is awaited between the two (see :data:`SpawnCallback`); a backend
        whose processes cannot outlive the daemon (``sim``) may skip it.  A process held
        when the daemon dies exits without running anything of the sandbox's.

        Runs whatever task watches the process in ``nursery``; ``on_exit`` is called exactly
        once, when the process has ended (not if ``nursery`` is cancelled first).  Raises
        FailedPrecondition saying why when the process cannot be started; whenever it raises,
        Cancelled included, nothing is left running.
        """
        ...

    def platform(self) -> Platform:
        """The platform sandboxes of this backend run on."""
        ...

    def discard(self, pid: int, identity: Mapping[str, Any]) -> None:
        """Kill what a start reported through ``on_spawned(pid, identity)`` left running (an
        earlier run of the daemon that died before the sandbox was recorded started), if
        ``pid`` still is that process.  Never blocks for long."""
        ...

    def adopt(
        self,
        spec: SandboxSpec,
        pid: int,
        identity: Mapping[str, Any],
        nursery: trio.Nursery,
        on_exit: ExitCallback,
    ) -> SandboxProcess | None:
        """Take back a sandbox started by an earlier run of the daemon.

        Returns ``None`` unless ``pid`` still runs *and* is the same process (its identity
        matches: a reused pid is never adopted).  Its exit is then reported through
        ``on_exit`` with :data:`EXIT_UNKNOWN`, since a process that is not the daemon's
        child cannot be waited for.  Never blocks for long.
        """
        ...
