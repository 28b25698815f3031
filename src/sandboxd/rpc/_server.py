"""The RPC server: Unix socket listener, connections, and the stream table of each.

Theory of operation.  Each connection has one reader task.  It feeds a sans-io
:class:`~sandboxd.wire.FrameDecoder` from large reads and dispatches every complete frame at
once: an ``INLINE`` method is answered right there (no task, no lock, no schedule point); a
``UNARY`` or ``SERVER_STREAM`` method gets a task of its own in the connection's nursery,
inside a cancel scope that carries the caller's deadline and that a client close frame or the
connection's end cancels.  Replies are written to the :class:`~.Transport`, which sends at
once when the kernel takes the bytes and otherwise queues them for the connection's writer,
so replies leave in whatever order handlers finish and frames ready together go out together.

The reader never waits on a handler.  It stops reading only while more than
``max_buffered_bytes`` of replies wait for a peer that does not read them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Mapping
from typing import Any, Final, final

import trio

from ..wire import (
    MAX_PAYLOAD,
    Cancelled,
    DeadlineExceeded,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    Internal,
    InvalidArgument,
    OversizedFrame,
    ResourceExhausted,
    RPCError,
    Unavailable,
    Unimplemented,
    decode_request,
    dumps,
    encode_error_from,
    encode_frame,
    encode_response,
    loads_message,
)
from ._methods import CallContext, Encoded, Method, MethodKind, Services
from ._transport import Transport
from ._unix import bind_unix, unlink_if_ours

log = logging.getLogger("sandboxd.rpc")

_REQUEST: Final = FrameType.REQUEST
_DATA: Final = FrameType.DATA
_RESPONSE: Final = FrameType.RESPONSE
_END_OF_STREAM: Final = Flags.REMOTE_CLOSED | Flags.NO_DATA

DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_MAX_CALLS_PER_CONNECTION: Final = 1024
DEFAULT_MAX_BUFFERED_BYTES: Final = 8 * 1024 * 1024


@final
class _Call:
    """A call that runs in its own task: the row of the stream table."""

    __slots__ = ("closed_by_client", "scope")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.closed_by_client = False


@final
class _ServerStream:
    """What a streaming handler sends its messages through."""

    __slots__ = ("_conn", "_stream_id")

    def __init__(self, conn: _Connection, stream_id: int) -> None:
        self._conn = conn
        self._stream_id = stream_id

    async def send(self, message: Mapping[str, Any]) -> None:
        """Queue one message on the stream.

        Waits while the connection has more than its bound of unsent bytes, so a peer that
        does not read slows its own streams down and nothing else.  A schedule point.
        """
        conn = self._conn
        conn.transport.write(encode_frame(self._stream_id, _DATA, 0, dumps(message)))
        if conn.transport.pending_bytes > conn.server.max_buffered_bytes:
            await conn.transport.wait_drained()
        else:
            await trio.lowlevel.checkpoint()


@final
class _Connection:
    __slots__ = (
        "_calls",
        "_decoder",
        "_last_stream_id",
        "_nursery",
        "server",
        "transport",
    )

    def __init__(self, server: Server, transport: Transport, nursery: trio.Nursery) -> None:
        self.server = server
        self.transport = transport
        self._nursery = nursery
        self._decoder = FrameDecoder()
        self._last_stream_id = 0
        self._calls: dict[int, _Call] = {}

    async def read_loop(self) -> None:
        transport = self.transport
        feed = self._decoder.feed
        limit = self.server.max_buffered_bytes
        while True:
            if transport.pending_bytes > limit:
                await transport.wait_drained()
            data = await transport.receive()
            if not data:
                return
            transport.cork()
            try:
                for event in feed(data):
                    if not isinstance(event, OversizedFrame):
                        if event.type == _REQUEST:
                            self._on_request(event)
                        elif event.type == _DATA:
                            self._on_data(event)
                        # Responses from a client and frames of unknown type are ignored.
                    elif event.type == _REQUEST:
                        # Oversized frames of other types are skipped: only a request has a
                        # caller waiting on its stream id.
                        self._reply_error(
                            event.stream_id,
                            ResourceExhausted(
                                f"frame of {event.length} bytes is over the "
                                f"{MAX_PAYLOAD}-byte limit"
                            ),
                        )
            finally:
                transport.uncork()

    def _reply_error(self, stream_id: int, err: RPCError) -> None:
        self.transport.write(encode_frame(stream_id, _RESPONSE, 0, encode_error_from(err)))

    def _reply(self, stream_id: int, result: Mapping[str, Any] | Encoded) -> None:
        try:
            payload = result if type(result) is Encoded else dumps(result)
            frame = encode_frame(stream_id, _RESPONSE, 0, encode_response(payload))
        except RPCError as err:
            frame = encode_frame(stream_id, _RESPONSE, 0, encode_error_from(err))
        except Exception:
            log.exception("cannot encode the response on stream %d", stream_id)
            frame = encode_frame(
                stream_id, _RESPONSE, 0, encode_error_from(Internal("cannot encode response"))
            )
        self.transport.write(frame)

    def _on_request(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        if not stream_id & 1 or stream_id <= self._last_stream_id:
            self._reply_error(
                stream_id,
                InvalidArgument(
                    f"stream id {stream_id} is not odd and greater than the last one "
                    f"({self._last_stream_id})"
                ),
            )
            return
        self._last_stream_id = stream_id
        server = self.server
        try:
            request = decode_request(frame.payload)
            service = server.services.get(request.service)
            if service is None:
                raise Unimplemented(f"unknown service {request.service!r}")
            method = service.get(request.method)
            if method is None:
                raise Unimplemented(
                    f"unknown method {request.method!r} of service {request.service!r}"
                )
            message = loads_message(request.payload, "request payload")
            if server.draining:
                raise Unavailable("server is shutting down")
        except RPCError as err:
            self._reply_error(stream_id, err)
            return
        timeout_nano = request.timeout_nano
        deadline = trio.current_time() + timeout_nano / 1e9 if timeout_nano else math.inf
        ctx = CallContext(request.service, request.method, stream_id, request.metadata, deadline)
        if method.kind is MethodKind.INLINE:
            try:
                result = method.handler(message, ctx)
            except RPCError as err:
                self._reply_error(stream_id, err)
            except Exception:
                log.exception("handler %s/%s failed", request.service, request.method)
                self._reply_error(stream_id, Internal("internal error"))
            else:
                self._reply(stream_id, result)
            return
        if method.prepare is not None:
            try:
                message = method.prepare(message, ctx)
            except RPCError as err:
                self._reply_error(stream_id, err)
                return
            except Exception:
                log.exception("handler %s/%s failed", request.service, request.method)
                self._reply_error(stream_id, Internal("internal error"))
                return
        if len(self._calls) >= server.max_calls_per_connection:
            self._reply_error(
                stream_id,
                ResourceExhausted(
                    f"too many calls in progress on this connection "
                    f"(limit {server.max_calls_per_connection})"
                ),
            )
            return
        call = _Call(trio.CancelScope(deadline=deadline))
        self._calls[stream_id] = call
        server.call_started()
        self._nursery.start_soon(self._run_call, stream_id, call, method, message, ctx)

    def _on_data(self, frame: Frame) -> None:
        # A client ends a call it no longer wants with an empty Data frame flagged
        # REMOTE_CLOSED (see PROTOCOL.md, "Ending a call early").
        if frame.flags & Flags.REMOTE_CLOSED:
            call = self._calls.get(frame.stream_id)
            if call is not None:
                call.closed_by_client = True
                call.scope.cancel()

    async def _run_call(
        self, stream_id: int, call: _Call, method: Method, message: Any, ctx: CallContext
    ) -> None:
        try:
            result: Any = None
            with call.scope:
                if method.kind is MethodKind.UNARY:
                    result = await method.handler(message, ctx)
                else:
                    await method.handler(message, ctx, _ServerStream(self, stream_id))
            if call.scope.cancelled_caught:
                if call.closed_by_client:
                    self._reply_error(stream_id, Cancelled("call ended by the client"))
                else:
                    self._reply_error(
                        stream_id, DeadlineExceeded("deadline exceeded while serving the call")
                    )
            elif method.kind is MethodKind.UNARY:
                self._reply(stream_id, result)
            else:
                self.transport.write(encode_frame(stream_id, _DATA, _END_OF_STREAM, b""))
        except RPCError as err:
            self._reply_error(stream_id, err)
        except Exception:
            log.exception("handler %s/%s failed", ctx.service, ctx.method)
            self._reply_error(stream_id, Internal("internal error"))
        finally:
            del self._calls[stream_id]
            self.server.call_finished()


@final
class Server:
    """Serves ``{service: {method: Method}}`` over Unix stream sockets.

    Start it in a nursery with ``path = await nursery.start(server.serve_unix, path)``; it
    runs until :meth:`shutdown` completes or it is cancelled.  Cancelling it ends every
    connection and cancels every running handler at once.
    """

    def __init__(
        self,
        services: Services,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_calls_per_connection: int = DEFAULT_MAX_CALLS_PER_CONNECTION,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> None:
        self.services = services
        self.max_connections = max_connections
        self.max_calls_per_connection = max_calls_per_connection
        self.max_buffered_bytes = max_buffered_bytes
        self.draining = False
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._connections = 0
        self._stop_accepting = trio.CancelScope()
        self._grace = 0.0
        self._done = trio.Event()

    @property
    def in_flight(self) -> int:
        """Calls running in tasks of their own, on all connections."""
        return self._in_flight

    @property
    def connections(self) -> int:
        return self._connections

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
        socket file is created 0600; a stale one is replaced, a live one is refused with
        :class:`SocketInUseError`.  The file is removed on exit unless another server has
        replaced it.
        """
        path = os.fspath(path)
        listener, inode = bind_unix(path)
        try:
            async with trio.open_nursery() as nursery:
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
            self._done.set()

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting, let running calls finish for up to ``grace`` seconds, then end.

        New calls on open connections get UNAVAILABLE meanwhile.  Returns once the server has
        stopped.  If this is cancelled, the server goes on shutting down on its own.
        """
        self._grace = grace
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
            if self._connections >= self.max_connections:
                log.warning("refusing connection: %d connections open", self._connections)
                sock.close()
                continue
            nursery.start_soon(self._serve_connection, sock)

    async def _serve_connection(self, sock: socket.socket) -> None:
        self._connections += 1
        transport = Transport(sock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.run_writer)
                conn = _Connection(self, transport, nursery)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await conn.read_loop()
                # The peer is gone (or broke the stream): its calls are cancelled.
                nursery.cancel_scope.cancel()
        finally:
            transport.close()
            self._connections -= 1
