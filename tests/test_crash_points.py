"""A crash at any step of a Start, Stop or Shutdown leaves no process nobody accounts for.

Each case runs the real ``sandboxd serve`` with one crash point armed
(``SANDBOXD_CRASH_AT``: the daemon SIGKILLs itself there), drives one sandbox to that point,
starts a daemon again on the same state directory and checks, for the ``process`` and
``bwrap`` sandboxers alike:

- every live process of the sandbox belongs to the process its Status reports (none when it
  is ``created`` or ``stopped``): a Start held at its gate exits by itself, one recorded but
  cut short is killed by recovery;
- a Start after the restart makes one sandbox, not a second;
- a Shutdown after the restart leaves nothing running.

The last test drives a backend in process: a Start whose pid cannot be recorded runs nothing.

A sandbox's processes are found by a marker in their environment (the test's, set through
``options.env``, which every process of the sandbox inherits).  Waits are on pidfds and on
the daemon's exit; nothing sleeps.  Processes are handed to the ``reaper`` fixture as well.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from daemons import STARTUP, Daemon, Daemons
from procs import Reaper, all_ended, is_alive, pid_namespace, proc_pgrp, proc_state, start_ticks
from sandboxd import (
    BwrapBackend,
    NotFound,
    ProcessBackend,
    RemoteController,
    RPCError,
    SandboxOptions,
    SandboxState,
    SandboxStatus,
    connect,
)
from sandboxd._models import SandboxSpec
from sandboxd.runtime._crash import CRASH_AT_VARIABLE, CRASH_POINTS

MARK = "SANDBOXD_TEST_SANDBOX"

SANDBOXERS = ["process", "bwrap"]


def marked(token: str) -> list[int]:
    """Live processes whose environment carries ``MARK=token``."""
    entry = f"{MARK}={token}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if entry in environ and is_alive(int(name)):
            found.append(int(name))
    return found


def belongs(pid: int, status: SandboxStatus, sandboxer: str) -> bool:
    """Whether ``pid`` is a process of the running sandbox ``status`` describes."""
    if sandboxer == "process":
        try:
            return proc_pgrp(pid) == status.pid
        except OSError:
            return True  # gone meanwhile
    outer = int(status.info.get("bwrap_pid", "0"))
    namespace = pid_namespace(pid)
    return pid == outer or namespace is None or namespace == pid_namespace(status.pid)


async def status_or_none(remote: RemoteController, sandbox_id: str) -> SandboxStatus | None:
    try:
        return await remote.status(sandbox_id, verbose=True)
    except NotFound:
        return None


async def crash_during(daemon: Daemon, call: Callable[[], Awaitable[object]]) -> None:
    """Make ``call``, which the daemon does not survive; return once it has died."""

    async def make_call() -> None:
        with contextlib.suppress(RPCError):  # the connection went with the daemon
            await call()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(make_call)
        with trio.fail_after(STARTUP):
            await daemon.process.wait()
        nursery.cancel_scope.cancel()


async def check_after_restart(
    daemons: Daemons, reaper: Reaper, sandboxer: str, token: str, *, start_again: bool = True
) -> None:
    """Start a daemon again; every live process of the sandbox ``box`` is accounted for, a
    Start (of a sandbox left ``created``) makes exactly one, and Shutdown leaves none."""
    for pid in marked(token):
        reaper.add(pid)
    await daemons.start()
    async with connect(daemons.socket) as remote:
        status = await status_or_none(remote, "box")
        if status is None or status.state in (SandboxState.CREATED, SandboxState.STOPPED):
            await all_ended(marked(token))
            assert marked(token) == [], status
        else:
            stray = [pid for pid in marked(token) if not belongs(pid, status, sandboxer)]
            assert stray == [], status
        if status is not None and status.state is SandboxState.CREATED:
            assert status.pid == 0, status
            if start_again:
                await remote.start("box")
                status = await remote.status("box", verbose=True)
                live = marked(token)
                for pid in live:
                    reaper.add(pid)
                assert live, status
                assert [pid for pid in live if not belongs(pid, status, sandboxer)] == []
        if status is not None:
            await remote.shutdown("box")
            with pytest.raises(NotFound):
                await remote.status("box")
    await all_ended(marked(token))
    assert marked(token) == []


def options(token: str, *command: str) -> SandboxOptions:
    return SandboxOptions(command=list(command or ("sleep", "300")), env={MARK: token})


@pytest.fixture(params=SANDBOXERS)
def sandboxer(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "bwrap":
        reason = BwrapBackend().unavailable_reason()
        if reason is not None:
            pytest.fail(f"bubblewrap cannot run here ({reason}): tools/test installs it")
    return name


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_crash_at_any_step_leaves_no_process_unaccounted_for(
    daemons: Daemons, reaper: Reaper, sandboxer: str, point: str
) -> None:
    token = uuid.uuid4().hex
    daemon = await daemons.start(prefix=["env", f"{CRASH_AT_VARIABLE}={point}"])
    async with connect(daemons.socket) as remote:
        await remote.create("box", sandboxer=sandboxer, options=options(token))
        step, _ = point.split(":")
        if step == "start":
            await crash_during(daemon, lambda: remote.start("box"))
        else:
            await remote.start("box")
            if step == "stop":
                await crash_during(daemon, lambda: remote.stop("box", timeout_secs=300))
            else:
                await crash_during(daemon, lambda: remote.shutdown("box"))
    await check_after_restart(daemons, reaper, sandboxer, token)


async def test_a_sandbox_that_kills_the_daemon_as_it_starts_is_accounted_for(
    daemons: Daemons, reaper: Reaper
) -> None:
    # The reproduction: the command kills the daemon the moment it runs, before or
    # after the daemon recorded the sandbox as started.  (Only a process sandbox can: a
    # bwrap one does not see the daemon.)
    token = uuid.uuid4().hex
    daemon = await daemons.start()
    command = ("sh", "-c", "kill -9 $PPID; sleep 300")
    async with connect(daemons.socket) as remote:
        await remote.create("box", sandboxer="process", options=options(token, *command))
        await crash_during(daemon, lambda: remote.start("box"))
    await check_after_restart(daemons, reaper, "process", token, start_again=False)


@pytest.mark.parametrize("point", ["start:spawned", "start:queued"])
async def test_a_process_held_by_a_daemon_that_died_never_runs_its_command(
    daemons: Daemons, reaper: Reaper, tmp_path: Path, point: str
) -> None:
    # Its pid was never committed: the process must end by itself, without running anything.
    token = uuid.uuid4().hex
    ran = tmp_path / "ran"
    daemon = await daemons.start(prefix=["env", f"{CRASH_AT_VARIABLE}={point}"])
    command = ("sh", "-c", 'touch "$0"; exec sleep 300', str(ran))
    async with connect(daemons.socket) as remote:
        await remote.create("box", sandboxer="process", options=options(token, *command))
        await crash_during(daemon, lambda: remote.start("box"))
    held = marked(token)
    for pid in held:
        reaper.add(pid)
    await all_ended(held)
    assert not ran.exists()
    assert marked(token) == []


class Refused(Exception):
    """The store's refusal, as the test's callback raises it."""


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_a_start_whose_pid_cannot_be_recorded_runs_nothing(
    tmp_path: Path, sandboxer: str
) -> None:
    # The backend reports the held process, the record of it fails: the Start fails with
    # that error, and the command never ran.
    backend = ProcessBackend() if sandboxer == "process" else BwrapBackend()
    if backend.unavailable_reason() is not None:
        pytest.fail(f"bubblewrap cannot run here: {backend.unavailable_reason()}")
    ran = tmp_path / "ran"
    command = ("sh", "-c", 'touch "$0"; exec sleep 300', str(ran))
    spec = SandboxSpec("box", sandboxer, SandboxOptions(command=command))
    reported: list[int] = []

    async def refuse(pid: int, identity: Mapping[str, Any]) -> None:
        assert identity["start_time"] == start_ticks(pid)
        reported.append(pid)
        raise Refused("the state database refused the write")

    async with trio.open_nursery() as nursery:
        with pytest.raises(Refused):
            await backend.start(spec, nursery, lambda status: None, refuse)
        assert nursery.child_tasks == frozenset()
    [pid] = reported
    assert proc_state(pid) is None  # killed and reaped
    assert not ran.exists()
