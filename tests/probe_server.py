"""The services the RPC server's tests serve, and how those tests start a server.

Each test starts a real :class:`sandboxd.rpc.Server` serving the handlers below on a Unix
socket in the test's nursery, drives and observes the handlers through a :class:`Probe`, and
talks to the server with a raw :class:`~peers.Peer` (:func:`connect`): nothing but bytes on the
socket and the sans-io wire helpers, so what is checked is exactly what any client (ours, or
one written against PROTOCOL.md) relies on -- which frames come back, on which stream id, with
which type, flags and status code.  Waiting is done on events the handlers set, on
``wait_all_tasks_blocked`` and, for deadlines and grace periods, on the autojump clock; the
watchdog fails a test that hangs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, NoReturn

import trio

import peers
from peers import Peer
from sandboxd.api import RUNTIME_SERVICE, runtime_service
from sandboxd.rpc import (
    CallContext,
    Limits,
    MessageSender,
    Method,
    Responder,
    Server,
    deferred,
    inline,
    server_stream,
    unary,
)
from sandboxd.wire import HEADER, FailedPrecondition, FrameType, NotFound

TEST = "test.v1.Probe"
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0
REQUEST = FrameType.REQUEST
RESPONSE = FrameType.RESPONSE
DATA = FrameType.DATA

#: A REQUEST frame to the test service (``service=`` another).
request_frame = functools.partial(peers.request_frame, service=TEST)


# -- the test services -----------------------------------------------------------------------


class Probe:
    """What the test controls in, and observes of, the handlers it serves."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.release = trio.Event()
        self.cancelled = trio.Event()
        self.cancelled_at = math.nan
        self.deadline = math.nan
        #: The responders of the deferred calls received, in order.
        self.responders: list[Responder] = []
        self.deferred_arrived = trio.Event()

    async def until_cancelled(self) -> NoReturn:
        """Sleep until cancelled; then note when, and set :attr:`cancelled`."""
        try:
            await trio.sleep_forever()
        finally:
            self.saw_cancel()

    def saw_cancel(self) -> None:
        self.cancelled_at = trio.current_time()
        self.cancelled.set()


def make_services(probe: Probe) -> dict[str, Mapping[str, Method]]:
    def echo(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return message

    def context(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return {
            "service": ctx.service,
            "method": ctx.method,
            "stream_id": ctx.stream_id,
            "metadata": {key: list(values) for key, values in ctx.metadata.items()},
        }

    def size(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return {"n": len(message["blob"])}

    def big_inline(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        return {"blob": b"x" * message["n"]}

    async def big_unary(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"blob": b"x" * message["n"]}

    async def big_stream(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        await stream.send({"i": 0})
        await stream.send({"blob": b"x" * message["n"]})

    def boom_inline(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        raise ValueError("boom-inline")

    async def unary_echo(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        return message

    async def wait(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        probe.started.set()
        await probe.release.wait()
        return {"released": True, **message}

    async def forever(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        probe.deadline = ctx.deadline
        probe.started.set()
        await probe.until_cancelled()

    async def boom_unary(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        raise ValueError("boom-unary")

    async def not_found(message: dict[str, Any], ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        raise NotFound("no such thing", details=["thing", 7])

    async def count(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        for i in range(message["n"]):
            await stream.send({"i": i})

    async def endless(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        await stream.send({"i": 0})
        probe.started.set()
        await probe.until_cancelled()

    async def ticker(message: dict[str, Any], ctx: CallContext, stream: MessageSender) -> None:
        i = 0
        try:
            while True:
                await stream.send({"i": i})
                i += 1
                probe.started.set()
        except trio.Cancelled:
            probe.saw_cancel()
            raise

    async def stream_fail(
        message: dict[str, Any], ctx: CallContext, stream: MessageSender
    ) -> None:
        await stream.send({"i": 0})
        await stream.send({"i": 1})
        raise FailedPrecondition("stream says no", details=["why"])

    async def boom_stream(
        message: dict[str, Any], ctx: CallContext, stream: MessageSender
    ) -> None:
        await stream.send({"i": 0})
        raise ValueError("boom-stream")

    def later(message: dict[str, Any], ctx: CallContext, responder: Responder) -> None:
        probe.responders.append(responder)
        probe.deferred_arrived.set()

    def at_once(message: dict[str, Any], ctx: CallContext, responder: Responder) -> None:
        responder.ok(message["v"])
        responder.ok("a second answer is ignored")

    def boom_deferred(message: dict[str, Any], ctx: CallContext, responder: Responder) -> None:
        raise ValueError("boom-deferred")

    def refused_deferred(message: dict[str, Any], ctx: CallContext, responder: Responder) -> None:
        raise NotFound("nothing to wait for")

    def bad_result(value: Any) -> Mapping[str, Any]:
        raise TypeError("cannot make a response of this")

    return {
        TEST: {
            "Later": deferred(later, lambda value: {"value": value}),
            "AtOnce": deferred(at_once, lambda value: {"value": value}),
            "BoomDeferred": deferred(boom_deferred, lambda value: {}),
            "RefusedDeferred": deferred(refused_deferred, lambda value: {}),
            "BadResult": deferred(at_once, bad_result),
            "Echo": inline(echo),
            "Context": inline(context),
            "Size": inline(size),
            "BoomInline": inline(boom_inline),
            "BigInline": inline(big_inline),
            "BigUnary": unary(big_unary),
            "BigStream": server_stream(big_stream),
            "UnaryEcho": unary(unary_echo),
            "Wait": unary(wait),
            "Forever": unary(forever),
            "BoomUnary": unary(boom_unary),
            "NotFound": unary(not_found),
            "Count": server_stream(count),
            "Endless": server_stream(endless),
            "Ticker": server_stream(ticker),
            "StreamFail": server_stream(stream_fail),
            "BoomStream": server_stream(boom_stream),
        },
        RUNTIME_SERVICE: runtime_service(),
    }


# -- starting a server and connecting to it ---------------------------------------------------


def raw_request_frame(stream_id: int, envelope: bytes) -> bytes:
    """A REQUEST frame around ``envelope``, whatever its bytes."""
    return HEADER.pack(len(envelope), stream_id, REQUEST, 0) + envelope


async def start_server(
    nursery: trio.Nursery, path: str, probe: Probe, **kwargs: Any
) -> tuple[Server, trio.Event]:
    """A running server and an event set once ``serve_unix`` has returned."""
    server = Server(make_services(probe), limits=Limits(**kwargs))
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[str]) -> None:
        await server.serve_unix(path, task_status=task_status)
        stopped.set()

    assert await nursery.start(run) == path
    return server, stopped


async def connect(path: str) -> Peer:
    """A raw peer connected to the server on ``path``, its requests to the test service."""
    return await Peer.connect(path, service=TEST)
