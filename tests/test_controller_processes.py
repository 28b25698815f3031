"""The in-process Controller with real processes (the ``process`` backend).

The tests never sleep to let time pass: exits are awaited through Wait, deaths through
pidfds, readiness through a FIFO; the watchdog only guards against hangs.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from background import in_background
from procs import Fifo, is_alive
from sandboxd import FailedPrecondition, NotFound
from sandboxd._models import SandboxOptions, SandboxState
from sandboxd.runtime import Controller
from sim_controller import state

pytestmark = pytest.mark.usefixtures("watchdog")
#: Real seconds a test with real processes may take before it is a hang.
GUARD = 10


@pytest.fixture
def sandboxd_controller_options() -> dict[str, Any]:
    """The Controller's defaults: ``process`` is its default sandboxer."""
    return {}


@pytest.fixture
def controller(sandboxd_controller: Controller) -> Controller:
    """The plugin's Controller (``sim`` and ``process``); it shuts down what a test leaves."""
    assert sandboxd_controller.default_sandboxer == "process"
    return sandboxd_controller


async def run_command(controller: Controller, sandbox_id: str, *command: str) -> int:
    await controller.create(sandbox_id, options=SandboxOptions(command=command))
    return (await controller.start(sandbox_id)).pid


async def test_process_exit_status_is_reported(controller: Controller) -> None:
    await run_command(controller, "sb", "sh", "-c", "exit 7")
    result = await controller.wait("sb")
    assert result.exit_status == 7
    status = await controller.status("sb")
    assert status.state is SandboxState.STOPPED
    assert status.exited_at == result.exited_at
    assert status.exited_at is not None
    assert status.exited_at >= status.created_at
    assert status.info["exit_status"] == "7"


async def test_process_death_by_signal_is_128_plus_n(controller: Controller) -> None:
    await run_command(controller, "sb", "sh", "-c", "kill -USR1 $$")
    assert (await controller.wait("sb")).exit_status == 128 + signal.SIGUSR1


async def test_process_stop_sends_sigterm(controller: Controller) -> None:
    pid = await run_command(controller, "sb", "sleep", "1000")
    status = await controller.status("sb", verbose=True)
    assert (status.state, status.pid) == (SandboxState.READY, pid)
    os.kill(pid, 0)  # a real, live process
    assert is_alive(pid)
    assert status.info["command"] == "sleep 1000"
    assert status.exited_at is None
    assert (await controller.metrics("sb")).pids >= 1

    await controller.stop("sb")
    assert (await controller.status("sb")).state is SandboxState.STOPPED
    result = await controller.wait("sb")
    assert result.exit_status == 143
    assert (await controller.status("sb")).exited_at == result.exited_at
    assert not is_alive(pid)
    await controller.shutdown("sb")


async def test_process_ignoring_sigterm_is_killed_after_the_timeout(
    controller: Controller, fifo: Fifo
) -> None:
    # The program says "ready" on the FIFO once SIGTERM is ignored, so the Stop cannot race
    # the interpreter's start.
    program = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "with open(sys.argv[1], 'w') as f: f.write('ready')\n"
        "time.sleep(1000)\n"
    )
    async with trio.open_nursery() as nursery:
        pid = await run_command(controller, "sb", sys.executable, "-c", program, str(fifo.path))
        assert await fifo.read_all() == b"ready"
        t0 = trio.current_time()
        stop = in_background(nursery, lambda: controller.stop("sb", timeout_secs=0.5))
        await trio.testing.wait_all_tasks_blocked()
        assert state(controller, "sb") is SandboxState.STOPPING
        await stop.done.wait()
        assert stop.error is None
        assert stop.at is not None
        assert stop.at - t0 >= 0.5
        assert (await controller.wait("sb")).exit_status == 137
        assert not is_alive(pid)


@pytest.mark.parametrize("stop_first", [False, True])
async def test_nothing_of_the_process_group_survives_shutdown(
    controller: Controller, fifo: Fifo, stop_first: bool
) -> None:
    # The child ignores SIGTERM, so only a SIGKILL to the group ends it.  It says its pid
    # once it ignores SIGTERM, then becomes `sleep` (which inherits SIG_IGN).
    child_script = "trap '' TERM; echo $$ > \"$0\"; exec sleep 1000"
    pid = await run_command(
        controller,
        "sb",
        "sh",
        "-c",
        'sh -c "$1" "$2" & wait',
        "sh",
        child_script,
        str(fifo.path),
    )
    child = int(await fifo.read_all())
    child_fd = os.pidfd_open(child)
    try:
        assert is_alive(child)
        if stop_first:
            await controller.stop("sb")
            assert (await controller.wait("sb")).exit_status == 143
        await controller.shutdown("sb")
        with pytest.raises(NotFound):
            await controller.status("sb")
        await trio.lowlevel.wait_readable(child_fd)  # readable once it has exited
        assert not is_alive(child)  # gone, or a zombie nobody reaped yet
        assert not is_alive(pid)
    finally:
        os.close(child_fd)


async def test_start_of_a_vanished_executable_leaves_the_sandbox_created(
    controller: Controller, tmp_path: Path
) -> None:
    script = tmp_path / "init"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    await controller.create("sb", options=SandboxOptions(command=(str(script),)))
    script.unlink()
    with pytest.raises(FailedPrecondition, match="init"):
        await controller.start("sb")
    status = await controller.status("sb")
    assert (status.state, status.pid, status.exited_at) == (SandboxState.CREATED, 0, None)
    await controller.shutdown("sb")
    with pytest.raises(NotFound):
        await controller.status("sb")
