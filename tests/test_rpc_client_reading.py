"""Who reads the trio RPC client's socket: a caller alone, the calls in turn, or its reader task.

Spoken to a real server, or to a raw peer playing one, as ``client_services.py`` tells.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

import sandboxd
from background import in_background
from client_services import SVC, call, raw_client, read_stream, start_server
from peers import END_OF_STREAM, Peer, listening
from sandboxd.rpc import Client, open_client
from sandboxd.rpc._transport import Transport
from sandboxd.wire import (
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
#: Virtual seconds (every test runs on the autojump clock) before a test counts as hung: one
#: waits 200.
GUARD = 300.0


# -- who reads the socket ------------------------------------------------------------------------
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
async def raw_noting_client(path: str) -> AsyncIterator[tuple[Client, Peer, NotingSocket]]:
    async with (
        listening(path) as listener,
        noting_client(path) as (client, sock),
        await Peer.accept(listener) as peer,
    ):
        yield client, peer, sock


def is_reader_task(task: trio.lowlevel.Task) -> bool:
    return task.name.endswith("Client.reader")


async def test_a_caller_alone_reads_its_own_replies(
    sock_path: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start_server(nursery, sock_path)
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
    async with raw_noting_client(sock_path) as (client, peer, sock):
        async with trio.open_nursery() as callers:
            tasks = [in_background(callers, call(client, "Echo", {"n": i})) for i in range(n)]
            requests = [await peer.next_request() for _ in range(n)]
            replies = b"".join(
                encode_frame(stream_id, FrameType.RESPONSE, 0, encode_response(r.payload))
                for stream_id, r in requests
            )
            # 7 bytes at a time: frames end mid-read and the reading changes hands often.
            for start in range(0, len(replies), 7):
                await peer.send(replies[start : start + 7])
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
    async with (
        raw_noting_client(sock_path) as (client, peer, sock),
        trio.open_nursery() as callers,
    ):
        async with trio.open_nursery() as leading:
            timeout = 1.0 if how == "timeout" else None
            first = in_background(leading, call(client, "Hang", timeout=timeout))
            first_id, _ = await peer.next_request()
            second = in_background(callers, call(client, "Echo", {"n": 2}))
            second_id, _ = await peer.next_request()
            third = in_background(callers, call(client, "Echo", {"n": 3}))
            third_id, _ = await peer.next_request()
            await trio.testing.wait_all_tasks_blocked()
            if how == "cancelled":
                leading.cancel_scope.cancel()
        if how == "cancelled":
            assert first.cancelled
        else:
            assert isinstance(first.error, sandboxd.DeadlineExceeded)
        assert await peer.next_frame() == Frame(first_id, FrameType.DATA, END_OF_STREAM, b"")
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
    async with (
        raw_noting_client(sock_path) as (client, peer, sock),
        trio.open_nursery() as callers,
    ):
        first = in_background(callers, call(client, "Echo", {"n": 1}))
        first_id, _ = await peer.next_request()
        async with trio.open_nursery() as doomed:
            second = in_background(doomed, call(client, "Hang"))
            second_id, _ = await peer.next_request()
            third = in_background(callers, call(client, "Echo", {"n": 3}, timeout=5))
            third_id, _ = await peer.next_request()
            await trio.testing.wait_all_tasks_blocked()
            doomed.cancel_scope.cancel()
        assert second.cancelled
        assert await peer.next_frame() == Frame(second_id, FrameType.DATA, END_OF_STREAM, b"")
        await peer.reply(first_id, {"n": 1})
        assert await first.result() == {"n": 1}
        await peer.reply(third_id, {"n": 3})
        assert await third.result() == {"n": 3}
        assert sock.readers[-1] is third.trio_task


async def test_a_waiting_call_times_out_while_another_reads(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
        first = in_background(callers, call(client, "Hang"))
        first_id, _ = await peer.next_request()
        start = trio.current_time()
        second = in_background(callers, call(client, "Hang", timeout=0.5))
        second_id, _ = await peer.next_request()
        assert await peer.next_frame() == Frame(second_id, FrameType.DATA, END_OF_STREAM, b"")
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

    async with (
        raw_noting_client(sock_path) as (client, peer, sock),
        client.stream(SVC, "Endless") as messages,
    ):
        stream_id, _ = await peer.next_request()
        await peer.send(message(stream_id, 0))
        assert await anext(messages) == {"i": 0}
        assert is_reader_task(sock.readers[-1])  # only a stream is open: the reader reads
        await trio.testing.wait_all_tasks_blocked()  # ... and waits for the socket again
        async with trio.open_nursery() as callers:
            task = in_background(callers, call(client, "Echo", {"a": 1}))
            call_id, _ = await peer.next_request()
            await peer.send(
                message(stream_id, 1)
                + encode_frame(call_id, FrameType.RESPONSE, 0, encode_response(b"\xa1aa\x01"))
            )
            assert await task.result() == {"a": 1}
        assert sock.readers[-1] is task.trio_task
        assert await anext(messages) == {"i": 1}
        # The call is done: the reader task reads for the stream again.
        await peer.send(message(stream_id, 2))
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
    async with open_client(sock_path) as client:
        assert await client.call(SVC, "Echo", {"first": 1}) == {"first": 1}
        async with counting_reader_steps() as steps:
            for i in range(50):
                assert await client.call(SVC, "Echo", {"i": i}) == {"i": i}
        assert steps.reader_steps <= 1


async def test_the_reader_task_sleeps_while_one_call_reads_for_long(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
        async with counting_reader_steps() as steps:
            task = in_background(callers, call(client, "Hang", timeout=200))
            await peer.next_request()
            await task.wait()
        assert isinstance(task.error, sandboxd.DeadlineExceeded)
        assert steps.reader_steps <= 3


async def test_cancelling_every_call_at_once_leaves_the_client_reading(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with raw_noting_client(sock_path) as (client, peer, _sock):
        async with trio.open_nursery() as callers:
            tasks = [in_background(callers, call(client, "Hang", {"i": i})) for i in range(3)]
            ids = [(await peer.next_request())[0] for _ in range(3)]
            await trio.testing.wait_all_tasks_blocked()
            callers.cancel_scope.cancel()
        assert all(task.cancelled for task in tasks)
        ends = [await peer.next_frame() for _ in range(3)]
        assert sorted(ends) == [Frame(i, FrameType.DATA, END_OF_STREAM, b"") for i in ids]
        # Calls and streams still work; so does the reader task.
        async with trio.open_nursery() as callers:
            task = in_background(callers, call(client, "Echo", {"a": 1}))
            call_id, request = await peer.next_request()
            await peer.reply(call_id, loads_message(request.payload))
            assert await task.result() == {"a": 1}
        async with client.stream(SVC, "Count") as messages:
            stream_id, _ = await peer.next_request()
            await peer.send(
                encode_frame(stream_id, FrameType.DATA, 0, dumps({"i": 0}))
                + encode_frame(stream_id, FrameType.DATA, END_OF_STREAM, b"")
            )
            assert [m async for m in messages] == [{"i": 0}]
        # With nothing pending, the reader task watches the socket once the client has been
        # idle a while, and notices the end of the connection.
        await peer.aclose()
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
    async with raw_client(sock_path) as (client, peer), trio.open_nursery() as callers:
        tasks = [in_background(callers, call(client, "Echo", {"i": i})) for i in range(3)]
        tasks.append(in_background(callers, call(client, "Echo", timeout=100)))
        stream = in_background(callers, partial(read_stream, client, "Endless"))
        for _ in range(len(tasks) + 1):
            await peer.next_request()
        await trio.testing.wait_all_tasks_blocked()
        refusal = encode_error(Code.PERMISSION_DENIED, "uid 7 is not allowed to use this socket")
        await peer.respond(0, refusal)
        for task in tasks:
            await task.wait()
            assert type(task.error) is sandboxd.PermissionDenied, task.error
            assert task.error.message == "uid 7 is not allowed to use this socket"
        await trio.testing.wait_all_tasks_blocked()
        assert type(stream.error) is sandboxd.PermissionDenied, stream.error
        assert client.closed
        with pytest.raises(sandboxd.PermissionDenied):
            await client.call(SVC, "Echo")
