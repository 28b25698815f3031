"""The asyncio Controller client, for programs on asyncio (no trio imported)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final, final

from .._errors import Internal
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
from ..rpc._aio_client import AioClient, open_aio_client
from . import _convert as convert
from ._client_common import (
    CONTROLLER_SERVICE,
    RUNTIME_SERVICE,
    Decoded,
    RemoteExec,
    all_pages_async,
    deadline_after,
    decode_reply,
    list_page_from,
    read_data,
    send_data,
    time_left,
    write_size,
)

_S: Final = CONTROLLER_SERVICE


@final
class AsyncController:
    """The Controller contract over a socket, on asyncio.  Get one with :func:`connect`.

    The same method names, arguments, results, models and typed errors as
    :class:`~sandboxd.RemoteController`; streams are async context managers yielding async
    iterators, as there.  ``timeout`` (seconds, per call, or the constructor's for every call
    that passes none) is sent to the server as the call's deadline and enforced here: when it
    passes the call raises :class:`~sandboxd.DeadlineExceeded`.  Cancelling a call's task
    (``task.cancel()``, ``asyncio.timeout``) tells the server to cancel the call and leaves
    the connection usable for the others.  When the connection is lost or closed, waiting and
    later calls raise :class:`~sandboxd.Unavailable`.  Share it between the tasks of one
    event loop; use it as an async context manager, or call :meth:`aclose`.
    """

    def __init__(self, client: AioClient, *, timeout: float | None = None) -> None:
        self.client = client
        self.timeout = timeout

    async def __aenter__(self) -> AsyncController:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; calls waiting in other tasks fail with UNAVAILABLE."""
        await self.client.aclose()

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def _call(
        self,
        method: str,
        message: Mapping[str, Any],
        timeout: float | None,
        service: str = _S,
    ) -> dict[str, Any]:
        return await self.client.call(service, method, message, timeout=self._timeout(timeout))

    async def version(self, *, timeout: float | None = None) -> Mapping[str, Any]:
        """``{version, protocol}`` of the server."""
        return await self._call("Version", {}, timeout, RUNTIME_SERVICE)

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
        timeout: float | None = None,
    ) -> str:
        msg = convert.create_message(
            sandbox_id, sandboxer, options, rootfs, netns_path, annotations, labels
        )
        return decode_reply(convert.created_from, await self._call("Create", msg, timeout))

    async def start(self, sandbox_id: str, *, timeout: float | None = None) -> SandboxInstance:
        reply = await self._call("Start", {"sandbox_id": sandbox_id}, timeout)
        return decode_reply(convert.instance_from, reply)

    async def stop(
        self, sandbox_id: str, *, timeout_secs: float | None = None, timeout: float | None = None
    ) -> None:
        await self._call("Stop", convert.stop_message(sandbox_id, timeout_secs), timeout)

    async def wait(self, sandbox_id: str, *, timeout: float | None = None) -> ExitStatus:
        reply = await self._call("Wait", {"sandbox_id": sandbox_id}, timeout)
        return decode_reply(convert.exit_from, reply)

    async def shutdown(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        await self._call("Shutdown", {"sandbox_id": sandbox_id}, timeout)

    async def status(
        self, sandbox_id: str, *, verbose: bool = False, timeout: float | None = None
    ) -> SandboxStatus:
        msg = convert.status_request_message(sandbox_id, verbose)
        return decode_reply(convert.status_from, await self._call("Status", msg, timeout))

    async def platform(self, sandbox_id: str, *, timeout: float | None = None) -> Platform:
        reply = await self._call("Platform", {"sandbox_id": sandbox_id}, timeout)
        return decode_reply(convert.platform_from, reply)

    async def ping(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        await self._call("Ping", {"sandbox_id": sandbox_id}, timeout)

    async def metrics(self, sandbox_id: str, *, timeout: float | None = None) -> SandboxMetrics:
        reply = await self._call("Metrics", {"sandbox_id": sandbox_id}, timeout)
        return decode_reply(convert.metrics_from, reply)

    async def list(
        self, labels: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> list[SandboxStatus]:
        """Every sandbox carrying all of ``labels``, ordered by id: the pages of :meth:`list_page`,
        asked for one after the other from the first to the last (``timeout`` bounds them all).
        A sandbox that exists for the whole listing is in it exactly once; one created or shut
        down meanwhile may or may not be."""
        deadline = deadline_after(self._timeout(timeout))
        return await all_pages_async(
            lambda token: self.list_page(labels, page_token=token, timeout=time_left(deadline))
        )

    async def list_page(
        self,
        labels: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        page_token: str | None = None,
        timeout: float | None = None,
    ) -> ListPage:
        """One page of List: see :meth:`RemoteController.list_page
        <sandboxd.RemoteController.list_page>`."""
        message = convert.list_message(labels, limit, page_token)
        return list_page_from(await self._call("List", message, timeout))

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[SandboxEvent]]:
        """Lifecycle events for the block's duration; leaving it ends the stream."""
        async with self.client.stream(_S, "Events", {}) as messages:
            yield Decoded(messages, convert.event_from)

    # -- the data plane ----------------------------------------------------------------------

    @asynccontextmanager
    async def exec(
        self, sandbox_id: str, request: ExecRequest, *, timeout: float | None = None
    ) -> AsyncIterator[RemoteExec]:
        """Run ``request`` in the sandbox for the block's duration, as
        :meth:`RemoteController.exec <sandboxd.RemoteController.exec>` does: the block is
        entered once the command started, and leaving it while the command runs kills it."""
        message = convert.exec_message(sandbox_id, request)
        async with self.client.open_stream(
            _S, "Exec", message, timeout=self._timeout(timeout)
        ) as call:
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
        timeout: float | None = None,
    ) -> ExecSyncResult:
        message = convert.exec_message(sandbox_id, request, sync=True)
        if max_output_bytes != DEFAULT_EXEC_SYNC_OUTPUT:
            message["max_output_bytes"] = max_output_bytes
        return decode_reply(convert.exec_sync_from, await self._call("ExecSync", message, timeout))

    @asynccontextmanager
    async def logs(
        self,
        sandbox_id: str,
        *,
        follow: bool = False,
        tail_bytes: int | None = None,
        since: datetime | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[AsyncIterator[LogChunk | LogGap]]:
        """The sandbox's own output for the block's duration (see :meth:`Controller.logs
        <sandboxd.Controller.logs>`)."""
        message = convert.logs_message(sandbox_id, follow, tail_bytes, since)
        async with self.client.open_stream(
            _S, "Logs", message, client_sends=False, timeout=self._timeout(timeout)
        ) as call:
            yield Decoded(call, convert.log_from)

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes | AsyncIterable[bytes] | Iterable[bytes],
        *,
        mode: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Write ``data`` to ``path`` in the sandbox; the number of bytes written."""
        message = convert.write_file_message(sandbox_id, path, mode)
        async with self.client.open_stream(
            _S, "WriteFile", message, timeout=self._timeout(timeout)
        ) as call:
            if isinstance(data, bytes):
                await send_data(call, data)
            elif isinstance(data, AsyncIterable):
                async for piece in data:
                    await send_data(call, piece)
            else:
                for piece in data:
                    await send_data(call, piece)
            await call.close_send()
            reply = await call.response()
        return decode_reply(write_size, reply)

    @asynccontextmanager
    async def read_file(
        self, sandbox_id: str, path: str, *, timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The bytes of ``path`` in the sandbox, in pieces, for the block's duration."""
        message = {"sandbox_id": sandbox_id, "path": path}
        async with self.client.open_stream(
            _S, "ReadFile", message, client_sends=False, timeout=self._timeout(timeout)
        ) as call:
            yield Decoded(call, read_data)


@asynccontextmanager
async def connect(
    path: str | os.PathLike[str], *, timeout: float | None = None
) -> AsyncIterator[AsyncController]:
    """An :class:`AsyncController` connected to the daemon at ``path``, for the block;
    ``timeout`` is the default of every call.  Any number of calls may be made at once, as
    with :func:`sandboxd.connect` (see :class:`~sandboxd.rpc.AioClient`); leaving the block
    closes every connection the client opened.  Raises :class:`~sandboxd.Unavailable` naming
    the path when no daemon listens there."""
    async with open_aio_client(path) as client:
        yield AsyncController(client, timeout=timeout)


#: The exec session of :meth:`AsyncController.exec`: the trio client's class, as its methods
#: are the same coroutines.
AsyncExec = RemoteExec
