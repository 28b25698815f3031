"""A connected Unix stream socket driven directly through trio's I/O waits.

Why not ``trio.SocketStream``: every ``send_all`` and ``receive_some`` there is a schedule
point even when the kernel could have answered at once, and a round trip on this protocol is
dominated by schedule points, not syscalls.  Here a write is a plain non-blocking ``send``
from whichever task produced the frame; only what the kernel will not take now is left for
the connection's writer task.  Frames queued while the writer waits are sent together, in
order, in one ``send``.

A transport may be given a bound on unsent bytes and a stall timeout: once more than
``max_pending`` bytes wait for the peer, the peer has ``stall_timeout`` seconds to take all of
them, or the writer gives up with :class:`PeerStalledError`.  Only the slow path (bytes the
kernel would not take at once) looks at either.
"""

from __future__ import annotations

import errno
import math
import socket
from typing import Final, final

import trio

from ..wire import RECV_SIZE

_wait_readable: Final = trio.lowlevel.wait_readable

#: A reader that finds bytes waiting yields once it has received this many since it last
#: waited: a busy peer's reads cost no schedule point each, and cannot starve other tasks.
_YIELD_EVERY = 16 * 1024


class PeerStalledError(Exception):
    """The peer did not do its part in time: it left replies unread, or a frame unfinished."""


@final
class Transport:
    """One end of a connected ``AF_UNIX`` stream socket.

    One task reads (:meth:`receive`); any task may :meth:`write`.  :meth:`run_writer` must run
    for as long as the transport is used: it sends what :meth:`write` could not.
    """

    __slots__ = (
        "_broken",
        "_closed",
        "_corked",
        "_drained",
        "_fd",
        "_max_pending",
        "_pending",
        "_pending_bytes",
        "_sock",
        "_soon",
        "_stall_scope",
        "_stall_timeout",
        "_unyielded",
        "_wake_writer",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_pending: float = math.inf,
        stall_timeout: float = math.inf,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        # Waited on by number: trio asks an object for it on every wait.
        self._fd = sock.fileno()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._max_pending = max_pending
        self._stall_timeout = stall_timeout
        # Armed (given a deadline) while more than max_pending bytes wait; run_writer runs in it.
        self._stall_scope = trio.CancelScope()
        self._wake_writer = trio.Event()
        self._drained = trio.Event()
        self._drained.set()
        self._closed = False
        self._broken: BaseException | None = None
        # Bytes received since this transport's reader last waited or yielded.
        self._unyielded = 0
        self._corked: list[bytes] | None = None
        self._soon: list[bytes] = []

    @property
    def socket(self) -> socket.socket:
        return self._sock

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self._pending_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def broken(self) -> bool:
        """Whether a send failed (or the peer stalled): nothing more will be sent."""
        return self._broken is not None

    async def receive(self) -> bytes:
        """The next bytes from the peer; ``b""`` at end of stream.

        A schedule point when it waits for bytes (one, not two as
        ``trio.SocketStream.receive_some``).  Bytes already waiting are returned at once,
        with a schedule point after every 16 KiB so received: a peer that keeps its socket
        full cannot starve other tasks, nor delay a cancellation past that.
        Raises :class:`trio.ClosedResourceError` if the transport is closed meanwhile and
        :class:`trio.BrokenResourceError` if the peer reset the connection.
        """
        sock = self._sock
        while True:
            if self._closed:
                raise trio.ClosedResourceError("transport was closed")
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                await _wait_readable(self._fd)
                self._unyielded = 0
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
            unyielded = self._unyielded
            if unyielded >= _YIELD_EVERY:
                # Bytes have kept coming without a wait: yield anyway so one busy peer cannot
                # starve the other tasks.
                await trio.lowlevel.checkpoint()
                unyielded = 0
            self._unyielded = unyielded + len(data)
            return data

    def write(self, data: bytes) -> None:
        """Send ``data`` after everything written before it.  Never blocks.

        What the kernel does not take now is queued for the writer task.  After the transport
        broke or closed, writes are dropped silently: the reader sees the failure and ends the
        connection.
        """
        if self._closed or self._broken is not None:
            return
        if self._corked is not None:
            self._corked.append(data)
            return
        if self._pending:
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes > self._max_pending:
                self._arm_stall_timer()
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        if sent < len(data):
            rest = data[sent:]
            self._pending.append(rest)
            self._pending_bytes += len(rest)
            self._drained = trio.Event()
            self._wake_writer.set()
            if self._pending_bytes > self._max_pending:
                self._arm_stall_timer()

    def _arm_stall_timer(self) -> None:
        scope = self._stall_scope
        if scope.deadline == math.inf:
            scope.deadline = trio.current_time() + self._stall_timeout

    def write_soon(self, data: bytes) -> None:
        """Like :meth:`write`, but leave the sending to the writer task, which sends all
        that was written soon by the tasks of one scheduling round in one syscall.  For
        replies produced by many tasks at once (calls that each run in their own task)."""
        if self._closed or self._broken is not None:
            return
        if self._corked is not None:
            self._corked.append(data)
            return
        self._soon.append(data)
        # Counted as pending at once, so back-pressure and the stall timer see it.
        self._pending_bytes += len(data)
        if len(self._soon) == 1:
            self._wake_writer.set()
            if self._drained.is_set():
                self._drained = trio.Event()
        if self._pending_bytes > self._max_pending:
            self._arm_stall_timer()

    def cork(self) -> None:
        """Hold writes until :meth:`uncork`, which sends them together: one syscall for all
        the replies produced from one read."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked:
            self.write(corked[0] if len(corked) == 1 else b"".join(corked))

    async def wait_drained(self) -> None:
        """Return once every written byte has been taken by the kernel (or the transport ended)."""
        await self._drained.wait()

    async def run_writer(self) -> None:
        """Send queued bytes as the socket becomes writable.  Runs until cancelled or closed.

        Raises :class:`PeerStalledError` when more than ``max_pending`` bytes have waited and
        the peer has not taken them all within ``stall_timeout`` seconds; the transport is
        then broken (writes are dropped, the reader sees the end of the stream).
        """
        with self._stall_scope:
            await self._write_pending()
        if self._stall_scope.cancelled_caught and not self._closed:
            pending = self._pending_bytes
            self._fail(PeerStalledError("peer stalled"))
            raise PeerStalledError(
                f"the peer left {pending} bytes of replies unread for {self._stall_timeout:g} s"
            )

    async def _write_pending(self) -> None:
        sock = self._sock
        while not self._closed:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            if self._soon:
                soon, self._soon = self._soon, []
                data = soon[0] if len(soon) == 1 else b"".join(soon)
                self._pending_bytes -= len(data)  # write() counts again what it must queue
                self.write(data)
            while self._pending and not self._closed:
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    return
                if self._soon:
                    # Written while we waited: goes out after what waited, in this send.
                    self._pending += self._soon
                    self._soon = []
                data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
                self._pending.clear()
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    self._fail(exc)
                    return
                if sent < len(data):
                    self._pending.append(data[sent:])
                self._pending_bytes = sum(map(len, self._pending))
            if not self._pending:
                self._drained.set()
                self._stall_scope.deadline = math.inf

    def _fail(self, exc: BaseException) -> None:
        self._broken = exc
        self._pending.clear()
        self._soon.clear()
        self._pending_bytes = 0
        self._drained.set()
        self._stall_scope.deadline = math.inf
        # Wake the reader: the connection is over.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError as err:
            if err.errno not in (errno.ENOTCONN, errno.EBADF):
                raise

    def close(self) -> None:
        """Close the socket; tasks waiting on it get :class:`trio.ClosedResourceError`."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._soon.clear()
        self._pending_bytes = 0
        self._drained.set()
        self._stall_scope.deadline = math.inf
        self._wake_writer.set()
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
