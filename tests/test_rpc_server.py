"""The RPC server, spoken to in raw bytes: framing, dispatch and the limits of a connection.

Which frames come back, on which stream id, with which type, flags and status code, for good
requests, bad stream ids, oversized frames, unknown methods, hostile envelopes and failing
handlers; and that the connection, and the server, survive whatever a peer sends.

Spoken in raw bytes to a real server on a Unix socket, as ``probe_server.py`` tells.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any

import cbor2
import pytest
import trio
import trio.testing

from peers import Peer, end_frame, status_of
from probe_server import (
    DATA,
    REQUEST,
    RESPONSE,
    TEST,
    Probe,
    connect,
    raw_request_frame,
    request_frame,
    start_server,
)
from sandboxd import PROTOCOL_VERSION, __version__
from sandboxd.api import RUNTIME_SERVICE
from sandboxd.wire import (
    HEADER,
    MAX_PAYLOAD,
    Code,
    Frame,
    decode_response,
    dumps,
    encode_frame,
    encode_request,
    loads_message,
    loads_strict,
)

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0


# -- request/response basics -----------------------------------------------------------------


async def test_runtime_version_round_trip(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send_request(1, "Version", {}, service=RUNTIME_SERVICE)
        frame = await peer.next_frame()
        assert frame.stream_id == 1
        assert frame.type == RESPONSE == 2
        assert frame.flags == 0
        reply = loads_message(decode_response(frame.payload))
        assert reply.pop("limits")["max_calls_per_connection"] == 1024
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
    async with await connect(sock_path) as peer:
        await peer.send_request(1, method, message)
        frame = await peer.next_frame()
        assert (frame.stream_id, frame.type, frame.flags) == (1, RESPONSE, 0)
        assert loads_message(decode_response(frame.payload)) == message
        # An empty request payload is an empty message.
        assert await peer.call(3, method) == {}


async def test_call_context_seen_by_handler(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        reply = await peer.call(7, "Context", {}, metadata={"who": ["me", "you"]})
        assert reply == {
            "service": TEST,
            "method": "Context",
            "stream_id": 7,
            "metadata": {"who": ["me", "you"]},
        }


# -- client stream ids -----------------------------------------------------------------------


async def test_stream_ids_must_be_odd_and_increasing(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
        await peer.send_request(2, "Wait")
        await peer.expect_error(2, Code.INVALID_ARGUMENT)
        await trio.testing.wait_all_tasks_blocked()
        assert not probe.started.is_set()
        assert await peer.call(3, "Echo", {"ok": True}) == {"ok": True}


# -- frame size limit ------------------------------------------------------------------------


async def test_oversized_frame_is_refused_and_connection_survives(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
        # Garbage that begins with a CBOR map head: the connection speaks CBOR.
        garbage = b"\xa1" + b"\x00" * (MAX_PAYLOAD - 1)
        await peer.send(HEADER.pack(MAX_PAYLOAD, 1, REQUEST, 0), garbage)
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
    async with await connect(sock_path) as peer:
        await peer.send(raw_request_frame(1, big))
        assert await peer.expect_ok(1) == {"n": blob_size}
        assert await peer.call(3, "Echo", {"after": "big"}) == {"after": "big"}


# -- unknown service / method ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["Echo", "Nope"])
async def test_unknown_service(nursery: trio.Nursery, sock_path: str, probe: Probe, method: str):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send_request(1, method, {}, service="nope.v1.Nothing")
        message = await peer.expect_error(1, Code.UNIMPLEMENTED)
        assert "nope.v1.Nothing" in message
        assert await peer.call(3, "Echo", {"x": 1}) == {"x": 1}


async def test_unknown_method(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send_request(1, "NoSuchMethod", {})
        message = await peer.expect_error(1, Code.UNIMPLEMENTED)
        assert "NoSuchMethod" in message
        assert TEST in message
        # Method names are case-sensitive.
        await peer.send_request(3, "echo", {})
        assert "echo" in await peer.expect_error(3, Code.UNIMPLEMENTED)
        assert await peer.call(5, "Echo", {"x": 1}) == {"x": 1}


# -- malformed and hostile envelopes ---------------------------------------------------------


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
    async with await connect(sock_path) as peer:
        # The first request picks the connection's envelope (CBOR here) for its life.
        assert await peer.call(1, "Echo", {}) == {}
        await peer.send(raw_request_frame(3, envelope))
        await peer.expect_error(3, Code.INVALID_ARGUMENT)
        # PROTOCOL.md: an id that passed the id check counts as used, whatever happens next.
        await peer.send_request(3, "Echo", {})
        await peer.expect_error(3, Code.INVALID_ARGUMENT)
        assert await peer.call(5, "Echo", {"still": "works"}) == {"still": "works"}
        # The same garbage aimed at a unary method is refused the same way.
        unary_envelope = envelope.replace(b"Echo", b"Wait")
        await peer.send(raw_request_frame(7, unary_envelope))
        await peer.expect_error(7, Code.INVALID_ARGUMENT)
        assert not probe.started.is_set()
        assert await peer.call(9, "UnaryEcho", {"still": "works"}) == {"still": "works"}


async def test_all_malformed_envelopes_on_one_connection(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    """Every bad envelope in one write, interleaved with good calls: each gets its answer."""
    await start_server(nursery, sock_path, probe)
    # The first request picks the connection's envelope (CBOR here) for its life.
    chunks = [request_frame(1, "Echo", {"id": 1})]
    expected = [(1, Code.OK)]
    stream_id = 3
    for envelope in BAD_ENVELOPES.values():
        chunks.append(raw_request_frame(stream_id, envelope))
        expected.append((stream_id, Code.INVALID_ARGUMENT))
        chunks.append(request_frame(stream_id + 2, "Echo", {"id": stream_id + 2}))
        expected.append((stream_id + 2, Code.OK))
        stream_id += 4
    async with await connect(sock_path) as peer:
        await peer.send(*chunks)
        for sid, code in expected:
            if code == Code.OK:
                assert await peer.expect_ok(sid) == {"id": sid}
            else:
                await peer.expect_error(sid, code)


# -- handler exceptions ----------------------------------------------------------------------


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
    async with await connect(sock_path) as peer, await connect(sock_path) as other:
        await peer.send_request(1, method, {})
        for _ in range(data_frames):
            await peer.message(1)
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
        async with await connect(sock_path) as new:
            assert await new.call(1, "UnaryEcho", {"c": 1}) == {"c": 1}


async def test_rpc_error_from_unary_handler_keeps_its_status(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send_request(1, "NotFound", {})
        frame = await peer.response(1)
        envelope = loads_strict(frame.payload)
        assert envelope["status"] == {
            "code": Code.NOT_FOUND,
            "message": "no such thing",
            "details": ["thing", 7],
        }


# -- unknown frame types ---------------------------------------------------------------------


async def test_frames_of_unknown_type_are_ignored(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
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


# -- pipelining and out-of-order replies -----------------------------------------------------


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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
        await peer.send(request_frame(1, "Wait", {"a": 1}), request_frame(3, "Echo", {"b": 3}))
        assert await peer.expect_ok(3) == {"b": 3}
        await probe.started.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert await peer.call(5, "UnaryEcho", {"c": 5}) == {"c": 5}
        probe.release.set()
        assert await peer.expect_ok(1) == {"released": True, "a": 1}


# -- limits ---------------------------------------------------------------------------------


async def test_connection_over_the_limit_gets_resource_exhausted_on_stream_0(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, _ = await start_server(nursery, sock_path, probe, max_connections=2)
    async with await connect(sock_path) as first, await connect(sock_path) as second:
        assert await first.call(1, "Echo", {"c": 1}) == {"c": 1}
        assert await second.call(1, "Echo", {"c": 2}) == {"c": 2}
        async with await connect(sock_path) as third:
            [refusal] = await third.exchange(request_frame(1, "Echo", {"c": 3}))
            assert (refusal.stream_id, refusal.type, refusal.flags) == (0, RESPONSE, 0)
            assert status_of(refusal) == (
                Code.RESOURCE_EXHAUSTED,
                "too many connections to this server (limit 2)",
            )
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.connections == 1
        async with await connect(sock_path) as fourth:
            assert await fourth.call(1, "Echo", {"c": 4}) == {"c": 4}


async def test_calls_over_the_per_connection_limit_are_refused(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe, max_calls_per_connection=2)
    async with await connect(sock_path) as peer, await connect(sock_path) as other:
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
        await peer.send(end_frame(1))
        await peer.expect_error(1, Code.CANCELLED)
        assert await peer.call(11, "UnaryEcho", {"room": True}) == {"room": True}


# -- many connections ------------------------------------------------------------------------


async def test_many_connections_interleaved(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    n_conns, n_calls, batch = 20, 50, 5
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

    async with contextlib.AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(await connect(sock_path)) for _ in range(n_conns)]
        async with trio.open_nursery() as clients:
            for c, peer in enumerate(peers):
                clients.start_soon(client, c, peer)
    assert bad_frames == []
    assert got == expected


# -- one bad client never harms another ------------------------------------------------------


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
    async with await connect(sock_path) as good, await connect(sock_path) as bad:
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
        async with await connect(sock_path) as new:
            assert await new.call(1, "UnaryEcho", {"new": True}) == {"new": True}
