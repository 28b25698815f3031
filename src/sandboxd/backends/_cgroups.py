"""cgroups: a sandbox's resource limits, its counters, and a teardown nothing escapes.

Theory of operation.  At start the daemon finds where the controllers it needs (memory,
pids, cpu) live (:func:`detect_cgroups`): cgroup v2 when the unified hierarchy lists them
in the daemon's own cgroup's ``cgroup.controllers`` (systemd hosts), else cgroup v1 when
each is mounted as a v1 hierarchy (``cpuacct`` and ``freezer`` too when mounted).  Under
the daemon's own cgroup it makes a parent, ``<own>/<parent name>`` (in each v1
hierarchy), and under it one cgroup per sandbox, named by the sandbox id.  On v2 the
controllers are enabled in the parents' ``cgroup.subtree_control``; where the daemon's own
cgroup holds processes (which v2 forbids for a cgroup that enables controllers for its
children) the daemon first moves itself into a leaf ``<own>/daemon``, as containerd's
and runc's delegation rules expect.

A sandbox's cgroup holds its init and every exec from before they run any code of the
sandbox's: the init is held at its gate (:mod:`._spawn`) while its pid is written to each
``cgroup.procs``, and an exec's relay writes itself there before it enters the sandbox
(:mod:`._forkserver`); their children inherit it, and no process can leave a cgroup it
cannot write to (no process of a sandbox can: they have no capability over the host's
cgroupfs).

Teardown kills the whole cgroup: ``cgroup.kill`` on v2; on v1 freeze (when the freezer is
mounted), SIGKILL every member, thaw.  A process that double-forked or called setsid is
still a member, so it dies with the sandbox.  The cgroup is removed once empty (the
kernel may take a moment to finish killed processes: removal is retried).

The OOM killer is read from ``memory.events`` (v2, ``oom_kill``) or ``memory.oom_control``
(v1, ``oom_kill``) when the init exits: an init that died of SIGKILL in a cgroup where the
OOM killer killed is reported with the reason ``oom_killed``.  On v2 ``memory.oom.group``
is set, so an OOM kill takes the whole sandbox down, init included.

Limits: ``memory_bytes`` (v2 ``memory.max``, v1 ``memory.limit_in_bytes``),
``memory_swap_bytes`` (the swap allowed besides the memory: v2 ``memory.swap.max``, v1
``memory.memsw.limit_in_bytes`` = memory + swap; with a memory limit and no swap given, no
swap is allowed), ``cpu_millis`` (1000 = one CPU: a CFS quota over a 100 ms period, v2
``cpu.max``, v1 ``cpu.cfs_quota_us``), ``pids`` (``pids.max``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal as _signal
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, final

import attrs
import trio

from .._errors import FailedPrecondition
from .._models import Platform, Resources, SandboxSpec
from ._base import Backend, ExecProcess, ExecSpec, ExitCallback, SandboxProcess, SpawnCallback

log = logging.getLogger("sandboxd.cgroups")

#: The controllers a sandbox's limits need.
REQUIRED: Final = ("memory", "pids", "cpu")
#: The v1 hierarchies used when mounted (cpu usage, freezing for teardown).
OPTIONAL_V1: Final = ("cpuacct", "freezer")
#: The CFS period limits are expressed over (as docker sets it).
CPU_PERIOD_US: Final = 100_000
#: The reason given when the OOM killer ended a sandbox.
OOM_KILLED: Final = "oom_killed"
#: How many times a v1 teardown looks again for members forked while it killed.
_KILL_ROUNDS: Final = 20
#: How long a removal waits for killed members to finish.
REMOVE_TIMEOUT: Final = 10.0
_V1_ROOT: Final = "/sys/fs/cgroup"


def parent_name(state_dir: str | os.PathLike[str] | None) -> str:
    """The name of a daemon's parent cgroup: one per state directory (a daemon restarted on
    it finds its sandboxes' cgroups again), one per process without one."""
    if state_dir is None:
        return f"sandboxd-{os.getpid()}"
    digest = hashlib.sha256(os.fsencode(os.path.realpath(state_dir))).hexdigest()
    return f"sandboxd-{digest[:12]}"


@attrs.frozen(slots=True)
class CgroupUsage:
    """A sandbox's counters, read from its cgroup."""

    cpu_ns: int
    memory_bytes: int
    memory_peak_bytes: int | None
    pids: int
    oom_kills: int


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed(path: str) -> dict[str, int]:
    """A flat-keyed cgroup file (``key value`` lines) as a dict; empty when missing."""
    try:
        text = _read(path)
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values


def _number(path: str) -> int | None:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


@final
class SandboxCgroup:
    """One sandbox's cgroup: a directory per hierarchy (one on v2)."""

    __slots__ = ("_dirs", "version")

    def __init__(self, version: int, dirs: Mapping[str, str]) -> None:
        #: 1 or 2.
        self.version = version
        # controller -> directory; v2 has one directory, under the key "".
        self._dirs = dict(dirs)

    @property
    def dirs(self) -> Mapping[str, str]:
        """``{controller: directory}`` (v2: ``{"": directory}``)."""
        return dict(self._dirs)

    @property
    def paths(self) -> tuple[str, ...]:
        """Its directories, one per distinct hierarchy."""
        return tuple(dict.fromkeys(self._dirs.values()))

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files a process writes its pid (or 0, itself) to, to join."""
        return tuple(os.path.join(p, "cgroup.procs") for p in self.paths)

    def _dir(self, controller: str) -> str | None:
        if self.version == 2:
            return self._dirs[""]
        return self._dirs.get(controller)

    def add(self, pid: int) -> None:
        """Move ``pid`` (a whole process; 0: the caller) into the cgroup.  OSError if it
        cannot."""
        for path in self.procs_files:
            _write(path, str(pid))

    def apply(self, resources: Resources) -> None:
        """Write ``resources``' limits.  FailedPrecondition naming the file that is missing
        or refused the value."""
        memory, swap = resources.memory_bytes, resources.memory_swap_bytes
        writes: list[tuple[str, str, str]] = []  # controller, file, value
        if self.version == 2:
            if memory is not None:
                writes.append(("memory", "memory.max", str(memory)))
                writes.append(("memory", "memory.swap.max", str(swap or 0)))
                writes.append(("memory", "memory.oom.group", "1"))
            elif swap is not None:
                writes.append(("memory", "memory.swap.max", str(swap)))
            if resources.cpu_millis is not None:
                quota = resources.cpu_millis * CPU_PERIOD_US // 1000
                writes.append(("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}"))
        else:
            if memory is not None:
                writes.append(("memory", "memory.limit_in_bytes", str(memory)))
                memsw = os.path.join(self._dirs["memory"], "memory.memsw.limit_in_bytes")
                if swap is not None or os.path.exists(memsw):
                    writes.append(
                        ("memory", "memory.memsw.limit_in_bytes", str(memory + (swap or 0)))
                    )
            if resources.cpu_millis is not None:
                quota = resources.cpu_millis * CPU_PERIOD_US // 1000
                writes.append(("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)))
                writes.append(("cpu", "cpu.cfs_quota_us", str(quota)))
        if resources.pids is not None:
            writes.append(("pids", "pids.max", str(resources.pids)))
        for controller, name, value in writes:
            directory = self._dir(controller)
            path = os.path.join(directory or f"<no {controller} controller>", name)
            optional = name == "memory.oom.group" or (name == "memory.swap.max" and swap is None)
            if optional and not os.path.exists(path):
                # Before Linux 4.19 an OOM kill takes only its victim; without swap
                # accounting there is no swap to deny.
                continue
            try:
                _write(path, value)
            except OSError as exc:
                raise FailedPrecondition(
                    f"cannot apply options.resources: {name} = {value}: "
                    f"{exc.strerror or exc}: {path}"
                ) from exc

    def members(self) -> list[int]:
        """The pids in the cgroup (in any of its hierarchies)."""
        pids: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in _read(path).split())
        return sorted(pids)

    def kill(self) -> None:
        """SIGKILL every member, also one that forks meanwhile; nothing once empty or
        gone.  Does not wait for them to finish dying."""
        if self.version == 2:
            path = os.path.join(self._dirs[""], "cgroup.kill")
            try:
                _write(path, "1")
                return
            except FileNotFoundError:
                if not os.path.isdir(self._dirs[""]):
                    return
            # Before Linux 5.14: freeze and kill, as on v1.
            self._freeze_and_kill(os.path.join(self._dirs[""], "cgroup.freeze"), "1", "0")
            return
        freezer = self._dirs.get("freezer")
        state = None if freezer is None else os.path.join(freezer, "freezer.state")
        self._freeze_and_kill(state, "FROZEN", "THAWED")

    def _freeze_and_kill(self, freeze_file: str | None, frozen: str, thawed: str) -> None:
        # Frozen, no member can fork behind the walk; SIGKILL stays pending until the thaw.
        # A fork caught mid-freeze can still bring a child in: later rounds kill what is
        # new (a killed process may be listed until it has finished dying).
        frozen_ok = False
        if freeze_file is not None:
            with contextlib.suppress(OSError):
                _write(freeze_file, frozen)
                frozen_ok = True
        killed: set[int] = set()
        try:
            self._kill_members(killed)
        finally:
            if frozen_ok and freeze_file is not None:
                with contextlib.suppress(OSError):
                    _write(freeze_file, thawed)
        for _ in range(_KILL_ROUNDS):
            if not self._kill_members(killed):
                break

    def _kill_members(self, killed: set[int]) -> bool:
        """SIGKILL the members not in ``killed`` (and add them); whether there were any."""
        new = [pid for pid in self.members() if pid not in killed]
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, _signal.SIGKILL)
        killed.update(new)
        return bool(new)

    def try_remove(self) -> bool:
        """Remove the cgroup if it is empty; True once every directory is gone."""
        done = True
        for path in self.paths:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    log.warning("cannot remove cgroup %s: %s", path, exc)
                done = False
        if done:
            # The daemon's parent goes with its last sandbox (made again by the next
            # create), so a daemon that dies leaves nothing behind but running sandboxes.
            for path in self.paths:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(path))
        return done

    async def remove(self) -> None:
        """Kill what is left and remove the cgroup once its members have finished dying
        (logged and left after :data:`REMOVE_TIMEOUT` s).  Polls: v1 says nothing when a
        cgroup empties."""
        self.kill()
        with trio.move_on_after(REMOVE_TIMEOUT):
            # v1 says nothing when a cgroup empties: poll (a few ms after a kill).
            for _ in iter(self.try_remove, True):
                await trio.sleep(0.005)
            return
        log.warning("cgroup %s: still busy after %g s, left", self.paths, REMOVE_TIMEOUT)

    def oom_kills(self) -> int:
        """How many processes the OOM killer killed in the cgroup."""
        memory = self._dir("memory")
        if memory is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _keyed(os.path.join(memory, name)).get("oom_kill", 0)

    def usage(self) -> CgroupUsage:
        """Its counters: cpu time, memory in use and at peak, member count, OOM kills."""
        memory = self._dir("memory")
        pids = self._dir("pids")
        if self.version == 2:
            assert memory is not None
            cpu_ns: int | None = (
                _keyed(os.path.join(memory, "cpu.stat")).get("usage_usec", 0) * 1000
            )
            current = _number(os.path.join(memory, "memory.current"))
            peak = _number(os.path.join(memory, "memory.peak"))
        else:
            cpuacct = self._dir("cpuacct")
            cpu_ns = None if cpuacct is None else _number(os.path.join(cpuacct, "cpuacct.usage"))
            current = peak = None
            if memory is not None:
                current = _number(os.path.join(memory, "memory.usage_in_bytes"))
                peak = _number(os.path.join(memory, "memory.max_usage_in_bytes"))
        count = None if pids is None else _number(os.path.join(pids, "pids.current"))
        return CgroupUsage(
            cpu_ns=cpu_ns or 0,
            memory_bytes=current or 0,
            memory_peak_bytes=peak,
            pids=count if count is not None else len(self.members()),
            oom_kills=self.oom_kills(),
        )


@final
class CgroupManager:
    """Where the daemon makes its sandboxes' cgroups: the parent directory in each
    hierarchy (one on v2).  :func:`detect_cgroups` finds the real one; tests give a
    scratch tree."""

    __slots__ = ("_parents", "version")

    def __init__(self, version: int, parents: Mapping[str, str]) -> None:
        #: 1 or 2.
        self.version = version
        # controller -> parent directory (v2: the key "").
        self._parents = dict(parents)

    def describe(self) -> str:
        """``cgroup v2 (<the daemon's cgroup directory>)`` or ``cgroup v1 (memory, pids,
        ...)``, for logs and Version (as :func:`probe_cgroups` says it)."""
        if self.version == 2:
            return f"cgroup v2 ({os.path.dirname(self._parents[''])})"
        return f"cgroup v1 ({', '.join(sorted(self._parents))})"

    def check(self, resources: Resources) -> None:
        """FailedPrecondition when a limit asked for has no controller here."""
        if self.version == 2:
            return
        wanted = {
            "memory": resources.memory_bytes is not None
            or resources.memory_swap_bytes is not None,
            "cpu": resources.cpu_millis is not None,
            "pids": resources.pids is not None,
        }
        for controller, asked in wanted.items():
            if asked and controller not in self._parents:
                raise FailedPrecondition(
                    f"options.resources: no cgroup v1 {controller} controller is mounted"
                )

    def sandbox(self, sandbox_id: str) -> SandboxCgroup:
        """The cgroup of ``sandbox_id`` (made or not)."""
        return SandboxCgroup(
            self.version, {c: os.path.join(p, sandbox_id) for c, p in self._parents.items()}
        )

    def create(self, sandbox_id: str, resources: Resources | None) -> SandboxCgroup:
        """Make ``sandbox_id``'s cgroup (a leftover one is killed and reused) with
        ``resources``' limits.  FailedPrecondition when it cannot."""
        cgroup = self.sandbox(sandbox_id)
        try:
            for parent in set(self._parents.values()):
                if not os.path.isdir(parent):
                    os.mkdir(parent)
                    if self.version == 2:
                        _enable(parent, REQUIRED)
            for path in cgroup.paths:
                os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot create the cgroup of sandbox {sandbox_id}: {exc.strerror or exc}: "
                f"{exc.filename}"
            ) from exc
        cgroup.kill()
        if resources is not None:
            try:
                cgroup.apply(resources)
            except BaseException:
                cgroup.try_remove()
                raise
        return cgroup

    def find(self, sandbox_id: str) -> SandboxCgroup | None:
        """The cgroup of ``sandbox_id`` if it exists (a restart takes it back)."""
        cgroup = self.sandbox(sandbox_id)
        return cgroup if all(os.path.isdir(p) for p in cgroup.paths) else None

    def sandbox_ids(self) -> set[str]:
        """The ids of every sandbox cgroup under the parents."""
        ids: set[str] = set()
        for parent in set(self._parents.values()):
            with contextlib.suppress(OSError):
                ids.update(e.name for e in os.scandir(parent) if e.is_dir())
        return ids

    def release(self) -> None:
        """Remove the parents if no sandbox cgroup is left in them (the daemon is
        stopping; :meth:`create` makes them again); those of sandboxes still running
        stay, for the next start."""
        for parent in set(self._parents.values()):
            with contextlib.suppress(OSError):
                os.rmdir(parent)

    async def sweep(self, keep: Iterable[str]) -> None:
        """Kill and remove the cgroups of sandboxes not in ``keep`` (gone while the daemon
        was away)."""
        for sandbox_id in sorted(self.sandbox_ids() - set(keep)):
            log.info("removing the cgroup of sandbox %s, which is gone", sandbox_id)
            await self.sandbox(sandbox_id).remove()


# -- detection ------------------------------------------------------------------------------


def _mounts(mountinfo: str) -> tuple[str | None, dict[str, str]]:
    """The cgroup2 mount point and ``{v1 controller: mount point}`` from mountinfo."""
    unified = None
    v1: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        if rest[0] == "cgroup2" and unified is None:
            unified = point
        elif rest[0] == "cgroup":
            for option in rest[2].split(","):
                if option in REQUIRED or option in OPTIONAL_V1:
                    v1.setdefault(option, point)
    return unified, v1


def _own(proc_cgroup: str) -> dict[str, str]:
    """``{controller or "": path}`` of a process, from /proc/<pid>/cgroup."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _enable(directory: str, controllers: Sequence[str]) -> None:
    _write(
        os.path.join(directory, "cgroup.subtree_control"), " ".join(f"+{c}" for c in controllers)
    )


def manager_v2(own: str, name: str) -> CgroupManager:
    """The v2 manager making sandbox cgroups under ``<own>/<name>``, ``own`` being the
    daemon's cgroup directory (or a delegated one).  OSError if it cannot."""
    try:
        _enable(own, REQUIRED)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        # Processes in ``own``: move them to a leaf, then enable.
        leaf = os.path.join(own, "daemon")
        os.makedirs(leaf, exist_ok=True)
        for pid in _read(os.path.join(own, "cgroup.procs")).split():
            with contextlib.suppress(ProcessLookupError):
                _write(os.path.join(leaf, "cgroup.procs"), pid)
        _enable(own, REQUIRED)
    parent = os.path.join(own, name)
    os.makedirs(parent, exist_ok=True)
    _enable(parent, REQUIRED)
    return CgroupManager(2, {"": parent})


def manager_v1(dirs: Mapping[str, str], name: str) -> CgroupManager:
    """The v1 manager making sandbox cgroups under ``<dir>/<name>`` of each controller's
    directory in ``dirs`` (the daemon's own cgroup in each hierarchy).  OSError if it
    cannot."""
    parents = {c: os.path.join(d, name) for c, d in dirs.items()}
    for path in set(parents.values()):
        os.makedirs(path, exist_ok=True)
    return CgroupManager(1, parents)


def _find(mountinfo: str | None, proc_cgroup: str | None) -> tuple[int, dict[str, str]] | str:
    """``(version, {controller or "": the daemon's own cgroup directory})`` where the
    controllers are, or why there are none."""
    try:
        if mountinfo is None:
            mountinfo = _read("/proc/self/mountinfo")
        if proc_cgroup is None:
            proc_cgroup = _read("/proc/self/cgroup")
    except OSError as exc:
        return f"cgroups unavailable: {exc}"
    unified, v1 = _mounts(mountinfo)
    own = _own(proc_cgroup)
    if unified is not None and "" in own:
        directory = os.path.join(unified, own[""].lstrip("/"))
        try:
            available = _read(os.path.join(directory, "cgroup.controllers")).split()
        except OSError:
            available = []
        if all(c in available for c in REQUIRED):
            return 2, {"": directory}
    missing = [c for c in REQUIRED if c not in v1]
    if missing:
        return (
            "cgroups unavailable: neither the cgroup v2 hierarchy nor cgroup v1 mounts "
            f"offer the {', '.join(missing)} controller"
        )
    return 1, {c: os.path.join(point, own.get(c, "/").lstrip("/")) for c, point in v1.items()}


def probe_cgroups() -> str:
    """What :func:`detect_cgroups` would find here (``cgroup v1 (cpu, memory, ...)``), or
    why cgroups cannot be used; makes nothing."""
    found = _find(None, None)
    if isinstance(found, str):
        return found
    version, dirs = found
    if version == 2:
        return f"cgroup v2 ({dirs['']})"
    return f"cgroup v1 ({', '.join(sorted(dirs))})"


def detect_cgroups(
    name: str,
    *,
    mountinfo: str | None = None,
    proc_cgroup: str | None = None,
) -> tuple[CgroupManager | None, str]:
    """Find the controllers and make the daemon's parent cgroup ``name``: the manager and a
    line saying what was found, or None and why cgroups cannot be used."""
    found = _find(mountinfo, proc_cgroup)
    if isinstance(found, str):
        return None, found
    version, dirs = found
    try:
        manager = manager_v2(dirs[""], name) if version == 2 else manager_v1(dirs, name)
    except OSError as exc:
        return None, (
            f"cgroups unavailable: cgroup v{version}: {exc.strerror or exc}: {exc.filename} "
            "(run the daemon as root, or delegate a cgroup subtree to its user)"
        )
    return manager, manager.describe()


# -- the backend wrapper ----------------------------------------------------------------------


@final
class _ExitReason:
    """What the exit watcher learnt, shared with the sandbox made once start returns."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None


def _on_exit(cgroup: SandboxCgroup, holder: _ExitReason, on_exit: ExitCallback) -> ExitCallback:
    def exited(status: int) -> None:
        with contextlib.suppress(OSError):
            if status == 128 + _signal.SIGKILL and cgroup.oom_kills() > 0:
                holder.reason = OOM_KILLED
        on_exit(status)

    return exited


@final
class CgroupBackend:
    """Another backend (``process``, ``bwrap``), each of whose sandboxes runs in a cgroup of
    its own, with the limits of ``options.resources``.

    ``cgroups`` None (cgroups unusable here, ``reason`` saying why): Create with resources
    is FailedPrecondition saying why; without, sandboxes run as the inner backend runs them.
    Every sandbox gets a cgroup when they are usable, resources or not (as containerd
    does): its teardown reaches every process it started.
    """

    __slots__ = ("_cgroups", "_inner", "_reason")

    def __init__(self, inner: Backend, cgroups: CgroupManager | None, reason: str = "") -> None:
        self._inner = inner
        self._cgroups = cgroups
        self._reason = reason

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def cgroups(self) -> CgroupManager | None:
        return self._cgroups

    def unavailable_reason(self) -> str | None:
        return self._inner.unavailable_reason()

    def platform(self) -> Platform:
        return self._inner.platform()

    def validate(self, spec: SandboxSpec) -> None:
        """The inner backend's checks; FailedPrecondition for resources that cannot be
        applied here."""
        resources = spec.options.resources
        # The inner backend refuses limits it cannot apply; these are applied here.
        self._inner.validate(
            attrs.evolve(spec, options=attrs.evolve(spec.options, resources=None))
        )
        if resources is not None:
            if self._cgroups is None:
                raise FailedPrecondition(f"options.resources: {self._reason}")
            self._cgroups.check(resources)

    async def start(
        self,
        spec: SandboxSpec,
        nursery: trio.Nursery,
        on_exit: ExitCallback,
        on_spawned: SpawnCallback | None = None,
    ) -> SandboxProcess:
        """The inner backend's start, its init moved into the sandbox's new cgroup while it
        is held (before it runs anything of the sandbox's).  Whenever this raises, the
        cgroup is killed and removed.  A sandbox without resources whose cgroup cannot be
        made runs without one (logged)."""
        if self._cgroups is None:
            return await self._inner.start(spec, nursery, on_exit, on_spawned)
        try:
            cgroup = self._cgroups.create(spec.sandbox_id, spec.options.resources)
        except FailedPrecondition as exc:
            if spec.options.resources is not None:
                raise
            # Nothing asked of the cgroup but a complete teardown: run as without cgroups.
            log.warning("sandbox %s: runs without a cgroup: %s", spec.sandbox_id, exc)
            return await self._inner.start(spec, nursery, on_exit, on_spawned)
        holder = _ExitReason()

        async def spawned(pid: int, identity: Mapping[str, Any]) -> None:
            try:
                cgroup.add(pid)
            except OSError as exc:
                raise FailedPrecondition(
                    f"cannot start sandbox {spec.sandbox_id}: cannot join its cgroup: "
                    f"{exc.strerror or exc}"
                ) from exc
            if on_spawned is not None:
                await on_spawned(pid, identity)

        try:
            process = await self._inner.start(
                spec, nursery, _on_exit(cgroup, holder, on_exit), spawned
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await cgroup.remove()
            raise
        return CgroupSandbox(process, cgroup, nursery, holder)

    def discard(self, pid: int, identity: Mapping[str, Any]) -> None:
        self._inner.discard(pid, identity)

    def adopt(
        self,
        spec: SandboxSpec,
        pid: int,
        identity: Mapping[str, Any],
        nursery: trio.Nursery,
        on_exit: ExitCallback,
    ) -> SandboxProcess | None:
        """The inner backend's adoption, with the sandbox's cgroup taken back."""
        cgroup = None if self._cgroups is None else self._cgroups.find(spec.sandbox_id)
        if cgroup is None:
            return self._inner.adopt(spec, pid, identity, nursery, on_exit)
        holder = _ExitReason()
        process = self._inner.adopt(
            spec, pid, identity, nursery, _on_exit(cgroup, holder, on_exit)
        )
        if process is None:
            return None
        return CgroupSandbox(process, cgroup, nursery, holder)


@final
class CgroupSandbox:
    """A sandbox of a :class:`CgroupBackend`: the inner sandbox, with its cgroup."""

    __slots__ = ("_cgroup", "_ended", "_exit", "_inner", "_nursery")

    def __init__(
        self,
        inner: SandboxProcess,
        cgroup: SandboxCgroup,
        nursery: trio.Nursery,
        exit: _ExitReason,
    ) -> None:
        self._inner = inner
        self._cgroup = cgroup
        self._nursery = nursery
        self._exit = exit
        self._ended = False

    @property
    def cgroup(self) -> SandboxCgroup:
        return self._cgroup

    @property
    def exit_reason(self) -> str | None:
        """``oom_killed`` when the OOM killer ended the init; else None."""
        return self._exit.reason

    @property
    def pid(self) -> int:
        return self._inner.pid

    def signal(self, signum: int) -> None:
        """SIGKILL kills the whole cgroup; other signals go as the inner sandbox sends
        them."""
        if self._ended:
            return
        self._inner.signal(signum)
        if signum == _signal.SIGKILL:
            self._cgroup.kill()

    def cleanup(self) -> None:
        """Kill every member of the cgroup (double-forked and setsid ones too), clean up
        the inner sandbox, and remove the cgroup once its members have finished dying."""
        if self._ended:
            return
        self._ended = True
        self._cgroup.kill()
        self._inner.cleanup()
        if not self._cgroup.try_remove():
            self._nursery.start_soon(self._cgroup.remove, name="sandboxd: remove a cgroup")

    def info(self) -> Mapping[str, str]:
        """The inner sandbox's, with ``cgroup`` (its directories)."""
        return {**self._inner.info(), "cgroup": " ".join(self._cgroup.paths)}

    def usage(self) -> tuple[int, int, int]:
        """``(cpu_ns, memory_bytes, pids)`` from the cgroup's counters (memory is what the
        cgroup is charged: page cache included)."""
        usage = self._cgroup.usage()
        return usage.cpu_ns, usage.memory_bytes, usage.pids

    def counters(self) -> CgroupUsage:
        """Every counter of the cgroup."""
        return self._cgroup.usage()

    def identity(self) -> Mapping[str, Any]:
        return self._inner.identity()

    @property
    def usage_blocks(self) -> bool:
        """False: a few small cgroup files are read."""
        return False

    @property
    def output(self) -> tuple[int, int] | None:
        return self._inner.output

    async def exec(self, spec: ExecSpec) -> ExecProcess:
        """The inner sandbox's exec, its relay joining the cgroup before it runs anything
        of the command's."""
        return await self._inner.exec(attrs.evolve(spec, cgroups=self._cgroup.procs_files))

    def open_file(self, path: str, *, write: bool, mode: int | None = None) -> int:
        return self._inner.open_file(path, write=write, mode=mode)


def exit_reason(process: SandboxProcess | None) -> str | None:
    """Why a sandbox's init ended, when its backend knows (``oom_killed``); else None."""
    return process.exit_reason if isinstance(process, CgroupSandbox) else None


def cgroup_counters(process: SandboxProcess | None) -> CgroupUsage | None:
    """The cgroup counters of a sandbox that has a cgroup; None for others."""
    if not isinstance(process, CgroupSandbox):
        return None
    try:
        return process.counters()
    except OSError:
        return None


def with_cgroups(
    backends: Iterable[Backend], cgroups: CgroupManager | None, reason: str = ""
) -> list[Backend]:
    """``backends`` with ``process`` and ``bwrap`` wrapped in :class:`CgroupBackend`."""
    return [
        CgroupBackend(b, cgroups, reason) if b.name in ("process", "bwrap") else b
        for b in backends
    ]
