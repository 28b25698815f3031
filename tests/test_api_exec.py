"""The data plane through the socket: Exec, ExecSync, Logs, WriteFile, ReadFile.

A real server (``serve_controller``) on a real Unix socket serves a small fake controller
that has the runtime's data-plane methods (the runtime's own are tested with it); the remote
and blocking clients must give what the in-process API gives: the same names, results and
errors.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing

from sandboxd import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from sandboxd._models import (
    STDERR,
    STDOUT,
    ExecExit,
    ExecOutput,
    ExecRequest,
    ExecSyncResult,
    LogChunk,
    LogGap,
    WindowSize,
)
from sandboxd.api import DataPlane, RemoteController, SyncController, serve_controller
from sandboxd.rpc import open_client

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 20.0
CHUNK = 64 * 1024
S = "sandboxd.v1.Controller"
WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


class FakeExec:
    """One exec of the fake: ``cat`` echoes stdin, ``flood N`` writes N chunks, ``sleep`` runs
    until killed, ``exit N`` exits with N."""

    def __init__(self, request: ExecRequest) -> None:
        self.request = request
        self.exec_id = request.exec_id or "exec-1"
        self.pid = 4242
        self.resizes: list[tuple[int, int]] = []
        self.produced = 0
        self.killed = False
        self.done = trio.Event()
        self.release = trio.Event()
        self.exit_status = 0
        self._in_send, self._in_recv = trio.open_memory_channel[bytes](0)
        self._out_send, self._out_recv = trio.open_memory_channel[ExecOutput](0)

    async def write(self, data: bytes) -> None:
        await self._in_send.send(data)

    async def close_stdin(self) -> None:
        await self._in_send.aclose()

    async def resize(self, rows: int, cols: int) -> None:
        self.resizes.append((rows, cols))

    def __aiter__(self) -> AsyncIterator[ExecOutput]:
        return self._out_recv

    async def wait(self) -> ExecExit:
        await self.done.wait()
        return ExecExit(self.exit_status)

    async def run(self) -> None:
        name, *args = self.request.command
        async with self._out_send:
            if name == "cat":
                async for data in self._in_recv:
                    await self._out_send.send(ExecOutput(STDOUT, data))
                await self._out_send.send(ExecOutput(STDERR, repr(self.resizes).encode()))
            elif name == "flood":
                for _ in range(int(args[0])):
                    await self._out_send.send(ExecOutput(STDOUT, bytes(CHUNK)))
                    self.produced += 1
            elif name == "head":
                # Reads one chunk, stops reading its stdin, and exits once released.
                first = await self._in_recv.receive()
                await self._in_recv.aclose()
                await self._out_send.send(ExecOutput(STDOUT, first))
                await self.release.wait()
            elif name == "sleep":
                await trio.sleep_forever()
            elif name == "exit":
                self.exit_status = int(args[0])
        self.done.set()


class FakeController:
    """The runtime's data-plane methods, as the shared design has them, on sandbox ``box``."""

    def __init__(self) -> None:
        self.execs: list[FakeExec] = []
        self.killed = trio.Event()
        self.files: dict[str, bytes] = {}
        self.calls: list[tuple[str, Any]] = []

    def _check(self, sandbox_id: str) -> None:
        if sandbox_id == "stopped":
            raise FailedPrecondition("sandbox 'stopped' is stopped, not ready")
        if sandbox_id != "box":
            raise NotFound(f"sandbox {sandbox_id!r} not found")

    @asynccontextmanager
    async def exec(self, sandbox_id: str, request: ExecRequest) -> AsyncIterator[FakeExec]:
        self._check(sandbox_id)
        proc = FakeExec(request)
        self.execs.append(proc)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proc.run)
            try:
                yield proc
            finally:
                if not proc.done.is_set():
                    proc.killed = True
                    self.killed.set()
                nursery.cancel_scope.cancel()

    async def exec_sync(
        self, sandbox_id: str, request: ExecRequest, *, max_output_bytes: int = 1 << 20
    ) -> ExecSyncResult:
        self._check(sandbox_id)
        self.calls.append(("exec_sync", (request, max_output_bytes)))
        out = b"x" * 10
        return ExecSyncResult(
            exec_id="sync-1",
            stdout=out[:max_output_bytes],
            stderr=b"warn\n",
            exit_status=137,
            timed_out=True,
            truncated=max_output_bytes < len(out),
            signal=9,
        )

    @asynccontextmanager
    async def logs(
        self,
        sandbox_id: str,
        *,
        follow: bool = False,
        tail_bytes: int | None = None,
        since: datetime | None = None,
    ) -> AsyncIterator[AsyncIterator[LogChunk | LogGap]]:
        self._check(sandbox_id)
        self.calls.append(("logs", (follow, tail_bytes, since)))

        async def items() -> AsyncIterator[LogChunk | LogGap]:
            yield LogChunk(STDOUT, b"hello\n", WHEN)
            yield LogGap(100)
            yield LogChunk(STDERR, b"oops\n", WHEN)

        yield items()

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int | None = None,
    ) -> int:
        self._check(sandbox_id)
        if path.startswith("/ro/"):
            raise PermissionDenied(f"{path}: read-only")
        content = data if isinstance(data, bytes) else b"".join([p async for p in data])
        self.files[path] = content
        self.calls.append(("write_file", mode))
        return len(content)

    @asynccontextmanager
    async def read_file(self, sandbox_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check(sandbox_id)
        if path not in self.files:
            raise NotFound(f"{path}: no such file")
        content = self.files[path]

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(content), 3 * CHUNK):
                yield content[i : i + 3 * CHUNK]

        yield pieces()


@pytest.fixture
async def fake(nursery: trio.Nursery, sock_path: str) -> FakeController:
    controller = FakeController()
    await nursery.start(serve_controller, controller, sock_path)
    return controller


@asynccontextmanager
async def remote(path: str, **options: Any) -> AsyncIterator[RemoteController]:
    async with open_client(path, **options) as client:
        yield RemoteController(client)


# -- Exec ------------------------------------------------------------------------------------


async def test_exec_stdin_in_output_out_then_the_exit(fake: FakeController, sock_path: str):
    request = ExecRequest(["cat"], stdin=True, tty=True, window=WindowSize(24, 80), exec_id="e7")
    async with remote(sock_path) as controller, controller.exec("box", request) as proc:
        assert (proc.exec_id, proc.pid) == ("e7", 4242)
        await proc.resize(50, 132)
        await proc.write(b"hello ")
        await proc.write(b"x" * (3 * (1 << 20) + 5))  # more than one message carries
        await proc.close_stdin()
        out = [item async for item in proc]
        assert await proc.wait() == ExecExit(0)
    assert b"".join(o.data for o in out if o.stream == STDOUT) == b"hello " + b"x" * (
        3 * 2**20 + 5
    )
    assert [o.data for o in out if o.stream == STDERR] == [b"[(50, 132)]"]
    assert fake.execs[0].request == request
    assert not fake.execs[0].killed


async def test_stdin_written_after_the_command_stopped_reading_is_dropped(
    fake: FakeController, sock_path: str
):
    request = ExecRequest(["head"], stdin=True)
    async with remote(sock_path) as controller, controller.exec("box", request) as proc:
        await proc.write(b"one")
        assert await proc.__anext__() == ExecOutput(STDOUT, b"one")
        await proc.write(b"two")
        await proc.close_stdin()
        await trio.testing.wait_all_tasks_blocked()
        fake.execs[0].release.set()
        assert [item async for item in proc] == []
        assert await proc.wait() == ExecExit(0)


async def test_exec_output_is_paused_not_dropped_while_the_client_does_not_read(
    fake: FakeController, sock_path: str
):
    async with (
        remote(sock_path, window=4 * CHUNK) as controller,
        controller.exec("box", ExecRequest(["flood", "200"])) as proc,
    ):
        await trio.testing.wait_all_tasks_blocked()
        # The window, one message past it, and what sits in the pipes between.
        assert fake.execs[0].produced <= 4 + 3
        chunks = [item async for item in proc]
        assert len(chunks) == 200 and all(c.data == bytes(CHUNK) for c in chunks)
        assert (await proc.wait()).exit_status == 0


async def test_leaving_the_exec_block_kills_the_exec(fake: FakeController, sock_path: str):
    async with remote(sock_path) as controller:
        async with controller.exec("box", ExecRequest(["sleep"])) as proc:
            assert proc.pid == 4242
        await fake.killed.wait()
        assert fake.execs[0].killed
        result = await controller.exec_sync("box", ExecRequest(["true"]))
        assert result.exec_id == "sync-1"


async def test_a_client_that_goes_away_kills_its_execs(fake: FakeController, sock_path: str):
    with trio.CancelScope() as scope:
        async with (
            remote(sock_path) as controller,
            controller.exec("box", ExecRequest(["sleep"])),
        ):
            await trio.testing.wait_all_tasks_blocked()
            # The connection closes under the call.
            controller.client.close()
            scope.cancel()
    await fake.killed.wait()


async def test_exec_errors_are_the_runtime_s(fake: FakeController, sock_path: str):
    async with remote(sock_path) as controller:
        with pytest.raises(NotFound, match="sandbox 'nope' not found"):
            async with controller.exec("nope", ExecRequest(["true"])):
                pass
        with pytest.raises(FailedPrecondition, match="not ready"):
            async with controller.exec("stopped", ExecRequest(["true"])):
                pass
        async with controller.exec("box", ExecRequest(["exit", "3"])) as proc:
            assert await proc.wait() == ExecExit(3)
            with pytest.raises(FailedPrecondition):
                await proc.write(b"too late")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"sandbox_id": "box", "command": "ls"}, "Exec.command: must be an array of text"),
        ({"sandbox_id": "box", "command": []}, "Exec.command: must not be empty"),
        ({"sandbox_id": "box"}, "Exec: field 'command' is required"),
        ({"sandbox_id": "box", "command": ["a"], "tty": 1}, "Exec.tty: must be a boolean"),
        (
            {"sandbox_id": "box", "command": ["a"], "window": {"rows": 1}},
            "Exec.window: field 'cols' is required",
        ),
        (
            {"sandbox_id": "box", "command": ["a"], "timeout_secs": 0},
            "Exec.timeout_secs: must be > 0",
        ),
    ],
)
async def test_a_malformed_exec_request_is_refused_naming_the_field(
    fake: FakeController, sock_path: str, message: dict[str, Any], error: str
):
    async with open_client(sock_path) as client, client.open_stream(S, "Exec", message) as call:
        with pytest.raises(InvalidArgument) as caught:
            await call.receive()
        assert caught.value.message == error
    assert fake.execs == []


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"stdin": "text"}, "Exec input.stdin: must be a byte string"),
        ({"close_stdin": 1}, "Exec input.close_stdin: must be true"),
        ({"resize": {"rows": 1, "cols": -1}}, "Exec input.resize.cols: must be from 0 to 65535"),
        ({"stdin": b"", "close_stdin": True}, "Exec input: must hold exactly one of"),
        ({"kill": True}, "Exec input: unknown field 'kill'"),
    ],
)
async def test_a_malformed_exec_input_ends_the_exec_naming_the_field(
    fake: FakeController, sock_path: str, message: dict[str, Any], error: str
):
    request = {"sandbox_id": "box", "command": ["cat"], "stdin": True}
    async with open_client(sock_path) as client, client.open_stream(S, "Exec", request) as call:
        assert await call.receive() == {"exec_id": "exec-1", "pid": 4242}
        await call.send(message)
        with pytest.raises(InvalidArgument) as caught:
            await call.response()
        assert caught.value.message.startswith(error)
    await fake.killed.wait()


async def test_the_client_s_half_close_closes_stdin(fake: FakeController, sock_path: str):
    request = {"sandbox_id": "box", "command": ["cat"], "stdin": True}
    async with open_client(sock_path) as client, client.open_stream(S, "Exec", request) as call:
        await call.receive()
        await call.send({"stdin": b"abc"})
        await call.close_send()
        assert await call.receive() == {"stdout": b"abc"}
        assert await call.receive() == {"stderr": b"[]"}
        assert await call.response() == {"exit_status": 0, "timed_out": False}


# -- ExecSync, Logs, files ------------------------------------------------------------------


async def test_exec_sync_logs_and_files(fake: FakeController, sock_path: str):
    async with remote(sock_path) as controller:
        result = await controller.exec_sync(
            "box", ExecRequest(["x"], env={"A": "1"}, user="1000"), max_output_bytes=4
        )
        assert result == ExecSyncResult("sync-1", b"xxxx", b"warn\n", 137, True, True, 9)
        assert fake.calls[-1] == (
            "exec_sync",
            (ExecRequest(["x"], env={"A": "1"}, user="1000"), 4),
        )
        with pytest.raises(InvalidArgument, match="ExecSync: tty, stdin and window are for Exec"):
            await controller.exec_sync("box", ExecRequest(["x"], tty=True))

        async with controller.logs("box", follow=True, tail_bytes=10, since=WHEN) as items:
            got = [item async for item in items]
        assert got == [
            LogChunk(STDOUT, b"hello\n", WHEN),
            LogGap(100),
            LogChunk(STDERR, b"oops\n", WHEN),
        ]
        assert fake.calls[-1] == ("logs", (True, 10, WHEN))

        big = bytes(range(256)) * 12_000  # about 3 MiB: several messages
        assert await controller.write_file("box", "/a", big, mode=0o640) == len(big)
        assert fake.files["/a"] == big and fake.calls[-1] == ("write_file", 0o640)

        async def pieces() -> AsyncIterator[bytes]:
            yield b"one "
            yield b"two"

        assert await controller.write_file("box", "/b", pieces()) == 7
        async with controller.read_file("box", "/a") as data:
            assert b"".join([piece async for piece in data]) == big
        with pytest.raises(PermissionDenied, match="/ro/x: read-only"):
            await controller.write_file("box", "/ro/x", b"nope")
        with pytest.raises(NotFound, match="/missing: no such file"):
            async with controller.read_file("box", "/missing") as data:
                [piece async for piece in data]


@pytest.mark.parametrize(
    ("method", "message", "error"),
    [
        ("ExecSync", {"sandbox_id": "box", "command": ["a"], "tty": True}, "unknown field 'tty'"),
        (
            "ExecSync",
            {"sandbox_id": "box", "command": ["a"], "max_output_bytes": 4 << 20},
            "ExecSync.max_output_bytes: must be from 0 to",
        ),
        ("Logs", {"sandbox_id": "box", "since": "yesterday"}, "Logs.since: must be a timestamp"),
        ("Logs", {"sandbox_id": "box", "tail_bytes": -1}, "Logs.tail_bytes: must be from 0"),
        ("WriteFile", {"sandbox_id": "box"}, "WriteFile: field 'path' is required"),
        ("WriteFile", {"sandbox_id": "box", "path": "/a", "mode": "644"}, "WriteFile.mode"),
        ("ReadFile", {"sandbox_id": "box", "path": b"/a"}, "ReadFile.path: must be text"),
    ],
)
async def test_malformed_requests_are_refused_naming_the_field(
    fake: FakeController, sock_path: str, method: str, message: dict[str, Any], error: str
):
    async with open_client(sock_path) as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.call(S, method, message)
        assert error in caught.value.message


async def test_write_file_data_must_be_byte_strings(fake: FakeController, sock_path: str):
    message = {"sandbox_id": "box", "path": "/a"}
    async with (
        open_client(sock_path) as client,
        client.open_stream(S, "WriteFile", message) as call,
    ):
        await call.send({"data": "text"})
        await call.close_send()
        with pytest.raises(InvalidArgument, match=r"WriteFile data\.data: must be a byte string"):
            await call.response()


# -- the blocking client and the names of every client ---------------------------------------


async def test_the_blocking_controller_does_the_same(fake: FakeController, sock_path: str):
    def run() -> dict[str, Any]:
        with SyncController(sock_path, timeout=10) as controller:
            with controller.exec("box", ExecRequest(["cat"], stdin=True)) as proc:
                proc.write(b"abc")
                proc.close_stdin()
                out = list(proc)
                exit_ = proc.wait()
            with controller.logs("box") as items:
                logs = list(items)
            size = controller.write_file("box", "/s", [b"ab", b"cd"])
            with controller.read_file("box", "/s") as pieces:
                content = b"".join(pieces)
            with pytest.raises(NotFound):
                controller.exec_sync("gone", ExecRequest(["true"]))
            return {"out": out, "exit": exit_, "logs": len(logs), "size": size, "content": content}

    got = await trio.to_thread.run_sync(run)
    assert got == {
        "out": [ExecOutput(STDOUT, b"abc"), ExecOutput(STDERR, b"[]")],
        "exit": ExecExit(0),
        "logs": 3,
        "size": 4,
        "content": b"abcd",
    }


@pytest.mark.parametrize("name", ["exec", "exec_sync", "logs", "write_file", "read_file"])
async def test_every_client_has_the_in_process_names_and_arguments(name: str):
    def params(cls: type) -> list[str]:
        names = list(inspect.signature(getattr(cls, name)).parameters)
        return [n for n in names if n not in ("self", "timeout")]

    assert params(RemoteController) == params(DataPlane)
    assert params(SyncController) == params(DataPlane)
