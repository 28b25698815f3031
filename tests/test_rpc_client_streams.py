"""The trio RPC client's streams: ``Client.stream``, ended early, slow, or out of time.

Spoken to a real server, or to a raw peer playing one, as ``client_services.py`` tells.
"""

from __future__ import annotations

import gc
import warnings
from typing import Any

import pytest
import trio
import trio.testing

import sandboxd
from background import in_background
from client_services import ENDLESS_LIMIT, SVC, call, raw_client, read_stream, start_server
from peers import END_OF_STREAM
from sandboxd.rpc import open_client
from sandboxd.wire import Frame, FrameType, dumps, encode_frame, loads_message

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (virtual under the autojump clock) a test may take before it counts as hung.
GUARD = 30.0


# -- streams -------------------------------------------------------------------------------------


async def test_stream_yields_every_message_in_order_then_ends(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start_server(nursery, sock_path)
    async with open_client(sock_path) as client:
        for n in (0, 1, 50):
            async with client.stream(SVC, "Count", {"n": n}) as messages:
                got = [m async for m in messages]
            assert got == [{"i": i} for i in range(n)]
        assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}


async def test_stream_ending_with_an_error_raises_it_after_the_messages(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start_server(nursery, sock_path)
    async with open_client(sock_path) as client:
        got: list[dict[str, Any]] = []
        with pytest.raises(sandboxd.NotFound) as info:
            async with client.stream(SVC, "CountThenFail", {"n": 3}) as messages:
                async for m in messages:
                    got.append(m)
        assert got == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert info.value.message == "gone after the messages"

        with pytest.raises(sandboxd.Unimplemented):
            await read_stream(client, "NoSuchStream")
        assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}


async def test_leaving_a_stream_early_ends_it_on_the_server_not_the_connection(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    async with open_client(sock_path) as client:
        got: list[dict[str, Any]] = []
        async with client.stream(SVC, "Endless") as messages:
            async for m in messages:
                got.append(m)
                if len(got) == 3:
                    break
        assert got == [{"i": 0}, {"i": 1}, {"i": 2}]
        await state.stream_cancelled.wait()
        assert not client.closed
        assert await client.call(SVC, "Echo", {"after": 1}) == {"after": 1}
        async with client.stream(SVC, "Count", {"n": 2}) as messages:
            assert [m async for m in messages] == [{"i": 0}, {"i": 1}]


async def test_leaving_a_stream_early_sends_a_close_frame_on_its_stream(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_client(sock_path) as (client, peer):
        async with client.stream(SVC, "Endless") as messages:
            stream_id, _ = await peer.next_request()
            for i in range(3):
                await peer.send(encode_frame(stream_id, FrameType.DATA, 0, dumps({"i": i})))
            async for m in messages:
                assert m == {"i": 0}
                break
        assert await peer.next_frame() == Frame(stream_id, FrameType.DATA, END_OF_STREAM, b"")


async def test_leaving_a_stream_early_leaves_nothing_for_the_garbage_collector(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The documented way to stop early (``break``, then leave the block) cleans up after itself.

    Nothing is left for the garbage collector to finalize: an async generator abandoned
    mid-iteration makes trio warn with a ResourceWarning (an error in this project's tests).
    """
    await start_server(nursery, sock_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with open_client(sock_path) as client:
            async with client.stream(SVC, "Count", {"n": 5}) as messages:
                async for _ in messages:
                    break
            del messages
            gc.collect()
            assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


# -- a slow stream consumer ----------------------------------------------------------------------


async def test_slow_stream_consumer_ends_only_its_own_stream(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    async with open_client(sock_path, stream_buffer=8) as client:
        async with client.stream(SVC, "Endless") as messages:
            await state.stream_started.wait()
            # The consumer does not read.  Ordinary calls go on working meanwhile, while
            # the stream overflows and the client ends it (which cancels the handler).
            calls = 0
            while not state.stream_cancelled.is_set():
                assert await client.call(SVC, "Echo", {"n": calls}) == {"n": calls}
                calls += 1
                # The server had sent everything it ever sends long before this.
                assert calls <= ENDLESS_LIMIT, "the overflowing stream was never ended"
            got: list[dict[str, Any]] = []
            with pytest.raises(sandboxd.ResourceExhausted):
                async for m in messages:
                    got.append(m)
            # Everything received before the end, in order: at least the full buffer, and
            # at most what one more read brought.
            assert len(got) >= 8
            assert got == [{"i": i} for i in range(len(got))]
        assert not client.closed
        assert await client.call(SVC, "Echo", {"after": 1}) == {"after": 1}
        async with client.stream(SVC, "Count", {"n": 8}) as messages:
            assert [m async for m in messages] == [{"i": i} for i in range(8)]


async def test_slow_stream_consumer_does_not_delay_other_streams(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        raw_client(sock_path, stream_buffer=8) as (client, peer),
        client.stream(SVC, "Slow") as slow,
        client.stream(SVC, "Fast") as fast,
    ):
        slow_id, _ = await peer.next_request()
        fast_id, _ = await peer.next_request()
        # Both streams get a message at a time; only the fast one is read as it goes.
        for i in range(20):
            await peer.send(
                encode_frame(slow_id, FrameType.DATA, 0, dumps({"s": i}))
                + encode_frame(fast_id, FrameType.DATA, 0, dumps({"f": i}))
            )
            assert await anext(fast) == {"f": i}
        await peer.send(encode_frame(fast_id, FrameType.DATA, END_OF_STREAM, b""))
        assert [m async for m in fast] == []
        # The slow stream overflowed: it was ended on the server, and raises after what
        # it had buffered.
        assert await peer.next_frame() == Frame(slow_id, FrameType.DATA, END_OF_STREAM, b"")
        got = []
        with pytest.raises(sandboxd.ResourceExhausted):
            async for m in slow:
                got.append(m)
        assert got == [{"s": i} for i in range(8)]


# -- waiting for stream messages -----------------------------------------------------------------


async def test_a_stream_timeout_ends_the_wait_for_messages_with_deadline_exceeded(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_client(sock_path) as (client, peer):
        start = trio.current_time()
        with pytest.raises(sandboxd.DeadlineExceeded):
            async with client.stream(SVC, "Endless", timeout=1.0) as messages:
                stream_id, request = await peer.next_request()
                assert 0 < request.timeout_nano <= 1_000_000_000
                await peer.send(encode_frame(stream_id, FrameType.DATA, 0, dumps({"i": 0})))
                assert await anext(messages) == {"i": 0}
                await anext(messages)
        assert trio.current_time() - start == pytest.approx(1.0, abs=1e-3)
        assert await peer.next_frame() == Frame(stream_id, FrameType.DATA, END_OF_STREAM, b"")
        assert not client.closed


async def test_cancelling_a_stream_consumer_that_waits_leaves_the_client_working(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_client(sock_path) as (client, peer):
        async with trio.open_nursery() as consumers:
            consumers.start_soon(read_stream, client, "Endless")
            stream_id, _ = await peer.next_request()
            await trio.testing.wait_all_tasks_blocked()
            consumers.cancel_scope.cancel()
        assert await peer.next_frame() == Frame(stream_id, FrameType.DATA, END_OF_STREAM, b"")
        # A late message for the stream is dropped; calls still work.
        await peer.send(encode_frame(stream_id, FrameType.DATA, 0, dumps({})))
        async with trio.open_nursery() as callers:
            task = in_background(callers, call(client, "Echo", {"a": 1}))
            call_id, request = await peer.next_request()
            await peer.reply(call_id, loads_message(request.payload))
            assert await task.result() == {"a": 1}
