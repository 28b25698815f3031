"""The asyncio client, ``sandboxd.aio``: the Controller contract on the standard library's event
loop, without trio.

Most tests run against a real server (a Controller with the ``sim`` and ``process`` backends,
served from a thread by :func:`sandboxd.testing.serve_in_thread`), with real processes for the
data plane.  What the client puts on the wire when a call is cancelled, times out or loses its
connection is checked against a scripted asyncio peer that records every frame it is sent.
Each test is a plain function that calls ``asyncio.run``, as an asyncio program would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import sandboxd.aio
from sandboxd import (
    AlreadyExists,
    DeadlineExceeded,
    ExecRequest,
    FailedPrecondition,
    LogChunk,
    NotFound,
    SandboxOptions,
    SandboxState,
    Unavailable,
)
from sandboxd._models import TOPIC_CREATE, TOPIC_START
from sandboxd.testing import serve_in_thread
from sandboxd.wire import (
    WINDOW_METADATA,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    decode_request,
    dumps,
    encode_frame,
    encode_response,
)

SLEEPER = SandboxOptions(command=["sleep", "1000"])


@pytest.fixture(scope="module")
def daemon() -> Iterator[str]:
    with serve_in_thread() as path:
        yield path


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(8):
            return await main()

    return asyncio.run(bounded())


def test_importing_the_asyncio_client_does_not_import_trio() -> None:
    code = "import sys, sandboxd.aio; print(sorted(m for m in sys.modules if 'trio' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_lifecycle_through_the_asyncio_client(daemon: str) -> None:
    async def main() -> None:
        async with sandboxd.aio.connect(daemon) as ctl:
            assert set(await ctl.version()) >= {"version", "protocol"}
            assert await ctl.create("a1", sandboxer="sim", labels={"k": "v"}) == "a1"
            with pytest.raises(AlreadyExists):
                await ctl.create("a1", sandboxer="sim")
            instance = await ctl.start("a1")
            assert instance.pid > 0
            status = await ctl.status("a1")
            assert status.state is SandboxState.READY and status.sandbox_id == "a1"
            assert (await ctl.platform("a1")).os
            await ctl.ping("a1")
            assert await ctl.metrics("a1") is not None
            assert [s.sandbox_id for s in await ctl.list({"k": "v"})] == ["a1"]
            await ctl.stop("a1")
            assert (await ctl.wait("a1")).exit_status is not None
            await ctl.shutdown("a1")
            with pytest.raises(NotFound):
                await ctl.status("a1")

    run(main)


def test_events_arrive_as_models_and_leaving_the_block_ends_the_stream(daemon: str) -> None:
    async def main() -> None:
        async with sandboxd.aio.connect(daemon) as ctl:
            async with ctl.events() as events:
                await ctl.create("ev1", sandboxer="sim")
                await ctl.start("ev1")
                seen = [await anext(events), await anext(events)]
            assert [(e.topic, e.sandbox_id) for e in seen] == [
                (TOPIC_CREATE, "ev1"),
                (TOPIC_START, "ev1"),
            ]
            assert ctl.client._conn.in_flight == 0
            await ctl.shutdown("ev1")

    run(main)


def test_exec_with_stdin_output_and_exit_on_a_real_process(daemon: str) -> None:
    async def main() -> None:
        async with sandboxd.aio.connect(daemon) as ctl:
            await ctl.create("x1", sandboxer="process", options=SLEEPER)
            await ctl.start("x1")
            request = ExecRequest(["sh", "-c", "cat; echo err >&2; exit 3"], stdin=True)
            async with ctl.exec("x1", request) as proc:
                assert proc.pid > 0 and proc.exec_id
                await proc.write(b"hello\n")
                await proc.close_stdin()
                chunks = [chunk async for chunk in proc]
                exit_ = await proc.wait()
            assert exit_.exit_status == 3
            assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"hello\n"
            assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"err\n"
            result = await ctl.exec_sync("x1", ExecRequest(["sh", "-c", "echo hi; exit 4"]))
            assert (result.exit_status, result.stdout) == (4, b"hi\n")
            await ctl.shutdown("x1")

    run(main)


def test_files_larger_than_the_window_go_both_ways(daemon: str, tmp_path: Path) -> None:
    # 3 MiB each way: several times the 1 MiB flow-control window, so both the server's
    # window updates (the upload) and the client's grants (the download) must flow.
    data = os.urandom(3 << 20)

    async def main() -> None:
        async with sandboxd.aio.connect(daemon) as ctl:
            await ctl.create("f1", sandboxer="process", options=SLEEPER)
            await ctl.start("f1")
            target = str(tmp_path / "blob")
            assert await ctl.write_file("f1", target, data) == len(data)
            async with ctl.read_file("f1", target) as pieces:
                assert b"".join([p async for p in pieces]) == data
            with pytest.raises(NotFound):
                async with ctl.read_file("f1", str(tmp_path / "missing")) as pieces:
                    [p async for p in pieces]
            await ctl.shutdown("f1")

    run(main)
    assert (tmp_path / "blob").read_bytes() == data


def test_logs_of_a_real_process(daemon: str) -> None:
    async def main() -> None:
        async with sandboxd.aio.connect(daemon) as ctl:
            options = SandboxOptions(command=["sh", "-c", "echo out-line"])
            await ctl.create("l1", sandboxer="process", options=options)
            await ctl.start("l1")
            await ctl.wait("l1")
            async with ctl.logs("l1") as chunks:
                got = [c async for c in chunks]
            assert b"".join(c.data for c in got if isinstance(c, LogChunk)) == b"out-line\n"
            await ctl.shutdown("l1")

    run(main)


def test_asyncio_timeout_and_task_cancel_leave_the_connection_usable(daemon: str) -> None:
    async def main() -> None:
        async with sandboxd.aio.connect(daemon) as ctl:
            await ctl.create("c1", sandboxer="process", options=SLEEPER)
            await ctl.start("c1")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await ctl.wait("c1")
            task = asyncio.create_task(ctl.wait("c1"))
            await asyncio.sleep(0)  # the request is on its way
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(TimeoutError):
                sleep = ExecRequest(["sleep", "1000"])
                async with asyncio.timeout(0.05), ctl.exec("c1", sleep) as proc:
                    await anext(proc)
            assert ctl.client._conn.in_flight == 0
            assert (await ctl.status("c1")).state is SandboxState.READY
            with pytest.raises(DeadlineExceeded):
                await ctl.wait("c1", timeout=0.05)
            await ctl.stop("c1", timeout_secs=0)
            assert (await ctl.wait("c1")).exit_status is not None
            await ctl.shutdown("c1")

    run(main)


# -- the wire, against a scripted peer --------------------------------------------------------


class Peer:
    """A server that records every frame it is sent and answers as a test tells it."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.arrived = asyncio.Condition()
        self.writer: asyncio.StreamWriter | None = None
        self.cursor = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            async with self.arrived:
                self.frames.extend(f for f in decoder.feed(data) if isinstance(f, Frame))
                self.arrived.notify_all()
        writer.close()

    async def frame(self, test: Callable[[Frame], bool]) -> Frame:
        """The next frame ``test`` accepts, after the one this returned last."""

        found: list[Frame] = []

        def look() -> bool:
            for i in range(self.cursor, len(self.frames)):
                if test(self.frames[i]):
                    self.cursor = i + 1
                    found.append(self.frames[i])
                    return True
            return False

        async with self.arrived:
            await self.arrived.wait_for(look)
        return found[0]


@asynccontextmanager
async def scripted(tmp_path: Path) -> AsyncIterator[tuple[Peer, sandboxd.aio.AsyncController]]:
    peer = Peer()
    path = str(tmp_path / "peer.sock")
    server = await asyncio.start_unix_server(peer.serve, path)
    async with server, sandboxd.aio.connect(path) as ctl:
        yield peer, ctl


def is_request(frame: Frame, method: str) -> bool:
    return frame.type == FrameType.REQUEST and decode_request(frame.payload).method == method


def is_cancel(frame: Frame) -> bool:
    ending = Flags.REMOTE_CLOSED | Flags.NO_DATA
    return frame.type == FrameType.DATA and frame.flags & ending == ending


def test_a_cancelled_call_tells_the_server_and_the_deadline_travels(tmp_path: Path) -> None:
    async def main() -> None:
        async with scripted(tmp_path) as (peer, ctl):
            # A call's own timeout is the deadline the server is given.
            with pytest.raises(DeadlineExceeded):
                await ctl.wait("w", timeout=0.2)
            request = await peer.frame(lambda f: is_request(f, "Wait"))
            assert 0 < decode_request(request.payload).timeout_nano <= 0.2e9
            await peer.frame(lambda f: is_cancel(f) and f.stream_id == request.stream_id)
            # asyncio.timeout: no deadline is sent (the loop has none to tell), a cancel is.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await ctl.status("s")
            request = await peer.frame(lambda f: is_request(f, "Status"))
            assert decode_request(request.payload).timeout_nano == 0
            await peer.frame(lambda f: is_cancel(f) and f.stream_id == request.stream_id)
            # Task cancel, while the call waits for its reply.
            task = asyncio.create_task(ctl.ping("p"))
            request = await peer.frame(lambda f: is_request(f, "Ping"))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await peer.frame(lambda f: is_cancel(f) and f.stream_id == request.stream_id)
            # A stream opened with flow control says so, with its window.
            async with ctl.read_file("r", "/x"):
                request = await peer.frame(lambda f: is_request(f, "ReadFile"))
            assert WINDOW_METADATA in decode_request(request.payload).metadata
            await peer.frame(lambda f: is_cancel(f) and f.stream_id == request.stream_id)
            # The connection still answers.
            task = asyncio.create_task(ctl.ping("q"))
            request = await peer.frame(lambda f: is_request(f, "Ping"))
            assert peer.writer is not None
            peer.writer.write(
                encode_frame(request.stream_id, FrameType.RESPONSE, 0, encode_response(b""))
            )
            await task

    run(main)


def test_the_connection_ending_wakes_every_waiting_call(tmp_path: Path) -> None:
    async def main() -> None:
        async with scripted(tmp_path) as (peer, ctl):
            calls = [asyncio.create_task(ctl.wait(f"w{i}")) for i in range(3)]

            async def stream() -> None:
                async with ctl.events() as events:
                    await anext(events)

            calls.append(asyncio.create_task(stream()))
            await peer.frame(lambda f: is_request(f, "Events"))
            assert peer.writer is not None
            peer.writer.close()
            for call in calls:
                with pytest.raises(Unavailable):
                    await call
            with pytest.raises(Unavailable):
                await ctl.ping("later")

    run(main)


def test_closing_the_client_wakes_its_calls_and_a_missing_daemon_is_unavailable(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with scripted(tmp_path) as (peer, ctl):
            call = asyncio.create_task(ctl.wait("w"))
            await peer.frame(lambda f: is_request(f, "Wait"))
            await ctl.aclose()
            with pytest.raises(Unavailable):
                await call
        with pytest.raises(Unavailable, match="nowhere"):
            async with sandboxd.aio.connect(tmp_path / "nowhere"):
                pass

    run(main)


def test_a_stream_send_after_its_end_fails(tmp_path: Path) -> None:
    async def main() -> None:
        async with scripted(tmp_path) as (peer, ctl), ctl.client.open_stream("S", "M") as call:
            request = await peer.frame(lambda f: is_request(f, "M"))
            assert peer.writer is not None
            final = encode_frame(
                request.stream_id,
                FrameType.RESPONSE,
                0,
                encode_response(dumps({"size": 1})),
            )
            peer.writer.write(final)
            assert await call.response() == {"size": 1}
            with pytest.raises(FailedPrecondition):
                await call.send({"data": b"x"})

    run(main)
