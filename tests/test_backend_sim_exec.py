"""The sim backend's execs: scripts on trio's (autojump) clock, bounded pipes, signals."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from sandboxd import FailedPrecondition, InvalidArgument
from sandboxd._models import SandboxOptions, SandboxSpec, WindowSize
from sandboxd.backends import ExecSpec, SimBackend
from sandboxd.backends._sim import FIRST_SIM_PID, SIM_PIPE_CAPACITY, SimExec, SimProcess
from test_backend_sim import start


def spec(*command: str, **kwargs: Any) -> ExecSpec:
    return ExecSpec("e", command, {}, "/", **kwargs)


@asynccontextmanager
async def sandbox(**sim: Any) -> AsyncIterator[SimProcess]:
    async with trio.open_nursery() as nursery:
        process, _ = await start(SimBackend(), nursery, sim or None)
        yield process
        process.signal(signal.SIGKILL)


async def output(stream: trio.abc.ReceiveStream | None) -> bytes:
    assert stream is not None
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def finished(run: SimExec) -> tuple[int, bytes, bytes]:
    out, err = await output(run.stdout), await output(run.stderr)
    return await run.wait(), out, err


async def test_a_script_runs_in_order_and_its_last_status_is_the_execs(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with sandbox() as process:
        run = await process.exec(spec("echo", "a", ";", "stderr", "b", ";", "false"))
        assert run.pid == FIRST_SIM_PID + 1
        assert await finished(run) == (1, b"a\n", b"b\n")
        assert await finished(await process.exec(spec("exit", "7", ";", "echo", "x"))) == (
            7,
            b"",
            b"",
        )
        missing = await finished(await process.exec(spec("frob")))
        assert missing == (127, b"", b"sim: frob: command not found\n")
        bad = await finished(await process.exec(spec("sleep", "soon")))
        assert bad == (1, b"", b"sleep: invalid time\n")
        start = trio.current_time()
        assert await finished(await process.exec(spec("sleep", "2.5"))) == (0, b"", b"")
        assert trio.current_time() - start == pytest.approx(2.5)


async def test_signals_end_an_exec_as_subprocess_reports_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with sandbox() as process:
        run = await process.exec(spec("hang"))
        run.kill(0)
        run.kill(signal.SIGTERM)
        assert await run.wait() == -signal.SIGTERM
        trapped = await process.exec(spec("trap", ";", "hang"))
        await trio.testing.wait_all_tasks_blocked()
        trapped.kill(signal.SIGTERM)
        trapped.kill(signal.SIGINT)
        with trio.move_on_after(10):
            await trapped.wait()
            raise AssertionError("a trapped exec ended on SIGTERM")  # pragma: no cover
        trapped.kill()
        assert await trapped.wait() == -signal.SIGKILL
        trapped.kill()  # nothing once it has ended


async def test_pipes_are_bounded_and_cat_copies_stdin(autojump_clock: trio.abc.Clock) -> None:
    async with sandbox() as process:
        run = await process.exec(spec("cat", stdin=True))
        assert run.stdin is not None
        data = b"z" * (5 * SIM_PIPE_CAPACITY)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.stdin.send_all, data)
            await trio.testing.wait_all_tasks_blocked()
            # Nobody reads stdout: cat is blocked on it, and so is the writer: both pipes are full.
            assert nursery.child_tasks
            received = await run.stdout.receive_some(len(data))
            assert len(received) == SIM_PIPE_CAPACITY
            rest = bytearray(received)
            while len(rest) < len(data):
                rest += await run.stdout.receive_some()
        await run.stdin.aclose()
        assert await run.wait() == 0
        assert bytes(rest) == data


async def test_a_reader_that_leaves_breaks_the_writer(autojump_clock: trio.abc.Clock) -> None:
    async with sandbox() as process:
        run = await process.exec(spec("yes", str(4 * SIM_PIPE_CAPACITY)))
        await trio.testing.wait_all_tasks_blocked()
        await run.aclose()
        assert await run.wait() == -signal.SIGPIPE


async def test_a_tty_exec_has_one_stream_and_a_window(autojump_clock: trio.abc.Clock) -> None:
    async with sandbox() as process:
        run = await process.exec(
            spec("stty", ";", "sleep", "1", ";", "stty", tty=True, window=WindowSize(2, 3))
        )
        assert run.stderr is None
        await trio.testing.wait_all_tasks_blocked()  # the first stty has written
        run.resize(4, 5)
        assert await output(run.stdout) == b"2 3\n4 5\n"
        plain = await process.exec(spec("stty"))
        assert await finished(plain) == (1, b"", b"stty: not a tty\n")


async def test_exec_faults_and_a_dead_sandbox(autojump_clock: trio.abc.Clock) -> None:
    async with sandbox(exec_error="no fork", exec_delay=3) as process:
        start = trio.current_time()
        with pytest.raises(FailedPrecondition, match="no fork"):
            await process.exec(spec("true"))
        assert trio.current_time() - start == pytest.approx(3)
    async with sandbox() as process:
        process.signal(signal.SIGKILL)
        with pytest.raises(FailedPrecondition, match="the sandbox has exited"):
            await process.exec(spec("true"))
        with pytest.raises(FailedPrecondition, match="no files"):
            process.open_file("/etc/hostname", write=False)
        assert process.output is None


@pytest.mark.parametrize(
    ("sim", "message"),
    [
        ({"exec_error": 3}, "exec_error: must be text"),
        ({"exec_delay": -1}, "exec_delay: must be a finite number >= 0"),
    ],
)
def test_exec_settings_are_checked(sim: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        SimBackend().validate(SandboxSpec("s", "sim", SandboxOptions(sim=sim)))
