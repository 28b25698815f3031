"""The Go ttrpc peers the tests run (tests/go, bench/go), built by bench/gobuild.py: skipped,
saying what to install, where Go or containerd's ttrpc library is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.gobuild import GoBuildFailed, go_build

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "tests" / "go" / "sandboxd-ttrpc-check"
ECHO = REPO / "bench" / "go" / "echo"


def build(source: Path) -> Path:
    """The binary built from the Go package in ``source`` (cached)."""
    try:
        built = go_build(source)
    except GoBuildFailed as exc:
        pytest.fail(str(exc))
    if isinstance(built, str):
        pytest.skip(built)
    return built
