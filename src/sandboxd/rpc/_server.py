"""The RPC server: Unix socket listener, connections, and the stream table of each.

Theory of operation.  Each connection has one reader task.  It feeds a sans-io
:class:`~sandboxd.wire.FrameDecoder` from large reads and dispatches every complete frame at
once: an ``INLINE`` method is answered right there (no task, no lock, no schedule point); a
``DEFERRED`` method's handler runs there too and passes the call's responder on to whoever
answers it later (the sandbox's actor), so a call that waits costs no task; a ``UNARY`` or
``SERVER_STREAM`` method gets a task of its own in the connection's nursery, inside a cancel
scope that carries the caller's deadline and that a client close frame or the connection's
end cancels.  A deferred call's deadline is kept by one timer task per connection, started
with the first call that has one.  Replies are written to the :class:`~.Transport`, which
sends at once when the kernel takes the bytes and otherwise queues them for the connection's
writer, so replies leave in whatever order handlers finish and frames ready together go out
together.

Repeats cost less.  A request is decoded once per distinct payload: the server keeps, per
envelope, the decoded requests of up to 256 small payloads without metadata (a poller sends
the same bytes each time; only the stream id, in the frame header, changes) with the method
they call, and a hit gives the handler a copy of the message, and the call a deadline of its
own.  An answer that is an :class:`~._methods.Encoded` (or a protobuf method's bytes) given
again, as a cached Status is, is wrapped in its response envelope once.

The reader never waits on a handler.  It stops reading only while more than
``max_buffered_bytes`` of replies wait for a peer that does not read them, or while a stream
of a client without flow control holds more of its messages than the stream window.

Streams.  A stream call's row holds a :class:`_ServerStream`: the handler sends through it and,
for a client or bidirectional method opened REMOTE_OPEN, receives the client's DATA from the
inbox the reader fills.  A client that asks for flow control (request metadata
``sandboxd-window``) gets a window each way: the handler's ``send`` waits on the client's
grants, and the reader counts what the client sends against the server's window, which
``receive`` grants back as the handler takes messages.  DATA a stream cannot take ends that
call with INVALID_ARGUMENT, never the connection (docs/wire.md, "Errors on a stream").

Envelopes.  A connection's first request picks its envelope for good (docs/wire.md, "The
protobuf envelope"): :meth:`_Connection._choose_envelope` sets what the connection reads and
writes with (the request decoder, the services, message loading and dumping), so the rest of
the connection's code is the same for CBOR and for protobuf, whose messages are raw bytes.

Errors.  Whatever a call raises is answered at one boundary, :func:`_status_of`: an
:class:`~sandboxd.RPCError` is the call's status as it is; any other exception is a bug,
logged once with the method's name and answered INTERNAL.  ``trio.Cancelled`` (not an
``Exception``) is never caught there: it goes on to whoever cancelled.

Who may connect, and how much a peer may hold (the fields of :class:`~._limits.Limits`).
Every connection's peer credentials (``SO_PEERCRED``) are read once, as it is accepted; a uid
not in ``allowed_uids`` gets one PERMISSION_DENIED response on stream 0 and the connection is
closed, as is any connection beyond ``max_connections`` (RESOURCE_EXHAUSTED on stream 0).
An accepted peer holds at most one frame in the decoder, ``max_calls_per_connection`` calls,
and ``max_buffered_bytes`` of unsent replies plus what one read's requests produce.  A peer
that stalls while holding something is disconnected after ``stall_timeout`` seconds: a frame
it began and did not finish, or replies over the bound that it does not take.  Both timers
live off the hot path: a cancel scope armed only while a frame is incomplete at the end of a
read, and one armed only while the transport holds more than the bound.  An idle connection
holds nothing and is never timed out.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import math
import os
import socket
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, final

import trio

from ..wire import (
    CALL_LIMIT_DETAIL,
    DEFAULT_WINDOW,
    HEADER,
    MAX_PAYLOAD,
    MAX_WINDOW,
    WINDOW_METADATA,
    Cancelled,
    DeadlineExceeded,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    Internal,
    InvalidArgument,
    OversizedFrame,
    PermissionDenied,
    Request,
    ResourceExhausted,
    RPCError,
    Unavailable,
    Unimplemented,
    decode_pb_request,
    decode_request,
    dumps,
    encode_error_from,
    encode_frame,
    encode_pb_error_from,
    encode_pb_response,
    encode_response,
    loads_message,
    window_frame,
)
from ._limits import Limits
from ._methods import (
    CallContext,
    Encoded,
    Method,
    MethodKind,
    PeerCredentials,
    ReceivedMessages,
    Services,
)
from ._refusals import RefusalLog
from ._transport import PeerStalledError, Transport
from ._unix import bind_unix, group_id, peer_credentials, socket_dir_shut_to, unlink_if_ours

log = logging.getLogger("sandboxd.rpc")

_REQUEST: Final = FrameType.REQUEST
_DATA: Final = FrameType.DATA
_RESPONSE: Final = FrameType.RESPONSE
_END_OF_STREAM: Final = Flags.REMOTE_CLOSED | Flags.NO_DATA
_REMOTE_CLOSED: Final = int(Flags.REMOTE_CLOSED)
_NO_DATA: Final = int(Flags.NO_DATA)
_WINDOW: Final = int(Flags.WINDOW_UPDATE)
_CANCEL: Final = int(Flags.CANCEL)
#: Kinds whose handler gets the client's messages, and kinds whose call ends with a DATA
#: frame (a streaming server) rather than a RESPONSE.
_RECEIVING: Final = frozenset({MethodKind.CLIENT_STREAM, MethodKind.BIDI_STREAM})
_STREAMING: Final = frozenset({MethodKind.SERVER_STREAM, MethodKind.BIDI_STREAM})
#: The messages of INTERNAL: a handler failed, or its result could not be made a response.
_FAILED: Final = "internal error"
_ENCODING_FAILED: Final = "cannot encode response"
#: The decoded-request cache (see :meth:`_Connection._on_request`): requests of up to this
#: many bytes, this many of them per envelope and server (all forgotten when it is full).
_CACHED_REQUEST_BYTES: Final = 256
_CACHED_REQUESTS: Final = 256
#: Message values a cached message may hold: a shallow copy of it is a fresh message.
_IMMUTABLE: Final = frozenset({str, int, bool, float, bytes, type(None)})
_NOTHING: Final = object()
_INLINE: Final = MethodKind.INLINE
_pack_header: Final = HEADER.pack
_new_tuple: Final = tuple.__new__


def _status_of(exc: BaseException, ctx: CallContext, internal: str) -> RPCError:
    """The status a call that raised ``exc`` is answered with: the server's one error boundary.

    An :class:`RPCError` is its own status.  Anything else is a bug: it is logged (one line
    naming the method, with the traceback) and becomes INTERNAL with the message ``internal``,
    which tells the client nothing of it.
    """
    if isinstance(exc, RPCError):
        return exc
    log.error(
        "%s/%s failed on stream %d: answered INTERNAL %r",
        ctx.service,
        ctx.method,
        ctx.stream_id,
        internal,
        exc_info=exc,
    )
    return Internal(internal)


@final
class _Call:
    """A call that runs in its own task: a row of the stream table."""

    __slots__ = ("closed_by_client", "error", "scope", "stream")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.closed_by_client = False
        # Why the server ended the call, when it did (a protocol error, a stall).
        self.error: RPCError | None = None
        self.stream: _ServerStream | None = None

    def end_by_client(self) -> None:
        self.closed_by_client = True
        self.scope.cancel()

    def end_with(self, error: RPCError) -> None:
        """End the call with ``error`` (the first one given)."""
        if self.error is None:
            self.error = error
        self.scope.cancel()


@final
class _Deferred:
    """A deferred call waiting for its answer: a row of the stream table, and the
    :class:`~._methods.Responder` its handler passed on."""

    __slots__ = ("_conn", "_ctx", "_result", "abandoned", "stream_id")

    def __init__(
        self, conn: _Connection, ctx: CallContext, result: Callable[[Any], Any] | None
    ) -> None:
        self._conn = conn
        self._ctx = ctx
        self._result = result
        self.stream_id = ctx.stream_id
        self.abandoned = False

    def _settle(self) -> bool:
        """Take the call off the stream table; False if that was done already."""
        if self.abandoned:
            return False
        self.abandoned = True
        conn = self._conn
        del conn.calls[self.stream_id]
        conn.server.call_finished()
        return True

    def ok(self, value: Any) -> None:
        if not self._settle():
            return
        try:
            result = value if self._result is None else self._result(value)
        except Exception as exc:
            self._conn.fail(self._ctx, exc, True, _ENCODING_FAILED)
        else:
            self._conn.reply(self._ctx, result, True)

    def fail(self, error: BaseException) -> None:
        if self._settle():
            self._conn.fail(self._ctx, error, True)

    def end_by_client(self) -> None:
        self.fail(Cancelled("call ended by the client"))

    def expire(self) -> None:
        self.fail(DeadlineExceeded("deadline exceeded while serving the call"))

    def forget(self) -> None:
        """The connection is gone: nobody is left to answer."""
        self._settle()


@final
class _ServerStream(ReceivedMessages):
    """What a streaming handler sends its messages through, and receives the client's from
    (a :class:`~._methods.MessageStream`); also the stream's state the reader updates."""

    __slots__ = (
        "_conn",
        "_ctx",
        "_readable",
        "_writable",
        "call",
        "consumed",
        "credit",
        "drained",
        "flow",
        "inbox",
        "inbox_bytes",
        "receiving",
        "recv_credit",
        "remote_closed",
    )

    def __init__(
        self, conn: _Connection, ctx: CallContext, call: _Call, window: int | None, receiving: bool
    ) -> None:
        self._conn = conn
        self._ctx = ctx
        self.call = call
        # The client speaks flow control: send waits on credit, the client gets grants.
        self.flow = window is not None
        self.credit = 0 if window is None else window
        # Whether the client sends messages (the request was REMOTE_OPEN, for a method that
        # takes them); what it sent, not yet received by the handler.
        self.receiving = receiving
        self.remote_closed = not receiving
        self.inbox: collections.deque[bytes] = collections.deque()
        self.inbox_bytes = 0
        self.recv_credit = DEFAULT_WINDOW
        self.consumed = 0
        self._readable: trio.Event | None = None
        self._writable: trio.Event | None = None
        # Set while the inbox is within its bound (the reader waits on it otherwise).
        self.drained: trio.Event | None = None

    @property
    def name(self) -> str:
        ctx = self._ctx
        return f"{ctx.service}/{ctx.method} stream {ctx.stream_id}"

    async def send(self, message: Mapping[str, Any] | bytes) -> None:
        """Queue one message on the stream (its bytes, on a protobuf connection).

        Waits while the connection has more than its bound of unsent bytes, so a peer that
        does not read slows its own streams down and nothing else; and, for a client that
        speaks flow control, while the stream's window is used up (past the stall timeout the
        call ends with RESOURCE_EXHAUSTED, raised here).  A schedule point.
        """
        conn = self._conn
        payload = conn.dump(message)
        if self.flow:
            if self.credit <= 0:
                await self._wait_credit()
            self.credit -= len(payload)
        conn.transport.write_soon(encode_frame(self._ctx.stream_id, _DATA, 0, payload))
        if conn.transport.pending_bytes > conn.server.limits.max_buffered_bytes:
            await conn.transport.wait_drained()
        else:
            await trio.lowlevel.checkpoint()

    async def _wait_credit(self) -> None:
        stall_timeout = self._conn.server.limits.stall_timeout
        with trio.move_on_after(stall_timeout):
            while self.credit <= 0:
                self._writable = trio.Event()
                await self._writable.wait()
        if self.credit <= 0:
            error = ResourceExhausted(
                f"{self.name}: the client took nothing of its full window for {stall_timeout:g} s"
            )
            self._conn.refused("stalled", error)
            self.call.end_with(error)
            raise error

    def grant(self, data: bytes) -> None:
        """The client's window update: more credit to send."""
        if len(data) != 4:
            return
        self.credit += int.from_bytes(data, "big")
        if self.credit > 0 and self._writable is not None:
            self._writable.set()

    def push(self, data: bytes) -> bool:
        """A message from the client; False when it is over the stream's bound."""
        self.inbox.append(data)
        self.inbox_bytes += len(data)
        self.recv_credit -= len(data)
        self._wake()
        return self.inbox_bytes <= DEFAULT_WINDOW or len(self.inbox) == 1

    def half_close(self) -> None:
        self.remote_closed = True
        self._wake()

    def _wake(self) -> None:
        if self._readable is not None:
            self._readable.set()
            self._readable = None

    async def receive(self) -> Any:
        """The client's next message, or None once it half-closed (see MessageStream; bytes
        on a protobuf connection, see RawMessageStream)."""
        while not self.inbox:
            if self.remote_closed:
                await trio.lowlevel.checkpoint()
                return None
            readable = self._readable = trio.Event()
            await readable.wait()
        data = self.inbox.popleft()
        self.inbox_bytes -= len(data)
        if self.drained is not None and (
            self.inbox_bytes <= DEFAULT_WINDOW or len(self.inbox) <= 1
        ):
            self.drained.set()
        if self.flow:
            self.consumed += len(data)
            if self.consumed >= DEFAULT_WINDOW // 2:
                grant, self.consumed = self.consumed, 0
                self.recv_credit += grant
                self._conn.transport.write_soon(window_frame(self._ctx.stream_id, grant))
        await trio.lowlevel.checkpoint()
        return self._conn.load(data, "stream message")


@final
class _Connection:
    __slots__ = (
        "_deadlines",
        "_decode",
        "_decoded",
        "_decoder",
        "_last_answer",
        "_last_envelope",
        "_last_stream_id",
        "_nursery",
        "_over",
        "_timer",
        "calls",
        "dump",
        "load",
        "peer",
        "protobuf",
        "server",
        "services",
        "transport",
    )

    def __init__(
        self,
        server: Server,
        transport: Transport,
        nursery: trio.Nursery,
        peer: PeerCredentials | None,
    ) -> None:
        self.server = server
        self.transport = transport
        self.peer = peer
        self._nursery = nursery
        # The envelope, chosen by the first request (docs/wire.md, "The protobuf envelope"):
        # None until then (answers are CBOR), then whether it is protobuf, for good; with it
        # the services looked up and how envelopes and messages are read and written.
        self.protobuf: bool | None = None
        self.services = server.services
        self._decode = decode_request
        # The server's cache of this envelope's decoded requests: payload -> (request,
        # message, the method it calls).
        self._decoded = server._decoded_cbor
        # The last answer sent that may be sent again as it is (an Encoded or raw message),
        # and its response envelope: a cached answer is wrapped once.
        self._last_answer: object = _NOTHING
        self._last_envelope = b""
        self.load: Callable[[bytes, str], Any] = loads_message
        self.dump: Callable[[Any], bytes] = dumps
        self._decoder = FrameDecoder()
        self._last_stream_id = 0
        self.calls: dict[int, _Call | _Deferred] = {}
        # Streams whose client sent past their bound without flow control: the reader waits.
        self._over: set[_ServerStream] = set()
        # Deferred calls with a deadline, earliest first; answered ones are dropped lazily.
        self._deadlines: list[tuple[float, int, _Deferred]] = []
        # The deadline timer's sleep, once a deferred call has brought one.
        self._timer: trio.CancelScope | None = None

    def refused(self, kind: str, err: RPCError) -> None:
        """Warn, rate-limited, that this peer was refused ``err`` (a refusal of ``kind``)."""
        peer = self.peer
        uid, pid = (-1, -1) if peer is None else (peer.uid, peer.pid)
        self.server.refusals.warn(kind, "refused uid %d (pid %d): %s", uid, pid, err.message)

    async def read_loop(self) -> None:
        """Read and dispatch frames until the peer ends the stream.

        Raises :class:`PeerStalledError` if a frame stays incomplete for ``stall_timeout``
        seconds of reading (time spent not reading, because replies wait, does not count).
        """
        transport = self.transport
        decoder = self._decoder
        feed = decoder.feed
        limit = self.server.limits.max_buffered_bytes
        stall_timeout = self.server.limits.stall_timeout
        # Armed (given a deadline) only while a frame is incomplete at the end of a read.
        unfinished = trio.CancelScope()
        partial = False
        with unfinished:
            while True:
                if transport.pending_bytes > limit:
                    unfinished.deadline = math.inf
                    await transport.wait_drained()
                    if partial:
                        unfinished.deadline = trio.current_time() + stall_timeout
                data = await transport.receive()
                if not data:
                    return
                events = feed(data)
                # The replies of one read go out in one send; one frame's need no holding.
                corked = len(events) > 1
                if corked:
                    transport.cork()
                try:
                    for event in events:
                        if not isinstance(event, OversizedFrame):
                            if event.type == _REQUEST:
                                self._on_request(event)
                            elif event.type == _DATA:
                                self._on_data(event)
                            # Responses from a client and frames of unknown type are ignored.
                        elif event.type == _REQUEST:
                            # Oversized frames of other types are skipped: only a request has
                            # a caller waiting on its stream id.
                            err = ResourceExhausted(
                                f"frame of {event.length} bytes is over the "
                                f"{MAX_PAYLOAD}-byte limit"
                            )
                            self.refused("oversized", err)
                            self.reply_error(event.stream_id, err)
                finally:
                    if corked:
                        transport.uncork()
                if self._over:
                    unfinished.deadline = math.inf
                    await self._wait_inboxes(stall_timeout)
                    if partial:
                        unfinished.deadline = trio.current_time() + stall_timeout
                if decoder.buffered or decoder.discarding:
                    # A frame begun in this read starts the clock; one still unfinished from
                    # an earlier read leaves it running.
                    if events or not partial:
                        partial = True
                        unfinished.deadline = trio.current_time() + stall_timeout
                elif partial:
                    partial = False
                    unfinished.deadline = math.inf
        raise PeerStalledError(f"the peer left a frame unfinished for {stall_timeout:g} s")

    async def _wait_inboxes(self, stall_timeout: float) -> None:
        """Stop reading while a stream holds more of its client's messages than its bound
        (a client without flow control); end those still over it after ``stall_timeout``."""
        with trio.move_on_after(stall_timeout):
            while self._over:
                stream = next(iter(self._over))
                if stream.drained is not None:
                    await stream.drained.wait()
                self._over.discard(stream)
                stream.drained = None
        for stream in self._over:
            stream.drained = None
            stream.inbox.clear()
            stream.inbox_bytes = 0
            stalled = ResourceExhausted(
                f"{stream.name}: over {DEFAULT_WINDOW} bytes of the client's messages "
                f"were not taken for {stall_timeout:g} s"
            )
            self.refused("stalled", stalled)
            stream.call.end_with(stalled)
        self._over.clear()

    def reply_error(self, stream_id: int, err: RPCError, soon: bool = False) -> None:
        envelope = encode_pb_error_from(err) if self.protobuf else encode_error_from(err)
        frame = encode_frame(stream_id, _RESPONSE, 0, envelope)
        if soon:
            self.transport.write_soon(frame)
        else:
            self.transport.write(frame)

    def fail(
        self, ctx: CallContext, exc: BaseException, soon: bool = False, internal: str = _FAILED
    ) -> None:
        """Answer the call with the status of ``exc`` (see :func:`_status_of`)."""
        self.reply_error(ctx.stream_id, _status_of(exc, ctx, internal), soon)

    def reply(
        self, ctx: CallContext, result: Mapping[str, Any] | Encoded, soon: bool = False
    ) -> None:
        stream_id = ctx.stream_id
        if result is self._last_answer:
            # Its envelope was framed before: within the frame limit.
            envelope = self._last_envelope
            frame = _pack_header(len(envelope), stream_id, _RESPONSE, 0) + envelope
        else:
            try:
                if self.protobuf:
                    envelope = encode_pb_response(_raw_message(result))
                else:
                    envelope = encode_response(
                        result if type(result) is Encoded else dumps(result)
                    )
                frame = encode_frame(stream_id, _RESPONSE, 0, envelope)
            except Exception as exc:
                self.reply_error(stream_id, _status_of(exc, ctx, _ENCODING_FAILED), soon)
                return
            if type(result) is Encoded or self.protobuf:
                # Immutable, and likely a cached answer that will be given again.
                self._last_answer, self._last_envelope = result, envelope
        if soon:
            self.transport.write_soon(frame)
        else:
            self.transport.write(frame)

    def _choose_envelope(self, payload: bytes) -> None:
        """The connection's first request picks its envelope: a payload that begins with a
        CBOR map head is CBOR, anything else (the empty one included) protobuf."""
        if payload and 0xA0 <= payload[0] <= 0xBB:
            self.protobuf = False
            return
        self.protobuf = True
        self.services = self.server.protobuf_services
        self._decode = decode_pb_request
        self._decoded = self.server._decoded_protobuf
        self.load = _raw_loaded
        self.dump = _raw_message

    def _on_request(self, frame: Frame) -> None:
        if self.protobuf is None:
            self._choose_envelope(frame.payload)
        stream_id = frame.stream_id
        if not stream_id & 1 or stream_id <= self._last_stream_id:
            err = InvalidArgument(
                f"stream id {stream_id} is not odd and greater than the last one "
                f"({self._last_stream_id})"
            )
            self.refused("protocol", err)
            self.reply_error(stream_id, err)
            return
        self._last_stream_id = stream_id
        server = self.server
        payload = frame.payload
        # Pollers send the same bytes again and again: a request decoded once (without
        # metadata, its message of immutable values) is taken from the cache, its message
        # copied.  Decoding is deterministic, so a hit is what decoding would give.
        cached = self._decoded.get(payload)
        try:
            if cached is None:
                request = self._decode(payload)
                service = self.services.get(request.service)
                if service is None:
                    raise Unimplemented(f"unknown service {request.service!r}")
                method = service.get(request.method)
                if method is None:
                    raise Unimplemented(
                        f"unknown method {request.method!r} of service {request.service!r}"
                    )
                message = self.load(request.payload, "request payload")
                if len(payload) <= _CACHED_REQUEST_BYTES and not request.metadata:
                    self._remember(payload, request, message, method)
            else:
                request, message, method = cached
                if type(message) is dict:
                    message = message.copy()
            if server.draining:
                raise Unavailable("server is shutting down")
        except RPCError as err:
            if type(err) is InvalidArgument:  # a malformed envelope or payload
                self.refused("protocol", err)
            self.reply_error(stream_id, err)
            return
        timeout_nano = request.timeout_nano
        deadline = trio.current_time() + timeout_nano / 1e9 if timeout_nano else math.inf
        # A CallContext, without the Python-level constructor of a named tuple.
        ctx = _new_tuple(
            CallContext,
            (request.service, request.method, stream_id, request.metadata, deadline, self.peer),
        )
        if method.kind is _INLINE:
            try:
                result = method.handler(message, ctx)
            except Exception as exc:
                self.fail(ctx, exc)
            else:
                self.reply(ctx, result)
            return
        limit = server.limits.max_calls_per_connection
        if len(self.calls) >= limit:
            busy = ResourceExhausted(
                f"too many calls in progress on this connection (limit {limit})",
                details=[{CALL_LIMIT_DETAIL: limit}],
            )
            self.refused("calls", busy)
            self.reply_error(stream_id, busy)
            return
        if method.kind is MethodKind.DEFERRED:
            responder = _Deferred(self, ctx, method.result)
            self.calls[stream_id] = responder
            server.call_started()
            if deadline != math.inf:
                self._keep_deadline(deadline, responder)
            try:
                method.handler(message, ctx, responder)
            except Exception as exc:
                responder.fail(exc)
            return
        window = None
        if method.kind is not MethodKind.UNARY and WINDOW_METADATA in request.metadata:
            try:
                window = _window_of(request.metadata[WINDOW_METADATA])
            except RPCError as err:
                self.reply_error(stream_id, err)
                return
        if method.prepare is not None:
            try:
                message = method.prepare(message, ctx)
            except Exception as exc:
                self.fail(ctx, exc)
                return
        call = _Call(trio.CancelScope(deadline=deadline))
        if method.kind is not MethodKind.UNARY:
            receiving = method.kind in _RECEIVING and bool(frame.flags & Flags.REMOTE_OPEN)
            call.stream = _ServerStream(self, ctx, call, window, receiving)
        self.calls[stream_id] = call
        server.call_started()
        self._nursery.start_soon(self._run_call, stream_id, call, method, message, ctx)

    def _remember(self, payload: bytes, request: Request, message: Any, method: Method) -> None:
        if type(message) is dict:
            if not all(type(v) in _IMMUTABLE for v in message.values()):
                return
            message = message.copy()  # the handler gets the one decoded
        decoded = self._decoded
        if len(decoded) >= _CACHED_REQUESTS:
            decoded.clear()
        decoded[payload] = (request, message, method)

    def _on_data(self, frame: Frame) -> None:
        # See docs/wire.md, "Client and bidirectional streams" and "Flow control".
        stream_id = frame.stream_id
        flags = frame.flags
        call = self.calls.get(stream_id)
        if call is None:
            # A grant or a close racing the call's end is no one's fault: dropped.
            if flags & (_WINDOW | _REMOTE_CLOSED) and flags & _NO_DATA and not flags & ~0x1D:
                return
            if not stream_id & 1 or stream_id > self._last_stream_id:
                why = f"DATA on stream {stream_id} before its request"
            else:
                why = f"DATA on stream {stream_id}, which has no call in progress"
            self.reply_error(stream_id, InvalidArgument(why))
            return
        if flags & _CANCEL:
            call.end_by_client()
            return
        stream = call.stream if type(call) is _Call else None
        if stream is None or not stream.receiving:
            if flags & _REMOTE_CLOSED:
                # The close frame of a call the client sends nothing on: it ends the call.
                call.end_by_client()
            elif flags & _WINDOW:
                if stream is not None and stream.flow:
                    stream.grant(frame.payload)
            elif not flags & _NO_DATA:
                self._refuse_data(call, InvalidArgument(f"stream {stream_id} takes no DATA"))
            return
        if flags & _WINDOW:
            stream.grant(frame.payload)
            return
        if stream.remote_closed:
            what = "a second close" if flags & _REMOTE_CLOSED else "DATA"
            stream.call.end_with(
                InvalidArgument(f"{stream.name}: {what} after the client closed its side")
            )
            return
        if not flags & _NO_DATA:
            if stream.flow and stream.recv_credit <= 0:
                overrun = ResourceExhausted(f"{stream.name}: the client sent past its window")
                self.refused("protocol", overrun)
                stream.call.end_with(overrun)
                return
            # A flow-controlled client is bounded by its window; a plain one by pausing.
            if not stream.push(frame.payload) and not stream.flow and stream.drained is None:
                stream.drained = trio.Event()
                self._over.add(stream)
        if flags & _REMOTE_CLOSED:
            stream.half_close()

    @staticmethod
    def _refuse_data(call: _Call | _Deferred, error: RPCError) -> None:
        if type(call) is _Call:
            call.end_with(error)
        else:
            call.fail(error)

    def _keep_deadline(self, deadline: float, call: _Deferred) -> None:
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self.calls) + 64:
            # Mostly calls answered long before their deadline: drop them.
            deadlines[:] = [entry for entry in deadlines if not entry[2].abandoned]
            heapq.heapify(deadlines)
        heapq.heappush(deadlines, (deadline, call.stream_id, call))
        if self._timer is None:
            self._timer = trio.CancelScope(deadline=deadline)
            self._nursery.start_soon(self._expire_calls, self._timer)
        elif deadline < self._timer.deadline:
            self._timer.deadline = deadline

    async def _expire_calls(self, first: trio.CancelScope) -> None:
        """Answer DEADLINE_EXCEEDED to deferred calls still unanswered at their deadline."""
        deadlines = self._deadlines
        timer = first
        while True:
            with timer:
                await trio.sleep_forever()
            now = trio.current_time()
            while deadlines and deadlines[0][0] <= now:
                heapq.heappop(deadlines)[2].expire()
            timer = trio.CancelScope(deadline=deadlines[0][0] if deadlines else math.inf)
            self._timer = timer

    def forget_calls(self) -> None:
        """The connection is over: abandon the deferred calls nobody will answer now."""
        for call in list(self.calls.values()):
            if isinstance(call, _Deferred):
                call.forget()

    async def _run_call(
        self, stream_id: int, call: _Call, method: Method, message: Any, ctx: CallContext
    ) -> None:
        kind = method.kind
        try:
            result: Any = None
            with call.scope:
                if kind is MethodKind.UNARY:
                    result = await method.handler(message, ctx)
                else:
                    result = await method.handler(message, ctx, call.stream)
            if call.error is not None:
                self.reply_error(stream_id, call.error, True)
            elif call.scope.cancelled_caught:
                if call.closed_by_client:
                    self.reply_error(stream_id, Cancelled("call ended by the client"), True)
                else:
                    self.reply_error(
                        stream_id,
                        DeadlineExceeded("deadline exceeded while serving the call"),
                        True,
                    )
            elif kind not in _STREAMING:
                self.reply(ctx, result, True)
            elif result is None:
                self.transport.write_soon(encode_frame(stream_id, _DATA, _END_OF_STREAM, b""))
            else:
                # A streaming server's final message rides on its closing DATA frame.
                final = encode_frame(stream_id, _DATA, _REMOTE_CLOSED, self.dump(result))
                self.transport.write_soon(final)
        except Exception as exc:
            self.fail(ctx, exc, True)
        finally:
            del self.calls[stream_id]
            if call.stream is not None and call.stream.drained is not None:
                self._over.discard(call.stream)
                call.stream.drained.set()
            self.server.call_finished()


@final
class Server:
    """Serves ``{service: {method: Method}}`` over Unix stream sockets.

    Start it in a nursery with ``path = await nursery.start(server.serve_unix, path)``; it
    runs until :meth:`shutdown` completes or it is cancelled.  Cancelling it ends every
    connection and cancels every running handler at once.

    Access: only peers whose uid is in ``allowed_uids`` are served (default: the server's own
    effective uid and root); the socket file is mode 0600, or 0660 owned by ``socket_group``
    (a group name or gid) when one is given.  An unknown ``socket_group`` raises
    :class:`LookupError` here.  ``limits`` bound what each client may make the server hold
    (default: ``Limits()``; see :class:`~sandboxd.rpc.Limits` and PROTOCOL.md, "Limits").

    Envelopes: a connection's first request picks its envelope for the connection's life
    (docs/wire.md, "The protobuf envelope").  A CBOR connection is served ``services``; a
    protobuf one (ttrpc's own envelope, as Go and Rust ttrpc clients speak it) is served
    ``protobuf_services`` (default: none, so every call is UNIMPLEMENTED), declared with the
    same :class:`~sandboxd.rpc.Method` kinds, whose handlers deal in raw protobuf bytes (see
    :mod:`sandboxd.rpc._methods`, "Protobuf methods").  Errors are answered in the
    connection's envelope; before its first request (a refusal, an oversized first frame), in
    CBOR.
    """

    def __init__(
        self,
        services: Services,
        *,
        protobuf_services: Services | None = None,
        limits: Limits | None = None,
        allowed_uids: Collection[int] | None = None,
        socket_group: int | str | None = None,
    ) -> None:
        self.services = services
        self.protobuf_services: Services = {} if protobuf_services is None else protobuf_services
        # Decoded requests by payload, per envelope (see _Connection._on_request).
        self._decoded_cbor: dict[bytes, tuple[Request, Any, Method]] = {}
        self._decoded_protobuf: dict[bytes, tuple[Request, Any, Method]] = {}
        self.limits = Limits() if limits is None else limits
        self.allowed_uids: frozenset[int] = frozenset(
            {os.geteuid(), 0} if allowed_uids is None else allowed_uids
        )
        self.socket_group = None if socket_group is None else group_id(socket_group)
        self.draining = False
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._connections = 0
        self._open: set[_Connection] = set()
        self._stop_accepting = trio.CancelScope()
        self._grace = 0.0
        self._done = trio.Event()
        #: Warnings of refused peers, each kind at most once per interval (see RefusalLog).
        self.refusals = RefusalLog(log)

    @property
    def in_flight(self) -> int:
        """Calls in progress that are not answered inline, on all connections."""
        return self._in_flight

    @property
    def connections(self) -> int:
        """Connections being served (refused ones are never counted)."""
        return self._connections

    @property
    def buffered_bytes(self) -> int:
        """Reply bytes written on all connections and not yet taken by the kernel."""
        return sum(conn.transport.pending_bytes for conn in self._open)

    def call_started(self) -> None:
        if self._in_flight == 0:
            self._idle = trio.Event()
        self._in_flight += 1

    def call_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def serve_unix(
        self, path: str | os.PathLike[str], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``path`` and serve until :meth:`shutdown` or cancellation.

        Reports the socket path through ``task_status`` once it accepts connections.  The
        socket file is created 0600 (0660 and owned by ``socket_group`` when one is set); a
        stale one is replaced, a live one is refused with :class:`SocketInUseError`.  The file
        is removed on exit unless another server has replaced it.
        """
        path = os.fspath(path)
        listener, inode = bind_unix(path, group=self.socket_group)
        try:
            if self.socket_group is not None:
                shut = socket_dir_shut_to(path, self.socket_group)
                if shut is not None:
                    log.warning(
                        "group %d cannot reach %s: its directory %s gives the group no "
                        "search permission",
                        self.socket_group,
                        path,
                        shut,
                    )
            async with trio.open_nursery() as nursery:
                self.refusals.nursery = nursery
                task_status.started(path)
                with self._stop_accepting:
                    await self._accept_loop(listener, nursery)
                # Draining: refuse new calls, let running ones finish within the grace period.
                self.draining = True
                listener.close()
                unlink_if_ours(path, inode)
                with trio.move_on_after(self._grace):
                    await self._idle.wait()
                nursery.cancel_scope.cancel()
        finally:
            listener.close()
            unlink_if_ours(path, inode)
            self.refusals.flush()
            self._done.set()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let running calls finish for up to ``grace`` seconds (default: the
        limits' ``grace``), then end.

        New calls on open connections get UNAVAILABLE meanwhile.  Returns once the server has
        stopped.  If this is cancelled, the server goes on shutting down on its own.
        """
        self._grace = self.limits.grace if grace is None else grace
        self._stop_accepting.cancel()
        await self._done.wait()

    async def _accept_loop(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                # Out of file descriptors and the like: back off instead of spinning.
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            try:
                peer = peer_credentials(sock)
            except OSError as exc:
                log.warning("refusing connection: cannot read its credentials: %s", exc)
                sock.close()
                continue
            if peer.uid not in self.allowed_uids:
                self.refusals.warn(
                    "uid",
                    "refusing connection from uid %d (pid %d): uid not allowed",
                    peer.uid,
                    peer.pid,
                )
                _refuse(
                    sock, PermissionDenied(f"uid {peer.uid} is not allowed to use this socket")
                )
                continue
            limits = self.limits
            if self._connections >= limits.max_connections:
                self.refusals.warn(
                    "connections",
                    "refusing connection from uid %d (pid %d): %d connections open",
                    peer.uid,
                    peer.pid,
                    self._connections,
                )
                _refuse(
                    sock,
                    ResourceExhausted(
                        f"too many connections to this server (limit {limits.max_connections})"
                    ),
                )
                continue
            transport = Transport(
                sock, max_pending=limits.max_buffered_bytes, stall_timeout=limits.stall_timeout
            )
            # Counted here, not when its task starts: a burst of connections cannot overshoot.
            self._connections += 1
            nursery.start_soon(self._serve_connection, transport, peer)

    async def _serve_connection(self, transport: Transport, peer: PeerCredentials) -> None:
        conn: _Connection | None = None
        try:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(transport.run_writer)
                    conn = _Connection(self, transport, nursery, peer)
                    self._open.add(conn)
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await conn.read_loop()
                    # The peer is gone (or broke the stream): its calls are cancelled.
                    nursery.cancel_scope.cancel()
            except* PeerStalledError as group:
                self.refusals.warn(
                    "stalled",
                    "disconnecting uid %d (pid %d): %s",
                    peer.uid,
                    peer.pid,
                    group.exceptions[0],
                )
        finally:
            if conn is not None:
                self._open.discard(conn)
                conn.forget_calls()
            transport.close()
            self._connections -= 1


def _raw_message(result: Any) -> bytes:
    """A protobuf method's message as it is sent: the bytes its handler gave."""
    if isinstance(result, bytes):
        return result
    raise TypeError(f"a protobuf method's message must be bytes, not {type(result).__name__}")


def _raw_loaded(data: bytes, what: str) -> bytes:
    """A protobuf method's message as its handler gets it: the bytes received."""
    return data


def _window_of(values: Any) -> int:
    """The client's window from its request metadata: one decimal number of bytes."""
    if len(values) == 1 and type(values[0]) is str and values[0].isdigit():
        window = int(values[0])
        if 0 < window <= MAX_WINDOW:
            return window
    raise InvalidArgument(
        f"metadata {WINDOW_METADATA!r}: must be one number of bytes from 1 to {MAX_WINDOW}"
    )


def _refuse(sock: socket.socket, err: RPCError) -> None:
    """Tell a connection we will not serve why (one RESPONSE on stream 0), and close it."""
    try:
        sock.setblocking(False)
        # A fresh socket's buffer always has room for one small frame.
        sock.send(encode_frame(0, _RESPONSE, 0, encode_error_from(err)))
    except OSError:
        pass
    finally:
        sock.close()
