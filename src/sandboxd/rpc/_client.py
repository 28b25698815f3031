"""The trio RPC client: one connection, many concurrent calls, streams.

Every call gets the next odd stream id.  One reader task routes response and data frames to
the waiting calls by stream id; requests are written straight to the socket by the calling
task.  When the connection ends, every pending call fails at once with UNAVAILABLE, or with the
error the server gave for the whole connection (an error RESPONSE on stream 0, such as
PERMISSION_DENIED), which later calls raise too.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio

from ..wire import (
    DeadlineExceeded,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    ResourceExhausted,
    RPCError,
    Unavailable,
    decode_response,
    dumps,
    encode_frame,
    encode_request,
    loads_message,
)
from ._transport import Transport
from ._unix import connect_unix

_MAX_STREAM_ID: Final = 2**32 - 1
_END_FRAME_FLAGS: Final = Flags.REMOTE_CLOSED | Flags.NO_DATA
#: Messages a stream holds for a consumer that is not reading before the stream is ended.
DEFAULT_STREAM_BUFFER: Final = 1024


def connection_error(frame: Frame) -> RPCError | None:
    """The error a RESPONSE on stream 0 (no call's) gives for the whole connection, if any."""
    if frame.type != FrameType.RESPONSE:
        return None
    try:
        decode_response(frame.payload)
    except RPCError as err:
        return err
    return None


def copy_error(err: RPCError) -> RPCError:
    """A fresh exception like ``err``, to raise in one more place."""
    return type(err)(err.message, details=err.details)


@final
class _Pending:
    """A call waiting for its response (or, for streams, its messages)."""

    __slots__ = ("behind", "buffer", "error", "finished", "frame_payload", "wake")

    def __init__(self) -> None:
        self.wake = trio.Event()
        self.frame_payload: bytes | None = None
        self.error: RPCError | None = None
        self.finished = False
        self.buffer: collections.deque[bytes] | None = None
        # The buffer was full at the end of the last read: one more full read ends it.
        self.behind = False


@final
class _StreamMessages:
    """The messages of one server stream, as an async iterator (no generator to close)."""

    __slots__ = ("_deadline", "_name", "_pending")

    def __init__(self, pending: _Pending, deadline: float, name: str) -> None:
        self._pending = pending
        self._deadline = deadline
        self._name = name

    def __aiter__(self) -> _StreamMessages:
        return self

    async def __anext__(self) -> dict[str, Any]:
        pending = self._pending
        buffer = pending.buffer
        assert buffer is not None
        while True:
            if buffer:
                await trio.lowlevel.checkpoint()
                return loads_message(buffer.popleft(), "stream message")
            if pending.finished:
                if pending.error is not None:
                    raise pending.error
                raise StopAsyncIteration
            pending.wake = trio.Event()
            with trio.move_on_at(self._deadline):
                await pending.wake.wait()
            if not buffer and not pending.finished:
                raise DeadlineExceeded(f"{self._name}: deadline exceeded")


@final
class Client:
    """A connection to a sandboxd RPC server.  Get one with :func:`open_client`.

    Safe to use from many tasks at once.  Every method raises :class:`~sandboxd.RPCError`
    subclasses only: the server's status, DEADLINE_EXCEEDED when ``timeout`` passes,
    UNAVAILABLE when the connection is or becomes closed, or the error the server refused the
    connection with (PERMISSION_DENIED, RESOURCE_EXHAUSTED).
    """

    def __init__(self, transport: Transport, stream_buffer: int = DEFAULT_STREAM_BUFFER) -> None:
        self._transport = transport
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._closed_error: RPCError | None = None
        self._stream_buffer = stream_buffer

    @property
    def closed(self) -> bool:
        return self._closed_error is not None

    def _send_request(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | None,
        deadline: float,
        metadata: Mapping[str, Sequence[str]] | None,
    ) -> tuple[int, _Pending]:
        if self._closed_error is not None:
            raise copy_error(self._closed_error)
        stream_id = self._next_id
        if stream_id > _MAX_STREAM_ID:
            raise ResourceExhausted("stream ids of this connection are used up: reconnect")
        timeout_nano = 0
        if deadline != math.inf:
            timeout_nano = max(1, int((deadline - trio.current_time()) * 1e9))
        payload = dumps(message) if message else b""
        frame = encode_frame(
            stream_id,
            FrameType.REQUEST,
            0,
            encode_request(service, method, payload, timeout_nano, metadata),
        )
        self._next_id = stream_id + 2
        pending = _Pending()
        self._pending[stream_id] = pending
        self._transport.write(frame)
        return stream_id, pending

    def _abandon(self, stream_id: int) -> None:
        """Forget a call and tell the server to stop working on it."""
        if self._pending.pop(stream_id, None) is not None and self._closed_error is None:
            self._transport.write(encode_frame(stream_id, FrameType.DATA, _END_FRAME_FLAGS, b""))

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
        call, and the cancellation propagates.
        """
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        wire_deadline = deadline if send_deadline is None else min(deadline, send_deadline)
        stream_id, pending = self._send_request(service, method, message, wire_deadline, metadata)
        try:
            with trio.move_on_at(deadline):
                await pending.wake.wait()
        finally:
            if not pending.finished:
                self._abandon(stream_id)
        if not pending.finished:
            raise DeadlineExceeded(f"{service}/{method}: deadline exceeded after {timeout} s")
        if pending.error is not None:
            raise pending.error
        assert pending.frame_payload is not None
        return loads_message(decode_response(pending.frame_payload), "response payload")

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
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        stream_id, pending = self._send_request(service, method, message, deadline, metadata)
        pending.buffer = collections.deque()
        try:
            yield _StreamMessages(pending, deadline, f"{service}/{method}")
        finally:
            if not pending.finished:
                self._abandon(stream_id)

    async def reader(self) -> None:
        """Route incoming frames to calls until the connection ends; then fail all calls."""
        decoder = FrameDecoder()
        reason = "connection to the server was closed"
        try:
            while True:
                data = await self._transport.receive()
                if not data:
                    break
                filled: list[_Pending] = []
                for event in decoder.feed(data):
                    pending = self._pending.get(event.stream_id)
                    if pending is None:
                        if event.stream_id == 0 and isinstance(event, Frame):
                            refused = connection_error(event)
                            if refused is not None:
                                self._fail_all(refused)
                                return
                        continue  # a call we gave up on
                    if isinstance(event, OversizedFrame):
                        self._finish(
                            event.stream_id,
                            pending,
                            error=ResourceExhausted(
                                f"server sent a frame of {event.length} bytes, over the limit"
                            ),
                        )
                    elif event.type == FrameType.RESPONSE:
                        if pending.buffer is None:
                            pending.frame_payload = event.payload
                            self._finish(event.stream_id, pending)
                        else:
                            try:
                                decode_response(event.payload)
                            except RPCError as err:
                                self._finish(event.stream_id, pending, error=err)
                            else:
                                self._finish(event.stream_id, pending)
                    elif event.type == FrameType.DATA and pending.buffer is not None:
                        self._on_stream_data(event.stream_id, pending, event.flags, event.payload)
                        filled.append(pending)
                for pending in filled:
                    assert pending.buffer is not None
                    pending.behind = len(pending.buffer) >= self._stream_buffer
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"connection to the server was lost: {exc}"
        finally:
            self._fail_all(Unavailable(reason))

    def _on_stream_data(self, stream_id: int, pending: _Pending, flags: int, data: bytes) -> None:
        buffer = pending.buffer
        assert buffer is not None
        if not flags & Flags.NO_DATA:
            # A burst within one read never counts against a consumer that keeps up; a buffer
            # still full when the next read brings more does.
            if pending.behind and len(buffer) >= self._stream_buffer:
                self._abandon(stream_id)
                pending.error = ResourceExhausted(
                    f"stream consumer fell {self._stream_buffer} messages behind; stream ended"
                )
                pending.finished = True
                pending.wake.set()
                return
            buffer.append(data)
        if flags & Flags.REMOTE_CLOSED:
            self._finish(stream_id, pending)
        else:
            pending.wake.set()

    def _finish(self, stream_id: int, pending: _Pending, error: RPCError | None = None) -> None:
        self._pending.pop(stream_id, None)
        pending.error = error
        pending.finished = True
        pending.wake.set()

    def _fail_all(self, error: RPCError) -> None:
        """End the connection for the client: ``error`` (the first one given, if several) is
        what every pending and later call raises."""
        if self._closed_error is None:
            self._closed_error = error
        error = self._closed_error
        for stream_id, pending in list(self._pending.items()):
            self._finish(stream_id, pending, error=copy_error(error))

    def close(self) -> None:
        """Close the connection; pending calls fail with UNAVAILABLE."""
        self._fail_all(Unavailable("client was closed"))
        self._transport.close()


@asynccontextmanager
async def open_client(
    path: str | os.PathLike[str], *, stream_buffer: int = DEFAULT_STREAM_BUFFER
) -> AsyncIterator[Client]:
    """Connect to the server at ``path`` and yield a :class:`Client` for the block's duration.

    Raises :class:`~sandboxd.Unavailable` naming the path when nobody listens there.  Leaving
    the block closes the connection; calls still pending in other tasks fail with UNAVAILABLE.
    """
    sock = await connect_unix(os.fspath(path))
    transport = Transport(sock)
    client = Client(transport, stream_buffer)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.reader)
            nursery.start_soon(transport.run_writer)
            try:
                yield client
            finally:
                client.close()
                nursery.cancel_scope.cancel()
    finally:
        transport.close()
