"""The protobuf services, called in process: containerd's ``containerd.runtime.sandbox.v1
.Sandbox`` and sandboxd.v1's Runtime and Controller, each method with payloads built by the
generated classes and answers decoded by them, over a real Controller.

The handlers are driven as the server drives them (inline, deferred through a responder,
in a task, streaming through a stream that carries bytes), so what they answer is what a
protobuf peer gets, short of the envelope.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.empty_pb2 import Empty

from sandboxd import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from sandboxd._models import SandboxOptions
from sandboxd.api import serve_controller
from sandboxd.api._pb_services import (
    CREATE_OPTIONS_TYPE,
    ERROR_DETAIL_TYPE,
    METRICS_TYPE,
    SANDBOX_OPTIONS_TYPE,
    SANDBOX_SERVICE,
    _inline,
    protobuf_services,
)
from sandboxd.proto import containerd_sandbox_pb2 as sandbox_pb
from sandboxd.proto import containerd_types_pb2 as types_pb
from sandboxd.proto import sandboxd_pb2 as pb
from sandboxd.rpc import CallContext, Limits, Method, MethodKind, open_client
from sandboxd.runtime import Controller, Waiter
from sim_controller import running

pytestmark = pytest.mark.usefixtures("watchdog")
GUARD = 20.0
C = "sandboxd.v1.Controller"


class Stream:
    """The server's side of a protobuf stream, as a handler sees it: bytes in (``inputs``,
    then the client's half-close), bytes out (to be read from :attr:`sent`)."""

    def __init__(self, inputs: tuple[bytes, ...] | list[bytes] = ()) -> None:
        self.inputs = list(inputs)
        self.sent_send, self.sent = trio.open_memory_channel[bytes](math.inf)

    async def send(self, data: bytes) -> None:
        assert type(data) is bytes
        await self.sent_send.send(data)

    async def receive(self) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self.inputs.pop(0) if self.inputs else None


class Calls:
    """The protobuf services of one Controller, called as the server calls them."""

    def __init__(self, controller: Controller) -> None:
        self.services = protobuf_services(controller, cgroups="cgroup v2 (test)")

    def method(self, service: str, name: str) -> Method:
        return self.services[service][name]

    async def unary(self, service: str, name: str, request: Any, answer: Any) -> Any:
        """A unary method's answer, decoded as ``answer``."""
        method = self.method(service, name)
        payload = request.SerializeToString()
        ctx = CallContext(service, name, 1, {})
        if method.kind is MethodKind.INLINE:
            data = method.handler(payload, ctx)
        elif method.kind is MethodKind.UNARY:
            data = await method.handler(payload, ctx)
        else:
            assert method.kind is MethodKind.DEFERRED and method.result is not None
            waiter = Waiter()
            method.handler(payload, ctx, waiter)
            data = method.result(await waiter.wait())
        assert type(data) is bytes
        return answer.FromString(data)

    async def stream(
        self,
        name: str,
        payload: bytes,
        stream: Stream,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> bytes | None:
        """Run a stream method of sandboxd.v1.Controller to its end; its return value."""
        method = self.method(C, name)
        ctx = CallContext(C, name, 1, {})
        args = payload if method.prepare is None else method.prepare(payload, ctx)
        task_status.started()
        result: bytes | None = await method.handler(args, ctx, stream)
        return result


@asynccontextmanager
async def sim_calls(**kwargs: Any) -> AsyncIterator[tuple[Calls, Controller]]:
    async with running(default_sandboxer="sim", **kwargs) as (controller, _):
        yield Calls(controller), controller


def when(stamp: Any) -> float:
    return float(stamp.seconds + stamp.nanos / 1e9)


def options_any(message: Any, type_url: str) -> AnyMessage:
    return AnyMessage(type_url=type_url, value=message.SerializeToString())


async def test_every_method_of_the_three_services_is_served() -> None:
    wanted = {
        service.full_name: {m.name for m in service.methods}
        for module in (sandbox_pb, pb)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    # The table is built without a running controller: the services only hold it.
    services = protobuf_services(Controller())
    assert {name: set(methods) for name, methods in services.items()} == wanted
    assert SANDBOX_SERVICE == "containerd.runtime.sandbox.v1.Sandbox"
    assert ERROR_DETAIL_TYPE == "type.googleapis.com/sandboxd.v1.ErrorDetail"


# -- containerd.runtime.sandbox.v1.Sandbox ----------------------------------------------------

S = SANDBOX_SERVICE


async def test_containerd_lifecycle_from_create_to_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_calls() as (calls, _):
        created = trio.current_time()
        options = pb.CreateOptions(
            sandboxer="sim", labels={"team": "a"}, options=pb.SandboxOptions(hostname="h")
        )
        request = sandbox_pb.CreateSandboxRequest(
            sandbox_id="cd1",
            bundle_path="/run/containerd/cd1",
            rootfs=[types_pb.Mount(type="bind", source="/src", target="/", options=["ro"])],
            options=options_any(options, CREATE_OPTIONS_TYPE),
            netns_path="/var/run/netns/cd1",
        )
        answer = await calls.unary(S, "CreateSandbox", request, sandbox_pb.CreateSandboxResponse)
        assert answer == sandbox_pb.CreateSandboxResponse()

        status_request = sandbox_pb.SandboxStatusRequest(sandbox_id="cd1", verbose=True)
        status = await calls.unary(
            S, "SandboxStatus", status_request, sandbox_pb.SandboxStatusResponse
        )
        assert (status.sandbox_id, status.pid, status.state) == ("cd1", 0, "created")
        assert status.info["bundle_path"] == "/run/containerd/cd1"
        assert status.info["sandboxer"] == "sim"
        assert status.HasField("created_at") and not status.HasField("exited_at")
        assert not status.HasField("extra")

        start = await calls.unary(
            S,
            "StartSandbox",
            sandbox_pb.StartSandboxRequest(sandbox_id="cd1"),
            sandbox_pb.StartSandboxResponse,
        )
        assert start.pid > 0
        assert when(start.created_at) == pytest.approx(when(status.created_at))

        platform = await calls.unary(
            S,
            "Platform",
            sandbox_pb.PlatformRequest(sandbox_id="cd1"),
            sandbox_pb.PlatformResponse,
        )
        assert platform.platform.os == "linux" and platform.platform.architecture

        ping = sandbox_pb.PingRequest(sandbox_id="cd1")
        assert await calls.unary(S, "PingSandbox", ping, sandbox_pb.PingResponse) == (
            sandbox_pb.PingResponse()
        )

        metrics = await calls.unary(
            S,
            "SandboxMetrics",
            sandbox_pb.SandboxMetricsRequest(sandbox_id="cd1"),
            sandbox_pb.SandboxMetricsResponse,
        )
        assert metrics.metrics.id == "cd1"
        assert metrics.metrics.data.type_url == METRICS_TYPE
        data = pb.SandboxMetrics.FromString(metrics.metrics.data.value)
        assert data.sandbox_id == "cd1" and data.pids >= 1
        assert data.timestamp == metrics.metrics.timestamp

        stop = sandbox_pb.StopSandboxRequest(sandbox_id="cd1", timeout_secs=3)
        await calls.unary(S, "StopSandbox", stop, sandbox_pb.StopSandboxResponse)
        waited = await calls.unary(
            S,
            "WaitSandbox",
            sandbox_pb.WaitSandboxRequest(sandbox_id="cd1"),
            sandbox_pb.WaitSandboxResponse,
        )
        assert waited.exit_status == 143
        assert when(waited.exited_at) >= when(start.created_at)
        status = await calls.unary(
            S,
            "SandboxStatus",
            sandbox_pb.SandboxStatusRequest(sandbox_id="cd1"),
            sandbox_pb.SandboxStatusResponse,
        )
        assert status.state == "stopped" and status.info["exit_status"] == "143"
        assert when(status.exited_at) == when(waited.exited_at)
        assert trio.current_time() >= created

        shutdown = sandbox_pb.ShutdownSandboxRequest(sandbox_id="cd1")
        await calls.unary(S, "ShutdownSandbox", shutdown, sandbox_pb.ShutdownSandboxResponse)
        with pytest.raises(NotFound, match="cd1"):
            await calls.unary(S, "PingSandbox", ping, sandbox_pb.PingResponse)


async def test_stop_timeout_0_is_the_default_grace(autojump_clock: trio.testing.MockClock) -> None:
    """proto3 sends no timeout as 0: the sandbox gets the default grace, not SIGKILL at once."""
    async with sim_calls(stop_timeout=7.0) as (calls, controller):
        for sandbox_id in ("g0", "g1"):
            sim = pb.SandboxOptions(sim_json='{"ignore_sigterm": true}')
            request = sandbox_pb.CreateSandboxRequest(
                sandbox_id=sandbox_id, options=options_any(sim, SANDBOX_OPTIONS_TYPE)
            )
            await calls.unary(S, "CreateSandbox", request, sandbox_pb.CreateSandboxResponse)
            await controller.start(sandbox_id)
        began = trio.current_time()
        stop = sandbox_pb.StopSandboxRequest(sandbox_id="g0", timeout_secs=0)
        await calls.unary(S, "StopSandbox", stop, sandbox_pb.StopSandboxResponse)
        assert trio.current_time() - began == pytest.approx(7.0)
        assert (await controller.wait("g0")).exit_status == 137
        began = trio.current_time()
        stop = sandbox_pb.StopSandboxRequest(sandbox_id="g1", timeout_secs=2)
        await calls.unary(S, "StopSandbox", stop, sandbox_pb.StopSandboxResponse)
        assert trio.current_time() - began == pytest.approx(2.0)


async def test_options_of_an_unknown_type_are_kept_and_named_not_refused() -> None:
    async with sim_calls() as (calls, controller):
        foreign = AnyMessage(
            type_url="type.googleapis.com/runtimeoptions.v1.Options", value=b"\n\x01x"
        )
        request = sandbox_pb.CreateSandboxRequest(sandbox_id="u1", options=foreign)
        await calls.unary(S, "CreateSandbox", request, sandbox_pb.CreateSandboxResponse)
        status = await calls.unary(
            S,
            "SandboxStatus",
            sandbox_pb.SandboxStatusRequest(sandbox_id="u1"),
            sandbox_pb.SandboxStatusResponse,
        )
        assert status.info["options_type"] == foreign.type_url
        assert "bundle_path" not in status.info
        spec = controller._actor("u1").spec
        assert spec.annotations["sandboxd.io/options"] == "CgF4"  # the value, base64


async def test_containerd_errors_are_the_cbor_services_errors() -> None:
    async with sim_calls() as (calls, _):
        create = sandbox_pb.CreateSandboxRequest(sandbox_id="e1")
        await calls.unary(S, "CreateSandbox", create, sandbox_pb.CreateSandboxResponse)
        with pytest.raises(AlreadyExists, match="'e1' already exists"):
            await calls.unary(S, "CreateSandbox", create, sandbox_pb.CreateSandboxResponse)
        start = sandbox_pb.StartSandboxRequest(sandbox_id="nobody")
        with pytest.raises(NotFound, match="'nobody' not found"):
            await calls.unary(S, "StartSandbox", start, sandbox_pb.StartSandboxResponse)
        with pytest.raises(InvalidArgument, match="sandbox_id: must not be empty"):
            await calls.unary(S, "PingSandbox", sandbox_pb.PingRequest(), sandbox_pb.PingResponse)
        bad = pb.SandboxOptions(resources=pb.Resources(memory_bytes=5))
        create = sandbox_pb.CreateSandboxRequest(
            sandbox_id="e2", options=options_any(bad, SANDBOX_OPTIONS_TYPE)
        )
        with pytest.raises(InvalidArgument, match=r"options\.resources\.memory_bytes: 5 is out"):
            await calls.unary(S, "CreateSandbox", create, sandbox_pb.CreateSandboxResponse)
        garbled = AnyMessage(type_url=SANDBOX_OPTIONS_TYPE, value=b"\xff\xff")
        create = sandbox_pb.CreateSandboxRequest(sandbox_id="e3", options=garbled)
        with pytest.raises(InvalidArgument, match=r"CreateSandbox\.options: the payload is not"):
            await calls.unary(S, "CreateSandbox", create, sandbox_pb.CreateSandboxResponse)
        method = calls.method(S, "SandboxStatus")
        with pytest.raises(InvalidArgument, match="SandboxStatus: the payload is not a valid"):
            method.handler(b"\x0a\xff", CallContext(S, "SandboxStatus", 1, {}))
        await calls.unary(
            S,
            "StartSandbox",
            sandbox_pb.StartSandboxRequest(sandbox_id="e1"),
            sandbox_pb.StartSandboxResponse,
        )
        with pytest.raises(FailedPrecondition, match="already running"):
            await calls.unary(
                S,
                "StartSandbox",
                sandbox_pb.StartSandboxRequest(sandbox_id="e1"),
                sandbox_pb.StartSandboxResponse,
            )


# -- sandboxd.v1.Runtime and sandboxd.v1.Controller -------------------------------------------


async def test_runtime_version() -> None:
    async with sim_calls() as (calls, _):
        answer = await calls.unary("sandboxd.v1.Runtime", "Version", Empty(), pb.VersionResponse)
        assert answer.protocol == 1 and answer.version
        assert answer.cgroups == "cgroup v2 (test)"


async def test_controller_lifecycle_and_queries(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_calls() as (calls, _):
        events = Stream()
        async with trio.open_nursery() as nursery:
            await nursery.start(calls.stream, "Events", b"", events)
            create = pb.CreateRequest(
                sandbox_id="c1",
                sandboxer="sim",
                labels={"app": "x"},
                annotations={"note": "y", "sandboxd.io/info.owner": "me"},
                options=pb.SandboxOptions(
                    command=["sleep", "1"], env={"A": "1"}, cwd="/", lifetime_secs=60.0
                ),
            )
            created = await calls.unary(C, "Create", create, pb.CreateResponse)
            assert created.sandbox_id == "c1"
            event = pb.Event.FromString(await events.sent.receive())
            assert (event.topic, event.sandbox_id) == ("/sandboxes/create", "c1")
            assert not event.HasField("exit_status")

            start = await calls.unary(
                C, "Start", pb.SandboxRequest(sandbox_id="c1"), pb.StartResponse
            )
            assert (
                start.sandbox_id == "c1" and start.pid > 0 and dict(start.labels) == {"app": "x"}
            )
            status = await calls.unary(
                C, "Status", pb.StatusRequest(sandbox_id="c1"), pb.SandboxStatus
            )
            assert (status.state, status.pid) == ("ready", start.pid)
            assert status.info["owner"] == "me" and "note" not in status.info
            # Asked again with nothing changed: the same answer, from the cache.
            again = await calls.unary(
                C, "Status", pb.StatusRequest(sandbox_id="c1"), pb.SandboxStatus
            )
            assert again == status
            listed = await calls.unary(
                C, "List", pb.ListRequest(labels={"app": "x"}), pb.ListResponse
            )
            assert [s.sandbox_id for s in listed.sandboxes] == ["c1"]
            none = await calls.unary(
                C, "List", pb.ListRequest(labels={"app": "z"}), pb.ListResponse
            )
            assert not none.sandboxes
            platform = await calls.unary(
                C, "Platform", pb.SandboxRequest(sandbox_id="c1"), pb.PlatformResponse
            )
            assert platform.platform.os == "linux"
            assert (
                await calls.unary(C, "Ping", pb.SandboxRequest(sandbox_id="c1"), Empty) == Empty()
            )
            metrics = await calls.unary(
                C, "Metrics", pb.SandboxRequest(sandbox_id="c1"), pb.SandboxMetrics
            )
            assert metrics.sandbox_id == "c1" and metrics.HasField("timestamp")

            stop = pb.StopRequest(sandbox_id="c1", timeout_secs=0)
            assert await calls.unary(C, "Stop", stop, Empty) == Empty()
            waited = await calls.unary(
                C, "Wait", pb.SandboxRequest(sandbox_id="c1"), pb.WaitResponse
            )
            assert waited.exit_status == 137  # timeout_secs 0 here is SIGKILL at once
            await calls.unary(C, "Shutdown", pb.SandboxRequest(sandbox_id="c1"), Empty)
            later = [pb.Event.FromString(await events.sent.receive()) for _ in range(3)]
            assert [e.topic for e in later] == [
                "/sandboxes/start",
                "/sandboxes/exit",
                "/sandboxes/delete",
            ]
            assert later[1].exit_status == 137 and not later[0].HasField("exit_status")
            nursery.cancel_scope.cancel()


async def test_controller_errors_name_the_field() -> None:
    async with sim_calls() as (calls, _):
        with pytest.raises(InvalidArgument, match="Status: sandbox_id: must not be empty"):
            await calls.unary(C, "Status", pb.StatusRequest(), pb.SandboxStatus)
        with pytest.raises(InvalidArgument, match=r"Stop\.timeout_secs: must be >= 0"):
            await calls.unary(C, "Stop", pb.StopRequest(sandbox_id="x", timeout_secs=-1), Empty)
        both = pb.SandboxOptions(seccomp="default", seccomp_json="{}")
        with pytest.raises(InvalidArgument, match="at most one of 'seccomp'"):
            await calls.unary(C, "Create", pb.CreateRequest(sandbox_id="x", options=both), Empty)
        broken = pb.SandboxOptions(sim_json="{")
        with pytest.raises(InvalidArgument, match=r"Create\.options\.sim_json: not valid JSON"):
            await calls.unary(C, "Create", pb.CreateRequest(sandbox_id="x", options=broken), Empty)
        swap = pb.SandboxOptions(resources=pb.Resources(memory_swap_bytes=1))
        with pytest.raises(InvalidArgument, match="memory_swap_bytes: needs memory_bytes"):
            await calls.unary(C, "Create", pb.CreateRequest(sandbox_id="x", options=swap), Empty)
        with pytest.raises(NotFound, match="'gone' not found"):
            await calls.unary(C, "Wait", pb.SandboxRequest(sandbox_id="gone"), pb.WaitResponse)


# -- the data plane, with real processes -------------------------------------------------------


@pytest.fixture
async def ready(sandboxd_controller: Controller) -> Calls:
    await sandboxd_controller.create("dp", sandboxer="process")
    await sandboxd_controller.start("dp")
    return Calls(sandboxd_controller)


def exec_input(**fields: Any) -> bytes:
    data: bytes = pb.ExecInput(**fields).SerializeToString()
    return data


async def outputs(stream: Stream) -> list[Any]:
    found = []
    while True:
        try:
            found.append(pb.ExecOutput.FromString(stream.sent.receive_nowait()))
        except trio.WouldBlock:
            return found


@pytest.mark.parametrize("opening", ["payload", "stream"])
async def test_exec_streams_stdin_and_output_and_ends_with_the_exit(
    ready: Calls, opening: str
) -> None:
    start = exec_input(start=pb.ExecRequest(sandbox_id="dp", command=["cat"], stdin=True))
    more = [exec_input(stdin=b"hello "), exec_input(stdin=b"world"), exec_input(close_stdin=True)]
    if opening == "stream":
        payload, more = b"", [start, *more]
    else:
        payload = start
    stream = Stream(more)
    with trio.fail_after(GUARD):
        assert await ready.stream("Exec", payload, stream) is None
    sent = await outputs(stream)
    assert sent[0].WhichOneof("output") == "started" and sent[0].started.pid > 0
    assert b"".join(m.stdout for m in sent[1:-1]) == b"hello world"
    assert sent[-1].WhichOneof("output") == "exit"
    assert (sent[-1].exit.exit_status, sent[-1].exit.timed_out) == (0, False)
    assert not sent[-1].exit.HasField("signal")


async def test_exec_refuses_a_bad_opening_and_bad_input(ready: Calls) -> None:
    with pytest.raises(InvalidArgument, match="Exec: the opening message must set 'start'"):
        await ready.stream("Exec", exec_input(stdin=b"x"), Stream())
    start = exec_input(start=pb.ExecRequest(sandbox_id="dp", command=[]))
    with pytest.raises(InvalidArgument, match="Exec: field 'command' is required"):
        await ready.stream("Exec", start, Stream())
    start = exec_input(start=pb.ExecRequest(sandbox_id="dp", command=["cat"], stdin=True))
    stream = Stream([exec_input(close_stdin=False)])
    with trio.fail_after(GUARD), pytest.raises(InvalidArgument, match="close_stdin: must be true"):
        await ready.stream("Exec", start, stream)
    with pytest.raises(InvalidArgument, match="ended before its opening message"):
        await ready.stream("Exec", b"", Stream())


async def test_exec_sync(ready: Calls) -> None:
    request = pb.ExecSyncRequest(
        sandbox_id="dp",
        command=["sh", "-c", "echo out; echo err >&2; exit 3"],
        max_output_bytes=2,
    )
    with trio.fail_after(GUARD):
        result = await ready.unary(C, "ExecSync", request, pb.ExecSyncResponse)
    assert (result.stdout, result.stderr, result.exit_status) == (b"ou", b"er", 3)
    assert result.truncated and not result.timed_out and result.exec_id
    with pytest.raises(InvalidArgument, match="max_output_bytes: must be from 0"):
        request = pb.ExecSyncRequest(sandbox_id="dp", command=["true"], max_output_bytes=1 << 40)
        await ready.unary(C, "ExecSync", request, pb.ExecSyncResponse)


async def test_files_go_in_and_come_back(ready: Calls, tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    data = os.urandom(3 << 20)
    start = pb.WriteFileInput(start=pb.WriteFileRequest(sandbox_id="dp", path=path, mode=0o600))
    pieces = [
        pb.WriteFileInput(data=data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)
    ]
    stream = Stream([p.SerializeToString() for p in pieces])
    with trio.fail_after(GUARD):
        answer = await ready.stream("WriteFile", start.SerializeToString(), stream)
    assert answer is not None and pb.WriteFileResponse.FromString(answer).size == len(data)
    assert os.stat(path).st_mode & 0o777 == 0o600

    stream = Stream()
    request = pb.ReadFileRequest(sandbox_id="dp", path=path).SerializeToString()
    with trio.fail_after(GUARD):
        assert await ready.stream("ReadFile", request, stream) is None
    read = []
    while True:
        try:
            read.append(pb.ReadFileResponse.FromString(stream.sent.receive_nowait()))
        except trio.WouldBlock:
            break
    assert b"".join(m.data for m in read) == data
    assert read[-1].size == len(data) and not any(m.HasField("size") for m in read[:-1])
    with pytest.raises(NotFound):
        missing = pb.ReadFileRequest(sandbox_id="dp", path=str(tmp_path / "missing"))
        await ready.stream("ReadFile", missing.SerializeToString(), Stream())


async def test_logs(sandboxd_controller: Controller) -> None:
    await sandboxd_controller.create(
        "lg", sandboxer="process", options=SandboxOptions(command=("sh", "-c", "echo hello"))
    )
    await sandboxd_controller.start("lg")
    with trio.fail_after(GUARD):
        await sandboxd_controller.wait("lg")
    calls = Calls(sandboxd_controller)
    stream = Stream()
    request = pb.LogsRequest(sandbox_id="lg").SerializeToString()
    with trio.fail_after(GUARD):
        assert await calls.stream("Logs", request, stream) is None
    chunk = pb.LogMessage.FromString(stream.sent.receive_nowait())
    assert (chunk.stream, chunk.data) == ("stdout", b"hello\n")
    assert not chunk.HasField("lost_bytes")
    assert datetime.fromtimestamp(when(chunk.timestamp), UTC).year >= 2024
    since = pb.LogsRequest(sandbox_id="lg", since={"seconds": 4_000_000_000}).SerializeToString()
    stream = Stream()
    await calls.stream("Logs", since, stream)
    with pytest.raises(trio.WouldBlock):
        stream.sent.receive_nowait()
    beyond = pb.LogsRequest(sandbox_id="lg", since={"seconds": 2**40}).SerializeToString()
    with pytest.raises(InvalidArgument, match=r"Logs\.since: not a valid timestamp"):
        await calls.stream("Logs", beyond, Stream())


async def test_version_tells_the_same_limits_in_both_envelopes(
    nursery: trio.Nursery, sock_path: str, sandboxd_controller: Controller
) -> None:
    limits = Limits(max_calls_per_connection=7, max_connections=9)
    await nursery.start(partial(serve_controller, sandboxd_controller, sock_path, limits=limits))
    async with open_client(sock_path) as client:
        cbor = (await client.call("sandboxd.v1.Runtime", "Version"))["limits"]
    async with open_client(sock_path, envelope="protobuf") as client:
        data = await client.call_encoded("sandboxd.v1.Runtime", "Version")
    told = pb.VersionResponse.FromString(data).limits
    assert cbor == limits.advertised()
    assert {field.name: value for field, value in told.ListFields()} == cbor


async def test_a_status_polled_with_the_same_bytes_follows_the_sandbox() -> None:
    async with sim_calls() as (calls, _):
        request = sandbox_pb.SandboxStatusRequest(sandbox_id="polled")
        answer = sandbox_pb.SandboxStatusResponse

        with pytest.raises(NotFound):
            await calls.unary(S, "SandboxStatus", request, answer)
        await calls.unary(C, "Create", pb.CreateRequest(sandbox_id="polled"), Empty)
        assert (await calls.unary(S, "SandboxStatus", request, answer)).state == "created"
        await calls.unary(C, "Start", pb.SandboxRequest(sandbox_id="polled"), pb.StartResponse)
        assert (await calls.unary(S, "SandboxStatus", request, answer)).state == "ready"


async def test_a_remembered_request_is_a_copy_for_each_call() -> None:
    reads: list[bytes] = []
    seen: list[dict[str, Any]] = []

    def read(payload: bytes) -> dict[str, Any]:
        reads.append(payload)
        return {"sandbox_id": payload.decode(), "verbose": False}

    def handler(message: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        seen.append(dict(message))
        message["verbose"] = True  # a handler changing its message changes no other call's
        return {}

    call = _inline(handler, read, lambda values: b"")
    for payload in (b"a", b"a", b"b"):
        assert call(payload, CallContext(SANDBOX_SERVICE, "SandboxStatus", 1, {})) == b""
    assert seen == [{"sandbox_id": i, "verbose": False} for i in ("a", "a", "b")]
    assert reads == [b"a", b"b"]
