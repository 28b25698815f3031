"""A blocking client: plain ``socket``, no event loop, safe to share between threads.

Calls from many threads share one connection.  Whichever waiting thread finds nobody
reading becomes the reader: it reads frames and hands every response to the call it belongs
to, until its own arrives; then the next waiting thread takes over.  A single-threaded
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
from typing import Any, final

from .._errors import DeadlineExceeded, FailedPrecondition, RPCError, Unavailable
from ..wire import (
    DEFAULT_STREAM_BUFFER,
    DEFAULT_WINDOW,
    RECV_SIZE,
    ClientConnection,
    Envelope,
    Event,
    ResponseReceived,
    StreamEnded,
    dumps,
    loads_message,
    messages_are_bytes,
    request_envelope,
)


@final
class _Slot:
    """A call in flight: what its waiting thread looks at (under the client's lock)."""

    __slots__ = ("buffer", "done", "error", "payload")

    def __init__(self) -> None:
        self.done = False
        self.payload = b""
        self.error: RPCError | None = None
        # A stream's messages (the connection's deque, see ClientConnection.messages).
        self.buffer: collections.deque[bytes] | None = None


@final
class SyncClient:
    """A blocking connection to a sandboxd RPC server.

    Same calls and the same typed errors as the trio :class:`~sandboxd.rpc.Client`:
    the server's status as its :class:`~sandboxd.RPCError` subclass, DEADLINE_EXCEEDED when
    ``timeout`` passes (the server is told to cancel the call), UNAVAILABLE when the
    connection cannot be made or is lost, or the error the server refused the connection with
    (PERMISSION_DENIED, RESOURCE_EXHAUSTED).  Use as a context manager, or call :meth:`close`.

    ``envelope`` is the envelope the connection speaks (:data:`~sandboxd.wire.Envelope`).  On
    a protobuf connection every message is the method's protobuf bytes: call with
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
        envelope: Envelope = "cbor",
    ) -> None:
        self.path = os.fspath(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        # The connection's protocol state, and the calls its events name: under _cond.
        self._conn = ClientConnection(
            stream_buffer=stream_buffer, window=window, envelope=envelope
        )
        self._cond = threading.Condition(threading.Lock())
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Slot] = {}
        self._reading = False

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        timeout: float | None,
        metadata: Mapping[str, Sequence[str]] | None,
        streaming: bool,
        client_sends: bool | None = None,
    ) -> tuple[int, _Slot, float]:
        now = time.monotonic()
        deadline = math.inf if timeout is None else now + timeout
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
        return stream_id, slot, deadline

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
        ``_cond``)."""
        for event in events:
            if type(event) is ResponseReceived or type(event) is StreamEnded:
                slot = self._pending.pop(event.stream_id, None)
                if slot is not None:
                    slot.payload = event.payload
                    slot.error = event.error
                    slot.done = True
        if events:
            self._cond.notify_all()

    # -- calls --------------------------------------------------------------------------

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
        if self._conn.envelope == "protobuf":
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
        stream_id, slot, deadline = self._begin(
            service, method, message, timeout, metadata, streaming=False
        )
        if not self._await(slot, deadline, lambda: slot.done):
            self._abandon(stream_id)
            raise DeadlineExceeded(f"{service}/{method}: deadline exceeded after {timeout} s")
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
        if self._conn.envelope == "protobuf":
            raise messages_are_bytes(f"{service}/{method}")
        stream_id, slot, deadline = self._begin(
            service, method, message, timeout, metadata, streaming=True
        )
        try:
            yield self._messages(slot, deadline, f"{service}/{method}")
        finally:
            if not slot.done:
                self._abandon(stream_id)

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
        stream_id, slot, deadline = self._begin(
            service, method, message, timeout, metadata, streaming=True, client_sends=client_sends
        )
        try:
            yield SyncStreamCall(self, stream_id, slot, deadline, f"{service}/{method}")
        finally:
            if not slot.done:
                self._abandon(stream_id)


@final
class SyncStreamCall:
    """A call opened with :meth:`SyncClient.open_stream`: the blocking twin of
    :class:`~sandboxd.rpc.StreamCall`, with the same methods and errors (the ``*_encoded``
    ones included).  One thread may send while another receives."""

    __slots__ = ("_client", "_deadline", "_name", "_slot", "stream_id")

    def __init__(
        self, client: SyncClient, stream_id: int, slot: _Slot, deadline: float, name: str
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
