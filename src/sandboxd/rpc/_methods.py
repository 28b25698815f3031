"""How a service's methods are declared to the server."""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, final

import attrs

Message = dict[str, Any]


@final
class Encoded(bytes):
    """A response message already encoded as CBOR.  A handler may return one instead of a
    mapping (to serve a cached answer); the server sends its bytes as they are."""

    __slots__ = ()


class MethodKind(enum.Enum):
    #: A plain function run by the connection's reader as the request arrives: for cheap,
    #: non-blocking answers.  No task is spawned; it must not block.
    INLINE = "inline"
    #: A coroutine function run in a task of its own, under the caller's deadline.
    UNARY = "unary"
    #: A coroutine function that sends any number of messages, then returns.
    SERVER_STREAM = "server_stream"
    #: A plain function run by the reader, like ``INLINE``, that hands the call's
    #: :class:`Responder` to whoever will answer it later (an actor's mailbox, say): a call
    #: that waits on something costs no task of its own.
    DEFERRED = "deferred"


@final
@attrs.frozen(slots=True)
class PeerCredentials:
    """Who is at the other end of a connection, as the kernel saw it when the peer connected
    (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


class CallContext(NamedTuple):
    """What a handler may know about the call it serves (a named tuple: one is made for
    every call, so it costs as little as can be)."""

    service: str
    method: str
    stream_id: int
    metadata: Mapping[str, Sequence[str]]
    #: trio clock time by which the caller wants the answer; ``math.inf`` when none.
    deadline: float = math.inf
    #: The connection's peer, read once when it connected; ``None`` when not known.
    peer: PeerCredentials | None = None


class Responder(Protocol):
    """How a ``DEFERRED`` call is answered, by any task of the server's trio run.

    The first of :meth:`ok` or :meth:`fail` is the answer; later ones are ignored, as is any
    answer once :attr:`abandoned` is true.  Neither blocks nor raises.
    """

    @property
    def abandoned(self) -> bool:
        """True once no answer is wanted: one was given, or the caller's deadline passed, the
        caller ended the call, or its connection closed."""
        ...

    def ok(self, value: Any) -> None:
        """Answer with ``value``, made a response message by the method's ``result``."""
        ...

    def fail(self, error: BaseException) -> None:
        """Answer with an error: an :class:`~sandboxd.RPCError` as it is, anything else as
        INTERNAL (and logged)."""
        ...


class MessageSender(Protocol):
    async def send(self, message: Mapping[str, Any]) -> None: ...


InlineHandler = Callable[[Message, CallContext], "Mapping[str, Any] | Encoded"]
UnaryHandler = Callable[[Message, CallContext], Awaitable["Mapping[str, Any] | Encoded"]]
StreamHandler = Callable[[Message, CallContext, MessageSender], Awaitable[None]]
DeferredHandler = Callable[[Message, CallContext, Responder], None]


@final
@attrs.frozen(slots=True)
class Method:
    """One method of a service: its handler and how the server runs it."""

    kind: MethodKind
    handler: Callable[..., Any]
    #: For a stream: run by the reader as the request arrives, before the handler's task
    #: starts; its result is what the handler gets instead of the message.
    prepare: Callable[[Message, CallContext], Any] | None = None
    #: For a deferred method: makes the value given to ``Responder.ok`` a response message.
    result: Callable[[Any], Mapping[str, Any] | Encoded] | None = None


def inline(handler: InlineHandler) -> Method:
    """A method answered synchronously by the connection's reader (no task per call)."""
    return Method(MethodKind.INLINE, handler)


def unary(handler: UnaryHandler) -> Method:
    """A method run in its own task; cancelled at the caller's deadline or disconnect."""
    return Method(MethodKind.UNARY, handler)


def server_stream(
    handler: Callable[[Any, CallContext, MessageSender], Awaitable[None]],
    *,
    prepare: Callable[[Message, CallContext], Any] | None = None,
) -> Method:
    """A server-streaming method: ``handler(message, ctx, stream)`` calls ``stream.send``.

    ``prepare(message, ctx)``, when given, runs synchronously as the request is read, so
    whatever it sets up (a subscription, say) sees everything that requests read after this
    one cause; the handler then gets its result in place of the message.  If the call ends
    before the handler runs, the result is dropped: make it safe to forget.
    """
    return Method(MethodKind.SERVER_STREAM, handler, prepare)


def deferred(
    handler: DeferredHandler, result: Callable[[Any], Mapping[str, Any] | Encoded]
) -> Method:
    """A method answered later without a task of its own.

    ``handler(message, ctx, responder)`` runs in the connection's reader as the request
    arrives (it must not block) and passes ``responder`` on to whoever will answer; what they
    give to ``responder.ok`` is turned into the response by ``result``.  An error raised by
    the handler answers the call with it.  The caller's deadline, its ending the call and its
    connection closing are enforced by the server: the responder is then abandoned (and the
    caller told DEADLINE_EXCEEDED or CANCELLED where it still listens), whatever was set in
    motion goes on.
    """
    return Method(MethodKind.DEFERRED, handler, result=result)


Services = Mapping[str, Mapping[str, Method]]
