"""What the Controller clients (trio, blocking, asyncio) share and the services define: the
service names and the decoding of replies.  No trio here: the asyncio client imports it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Protocol, TypeVar, final

from .._errors import Internal, InvalidArgument
from .._models import ExecExit, ExecOutput, ListPage, SandboxStatus
from . import _convert as convert

CONTROLLER_SERVICE: Final = "sandboxd.v1.Controller"
RUNTIME_SERVICE: Final = "sandboxd.v1.Runtime"

_T = TypeVar("_T")
_M = TypeVar("_M")


def decode_reply(decode: Callable[[Mapping[str, Any]], _T], msg: Mapping[str, Any]) -> _T:
    """A response message as a model; a malformed one is the server's fault: INTERNAL."""
    try:
        return decode(msg)
    except InvalidArgument as err:
        raise Internal(f"malformed response from the server: {err.message}") from None


def list_page_from(msg: Mapping[str, Any]) -> ListPage:
    """A List response as a page; one that gives back the token it was asked with would
    never end: INTERNAL, as a malformed one."""
    return decode_reply(convert.list_page_from, msg)


def _next_token(page: ListPage, token: str | None, into: list[SandboxStatus]) -> str | None:
    into.extend(page.sandboxes)
    if page.next_page_token is not None and page.next_page_token == token:
        raise Internal(f"malformed response from the server: List gave page token {token!r} again")
    return page.next_page_token


def all_pages(fetch: Callable[[str | None], ListPage]) -> list[SandboxStatus]:
    """Every sandbox of the pages ``fetch(page_token)`` gives, from the first to the last."""
    statuses: list[SandboxStatus] = []
    token = _next_token(fetch(None), None, statuses)
    while token is not None:
        token = _next_token(fetch(token), token, statuses)
    return statuses


async def all_pages_async(
    fetch: Callable[[str | None], Awaitable[ListPage]],
) -> list[SandboxStatus]:
    """:func:`all_pages`, for ``fetch`` coroutines."""
    statuses: list[SandboxStatus] = []
    token = _next_token(await fetch(None), None, statuses)
    while token is not None:
        token = _next_token(await fetch(token), token, statuses)
    return statuses


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a ``time.monotonic()`` time), at least 0; None for none."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def write_size(msg: Mapping[str, Any]) -> int:
    """The ``size`` of a WriteFile response."""
    return convert.size_from(msg, "WriteFile response")


def read_data(msg: Mapping[str, Any]) -> bytes:
    """The bytes of a ReadFile message."""
    return convert.data_from(msg, "ReadFile message")


@final
class Decoded(AsyncIterator[_M]):
    """Stream messages as models (a class, so there is no async generator left to close)."""

    __slots__ = ("_decode", "_messages")

    def __init__(
        self, messages: AsyncIterator[dict[str, Any]], decode: Callable[[Mapping[str, Any]], _M]
    ) -> None:
        self._messages = messages
        self._decode = decode

    def __aiter__(self) -> Decoded[_M]:
        return self

    async def __anext__(self) -> _M:
        return decode_reply(self._decode, await self._messages.__anext__())


class MessageCall(Protocol):
    """A stream call of the trio or the asyncio RPC client."""

    async def send(self, message: Mapping[str, Any]) -> None: ...

    async def receive(self) -> dict[str, Any] | None: ...

    async def response(self) -> dict[str, Any]: ...


async def send_data(call: MessageCall, data: bytes) -> None:
    """Send ``data`` as WriteFile messages, in pieces the frame limit allows."""
    for piece in convert.chunks(data):
        await call.send({"data": piece})


@final
class RemoteExec:
    """A command running in a sandbox, through a socket: the remote twin of the in-process
    exec session (same methods, same errors), for the trio and the asyncio clients alike."""

    __slots__ = ("_call", "exec_id", "pid")

    def __init__(self, call: MessageCall, exec_id: str, pid: int) -> None:
        self._call = call
        self.exec_id = exec_id
        self.pid = pid

    async def write(self, data: bytes) -> None:
        """Write to the command's stdin; waits while the command does not read it."""
        for piece in convert.chunks(data):
            await self._call.send({"stdin": piece})

    async def close_stdin(self) -> None:
        await self._call.send({"close_stdin": True})

    async def resize(self, rows: int, cols: int) -> None:
        await self._call.send({"resize": {"rows": rows, "cols": cols}})

    def __aiter__(self) -> RemoteExec:
        return self

    async def __anext__(self) -> ExecOutput:
        message = await self._call.receive()
        if message is None:
            raise StopAsyncIteration
        return decode_reply(convert.output_from, message)

    async def wait(self) -> ExecExit:
        """How the command ended (output not yet read is discarded)."""
        return decode_reply(convert.exec_exit_from, await self._call.response())
