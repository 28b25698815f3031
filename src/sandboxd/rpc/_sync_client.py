"""A blocking client: plain ``socket``, no event loop, safe to share between threads.

Calls from many threads share one connection.  Whichever waiting thread finds nobody
reading becomes the reader: it reads frames and hands every response to the call it belongs
to, until its own arrives; then the next waiting thread takes over.  A single-threaded
caller therefore pays no thread switch at all.
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

from .._errors import DeadlineExceeded, ResourceExhausted, RPCError, Unavailable
from ..wire import (
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    decode_response,
    dumps,
    encode_frame,
    encode_request,
    loads_message,
)
from ._client import connection_error, copy_error

_MAX_STREAM_ID: Final = 2**32 - 1
_END_FLAGS: Final = Flags.REMOTE_CLOSED | Flags.NO_DATA
# 64 KiB: larger reads make glibc map and unmap a fresh buffer for every call.
_RECV_SIZE: Final = 64 * 1024


@final
class _Slot:
    __slots__ = ("behind", "buffer", "done", "error", "payload")

    def __init__(self, streaming: bool) -> None:
        self.done = False
        self.behind = False
        self.payload: bytes | None = None
        self.error: RPCError | None = None
        self.buffer: collections.deque[bytes] | None = collections.deque() if streaming else None


@final
class SyncClient:
    """A blocking connection to a sandboxd RPC server.

    Same calls and the same typed errors as the trio :class:`~sandboxd.rpc.Client`:
    the server's status as its :class:`~sandboxd.RPCError` subclass, DEADLINE_EXCEEDED when
    ``timeout`` passes (the server is told to cancel the call), UNAVAILABLE when the
    connection cannot be made or is lost, or the error the server refused the connection with
    (PERMISSION_DENIED, RESOURCE_EXHAUSTED).  Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, stream_buffer: int = 1024) -> None:
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
        self._decoder = FrameDecoder()
        self._cond = threading.Condition(threading.Lock())
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Slot] = {}
        self._next_id = 1
        self._reading = False
        self._closed: RPCError | None = None
        self._stream_buffer = stream_buffer

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; calls waiting in other threads fail with UNAVAILABLE."""
        with self._cond:
            self._fail_all(Unavailable("client was closed"))
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
        message: Mapping[str, Any] | None,
        timeout: float | None,
        metadata: Mapping[str, Sequence[str]] | None,
        streaming: bool,
    ) -> tuple[int, _Slot, float]:
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        timeout_nano = 0 if timeout is None else max(1, int(timeout * 1e9))
        payload = dumps(message) if message else b""
        envelope = encode_request(service, method, payload, timeout_nano, metadata)
        slot = _Slot(streaming)
        # Ids must reach the server in increasing order: allocate and send under one lock.
        with self._send_lock:
            with self._cond:
                if self._closed is not None:
                    raise copy_error(self._closed)
                stream_id = self._next_id
                if stream_id > _MAX_STREAM_ID:
                    raise ResourceExhausted("stream ids of this connection are used up: reconnect")
                frame = encode_frame(stream_id, FrameType.REQUEST, 0, envelope)
                self._next_id = stream_id + 2
                self._pending[stream_id] = slot
            try:
                self._sock.sendall(frame)
            except OSError:
                self._send_failed()
        return stream_id, slot, deadline

    def _abandon(self, stream_id: int) -> None:
        with self._cond:
            if self._pending.pop(stream_id, None) is None or self._closed is not None:
                return
        self._send(encode_frame(stream_id, FrameType.DATA, _END_FLAGS, b""))

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
                data = self._sock.recv(_RECV_SIZE)
            except OSError as exc:
                data = b""
                reason = f"connection to the server was lost: {exc}"
            else:
                reason = "connection to the server was closed"
            with self._cond:
                if not data:
                    self._fail_all(Unavailable(reason))
                    return True
                overflowed = self._dispatch(data)
                self._cond.notify_all()
            for stream_id in overflowed:
                self._send(encode_frame(stream_id, FrameType.DATA, _END_FLAGS, b""))

    def _dispatch(self, data: bytes) -> list[int]:
        """Hand frames to their calls; the ids of streams ended for overflowing."""
        abandon: list[int] = []
        filled: list[_Slot] = []
        for event in self._decoder.feed(data):
            slot = self._pending.get(event.stream_id)
            if slot is None:
                if event.stream_id == 0 and isinstance(event, Frame):
                    refused = connection_error(event)
                    if refused is not None:
                        self._fail_all(refused)
                        return []
                continue
            if isinstance(event, OversizedFrame):
                slot.error = ResourceExhausted(
                    f"server sent a frame of {event.length} bytes, over the limit"
                )
                self._finish(event.stream_id, slot)
            elif event.type == FrameType.RESPONSE:
                if slot.buffer is None:
                    slot.payload = event.payload
                else:
                    try:
                        decode_response(event.payload)
                    except RPCError as err:
                        slot.error = err
                self._finish(event.stream_id, slot)
            elif event.type == FrameType.DATA and slot.buffer is not None:
                filled.append(slot)
                if not event.flags & Flags.NO_DATA:
                    # As the trio client: only a buffer still full from an earlier read counts.
                    if slot.behind and len(slot.buffer) >= self._stream_buffer:
                        slot.error = ResourceExhausted(
                            f"stream consumer fell {self._stream_buffer} messages behind; "
                            "stream ended"
                        )
                        self._finish(event.stream_id, slot)
                        abandon.append(event.stream_id)
                        continue
                    slot.buffer.append(event.payload)
                if event.flags & Flags.REMOTE_CLOSED:
                    self._finish(event.stream_id, slot)
        for slot in filled:
            if slot.buffer is not None:
                slot.behind = len(slot.buffer) >= self._stream_buffer
        return abandon

    def _finish(self, stream_id: int, slot: _Slot) -> None:
        self._pending.pop(stream_id, None)
        slot.done = True

    def _fail_all(self, error: RPCError) -> None:
        if self._closed is None:
            self._closed = error
        for stream_id, slot in list(self._pending.items()):
            slot.error = copy_error(self._closed)
            self._finish(stream_id, slot)
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
        stream_id, slot, deadline = self._begin(
            service, method, message, timeout, metadata, streaming=False
        )
        if not self._await(slot, deadline, lambda: slot.done):
            self._abandon(stream_id)
            raise DeadlineExceeded(f"{service}/{method}: deadline exceeded after {timeout} s")
        if slot.error is not None:
            raise slot.error
        assert slot.payload is not None
        return loads_message(decode_response(slot.payload), "response payload")

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

        Leaving the block before the stream ends tells the server to end it.
        """
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
