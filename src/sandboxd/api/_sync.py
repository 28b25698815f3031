"""The blocking Controller client, for scripts and agents that do not run trio."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, final

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
from ..rpc import SyncClient
from . import _convert as convert
from ._controller_service import CONTROLLER_SERVICE
from ._remote import decode_reply
from ._runtime_service import RUNTIME_SERVICE

_S: Final = CONTROLLER_SERVICE


@final
class SyncController:
    """The Controller contract over a socket, blocking: no event loop, thread-safe.

    The same method names, arguments, results and typed errors as
    :class:`~sandboxd.RemoteController`.  Where trio code would use a cancel scope, pass
    ``timeout`` (seconds): when it passes the call raises :class:`~sandboxd.DeadlineExceeded`
    and the server is told to give up.  ``timeout`` given to the constructor applies to every
    call that passes none.
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
        reply = self._call("List", convert.list_message(labels), timeout)
        return decode_reply(convert.list_from, reply)

    @contextmanager
    def events(self) -> Iterator[Iterator[SandboxEvent]]:
        """Lifecycle events for the block's duration; leaving it ends the stream."""
        with self.client.stream(_S, "Events", {}) as messages:
            yield (decode_reply(convert.event_from, m) for m in messages)
