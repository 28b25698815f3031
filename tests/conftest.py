"""Shared fixtures.  Tests run under pytest-trio (``trio_mode = true``)."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import trio

from daemons import Daemons
from procs import Fifo, Reaper


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A fresh, short Unix socket path (sun_path is limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sbd-") as directory:
        yield os.path.join(directory, "s.sock")


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    """A FIFO in a temporary directory, its read end already open."""
    fifo = Fifo(tmp_path / "fifo")
    yield fifo
    fifo.close()


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """Pids to SIGKILL (with their groups) at teardown: sandboxes outlive a daemon by design."""
    reaper = Reaper()
    try:
        yield reaper
    finally:
        reaper.kill_all()


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Pids of process sandboxes: their process groups are SIGKILLed at teardown, so a
    failing test leaves nothing running (sandboxes outlive the controller by design)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
async def daemons(sock_path: str, tmp_path: Path) -> AsyncIterator[Daemons]:
    """Starts ``sandboxd serve`` on ``sock_path`` and a state directory of its own; kills
    the daemons still running at teardown."""
    logs = tmp_path / "daemon-logs"
    logs.mkdir()
    daemons = Daemons(sock_path, tmp_path / "state", logs)
    try:
        yield daemons
    finally:
        with trio.CancelScope(shield=True):
            await daemons.kill_all()
