"""Shared fixtures.  Tests run under pytest-trio (``trio_mode = true``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A fresh, short Unix socket path (sun_path is limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sbd-") as directory:
        yield os.path.join(directory, "s.sock")
