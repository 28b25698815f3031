"""Safe defaults: the default sandboxer is ``bwrap`` where bubblewrap runs, ``process`` (which
isolates nothing) only where it cannot."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from daemons import SANDBOXD, Daemons
from sandboxd import FailedPrecondition, InvalidArgument, LogChunk, connect
from sandboxd._models import Mount, SandboxOptions, SandboxState
from sandboxd.backends import BwrapBackend, ProcessBackend, SimBackend, _bwrap
from sandboxd.backends._process import OutputPipes
from sandboxd.runtime import DEFAULT_SANDBOXER, Controller, open_controller, preferred_sandboxer
from sandboxd.testing import shutdown_all

#: Real seconds a test with real processes may take before it is a hang.
GUARD = 15

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


# -- the host view, mounts bubblewrap refuses (real bubblewrap) -----------------------------------


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    async with open_controller([BwrapBackend()], default_sandboxer="bwrap") as running:
        try:
            yield running
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(GUARD):
                await shutdown_all(running)


async def run_to_end(controller: Controller, sandbox_id: str, script: str, **kw: Any) -> int:
    options = SandboxOptions(command=("sh", "-c", script))
    with trio.fail_after(GUARD):
        await controller.create(sandbox_id, options=options, **kw)
        await controller.start(sandbox_id)
        return (await controller.wait(sandbox_id)).exit_status


HOST_ROOT = Mount("bind", "/", "/", ("ro",))


@needs_bwrap
async def test_binding_the_host_root_shows_neither_its_tmp_nor_its_proc(
    controller: Controller, tmp_path: Path
) -> None:
    assert str(tmp_path).startswith("/tmp/")
    marker = tmp_path / "secret"
    marker.write_text("host")
    outside = os.getpid()  # this test's pid: not a pid of the sandbox's namespace
    script = (
        f"test ! -e {marker} || exit 10; test ! -e /proc/{outside} || exit 11; "
        "test -e /proc/self/status || exit 12; touch /tmp/scratch || exit 13; "
        "test -c /dev/null || exit 14; exit 0"
    )
    assert await run_to_end(controller, "view", script, rootfs=[HOST_ROOT]) == 0


@needs_bwrap
async def test_a_mount_of_tmp_given_explicitly_is_kept(
    controller: Controller, tmp_path: Path
) -> None:
    (tmp_path / "shared").write_text("yes")
    rootfs = [HOST_ROOT, Mount("bind", str(tmp_path), "/tmp", ("rw",))]
    assert await run_to_end(controller, "own", "test -e /tmp/shared", rootfs=rootfs) == 0


@needs_bwrap
async def test_create_refuses_a_target_that_cannot_be_made_under_a_read_only_bind(
    controller: Controller, tmp_path: Path
) -> None:
    rootfs = [HOST_ROOT, Mount("bind", str(tmp_path), "/no-such-dir-sbd/x", ("rw",))]
    with pytest.raises(InvalidArgument, match=r"rootfs\[1\].*/no-such-dir-sbd/x"):
        await controller.create("nope", rootfs=rootfs)
    # Under the private /tmp (a tmpfs) it can be made.
    rootfs = [HOST_ROOT, Mount("bind", str(tmp_path), "/tmp/made/here", ("rw",))]
    assert await run_to_end(controller, "made", "test -d /tmp/made/here", rootfs=rootfs) == 0


@needs_bwrap
async def test_start_fails_with_bubblewraps_message_when_it_refuses_a_mount(
    controller: Controller,
) -> None:
    # Under /proc nothing can be made; Create cannot know that, bubblewrap finds out.
    rootfs = [HOST_ROOT, Mount("tmpfs", "tmpfs", "/proc/no-such-dir-sbd")]
    options = SandboxOptions(command=("true",))
    with trio.fail_after(GUARD):
        await controller.create("refused", options=options, rootfs=rootfs)
        with pytest.raises(FailedPrecondition, match=r"bwrap: .*/proc/no-such-dir-sbd"):
            await controller.start("refused")
    assert (await controller.status("refused")).state is SandboxState.CREATED


@needs_bwrap
async def test_a_command_that_fails_at_once_keeps_its_output(controller: Controller) -> None:
    # More than one read's worth, all of it kept in order.
    script = "echo 'not bwrap' >&2; seq 1 5000 >&2; exit 1"
    assert await run_to_end(controller, "quick", script) == 1
    with trio.fail_after(GUARD):
        async with controller.logs("quick") as logs:
            said = b"".join([chunk.data async for chunk in logs if isinstance(chunk, LogChunk)])
    numbers = "".join(f"{n}\n" for n in range(1, 5001))
    assert said.decode() == "not bwrap\n" + numbers


class Exited:
    """A process that has exited with ``status`` (what _refused_setup waits for)."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def wait(self) -> int:
        return self.status


def written(data: bytes) -> OutputPipes:
    """Output pipes whose stderr holds ``data``, the writer gone."""
    pipes = OutputPipes(None, "sb")
    os.write(pipes.child[1], data)
    pipes.spawned()
    return pipes


def drained(fd: int) -> bytes:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    return data


async def test_a_setup_refusal_is_told_by_bubblewraps_message() -> None:
    refusal = b"bwrap: Can't mkdir /x: Read-only file system\n"
    told = r"refused to set it up: bwrap: Can't mkdir"
    with written(refusal) as pipes, pytest.raises(FailedPrecondition, match=told):
        await _bwrap._refused_setup(Exited(1), pipes, "sb")  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [1, 0])
async def test_output_of_a_command_that_ended_at_once_is_left_in_order(status: int) -> None:
    output = b"not bubblewrap\n" + b"x" * 20000
    with written(output) as pipes:
        await _bwrap._refused_setup(Exited(status), pipes, "sb")  # type: ignore[arg-type]
        assert drained(pipes.stderr) == output
