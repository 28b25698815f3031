"""Hostile and broken clients: every one holds a bounded share and none harms another.

Real sockets throughout.  The timeouts are checked under the autojump clock (the server binds
with a plain socket, so no thread confuses it): a client that leaves a frame half sent, or
leaves its replies unread while they are over the bound, is disconnected ``stall_timeout``
seconds later, while another client keeps being served.  The other limits (connections, calls
per connection) are refused with RESOURCE_EXHAUSTED, on stream 0 for a whole connection.

The last test is a storm: twenty connections throw hostile, truncated, oversized, random and
mutated frames at a Controller served with ``serve_controller`` while a well-behaved
RemoteController drives sandboxes through their lives.  It must see no error, and the
server's memory (tracemalloc) and connections must come back to where they were.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import random
import tracemalloc
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio.lowlevel
import trio.testing

from peers import Peer, request_frame, status_of
from sandboxd import ResourceExhausted, SandboxState
from sandboxd.api import (
    CONTROLLER_SERVICE,
    RUNTIME_SERVICE,
    _serve,
    connect,
    runtime_service,
    serve_controller,
)
from sandboxd.backends import SimBackend
from sandboxd.rpc import (
    CallContext,
    Limits,
    Message,
    MessageSender,
    Method,
    Server,
    inline,
    open_client,
    server_stream,
    unary,
)
from sandboxd.runtime import Controller
from sandboxd.wire import (
    HEADER,
    MAX_PAYLOAD,
    Code,
    FrameType,
    dumps,
    encode_frame,
    encode_request,
)

pytestmark = pytest.mark.usefixtures("watchdog")
TEST = "test.v1.Limits"
#: Seconds (virtual under the autojump clock) after which a test counts as hung: the idle
#: test sleeps 500.
GUARD = 1000.0
STALL = 5.0
KIB = 1024
REQUEST = FrameType.REQUEST
RESPONSE = FrameType.RESPONSE
DATA = FrameType.DATA


class Handlers:
    """The test service, and what the test sees of it."""

    def __init__(self) -> None:
        self.server: Server | None = None
        #: server.buffered_bytes as each Big request was served.
        self.buffered_seen: list[int] = []
        self.release = trio.Event()
        self.cancelled = 0

    def services(self) -> dict[str, Mapping[str, Method]]:
        def echo(message: Message, ctx: CallContext) -> Mapping[str, Any]:
            return message

        def big(message: Message, ctx: CallContext) -> Mapping[str, Any]:
            assert self.server is not None
            self.buffered_seen.append(self.server.buffered_bytes)
            return {"blob": b"x" * message["n"]}

        async def big_later(message: Message, ctx: CallContext) -> Mapping[str, Any]:
            await trio.sleep(message["after"])
            return {"blob": b"x" * message["n"]}

        async def hold(message: Message, ctx: CallContext) -> Mapping[str, Any]:
            await self.release.wait()
            return {}

        async def flood(message: Message, ctx: CallContext, stream: MessageSender) -> None:
            try:
                for i in range(message.get("count", 10**9)):
                    await stream.send({"i": i, "blob": b"x" * message["n"]})
            except trio.Cancelled:
                self.cancelled += 1
                raise

        return {
            TEST: {
                "Echo": inline(echo),
                "Big": inline(big),
                "BigLater": unary(big_later),
                "Hold": unary(hold),
                "Flood": server_stream(flood),
            },
            RUNTIME_SERVICE: runtime_service(),
        }


async def start(nursery: trio.Nursery, path: str, **options: Any) -> tuple[Server, Handlers]:
    handlers = Handlers()
    server = Server(handlers.services(), limits=Limits(**options))
    handlers.server = server
    assert await nursery.start(server.serve_unix, path) == path
    return server, handlers


#: A REQUEST frame to the test service.
request = partial(request_frame, service=TEST)


async def keep_calling(path: str, until: trio.Event, calls: list[float]) -> None:
    """A well-behaved client: one call every 0.25 s until ``until`` is set, then one more."""
    async with open_client(path) as client:
        i = 0
        while not until.is_set():
            assert await client.call(TEST, "Echo", {"i": i}) == {"i": i}
            calls.append(trio.current_time())
            i += 1
            await trio.sleep(0.25)
        assert await client.call(TEST, "Echo", {"after": True}) == {"after": True}


async def wait_for(predicate: Callable[[], bool], step: float = 0.01) -> float:
    """Poll ``predicate`` every ``step`` (virtual) seconds; the time it first held."""
    while not predicate():  # noqa: ASYNC110 (server counters have no event to wait on)
        await trio.sleep(step)
    return trio.current_time()


async def test_defaults_are_documented_values() -> None:
    limits = Limits()
    assert limits.max_connections == 1024
    assert limits.max_calls_per_connection == 1024
    assert limits.max_buffered_bytes == 8 * 1024 * 1024
    assert limits.stall_timeout == 30.0
    text = (Path(__file__).parent.parent / "docs" / "wire.md").read_text()
    assert "| stall timeout" in text and "30 seconds" in text


@pytest.mark.parametrize(
    "option",
    ["max_connections", "max_calls_per_connection", "max_buffered_bytes", "stall_timeout"],
)
async def test_limits_must_be_positive(option: str) -> None:
    with pytest.raises(ValueError, match=option):
        Limits(**{option: 0})


# -- a frame left unfinished -------------------------------------------------------------------


async def test_half_frame_staller_is_disconnected_after_stall_timeout_while_others_work(
    nursery: trio.Nursery,
    sock_path: str,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
):
    server, _ = await start(nursery, sock_path, stall_timeout=STALL)
    done = trio.Event()
    calls: list[float] = []
    nursery.start_soon(keep_calling, sock_path, done, calls)
    frame = request(1, "Echo", {"pad": "z" * 100})
    with caplog.at_level(logging.WARNING, logger="sandboxd.rpc"):
        async with await Peer.connect(sock_path) as staller:
            await staller.send(frame[: len(frame) // 2])
            began = trio.current_time()
            assert await staller.frames_until_eof() == []
            cut = trio.current_time()
    assert STALL <= cut - began < STALL + 0.1
    # The well-behaved client was served all along, and still is.
    assert len(calls) >= 4 * STALL - 1
    done.set()
    await wait_for(lambda: server.connections == 0)
    assert "left a frame unfinished for 5 s" in caplog.text
    assert f"pid {os.getpid()}" in caplog.text


async def test_a_frame_trickled_byte_by_byte_is_cut_at_stall_timeout_from_its_first_byte(
    nursery: trio.Nursery, sock_path: str, autojump_clock: trio.testing.MockClock
):
    await start(nursery, sock_path, stall_timeout=STALL)
    frame = request(1, "Echo", {"pad": "z" * 100})
    async with await Peer.connect(sock_path) as trickler:
        began = trio.current_time()
        with contextlib.suppress(trio.BrokenResourceError):
            for i in range(len(frame)):
                await trickler.send(frame[i : i + 1])
                await trio.sleep(1)
        assert await trickler.frames_until_eof() == []
        assert STALL <= trio.current_time() - began <= STALL + 1.1


async def test_frames_finished_in_time_restart_the_clock_and_idle_is_not_stalling(
    nursery: trio.Nursery, sock_path: str, autojump_clock: trio.testing.MockClock
):
    server, _ = await start(nursery, sock_path, stall_timeout=STALL)
    async with await Peer.connect(sock_path) as slow:
        for stream_id in (1, 3, 5):
            frame = request(stream_id, "Echo", {"n": stream_id})
            await slow.send(frame[:20])
            await trio.sleep(0.8 * STALL)
            await slow.send(frame[20:])
            reply = await slow.next_frame()
            assert (reply.stream_id, status_of(reply)) == (stream_id, (Code.OK, ""))
        # A connection with nothing unfinished may stay idle as long as it likes.
        await trio.sleep(100 * STALL)
        await slow.send(request(7, "Echo", {}))
        assert (await slow.next_frame()).stream_id == 7
    await wait_for(lambda: server.connections == 0)


async def test_oversized_frame_that_stops_short_is_refused_then_cut(
    nursery: trio.Nursery, sock_path: str, autojump_clock: trio.testing.MockClock
):
    await start(nursery, sock_path, stall_timeout=STALL)
    async with await Peer.connect(sock_path) as liar:
        await liar.send(HEADER.pack(MAX_PAYLOAD * 64, 1, REQUEST, 0) + b"\0" * 1000)
        began = trio.current_time()
        [refusal] = await liar.frames_until_eof()
        assert (refusal.stream_id, status_of(refusal)[0]) == (1, Code.RESOURCE_EXHAUSTED)
        assert STALL <= trio.current_time() - began < STALL + 0.1


# -- replies left unread -------------------------------------------------------------------------


async def test_client_that_never_reads_is_cut_after_stall_timeout_with_bounded_buffers(
    nursery: trio.Nursery,
    sock_path: str,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
):
    limit, reply, batch = 256 * KIB, 64 * KIB, 4
    server, handlers = await start(
        nursery, sock_path, stall_timeout=STALL, max_buffered_bytes=limit
    )
    done = trio.Event()
    calls: list[float] = []
    nursery.start_soon(keep_calling, sock_path, done, calls)
    over_at = math.nan
    most = 0

    async def watch() -> None:
        nonlocal over_at, most
        while True:
            most = max(most, server.buffered_bytes)
            if server.buffered_bytes > limit and math.isnan(over_at):
                over_at = trio.current_time()
            await trio.sleep(0.01)

    nursery.start_soon(watch)
    sent = 0
    with caplog.at_level(logging.WARNING, logger="sandboxd.rpc"):
        async with await Peer.connect(sock_path) as hog:
            with contextlib.suppress(trio.BrokenResourceError):
                for k in range(10_000):
                    ids = range(2 * batch * k + 1, 2 * batch * (k + 1) + 1, 2)
                    await hog.send(b"".join(request(i, "Big", {"n": reply}) for i in ids))
                    sent += batch
                    await trio.sleep(0.1)  # the server reads each batch on its own
            cut = await wait_for(lambda: server.connections == 1)
    assert not math.isnan(over_at), "the replies never went over the bound"
    assert STALL - 0.02 <= cut - over_at <= STALL + 0.12
    # Never more than the bound plus the replies to one read's requests.
    frame = len(encode_frame(1, RESPONSE, 0, b"\0" * (reply + 32)))
    assert max(handlers.buffered_seen) <= limit + batch * frame
    assert most <= limit + batch * frame
    assert sent < 1000  # the server stopped reading: the hog's sends blocked
    assert server.buffered_bytes == 0
    assert len(calls) >= 4 * STALL
    done.set()
    await wait_for(lambda: server.connections == 0)
    assert "bytes of replies unread for 5 s" in caplog.text


async def test_replies_of_calls_piling_up_while_the_client_idles_are_timed_too(
    nursery: trio.Nursery, sock_path: str, autojump_clock: trio.testing.MockClock
):
    """Nobody reads here when the bound is crossed (the calls' tasks write the replies while
    the reader waits for requests): the transport's own timer ends it."""
    limit = 256 * KIB
    server, _ = await start(nursery, sock_path, stall_timeout=STALL, max_buffered_bytes=limit)
    async with await Peer.connect(sock_path) as hog:
        await hog.send(
            b"".join(
                request(2 * i + 1, "BigLater", {"n": 64 * KIB, "after": 1}) for i in range(20)
            )
        )
        began = trio.current_time()
        cut = await wait_for(lambda: server.connections == 0)
        assert 1 + STALL <= cut - began <= 1 + STALL + 0.05
        assert server.in_flight == 0


async def test_stream_to_a_client_that_never_reads_is_cut(
    nursery: trio.Nursery, sock_path: str, autojump_clock: trio.testing.MockClock
):
    limit = 256 * KIB
    server, handlers = await start(
        nursery, sock_path, stall_timeout=STALL, max_buffered_bytes=limit
    )
    async with await Peer.connect(sock_path) as hog:
        await hog.send(request(1, "Flood", {"n": 64 * KIB}))
        began = trio.current_time()
        cut = await wait_for(lambda: server.connections == 0)
        assert STALL <= cut - began <= STALL + 0.05
    assert handlers.cancelled == 1


async def test_a_slow_but_steady_reader_is_not_cut(
    nursery: trio.Nursery, sock_path: str, autojump_clock: trio.testing.MockClock
):
    limit, n, count = 256 * KIB, 64 * KIB, 100
    server, _ = await start(nursery, sock_path, stall_timeout=STALL, max_buffered_bytes=limit)
    async with await Peer.connect(sock_path) as reader:
        await reader.send(request(1, "Flood", {"n": n, "count": count}))
        got = 0
        ended = False
        began = trio.current_time()
        while not ended:
            # 64 KiB every 50 ms: 1.3 MB/s
            assert await reader.read_some(64 * KIB), "the server cut a client that reads"
            for frame in reader.received():
                if frame.flags & 0x01:
                    ended = True
                else:
                    got += 1
            await trio.sleep(0.05)
        assert got == count
        assert trio.current_time() - began > STALL  # long enough to have been cut if unfair
    await wait_for(lambda: server.connections == 0)


# -- connections and calls -----------------------------------------------------------------------


async def test_connections_over_the_limit_get_resource_exhausted_on_stream_0(
    nursery: trio.Nursery, sock_path: str, caplog: pytest.LogCaptureFixture
):
    server, _ = await start(nursery, sock_path, max_connections=2)
    async with open_client(sock_path) as first, open_client(sock_path) as second:
        assert await first.call(TEST, "Echo", {"c": 1}) == {"c": 1}
        assert await second.call(TEST, "Echo", {"c": 2}) == {"c": 2}
        with caplog.at_level(logging.WARNING, logger="sandboxd.rpc"):
            async with await Peer.connect(sock_path) as third:
                [refusal] = await third.exchange(request(1, "Echo", {}))
        assert (refusal.stream_id, refusal.type, refusal.flags) == (0, RESPONSE, 0)
        assert status_of(refusal) == (
            Code.RESOURCE_EXHAUSTED,
            "too many connections to this server (limit 2)",
        )
        assert "2 connections open" in caplog.text
        async with open_client(sock_path) as fourth:
            with pytest.raises(ResourceExhausted, match="too many connections"):
                await fourth.call(TEST, "Echo", {})
            with pytest.raises(ResourceExhausted, match="too many connections"):
                await fourth.call(TEST, "Echo", {})
        assert server.connections == 2
    await wait_for(lambda: server.connections == 0)
    async with open_client(sock_path) as again:
        assert await again.call(TEST, "Echo", {"again": True}) == {"again": True}


async def test_calls_over_the_per_connection_limit_get_resource_exhausted_on_their_stream(
    nursery: trio.Nursery, sock_path: str
):
    server, handlers = await start(nursery, sock_path, max_calls_per_connection=3)
    async with await Peer.connect(sock_path) as peer, open_client(sock_path) as other:
        await peer.send(b"".join(request(i, "Hold", {}) for i in (1, 3, 5, 7, 9)))
        refused = [await peer.next_frame(), await peer.next_frame()]
        assert [(f.stream_id, status_of(f)[0]) for f in refused] == [
            (7, Code.RESOURCE_EXHAUSTED),
            (9, Code.RESOURCE_EXHAUSTED),
        ]
        assert "limit 3" in status_of(refused[0])[1]
        assert server.in_flight == 3
        # The connection, and every other, is still served.
        await peer.send(request(11, "Echo", {"still": True}))
        assert status_of(await peer.next_frame()) == (Code.OK, "")
        assert await other.call(TEST, "Echo", {"other": True}) == {"other": True}
        handlers.release.set()
        assert sorted([(await peer.next_frame()).stream_id for _ in range(3)]) == [1, 3, 5]


# -- a storm of hostile clients ------------------------------------------------------------------

C = CONTROLLER_SERVICE
#: Real seconds the storm lasts, and the connections throwing it.
STORM_SECONDS = 3.0
STORMERS = 20
#: What the server may keep (tracemalloc) once the storm is over, and at its height.
MEMORY_AFTER = 32 * 1024 * 1024
MEMORY_PEAK = 64 * 1024 * 1024

HOSTILE_CBOR = [
    b"\x9f" * 2000,  # indefinite arrays, never closed
    b"\x9f\x01\x02\xff",  # an indefinite array, closed
    b"\x5f\x41a\xff",  # indefinite byte string
    b"\x7f\x61a\xff",  # indefinite text string
    b"\xbf\x61a\x01\xff",  # indefinite map
    b"\x81" * 5000 + b"\x00",  # arrays nested 5000 deep
    b"\xa1\x61a" * 3000 + b"\x00",  # maps nested 3000 deep
    b"\x81" * 32 + b"\x00",  # exactly at the depth limit
    b"\xd8\x1c\x81\xd8\x1d\x00",  # shareable, shared reference (28, 29)
    b"\xd9\x01\x00\x82\x63abc\xd8\x19\x00",  # string references (256, 25)
    b"\xd9\xd9\xf7\xa0",  # self-describe
    b"\xc2\x5a\xff\xff\xff\xff",  # a bignum of 4 GiB
    b"\x5b" + b"\xff" * 8,  # a byte string of 2**64 - 1 bytes
    b"\x7b" + b"\xff" * 8,  # a text string of 2**64 - 1 bytes
    b"\x9b" + b"\xff" * 8,  # an array of 2**64 - 1 items
    b"\xbb" + b"\xff" * 8,  # a map of 2**64 - 1 pairs
    b"\x9a\xff\xff\xff\xff" + b"\x00" * 64,  # an array of 4G items, 64 given
    b"\xa2\x61a\x00\x61a\x01",  # duplicate keys
    b"\xa0\x00",  # trailing bytes
    b"\x62\xc3\x28",  # invalid UTF-8
    b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
    b"\xff",  # a lone break
    b"\x1c",  # a reserved additional-information value
    b"",
]


def _envelope(fields: Mapping[Any, Any]) -> bytes:
    return cbor2.dumps(dict(fields))


def _templates() -> list[bytes]:
    """Valid request payloads (envelopes) the mutators start from."""
    bodies: list[tuple[str, str, dict[str, Any]]] = [
        (C, "Create", {"sandbox_id": "fz-a", "sandboxer": "sim"}),
        (C, "Start", {"sandbox_id": "fz-a"}),
        (C, "Status", {"sandbox_id": "fz-a", "verbose": True}),
        (C, "Stop", {"sandbox_id": "fz-a", "timeout_secs": 0}),
        (C, "Wait", {"sandbox_id": "fz-a"}),
        (C, "Shutdown", {"sandbox_id": "fz-a"}),
        (C, "Ping", {"sandbox_id": "fz-a"}),
        (C, "Platform", {"sandbox_id": "fz-a"}),
        (C, "Metrics", {"sandbox_id": "fz-a"}),
        (C, "List", {"labels": {"k": "v"}}),
        (C, "Events", {}),
        (RUNTIME_SERVICE, "Version", {}),
    ]
    return [
        encode_request(service, method, dumps(body), 10**9, {"who": ["fuzz"]})
        for service, method, body in bodies
    ]


TEMPLATES = _templates()


def _hostile_envelopes(rng: random.Random) -> bytes:
    hostile = rng.choice(HOSTILE_CBOR)
    method = rng.choice(["Create", "Status", "Stop", "Wait", "List", "Events", "Nope"])
    return rng.choice(
        [
            hostile,
            encode_request(C, method, hostile),
            _envelope({"service": C, "method": method, "payload": hostile}),
            _envelope({"service": C, "method": method, "timeout_nano": 2**64 - 1}),
            _envelope({"service": C, "method": method, "timeout_nano": -1}),
            _envelope({"service": C, "method": method, "metadata": {"k": [1, 2]}}),
            _envelope({"service": C, "method": method, "metadata": {1: ["x"]}}),
            _envelope({"service": C, "method": method, "extra": True}),
            _envelope({"service": b"bytes", "method": None}),
            _envelope({"service": C, "method": method, "payload": dumps([1, 2, 3])}),
            _envelope({"service": C, "method": method, "payload": dumps({1: 2})}),
            _envelope(
                {"service": C, "method": "Create", "payload": dumps({"sandbox_id": "x" * 5000})}
            ),
        ]
    )


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        kind = rng.randrange(5)
        pos = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        elif kind == 2:
            del out[pos : pos + rng.randrange(1, 16)]
        elif kind == 3:
            out[pos:pos] = out[pos : pos + rng.randrange(1, 64)]
        else:
            out[pos : pos + 1] = bytes([rng.choice([0x00, 0x1F, 0x5B, 0x7F, 0x9F, 0xBF, 0xFF])])
    return bytes(out)


class Stormer:
    """One hostile client: sessions of random frames, each on a fresh connection."""

    def __init__(self, path: str, seed: int) -> None:
        self.path = path
        self.seed = seed
        self.rng = random.Random(seed)
        self.next_id = 1
        self.sessions = 0
        self.sent = 0

    def _frame(self, payload: bytes, frame_type: int = REQUEST, flags: int = 0) -> bytes:
        rng = self.rng
        stream_id = self.next_id
        self.next_id += 2
        if rng.random() < 0.05:
            stream_id = rng.choice([0, 2, 1, 2**32 - 1, rng.getrandbits(32)])
        return HEADER.pack(len(payload), stream_id, frame_type, flags) + payload

    def action(self) -> tuple[bytes, str]:
        """Bytes to send, and what to do after: "go" on, "close", or "stall"."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.25:
            return self._frame(_hostile_envelopes(rng)), "go"
        if roll < 0.50:
            frame = self._frame(rng.choice(TEMPLATES))
            return (
                _mutate(rng, frame)
                if rng.random() < 0.5
                else frame[:10] + _mutate(rng, frame[10:])
            ), "go"
        if roll < 0.60:
            return self._frame(rng.choice(TEMPLATES)), "go"
        if roll < 0.68:
            frame = self._frame(rng.choice(TEMPLATES))
            return frame[: rng.randrange(1, len(frame))], rng.choice(["go", "close", "stall"])
        if roll < 0.74:
            length = rng.choice([MAX_PAYLOAD + 1, MAX_PAYLOAD * 16, 2**32 - 1])
            head = HEADER.pack(length, self.next_id, rng.choice([REQUEST, DATA, 7]), 0)
            self.next_id += 2
            return head + rng.randbytes(rng.randrange(0, 4096)), "close"
        if roll < 0.80:
            return rng.randbytes(rng.randrange(1, 4096)), "go"
        if roll < 0.86:
            stream_id = rng.randrange(1, self.next_id + 2)
            return HEADER.pack(0, stream_id, DATA, rng.getrandbits(8)), "go"
        if roll < 0.92:
            payload = rng.randbytes(rng.randrange(0, 256))
            return self._frame(payload, rng.choice([RESPONSE, DATA, 0, 4, 255])), "go"
        # A frame of up to 1 MiB, sent in full: the decoder must hold it, then let it go.
        size = rng.randrange(64 * KIB, 1024 * KIB)
        return self._frame(b"\xa0" * size), "go"

    async def session(self) -> None:
        self.sessions += 1
        rng = self.rng
        reads = rng.random() < 0.8
        self.next_id = 1
        stream = await trio.open_unix_socket(self.path)
        ended = trio.Event()

        async def drain() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while await stream.receive_some(1 << 20):
                    pass
            ended.set()

        async with stream, trio.open_nursery() as nursery:
            if reads:
                nursery.start_soon(drain)
            try:
                for _ in range(rng.randrange(1, 60)):
                    data, then = self.action()
                    await stream.send_all(data)
                    self.sent += 1
                    if then == "close":
                        break
                    if then == "stall":
                        # The server cuts it after its stall timeout (or the storm ends first).
                        with trio.move_on_after(2):
                            await (ended.wait() if reads else drain())
                        break
                    if rng.random() < 0.3:
                        await trio.lowlevel.checkpoint()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # cut by the server
            nursery.cancel_scope.cancel()

    async def run(self) -> None:
        while True:
            await self.session()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_storm_of_hostile_clients_leaves_a_good_client_served_and_memory_bounded(
    nursery: trio.Nursery,
    sock_path: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    servers: list[Server] = []

    def recording_server(*args: Any, **kwargs: Any) -> Server:
        server = Server(*args, **kwargs)
        servers.append(server)
        return server

    monkeypatch.setattr(_serve, "Server", recording_server)
    seed = int(os.environ.get("SANDBOXD_STORM_SEED", "20261128"))
    caplog.set_level(logging.WARNING, logger="sandboxd.rpc")
    tracemalloc.start()
    try:
        controller: Controller = await nursery.start(
            Controller([SimBackend()], default_sandboxer="sim").run
        )
        await nursery.start(
            partial(
                serve_controller,
                controller,
                sock_path,
                limits=Limits(
                    stall_timeout=1.0, max_buffered_bytes=1024 * KIB, max_calls_per_connection=64
                ),
            )
        )
        [server] = servers
        cycles = 0

        async with connect(sock_path) as good:

            async def lifecycle(n: int) -> None:
                sandbox_id = f"good-{n}"
                assert await good.create(sandbox_id, sandboxer="sim") == sandbox_id
                await good.start(sandbox_id)
                assert (await good.status(sandbox_id)).state is SandboxState.READY
                await good.stop(sandbox_id)
                assert (await good.wait(sandbox_id)).exit_status is not None
                await good.shutdown(sandbox_id)

            # Warm up: everything a cycle and a hostile session allocate once and keep
            # (caches, interned strings, lazily built tables) is counted before, not after.
            await lifecycle(999999)
            with trio.move_on_after(0.5):
                await Stormer(sock_path, seed - 1).run()
            await wait_for(lambda: server.connections == 1)
            gc.collect()
            fds_before = _open_fds()
            memory_before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()

            stormers = [Stormer(sock_path, seed + i) for i in range(STORMERS)]
            storm_over = trio.Event()

            async def well_behaved() -> None:
                nonlocal cycles
                while not storm_over.is_set():
                    await lifecycle(cycles)
                    cycles += 1
                await lifecycle(cycles)  # and once more, after the storm
                cycles += 1

            async with trio.open_nursery() as storm:
                storm.start_soon(well_behaved)
                with trio.move_on_after(STORM_SECONDS):
                    async with trio.open_nursery() as hostile:
                        for stormer in stormers:
                            hostile.start_soon(stormer.run)
                storm_over.set()
            _, memory_peak = tracemalloc.get_traced_memory()

            with trio.fail_after(10):
                await wait_for(lambda: server.connections == 1)
            assert server.in_flight == 0
            assert server.buffered_bytes == 0
            gc.collect()
            memory_after, _ = tracemalloc.get_traced_memory()
            fds_after = _open_fds()
            assert [
                s.sandbox_id for s in await good.list() if s.sandbox_id.startswith("good-")
            ] == []
    finally:
        tracemalloc.stop()

    sessions = sum(s.sessions for s in stormers)
    frames = sum(s.sent for s in stormers)
    stalls = caplog.text.count("left a frame unfinished")
    note = (
        f"seed {seed}: {sessions} sessions, {frames} sends, {stalls} cut for stalling, "
        f"{cycles} good cycles, memory {memory_before} -> peak {memory_peak} -> {memory_after}"
    )
    print(note)
    assert cycles >= 3, note
    assert sessions > STORMERS, note
    assert memory_after - memory_before < MEMORY_AFTER, note
    assert memory_peak - memory_before < MEMORY_PEAK, note
    assert fds_after == fds_before, note
    assert stalls >= 1, note
    # Nothing a client sent made a handler fail unexpectedly.
    assert "Traceback" not in caplog.text, caplog.text
