"""How a service's methods are declared to the server.

Protobuf methods.  The services a :class:`~sandboxd.rpc.Server` serves to protobuf
connections (its ``protobuf_services``) are declared with the same :class:`Method` kinds and
helpers; only the messages differ.  Every message is the method's protobuf message as raw
``bytes``, which the handler decodes and encodes itself (the server never looks inside):

* every handler, and ``prepare``, gets the request message as ``bytes`` (``b""`` for the
  empty message);
* an ``INLINE`` or ``UNARY`` handler returns ``bytes`` (anything else is answered INTERNAL
  and logged), sent as they are;
* a stream's ``send`` takes ``bytes``; ``receive`` (and ``async for``) gives ``bytes``, or
  None once the client half-closed (:class:`RawMessageSender`, :class:`RawMessageStream`); a
  streaming handler returns ``bytes`` (the stream's final message) or None;
* a ``DEFERRED`` method's ``result`` makes the value given to ``Responder.ok`` ``bytes``.

Errors are the same :class:`~sandboxd.RPCError` subclasses, answered as a
``google.rpc.Status`` (their details as ``google.protobuf.Any`` values, docs/wire.md).
Deadlines, cancellation, flow control and every other rule are the same in both envelopes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
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
    #: A coroutine function that sends any number of messages, then returns (its return
    #: value, a mapping or None, is the stream's final message).
    SERVER_STREAM = "server_stream"
    #: A coroutine function that receives the client's messages until it half-closes, then
    #: returns the response message.
    CLIENT_STREAM = "client_stream"
    #: A coroutine function that sends and receives messages at once, then returns the
    #: stream's final message (a mapping or None).
    BIDI_STREAM = "bidi_stream"
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


class MessageStream(MessageSender, Protocol):
    """What a client-stream or bidirectional handler gets: it sends messages to the client
    and receives the client's, in order.

    ``send`` waits while the client has not taken enough of what was sent (its window is
    full); a client that stays so for the server's stall timeout gets the call ended with
    RESOURCE_EXHAUSTED, which ``send`` raises.  ``receive`` returns the client's next message,
    or None once the client half-closed (for a client-stream method called without
    REMOTE_OPEN, at once); a message that is not valid CBOR, or not a map, raises
    INVALID_ARGUMENT.  ``async for`` iterates over the same messages.  Both are cancelled with
    the call.
    """

    async def receive(self) -> Message | None: ...

    def __aiter__(self) -> AsyncIterator[Message]: ...


class RawMessageSender(Protocol):
    """What a server-stream handler of a protobuf method gets: ``send`` as for
    :class:`MessageSender`, with the message's protobuf bytes."""

    async def send(self, message: bytes) -> None: ...


class RawMessageStream(RawMessageSender, Protocol):
    """What a client-stream or bidirectional handler of a protobuf method gets: as
    :class:`MessageStream`, with messages as protobuf bytes (never decoded, so never refused
    as malformed by the server)."""

    async def receive(self) -> bytes | None: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class ReceivedMessages:
    """``async for`` over what :meth:`receive` returns, until it returns None (a base of the
    server's and the client's streams)."""

    __slots__ = ()

    async def receive(self) -> Message | None:
        raise NotImplementedError

    def __aiter__(self) -> ReceivedMessages:
        return self

    async def __anext__(self) -> Message:
        message = await self.receive()
        if message is None:
            raise StopAsyncIteration
        return message


InlineHandler = Callable[[Message, CallContext], "Mapping[str, Any] | Encoded"]
UnaryHandler = Callable[[Message, CallContext], Awaitable["Mapping[str, Any] | Encoded"]]
StreamHandler = Callable[
    [Message, CallContext, MessageSender], Awaitable["Mapping[str, Any] | None"]
]
DuplexHandler = Callable[[Any, CallContext, MessageStream], Awaitable["Mapping[str, Any] | None"]]
DeferredHandler = Callable[[Message, CallContext, Responder], None]
# The same for protobuf methods (see the module's docstring): messages are raw bytes.
RawInlineHandler = Callable[[bytes, CallContext], bytes]
RawUnaryHandler = Callable[[bytes, CallContext], Awaitable[bytes]]
RawStreamHandler = Callable[[Any, CallContext, RawMessageSender], Awaitable["bytes | None"]]
RawDuplexHandler = Callable[[Any, CallContext, RawMessageStream], Awaitable["bytes | None"]]
RawDeferredHandler = Callable[[bytes, CallContext, Responder], None]
Prepare = Callable[[Message, CallContext], Any] | Callable[[bytes, CallContext], Any]


@final
@attrs.frozen(slots=True)
class Method:
    """One method of a service: its handler and how the server runs it."""

    kind: MethodKind
    handler: Callable[..., Any]
    #: For a stream: run by the reader as the request arrives, before the handler's task
    #: starts; its result is what the handler gets instead of the message.
    prepare: Prepare | None = None
    #: For a deferred method: makes the value given to ``Responder.ok`` a response message
    #: (``bytes`` for a protobuf method).
    result: Callable[[Any], Mapping[str, Any] | Encoded | bytes] | None = None


def inline(handler: InlineHandler | RawInlineHandler) -> Method:
    """A method answered synchronously by the connection's reader (no task per call)."""
    return Method(MethodKind.INLINE, handler)


def unary(handler: UnaryHandler | RawUnaryHandler) -> Method:
    """A method run in its own task; cancelled at the caller's deadline or disconnect."""
    return Method(MethodKind.UNARY, handler)


def server_stream(
    handler: Callable[[Any, CallContext, MessageSender], Awaitable[Mapping[str, Any] | None]]
    | RawStreamHandler,
    *,
    prepare: Prepare | None = None,
) -> Method:
    """A server-streaming method: ``handler(message, ctx, stream)`` calls ``stream.send``;
    what it returns (a mapping), if anything, is the stream's final message.

    ``prepare(message, ctx)``, when given, runs synchronously as the request is read, so
    whatever it sets up (a subscription, say) sees everything that requests read after this
    one cause; the handler then gets its result in place of the message.  If the call ends
    before the handler runs, the result is dropped: make it safe to forget.
    """
    return Method(MethodKind.SERVER_STREAM, handler, prepare)


def client_stream(
    handler: DuplexHandler | RawDuplexHandler, *, prepare: Prepare | None = None
) -> Method:
    """A client-streaming method: ``handler(message, ctx, stream)`` gets the request message
    and receives the client's messages from ``stream`` (a :class:`MessageStream`); what it
    returns is the response message.  ``prepare`` as for :func:`server_stream`."""
    return Method(MethodKind.CLIENT_STREAM, handler, prepare)


def bidi_stream(
    handler: DuplexHandler | RawDuplexHandler, *, prepare: Prepare | None = None
) -> Method:
    """A bidirectional method: ``handler(message, ctx, stream)`` sends and receives on
    ``stream`` (a :class:`MessageStream`), from different tasks if it likes; what it returns
    (a mapping), if anything, is the stream's final message.  ``prepare`` as for
    :func:`server_stream`."""
    return Method(MethodKind.BIDI_STREAM, handler, prepare)


def deferred(
    handler: DeferredHandler | RawDeferredHandler,
    result: Callable[[Any], Mapping[str, Any] | Encoded | bytes],
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
