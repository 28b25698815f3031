"""The blocking Controller client, for scripts and agents that do not run trio."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, TypeVar, final

from .._errors import Internal
from .._models import (
    DEFAULT_EXEC_SYNC_OUTPUT,
    ExecExit,
    ExecOutput,
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
from ..rpc import SyncClient, SyncStreamCall
from . import _convert as convert
from ._client_common import (
    CONTROLLER_SERVICE,
    RUNTIME_SERVICE,
    all_pages,
    deadline_after,
    decode_reply,
    list_page_from,
    read_data,
    time_left,
    write_size,
)

_S: Final = CONTROLLER_SERVICE
_M = TypeVar("_M")


@final
class SyncController:
    """The Controller contract over a socket, blocking: no event loop, thread-safe.

    The same method names, arguments, results and typed errors as
    :class:`~sandboxd.RemoteController`.  Where trio code would use a cancel scope, pass
    ``timeout`` (seconds): when it passes the call raises :class:`~sandboxd.DeadlineExceeded`
    and the server is told to give up.  ``timeout`` given to the constructor applies to every
    call that passes none.  Any number of threads may call at once: past the server's
    per-connection call limit the client opens more connections, or calls wait for room
    within their ``timeout`` (see :class:`~sandboxd.rpc.SyncClient`); :meth:`close` closes
    them all.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float | None = None) -> None:
        self.client = SyncClient(path)
        self.timeout = timeout

    def __enter__(self) -> SyncController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def _call(
        self,
        method: str,
        message: Mapping[str, Any],
        timeout: float | None,
        service: str = _S,
    ) -> dict[str, Any]:
        return self.client.call(
            service, method, message, timeout=self.timeout if timeout is None else timeout
        )

    def version(self, *, timeout: float | None = None) -> Mapping[str, Any]:
        return self._call("Version", {}, timeout, RUNTIME_SERVICE)

    def create(
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
        return decode_reply(convert.created_from, self._call("Create", msg, timeout))

    def start(self, sandbox_id: str, *, timeout: float | None = None) -> SandboxInstance:
        reply = self._call("Start", {"sandbox_id": sandbox_id}, timeout)
        return decode_reply(convert.instance_from, reply)

    def stop(
        self,
        sandbox_id: str,
        *,
        timeout_secs: float | None = None,
        timeout: float | None = None,
    ) -> None:
        self._call("Stop", convert.stop_message(sandbox_id, timeout_secs), timeout)

    def wait(self, sandbox_id: str, *, timeout: float | None = None) -> ExitStatus:
        reply = self._call("Wait", {"sandbox_id": sandbox_id}, timeout)
        return decode_reply(convert.exit_from, reply)

    def shutdown(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        self._call("Shutdown", {"sandbox_id": sandbox_id}, timeout)

    def status(
        self, sandbox_id: str, *, verbose: bool = False, timeout: float | None = None
    ) -> SandboxStatus:
        msg = convert.status_request_message(sandbox_id, verbose)
        return decode_reply(convert.status_from, self._call("Status", msg, timeout))

    def platform(self, sandbox_id: str, *, timeout: float | None = None) -> Platform:
        reply = self._call("Platform", {"sandbox_id": sandbox_id}, timeout)
        return decode_reply(convert.platform_from, reply)

    def ping(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        self._call("Ping", {"sandbox_id": sandbox_id}, timeout)

    def metrics(self, sandbox_id: str, *, timeout: float | None = None) -> SandboxMetrics:
        reply = self._call("Metrics", {"sandbox_id": sandbox_id}, timeout)
        return decode_reply(convert.metrics_from, reply)

    def list(
        self, labels: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> list[SandboxStatus]:
        """Every sandbox carrying all of ``labels``, ordered by id: the pages of :meth:`list_page`,
        asked for one after the other from the first to the last (``timeout`` bounds them all).
        A sandbox that exists for the whole listing is in it exactly once; one created or shut
        down meanwhile may or may not be."""
        deadline = deadline_after(self.timeout if timeout is None else timeout)
        return all_pages(
            lambda token: self.list_page(labels, page_token=token, timeout=time_left(deadline))
        )

    def list_page(
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
        return list_page_from(self._call("List", message, timeout))

    @contextmanager
    def events(self) -> Iterator[Iterator[SandboxEvent]]:
        """Lifecycle events for the block's duration; leaving it ends the stream."""
        with self.client.stream(_S, "Events", {}) as messages:
            yield _decoded(messages, convert.event_from)

    # -- the data plane ----------------------------------------------------------------------

    @contextmanager
    def exec(
        self, sandbox_id: str, request: ExecRequest, *, timeout: float | None = None
    ) -> Iterator[SyncExec]:
        """Run ``request`` in the sandbox for the block's duration, as
        :meth:`RemoteController.exec <sandboxd.RemoteController.exec>` does; leaving the block
        while the command runs kills it."""
        message = convert.exec_message(sandbox_id, request)
        with self.client.open_stream(_S, "Exec", message, timeout=self._timeout(timeout)) as call:
            first = call.receive()
            if first is None:
                call.response()
                raise Internal("malformed response from the server: Exec ended before it started")
            exec_id, pid = decode_reply(convert.exec_started_from, first)
            yield SyncExec(call, exec_id, pid)

    def exec_sync(
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
        return decode_reply(convert.exec_sync_from, self._call("ExecSync", message, timeout))

    @contextmanager
    def logs(
        self,
        sandbox_id: str,
        *,
        follow: bool = False,
        tail_bytes: int | None = None,
        since: datetime | None = None,
        timeout: float | None = None,
    ) -> Iterator[Iterator[LogChunk | LogGap]]:
        """The sandbox's own output, as a blocking iterator, for the block's duration."""
        message = convert.logs_message(sandbox_id, follow, tail_bytes, since)
        with self.client.open_stream(
            _S, "Logs", message, client_sends=False, timeout=self._timeout(timeout)
        ) as call:
            yield _decoded(call, convert.log_from)

    def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes | Iterable[bytes],
        *,
        mode: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Write ``data`` to ``path`` in the sandbox; the number of bytes written."""
        message = convert.write_file_message(sandbox_id, path, mode)
        with self.client.open_stream(
            _S, "WriteFile", message, timeout=self._timeout(timeout)
        ) as call:
            for piece in [data] if isinstance(data, bytes) else data:
                for chunk in convert.chunks(piece):
                    call.send({"data": chunk})
            call.close_send()
            return decode_reply(write_size, call.response())

    @contextmanager
    def read_file(
        self, sandbox_id: str, path: str, *, timeout: float | None = None
    ) -> Iterator[Iterator[bytes]]:
        """The bytes of ``path`` in the sandbox, in pieces, for the block's duration."""
        message = {"sandbox_id": sandbox_id, "path": path}
        with self.client.open_stream(
            _S, "ReadFile", message, client_sends=False, timeout=self._timeout(timeout)
        ) as call:
            yield _decoded(call, read_data)

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout


def _decoded(
    messages: Iterable[dict[str, Any]], decode: Callable[[Mapping[str, Any]], _M]
) -> Iterator[_M]:
    return (decode_reply(decode, m) for m in messages)


@final
class SyncExec:
    """A command running in a sandbox, blocking: the twin of
    :class:`~sandboxd.api.RemoteExec` (same methods, same errors)."""

    __slots__ = ("_call", "exec_id", "pid")

    def __init__(self, call: SyncStreamCall, exec_id: str, pid: int) -> None:
        self._call = call
        self.exec_id = exec_id
        self.pid = pid

    def write(self, data: bytes) -> None:
        """Write to the command's stdin; blocks while the command does not read it."""
        for piece in convert.chunks(data):
            self._call.send({"stdin": piece})

    def close_stdin(self) -> None:
        self._call.send({"close_stdin": True})

    def resize(self, rows: int, cols: int) -> None:
        self._call.send({"resize": {"rows": rows, "cols": cols}})

    def __iter__(self) -> Iterator[ExecOutput]:
        return _decoded(self._call, convert.output_from)

    def wait(self) -> ExecExit:
        """How the command ended (output not yet read is discarded)."""
        return decode_reply(convert.exec_exit_from, self._call.response())
