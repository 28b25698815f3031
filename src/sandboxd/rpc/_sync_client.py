"""A blocking client: plain ``socket``, no event loop, safe to share between threads.

Calls from many threads share one connection, and more once the server's per-connection
call limit fills it (a :class:`~sandboxd.wire.ConnectionPool` says which).  On each
connection, whichever waiting thread finds nobody reading becomes the reader: it reads frames
and hands every response to the call it belongs to, until its own arrives; then the next
waiting thread takes over.  A single-threaded
caller therefore pays no thread switch at all.  The protocol itself (stream ids, calls in
flight, which frame ends which call) is a :class:`~sandboxd.wire.ClientConnection`'s, used
under one lock.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, final

from .._errors import DeadlineExceeded, FailedPrecondition, RPCError, Unavailable
from ..wire import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_STREAM_BUFFER,
    DEFAULT_WINDOW,
    PROBE_METHOD,
    PROBE_SERVICE,
    RECV_SIZE,
    CallRefused,
    ClientConnection,
    ConnectionFailed,
    ConnectionPool,
    Envelope,
    Event,
    ResponseReceived,
    StreamEnded,
    dumps,
    loads_message,
    messages_are_bytes,
    request_envelope,
)

#: Seconds a call waiting for room waits before it reads the connections nobody reads (the
#: blocking client has no reader thread of its own).
_UNREAD_AFTER: Final = 0.05


@final
class _Slot:
    """A call in flight: what its waiting thread looks at (under the client's lock)."""

    __slots__ = ("buffer", "done", "error", "payload", "refused")

    def __init__(self) -> None:
        self.done = False
        # The server refused the call for its call limit, untouched: send it again.
        self.refused = False
        self.payload = b""
        self.error: RPCError | None = None
        # A stream's messages (the connection's deque, see ClientConnection.messages).
        self.buffer: collections.deque[bytes] | None = None


@final
class _SyncConnection:
    """One connection of a :class:`SyncClient`; its protocol state is under the client's
    lock."""

    def __init__(self, client: SyncClient, sock: socket.socket) -> None:
        self._client = client
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self.conn = self._conn = ClientConnection(
            stream_buffer=client._stream_buffer,
            window=client._window,
            envelope=client._envelope,
        )
        self._cond = client._cond
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Slot] = {}
        self._reading = False

    def close(self) -> None:
        """Close the connection; calls waiting in other threads fail with UNAVAILABLE."""
        with self._cond:
            self._dispatch(self._conn.close(Unavailable("client was closed")))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    # -- sending --------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError:
            self._send_failed()

    def _send_failed(self) -> None:
        # The server may have said why before it closed (an error on stream 0): leave the
        # socket to the reading path, which sees that, then the end of the stream.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def _begin(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None,
        metadata: Mapping[str, Sequence[str]] | None,
        streaming: bool,
        client_sends: bool | None,
        deadline: float,
    ) -> tuple[int, _Slot] | None:
        """Send a call's request: its id and its slot; None when the connection has no room
        left."""
        now = time.monotonic()
        envelope = request_envelope(
            service,
            method,
            message,
            deadline=deadline,
            now=now,
            metadata=metadata,
            window=None if client_sends is None else self._conn.window,
            envelope=self._conn.envelope,
        )
        slot = _Slot()
        # Ids must reach the server in increasing order: allocate and send under one lock.
        with self._send_lock:
            with self._cond:
                pool = self._client._pool
                if self._conn.error is None and self._conn.open_calls >= pool.max_calls:
                    return None  # filled since it was chosen
                if client_sends is None:
                    stream_id, frame = self._conn.send_request(envelope, stream=streaming)
                else:
                    stream_id, frame = self._conn.open_stream(envelope, client_sends=client_sends)
                if streaming:
                    slot.buffer = self._conn.messages(stream_id)
                self._pending[stream_id] = slot
            try:
                self._sock.sendall(frame)
            except OSError:
                self._send_failed()
        return stream_id, slot

    def _abandon(self, stream_id: int) -> None:
        with self._cond:
            self._pending.pop(stream_id, None)
            cancel = self._conn.cancel(stream_id)
        if cancel:
            self._send(cancel)

    # -- receiving ------------------------------------------------------------------------

    def _await(self, slot: _Slot, deadline: float, ready: Any) -> bool:
        """Block until ``ready()`` holds for ``slot`` or ``deadline`` passes (False)."""
        cond = self._cond
        with cond:
            while True:
                if ready():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if not self._reading:
                    self._reading = True
                    break
                cond.wait(None if remaining == math.inf else remaining)
        try:
            return self._read_until(deadline, ready)
        finally:
            with cond:
                self._reading = False
                cond.notify_all()

    def _read_until(self, deadline: float, ready: Any) -> bool:
        while True:
            with self._cond:
                if ready():
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            wait_ms = -1 if remaining == math.inf else max(1, math.ceil(remaining * 1000))
            if not self._poll.poll(wait_ms):
                continue
            try:
                data = self._sock.recv(RECV_SIZE)
            except OSError as exc:
                with self._cond:
                    self._dispatch(
                        self._conn.close(Unavailable(f"connection to the server was lost: {exc}"))
                    )
                return True
            with self._cond:
                self._dispatch(self._conn.receive_data(data))  # b"": the server closed it
                outgoing = self._conn.data_to_send()
                if self._conn.error is not None:
                    return True
            if outgoing:
                self._send(outgoing)

    def _dispatch(self, events: list[Event]) -> None:
        """Hand the connection's events to their calls and wake the waiting threads (under
        ``_cond``): those waiting for room too."""
        for event in events:
            if type(event) is ResponseReceived or type(event) is StreamEnded:
                slot = self._pending.pop(event.stream_id, None)
                if slot is not None:
                    slot.payload = event.payload
                    slot.error = event.error
                    slot.done = True
            elif type(event) is CallRefused:
                self._client._pool.learn(event.limit)
                slot = self._pending.pop(event.stream_id, None)
                if slot is not None:
                    slot.refused = slot.done = True
            elif type(event) is ConnectionFailed:
                self._client._lost(self)
        # A read without events may still have freed room (a call given up on ended).
        if events or self._client._pool.waiting:
            self._cond.notify_all()

    def _messages(self, slot: _Slot, deadline: float, name: str) -> Iterator[dict[str, Any]]:
        buffer = slot.buffer
        assert buffer is not None
        while True:
            if not self._await(slot, deadline, lambda: bool(buffer) or slot.done):
                raise DeadlineExceeded(f"{name}: deadline exceeded")
            with self._cond:
                payload = buffer.popleft() if buffer else None
            if payload is not None:
                yield loads_message(payload, "stream message")
                continue
            if slot.error is not None:
                raise slot.error
            return


@final
class SyncClient:
    """A blocking client of a sandboxd RPC server: one connection, and more while that one is
    full.

    Same calls and the same typed errors as the trio :class:`~sandboxd.rpc.Client`:
    the server's status as its :class:`~sandboxd.RPCError` subclass, DEADLINE_EXCEEDED when
    ``timeout`` passes (the server is told to cancel the call), UNAVAILABLE when the
    connection cannot be made or is lost, or the error the server refused the connection with
    (PERMISSION_DENIED, RESOURCE_EXHAUSTED).  Use as a context manager, or call :meth:`close`.

    Never the server's per-connection call limit: as the trio client does, a call (streams
    too) goes on a connection with room, the calling thread opens another when all are full
    (up to ``max_connections``), and calls wait for room within their own ``timeout``; a
    unary call the server refuses for its limit all the same is sent again.

    ``envelope`` is the envelope every connection speaks (:data:`~sandboxd.wire.Envelope`).
    On protobuf connections every message is the method's protobuf bytes: call with
    :meth:`call_encoded`, stream with :meth:`open_stream` and the ``*_encoded`` methods of
    :class:`SyncStreamCall`; the methods that take or give mappings raise
    :class:`~sandboxd.FailedPrecondition`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        stream_buffer: int = DEFAULT_STREAM_BUFFER,
        window: int = DEFAULT_WINDOW,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        envelope: Envelope = "cbor",
    ) -> None:
        self.path = os.fspath(path)
        self._stream_buffer = stream_buffer
        self._window = window
        self._envelope: Envelope = envelope
        # Every connection's protocol state, its calls and the pool: under _cond.
        self._cond = threading.Condition(threading.Lock())
        self._first = _SyncConnection(self, self._connect())
        self._pool = ConnectionPool(self._first, max_connections=max_connections)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        return sock

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connections(self) -> int:
        """How many connections the client has open."""
        return len(self._pool.connections)

    def close(self) -> None:
        """Close every connection; calls waiting in other threads fail with UNAVAILABLE."""
        for connection in list(self._pool.connections):
            connection.close()

    def _lost(self, connection: _SyncConnection) -> None:
        """``connection`` is over (under ``_cond``)."""
        for other in self._pool.lost(connection):
            other._dispatch(other._conn.close(Unavailable("client was closed")))
            with contextlib.suppress(OSError):
                other._sock.shutdown(socket.SHUT_RDWR)

    # -- room for a call ---------------------------------------------------------------------

    def _begin(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None,
        timeout: float | None,
        metadata: Mapping[str, Sequence[str]] | None,
        streaming: bool,
        client_sends: bool | None = None,
    ) -> tuple[_SyncConnection, int, _Slot, float]:
        """Send a call's request on a connection with room, waiting for room until the
        call's deadline."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        # The first connection unless calls wait for room: it says under its lock whether it
        # has room (the oldest connection with room is the one to use).
        connection = None if self._pool.waiting else self._first
        while True:
            if connection is None:
                connection = self._connection(deadline, f"{service}/{method}")
            begun = connection._begin(
                service, method, message, metadata, streaming, client_sends, deadline
            )
            if begun is not None:
                return connection, begun[0], begun[1], deadline
            connection = None

    def _connection(self, deadline: float, name: str) -> _SyncConnection:
        """A connection with room for one more call (the first when the client is over); waits
        (until ``deadline``) for one."""
        pool = self._pool
        with self._cond:
            connection = pool.pick()
            while connection is None and not self._pool.closed:
                if pool.should_open():
                    opened: _SyncConnection | None = None
                    reply: bytes | None = None
                    self._cond.release()
                    try:
                        opened, reply = self._open_connection(deadline)
                    finally:
                        self._cond.acquire()
                        taken = pool.opened(opened, reply)
                        self._cond.notify_all()
                    if not taken and opened is not None:
                        self._cond.release()
                        try:
                            opened.close()
                        finally:
                            self._cond.acquire()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeadlineExceeded(f"{name}: deadline exceeded waiting for room")
                    pool.waiting += 1
                    try:
                        self._cond.wait(min(remaining, _UNREAD_AFTER))
                    finally:
                        pool.waiting -= 1
                    self._read_unread()
                connection = pool.take()
        return self._first if connection is None else connection

    def _read_unread(self) -> None:
        """Read what the connections nobody reads hold (under ``_cond``): the last frames of
        calls given up on, whose room a caller waits for while no thread reads for them."""
        for connection in self._pool.connections:
            if not connection._reading and connection._poll.poll(0):
                try:
                    data = connection._sock.recv(RECV_SIZE)
                except OSError:
                    continue  # a reading thread will see it
                # What the connection has to send goes with the next read's.
                connection._dispatch(connection._conn.receive_data(data))

    def _open_connection(self, deadline: float) -> tuple[_SyncConnection | None, bytes | None]:
        """One more connection, once its probe call (see ConnectionPool) ended or
        ``deadline`` passed, and the probe's reply (None: it failed); None when no connection
        could be made."""
        try:
            connection = _SyncConnection(self, self._connect())
        except Unavailable:
            return None, None
        begun = connection._begin(PROBE_SERVICE, PROBE_METHOD, None, None, False, None, deadline)
        assert begun is not None
        _, slot = begun
        connection._await(slot, deadline, lambda: slot.done)
        return connection, slot.payload if slot.done and slot.error is None else None

    def call(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """Call a unary method and return its response message (blocking)."""
        if self._envelope == "protobuf":
            raise messages_are_bytes(f"{service}/{method}")
        return loads_message(
            self.call_encoded(service, method, message, timeout=timeout, metadata=metadata),
            "response payload",
        )

    def call_encoded(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> bytes:
        """Like :meth:`call`, the response message still encoded (``b""`` for the empty
        one); ``message`` may be bytes, the message already encoded.  On a protobuf
        connection, messages both ways are the method's protobuf bytes."""
        connection, stream_id, slot, deadline = self._begin(
            service, method, message, timeout, metadata, streaming=False
        )
        if not connection._await(slot, deadline, lambda: slot.done):
            connection._abandon(stream_id)
            raise DeadlineExceeded(f"{service}/{method}: deadline exceeded after {timeout} s")
        if slot.refused:
            # The server did nothing with it (its limit is lower than assumed): again.
            remaining = None if timeout is None else deadline - time.monotonic()
            return self.call_encoded(
                service, method, message, timeout=remaining, metadata=metadata
            )
        if slot.error is not None:
            raise slot.error
        return slot.payload

    @contextmanager
    def stream(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> Iterator[Iterator[dict[str, Any]]]:
        """Call a server-streaming method; iterate over what the context manager yields.

        Leaving the block before the stream ends tells the server to end it.  Not on a
        protobuf connection (use :meth:`open_stream` with ``client_sends=False``).
        """
        if self._envelope == "protobuf":
            raise messages_are_bytes(f"{service}/{method}")
        connection, stream_id, slot, deadline = self._begin(
            service, method, message, timeout, metadata, streaming=True
        )
        try:
            yield connection._messages(slot, deadline, f"{service}/{method}")
        finally:
            if not slot.done:
                connection._abandon(stream_id)

    @contextmanager
    def open_stream(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None = None,
        *,
        client_sends: bool = True,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> Iterator[SyncStreamCall]:
        """Open a flow-controlled stream call, as :meth:`Client.open_stream
        <sandboxd.rpc.Client.open_stream>` does, and yield it (a :class:`SyncStreamCall`).
        Leaving the block before the call ended tells the server to end it."""
        connection, stream_id, slot, deadline = self._begin(
            service, method, message, timeout, metadata, streaming=True, client_sends=client_sends
        )
        try:
            yield SyncStreamCall(connection, stream_id, slot, deadline, f"{service}/{method}")
        finally:
            if not slot.done:
                connection._abandon(stream_id)


@final
class SyncStreamCall:
    """A call opened with :meth:`SyncClient.open_stream`: the blocking twin of
    :class:`~sandboxd.rpc.StreamCall`, with the same methods and errors (the ``*_encoded``
    ones included).  One thread may send while another receives."""

    __slots__ = ("_client", "_deadline", "_name", "_slot", "stream_id")

    def __init__(
        self, client: _SyncConnection, stream_id: int, slot: _Slot, deadline: float, name: str
    ) -> None:
        self._client = client
        self.stream_id = stream_id
        self._slot = slot
        self._deadline = deadline
        self._name = name

    def _ended(self) -> RPCError:
        if self._slot.error is not None:
            return self._slot.error
        return FailedPrecondition(f"{self._name}: the call has ended: nothing more can be sent")

    def send(self, message: Mapping[str, Any]) -> None:
        """Send one message, waiting while the server's window is used up."""
        if self._client._conn.envelope == "protobuf":
            raise messages_are_bytes(self._name)
        self.send_encoded(dumps(message))

    def send_encoded(self, payload: bytes) -> None:
        """Send one message, already encoded (protobuf bytes on a protobuf connection)."""
        client = self._client
        slot = self._slot
        conn = client._conn

        def ready() -> bool:
            return slot.done or conn.send_credit(self.stream_id) > 0

        if not client._await(slot, self._deadline, ready):
            raise DeadlineExceeded(f"{self._name}: deadline exceeded")
        with client._cond:
            if slot.done:
                raise self._ended()
            frame = conn.send_message(self.stream_id, payload)
        client._send(frame)

    def close_send(self) -> None:
        """Say the client will send nothing more (the half-close)."""
        client = self._client
        with client._cond:
            if self._slot.done:
                raise self._ended()
            frame = client._conn.close_send(self.stream_id)
        client._send(frame)

    def receive(self) -> dict[str, Any] | None:
        """The server's next message; None once its messages are over."""
        if self._client._conn.envelope == "protobuf":
            raise messages_are_bytes(self._name)
        data = self.receive_encoded()
        return None if data is None else loads_message(data, "stream message")

    def receive_encoded(self) -> bytes | None:
        """Like :meth:`receive`, the message still encoded."""
        client = self._client
        slot = self._slot
        buffer = slot.buffer
        assert buffer is not None
        if not client._await(slot, self._deadline, lambda: bool(buffer) or slot.done):
            raise DeadlineExceeded(f"{self._name}: deadline exceeded")
        with client._cond:
            data = buffer.popleft() if buffer else None
            grant = b"" if data is None else client._conn.consumed(self.stream_id, len(data))
        if grant:
            client._send(grant)
        if data is not None:
            return data
        if slot.error is not None:
            raise slot.error
        return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (message := self.receive()) is not None:
            yield message

    def response(self) -> dict[str, Any]:
        """Wait for the end of the call and return its final response message; messages not
        yet received are discarded."""
        if self._client._conn.envelope == "protobuf":
            raise messages_are_bytes(self._name)
        return loads_message(self.response_encoded(), "response payload")

    def response_encoded(self) -> bytes:
        """Like :meth:`response`, the message still encoded (``b""`` when there was none)."""
        while self.receive_encoded() is not None:
            pass
        return self._slot.payload
