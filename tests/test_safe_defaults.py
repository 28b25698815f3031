"""Safe defaults: the default sandboxer is ``bwrap`` where bubblewrap runs, ``process`` (which
isolates nothing) only where it cannot."""

from __future__ import annotations

import subprocess

import pytest
import trio

from daemons import SANDBOXD, Daemons
from sandboxd import connect
from sandboxd.backends import BwrapBackend, ProcessBackend, SimBackend
from sandboxd.runtime import DEFAULT_SANDBOXER, Controller, preferred_sandboxer

BWRAP = BwrapBackend().unavailable_reason() is None
needs_bwrap = pytest.mark.skipif(not BWRAP, reason="bubblewrap cannot run here")


@needs_bwrap
def test_the_default_sandboxer_is_bwrap_where_it_runs() -> None:
    assert Controller().default_sandboxer == "bwrap"
    assert preferred_sandboxer([ProcessBackend(), BwrapBackend()]) == "bwrap"


def test_the_default_sandboxer_is_process_where_bwrap_cannot_run() -> None:
    missing = BwrapBackend(bwrap="/nonexistent/bwrap")
    assert preferred_sandboxer([ProcessBackend(), missing, SimBackend()]) == "process"
    assert Controller([ProcessBackend(), SimBackend()]).default_sandboxer == DEFAULT_SANDBOXER
    # Named, process stays available.
    assert Controller(default_sandboxer="process").default_sandboxer == "process"


@needs_bwrap
async def test_the_daemon_says_which_sandboxer_is_its_default(daemons: Daemons) -> None:
    with trio.fail_after(30):
        daemon = await daemons.start(pick_default=True)
    assert "default sandboxer: bwrap" in daemon.output()
    async with connect(daemons.socket) as remote:
        await remote.create("safe")
        assert (await remote.status("safe")).info["sandboxer"] == "bwrap"
        await remote.shutdown("safe")


def test_serve_help_says_how_the_default_is_chosen() -> None:
    out = subprocess.run(
        [SANDBOXD, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    text = " ".join(out.split())
    assert "default: bwrap where bubblewrap can run here, else process" in text
