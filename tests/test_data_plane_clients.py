"""Exec, ExecSync, files and Logs behave the same through every client: the in-process
Controller, the trio RemoteController, the blocking SyncController and the asyncio
AsyncController, with real processes.

Each test is written once against a :class:`~client_drivers.Driver` (client_drivers.py,
shared with test_clients_shared.py), against the server in the test's loop.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from client_drivers import CLIENTS, AsyncDriver, Driver, open_driver
from peers import Peer, request_frame
from sandboxd import (
    ExecExit,
    ExecOutput,
    ExecRequest,
    FailedPrecondition,
    InvalidArgument,
    LogChunk,
    NotFound,
    SandboxOptions,
)
from sandboxd._models import STDERR, STDOUT, TOPIC_EXEC_EXIT
from sandboxd.api import CONTROLLER_SERVICE
from sandboxd.runtime import Controller

#: Seconds a test may run before the watchdog fails it (asked for by name, as an argument).
GUARD = 20.0


@pytest.fixture(params=["in-process", *CLIENTS])
async def driver(
    request: pytest.FixtureRequest,
    sandboxd_controller: Controller,
    sandboxd_socket: str,
    watchdog: None,
) -> AsyncIterator[Driver]:
    if request.param == "in-process":
        yield AsyncDriver(sandboxd_controller, "in-process")
    else:
        async with open_driver(request.param, sandboxd_socket) as driver:
            yield driver


async def started(driver: Driver, sandbox_id: str, *command: str) -> None:
    argv = command or ("sleep", "1000")
    options = SandboxOptions(command=argv)
    await driver.call("create", sandbox_id, sandboxer="process", options=options)
    await driver.call("start", sandbox_id)


def joined(chunks: list[ExecOutput], stream: str) -> bytes:
    return b"".join(c.data for c in chunks if c.stream == stream)


async def test_exec_streams_stdin_in_and_both_outputs_back_apart(driver: Driver) -> None:
    await started(driver, "dp1")
    text = os.urandom(100_000)
    request = ExecRequest(["sh", "-c", "cat; echo err >&2; exit 5"], stdin=True)
    chunks, result = await driver.run("dp1", request, stdin=text)
    assert joined(chunks, STDOUT) == text
    assert joined(chunks, STDERR) == b"err\n"
    assert result == ExecExit(5, False, None)


async def test_a_terminal_is_resized_before_the_input_that_follows(driver: Driver) -> None:
    await started(driver, "dp8")
    request = ExecRequest(["sh", "-c", "read line; stty size"], tty=True, stdin=True)
    chunks, result = await driver.run("dp8", request, stdin=b"go\n", resize=(40, 120))
    assert joined(chunks, STDOUT).endswith(b"40 120\r\n")
    assert result.exit_status == 0


async def test_exec_sync_caps_each_stream_and_says_so(driver: Driver) -> None:
    await started(driver, "dp2")
    script = "head -c 3000 /dev/zero; head -c 10 /dev/zero >&2; exit 2"
    result = await driver.call(
        "exec_sync", "dp2", ExecRequest(["sh", "-c", script]), max_output_bytes=1000
    )
    assert (result.stdout, result.stderr) == (b"\0" * 1000, b"\0" * 10)
    assert (result.exit_status, result.truncated, result.timed_out) == (2, True, False)
    with pytest.raises(InvalidArgument, match="max_output_bytes"):
        await driver.call("exec_sync", "dp2", ExecRequest(["true"]), max_output_bytes=0)


async def test_an_execs_timeout_kills_it_and_says_so(driver: Driver) -> None:
    await started(driver, "dp3")
    request = ExecRequest(["sh", "-c", "sleep 1000 & sleep 1000"], timeout_secs=0.2)
    result = await driver.call("exec_sync", "dp3", request)
    assert (result.exit_status, result.timed_out, result.signal) == (137, True, signal.SIGKILL)


async def test_the_same_refusals_with_the_same_codes(driver: Driver) -> None:
    with pytest.raises(NotFound):
        await driver.call("exec_sync", "dp-none", ExecRequest(["true"]))
    await started(driver, "dp4", "true")
    await driver.call("wait", "dp4")
    with pytest.raises(FailedPrecondition, match="stopped"):
        await driver.call("exec_sync", "dp4", ExecRequest(["true"]))
    with pytest.raises(FailedPrecondition, match="stopped"):
        await driver.run("dp4", ExecRequest(["true"]))
    with pytest.raises(FailedPrecondition, match="stopped"):
        await driver.read_file("dp4", "/etc/hostname")


async def test_files_go_in_and_come_back_with_their_mode(driver: Driver, tmp_path: Any) -> None:
    await started(driver, "dp5")
    data = os.urandom(300_000)
    path = str(tmp_path / "copied")
    assert await driver.call("write_file", "dp5", path, data, mode=0o640) == len(data)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert await driver.read_file("dp5", path) == data
    pieces = [b"one ", b"", b"two"]
    assert await driver.write_pieces("dp5", path, pieces) == 7
    assert await driver.read_file("dp5", path) == b"one two"
    with pytest.raises(NotFound):
        await driver.read_file("dp5", str(tmp_path / "missing"))


async def test_logs_give_the_inits_output_apart(driver: Driver) -> None:
    await started(driver, "dp6", "sh", "-c", "echo to-out; echo to-err >&2")
    await driver.call("wait", "dp6")
    chunks = await driver.logs("dp6")
    assert all(isinstance(c, LogChunk) for c in chunks)
    by_stream = {s: b"".join(c.data for c in chunks if c.stream == s) for s in (STDOUT, STDERR)}  # type: ignore[union-attr]
    assert by_stream == {STDOUT: b"to-out\n", STDERR: b"to-err\n"}
    followed = await driver.logs("dp6", follow=True)
    assert b"".join(c.data for c in followed if isinstance(c, LogChunk)).count(b"\n") == 2


async def test_a_client_that_goes_away_kills_its_execs(
    sandboxd_controller: Controller, sandboxd_socket: str, watchdog: None
) -> None:
    """containerd's choice: an Exec whose connection closes (here a raw peer that opened the
    stream, saw the command start, and hung up) is killed, and its exit is published as for
    any other exec."""
    await sandboxd_controller.create(
        "dp7", sandboxer="process", options=SandboxOptions(command=("sleep", "1000"))
    )
    await sandboxd_controller.start("dp7")
    with sandboxd_controller.subscribe() as events:
        async with await Peer.connect(sandboxd_socket, service=CONTROLLER_SERVICE) as peer:
            request = {"sandbox_id": "dp7", "command": ["sleep", "1000"], "exec_id": "gone"}
            await peer.send(
                request_frame(1, "Exec", request, service=CONTROLLER_SERVICE, flags=0x02)
            )
            started = await peer.message(1)
            assert started["exec_id"] == "gone"
            assert sandboxd_controller.status_nowait("dp7").info["execs"] == "1"
        async for event in events:
            if event.topic == TOPIC_EXEC_EXIT:
                break
    assert (event.exec_id, event.exit_status) == ("gone", 137)
    assert sandboxd_controller.status_nowait("dp7").info["execs"] == "0"
