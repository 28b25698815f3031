"""Shared fixtures.  Tests run under pytest-trio (``trio_mode = true``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from procs import Fifo


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
