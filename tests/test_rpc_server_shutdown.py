"""The RPC server's socket file, and its graceful shutdown: calls in flight are drained.

Spoken in raw bytes to a real server on a Unix socket, as ``probe_server.py`` tells.
"""

from __future__ import annotations

import os
import socket
import stat

import pytest
import trio
import trio.testing

from probe_server import Probe, connect, make_services, raw_request_frame, start_server
from sandboxd.rpc import Server, SocketInUseError
from sandboxd.wire import Code

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0


# -- the socket file -------------------------------------------------------------------------


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
    async with await connect(sock_path) as peer:
        assert await peer.call(1, "Echo", {"x": 1}) == {"x": 1}


async def test_live_socket_is_not_taken_over(nursery: trio.Nursery, sock_path: str, probe: Probe):
    await start_server(nursery, sock_path, probe)
    inode = os.lstat(sock_path).st_ino
    async with await connect(sock_path) as before:
        second = Server(make_services(Probe()))
        with pytest.raises(SocketInUseError):
            await nursery.start(second.serve_unix, sock_path)
        assert os.lstat(sock_path).st_ino == inode
        # The first server still works, on old and new connections.
        assert await before.call(1, "Echo", {"x": 1}) == {"x": 1}
        async with await connect(sock_path) as after:
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
    async with await connect(sock_path) as peer:
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


# -- graceful shutdown -----------------------------------------------------------------------


async def test_graceful_shutdown_lets_calls_in_flight_finish(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    server, stopped = await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as busy, await connect(sock_path) as idle:
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
    async with await connect(sock_path) as peer:
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
    async with await connect(sock_path) as peer:
        assert await peer.call(1, "Echo", {}) == {}
        begun = trio.current_time()
        await server.shutdown(grace=30)
        assert stopped.is_set()
        assert trio.current_time() - begun < 1
        assert await peer.frames_until_eof() == []
