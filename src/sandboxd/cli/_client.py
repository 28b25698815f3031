"""A blocking connection for one short-lived program: sandboxctl's hot commands.

It drives the sans-io :class:`~sandboxd.wire.ClientConnection` over a plain Unix socket, one
unary call at a time, from one thread, and says what goes wrong exactly as the blocking
:class:`~sandboxd.rpc.SyncClient` does (the same errors, the same messages).  What it saves is
start-up time: no ``socket``, ``select`` or ``threading`` module, only the ``_socket`` the
interpreter is built with (``socket.socket`` is a thin subclass of it).
"""

from __future__ import annotations

import _socket
import contextlib
import math
import time
from collections.abc import Mapping
from typing import Any, final

from .._errors import DeadlineExceeded, Unavailable
from ..wire import (
    RECV_SIZE,
    ClientConnection,
    ResponseReceived,
    loads_message,
    request_envelope,
)


@final
class SerialClient:
    """A connection to a sandboxd server for unary calls made one after the other.

    Raises as :class:`~sandboxd.rpc.SyncClient` does: UNAVAILABLE when the connection cannot
    be made or is lost, the server's status as its :class:`~sandboxd.RPCError` subclass,
    DEADLINE_EXCEEDED when ``timeout`` passes (the server is told to give up the call).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        self._sock = sock
        self._conn = ClientConnection()

    def close(self) -> None:
        self._sock.close()

    def call(
        self,
        service: str,
        method: str,
        message: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Call a unary method and return its response message.  An exception raised while
        it waits (KeyboardInterrupt) leaves the call in flight: close the client, and the
        server, seeing the connection end, gives the call up."""
        now = time.monotonic()
        deadline = math.inf if timeout is None else now + timeout
        envelope = request_envelope(service, method, message, deadline=deadline, now=now)
        stream_id, frame = self._conn.send_request(envelope)
        self._send(frame)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._give_up(stream_id)
                raise DeadlineExceeded(f"{service}/{method}: deadline exceeded after {timeout} s")
            self._sock.settimeout(None if remaining == math.inf else remaining)
            try:
                data = self._sock.recv(RECV_SIZE)
            except TimeoutError:
                continue  # the deadline is judged above
            except OSError as exc:
                events = self._conn.close(Unavailable(f"connection to the server was lost: {exc}"))
            else:
                events = self._conn.receive_data(data)  # b"": the server closed it
                outgoing = self._conn.data_to_send()
                if outgoing:
                    self._send(outgoing)
            for event in events:
                if type(event) is ResponseReceived and event.stream_id == stream_id:
                    if event.error is not None:
                        raise event.error
                    return loads_message(event.payload, "response payload")

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError:
            # The server may have said why before it closed (an error on stream 0): the
            # reading side sees that, then the end of the stream.
            with contextlib.suppress(OSError):
                self._sock.shutdown(_socket.SHUT_WR)

    def _give_up(self, stream_id: int) -> None:
        cancel = self._conn.cancel(stream_id)
        if cancel:
            self._send(cancel)
