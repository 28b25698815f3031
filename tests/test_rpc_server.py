"""Server conformance tests for the trio RPC layer, spoken in raw bytes over a real socket.

Each test starts a real :class:`sandboxd.rpc.Server` on a Unix socket in the test's nursery and
talks to it with nothing but ``trio.open_unix_socket`` and the sans-io wire helpers, so what is
checked is exactly what any client (ours, or one written against PROTOCOL.md) relies on: which
frames come back, on which stream id, with which type, flags and status code, and that the
connection (and the server) survives whatever a peer sends.

Waiting is done on events the handlers set, on ``wait_all_tasks_blocked`` and, for deadlines
and grace periods, on the autojump clock; a watchdog task fails a test that hangs.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import random
import socket
import stat
from collections.abc import AsyncIterator, Mapping
from typing import Any

import cbor2
import pytest
import trio
import trio.testing

from sandboxd import PROTOCOL_VERSION, __version__
from sandboxd.api import RUNTIME_SERVICE, runtime_service
from sandboxd.rpc import (
    CallContext,
    Limits,
    MessageSender,
    Method,
    Responder,
    Server,
    SocketInUseError,
    deferred,
    inline,
    server_stream,
    unary,
)
from sandboxd.wire import (
    HEADER,
    MAX_PAYLOAD,
    Code,
    FailedPrecondition,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    NotFound,
    decode_response,
    dumps,
    encode_frame,
    encode_request,
    loads_message,
    loads_strict,
)

TEST = "test.v1.Probe"
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0
END_OF_STREAM = Flags.REMOTE_CLOSED | Flags.NO_DATA  # 0x05
REQUEST = FrameType.REQUEST
RESPONSE = FrameType.RESPONSE
DATA = FrameType.DATA


# -- the test services -----------------------------------------------------------------------


class Probe:
    """What the test controls in, and observes of, the handlers it serves."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.release = trio.Event()
        self.cancelled = trio.Event()
        self.cancelled_at = math.nan
        self.deadline = math.nan
        #: The responders of the deferred calls received, in order.
        self.responders: list[Responder] = []
        self.deferred_arrived = trio.Event()

    def saw_cancel(self) -> None:
        self.cancelled_at = trio.current_time()
        self.cancelled.set()


def make_services(probe: Probe) -> dict[str, Mapping[str, Method]]:
    def echo(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return message

    def context(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return {
            "service": ctx.service,
            "method": ctx.method,
            "stream_id": ctx.stream_id,
            "metadata": {key: list(values) for key, values in ctx.metadata.items()},
        }

    def size(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return {"n": len(message["blob"])}

    def big_inline(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return {"blob": b"x" * message["n"]}

    async def big_unary(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"blob": b"x" * message["n"]}

    async def big_stream(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        await stream.send({"i": 0})
        await stream.send({"blob": b"x" * message["n"]})

    def boom_inline(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        raise ValueError("boom-inline")

    async def unary_echo(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        return message

    async def wait(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        probe.started.set()
        await probe.release.wait()
        return {"released": True, **message}

    async def forever(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        probe.deadline = ctx.deadline
        probe.started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            probe.saw_cancel()
            raise

    async def boom_unary(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        raise ValueError("boom-unary")

    async def not_found(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        raise NotFound("no such thing", details=["thing", 7])

    async def count(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        for i in range(message["n"]):
            await stream.send({"i": i})

    async def endless(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        await stream.send({"i": 0})
        probe.started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            probe.saw_cancel()
            raise

    async def ticker(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        i = 0
        try:
            while True:
                await stream.send({"i": i})
                i += 1
                probe.started.set()
        except trio.Cancelled:
            probe.saw_cancel()
            raise

    async def stream_fail(
        message: dict[str, Any], ctx: CallContext, stream: MessageSender
    ) -> None:
        await stream.send({"i": 0})
        await stream.send({"i": 1})
        raise FailedPrecondition("stream says no", details=["why"])

    async def boom_stream(
        message: dict[str, Any], ctx: CallContext, stream: MessageSender
    ) -> None:
        await stream.send({"i": 0})
        raise ValueError("boom-stream")

    def later(message: dict[str, Any], ctx: CallContext, responder: Responder) -> None:
        probe.responders.append(responder)
        probe.deferred_arrived.set()

    def at_once(message: dict[str, Any], ctx: CallContext, responder: Responder) -> None:
        responder.ok(message["v"])
        responder.ok("a second answer is ignored")

    def boom_deferred(message: dict[str, Any], ctx: CallContext, responder: Responder) -> None:
        raise ValueError("boom-deferred")

    def refused_deferred(message: dict[str, Any], ctx: CallContext, responder: Responder) -> None:
        raise NotFound("nothing to wait for")

    def bad_result(value: Any) -> Mapping[str, Any]:
        raise TypeError("cannot make a response of this")

    return {
        TEST: {
            "Later": deferred(later, lambda value: {"value": value}),
            "AtOnce": deferred(at_once, lambda value: {"value": value}),
            "BoomDeferred": deferred(boom_deferred, lambda value: {}),
            "RefusedDeferred": deferred(refused_deferred, lambda value: {}),
            "BadResult": deferred(at_once, bad_result),
            "Echo": inline(echo),
            "Context": inline(context),
            "Size": inline(size),
            "BoomInline": inline(boom_inline),
            "BigInline": inline(big_inline),
            "BigUnary": unary(big_unary),
            "BigStream": server_stream(big_stream),
            "UnaryEcho": unary(unary_echo),
            "Wait": unary(wait),
            "Forever": unary(forever),
            "BoomUnary": unary(boom_unary),
            "NotFound": unary(not_found),
            "Count": server_stream(count),
            "Endless": server_stream(endless),
            "Ticker": server_stream(ticker),
            "StreamFail": server_stream(stream_fail),
            "BoomStream": server_stream(boom_stream),
        },
        RUNTIME_SERVICE: runtime_service(),
    }


# -- raw-bytes client ------------------------------------------------------------------------


def request_frame(
    stream_id: int,
    method: str,
    message: Mapping[str, Any] | None = None,
    *,
    service: str = TEST,
    timeout_nano: int = 0,
    metadata: Mapping[str, list[str]] | None = None,
) -> bytes:
    payload = dumps(message) if message is not None else b""
    envelope = encode_request(service, method, payload, timeout_nano, metadata)
    return encode_frame(stream_id, REQUEST, 0, envelope)


def raw_request_frame(stream_id: int, envelope: bytes) -> bytes:
    return HEADER.pack(len(envelope), stream_id, REQUEST, 0) + envelope


def cancel_frame(stream_id: int) -> bytes:
    return encode_frame(stream_id, DATA, END_OF_STREAM, b"")


def status_of(frame: Frame) -> tuple[int, str]:
    """``(code, message)`` of a RESPONSE frame, OK when it carries no status."""
    envelope = loads_strict(frame.payload, "response envelope")
    assert type(envelope) is dict, envelope
    status = envelope.get("status")
    if status is None:
        return Code.OK, ""
    return status["code"], status["message"]


_OPEN_PEERS: list[Peer] = []


class Peer:
    """A client that writes raw bytes and reads whole frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._frames: collections.deque[Frame] = collections.deque()

    @classmethod
    async def connect(cls, path: str) -> Peer:
        peer = cls(await trio.open_unix_socket(path))
        _OPEN_PEERS.append(peer)
        return peer

    async def send(self, *chunks: bytes) -> None:
        await self.stream.send_all(b"".join(chunks))

    async def send_request(
        self, stream_id: int, method: str, message: Any = None, **kw: Any
    ) -> None:
        await self.send(request_frame(stream_id, method, message, **kw))

    async def _fill(self) -> bool:
        """Read more frames; False at end of stream."""
        try:
            data = await self.stream.receive_some(1 << 16)
        except trio.BrokenResourceError:
            return False
        if not data:
            return False
        for event in self._decoder.feed(data):
            assert isinstance(event, Frame), f"server sent an oversized frame: {event}"
            self._frames.append(event)
        return True

    async def next_frame(self) -> Frame:
        while not self._frames:
            assert await self._fill(), "the server closed the connection"
        return self._frames.popleft()

    async def frames_until_eof(self) -> list[Frame]:
        while await self._fill():
            pass
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def response(self, stream_id: int) -> Frame:
        """The next frame, which must be a RESPONSE on ``stream_id`` with flags 0."""
        frame = await self.next_frame()
        assert (frame.stream_id, frame.type, frame.flags) == (stream_id, RESPONSE, 0), frame
        return frame

    async def expect_ok(self, stream_id: int) -> dict[str, Any]:
        frame = await self.response(stream_id)
        assert status_of(frame) == (Code.OK, ""), status_of(frame)
        return loads_message(decode_response(frame.payload), "response payload")

    async def expect_error(self, stream_id: int, code: Code) -> str:
        frame = await self.response(stream_id)
        got, message = status_of(frame)
        assert got == code, f"expected {code!r}, got code {got}: {message!r}"
        return message

    async def call(self, stream_id: int, method: str, message: Any = None, **kw: Any) -> Any:
        await self.send_request(stream_id, method, message, **kw)
        return await self.expect_ok(stream_id)

    async def aclose(self) -> None:
        await self.stream.aclose()


# -- fixtures and server helpers -------------------------------------------------------------


async def _watchdog() -> None:
    await trio.sleep(GUARD)
    raise TimeoutError(f"test still running after {GUARD} s: something hangs")


@pytest.fixture(autouse=True)
async def _close_leftover_peers() -> AsyncIterator[None]:
    """Close the sockets a failed test left open, so no later test sees them collected."""
    yield
    while _OPEN_PEERS:
        await _OPEN_PEERS.pop().aclose()


@pytest.fixture
def probe() -> Probe:
    return Probe()


async def start_server(
    nursery: trio.Nursery, path: str, probe: Probe, **kwargs: Any
) -> tuple[Server, trio.Event]:
    """A running server and an event set once ``serve_unix`` has returned.

    ``nursery`` must be the test's own (pytest-trio's ``nursery`` fixture): a watchdog started
    there fails the test, instead of letting it hang, once GUARD seconds have passed.
    """
    nursery.start_soon(_watchdog)
    server = Server(make_services(probe), limits=Limits(**kwargs))
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[str]) -> None:
        await server.serve_unix(path, task_status=task_status)
        stopped.set()

    assert await nursery.start(run) == path
    return server, stopped


@contextlib.asynccontextmanager
async def connected(path: str) -> AsyncIterator[Peer]:
    peer = await Peer.connect(path)
    try:
        yield peer
    finally:
        await peer.aclose()


# -- 1. request/response basics --------------------------------------------------------------


async def test_runtime_version_round_trip(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, "Version", {}, service=RUNTIME_SERVICE)
        frame = await peer.next_frame()
        assert frame.stream_id == 1
        assert frame.type == RESPONSE == 2
        assert frame.flags == 0
        reply = loads_message(decode_response(frame.payload))
        assert reply == {"version": __version__, "protocol": PROTOCOL_VERSION}


@pytest.mark.parametrize("method", ["Echo", "UnaryEcho"])
async def test_echo_round_trip(nursery: trio.Nursery, sock_path: str, probe: Probe, method: str):
    await start_server(nursery, sock_path, probe)
    message = {
        "text": "héllo",
        "bytes": b"\x00\xff",
        "int": -(2**40),
        "float": 1.5,
        "bool": True,
        "none": None,
        "list": [1, "two", [3]],
        "map": {"nested": {"deep": 1}},
    }
    async with connected(sock_path) as peer:
        await peer.send_request(1, method, message)
        frame = await peer.next_frame()
        assert (frame.stream_id, frame.type, frame.flags) == (1, RESPONSE, 0)
        assert loads_message(decode_response(frame.payload)) == message
        # An empty request payload is an empty message.
        assert await peer.call(3, method) == {}


async def test_call_context_seen_by_handler(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        reply = await peer.call(7, "Context", {}, metadata={"who": ["me", "you"]})
        assert reply == {
            "service": TEST,
            "method": "Context",
            "stream_id": 7,
            "metadata": {"who": ["me", "you"]},
        }


# -- 2. client stream ids --------------------------------------------------------------------


async def test_stream_ids_must_be_odd_and_increasing(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        assert await peer.call(1, "Echo", {"n": 1}) == {"n": 1}
        for bad in (4, 0, 1):  # even, zero, repeated
            await peer.send_request(bad, "Echo", {"n": bad})
            await peer.expect_error(bad, Code.INVALID_ARGUMENT)
        assert await peer.call(3, "Echo", {"n": 3}) == {"n": 3}
        assert await peer.call(9, "UnaryEcho", {"n": 9}) == {"n": 9}
        for bad in (7, 9, 2**32 - 2):  # lower, repeated, even
            await peer.send_request(bad, "UnaryEcho", {"n": bad})
            await peer.expect_error(bad, Code.INVALID_ARGUMENT)
        assert await peer.call(11, "Echo", {"n": 11}) == {"n": 11}
        assert await peer.call(2**32 - 1, "Echo", {"n": "max"}) == {"n": "max"}


async def test_rejected_stream_id_does_not_run_the_handler(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(2, "Wait")
        await peer.expect_error(2, Code.INVALID_ARGUMENT)
        await trio.testing.wait_all_tasks_blocked()
        assert not probe.started.is_set()
        assert await peer.call(3, "Echo", {"ok": True}) == {"ok": True}


# -- 3. frame size limit ---------------------------------------------------------------------


async def test_oversized_frame_is_refused_and_connection_survives(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        length = MAX_PAYLOAD + 1
        assert length == 4194305
        await peer.send(HEADER.pack(length, 1, REQUEST, 0), b"\xa0" * length)
        # PROTOCOL.md: the refused frame's stream id does not count as used, so 1 is still free.
        await peer.send_request(1, "Echo", {"after": "oversized"})
        await peer.expect_error(1, Code.RESOURCE_EXHAUSTED)
        assert await peer.expect_ok(1) == {"after": "oversized"}
        assert await peer.call(3, "UnaryEcho", {"then": 3}) == {"then": 3}


@pytest.mark.parametrize("frame_type", [DATA, 7])
async def test_oversized_frame_of_other_type_leaves_connection_usable(
    nursery: trio.Nursery, sock_path: str, probe: Probe, frame_type: int
):
    """Whether it is answered is not asserted (see the report); the connection must survive."""
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        length = MAX_PAYLOAD + 1
        await peer.send(HEADER.pack(length, 1, frame_type, 0), b"\0" * length)
        await peer.send_request(3, "Echo", {"after": "oversized"})
        frame = await peer.next_frame()
        if frame.stream_id == 1:
            assert frame.type == RESPONSE
            assert status_of(frame)[0] == Code.RESOURCE_EXHAUSTED
            frame = await peer.next_frame()
        assert (frame.stream_id, frame.type, frame.flags) == (3, RESPONSE, 0)
        assert loads_message(decode_response(frame.payload)) == {"after": "oversized"}


@pytest.mark.parametrize("method", ["BigInline", "BigUnary", "BigStream"])
async def test_reply_too_big_for_a_frame_is_resource_exhausted(
    nursery: trio.Nursery, sock_path: str, probe: Probe, method: str
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, method, {"n": MAX_PAYLOAD})
        if method == "BigStream":
            frame = await peer.next_frame()
            assert frame == Frame(1, DATA, 0, dumps({"i": 0}))
        await peer.expect_error(1, Code.RESOURCE_EXHAUSTED)
        assert await peer.call(3, "Echo", {"after": "big"}) == {"after": "big"}


async def test_frame_of_exactly_max_payload_with_garbage_is_accepted(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send(HEADER.pack(MAX_PAYLOAD, 1, REQUEST, 0), b"\x00" * MAX_PAYLOAD)
        await peer.send_request(3, "Echo", {"after": "max"})
        await peer.expect_error(1, Code.INVALID_ARGUMENT)
        assert await peer.expect_ok(3) == {"after": "max"}


async def test_frame_of_exactly_max_payload_with_valid_envelope_is_served(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)

    def envelope(blob_size: int) -> bytes:
        return encode_request(TEST, "Size", dumps({"blob": b"x" * blob_size}))

    base = 1 << 20
    blob_size = base + MAX_PAYLOAD - len(envelope(base))
    big = envelope(blob_size)
    assert len(big) == MAX_PAYLOAD
    async with connected(sock_path) as peer:
        await peer.send(raw_request_frame(1, big))
        assert await peer.expect_ok(1) == {"n": blob_size}
        assert await peer.call(3, "Echo", {"after": "big"}) == {"after": "big"}


# -- 4. unknown service / method -------------------------------------------------------------


@pytest.mark.parametrize("method", ["Echo", "Nope"])
async def test_unknown_service(nursery: trio.Nursery, sock_path: str, probe: Probe, method: str):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, method, {}, service="nope.v1.Nothing")
        message = await peer.expect_error(1, Code.UNIMPLEMENTED)
        assert "nope.v1.Nothing" in message
        assert await peer.call(3, "Echo", {"x": 1}) == {"x": 1}


async def test_unknown_method(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, "NoSuchMethod", {})
        message = await peer.expect_error(1, Code.UNIMPLEMENTED)
        assert "NoSuchMethod" in message
        assert TEST in message
        # Method names are case-sensitive.
        await peer.send_request(3, "echo", {})
        assert "echo" in await peer.expect_error(3, Code.UNIMPLEMENTED)
        assert await peer.call(5, "Echo", {"x": 1}) == {"x": 1}


# -- 5. malformed and hostile envelopes ------------------------------------------------------


def _nested_map(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _env(**fields: Any) -> bytes:
    return cbor2.dumps({"service": TEST, "method": "Echo", **fields})


_ECHO_ENVELOPE = _env()
_INDEFINITE_ENVELOPE = (
    b"\xbf" + cbor2.dumps("service") + cbor2.dumps(TEST) + cbor2.dumps("method")
    + cbor2.dumps("Echo") + b"\xff"
)  # fmt: skip
_DUPLICATE_KEY_ENVELOPE = (
    b"\xa3" + cbor2.dumps("service") + cbor2.dumps(TEST) + cbor2.dumps("method")
    + cbor2.dumps("Echo") + cbor2.dumps("service") + cbor2.dumps(TEST)
)  # fmt: skip

BAD_ENVELOPES = {
    "empty": b"",
    "not-cbor-break": b"\xff",
    "not-cbor-reserved": b"\x1c\x00\x00",
    "truncated": _ECHO_ENVELOPE[:-1],
    "not-a-map": cbor2.dumps([TEST, "Echo"]),
    "service-int": cbor2.dumps({"service": 5, "method": "Echo"}),
    "service-missing": cbor2.dumps({"method": "Echo"}),
    "method-bytes": cbor2.dumps({"service": TEST, "method": b"Echo"}),
    "payload-text": _env(payload="text"),
    "payload-map": _env(payload={"a": 1}),
    "timeout-negative": _env(timeout_nano=-1),
    "timeout-float": _env(timeout_nano=1.5),
    "timeout-text": _env(timeout_nano="5"),
    "metadata-not-list": _env(metadata={"k": "v"}),
    "unknown-field": _env(extra=1),
    "indefinite-map": _INDEFINITE_ENVELOPE,
    "duplicate-key": _DUPLICATE_KEY_ENVELOPE,
    "tag-28": b"\xd8\x1c" + _ECHO_ENVELOPE,
    "tag-unknown": cbor2.dumps(cbor2.CBORTag(4242, {"service": TEST, "method": "Echo"})),
    "trailing-bytes": _ECHO_ENVELOPE + b"\x00",
    "nesting-40": _env(x=_nested_map(40)),
    "payload-not-cbor": _env(payload=b"\xff\xff"),
    "payload-not-map-list": _env(payload=cbor2.dumps([1, 2])),
    "payload-not-map-int": _env(payload=cbor2.dumps(7)),
    "payload-int-key": _env(payload=cbor2.dumps({1: 2})),
    "payload-indefinite-map": _env(payload=b"\xbf" + cbor2.dumps("a") + b"\x01\xff"),
    "payload-indefinite-text": _env(payload=b"\xa1" + cbor2.dumps("a") + b"\x7f\x61x\xff"),
    "payload-tag-28": _env(payload=b"\xd8\x1c" + cbor2.dumps({"a": 1})),
    "payload-tag-29": _env(payload=cbor2.dumps({"a": cbor2.CBORTag(29, 0)})),
    "payload-trailing-bytes": _env(payload=cbor2.dumps({"a": 1}) + b"\x00"),
    "payload-nesting-40": _env(payload=cbor2.dumps(_nested_map(40))),
    "payload-duplicate-key": _env(payload=b"\xa2" + (cbor2.dumps("a") + b"\x01") * 2),
    "payload-truncated": _env(payload=cbor2.dumps({"a": "long text"})[:-2]),
}


@pytest.mark.parametrize("envelope", BAD_ENVELOPES.values(), ids=BAD_ENVELOPES.keys())
async def test_malformed_envelope_is_invalid_argument(
    nursery: trio.Nursery, sock_path: str, probe: Probe, envelope: bytes
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send(raw_request_frame(1, envelope))
        await peer.expect_error(1, Code.INVALID_ARGUMENT)
        # PROTOCOL.md: an id that passed the id check counts as used, whatever happens next.
        await peer.send_request(1, "Echo", {})
        await peer.expect_error(1, Code.INVALID_ARGUMENT)
        assert await peer.call(3, "Echo", {"still": "works"}) == {"still": "works"}
        # The same garbage aimed at a unary method is refused the same way.
        unary_envelope = envelope.replace(b"Echo", b"Wait")
        await peer.send(raw_request_frame(5, unary_envelope))
        await peer.expect_error(5, Code.INVALID_ARGUMENT)
        assert not probe.started.is_set()
        assert await peer.call(7, "UnaryEcho", {"still": "works"}) == {"still": "works"}


async def test_all_malformed_envelopes_on_one_connection(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    """Every bad envelope in one write, interleaved with good calls: each gets its answer."""
    await start_server(nursery, sock_path, probe)
    chunks = []
    expected = []
    stream_id = 1
    for envelope in BAD_ENVELOPES.values():
        chunks.append(raw_request_frame(stream_id, envelope))
        expected.append((stream_id, Code.INVALID_ARGUMENT))
        chunks.append(request_frame(stream_id + 2, "Echo", {"id": stream_id + 2}))
        expected.append((stream_id + 2, Code.OK))
        stream_id += 4
    async with connected(sock_path) as peer:
        await peer.send(*chunks)
        for sid, code in expected:
            if code == Code.OK:
                assert await peer.expect_ok(sid) == {"id": sid}
            else:
                await peer.expect_error(sid, code)


# -- 6. handler exceptions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "data_frames"), [("BoomInline", 0), ("BoomUnary", 0), ("BoomStream", 1)]
)
async def test_unexpected_exception_is_internal_and_logged(
    nursery: trio.Nursery,
    sock_path: str,
    probe: Probe,
    caplog: pytest.LogCaptureFixture,
    method: str,
    data_frames: int,
):
    caplog.set_level(logging.ERROR)
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer, connected(sock_path) as other:
        await peer.send_request(1, method, {})
        for _ in range(data_frames):
            frame = await peer.next_frame()
            assert (frame.stream_id, frame.type, frame.flags) == (1, DATA, 0)
        await peer.expect_error(1, Code.INTERNAL)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
        assert errors, "the handler's exception was not logged"
        exc_type, exc, tb = errors[-1].exc_info  # type: ignore[misc]
        assert exc_type is ValueError
        assert tb is not None
        expected = method.removeprefix("Boom").lower()
        assert str(exc) == f"boom-{expected}"
        assert "Traceback (most recent call last)" in caplog.text
        assert f"ValueError: boom-{expected}" in caplog.text
        # The server goes on serving: the same connection, another one, a new one.
        assert await peer.call(3, "Echo", {"a": 1}) == {"a": 1}
        assert await peer.call(5, "UnaryEcho", {"a": 2}) == {"a": 2}
        assert await other.call(1, "Echo", {"b": 1}) == {"b": 1}
        async with connected(sock_path) as new:
            assert await new.call(1, "UnaryEcho", {"c": 1}) == {"c": 1}


async def test_rpc_error_from_unary_handler_keeps_its_status(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, "NotFound", {})
        frame = await peer.response(1)
        envelope = loads_strict(frame.payload)
        assert envelope["status"] == {
            "code": Code.NOT_FOUND,
            "message": "no such thing",
            "details": ["thing", 7],
        }


# -- 7. unknown frame types ------------------------------------------------------------------


async def test_frames_of_unknown_type_are_ignored(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send(
            encode_frame(1, 7, 0, b"whatever"),
            encode_frame(1, 0, 0xFF, b""),
            encode_frame(1, 255, 0, _ECHO_ENVELOPE),
            encode_frame(1, RESPONSE, 0, cbor2.dumps({"payload": b""})),  # a client's RESPONSE
            request_frame(3, "Echo", {"n": 3}),
        )
        assert await peer.expect_ok(3) == {"n": 3}
        await peer.send(encode_frame(5, 7, 0x05, b"junk"), request_frame(5, "Echo", {"n": 5}))
        assert await peer.expect_ok(5) == {"n": 5}


# -- 8. pipelining and out-of-order replies --------------------------------------------------


async def test_pipelined_requests_in_one_write(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    expected = {}
    chunks = []
    for i in range(50):
        sid = 2 * i + 1
        message = {"i": i, "pad": "p" * (i % 11)}
        expected[sid] = message
        chunks.append(request_frame(sid, "UnaryEcho" if i % 3 else "Echo", message))
    async with connected(sock_path) as peer:
        await peer.send(*chunks)
        got = {}
        for _ in range(50):
            frame = await peer.next_frame()
            assert frame.type == RESPONSE
            assert frame.flags == 0
            assert frame.stream_id not in got
            got[frame.stream_id] = loads_message(decode_response(frame.payload))
        assert got == expected


async def test_replies_out_of_order(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send(request_frame(1, "Wait", {"a": 1}), request_frame(3, "Echo", {"b": 3}))
        assert await peer.expect_ok(3) == {"b": 3}
        await probe.started.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert await peer.call(5, "UnaryEcho", {"c": 5}) == {"c": 5}
        probe.release.set()
        assert await peer.expect_ok(1) == {"released": True, "a": 1}


# -- 9. deadlines ----------------------------------------------------------------------------


async def test_timeout_nano_is_enforced(
    nursery: trio.Nursery, sock_path: str, probe: Probe, autojump_clock: trio.testing.MockClock
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        sent_at = trio.current_time()
        await peer.send_request(1, "Forever", {}, timeout_nano=50_000_000)
        await peer.expect_error(1, Code.DEADLINE_EXCEEDED)
        assert probe.cancelled.is_set(), "the handler was not cancelled"
        assert probe.deadline == pytest.approx(sent_at + 0.05, abs=0.01)
        assert sent_at + 0.05 <= probe.cancelled_at < sent_at + 1
        assert await peer.call(3, "Echo", {"after": "deadline"}) == {"after": "deadline"}


async def test_stream_deadline_ends_with_response_after_messages(
    nursery: trio.Nursery, sock_path: str, probe: Probe, autojump_clock: trio.testing.MockClock
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, "Endless", {}, timeout_nano=50_000_000)
        frame = await peer.next_frame()
        assert frame == Frame(1, DATA, 0, dumps({"i": 0}))
        await peer.expect_error(1, Code.DEADLINE_EXCEEDED)
        assert probe.cancelled.is_set()
        assert await peer.call(3, "Echo", {"n": 3}) == {"n": 3}


async def test_call_finishing_before_its_deadline_succeeds(
    nursery: trio.Nursery, sock_path: str, probe: Probe, autojump_clock: trio.testing.MockClock
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, "Wait", {"w": 1}, timeout_nano=10_000_000_000)
        await probe.started.wait()
        await trio.sleep(5)  # virtual: half the deadline
        probe.release.set()
        assert await peer.expect_ok(1) == {"released": True, "w": 1}


# -- 10. connection close --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["Forever", "Endless"])
async def test_connection_close_cancels_running_handlers(
    nursery: trio.Nursery, sock_path: str, probe: Probe, method: str
):
    server, _ = await start_server(nursery, sock_path, probe)
    peer = await Peer.connect(sock_path)
    await peer.send_request(1, method, {})
    await probe.started.wait()
    assert server.in_flight == 1
    await peer.aclose()
    await probe.cancelled.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert server.in_flight == 0
    assert server.connections == 0
    async with connected(sock_path) as new:
        assert await new.call(1, "Echo", {"x": 1}) == {"x": 1}


# -- 11. ending a call early -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["Forever", "Endless"])
async def test_client_cancel_frame_ends_the_call(
    nursery: trio.Nursery, sock_path: str, probe: Probe, method: str
):
    server, _ = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, method, {})
        await probe.started.wait()
        if method == "Endless":
            frame = await peer.next_frame()
            assert (frame.stream_id, frame.type, frame.flags) == (1, DATA, 0)
            assert loads_message(frame.payload) == {"i": 0}
        # DATA frames without REMOTE_CLOSED do not end the call.
        await peer.send(
            encode_frame(1, DATA, Flags.NO_DATA, b""),
            encode_frame(1, DATA, Flags.REMOTE_OPEN, b""),
            encode_frame(1, DATA, 0, dumps({"x": 1})),
        )
        await trio.testing.wait_all_tasks_blocked()
        assert not probe.cancelled.is_set()
        assert server.in_flight == 1
        await peer.send(cancel_frame(1))
        await peer.expect_error(1, Code.CANCELLED)
        assert probe.cancelled.is_set()
        assert server.in_flight == 0
        # A cancel frame for a stream that is not running is ignored: no reply.
        await peer.send(cancel_frame(1), cancel_frame(99), request_frame(3, "Echo", {"n": 3}))
        assert await peer.expect_ok(3) == {"n": 3}
        assert await peer.call(5, "UnaryEcho", {"n": 5}) == {"n": 5}


async def test_client_cancel_frame_ends_a_busy_stream(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, "Ticker", {})
        for i in range(3):
            frame = await peer.next_frame()
            assert (frame.stream_id, frame.type, frame.flags) == (1, DATA, 0)
            assert loads_message(frame.payload) == {"i": i}
        await peer.send(cancel_frame(1))
        expect = 3
        while True:
            frame = await peer.next_frame()
            assert frame.stream_id == 1
            if frame.type == RESPONSE:
                break
            assert (frame.type, frame.flags) == (DATA, 0)
            assert loads_message(frame.payload) == {"i": expect}
            expect += 1
        assert frame.flags == 0
        assert status_of(frame)[0] == Code.CANCELLED
        assert probe.cancelled.is_set()
        # Nothing more on stream 1 after its RESPONSE.
        assert await peer.call(3, "Echo", {"n": 3}) == {"n": 3}


# -- 12. server streaming --------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, 300])
async def test_server_stream_messages_then_end(
    nursery: trio.Nursery, sock_path: str, probe: Probe, n: int
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(3, "Count", {"n": n})
        for i in range(n):
            frame = await peer.next_frame()
            assert (frame.stream_id, frame.type, frame.flags) == (3, DATA, 0)
            assert loads_message(frame.payload) == {"i": i}
        end = await peer.next_frame()
        assert end == Frame(3, DATA, END_OF_STREAM, b"")
        assert END_OF_STREAM == 0x05
        assert await peer.call(5, "Echo", {"after": "stream"}) == {"after": "stream"}


async def test_server_stream_error_ends_with_response(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, "StreamFail", {})
        for i in range(2):
            frame = await peer.next_frame()
            assert (frame.stream_id, frame.type, frame.flags) == (1, DATA, 0)
            assert loads_message(frame.payload) == {"i": i}
        frame = await peer.response(1)
        envelope = loads_strict(frame.payload)
        assert envelope["status"] == {
            "code": Code.FAILED_PRECONDITION,
            "message": "stream says no",
            "details": ["why"],
        }
        # No end-of-stream DATA frame follows the RESPONSE.
        assert await peer.call(3, "Echo", {"n": 3}) == {"n": 3}


async def test_concurrent_streams_are_multiplexed(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send(*(request_frame(sid, "Count", {"n": 20}) for sid in (1, 3, 5)))
        seen: dict[int, list[int]] = {1: [], 3: [], 5: []}
        ended: set[int] = set()
        while len(ended) < 3:
            frame = await peer.next_frame()
            assert frame.type == DATA
            assert frame.stream_id not in ended
            if frame.flags == END_OF_STREAM:
                assert frame.payload == b""
                ended.add(frame.stream_id)
            else:
                assert frame.flags == 0
                seen[frame.stream_id].append(loads_message(frame.payload)["i"])
        assert seen == {sid: list(range(20)) for sid in (1, 3, 5)}


# -- 13. the socket file ---------------------------------------------------------------------


def _make_stale_socket(path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def test_socket_file_is_created_0600(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    # No temporary files are left next to it.
    assert os.listdir(os.path.dirname(sock_path)) == [os.path.basename(sock_path)]


async def test_stale_socket_is_replaced(nursery: trio.Nursery, sock_path: str, probe: Probe):
    _make_stale_socket(sock_path)
    stale_inode = os.lstat(sock_path).st_ino
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    await start_server(nursery, sock_path, probe)
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_ino != stale_inode
    async with connected(sock_path) as peer:
        assert await peer.call(1, "Echo", {"x": 1}) == {"x": 1}


async def test_live_socket_is_not_taken_over(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    inode = os.lstat(sock_path).st_ino
    async with connected(sock_path) as before:
        second = Server(make_services(Probe()))
        with pytest.raises(SocketInUseError):
            await nursery.start(second.serve_unix, sock_path)
        assert os.lstat(sock_path).st_ino == inode
        # The first server still works, on old and new connections.
        assert await before.call(1, "Echo", {"x": 1}) == {"x": 1}
        async with connected(sock_path) as after:
            assert await after.call(1, "UnaryEcho", {"x": 2}) == {"x": 2}


async def test_regular_file_at_path_is_refused_and_untouched(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    _write_file(sock_path, b"precious data")
    os.chmod(sock_path, 0o644)
    server = Server(make_services(probe))
    with pytest.raises(FileExistsError):
        await nursery.start(server.serve_unix, sock_path)
    assert _read_file(sock_path) == b"precious data"
    st = os.lstat(sock_path)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert os.listdir(os.path.dirname(sock_path)) == [os.path.basename(sock_path)]


async def test_socket_file_removed_after_shutdown(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, stopped = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        assert await peer.call(1, "Echo", {}) == {}
        await server.shutdown(grace=1)
        assert stopped.is_set()
        assert not _exists(sock_path)
        assert await peer.frames_until_eof() == []


async def test_socket_file_removed_after_cancellation(sock_path: str, probe: Probe):
    async with trio.open_nursery() as inner:
        server = Server(make_services(probe))
        await inner.start(server.serve_unix, sock_path)
        assert _exists(sock_path)
        inner.cancel_scope.cancel()
    assert not _exists(sock_path)


# -- 14. graceful shutdown -------------------------------------------------------------------


async def test_graceful_shutdown_lets_calls_in_flight_finish(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, stopped = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as busy, connected(sock_path) as idle:
        await busy.send_request(1, "Wait", {"w": 1})
        await probe.started.wait()
        assert await idle.call(1, "Echo", {"warm": 1}) == {"warm": 1}

        shutdown_returned = trio.Event()

        async def shut_down() -> None:
            await server.shutdown(grace=60)
            shutdown_returned.set()

        nursery.start_soon(shut_down)
        await trio.testing.wait_all_tasks_blocked()

        # No longer accepting.
        with pytest.raises(OSError):
            await trio.open_unix_socket(sock_path)
        # New calls on existing connections: UNAVAILABLE, inline and unary alike.
        await busy.send_request(3, "Echo", {})
        await busy.expect_error(3, Code.UNAVAILABLE)
        await idle.send_request(3, "UnaryEcho", {})
        await idle.expect_error(3, Code.UNAVAILABLE)
        # The earlier checks still come first.
        await idle.send_request(5, "NoSuchMethod", {})
        await idle.expect_error(5, Code.UNIMPLEMENTED)
        await idle.send(raw_request_frame(7, b"\xff"))
        await idle.expect_error(7, Code.INVALID_ARGUMENT)
        await idle.send_request(7, "Echo", {})
        await idle.expect_error(7, Code.INVALID_ARGUMENT)
        assert not stopped.is_set()
        assert not shutdown_returned.is_set()

        # The call in flight completes normally, then the server stops.
        probe.release.set()
        assert await busy.expect_ok(1) == {"released": True, "w": 1}
        await stopped.wait()
        await shutdown_returned.wait()
        assert not probe.cancelled.is_set()
        assert await busy.frames_until_eof() == []
        assert await idle.frames_until_eof() == []
        assert not _exists(sock_path)


async def test_graceful_shutdown_cancels_calls_past_the_grace(
    nursery: trio.Nursery, sock_path: str, probe: Probe, autojump_clock: trio.testing.MockClock
):
    server, stopped = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        await peer.send_request(1, "Forever", {})
        await probe.started.wait()
        begun = trio.current_time()
        await server.shutdown(grace=2.0)
        assert stopped.is_set()
        assert probe.cancelled.is_set(), "the call running past the grace was not cancelled"
        assert probe.cancelled_at >= begun + 2.0, "cancelled before the grace ran out"
        # PROTOCOL.md: calls cancelled here get no reply; the client sees the connection close.
        assert await peer.frames_until_eof() == []
        assert server.in_flight == 0


async def test_shutdown_without_calls_in_flight_is_immediate(
    nursery: trio.Nursery, sock_path: str, probe: Probe, autojump_clock: trio.testing.MockClock
):
    server, stopped = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        assert await peer.call(1, "Echo", {}) == {}
        begun = trio.current_time()
        await server.shutdown(grace=30)
        assert stopped.is_set()
        assert trio.current_time() - begun < 1
        assert await peer.frames_until_eof() == []


# -- limits ---------------------------------------------------------------------------------


async def test_connection_over_the_limit_gets_resource_exhausted_on_stream_0(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, _ = await start_server(nursery, sock_path, probe, max_connections=2)
    first = await Peer.connect(sock_path)
    async with connected(sock_path) as second:
        assert await first.call(1, "Echo", {"c": 1}) == {"c": 1}
        assert await second.call(1, "Echo", {"c": 2}) == {"c": 2}
        async with connected(sock_path) as third:
            # The server may already have closed it: then the send fails, which is fine.
            with contextlib.suppress(trio.BrokenResourceError):
                await third.send(request_frame(1, "Echo", {"c": 3}))
            [refusal] = await third.frames_until_eof()
            assert (refusal.stream_id, refusal.type, refusal.flags) == (0, RESPONSE, 0)
            assert status_of(refusal) == (
                Code.RESOURCE_EXHAUSTED,
                "too many connections to this server (limit 2)",
            )
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.connections == 1
        async with connected(sock_path) as fourth:
            assert await fourth.call(1, "Echo", {"c": 4}) == {"c": 4}


async def test_calls_over_the_per_connection_limit_are_refused(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe, max_calls_per_connection=2)
    async with connected(sock_path) as peer, connected(sock_path) as other:
        await peer.send(request_frame(1, "Forever"), request_frame(3, "Endless"))
        frame = await peer.next_frame()
        assert frame == Frame(3, DATA, 0, dumps({"i": 0}))
        await peer.send_request(5, "UnaryEcho", {})
        await peer.expect_error(5, Code.RESOURCE_EXHAUSTED)
        await peer.send_request(7, "Count", {"n": 1})
        await peer.expect_error(7, Code.RESOURCE_EXHAUSTED)
        # Methods answered at once are not counted; other connections are unaffected.
        assert await peer.call(9, "Echo", {"inline": True}) == {"inline": True}
        assert await other.call(1, "UnaryEcho", {"other": True}) == {"other": True}
        # Once a call ends, there is room again.
        await peer.send(cancel_frame(1))
        await peer.expect_error(1, Code.CANCELLED)
        assert await peer.call(11, "UnaryEcho", {"room": True}) == {"room": True}


# -- deferred calls: answered later by whoever holds the responder -----------------------------


async def later_calls(peer: Peer, probe: Probe, *stream_ids: int, **kw: Any) -> list[Responder]:
    """Send a Later call on each stream id; the responders, once the server has them all."""
    wanted = len(probe.responders) + len(stream_ids)
    await peer.send(*(request_frame(i, "Later", {}, **kw) for i in stream_ids))
    while len(probe.responders) < wanted:
        probe.deferred_arrived = trio.Event()
        await probe.deferred_arrived.wait()
    return probe.responders[-len(stream_ids) :]


async def test_deferred_calls_are_answered_when_and_in_the_order_their_answers_come(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, _ = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        first, second = await later_calls(peer, probe, 1, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert server.in_flight == 2
        assert not first.abandoned
        second.ok("b")
        assert await peer.expect_ok(3) == {"value": "b"}
        assert second.abandoned and server.in_flight == 1
        first.ok("a")
        assert await peer.expect_ok(1) == {"value": "a"}
        # Answers after the first are ignored: the next frame is the next call's.
        first.ok("again")
        first.fail(NotFound("too late"))
        assert await peer.call(5, "Echo", {"n": 5}) == {"n": 5}
        assert server.in_flight == 0


async def test_deferred_answers_given_at_once_and_errors(
    nursery: trio.Nursery, sock_path: str, probe: Probe, caplog: pytest.LogCaptureFixture
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        assert await peer.call(1, "AtOnce", {"v": 7}) == {"value": 7}
        await peer.send_request(3, "RefusedDeferred", {})
        assert await peer.expect_error(3, Code.NOT_FOUND) == "nothing to wait for"
        with caplog.at_level(logging.ERROR, logger="sandboxd.rpc"):
            await peer.send_request(5, "BoomDeferred", {})
            assert await peer.expect_error(5, Code.INTERNAL) == "internal error"
            await peer.send_request(7, "BadResult", {"v": 1})
            assert await peer.expect_error(7, Code.INTERNAL) == "cannot encode response"
            [later] = await later_calls(peer, probe, 9)
            later.fail(ValueError("not an RPC error"))
            assert await peer.expect_error(9, Code.INTERNAL) == "internal error"
        assert "boom-deferred" in caplog.text
        assert "not an RPC error" in caplog.text
        [refused] = await later_calls(peer, probe, 11)
        refused.fail(FailedPrecondition("not now", details=["why"]))
        assert await peer.expect_error(11, Code.FAILED_PRECONDITION) == "not now"


async def test_deferred_calls_past_their_deadlines_expire_in_deadline_order(
    nursery: trio.Nursery, sock_path: str, probe: Probe, autojump_clock: trio.testing.MockClock
):
    server, _ = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        sent_at = trio.current_time()
        await peer.send(
            request_frame(1, "Later", {}, timeout_nano=300_000_000),
            request_frame(3, "Later", {}, timeout_nano=100_000_000),
            request_frame(5, "Later", {}),
            request_frame(7, "Later", {}, timeout_nano=200_000_000),
        )
        expired = []
        for _ in range(3):
            frame = await peer.next_frame()
            assert status_of(frame) == (
                Code.DEADLINE_EXCEEDED,
                "deadline exceeded while serving the call",
            )
            expired.append((frame.stream_id, round(trio.current_time() - sent_at, 2)))
        assert expired == [(3, 0.1), (7, 0.2), (1, 0.3)]
        first, second, no_deadline, third = probe.responders
        assert first.abandoned and second.abandoned and third.abandoned
        first.ok("too late")  # nothing is sent
        assert not no_deadline.abandoned
        assert server.in_flight == 1
        # A later deadline brought while the timer sleeps for none still fires.
        await trio.sleep(2)
        [late] = await later_calls(peer, probe, 9, timeout_nano=50_000_000)
        await peer.expect_error(9, Code.DEADLINE_EXCEEDED)
        assert late.abandoned
        no_deadline.ok("kept")
        assert await peer.expect_ok(5) == {"value": "kept"}


async def test_a_deferred_call_answered_in_time_is_not_expired(
    nursery: trio.Nursery, sock_path: str, probe: Probe, autojump_clock: trio.testing.MockClock
):
    await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        [responder] = await later_calls(peer, probe, 1, timeout_nano=1_000_000_000)
        await trio.sleep(0.5)
        responder.ok("in time")
        assert await peer.expect_ok(1) == {"value": "in time"}
        await trio.sleep(1)
        assert await peer.call(3, "Echo", {"after": 1}) == {"after": 1}


async def test_many_deferred_calls_answered_early_do_not_pile_up_in_the_timer(
    nursery: trio.Nursery, sock_path: str, probe: Probe, autojump_clock: trio.testing.MockClock
):
    server, _ = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        for i in range(500):
            [responder] = await later_calls(peer, probe, 2 * i + 1, timeout_nano=60 * 10**9)
            responder.ok(i)
            assert await peer.expect_ok(2 * i + 1) == {"value": i}
        [conn] = server._open
        assert len(conn._deadlines) <= 2 * len(conn.calls) + 65


async def test_the_client_ends_a_deferred_call(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, _ = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        [responder] = await later_calls(peer, probe, 1)
        await peer.send(cancel_frame(1))
        assert await peer.expect_error(1, Code.CANCELLED) == "call ended by the client"
        assert responder.abandoned and server.in_flight == 0
        responder.ok("nobody listens")
        assert await peer.call(3, "Echo", {"n": 3}) == {"n": 3}


async def test_closing_the_connection_abandons_its_deferred_calls(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, _ = await start_server(nursery, sock_path, probe)
    peer = await Peer.connect(sock_path)
    responders = await later_calls(peer, probe, 1, 3, timeout_nano=10**9)
    await peer.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert all(r.abandoned for r in responders)
    assert server.in_flight == 0 and server.connections == 0
    for responder in responders:
        responder.ok("the connection is gone")  # no error, nothing sent
    async with connected(sock_path) as new:
        assert await new.call(1, "Echo", {"x": 1}) == {"x": 1}


async def test_deferred_calls_count_against_the_per_connection_limit(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe, max_calls_per_connection=2)
    async with connected(sock_path) as peer:
        first, _ = await later_calls(peer, probe, 1, 3)
        await peer.send_request(5, "Later", {})
        await peer.expect_error(5, Code.RESOURCE_EXHAUSTED)
        first.ok(1)
        assert await peer.expect_ok(1) == {"value": 1}
        [third] = await later_calls(peer, probe, 7)
        third.ok(3)
        assert await peer.expect_ok(7) == {"value": 3}


async def test_graceful_shutdown_waits_for_deferred_calls(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, stopped = await start_server(nursery, sock_path, probe)
    async with connected(sock_path) as peer:
        [responder] = await later_calls(peer, probe, 1)
        nursery.start_soon(server.shutdown, 60)
        await trio.testing.wait_all_tasks_blocked()
        await peer.send_request(3, "Later", {})
        await peer.expect_error(3, Code.UNAVAILABLE)
        assert not stopped.is_set()
        responder.ok("finished")
        assert await peer.expect_ok(1) == {"value": "finished"}
        await stopped.wait()
        assert await peer.frames_until_eof() == []


# -- 15. many connections --------------------------------------------------------------------


async def test_many_connections_interleaved(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    n_conns, n_calls, batch = 20, 50, 5
    peers = [await Peer.connect(sock_path) for _ in range(n_conns)]
    expected: dict[int, dict[int, Any]] = {c: {} for c in range(n_conns)}
    got: dict[int, dict[int, Any]] = {c: {} for c in range(n_conns)}
    bad_frames: list[tuple[int, Frame]] = []

    async def client(c: int, peer: Peer) -> None:
        for start in range(0, n_calls, batch):
            chunk = []
            for i in range(start, start + batch):
                sid = 2 * i + 1
                message = {"conn": c, "i": i, "pad": "z" * ((c + i) % 13)}
                expected[c][sid] = message
                chunk.append(request_frame(sid, "Echo" if (c + i) % 2 else "UnaryEcho", message))
            await peer.send(*chunk)
            await trio.lowlevel.checkpoint()
        for _ in range(n_calls):
            frame = await peer.next_frame()
            if frame.type != RESPONSE or frame.flags != 0 or frame.stream_id in got[c]:
                bad_frames.append((c, frame))
                continue
            got[c][frame.stream_id] = loads_message(decode_response(frame.payload))

    async with trio.open_nursery() as clients:
        for c, peer in enumerate(peers):
            clients.start_soon(client, c, peer)
    assert bad_frames == []
    assert got == expected
    for peer in peers:
        await peer.aclose()


# -- 16. one bad client never harms another --------------------------------------------------


def _junk_random() -> bytes:
    return random.Random(1234).randbytes(64 * 1024)


def _junk_small_frames() -> bytes:
    """Well-framed garbage: random stream ids, types, flags, payloads; then a torn header."""
    rng = random.Random(99)
    out = bytearray()
    for _ in range(500):
        payload = rng.randbytes(rng.randrange(0, 64))
        out += HEADER.pack(
            len(payload), rng.getrandbits(32), rng.randrange(256), rng.getrandbits(8)
        )
        out += payload
    return bytes(out + HEADER.pack(1000, 1, 1, 0)[:7])


def _junk_torn_frame() -> bytes:
    return request_frame(1, "Forever", {}) + HEADER.pack(1000, 3, 1, 0) + b"\xa2" * 10


def _junk_oversized_then_cut() -> bytes:
    return request_frame(1, "Forever", {}) + HEADER.pack(MAX_PAYLOAD * 8, 3, 1, 0) + b"\0" * 1000


JUNK = {
    "random": _junk_random(),
    "small-frames": _junk_small_frames(),
    "torn-frame": _junk_torn_frame(),
    "oversized-then-cut": _junk_oversized_then_cut(),
}


@pytest.mark.parametrize("junk", JUNK.values(), ids=JUNK.keys())
async def test_bad_client_does_not_harm_others(
    nursery: trio.Nursery, sock_path: str, probe: Probe, junk: bytes
):
    server, _ = await start_server(nursery, sock_path, probe)
    good = await Peer.connect(sock_path)
    bad = await Peer.connect(sock_path)
    results: list[Any] = []
    bad_done = trio.Event()

    async def bad_client() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            for k in range(0, len(junk), 4096):
                await bad.send(junk[k : k + 4096])
                await trio.lowlevel.checkpoint()
        await bad.aclose()
        bad_done.set()

    async def good_client() -> None:
        for i in range(100):
            method = "Echo" if i % 2 else "UnaryEcho"
            results.append(await good.call(2 * i + 1, method, {"i": i}))

    async with trio.open_nursery() as both:
        both.start_soon(bad_client)
        both.start_soon(good_client)
    assert results == [{"i": i} for i in range(100)]
    await bad_done.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == 1
    assert server.in_flight == 0
    # After the bad client is gone: the good connection and new ones still work.
    assert await good.call(1001, "Echo", {"after": True}) == {"after": True}
    async with connected(sock_path) as new:
        assert await new.call(1, "UnaryEcho", {"new": True}) == {"new": True}
    await good.aclose()
