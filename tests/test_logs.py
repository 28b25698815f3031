"""A sandbox's own output, through the in-process Controller: Logs, with real processes and
real bubblewrap.

Nothing sleeps to let time pass.  A sandbox that must wait for the test reads a line from a
gate (a FIFO the test holds open for writing, :class:`Gate`); the test waits for output by
following Logs, for exits through Wait, for a process's word through a FIFO.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from daemons import Daemons
from procs import Fifo, Reaper
from sandboxd import FailedPrecondition, InvalidArgument, NotFound, SandboxOptions, connect
from sandboxd._models import STDERR, STDOUT, LogChunk, LogGap
from sandboxd.backends import BwrapBackend, ProcessBackend
from sandboxd.cli._serve import main as serve_main
from sandboxd.runtime import Controller, LogReader, SandboxStore, open_controller

pytestmark = pytest.mark.usefixtures("watchdog")
#: Real seconds a test may take before it is a hang.
GUARD = 60

Item = LogChunk | LogGap


class Gate:
    """A FIFO a sandbox reads lines from (``read x < PATH``): each :meth:`open` lets one
    such read through."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        # Held for reading and writing: lines wait in it, and opening never blocks.
        self.fd = os.open(path, os.O_RDWR)

    def open(self) -> None:
        os.write(self.fd, b"\n")

    def wait(self) -> str:
        """The shell command that waits for one :meth:`open`."""
        return f"read x < {self.path}"


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path / "gate")


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
async def controller(log_dir: Path) -> AsyncIterator[Controller]:
    async with running(log_dir) as controller:
        yield controller


def running(log_dir: Path, **options: Any) -> AbstractAsyncContextManager[Controller]:
    """A Controller keeping output in ``log_dir``, its (default) backends making their pipes
    there."""
    options.setdefault("default_sandboxer", "process")
    return open_controller(log_dir=log_dir, **options)


async def started(controller: Controller, sandbox_id: str, script: str, **kwargs: str) -> int:
    options = SandboxOptions(command=("sh", "-c", script))
    await controller.create(sandbox_id, options=options, **kwargs)  # type: ignore[arg-type]
    return (await controller.start(sandbox_id)).pid


async def everything(reader: LogReader) -> list[Item]:
    async with reader:
        return [item async for item in reader]


def joined(items: list[Item], stream: str) -> bytes:
    return b"".join(i.data for i in items if isinstance(i, LogChunk) and i.stream == stream)


async def next_item(reader: LogReader) -> Item:
    with trio.fail_after(GUARD):
        return await reader.__anext__()


# -- what is kept ---------------------------------------------------------------------------------


async def test_stdout_and_stderr_apart_in_the_order_read(
    controller: Controller, gate: Gate
) -> None:
    before = datetime.now(UTC)
    script = f"printf out1; {gate.wait()}; printf err1 >&2; {gate.wait()}; printf out2"
    await controller.create("sb", options=SandboxOptions(command=("sh", "-c", script)))
    async with controller.logs("sb", follow=True) as logs:
        await controller.start("sb")
        items = [await next_item(logs)]
        gate.open()
        items.append(await next_item(logs))
        gate.open()
        items += [item async for item in logs]  # ends once the sandbox has stopped
    after = datetime.now(UTC)
    assert [(i.stream, i.data) for i in items if isinstance(i, LogChunk)] == [
        (STDOUT, b"out1"),
        (STDERR, b"err1"),
        (STDOUT, b"out2"),
    ]
    stamps = [i.timestamp for i in items if isinstance(i, LogChunk)]
    assert before - timedelta(milliseconds=1) <= stamps[0] <= stamps[1] <= stamps[2] <= after
    assert (await controller.wait("sb")).exit_status == 0
    # Read again, from disk, after the stop: the same.
    assert await everything(controller.logs("sb")) == items


async def test_bwrap_output_is_kept_apart(controller: Controller) -> None:
    reason = BwrapBackend().unavailable_reason()
    if reason is not None:
        pytest.fail(f"bubblewrap cannot run here ({reason}): tools/test installs it")
    await started(controller, "boxed", "echo out; echo err >&2; hostname", sandboxer="bwrap")
    assert (await controller.wait("boxed")).exit_status == 0
    items = await everything(controller.logs("boxed"))
    assert joined(items, STDOUT) == b"out\nboxed\n"
    assert joined(items, STDERR) == b"err\n"


async def test_bwraps_own_errors_are_told(controller: Controller, tmp_path: Path) -> None:
    # Before the sandbox exists: in Start's error.
    not_a_netns = tmp_path / "netns"
    not_a_netns.touch()
    await controller.create("nonet", sandboxer="bwrap", netns_path=str(not_a_netns))
    with pytest.raises(
        FailedPrecondition,
        match=r"\(exit status 1: nsenter: reassociate to namespace 'ns/net' failed",
    ):
        await controller.start("nonet")
    # Once the namespaces exist, before the command runs: in Start's error too.
    options = SandboxOptions(command=("true",), cwd="/no/such/dir")
    await controller.create("nocwd", sandboxer="bwrap", options=options)
    with pytest.raises(FailedPrecondition, match=r"bwrap: Can't chdir to /no/such/dir"):
        await controller.start("nocwd")
    assert (await controller.status("nocwd")).state.value == "created"
    # Once the command runs: on its stderr.
    options = SandboxOptions(command=("sh", "-c", "echo failing >&2; exit 1"))
    await controller.create("fails", sandboxer="bwrap", options=options)
    await controller.start("fails")
    assert (await controller.wait("fails")).exit_status == 1
    stderr = joined(await everything(controller.logs("fails")), STDERR)
    assert stderr == b"failing\n"


async def test_tail_bytes(controller: Controller, gate: Gate) -> None:
    # Two chunks: the tail starts in the middle of the second.
    await controller.create(
        "sb",
        options=SandboxOptions(command=("sh", "-c", f"printf 0123; {gate.wait()}; printf 456789")),
    )
    async with controller.logs("sb", follow=True) as logs:
        await controller.start("sb")
        await next_item(logs)
        gate.open()
        assert len([item async for item in logs]) == 1
    for tail, expected in [(4, [b"6789"]), (6, [b"456789"]), (7, [b"3", b"456789"])]:
        items = await everything(controller.logs("sb", tail_bytes=tail))
        assert [i.data for i in items if isinstance(i, LogChunk)] == expected
    whole = await everything(controller.logs("sb", tail_bytes=100))
    assert [i.data for i in whole if isinstance(i, LogChunk)] == [b"0123", b"456789"]
    assert await everything(controller.logs("sb", tail_bytes=0)) == []


async def test_since_drops_what_was_read_before(controller: Controller, gate: Gate) -> None:
    await controller.create(
        "sb", options=SandboxOptions(command=("sh", "-c", f"printf a; {gate.wait()}; printf b"))
    )
    async with controller.logs("sb", follow=True) as logs:
        await controller.start("sb")
        first = await next_item(logs)
        gate.open()
        rest = [item async for item in logs]
    assert isinstance(first, LogChunk) and [i.data for i in rest] == [b"b"]  # type: ignore[union-attr]
    second = rest[0]
    assert isinstance(second, LogChunk)
    assert first.timestamp < second.timestamp
    assert await everything(controller.logs("sb", since=second.timestamp)) == [second]
    assert await everything(controller.logs("sb", since=first.timestamp)) == [first, second]
    later = second.timestamp + timedelta(microseconds=1)
    assert await everything(controller.logs("sb", since=later)) == []


async def test_bad_arguments_and_unknown_sandboxes(controller: Controller) -> None:
    with pytest.raises(NotFound, match="nope"):
        controller.logs("nope")
    await controller.create("sim", sandboxer="sim")
    with pytest.raises(InvalidArgument, match="tail_bytes"):
        controller.logs("sim", tail_bytes=-1)
    with pytest.raises(InvalidArgument, match="since"):
        controller.logs("sim", since=datetime(2020, 1, 1))  # naive


# -- following ------------------------------------------------------------------------------------


async def test_follow_waits_for_the_start_and_ends_at_the_stop(controller: Controller) -> None:
    await controller.create("pause")  # the pause process: it writes nothing
    assert await everything(controller.logs("pause")) == []
    items: list[Item] = []
    ended = trio.Event()

    async def follow() -> None:
        items.extend(await everything(controller.logs("pause", follow=True)))
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await controller.start("pause")
        await trio.testing.wait_all_tasks_blocked()
        assert not ended.is_set()
        await controller.stop("pause")
        with trio.fail_after(GUARD):
            await ended.wait()
    assert items == []


async def test_a_sim_sandbox_has_no_output(controller: Controller) -> None:
    await controller.create("sim", sandboxer="sim")
    await controller.start("sim")
    assert await everything(controller.logs("sim")) == []
    async with trio.open_nursery() as nursery:
        result: list[list[Item]] = []

        async def follow() -> None:
            result.append(await everything(controller.logs("sim", follow=True)))

        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        assert result == []
        await controller.stop("sim")
    assert result == [[]]


# -- rotation -------------------------------------------------------------------------------------


def files(directory: Path) -> dict[str, bool]:
    """The files in ``directory``, and whether each holds at most 100 bytes."""
    return {p.name: p.stat().st_size <= 100 for p in directory.iterdir()}


def check_contiguous(items: list[Item], whole: bytes) -> int:
    """That ``items`` are ``whole`` in order, each gap standing for exactly the bytes it
    replaces; the bytes lost."""
    at = lost = 0
    for item in items:
        if isinstance(item, LogGap):
            assert item.lost_bytes > 0
            at += item.lost_bytes
            lost += item.lost_bytes
        else:
            assert whole[at : at + len(item.data)] == item.data, (at, item)
            at += len(item.data)
    assert at == len(whole)
    return lost


async def test_rotation_reports_exactly_what_was_lost(log_dir: Path, gate: Gate) -> None:
    # 20 lines of 3 bytes, one record each (the sandbox waits for the test between two);
    # a record takes 24 bytes, so a file of at most 100 bytes holds 4, and two files 8.
    lines = 20
    script = f"for i in $(seq -w 10 {9 + lines}); do echo $i; {gate.wait()}; done"
    async with running(log_dir, max_log_bytes=100) as controller:
        await controller.create("sb", options=SandboxOptions(command=("sh", "-c", script)))
        async with (
            controller.logs("sb", follow=True) as slow,
            controller.logs("sb", follow=True) as fast,
        ):
            await controller.start("sb")
            first = await next_item(slow)
            # The slow reader holds back while the sandbox writes far more than is kept.
            for _ in range(lines):
                await next_item(fast)
                gate.open()
            await controller.wait("sb")
            rest = [item async for item in slow]
        whole = b"".join(b"%d\n" % i for i in range(10, 10 + lines))
        lost = check_contiguous([first, *rest], whole)
        assert lost > 0
        # A reader from the start: the gap first, where the lost output stood.
        again = await everything(controller.logs("sb"))
        assert isinstance(again[0], LogGap)
        assert check_contiguous(again, whole) == again[0].lost_bytes
        assert [i for i in again[1:] if isinstance(i, LogChunk)] == again[1:]
        assert joined(again, STDOUT) == b"".join(b"%d\n" % i for i in range(22, 30))
        assert files(log_dir) == {"sb.log": True, "sb.log.1": True}


async def test_a_sandbox_writing_much_with_no_reader_keeps_running(
    controller: Controller, fifo: Fifo
) -> None:
    # 8 MiB: far past any pipe's buffer, so it ends only if the daemon drains it.
    await started(
        controller,
        "talker",
        f"head -c 8388608 /dev/zero; head -c 1048576 /dev/zero >&2; echo done > {fifo.path}",
    )
    assert await fifo.read_all() == b"done\n"
    assert (await controller.wait("talker")).exit_status == 0
    items = await everything(controller.logs("talker", tail_bytes=16))
    assert b"".join(i.data for i in items if isinstance(i, LogChunk)) == b"\0" * 16


# -- the end of a sandbox -------------------------------------------------------------------------


async def test_shutdown_removes_the_output_and_a_reused_id_starts_empty(
    controller: Controller, log_dir: Path
) -> None:
    await started(controller, "sb", "echo old")
    await controller.wait("sb")
    assert joined(await everything(controller.logs("sb")), STDOUT) == b"old\n"
    assert "sb.log" in files(log_dir)
    await controller.shutdown("sb")
    assert files(log_dir) == {}
    with pytest.raises(NotFound):
        controller.logs("sb")
    await controller.create("sb", options=SandboxOptions(command=("echo", "new")))
    assert await everything(controller.logs("sb")) == []
    await controller.start("sb")
    await controller.wait("sb")
    assert joined(await everything(controller.logs("sb")), STDOUT) == b"new\n"


@pytest.mark.parametrize("end", ["shutdown", "drain"])
async def test_a_follower_ends_at_a_shutdown_or_when_the_controller_drains(
    controller: Controller, reaper: Reaper, end: str
) -> None:
    reaper.add(await started(controller, "sb", "echo hello; exec sleep 1000"))
    async with controller.logs("sb", follow=True) as logs:
        first = await next_item(logs)
        assert isinstance(first, LogChunk) and first.data == b"hello\n"
        if end == "shutdown":
            await controller.shutdown("sb")
        else:
            controller.drain()  # the daemon is going away: the sandbox runs on
        assert [item async for item in logs] == []
    if end == "drain":
        await controller.shutdown("sb")


async def test_without_a_log_dir_output_is_kept_until_the_controller_ends() -> None:
    async with open_controller([ProcessBackend()]) as controller:
        await started(controller, "sb", "echo hi")
        await controller.wait("sb")
        assert joined(await everything(controller.logs("sb")), STDOUT) == b"hi\n"
        directory = Path(controller.status_nowait("sb", verbose=True).info["log"]).parent
        assert directory.exists()
    assert not directory.exists()


# -- restarts -------------------------------------------------------------------------------------


def reap(pid: int) -> None:
    """Reap ``pid``, a child of ours that has ended."""
    os.waitpid(pid, 0)


async def test_output_written_while_the_daemon_is_down_is_read_after_a_restart(
    tmp_path: Path, log_dir: Path, gate: Gate, fifo: Fifo, reaper: Reaper
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    script = f"echo before; {gate.wait()}; echo after; echo wrote > {fifo.path}; {gate.wait()}"
    store = SandboxStore.open(state)
    try:
        async with running(log_dir, store=store) as first:
            pid = await started(first, "sb", script)
            reaper.add(pid)
            async with first.logs("sb", follow=True) as logs:
                assert isinstance(await next_item(logs), LogChunk)
    finally:
        store.close()
    # Nobody reads: the sandbox writes all the same, and is not hurt by it.
    gate.open()
    assert await fifo.read_all() == b"wrote\n"
    store = SandboxStore.open(state)
    try:
        async with running(log_dir, store=store) as second:
            async with second.logs("sb", follow=True) as logs:
                items = [await next_item(logs), await next_item(logs)]
                gate.open()
                items += [item async for item in logs]
            assert (await second.wait("sb")).exit_status == 255  # adopted: unknown
            reap(pid)  # the first run's child, which the second could not reap
    finally:
        store.close()
    assert [i.data for i in items if isinstance(i, LogChunk)] == [b"before\n", b"after\n"]


async def test_output_survives_a_crash_of_the_daemon(
    daemons: Daemons, gate: Gate, fifo: Fifo, reaper: Reaper
) -> None:
    script = f"echo before; {gate.wait()}; echo after; echo wrote > {fifo.path}; {gate.wait()}"
    first = await daemons.start()
    async with connect(daemons.socket) as remote:
        await remote.create("sb", options=SandboxOptions(command=("sh", "-c", script)))
        reaper.add((await remote.start("sb")).pid)
    await first.crash()
    # Nobody reads: the sandbox writes all the same, and is not hurt by it.
    gate.open()
    assert await fifo.read_all() == b"wrote\n"
    # The next daemon takes it up, drains its pipes, and keeps what they held when it stops.
    second = await daemons.start()
    assert await second.terminate() == 0, second.output()
    store = SandboxStore.open(daemons.state_dir)
    try:
        async with running(daemons.state_dir / "logs", store=store) as after:
            items = await everything(after.logs("sb"))
    finally:
        store.close()
    assert items == [i for i in items if isinstance(i, LogChunk)]
    assert joined(items, STDOUT) == b"before\nafter\n"


def tear(path: Path) -> bytes:
    """Append half a record's header to ``path``, as a crash mid-write leaves it; what it
    held before."""
    whole = path.read_bytes()
    path.write_bytes(whole + whole[:10])
    return whole


async def test_a_record_cut_short_by_a_crash_is_cut_off(tmp_path: Path, log_dir: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = SandboxStore.open(state)
    try:
        async with running(log_dir, store=store) as first:
            await started(first, "sb", "echo kept")
            await first.wait("sb")
    finally:
        store.close()
    whole = tear(log_dir / "sb.log")
    store = SandboxStore.open(state)
    try:
        async with running(log_dir, store=store) as second:
            items = await everything(second.logs("sb"))
            assert [(i.stream, i.data) for i in items if isinstance(i, LogChunk)] == [
                (STDOUT, b"kept\n")
            ]
            assert items == [i for i in items if isinstance(i, LogChunk)]
    finally:
        store.close()
    assert (log_dir / "sb.log").read_bytes() == whole


async def test_serve_refuses_a_max_log_bytes_below_1(capsys: pytest.CaptureFixture[str]) -> None:
    await trio.lowlevel.checkpoint()
    with pytest.raises(SystemExit) as exited:
        serve_main(["serve", "--max-log-bytes", "0"])
    assert exited.value.code == 2
    assert "--max-log-bytes: must be at least 1, not 0" in capsys.readouterr().err
