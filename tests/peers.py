"""A peer that speaks raw bytes over a real Unix socket, for tests of either end of a connection.

A :class:`Peer` sends whatever bytes it is given (well-formed frames or not) and reads back
whole frames with the project's :class:`~sandboxd.wire.FrameDecoder`, waiting at most
:attr:`Peer.timeout` seconds (virtual ones under the autojump clock) for each read.  It plays a
client (:meth:`Peer.connect`) or a server (:func:`listening`, then :meth:`Peer.accept`).
"""

from __future__ import annotations

import collections
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import trio

from sandboxd import RPCError
from sandboxd.wire import (
    Code,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    Request,
    decode_request,
    decode_response,
    dumps,
    encode_error_from,
    encode_frame,
    encode_request,
    encode_response,
    loads_message,
    loads_strict,
)

#: Seconds a peer waits for one read before the test fails.
WAIT = 30.0
#: Bytes asked of the socket by one read.
READ_SIZE = 1 << 16
#: The flags of the empty DATA frame that ends a stream (0x05), either way.
END_OF_STREAM = Flags.REMOTE_CLOSED | Flags.NO_DATA


def request_frame(
    stream_id: int,
    method: str,
    message: Mapping[str, Any] | None = None,
    *,
    service: str,
    timeout_nano: int = 0,
    metadata: Mapping[str, list[str]] | None = None,
    flags: int = 0,
) -> bytes:
    """A REQUEST frame; no ``message`` sends an empty payload."""
    payload = dumps(message) if message is not None else b""
    envelope = encode_request(service, method, payload, timeout_nano, metadata)
    return encode_frame(stream_id, FrameType.REQUEST, flags, envelope)


def data_frame(stream_id: int, message: Mapping[str, Any] | None, flags: int = 0) -> bytes:
    """A DATA frame carrying ``message`` (None: no payload)."""
    payload = b"" if message is None else dumps(message)
    return encode_frame(stream_id, FrameType.DATA, flags, payload)


def end_frame(stream_id: int) -> bytes:
    """The empty DATA frame that ends a stream: from a client, it cancels the call."""
    return encode_frame(stream_id, FrameType.DATA, END_OF_STREAM, b"")


def status_of(frame: Frame) -> tuple[int, str]:
    """``(code, message)`` of a RESPONSE frame, OK when it carries no status."""
    envelope = loads_strict(frame.payload, "response envelope")
    assert type(envelope) is dict, envelope
    status = envelope.get("status")
    if status is None:
        return Code.OK, ""
    return status["code"], status["message"]


@contextlib.asynccontextmanager
async def listening(path: str) -> AsyncIterator[trio.SocketListener]:
    """A listener on ``path``, for a peer that plays the server (:meth:`Peer.accept`)."""
    # Bound synchronously: trio's ``bind`` of an AF_UNIX socket runs in a thread, which the
    # autojump clock would take for idleness and jump the clock past every deadline.
    plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        plain.bind(path)
        plain.listen(64)
    except BaseException:
        plain.close()
        raise
    async with trio.SocketListener(trio.socket.from_stdlib_socket(plain)) as listener:
        yield listener


class Peer(trio.abc.AsyncResource):
    """One end of a connection, driven frame by frame by the test.

    ``async with`` closes it.  ``service`` is where :meth:`send_request` and :meth:`call`
    address their requests.
    """

    def __init__(
        self, stream: trio.SocketStream, *, service: str = "", timeout: float = WAIT
    ) -> None:
        self.stream = stream
        self.service = service
        #: Seconds to wait for each read; ``math.inf`` for a peer that serves in the background.
        self.timeout = timeout
        self._decoder = FrameDecoder()
        self._frames: collections.deque[Frame] = collections.deque()

    @classmethod
    async def connect(cls, path: str, **options: Any) -> Peer:
        """A peer connected to the server listening on ``path``."""
        return cls(await trio.open_unix_socket(path), **options)

    @classmethod
    async def accept(cls, listener: trio.SocketListener, **options: Any) -> Peer:
        """A peer playing the server for the next connection ``listener`` accepts."""
        return cls(await listener.accept(), **options)

    async def aclose(self) -> None:
        await self.stream.aclose()

    # -- sending -------------------------------------------------------------------------------

    async def send(self, *chunks: bytes) -> None:
        await self.stream.send_all(b"".join(chunks))

    async def send_request(
        self,
        stream_id: int,
        method: str,
        message: Mapping[str, Any] | None = None,
        *,
        service: str | None = None,
        **kw: Any,
    ) -> None:
        """A request to ``service``, by default the peer's."""
        service = self.service if service is None else service
        await self.send(request_frame(stream_id, method, message, service=service, **kw))

    async def respond(self, stream_id: int, envelope: bytes) -> None:
        """A RESPONSE frame on ``stream_id`` around ``envelope``, whatever its bytes."""
        await self.send(encode_frame(stream_id, FrameType.RESPONSE, 0, envelope))

    async def reply(self, stream_id: int, message: Mapping[str, Any]) -> None:
        """Answer ``stream_id`` with ``message``, as a server does."""
        await self.respond(stream_id, encode_response(dumps(message)))

    async def reply_error(self, stream_id: int, err: RPCError) -> None:
        await self.respond(stream_id, encode_error_from(err))

    # -- receiving -----------------------------------------------------------------------------

    async def read_some(self, max_bytes: int = READ_SIZE) -> bool:
        """One read (of at most ``max_bytes``), its frames queued; False at the end of the
        connection (a reset counts as one)."""
        with trio.move_on_after(self.timeout):
            try:
                data = await self.stream.receive_some(max_bytes)
            except trio.BrokenResourceError:  # reset: closed with our bytes unread
                return False
            for event in self._decoder.feed(data):
                assert isinstance(event, Frame), f"the other end sent an oversized frame: {event}"
                self._frames.append(event)
            return bool(data)
        raise AssertionError(f"nothing came from the other end in {self.timeout} s")

    def received(self) -> list[Frame]:
        """Every frame read and not yet taken."""
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def next_frame(self) -> Frame:
        while not self._frames:
            assert await self.read_some(), "the other end closed the connection"
        return self._frames.popleft()

    async def frames_until_eof(self) -> list[Frame]:
        """Every frame until the other end closes the connection."""
        while await self.read_some():
            pass
        return self.received()

    async def exchange(self, data: bytes) -> list[Frame]:
        """Send ``data`` (the other end may have closed already), then every frame until it
        closes the connection."""
        with contextlib.suppress(trio.BrokenResourceError):
            await self.send(data)
        return await self.frames_until_eof()

    # -- as a client ---------------------------------------------------------------------------

    async def response(self, stream_id: int) -> Frame:
        """The next frame, which must be a RESPONSE on ``stream_id`` with flags 0."""
        frame = await self.next_frame()
        expected = (stream_id, FrameType.RESPONSE, 0)
        assert (frame.stream_id, frame.type, frame.flags) == expected, frame
        return frame

    async def message(self, stream_id: int) -> dict[str, Any]:
        """The next frame, which must be a DATA frame on ``stream_id`` with flags 0: a stream's
        message."""
        frame = await self.next_frame()
        expected = (stream_id, FrameType.DATA, 0)
        assert (frame.stream_id, frame.type, frame.flags) == expected, frame
        return loads_message(frame.payload, "stream message")

    async def expect_ok(self, stream_id: int) -> dict[str, Any]:
        frame = await self.response(stream_id)
        assert status_of(frame) == (Code.OK, ""), status_of(frame)
        return loads_message(decode_response(frame.payload), "response payload")

    async def expect_error(self, stream_id: int, code: Code) -> str:
        frame = await self.response(stream_id)
        got, message = status_of(frame)
        assert got == code, f"expected {code!r}, got code {got}: {message!r}"
        return message

    async def call(
        self, stream_id: int, method: str, message: Mapping[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        await self.send_request(stream_id, method, message, **kw)
        return await self.expect_ok(stream_id)

    # -- as a server ---------------------------------------------------------------------------

    async def next_request(self) -> tuple[int, Request]:
        """The next frame, which must be a REQUEST with flags 0: its stream id and envelope."""
        frame = await self.next_frame()
        assert (frame.type, frame.flags) == (FrameType.REQUEST, 0), frame
        return frame.stream_id, decode_request(frame.payload)
