"""The server's limits, in one place: what a client can make the server hold, and for how long."""

from __future__ import annotations

from typing import Any, ClassVar, final

import attrs

from ..wire import DEFAULT_MAX_CALLS, MAX_DEPTH, MAX_PAYLOAD


def _positive(_: Any, field: attrs.Attribute[Any], value: Any) -> None:
    _check_number(field, value)
    if not value > 0:
        raise ValueError(f"{field.name} must be positive, not {value!r}")


def _not_negative(_: Any, field: attrs.Attribute[Any], value: Any) -> None:
    _check_number(field, value)
    if not value >= 0:  # NaN too
        raise ValueError(f"{field.name} must be 0 or more, not {value!r}")


def _check_number(field: attrs.Attribute[Any], value: Any) -> None:
    # A count must be an int; a duration may be an int or a float.  A bool is neither.
    kind = (int,) if isinstance(field.default, int) else (int, float)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{field.name} must be of type {kind[-1].__name__}, not {value!r}")


@final
@attrs.frozen(slots=True)
class Limits:
    """How much one client may make a :class:`~sandboxd.rpc.Server` hold, and how long the
    server waits for it.  Pass one as ``Server(..., limits=...)``; ``sandboxd serve`` has an
    option for each field (``--max-connections`` for ``max_connections``, ...).

    Every field is checked as the object is made: a value that is not a number of the field's
    type, or not positive (``grace`` may be 0), raises :class:`ValueError` naming the field.
    Each field's ``metadata["help"]`` says what it bounds, in a few words.
    """

    #: Connections served at once; one more is refused with RESOURCE_EXHAUSTED on stream 0.
    #: Why 1024: far more than the agents and tools of one node keep open, and the usual soft
    #: limit on open files, past which the kernel would refuse the connection anyway, less
    #: clearly.
    max_connections: int = attrs.field(
        default=1024, validator=_positive, metadata={"help": "connections served at once"}
    )
    #: Calls in progress (unary, deferred, streams) on one connection; one more gets
    #: RESOURCE_EXHAUSTED on its own stream, with the detail ``{"max_calls_per_connection":
    #: limit}`` (our clients keep below it, see docs/wire.md).  Why 1024: many times the
    #: pipelining a client needs (the benchmark keeps 64 calls in flight), while one
    #: connection's rows in the stream table, and its tasks, stay bounded.
    max_calls_per_connection: int = attrs.field(
        default=DEFAULT_MAX_CALLS,
        validator=_positive,
        metadata={"help": "calls running at once on one connection"},
    )
    #: Unsent reply bytes on one connection above which the server stops reading it (and its
    #: streams wait).  Why 8 MiB: twice the largest frame, so a reply of any legal size is
    #: queued without pausing the reader, while a peer that does not read holds this much
    #: memory at most.
    max_buffered_bytes: int = attrs.field(
        default=8 * 1024 * 1024,
        validator=_positive,
        metadata={"help": "unsent reply bytes on one connection above which it is not read"},
    )
    #: Seconds a peer gets to finish a frame it began, and to take its replies once they are
    #: over ``max_buffered_bytes``, before it is disconnected; and seconds a stream may stay
    #: over its window (the client takes nothing of a full window, or a client without flow
    #: control sends more than the handler takes) before that stream alone is ended with
    #: RESOURCE_EXHAUSTED.  Why 30 s: a loaded host or a
    #: client paused for a moment catches up well within it, and what a stalled peer holds (a
    #: frame, the replies) is freed within half a minute.
    stall_timeout: float = attrs.field(
        default=30.0,
        validator=_positive,
        metadata={
            "help": "seconds a client may leave a frame unfinished, or replies over the "
            "buffered-bytes bound unread, before it is disconnected"
        },
    )
    #: Seconds :meth:`~sandboxd.rpc.Server.shutdown` lets calls in progress finish before it
    #: cancels them; 0 cancels them at once.  Why 10 s: as ``docker stop`` waits, long enough
    #: for a Create writing its record or a Stop within its own timeout, short enough for a
    #: supervisor's stop timeout (systemd's 90 s).
    grace: float = attrs.field(
        default=10.0,
        validator=_not_negative,
        metadata={"help": "seconds calls in progress get to finish at shutdown"},
    )

    #: Largest frame payload, in bytes: a protocol constant, not a setting (ttrpc's 4 MiB).
    max_payload: ClassVar[int] = MAX_PAYLOAD
    #: Deepest CBOR nesting a message may have: a protocol constant, not a setting.
    max_depth: ClassVar[int] = MAX_DEPTH

    def advertised(self) -> dict[str, int | float]:
        """The limits as ``Runtime/Version`` tells them (``limits``): every field by its name,
        and the protocol constants ``max_message_bytes`` and ``max_depth``."""
        told: dict[str, int | float] = attrs.asdict(self)
        told["max_message_bytes"] = self.max_payload
        told["max_depth"] = self.max_depth
        return told
