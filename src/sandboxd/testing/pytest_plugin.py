"""pytest fixtures for code that drives sandboxes: the ``sandboxd`` plugin.

Registered through the ``pytest11`` entry point, so installing sandboxd makes them available
to every test.  Every fixture runs a fresh in-process runtime (the ``sim`` and ``process``
sandboxers, ``sim`` by default) on a temporary socket, and shuts down its sandboxes when the
test ends.

For trio tests (pytest-trio; ``trio_mode = true``, or ``@pytest.mark.trio``):

- ``sandboxd_controller``: the in-process :class:`~sandboxd.Controller`;
- ``sandboxd_socket``: the path of a server, in the test's own trio loop, serving it;
- ``sandboxd_client``: a :class:`~sandboxd.RemoteController` connected to that socket.

For synchronous tests:

- ``sandboxd_sync_socket``: the path of a server running in a background thread with a trio
  loop and a Controller of its own (:func:`~sandboxd.testing.serve_in_thread`), so that
  blocking code -- a SyncController, :func:`sandboxd.testing.fuzz.fuzz`, ``sandboxctl`` in a
  subprocess -- can call it;
- ``sandboxd_sync_client``: a :class:`~sandboxd.SyncController` connected to it.  (From an
  async test it works too, since its server has a thread of its own, but every call blocks
  the test's event loop: prefer ``sandboxd_client`` there.)

Override ``sandboxd_controller_options`` to change the Controller's keyword arguments
(``default_sandboxer``, ``stop_timeout``, ...).

The plugin imports neither Hypothesis nor pytest-trio.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio

from ..api import RemoteController, SyncController, connect, serve_controller
from ..runtime import Controller, open_controller
from ._server import fixture_backends, serve_in_thread, shutdown_all

#: Seconds between SIGTERM and SIGKILL for a Stop without a timeout, in the fixtures'
#: controllers: short, so that a sandbox that ignores SIGTERM does not slow a test down.
FIXTURE_STOP_TIMEOUT = 0.5

#: Seconds a sync client waits for any call before DEADLINE_EXCEEDED.
SYNC_CALL_TIMEOUT = 30.0


@pytest.fixture
def sandboxd_controller_options() -> dict[str, Any]:
    """Keyword arguments of the fixtures' Controller; override the fixture to change them."""
    return {"default_sandboxer": "sim", "stop_timeout": FIXTURE_STOP_TIMEOUT}


@pytest.fixture
async def sandboxd_controller(
    sandboxd_controller_options: dict[str, Any],
) -> AsyncIterator[Controller]:
    """A running in-process Controller (``sim`` and ``process`` sandboxers)."""
    async with open_controller(fixture_backends(), **sandboxd_controller_options) as controller:
        try:
            yield controller
        finally:
            await shutdown_all(controller)


@pytest.fixture
async def sandboxd_socket(sandboxd_controller: Controller) -> AsyncIterator[str]:
    """The path of a server serving ``sandboxd_controller``, in the test's trio loop."""
    with tempfile.TemporaryDirectory(prefix="sbd-") as directory:
        path = os.path.join(directory, "sandboxd.sock")
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_controller, sandboxd_controller, path)
            yield path
            nursery.cancel_scope.cancel()


@pytest.fixture
async def sandboxd_client(sandboxd_socket: str) -> AsyncIterator[RemoteController]:
    """A RemoteController connected to ``sandboxd_socket``."""
    async with connect(sandboxd_socket) as client:
        yield client


@pytest.fixture
def sandboxd_sync_socket(sandboxd_controller_options: dict[str, Any]) -> Iterator[str]:
    """The path of a server with a Controller of its own, running in a background thread."""
    with serve_in_thread(**sandboxd_controller_options) as path:
        yield path


@pytest.fixture
def sandboxd_sync_client(sandboxd_sync_socket: str) -> Iterator[SyncController]:
    """A SyncController connected to ``sandboxd_sync_socket``."""
    with SyncController(sandboxd_sync_socket, timeout=SYNC_CALL_TIMEOUT) as client:
        yield client
