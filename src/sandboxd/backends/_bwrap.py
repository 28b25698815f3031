"""The ``bwrap`` backend: every sandbox in its own Linux namespaces, through bubblewrap.

Theory of operation.  Start runs ``bwrap`` (outside, in a session of its own, like the
``process`` backend's init) with new pid, ipc, uts and mount namespaces, a new network
namespace holding only ``lo`` unless the sandbox joins one (``netns_path``, through
``nsenter``) or asks for the host's (``options.host_network``), and a new user namespace when
the daemon is not root (as root, every capability is dropped instead).  Inside the new pid
namespace bwrap's own init is pid 1 and the
sandbox's command runs under it; ``--info-fd`` tells us pid 1's host pid, which is the pid
the sandbox reports.  When the command exits, bwrap's init ends with its status (128+N for
death by signal N), and so does the outer bwrap, whose exit is what we watch.

Signals never go to the outer bwrap (it would die at once and report the wrong status, or
leave the sandbox behind).  SIGKILL goes to pid 1 of the namespace: the kernel then kills
every process in it.  Any other signal goes to every process of the namespace but pid 1
(which, as a namespace's init, would ignore it): so SIGTERM reaches every process inside, as
Stop promises.  Membership is read from /proc/<pid>/ns/pid.

Start is two-phase as for the ``process`` backend: bwrap runs behind the same gate, which
holds it before it makes any namespace, until its pid is recorded (bwrap's own
``--block-fd`` would not do: it goes on when the pipe is closed, so a daemon that died would
let the command run).  A record that only names the held bwrap is enough to find the sandbox
after a crash: the namespace's init is that bwrap's child.

The filesystem is, without ``rootfs``, a read-only view of the host with its own /proc, a
minimal /dev and a private /tmp; with ``rootfs``, exactly the mounts given, in order.

The sandbox's command runs under the system-call filter of ``options.seccomp`` (the
default one unless ``"unconfined"``; see :mod:`._seccomp`), given to bwrap as a BPF program
in a memfd (``--seccomp FD``); each exec's command gets the same program from its relay.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal as _signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Final, final

import trio

from .._errors import FailedPrecondition, InvalidArgument
from .._models import Mount, Platform, SandboxSpec, check_sandbox_id
from ._base import ExecSpec, ExitCallback, SpawnCallback
from ._exec import ExecChild, exec_in_namespaces, open_namespaces
from ._files import open_in_root
from ._platform import host_platform
from ._process import (
    DEFAULT_PATH,
    PAUSE_INTERPRETER,
    PAUSE_PREFIX,
    OutputPipes,
    ReadyPipe,
    check_command,
    check_env,
    launch,
    proc_usage,
    refuse_resources,
    remove_output,
    reopen_output,
    same_process,
    start_time,
    watch_pid,
)
from ._seccomp import check as check_seccomp
from ._seccomp import describe as describe_seccomp
from ._seccomp import filter_for
from ._spawn import Child, Gate, kill_and_reap, kill_group, read_some

#: Mount types a rootfs may hold, and the bwrap option each becomes.
MOUNT_TYPES: Final = ("bind", "tmpfs", "proc", "dev")
#: Options a bind mount may carry (``ro`` or ``rw`` says how; bwrap binds are recursive).
BIND_OPTIONS: Final = frozenset({"ro", "rw", "bind", "rbind"})
#: How long Start waits for bwrap to report the namespace's init.
SETUP_TIMEOUT: Final = 30.0

_HOSTNAME_LABEL: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_probe_cache: dict[str, str | None] = {}


def default_hostname(sandbox_id: str) -> str:
    """The sandbox id made a valid hostname: ``_`` and ``.`` become ``-``, at most 63
    characters, no leading or trailing ``-``."""
    name = re.sub(r"[^A-Za-z0-9-]", "-", sandbox_id)[:63].strip("-")
    return name or "sandbox"


def _probe(bwrap: str | None) -> str | None:
    """Why bubblewrap cannot make sandboxes here, or None; asked once per executable."""
    if bwrap is None:
        return "bubblewrap is not installed (bwrap not found in PATH; apt-get install bubblewrap)"
    if bwrap in _probe_cache:
        return _probe_cache[bwrap]
    argv = [bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net"]
    if os.geteuid() != 0:
        argv.append("--unshare-user")
    argv += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason: str | None = f"bubblewrap cannot run: {exc}"
    else:
        reason = None
        if done.returncode != 0:
            detail = done.stderr.strip() or f"exit status {done.returncode}"
            reason = f"the kernel refuses the namespaces bubblewrap needs: {detail}"
    _probe_cache[bwrap] = reason
    return reason


@final
class BwrapBackend:
    """Sandboxes isolated in their own namespaces by bubblewrap (sandboxer ``"bwrap"``).

    Everything the ``process`` backend promises holds here too: the init's real exit
    status, Stop's SIGTERM then SIGKILL reaching every process inside, nothing left after
    Shutdown.  ``options.hostname`` sets the hostname (default: the sandbox id, made a valid
    hostname).  The sandbox's stdout and stderr (and bwrap's own errors) go to pipes whose
    read ends it gives the runtime, FIFOs in ``log_dir`` when given, as for ``process``
    (:class:`~sandboxd.backends._process.OutputPipes`).
    """

    __slots__ = ("_bwrap", "_log_dir")

    def __init__(
        self, *, log_dir: str | os.PathLike[str] | None = None, bwrap: str | None = None
    ) -> None:
        self._log_dir = None if log_dir is None else os.fspath(log_dir)
        self._bwrap = bwrap if bwrap is not None else shutil.which("bwrap")

    @property
    def name(self) -> str:
        return "bwrap"

    def unavailable_reason(self) -> str | None:
        """None when bubblewrap is installed and the kernel lets it create namespaces;
        else what is missing.  Runs bwrap once (a few milliseconds), then remembers."""
        return _probe(self._bwrap)

    def platform(self) -> Platform:
        return host_platform()

    def validate(self, spec: SandboxSpec) -> None:
        """INVALID_ARGUMENT naming the field for: a bad mount (unknown type or option,
        relative target, missing source), a missing netns_path, a bad hostname, env or cwd,
        and an executable that cannot be found where the sandbox will look for it."""
        refuse_resources(spec, "bwrap")
        if self._log_dir is not None:
            check_sandbox_id(spec.sandbox_id)
        options = spec.options
        for index, mount in enumerate(spec.rootfs):
            _check_mount(index, mount)
        _check_targets(spec.rootfs)
        if spec.netns_path is not None:
            if options.host_network:
                raise InvalidArgument("netns_path: cannot be combined with options.host_network")
            if not os.path.exists(spec.netns_path):
                raise InvalidArgument(f"netns_path: {spec.netns_path!r} does not exist")
            if shutil.which("nsenter") is None:
                raise FailedPrecondition("netns_path: nsenter (util-linux) is not installed")
        if options.hostname is not None and not _valid_hostname(options.hostname):
            raise InvalidArgument(
                f"options.hostname: {options.hostname!r} is not a valid hostname "
                "(labels of letters, digits and '-', at most 63 characters each)"
            )
        if check_seccomp(options.seccomp) is not None:
            filter_for(options.seccomp)  # what libseccomp refuses, refused at Create
        check_env(options.env)
        cwd = options.cwd or "/"
        if not os.path.isabs(cwd) or "\0" in cwd:
            raise InvalidArgument(f"options.cwd: {cwd!r} is not an absolute path")
        path = options.env.get("PATH", DEFAULT_PATH)
        if options.command is not None:
            if spec.rootfs:
                _check_command_in_rootfs(options.command, path, _with_private_views(spec.rootfs))
            else:
                check_command(options.command, path, cwd)
        elif spec.rootfs:
            try:
                _check_command_in_rootfs(
                    (PAUSE_INTERPRETER,), path, _with_private_views(spec.rootfs)
                )
            except InvalidArgument:
                raise InvalidArgument(
                    "options.command: required with a rootfs that does not hold the daemon's "
                    f"Python interpreter ({PAUSE_INTERPRETER}), which runs the pause process"
                ) from None

    def command_line(
        self, spec: SandboxSpec, argv: Sequence[str], info_fd: int, seccomp_fd: int = -1
    ) -> list[str]:
        """The exact command that runs the sandbox (``nsenter`` first to join a netns);
        ``seccomp_fd`` (when >= 0) holds the system-call filter's BPF program."""
        options = spec.options
        assert self._bwrap is not None
        line: list[str] = []
        if spec.netns_path is not None:
            line += ["nsenter", f"--net={spec.netns_path}", "--"]
        line += [self._bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        if spec.netns_path is None and not options.host_network:
            line.append("--unshare-net")
        if os.geteuid() != 0:
            line.append("--unshare-user")  # bwrap then drops every capability itself
        else:
            line += ["--cap-drop", "ALL"]  # root inside, but with no capabilities
        line += ["--new-session", "--info-fd", str(info_fd)]
        if seccomp_fd >= 0:
            line += ["--seccomp", str(seccomp_fd)]
        line += ["--hostname", options.hostname or default_hostname(spec.sandbox_id)]
        line += _mount_options(spec.rootfs, pause=options.command is None)
        line += ["--chdir", options.cwd or "/", "--", *argv]
        return line

    async def start(
        self,
        spec: SandboxSpec,
        nursery: trio.Nursery,
        on_exit: ExitCallback,
        on_spawned: SpawnCallback | None = None,
    ) -> BwrapSandbox:
        """Start bwrap held at its gate, await ``on_spawned(bwrap's pid, {"start_time":
        ...})``, release it, and return once the namespace's init is known (and, for a
        pause sandbox, ready for its stop signals).  FailedPrecondition says why when
        bubblewrap is unavailable or the sandbox cannot be set up; then (and when
        ``on_spawned`` raises) nothing is left running."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise FailedPrecondition(f"cannot start sandbox {spec.sandbox_id}: {reason}")
        options = spec.options
        env = dict(options.env)
        env.setdefault("PATH", DEFAULT_PATH)
        seccomp = filter_for(options.seccomp)
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(info_r, False)
        seccomp_fd = -1 if seccomp is None else _memfd(seccomp)
        ready = ReadyPipe() if options.command is None else None
        argv = ready.pause_argv() if ready is not None else list(options.command or ())
        line = self.command_line(spec, argv, info_w, seccomp_fd)
        fds = (info_w, *(ready.pass_fds if ready is not None else ()))
        fds += (seccomp_fd,) if seccomp_fd >= 0 else ()
        try:
            with (
                Gate() as gate,
                ready or contextlib.nullcontext(),
                OutputPipes(self._log_dir, spec.sandbox_id) as pipes,
            ):
                try:
                    process = launch(
                        spec.sandbox_id, gate, line, env=env, cwd="/", output=pipes.child,
                        pass_fds=fds,
                    )  # fmt: skip
                finally:
                    os.close(info_w)
                    pipes.spawned()
                identity = {"start_time": start_time(process.pid)}
                await gate.open(process, spec.sandbox_id, line[0], "/", identity, on_spawned)
                init_pid = await _read_init_pid(info_r, process, spec.sandbox_id, pipes)
                try:
                    if ready is not None:
                        await ready.wait(process, spec.sandbox_id)
                    elif not await _await_command(init_pid, process):
                        await _refused_setup(process, pipes, spec.sandbox_id)
                except BaseException:
                    # Cancelled (or the pause never got ready): nothing may stay running.
                    await _kill_outer(process, init_pid)
                    raise
                output = pipes.take()
        finally:
            os.close(info_r)
            if seccomp_fd >= 0:
                os.close(seccomp_fd)
        try:
            init_fd = os.pidfd_open(init_pid)
        except ProcessLookupError:
            init_fd = -1  # already gone: the outer bwrap is about to report it
        try:
            nursery.start_soon(
                _watch_namespace, process, init_fd, on_exit,
                name=f"sandboxd: watch sandbox {spec.sandbox_id}",
            )  # fmt: skip
        except BaseException:
            if init_fd >= 0:
                os.close(init_fd)
            for fd in output:
                os.close(fd)
            await _kill_outer(process)
            raise
        return BwrapSandbox(
            process.pid,
            init_pid,
            spec,
            line,
            outer_start=identity["start_time"],
            init_start=start_time(init_pid),
            output=output,
            log_dir=self._log_dir,
            seccomp=seccomp,
        )

    def discard(self, pid: int, identity: Mapping[str, Any]) -> None:
        """Kill a held (or just released) bwrap ``pid`` and the namespace it made, if it is
        still the process spawned (see :meth:`Backend.discard`).  The namespace's init runs
        in a session of its own, so it is found as bwrap's child: bwrap is stopped first, so
        that it makes no new one meanwhile."""
        if not same_process(pid, identity.get("start_time")):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, _signal.SIGSTOP)
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, _signal.SIGKILL)  # a namespace's init: everything inside dies
        kill_group(pid, _signal.SIGKILL)

    def adopt(
        self,
        spec: SandboxSpec,
        pid: int,
        identity: Mapping[str, Any],
        nursery: trio.Nursery,
        on_exit: ExitCallback,
    ) -> BwrapSandbox | None:
        """The sandbox whose namespace init is ``pid``, if it still runs with the start time
        recorded; its end (the namespace's) is reported as EXIT_UNKNOWN."""
        if not same_process(pid, identity.get("init_start_time")):
            return None
        if not watch_pid(nursery, pid, on_exit, spec.sandbox_id):
            return None
        outer = identity.get("bwrap_pid")
        alive = same_process(outer, identity.get("bwrap_start_time"))
        outer_pid = outer if alive and isinstance(outer, int) else 0
        command = identity.get("command")
        line = command if isinstance(command, list) else []
        return BwrapSandbox(
            outer_pid,
            pid,
            spec,
            [str(a) for a in line],
            outer_start=identity.get("bwrap_start_time") if outer_pid else None,
            init_start=identity.get("init_start_time"),
            output=reopen_output(self._log_dir, spec.sandbox_id),
            log_dir=self._log_dir,
        )


async def _watch_namespace(process: Child, init_fd: int, on_exit: ExitCallback) -> None:
    """Report the sandbox's exit once the outer bwrap has ended *and* the namespace's init
    is dead: bwrap reports the command's status while its init may still be killing the
    rest, and nobody must see a stopped sandbox with processes left in it."""
    try:
        returncode = await process.wait()
        if init_fd >= 0:
            with contextlib.suppress(ProcessLookupError):
                _signal.pidfd_send_signal(init_fd, _signal.SIGKILL)
            await trio.lowlevel.wait_readable(init_fd)
    finally:
        if init_fd >= 0:
            os.close(init_fd)
    on_exit(returncode if returncode >= 0 else 128 - returncode)


async def _read_init_pid(fd: int, process: Child, sandbox_id: str, pipes: OutputPipes) -> int:
    """The host pid of the namespace's init, from bwrap's ``--info-fd`` JSON.  When bwrap
    fails first, its message (on the sandbox's stderr) is in the error."""
    data = b""
    try:
        with trio.move_on_after(SETUP_TIMEOUT) as setup:
            while chunk := await read_some(fd):
                data += chunk
                with contextlib.suppress(ValueError):
                    return int(json.loads(data)["child-pid"])
    except BaseException:
        await _kill_outer(process)
        raise
    if setup.cancelled_caught:
        await _kill_outer(process)
        raise FailedPrecondition(
            f"cannot start sandbox {sandbox_id}: bubblewrap did not set the sandbox up "
            f"within {SETUP_TIMEOUT:g} s"
        )
    # bwrap closed the pipe without reporting: it failed to set up, and said why on stderr.
    status = await process.wait()
    message = b""
    with contextlib.suppress(OSError):
        message = os.read(pipes.stderr, 4096)
    said = message.decode(errors="replace").strip() or "no message"
    raise FailedPrecondition(
        f"cannot start sandbox {sandbox_id}: bubblewrap failed to set up the sandbox "
        f"(exit status {status}: {said})"
    )


async def _await_command(init_pid: int, process: Child) -> bool:
    """Return once the sandbox's command runs in the namespace (bwrap reports the
    namespace's init before it has set up the mounts and started the command; a Stop in that
    window would find nothing to signal).  Also returns, False, if the sandbox ended before
    the command was seen to run (it may have run, and ended, between two looks).

    The kernel announces another process's exec to nobody but a netlink listener, so this
    looks at /proc every millisecond; it takes a few, at most :data:`SETUP_TIMEOUT`.
    """
    bwrap_exe = _exe(init_pid)
    with trio.move_on_after(SETUP_TIMEOUT):
        while process.poll() is None:
            for child in _children(init_pid):
                exe = _exe(child)
                if exe is not None and exe != bwrap_exe:
                    return True
            await trio.sleep(0.001)
    return process.poll() is None


#: How bubblewrap starts what it says when it refuses to set a sandbox up (exit status 1).
_BWRAP_SAYS: Final = b"bwrap: "


async def _refused_setup(process: Child, pipes: OutputPipes, sandbox_id: str) -> None:
    """The sandbox ended before its command was seen to run: if bubblewrap refused to set it
    up (a mount it could not make), raise FailedPrecondition with bubblewrap's message.
    Else the command ran and ended: what it wrote is left for its log."""
    if await process.wait() != 1:
        return
    fd = pipes.stderr
    said = b""
    with contextlib.suppress(OSError):  # BlockingIOError: all of it read
        while chunk := os.read(fd, 65536):
            said += chunk
    if said.startswith(_BWRAP_SAYS):
        message = said[:4096].decode(errors="replace").strip()
        raise FailedPrecondition(
            f"cannot start sandbox {sandbox_id}: bubblewrap refused to set it up: {message}"
        )
    if not said:
        return
    # The command's own output: put it back, in order, for the log (it came out of this
    # pipe, so it fits, unless a process left behind wrote meanwhile: never block on that).
    back = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        view = memoryview(said)
        with contextlib.suppress(BlockingIOError):
            while view:
                view = view[os.write(back, view) :]
    finally:
        os.close(back)


def _memfd(data: bytes) -> int:
    """A memfd holding ``data``, read from its start (bwrap reads a filter to its end)."""
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)  # a new memfd takes it whole
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


async def _kill_outer(process: Child, init_pid: int = 0) -> None:
    if init_pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init_pid, _signal.SIGKILL)  # takes the whole namespace down
    await kill_and_reap(process)


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


@final
class BwrapSandbox:
    """A started bwrap sandbox: the outer bwrap we watch, and the namespace's init."""

    __slots__ = (
        "_command",
        "_init_start",
        "_killed",
        "_log_dir",
        "_namespace",
        "_outer_pid",
        "_outer_start",
        "_seccomp",
        "_spec",
        "init_pid",
        "output",
    )

    def __init__(
        self,
        outer_pid: int,
        init_pid: int,
        spec: SandboxSpec,
        command: list[str],
        *,
        outer_start: object,
        init_start: object,
        output: tuple[int, int] | None,
        log_dir: str | None = None,
        seccomp: bytes | None = None,
    ) -> None:
        self._outer_pid = outer_pid
        self.init_pid = init_pid
        # Their start times, as read when they were spawned or checked at adoption.
        self._init_start = init_start if isinstance(init_start, int) else None
        self._outer_start = outer_start if outer_pid > 0 and isinstance(outer_start, int) else None
        self._spec = spec
        self._command = command
        #: The read ends (non-blocking) of the sandbox's stdout and stderr, for the runtime
        #: to read and close; None when they could not be found again after a restart.
        self.output = output
        self._log_dir = log_dir  # where its FIFOs are, removed at cleanup
        self._killed = False
        self._namespace = _pid_namespace(init_pid)
        # The filter's BPF program for execs; None: not compiled yet (after a restart).
        self._seccomp = seccomp

    @property
    def pid(self) -> int:
        """pid 1 of the sandbox's pid namespace, as seen from the host."""
        return self.init_pid

    def _members(self) -> list[int]:
        """Host pids of the processes in the sandbox's pid namespace."""
        if self._namespace is None:
            return []
        members = []
        for name in os.listdir("/proc"):
            if name.isdigit() and _pid_namespace(int(name)) == self._namespace:
                members.append(int(name))
        return members

    def signal(self, signum: int) -> None:
        """SIGKILL: to the namespace's init (the kernel kills everything inside).  Any
        other signal: to every process inside but the init.  Nothing after cleanup."""
        if self._killed:
            return
        if not 0 <= signum < _signal.NSIG:
            raise InvalidArgument(f"signal {signum}: not a valid signal number")
        targets = [self.init_pid] if signum == _signal.SIGKILL else self._members()
        for pid in targets:
            if pid != self.init_pid or signum == _signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def cleanup(self) -> None:
        """Kill whatever is left in the namespace (and the outer bwrap); later calls and
        signals do nothing."""
        if not self._killed:
            self.signal(_signal.SIGKILL)
            self._killed = True
            if self._outer_pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._outer_pid, _signal.SIGKILL)
            remove_output(self._log_dir, self._spec.sandbox_id)

    def info(self) -> Mapping[str, str]:
        """The namespaces, the mounts and the exact bubblewrap command line."""
        spec = self._spec
        namespaces = ["pid", "ipc", "uts", "mount"]
        if spec.netns_path is not None:
            network = f"joined {spec.netns_path}"
        elif spec.options.host_network:
            network = "host"
        else:
            network = "new (loopback only)"
            namespaces.append("net")
        if os.geteuid() != 0:
            namespaces.append("user")
        mounts = (
            "; ".join(f"{m.type} {m.source} -> {m.target} {','.join(m.options)}".rstrip()
                      for m in spec.rootfs)
            if spec.rootfs
            else "host / read-only; /proc; /dev; tmpfs /tmp"
        )  # fmt: skip
        return {
            "namespaces": ",".join(namespaces),
            "network": network,
            "hostname": spec.options.hostname or default_hostname(spec.sandbox_id),
            "mounts": mounts,
            "bwrap_command": shlex.join(self._command),
            "seccomp": describe_seccomp(spec.options.seccomp),
            "bwrap_pid": str(self._outer_pid),
        }

    def identity(self) -> Mapping[str, Any]:
        return {
            "init_start_time": self._init_start,
            "bwrap_pid": self._outer_pid,
            "bwrap_start_time": self._outer_start,
            "command": self._command,
        }

    @property
    def usage_blocks(self) -> bool:
        return True

    def usage(self) -> tuple[int, int, int]:
        """Summed over the live processes of the sandbox's pid namespace."""
        namespace = self._namespace
        if namespace is None:
            return (0, 0, 0)
        return proc_usage(lambda pid, _fields: _pid_namespace(pid) == namespace)

    async def exec(self, spec: ExecSpec) -> ExecChild:
        """Run ``spec`` inside the sandbox: in all of its namespaces, chrooted to its root,
        with no capability and no_new_privs, under the sandbox's system-call filter (see
        :mod:`._exec`).  FailedPrecondition once the sandbox has ended."""
        pidfd, root = self._enter()
        os.close(pidfd)
        try:
            try:
                namespaces = open_namespaces(self.init_pid)
            except OSError:
                raise FailedPrecondition(f"sandbox {self._spec.sandbox_id} has ended") from None
            try:
                if start_time(self.init_pid) != self._init_start:  # the init's, not a new pid's
                    raise FailedPrecondition(f"sandbox {self._spec.sandbox_id} has ended")
                return await exec_in_namespaces(
                    spec, spec.exec_id, namespaces, root, self._filter()
                )
            finally:
                for fd, _ in namespaces:
                    os.close(fd)
        finally:
            os.close(root)

    def _filter(self) -> bytes | None:
        """The sandbox's filter program, for an exec's command (compiled again after a
        restart: the record holds the profile, not the program)."""
        if self._seccomp is None:
            self._seccomp = filter_for(self._spec.options.seccomp)
        return self._seccomp

    def open_file(self, path: str, *, write: bool, mode: int | None = None) -> int:
        """Open ``path`` resolved inside the sandbox's root (openat2 from the init's root
        with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS; see :mod:`._files`): nothing outside
        the sandbox's own mounts can be reached, and its read-only mounts stay read-only.
        A relative ``path`` is taken from the root."""
        pidfd, root = self._enter()
        os.close(pidfd)
        try:
            return open_in_root(root, path, write=write, mode=mode)
        finally:
            os.close(root)

    def _enter(self) -> tuple[int, int]:
        """A pidfd of the sandbox's init and a descriptor of its root directory, both known
        to be the init's (not a later process's with its pid)."""
        ended = FailedPrecondition(f"sandbox {self._spec.sandbox_id} has ended")
        if self._killed:
            raise ended
        try:
            pidfd = os.pidfd_open(self.init_pid)
        except OSError:
            raise ended from None
        try:
            if start_time(self.init_pid) != self._init_start:
                raise ended
            try:
                root = os.open(
                    f"/proc/{self.init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
                )
            except OSError:
                raise ended from None
            if start_time(self.init_pid) is None:  # it may have ended before the open
                os.close(root)
                raise ended
        except BaseException:
            os.close(pidfd)
            raise
        return pidfd, root


def _valid_hostname(name: str) -> bool:
    return (
        0 < len(name) <= 64
        and all(_HOSTNAME_LABEL.fullmatch(label) for label in name.split("."))
    )  # fmt: skip


def _check_mount(index: int, mount: Mount) -> None:
    where = f"rootfs[{index}]"
    if mount.type not in MOUNT_TYPES:
        raise InvalidArgument(
            f"{where}: unknown mount type {mount.type!r} (known: {', '.join(MOUNT_TYPES)})"
        )
    if not os.path.isabs(mount.target) or "\0" in mount.target:
        raise InvalidArgument(f"{where}: target {mount.target!r} is not an absolute path")
    if mount.type == "bind":
        unknown = [o for o in mount.options if o not in BIND_OPTIONS]
        if unknown:
            raise InvalidArgument(
                f"{where}: unknown bind option {unknown[0]!r} (known: ro, rw, bind, rbind)"
            )
        if "ro" in mount.options and "rw" in mount.options:
            raise InvalidArgument(f"{where}: options 'ro' and 'rw' contradict each other")
        if not os.path.exists(mount.source):
            raise InvalidArgument(f"{where}: source {mount.source!r} does not exist")
    elif mount.options:
        raise InvalidArgument(
            f"{where}: a {mount.type} mount takes no options, got {list(mount.options)}"
        )


def _check_targets(rootfs: Sequence[Mount]) -> None:
    """INVALID_ARGUMENT naming the mount whose target lies under a read-only bind and does
    not exist there: bubblewrap cannot create it (a read-only filesystem), so the sandbox
    could never start."""
    mounts = _with_private_views(rootfs)
    for index, mount in enumerate(rootfs):
        before = mounts[: mounts.index(mount)]
        target = mount.target.rstrip("/") or "/"
        cover = _covering(before, target)
        if cover is None or cover.type != "bind" or "rw" in cover.options:
            continue
        host = _host_path(before, target)
        if host is not None and not os.path.lexists(host):
            raise InvalidArgument(
                f"rootfs[{index}]: target {mount.target!r} does not exist under the read-only "
                f"bind of {cover.source!r}, and cannot be made there: bind its parent "
                "read-write, or put a tmpfs under it first"
            )


def _covering(rootfs: Sequence[Mount], inside: str) -> Mount | None:
    """The mount that ``inside`` (a path in the sandbox) lies on: the last one whose target
    is it or one of its ancestors."""
    found = None
    for mount in rootfs:
        target = mount.target.rstrip("/") or "/"
        if inside == target or inside.startswith(target.rstrip("/") + "/"):
            found = mount
    return found


def _mount_options(rootfs: Sequence[Mount], pause: bool = False) -> list[str]:
    if not rootfs:
        view = [
            "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
        ]  # fmt: skip
        if pause and (PAUSE_PREFIX == "/tmp" or PAUSE_PREFIX.startswith("/tmp/")):
            # The pause interpreter lives under /tmp, which the private tmpfs covers.
            view += ["--ro-bind", PAUSE_PREFIX, PAUSE_PREFIX]
        return view
    options: list[str] = []
    for mount in _with_private_views(rootfs):
        if mount.type == "bind":
            flag = "--bind" if "rw" in mount.options else "--ro-bind"
            options += [flag, mount.source, mount.target]
        else:
            options += [f"--{mount.type}", mount.target]
    return options


#: What a bind of the host's root would show and a sandbox must not see -- the host's
#: processes, its shared temporary files, its devices -- and what stands in for each.
_PRIVATE_VIEWS: Final = (("/proc", "proc"), ("/tmp", "tmpfs"), ("/dev", "dev"))


def _with_private_views(rootfs: Sequence[Mount]) -> list[Mount]:
    """``rootfs`` with, right after each bind of the host's ``/``, the sandbox's own /proc,
    a private /tmp and a minimal /dev on top of it -- unless ``rootfs`` mounts that target
    itself.  Mounts given later (a bind under /tmp, say) still cover them."""
    explicit = {m.target.rstrip("/") or "/" for m in rootfs}
    mounts: list[Mount] = []
    for mount in rootfs:
        mounts.append(mount)
        if mount.type != "bind" or os.path.normpath(mount.source) != "/":
            continue
        base = mount.target.rstrip("/")
        for path, kind in _PRIVATE_VIEWS:
            target = base + path
            if target not in explicit:
                mounts.append(Mount(kind, kind, target))
    return mounts


def _host_path(rootfs: Sequence[Mount], inside: str) -> str | None:
    """Where ``inside`` (a path in the sandbox) lies on the host, through the bind mount
    that covers it last; None when no bind mount does."""
    mount = _covering(rootfs, inside)
    if mount is None or mount.type != "bind":
        return None
    target = mount.target.rstrip("/") or "/"
    rest = inside[len(target) :].lstrip("/") if target != "/" else inside.lstrip("/")
    return os.path.join(mount.source, rest)


def _check_command_in_rootfs(command: Sequence[str], path: str, rootfs: Sequence[Mount]) -> None:
    if not command or not command[0]:
        raise InvalidArgument("options.command: must be a non-empty list of text")
    argv0 = command[0]
    candidates = [argv0] if "/" in argv0 else [f"{d.rstrip('/')}/{argv0}" for d in path.split(":")]
    for inside in candidates:
        if not inside.startswith("/"):
            continue
        host = _host_path(rootfs, inside)
        if host is not None and os.path.isfile(host) and os.access(host, os.X_OK):
            return
    raise InvalidArgument(
        f"options.command: executable {argv0!r} is not found in the sandbox's rootfs (PATH {path})"
    )
