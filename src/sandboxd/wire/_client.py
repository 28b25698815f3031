"""The client's side of a connection, sans-io: stream ids, calls in flight, routing replies.

:class:`ClientConnection` holds everything a client must remember about one connection and
nothing about how bytes move: no sockets, no clock, no threads, no trio.  A driver (the trio
client, the blocking client, any other event loop's) does the I/O around it:

* to call, it encodes the request (:func:`request_envelope`, which needs no lock) and asks
  :meth:`~ClientConnection.send_request` for the call's stream id and the bytes to send, and
  sends them;
* whatever it reads from the socket it passes to :meth:`~ClientConnection.receive_data`
  (``b""`` at the end of the stream), which returns what happened as events, in the order the
  frames came: a unary call's :class:`ResponseReceived`, a stream's :class:`StreamMessage` and
  :class:`StreamEnded`, and :class:`ConnectionFailed` when the connection is over;
* after each :meth:`~ClientConnection.receive_data` it sends
  :meth:`~ClientConnection.data_to_send` (frames the connection decided to send by itself:
  ending a stream whose consumer fell behind);
* for a call opened with :meth:`~ClientConnection.open_stream` (client and bidirectional
  streams, and server streams with flow control), it sends what
  :meth:`~ClientConnection.send_message` and :meth:`~ClientConnection.close_send` return, while
  :meth:`~ClientConnection.send_credit` is positive (a :class:`WindowOpened` event says it grew),
  and tells the connection what its consumer took with :meth:`~ClientConnection.consumed`,
  sending the window update that returns;
* when a caller gives up on a call (its deadline passed, it was cancelled, it left a stream
  early) it sends what :meth:`~ClientConnection.cancel` returns, which tells the server to stop
  working on the call;
* when the socket fails, or the client is closed, it calls :meth:`~ClientConnection.close`.

A call keeps its place on the connection until the server's last frame for it arrives, even
after the driver gave it up: :attr:`~ClientConnection.open_calls` counts it as the server does,
so a client that keeps that below the server's per-connection limit is never refused for it.
Should the server refuse a unary call for that limit all the same (its limit is lower than the
client assumed), the call ends with :class:`CallRefused`, naming the limit: the server did
nothing with it, and the driver sends it again.  :class:`ConnectionPool` spreads a client's
calls over several connections on that count (docs/wire.md, "Many calls from one client").

A connection speaks one envelope for its life (``envelope=``, :data:`Envelope`): CBOR, or
ttrpc's protobuf, whose messages are bytes the driver's caller encodes and decodes.  Events
carry the messages as the server encoded them either way.

Every call in flight ends with exactly one event: :class:`ResponseReceived` for a unary call,
:class:`StreamEnded` for a stream (unless the driver cancels it first).  When the connection
ends, each call still in flight gets its ending event, carrying a copy of the connection's
error, and then one :class:`ConnectionFailed`; from then on :meth:`send_request` raises a copy
of that error and :meth:`receive_data` ignores what it is given.

A stream's messages are kept, oldest first, in the deque :meth:`~ClientConnection.messages`
returns: the connection appends to it, the driver's consumer takes from its left.  Messages
not yet taken count against the connection's ``stream_buffer``: if the deque is still that
full at the end of one :meth:`receive_data` and the next one brings another message, the
stream ends with :class:`~sandboxd.ResourceExhausted` (after the messages it holds) and the
frame that tells the server so waits in :meth:`data_to_send`.  A burst that arrives in one
read never counts against a consumer that keeps up, so a driver should read in chunks of
:data:`RECV_SIZE`.

What stays the driver's: the clock (it passes ``now`` to :func:`request_envelope` and
enforces deadlines by cancelling), sending requests in the order their ids were given (one
lock or one task around :meth:`send_request` and the send), waking the callers its events are
for, and decoding messages (:func:`~sandboxd.wire.loads_message`).  It needs nothing else
from this package.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Generic, Literal, NamedTuple, Protocol, TypeVar, final

from .._errors import Code, FailedPrecondition, ResourceExhausted, RPCError, Unavailable
from ._envelope import dumps, encode_request, loads_message, response_payload
from ._frame import (
    MAX_PAYLOAD,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    encode_frame,
)
from ._pb_envelope import encode_pb_request, pb_call_limit_from_version, pb_response_payload

#: How many bytes a driver should ask the socket for at once.  64 KiB: larger reads make
#: glibc map and unmap a fresh buffer for every call.
RECV_SIZE: Final = 64 * 1024
#: Messages a stream holds for a consumer that is not reading before the stream is ended.
DEFAULT_STREAM_BUFFER: Final = 1024
#: The last stream id a client may use (ids are odd and increase by 2 with every call).
MAX_STREAM_ID: Final = 2**32 - 1
#: The request metadata key by which a client says it speaks sandboxd's flow control; its one
#: value is the client's window (decimal): the bytes of stream messages the server may send
#: on the call before the client grants more.
WINDOW_METADATA: Final = "sandboxd-window"
#: The window of either side of a flow-controlled stream, in bytes of message payload: the
#: client's default, and the server's (a protocol constant).
DEFAULT_WINDOW: Final = 1 << 20
#: The largest window a peer may grant or ask for.
MAX_WINDOW: Final = 2**31 - 1
#: Calls a server runs at once on one connection unless told otherwise (its
#: ``max_calls_per_connection``), and so what a client assumes until it learns the server's.
DEFAULT_MAX_CALLS: Final = 1024
#: Connections one client object opens at most: past ``DEFAULT_MAX_CALLS`` calls on each,
#: calls wait for room.  16 keeps a busy client well within the server's connection limit
#: (1024 by default) while it may have 16,384 calls open.
DEFAULT_MAX_CONNECTIONS: Final = 16
#: The key of the detail by which a server says it refused a call for its per-connection call
#: limit (the value is the limit), before doing anything with the call.
CALL_LIMIT_DETAIL: Final = "max_calls_per_connection"
#: The call a client makes first on every connection it opens beyond its first, with the empty
#: message (in either envelope): any answer shows the server took the connection, and
#: sandboxd's names its limits (read by :meth:`ConnectionPool.opened` in either envelope).
PROBE_SERVICE: Final = "sandboxd.v1.Runtime"
PROBE_METHOD: Final = "Version"

#: The envelope a connection speaks (docs/wire.md, "The protobuf envelope"): ``"cbor"``,
#: sandboxd's own, or ``"protobuf"``, ttrpc's, whose messages are protobuf bytes the caller
#: encodes and decodes itself.
Envelope = Literal["cbor", "protobuf"]

_REQUEST: Final = int(FrameType.REQUEST)
_RESPONSE: Final = int(FrameType.RESPONSE)
_DATA: Final = int(FrameType.DATA)
_NO_DATA: Final = int(Flags.NO_DATA)
_REMOTE_CLOSED: Final = int(Flags.REMOTE_CLOSED)
_END_FLAGS: Final = int(Flags.REMOTE_CLOSED | Flags.NO_DATA)
_CANCEL_FLAGS: Final = int(Flags.REMOTE_CLOSED | Flags.NO_DATA | Flags.CANCEL)
_WINDOW: Final = int(Flags.WINDOW_UPDATE)
_WINDOW_FLAGS: Final = int(Flags.WINDOW_UPDATE | Flags.NO_DATA)
_REQUEST_OPEN: Final = int(Flags.REMOTE_OPEN)
_REQUEST_CLOSED: Final = int(Flags.REMOTE_CLOSED)


# Events are NamedTuples: light to build (one per reply), and equal when their fields are.
class ResponseReceived(NamedTuple):
    """A unary call ended: its response message, still encoded (the CBOR bytes of the method's
    message, ``b""`` for the empty one), or the error it ended with (``payload`` is then
    ``b""``).  The call is no longer in flight."""

    stream_id: int
    payload: bytes
    error: RPCError | None


class StreamMessage(NamedTuple):
    """A stream's next message was added to its :meth:`~ClientConnection.messages`."""

    stream_id: int


class StreamEnded(NamedTuple):
    """A stream ended, cleanly (``error`` is None) or with ``error``, which its consumer
    raises after the messages still in its :meth:`~ClientConnection.messages`.  The stream is
    no longer in flight.  ``payload`` is the call's final response message, still encoded,
    for a call opened with :meth:`~ClientConnection.open_stream` (``b""`` when it had none)."""

    stream_id: int
    error: RPCError | None
    payload: bytes = b""


class CallRefused(NamedTuple):
    """The server refused a unary call because the connection had ``limit`` calls in progress,
    before doing anything with it: the call is no longer in flight and may be sent again (on
    a connection with room)."""

    stream_id: int
    limit: int


class WindowOpened(NamedTuple):
    """The server granted more window on a stream the client sends on:
    :meth:`~ClientConnection.send_credit` grew."""

    stream_id: int


class ConnectionFailed(NamedTuple):
    """The connection is over: ``error`` is what every later call raises (a copy of it).  Every
    call that was in flight got its ending event just before this one."""

    error: RPCError


Event = (
    ResponseReceived | StreamMessage | StreamEnded | CallRefused | WindowOpened | ConnectionFailed
)

# A NamedTuple's own constructor is a Python function: building the one event every reply
# makes straight from tuple.__new__ halves its cost.
_new_response: Final = functools.partial(tuple.__new__, ResponseReceived)


def copy_error(err: RPCError) -> RPCError:
    """A fresh exception like ``err``, to raise in one more place."""
    return type(err)(err.message, details=err.details)


def call_limit_of(err: RPCError) -> int | None:
    """The limit named by a refusal for the per-connection call limit, or None when ``err``
    is any other error."""
    if err.code != Code.RESOURCE_EXHAUSTED or len(err.details) != 1:
        return None
    detail = err.details[0]
    limit = detail.get(CALL_LIMIT_DETAIL) if isinstance(detail, dict) else None
    return limit if type(limit) is int and limit > 0 else None


def call_limit_from_version(message: Mapping[str, Any]) -> int | None:
    """The per-connection call limit a ``Runtime/Version`` reply names, or None."""
    limits = message.get("limits")
    limit = limits.get("max_calls_per_connection") if isinstance(limits, dict) else None
    return limit if type(limit) is int and limit > 0 else None


def _probe_limit(envelope: Envelope, reply: bytes) -> int | None:
    """The per-connection call limit the probe call's reply (in ``envelope``) names, or None."""
    if envelope == "protobuf":
        return pb_call_limit_from_version(reply)
    try:
        return call_limit_from_version(loads_message(reply, "response payload"))
    except RPCError:
        return None


def messages_are_bytes(what: str) -> FailedPrecondition:
    """The error a driver raises when a method that takes or gives messages as mappings (CBOR)
    is used on a protobuf connection, whose messages are bytes."""
    return FailedPrecondition(
        f"{what}: the messages of a protobuf connection are bytes: use the *_encoded methods"
    )


def request_envelope(
    service: str,
    method: str,
    message: Mapping[str, Any] | bytes | None = None,
    *,
    deadline: float = math.inf,
    now: float = 0.0,
    metadata: Mapping[str, Sequence[str]] | None = None,
    window: int | None = None,
    envelope: Envelope = "cbor",
) -> bytes:
    """The request envelope of a call, for :meth:`ClientConnection.send_request` (or
    :meth:`~ClientConnection.open_stream`, given the connection's ``window``, which goes in
    the metadata), in the connection's ``envelope``.

    ``message`` is a mapping (encoded here as CBOR) or the message's own bytes, already
    encoded; in the ``"protobuf"`` envelope it must be bytes (or None, the empty message).

    ``deadline`` and ``now`` are times on the driver's clock (seconds); the server is given
    what is left between them (at least 1 ns; nothing when ``deadline`` is infinite).
    Enforcing the deadline locally is the driver's part: when it passes, it cancels the call
    (:meth:`ClientConnection.cancel`).  Pure: call it outside any lock.
    """
    timeout_nano = 0 if deadline == math.inf else max(1, int((deadline - now) * 1e9))
    if window is not None:
        metadata = {**(metadata or {}), WINDOW_METADATA: [str(window)]}
    if isinstance(message, bytes):
        payload = message
    elif envelope == "protobuf" and message is not None:
        raise TypeError("a message in the protobuf envelope is its encoded bytes")
    else:
        payload = dumps(message) if message else b""
    if envelope == "protobuf":
        return encode_pb_request(service, method, payload, timeout_nano, metadata)
    return encode_request(service, method, payload, timeout_nano, metadata)


@final
class _Stream:
    """A stream in flight."""

    __slots__ = ("behind", "consumed", "credit", "flow", "messages", "sends", "unacked")

    def __init__(self, flow: bool = False, sends: bool = False) -> None:
        self.messages: collections.deque[bytes] = collections.deque()
        # The buffer was full at the end of the last read: one more message ends the stream.
        self.behind = False
        # Opened by open_stream: flow-controlled, its final response reported.
        self.flow = flow
        # The client may still send on it (opened REMOTE_OPEN, not yet half-closed).
        self.sends = sends
        # Bytes the client may send before the server grants more.
        self.credit = DEFAULT_WINDOW
        # Bytes received and not granted back; bytes consumed and not granted back.
        self.unacked = 0
        self.consumed = 0


@final
class ClientConnection:
    """The protocol state of one client connection (see the module's docstring).

    Not thread-safe, and it never blocks: a driver that shares it between tasks or threads
    serialises calls into it (a lock, or one event loop).  No method does I/O or reads a
    clock; it raises only :class:`~sandboxd.RPCError` (but for asking
    :meth:`messages` of a stream not in flight).

    ``stream_buffer`` is how many unread messages a stream may hold (see the module's
    docstring); ``max_payload`` the largest frame accepted from the server (a larger one ends
    its call with :class:`~sandboxd.ResourceExhausted`, the connection stays usable).

    ``envelope`` is the envelope the connection speaks (:data:`Envelope`), for life: its
    requests must be made by :func:`request_envelope` with the same one.  The messages its
    events carry are the method's message as the server encoded it, CBOR or protobuf bytes.
    In the protobuf envelope a response that begins with a CBOR map head is read as CBOR (a
    server answers so before it has read a request: a refusal on stream 0).
    """

    __slots__ = (
        "_abandoned",
        "_decoder",
        "_error",
        "_next_id",
        "_outgoing",
        "_read_response",
        "_stream_buffer",
        "_streams",
        "_unary",
        "envelope",
        "window",
    )

    def __init__(
        self,
        *,
        stream_buffer: int = DEFAULT_STREAM_BUFFER,
        max_payload: int = MAX_PAYLOAD,
        window: int = DEFAULT_WINDOW,
        envelope: Envelope = "cbor",
    ) -> None:
        if envelope not in ("cbor", "protobuf"):
            raise ValueError(f"unknown envelope {envelope!r}")
        self.window = window
        self.envelope: Envelope = envelope
        # Reads a response envelope: its payload, or raises the error it carries.
        self._read_response = pb_response_payload if envelope == "protobuf" else response_payload
        self._decoder = FrameDecoder(max_payload)
        self._next_id = 1
        # Calls in flight by stream id: unary ones, and streams with their state.
        self._unary: set[int] = set()
        self._streams: dict[int, _Stream] = {}
        # Calls given up whose last frame from the server has not come: the server still
        # counts them against its limit.
        self._abandoned: set[int] = set()
        self._error: RPCError | None = None
        self._stream_buffer = stream_buffer
        self._outgoing: list[bytes] = []

    @property
    def error(self) -> RPCError | None:
        """Why the connection is over (what later calls raise a copy of), or None while open."""
        return self._error

    @property
    def in_flight(self) -> int:
        """How many calls have neither ended nor been cancelled."""
        return len(self._unary) + len(self._streams)

    @property
    def open_calls(self) -> int:
        """How many calls the server may still count against its per-connection limit: those
        in flight, and those given up whose last frame from the server has not come."""
        return len(self._unary) + len(self._streams) + len(self._abandoned)

    def send_request(self, envelope: bytes, *, stream: bool = False) -> tuple[int, bytes]:
        """Start a call: its stream id and the request frame to send, carrying ``envelope``
        (see :func:`request_envelope`).  With ``stream``, the call is a server stream whose
        messages arrive in :meth:`messages`.

        Raises a copy of :attr:`error` when the connection is over;
        :class:`~sandboxd.ResourceExhausted` when the connection's stream ids are used up, or
        when the request is over the frame limit.  Nothing changes when it raises.  Requests
        must reach the server in the order this method numbered them.
        """
        if self._error is not None:
            raise copy_error(self._error)
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise ResourceExhausted("stream ids of this connection are used up: reconnect")
        frame = encode_frame(stream_id, _REQUEST, 0, envelope)
        self._next_id = stream_id + 2
        if stream:
            self._streams[stream_id] = _Stream()
        else:
            self._unary.add(stream_id)
        return stream_id, frame

    def open_stream(self, envelope: bytes, *, client_sends: bool = True) -> tuple[int, bytes]:
        """Start a flow-controlled stream: its id and the request frame to send.  The
        ``envelope`` must carry the connection's :attr:`window` (``request_envelope(...,
        window=conn.window)``).  With ``client_sends`` (a client or bidirectional stream) the
        request is flagged REMOTE_OPEN and the client sends with :meth:`send_message` and
        :meth:`close_send`; otherwise REMOTE_CLOSED (a server stream).

        The server's messages arrive in :meth:`messages`; the driver reports what its consumer
        took with :meth:`consumed`.  The call ends with :class:`StreamEnded` carrying the final
        response.  Raises as :meth:`send_request` does.
        """
        stream_id, frame = self.send_request(envelope, stream=True)
        if client_sends:
            frame = frame[:9] + bytes([_REQUEST_OPEN]) + frame[10:]
        else:
            frame = frame[:9] + bytes([_REQUEST_CLOSED]) + frame[10:]
        self._streams[stream_id] = _Stream(flow=True, sends=client_sends)
        return stream_id, frame

    def _sending(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._error is not None:
                raise copy_error(self._error)
            raise FailedPrecondition(f"stream {stream_id} has ended: nothing more can be sent")
        if not stream.sends:
            raise FailedPrecondition(f"stream {stream_id} is closed for sending")
        return stream

    def send_credit(self, stream_id: int) -> int:
        """Bytes the client may send on ``stream_id`` before the server grants more (at most
        one message goes out while this is positive, whatever its size).  Raises as
        :meth:`send_message` does when the stream takes nothing more."""
        return self._sending(stream_id).credit

    def send_message(self, stream_id: int, payload: bytes) -> bytes:
        """The DATA frame carrying one message (encoded) on a stream the client sends on.

        The driver waits until :meth:`send_credit` is positive before it asks.  Raises a copy
        of :attr:`error` when the connection is over, :class:`~sandboxd.FailedPrecondition`
        when the stream has ended or was closed for sending,
        :class:`~sandboxd.ResourceExhausted` when the message is over the frame limit.
        """
        stream = self._sending(stream_id)
        frame = encode_frame(stream_id, _DATA, 0, payload)
        stream.credit -= len(payload)
        return frame

    def close_send(self, stream_id: int) -> bytes:
        """The frame that says the client will send nothing more on the stream (the half-close,
        REMOTE_CLOSED | NO_DATA).  Raises as :meth:`send_message` does."""
        self._sending(stream_id).sends = False
        return encode_frame(stream_id, _DATA, _END_FLAGS, b"")

    def consumed(self, stream_id: int, size: int) -> bytes:
        """The consumer took a message of ``size`` bytes from a flow-controlled stream: the
        window update to send (once half the window is taken), or ``b""``."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.flow:
            return b""
        stream.consumed += size
        if stream.consumed < self.window // 2:
            return b""
        grant, stream.consumed = stream.consumed, 0
        stream.unacked -= grant
        return window_frame(stream_id, grant)

    def messages(self, stream_id: int) -> collections.deque[bytes]:
        """The messages of the stream ``stream_id`` not yet taken, oldest first: take them
        with ``popleft``.  The deque is the stream's for good (keep it: once the stream has
        ended, this raises KeyError)."""
        return self._streams[stream_id].messages

    def cancel(self, stream_id: int) -> bytes:
        """Give up on a call: the frame that tells the server to stop working on it, or
        ``b""`` when there is nothing to send (the call had ended, or the connection is
        over).  No event comes for the call afterwards."""
        if stream_id in self._unary:
            self._unary.discard(stream_id)
            self._abandoned.add(stream_id)
            return _cancel_frame(stream_id)
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return b""
        self._abandoned.add(stream_id)
        if stream.flow:
            # A REMOTE_CLOSED of its own could be this call's half-close: say CANCEL.
            return encode_frame(stream_id, _DATA, _CANCEL_FLAGS, b"")
        return _cancel_frame(stream_id)

    def data_to_send(self) -> bytes:
        """Frames the connection decided to send while receiving (``b""`` if none); each is
        returned once."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def close(self, error: RPCError) -> list[Event]:
        """End the connection with ``error``: every call in flight ends with a copy of it,
        then :class:`ConnectionFailed`.  If the connection was over already, nothing happens
        (the first error stays) and no event is returned."""
        if self._error is not None:
            return []
        self._error = error
        events: list[Event] = []
        for stream_id in sorted(self._unary.union(self._streams)):  # oldest call first
            if stream_id in self._unary:
                events.append(ResponseReceived(stream_id, b"", copy_error(error)))
            else:
                events.append(StreamEnded(stream_id, copy_error(error)))
        self._unary.clear()
        self._streams.clear()
        self._abandoned.clear()
        self._outgoing.clear()
        events.append(ConnectionFailed(error))
        return events

    def receive_data(self, data: bytes) -> list[Event]:
        """Take the next bytes read from the server (``b""``: the server closed the
        connection) and return the events they complete, in order.

        Frames for calls no longer in flight are dropped.  An error response on stream 0 (the
        server refusing the connection, e.g. PERMISSION_DENIED) ends the connection with that
        error, and what follows it is ignored.
        """
        if self._error is not None:
            return []
        if not data:
            return self.close(Unavailable("connection to the server was closed"))
        events: list[Event] = []
        unary = self._unary
        streams = self._streams
        read_response = self._read_response
        # Streams given messages in this read, each once: judged behind or not at the end.
        filled: dict[int, _Stream] = {}
        for frame in self._decoder.feed(data):
            stream_id = frame.stream_id
            if stream_id in unary:
                if type(frame) is Frame:
                    if frame.type == _RESPONSE:
                        unary.discard(stream_id)
                        try:
                            payload = read_response(frame.payload)
                        except RPCError as err:
                            limit = call_limit_of(err)
                            if limit is None:
                                events.append(ResponseReceived(stream_id, b"", err))
                            else:
                                events.append(CallRefused(stream_id, limit))
                        else:
                            events.append(_new_response((stream_id, payload, None)))
                elif isinstance(frame, OversizedFrame):
                    unary.discard(stream_id)
                    events.append(ResponseReceived(stream_id, b"", _oversized(frame)))
                continue
            stream = streams.get(stream_id)
            if stream is None:
                if stream_id in self._abandoned and (
                    frame.type == _RESPONSE or frame.flags & _REMOTE_CLOSED
                ):
                    self._abandoned.discard(stream_id)  # the server is done with it
                elif stream_id == 0 and type(frame) is Frame and frame.type == _RESPONSE:
                    try:
                        read_response(frame.payload)
                    except RPCError as err:
                        return events + self.close(err)
                continue  # a call given up on, or nobody's
            if isinstance(frame, OversizedFrame):
                del streams[stream_id]
                if frame.type != _RESPONSE and not frame.flags & _REMOTE_CLOSED:
                    # Not the stream's last frame: the server is still at it.
                    self._abandoned.add(stream_id)
                    self._outgoing.append(encode_frame(stream_id, _DATA, _CANCEL_FLAGS, b""))
                events.append(StreamEnded(stream_id, _oversized(frame)))
            elif frame.type == _RESPONSE:
                del streams[stream_id]
                try:
                    payload = read_response(frame.payload)
                except RPCError as err:
                    events.append(StreamEnded(stream_id, err))
                else:
                    events.append(StreamEnded(stream_id, None, payload if stream.flow else b""))
            elif frame.type == _DATA and stream.flow:
                self._on_flow_data(stream_id, stream, frame.flags, frame.payload, events)
            elif frame.type == _DATA:
                filled[stream_id] = stream
                self._on_stream_data(stream_id, stream, frame.flags, frame.payload, events)
        for stream in filled.values():
            stream.behind = len(stream.messages) >= self._stream_buffer
        return events

    def _on_stream_data(
        self, stream_id: int, stream: _Stream, flags: int, data: bytes, events: list[Event]
    ) -> None:
        if not flags & _NO_DATA:
            # A burst within one read never counts against a consumer that keeps up; a buffer
            # still full when the next read brings more does.
            if stream.behind and len(stream.messages) >= self._stream_buffer:
                del self._streams[stream_id]
                self._abandoned.add(stream_id)
                self._outgoing.append(_cancel_frame(stream_id))
                error = ResourceExhausted(
                    f"stream consumer fell {self._stream_buffer} messages behind; stream ended"
                )
                events.append(StreamEnded(stream_id, error))
                return
            stream.messages.append(data)
            events.append(StreamMessage(stream_id))
        if flags & _REMOTE_CLOSED:
            del self._streams[stream_id]
            events.append(StreamEnded(stream_id, None))

    def _on_flow_data(
        self, stream_id: int, stream: _Stream, flags: int, data: bytes, events: list[Event]
    ) -> None:
        if flags & _WINDOW:
            if len(data) == 4:
                stream.credit += int.from_bytes(data, "big")
                events.append(WindowOpened(stream_id))
            return
        if flags & _REMOTE_CLOSED:
            # The last frame of a streaming server: its payload is the final response.
            del self._streams[stream_id]
            events.append(StreamEnded(stream_id, None, b"" if flags & _NO_DATA else data))
            return
        if flags & _NO_DATA:
            return
        stream.unacked += len(data)
        if stream.unacked > self.window + MAX_PAYLOAD:
            del self._streams[stream_id]
            self._abandoned.add(stream_id)
            self._outgoing.append(encode_frame(stream_id, _DATA, _CANCEL_FLAGS, b""))
            error = ResourceExhausted(
                f"stream {stream_id}: the server sent {stream.unacked} bytes past the "
                f"{self.window}-byte window; stream ended"
            )
            events.append(StreamEnded(stream_id, error))
            return
        stream.messages.append(data)
        events.append(StreamMessage(stream_id))


def window_frame(stream_id: int, grant: int) -> bytes:
    """The DATA frame granting ``grant`` more bytes of window on ``stream_id``."""
    return encode_frame(stream_id, _DATA, _WINDOW_FLAGS, grant.to_bytes(4, "big"))


def _cancel_frame(stream_id: int) -> bytes:
    """The frame that ends a call from the client's side: an empty DATA frame, closing."""
    return encode_frame(stream_id, _DATA, _END_FLAGS, b"")


def _oversized(frame: OversizedFrame) -> ResourceExhausted:
    return ResourceExhausted(f"server sent a frame of {frame.length} bytes, over the limit")


class PooledConnection(Protocol):
    """What :class:`ConnectionPool` needs of a driver's connection: its protocol state."""

    @property
    def conn(self) -> ClientConnection: ...


_C = TypeVar("_C", bound=PooledConnection)


@final
class ConnectionPool(Generic[_C]):
    """Which of a client's connections a new call goes on, when to open another, and how many
    waiting calls to wake: what lets a client never surface the server's per-connection call
    limit (docs/wire.md, "Many calls from one client").  Sans-io, like
    :class:`ClientConnection`: the driver opens connections, parks and wakes its callers.

    A call goes on the oldest connection whose :attr:`~ClientConnection.open_calls` are below
    :attr:`max_calls` (the server's limit, as far as the client knows), so a client that is not
    busy uses one connection.  When none has room, the call queues (:attr:`waiting`) and, while
    fewer than :attr:`max_connections` are open, the driver opens one more
    (:meth:`should_open`), makes the probe call on it (:data:`PROBE_SERVICE`), and adds it
    (:meth:`opened`); a connection the server refuses stops the pool from growing.  Each time
    calls end, the driver wakes :meth:`wake_count` queued callers, oldest first; a caller that
    finds waiting callers ahead of it queues behind them.

    The driver counts its queued callers in and out of :attr:`waiting`, and those it woke in
    and out of :attr:`woken` (a woken caller that runs takes one off both).
    """

    __slots__ = (
        "connections",
        "growable",
        "max_calls",
        "max_connections",
        "opening",
        "waiting",
        "woken",
    )

    def __init__(self, first: _C, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        #: Open connections, oldest first: the first is the client's own.
        self.connections: list[_C] = [first]
        self.max_connections = max_connections
        self.max_calls = DEFAULT_MAX_CALLS
        #: Whether another connection may be opened (False once the server refused one).
        self.growable = True
        #: Whether a connection is being opened.
        self.opening = False
        self.waiting = 0
        self.woken = 0

    def pick(self) -> _C | None:
        """A connection with room for a new call, or None when it must queue (callers are
        queued already, or no connection has room)."""
        if self.waiting:
            return None
        return self.take()

    def take(self) -> _C | None:
        """A connection with room for one more call, queued callers or not; None if none has."""
        limit = self.max_calls
        for connection in self.connections:
            conn = connection.conn
            if conn.open_calls < limit and conn.error is None:
                return connection
        return None

    def wake_count(self) -> int:
        """How many more queued callers to wake, now counted :attr:`woken`: one per call the
        connections have room for, beyond callers woken already."""
        limit = self.max_calls
        room = sum(
            max(0, limit - c.conn.open_calls) for c in self.connections if c.conn.error is None
        )
        count = max(0, min(room, self.waiting) - self.woken)
        self.woken += count
        return count

    def should_open(self) -> bool:
        """Whether the driver should open one more connection now (it then calls
        :meth:`opened` once it knows how that went): no connection has room, and the pool may
        grow and is not growing already."""
        if (
            self.opening
            or not self.growable
            or len(self.connections) >= self.max_connections
            or self.take() is not None
        ):
            return False
        self.opening = True
        return True

    def opened(self, connection: _C | None, reply: bytes | None = None) -> bool:
        """The connection the driver opened, once its probe call ended (``reply``: the
        response message, still encoded, or None when the call failed); None when it could not
        be made.  False when the pool did not take it (the server refused the connection, or
        it could not be made): the driver closes it, and the pool opens no more."""
        self.opening = False
        if connection is None or connection.conn.error is not None:
            self.growable = False
            return False
        self.connections.append(connection)
        if reply is not None:
            limit = _probe_limit(connection.conn.envelope, reply)
            if limit is not None:
                self.max_calls = limit
        return True

    def learn(self, limit: int) -> None:
        """The server refused a call for its per-connection ``limit`` (see
        :class:`CallRefused`)."""
        self.max_calls = min(self.max_calls, limit)

    @property
    def closed(self) -> bool:
        """Whether the client is over: its first connection is."""
        return self.connections[0].conn.error is not None

    def lost(self, connection: _C) -> list[_C]:
        """A connection that is over (its calls had their events): the connections the driver
        closes now, every other one when it is the first (the client is then over)."""
        if connection is self.connections[0]:
            return self.connections[1:]
        if connection in self.connections:
            self.connections.remove(connection)
        return []
