"""Whatever a call raises, wherever it raises it, is answered the same way.

An RPCError is the call's status as it is, and nothing is logged; any other exception is a
bug: the call is answered INTERNAL, revealing nothing of it, and one error line naming the
method (with its traceback) is logged.  A cancelled call is never mistaken for a bug.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import trio
import trio.testing

from sandboxd import Internal, NotFound, ResourceExhausted, RPCError
from sandboxd.rpc import (
    CallContext,
    Client,
    Message,
    MessageSender,
    Responder,
    Server,
    deferred,
    inline,
    open_client,
    server_stream,
    unary,
)
from sandboxd.wire import MAX_PAYLOAD, Code

SERVICE = "test.v1.Boundary"


def fault(message: Message) -> Exception:
    """What the test asks the method to raise: an RPC error, or a bug."""
    return NotFound("nope") if message["raise"] == "rpc" else ValueError("a bug")


def services(cancelled: list[str]) -> dict[str, Mapping[str, Any]]:
    def raising(message: Message, ctx: CallContext) -> Mapping[str, Any]:
        raise fault(message)

    def unencodable(message: Message, ctx: CallContext) -> Mapping[str, Any]:
        # Too big for a frame (the wire refuses it with an RPC error), or not CBOR at all.
        if message["raise"] == "rpc":
            return {"blob": b"x" * MAX_PAYLOAD}
        return {"what": object()}

    def deferred_raising(message: Message, ctx: CallContext, reply: Responder) -> None:
        raise fault(message)

    def deferred_failing(message: Message, ctx: CallContext, reply: Responder) -> None:
        reply.fail(fault(message))

    def deferred_answering(message: Message, ctx: CallContext, reply: Responder) -> None:
        reply.ok(message)

    def result_raising(value: Message) -> Mapping[str, Any]:
        raise fault(value)

    async def unary_raising(message: Message, ctx: CallContext) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        raise fault(message)

    def prepare_raising(message: Message, ctx: CallContext) -> Message:
        raise fault(message)

    async def stream_raising(message: Message, ctx: CallContext, stream: MessageSender) -> None:
        await stream.send({"i": 0})
        raise fault(message)

    async def sleeping(message: Message, ctx: CallContext) -> Mapping[str, Any]:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(ctx.method)

    async def endless(message: Message, ctx: CallContext, stream: MessageSender) -> None:
        try:
            while True:
                await stream.send({"i": 0})
        finally:
            cancelled.append(ctx.method)

    return {
        SERVICE: {
            "Inline": inline(raising),
            "InlineResult": inline(unencodable),
            "Deferred": deferred(deferred_raising, dict),
            "DeferredFail": deferred(deferred_failing, dict),
            "DeferredResult": deferred(deferred_answering, result_raising),
            "Unary": unary(unary_raising),
            "Prepare": server_stream(stream_raising, prepare=prepare_raising),
            "Stream": server_stream(stream_raising),
            "Sleep": unary(sleeping),
            "Endless": server_stream(endless),
        }
    }


async def call(client: Client, method: str, message: Message) -> RPCError:
    """Call ``method`` (unary or stream) and return the error it ends with."""
    with pytest.raises(RPCError) as caught:
        if method in ("Prepare", "Stream"):
            async with client.stream(SERVICE, method, message) as messages:
                async for _ in messages:
                    pass
        else:
            await client.call(SERVICE, method, message)
    return caught.value


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sandboxd.rpc" and r.levelno >= logging.ERROR]


#: How each method can fail, and the INTERNAL message a bug there gets.
PLACES = {
    "Inline": "internal error",
    "InlineResult": "cannot encode response",
    "Deferred": "internal error",
    "DeferredFail": "internal error",
    "DeferredResult": "cannot encode response",
    "Unary": "internal error",
    "Prepare": "internal error",
    "Stream": "internal error",
}


@pytest.fixture
async def client(
    nursery: trio.Nursery, sock_path: str, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Client]:
    """A client of a server of the methods above, errors logged by the server captured."""
    server = Server(services([]))
    await nursery.start(server.serve_unix, sock_path)
    caplog.set_level(logging.ERROR, logger="sandboxd.rpc")
    async with open_client(sock_path) as client:
        yield client


@pytest.mark.parametrize("method", list(PLACES))
async def test_a_bug_is_internal_and_logged_once_naming_the_method(
    client: Client, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    error = await call(client, method, {"raise": "bug"})
    assert type(error) is Internal
    assert error.message == PLACES[method]
    [record] = errors_logged(caplog)
    assert f"{SERVICE}/{method}" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is not None
    assert "a bug" in str(record.exc_info[1]) or method == "InlineResult"
    # The connection goes on serving.
    assert type(await call(client, "Inline", {"raise": "rpc"})) is NotFound


@pytest.mark.parametrize("method", list(PLACES))
async def test_an_rpc_error_is_the_status_as_it_is_and_not_logged(
    client: Client, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    error = await call(client, method, {"raise": "rpc"})
    if method == "InlineResult":
        assert type(error) is ResourceExhausted
    else:
        assert (type(error), error.message) == (NotFound, "nope")
    assert errors_logged(caplog) == []


async def test_cancelled_calls_are_not_bugs(
    nursery: trio.Nursery,
    sock_path: str,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled: list[str] = []
    server = Server(services(cancelled))
    await nursery.start(server.serve_unix, sock_path)
    caplog.set_level(logging.ERROR, logger="sandboxd.rpc")
    async with open_client(sock_path) as client:
        # The server's own deadline: its answer comes back.
        with pytest.raises(RPCError) as caught:
            await client.call(SERVICE, "Sleep", {}, send_deadline=trio.current_time() + 1)
        assert caught.value.code is Code.DEADLINE_EXCEEDED
        # A stream the client leaves early.
        async with client.stream(SERVICE, "Endless", {}) as messages:
            assert await anext(aiter(messages)) == {"i": 0}
        # A call whose connection goes away.
        async with trio.open_nursery() as calls:
            calls.start_soon(client.call, SERVICE, "Sleep", {})
            await trio.testing.wait_all_tasks_blocked()
            calls.cancel_scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(cancelled) == ["Endless", "Sleep", "Sleep"]
    assert errors_logged(caplog) == []
    assert server.in_flight == 0
