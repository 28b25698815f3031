"""Who may use the socket: file ownership and mode, peer credentials, PERMISSION_DENIED.

The tests run as root, and root is always served by default, so refusal is tested two ways:
in-process, with a server whose allowed uids leave out both root and us
(``allowed_uids={12345}``); and for real, with a child process that drops to uid/gid 65534
(``setpriv``) and connects to a socket opened to group 65534 with ``socket_group``, first
refused, then served once 65534 is allowed.  The daemon's own ``--socket-group`` and
``--allow-uid`` options are checked the same way against ``sandboxd serve``.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from peers import Peer, request_frame, status_of
from sandboxd import PermissionDenied, RPCError, Unavailable
from sandboxd.api import RUNTIME_SERVICE, connect, runtime_service
from sandboxd.rpc import (
    CallContext,
    Method,
    PeerCredentials,
    Server,
    SyncClient,
    inline,
    open_client,
)
from sandboxd.wire import (
    Code,
    Frame,
    FrameType,
    decode_response,
)

pytestmark = pytest.mark.usefixtures("watchdog")
NOBODY = 65534
#: Seconds after which a test counts as hung.
GUARD = 60.0
SETPRIV = shutil.which("setpriv")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")
needs_setpriv = pytest.mark.skipif(SETPRIV is None, reason="setpriv is not installed")


def _nobody_group() -> int:
    try:
        return grp.getgrgid(NOBODY).gr_gid
    except KeyError:
        pytest.fail(f"no group with gid {NOBODY} (Debian always has nogroup)")


def services() -> dict[str, Mapping[str, Method]]:
    def whoami(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        assert ctx.peer is not None
        return {"pid": ctx.peer.pid, "uid": ctx.peer.uid, "gid": ctx.peer.gid}

    return {"test.v1.Access": {"Whoami": inline(whoami)}, RUNTIME_SERVICE: runtime_service()}


async def start(nursery: trio.Nursery, path: str, **options: Any) -> Server:
    server = Server(services(), **options)
    assert await nursery.start(server.serve_unix, path) == path
    return server


async def raw_exchange(path: str, data: bytes) -> list[Frame]:
    """Connect, send ``data``, read every frame until the server closes the connection."""
    async with await Peer.connect(path) as peer:
        return await peer.exchange(data)


# -- the socket file -------------------------------------------------------------------------


async def test_socket_is_0600_and_owned_by_the_daemons_user(nursery: trio.Nursery, sock_path: str):
    await start(nursery, sock_path)
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


async def test_socket_group_makes_it_0660_and_owned_by_that_group(
    nursery: trio.Nursery, sock_path: str
):
    gid = _nobody_group()
    server = await start(nursery, sock_path, socket_group=grp.getgrgid(gid).gr_name)
    assert server.socket_group == gid
    st = os.stat(sock_path)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (os.geteuid(), gid)


async def test_unknown_socket_group_is_refused_at_construction() -> None:
    with pytest.raises(LookupError, match="unknown group 'no-such-group-sbd'"):
        Server(services(), socket_group="no-such-group-sbd")


async def test_socket_group_warns_when_the_group_cannot_enter_the_directory(
    nursery: trio.Nursery, sock_path: str, caplog: pytest.LogCaptureFixture
):
    gid = _nobody_group()
    os.chmod(os.path.dirname(sock_path), 0o700)
    with caplog.at_level(logging.WARNING, logger="sandboxd.rpc"):
        await start(nursery, sock_path, socket_group=gid)
    assert f"group {gid} cannot reach {sock_path}" in caplog.text


# -- refusal, in-process ---------------------------------------------------------------------


async def test_default_allowed_uids_are_our_own_and_root(nursery: trio.Nursery, sock_path: str):
    server = await start(nursery, sock_path)
    assert server.allowed_uids == {os.geteuid(), 0}
    async with open_client(sock_path) as client:
        assert (await client.call(RUNTIME_SERVICE, "Version"))["protocol"] == 1


async def test_refused_uid_gets_one_permission_denied_on_stream_0_then_the_connection_closes(
    nursery: trio.Nursery, sock_path: str, caplog: pytest.LogCaptureFixture
):
    server = await start(nursery, sock_path, allowed_uids={12345})
    with caplog.at_level(logging.WARNING, logger="sandboxd.rpc"):
        frames = await raw_exchange(
            sock_path, request_frame(1, "Version", service=RUNTIME_SERVICE)
        )
    assert len(frames) == 1, frames
    [frame] = frames
    assert (frame.stream_id, frame.type, frame.flags) == (0, FrameType.RESPONSE, 0)
    uid = os.geteuid()
    assert status_of(frame) == (
        Code.PERMISSION_DENIED,
        f"uid {uid} is not allowed to use this socket",
    )
    with pytest.raises(PermissionDenied):
        decode_response(frame.payload)
    # One warning line, naming the uid and the pid.
    [record] = [r for r in caplog.records if "refusing" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert f"uid {uid}" in record.getMessage()
    assert f"pid {os.getpid()}" in record.getMessage()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == 0


async def test_refusal_is_sent_even_if_the_client_sends_nothing(
    nursery: trio.Nursery, sock_path: str
):
    await start(nursery, sock_path, allowed_uids={12345})
    [frame] = await raw_exchange(sock_path, b"")
    assert frame.stream_id == 0
    assert status_of(frame)[0] == Code.PERMISSION_DENIED


async def test_trio_client_raises_permission_denied_for_pending_and_later_calls(
    nursery: trio.Nursery, sock_path: str
):
    await start(nursery, sock_path, allowed_uids={12345})
    async with open_client(sock_path) as client:
        with pytest.raises(PermissionDenied, match="is not allowed to use this socket"):
            await client.call(RUNTIME_SERVICE, "Version")
        assert client.closed
        with pytest.raises(PermissionDenied, match="is not allowed to use this socket"):
            await client.call(RUNTIME_SERVICE, "Version")


async def test_trio_client_fails_calls_already_waiting_with_permission_denied(
    nursery: trio.Nursery, sock_path: str
):
    await start(nursery, sock_path, allowed_uids={12345})
    errors: list[RPCError] = []
    async with open_client(sock_path) as client:

        async def call() -> None:
            try:
                await client.call(RUNTIME_SERVICE, "Version")
            except RPCError as err:
                errors.append(err)

        async with trio.open_nursery() as calls:
            for _ in range(5):
                calls.start_soon(call)
    assert len(errors) == 5
    assert all(type(err) is PermissionDenied for err in errors), errors


async def test_remote_controller_raises_permission_denied(nursery: trio.Nursery, sock_path: str):
    await start(nursery, sock_path, allowed_uids={12345})
    async with connect(sock_path) as remote:
        with pytest.raises(PermissionDenied):
            await remote.version()
        with pytest.raises(PermissionDenied):
            await remote.list()


async def test_sync_client_raises_permission_denied_for_this_and_later_calls(
    nursery: trio.Nursery, sock_path: str
):
    await start(nursery, sock_path, allowed_uids={12345})

    def use() -> list[str]:
        seen = []
        with SyncClient(sock_path) as client:
            for _ in range(2):
                try:
                    client.call(RUNTIME_SERVICE, "Version", timeout=5)
                except RPCError as err:
                    seen.append(type(err).__name__)
        return seen

    assert await trio.to_thread.run_sync(use) == ["PermissionDenied", "PermissionDenied"]


async def test_an_allowed_uid_is_served_and_handlers_see_its_credentials(
    nursery: trio.Nursery, sock_path: str
):
    await start(nursery, sock_path, allowed_uids={12345, os.geteuid()})
    async with open_client(sock_path) as client:
        who = await client.call("test.v1.Access", "Whoami")
    assert who == {"pid": os.getpid(), "uid": os.geteuid(), "gid": os.getegid()}
    assert PeerCredentials(**who) == PeerCredentials(os.getpid(), os.geteuid(), os.getegid())


async def test_client_going_away_is_still_unavailable(nursery: trio.Nursery, sock_path: str):
    """Only an error on stream 0 changes the error calls get: a plain close is UNAVAILABLE."""
    server = await start(nursery, sock_path)
    async with open_client(sock_path) as client:
        await client.call(RUNTIME_SERVICE, "Version")
        await server.shutdown(0)
        with pytest.raises(Unavailable):
            await client.call(RUNTIME_SERVICE, "Version")


# -- refusal across users, for real ----------------------------------------------------------

_CHILD = """
import json, os, sys
from sandboxd import RPCError
from sandboxd.rpc import SyncClient

out = {"pid": os.getpid(), "uid": os.getuid()}
try:
    with SyncClient(sys.argv[1]) as client:
        out["result"] = client.call("sandboxd.v1.Runtime", "Version", timeout=5)
except RPCError as err:
    out["error"] = [type(err).__name__, err.message]
print(json.dumps(out, default=str))
"""


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory group 65534 may enter (0710), for a socket opened to that group."""
    gid = _nobody_group()
    directory = tempfile.mkdtemp(prefix="sbd-")
    try:
        os.chown(directory, -1, gid)
        os.chmod(directory, 0o710)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def as_nobody(path: str) -> dict[str, Any]:
    """Run the SyncClient script as uid/gid 65534 against ``path``; what it printed."""
    assert SETPRIV is not None
    argv = [
        SETPRIV,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        sys.executable,
        "-c",
        _CHILD,
        path,
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, env=env)
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["uid"] == NOBODY
    return result


@needs_root
@needs_setpriv
async def test_another_user_is_refused_then_served_once_allowed(
    nursery: trio.Nursery, shared_dir: str, caplog: pytest.LogCaptureFixture
):
    path = os.path.join(shared_dir, "s.sock")
    server = Server(services(), socket_group=NOBODY)
    with caplog.at_level(logging.WARNING, logger="sandboxd.rpc"):
        async with trio.open_nursery() as inner:
            await inner.start(server.serve_unix, path)
            refused = await as_nobody(path)
            await server.shutdown(0)
    assert refused["error"] == [
        "PermissionDenied",
        f"uid {NOBODY} is not allowed to use this socket",
    ]
    assert f"refusing connection from uid {NOBODY} (pid {refused['pid']})" in caplog.text
    assert "cannot reach" not in caplog.text

    allowing = Server(services(), socket_group=NOBODY, allowed_uids={os.geteuid(), 0, NOBODY})
    async with trio.open_nursery() as inner:
        await inner.start(allowing.serve_unix, path)
        served = await as_nobody(path)
        await allowing.shutdown(0)
    assert "error" not in served, served
    assert served["result"]["protocol"] == 1


@needs_root
@needs_setpriv
async def test_without_the_group_another_user_cannot_even_connect(
    nursery: trio.Nursery, shared_dir: str
):
    path = os.path.join(shared_dir, "s.sock")
    await start(nursery, path, allowed_uids={os.geteuid(), 0, NOBODY})
    result = await as_nobody(path)
    assert result["error"][0] == "Unavailable"
    assert "Permission denied" in result["error"][1]


# -- the daemon's options --------------------------------------------------------------------


def sandboxd_argv(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("sandboxd")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "sandboxd"]
    return [*base, *args]


@contextlib.asynccontextmanager
async def daemon(tmp_path: Path, socket: str, *options: str) -> AsyncIterator[Path]:
    """``sandboxd serve`` on ``socket`` until the block ends; yields its log file."""
    log = tmp_path / "daemon.log"
    env = {**os.environ, "SANDBOXD_STATE_DIR": str(tmp_path / "state")}
    env.pop("SANDBOXD_SOCKET", None)
    argv = sandboxd_argv("serve", "--socket", socket, *options)
    with log.open("ab") as out:
        process = await trio.lowlevel.open_process(argv, stdout=out, stderr=out, env=env)
    try:
        with trio.fail_after(10):
            while True:
                if process.poll() is not None:
                    pytest.fail(f"daemon exited with {process.returncode}:\n{log.read_text()}")
                try:
                    async with open_client(socket) as client:
                        await client.call(RUNTIME_SERVICE, "Version")
                    break
                except Unavailable:
                    await trio.sleep(0.02)
        yield log
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await process.wait()


@needs_root
@needs_setpriv
async def test_daemon_socket_group_and_allow_uid(tmp_path: Path, shared_dir: str):
    path = os.path.join(shared_dir, "d.sock")
    group = grp.getgrgid(_nobody_group()).gr_name
    async with daemon(tmp_path, path, "--socket-group", group) as log:
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, NOBODY)
        refused = await as_nobody(path)
    assert refused["error"][0] == "PermissionDenied", refused
    assert f"refusing connection from uid {NOBODY} (pid {refused['pid']})" in log.read_text()

    async with daemon(tmp_path, path, "--socket-group", group, "--allow-uid", str(NOBODY)):
        served = await as_nobody(path)
    assert served.get("result", {}).get("protocol") == 1, served


async def test_daemon_refuses_an_unknown_group_at_start(tmp_path: Path) -> None:
    argv = sandboxd_argv(
        "serve", "--socket", str(tmp_path / "s.sock"), "--socket-group", "no-such-group-sbd"
    )
    env = {**os.environ, "SANDBOXD_STATE_DIR": str(tmp_path / "state")}
    done = await trio.run_process(argv, capture_stderr=True, check=False, env=env)
    assert done.returncode == 2
    assert b"unknown group 'no-such-group-sbd'" in done.stderr
    assert not (tmp_path / "s.sock").exists()


async def test_serve_help_lists_the_access_and_limit_options() -> None:
    done = await trio.run_process(sandboxd_argv("serve", "--help"), capture_stdout=True)
    for option in (
        "--socket-group",
        "--allow-uid",
        "--max-connections",
        "--max-calls-per-connection",
        "--max-buffered-bytes",
        "--stall-timeout",
    ):
        assert option.encode() in done.stdout
