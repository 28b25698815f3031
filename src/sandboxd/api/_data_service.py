"""The data plane of ``sandboxd.v1.Controller``: Exec, ExecSync, Logs, WriteFile, ReadFile.

Each request is checked as it is read (``prepare``), so a malformed one costs no task.  The
streams are flow-controlled by the RPC layer: a handler's ``send`` waits while the client has
not taken what was sent, so an exec's output pipe is not read any faster than the client reads
(see docs/wire.md, "Flow control").  A call that ends early (the client cancels, goes away, or
its deadline passes) cancels its handler, which leaves the runtime's ``exec`` block: the exec is
killed, as containerd kills the execs of a client that goes away.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

import trio

from .._errors import RPCError
from .._models import ExecExit, ExecOutput, ExecRequest, ExecSyncResult, LogChunk, LogGap
from ..rpc import (
    CallContext,
    Message,
    MessageSender,
    MessageStream,
    Method,
    bidi_stream,
    client_stream,
    server_stream,
    unary,
)
from . import _convert as convert


class ExecSession(Protocol):
    """What the runtime's ``exec`` block gives (see the shared design)."""

    @property
    def exec_id(self) -> str: ...
    @property
    def pid(self) -> int: ...
    async def write(self, data: bytes) -> None: ...
    async def close_stdin(self) -> None: ...
    async def resize(self, rows: int, cols: int) -> None: ...
    def __aiter__(self) -> AsyncIterator[ExecOutput]: ...
    async def wait(self) -> ExecExit: ...


class DataPlane(Protocol):
    """The runtime's data-plane methods, as the in-process Controller has them."""

    def exec(
        self, sandbox_id: str, request: ExecRequest
    ) -> AbstractAsyncContextManager[ExecSession]: ...

    async def exec_sync(
        self, sandbox_id: str, request: ExecRequest, *, max_output_bytes: int = ...
    ) -> ExecSyncResult: ...

    def logs(
        self,
        sandbox_id: str,
        *,
        follow: bool = False,
        tail_bytes: int | None = None,
        since: datetime | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterable[LogChunk | LogGap]]: ...

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int | None = None,
    ) -> int: ...

    def read_file(
        self, sandbox_id: str, path: str
    ) -> AbstractAsyncContextManager[AsyncIterable[bytes]]: ...


def _first(group: BaseExceptionGroup[RPCError]) -> RPCError:
    """The error a call ends with when tasks of one nursery failed: the first one's."""
    first = group.exceptions[0]
    return first if isinstance(first, RPCError) else _first(first)


async def _send_bytes(stream: MessageSender, name: str, data: bytes) -> None:
    for piece in convert.chunks(data):
        await stream.send({name: piece})


async def _pump_input(stream: MessageStream, proc: ExecSession, stdin: bool) -> None:
    """The client's messages to the exec, until it half-closes (which closes stdin, if the
    exec has one).  Once the command no longer reads its stdin (it closed it, or exited),
    what the client still writes is dropped, as a pipe's reader that went away drops it."""
    reading = True
    async for message in stream:
        name, value = convert.exec_input(message)
        if name == "resize":
            await proc.resize(value.rows, value.cols)
            continue
        if not reading:
            continue
        try:
            if name == "stdin":
                await proc.write(value)
            else:
                await proc.close_stdin()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            reading = False
    if stdin and reading:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.close_stdin()


def data_plane_methods(controller: DataPlane) -> dict[str, Method]:
    """The data-plane methods of ``sandboxd.v1.Controller``, served by ``controller``."""

    def check_exec(msg: Message, ctx: CallContext) -> tuple[str, ExecRequest]:
        return convert.exec_request(msg)

    async def exec_(
        args: tuple[str, ExecRequest], ctx: CallContext, stream: MessageStream
    ) -> Mapping[str, Any]:
        sandbox_id, request = args
        # An error of the stream (a malformed input, a client that stalls) is raised once the
        # exec block is left (which kills the command), not through the runtime's block.
        error: RPCError | None = None
        async with controller.exec(sandbox_id, request) as proc:
            await stream.send({"exec_id": proc.exec_id, "pid": proc.pid})
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pump_input, stream, proc, request.stdin)
                    async for output in proc:
                        await _send_bytes(stream, output.stream, output.data)
                    result = await proc.wait()
                    # The command is over: what the client still sends has nowhere to go.
                    nursery.cancel_scope.cancel()
            except* RPCError as group:
                error = _first(group)
        if error is not None:
            raise error
        return convert.exec_exit_message(result)

    async def exec_sync(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        sandbox_id, request, limit = convert.exec_sync_request(msg)
        result = await controller.exec_sync(sandbox_id, request, max_output_bytes=limit)
        return convert.exec_sync_message(result)

    def check_logs(msg: Message, ctx: CallContext) -> tuple[str, dict[str, Any]]:
        return convert.logs_request(msg)

    async def logs(
        args: tuple[str, dict[str, Any]], ctx: CallContext, stream: MessageSender
    ) -> None:
        sandbox_id, options = args
        async with controller.logs(sandbox_id, **options) as items:
            async for item in items:
                await stream.send(convert.log_message(item))

    def check_write(msg: Message, ctx: CallContext) -> tuple[str, str, int | None]:
        return convert.write_file_request(msg)

    async def write_file(
        args: tuple[str, str, int | None], ctx: CallContext, stream: MessageStream
    ) -> Mapping[str, Any]:
        sandbox_id, path, mode = args

        async def data() -> AsyncIterator[bytes]:
            async for message in stream:
                yield convert.data_from(message, "WriteFile data")

        size = await controller.write_file(sandbox_id, path, data(), mode=mode)
        return {"size": size}

    def check_read(msg: Message, ctx: CallContext) -> tuple[str, str]:
        return convert.read_file_request(msg)

    async def read_file(
        args: tuple[str, str], ctx: CallContext, stream: MessageSender
    ) -> Mapping[str, Any]:
        size = 0
        async with controller.read_file(*args) as pieces:
            async for piece in pieces:
                size += len(piece)
                await _send_bytes(stream, "data", piece)
        return {"size": size}

    return {
        "Exec": bidi_stream(exec_, prepare=check_exec),
        "ExecSync": unary(exec_sync),
        "Logs": server_stream(logs, prepare=check_logs),
        "WriteFile": client_stream(write_file, prepare=check_write),
        "ReadFile": server_stream(read_file, prepare=check_read),
    }
