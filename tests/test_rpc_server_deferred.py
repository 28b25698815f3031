"""The RPC server's deferred calls: answered later, by whoever holds the responder.

Spoken in raw bytes to a real server on a Unix socket, as ``probe_server.py`` tells.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from peers import Peer, end_frame, status_of
from probe_server import Probe, connect, request_frame, start_server
from sandboxd.rpc import Responder
from sandboxd.wire import Code, FailedPrecondition, NotFound

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0


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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
        [responder] = await later_calls(peer, probe, 1)
        await peer.send(end_frame(1))
        assert await peer.expect_error(1, Code.CANCELLED) == "call ended by the client"
        assert responder.abandoned and server.in_flight == 0
        responder.ok("nobody listens")
        assert await peer.call(3, "Echo", {"n": 3}) == {"n": 3}


async def test_closing_the_connection_abandons_its_deferred_calls(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, _ = await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        responders = await later_calls(peer, probe, 1, 3, timeout_nano=10**9)
    await trio.testing.wait_all_tasks_blocked()
    assert all(r.abandoned for r in responders)
    assert server.in_flight == 0 and server.connections == 0
    for responder in responders:
        responder.ok("the connection is gone")  # no error, nothing sent
    async with await connect(sock_path) as new:
        assert await new.call(1, "Echo", {"x": 1}) == {"x": 1}


async def test_deferred_calls_count_against_the_per_connection_limit(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe, max_calls_per_connection=2)
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
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
