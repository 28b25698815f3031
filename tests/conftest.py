"""Shared fixtures.  Tests run under pytest-trio (``trio_mode = true``).

The plugin's fixtures (``sandboxd_controller``, ``sandboxd_socket``, ``sandboxd_client``, ...)
serve here too.  The tests' helper modules:

- ``peers.py``: a peer speaking raw bytes over a real socket, as a client or as a server;
- ``probe_server.py`` and ``client_services.py``: what the RPC server's and the RPC client's
  tests serve;
- ``background.py``: calls running in tasks of their own;
- ``sim_controller.py``: a running Controller over the ``sim`` backend, and shorthands;
- ``procs.py``: real processes (/proc, FIFOs, reaping, exit callbacks);
- ``daemons.py``: ``sandboxd serve`` as a subprocess, and a Controller served in process;
- ``hang_guard.py`` (loaded as a plugin): the ``watchdog`` that fails a trio test which hangs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from daemons import Daemons, Served
from probe_server import Probe
from procs import Fifo, Reaper
from sandboxd.api import controller_server
from sandboxd.runtime import Controller

pytest_plugins = ["hang_guard"]


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
def probe() -> Probe:
    """The handlers of the RPC server's tests: what a test controls and observes of them."""
    return Probe()


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """Pids to SIGKILL (with their groups) at teardown, so a failing test leaves nothing
    running: sandboxes outlive their controller, and their daemon, by design."""
    reaper = Reaper()
    try:
        yield reaper
    finally:
        reaper.kill_all()


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


@pytest.fixture
async def served(nursery: trio.Nursery, sock_path: str, sandboxd_controller: Controller) -> Served:
    """The plugin's ``sandboxd_controller`` (override ``sandboxd_controller_options`` to
    change it) served on ``sock_path`` as ``serve_controller`` serves it, by a server the test
    can look at."""
    server = controller_server(sandboxd_controller)
    assert await nursery.start(server.serve_unix, sock_path) == sock_path
    return Served(sandboxd_controller, server, sock_path)


# -- cgroups the suite made ---------------------------------------------------------------------

#: Where the suite's daemons and controllers make their sandboxes' cgroups.
_CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")


def _made_cgroups(since: float) -> list[str]:
    """The ``sandboxd-*`` cgroup directories made since ``since``, deepest first."""
    found: list[str] = []
    for root in _CGROUP_ROOTS:
        for directory, subdirs, _ in os.walk(root):
            for name in subdirs:
                path = os.path.join(directory, name)
                try:
                    made = os.stat(path).st_mtime
                except OSError:
                    continue
                if name.startswith("sandboxd-") and made >= since:
                    found += [os.path.join(d, s) for d, ss, _ in os.walk(path) for s in ss]
                    found.append(path)
            if directory.count(os.sep) >= root.count(os.sep) + 2:
                subdirs.clear()  # a daemon's cgroup is at most two levels down
    return sorted(set(found), key=lambda p: p.count(os.sep), reverse=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION_STARTED] = time.time()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the empty cgroups the suite's sandboxes left (a daemon killed outright, as the
    recovery tests kill theirs, leaves its sandboxes' cgroups for the next daemon on its
    state directory, and no next daemon comes).  Only empty ones made during this session:
    rmdir refuses a cgroup that still holds a process."""
    since = session.config.stash.get(_SESSION_STARTED, None)
    if since is None:
        return
    for path in _made_cgroups(since - 1):
        with contextlib.suppress(OSError):
            os.rmdir(path)


_SESSION_STARTED = pytest.StashKey[float]()
