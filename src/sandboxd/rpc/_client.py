"""The trio RPC client: many concurrent calls, streams, on one connection or several.

A :class:`Client` sends each call on one of its connections (a :class:`_Connection`) with
room for it below the server's per-connection call limit, opens another when every one is
full, and otherwise makes the call wait for room: which connection, when to open one, and how
many waiting calls to wake is a :class:`~sandboxd.wire.ConnectionPool`'s to say.

On each connection, the protocol (stream ids, calls in flight, which frame ends which call) is a
:class:`~sandboxd.wire.ClientConnection`'s; this module drives it with trio.  Requests are
written straight to the socket by the calling task.  Replies are read by one task at a time,
which hands what it reads to the connection and wakes the calls its events are for:

* A unary call whose task finds nobody else reading reads for itself (it *leads*): it waits
  for the socket, reads, and hands out what it read until its own reply is there.  A caller
  making one call after another therefore pays no task switch at all.
* A unary call that finds another call reading *follows*: it sleeps until the leader hands
  it its reply, or, when the leader is done (answered, cancelled or timed out) while the
  follower still waits, hands it the reading instead.
* While no unary call waits, the connection's reader task (:meth:`Client.reader`) reads: at
  once while streams are open, so that their messages arrive, and otherwise once no call has
  ended for ``_IDLE_AFTER`` seconds, so that a connection that ends while the client is idle
  is noticed (calls in quick succession do not wake it each time).  A call that comes along
  takes the reading over from it.

When a connection ends, every pending call on it fails at once with UNAVAILABLE, or with the
error the server gave for the whole connection (an error RESPONSE on stream 0, such as
PERMISSION_DENIED); when the client's first connection ends, the client is over: its other
connections are closed, and later calls raise that error too.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio
from trio.lowlevel import (
    Abort,
    ParkingLot,
    RaiseCancelT,
    Task,
    current_task,
    reschedule,
    wait_readable,
)
from trio.lowlevel import wait_task_rescheduled as _park

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
    DeadlineExceeded,
    Envelope,
    Event,
    FailedPrecondition,
    ResponseReceived,
    RPCError,
    StreamEnded,
    StreamMessage,
    Unavailable,
    WindowOpened,
    dumps,
    loads_message,
    messages_are_bytes,
    request_envelope,
)
from ._methods import ReceivedMessages
from ._transport import Transport
from ._unix import connect_unix

#: Seconds without a call ending after which the reader task watches an idle connection.
_IDLE_AFTER: Final = 0.01


@final
class _Pending:
    """A call waiting for its response (or, for streams, its messages)."""

    __slots__ = (
        "buffer",
        "error",
        "finished",
        "payload",
        "refused",
        "stream_id",
        "task",
        "writer",
    )

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        # The server refused the call for its call limit, untouched: send it again.
        self.refused = False
        # The task sleeping until this call has news (see Client._sleep), if one is.
        self.task: Task | None = None
        self.payload = b""
        self.error: RPCError | None = None
        self.finished = False
        # A stream's messages (the connection's deque, see ClientConnection.messages).
        self.buffer: collections.deque[bytes] | None = None
        # Set when a stream's sender, waiting for window, may look again.
        self.writer: trio.Event | None = None


@final
class StreamCall(ReceivedMessages):
    """A call opened with :meth:`Client.open_stream`: send the client's messages, receive
    the server's, then the final response.

    One task may send while another receives.  Every method raises the error the call
    ended with (the server's status, DEADLINE_EXCEEDED at the call's timeout, UNAVAILABLE
    when the connection is lost); cancelling one leaves the call as it was (leaving the
    :meth:`Client.open_stream` block ends it on the server).

    The ``*_encoded`` methods take and give messages as encoded bytes, the only form on a
    protobuf connection (where the others raise :class:`~sandboxd.FailedPrecondition`).
    """

    __slots__ = ("_client", "_deadline", "_name", "_pending")

    def __init__(self, client: _Connection, pending: _Pending, deadline: float, name: str) -> None:
        self._client = client
        self._pending = pending
        self._deadline = deadline
        self._name = name

    @property
    def stream_id(self) -> int:
        return self._pending.stream_id

    def _ended(self) -> RPCError:
        pending = self._pending
        if pending.error is not None:
            return pending.error
        return FailedPrecondition(f"{self._name}: the call has ended: nothing more can be sent")

    async def _wait(self, event: trio.Event) -> None:
        with trio.move_on_at(self._deadline):
            await event.wait()
            return
        raise DeadlineExceeded(f"{self._name}: deadline exceeded")

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message.  Waits while the server's window for the stream is used up
        (the server has not taken what was sent) and while the socket takes nothing.

        Raises :class:`~sandboxd.FailedPrecondition` once the client closed its side or the
        call ended without an error; the call's error if it ended with one.
        """
        if self._client._conn.envelope == "protobuf":
            raise messages_are_bytes(self._name)
        await self.send_encoded(dumps(message))

    async def send_encoded(self, payload: bytes) -> None:
        """Send one message, already encoded (protobuf bytes on a protobuf connection); waits
        and raises as :meth:`send` does."""
        client = self._client
        conn = client._conn
        pending = self._pending
        while True:
            if pending.finished:
                raise self._ended()
            if conn.send_credit(pending.stream_id) > 0:
                break
            pending.writer = trio.Event()
            await self._wait(pending.writer)
        transport = client._transport
        transport.write(conn.send_message(pending.stream_id, payload))
        if transport.pending_bytes > DEFAULT_WINDOW:
            await transport.wait_drained()
        else:
            await trio.lowlevel.checkpoint()

    async def close_send(self) -> None:
        """Say the client will send nothing more (the half-close).  Raises as :meth:`send`."""
        pending = self._pending
        if pending.finished:
            raise self._ended()
        self._client._transport.write(self._client._conn.close_send(pending.stream_id))
        await trio.lowlevel.checkpoint()

    async def receive(self) -> dict[str, Any] | None:
        """The server's next message; None once its messages are over (the final response
        is then :meth:`response`'s).  Raises the call's error after the messages before it."""
        if self._client._conn.envelope == "protobuf":
            raise messages_are_bytes(self._name)
        data = await self.receive_encoded()
        return None if data is None else loads_message(data, "stream message")

    async def receive_encoded(self) -> bytes | None:
        """Like :meth:`receive`, the message still encoded (protobuf bytes on a protobuf
        connection)."""
        pending = self._pending
        buffer = pending.buffer
        assert buffer is not None
        client = self._client
        while True:
            if buffer:
                data = buffer.popleft()
                if grant := client._conn.consumed(pending.stream_id, len(data)):
                    client._transport.write(grant)
                await trio.lowlevel.checkpoint()
                return data
            if pending.finished:
                if pending.error is not None:
                    raise pending.error
                return None
            with trio.move_on_at(self._deadline):
                await client._sleep(pending)
            if not buffer and not pending.finished:
                raise DeadlineExceeded(f"{self._name}: deadline exceeded")

    async def response(self) -> dict[str, Any]:
        """Wait for the end of the call and return its final response message (``{}`` when
        the server sent none); messages not yet received are discarded."""
        if self._client._conn.envelope == "protobuf":
            raise messages_are_bytes(self._name)
        return loads_message(await self.response_encoded(), "response payload")

    async def response_encoded(self) -> bytes:
        """Like :meth:`response`, the message still encoded (``b""`` when the server sent
        none)."""
        while await self.receive_encoded() is not None:
            pass
        return self._pending.payload


@final
class _Connection:
    """One connection of a :class:`Client`: its socket, its protocol state, who reads it."""

    def __init__(
        self,
        client: Client,
        transport: Transport,
        stream_buffer: int = DEFAULT_STREAM_BUFFER,
        window: int = DEFAULT_WINDOW,
        envelope: Envelope = "cbor",
    ) -> None:
        self._client = client
        self._transport = transport
        self._conn = ClientConnection(
            stream_buffer=stream_buffer, window=window, envelope=envelope
        )
        self.conn = self._conn  # for the pool
        # The calls in flight, as the connection's events name them.
        self._pending: dict[int, _Pending] = {}
        # Who reads: the unary call in ``_leader`` when there is one, else the reader task.
        self._leader: _Pending | None = None
        # Unary calls sleeping until their reply comes or the reading is handed to them,
        # oldest first.
        self._followers: dict[int, _Pending] = {}
        # The reader task's wait for the socket, while it reads (cancelled to take over).
        self._reader_scope: trio.CancelScope | None = None
        # The reader task while it sleeps, and whether it sleeps only until _IDLE_AFTER.
        self._reader_task: Task | None = None
        self._reader_sleep_timed = False
        # How many times a leader was done with nobody to hand the reading to.
        self._handbacks = 0

    @property
    def closed(self) -> bool:
        return self._conn.error is not None

    def _send_request(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None,
        deadline: float,
        metadata: Mapping[str, Sequence[str]] | None,
        stream: bool = False,
        client_sends: bool | None = None,
    ) -> _Pending:
        """Send a call's request.  ``client_sends`` (True or False) opens a flow-controlled
        stream (:meth:`open_stream`)."""
        conn = self._conn
        envelope = request_envelope(
            service,
            method,
            message,
            deadline=deadline,
            now=0.0 if deadline == math.inf else trio.current_time(),
            metadata=metadata,
            window=None if client_sends is None else conn.window,
            envelope=conn.envelope,
        )
        if client_sends is None:
            stream_id, frame = conn.send_request(envelope, stream=stream)
        else:
            stream_id, frame = conn.open_stream(envelope, client_sends=client_sends)
        pending = _Pending(stream_id)
        if stream or client_sends is not None:
            pending.buffer = conn.messages(stream_id)
        self._pending[stream_id] = pending
        self._transport.write(frame)
        return pending

    def _abandon(self, stream_id: int) -> None:
        """Forget a call and tell the server to stop working on it."""
        self._pending.pop(stream_id, None)
        if cancel := self._conn.cancel(stream_id):
            self._transport.write(cancel)

    # -- waiting: who reads ------------------------------------------------------------------

    async def _wait_reply(self, pending: _Pending) -> None:
        """Return once ``pending`` is finished, reading for it (and others) when nobody else
        does.  Cancellable; whoever reads next is settled before this raises."""
        if self._leader is None:
            self._take_reading(pending)
        else:
            self._followers[pending.stream_id] = pending
            await self._sleep(pending)
            if self._leader is not pending:
                return  # answered (or the connection ended) while following
        transport = self._transport
        try:
            while not pending.finished:
                try:
                    if transport.closed:
                        raise trio.ClosedResourceError("transport was closed")
                    await wait_readable(transport.socket)
                except trio.ClosedResourceError as exc:
                    self._fail_all(Unavailable(f"connection to the server was lost: {exc}"))
                else:
                    self._receive()
        finally:
            self._hand_off()

    def _take_reading(self, pending: _Pending) -> None:
        self._leader = pending
        scope = self._reader_scope
        if scope is not None:
            # The reader task waits for the socket: stop it (it sleeps until handed back).
            self._reader_scope = None
            scope.cancel()

    def _hand_off(self) -> None:
        """The leader is done reading: the oldest follower reads next, or the reader task
        (which a caller making one call after another does not wake each time)."""
        if self._followers:
            follower = self._followers.pop(next(iter(self._followers)))
            self._leader = follower
            self._wake(follower)
            return
        self._leader = None
        self._handbacks += 1
        if self._pending or not self._reader_sleep_timed:
            self._wake_reader()

    def _wake_reader(self) -> None:
        task = self._reader_task
        if task is not None:
            self._reader_task = None
            reschedule(task)

    async def _sleep(self, pending: _Pending) -> None:
        """Sleep until :meth:`_wake` (news for ``pending``); cancellable."""
        pending.task = current_task()

        def abort(_: RaiseCancelT) -> Abort:
            pending.task = None
            self._followers.pop(pending.stream_id, None)
            return Abort.SUCCEEDED

        await _park(abort)

    @staticmethod
    def _wake(pending: _Pending) -> None:
        task = pending.task
        if task is not None:
            pending.task = None
            reschedule(task)

    def _receive(self) -> None:
        """Read what the socket holds now and route it (only the reading task calls this)."""
        if self._conn.error is not None:
            return
        try:
            data = self._transport.socket.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail_all(
                Unavailable(f"connection to the server was lost: receive failed: {exc}")
            )
            return
        self._route(data)  # b"" (the server closed the connection) included

    # -- the reader task ------------------------------------------------------------------

    async def reader(self) -> None:
        """Read for the connection whenever no call reads for itself, until the connection
        ends; then fail all calls.  Run it in a task of its own for as long as the client is
        used; when it is cancelled, the client is closed."""
        reason = "connection to the server was closed"
        seen = self._handbacks
        try:
            while self._conn.error is None:
                if self._leader is None and (self._pending or self._handbacks == seen):
                    # Streams wait for messages, or no call has ended for a while.
                    await self._watch_socket()
                elif self._handbacks != seen:
                    # Calls come and go: look again in a while rather than be woken by each.
                    seen = self._handbacks
                    await self._sleep_reader(timed=True)
                else:
                    # One call has been reading for a while: wait until it is done.
                    await self._sleep_reader(timed=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"connection to the server was lost: {exc}"
        finally:
            self._reader_task = None
            self._fail_all(Unavailable(reason))

    async def _watch_socket(self) -> None:
        """Wait for the socket and read what it holds, unless a call takes the reading over
        meanwhile (the call then reads what is there)."""
        if self._transport.closed:
            raise trio.ClosedResourceError("transport was closed")
        scope = self._reader_scope = trio.CancelScope()
        try:
            with scope:
                await wait_readable(self._transport.socket)
        finally:
            if self._reader_scope is scope:
                self._reader_scope = None
        if self._leader is None:  # else a call took over: what is there is its to read
            self._receive()

    async def _sleep_reader(self, *, timed: bool) -> None:
        """Sleep until woken (:meth:`_wake_reader`) or, if ``timed``, ``_IDLE_AFTER`` passes."""
        self._reader_task = current_task()
        self._reader_sleep_timed = timed
        if timed:
            with trio.move_on_after(_IDLE_AFTER):
                await _park(self._abort_reader_sleep)
        else:
            await _park(self._abort_reader_sleep)

    def _abort_reader_sleep(self, _: RaiseCancelT) -> Abort:
        self._reader_task = None
        return Abort.SUCCEEDED

    # -- routing replies ------------------------------------------------------------------

    def _route(self, data: bytes) -> None:
        """Hand ``data`` to the connection, and its events to their calls."""
        conn = self._conn
        self._dispatch(conn.receive_data(data))
        if outgoing := conn.data_to_send():
            self._transport.write(outgoing)

    def _dispatch(self, events: list[Event]) -> None:
        pending_calls = self._pending
        client = self._client
        for event in events:
            if type(event) is ResponseReceived:
                pending = pending_calls.pop(event.stream_id, None)
                if pending is not None:
                    pending.payload = event.payload
                    self._finish(pending, event.error)
            elif type(event) is StreamMessage:
                pending = pending_calls.get(event.stream_id)
                if pending is not None:
                    self._wake(pending)
            elif type(event) is StreamEnded:
                pending = pending_calls.pop(event.stream_id, None)
                if pending is not None:
                    pending.payload = event.payload
                    self._finish(pending, event.error)
            elif type(event) is WindowOpened:
                pending = pending_calls.get(event.stream_id)
                if pending is not None and pending.writer is not None:
                    pending.writer.set()
            elif type(event) is CallRefused:
                client._pool.learn(event.limit)
                pending = pending_calls.pop(event.stream_id, None)
                if pending is not None:
                    pending.refused = True
                    self._finish(pending, None)
            else:  # ConnectionFailed: every call has had its event
                # Closing the socket also wakes a call waiting for it.
                self._transport.close()
                self._wake_reader()  # to end
                client._lost(self)
        if client._pool.waiting:
            client._wake_waiters()

    def _finish(self, pending: _Pending, error: RPCError | None) -> None:
        if self._followers:
            self._followers.pop(pending.stream_id, None)
        pending.error = error
        pending.finished = True
        self._wake(pending)
        if pending.writer is not None:
            pending.writer.set()

    def _fail_all(self, error: RPCError) -> None:
        """End the connection for the client: ``error`` (the first one given, if several) is
        what every pending and later call raises."""
        self._dispatch(self._conn.close(error))

    def close(self) -> None:
        """Close the connection; pending calls fail with UNAVAILABLE."""
        self._fail_all(Unavailable("client was closed"))

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Read and write for the connection until it ends (an extra connection's tasks)."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._transport.run_writer)
                task_status.started()
                await self.reader()
                nursery.cancel_scope.cancel()
        finally:
            self._transport.close()


@final
class Client:
    """A client of a sandboxd RPC server: one connection, and more while that one is full.
    Get one with :func:`open_client`.

    Safe to use from many tasks at once.  Every method raises :class:`~sandboxd.RPCError`
    subclasses only: the server's status, DEADLINE_EXCEEDED when ``timeout`` passes,
    UNAVAILABLE when the connection is or becomes closed, or the error the server refused the
    connection with (PERMISSION_DENIED, RESOURCE_EXHAUSTED).

    Never the server's per-connection call limit: a call (streams too) goes on a connection
    with room for it; when every connection is full, the client opens another (up to
    ``max_connections``, see :class:`~sandboxd.wire.ConnectionPool`) and the call waits for
    room, oldest first.  A call's ``timeout`` runs while it waits (DEADLINE_EXCEEDED), and
    cancelling a waiting call cancels it alone.  A unary call the server refuses for its
    limit all the same (a server with a lower limit than the client assumed) is sent again.

    :meth:`reader` must run in a task of its own for as long as the client is used
    (:func:`open_client` sees to that, and opens more connections; a client built by hand
    keeps to its one connection, and calls wait for room on it).

    ``envelope`` is the envelope every connection speaks (:data:`~sandboxd.wire.Envelope`).
    On protobuf connections every message is the method's protobuf bytes: call with
    :meth:`call_encoded` (its ``message`` bytes or None), stream with :meth:`open_stream` and
    the ``*_encoded`` methods of :class:`StreamCall`; the methods that take or give mappings
    raise :class:`~sandboxd.FailedPrecondition`.
    """

    def __init__(
        self,
        transport: Transport,
        stream_buffer: int = DEFAULT_STREAM_BUFFER,
        window: int = DEFAULT_WINDOW,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        envelope: Envelope = "cbor",
    ) -> None:
        self._stream_buffer = stream_buffer
        self._window = window
        self._envelope: Envelope = envelope
        self._first = _Connection(self, transport, stream_buffer, window, envelope)
        self._pool = ConnectionPool(self._first, max_connections=max_connections)
        # Calls waiting for room, oldest first.
        self._room = ParkingLot()
        # Where more connections come from and run: set by open_client.
        self._path: str | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def closed(self) -> bool:
        return self._pool.closed

    @property
    def connections(self) -> int:
        """How many connections the client has open."""
        return len(self._pool.connections)

    async def reader(self) -> None:
        """Read for the client's first connection (see :class:`Client`); run it in a task of
        its own.  When it is cancelled, the client is closed."""
        await self._first.reader()

    def close(self) -> None:
        """Close every connection; pending calls fail with UNAVAILABLE."""
        for connection in list(self._pool.connections):
            connection.close()

    # -- room for a call ------------------------------------------------------------------

    async def _connection(self, deadline: float, name: str) -> _Connection:
        """A connection with room for one more call; waits (until ``deadline``) for one."""
        pool = self._pool
        while True:
            if self.closed:
                return self._first  # its calls raise its error
            connection = pool.pick() if not pool.waiting else None
            if connection is not None:
                return connection
            self._grow()
            pool.waiting += 1
            woken = False
            try:
                with trio.move_on_at(deadline):
                    await self._room.park()
                    woken = True
            finally:
                pool.waiting -= 1
                if woken:
                    pool.woken -= 1
            if not woken:
                raise DeadlineExceeded(f"{name}: deadline exceeded waiting for room")
            connection = pool.take()
            if connection is not None:
                return connection

    def _wake_waiters(self) -> None:
        if self.closed:
            self._room.unpark_all()
            return
        if count := self._pool.wake_count():
            self._room.unpark(count=count)

    def _grow(self) -> None:
        if self._nursery is not None and self._pool.should_open():
            self._nursery.start_soon(self._open_connection)

    async def _open_connection(self) -> None:
        """Open one more connection and make the probe call on it (see ConnectionPool)."""
        assert self._nursery is not None and self._path is not None
        connection: _Connection | None = None
        reply: bytes | None = None
        try:
            transport = Transport(await connect_unix(self._path))
            connection = _Connection(
                self, transport, self._stream_buffer, self._window, self._envelope
            )
            await self._nursery.start(connection.run)
            pending = connection._send_request(PROBE_SERVICE, PROBE_METHOD, None, math.inf, None)
            await connection._wait_reply(pending)
            reply = pending.payload if pending.error is None else None
        except RPCError:
            pass
        finally:
            if not self._pool.opened(connection, reply) and connection is not None:
                connection.close()
            self._wake_waiters()

    def _lost(self, connection: _Connection) -> None:
        for other in self._pool.lost(connection):
            other.close()

    async def call(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
        send_deadline: float | None = None,
    ) -> dict[str, Any]:
        """Call a unary method and return its response message.

        ``timeout`` (seconds) is sent to the server as the call's deadline and enforced here
        too: when it passes the call ends with :class:`~sandboxd.DeadlineExceeded`.
        ``send_deadline`` (trio clock time) is only sent, for callers whose own cancel scope
        enforces it.  If the calling task is cancelled, the server is told to cancel the
        call, and the cancellation propagates; replies this task was reading for other calls
        are not lost (another waiting call, or the reader task, reads on).
        """
        if self._envelope == "protobuf":
            raise messages_are_bytes(f"{service}/{method}")
        payload = await self.call_encoded(
            service,
            method,
            message,
            timeout=timeout,
            metadata=metadata,
            send_deadline=send_deadline,
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
        send_deadline: float | None = None,
    ) -> bytes:
        """Like :meth:`call`, but return the response message still encoded: the CBOR bytes
        :meth:`call` decodes (``b""`` stands for the empty message), for callers that decode
        it themselves.  ``message`` may be bytes, the message already encoded.  Same
        arguments, errors and cancellation as :meth:`call`.  On a protobuf connection,
        messages both ways are the method's protobuf bytes."""
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        wire_deadline = deadline if send_deadline is None else min(deadline, send_deadline)
        connection = self._pool.pick() or await self._connection(deadline, f"{service}/{method}")
        pending = connection._send_request(service, method, message, wire_deadline, metadata)
        try:
            if deadline == math.inf:
                await connection._wait_reply(pending)
            else:
                with trio.move_on_at(deadline):
                    await connection._wait_reply(pending)
        finally:
            if not pending.finished:
                connection._abandon(pending.stream_id)
        if pending.refused:
            # The server did nothing with it (its limit is lower than assumed): again.
            return await self.call_encoded(
                service,
                method,
                message,
                timeout=None if timeout is None else deadline - trio.current_time(),
                metadata=metadata,
                send_deadline=send_deadline,
            )
        if not pending.finished:
            raise DeadlineExceeded(f"{service}/{method}: deadline exceeded after {timeout} s")
        if pending.error is not None:
            raise pending.error
        return pending.payload

    @asynccontextmanager
    async def stream(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Call a server-streaming method; iterate over what the context manager yields.

        Leaving the block before the stream ends tells the server to end it, without closing
        the connection.  If the consumer's buffer is still full (``stream_buffer`` messages)
        when more arrive in a later read, the stream is ended and iteration raises
        :class:`~sandboxd.ResourceExhausted` after the messages already received.
        """
        async with self._stream_call(
            service, method, message, timeout, metadata, stream=True
        ) as call:
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
    ) -> AsyncIterator[StreamCall]:
        """Open a flow-controlled stream call (client-streaming or bidirectional; with
        ``client_sends=False`` a server stream) and yield it (a :class:`StreamCall`).

        The server may send at most the connection's window of messages the caller has not
        received; the caller's :meth:`StreamCall.send` waits on the server's window the same
        way.  Leaving the block before the call ended tells the server to end it (CANCELLED),
        without closing the connection; so do ``timeout`` and cancellation.
        """
        async with self._stream_call(
            service, method, message, timeout, metadata, client_sends=client_sends
        ) as call:
            yield call

    @asynccontextmanager
    async def _stream_call(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | bytes | None,
        timeout: float | None,
        metadata: Mapping[str, Sequence[str]] | None,
        **kind: bool,
    ) -> AsyncIterator[StreamCall]:
        """A stream call of either kind (``kind``: ``_send_request``'s flags), on a connection
        with room, abandoned when the block is left before it ended."""
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        name = f"{service}/{method}"
        connection = self._pool.pick() or await self._connection(deadline, name)
        pending = connection._send_request(service, method, message, deadline, metadata, **kind)
        if connection._leader is None:
            connection._wake_reader()  # to read the stream's messages
        try:
            yield StreamCall(connection, pending, deadline, name)
        finally:
            if not pending.finished:
                connection._abandon(pending.stream_id)


@asynccontextmanager
async def open_client(
    path: str | os.PathLike[str],
    *,
    stream_buffer: int = DEFAULT_STREAM_BUFFER,
    window: int = DEFAULT_WINDOW,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    envelope: Envelope = "cbor",
) -> AsyncIterator[Client]:
    """Connect to the server at ``path`` and yield a :class:`Client` for the block's duration.

    ``window`` is how many bytes of messages each :meth:`Client.open_stream` call may hold
    unread before the server waits; ``max_connections`` how many connections the client
    opens at most, as the server's per-connection call limit fills them (see
    :class:`Client`).  ``envelope`` is the envelope every connection speaks (``"protobuf"``:
    ttrpc's, with messages as bytes, see :class:`Client`).

    Raises :class:`~sandboxd.Unavailable` naming the path when nobody listens there.  Leaving
    the block closes every connection; calls still pending in other tasks fail with
    UNAVAILABLE.
    """
    path = os.fspath(path)
    sock = await connect_unix(path)
    transport = Transport(sock)
    client = Client(
        transport, stream_buffer, window, max_connections=max_connections, envelope=envelope
    )
    try:
        async with trio.open_nursery() as nursery:
            client._path = path
            client._nursery = nursery
            nursery.start_soon(client.reader)
            nursery.start_soon(transport.run_writer)
            try:
                yield client
            finally:
                client.close()
                nursery.cancel_scope.cancel()
    finally:
        transport.close()
