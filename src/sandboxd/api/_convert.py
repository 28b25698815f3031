"""Models <-> CBOR-friendly messages, in one place, strictly.

Incoming messages are checked field by field: a missing required field, a field of the wrong
type or a field the method does not know is an :class:`~sandboxd.InvalidArgument` that names
it (``Create: options.env['A']: must be text``).  Nothing is coerced: ``"5"`` is not a number
and ``1`` is not a boolean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from cbor2 import CBORTag

from .._errors import InvalidArgument
from .._models import (
    ExitStatus,
    Mount,
    Platform,
    SandboxEvent,
    SandboxInstance,
    SandboxMetrics,
    SandboxOptions,
    SandboxState,
    SandboxStatus,
    check_sandbox_id,
)

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
_OPTION_FIELDS: Final = frozenset({"command", "env", "cwd", "hostname", "host_network", "sim"})
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
    )


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


_LIST_FIELDS: Final = frozenset({"labels"})


def list_request(msg: Message) -> dict[str, str] | None:
    check_fields(msg, _LIST_FIELDS, "List")
    return _opt_text_map(msg, "labels", "List")


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
    }


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


def list_message(labels: Mapping[str, str] | None) -> dict[str, Any]:
    return {"labels": dict(labels)} if labels else {}


def created_from(msg: Message) -> str:
    return _text(_required(msg, "sandbox_id", "Create response"), "Create response.sandbox_id")


def list_from(msg: Message) -> list[SandboxStatus]:
    sandboxes = _required(msg, "sandboxes", "List response")
    if type(sandboxes) is not list:
        raise InvalidArgument("List response.sandboxes: must be an array")
    return [status_from(s) for s in sandboxes]


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


def status_from(msg: Message) -> SandboxStatus:
    where = "Status response"
    exited_at = msg.get("exited_at")
    extra = msg.get("extra")
    state = _text(_required(msg, "state", where), f"{where}.state")
    try:
        reported = SandboxState(state)
    except ValueError:
        raise InvalidArgument(f"{where}.state: unknown state {state!r}") from None
    if extra is not None and type(extra) is not dict:
        raise InvalidArgument(f"{where}.extra: must be a map")
    return SandboxStatus(
        sandbox_id=_text(_required(msg, "sandbox_id", where), f"{where}.sandbox_id"),
        pid=_int(_required(msg, "pid", where), f"{where}.pid"),
        state=reported,
        info=_text_map(msg.get("info", {}), f"{where}.info"),
        created_at=_time(_required(msg, "created_at", where), f"{where}.created_at"),
        exited_at=None if exited_at is None else _time(exited_at, f"{where}.exited_at"),
        extra=extra,
    )


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
    )


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
    )
