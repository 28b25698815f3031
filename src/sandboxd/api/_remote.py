"""The remote Controller: the same methods as :class:`~sandboxd.Controller`, over a socket."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final, TypeVar, final

import trio

from .._errors import DeadlineExceeded, Internal
from .._models import (
    DEFAULT_EXEC_SYNC_OUTPUT,
    ExecRequest,
    ExecSyncResult,
    ExitStatus,
    ListPage,
    LogChunk,
    LogGap,
    Mount,
    Platform,
    SandboxEvent,
    SandboxInstance,
    SandboxMetrics,
    SandboxOptions,
    SandboxStatus,
)
from ..rpc import Client, open_client
from ..wire import loads_message
from . import _convert as convert
from ._client_common import (
    CONTROLLER_SERVICE,
    RUNTIME_SERVICE,
    Decoded,
    RemoteExec,
    all_pages_async,
    decode_reply,
    list_page_from,
    read_data,
    send_data,
    write_size,
)

_S: Final = CONTROLLER_SERVICE
_T = TypeVar("_T")


@final
class RemoteController:
    """A :class:`~sandboxd.Controller` on the other end of a socket.  Get one with
    :func:`connect`.

    Same methods, same arguments, same results and the same errors as the in-process
    Controller, so code written against one runs against the other.  Like the in-process
    Controller's status snapshots, a model may be the very object returned before: a query
    answered with the same bytes as the last one of its method gives the same (frozen) model
    again, without decoding it.  The caller's trio
    deadline (the innermost cancel scope's) travels with each call, so the server gives up
    when the caller does; a call whose deadline passes ends through that cancel scope
    (``trio.Cancelled``, caught by the scope) even when the server's DEADLINE_EXCEEDED
    arrives first.  Cancelling a call tells the server to cancel it.  When the
    connection is lost, pending and later calls raise :class:`~sandboxd.Unavailable`.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        # Per decoder, the last reply it decoded (its bytes) and the model it made of it.
        self._decoded: dict[Callable[[Mapping[str, Any]], Any], tuple[bytes, Any]] = {}

    @property
    def client(self) -> Client:
        return self._client

    async def _call_encoded(
        self, method: str, message: Mapping[str, Any], service: str = _S
    ) -> bytes:
        deadline = trio.current_effective_deadline()
        try:
            return await self._client.call_encoded(
                service, method, message, send_deadline=None if deadline == math.inf else deadline
            )
        except DeadlineExceeded:
            # The server gave up at the deadline the caller's cancel scope set, and its answer
            # came before the scope fired: the scope ends the call, as it would have a moment
            # later, so a trio deadline always surfaces as Cancelled, never as this error.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise

    async def _call(
        self, method: str, message: Mapping[str, Any], service: str = _S
    ) -> dict[str, Any]:
        return loads_message(
            await self._call_encoded(method, message, service), "response payload"
        )

    async def _query(
        self, method: str, message: Mapping[str, Any], decode: Callable[[Mapping[str, Any]], _T]
    ) -> _T:
        """The reply to a call as the (frozen) model ``decode`` makes of it.

        A reply with the same bytes as the last one ``decode`` was given (a sandbox polled
        while it does not change) gives the same model again without decoding it: the
        in-process Controller, too, returns one status snapshot until the sandbox changes.
        """
        payload = await self._call_encoded(method, message)
        last = self._decoded.get(decode)
        if last is not None and last[0] == payload:
            model: _T = last[1]
            return model
        model = decode_reply(decode, loads_message(payload, "response payload"))
        self._decoded[decode] = (payload, model)
        return model

    async def version(self) -> Mapping[str, Any]:
        """``{version, protocol}`` of the server."""
        return await self._call("Version", {}, RUNTIME_SERVICE)

    async def create(
        self,
        sandbox_id: str,
        *,
        sandboxer: str | None = None,
        options: SandboxOptions | None = None,
        rootfs: Iterable[Mount] = (),
        netns_path: str | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        msg = convert.create_message(
            sandbox_id, sandboxer, options, rootfs, netns_path, annotations, labels
        )
        return await self._query("Create", msg, convert.created_from)

    async def start(self, sandbox_id: str) -> SandboxInstance:
        return await self._query("Start", {"sandbox_id": sandbox_id}, convert.instance_from)

    async def stop(self, sandbox_id: str, *, timeout_secs: float | None = None) -> None:
        await self._call("Stop", convert.stop_message(sandbox_id, timeout_secs))

    async def wait(self, sandbox_id: str) -> ExitStatus:
        return await self._query("Wait", {"sandbox_id": sandbox_id}, convert.exit_from)

    async def shutdown(self, sandbox_id: str) -> None:
        await self._call("Shutdown", {"sandbox_id": sandbox_id})

    async def status(self, sandbox_id: str, *, verbose: bool = False) -> SandboxStatus:
        message = convert.status_request_message(sandbox_id, verbose)
        return await self._query("Status", message, convert.status_from)

    async def platform(self, sandbox_id: str) -> Platform:
        return await self._query("Platform", {"sandbox_id": sandbox_id}, convert.platform_from)

    async def ping(self, sandbox_id: str) -> None:
        await self._call("Ping", {"sandbox_id": sandbox_id})

    async def metrics(self, sandbox_id: str) -> SandboxMetrics:
        return await self._query("Metrics", {"sandbox_id": sandbox_id}, convert.metrics_from)

    async def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxStatus]:
        """Every sandbox carrying all of ``labels``, ordered by id: the pages of :meth:`list_page`,
        asked for one after the other from the first to the last (the caller's deadline bounds
        them all).  A sandbox that exists for the whole listing is in it exactly once; one
        created or shut down meanwhile may or may not be."""
        return await all_pages_async(lambda token: self.list_page(labels, page_token=token))

    async def list_page(
        self,
        labels: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        page_token: str | None = None,
    ) -> ListPage:
        """One page of List (see :meth:`Controller.list_page_nowait
        <sandboxd.Controller.list_page_nowait>`): at most ``limit`` sandboxes after
        ``page_token``, and the ``next_page_token`` of the page that follows (``None`` on
        the last).  INVALID_ARGUMENT naming a bad ``limit`` or ``page_token``."""
        reply = await self._call("List", convert.list_message(labels, limit, page_token))
        return list_page_from(reply)

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[SandboxEvent]]:
        """Subscribe to lifecycle events for the block's duration (see
        :meth:`Controller.events`).  Leaving the block ends the stream on the server."""
        async with self._client.stream(_S, "Events", {}) as messages:
            yield Decoded(messages, convert.event_from)

    # -- the data plane ----------------------------------------------------------------------

    @asynccontextmanager
    async def exec(self, sandbox_id: str, request: ExecRequest) -> AsyncIterator[RemoteExec]:
        """Run ``request`` in the sandbox for the block's duration (see
        :meth:`Controller.exec`): the block is entered once the command started, and leaving
        it while the command runs kills it (the server is told to end the call)."""
        message = convert.exec_message(sandbox_id, request)
        async with self._client.open_stream(_S, "Exec", message) as call:
            first = await call.receive()
            if first is None:
                await call.response()
                raise Internal("malformed response from the server: Exec ended before it started")
            exec_id, pid = decode_reply(convert.exec_started_from, first)
            yield RemoteExec(call, exec_id, pid)

    async def exec_sync(
        self,
        sandbox_id: str,
        request: ExecRequest,
        *,
        max_output_bytes: int = DEFAULT_EXEC_SYNC_OUTPUT,
    ) -> ExecSyncResult:
        message = convert.exec_message(sandbox_id, request, sync=True)
        if max_output_bytes != DEFAULT_EXEC_SYNC_OUTPUT:
            message["max_output_bytes"] = max_output_bytes
        return decode_reply(convert.exec_sync_from, await self._call("ExecSync", message))

    @asynccontextmanager
    async def logs(
        self,
        sandbox_id: str,
        *,
        follow: bool = False,
        tail_bytes: int | None = None,
        since: datetime | None = None,
    ) -> AsyncIterator[AsyncIterator[LogChunk | LogGap]]:
        """The sandbox's own output for the block's duration (see :meth:`Controller.logs`)."""
        message = convert.logs_message(sandbox_id, follow, tail_bytes, since)
        async with self._client.open_stream(_S, "Logs", message, client_sends=False) as call:
            yield Decoded(call, convert.log_from)

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int | None = None,
    ) -> int:
        """Write ``data`` to ``path`` in the sandbox; the number of bytes written."""
        message = convert.write_file_message(sandbox_id, path, mode)
        async with self._client.open_stream(_S, "WriteFile", message) as call:
            if isinstance(data, bytes):
                await send_data(call, data)
            else:
                async for piece in data:
                    await send_data(call, piece)
            await call.close_send()
            reply = await call.response()
        return decode_reply(write_size, reply)

    @asynccontextmanager
    async def read_file(self, sandbox_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The bytes of ``path`` in the sandbox, in pieces, for the block's duration."""
        message = {"sandbox_id": sandbox_id, "path": path}
        async with self._client.open_stream(_S, "ReadFile", message, client_sends=False) as call:
            yield Decoded(call, read_data)


@asynccontextmanager
async def connect(path: str | os.PathLike[str]) -> AsyncIterator[RemoteController]:
    """A :class:`RemoteController` connected to the daemon at ``path``, for the block.

    Any number of calls may be made at once: past the server's per-connection call limit the
    client opens more connections, or calls wait for room within their own deadline (see
    :class:`~sandboxd.rpc.Client`); leaving the block closes them all.  Raises
    :class:`~sandboxd.Unavailable` naming the path when no daemon listens there.
    """
    async with open_client(path) as client:
        yield RemoteController(client)
