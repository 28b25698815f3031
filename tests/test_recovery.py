"""Durable state and restart recovery, with the real ``sandboxd serve`` executable.

Each test runs the installed daemon as a subprocess on a state directory of its own, kills it
with SIGKILL (a crash: nothing is flushed or closed), starts it again on the same directory
and checks, through a client on the socket, that every sandbox came back as described in
``SandboxActor.restore``: adopted when its process still runs (same pid and start time),
``stopped`` with the stand-in exit status 255 when it ended unobserved, a Stop in progress
resuming its kill deadline.  The database itself is read with :mod:`sqlite3` (read-only while
the daemon runs: WAL lets readers in beside the writer) to check what is on disk.

Waiting: a starting daemon says when it serves (``--ready-fd``, see ``daemons.ReadyPipe``);
one test polls the database for the row of a Stop in progress (every PROBE_INTERVAL seconds,
for at most STARTUP seconds: the daemon tells nobody when a record is written).  Every other
wait is on an event: a FIFO, a pidfd, a reply.

Sandbox processes outlive the daemon by design, so every test hands the pids it learns to
the ``reaper`` fixture, which SIGKILLs them (and their groups) at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio

from daemons import (
    DATABASE,
    PROBE_INTERVAL,
    SANDBOXD,
    STARTUP,
    Daemons,
    daemon_env,
    stored_records,
)
from procs import Fifo, Reaper, all_ended, is_alive, pid_namespace, start_ticks
from sandboxd import (
    BwrapBackend,
    NotFound,
    SandboxOptions,
    SandboxState,
    Unavailable,
    connect,
)

#: The stand-in exit status of a sandbox whose process ended unobserved.
EXIT_UNKNOWN = 255


# -- processes -----------------------------------------------------------------------------------


def namespace_members(namespace: str) -> list[int]:
    """Host pids of the live processes of a pid namespace."""
    return [
        int(name)
        for name in os.listdir("/proc")
        if name.isdigit() and pid_namespace(name) == namespace and is_alive(int(name))
    ]


async def sleeper_and_a_crash(daemons: Daemons, reaper: Reaper, sandbox_id: str) -> int:
    """Start a daemon, a process sandbox that sleeps in it (reaped at teardown), then SIGKILL
    the daemon; the sandbox's pid."""
    first = await daemons.start()
    async with connect(daemons.socket) as remote:
        await remote.create(sandbox_id, sandboxer="process", options=sleeper())
        pid = (await remote.start(sandbox_id)).pid
        reaper.add(pid)
    await first.crash()
    return pid


class Boxed(NamedTuple):
    """A bwrap sandbox left running by a daemon that was SIGKILLed."""

    init: int
    #: The bwrap process outside the sandbox's pid namespace.
    outer: int
    namespace: str
    #: Host pids of the namespace's processes when the daemon was killed.
    members: list[int]


async def boxed_sandbox_and_a_crash(daemons: Daemons, reaper: Reaper) -> Boxed:
    """Start a daemon, a bwrap sandbox ``boxed`` in it (its processes reaped at teardown),
    then SIGKILL the daemon."""
    reason = BwrapBackend().unavailable_reason()
    if reason is not None:
        pytest.fail(f"bubblewrap cannot run here ({reason}): tools/test installs it")
    first = await daemons.start()
    async with connect(daemons.socket) as remote:
        await remote.create("boxed", sandboxer="bwrap", options=sleeper())
        init = (await remote.start("boxed")).pid
        reaper.add(init)
        outer = int((await remote.status("boxed", verbose=True)).info["bwrap_pid"])
        reaper.add(outer)
        namespace = pid_namespace(init)
        assert namespace is not None and namespace != pid_namespace(os.getpid())
        members = namespace_members(namespace)
        assert len(members) >= 2, members  # bwrap as the namespace's init, and sleep
    await first.crash()
    return Boxed(init, outer, namespace, members)


# -- the database --------------------------------------------------------------------------------


def edit_record(database: Path, sandbox_id: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite one record with ``edit(document)`` (the daemon must not be running)."""
    with closing(sqlite3.connect(database)) as db:
        (text,) = db.execute(
            "SELECT record FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,)
        ).fetchone()
        document = json.loads(text)
        edit(document)
        db.execute(
            "UPDATE sandboxes SET record = ? WHERE sandbox_id = ?",
            (json.dumps(document), sandbox_id),
        )
        db.commit()


def sleeper(seconds: int = 1000) -> SandboxOptions:
    return SandboxOptions(command=["sleep", str(seconds)])


def assert_exit_unknown(info: Mapping[str, str]) -> None:
    assert info.get("exit_status") == str(EXIT_UNKNOWN), info
    assert info.get("exit_status_known") == "false", info
    assert "restart" in info.get("exit_status_note", ""), info


# -- recovery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("durable", [False, True], ids=["normal", "durable"])
async def test_sim_sandboxes_come_back_in_their_states_after_sigkill(
    daemons: Daemons, durable: bool
) -> None:
    # Commits on the event loop (the default) or in a worker thread (--durable); the next
    # daemon runs in the other mode on the same database.
    first = await daemons.start(args=["--durable"] if durable else [])
    async with connect(daemons.socket) as remote:
        await remote.create("created", sandboxer="sim", labels={"keep": "me"})
        await remote.create("started", sandboxer="sim")
        started_pid = (await remote.start("started")).pid
        await remote.create("stopped", sandboxer="sim")
        await remote.start("stopped")
        await remote.stop("stopped")
        stopped_exit = await remote.wait("stopped")
        before = {s.sandbox_id: s for s in await remote.list()}
    assert started_pid > 0
    await first.crash()

    await daemons.start(args=[] if durable else ["--durable"])
    async with connect(daemons.socket) as remote:
        after = {s.sandbox_id: s for s in await remote.list()}
        assert sorted(after) == ["created", "started", "stopped"], first.output()
        for sandbox_id, status in after.items():
            assert status.created_at == before[sandbox_id].created_at, sandbox_id

        created = after["created"]
        assert created.state is SandboxState.CREATED
        assert (created.pid, created.exited_at) == (0, None)
        assert "exit_status" not in created.info
        assert (await remote.list({"keep": "me"}))[0].sandbox_id == "created"

        # A sim process cannot be adopted: it ended with the daemon that simulated it.
        started = after["started"]
        assert started.state is SandboxState.STOPPED
        assert started.exited_at is not None
        assert_exit_unknown(started.info)
        assert (await remote.wait("started")).exit_status == EXIT_UNKNOWN

        stopped = after["stopped"]
        assert stopped.state is SandboxState.STOPPED
        assert stopped.info["exit_status"] == str(stopped_exit.exit_status)
        assert "exit_status_known" not in stopped.info
        assert stopped.exited_at == stopped_exit.exited_at
        again = await remote.wait("stopped")
        assert (again.exit_status, again.exited_at) == (
            stopped_exit.exit_status,
            stopped_exit.exited_at,
        )

        # The recovered sandboxes take calls as any other.
        await remote.start("created")
        for sandbox_id in after:
            await remote.shutdown(sandbox_id)
        assert await remote.list() == []
    assert stored_records(daemons.database) == {}


async def test_live_process_sandbox_is_adopted_after_sigkill(
    daemons: Daemons, reaper: Reaper
) -> None:
    pid = await sleeper_and_a_crash(daemons, reaper, "sleeper")
    assert is_alive(pid), "the sandbox died with the daemon"

    second = await daemons.start()
    async with connect(daemons.socket) as remote:
        status = await remote.status("sleeper", verbose=True)
        assert status.state is SandboxState.READY, second.output()
        assert status.pid == pid
        assert "exit_status" not in status.info
        assert f"adopted its running process {pid}" in second.output()
        assert (await remote.metrics("sleeper")).pids == 1

        # No longer the daemon's child: its real exit status is unknowable, 255 stands in.
        await remote.stop("sleeper", timeout_secs=5)
        await all_ended([pid])
        status = await remote.status("sleeper")
        assert status.state is SandboxState.STOPPED
        assert_exit_unknown(status.info)
        assert (await remote.wait("sleeper")).exit_status == EXIT_UNKNOWN
        await remote.shutdown("sleeper")
        with pytest.raises(NotFound):
            await remote.status("sleeper")
    assert not is_alive(pid)
    assert stored_records(daemons.database) == {}


async def test_process_that_died_while_the_daemon_was_down_is_stopped_255(
    daemons: Daemons, reaper: Reaper
) -> None:
    pid = await sleeper_and_a_crash(daemons, reaper, "doomed")
    os.killpg(pid, signal.SIGKILL)
    await all_ended([pid])

    await daemons.start()
    async with connect(daemons.socket) as remote:
        status = await remote.status("doomed")
        assert status.state is SandboxState.STOPPED
        assert status.exited_at is not None
        assert_exit_unknown(status.info)
        assert (await remote.wait("doomed")).exit_status == EXIT_UNKNOWN
        await remote.shutdown("doomed")
    # The resolved state was written back, then the deletion.
    assert stored_records(daemons.database) == {}


async def test_a_reused_pid_is_never_adopted(daemons: Daemons, reaper: Reaper) -> None:
    pid = await sleeper_and_a_crash(daemons, reaper, "impostor")

    # The recorded process "ended" and another took its pid: same pid, other start time.
    recorded = stored_records(daemons.database)["impostor"]
    assert recorded["pid"] == pid
    assert recorded["identity"]["start_time"] == start_ticks(pid)

    def other_start_time(document: dict[str, Any]) -> None:
        document["identity"]["start_time"] += 1

    edit_record(daemons.database, "impostor", other_start_time)

    await daemons.start()
    async with connect(daemons.socket) as remote:
        status = await remote.status("impostor")
        assert status.state is SandboxState.STOPPED
        assert_exit_unknown(status.info)
        await remote.stop("impostor", timeout_secs=0)
        await remote.shutdown("impostor")
        with pytest.raises(NotFound):
            await remote.status("impostor")
    assert is_alive(pid), "the daemon signalled a process that is not its sandbox's"
    os.killpg(pid, signal.SIGKILL)
    await all_ended([pid])


async def test_a_stop_in_progress_resumes_its_kill_deadline_after_sigkill(
    daemons: Daemons, reaper: Reaper, tmp_path: Path
) -> None:
    grace = 3.0
    ready = Fifo(tmp_path / "ready")
    try:
        first = await daemons.start()
        async with connect(daemons.socket) as remote:
            await remote.create("bystander", sandboxer="sim")
            stubborn = SandboxOptions(
                command=["sh", "-c", f'trap "" TERM; echo ready > {ready.path}; exec sleep 1000']
            )
            await remote.create("stubborn", sandboxer="process", options=stubborn)
            pid = (await remote.start("stubborn")).pid
            reaper.add(pid)
            assert await ready.read_all() == b"ready\n"
    finally:
        ready.close()

    stop_errors: list[BaseException] = []
    stop_sent = time.time()

    async def stop() -> None:
        async with connect(daemons.socket) as remote:
            try:
                await remote.stop("stubborn", timeout_secs=grace)
            except Unavailable as exc:
                stop_errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop)
        # Polled: the daemon says nothing when the Stop's record is on disk.
        with trio.fail_after(STARTUP):
            while True:
                record = stored_records(daemons.database)["stubborn"]
                if record["phase"] == "stopping":
                    break
                await trio.sleep(PROBE_INTERVAL)
        assert record["kill_at"] is not None
        assert stop_sent + grace - 0.5 <= record["kill_at"] <= time.time() + grace
        await first.crash()
    assert len(stop_errors) == 1, "the Stop's caller was not told the daemon went away"
    assert is_alive(pid), "the sandbox ignoring SIGTERM died with the daemon"

    second = await daemons.start()
    restarted = time.time()
    async with connect(daemons.socket) as remote:
        assert (await remote.status("bystander")).state is SandboxState.CREATED
        status = await remote.status("stubborn")
        if restarted < record["kill_at"]:
            assert status.state is SandboxState.STOPPING, second.output()
        exit_status = await remote.wait("stubborn")
        ended = time.time()
        assert exit_status.exit_status == EXIT_UNKNOWN
        # SIGKILLed at the recorded deadline: not at the restart, not a new grace later.
        assert ended >= record["kill_at"] - 0.05
        assert ended <= max(record["kill_at"], restarted) + 2.0
        await all_ended([pid])
        status = await remote.status("stubborn")
        assert status.state is SandboxState.STOPPED
        assert_exit_unknown(status.info)
        await remote.shutdown("stubborn")
        await remote.shutdown("bystander")
    assert stored_records(daemons.database) == {}


async def test_a_bwrap_sandbox_survives_sigkill_and_is_adopted(
    daemons: Daemons, reaper: Reaper
) -> None:
    init, outer, namespace, members = await boxed_sandbox_and_a_crash(daemons, reaper)
    assert sorted(namespace_members(namespace)) == sorted(members), "it died with the daemon"

    second = await daemons.start()
    async with connect(daemons.socket) as remote:
        status = await remote.status("boxed", verbose=True)
        assert status.state is SandboxState.READY, second.output()
        assert status.pid == init
        assert status.info["bwrap_pid"] == str(outer)
        await remote.stop("boxed", timeout_secs=5)
        assert (await remote.wait("boxed")).exit_status == EXIT_UNKNOWN
        status = await remote.status("boxed")
        assert status.state is SandboxState.STOPPED
        assert_exit_unknown(status.info)
        await remote.shutdown("boxed")
    await all_ended([*members, outer])
    assert namespace_members(namespace) == []
    assert not is_alive(outer)


async def test_bwrap_adopted_sandbox_is_killed_by_shutdown(
    daemons: Daemons, reaper: Reaper
) -> None:
    _, outer, namespace, members = await boxed_sandbox_and_a_crash(daemons, reaper)
    await daemons.start()
    async with connect(daemons.socket) as remote:
        assert (await remote.status("boxed")).state is SandboxState.READY
        await remote.shutdown("boxed")
        with pytest.raises(NotFound):
            await remote.status("boxed")
    await all_ended([*members, outer])
    assert namespace_members(namespace) == []


# -- the database itself -------------------------------------------------------------------------


def garbage(database: Path) -> None:
    database.write_bytes(b"this is not an SQLite database\n" * 200)


def directory(database: Path) -> None:
    database.mkdir()
    (database / "inside").write_bytes(b"keep")


def undecodable_record(database: Path) -> None:
    with closing(sqlite3.connect(database)) as db:
        db.executescript(
            "PRAGMA journal_mode=WAL;"  # as the daemon keeps it: opening it changes nothing
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE sandboxes (sandbox_id TEXT PRIMARY KEY, record TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema', '1');"
            "INSERT INTO sandboxes VALUES ('broken', '{\"spec\": 7');"
        )


def exists(path: str) -> bool:
    return os.path.lexists(path)


def snapshot(path: Path) -> Any:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in path.iterdir()}
    return path.read_bytes()


@pytest.mark.parametrize("damage", [garbage, directory, undecodable_record])
async def test_an_unusable_database_stops_the_daemon_and_is_kept(
    damage: Any, sock_path: str, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    database = state_dir / DATABASE
    damage(database)
    before = snapshot(database)

    with trio.fail_after(STARTUP):
        result = await trio.run_process(
            [SANDBOXD, "serve", "--socket", sock_path, "--state-dir", str(state_dir)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=daemon_env(),
        )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("sandboxd: ")]
    assert any(str(database) in line for line in lines), stderr
    assert any("never replaced" in line for line in lines), stderr
    assert snapshot(database) == before, "the daemon changed the database it refused"
    assert not exists(sock_path), "the daemon listened with an unusable database"


async def test_records_are_on_disk_before_calls_return(daemons: Daemons, reaper: Reaper) -> None:
    await daemons.start()
    async with connect(daemons.socket) as remote:
        await remote.create("sim", sandboxer="sim", labels={"a": "b"})
        record = stored_records(daemons.database)["sim"]
        assert record["phase"] == "created"
        assert record["spec"]["labels"] == {"a": "b"}

        pid = (await remote.start("sim")).pid
        record = stored_records(daemons.database)["sim"]
        assert (record["phase"], record["pid"]) == ("ready", pid)

        await remote.stop("sim")
        record = stored_records(daemons.database)["sim"]
        exit_status = await remote.wait("sim")
        assert (record["phase"], record["exit_status"]) == ("stopped", exit_status.exit_status)

        await remote.create("proc", sandboxer="process", options=sleeper())
        assert stored_records(daemons.database)["proc"]["phase"] == "created"
        pid = (await remote.start("proc")).pid
        reaper.add(pid)
        record = stored_records(daemons.database)["proc"]
        assert (record["phase"], record["pid"]) == ("ready", pid)
        assert record["identity"]["start_time"] == start_ticks(pid)

        await remote.shutdown("sim")
        assert "sim" not in stored_records(daemons.database)
        await remote.shutdown("proc")
        assert stored_records(daemons.database) == {}
    await all_ended([pid])


async def test_a_lifetime_that_ran_out_while_the_daemon_was_down_stops_at_once(
    daemons: Daemons, reaper: Reaper
) -> None:
    first = await daemons.start()
    async with connect(daemons.socket) as remote:
        options = SandboxOptions(command=["sleep", "1000"], lifetime_secs=600)
        await remote.create("mortal", sandboxer="process", options=options)
        before = time.time()
        pid = (await remote.start("mortal")).pid
        reaper.add(pid)
    await first.crash()
    # The deadline is recorded, as wall-clock time.
    record = stored_records(daemons.database)["mortal"]
    assert before + 600 <= record["expire_at"] <= time.time() + 600
    assert record["spec"]["options"]["lifetime_secs"] == 600

    def expired(document: dict[str, Any]) -> None:
        document["expire_at"] = time.time() - 1

    edit_record(daemons.database, "mortal", expired)
    await daemons.start()
    async with connect(daemons.socket) as remote:
        with trio.fail_after(STARTUP):
            await all_ended([pid])
            # The daemon may not have reaped it yet: its Wait answers once it has.
            await remote.wait("mortal")
            status = await remote.status("mortal")
        assert status.state is SandboxState.STOPPED
        assert status.info["reason"] == "lifetime_expired"
        await remote.shutdown("mortal")


async def test_a_lifetime_is_kept_across_a_restart(daemons: Daemons, reaper: Reaper) -> None:
    first = await daemons.start()
    async with connect(daemons.socket) as remote:
        options = SandboxOptions(command=["sleep", "1000"], lifetime_secs=1.5)
        await remote.create("mortal", sandboxer="process", options=options)
        pid = (await remote.start("mortal")).pid
        reaper.add(pid)
        started = time.time()
    await first.crash()
    await daemons.start()
    restarted = time.time()
    async with connect(daemons.socket) as remote:
        with trio.fail_after(STARTUP + 1.5):
            await all_ended([pid])
        # At the recorded deadline, not a new lifetime from the restart.
        assert time.time() <= max(started + 1.5, restarted) + 1.0
        status = await remote.status("mortal")
        assert status.info["reason"] == "lifetime_expired"
        await remote.shutdown("mortal")
