"""sandboxd.v1's streams in protobuf, through a real socket, with real processes: Events, Exec,
Logs, WriteFile and ReadFile as ttrpc (>= 1.2) streams, and the unary calls around them.

The server serves the CBOR services and the protobuf ones for one Controller, as the daemon
does; the clients are the project's own (the trio client, and the blocking one in a worker
thread) in the protobuf envelope, built on the same sans-io core as the CBOR ones.  Payloads
are built, and answers read, with the generated classes.  A raw peer checks the frames a Go
ttrpc client sends and reads.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf.empty_pb2 import Empty

from peers import Peer
from sandboxd import FailedPrecondition, InvalidArgument, NotFound
from sandboxd._models import (
    TOPIC_CREATE,
    TOPIC_DELETE,
    TOPIC_EXEC_EXIT,
    TOPIC_EXEC_START,
    TOPIC_EXIT,
    TOPIC_START,
)
from sandboxd.api import controller_service, runtime_service
from sandboxd.api._client_common import CONTROLLER_SERVICE, RUNTIME_SERVICE
from sandboxd.api._pb_services import SANDBOX_SERVICE, protobuf_services
from sandboxd.backends import BwrapBackend, ProcessBackend
from sandboxd.proto import containerd_sandbox_pb2 as sandbox_pb
from sandboxd.proto import sandboxd_pb2 as pb
from sandboxd.rpc import Client, Server, StreamCall, SyncClient, open_client
from sandboxd.runtime import Controller, open_controller
from sandboxd.testing._server import shutdown_all
from sandboxd.testing.pytest_plugin import FIXTURE_STOP_TIMEOUT
from sandboxd.wire import FrameType, encode_frame, encode_pb_request

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds after which a test counts as hung.
GUARD = 10.0
C = CONTROLLER_SERVICE
REMOTE_CLOSED, REMOTE_OPEN, NO_DATA = 0x01, 0x02, 0x04


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    """A Controller with the process and bwrap sandboxers; what is left is shut down."""
    backends = [ProcessBackend(), BwrapBackend()]
    async with open_controller(backends, stop_timeout=FIXTURE_STOP_TIMEOUT) as running:
        try:
            yield running
        finally:
            with trio.CancelScope(shield=True):
                await shutdown_all(running)


@pytest.fixture
async def server(nursery: trio.Nursery, sock_path: str, controller: Controller) -> Server:
    """Both envelopes for one Controller on ``sock_path``, as the daemon serves them."""
    cbor = controller_service(controller)
    served = Server(
        {RUNTIME_SERVICE: runtime_service(), C: cbor},
        protobuf_services=protobuf_services(controller, cbor=cbor),
    )
    assert await nursery.start(served.serve_unix, sock_path) == sock_path
    return served


@pytest.fixture
async def client(server: Server, sock_path: str) -> AsyncIterator[Client]:
    async with open_client(sock_path, envelope="protobuf") as client:
        yield client


async def call(client: Client, method: str, request: Any, answer: Any, service: str = C) -> Any:
    """A unary call's answer to ``request`` (a message, or its bytes), read as ``answer``."""
    payload = request if isinstance(request, bytes) else bytes_of(request)
    return answer.FromString(await client.call_encoded(service, method, payload))


def bytes_of(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


async def sandbox(
    client: Client, sandbox_id: str, *command: str, start: bool = True, sandboxer: str = "process"
) -> None:
    """A sandbox whose init runs ``command`` (sleeps by default), created (and started)
    through the protobuf Controller."""
    options = pb.SandboxOptions(command=command or ("sleep", "1000"))
    request = pb.CreateRequest(sandbox_id=sandbox_id, sandboxer=sandboxer, options=options)
    await client.call_encoded(C, "Create", bytes_of(request))
    if start:
        started = await call(client, "Start", sb(sandbox_id), pb.StartResponse)
        assert started.pid > 0


def sb(sandbox_id: str) -> bytes:
    return bytes_of(pb.SandboxRequest(sandbox_id=sandbox_id))


async def received(call: StreamCall, cls: Any) -> list[Any]:
    """Every message of a stream until its end, read as ``cls``."""
    found = []
    while (data := await call.receive_encoded()) is not None:
        found.append(cls.FromString(data))
    return found


def exec_input(**fields: Any) -> bytes:
    return bytes_of(pb.ExecInput(**fields))


def output_of(outputs: Iterable[Any], name: str) -> bytes:
    return b"".join(getattr(m, name) for m in outputs if m.WhichOneof("output") == name)


# -- Events ----------------------------------------------------------------------------------


async def test_events_follow_a_lifecycle_in_order_and_end_when_the_daemon_drains(
    client: Client, controller: Controller
) -> None:
    with trio.fail_after(GUARD):
        async with client.stream(C, "Events") as events:
            await sandbox(client, "ev", "sh", "-c", "exit 3")
            assert (await call(client, "Wait", sb("ev"), pb.WaitResponse)).exit_status == 3
            await client.call_encoded(C, "Shutdown", sb("ev"))
            seen = []
            while len(seen) < 4:
                data = await events.receive_encoded()
                assert data is not None
                seen.append(pb.Event.FromString(data))
            assert [e.topic for e in seen] == [TOPIC_CREATE, TOPIC_START, TOPIC_EXIT, TOPIC_DELETE]
            assert {e.sandbox_id for e in seen} == {"ev"}
            assert seen[2].exit_status == 3
            assert not seen[0].HasField("exit_status") and not seen[0].HasField("dropped")
            stamps = [e.timestamp.ToNanoseconds() for e in seen]
            assert stamps == sorted(stamps) and stamps[0] > 0
            # A daemon shutting down ends every Events stream normally: the end, no error.
            controller.drain()
            assert await events.receive_encoded() is None


# -- Exec --------------------------------------------------------------------------------------


@pytest.fixture
async def ready(client: Client) -> Client:
    await sandbox(client, "dp")
    return client


@pytest.mark.parametrize(
    ("sandboxer", "opening"), [("process", "payload"), ("process", "stream"), ("bwrap", "stream")]
)
async def test_exec_takes_stdin_and_sends_started_output_then_exit_last(
    client: Client, sandboxer: str, opening: str
) -> None:
    await sandbox(client, "ex", sandboxer=sandboxer)
    command = ["sh", "-c", "cat; echo err >&2; exit 5"]
    start = exec_input(start=pb.ExecRequest(sandbox_id="ex", command=command, stdin=True))
    with trio.fail_after(GUARD):
        # The opening message in the request's payload, or (as ttrpc's generated clients
        # send it) as the stream's first message.
        async with client.open_stream(C, "Exec", start if opening == "payload" else b"") as exe:
            if opening == "stream":
                await exe.send_encoded(start)
            for piece in (b"hello ", b"world"):
                await exe.send_encoded(exec_input(stdin=piece))
            await exe.send_encoded(exec_input(close_stdin=True))
            await exe.close_send()
            outputs = await received(exe, pb.ExecOutput)
    kinds = [m.WhichOneof("output") for m in outputs]
    assert kinds[0] == "started" and outputs[0].started.pid > 0 and outputs[0].started.exec_id
    assert kinds[-1] == "exit" and "exit" not in kinds[:-1] and "started" not in kinds[1:]
    assert output_of(outputs, "stdout") == b"hello world"
    assert output_of(outputs, "stderr") == b"err\n"
    end = outputs[-1].exit
    assert (end.exit_status, end.timed_out, end.HasField("signal")) == (5, False, False)


async def test_exec_resizes_its_terminal(ready: Client) -> None:
    request = pb.ExecRequest(
        sandbox_id="dp",
        command=["sh", "-c", "stty size; read line; stty size"],
        tty=True,
        stdin=True,
        window=pb.WindowSize(rows=24, cols=80),
    )
    with trio.fail_after(GUARD):
        async with ready.open_stream(C, "Exec", exec_input(start=request)) as exe:
            seen = b""
            while b"24 80" not in seen:
                data = await exe.receive_encoded()
                assert data is not None
                seen += pb.ExecOutput.FromString(data).stdout
            await exe.send_encoded(exec_input(resize=pb.WindowSize(rows=40, cols=100)))
            await exe.send_encoded(exec_input(stdin=b"go\n"))
            outputs = await received(exe, pb.ExecOutput)
    # A terminal's output is all stdout.
    assert b"40 100" in output_of(outputs, "stdout") and not output_of(outputs, "stderr")
    assert outputs[-1].exit.exit_status == 0


async def test_exec_exits_127_for_a_command_not_found_and_is_killed_at_its_timeout(
    ready: Client,
) -> None:
    missing = pb.ExecRequest(sandbox_id="dp", command=["/nonexistent/command"])
    slow = pb.ExecRequest(sandbox_id="dp", command=["sleep", "100"], timeout_secs=0.1)
    ends = []
    with trio.fail_after(GUARD):
        for request in (missing, slow):
            async with ready.open_stream(C, "Exec", exec_input(start=request)) as exe:
                await exe.close_send()
                ends.append((await received(exe, pb.ExecOutput))[-1].exit)
    assert (ends[0].exit_status, ends[0].timed_out) == (127, False)
    assert (ends[1].exit_status, ends[1].timed_out, ends[1].signal) == (137, True, 9)


async def test_exec_output_stays_within_a_small_window(server: Server, sock_path: str) -> None:
    """The client asks for a window of 4 KiB (its ``sandboxd-window`` metadata) and lets the
    server run before taking each message: a server that sent past the window (and one
    frame) would have the stream ended RESOURCE_EXHAUSTED by the client."""
    size = 300_000
    async with open_client(sock_path, envelope="protobuf", window=4096) as client:
        await sandbox(client, "win")
        request = pb.ExecRequest(sandbox_id="win", command=["head", "-c", str(size), "/dev/zero"])
        with trio.fail_after(GUARD):
            async with client.open_stream(C, "Exec", exec_input(start=request)) as exe:
                await exe.close_send()
                outputs = []
                await trio.testing.wait_all_tasks_blocked()
                while (data := await exe.receive_encoded()) is not None:
                    outputs.append(pb.ExecOutput.FromString(data))
                    await trio.testing.wait_all_tasks_blocked()
    assert output_of(outputs, "stdout") == bytes(size)
    assert outputs[-1].exit.exit_status == 0


async def test_a_cancelled_exec_is_killed_and_its_call_freed(
    server: Server, ready: Client, controller: Controller
) -> None:
    """Leaving the stream's block sends CANCEL: the server ends the call, the command is
    killed (its exit published as any exec's), and nothing of the call is left."""
    request = pb.ExecRequest(sandbox_id="dp", command=["sleep", "1000"], exec_id="k")
    with trio.fail_after(GUARD):
        async with ready.stream(C, "Events") as events:
            async with ready.open_stream(C, "Exec", exec_input(start=request)) as exe:
                first = pb.ExecOutput.FromString(await exe.receive_encoded() or b"")
                assert first.started.exec_id == "k"
            while True:
                event = pb.Event.FromString(await events.receive_encoded() or b"")
                if event.topic == TOPIC_EXEC_EXIT:
                    break
                assert event.topic == TOPIC_EXEC_START
        assert (event.exec_id, event.exit_status) == ("k", 137)
        await trio.testing.wait_all_tasks_blocked()
    assert server.in_flight == 0
    assert controller.status_nowait("dp").info["execs"] == "0"


async def test_a_cancelled_log_follower_is_freed(server: Server, client: Client) -> None:
    await sandbox(client, "lf", "sh", "-c", "echo hi; exec sleep 1000")
    request = bytes_of(pb.LogsRequest(sandbox_id="lf", follow=True))
    with trio.fail_after(GUARD):
        async with client.open_stream(C, "Logs", request, client_sends=False) as logs:
            assert pb.LogMessage.FromString(await logs.receive_encoded() or b"").data == b"hi\n"
            assert server.in_flight == 1
        await trio.testing.wait_all_tasks_blocked()
    assert server.in_flight == 0


async def test_exec_sync_through_the_blocking_client(ready: Client, sock_path: str) -> None:
    request = pb.ExecSyncRequest(
        sandbox_id="dp", command=["sh", "-c", "echo out; echo err >&2; exit 2"]
    )

    def run() -> Any:
        with SyncClient(sock_path, envelope="protobuf") as blocking:
            data = blocking.call_encoded(C, "ExecSync", bytes_of(request), timeout=GUARD)
            return pb.ExecSyncResponse.FromString(data)

    result = await trio.to_thread.run_sync(run)
    assert (result.stdout, result.stderr, result.exit_status) == (b"out\n", b"err\n", 2)
    assert result.exec_id and not result.truncated and not result.timed_out


async def test_exec_and_events_through_the_blocking_client(ready: Client, sock_path: str) -> None:
    start = pb.ExecRequest(sandbox_id="dp", command=["sh", "-c", "cat; exit 4"], stdin=True)

    def run() -> tuple[list[Any], list[Any]]:
        blocking = SyncClient(sock_path, envelope="protobuf")
        events_opened = blocking.open_stream(C, "Events", None, client_sends=False, timeout=GUARD)
        with blocking, events_opened as events:
            with blocking.open_stream(C, "Exec", b"", timeout=GUARD) as exe:
                exe.send_encoded(exec_input(start=start))
                exe.send_encoded(exec_input(stdin=b"abc"))
                exe.close_send()
                outputs = []
                while (data := exe.receive_encoded()) is not None:
                    outputs.append(pb.ExecOutput.FromString(data))
            seen = [pb.Event.FromString(events.receive_encoded() or b"") for _ in range(2)]
        return outputs, seen

    outputs, seen = await trio.to_thread.run_sync(run)
    assert outputs[0].started.pid > 0 and output_of(outputs, "stdout") == b"abc"
    assert outputs[-1].exit.exit_status == 4
    assert [e.topic for e in seen] == [TOPIC_EXEC_START, TOPIC_EXEC_EXIT]
    assert {e.exec_id for e in seen} == {outputs[0].started.exec_id}
    assert seen[1].exit_status == 4


# -- Logs --------------------------------------------------------------------------------------


async def test_logs_all_and_the_tail(client: Client) -> None:
    with trio.fail_after(GUARD):
        await sandbox(client, "lg", "sh", "-c", "echo one; echo two")
        await client.call_encoded(C, "Wait", sb("lg"))
        chunks = []
        for request in (
            pb.LogsRequest(sandbox_id="lg"),
            pb.LogsRequest(sandbox_id="lg", tail_bytes=4),
        ):
            async with client.open_stream(
                C, "Logs", bytes_of(request), client_sends=False
            ) as logs:
                chunks.append(await received(logs, pb.LogMessage))
    assert b"".join(m.data for m in chunks[0]) == b"one\ntwo\n"
    assert b"".join(m.data for m in chunks[1]) == b"two\n"
    assert {m.stream for m in chunks[0]} == {"stdout"}
    assert all(m.timestamp.seconds > 0 and not m.HasField("lost_bytes") for m in chunks[0])


async def test_following_logs_ends_when_the_sandbox_stops(client: Client) -> None:
    with trio.fail_after(GUARD):
        await sandbox(client, "fl", "sh", "-c", "echo first >&2; exec sleep 1000")
        request = bytes_of(pb.LogsRequest(sandbox_id="fl", follow=True))
        async with client.open_stream(C, "Logs", request, client_sends=False) as logs:
            first = pb.LogMessage.FromString(await logs.receive_encoded() or b"")
            assert (first.stream, first.data) == ("stderr", b"first\n")
            await client.call_encoded(C, "Stop", bytes_of(pb.StopRequest(sandbox_id="fl")))
            assert await received(logs, pb.LogMessage) == []


# -- files -------------------------------------------------------------------------------------


async def test_a_big_file_goes_in_and_comes_back_in_several_messages(
    ready: Client, tmp_path: Path
) -> None:
    path = str(tmp_path / "big")
    data = os.urandom(3 << 20)
    start = pb.WriteFileInput(start=pb.WriteFileRequest(sandbox_id="dp", path=path, mode=0o640))
    with trio.fail_after(GUARD):
        async with ready.open_stream(C, "WriteFile", b"") as write:
            await write.send_encoded(bytes_of(start))
            for i in range(0, len(data), 1 << 20):
                await write.send_encoded(bytes_of(pb.WriteFileInput(data=data[i : i + (1 << 20)])))
            await write.close_send()
            answer = pb.WriteFileResponse.FromString(await write.response_encoded())
        assert answer.size == len(data) and os.stat(path).st_mode & 0o777 == 0o640
        request = bytes_of(pb.ReadFileRequest(sandbox_id="dp", path=path))
        async with ready.open_stream(C, "ReadFile", request, client_sends=False) as read:
            pieces = await received(read, pb.ReadFileResponse)
    assert len(pieces) > 1 and b"".join(p.data for p in pieces) == data
    assert pieces[-1].size == len(data) and not any(p.HasField("size") for p in pieces[:-1])


async def test_files_through_the_blocking_client(
    ready: Client, sock_path: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "f")
    data = os.urandom(1_500_000)

    def run() -> tuple[int, bytes]:
        with SyncClient(sock_path, envelope="protobuf") as blocking:
            start = pb.WriteFileRequest(sandbox_id="dp", path=path)
            with blocking.open_stream(
                C, "WriteFile", bytes_of(pb.WriteFileInput(start=start))
            ) as w:
                for i in range(0, len(data), 1 << 19):
                    w.send_encoded(bytes_of(pb.WriteFileInput(data=data[i : i + (1 << 19)])))
                w.close_send()
                size = pb.WriteFileResponse.FromString(w.response_encoded()).size
            request = bytes_of(pb.ReadFileRequest(sandbox_id="dp", path=path))
            back = b""
            with blocking.open_stream(
                C, "ReadFile", request, client_sends=False, timeout=GUARD
            ) as r:
                while (piece := r.receive_encoded()) is not None:
                    back += pb.ReadFileResponse.FromString(piece).data
            return size, back

    assert await trio.to_thread.run_sync(run) == (len(data), data)


# -- errors on streams ---------------------------------------------------------------------------


async def test_stream_errors_are_the_cbor_errors(client: Client, tmp_path: Path) -> None:
    await sandbox(client, "created", start=False)
    await sandbox(client, "dp")
    nowhere = pb.ExecRequest(sandbox_id="nowhere", command=["true"])
    not_ready = pb.ExecRequest(sandbox_id="created", command=["true"])
    with trio.fail_after(GUARD):
        for request, error, match in [
            (nowhere, NotFound, "'nowhere' not found"),
            (not_ready, FailedPrecondition, "created"),
        ]:
            async with client.open_stream(C, "Exec", exec_input(start=request)) as exe:
                with pytest.raises(error, match=match):
                    await exe.receive_encoded()
        async with client.open_stream(C, "Exec", exec_input(stdin=b"x")) as exe:
            with pytest.raises(InvalidArgument, match="opening message must set 'start'"):
                await exe.receive_encoded()
        cat = exec_input(start=pb.ExecRequest(sandbox_id="dp", command=["cat"], stdin=True))
        async with client.open_stream(C, "Exec", cat) as exe:
            await exe.send_encoded(cat)
            with pytest.raises(InvalidArgument, match="Exec input: unknown field 'start'"):
                await received(exe, pb.ExecOutput)
        logs = bytes_of(pb.LogsRequest(sandbox_id="nowhere"))
        async with client.open_stream(C, "Logs", logs, client_sends=False) as stream:
            with pytest.raises(NotFound):
                await stream.receive_encoded()
        missing = bytes_of(pb.ReadFileRequest(sandbox_id="dp", path=str(tmp_path / "missing")))
        async with client.open_stream(C, "ReadFile", missing, client_sends=False) as stream:
            with pytest.raises(NotFound):
                await stream.receive_encoded()


async def test_a_stream_error_is_a_google_rpc_status_on_the_wire(
    server: Server, sock_path: str
) -> None:
    """As a Go ttrpc client reads it: a RESPONSE whose ``Response.status`` (field 1) is a
    ``google.rpc.Status`` with code NOT_FOUND (5) and the message, and no payload."""
    request = encode_pb_request(C, "Logs", bytes_of(pb.LogsRequest(sandbox_id="nowhere")))
    async with await Peer.connect(sock_path) as peer:
        await peer.send(encode_frame(1, FrameType.REQUEST, REMOTE_CLOSED, request))
        with trio.fail_after(GUARD):
            frame = await peer.response(1)
    message = b"sandbox 'nowhere' not found"
    status = bytes([0x08, 5, 0x12, len(message)]) + message
    assert frame.payload == bytes([0x0A, len(status)]) + status


# -- as a Go ttrpc client does it ---------------------------------------------------------------


async def test_exec_frame_by_frame_as_a_go_ttrpc_client(ready: Client, sock_path: str) -> None:
    """Go's ttrpc (>= 1.2) opens a bidirectional stream with an empty payload (so the opening
    message is the first DATA), asks for no window, half-closes with REMOTE_CLOSED | NO_DATA,
    and reads DATA messages until one flagged REMOTE_CLOSED.  Exec's exit is the last message,
    then the end carries none, as Go's generated server-stream handlers end a stream."""
    start = exec_input(start=pb.ExecRequest(sandbox_id="dp", command=["cat"], stdin=True))
    async with await Peer.connect(sock_path) as peer:
        await peer.send(
            encode_frame(1, FrameType.REQUEST, REMOTE_OPEN, encode_pb_request(C, "Exec")),
            encode_frame(1, FrameType.DATA, 0, start),
            encode_frame(1, FrameType.DATA, 0, exec_input(stdin=b"ping")),
            encode_frame(1, FrameType.DATA, REMOTE_CLOSED | NO_DATA, b""),
        )
        frames = []
        with trio.fail_after(GUARD):
            while not frames or not frames[-1].flags & REMOTE_CLOSED:
                frames.append(await peer.next_frame())
    assert {(f.stream_id, f.type) for f in frames} == {(1, FrameType.DATA)}
    assert [f.flags for f in frames] == [0] * (len(frames) - 1) + [REMOTE_CLOSED | NO_DATA]
    assert frames[-1].payload == b""
    outputs = [pb.ExecOutput.FromString(f.payload) for f in frames[:-1]]
    assert outputs[0].started.pid > 0 and output_of(outputs, "stdout") == b"ping"
    assert outputs[-1].WhichOneof("output") == "exit" and outputs[-1].exit.exit_status == 0


async def test_write_file_frame_by_frame_as_a_go_ttrpc_client(
    ready: Client, sock_path: str, tmp_path: Path
) -> None:
    """A client stream: the opening message as the first DATA, the half-close, and the answer
    in a RESPONSE, as Go's ttrpc reads a client stream's end."""
    path = tmp_path / "go"
    start = pb.WriteFileInput(start=pb.WriteFileRequest(sandbox_id="dp", path=str(path)))
    async with await Peer.connect(sock_path) as peer:
        await peer.send(
            encode_frame(1, FrameType.REQUEST, REMOTE_OPEN, encode_pb_request(C, "WriteFile")),
            encode_frame(1, FrameType.DATA, 0, bytes_of(start)),
            encode_frame(1, FrameType.DATA, 0, bytes_of(pb.WriteFileInput(data=b"from go"))),
            encode_frame(1, FrameType.DATA, REMOTE_CLOSED | NO_DATA, b""),
        )
        with trio.fail_after(GUARD):
            frame = await peer.response(1)
    # Response{payload = WriteFileResponse{size = 7}}: no status.
    assert frame.payload == bytes([0x12, 2, 0x08, 7])
    assert path.read_bytes() == b"from go"


async def test_a_streams_deadline_ends_it_deadline_exceeded(ready: Client, sock_path: str) -> None:
    """``timeout_nano`` on a server stream (a following Logs): the messages already sent,
    then a RESPONSE with DEADLINE_EXCEEDED (4)."""
    logs = bytes_of(pb.LogsRequest(sandbox_id="dp", follow=True))
    request = encode_pb_request(C, "Logs", logs, timeout_nano=50_000_000)
    async with await Peer.connect(sock_path) as peer:
        await peer.send(encode_frame(1, FrameType.REQUEST, REMOTE_CLOSED, request))
        with trio.fail_after(GUARD):
            frame = await peer.response(1)
    assert frame.payload[:4] == bytes([0x0A, frame.payload[1], 0x08, 4])


# -- containerd's Sandbox service ---------------------------------------------------------------


async def test_wait_sandbox_is_parked_while_running_and_released_by_stop(client: Client) -> None:
    await sandbox(client, "w")
    answers: list[Any] = []

    async def wait() -> None:
        request = sandbox_pb.WaitSandboxRequest(sandbox_id="w")
        answers.append(
            await call(
                client, "WaitSandbox", request, sandbox_pb.WaitSandboxResponse, SANDBOX_SERVICE
            )
        )

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []
            status = await call(
                client,
                "SandboxStatus",
                sandbox_pb.SandboxStatusRequest(sandbox_id="w"),
                sandbox_pb.SandboxStatusResponse,
                SANDBOX_SERVICE,
            )
            assert status.state == "ready"
            # timeout_secs 0: the default grace, which SIGTERM ends at once for sleep.
            stop = sandbox_pb.StopSandboxRequest(sandbox_id="w")
            await call(client, "StopSandbox", stop, Empty, SANDBOX_SERVICE)
    (answer,) = answers
    assert answer.exit_status == 128 + 15 and answer.exited_at.seconds > 0
