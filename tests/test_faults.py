"""Faults: clients that die mid-call, sandboxes that resist or scatter, a disk that refuses.

The daemon tests run the installed ``sandboxd serve`` as a subprocess and talk to it over its
socket; the sandbox-behaviour tests drive real processes (and real bubblewrap) through the
in-process Controller.  Waiting: a starting daemon says when it serves (``--ready-fd``, see
``daemons.ReadyPipe``); one test polls a sandbox's status for the ``stopping`` that only the
Stop it is checking can cause (every PROBE_INTERVAL seconds, for at most STARTUP seconds).
Every other wait is on an event: a FIFO, a pipe, a pidfd, a reply.

Sandbox processes outlive the daemon by design, so every test hands the pids it learns to
the ``reaper`` fixture, which SIGKILLs them (and their groups) at teardown.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from daemons import DATABASE, PROBE_INTERVAL, STARTUP, Daemons, daemon_env, stored_records
from procs import Fifo, Reaper, all_ended, is_alive, pid_namespace, proc_pgrp
from sandboxd import (
    BwrapBackend,
    Mount,
    NotFound,
    ProcessBackend,
    ResourceExhausted,
    RPCError,
    SandboxOptions,
    SandboxState,
    Unavailable,
    connect,
    open_controller,
)

#: Exit status of a sandbox killed by SIGKILL.
KILLED = 128 + signal.SIGKILL
#: SQLite's shared-memory index of a WAL database: 32 KiB, written when first mapped.
SHM_SIZE = 32768

# A client in a process of its own, to be killed mid-call.  It says "sent" on stdout once a
# request has left for the daemon (the bytes are then in the daemon's socket buffer, ahead of
# the hang-up the kill causes), and "returned" if its call ever returns.
CLIENT = """\
import socket, sys
from sandboxd import SyncController

class Announcing(socket.socket):
    def sendall(self, data, *args):
        super().sendall(data, *args)
        sys.stdout.write("sent\\n")
        sys.stdout.flush()

socket.socket = Announcing
path, method, sandbox_id, *rest = sys.argv[1:]
controller = SyncController(path)
if method == "stop":
    controller.stop(sandbox_id, timeout_secs=float(rest[0]))
else:
    controller.wait(sandbox_id)
sys.stdout.write("returned\\n")
"""


# -- processes -----------------------------------------------------------------------------------


def sandbox_members(sandboxer: str, pid: int) -> list[int]:
    """Host pids of the live processes of a sandbox: its pid namespace (bwrap) or its
    process group (process)."""
    if sandboxer == "bwrap":
        namespace = pid_namespace(pid)
        assert namespace is not None, f"pid {pid} is gone"

        def belongs(name: str) -> bool:
            return pid_namespace(name) == namespace
    else:

        def belongs(name: str) -> bool:
            with suppress(FileNotFoundError):
                return proc_pgrp(int(name)) == pid
            return False

    return [
        int(name)
        for name in os.listdir("/proc")
        if name.isdigit() and belongs(name) and is_alive(int(name))
    ]


def stubborn(ready: Path) -> SandboxOptions:
    """A sandbox that ignores SIGTERM (sh, then sleep, which inherits the ignored signal)
    and says so on ``ready`` once it does."""
    return SandboxOptions(
        command=["sh", "-c", f'trap "" TERM; echo ready > {ready}; exec sleep 1000']
    )


# -- clients in processes of their own -----------------------------------------------------------


@dataclass
class Client:
    """A :data:`CLIENT` process, its stdout on a pipe."""

    process: trio.Process
    heard: bytes = b""

    async def until(self, line: bytes) -> None:
        """Return once the client wrote ``line``."""
        assert self.process.stdout is not None
        with trio.fail_after(STARTUP):
            while line + b"\n" not in self.heard:
                chunk = await self.process.stdout.receive_some()
                assert chunk, f"the client exited before saying {line!r}: {self.heard!r}"
                self.heard += chunk

    async def kill(self) -> None:
        self.process.kill()
        with trio.fail_after(STARTUP):
            assert await self.process.wait() == -signal.SIGKILL
        assert b"returned" not in self.heard


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    """Starts :data:`CLIENT` processes; kills those still running at teardown."""
    started: list[Client] = []

    async def start(*args: str) -> Client:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", CLIENT, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=daemon_env(),
        )
        client = Client(process)
        started.append(client)
        return client

    try:
        yield start
    finally:
        with trio.CancelScope(shield=True):
            for client in started:
                if client.process.poll() is None:
                    client.process.kill()
                with trio.move_on_after(STARTUP):
                    await client.process.wait()
                if client.process.stdout is not None:
                    await client.process.stdout.aclose()


# -- clients that die mid-call -------------------------------------------------------------------


async def test_clients_killed_mid_wait_and_mid_stop_harm_nothing(
    daemons: Daemons, reaper: Reaper, clients: Any, tmp_path: Path
) -> None:
    grace = 3.0
    daemon = await daemons.start()
    ready = Fifo(tmp_path / "ready")
    try:
        async with connect(daemons.socket) as remote:
            await remote.create("bystander", sandboxer="sim")
            await remote.start("bystander")
            await remote.create("victim", sandboxer="process", options=stubborn(ready.path))
            pid = (await remote.start("victim")).pid
            reaper.add(pid)
            assert await ready.read_all() == b"ready\n"
    finally:
        ready.close()

    async with connect(daemons.socket) as remote:
        # A Wait whose client dies: the sandbox is untouched.
        waiter = await clients(daemons.socket, "wait", "victim")
        await waiter.until(b"sent")
        await waiter.kill()
        status = await remote.status("victim")
        assert (status.state, status.pid) == (SandboxState.READY, pid)
        assert is_alive(pid)
        await remote.ping("victim")

        # A Stop whose client dies: the stop goes on and escalates at its deadline.
        stop_sent = time.monotonic()
        stopper = await clients(daemons.socket, "stop", "victim", str(grace))
        await stopper.until(b"sent")
        # Polled: nothing but this Stop makes the sandbox ``stopping``.
        with trio.fail_after(STARTUP):
            while True:
                if (await remote.status("victim")).state is SandboxState.STOPPING:
                    break
                await trio.sleep(PROBE_INTERVAL)
        await stopper.kill()
        assert is_alive(pid)

        # Other clients are unaffected meanwhile.
        async with connect(daemons.socket) as other:
            assert (await other.version())["protocol"] == 1
            assert (await other.status("bystander")).state is SandboxState.READY
            assert [s.sandbox_id for s in await other.list()] == ["bystander", "victim"]

        exit_status = await remote.wait("victim")
        assert exit_status.exit_status == KILLED
        assert time.monotonic() - stop_sent >= grace
        await all_ended([pid])
        status = await remote.status("victim")
        assert status.state is SandboxState.STOPPED
        assert status.info["exit_status"] == str(KILLED)
        assert "exit_status_known" not in status.info
        assert (await remote.status("bystander")).state is SandboxState.READY
        await remote.shutdown("victim")
        await remote.shutdown("bystander")
        assert await remote.list() == []
    assert daemon.process.poll() is None
    assert "Traceback" not in daemon.output(), daemon.output()


# -- sandboxes that resist or scatter ------------------------------------------------------------


async def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(
    reaper: Reaper, fifo: Fifo
) -> None:
    grace = 0.5
    async with open_controller(backends=[ProcessBackend()]) as controller:
        await controller.create("stubborn", options=stubborn(fifo.path))
        pid = (await controller.start("stubborn")).pid
        reaper.add(pid)
        assert await fifo.read_all() == b"ready\n"
        began = time.monotonic()
        with trio.fail_after(STARTUP):
            await controller.stop("stubborn", timeout_secs=grace)
        assert time.monotonic() - began >= grace
        assert (await controller.wait("stubborn")).exit_status == KILLED
        status = await controller.status("stubborn")
        assert (status.state, status.info["exit_status"]) == (SandboxState.STOPPED, str(KILLED))
        await all_ended([pid])
        await controller.shutdown("stubborn")


# The init starts two background sleeps -- one its child, one orphaned by a subshell that
# exits at once -- says so, waits for a line on a FIFO, then exits 0, leaving them behind.
SCATTER = """\
sleep 1000 &
( sleep 1000 >/dev/null 2>&1 & )
echo ready > {ready}
read line < {go}
exit 0
"""


@pytest.mark.parametrize("sandboxer", ["process", "bwrap"])
async def test_children_left_behind_by_an_exiting_init_do_not_survive_shutdown(
    sandboxer: str, reaper: Reaper, tmp_path: Path
) -> None:
    if sandboxer == "bwrap":
        reason = BwrapBackend().unavailable_reason()
        if reason is not None:
            pytest.fail(f"bubblewrap cannot run here ({reason}): tools/test installs it")
    # With bwrap the test's directory (under /tmp) is bound read-write over the sandbox's
    # private /tmp, so the FIFOs are reachable from inside.
    rootfs = (
        [
            Mount("bind", "/", "/", ("ro",)),
            Mount("proc", "proc", "/proc"),
            Mount("dev", "dev", "/dev"),
            Mount("tmpfs", "tmpfs", "/tmp"),
            Mount("bind", str(tmp_path), str(tmp_path), ("rw",)),
        ]
        if sandboxer == "bwrap"
        else []
    )
    ready = Fifo(tmp_path / "ready")
    go_path = tmp_path / "go"
    os.mkfifo(go_path)
    # Open read-write: never blocks, and keeps the line in the FIFO until the init reads it.
    go = os.open(go_path, os.O_RDWR | os.O_NONBLOCK)
    try:
        async with open_controller(backends=[ProcessBackend(), BwrapBackend()]) as controller:
            script = SCATTER.format(ready=ready.path, go=go_path)
            await controller.create(
                "scatter",
                sandboxer=sandboxer,
                options=SandboxOptions(command=["sh", "-c", script]),
                rootfs=rootfs,
            )
            pid = (await controller.start("scatter")).pid
            reaper.add(pid)
            assert await ready.read_all() == b"ready\n"
            members = sandbox_members(sandboxer, pid)
            for member in members:
                reaper.add(member)
            # sh and its two sleeps (which may not have exec'd yet), and bwrap as the
            # namespace's init.
            assert len(members) == (4 if sandboxer == "bwrap" else 3), members

            os.write(go, b"go\n")
            assert (await controller.wait("scatter")).exit_status == 0
            await controller.shutdown("scatter")
            with pytest.raises(NotFound):
                await controller.status("scatter")
            await all_ended(members)
            assert [m for m in members if is_alive(m)] == []
    finally:
        os.close(go)
        ready.close()


# -- a disk that refuses writes ------------------------------------------------------------------


def integrity(database: Path) -> list[str]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("PRAGMA integrity_check")]


def refused(error: RPCError) -> bool:
    return isinstance(error, ResourceExhausted | Unavailable) and "refused the write" in str(error)


async def test_a_disk_refusing_writes_fails_calls_clearly_and_corrupts_nothing(
    daemons: Daemons,
) -> None:
    # A first run creates the database; its clean exit folds the WAL into it and deletes it.
    first = await daemons.start()
    async with connect(daemons.socket) as remote:
        await remote.create("before", sandboxer="sim")
    assert await first.terminate() == 0, first.output()
    size = daemons.database.stat().st_size
    assert not (daemons.state_dir / f"{DATABASE}-wal").exists()

    # Again with RLIMIT_FSIZE: no file of the daemon may grow past the limit, so once the WAL
    # reaches it SQLite's writes fail for real (EFBIG; Python ignores SIGXFSZ).  The limit
    # leaves room for the shared-memory index, which SQLite needs just to read.
    limit = max(size, SHM_SIZE)
    limited = await daemons.start(prefix=["prlimit", f"--fsize={limit}:{limit}", "--"])
    acknowledged = ["before"]
    ready: list[str] = []
    async with connect(daemons.socket) as remote:
        # Creates until one is refused: nothing was created then.
        for n in range(200):
            try:
                acknowledged.append(await remote.create(f"s{n}", sandboxer="sim"))
            except RPCError as exc:
                assert refused(exc), repr(exc)
                with pytest.raises(NotFound):
                    await remote.status(f"s{n}")
                break
        else:
            pytest.fail(f"the WAL grew past {limit} bytes without a refusal")
        assert len(acknowledged) > 1, "not a single write fitted under the limit"

        # Starts until one cannot be recorded: it happened, but the caller is told so.
        unrecorded = None
        for sandbox_id in acknowledged:
            try:
                await remote.start(sandbox_id)
            except (ResourceExhausted, Unavailable) as exc:
                assert "done, but not recorded" in str(exc), repr(exc)
                assert "refused the write" in str(exc), repr(exc)
                assert (await remote.status(sandbox_id)).state is SandboxState.READY
                unrecorded = sandbox_id
                break
            ready.append(sandbox_id)
        assert unrecorded is not None, "every Start was recorded past the size limit"

        # The daemon keeps serving, its state in memory intact.
        async with connect(daemons.socket) as other:
            assert (await other.version())["protocol"] == 1
            assert [s.sandbox_id for s in await other.list()] == sorted(acknowledged)
    assert limited.process.poll() is None
    assert "cannot record its state" in limited.output()
    await limited.crash()

    # The database is sound and holds exactly what was acknowledged...
    assert integrity(daemons.database) == ["ok"]
    records = stored_records(daemons.database)
    assert sorted(records) == sorted(acknowledged)
    for sandbox_id, record in records.items():
        assert record["phase"] == ("ready" if sandbox_id in ready else "created"), sandbox_id

    # ... which a daemon without the limit takes up (the sims that ran could not be adopted).
    after = await daemons.start()
    async with connect(daemons.socket) as remote:
        states = {s.sandbox_id: s.state for s in await remote.list()}
        assert states == {
            sandbox_id: SandboxState.STOPPED if sandbox_id in ready else SandboxState.CREATED
            for sandbox_id in acknowledged
        }
        # And it takes writes again.
        await remote.create("after", sandboxer="sim")
        assert stored_records(daemons.database)["after"]["phase"] == "created"
    assert await after.terminate() == 0, after.output()
    assert integrity(daemons.database) == ["ok"]
