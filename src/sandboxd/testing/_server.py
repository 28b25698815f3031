"""An in-process sandboxd server on a temporary socket, for tests.

:func:`serve_in_thread` runs a Controller and its server in a trio loop of their own, in a
background thread, so that blocking code -- a :class:`~sandboxd.SyncController`, the fuzzer,
``sandboxctl`` in a subprocess -- can use it without a loop of its own.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from .._errors import RPCError
from ..api import serve_controller
from ..backends import Backend, ProcessBackend, SimBackend
from ..runtime import Controller, open_controller

__all__ = ["fixture_backends", "serve_in_thread", "shutdown_all"]

#: Seconds a test server gives its sandboxes to be shut down when it closes.
CLOSE_LIMIT = 10.0


def fixture_backends() -> list[Backend]:
    """The backends of the test fixtures: ``sim`` and ``process``."""
    return [SimBackend(), ProcessBackend()]


async def shutdown_all(controller: Any, limit: float = CLOSE_LIMIT) -> None:
    """Shut down every sandbox ``controller`` lists (sandboxes outlive their controller:
    without this, the process backend's would keep running).  Gives up after ``limit``."""
    with trio.move_on_after(limit):
        async with trio.open_nursery() as nursery:
            for status in await controller.list():
                nursery.start_soon(_shutdown, controller, status.sandbox_id)


async def _shutdown(controller: Any, sandbox_id: str) -> None:
    with contextlib.suppress(RPCError):  # gone meanwhile
        await controller.shutdown(sandbox_id)


@contextmanager
def serve_in_thread(
    *,
    backends: Iterable[Backend] | None = None,
    wrap: Callable[[Controller], Any] | None = None,
    **controller_options: Any,
) -> Iterator[str]:
    """Serve a fresh Controller on a temporary Unix socket from a background thread, for the
    block; yields the socket's path.

    ``backends`` defaults to :func:`fixture_backends` and ``controller_options`` go to the
    :class:`~sandboxd.Controller` (``default_sandboxer``, ``stop_timeout``, ...).  ``wrap``,
    if given, is applied to the controller and the server serves what it returns (something
    with the Controller's methods, ``*_nowait`` queries and ``len()`` included: a
    deliberately broken one, say).  On leaving the block
    every sandbox is shut down and the thread ends.
    """
    directory = tempfile.mkdtemp(prefix="sbd-")
    path = os.path.join(directory, "sandboxd.sock")
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        state["stop"] = stop
        state["token"] = trio.lowlevel.current_trio_token()
        chosen = fixture_backends() if backends is None else list(backends)
        async with open_controller(chosen, **controller_options) as controller:
            served = controller if wrap is None else wrap(controller)
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_controller, served, path)
                ready.set()
                await stop.wait()
                await shutdown_all(controller)
                nursery.cancel_scope.cancel()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the thread that waits for it
            state["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="sandboxd-test-server", daemon=True)
    thread.start()
    try:
        ready.wait()
        if "error" in state:
            raise state["error"]
        yield path
    finally:
        if thread.is_alive() and "token" in state:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(state["stop"].set, trio_token=state["token"])
        thread.join(timeout=CLOSE_LIMIT + 20)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.rmdir(directory)
    if "error" in state:
        raise state["error"]  # the server failed while the block ran
