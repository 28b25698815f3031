"""The real daemon from tests: ``sandboxd serve`` as a subprocess, and its database.

A starting daemon gives no sign of being ready but answering on its socket, so it is probed:
a connection and a Version call every PROBE_INTERVAL seconds, for at most STARTUP seconds,
giving up at once if it exits.  The ``daemons`` fixture (conftest.py) gives a :class:`Daemons`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from sandboxd import Unavailable
from sandboxd.api import RUNTIME_SERVICE
from sandboxd.rpc import open_client

BIN = Path(sys.executable).parent
SANDBOXD = str(BIN / "sandboxd")
DATABASE = "sandboxd.db"
#: Seconds the daemon gets to start serving (or to exit), and any wait on a process.
STARTUP = 10.0
#: Seconds between two attempts of a bounded poll: the readiness probe, or a test's own.
PROBE_INTERVAL = 0.02


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

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def serving(self) -> None:
        """Return once the daemon answers on its socket.

        A readiness probe: the daemon gives no other sign that it is ready (no notify
        socket, no pid file), so connections are attempted every PROBE_INTERVAL seconds,
        for at most STARTUP seconds, giving up at once if the daemon has exited.
        """
        with trio.fail_after(STARTUP):
            while True:
                if self.process.poll() is not None:
                    pytest.fail(
                        f"daemon exited with {self.process.returncode} before serving:\n"
                        + self.output()
                    )
                try:
                    async with open_client(self.socket) as client:
                        await client.call(RUNTIME_SERVICE, "Version", {})
                        return
                except Unavailable:
                    await trio.sleep(PROBE_INTERVAL)

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

    async def start(self, prefix: Sequence[str] = (), args: Sequence[str] = ()) -> Daemon:
        """A new daemon (run under ``prefix``, e.g. ``prlimit ...``, with more ``args`` to
        ``sandboxd serve``), serving."""
        log = self.logs / f"daemon-{len(self.started)}.log"
        state = str(self.state_dir)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = await trio.lowlevel.open_process(
                [*prefix, SANDBOXD, "serve", "--socket", self.socket, "--state-dir", state, *args],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=daemon_env(),
            )
        finally:
            os.close(fd)
        daemon = Daemon(process, self.socket, log)
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
