"""When reading from a transport is a schedule point: always when it waits, and, when bytes
are already there, often enough that a busy peer cannot starve other tasks."""

from __future__ import annotations

import contextlib
import socket

import pytest
import trio
import trio.testing

from sandboxd.rpc._transport import Transport
from sandboxd.wire import RECV_SIZE

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0


async def test_a_read_that_waits_is_a_schedule_point() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        transport = Transport(ours)
        async with trio.open_nursery() as nursery:

            async def send_later() -> None:
                await trio.testing.wait_all_tasks_blocked()
                theirs.send(b"late")

            nursery.start_soon(send_later)
            with trio.testing.assert_checkpoints():
                assert await transport.receive() == b"late"
        transport.close()


async def test_bytes_already_there_are_read_without_a_schedule_point_until_16_kib() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        transport = Transport(ours)
        with trio.testing.assert_no_checkpoints():
            for _ in range(3):
                theirs.send(b"x" * 100)
                assert await transport.receive() == b"x" * 100
        # A peer that keeps the socket full: reading it is a schedule point again at least
        # once per 16 KiB received without a wait.
        theirs.setblocking(False)
        received = 0
        with trio.testing.assert_checkpoints():
            while received < 16 * 1024 + RECV_SIZE:
                with contextlib.suppress(BlockingIOError):
                    theirs.send(b"y" * 8192)
                received += len(await transport.receive())
        transport.close()
