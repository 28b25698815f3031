"""Client-streaming and bidirectional calls: the frames, flow control, and hostile peers.

A real :class:`sandboxd.rpc.Server` on a Unix socket, driven by the trio client, the blocking
client, or a raw :class:`~peers.Peer` speaking bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from peers import Peer, data_frame, request_frame, status_of
from sandboxd.rpc import (
    CallContext,
    Limits,
    MessageSender,
    MessageStream,
    Server,
    SyncClient,
    bidi_stream,
    client_stream,
    inline,
    open_client,
    server_stream,
)
from sandboxd.wire import (
    DEFAULT_WINDOW,
    WINDOW_METADATA,
    Code,
    DeadlineExceeded,
    FailedPrecondition,
    Flags,
    Frame,
    FrameType,
    ResourceExhausted,
    dumps,
    encode_frame,
    loads_message,
)

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 20.0
S = "test.v1.Duplex"
DATA = FrameType.DATA
REQUEST_OPEN = Flags.REMOTE_OPEN
HALF_CLOSE = Flags.REMOTE_CLOSED | Flags.NO_DATA


class Hub:
    """What the tests observe of the handlers."""

    def __init__(self) -> None:
        self.stuck_started = trio.Event()
        self.sent = 0
        self.cancelled = trio.Event()


def services(hub: Hub) -> dict[str, Any]:
    async def echo(msg: dict[str, Any], ctx: CallContext, stream: MessageStream) -> Any:
        count = 0
        async for message in stream:
            count += 1
            await stream.send(message)
        return {"count": count, **msg}

    async def total(msg: dict[str, Any], ctx: CallContext, stream: MessageStream) -> Any:
        total = 0
        while (message := await stream.receive()) is not None:
            total += message["n"]
        return {"total": total}

    async def flood(msg: dict[str, Any], ctx: CallContext, stream: MessageSender) -> Any:
        for _ in range(msg["n"]):
            await stream.send({"data": bytes(msg["size"])})
            hub.sent += 1
        return {"sent": msg["n"]}

    async def stuck(msg: dict[str, Any], ctx: CallContext, stream: MessageStream) -> Any:
        hub.stuck_started.set()
        try:
            await trio.sleep_forever()
        finally:
            hub.cancelled.set()

    def ping(msg: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return {"pong": True}

    return {
        S: {
            "Echo": bidi_stream(echo),
            "Total": client_stream(total),
            "Flood": server_stream(flood),
            "Stuck": bidi_stream(stuck),
            "Ping": inline(ping),
        }
    }


@asynccontextmanager
async def serving(sock_path: str, **limits: Any) -> AsyncIterator[tuple[Server, Hub]]:
    hub = Hub()
    server = Server(services(hub), limits=Limits(**limits))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_unix, sock_path)
        yield server, hub
        nursery.cancel_scope.cancel()


# -- the trio client -------------------------------------------------------------------------


async def test_bidi_echo_then_final_response(sock_path: str) -> None:
    async with (
        serving(sock_path),
        open_client(sock_path) as client,
        client.open_stream(S, "Echo", {"tag": "x"}) as call,
    ):
        for i in range(3):
            await call.send({"i": i})
            assert await call.receive() == {"i": i}
        await call.close_send()
        assert await call.receive() is None
        assert await call.response() == {"count": 3, "tag": "x"}
        with pytest.raises(FailedPrecondition):
            await call.send({"late": True})


async def test_client_stream_sums_until_half_close(sock_path: str) -> None:
    async with serving(sock_path), open_client(sock_path) as client:
        async with client.open_stream(S, "Total") as call:
            for n in range(100):
                await call.send({"n": n})
            await call.close_send()
            assert await call.response() == {"total": sum(range(100))}
        assert await client.call(S, "Ping") == {"pong": True}


async def test_a_client_stream_called_without_remote_open_has_no_input(sock_path: str) -> None:
    async with serving(sock_path), open_client(sock_path) as client:
        assert await client.call(S, "Total") == {"total": 0}


async def test_server_waits_on_the_client_window_and_the_final_message_ends(
    sock_path: str,
) -> None:
    async with (
        serving(sock_path) as (_, hub),
        open_client(sock_path, window=64 * 1024) as client,
        client.open_stream(S, "Flood", {"n": 100, "size": 16 * 1024}, client_sends=False) as call,
    ):
        await trio.testing.wait_all_tasks_blocked()
        # The server stopped at the window: 4 messages, and one more that it let through
        # while credit was left.
        assert hub.sent <= 64 // 16 + 1
        received = 0
        async for message in call:
            assert len(message["data"]) == 16 * 1024
            received += 1
        assert received == 100
        assert await call.response() == {"sent": 100}


async def test_one_stuck_stream_delays_no_other_call(sock_path: str) -> None:
    """No head-of-line blocking: a stream whose consumer never reads, and a stream whose
    handler never reads, while another stream and unary calls go on."""
    async with (
        serving(sock_path) as (_, hub),
        open_client(sock_path, window=32 * 1024) as client,
        client.open_stream(S, "Flood", {"n": 1000, "size": 8192}, client_sends=False),
        client.open_stream(S, "Stuck") as stuck,
    ):
        await hub.stuck_started.wait()
        # The stuck handler never receives: the client's sender waits on the window.
        sent = 0

        async def fill() -> None:
            nonlocal sent
            while True:
                await stuck.send({"junk": bytes(60_000)})
                sent += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fill)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == DEFAULT_WINDOW // 60_000 + 1
            nursery.cancel_scope.cancel()
        for _ in range(20):
            assert await client.call(S, "Ping") == {"pong": True}
        async with client.open_stream(S, "Echo") as echo:
            for i in range(50):
                await echo.send({"i": i})
                assert await echo.receive() == {"i": i}
            await echo.close_send()
            assert (await echo.response())["count"] == 50


async def test_leaving_the_block_cancels_the_stream_on_the_server(sock_path: str) -> None:
    async with serving(sock_path) as (server, hub), open_client(sock_path) as client:
        async with client.open_stream(S, "Stuck"):
            await hub.stuck_started.wait()
        await hub.cancelled.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert server.in_flight == 0
        assert await client.call(S, "Ping") == {"pong": True}


async def test_a_stream_the_client_leaves_unread_is_ended_after_the_stall_timeout(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        serving(sock_path, stall_timeout=5) as (_, _hub),
        open_client(sock_path, window=16 * 1024) as client,
        client.open_stream(S, "Flood", {"n": 100, "size": 8192}, client_sends=False) as call,
    ):
        await trio.sleep(6)
        with pytest.raises(ResourceExhausted) as caught:
            async for _ in call:
                pass
        assert "test.v1.Duplex/Flood stream 1" in caught.value.message


# -- the blocking client ---------------------------------------------------------------------


async def test_the_blocking_client_streams_both_ways(sock_path: str) -> None:
    async with serving(sock_path):

        def run() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
            with SyncClient(sock_path) as client:
                with client.open_stream(S, "Echo", {"tag": "s"}) as call:
                    got = []
                    for i in range(5):
                        call.send({"i": i})
                        got.append(call.receive())
                    call.close_send()
                    final = call.response()
                with client.open_stream(S, "Total") as total:
                    for n in range(10):
                        total.send({"n": n})
                    total.close_send()
                    return got, final, total.response()

        got, final, total = await trio.to_thread.run_sync(run)
    assert got == [{"i": i} for i in range(5)]
    assert final == {"count": 5, "tag": "s"}
    assert total == {"total": 45}


# -- raw frames ------------------------------------------------------------------------------


async def test_bidi_frames_are_ttrpc_s(sock_path: str) -> None:
    async with serving(sock_path), await Peer.connect(sock_path, service=S) as peer:
        await peer.send(
            request_frame(1, "Echo", {"tag": "t"}, service=S, flags=REQUEST_OPEN),
            data_frame(1, {"a": 1}),
        )
        assert await peer.message(1) == {"a": 1}
        await peer.send(data_frame(1, None, HALF_CLOSE))
        end = await peer.next_frame()
        # A streaming server ends with DATA | REMOTE_CLOSED carrying the final message.
        assert end == Frame(1, DATA, Flags.REMOTE_CLOSED, dumps({"count": 1, "tag": "t"}))
        # A client-streaming one with a RESPONSE.
        await peer.send(
            request_frame(3, "Total", service=S, flags=REQUEST_OPEN),
            data_frame(3, {"n": 2}),
            data_frame(3, {"n": 3}, Flags.REMOTE_CLOSED),  # the last message may close
        )
        assert await peer.expect_ok(3) == {"total": 5}


async def test_window_updates_flow_both_ways(sock_path: str) -> None:
    window = {WINDOW_METADATA: ["100"]}
    async with serving(sock_path) as (_, hub), await Peer.connect(sock_path, service=S) as peer:
        await peer.send_request(
            1, "Flood", {"n": 3, "size": 80}, metadata=window, flags=Flags.REMOTE_CLOSED
        )
        first = await peer.message(1)
        second = await peer.message(1)  # credit was left after the first
        assert len(first["data"]) == len(second["data"]) == 80
        await trio.testing.wait_all_tasks_blocked()
        assert hub.sent == 2  # the window is used up: the handler waits
        grant = (200).to_bytes(4, "big")
        await peer.send(encode_frame(1, DATA, Flags.WINDOW_UPDATE | Flags.NO_DATA, grant))
        assert len((await peer.message(1))["data"]) == 80
        end = await peer.next_frame()
        assert (end.type, end.flags, loads_message(end.payload)) == (
            DATA,
            Flags.REMOTE_CLOSED,
            {"sent": 3},
        )
        # The server grants the client window as its handler takes messages.
        await peer.send(
            request_frame(3, "Total", service=S, flags=REQUEST_OPEN, metadata=window),
            *(data_frame(3, {"n": 1, "pad": bytes(100_000)}) for _ in range(8)),
        )
        update = await peer.next_frame()
        assert (update.stream_id, update.type) == (3, DATA)
        assert update.flags == Flags.WINDOW_UPDATE | Flags.NO_DATA
        assert int.from_bytes(update.payload, "big") >= DEFAULT_WINDOW // 2
        await peer.send(data_frame(3, None, HALF_CLOSE))
        assert await peer.expect_ok(3) == {"total": 8}


@pytest.mark.parametrize(
    ("frames", "fragment"),
    [
        # DATA on a stream that never had a request.
        ([data_frame(9, {"x": 1})], "DATA on stream 9 before its request"),
        # DATA on a stream whose call ended.
        (
            [request_frame(1, "Ping", service=S), data_frame(1, {"x": 1})],
            "DATA on stream 1, which has no call in progress",
        ),
    ],
)
async def test_data_on_no_call_is_refused_on_its_stream(
    sock_path: str, frames: list[bytes], fragment: str
) -> None:
    async with serving(sock_path), await Peer.connect(sock_path, service=S) as peer:
        await peer.send(*frames)
        last = frames[-1]
        stream_id = int.from_bytes(last[4:8], "big")
        while True:
            frame = await peer.next_frame()
            if frame.type == FrameType.RESPONSE and status_of(frame)[0] != Code.OK:
                break
        assert frame.stream_id == stream_id
        code, message = status_of(frame)
        assert code == Code.INVALID_ARGUMENT and fragment in message
        assert await peer.call(11, "Ping") == {"pong": True}


@pytest.mark.parametrize(
    ("after", "fragment"),
    [
        (data_frame(1, {"x": 1}), "DATA after the client closed its side"),
        (data_frame(1, None, HALF_CLOSE), "a second close after the client closed its side"),
    ],
)
async def test_data_or_a_second_close_after_the_half_close_ends_that_stream_only(
    sock_path: str, after: bytes, fragment: str
) -> None:
    async with serving(sock_path) as (_, hub), await Peer.connect(sock_path, service=S) as peer:
        await peer.send(
            request_frame(1, "Stuck", service=S, flags=REQUEST_OPEN),
            request_frame(3, "Echo", service=S, flags=REQUEST_OPEN),
            data_frame(1, None, HALF_CLOSE),
        )
        await hub.stuck_started.wait()
        await peer.send(after)
        message = await peer.expect_error(1, Code.INVALID_ARGUMENT)
        assert message == f"test.v1.Duplex/Stuck stream 1: {fragment}"
        await hub.cancelled.wait()
        # The other stream and the connection go on.
        await peer.send(data_frame(3, {"i": 1}))
        assert await peer.message(3) == {"i": 1}
        assert await peer.call(5, "Ping") == {"pong": True}


async def test_a_message_to_a_call_that_takes_none_ends_it(sock_path: str) -> None:
    async with serving(sock_path) as (_, _hub), await Peer.connect(sock_path, service=S) as peer:
        await peer.send_request(1, "Flood", {"n": 10**9, "size": 1})
        await peer.message(1)
        await peer.send(data_frame(1, {"x": 1}))
        while (frame := await peer.next_frame()).type == DATA:
            pass
        assert status_of(frame) == (Code.INVALID_ARGUMENT, "stream 1 takes no DATA")
        assert await peer.call(3, "Ping") == {"pong": True}


async def test_a_cancel_frame_ends_a_client_stream(sock_path: str) -> None:
    async with serving(sock_path) as (_, hub), await Peer.connect(sock_path, service=S) as peer:
        await peer.send(request_frame(1, "Stuck", service=S, flags=REQUEST_OPEN))
        await hub.stuck_started.wait()
        await peer.send(data_frame(1, None, HALF_CLOSE | Flags.CANCEL))
        await peer.expect_error(1, Code.CANCELLED)


async def test_a_plain_peer_past_the_bound_is_paused_then_its_stream_ended(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        serving(sock_path, stall_timeout=5) as (_, hub),
        await Peer.connect(sock_path, service=S) as peer,
    ):
        await peer.send(request_frame(1, "Stuck", service=S, flags=REQUEST_OPEN))
        await hub.stuck_started.wait()
        chunk = data_frame(1, {"pad": bytes(256 * 1024)})
        await peer.send(*(chunk for _ in range(6)), request_frame(3, "Ping", service=S))
        message = await peer.expect_error(1, Code.RESOURCE_EXHAUSTED)
        assert message.startswith("test.v1.Duplex/Stuck stream 1: over")
        # Reading resumed: the request behind the stuck stream's data is answered; the DATA
        # that came after the stream ended is refused, each frame on its stream.
        while (frame := await peer.next_frame()).stream_id == 1:
            assert status_of(frame) == (
                Code.INVALID_ARGUMENT,
                "DATA on stream 1, which has no call in progress",
            )
        assert frame.stream_id == 3 and status_of(frame) == (Code.OK, "")


async def test_a_flow_controlled_peer_past_its_window_is_refused(sock_path: str) -> None:
    window = {WINDOW_METADATA: [str(DEFAULT_WINDOW)]}
    async with serving(sock_path) as (_, hub), await Peer.connect(sock_path, service=S) as peer:
        await peer.send(request_frame(1, "Stuck", service=S, flags=REQUEST_OPEN, metadata=window))
        await hub.stuck_started.wait()
        chunk = data_frame(1, {"pad": bytes(512 * 1024)})
        await peer.send(chunk, chunk, chunk)
        message = await peer.expect_error(1, Code.RESOURCE_EXHAUSTED)
        assert message == "test.v1.Duplex/Stuck stream 1: the client sent past its window"
        assert await peer.call(3, "Ping") == {"pong": True}


async def test_a_bad_window_is_refused(sock_path: str) -> None:
    async with serving(sock_path), await Peer.connect(sock_path, service=S) as peer:
        await peer.send_request(1, "Echo", metadata={WINDOW_METADATA: ["0"]})
        await peer.expect_error(1, Code.INVALID_ARGUMENT)


async def test_a_timeout_ends_the_stream_on_both_sides(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving(sock_path) as (server, hub), open_client(sock_path) as client:
        async with client.open_stream(S, "Stuck", timeout=1) as call:
            with pytest.raises(DeadlineExceeded):
                await call.receive()
        await hub.cancelled.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert server.in_flight == 0
