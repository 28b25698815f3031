"""No client of ours surfaces the server's per-connection call limit as an error.

Against a real daemon (``sandboxd serve``, sim sandboxes) on a real socket: thousands of
concurrent calls through one client object all succeed, also while more Waits are parked than
one connection takes; a call waiting for room keeps its own deadline; and a peer that is not
one of our clients is still refused with RESOURCE_EXHAUSTED past the limit.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

import sandboxd
import sandboxd.aio
from daemons import ReadyPipe, daemon_env
from peers import Peer, request_frame, status_of
from sandboxd import DeadlineExceeded, ExitStatus, SandboxState, SyncController
from sandboxd.api import CONTROLLER_SERVICE, RUNTIME_SERVICE
from sandboxd.rpc import open_client
from sandboxd.wire import (
    CALL_LIMIT_DETAIL,
    DEFAULT_MAX_CALLS,
    CallRefused,
    ClientConnection,
    Code,
    ConnectionPool,
    FrameType,
    ResponseReceived,
    dumps,
    encode_error_from,
    encode_frame,
    request_envelope,
)

C = CONTROLLER_SERVICE
#: Concurrent Creates through one client, twice; Waits parked meanwhile (more than one
#: connection takes at the server's default limit).
CREATES = 5_000
PARKED = 1_200
#: The per-connection call limit of the small daemon, and what the blocking client and the raw
#: peer throw at it.
SMALL_LIMIT = 8
THREADS = 40
SMALL_PARKED = 12


def _serve(state_dir: Path, *args: str) -> Iterator[str]:
    """A daemon creating sim sandboxes by default, serving on a socket in ``state_dir``."""
    socket = str(state_dir / "sandboxd.sock")
    ready = ReadyPipe()
    process = ready.popen(
        [
            "--socket",
            socket,
            "--state-dir",
            str(state_dir),
            "--default-sandboxer",
            "sim",
            *args,
        ],
        state_dir / "daemon.log",
        daemon_env(),
    )
    try:
        ready.wait_sync(lambda: (state_dir / "daemon.log").read_text())
        yield socket
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def daemon() -> Iterator[str]:
    """A daemon with the default limits."""
    with tempfile.TemporaryDirectory(prefix="sbd-") as state_dir:
        yield from _serve(Path(state_dir))


@pytest.fixture(scope="module")
def small_daemon() -> Iterator[str]:
    """A daemon that runs at most :data:`SMALL_LIMIT` calls at once on a connection."""
    with tempfile.TemporaryDirectory(prefix="sbd-") as state_dir:
        yield from _serve(Path(state_dir), "--max-calls-per-connection", str(SMALL_LIMIT))


async def test_version_tells_the_servers_limits(small_daemon: str) -> None:
    async with sandboxd.connect(small_daemon) as ctl:
        limits = (await ctl.version())["limits"]
    assert limits["max_calls_per_connection"] == SMALL_LIMIT
    assert limits["max_connections"] == 1024
    assert limits["max_message_bytes"] == 4 * 1024 * 1024
    assert set(limits) >= {"max_buffered_bytes", "stall_timeout", "grace", "max_depth"}


# -- the trio client -----------------------------------------------------------------------------


async def test_trio_client_many_creates_and_parked_waits(daemon: str) -> None:
    async with sandboxd.connect(daemon) as ctl:
        created: list[str] = []

        async def create(sandbox_id: str) -> None:
            created.append(await ctl.create(sandbox_id))

        async def start(sandbox_id: str) -> None:
            await ctl.create(sandbox_id)
            await ctl.start(sandbox_id)

        async with trio.open_nursery() as nursery:
            for i in range(CREATES):
                nursery.start_soon(create, f"trio-a{i}")
        assert len(created) == CREATES

        async with trio.open_nursery() as nursery:
            for i in range(PARKED):
                nursery.start_soon(start, f"trio-w{i}")
        ended: list[ExitStatus] = []

        async def wait(sandbox_id: str) -> None:
            ended.append(await ctl.wait(sandbox_id))

        async with trio.open_nursery() as waits:
            for i in range(PARKED):
                waits.start_soon(wait, f"trio-w{i}")
            async with trio.open_nursery() as nursery:
                for i in range(CREATES):
                    nursery.start_soon(create, f"trio-b{i}")
                status = await ctl.status("trio-w0")
                assert status.state is SandboxState.READY
            assert len(created) == 2 * CREATES
            assert ended == []
            assert ctl.client.connections >= math.ceil((PARKED + 1) / DEFAULT_MAX_CALLS)
            waits.cancel_scope.cancel()


async def test_trio_queued_call_keeps_its_deadline(small_daemon: str) -> None:
    async with open_client(small_daemon, max_connections=1) as client:
        ids = [f"dl-trio-{i}" for i in range(SMALL_LIMIT)]
        for sandbox_id in ids:
            await client.call(CONTROLLER_SERVICE, "Create", {"sandbox_id": sandbox_id})
            await client.call(CONTROLLER_SERVICE, "Start", {"sandbox_id": sandbox_id})
        async with trio.open_nursery() as waits:
            for sandbox_id in ids:
                message = {"sandbox_id": sandbox_id}
                waits.start_soon(client.call, CONTROLLER_SERVICE, "Wait", message)
            await trio.testing.wait_all_tasks_blocked()
            # One more is refused by the server, learned from, and queued: its deadline holds.
            with pytest.raises(DeadlineExceeded, match="waiting for room"):
                await client.call(CONTROLLER_SERVICE, "Wait", {"sandbox_id": ids[0]}, timeout=0.2)
            # Cancelled while queued: only that call ends.
            with trio.move_on_after(0.05) as scope:
                await client.call(CONTROLLER_SERVICE, "Wait", {"sandbox_id": ids[0]})
            assert scope.cancelled_caught
            assert client.connections == 1
            waits.cancel_scope.cancel()
        assert (await client.call(RUNTIME_SERVICE, "Version", {}))["limits"]


# -- the asyncio client --------------------------------------------------------------------------


def test_asyncio_client_many_creates_and_parked_waits(daemon: str) -> None:
    async def main() -> None:
        async with sandboxd.aio.connect(daemon) as ctl:

            async def start(sandbox_id: str) -> None:
                await ctl.create(sandbox_id)
                await ctl.start(sandbox_id)

            first = await asyncio.gather(*(ctl.create(f"aio-a{i}") for i in range(CREATES)))
            assert len(first) == CREATES
            await asyncio.gather(*(start(f"aio-w{i}") for i in range(PARKED)))
            waits = [asyncio.create_task(ctl.wait(f"aio-w{i}")) for i in range(PARKED)]
            second = await asyncio.gather(*(ctl.create(f"aio-b{i}") for i in range(CREATES)))
            assert len(second) == CREATES
            assert (await ctl.status("aio-w0")).state is SandboxState.READY
            assert not any(wait.done() for wait in waits)
            assert ctl.client.connections >= math.ceil((PARKED + 1) / DEFAULT_MAX_CALLS)
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_asyncio_queued_call_keeps_its_deadline(small_daemon: str) -> None:
    async def main() -> None:
        async with sandboxd.aio.connect(small_daemon) as ctl:
            client = ctl.client
            client._pool.max_connections = 1
            ids = [f"dl-aio-{i}" for i in range(SMALL_LIMIT)]
            for sandbox_id in ids:
                await ctl.create(sandbox_id)
                await ctl.start(sandbox_id)
            waits = [asyncio.create_task(ctl.wait(sandbox_id)) for sandbox_id in ids]
            await asyncio.sleep(0)  # each sends its request
            # One more is refused by the server, learned from, and queued: its deadline holds.
            with pytest.raises(DeadlineExceeded, match="waiting for room"):
                await ctl.wait(ids[0], timeout=0.2)
            # Cancelled while queued: only that call ends.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await ctl.wait(ids[0])
            assert client.connections == 1
            assert not any(wait.done() for wait in waits)
            waits[0].cancel()
            assert (await ctl.platform(ids[0], timeout=5)).os
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 60))


# -- the blocking client -------------------------------------------------------------------------


def test_blocking_client_threads_past_the_limit_with_parked_waits(small_daemon: str) -> None:
    with SyncController(small_daemon, timeout=30) as ctl:
        parked = [f"sync-w{i}" for i in range(SMALL_PARKED)]
        for sandbox_id in parked:
            ctl.create(sandbox_id)
            ctl.start(sandbox_id)
        ended: list[ExitStatus] = []
        stop = threading.Event()

        def wait(sandbox_id: str) -> None:
            try:
                ended.append(ctl.wait(sandbox_id, timeout=30))
            except sandboxd.Unavailable:
                assert stop.is_set()

        waiters = [threading.Thread(target=wait, args=(i,)) for i in parked]
        for thread in waiters:
            thread.start()
        with ThreadPoolExecutor(THREADS) as pool:
            created = list(pool.map(ctl.create, [f"sync-a{i}" for i in range(4 * THREADS)]))
        assert len(created) == 4 * THREADS
        assert ctl.status(parked[0]).state is SandboxState.READY
        assert ended == []
        assert ctl.client.connections >= 2
        stop.set()
    for thread in waiters:
        thread.join()


def test_blocking_queued_call_keeps_its_deadline(small_daemon: str) -> None:
    with SyncController(small_daemon) as ctl:
        ctl.client._pool.max_connections = 1
        ids = [f"dl-sync-{i}" for i in range(SMALL_LIMIT)]
        for sandbox_id in ids:
            ctl.create(sandbox_id)
            ctl.start(sandbox_id)
        ended: list[BaseException] = []

        def wait(sandbox_id: str) -> None:
            try:
                ctl.wait(sandbox_id)
            except sandboxd.Unavailable as err:
                ended.append(err)

        waiters = [threading.Thread(target=wait, args=(i,)) for i in ids]
        for thread in waiters:
            thread.start()
        # However the nine calls reach the server, one waits: for room, or for its sandbox.
        with pytest.raises(DeadlineExceeded):
            ctl.wait(ids[0], timeout=0.2)
        assert ctl.client.connections == 1
    for thread in waiters:
        thread.join()
    assert len(ended) == SMALL_LIMIT


def test_blocking_client_takes_back_the_room_of_calls_given_up(small_daemon: str) -> None:
    with SyncController(small_daemon) as ctl:
        pool = ctl.client._pool
        pool.max_connections = 1
        pool.max_calls = SMALL_LIMIT  # as if learned
        ctl.create("gone")
        ctl.start("gone")

        def give_up() -> None:
            with pytest.raises(DeadlineExceeded):
                ctl.wait("gone", timeout=0.01)

        with ThreadPoolExecutor(SMALL_LIMIT) as threads:
            for _ in range(SMALL_LIMIT):
                threads.submit(give_up)
        # The server's answers to the calls given up come when no thread reads: the next call
        # reads them to find room.
        assert ctl.platform("gone", timeout=5).os


# -- a client that is not ours -------------------------------------------------------------------


async def test_a_raw_peer_past_the_limit_is_refused(small_daemon: str) -> None:
    async with sandboxd.connect(small_daemon) as ctl:
        ids = [f"raw-{i}" for i in range(SMALL_LIMIT)]
        for sandbox_id in ids:
            await ctl.create(sandbox_id)
            await ctl.start(sandbox_id)
    async with await Peer.connect(small_daemon, service=CONTROLLER_SERVICE) as peer:
        await peer.send(
            *(
                request_frame(2 * i + 1, "Wait", {"sandbox_id": sandbox_id}, service=C)
                for i, sandbox_id in enumerate(ids)
            )
        )
        stream_id = 2 * SMALL_LIMIT + 1
        await peer.send_request(stream_id, "Wait", {"sandbox_id": ids[0]})
        frame = await peer.response(stream_id)
        code, message = status_of(frame)
        assert code == Code.RESOURCE_EXHAUSTED
        assert f"limit {SMALL_LIMIT}" in message


# -- the sans-io core: what a client counts ------------------------------------------------------


def _response(stream_id: int, envelope: bytes) -> bytes:
    return encode_frame(stream_id, FrameType.RESPONSE, 0, envelope)


def test_a_call_given_up_counts_until_the_servers_last_frame() -> None:
    conn = ClientConnection()
    stream_id, _ = conn.send_request(request_envelope(C, "Wait", {"sandbox_id": "a"}))
    assert conn.cancel(stream_id)
    assert (conn.in_flight, conn.open_calls) == (0, 1)
    cancelled = encode_error_from(sandboxd.Cancelled("call ended by the client"))
    assert conn.receive_data(_response(stream_id, cancelled)) == []
    assert conn.open_calls == 0


def test_a_refusal_for_the_call_limit_is_told_apart() -> None:
    conn = ClientConnection()
    refused, _ = conn.send_request(request_envelope(C, "Wait"))
    other, _ = conn.send_request(request_envelope(C, "List"))
    limit = sandboxd.ResourceExhausted("too many calls", details=[{CALL_LIMIT_DETAIL: 3}])
    too_big = sandboxd.ResourceExhausted("reply too large")
    events = conn.receive_data(
        _response(refused, encode_error_from(limit)) + _response(other, encode_error_from(too_big))
    )
    assert events[0] == CallRefused(refused, 3)
    assert type(events[1]) is ResponseReceived and events[1].error is not None
    assert conn.open_calls == 0


@dataclass
class _Pooled:
    conn: ClientConnection


def test_the_pool_fills_the_oldest_connection_then_grows_and_learns() -> None:
    first = _Pooled(ClientConnection())
    pool = ConnectionPool(first, max_connections=2)
    pool.max_calls = 2
    for _ in range(2):
        assert pool.pick() is first
        first.conn.send_request(request_envelope(C, "Wait"))
    assert pool.pick() is None
    assert pool.should_open() and not pool.should_open()  # once, while opening
    second = _Pooled(ClientConnection())
    version = dumps({"limits": {"max_calls_per_connection": 3}})
    assert pool.opened(second, version)
    assert pool.max_calls == 3 and pool.pick() is first
    pool.waiting = 4
    assert pool.pick() is None  # queued callers go first
    assert pool.wake_count() == 4 and pool.wake_count() == 0
    assert not pool.should_open()  # two connections: the most
    assert pool.lost(second) == [] and pool.connections == [first]
    assert pool.lost(first) == [] and not pool.closed
