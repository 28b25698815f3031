"""Requests and answers that repeat: the server decodes a request's bytes once and wraps a
cached answer once, and a client must not be able to tell.

Pollers send the same request bytes again and again (only the frame's stream id changes) and
handlers such as Status return the same encoded answer until something changes.  Whatever
the server remembers of either, every call gets a message of its own, a deadline of its own
and the answer its handler gave this time.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from peers import Peer
from sandboxd.rpc import CallContext, Encoded, Method, Server, inline, unary
from sandboxd.wire import (
    FrameType,
    decode_response,
    dumps,
    encode_frame,
    encode_pb_request,
    loads_message,
    pb_response_payload,
)

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0
SERVICE = "test.v1.Repeats"


class Seen:
    """What the handlers were given, and what they answer next."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.deadlines: list[float] = []
        self.answer: Any = Encoded(dumps({"n": 1}))


def services(seen: Seen) -> dict[str, dict[str, Method]]:
    def grab(message: dict[str, Any], ctx: CallContext) -> Any:
        seen.messages.append(dict(message))
        seen.deadlines.append(ctx.deadline)
        # A handler may do as it likes with its message.
        message.pop("n", None)
        message["grabbed"] = True
        return {}

    async def unary_grab(message: dict[str, Any], ctx: CallContext) -> Any:
        await trio.lowlevel.checkpoint()
        return grab(message, ctx)

    def answer(message: Any, ctx: CallContext) -> Any:
        return seen.answer

    return {
        SERVICE: {"Grab": inline(grab), "UnaryGrab": unary(unary_grab), "Answer": inline(answer)}
    }


async def start(nursery: trio.Nursery, path: str, seen: Seen) -> None:
    server = Server(services(seen), protobuf_services=services(seen))
    assert await nursery.start(server.serve_unix, path) == path


async def connect(path: str) -> Peer:
    return await Peer.connect(path, service=SERVICE)


@pytest.mark.parametrize("method", ["Grab", "UnaryGrab"])
async def test_a_handler_changing_its_message_leaves_the_next_calls_alone(
    nursery: trio.Nursery, sock_path: str, method: str
):
    seen = Seen()
    await start(nursery, sock_path, seen)
    message = {"n": 1, "text": "a", "raw": b"\x00", "none": None}
    async with await connect(sock_path) as first, await connect(sock_path) as second:
        for stream_id in (1, 3, 5):
            assert await first.call(stream_id, method, message) == {}
        assert await second.call(1, method, message) == {}
    assert seen.messages == [message] * 4


async def test_a_message_holding_containers_is_its_own_each_time(
    nursery: trio.Nursery, sock_path: str
):
    seen = Seen()
    await start(nursery, sock_path, seen)
    message = {"n": 1, "list": [1, 2], "map": {"a": 1}}
    async with await connect(sock_path) as peer:
        for stream_id in (1, 3):
            await peer.call(stream_id, "Grab", message)
    assert seen.messages == [message] * 2
    assert seen.messages[0]["list"] is not seen.messages[1]["list"]


async def test_the_same_request_bytes_get_a_deadline_of_their_own_each_time(
    nursery: trio.Nursery, sock_path: str, autojump_clock: trio.abc.Clock
):
    seen = Seen()
    await start(nursery, sock_path, seen)
    async with await connect(sock_path) as peer:
        start_time = trio.current_time()
        await peer.call(1, "Grab", {"n": 1}, timeout_nano=5 * 10**9)
        await trio.sleep(1)
        await peer.call(3, "Grab", {"n": 1}, timeout_nano=5 * 10**9)
        await peer.call(5, "Grab", {"n": 1})
    first, second, third = seen.deadlines
    assert first == pytest.approx(start_time + 5)
    assert second == pytest.approx(start_time + 6)
    assert third == float("inf")


async def test_an_answer_given_again_or_changed_is_sent_as_it_is_now(
    nursery: trio.Nursery, sock_path: str
):
    seen = Seen()
    await start(nursery, sock_path, seen)
    async with await connect(sock_path) as peer:
        assert await peer.call(1, "Answer") == {"n": 1}
        assert await peer.call(3, "Answer") == {"n": 1}
        seen.answer = Encoded(dumps({"n": 2}))
        assert await peer.call(5, "Answer") == {"n": 2}
        # A mapping may be changed in place between calls: it is encoded every time.
        seen.answer = mapping = {"n": 3}
        assert await peer.call(7, "Answer") == {"n": 3}
        mapping["n"] = 4
        assert await peer.call(9, "Answer") == {"n": 4}


async def test_a_protobuf_answer_given_again_or_changed_is_sent_as_it_is_now(
    nursery: trio.Nursery, sock_path: str
):
    seen = Seen()
    await start(nursery, sock_path, seen)
    async with await Peer.connect(sock_path) as peer:
        for stream_id, answer in ((1, b"one"), (3, b"one"), (5, b"two"), (7, b"")):
            seen.answer = answer
            envelope = encode_pb_request(SERVICE, "Answer", b"\x08\x01")
            await peer.send(encode_frame(stream_id, FrameType.REQUEST, 0, envelope))
            frame = await peer.response(stream_id)
            assert pb_response_payload(frame.payload) == answer


async def test_more_distinct_requests_than_are_remembered_are_all_answered(
    nursery: trio.Nursery, sock_path: str
):
    seen = Seen()
    await start(nursery, sock_path, seen)
    count = 600
    async with await connect(sock_path) as peer:
        for i in range(count):
            await peer.send_request(2 * i + 1, "Grab", {"n": i})
        for i in range(count):
            frame = await peer.response(2 * i + 1)
            assert loads_message(decode_response(frame.payload)) == {}
        await peer.call(2 * count + 1, "Grab", {"n": 0})
    assert seen.messages == [{"n": i} for i in range(count)] + [{"n": 0}]
