"""An asyncio client: the sans-io :class:`~sandboxd.wire.ClientConnection` driven by the
standard library's event loop.  No trio here (the asyncio client must not import it).

A client has one connection, and more once the server's per-connection call limit fills it
(a :class:`~sandboxd.wire.ConnectionPool` says which).  One reader task per connection reads
the socket and hands every event to the call it names;
requests and the frames that follow them are written to the transport without awaiting in
between, so ids reach the server in the order the connection gave them, and a cancelled call
can tell the server so from its ``except``/``finally`` without awaiting anything.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, final

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
    ConnectionPool,
    Envelope,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamMessage,
    WindowOpened,
    dumps,
    loads_message,
    messages_are_bytes,
    request_envelope,
)


@final
class _Slot:
    """A call in flight: what its waiting task looks at."""

    __slots__ = ("buffer", "changed", "done", "error", "payload", "refused", "stream_id")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.done = False
        # The server refused the call for its call limit, untouched: send it again.
        self.refused = False
        self.payload = b""
        self.error: RPCError | None = None
        # A stream's messages (the connection's deque, see ClientConnection.messages).
        self.buffer: collections.deque[bytes] | None = None
        # Set whenever an event for the call arrives; its waiter clears it before it looks.
        self.changed = asyncio.Event()


@final
class _AioConnection:
    """One connection of an :class:`AioClient`: its streams, its protocol state, its reader."""

    def __init__(
        self,
        client: AioClient,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream_buffer: int,
        window: int,
        envelope: Envelope,
    ) -> None:
        self._client = client
        self._reader = reader
        self._writer = writer
        self._conn = ClientConnection(
            stream_buffer=stream_buffer, window=window, envelope=envelope
        )
        self.conn = self._conn  # for the pool
        self._pending: dict[int, _Slot] = {}
        self._loop = asyncio.get_running_loop()
        self._reading = self._loop.create_task(self._read_forever())

    def close(self) -> None:
        """Fail the calls waiting and close the socket (the reader then ends)."""
        self._dispatch(self._conn.close(Unavailable("client was closed")))
        self._writer.close()

    async def aclose(self) -> None:
        """Close the connection; calls waiting in other tasks fail with UNAVAILABLE."""
        self._dispatch(self._conn.close(Unavailable("client was closed")))
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    # -- sending -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        # A transport that is closing drops writes (the reader sees the end and fails calls).
        if data and not self._writer.transport.is_closing():
            self._writer.write(data)

    async def _drain(self) -> None:
        if self._writer.transport.get_write_buffer_size() > DEFAULT_WINDOW:
            with contextlib.suppress(OSError):
                await self._writer.drain()

    def _begin(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None,
        deadline: float,
        metadata: Mapping[str, Sequence[str]] | None,
        stream: bool = False,
        client_sends: bool | None = None,
    ) -> _Slot:
        conn = self._conn
        envelope = request_envelope(
            service,
            method,
            message,
            deadline=deadline,
            now=self._loop.time(),
            metadata=metadata,
            window=None if client_sends is None else conn.window,
            envelope=conn.envelope,
        )
        if client_sends is None:
            stream_id, frame = conn.send_request(envelope, stream=stream)
        else:
            stream_id, frame = conn.open_stream(envelope, client_sends=client_sends)
        slot = _Slot(stream_id)
        if stream or client_sends is not None:
            slot.buffer = conn.messages(stream_id)
        self._pending[stream_id] = slot
        self._write(frame)
        return slot

    def _abandon(self, slot: _Slot) -> None:
        """Forget a call and tell the server to stop working on it (no await: safe while
        the calling task is being cancelled)."""
        self._pending.pop(slot.stream_id, None)
        self._write(self._conn.cancel(slot.stream_id))

    def _deadline(self, timeout: float | None) -> float:
        return math.inf if timeout is None else self._loop.time() + timeout

    # -- receiving ---------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        conn = self._conn
        try:
            while conn.error is None:
                try:
                    data = await self._reader.read(RECV_SIZE)
                except OSError as exc:
                    lost = Unavailable(f"connection to the server was lost: {exc}")
                    self._dispatch(conn.close(lost))
                    return
                self._dispatch(conn.receive_data(data))  # b"": the server closed it
                self._write(conn.data_to_send())
        finally:
            # However reading stops, no call is left waiting for a reply nobody reads.
            self._dispatch(conn.close(Unavailable("connection to the server was closed")))

    def _dispatch(self, events: list[Event]) -> None:
        """Hand the connection's events to their calls and wake the calls' tasks."""
        pending = self._pending
        client = self._client
        for event in events:
            if isinstance(event, ResponseReceived | StreamEnded):
                slot = pending.pop(event.stream_id, None)
                if slot is not None:
                    slot.payload = event.payload
                    slot.error = event.error
                    slot.done = True
                    slot.changed.set()
            elif isinstance(event, StreamMessage | WindowOpened):
                if (slot := pending.get(event.stream_id)) is not None:
                    slot.changed.set()
            elif isinstance(event, CallRefused):
                client._pool.learn(event.limit)
                if (slot := pending.pop(event.stream_id, None)) is not None:
                    slot.refused = slot.done = True
                    slot.changed.set()
            else:  # ConnectionFailed: every call has had its event
                client._lost(self)
        if client._pool.waiting:
            client._wake_waiters()

    async def _until(self, slot: _Slot, deadline: float, ready: Any, name: str) -> None:
        """Wait until ``ready()`` holds, the call ends, or ``deadline`` passes
        (DEADLINE_EXCEEDED)."""
        while not ready():
            slot.changed.clear()
            if deadline == math.inf:
                await slot.changed.wait()
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    await slot.changed.wait()
            except TimeoutError:
                if not ready():
                    raise DeadlineExceeded(f"{name}: deadline exceeded") from None


@final
class AioClient:
    """An asyncio client of a sandboxd RPC server: one connection, and more while that one is
    full.  Get one with :func:`open_aio_client`.

    Same calls and the same typed errors as the trio :class:`~sandboxd.rpc.Client`: the
    server's status as its :class:`~sandboxd.RPCError` subclass, DEADLINE_EXCEEDED when a
    call's ``timeout`` passes (the timeout is also sent to the server as the call's
    deadline), UNAVAILABLE when the connection cannot be made, is lost or is closed (every
    waiting call wakes with it), or the error the server refused the connection with.

    Never the server's per-connection call limit: as the trio client does, a call (streams
    too) goes on a connection with room, the client opens another when all are full (up to
    ``max_connections``), and calls wait for room, oldest first, within their own
    ``timeout``; a unary call the server refuses for its limit all the same is sent again.

    Cancellation: a call whose task is cancelled (``task.cancel()``, ``asyncio.timeout``),
    waiting for room or for its reply, tells the server to cancel it when it was sent and
    lets the cancellation propagate; the client stays usable for every other call.  Safe to
    share between the tasks of one event loop.

    ``envelope`` is the envelope every connection speaks (:data:`~sandboxd.wire.Envelope`).
    On protobuf connections every message is the method's protobuf bytes: call with
    :meth:`call_encoded`, stream with :meth:`open_stream` and the ``*_encoded`` methods of
    :class:`AioStreamCall`; the methods that take or give mappings raise
    :class:`~sandboxd.FailedPrecondition`.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        stream_buffer: int = DEFAULT_STREAM_BUFFER,
        window: int = DEFAULT_WINDOW,
        path: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        envelope: Envelope = "cbor",
    ) -> None:
        self._stream_buffer = stream_buffer
        self._window = window
        self._envelope: Envelope = envelope
        self._loop = asyncio.get_running_loop()
        self._first = _AioConnection(self, reader, writer, stream_buffer, window, envelope)
        self._pool = ConnectionPool(self._first, max_connections=max_connections)
        # Calls waiting for room, oldest first.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Where more connections come from (None: the client keeps to its first), and the
        # task opening one.
        self._path = path
        self._opening: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._pool.closed

    @property
    def connections(self) -> int:
        """How many connections the client has open."""
        return len(self._pool.connections)

    @property
    def _conn(self) -> ClientConnection:
        """The first connection's protocol state."""
        return self._first._conn

    async def aclose(self) -> None:
        """Close every connection; calls waiting in other tasks fail with UNAVAILABLE."""
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opening
        for connection in list(self._pool.connections):
            await connection.aclose()

    def _deadline(self, timeout: float | None) -> float:
        return math.inf if timeout is None else self._loop.time() + timeout

    # -- room for a call ---------------------------------------------------------------------

    async def _connection(self, deadline: float, name: str) -> _AioConnection:
        """A connection with room for one more call; waits (until ``deadline``) for one."""
        pool = self._pool
        connection = pool.pick()
        while connection is None and not self.closed:
            self._grow()
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            pool.waiting += 1
            woken = False
            try:
                if deadline == math.inf:
                    await waiter
                else:
                    async with asyncio.timeout_at(deadline):
                        await waiter
                woken = True
            except TimeoutError:
                raise DeadlineExceeded(f"{name}: deadline exceeded waiting for room") from None
            finally:
                pool.waiting -= 1
                if waiter.done() and not waiter.cancelled():
                    pool.woken -= 1
                    if not woken:
                        self._wake_waiters()  # the room it was woken for is someone else's
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
            connection = pool.take()
        return self._first if connection is None else connection

    def _wake_waiters(self) -> None:
        waiters = self._waiters
        count = len(waiters) if self.closed else self._pool.wake_count()
        while count and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1
        if not self.closed:
            self._pool.woken -= count  # counted woken, but nobody was left to wake

    def _grow(self) -> None:
        if self._path is not None and self._pool.should_open():
            self._opening = self._loop.create_task(self._open_connection(self._path))

    async def _open_connection(self, path: str) -> None:
        """Open one more connection and make the probe call on it (see ConnectionPool)."""
        connection: _AioConnection | None = None
        reply: bytes | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=RECV_SIZE)
            connection = _AioConnection(
                self, reader, writer, self._stream_buffer, self._window, self._envelope
            )
            slot = connection._begin(PROBE_SERVICE, PROBE_METHOD, None, math.inf, None)
            await connection._until(slot, math.inf, lambda: slot.done, PROBE_METHOD)
            reply = slot.payload if slot.error is None else None
        except (OSError, RPCError):
            pass
        finally:
            self._opening = None
            if not self._pool.opened(connection, reply) and connection is not None:
                connection.close()
            self._wake_waiters()

    def _lost(self, connection: _AioConnection) -> None:
        for other in self._pool.lost(connection):
            other.close()

    # -- calls -------------------------------------------------------------------------------

    async def call(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """Call a unary method and return its response message."""
        if self._envelope == "protobuf":
            raise messages_are_bytes(f"{service}/{method}")
        payload = await self.call_encoded(
            service, method, message, timeout=timeout, metadata=metadata
        )
        return loads_message(payload, "response payload")

    async def call_encoded(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> bytes:
        """Like :meth:`call`, but return the response message still encoded (``b""`` for the
        empty message); ``message`` may be bytes, the message already encoded.  On a protobuf
        connection, messages both ways are the method's protobuf bytes."""
        deadline = self._deadline(timeout)
        name = f"{service}/{method}"
        connection = self._pool.pick() or await self._connection(deadline, name)
        slot = connection._begin(service, method, message, deadline, metadata)
        try:
            await connection._drain()
            await connection._until(slot, deadline, lambda: slot.done, name)
        finally:
            if not slot.done:
                connection._abandon(slot)
        if slot.refused:
            # The server did nothing with it (its limit is lower than assumed): again.
            return await self.call_encoded(
                service,
                method,
                message,
                timeout=None if timeout is None else deadline - self._loop.time(),
                metadata=metadata,
            )
        if slot.error is not None:
            raise slot.error
        return slot.payload

    @asynccontextmanager
    async def stream(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> AsyncIterator[AioStreamCall]:
        """Call a server-streaming method; iterate over what the context manager yields.
        Leaving the block before the stream ends tells the server to end it."""
        async with self._opened(service, method, message, timeout, metadata, None) as call:
            yield call

    @asynccontextmanager
    async def open_stream(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None = None,
        *,
        client_sends: bool = True,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> AsyncIterator[AioStreamCall]:
        """Open a flow-controlled stream call, as :meth:`Client.open_stream
        <sandboxd.rpc.Client.open_stream>` does, and yield it (an :class:`AioStreamCall`).
        Leaving the block before the call ended tells the server to end it (CANCELLED), so do
        ``timeout`` and cancellation; the connection stays usable."""
        async with self._opened(service, method, message, timeout, metadata, client_sends) as call:
            yield call

    @asynccontextmanager
    async def _opened(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None,
        timeout: float | None,
        metadata: Mapping[str, Sequence[str]] | None,
        client_sends: bool | None,
    ) -> AsyncIterator[AioStreamCall]:
        """A stream call for the block: ``client_sends`` None for a plain server stream, else
        flow-controlled (see :meth:`open_stream`)."""
        deadline = self._deadline(timeout)
        name = f"{service}/{method}"
        connection = self._pool.pick() or await self._connection(deadline, name)
        slot = connection._begin(
            service, method, message, deadline, metadata, stream=True, client_sends=client_sends
        )
        try:
            yield AioStreamCall(connection, slot, deadline, name)
        finally:
            if not slot.done:
                connection._abandon(slot)


@final
class AioStreamCall:
    """A stream call of an :class:`AioClient`: the asyncio twin of
    :class:`~sandboxd.rpc.StreamCall`, with the same methods and errors, and an async iterator
    of the server's messages.  One task may send while another receives; cancelling one of
    them leaves the call as it was (leaving the block that opened it ends it)."""

    __slots__ = ("_client", "_deadline", "_name", "_slot")

    def __init__(self, client: _AioConnection, slot: _Slot, deadline: float, name: str) -> None:
        self._client = client
        self._slot = slot
        self._deadline = deadline
        self._name = name

    @property
    def stream_id(self) -> int:
        return self._slot.stream_id

    def _ended(self) -> RPCError:
        if self._slot.error is not None:
            return self._slot.error
        return FailedPrecondition(f"{self._name}: the call has ended: nothing more can be sent")

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message, waiting while the server's window for the stream is used up.
        Raises :class:`~sandboxd.FailedPrecondition` once the client closed its side or the
        call ended without an error; the call's error if it ended with one."""
        if self._client._conn.envelope == "protobuf":
            raise messages_are_bytes(self._name)
        await self.send_encoded(dumps(message))

    async def send_encoded(self, payload: bytes) -> None:
        """Send one message, already encoded (protobuf bytes on a protobuf connection)."""
        client = self._client
        conn = client._conn
        slot = self._slot
        await client._until(
            slot,
            self._deadline,
            lambda: slot.done or conn.send_credit(slot.stream_id) > 0,
            self._name,
        )
        if slot.done:
            raise self._ended()
        client._write(conn.send_message(slot.stream_id, payload))
        await client._drain()

    async def close_send(self) -> None:
        """Say the client will send nothing more (the half-close).  Raises as :meth:`send`."""
        if self._slot.done:
            raise self._ended()
        self._client._write(self._client._conn.close_send(self._slot.stream_id))
        await asyncio.sleep(0)

    async def receive(self) -> dict[str, Any] | None:
        """The server's next message; None once its messages are over (the final response is
        then :meth:`response`'s).  Raises the call's error after the messages before it."""
        if self._client._conn.envelope == "protobuf":
            raise messages_are_bytes(self._name)
        data = await self.receive_encoded()
        return None if data is None else loads_message(data, "stream message")

    async def receive_encoded(self) -> bytes | None:
        """Like :meth:`receive`, the message still encoded."""
        client = self._client
        slot = self._slot
        buffer = slot.buffer
        assert buffer is not None
        await client._until(slot, self._deadline, lambda: bool(buffer) or slot.done, self._name)
        if buffer:
            data = buffer.popleft()
            client._write(client._conn.consumed(slot.stream_id, len(data)))
            return data
        if slot.error is not None:
            raise slot.error
        return None

    def __aiter__(self) -> AioStreamCall:
        return self

    async def __anext__(self) -> dict[str, Any]:
        message = await self.receive()
        if message is None:
            raise StopAsyncIteration
        return message

    async def response(self) -> dict[str, Any]:
        """Wait for the end of the call and return its final response message (``{}`` when
        the server sent none); messages not yet received are discarded."""
        if self._client._conn.envelope == "protobuf":
            raise messages_are_bytes(self._name)
        return loads_message(await self.response_encoded(), "response payload")

    async def response_encoded(self) -> bytes:
        """Like :meth:`response`, the message still encoded (``b""`` when there was none)."""
        while await self.receive_encoded() is not None:
            pass
        return self._slot.payload


@asynccontextmanager
async def open_aio_client(
    path: str | os.PathLike[str],
    *,
    stream_buffer: int = DEFAULT_STREAM_BUFFER,
    window: int = DEFAULT_WINDOW,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    envelope: Envelope = "cbor",
) -> AsyncIterator[AioClient]:
    """An :class:`AioClient` connected to the server at ``path`` (every connection speaking
    ``envelope``), closed (every connection it opened) when the block ends;
    ``max_connections`` as :func:`~sandboxd.rpc.open_client`.  Raises
    :class:`~sandboxd.Unavailable` naming the path when nobody listens there."""
    path = os.fspath(path)
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=RECV_SIZE)
    except OSError as exc:
        raise Unavailable(f"cannot connect to {path}: {exc.strerror or exc}") from None
    client = AioClient(
        reader,
        writer,
        stream_buffer=stream_buffer,
        window=window,
        path=path,
        max_connections=max_connections,
        envelope=envelope,
    )
    try:
        yield client
    finally:
        await client.aclose()
