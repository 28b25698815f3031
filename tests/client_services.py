"""The services the RPC client's tests call, how a test starts them, and a raw peer instead.

Most tests call a real :class:`sandboxd.rpc.Server` serving these services on a real Unix
socket (:func:`start_server`).  Where a test needs a server that misbehaves (never answers,
answers out of order, drops the connection) or must see the exact frames the client sends, it
plays the server itself with a raw :class:`~peers.Peer` (:func:`raw_client`).  Nothing sleeps:
tests wait on events, and those that involve time (or could hang) run on trio's autojump
clock; the watchdog fails a test that hangs.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

import sandboxd
from peers import Peer, listening
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

SVC = "test.Svc"
ENDLESS_LIMIT = 5000


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


@asynccontextmanager
async def raw_client(path: str, **kwargs: Any) -> AsyncIterator[tuple[Client, Peer]]:
    """An ``open_client`` connected to a raw peer the test plays the server with."""
    async with (
        listening(path) as listener,
        open_client(path, **kwargs) as client,
        await Peer.accept(listener) as peer,
    ):
        yield client, peer


async def read_stream(client: Client, method: str, message: Any = None) -> list[Any]:
    """Every message of a stream of the test service, read to its end."""
    async with client.stream(SVC, method, message) as messages:
        return [m async for m in messages]


def call(client: Client, method: str, message: Any = None, **kwargs: Any) -> Any:
    """A zero-argument coroutine function making one call (for ``in_background``)."""
    return functools.partial(client.call, SVC, method, message, **kwargs)
