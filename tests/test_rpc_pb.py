"""The RPC server and clients in the protobuf envelope, on a real socket.

A toy service whose handlers deal in raw protobuf bytes, as a protobuf service does, is served
next to the CBOR test services; connections speak whichever envelope their first request
picks.  Clients are the project's (trio, and the blocking one in a thread) and a raw peer
for what only bytes can show.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import trio

from peers import Peer
from probe_server import Probe, make_services
from sandboxd.rpc import (
    CallContext,
    Limits,
    Method,
    RawMessageSender,
    RawMessageStream,
    Responder,
    Server,
    SyncClient,
    bidi_stream,
    client_stream,
    deferred,
    inline,
    open_aio_client,
    open_client,
    server_stream,
    unary,
)
from sandboxd.wire import (
    ERROR_DETAIL_TYPE_URL,
    HEADER,
    MAX_PAYLOAD,
    FailedPrecondition,
    FrameType,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RPCError,
    Unimplemented,
    decode_response,
    encode_frame,
    encode_pb_request,
    encode_request,
    pb_response_payload,
)

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0

TOY = "toy.v1.Toy"
CBOR_TEST = "test.v1.Probe"
DETAILS = (
    {"field": "name", "why": "unknown"},
    {"type_url": "type.googleapis.com/google.rpc.ErrorInfo", "value": b"\x0a\x03why"},
)


class Toy:
    """What a test sees of the toy service's handlers."""

    def __init__(self) -> None:
        self.deadlines: list[float] = []
        self.responders: list[Responder] = []
        self.deferred_arrived = trio.Event()


def toy_services(toy: Toy) -> dict[str, dict[str, Method]]:
    def echo(message: bytes, ctx: CallContext) -> bytes:
        assert type(message) is bytes
        return message

    async def unary_echo(message: bytes, ctx: CallContext) -> bytes:
        await trio.lowlevel.checkpoint()
        return b"unary:" + message

    def deadline(message: bytes, ctx: CallContext) -> bytes:
        toy.deadlines.append(ctx.deadline)
        return b""

    def fail(message: bytes, ctx: CallContext) -> bytes:
        raise NotFound("no such thing", details=DETAILS)

    def big(message: bytes, ctx: CallContext) -> bytes:
        return b"x" * (MAX_PAYLOAD + 1)

    def not_bytes(message: bytes, ctx: CallContext) -> Any:
        return {"a": 1}

    def later(message: bytes, ctx: CallContext, responder: Responder) -> None:
        toy.responders.append(responder)
        toy.deferred_arrived.set()

    async def count(message: bytes, ctx: CallContext, stream: RawMessageSender) -> bytes:
        for byte in message:
            await stream.send(bytes([byte]))
        return b"end"

    async def join(message: bytes, ctx: CallContext, stream: RawMessageStream) -> bytes:
        parts = [message]
        async for part in stream:
            assert type(part) is bytes
            parts.append(part)
        return b"".join(parts)

    async def shout(message: bytes, ctx: CallContext, stream: RawMessageStream) -> None:
        while (part := await stream.receive()) is not None:
            await stream.send(part.upper())

    return {
        TOY: {
            "Echo": inline(echo),
            "UnaryEcho": unary(unary_echo),
            "Deadline": inline(deadline),
            "Fail": inline(fail),
            "Big": inline(big),
            "NotBytes": inline(not_bytes),
            "Later": deferred(later, lambda value: b"later:" + value),
            "Count": server_stream(count),
            "Join": client_stream(join),
            "Shout": bidi_stream(shout),
        }
    }


async def start(nursery: trio.Nursery, path: str, toy: Toy) -> Server:
    server = Server(make_services(Probe()), protobuf_services=toy_services(toy), limits=Limits())
    assert await nursery.start(server.serve_unix, path) == path
    return server


@pytest.fixture
def toy() -> Toy:
    return Toy()


def pb_frame(stream_id: int, method: str, payload: bytes = b"", **kw: Any) -> bytes:
    envelope = encode_pb_request(kw.pop("service", TOY), method, payload, **kw)
    return encode_frame(stream_id, FrameType.REQUEST, 0, envelope)


async def pb_response(peer: Peer, stream_id: int) -> bytes:
    """The payload of the next frame, a protobuf RESPONSE on ``stream_id`` (or its error)."""
    frame = await peer.response(stream_id)
    return pb_response_payload(frame.payload)


async def pb_error(peer: Peer, stream_id: int) -> RPCError:
    with pytest.raises(RPCError) as info:
        await pb_response(peer, stream_id)
    return info.value


# -- unary and deferred calls ----------------------------------------------------------------


async def test_unary_calls_take_and_give_raw_bytes(
    nursery: trio.Nursery, sock_path: str, toy: Toy
):
    await start(nursery, sock_path, toy)
    async with open_client(sock_path, envelope="protobuf") as client:
        assert await client.call_encoded(TOY, "Echo", b"\x0a\x02hi") == b"\x0a\x02hi"
        assert await client.call_encoded(TOY, "Echo") == b""
        assert await client.call_encoded(TOY, "UnaryEcho", b"x", timeout=5) == b"unary:x"
        # The methods that speak in mappings are for CBOR connections.
        with pytest.raises(FailedPrecondition, match="bytes"):
            await client.call(TOY, "Echo", {"a": 1})


async def test_deferred_calls_answer_with_the_bytes_of_result(
    nursery: trio.Nursery, sock_path: str, toy: Toy
):
    await start(nursery, sock_path, toy)
    async with open_client(sock_path, envelope="protobuf") as client, trio.open_nursery() as calls:
        got: list[Any] = []

        async def call() -> None:
            try:
                got.append(await client.call_encoded(TOY, "Later", b"q"))
            except RPCError as err:
                got.append(err)

        calls.start_soon(call)
        await toy.deferred_arrived.wait()
        toy.responders[0].ok(b"a")
        toy.deferred_arrived = trio.Event()
        calls.start_soon(call)
        await toy.deferred_arrived.wait()
        toy.responders[1].fail(NotFound("gone"))
    assert got[0] == b"later:a"
    assert type(got[1]) is NotFound and got[1].message == "gone"


async def test_handler_errors_and_bad_results(nursery: trio.Nursery, sock_path: str, toy: Toy):
    await start(nursery, sock_path, toy)
    async with open_client(sock_path, envelope="protobuf") as client:
        with pytest.raises(NotFound) as info:
            await client.call_encoded(TOY, "Fail", b"")
        assert (info.value.message, info.value.details) == ("no such thing", DETAILS)
        with pytest.raises(Internal, match="cannot encode response"):
            await client.call_encoded(TOY, "NotBytes")
        assert await client.call_encoded(TOY, "Echo", b"still") == b"still"


async def test_status_details_are_anys_on_the_wire(
    nursery: trio.Nursery, sock_path: str, toy: Toy
):
    await start(nursery, sock_path, toy)
    async with await Peer.connect(sock_path) as peer:
        await peer.send(pb_frame(1, "Fail"))
        frame = await peer.response(1)
        # Response.status (1) holds code 5, the message, then one Any per detail.
        assert frame.payload.startswith(b"\x0a")
        assert ERROR_DETAIL_TYPE_URL.encode() in frame.payload
        assert b"type.googleapis.com/google.rpc.ErrorInfo\x12\x05\x0a\x03why" in frame.payload
        with pytest.raises(NotFound) as info:
            pb_response_payload(frame.payload)
        assert info.value.details == DETAILS


# -- what only bytes show --------------------------------------------------------------------


async def test_unknown_service_or_method_is_unimplemented(
    nursery: trio.Nursery, sock_path: str, toy: Toy
):
    await start(nursery, sock_path, toy)
    async with open_client(sock_path, envelope="protobuf") as client:
        with pytest.raises(Unimplemented, match=r"unknown service 'nope\.v1\.X'"):
            await client.call_encoded("nope.v1.X", "Echo", b"")
        with pytest.raises(Unimplemented, match=f"unknown method 'Nope' of service '{TOY}'"):
            await client.call_encoded(TOY, "Nope", b"")
        # The CBOR services are not served to a protobuf connection.
        with pytest.raises(Unimplemented):
            await client.call_encoded(CBOR_TEST, "Echo", b"")


async def test_an_empty_payload_is_a_protobuf_request_with_every_field_default(
    nursery: trio.Nursery, sock_path: str, toy: Toy
):
    await start(nursery, sock_path, toy)
    async with await Peer.connect(sock_path) as peer:
        await peer.send(encode_frame(1, FrameType.REQUEST, 0, b""))
        err = await pb_error(peer, 1)
        assert type(err) is Unimplemented and err.message == "unknown service ''"
        # The connection is a protobuf one from now on.
        await peer.send(pb_frame(3, "Echo", b"ok"))
        assert await pb_response(peer, 3) == b"ok"


@pytest.mark.parametrize(
    ("timeout_nano", "finite"), [(0, False), (-1, False), (-(2**63), False), (10**9, True)]
)
async def test_timeout_nano_of_zero_or_less_is_no_deadline(
    nursery: trio.Nursery, sock_path: str, toy: Toy, timeout_nano: int, finite: bool
):
    await start(nursery, sock_path, toy)
    async with await Peer.connect(sock_path) as peer:
        await peer.send(pb_frame(1, "Deadline", timeout_nano=timeout_nano))
        assert await pb_response(peer, 1) == b""
    [deadline] = toy.deadlines
    assert (deadline != math.inf) is finite


async def test_oversized_and_malformed_requests_are_answered_in_protobuf(
    nursery: trio.Nursery, sock_path: str, toy: Toy
):
    await start(nursery, sock_path, toy)
    async with await Peer.connect(sock_path) as peer:
        await peer.send(pb_frame(1, "Echo", b"first"))
        assert await pb_response(peer, 1) == b"first"
        await peer.send(
            HEADER.pack(MAX_PAYLOAD + 1, 3, FrameType.REQUEST, 0), b"\x00" * (MAX_PAYLOAD + 1)
        )
        assert type(await pb_error(peer, 3)) is ResourceExhausted
        await peer.send(pb_frame(5, "Big"))
        err = await pb_error(peer, 5)
        assert type(err) is ResourceExhausted and "frame limit" in err.message
        await peer.send(encode_frame(7, FrameType.REQUEST, 0, b"\x0a\x05ab"))
        err = await pb_error(peer, 7)
        assert type(err) is InvalidArgument and "truncated" in err.message
        await peer.send(pb_frame(9, "Echo", b"after"))
        assert await pb_response(peer, 9) == b"after"


async def test_a_connection_cannot_switch_envelopes(
    nursery: trio.Nursery, sock_path: str, toy: Toy
):
    await start(nursery, sock_path, toy)
    cbor_request = encode_request(CBOR_TEST, "Echo", b"")
    async with await Peer.connect(sock_path) as peer:
        await peer.send(pb_frame(1, "Echo", b"pb"))
        assert await pb_response(peer, 1) == b"pb"
        # A CBOR request is read as protobuf, and refused in protobuf.
        await peer.send(encode_frame(3, FrameType.REQUEST, 0, cbor_request))
        assert type(await pb_error(peer, 3)) is InvalidArgument
    async with await Peer.connect(sock_path, service=CBOR_TEST) as peer:
        assert await peer.call(1, "Echo", {"n": 1}) == {"n": 1}
        # A protobuf request on a CBOR connection is refused in CBOR.
        await peer.send(pb_frame(3, "Echo", b"pb"))
        frame = await peer.response(3)
        with pytest.raises(InvalidArgument, match="CBOR"):
            decode_response(frame.payload)


async def test_cbor_and_protobuf_connections_at_once(
    nursery: trio.Nursery, sock_path: str, toy: Toy
):
    await start(nursery, sock_path, toy)
    async with (
        open_client(sock_path) as cbor,
        open_client(sock_path, envelope="protobuf") as pb,
        trio.open_nursery() as calls,
    ):
        results: dict[int, Any] = {}

        async def call_cbor(i: int) -> None:
            results[i] = await cbor.call(CBOR_TEST, "Echo", {"i": i})

        async def call_pb(i: int) -> None:
            results[i] = await pb.call_encoded(TOY, "UnaryEcho", bytes([i]))

        for i in range(20):
            calls.start_soon(call_cbor if i % 2 else call_pb, i)
    assert results == {i: {"i": i} if i % 2 else b"unary:" + bytes([i]) for i in range(20)}


# -- streams ---------------------------------------------------------------------------------


async def test_server_stream_sends_raw_messages(nursery: trio.Nursery, sock_path: str, toy: Toy):
    await start(nursery, sock_path, toy)
    async with (
        open_client(sock_path, envelope="protobuf") as client,
        client.open_stream(TOY, "Count", b"abc", client_sends=False) as call,
    ):
        assert [await call.receive_encoded() for _ in range(4)] == [b"a", b"b", b"c", None]
        assert await call.response_encoded() == b"end"
        with pytest.raises(FailedPrecondition, match="bytes"):
            await call.receive()
    # Without flow control (a plain ttrpc client): DATA frames, the last one closing.
    async with await Peer.connect(sock_path) as peer:
        await peer.send(pb_frame(1, "Count", b"xy"))
        frames = [await peer.next_frame() for _ in range(3)]
        assert [(f.type, f.flags, f.payload) for f in frames] == [
            (FrameType.DATA, 0, b"x"),
            (FrameType.DATA, 0, b"y"),
            (FrameType.DATA, 1, b"end"),
        ]


async def test_client_stream_receives_raw_messages(
    nursery: trio.Nursery, sock_path: str, toy: Toy
):
    await start(nursery, sock_path, toy)
    async with (
        open_client(sock_path, envelope="protobuf") as client,
        client.open_stream(TOY, "Join", b"<") as call,
    ):
        await call.send_encoded(b"a")
        await call.send_encoded(b"bc")
        with pytest.raises(FailedPrecondition, match="bytes"):
            await call.send({"a": 1})
        await call.close_send()
        assert await call.response_encoded() == b"<abc"


async def test_bidi_stream_both_ways(nursery: trio.Nursery, sock_path: str, toy: Toy):
    await start(nursery, sock_path, toy)
    async with (
        open_client(sock_path, envelope="protobuf") as client,
        client.open_stream(TOY, "Shout") as call,
    ):
        for word in (b"hi", b"there"):
            await call.send_encoded(word)
            assert await call.receive_encoded() == word.upper()
        await call.close_send()
        assert await call.receive_encoded() is None
        assert await call.response_encoded() == b""


async def test_blocking_client_speaks_protobuf(nursery: trio.Nursery, sock_path: str, toy: Toy):
    await start(nursery, sock_path, toy)

    def use() -> tuple[bytes, bytes]:
        with SyncClient(sock_path, envelope="protobuf") as client:
            with pytest.raises(FailedPrecondition):
                client.call(TOY, "Echo")
            echoed = client.call_encoded(TOY, "Echo", b"sync")
            with client.open_stream(TOY, "Join", b"1") as call:
                call.send_encoded(b"2")
                call.close_send()
                joined = call.response_encoded()
            return echoed, joined

    assert await trio.to_thread.run_sync(use) == (b"sync", b"12")


async def test_asyncio_client_speaks_protobuf(nursery: trio.Nursery, sock_path: str, toy: Toy):
    await start(nursery, sock_path, toy)

    async def use() -> tuple[bytes, list[bytes | None]]:
        async with open_aio_client(sock_path, envelope="protobuf") as client:
            echoed = await client.call_encoded(TOY, "Echo", b"aio")
            async with client.open_stream(TOY, "Count", b"ab", client_sends=False) as call:
                counted = [await call.receive_encoded() for _ in range(3)]
            return echoed, counted

    result = await trio.to_thread.run_sync(asyncio.run, use())
    assert result == (b"aio", [b"a", b"b", None])


async def test_a_server_without_protobuf_services_answers_unimplemented(
    nursery: trio.Nursery, sock_path: str
):
    server = Server(make_services(Probe()))
    await nursery.start(server.serve_unix, sock_path)
    async with await Peer.connect(sock_path) as peer:
        await peer.send(pb_frame(1, "Echo"))
        assert type(await pb_error(peer, 1)) is Unimplemented
    async with await Peer.connect(sock_path, service=CBOR_TEST) as peer:
        assert await peer.call(1, "Echo", {"still": "cbor"}) == {"still": "cbor"}
