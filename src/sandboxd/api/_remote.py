"""The remote Controller: the same methods as :class:`~sandboxd.Controller`, over a socket."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio

from .._errors import Internal, InvalidArgument
from .._models import (
    ExitStatus,
    Mount,
    Platform,
    SandboxEvent,
    SandboxInstance,
    SandboxMetrics,
    SandboxOptions,
    SandboxStatus,
)
from ..rpc import Client, open_client
from . import _convert as convert
from ._controller_service import CONTROLLER_SERVICE
from ._runtime_service import RUNTIME_SERVICE

_S: Final = CONTROLLER_SERVICE


def _decode(decode: Any, msg: Mapping[str, Any]) -> Any:
    try:
        return decode(msg)
    except InvalidArgument as err:
        raise Internal(f"malformed response from the server: {err.message}") from None


@final
class RemoteController:
    """A :class:`~sandboxd.Controller` on the other end of a socket.  Get one with
    :func:`connect`.

    Same methods, same arguments, same results and the same errors as the in-process
    Controller, so code written against one runs against the other.  The caller's trio
    deadline (the innermost cancel scope's) travels with each call, so the server gives up
    when the caller does; cancelling a call tells the server to cancel it.  When the
    connection is lost, pending and later calls raise :class:`~sandboxd.Unavailable`.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def client(self) -> Client:
        return self._client

    async def _call(
        self, method: str, message: Mapping[str, Any], service: str = _S
    ) -> dict[str, Any]:
        deadline = trio.current_effective_deadline()
        return await self._client.call(
            service, method, message, send_deadline=None if deadline == math.inf else deadline
        )

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
        msg: dict[str, Any] = {"sandbox_id": sandbox_id}
        if sandboxer is not None:
            msg["sandboxer"] = sandboxer
        if options is not None:
            msg["options"] = convert.options_message(options)
        mounts = [convert.mount_message(m) for m in rootfs]
        if mounts:
            msg["rootfs"] = mounts
        if netns_path is not None:
            msg["netns_path"] = netns_path
        if annotations:
            msg["annotations"] = dict(annotations)
        if labels:
            msg["labels"] = dict(labels)
        reply = await self._call("Create", msg)
        sandbox: str = _decode(lambda m: convert._text(m.get("sandbox_id"), "sandbox_id"), reply)
        return sandbox

    async def start(self, sandbox_id: str) -> SandboxInstance:
        result: SandboxInstance = _decode(
            convert.instance_from, await self._call("Start", {"sandbox_id": sandbox_id})
        )
        return result

    async def stop(self, sandbox_id: str, *, timeout_secs: float | None = None) -> None:
        msg: dict[str, Any] = {"sandbox_id": sandbox_id}
        if timeout_secs is not None:
            msg["timeout_secs"] = timeout_secs
        await self._call("Stop", msg)

    async def wait(self, sandbox_id: str) -> ExitStatus:
        result: ExitStatus = _decode(
            convert.exit_from, await self._call("Wait", {"sandbox_id": sandbox_id})
        )
        return result

    async def shutdown(self, sandbox_id: str) -> None:
        await self._call("Shutdown", {"sandbox_id": sandbox_id})

    async def status(self, sandbox_id: str, *, verbose: bool = False) -> SandboxStatus:
        msg: dict[str, Any] = {"sandbox_id": sandbox_id}
        if verbose:
            msg["verbose"] = True
        result: SandboxStatus = _decode(convert.status_from, await self._call("Status", msg))
        return result

    async def platform(self, sandbox_id: str) -> Platform:
        result: Platform = _decode(
            convert.platform_from, await self._call("Platform", {"sandbox_id": sandbox_id})
        )
        return result

    async def ping(self, sandbox_id: str) -> None:
        await self._call("Ping", {"sandbox_id": sandbox_id})

    async def metrics(self, sandbox_id: str) -> SandboxMetrics:
        result: SandboxMetrics = _decode(
            convert.metrics_from, await self._call("Metrics", {"sandbox_id": sandbox_id})
        )
        return result

    async def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxStatus]:
        reply = await self._call("List", {"labels": dict(labels)} if labels else {})
        sandboxes = reply.get("sandboxes")
        if type(sandboxes) is not list:
            raise Internal("malformed response from the server: List.sandboxes is missing")
        return [_decode(convert.status_from, s) for s in sandboxes]

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[SandboxEvent]]:
        """Subscribe to lifecycle events for the block's duration (see
        :meth:`Controller.events`).  Leaving the block ends the stream on the server."""
        async with self._client.stream(_S, "Events", {}) as messages:
            yield _events(messages)


async def _events(messages: AsyncIterator[dict[str, Any]]) -> AsyncIterator[SandboxEvent]:
    async for msg in messages:
        yield _decode(convert.event_from, msg)


@asynccontextmanager
async def connect(path: str | os.PathLike[str]) -> AsyncIterator[RemoteController]:
    """A :class:`RemoteController` connected to the daemon at ``path``, for the block.

    Raises :class:`~sandboxd.Unavailable` naming the path when no daemon listens there.
    """
    async with open_client(path) as client:
        yield RemoteController(client)
