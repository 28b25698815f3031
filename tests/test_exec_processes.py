"""Execs and files through the in-process Controller, with real processes (the ``process``
backend): the runtime's promises -- output apart and in order, stdin, timeouts that kill a
whole tree, the sandbox's fate shared by its execs, callers that leave -- held by real
pipes and real signals.

No sleeps: a script says where it is through a FIFO or its output, deaths are awaited on
pidfds, and the watchdog only guards against hangs.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from procs import Fifo, all_ended, is_alive
from sandboxd import FailedPrecondition
from sandboxd._models import (
    STDERR,
    STDOUT,
    ExecExit,
    ExecRequest,
    SandboxOptions,
    SandboxState,
)
from sandboxd.runtime import Controller

pytestmark = pytest.mark.usefixtures("watchdog")
#: Real seconds a test with real processes may take before it is a hang.
GUARD = 20

KILLED = ExecExit(137, False, 9)


@pytest.fixture
def controller(sandboxd_controller: Controller) -> Controller:
    """The plugin's Controller; it shuts down what a test leaves."""
    return sandboxd_controller


async def sandbox(
    controller: Controller, sandbox_id: str = "sb", *command: str, **options: Any
) -> int:
    """A started process sandbox running ``command`` (default: a long sleep)."""
    argv = command or ("sleep", "1000")
    await controller.create(
        sandbox_id, sandboxer="process", options=SandboxOptions(command=argv, **options)
    )
    return (await controller.start(sandbox_id)).pid


def sh(script: str, *args: str, **kwargs: Any) -> ExecRequest:
    return ExecRequest(("sh", "-c", script, "sh", *args), **kwargs)


def execs(controller: Controller, sandbox_id: str = "sb") -> int:
    return int(controller.status_nowait(sandbox_id).info["execs"])


async def test_exec_sync_runs_a_command_in_the_sandbox(controller: Controller) -> None:
    await sandbox(controller)
    result = await controller.exec_sync("sb", sh("echo out; echo err >&2; exit 3"))
    assert (result.stdout, result.stderr, result.exit_status) == (b"out\n", b"err\n", 3)
    assert (result.timed_out, result.truncated, result.signal) == (False, False, None)
    missing = await controller.exec_sync("sb", ExecRequest(["no-such-command-sandboxd"]))
    assert missing.exit_status == 127


async def test_the_command_gets_the_sandboxes_env_and_cwd(
    controller: Controller, tmp_path: Path
) -> None:
    await sandbox(controller, env={"A": "sandbox", "B": "sandbox"}, cwd=str(tmp_path))
    result = await controller.exec_sync("sb", sh('echo "$A $B $PATH"; pwd', env={"B": "exec"}))
    first, cwd = result.stdout.decode().splitlines()
    assert first.startswith("sandbox exec /")
    assert cwd == str(tmp_path)
    elsewhere = await controller.exec_sync("sb", ExecRequest(["pwd"], cwd="/"))
    assert elsewhere.stdout == b"/\n"


async def test_stdin_and_streams_of_a_real_pipe(controller: Controller) -> None:
    await sandbox(controller)
    async with controller.exec("sb", sh("cat; echo done >&2", stdin=True)) as proc:
        assert is_alive(proc.pid)
        await proc.write(b"x" * 200_000)
        await proc.close_stdin()
        out = bytearray()
        err = bytearray()
        async for chunk in proc:
            (out if chunk.stream == STDOUT else err).extend(chunk.data)
            assert chunk.stream in (STDOUT, STDERR)
        assert await proc.wait() == ExecExit(0)
    assert (bytes(out), bytes(err)) == (b"x" * 200_000, b"done\n")


async def test_a_timeout_kills_the_whole_tree(controller: Controller, fifo: Fifo) -> None:
    await sandbox(controller)
    script = 'sleep 1000 & echo $! > "$1"; wait'
    result = await controller.exec_sync("sb", sh(script, str(fifo.path), timeout_secs=0.5))
    assert (result.exit_status, result.timed_out, result.signal) == (137, True, 9)
    grandchild = int(await fifo.read_all())
    await all_ended([grandchild])
    assert not is_alive(grandchild)


async def test_stop_kills_execs_that_ignore_sigterm(controller: Controller, fifo: Fifo) -> None:
    await sandbox(controller)
    script = "trap '' TERM; echo ready > \"$1\"; sleep 1000 & wait"
    async with controller.exec("sb", sh(script, str(fifo.path))) as proc:
        assert await fifo.read_all() == b"ready\n"
        assert execs(controller) == 1
        await controller.stop("sb", timeout_secs=30)
        # The init died of SIGTERM at once; its exit killed the exec.
        assert (await controller.wait("sb")).exit_status == 143
        assert execs(controller) == 0
        assert await proc.wait() == KILLED


async def test_the_init_exiting_kills_execs_and_shutdown_waits_for_them(
    controller: Controller,
) -> None:
    init = await sandbox(controller)
    async with controller.exec("sb", ExecRequest(["sleep", "1000"])) as proc:
        pid = proc.pid
        os.kill(init, signal.SIGUSR1)  # the init dies of its own accord, not by a Stop
        assert (await controller.wait("sb")).exit_status == 128 + signal.SIGUSR1
        assert not is_alive(pid)
        assert await proc.wait() == KILLED
    await controller.shutdown("sb")


async def test_leaving_the_block_kills_the_command(controller: Controller) -> None:
    await sandbox(controller)
    async with controller.exec("sb", ExecRequest(["sleep", "1000"])) as proc:
        pid = proc.pid
        assert is_alive(pid)
    await all_ended([pid])
    assert execs(controller) == 0
    assert controller.status_nowait("sb").state is SandboxState.READY


async def test_exec_sync_truncates_a_long_output_and_runs_to_the_end(
    controller: Controller,
) -> None:
    await sandbox(controller)
    script = "head -c 3000000 /dev/zero; echo end >&2"
    result = await controller.exec_sync("sb", sh(script), max_output_bytes=100_000)
    assert result.stdout == bytes(100_000)
    assert (result.stderr, result.truncated, result.exit_status) == (b"end\n", True, 0)


async def test_files_move_in_and_out(controller: Controller, tmp_path: Path) -> None:
    await sandbox(controller)
    target = tmp_path / "in.bin"

    async def chunks() -> Any:
        for _ in range(3):
            yield b"abc" * 100_000

    assert await controller.write_file("sb", str(target), chunks(), mode=0o600) == 900_000
    assert target.read_bytes() == b"abc" * 300_000
    assert target.stat().st_mode & 0o777 == 0o600
    async with controller.read_file("sb", str(target)) as reading:
        data = b"".join([chunk async for chunk in reading])
    assert data == b"abc" * 300_000
    assert await controller.write_file("sb", str(target), b"short") == 5
    assert target.read_bytes() == b"short"
    await controller.stop("sb")
    with pytest.raises(FailedPrecondition, match="'sb' is stopped"):
        await controller.write_file("sb", str(target), b"late")
    assert target.stat().st_size == 5


async def test_closing_the_runtime_kills_execs() -> None:
    async with trio.open_nursery() as runtime:
        controller: Controller = await runtime.start(Controller(default_sandboxer="process").run)
        init = await sandbox(controller)
        session = controller.exec("sb", ExecRequest(["sleep", "1000"]))
        proc = await session.__aenter__()
        pid = proc.pid
        runtime.cancel_scope.cancel()
    await all_ended([pid])
    assert await proc.wait() == KILLED
    # The sandbox is not the runtime's: it keeps running (the test's reaper is its end).
    assert is_alive(init)
    os.killpg(init, signal.SIGKILL)
    await all_ended([init])
