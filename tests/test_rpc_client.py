"""Tests for the trio RPC client: ``open_client``, ``Client.call`` and ``Client.stream``.

Most tests talk to a real :class:`sandboxd.rpc.Server` on a real Unix socket.  Where the test
needs a peer that misbehaves (never answers, answers out of order, drops the connection) or
needs to see the exact frames the client sends, it plays the server itself with a raw trio
socket and the sans-io wire functions.  Nothing sleeps: tests wait on events, and those that
involve time (or could hang) run on trio's autojump clock under ``trio.fail_after``.
"""

from __future__ import annotations

import collections
import functools
import gc
import itertools
import math
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import sandboxd
from sandboxd.rpc import (
    CallContext,
    Client,
    MessageSender,
    Server,
    inline,
    open_client,
    server_stream,
    unary,
)
from sandboxd.rpc._transport import Transport
from sandboxd.wire import (
    MAX_PAYLOAD,
    Code,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    Request,
    decode_request,
    decode_response,
    dumps,
    encode_error,
    encode_error_from,
    encode_frame,
    encode_response,
    loads_message,
)
from sandboxd.wire._client import response_payload

SVC = "test.Svc"
#: Virtual seconds (autojump clock) a test may take before it counts as hung.
GUARD = 30.0
END_FLAGS = Flags.REMOTE_CLOSED | Flags.NO_DATA
ENDLESS_LIMIT = 5000


# -- a real server with test services ---------------------------------------------------------


class State:
    """What the test services record, and the events that drive them."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.barrier_target = 0
        self.barrier_count = 0
        self.barrier = trio.Event()
        self.hang_started = trio.Event()
        self.hang_cancelled = trio.Event()
        self.hang_deadline: float | None = None
        self.stream_started = trio.Event()
        self.stream_cancelled = trio.Event()
        self.stream_sent = 0
        self.calls: list[str] = []


def make_services(state: State) -> dict[str, dict[str, Any]]:
    def echo(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        state.calls.append("Echo")
        return message

    def metadata(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return {"metadata": {key: list(values) for key, values in ctx.metadata.items()}}

    def fail_inline(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        raise sandboxd.NotFound(message["text"], details=message.get("details", ()))

    async def fail_unary(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        raise sandboxd.NotFound(message["text"], details=message.get("details", ()))

    async def wait(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await state.release.wait()
        return message

    async def barrier(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        # Answers only once ``barrier_target`` calls are in progress at the same time.
        state.barrier_count += 1
        if state.barrier_count >= state.barrier_target:
            state.barrier.set()
        await state.barrier.wait()
        return message

    async def hang(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        state.hang_deadline = ctx.deadline
        state.hang_started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            state.hang_cancelled.set()
            raise
        raise AssertionError("unreachable")

    async def count(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        for i in range(message["n"]):
            await stream.send({"i": i})

    async def count_then_fail(
        message: dict[str, Any], ctx: CallContext, stream: MessageSender
    ) -> None:
        for i in range(message["n"]):
            await stream.send({"i": i})
        raise sandboxd.NotFound("gone after the messages")

    async def endless(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        # Endless as far as the client can tell; after ENDLESS_LIMIT messages it only waits,
        # so that a client that never ends it fails the test at GUARD instead of spinning.
        state.stream_started.set()
        try:
            while state.stream_sent < ENDLESS_LIMIT:
                await stream.send({"i": state.stream_sent})
                state.stream_sent += 1
            await trio.sleep_forever()
        except trio.Cancelled:
            state.stream_cancelled.set()
            raise

    return {
        SVC: {
            "Echo": inline(echo),
            "Metadata": inline(metadata),
            "FailInline": inline(fail_inline),
            "FailUnary": unary(fail_unary),
            "Wait": unary(wait),
            "Barrier": unary(barrier),
            "Hang": unary(hang),
            "Count": server_stream(count),
            "CountThenFail": server_stream(count_then_fail),
            "Endless": server_stream(endless),
        }
    }


async def start_server(nursery: trio.Nursery, path: str) -> State:
    state = State()
    server = Server(make_services(state))
    await nursery.start(server.serve_unix, path)
    return state


# -- a raw peer, for servers that misbehave or that must see the client's exact frames ---------


class RawPeer:
    """The server end of one accepted connection, driven frame by frame by the test."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._frames: collections.deque[Frame] = collections.deque()

    async def next_frame(self) -> Frame:
        while not self._frames:
            data = await self.stream.receive_some()
            if not data:
                raise AssertionError("the client closed the connection")
            for event in self._decoder.feed(data):
                assert isinstance(event, Frame), event
                self._frames.append(event)
        return self._frames.popleft()

    async def next_request(self) -> tuple[int, Request]:
        frame = await self.next_frame()
        assert frame.type == FrameType.REQUEST, frame
        assert frame.flags == 0, frame
        return frame.stream_id, decode_request(frame.payload)

    async def reply(self, stream_id: int, message: Mapping[str, Any]) -> None:
        payload = encode_response(dumps(message))
        await self.stream.send_all(encode_frame(stream_id, FrameType.RESPONSE, 0, payload))

    async def reply_error(self, stream_id: int, err: sandboxd.RPCError) -> None:
        payload = encode_error_from(err)
        await self.stream.send_all(encode_frame(stream_id, FrameType.RESPONSE, 0, payload))


@asynccontextmanager
async def raw_listener(path: str) -> AsyncIterator[trio.SocketListener]:
    # Bound synchronously: trio's ``bind`` of an AF_UNIX socket runs in a thread, which the
    # autojump clock would take for idleness and jump the clock past every deadline.
    plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        plain.bind(path)
        plain.listen(64)
    except BaseException:
        plain.close()
        raise
    async with trio.SocketListener(trio.socket.from_stdlib_socket(plain)) as listener:
        yield listener


@asynccontextmanager
async def raw_client(path: str, **kwargs: Any) -> AsyncIterator[tuple[Client, RawPeer]]:
    """An ``open_client`` connected to a raw peer the test plays the server with."""
    async with raw_listener(path) as listener, open_client(path, **kwargs) as client:
        stream = await listener.accept()
        async with stream:
            yield client, RawPeer(stream)


# -- running calls in the background -------------------------------------------------------------


class Task:
    """A call running in a task of its own: its result or its ``Exception`` once done."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: Exception | None = None
        self.cancelled = False
        #: The trio task the call runs in, once it started.
        self.trio_task: trio.lowlevel.Task | None = None

    async def wait(self) -> Task:
        await self.done.wait()
        return self

    async def result(self) -> Any:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


def spawn(nursery: trio.Nursery, fn: Callable[[], Awaitable[Any]]) -> Task:
    task = Task()

    async def run() -> None:
        task.trio_task = trio.lowlevel.current_task()
        try:
            task.value = await fn()
        except Exception as exc:
            task.error = exc
        except trio.Cancelled:
            task.cancelled = True
            raise
        finally:
            task.done.set()

    nursery.start_soon(run)
    return task


def call(client: Client, method: str, message: Any = None, **kwargs: Any) -> Any:
    """A zero-argument coroutine function making one call (for :func:`spawn`)."""
    return functools.partial(client.call, SVC, method, message, **kwargs)


# -- 1. concurrency ------------------------------------------------------------------------------


async def test_200_concurrent_calls_on_one_client_all_get_their_own_answer(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    n = 200
    state.barrier_target = n
    with trio.fail_after(GUARD):
        async with open_client(sock_path) as client, trio.open_nursery() as callers:
            tasks = [
                spawn(callers, call(client, "Barrier", {"n": i, "s": "x" * i})) for i in range(n)
            ]
        # Every handler waited until all 200 were in progress: they were truly concurrent, and
        # no stream id was refused (an id that is not odd and increasing gets INVALID_ARGUMENT).
        for i, task in enumerate(tasks):
            assert await task.result() == {"n": i, "s": "x" * i}
        assert state.barrier_count == n


async def test_concurrent_calls_use_odd_increasing_stream_ids_and_route_replies_by_id(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    n = 200
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
            tasks = [spawn(callers, call(client, "Echo", {"n": i})) for i in range(n)]
            requests = [await peer.next_request() for _ in range(n)]
            ids = [stream_id for stream_id, _ in requests]
            assert all(stream_id % 2 == 1 for stream_id in ids), ids
            assert all(a < b for a, b in itertools.pairwise(ids)), ids
            # Answer in the reverse order: each caller must still get its own answer.
            for stream_id, request in reversed(requests):
                assert request.service == SVC
                assert request.method == "Echo"
                await peer.reply(stream_id, loads_message(request.payload))
        assert sorted(loads_message(r.payload)["n"] for _, r in requests) == list(range(n))
        for i, task in enumerate(tasks):
            assert await task.result() == {"n": i}


# -- 2. typed errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["FailInline", "FailUnary"])
async def test_handler_error_reaches_the_caller_as_the_same_typed_error(
    sock_path: str, nursery: trio.Nursery, method: str
) -> None:
    await start_server(nursery, sock_path)
    async with open_client(sock_path) as client:
        with pytest.raises(sandboxd.NotFound) as info:
            await client.call(SVC, method, {"text": "x"})
        err = info.value
        assert type(err) is sandboxd.NotFound
        assert err.message == "x"
        assert str(err) == "x"
        assert err.code == Code.NOT_FOUND == sandboxd.NotFound.code
        assert isinstance(err, sandboxd.RPCError)

        with pytest.raises(sandboxd.NotFound) as info:
            await client.call(SVC, method, {"text": "y", "details": ["d", 1]})
        assert info.value.message == "y"
        assert info.value.details == ("d", 1)

        # The connection is unaffected by an error answer.
        assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}


@pytest.mark.parametrize(
    ("service", "method"), [(SVC, "NoSuchMethod"), ("no.such.Service", "Echo")]
)
async def test_unknown_method_or_service_is_unimplemented(
    sock_path: str, nursery: trio.Nursery, service: str, method: str
) -> None:
    await start_server(nursery, sock_path)
    async with open_client(sock_path) as client:
        with pytest.raises(sandboxd.Unimplemented) as info:
            await client.call(service, method)
        assert info.value.code == Code.UNIMPLEMENTED
        assert method in info.value.message or service in info.value.message
        assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}


async def test_error_status_from_raw_server_is_typed_by_its_code(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    errors = [
        sandboxd.PermissionDenied("no"),
        sandboxd.FailedPrecondition("not ready", details=[{"k": "v"}]),
        sandboxd.Unavailable("later"),
    ]
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
            for sent in errors:
                task = spawn(callers, call(client, "Anything"))
                stream_id, _ = await peer.next_request()
                await peer.reply_error(stream_id, sent)
                await task.wait()
                got = task.error
                assert type(got) is type(sent)
                assert isinstance(got, sandboxd.RPCError)
                assert got.code == sent.code
                assert got.message == sent.message
                assert got.details == sent.details


async def test_unknown_code_and_malformed_responses_are_still_typed_errors(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
            task = spawn(callers, call(client, "Anything"))
            stream_id, _ = await peer.next_request()
            payload = encode_error(99, "from the future")
            await peer.stream.send_all(encode_frame(stream_id, FrameType.RESPONSE, 0, payload))
            await task.wait()
            assert type(task.error) is sandboxd.Unknown
            assert "99" in task.error.message
            assert "from the future" in task.error.message

            task = spawn(callers, call(client, "Anything"))
            stream_id, _ = await peer.next_request()
            garbage = b"\xff\x00not cbor"
            await peer.stream.send_all(encode_frame(stream_id, FrameType.RESPONSE, 0, garbage))
            await task.wait()
            assert type(task.error) is sandboxd.Internal

            task = spawn(callers, call(client, "Echo", {"x": 1}))
            stream_id, request = await peer.next_request()
            await peer.reply(stream_id, loads_message(request.payload))
            assert await task.result() == {"x": 1}


async def test_oversized_frame_from_the_server_fails_only_its_call(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
            big = spawn(callers, call(client, "Big"))
            big_id, _ = await peer.next_request()
            other = spawn(callers, call(client, "Echo", {"o": 1}))
            other_id, request = await peer.next_request()
            payload = encode_response(dumps({"blob": b"\0" * MAX_PAYLOAD}))
            # Encoded with a larger limit than the client's: the server misbehaves.
            frame = encode_frame(big_id, FrameType.RESPONSE, 0, payload, 2 * MAX_PAYLOAD)
            await peer.stream.send_all(frame)
            await peer.reply(other_id, loads_message(request.payload))
            await big.wait()
            assert type(big.error) is sandboxd.ResourceExhausted
            assert await other.result() == {"o": 1}
            assert not client.closed


# -- 3. per-call timeout -------------------------------------------------------------------------


async def test_call_timeout_raises_deadline_exceeded_and_cancels_the_handler(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    with trio.fail_after(GUARD):
        async with open_client(sock_path) as client:
            start = trio.current_time()
            with pytest.raises(sandboxd.DeadlineExceeded) as info:
                await client.call(SVC, "Hang", timeout=0.05)
            assert info.value.code == Code.DEADLINE_EXCEEDED
            assert trio.current_time() - start == pytest.approx(0.05, abs=1e-3)
            # The server got the deadline and its handler was cancelled.
            assert state.hang_deadline is not None
            assert state.hang_deadline == pytest.approx(start + 0.05, abs=1e-3)
            await state.hang_cancelled.wait()
            # The client is still usable.
            assert not client.closed
            assert await client.call(SVC, "Echo", {"after": True}) == {"after": True}
            assert await client.call(SVC, "Echo", {"t": 1}, timeout=10) == {"t": 1}


async def test_call_timeout_is_sent_as_timeout_nano_and_ended_with_a_close_frame(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
            start = trio.current_time()
            task = spawn(callers, call(client, "Hang", timeout=0.05))
            stream_id, request = await peer.next_request()
            assert 0 < request.timeout_nano <= 50_000_000
            assert request.timeout_nano > 40_000_000  # "about" the timeout
            # The server never answers.  At the deadline the client gives up and tells it so.
            frame = await peer.next_frame()
            assert frame == Frame(stream_id, FrameType.DATA, END_FLAGS, b"")
            await task.wait()
            assert isinstance(task.error, sandboxd.DeadlineExceeded)
            assert trio.current_time() - start == pytest.approx(0.05, abs=1e-3)

            # The connection still works; a late answer to the abandoned call is ignored.
            await peer.reply(stream_id, {"late": True})
            task = spawn(callers, call(client, "Echo", {"b": 2}))
            next_id, request = await peer.next_request()
            assert next_id > stream_id
            assert request.timeout_nano == 0  # no timeout, no deadline sent
            await peer.reply(next_id, loads_message(request.payload))
            assert await task.result() == {"b": 2}


# -- 4. caller cancellation ----------------------------------------------------------------------


async def test_cancelling_the_caller_propagates_cancelled_and_cancels_the_handler(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    seen: list[str] = []

    async def caller(client: Client) -> None:
        try:
            await client.call(SVC, "Hang")
        except trio.Cancelled:
            seen.append("cancelled")
            raise
        except BaseException as exc:  # pragma: no cover - reported by the assertion below
            seen.append(repr(exc))
            raise

    with trio.fail_after(GUARD):
        async with open_client(sock_path) as client:
            async with trio.open_nursery() as callers:
                callers.start_soon(caller, client)
                await state.hang_started.wait()
                callers.cancel_scope.cancel()
            assert seen == ["cancelled"]
            await state.hang_cancelled.wait()
            assert not client.closed
            assert await client.call(SVC, "Echo", {"ok": 1}) == {"ok": 1}


async def test_cancelling_the_caller_sends_a_close_frame_on_its_stream(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer):
            async with trio.open_nursery() as callers:
                callers.start_soon(call(client, "Hang"))
                stream_id, _ = await peer.next_request()
                callers.cancel_scope.cancel()
            assert callers.cancel_scope.cancelled_caught
            frame = await peer.next_frame()
            assert frame == Frame(stream_id, FrameType.DATA, END_FLAGS, b"")

            async with trio.open_nursery() as callers:
                task = spawn(callers, call(client, "Echo", {"c": 3}))
                next_id, request = await peer.next_request()
                assert next_id > stream_id
                await peer.reply(stream_id, {"late": True})  # ignored: nobody waits for it
                await peer.reply(next_id, loads_message(request.payload))
                assert await task.result() == {"c": 3}


# -- 5. connection loss --------------------------------------------------------------------------


async def test_connection_loss_fails_every_pending_call_with_unavailable(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    stream_outcome: list[object] = []

    async def consume(client: Client) -> None:
        try:
            async with client.stream(SVC, "Endless") as messages:
                stream_outcome.extend([m async for m in messages])
        except sandboxd.RPCError as err:
            stream_outcome.append(err)

    with trio.fail_after(GUARD):
        async with raw_listener(sock_path) as listener, open_client(sock_path) as client:
            server_end = await listener.accept()
            peer = RawPeer(server_end)
            async with trio.open_nursery() as callers:
                tasks = [spawn(callers, call(client, "Hang", {"i": i})) for i in range(5)]
                tasks.append(spawn(callers, call(client, "Hang", timeout=1000)))
                callers.start_soon(consume, client)
                for _ in range(len(tasks) + 1):
                    await peer.next_request()
                await trio.testing.wait_all_tasks_blocked()
                assert not any(task.done.is_set() for task in tasks)
                before = trio.current_time()
                await server_end.aclose()
            # Everything failed at once: no time passed, nothing waited for its timeout.
            assert trio.current_time() == before
            for task in tasks:
                assert isinstance(task.error, sandboxd.Unavailable), task.error
                assert task.error.code == Code.UNAVAILABLE
            assert len(stream_outcome) == 1
            assert isinstance(stream_outcome[0], sandboxd.Unavailable)
            assert client.closed

            # Later calls fail at once too.
            for method in ("Echo", "Hang"):
                with pytest.raises(sandboxd.Unavailable):
                    await client.call(SVC, method)
            with pytest.raises(sandboxd.Unavailable):
                async with client.stream(SVC, "Endless") as messages:
                    async for _ in messages:  # pragma: no cover
                        pass
            assert trio.current_time() == before


async def test_call_after_the_server_went_away_raises_unavailable(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with raw_listener(sock_path) as listener, open_client(sock_path) as client:
            server_end = await listener.accept()
            await server_end.aclose()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(sandboxd.Unavailable):
                await client.call(SVC, "Echo", {"a": 1})


# -- 6. nobody listening -------------------------------------------------------------------------


async def test_connecting_where_no_server_listens_raises_unavailable_naming_the_path(
    sock_path: str,
) -> None:
    with pytest.raises(sandboxd.Unavailable) as info:
        async with open_client(sock_path):
            raise AssertionError("connected to nothing")  # pragma: no cover
    assert sock_path in info.value.message
    assert info.value.code == Code.UNAVAILABLE


async def test_connecting_to_a_stale_socket_file_raises_unavailable_naming_the_path(
    sock_path: str,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(sock_path)  # a socket file nobody listens on
    with pytest.raises(sandboxd.Unavailable) as info:
        async with open_client(sock_path):
            raise AssertionError("connected to nothing")  # pragma: no cover
    assert sock_path in info.value.message


# -- 7. metadata ---------------------------------------------------------------------------------


async def test_metadata_reaches_the_handler(sock_path: str, nursery: trio.Nursery) -> None:
    await start_server(nursery, sock_path)
    async with open_client(sock_path) as client:
        got = await client.call(SVC, "Metadata", metadata={"k": ["v1", "v2"]})
        assert got == {"metadata": {"k": ["v1", "v2"]}}
        got = await client.call(SVC, "Metadata", metadata={"k": ("v1", "v2"), "e": []})
        assert got["metadata"]["k"] == ["v1", "v2"]
        assert await client.call(SVC, "Metadata") == {"metadata": {}}


# -- 8. streams ----------------------------------------------------------------------------------


async def test_stream_yields_every_message_in_order_then_ends(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start_server(nursery, sock_path)
    with trio.fail_after(GUARD):
        async with open_client(sock_path) as client:
            for n in (0, 1, 50):
                async with client.stream(SVC, "Count", {"n": n}) as messages:
                    got = [m async for m in messages]
                assert got == [{"i": i} for i in range(n)]
            assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}


async def test_stream_ending_with_an_error_raises_it_after_the_messages(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start_server(nursery, sock_path)
    with trio.fail_after(GUARD):
        async with open_client(sock_path) as client:
            got: list[dict[str, Any]] = []
            with pytest.raises(sandboxd.NotFound) as info:
                async with client.stream(SVC, "CountThenFail", {"n": 3}) as messages:
                    async for m in messages:
                        got.append(m)
            assert got == [{"i": 0}, {"i": 1}, {"i": 2}]
            assert info.value.message == "gone after the messages"

            with pytest.raises(sandboxd.Unimplemented):
                async with client.stream(SVC, "NoSuchStream") as messages:
                    async for _ in messages:  # pragma: no cover
                        pass
            assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}


async def test_leaving_a_stream_early_ends_it_on_the_server_not_the_connection(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    with trio.fail_after(GUARD):
        async with open_client(sock_path) as client:
            got: list[dict[str, Any]] = []
            async with client.stream(SVC, "Endless") as messages:
                async for m in messages:
                    got.append(m)
                    if len(got) == 3:
                        break
            assert got == [{"i": 0}, {"i": 1}, {"i": 2}]
            await state.stream_cancelled.wait()
            assert not client.closed
            assert await client.call(SVC, "Echo", {"after": 1}) == {"after": 1}
            async with client.stream(SVC, "Count", {"n": 2}) as messages:
                assert [m async for m in messages] == [{"i": 0}, {"i": 1}]


async def test_leaving_a_stream_early_sends_a_close_frame_on_its_stream(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer):
            async with client.stream(SVC, "Endless") as messages:
                stream_id, _ = await peer.next_request()
                for i in range(3):
                    await peer.stream.send_all(
                        encode_frame(stream_id, FrameType.DATA, 0, dumps({"i": i}))
                    )
                async for m in messages:
                    assert m == {"i": 0}
                    break
            assert await peer.next_frame() == Frame(stream_id, FrameType.DATA, END_FLAGS, b"")


async def test_leaving_a_stream_early_leaves_nothing_for_the_garbage_collector(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The documented way to stop early (``break``, then leave the block) cleans up after itself.

    Nothing is left for the garbage collector to finalize: an async generator abandoned
    mid-iteration makes trio warn with a ResourceWarning (an error in this project's tests).
    """
    await start_server(nursery, sock_path)
    with trio.fail_after(GUARD), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with open_client(sock_path) as client:
            async with client.stream(SVC, "Count", {"n": 5}) as messages:
                async for _ in messages:
                    break
            del messages
            gc.collect()
            assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


# -- 9. a slow stream consumer -------------------------------------------------------------------


async def test_slow_stream_consumer_ends_only_its_own_stream(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    with trio.fail_after(GUARD):
        async with open_client(sock_path, stream_buffer=8) as client:
            async with client.stream(SVC, "Endless") as messages:
                await state.stream_started.wait()
                # The consumer does not read.  Ordinary calls go on working meanwhile, while
                # the stream overflows and the client ends it (which cancels the handler).
                calls = 0
                while not state.stream_cancelled.is_set():
                    assert await client.call(SVC, "Echo", {"n": calls}) == {"n": calls}
                    calls += 1
                    # The server had sent everything it ever sends long before this.
                    assert calls <= ENDLESS_LIMIT, "the overflowing stream was never ended"
                got: list[dict[str, Any]] = []
                with pytest.raises(sandboxd.ResourceExhausted):
                    async for m in messages:
                        got.append(m)
                # Everything received before the end, in order: at least the full buffer, and
                # at most what one more read brought.
                assert len(got) >= 8
                assert got == [{"i": i} for i in range(len(got))]
            assert not client.closed
            assert await client.call(SVC, "Echo", {"after": 1}) == {"after": 1}
            async with client.stream(SVC, "Count", {"n": 8}) as messages:
                assert [m async for m in messages] == [{"i": i} for i in range(8)]


async def test_slow_stream_consumer_does_not_delay_other_streams(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with (
            raw_client(sock_path, stream_buffer=8) as (client, peer),
            client.stream(SVC, "Slow") as slow,
            client.stream(SVC, "Fast") as fast,
        ):
            slow_id, _ = await peer.next_request()
            fast_id, _ = await peer.next_request()
            # Both streams get a message at a time; only the fast one is read as it goes.
            for i in range(20):
                await peer.stream.send_all(
                    encode_frame(slow_id, FrameType.DATA, 0, dumps({"s": i}))
                    + encode_frame(fast_id, FrameType.DATA, 0, dumps({"f": i}))
                )
                assert await anext(fast) == {"f": i}
            await peer.stream.send_all(encode_frame(fast_id, FrameType.DATA, END_FLAGS, b""))
            assert [m async for m in fast] == []
            # The slow stream overflowed: it was ended on the server, and raises after what
            # it had buffered.
            assert await peer.next_frame() == Frame(slow_id, FrameType.DATA, END_FLAGS, b"")
            got = []
            with pytest.raises(sandboxd.ResourceExhausted):
                async for m in slow:
                    got.append(m)
            assert got == [{"s": i} for i in range(8)]


# -- 10. oversize messages -----------------------------------------------------------------------


async def test_oversize_message_is_refused_without_sending_anything(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    big = {"blob": b"\0" * (MAX_PAYLOAD + 1)}
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer):
            with pytest.raises(sandboxd.ResourceExhausted) as info:
                await client.call(SVC, "Echo", big)
            assert info.value.code == Code.RESOURCE_EXHAUSTED
            with pytest.raises(sandboxd.ResourceExhausted):
                async with client.stream(SVC, "Count", big) as messages:
                    async for _ in messages:  # pragma: no cover
                        pass
            assert not client.closed
            # The first thing the server receives is the next request: nothing of the refused
            # ones was sent.

            async with trio.open_nursery() as callers:
                task = spawn(callers, call(client, "Echo", {"small": 1}))
                stream_id, request = await peer.next_request()
                assert loads_message(request.payload) == {"small": 1}
                await peer.reply(stream_id, {"small": 1})
                assert await task.result() == {"small": 1}


async def test_oversize_message_leaves_the_connection_to_a_real_server_working(
    sock_path: str, nursery: trio.Nursery
) -> None:
    state = await start_server(nursery, sock_path)
    async with open_client(sock_path) as client:
        with pytest.raises(sandboxd.ResourceExhausted):
            await client.call(SVC, "Echo", {"blob": b"\0" * (MAX_PAYLOAD + 1)})
        assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}
        assert state.calls == ["Echo"]


# -- 11. closing the client ----------------------------------------------------------------------


async def test_closing_the_client_fails_calls_pending_in_other_tasks(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as callers:
            async with open_client(sock_path) as client:
                pending = spawn(callers, call(client, "Hang"))
                waiting = spawn(callers, call(client, "Wait", {"w": 1}, timeout=1000))
                await state.hang_started.wait()
                await trio.testing.wait_all_tasks_blocked()
                before = trio.current_time()
            await pending.wait()
            await waiting.wait()
            assert trio.current_time() == before
        assert isinstance(pending.error, sandboxd.Unavailable), pending.error
        assert isinstance(waiting.error, sandboxd.Unavailable), waiting.error
        assert client.closed
        with pytest.raises(sandboxd.Unavailable):
            await client.call(SVC, "Echo", {"a": 1})
        # The server saw the connection end and cancelled the handler.
        await state.hang_cancelled.wait()


async def test_a_call_without_timeout_has_no_deadline_on_the_server(
    sock_path: str, nursery: trio.Nursery
) -> None:
    state = await start_server(nursery, sock_path)
    async with open_client(sock_path) as client, trio.open_nursery() as callers:
        task = spawn(callers, call(client, "Hang"))
        await state.hang_started.wait()
        assert state.hang_deadline == math.inf
        callers.cancel_scope.cancel()
    assert task.error is None


# -- 12. who reads the socket --------------------------------------------------------------------
#
# A call that finds nobody reading reads for itself (it leads); calls that come while it does
# wait for it to hand them their replies, or the reading once it is done; while no call waits,
# the reader task reads.  The sockets below note which task made each read.


class NotingSocket(socket.socket):
    """A client socket that notes the trio task making each read."""

    readers: list[trio.lowlevel.Task]

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        self.readers.append(trio.lowlevel.current_task())
        return super().recv(bufsize, flags)


@asynccontextmanager
async def noting_client(path: str) -> AsyncIterator[tuple[Client, NotingSocket]]:
    """What ``open_client`` gives, over a :class:`NotingSocket`."""
    sock = NotingSocket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.readers = []
    try:
        sock.connect(path)  # a listening Unix socket accepts at once
    except BaseException:
        sock.close()
        raise
    transport = Transport(sock)
    client = Client(transport)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.reader)
            nursery.start_soon(transport.run_writer)
            try:
                yield client, sock
            finally:
                client.close()
                nursery.cancel_scope.cancel()
    finally:
        transport.close()


@asynccontextmanager
async def raw_noting_client(path: str) -> AsyncIterator[tuple[Client, RawPeer, NotingSocket]]:
    async with raw_listener(path) as listener, noting_client(path) as (client, sock):
        stream = await listener.accept()
        async with stream:
            yield client, RawPeer(stream), sock


def is_reader_task(task: trio.lowlevel.Task) -> bool:
    return task.name.endswith("Client.reader")


async def test_a_caller_alone_reads_its_own_replies(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start_server(nursery, sock_path)
    with trio.fail_after(GUARD):
        async with noting_client(sock_path) as (client, sock):
            me = trio.lowlevel.current_task()
            for i in range(20):
                assert await client.call(SVC, "Echo", {"i": i}) == {"i": i}
            # Also after the client was idle long enough for the reader task to wait again.
            for i in range(5):
                await trio.testing.wait_all_tasks_blocked()
                assert await client.call(SVC, "Echo", {"i": i}) == {"i": i}
            assert sock.readers
            assert set(sock.readers) == {me}


async def test_concurrent_replies_in_tiny_pieces_reach_their_callers(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    n = 30
    with trio.fail_after(GUARD):
        async with raw_noting_client(sock_path) as (client, peer, sock):
            async with trio.open_nursery() as callers:
                tasks = [spawn(callers, call(client, "Echo", {"n": i})) for i in range(n)]
                requests = [await peer.next_request() for _ in range(n)]
                replies = b"".join(
                    encode_frame(stream_id, FrameType.RESPONSE, 0, encode_response(r.payload))
                    for stream_id, r in requests
                )
                # 7 bytes at a time: frames end mid-read and the reading changes hands often.
                for start in range(0, len(replies), 7):
                    await peer.stream.send_all(replies[start : start + 7])
                    await trio.testing.wait_all_tasks_blocked()
            for i, task in enumerate(tasks):
                assert await task.result() == {"n": i}
            callers_tasks = {task.trio_task for task in tasks}
            assert set(sock.readers) <= callers_tasks  # the reader task never had to read
            assert len(set(sock.readers)) > 1  # the reading was handed on
            assert not client.closed


@pytest.mark.parametrize("how", ["cancelled", "timeout"])
async def test_when_the_reading_call_ends_early_a_waiting_call_reads_on(
    sock_path: str, autojump_clock: trio.testing.MockClock, how: str
) -> None:
    with trio.fail_after(GUARD):
        async with (
            raw_noting_client(sock_path) as (client, peer, sock),
            trio.open_nursery() as callers,
        ):
            async with trio.open_nursery() as leading:
                timeout = 1.0 if how == "timeout" else None
                first = spawn(leading, call(client, "Hang", timeout=timeout))
                first_id, _ = await peer.next_request()
                second = spawn(callers, call(client, "Echo", {"n": 2}))
                second_id, _ = await peer.next_request()
                third = spawn(callers, call(client, "Echo", {"n": 3}))
                third_id, _ = await peer.next_request()
                await trio.testing.wait_all_tasks_blocked()
                if how == "cancelled":
                    leading.cancel_scope.cancel()
            if how == "cancelled":
                assert first.cancelled
            else:
                assert isinstance(first.error, sandboxd.DeadlineExceeded)
            assert await peer.next_frame() == Frame(first_id, FrameType.DATA, END_FLAGS, b"")
            # Nobody was reading for the others: the oldest waiting call took over.
            await peer.reply(first_id, {"late": True})
            await peer.reply(third_id, {"n": 3})
            assert await third.result() == {"n": 3}
            await peer.reply(second_id, {"n": 2})
            assert await second.result() == {"n": 2}
            assert sock.readers[-1] is second.trio_task
            assert not client.closed


async def test_a_cancelled_waiting_call_is_not_handed_the_reading(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with (
            raw_noting_client(sock_path) as (client, peer, sock),
            trio.open_nursery() as callers,
        ):
            first = spawn(callers, call(client, "Echo", {"n": 1}))
            first_id, _ = await peer.next_request()
            async with trio.open_nursery() as doomed:
                second = spawn(doomed, call(client, "Hang"))
                second_id, _ = await peer.next_request()
                third = spawn(callers, call(client, "Echo", {"n": 3}, timeout=5))
                third_id, _ = await peer.next_request()
                await trio.testing.wait_all_tasks_blocked()
                doomed.cancel_scope.cancel()
            assert second.cancelled
            assert await peer.next_frame() == Frame(second_id, FrameType.DATA, END_FLAGS, b"")
            await peer.reply(first_id, {"n": 1})
            assert await first.result() == {"n": 1}
            await peer.reply(third_id, {"n": 3})
            assert await third.result() == {"n": 3}
            assert sock.readers[-1] is third.trio_task


async def test_a_waiting_call_times_out_while_another_reads(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
            first = spawn(callers, call(client, "Hang"))
            first_id, _ = await peer.next_request()
            start = trio.current_time()
            second = spawn(callers, call(client, "Hang", timeout=0.5))
            second_id, _ = await peer.next_request()
            assert await peer.next_frame() == Frame(second_id, FrameType.DATA, END_FLAGS, b"")
            await second.wait()
            assert isinstance(second.error, sandboxd.DeadlineExceeded)
            assert trio.current_time() - start == pytest.approx(0.5, abs=1e-3)
            await peer.reply(first_id, {"n": 1})
            assert await first.result() == {"n": 1}


async def test_a_call_takes_the_reading_over_from_the_reader_task_and_gives_it_back(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    def message(stream_id: int, i: int) -> bytes:
        return encode_frame(stream_id, FrameType.DATA, 0, dumps({"i": i}))

    with trio.fail_after(GUARD):
        async with (
            raw_noting_client(sock_path) as (client, peer, sock),
            client.stream(SVC, "Endless") as messages,
        ):
            stream_id, _ = await peer.next_request()
            await peer.stream.send_all(message(stream_id, 0))
            assert await anext(messages) == {"i": 0}
            assert is_reader_task(sock.readers[-1])  # only a stream is open: the reader reads
            await trio.testing.wait_all_tasks_blocked()  # ... and waits for the socket again
            async with trio.open_nursery() as callers:
                task = spawn(callers, call(client, "Echo", {"a": 1}))
                call_id, _ = await peer.next_request()
                await peer.stream.send_all(
                    message(stream_id, 1)
                    + encode_frame(call_id, FrameType.RESPONSE, 0, encode_response(b"\xa1aa\x01"))
                )
                assert await task.result() == {"a": 1}
            assert sock.readers[-1] is task.trio_task
            assert await anext(messages) == {"i": 1}
            # The call is done: the reader task reads for the stream again.
            await peer.stream.send_all(message(stream_id, 2))
            assert await anext(messages) == {"i": 2}
            assert is_reader_task(sock.readers[-1])


class TaskSteps(trio.abc.Instrument):
    """Counts the steps of the reader tasks while installed."""

    def __init__(self) -> None:
        self.reader_steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if is_reader_task(task):
            self.reader_steps += 1


@asynccontextmanager
async def counting_reader_steps() -> AsyncIterator[TaskSteps]:
    steps = TaskSteps()
    trio.lowlevel.add_instrument(steps)
    try:
        yield steps
    finally:
        trio.lowlevel.remove_instrument(steps)


async def test_calls_in_quick_succession_do_not_wake_the_reader_task(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start_server(nursery, sock_path)
    with trio.fail_after(GUARD):
        async with open_client(sock_path) as client:
            assert await client.call(SVC, "Echo", {"first": 1}) == {"first": 1}
            async with counting_reader_steps() as steps:
                for i in range(50):
                    assert await client.call(SVC, "Echo", {"i": i}) == {"i": i}
            assert steps.reader_steps <= 1


async def test_the_reader_task_sleeps_while_one_call_reads_for_long(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD * 10):
        async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
            async with counting_reader_steps() as steps:
                task = spawn(callers, call(client, "Hang", timeout=200))
                await peer.next_request()
                await task.wait()
            assert isinstance(task.error, sandboxd.DeadlineExceeded)
            assert steps.reader_steps <= 3


async def test_cancelling_every_call_at_once_leaves_the_client_reading(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with raw_noting_client(sock_path) as (client, peer, _sock):
            async with trio.open_nursery() as callers:
                tasks = [spawn(callers, call(client, "Hang", {"i": i})) for i in range(3)]
                ids = [(await peer.next_request())[0] for _ in range(3)]
                await trio.testing.wait_all_tasks_blocked()
                callers.cancel_scope.cancel()
            assert all(task.cancelled for task in tasks)
            ends = [await peer.next_frame() for _ in range(3)]
            assert sorted(ends) == [Frame(i, FrameType.DATA, END_FLAGS, b"") for i in ids]
            # Calls and streams still work; so does the reader task.
            async with trio.open_nursery() as callers:
                task = spawn(callers, call(client, "Echo", {"a": 1}))
                call_id, request = await peer.next_request()
                await peer.reply(call_id, loads_message(request.payload))
                assert await task.result() == {"a": 1}
            async with client.stream(SVC, "Count") as messages:
                stream_id, _ = await peer.next_request()
                await peer.stream.send_all(
                    encode_frame(stream_id, FrameType.DATA, 0, dumps({"i": 0}))
                    + encode_frame(stream_id, FrameType.DATA, END_FLAGS, b"")
                )
                assert [m async for m in messages] == [{"i": 0}]
            # With nothing pending, the reader task watches the socket once the client has been
            # idle a while, and notices the end of the connection.
            await peer.stream.aclose()
            for _ in range(3):
                await trio.testing.wait_all_tasks_blocked()
                autojump_clock.jump(1)
            await trio.testing.wait_all_tasks_blocked()
            assert client.closed
            with pytest.raises(sandboxd.Unavailable):
                await client.call(SVC, "Echo")


async def test_a_refusal_on_stream_0_fails_the_reading_call_and_every_waiting_one(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    stream_outcome: list[BaseException] = []

    async def consume(client: Client) -> None:
        try:
            async with client.stream(SVC, "Endless") as messages:
                async for _ in messages:  # pragma: no cover
                    pass
        except sandboxd.RPCError as err:
            stream_outcome.append(err)

    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
            tasks = [spawn(callers, call(client, "Echo", {"i": i})) for i in range(3)]
            tasks.append(spawn(callers, call(client, "Echo", timeout=100)))
            callers.start_soon(consume, client)
            for _ in range(len(tasks) + 1):
                await peer.next_request()
            await trio.testing.wait_all_tasks_blocked()
            refusal = encode_error(
                Code.PERMISSION_DENIED, "uid 7 is not allowed to use this socket"
            )
            await peer.stream.send_all(encode_frame(0, FrameType.RESPONSE, 0, refusal))
            for task in tasks:
                await task.wait()
                assert type(task.error) is sandboxd.PermissionDenied, task.error
                assert task.error.message == "uid 7 is not allowed to use this socket"
            await trio.testing.wait_all_tasks_blocked()
            assert [type(err) for err in stream_outcome] == [sandboxd.PermissionDenied]
            assert client.closed
            with pytest.raises(sandboxd.PermissionDenied):
                await client.call(SVC, "Echo")


# -- 13. reading success envelopes without a CBOR decoder -----------------------------------------

OK_HEAD = b"\xa1\x67payload"


def outcome(decode: Callable[[bytes], bytes], envelope: bytes) -> object:
    try:
        return decode(envelope)
    except sandboxd.RPCError as err:
        return (type(err), err.message, err.details)


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536, MAX_PAYLOAD])
def test_response_payload_reads_success_envelopes_of_every_size(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert response_payload(encode_response(payload)) == payload


def byte_string_heads(length: int) -> list[bytes]:
    """Every definite head CBOR allows for a byte string of ``length`` bytes."""
    heads = [bytes((0x40 + length,))] if length < 24 else []
    for head, size in ((0x58, 1), (0x59, 2), (0x5A, 4), (0x5B, 8)):
        if length < 256**size:
            heads.append(bytes((head,)) + length.to_bytes(size, "big"))
    return heads


envelopes = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=40).map(lambda rest: OK_HEAD + rest),
    st.builds(
        lambda payload, pick, cut, extra: (
            (OK_HEAD + (heads := byte_string_heads(len(payload)))[pick % len(heads)] + payload)[
                : None if cut == 0 else -cut
            ]
            + extra
        ),
        st.binary(max_size=40),
        st.integers(0, 4),
        st.integers(0, 3),
        st.binary(max_size=2),
    ),
    st.binary(max_size=40).map(lambda payload: OK_HEAD + b"\x5f" + cbor2.dumps(payload) + b"\xff"),
    st.builds(lambda code, message: encode_error(code, message), st.integers(0, 20), st.text()),
    st.dictionaries(st.sampled_from(["payload", "status", "x"]), st.binary(max_size=8)).map(
        cbor2.dumps
    ),
)


@given(envelopes)
def test_response_payload_agrees_with_decode_response(envelope: bytes) -> None:
    assert outcome(response_payload, envelope) == outcome(decode_response, envelope)


# -- 14. replies left encoded --------------------------------------------------------------------


async def test_call_encoded_returns_the_bytes_call_decodes_and_raises_the_same_errors(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start_server(nursery, sock_path)
    with trio.fail_after(GUARD):
        async with open_client(sock_path) as client:
            encoded = await client.call_encoded(SVC, "Echo", {"a": [1, "b"]})
            assert type(encoded) is bytes
            assert loads_message(encoded) == {"a": [1, "b"]}
            assert loads_message(await client.call_encoded(SVC, "Echo")) == {}
            with pytest.raises(sandboxd.NotFound, match="x"):
                await client.call_encoded(SVC, "FailInline", {"text": "x"})
            with pytest.raises(sandboxd.DeadlineExceeded):
                await client.call_encoded(SVC, "Hang", timeout=0.5)
            assert await client.call(SVC, "Echo", {"a": 1}) == {"a": 1}


# -- 15. waiting for stream messages -------------------------------------------------------------


async def test_a_stream_timeout_ends_the_wait_for_messages_with_deadline_exceeded(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer):
            start = trio.current_time()
            with pytest.raises(sandboxd.DeadlineExceeded):
                async with client.stream(SVC, "Endless", timeout=1.0) as messages:
                    stream_id, request = await peer.next_request()
                    assert 0 < request.timeout_nano <= 1_000_000_000
                    await peer.stream.send_all(
                        encode_frame(stream_id, FrameType.DATA, 0, dumps({"i": 0}))
                    )
                    assert await anext(messages) == {"i": 0}
                    await anext(messages)
            assert trio.current_time() - start == pytest.approx(1.0, abs=1e-3)
            assert await peer.next_frame() == Frame(stream_id, FrameType.DATA, END_FLAGS, b"")
            assert not client.closed


async def test_cancelling_a_stream_consumer_that_waits_leaves_the_client_working(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async def consume(client: Client) -> None:
        async with client.stream(SVC, "Endless") as messages:
            async for _ in messages:  # pragma: no cover
                pass

    with trio.fail_after(GUARD):
        async with raw_client(sock_path) as (client, peer):
            async with trio.open_nursery() as consumers:
                consumers.start_soon(consume, client)
                stream_id, _ = await peer.next_request()
                await trio.testing.wait_all_tasks_blocked()
                consumers.cancel_scope.cancel()
            assert await peer.next_frame() == Frame(stream_id, FrameType.DATA, END_FLAGS, b"")
            # A late message for the stream is dropped; calls still work.
            await peer.stream.send_all(encode_frame(stream_id, FrameType.DATA, 0, dumps({})))
            async with trio.open_nursery() as callers:
                task = spawn(callers, call(client, "Echo", {"a": 1}))
                call_id, request = await peer.next_request()
                await peer.reply(call_id, loads_message(request.payload))
                assert await task.result() == {"a": 1}
