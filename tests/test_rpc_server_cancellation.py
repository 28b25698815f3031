"""The RPC server ends calls: at their deadline, when the client cancels, when it goes away.

Spoken in raw bytes to a real server on a Unix socket, as ``probe_server.py`` tells.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from peers import end_frame, status_of
from probe_server import DATA, RESPONSE, Probe, connect, request_frame, start_server
from sandboxd.wire import Code, Flags, Frame, dumps, encode_frame, loads_message

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0


# -- deadlines -------------------------------------------------------------------------------


async def test_timeout_nano_is_enforced(
    nursery: trio.Nursery, sock_path: str, probe: Probe, autojump_clock: trio.testing.MockClock
):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
        await peer.send_request(1, "Wait", {"w": 1}, timeout_nano=10_000_000_000)
        await probe.started.wait()
        await trio.sleep(5)  # virtual: half the deadline
        probe.release.set()
        assert await peer.expect_ok(1) == {"released": True, "w": 1}


# -- connection close ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["Forever", "Endless"])
async def test_connection_close_cancels_running_handlers(
    nursery: trio.Nursery, sock_path: str, probe: Probe, method: str
):
    server, _ = await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send_request(1, method, {})
        await probe.started.wait()
        assert server.in_flight == 1
    await probe.cancelled.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert server.in_flight == 0
    assert server.connections == 0
    async with await connect(sock_path) as new:
        assert await new.call(1, "Echo", {"x": 1}) == {"x": 1}


# -- ending a call early ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["Forever", "Endless"])
async def test_client_cancel_frame_ends_the_call(
    nursery: trio.Nursery, sock_path: str, probe: Probe, method: str
):
    server, _ = await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send_request(1, method, {})
        await probe.started.wait()
        if method == "Endless":
            assert await peer.message(1) == {"i": 0}
        # A DATA frame carrying no message, and a window update, do not end the call.
        await peer.send(
            encode_frame(1, DATA, Flags.NO_DATA, b""),
            encode_frame(1, DATA, Flags.WINDOW_UPDATE | Flags.NO_DATA, b"\0\0\0\1"),
        )
        await trio.testing.wait_all_tasks_blocked()
        assert not probe.cancelled.is_set()
        assert server.in_flight == 1
        await peer.send(end_frame(1))
        await peer.expect_error(1, Code.CANCELLED)
        assert probe.cancelled.is_set()
        assert server.in_flight == 0
        # A cancel frame for a stream that is not running is ignored: no reply.
        await peer.send(end_frame(1), end_frame(99), request_frame(3, "Echo", {"n": 3}))
        assert await peer.expect_ok(3) == {"n": 3}
        assert await peer.call(5, "UnaryEcho", {"n": 5}) == {"n": 5}


async def test_client_cancel_frame_ends_a_busy_stream(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send_request(1, "Ticker", {})
        for i in range(3):
            assert await peer.message(1) == {"i": i}
        await peer.send(end_frame(1))
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
