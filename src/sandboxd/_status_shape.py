"""The shape of a well-formed Status message, checked without the models (so that the CLI's
hot path can read one without importing attrs)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, NamedTuple

#: The state names a Status message may carry (the values of ``SandboxState``).
STATES: Final = frozenset({"created", "ready", "stopping", "stopped"})


class StatusFields(NamedTuple):
    sandbox_id: str
    pid: int
    state: str
    info: dict[str, str]
    created_at: datetime
    exited_at: datetime | None
    extra: dict[str, Any] | None


def plain_status(msg: Mapping[str, Any]) -> StatusFields | None:
    """The fields of a Status message when it is plainly well-formed (each of the right type,
    times aware, the state known), else None; made in one expression, as List reads thousands
    of statuses a page."""
    get = msg.get
    sandbox_id, pid, state = get("sandbox_id"), get("pid"), get("state")
    info, created_at, exited_at, extra = (
        get("info", {}),
        get("created_at"),
        get("exited_at"),
        get("extra"),
    )
    if (
        type(sandbox_id) is str
        and type(pid) is int
        and type(state) is str
        and state in STATES
        and type(info) is dict
        and all(type(k) is str and type(v) is str for k, v in info.items())
        and type(created_at) is datetime
        and created_at.tzinfo is not None
        and (exited_at is None or (type(exited_at) is datetime and exited_at.tzinfo is not None))
        and (extra is None or type(extra) is dict)
    ):
        return StatusFields(sandbox_id, pid, state, info, created_at, exited_at, extra)
    return None
