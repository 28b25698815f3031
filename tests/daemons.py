"""The real daemon from tests: ``sandboxd serve`` as a subprocess, and its database; and its
in-process counterpart, a Controller served in the test's own loop (:class:`Served`).

A daemon is started with ``--ready-fd`` on the write end of a pipe (:class:`ReadyPipe`); the
test waits, at most STARTUP seconds, for its ``READY`` line, or for the end of the pipe if it
exits first.  The ``daemons`` fixture (conftest.py) gives a :class:`Daemons`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from sandboxd.rpc import Server
from sandboxd.runtime import Controller

BIN = Path(sys.executable).parent
SANDBOXD = str(BIN / "sandboxd")
#: The tests' daemons create ``process`` sandboxes when Create names no sandboxer (the
#: daemon's own default is ``bwrap`` where it runs, which costs more to start).
PROCESS_DEFAULT = ("--default-sandboxer", "process")
DATABASE = "sandboxd.db"
#: Seconds the daemon gets to start serving (or to exit), and any wait on a process.
STARTUP = 10.0
#: Seconds between two attempts of a test's own bounded poll.
PROBE_INTERVAL = 0.02


class ReadyPipe:
    """A pipe for ``sandboxd serve --ready-fd``: pass :attr:`args` and :attr:`fds` to the
    daemon, call :meth:`spawned` once it runs, then wait for its readiness line."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self.fds = (self._write,)
        self.args = ["--ready-fd", str(self._write)]

    def popen(
        self, args: Sequence[str], log: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """``sandboxd serve ARGS --ready-fd ...``, output appended to ``log`` (not waited on)."""
        with open(log, "ab") as out:
            try:
                return subprocess.Popen(
                    [SANDBOXD, "serve", *PROCESS_DEFAULT, *args, *self.args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=env,
                    pass_fds=self.fds,
                )
            finally:
                self.spawned()

    def spawned(self) -> None:
        """The daemon has its copy of the write end: ours goes, so its exit ends the pipe."""
        os.close(self._write)

    def _check(self, ready: bool, output: Callable[[], str]) -> None:
        line = os.read(self._read, 4096) if ready else b""
        os.close(self._read)
        if not ready:
            pytest.fail(f"daemon not serving after {STARTUP} s:\n{output()}")
        if not line.startswith(b"READY "):
            pytest.fail(f"daemon ended before serving:\n{output()}")

    async def wait(self, output: Callable[[], str]) -> None:
        """Return once the daemon said it serves; fail if it ends first or is late."""
        with trio.move_on_after(STARTUP):
            await trio.lowlevel.wait_readable(self._read)
        ready, _, _ = select.select([self._read], [], [], 0)
        self._check(bool(ready), output)

    def wait_sync(self, output: Callable[[], str]) -> None:
        """:meth:`wait`, blocking."""
        ready, _, _ = select.select([self._read], [], [], STARTUP)
        self._check(bool(ready), output)


def daemon_env(state_dir: Path | None = None) -> dict[str, str]:
    """The environment without SANDBOXD_SOCKET, and with SANDBOXD_STATE_DIR at ``state_dir``
    (so the daemon's state goes to the test's directory, not the user's home) or unset."""
    env = dict(os.environ)
    env.pop("SANDBOXD_SOCKET", None)
    if state_dir is None:
        env.pop("SANDBOXD_STATE_DIR", None)
    else:
        env["SANDBOXD_STATE_DIR"] = str(state_dir)
    return env


@dataclass
class Daemon:
    process: trio.Process
    socket: str
    log: Path
    ready: ReadyPipe

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def serving(self) -> None:
        """Return once the daemon says it serves (:class:`ReadyPipe`)."""
        await self.ready.wait(self.output)

    async def crash(self) -> None:
        """SIGKILL the daemon and reap it."""
        self.process.kill()
        with trio.fail_after(STARTUP):
            await self.process.wait()

    async def terminate(self) -> int:
        """SIGTERM the daemon; its exit status."""
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(STARTUP):
            return await self.process.wait()


@dataclass
class Daemons:
    """Starts ``sandboxd serve`` on one socket and state directory; kills leftovers."""

    socket: str
    state_dir: Path
    logs: Path
    started: list[Daemon] = field(default_factory=list)

    @property
    def database(self) -> Path:
        return self.state_dir / DATABASE

    async def start(
        self, prefix: Sequence[str] = (), args: Sequence[str] = (), *, pick_default: bool = False
    ) -> Daemon:
        """A new daemon (run under ``prefix``, e.g. ``prlimit ...``, with more ``args`` to
        ``sandboxd serve``), serving; its default sandboxer ``process`` unless it is to
        ``pick_default`` itself."""
        log = self.logs / f"daemon-{len(self.started)}.log"
        state = str(self.state_dir)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        ready = ReadyPipe()
        try:
            process = await trio.lowlevel.open_process(
                [
                    *prefix,
                    SANDBOXD,
                    "serve",
                    *(() if pick_default else PROCESS_DEFAULT),
                    "--socket",
                    self.socket,
                    "--state-dir",
                    state,
                    *ready.args,
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=daemon_env(),
                pass_fds=ready.fds,
            )
        finally:
            os.close(fd)
            ready.spawned()
        daemon = Daemon(process, self.socket, log, ready)
        self.started.append(daemon)
        await daemon.serving()
        return daemon

    async def kill_all(self) -> None:
        for daemon in self.started:
            if daemon.process.poll() is None:
                daemon.process.kill()
            with trio.move_on_after(STARTUP):
                await daemon.process.wait()


def stored_records(database: Path) -> dict[str, dict[str, Any]]:
    """Every record in the database, decoded; opened read-only (the daemon may run)."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT sandbox_id, record FROM sandboxes").fetchall()
    return {sandbox_id: json.loads(record) for sandbox_id, record in rows}


@dataclass(frozen=True)
class Served:
    """A Controller served on a real socket in the test's own loop: the ``served`` fixture
    (conftest.py), for tests that read the server's counters (``server.in_flight``, ...)."""

    controller: Controller
    server: Server
    path: str
