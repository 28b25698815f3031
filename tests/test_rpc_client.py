"""The trio RPC client: ``open_client`` and ``Client.call``, its errors, deadlines and ends.

Spoken to a real server, or to a raw peer playing one, as ``client_services.py`` tells.
"""

from __future__ import annotations

import itertools
import math
import socket
from functools import partial

import pytest
import trio
import trio.testing

import sandboxd
from background import in_background
from client_services import SVC, call, raw_client, read_stream, start_server
from peers import END_OF_STREAM, listening
from sandboxd.rpc import open_client
from sandboxd.wire import (
    MAX_PAYLOAD,
    Code,
    Frame,
    FrameType,
    dumps,
    encode_error,
    encode_frame,
    encode_response,
    loads_message,
)

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (virtual under the autojump clock) a test may take before it counts as hung.
GUARD = 30.0


# -- concurrency ---------------------------------------------------------------------------------


async def test_200_concurrent_calls_on_one_client_all_get_their_own_answer(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    n = 200
    state.barrier_target = n
    async with open_client(sock_path) as client, trio.open_nursery() as callers:
        tasks = [
            in_background(callers, call(client, "Barrier", {"n": i, "s": "x" * i}))
            for i in range(n)
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
    async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
        tasks = [in_background(callers, call(client, "Echo", {"n": i})) for i in range(n)]
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


# -- typed errors --------------------------------------------------------------------------------


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
    async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
        for sent in errors:
            task = in_background(callers, call(client, "Anything"))
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
    async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
        task = in_background(callers, call(client, "Anything"))
        stream_id, _ = await peer.next_request()
        payload = encode_error(99, "from the future")
        await peer.respond(stream_id, payload)
        await task.wait()
        assert type(task.error) is sandboxd.Unknown
        assert "99" in task.error.message
        assert "from the future" in task.error.message

        task = in_background(callers, call(client, "Anything"))
        stream_id, _ = await peer.next_request()
        garbage = b"\xff\x00not cbor"
        await peer.respond(stream_id, garbage)
        await task.wait()
        assert type(task.error) is sandboxd.Internal

        task = in_background(callers, call(client, "Echo", {"x": 1}))
        stream_id, request = await peer.next_request()
        await peer.reply(stream_id, loads_message(request.payload))
        assert await task.result() == {"x": 1}


async def test_oversized_frame_from_the_server_fails_only_its_call(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
        big = in_background(callers, call(client, "Big"))
        big_id, _ = await peer.next_request()
        other = in_background(callers, call(client, "Echo", {"o": 1}))
        other_id, request = await peer.next_request()
        payload = encode_response(dumps({"blob": b"\0" * MAX_PAYLOAD}))
        # Encoded with a larger limit than the client's: the server misbehaves.
        frame = encode_frame(big_id, FrameType.RESPONSE, 0, payload, 2 * MAX_PAYLOAD)
        await peer.send(frame)
        await peer.reply(other_id, loads_message(request.payload))
        await big.wait()
        assert type(big.error) is sandboxd.ResourceExhausted
        assert await other.result() == {"o": 1}
        assert not client.closed


# -- per-call timeout ----------------------------------------------------------------------------


async def test_call_timeout_raises_deadline_exceeded_and_cancels_the_handler(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
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
    async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
        start = trio.current_time()
        task = in_background(callers, call(client, "Hang", timeout=0.05))
        stream_id, request = await peer.next_request()
        assert 0 < request.timeout_nano <= 50_000_000
        assert request.timeout_nano > 40_000_000  # "about" the timeout
        # The server never answers.  At the deadline the client gives up and tells it so.
        frame = await peer.next_frame()
        assert frame == Frame(stream_id, FrameType.DATA, END_OF_STREAM, b"")
        await task.wait()
        assert isinstance(task.error, sandboxd.DeadlineExceeded)
        assert trio.current_time() - start == pytest.approx(0.05, abs=1e-3)

        # The connection still works; a late answer to the abandoned call is ignored.
        await peer.reply(stream_id, {"late": True})
        task = in_background(callers, call(client, "Echo", {"b": 2}))
        next_id, request = await peer.next_request()
        assert next_id > stream_id
        assert request.timeout_nano == 0  # no timeout, no deadline sent
        await peer.reply(next_id, loads_message(request.payload))
        assert await task.result() == {"b": 2}


# -- caller cancellation -------------------------------------------------------------------------


async def test_cancelling_the_caller_propagates_cancelled_and_cancels_the_handler(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    async with open_client(sock_path) as client:
        async with trio.open_nursery() as callers:
            caller = in_background(callers, call(client, "Hang"))
            await state.hang_started.wait()
            callers.cancel_scope.cancel()
        assert caller.cancelled, caller.error
        await state.hang_cancelled.wait()
        assert not client.closed
        assert await client.call(SVC, "Echo", {"ok": 1}) == {"ok": 1}


async def test_cancelling_the_caller_sends_a_close_frame_on_its_stream(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_client(sock_path) as (client, peer):
        async with trio.open_nursery() as callers:
            callers.start_soon(call(client, "Hang"))
            stream_id, _ = await peer.next_request()
            callers.cancel_scope.cancel()
        assert callers.cancel_scope.cancelled_caught
        frame = await peer.next_frame()
        assert frame == Frame(stream_id, FrameType.DATA, END_OF_STREAM, b"")

        async with trio.open_nursery() as callers:
            task = in_background(callers, call(client, "Echo", {"c": 3}))
            next_id, request = await peer.next_request()
            assert next_id > stream_id
            await peer.reply(stream_id, {"late": True})  # ignored: nobody waits for it
            await peer.reply(next_id, loads_message(request.payload))
            assert await task.result() == {"c": 3}


# -- connection loss -----------------------------------------------------------------------------


async def test_connection_loss_fails_every_pending_call_with_unavailable(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_client(sock_path) as (client, peer):
        async with trio.open_nursery() as callers:
            tasks = [in_background(callers, call(client, "Hang", {"i": i})) for i in range(5)]
            tasks.append(in_background(callers, call(client, "Hang", timeout=1000)))
            stream = in_background(callers, partial(read_stream, client, "Endless"))
            for _ in range(len(tasks) + 1):
                await peer.next_request()
            await trio.testing.wait_all_tasks_blocked()
            assert not any(task.done.is_set() for task in tasks)
            before = trio.current_time()
            await peer.aclose()
        # Everything failed at once: no time passed, nothing waited for its timeout.
        assert trio.current_time() == before
        for task in tasks:
            assert isinstance(task.error, sandboxd.Unavailable), task.error
            assert task.error.code == Code.UNAVAILABLE
        assert isinstance(stream.error, sandboxd.Unavailable), stream.error
        assert client.closed

        # Later calls fail at once too.
        for method in ("Echo", "Hang"):
            with pytest.raises(sandboxd.Unavailable):
                await client.call(SVC, method)
        with pytest.raises(sandboxd.Unavailable):
            await read_stream(client, "Endless")
        assert trio.current_time() == before


async def test_call_after_the_server_went_away_raises_unavailable(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with listening(sock_path) as listener, open_client(sock_path) as client:
        server_end = await listener.accept()
        await server_end.aclose()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(sandboxd.Unavailable):
            await client.call(SVC, "Echo", {"a": 1})


# -- nobody listening ----------------------------------------------------------------------------


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


# -- metadata ------------------------------------------------------------------------------------


async def test_metadata_reaches_the_handler(sock_path: str, nursery: trio.Nursery) -> None:
    await start_server(nursery, sock_path)
    async with open_client(sock_path) as client:
        got = await client.call(SVC, "Metadata", metadata={"k": ["v1", "v2"]})
        assert got == {"metadata": {"k": ["v1", "v2"]}}
        got = await client.call(SVC, "Metadata", metadata={"k": ("v1", "v2"), "e": []})
        assert got["metadata"]["k"] == ["v1", "v2"]
        assert await client.call(SVC, "Metadata") == {"metadata": {}}


# -- oversize messages ---------------------------------------------------------------------------


async def test_oversize_message_is_refused_without_sending_anything(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    big = {"blob": b"\0" * (MAX_PAYLOAD + 1)}
    async with raw_client(sock_path) as (client, peer):
        with pytest.raises(sandboxd.ResourceExhausted) as info:
            await client.call(SVC, "Echo", big)
        assert info.value.code == Code.RESOURCE_EXHAUSTED
        with pytest.raises(sandboxd.ResourceExhausted):
            await read_stream(client, "Count", big)
        assert not client.closed
        # The first thing the server receives is the next request: nothing of the refused
        # ones was sent.

        async with trio.open_nursery() as callers:
            task = in_background(callers, call(client, "Echo", {"small": 1}))
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


# -- closing the client --------------------------------------------------------------------------


async def test_closing_the_client_fails_calls_pending_in_other_tasks(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = await start_server(nursery, sock_path)
    async with trio.open_nursery() as callers:
        async with open_client(sock_path) as client:
            pending = in_background(callers, call(client, "Hang"))
            waiting = in_background(callers, call(client, "Wait", {"w": 1}, timeout=1000))
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
        task = in_background(callers, call(client, "Hang"))
        await state.hang_started.wait()
        assert state.hang_deadline == math.inf
        callers.cancel_scope.cancel()
    assert task.error is None


# -- replies left encoded ------------------------------------------------------------------------


async def test_call_encoded_returns_the_bytes_call_decodes_and_raises_the_same_errors(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start_server(nursery, sock_path)
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
