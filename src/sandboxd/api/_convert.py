"""Models <-> CBOR-friendly messages, in one place, strictly.

Incoming messages are checked field by field: a missing required field, a field of the wrong
type or a field the method does not know is an :class:`~sandboxd.InvalidArgument` that names
it (``Create: options.env['A']: must be text``).  Nothing is coerced: ``"5"`` is not a number
and ``1`` is not a boolean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, NoReturn

from cbor2 import CBORTag

from .._errors import InvalidArgument
from .._models import (
    DEFAULT_EXEC_SYNC_OUTPUT,
    STDERR,
    STDOUT,
    ExecExit,
    ExecOutput,
    ExecRequest,
    ExecSyncResult,
    ExitStatus,
    ListPage,
    LogChunk,
    LogGap,
    Mount,
    Platform,
    Resources,
    SandboxEvent,
    SandboxInstance,
    SandboxMetrics,
    SandboxOptions,
    SandboxState,
    SandboxStatus,
    WindowSize,
    check_list_limit,
    check_page_token,
    check_sandbox_id,
)
from .._status_shape import plain_status
from ..wire import MAX_PAYLOAD

Message = Mapping[str, Any]


def _stamp(when: datetime) -> CBORTag:
    """A timestamp as CBOR tag 1 (epoch seconds): cbor2 encodes the tag several times faster
    than it converts a datetime itself."""
    return CBORTag(1, when.timestamp())


# -- reading fields --------------------------------------------------------------------------


def check_fields(msg: Message, allowed: frozenset[str], where: str) -> None:
    for key in msg:
        if key not in allowed:
            raise InvalidArgument(f"{where}: unknown field {key!r}")


def _text(value: object, where: str) -> str:
    if type(value) is not str:
        raise InvalidArgument(f"{where}: must be text")
    return value


def _opt_text(msg: Message, name: str, where: str) -> str | None:
    value = msg.get(name)
    return None if value is None else _text(value, f"{where}.{name}")


def _text_map(value: object, where: str) -> dict[str, str]:
    if type(value) is not dict:
        raise InvalidArgument(f"{where}: must be a map of text to text")
    for key, item in value.items():
        if type(key) is not str:
            raise InvalidArgument(f"{where}: keys must be text")
        if type(item) is not str:
            raise InvalidArgument(f"{where}[{key!r}]: must be text")
    return value


def _opt_text_map(msg: Message, name: str, where: str) -> dict[str, str] | None:
    value = msg.get(name)
    return None if value is None else _text_map(value, f"{where}.{name}")


def _text_list(value: object, where: str) -> list[str]:
    if type(value) is not list:
        raise InvalidArgument(f"{where}: must be an array of text")
    for i, item in enumerate(value):
        if type(item) is not str:
            raise InvalidArgument(f"{where}[{i}]: must be text")
    return value


def _bool(value: object, where: str) -> bool:
    if type(value) is not bool:
        raise InvalidArgument(f"{where}: must be a boolean")
    return value


def _number(value: object, where: str) -> float:
    if type(value) not in (int, float):
        raise InvalidArgument(f"{where}: must be a number")
    number = float(value)  # type: ignore[arg-type]
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidArgument(f"{where}: must be finite")
    return number


def _int(value: object, where: str) -> int:
    if type(value) is not int:
        raise InvalidArgument(f"{where}: must be an integer")
    return value


def _time(value: object, where: str) -> datetime:
    if type(value) is not datetime or value.tzinfo is None:
        raise InvalidArgument(f"{where}: must be a timestamp (CBOR tag 1)")
    return value


def sandbox_id_of(msg: Message, where: str) -> str:
    """The required ``sandbox_id`` of a request: checked before anything is looked up."""
    if "sandbox_id" not in msg:
        raise InvalidArgument(f"{where}: field 'sandbox_id' is required")
    try:
        return check_sandbox_id(msg["sandbox_id"])
    except InvalidArgument as err:
        raise InvalidArgument(f"{where}: {err.message}") from None


_ID_ONLY: Final = frozenset({"sandbox_id"})


def id_request(msg: Message, where: str) -> str:
    check_fields(msg, _ID_ONLY, where)
    return sandbox_id_of(msg, where)


# -- requests ---------------------------------------------------------------------------------

_CREATE_FIELDS: Final = frozenset(
    {"sandbox_id", "sandboxer", "rootfs", "options", "netns_path", "annotations", "labels"}
)
_OPTION_FIELDS: Final = frozenset(
    {
        "command",
        "env",
        "cwd",
        "hostname",
        "host_network",
        "sim",
        "seccomp",
        "resources",
        "lifetime_secs",
    }
)
_MOUNT_FIELDS: Final = frozenset({"type", "source", "target", "options"})


def create_request(msg: Message) -> dict[str, Any]:
    """The keyword arguments of ``Controller.create`` for a Create message."""
    where = "Create"
    check_fields(msg, _CREATE_FIELDS, where)
    args: dict[str, Any] = {"sandbox_id": sandbox_id_of(msg, where)}
    args["sandboxer"] = _opt_text(msg, "sandboxer", where)
    args["netns_path"] = _opt_text(msg, "netns_path", where)
    args["annotations"] = _opt_text_map(msg, "annotations", where)
    args["labels"] = _opt_text_map(msg, "labels", where)
    rootfs = msg.get("rootfs")
    if rootfs is not None:
        if type(rootfs) is not list:
            raise InvalidArgument(f"{where}.rootfs: must be an array of mounts")
        args["rootfs"] = [_mount(m, f"{where}.rootfs[{i}]") for i, m in enumerate(rootfs)]
    options = msg.get("options")
    if options is not None:
        args["options"] = _options(options, f"{where}.options")
    return args


def _mount(value: object, where: str) -> Mount:
    if type(value) is not dict:
        raise InvalidArgument(f"{where}: must be a map")
    check_fields(value, _MOUNT_FIELDS, where)
    for name in ("type", "source", "target"):
        if name not in value:
            raise InvalidArgument(f"{where}: field {name!r} is required")
    options = value.get("options")
    return Mount(
        type=_text(value["type"], f"{where}.type"),
        source=_text(value["source"], f"{where}.source"),
        target=_text(value["target"], f"{where}.target"),
        options=() if options is None else _text_list(options, f"{where}.options"),
    )


def _options(value: object, where: str) -> SandboxOptions:
    if type(value) is not dict:
        raise InvalidArgument(f"{where}: must be a map")
    check_fields(value, _OPTION_FIELDS, where)
    command = value.get("command")
    env = value.get("env")
    host_network = value.get("host_network")
    sim = value.get("sim")
    if sim is not None and type(sim) is not dict:
        raise InvalidArgument(f"{where}.sim: must be a map")
    return SandboxOptions(
        command=None if command is None else _text_list(command, f"{where}.command"),
        env={} if env is None else _text_map(env, f"{where}.env"),
        cwd=_opt_text(value, "cwd", where),
        hostname=_opt_text(value, "hostname", where),
        host_network=False
        if host_network is None
        else _bool(host_network, f"{where}.host_network"),
        sim=sim,
        seccomp=_seccomp(value.get("seccomp"), f"{where}.seccomp"),
        resources=_resources(value.get("resources"), f"{where}.resources"),
        lifetime_secs=_lifetime(value, where),
    )


def _seccomp(value: object, where: str) -> str | dict[str, Any] | None:
    """``options.seccomp``: a name (the sandboxer checks which) or a profile (a map, whose
    fields the sandboxer checks)."""
    if value is None or type(value) is str or type(value) is dict:
        return value
    raise InvalidArgument(f"{where}: must be text ('default', 'unconfined') or a profile map")


_RESOURCE_FIELDS: Final = ("memory_bytes", "memory_swap_bytes", "cpu_millis", "pids")


def _resources(value: object, where: str) -> Resources | None:
    """``options.resources``: a map of integers, each checked by :class:`Resources`."""
    if value is None:
        return None
    if type(value) is not dict:
        raise InvalidArgument(f"{where}: must be a map")
    check_fields(value, frozenset(_RESOURCE_FIELDS), where)
    numbers = {
        name: _int(value[name], f"{where}.{name}")
        for name in _RESOURCE_FIELDS
        if value.get(name) is not None
    }
    if "memory_swap_bytes" in numbers and "memory_bytes" not in numbers:
        raise InvalidArgument(f"{where}.memory_swap_bytes: needs memory_bytes")
    return Resources(**numbers)


def resources_message(resources: Resources) -> dict[str, int]:
    return {
        name: number
        for name in _RESOURCE_FIELDS
        if (number := getattr(resources, name)) is not None
    }


def _lifetime(options: Message, where: str) -> float | None:
    value = options.get("lifetime_secs")
    if value is None:
        return None
    lifetime = _number(value, f"{where}.lifetime_secs")
    if lifetime <= 0:
        raise InvalidArgument(f"{where}.lifetime_secs: must be a positive finite number")
    return lifetime


_STOP_FIELDS: Final = frozenset({"sandbox_id", "timeout_secs"})


def stop_request(msg: Message) -> tuple[str, float | None]:
    where = "Stop"
    check_fields(msg, _STOP_FIELDS, where)
    sandbox_id = sandbox_id_of(msg, where)
    timeout = msg.get("timeout_secs")
    if timeout is None:
        return sandbox_id, None
    seconds = _number(timeout, f"{where}.timeout_secs")
    if seconds < 0:
        raise InvalidArgument(f"{where}.timeout_secs: must be >= 0")
    return sandbox_id, seconds


_STATUS_FIELDS: Final = frozenset({"sandbox_id", "verbose"})


def status_request(msg: Message) -> tuple[str, bool]:
    where = "Status"
    check_fields(msg, _STATUS_FIELDS, where)
    sandbox_id = sandbox_id_of(msg, where)
    verbose = msg.get("verbose")
    return sandbox_id, False if verbose is None else _bool(verbose, f"{where}.verbose")


_LIST_FIELDS: Final = frozenset({"labels", "limit", "page_token"})


def list_request(msg: Message) -> tuple[dict[str, str] | None, int, str | None]:
    """The labels, page size and page token of a List message (see ``Controller.list_page``)."""
    where = "List"
    check_fields(msg, _LIST_FIELDS, where)
    labels = _opt_text_map(msg, "labels", where)
    page_token = msg.get("page_token")
    try:
        limit = check_list_limit(msg.get("limit"))
        check_page_token(page_token)
    except InvalidArgument as err:
        raise InvalidArgument(f"{where}.{err.message}") from None
    return labels, limit, page_token


# -- messages out of models ------------------------------------------------------------------


def options_message(options: SandboxOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if options.command is not None:
        out["command"] = list(options.command)
    if options.env:
        out["env"] = dict(options.env)
    if options.cwd is not None:
        out["cwd"] = options.cwd
    if options.hostname is not None:
        out["hostname"] = options.hostname
    if options.host_network:
        out["host_network"] = True
    if options.sim is not None:
        out["sim"] = dict(options.sim)
    if options.seccomp is not None:
        out["seccomp"] = (
            options.seccomp if isinstance(options.seccomp, str) else dict(options.seccomp)
        )
    if options.resources is not None:
        out["resources"] = resources_message(options.resources)
    if options.lifetime_secs is not None:
        out["lifetime_secs"] = options.lifetime_secs
    return out


def mount_message(mount: Mount) -> dict[str, Any]:
    return {
        "type": mount.type,
        "source": mount.source,
        "target": mount.target,
        "options": list(mount.options),
    }


def instance_message(inst: SandboxInstance) -> dict[str, Any]:
    return {
        "sandbox_id": inst.sandbox_id,
        "pid": inst.pid,
        "created_at": _stamp(inst.created_at),
        "labels": dict(inst.labels),
    }


def platform_message(platform: Platform) -> dict[str, Any]:
    return {
        "platform": {
            "os": platform.os,
            "architecture": platform.architecture,
            "variant": platform.variant,
        }
    }


def exit_message(status: ExitStatus) -> dict[str, Any]:
    return {"exit_status": status.exit_status, "exited_at": _stamp(status.exited_at)}


def status_message(status: SandboxStatus) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sandbox_id": status.sandbox_id,
        "pid": status.pid,
        "state": status.state.value,
        "info": dict(status.info),
        "created_at": _stamp(status.created_at),
    }
    if status.exited_at is not None:
        out["exited_at"] = _stamp(status.exited_at)
    if status.extra is not None:
        out["extra"] = dict(status.extra)
    return out


def metrics_message(metrics: SandboxMetrics) -> dict[str, Any]:
    return {
        "sandbox_id": metrics.sandbox_id,
        "timestamp": _stamp(metrics.timestamp),
        "cpu_ns": metrics.cpu_ns,
        "memory_rss_bytes": metrics.memory_rss_bytes,
        "pids": metrics.pids,
        **_cgroup_metrics(metrics),
    }


def _cgroup_metrics(metrics: SandboxMetrics) -> dict[str, int]:
    out = {}
    if metrics.memory_peak_bytes is not None:
        out["memory_peak_bytes"] = metrics.memory_peak_bytes
    if metrics.oom_kills is not None:
        out["oom_kills"] = metrics.oom_kills
    return out


def event_message(event: SandboxEvent) -> dict[str, Any]:
    out: dict[str, Any] = {
        "topic": event.topic,
        "sandbox_id": event.sandbox_id,
        "timestamp": _stamp(event.timestamp),
    }
    if event.exit_status is not None:
        out["exit_status"] = event.exit_status
    if event.dropped is not None:
        out["dropped"] = event.dropped
    if event.exec_id is not None:
        out["exec_id"] = event.exec_id
    if event.reason is not None:
        out["reason"] = event.reason
    return out


# -- request messages out of arguments (the clients' side) ------------------------------------


def create_message(
    sandbox_id: str,
    sandboxer: str | None,
    options: SandboxOptions | None,
    rootfs: Iterable[Mount],
    netns_path: str | None,
    annotations: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
) -> dict[str, Any]:
    msg: dict[str, Any] = {"sandbox_id": sandbox_id}
    if sandboxer is not None:
        msg["sandboxer"] = sandboxer
    if options is not None:
        msg["options"] = options_message(options)
    mounts = [mount_message(m) for m in rootfs]
    if mounts:
        msg["rootfs"] = mounts
    if netns_path is not None:
        msg["netns_path"] = netns_path
    if annotations:
        msg["annotations"] = dict(annotations)
    if labels:
        msg["labels"] = dict(labels)
    return msg


def stop_message(sandbox_id: str, timeout_secs: float | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"sandbox_id": sandbox_id}
    if timeout_secs is not None:
        msg["timeout_secs"] = timeout_secs
    return msg


def status_request_message(sandbox_id: str, verbose: bool) -> dict[str, Any]:
    msg: dict[str, Any] = {"sandbox_id": sandbox_id}
    if verbose:
        msg["verbose"] = True
    return msg


def list_message(
    labels: Mapping[str, str] | None, limit: int | None, page_token: str | None
) -> dict[str, Any]:
    msg: dict[str, Any] = {"labels": dict(labels)} if labels else {}
    if limit is not None:
        msg["limit"] = limit
    if page_token:
        msg["page_token"] = page_token
    return msg


def created_from(msg: Message) -> str:
    return _text(_required(msg, "sandbox_id", "Create response"), "Create response.sandbox_id")


def list_page_from(msg: Message) -> ListPage:
    where = "List response"
    sandboxes = _required(msg, "sandboxes", where)
    if type(sandboxes) is not list:
        raise InvalidArgument(f"{where}.sandboxes: must be an array")
    token = _opt_text(msg, "next_page_token", where)
    return ListPage(tuple(map(status_from, sandboxes)), token or None)


# -- models out of response messages (the clients' side) --------------------------------------


def _required(msg: Message, name: str, where: str) -> Any:
    if name not in msg:
        raise InvalidArgument(f"{where}: field {name!r} is missing")
    return msg[name]


def instance_from(msg: Message) -> SandboxInstance:
    where = "Start response"
    labels = msg.get("labels")
    return SandboxInstance(
        sandbox_id=_text(_required(msg, "sandbox_id", where), f"{where}.sandbox_id"),
        pid=_int(_required(msg, "pid", where), f"{where}.pid"),
        created_at=_time(_required(msg, "created_at", where), f"{where}.created_at"),
        labels={} if labels is None else _text_map(labels, f"{where}.labels"),
    )


def platform_from(msg: Message) -> Platform:
    where = "Platform response"
    platform = _required(msg, "platform", where)
    if type(platform) is not dict:
        raise InvalidArgument(f"{where}.platform: must be a map")
    return Platform(
        os=_text(_required(platform, "os", where), f"{where}.os"),
        architecture=_text(_required(platform, "architecture", where), f"{where}.architecture"),
        variant=_text(platform.get("variant", ""), f"{where}.variant"),
    )


def exit_from(msg: Message) -> ExitStatus:
    where = "Wait response"
    return ExitStatus(
        exit_status=_int(_required(msg, "exit_status", where), f"{where}.exit_status"),
        exited_at=_time(_required(msg, "exited_at", where), f"{where}.exited_at"),
    )


_STATES: Final = {state.value: state for state in SandboxState}


def status_from(msg: Message) -> SandboxStatus:
    fields = plain_status(msg)
    if fields is None:
        _status_refused(msg)  # says what is wrong
    sandbox_id, pid, state, info, created_at, exited_at, extra = fields
    return SandboxStatus(sandbox_id, pid, _STATES[state], info, created_at, exited_at, extra)


def _status_refused(msg: Message) -> NoReturn:
    """Raise the INVALID_ARGUMENT that says what is wrong with a status message."""
    where = "Status response"
    exited_at = msg.get("exited_at")
    extra = msg.get("extra")
    state = _text(_required(msg, "state", where), f"{where}.state")
    if state not in _STATES:
        raise InvalidArgument(f"{where}.state: unknown state {state!r}")
    if extra is not None and type(extra) is not dict:
        raise InvalidArgument(f"{where}.extra: must be a map")
    _text(_required(msg, "sandbox_id", where), f"{where}.sandbox_id")
    _int(_required(msg, "pid", where), f"{where}.pid")
    _text_map(msg.get("info", {}), f"{where}.info")
    _time(_required(msg, "created_at", where), f"{where}.created_at")
    if exited_at is not None:
        _time(exited_at, f"{where}.exited_at")
    raise InvalidArgument(f"{where}: malformed")  # not reached: a check above failed


def metrics_from(msg: Message) -> SandboxMetrics:
    where = "Metrics response"
    return SandboxMetrics(
        sandbox_id=_text(_required(msg, "sandbox_id", where), f"{where}.sandbox_id"),
        timestamp=_time(_required(msg, "timestamp", where), f"{where}.timestamp"),
        cpu_ns=_int(_required(msg, "cpu_ns", where), f"{where}.cpu_ns"),
        memory_rss_bytes=_int(
            _required(msg, "memory_rss_bytes", where), f"{where}.memory_rss_bytes"
        ),
        pids=_int(_required(msg, "pids", where), f"{where}.pids"),
        memory_peak_bytes=_opt_int(msg, "memory_peak_bytes", where),
        oom_kills=_opt_int(msg, "oom_kills", where),
    )


def _opt_int(msg: Message, name: str, where: str) -> int | None:
    value = msg.get(name)
    return None if value is None else _int(value, f"{where}.{name}")


def event_from(msg: Message) -> SandboxEvent:
    where = "event"
    exit_status = msg.get("exit_status")
    dropped = msg.get("dropped")
    return SandboxEvent(
        topic=_text(_required(msg, "topic", where), f"{where}.topic"),
        sandbox_id=_text(_required(msg, "sandbox_id", where), f"{where}.sandbox_id"),
        timestamp=_time(_required(msg, "timestamp", where), f"{where}.timestamp"),
        exit_status=None if exit_status is None else _int(exit_status, f"{where}.exit_status"),
        dropped=None if dropped is None else _int(dropped, f"{where}.dropped"),
        exec_id=_opt_text(msg, "exec_id", where),
        reason=_opt_text(msg, "reason", where),
    )


# -- the data plane: Exec, ExecSync, Logs, WriteFile, ReadFile ---------------------------------

#: The largest ``max_output_bytes`` of ExecSync: both streams' output must fit one frame.
MAX_EXEC_SYNC_OUTPUT: Final = MAX_PAYLOAD // 2 - 64 * 1024
#: The largest chunk of bytes one stream message carries (output, file data, stdin).
CHUNK: Final = 1 << 20

_EXEC_SYNC_FIELDS: Final = frozenset(
    {"sandbox_id", "exec_id", "command", "env", "cwd", "timeout_secs", "user", "max_output_bytes"}
)
_EXEC_FIELDS: Final = (_EXEC_SYNC_FIELDS - {"max_output_bytes"}) | {"tty", "stdin", "window"}
_WINDOW_FIELDS: Final = frozenset({"rows", "cols"})


def _bytes(value: object, where: str) -> bytes:
    if type(value) is not bytes:
        raise InvalidArgument(f"{where}: must be a byte string")
    return value


def _count(value: object, where: str, low: int = 0, high: int = 2**63 - 1) -> int:
    number = _int(value, where)
    if not low <= number <= high:
        raise InvalidArgument(f"{where}: must be from {low} to {high}")
    return number


def _window(value: object, where: str) -> WindowSize:
    if type(value) is not dict:
        raise InvalidArgument(f"{where}: must be a map")
    check_fields(value, _WINDOW_FIELDS, where)
    return WindowSize(
        rows=_count(_required_field(value, "rows", where), f"{where}.rows", 0, 65535),
        cols=_count(_required_field(value, "cols", where), f"{where}.cols", 0, 65535),
    )


def _exec_request(msg: Message, where: str, fields: frozenset[str]) -> tuple[str, ExecRequest]:
    check_fields(msg, fields, where)
    sandbox_id = sandbox_id_of(msg, where)
    command = _text_list(_required_field(msg, "command", where), f"{where}.command")
    if not command:
        raise InvalidArgument(f"{where}.command: must not be empty")
    env = _opt_text_map(msg, "env", where)
    timeout = msg.get("timeout_secs")
    seconds = None if timeout is None else _number(timeout, f"{where}.timeout_secs")
    if seconds is not None and seconds <= 0:
        raise InvalidArgument(f"{where}.timeout_secs: must be > 0")
    window = msg.get("window")
    flags = {name: _bool(msg[name], f"{where}.{name}") for name in ("tty", "stdin") if name in msg}
    return sandbox_id, ExecRequest(
        command=command,
        exec_id=_opt_text(msg, "exec_id", where),
        env={} if env is None else env,
        cwd=_opt_text(msg, "cwd", where),
        timeout_secs=seconds,
        user=_opt_text(msg, "user", where),
        window=None if window is None else _window(window, f"{where}.window"),
        **flags,
    )


def exec_request(msg: Message) -> tuple[str, ExecRequest]:
    """``(sandbox_id, request)`` of an Exec request message."""
    return _exec_request(msg, "Exec", _EXEC_FIELDS)


def exec_sync_request(msg: Message) -> tuple[str, ExecRequest, int]:
    """``(sandbox_id, request, max_output_bytes)`` of an ExecSync request message."""
    where = "ExecSync"
    sandbox_id, request = _exec_request(msg, where, _EXEC_SYNC_FIELDS)
    limit = msg.get("max_output_bytes")
    if limit is None:
        return sandbox_id, request, DEFAULT_EXEC_SYNC_OUTPUT
    where = f"{where}.max_output_bytes"
    return sandbox_id, request, _count(limit, where, 0, MAX_EXEC_SYNC_OUTPUT)


def exec_message(sandbox_id: str, request: ExecRequest, *, sync: bool = False) -> dict[str, Any]:
    """The request message of Exec (of ExecSync with ``sync``, which has no tty, stdin or
    window: a request that sets them is refused there)."""
    out: dict[str, Any] = {"sandbox_id": sandbox_id, "command": list(request.command)}
    if request.exec_id is not None:
        out["exec_id"] = request.exec_id
    if request.env:
        out["env"] = dict(request.env)
    for name in ("cwd", "timeout_secs", "user"):
        value = getattr(request, name)
        if value is not None:
            out[name] = value
    if sync:
        if request.tty or request.stdin or request.window is not None:
            raise InvalidArgument("ExecSync: tty, stdin and window are for Exec")
        return out
    if request.tty:
        out["tty"] = True
    if request.stdin:
        out["stdin"] = True
    if request.window is not None:
        out["window"] = {"rows": request.window.rows, "cols": request.window.cols}
    return out


def exec_started_from(msg: Message) -> tuple[str, int]:
    """``(exec_id, pid)`` of Exec's first stream message."""
    where = "Exec started"
    return (
        _text(_required(msg, "exec_id", where), f"{where}.exec_id"),
        _int(_required(msg, "pid", where), f"{where}.pid"),
    )


def output_message(output: ExecOutput) -> dict[str, Any]:
    return {output.stream: output.data}


def output_from(msg: Message) -> ExecOutput:
    """One of Exec's output messages: ``{stdout: bytes}`` or ``{stderr: bytes}``."""
    where = "Exec output"
    if len(msg) != 1:
        raise InvalidArgument(f"{where}: must hold exactly one of 'stdout' and 'stderr'")
    ((stream, data),) = msg.items()
    if stream not in (STDOUT, STDERR):
        raise InvalidArgument(f"{where}: unknown field {stream!r}")
    return ExecOutput(stream, _bytes(data, f"{where}.{stream}"))


_INPUTS: Final = frozenset({"stdin", "close_stdin", "resize"})

#: What the client asked of an exec with one message: ("stdin", bytes), ("close_stdin",
#: None) or ("resize", WindowSize).
ExecInput = tuple[str, Any]


def exec_input(msg: Message) -> ExecInput:
    """One of the client's Exec stream messages, checked."""
    where = "Exec input"
    check_fields(msg, _INPUTS, where)
    if len(msg) != 1:
        raise InvalidArgument(f"{where}: must hold exactly one of {sorted(_INPUTS)}")
    ((name, value),) = msg.items()
    if name == "stdin":
        return name, _bytes(value, f"{where}.stdin")
    if name == "close_stdin":
        if value is not True:
            raise InvalidArgument(f"{where}.close_stdin: must be true")
        return name, None
    return name, _window(value, f"{where}.resize")


def exec_exit_message(result: ExecExit | ExecSyncResult) -> dict[str, Any]:
    """How an exec ended, as Exec's final message (and part of ExecSync's response)."""
    out: dict[str, Any] = {"exit_status": result.exit_status, "timed_out": result.timed_out}
    if result.signal is not None:
        out["signal"] = result.signal
    return out


def _exit_fields(msg: Message, where: str) -> dict[str, Any]:
    signal = msg.get("signal")
    return {
        "exit_status": _int(_required(msg, "exit_status", where), f"{where}.exit_status"),
        "timed_out": _bool(_required(msg, "timed_out", where), f"{where}.timed_out"),
        "signal": None if signal is None else _int(signal, f"{where}.signal"),
    }


def exec_exit_from(msg: Message) -> ExecExit:
    return ExecExit(**_exit_fields(msg, "Exec response"))


def exec_sync_message(result: ExecSyncResult) -> dict[str, Any]:
    return {
        "exec_id": result.exec_id,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "truncated": result.truncated,
        **exec_exit_message(result),
    }


def exec_sync_from(msg: Message) -> ExecSyncResult:
    where = "ExecSync response"
    return ExecSyncResult(
        exec_id=_text(_required(msg, "exec_id", where), f"{where}.exec_id"),
        stdout=_bytes(_required(msg, "stdout", where), f"{where}.stdout"),
        stderr=_bytes(_required(msg, "stderr", where), f"{where}.stderr"),
        truncated=_bool(_required(msg, "truncated", where), f"{where}.truncated"),
        **_exit_fields(msg, where),
    )


_LOGS_FIELDS: Final = frozenset({"sandbox_id", "follow", "tail_bytes", "since"})


def logs_request(msg: Message) -> tuple[str, dict[str, Any]]:
    """``(sandbox_id, keyword arguments of Controller.logs)`` of a Logs request."""
    where = "Logs"
    check_fields(msg, _LOGS_FIELDS, where)
    sandbox_id = sandbox_id_of(msg, where)
    follow = msg.get("follow")
    tail = msg.get("tail_bytes")
    since = msg.get("since")
    return sandbox_id, {
        "follow": False if follow is None else _bool(follow, f"{where}.follow"),
        "tail_bytes": None if tail is None else _count(tail, f"{where}.tail_bytes"),
        "since": None if since is None else _time(since, f"{where}.since"),
    }


def logs_message(
    sandbox_id: str, follow: bool, tail_bytes: int | None, since: datetime | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"sandbox_id": sandbox_id}
    if follow:
        out["follow"] = True
    if tail_bytes is not None:
        out["tail_bytes"] = tail_bytes
    if since is not None:
        out["since"] = _stamp(since)
    return out


def log_message(item: LogChunk | LogGap) -> dict[str, Any]:
    if type(item) is LogGap:
        return {"lost_bytes": item.lost_bytes}
    assert type(item) is LogChunk
    return {"stream": item.stream, "data": item.data, "timestamp": _stamp(item.timestamp)}


def log_from(msg: Message) -> LogChunk | LogGap:
    where = "Logs message"
    if "lost_bytes" in msg:
        return LogGap(_int(msg["lost_bytes"], f"{where}.lost_bytes"))
    stream = _text(_required(msg, "stream", where), f"{where}.stream")
    if stream not in (STDOUT, STDERR):
        raise InvalidArgument(f"{where}.stream: unknown stream {stream!r}")
    return LogChunk(
        stream=stream,
        data=_bytes(_required(msg, "data", where), f"{where}.data"),
        timestamp=_time(_required(msg, "timestamp", where), f"{where}.timestamp"),
    )


_WRITE_FILE_FIELDS: Final = frozenset({"sandbox_id", "path", "mode"})
_READ_FILE_FIELDS: Final = frozenset({"sandbox_id", "path"})
_DATA_FIELDS: Final = frozenset({"data"})


def _path(msg: Message, where: str) -> str:
    return _text(_required_field(msg, "path", where), f"{where}.path")


def _required_field(msg: Message, name: str, where: str) -> Any:
    if name not in msg:
        raise InvalidArgument(f"{where}: field {name!r} is required")
    return msg[name]


def write_file_request(msg: Message) -> tuple[str, str, int | None]:
    """``(sandbox_id, path, mode)`` of a WriteFile request."""
    where = "WriteFile"
    check_fields(msg, _WRITE_FILE_FIELDS, where)
    sandbox_id = sandbox_id_of(msg, where)
    mode = msg.get("mode")
    return (
        sandbox_id,
        _path(msg, where),
        None if mode is None else _count(mode, f"{where}.mode", 0, 0o7777),
    )


def write_file_message(sandbox_id: str, path: str, mode: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"sandbox_id": sandbox_id, "path": path}
    if mode is not None:
        out["mode"] = mode
    return out


def read_file_request(msg: Message) -> tuple[str, str]:
    """``(sandbox_id, path)`` of a ReadFile request."""
    where = "ReadFile"
    check_fields(msg, _READ_FILE_FIELDS, where)
    return sandbox_id_of(msg, where), _path(msg, where)


def data_from(msg: Message, where: str) -> bytes:
    """The bytes of a ``{data: bytes}`` stream message (WriteFile's and ReadFile's)."""
    check_fields(msg, _DATA_FIELDS, where)
    return _bytes(_required_field(msg, "data", where), f"{where}.data")


def size_from(msg: Message, where: str) -> int:
    """The ``size`` of a WriteFile or ReadFile response."""
    return _int(_required(msg, "size", where), f"{where}.size")


def chunks(data: bytes) -> list[bytes]:
    """``data`` cut into pieces of at most :data:`CHUNK` bytes, each one stream message."""
    if len(data) <= CHUNK:
        return [data]
    view = memoryview(data)
    return [bytes(view[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
