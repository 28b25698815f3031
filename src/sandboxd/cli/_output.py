"""How sandboxctl prints a response message: as JSON (``--json``), or for a human."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO


def jsonable(value: Any) -> Any:
    """``value`` with its timestamps (datetimes, CBOR tag 1) as RFC 3339 text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "value") and hasattr(value, "tag"):  # a CBOR tag 1 timestamp
        return datetime.fromtimestamp(value.value, UTC).isoformat()
    return value


def print_json(message: Mapping[str, Any], out: TextIO) -> None:
    import json  # here: human output does without it, and a short-lived process pays for it

    print(json.dumps(jsonable(message), sort_keys=True), file=out, flush=True)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone().isoformat(timespec="seconds")
    return "-" if value is None else str(value)


def print_fields(message: Mapping[str, Any], out: TextIO) -> None:
    """One ``key: value`` line per field (a map's entries as ``key.entry``), aligned."""
    rows: list[tuple[str, str]] = []
    for key, value in humane(message).items():
        if isinstance(value, Mapping):
            rows.extend((f"{key}.{k}", str(v)) for k, v in sorted(value.items()))
        else:
            rows.append((key, _when(value)))
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}", file=out)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    for row in (header, *rows):
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def event_line(msg: Mapping[str, Any]) -> str:
    stamp = jsonable(msg["timestamp"])
    extra = ""
    if "exec_id" in msg:
        extra += f" exec_id={msg['exec_id']}"
    if "exit_status" in msg:
        extra += f" exit_status={msg['exit_status']}"
    if "reason" in msg:
        extra += f" reason={msg['reason']}"
    if "dropped" in msg:
        extra = f" dropped={msg['dropped']}"
    return f"{stamp} {msg['topic']} {msg['sandbox_id']}{extra}"


def humane(msg: Mapping[str, Any]) -> dict[str, Any]:
    """A response message with its CBOR timestamps as datetimes, for human output."""
    return {k: _as_datetime(v) for k, v in msg.items()}


def _as_datetime(value: Any) -> Any:
    if hasattr(value, "value") and hasattr(value, "tag"):
        return datetime.fromtimestamp(value.value, UTC)
    return value
