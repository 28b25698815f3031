"""Tests of how :class:`~sandboxd.RemoteController` turns replies into models.

A reply with the same bytes as the last one of its kind gives the same frozen model again
without decoding it (a sandbox polled while it does not change), as the in-process Controller
returns one status snapshot until the sandbox changes.  Anything else is decoded, strictly,
every time.  The first tests use a real server; the rest a raw peer that answers each request
with bytes the test chooses.
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing

from peers import Peer, listening
from sandboxd import Internal, InvalidArgument, NotFound, RemoteController
from sandboxd._models import SandboxState
from sandboxd.rpc import open_client
from sandboxd.wire import (
    dumps,
    encode_error_from,
    encode_response,
)

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (virtual under the autojump clock) a test may take before it counts as hung.
GUARD = 30.0
CREATED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def status_reply(state: str, pid: int = 7) -> dict[str, Any]:
    return {
        "sandbox_id": "box",
        "pid": pid,
        "state": state,
        "info": {"sandboxer": "sim"},
        "created_at": CREATED_AT,
    }


# -- against a real server -----------------------------------------------------------------


async def test_polling_an_unchanged_sandbox_gives_one_model_until_it_changes(
    sandboxd_client: RemoteController,
) -> None:
    await sandboxd_client.create("box", sandboxer="sim")
    created = await sandboxd_client.status("box")
    assert created.state is SandboxState.CREATED
    assert await sandboxd_client.status("box") is created

    await sandboxd_client.start("box")
    ready = await sandboxd_client.status("box")
    assert ready.state is SandboxState.READY
    assert ready is not created
    assert await sandboxd_client.status("box") is ready
    # The other methods keep their own last reply: none of them disturbs Status's.
    assert (await sandboxd_client.platform("box")) == (await sandboxd_client.platform("box"))
    assert await sandboxd_client.status("box") is ready

    await sandboxd_client.stop("box")
    stopped = await sandboxd_client.status("box")
    assert stopped.state is SandboxState.STOPPED
    assert await sandboxd_client.wait("box") == await sandboxd_client.wait("box")
    assert await sandboxd_client.status("box") is stopped

    await sandboxd_client.shutdown("box")
    with pytest.raises(NotFound):
        await sandboxd_client.status("box")


# -- against a raw peer ----------------------------------------------------------------------


class Answers:
    """Answers every request, in order, with the next of the response payloads queued."""

    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()

    def ok(self, message: Mapping[str, Any]) -> None:
        self.queue.append(encode_response(dumps(message)))

    def raw(self, payload: bytes) -> None:
        self.queue.append(encode_response(payload))

    async def serve(self, peer: Peer) -> None:
        while True:
            stream_id, _ = await peer.next_request()
            await peer.respond(stream_id, self.queue.popleft())


@asynccontextmanager
async def answered_remote(path: str) -> AsyncIterator[tuple[RemoteController, Answers]]:
    """A RemoteController whose server is an :class:`Answers`."""
    answers = Answers()
    async with (
        listening(path) as listener,
        open_client(path) as client,
        await Peer.accept(listener, timeout=math.inf) as peer,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(answers.serve, peer)
        yield RemoteController(client), answers
        nursery.cancel_scope.cancel()


async def test_a_reply_is_decoded_again_whenever_its_bytes_differ_from_the_last(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with answered_remote(sock_path) as (remote, answers):
        for state, pid in [("ready", 7), ("ready", 7), ("stopped", 7), ("ready", 7)]:
            answers.ok(status_reply(state, pid))
        first = await remote.status("box")
        assert (first.state, first.pid, first.created_at) == (
            SandboxState.READY,
            7,
            CREATED_AT,
        )
        assert await remote.status("box") is first
        stopped = await remote.status("box")
        assert stopped.state is SandboxState.STOPPED
        again = await remote.status("box")
        assert again == first
        assert again is not first  # only the last reply is kept


async def test_a_malformed_reply_is_internal_every_time_and_never_kept(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    malformed = status_reply("ready") | {"state": "sideways"}
    async with answered_remote(sock_path) as (remote, answers):
        answers.ok(status_reply("ready"))
        answers.ok(malformed)
        answers.ok(malformed)
        answers.ok(status_reply("ready"))
        good = await remote.status("box")
        for _ in range(2):
            with pytest.raises(Internal, match="sideways"):
                await remote.status("box")
        assert await remote.status("box") == good
        # A payload that is not CBOR at all is refused as before, and not kept either.
        answers.raw(b"\xff\xfe")
        answers.raw(b"\xff\xfe")
        for _ in range(2):
            with pytest.raises(InvalidArgument, match="response payload"):
                await remote.status("box")


async def test_the_same_bytes_for_another_method_are_decoded_by_that_method(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with answered_remote(sock_path) as (remote, answers):
        answers.ok(status_reply("ready"))
        answers.ok(status_reply("ready"))
        assert (await remote.status("box")).state is SandboxState.READY
        # A status is no platform: Platform decodes the bytes itself, and refuses them.
        with pytest.raises(Internal, match="platform"):
            await remote.platform("box")


async def test_an_error_reply_is_raised_each_time(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with answered_remote(sock_path) as (remote, answers):
        answers.ok(status_reply("ready"))
        answers.queue.append(encode_error_from(NotFound("sandbox 'box' not found")))
        answers.ok(status_reply("ready"))
        first = await remote.status("box")
        with pytest.raises(NotFound):
            await remote.status("box")
        assert await remote.status("box") is first
