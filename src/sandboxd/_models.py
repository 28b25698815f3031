"""The value objects every layer speaks: frozen, slotted, validated at construction."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from ._errors import InvalidArgument

#: containerd's rule for identifiers.
SANDBOX_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
MAX_SANDBOX_ID_LENGTH: Final = 76


def check_sandbox_id(sandbox_id: object, field: str = "sandbox_id") -> str:
    """Return ``sandbox_id`` if it is a valid id, else raise :class:`~sandboxd.InvalidArgument`
    naming ``field`` (exec ids follow the same rule)."""
    if type(sandbox_id) is not str:
        raise InvalidArgument(f"{field}: must be text")
    if not sandbox_id:
        raise InvalidArgument(f"{field}: must not be empty")
    if len(sandbox_id) > MAX_SANDBOX_ID_LENGTH:
        raise InvalidArgument(
            f"{field}: {len(sandbox_id)} characters, at most {MAX_SANDBOX_ID_LENGTH} allowed"
        )
    if SANDBOX_ID_PATTERN.fullmatch(sandbox_id) is None:
        raise InvalidArgument(
            f"{field} {sandbox_id!r}: must be letters and digits, separated by single "
            "'.', '_' or '-'"
        )
    return sandbox_id


class SandboxState(enum.StrEnum):
    """The states Status reports.  After Shutdown a sandbox is gone: NOT_FOUND."""

    CREATED = "created"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"


def _frozen_map(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value) if value else {}


def _texts(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _optional_texts(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if isinstance(value, str):
        # tuple("sleep 1") would be a tuple of characters: refuse, do not guess.
        raise InvalidArgument("options.command: must be an array of text, not one string")
    return None if value is None else tuple(value)


def _mounts(value: Iterable[Mount]) -> tuple[Mount, ...]:
    return tuple(value)


def _check_lifetime(_: object, __: object, value: float | None) -> None:
    """``options.lifetime_secs``: a positive finite number of seconds, or None."""
    if value is None:
        return
    if type(value) not in (int, float) or not 0 < value < float("inf"):
        raise InvalidArgument("options.lifetime_secs: must be a positive finite number")


@attrs.frozen(slots=True)
class Mount:
    """One mount of a sandbox's root filesystem, as in an OCI spec."""

    type: str
    source: str
    target: str
    options: tuple[str, ...] = attrs.field(default=(), converter=_texts)


def _in_range(low: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None and not low <= value <= MAX_RESOURCE:
            raise InvalidArgument(
                f"options.resources.{attribute.name}: {value} is out of range "
                f"({low} to {MAX_RESOURCE})"
            )

    return check


#: The largest value a resource limit may have.
MAX_RESOURCE: Final = 1 << 62


@attrs.frozen(slots=True)
class Resources:
    """A sandbox's resource limits, applied through its cgroup; ``None`` leaves one unset.

    ``memory_bytes``: memory the sandbox may use (at least 1 MiB) before the OOM killer
    acts.  ``memory_swap_bytes``: swap it may use besides (with ``memory_bytes`` and no
    swap given: none).  ``cpu_millis``: CPU time per wall time, 1000 for one CPU (at least
    10).  ``pids``: how many processes and threads it may have at once.
    """

    memory_bytes: int | None = attrs.field(default=None, validator=_in_range(1 << 20))
    memory_swap_bytes: int | None = attrs.field(default=None, validator=_in_range(0))
    cpu_millis: int | None = attrs.field(default=None, validator=_in_range(10))
    pids: int | None = attrs.field(default=None, validator=_in_range(1))


@attrs.frozen(slots=True)
class SandboxOptions:
    """How the sandbox's init process runs.

    ``command`` is the argv of the sandbox's init process; ``None`` runs a pause process that
    only waits for a signal.  ``sim`` holds the ``sim`` backend's settings (ignored by the
    others).  ``seccomp`` is the system-call filter of a ``bwrap`` sandbox: ``"default"``
    (also when None), ``"unconfined"``, or a profile in Docker's JSON format.
    ``lifetime_secs``: once the sandbox has been ready that long it is stopped as a Stop with
    the default timeout stops it (its exit then says ``reason: lifetime_expired``).
    """

    command: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_texts)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)
    cwd: str | None = None
    hostname: str | None = None
    host_network: bool = False
    sim: Mapping[str, Any] | None = None
    seccomp: str | Mapping[str, Any] | None = None
    #: Resource limits (see :class:`Resources`); ``None``: none.
    resources: Resources | None = None
    lifetime_secs: float | None = attrs.field(default=None, validator=_check_lifetime)


@attrs.frozen(slots=True)
class SandboxSpec:
    """Everything Create was given about one sandbox."""

    sandbox_id: str
    sandboxer: str
    options: SandboxOptions = attrs.field(factory=SandboxOptions)
    rootfs: tuple[Mount, ...] = attrs.field(default=(), converter=_mounts)
    netns_path: str | None = None
    annotations: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)


@attrs.frozen(slots=True)
class SandboxInstance:
    """What Start returns."""

    sandbox_id: str
    pid: int
    created_at: datetime
    labels: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""


@attrs.frozen(slots=True)
class ExitStatus:
    """What Wait returns: 128+N for death by signal N, as containerd reports it."""

    exit_status: int
    exited_at: datetime


@attrs.frozen(slots=True)
class SandboxStatus:
    """What Status returns (and List, one per sandbox)."""

    sandbox_id: str
    pid: int
    state: SandboxState
    info: Mapping[str, str]
    created_at: datetime
    exited_at: datetime | None = None
    extra: Mapping[str, Any] | None = None


@attrs.frozen(slots=True)
class SandboxMetrics:
    """Resource use summed over a sandbox's processes."""

    sandbox_id: str
    timestamp: datetime
    cpu_ns: int
    memory_rss_bytes: int
    pids: int
    #: From the sandbox's cgroup, when it has one (else None): the most memory it was
    #: charged at once, and how many of its processes the OOM killer killed.
    memory_peak_bytes: int | None = None
    oom_kills: int | None = None


@attrs.frozen(slots=True)
class SandboxEvent:
    """One lifecycle event, with the topics containerd publishes.

    A subscriber that fell behind receives one event with topic :data:`TOPIC_DROPPED`, its
    ``dropped`` count saying how many events it missed, before the events that follow.
    """

    topic: str
    sandbox_id: str
    timestamp: datetime
    exit_status: int | None = None
    dropped: int | None = None
    #: The exec an ``exec-start`` or ``exec-exit`` event is about.
    exec_id: str | None = None
    #: Why the sandbox ended, on an exit event, when known: ``oom_killed`` (the OOM killer),
    #: :data:`REASON_LIFETIME_EXPIRED` (its lifetime).
    reason: str | None = None


TOPIC_CREATE: Final = "/sandboxes/create"
TOPIC_START: Final = "/sandboxes/start"
TOPIC_EXIT: Final = "/sandboxes/exit"
TOPIC_DELETE: Final = "/sandboxes/delete"
TOPIC_EXEC_START: Final = "/sandboxes/exec-start"
TOPIC_EXEC_EXIT: Final = "/sandboxes/exec-exit"
TOPIC_DROPPED: Final = "/events/dropped"

#: The ``reason`` of a sandbox whose ``lifetime_secs`` ran out (Status info, exit event).
REASON_LIFETIME_EXPIRED: Final = "lifetime_expired"


#: Annotations under this prefix are reported in Status ``info``, keyed by the rest of their
#: key: what a caller gave at Create that sandboxd keeps without acting on it (containerd's
#: bundle path, options of a type sandboxd does not know).
ANNOTATION_INFO_PREFIX: Final = "sandboxd.io/info."


#: The streams of an exec's (and a sandbox's) output.
STDOUT: Final = "stdout"
STDERR: Final = "stderr"
#: What ExecSync keeps of each output stream by default.
DEFAULT_EXEC_SYNC_OUTPUT: Final = 1 << 20


@attrs.frozen(slots=True)
class WindowSize:
    """A pseudo-terminal's size, in character cells."""

    rows: int
    cols: int


@attrs.frozen(slots=True)
class ExecRequest:
    """One command to run inside a running sandbox (Exec and ExecSync).

    ``env`` is added to the sandbox's own environment; ``cwd`` defaults to the sandbox's;
    ``user`` is ``"uid"`` or ``"uid:gid"`` (numbers, as seen inside the sandbox).  ``tty``
    gives the command a pseudo-terminal of ``window``'s size (its output then comes as
    stdout alone); ``stdin`` gives it a standard input the caller writes (else /dev/null).
    ``timeout_secs`` kills the command's whole process tree when it has run that long.
    ``exec_id`` is unique within the sandbox, chosen by the runtime when absent.
    """

    command: tuple[str, ...] = attrs.field(converter=_texts)
    exec_id: str | None = None
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)
    cwd: str | None = None
    tty: bool = False
    stdin: bool = False
    timeout_secs: float | None = None
    user: str | None = None
    window: WindowSize | None = None


@attrs.frozen(slots=True)
class ExecOutput:
    """A chunk of an exec's output, on :data:`STDOUT` or :data:`STDERR`, in order."""

    stream: str
    data: bytes


@attrs.frozen(slots=True)
class ExecExit:
    """How an exec ended: 128+N for death by signal N (then ``signal`` is N), and whether
    its timeout killed it."""

    exit_status: int
    timed_out: bool = False
    signal: int | None = None


@attrs.frozen(slots=True)
class ExecSyncResult:
    """What ExecSync returns: the output kept (at most the cap of each stream; ``truncated``
    says more was written and dropped) and how the command ended."""

    exec_id: str
    stdout: bytes
    stderr: bytes
    exit_status: int
    timed_out: bool = False
    truncated: bool = False
    signal: int | None = None


@attrs.frozen(slots=True)
class LogChunk:
    """A chunk of what a sandbox's init wrote, on :data:`STDOUT` or :data:`STDERR`, with the
    time the daemon read it."""

    stream: str
    data: bytes
    timestamp: datetime


@attrs.frozen(slots=True)
class LogGap:
    """Output that was written but is no longer kept (rotated away): ``lost_bytes`` of it,
    where this gap stands in the order of chunks."""

    lost_bytes: int
