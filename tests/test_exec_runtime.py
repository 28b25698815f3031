"""Execs through the in-process Controller: owned by the sandbox's actor, legal only in
``ready``, killed with their sandbox, timed out, streamed with backpressure.

Sandboxes and execs of the ``sim`` backend (its exec scripts: ``echo``, ``sleep``, ``hang``,
``cat``, ...), under trio's autojump clock (``sim_controller.py``).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from background import in_background
from sandboxd import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from sandboxd._models import (
    STDERR,
    STDOUT,
    TOPIC_DELETE,
    TOPIC_EXEC_EXIT,
    TOPIC_EXEC_START,
    TOPIC_EXIT,
    ExecExit,
    ExecOutput,
    ExecRequest,
    ExecSyncResult,
    ExitStatus,
    SandboxState,
    WindowSize,
)
from sandboxd.backends import DEFAULT_PATH, SandboxProcess, SimBackend
from sandboxd.backends._sim import SIM_PIPE_CAPACITY
from sandboxd.runtime import MAX_EXEC_SYNC_OUTPUT, Controller
from sandboxd.runtime._exec import exit_of
from sim_controller import create, running, started, take

KILLED = ExecExit(137, False, 9)
TERMINATED = ExecExit(143, False, 15)


def run(*command: str, **kwargs: object) -> ExecRequest:
    return ExecRequest(command, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def ready(**sim: Any) -> AsyncIterator[Controller]:
    """A running controller with the sim sandbox ``sb`` started (with ``sim`` settings)."""
    async with running() as (controller, _):
        await started(controller, "sb", **sim)
        yield controller


def execs(controller: Controller, sandbox_id: str) -> int:
    return int(controller.status_nowait(sandbox_id).info["execs"])


# -- running commands ----------------------------------------------------------------------------


async def test_exec_streams_stdout_and_stderr_apart_and_ends_with_the_status(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready() as controller:
        request = run("echo", "hi", ";", "stderr", "oops", ";", "echo", "again", ";", "exit", "3")
        async with controller.exec("sb", request) as proc:
            assert proc.exec_id == "exec-1"
            assert proc.pid > 1000
            chunks = [chunk async for chunk in proc]
            assert await proc.wait() == ExecExit(3)
        assert [c for c in chunks if c.stream == STDOUT] == [
            ExecOutput(STDOUT, b"hi\n"),
            ExecOutput(STDOUT, b"again\n"),
        ]
        assert [c for c in chunks if c.stream == STDERR] == [ExecOutput(STDERR, b"oops\n")]


async def test_exec_sync_returns_output_and_status(autojump_clock: trio.abc.Clock) -> None:
    async with ready() as controller:
        result = await controller.exec_sync("sb", run("echo", "a", "b", ";", "stderr", "c"))
        assert result == ExecSyncResult("exec-1", b"a b\n", b"c\n", 0)
        missing = await controller.exec_sync("sb", run("no-such-command"))
        assert missing.exit_status == 127  # not an error: reported as a shell does
        assert missing.stderr == b"sim: no-such-command: command not found\n"
        assert missing.exec_id == "exec-2"


async def test_stdin_reaches_the_command_and_closing_it_ends_cat(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready() as controller, controller.exec("sb", run("cat", stdin=True)) as proc:
        await proc.write(b"hello ")
        await proc.write(b"world")
        await proc.close_stdin()
        await proc.close_stdin()  # idempotent
        data = b"".join([chunk.data async for chunk in proc])
        assert await proc.wait() == ExecExit(0)
        assert data == b"hello world"


async def test_writing_stdin_of_an_exec_without_one_is_failed_precondition(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready() as controller, controller.exec("sb", run("true")) as proc:
        with pytest.raises(FailedPrecondition, match="has no stdin"):
            await proc.write(b"x")
        with pytest.raises(FailedPrecondition, match="no tty"):
            await proc.resize(24, 80)
        assert await proc.wait() == ExecExit(0)


async def test_a_tty_exec_has_one_stream_and_can_be_resized(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready() as controller:
        request = run("stty", ";", "sleep", "1", ";", "stty", tty=True, window=WindowSize(24, 80))
        async with controller.exec("sb", request) as proc:
            await proc.resize(50, 132)
            with pytest.raises(InvalidArgument, match=r"window\.rows"):
                await proc.resize(0, 80)
            chunks = [chunk async for chunk in proc]
        assert chunks == [ExecOutput(STDOUT, b"24 80\n"), ExecOutput(STDOUT, b"50 132\n")]


async def test_the_command_gets_the_sandbox_env_path_and_cwd_resolved(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandboxd._models import SandboxOptions
    from sandboxd.backends._sim import SimProcess

    specs = []
    original = SimProcess.exec

    async def spy(self: SimProcess, spec):  # type: ignore[no-untyped-def]
        specs.append(spec)
        return await original(self, spec)

    monkeypatch.setattr(SimProcess, "exec", spy)
    async with running() as (controller, _):
        await controller.create(
            "sb", sandboxer="sim", options=SandboxOptions(env={"A": "1", "B": "2"}, cwd="/work")
        )
        await controller.start("sb")
        await controller.exec_sync("sb", run("true", env={"B": "3"}, user="1000:100"))
        await controller.exec_sync(
            "sb", run("true", exec_id="mine", cwd="/tmp", env={"PATH": "/bin"}, user="7")
        )
    first, second = specs
    assert dict(first.env) == {"A": "1", "B": "3", "PATH": DEFAULT_PATH}
    assert (first.cwd, first.uid, first.gid, first.exec_id) == ("/work", 1000, 100, "exec-1")
    assert dict(second.env) == {"A": "1", "B": "2", "PATH": "/bin"}
    assert (second.cwd, second.uid, second.gid, second.exec_id) == ("/tmp", 7, None, "mine")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (run("true", user="root"), "user"),
        (run("true", user="1:2:3"), "user"),
        (run("true", user="-1"), "user"),
        (run("true", cwd="relative"), "cwd"),
        (run("true", env={"A=B": "x"}), "env"),
        (run("true", env={"A": "x\0y"}), "env"),
        (run(), "command"),
        (run("a\0b"), "command"),
        (run("true", exec_id="bad id"), "exec_id"),
        (run("true", exec_id="x" * 77), "exec_id"),
        (run("true", timeout_secs=0), "timeout_secs"),
        (run("true", timeout_secs=float("inf")), "timeout_secs"),
        (run("true", tty=True, window=WindowSize(0, 80)), "window.rows"),
    ],
)
async def test_a_malformed_request_is_invalid_argument_naming_the_field(
    autojump_clock: trio.abc.Clock, request_: ExecRequest, field: str
) -> None:
    async with ready() as controller:
        with pytest.raises(InvalidArgument, match=field):
            async with controller.exec("sb", request_):
                pass  # pragma: no cover
        assert execs(controller, "sb") == 0


# -- legal only in ready -------------------------------------------------------------------------


async def test_exec_outside_ready_is_failed_precondition_naming_the_state(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, _):
        await create(controller, "sb", ignore_sigterm=True)
        with pytest.raises(FailedPrecondition, match="'sb' is created"):
            await controller.exec_sync("sb", run("true"))
        await controller.start("sb")
        async with trio.open_nursery() as nursery:
            stop = in_background(nursery, lambda: controller.stop("sb", timeout_secs=10))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(FailedPrecondition, match="'sb' is stopping"):
                await controller.exec_sync("sb", run("true"))
        await stop.result()
        with pytest.raises(FailedPrecondition, match="'sb' is stopped"):
            await controller.exec_sync("sb", run("true"))
        await controller.shutdown("sb")
        with pytest.raises(NotFound):
            await controller.exec_sync("sb", run("true"))


async def test_an_exec_id_is_unique_among_running_execs_and_free_once_it_ended(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready() as controller:
        async with controller.exec("sb", run("hang", exec_id="exec-2")) as first:
            with pytest.raises(AlreadyExists, match="'exec-2' already exists"):
                await controller.exec_sync("sb", run("true", exec_id="exec-2"))
            # Defaults skip the ids in use.
            assert (await controller.exec_sync("sb", run("true"))).exec_id == "exec-1"
            assert (await controller.exec_sync("sb", run("true"))).exec_id == "exec-3"
            assert execs(controller, "sb") == 1
            first.kill(signal.SIGTERM)
            assert await first.wait() == TERMINATED
        assert execs(controller, "sb") == 0
        result = await controller.exec_sync("sb", run("true", exec_id="exec-2"))
        assert result.exec_id == "exec-2"


async def test_an_exec_that_cannot_start_is_failed_precondition(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready(exec_error="no fork today") as controller, controller.events() as events:
        with pytest.raises(FailedPrecondition, match="no fork today"):
            await controller.exec_sync("sb", run("true"))
        assert execs(controller, "sb") == 0
        await controller.stop("sb")
        assert [e.topic for e in await take(events, 1)] == [TOPIC_EXIT]


# -- the sandbox's fate is its execs' ------------------------------------------------------------


async def test_stop_terminates_execs_and_returns_once_they_are_reaped(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        ready(stop_delay=5) as controller,
        controller.exec("sb", run("hang")) as soft,
        controller.exec("sb", run("trap", ";", "hang")) as stubborn,
    ):
        assert execs(controller, "sb") == 2
        start = trio.current_time()
        await controller.stop("sb", timeout_secs=30)
        # The init took its 5 s; its exit killed the exec that ignored SIGTERM.
        assert trio.current_time() - start == pytest.approx(5)
        assert await soft.wait() == TERMINATED
        assert await stubborn.wait() == KILLED
        assert execs(controller, "sb") == 0
        assert await controller.wait("sb") == ExitStatus(
            143, (await controller.wait("sb")).exited_at
        )


async def test_the_grace_period_ending_kills_execs(autojump_clock: trio.abc.Clock) -> None:
    async with (
        ready(ignore_sigterm=True) as controller,
        controller.exec("sb", run("trap", ";", "hang")) as proc,
    ):
        start = trio.current_time()
        await controller.stop("sb", timeout_secs=3)
        assert trio.current_time() - start == pytest.approx(3)
        assert await proc.wait() == KILLED


async def test_the_init_exiting_on_its_own_kills_every_exec(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, sim):
        pid = await started(controller, "sb")
        async with controller.exec("sb", run("trap", ";", "hang")) as proc:
            sim.exit(pid, 4)
            assert await proc.wait() == KILLED
            status = await controller.wait("sb")
            assert status.exit_status == 4
            assert execs(controller, "sb") == 0


async def test_shutdown_kills_execs_and_waits_until_they_are_reaped(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready() as controller:
        async with controller.events() as events:
            async with controller.exec("sb", run("trap", ";", "hang", exec_id="e")) as proc:
                await controller.shutdown("sb")
                assert await proc.wait() == KILLED
            seen = await take(events, 4)
        assert [(e.topic, e.exec_id, e.exit_status) for e in seen] == [
            (TOPIC_EXEC_START, "e", None),
            (TOPIC_EXEC_EXIT, "e", 137),
            (TOPIC_EXIT, None, 137),
            (TOPIC_DELETE, None, None),
        ]


async def test_a_stop_racing_an_exec_that_is_starting_signals_it_once_it_runs(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready(exec_delay=2, stop_delay=5) as controller:
        async with trio.open_nursery() as nursery:
            entering = in_background(nursery, lambda: controller.exec_sync("sb", run("hang")))
            await trio.testing.wait_all_tasks_blocked()
            assert execs(controller, "sb") == 1
            await controller.stop("sb")
            assert trio.current_time() == pytest.approx(5)
        # Its SIGTERM was kept while it started, and delivered once it ran.
        result = await entering.result()
        assert (result.exit_status, result.signal) == (143, 15)
        assert entering.at == pytest.approx(2)


async def test_an_exec_starting_when_the_init_dies_fails_and_the_exit_waits_for_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready(exec_delay=2) as controller:
        async with trio.open_nursery() as nursery:
            entering = in_background(nursery, lambda: controller.exec_sync("sb", run("hang")))
            await trio.testing.wait_all_tasks_blocked()
            await controller.stop("sb")
            # The init died at once; its exit was recorded once the exec's start was over.
            assert trio.current_time() == pytest.approx(2)
        with pytest.raises(FailedPrecondition, match="the sandbox has exited"):
            await entering.result()
        assert execs(controller, "sb") == 0


# -- timeouts, callers that leave ----------------------------------------------------------------


async def test_a_timeout_kills_the_exec_and_says_so(autojump_clock: trio.abc.Clock) -> None:
    async with ready() as controller:
        start = trio.current_time()
        result = await controller.exec_sync("sb", run("trap", ";", "hang", timeout_secs=2.5))
        assert trio.current_time() - start == pytest.approx(2.5)
        assert (result.exit_status, result.timed_out, result.signal) == (137, True, 9)
        quick = await controller.exec_sync("sb", run("sleep", "1", timeout_secs=2.5))
        assert (quick.exit_status, quick.timed_out) == (0, False)


async def test_leaving_the_block_kills_the_command(autojump_clock: trio.abc.Clock) -> None:
    async with ready() as controller:
        async with controller.events() as events:
            async with controller.exec("sb", run("trap", ";", "hang")):
                assert execs(controller, "sb") == 1
            assert execs(controller, "sb") == 0
            seen = await take(events, 2)
        assert [(e.topic, e.exit_status) for e in seen] == [
            (TOPIC_EXEC_START, None),
            (TOPIC_EXEC_EXIT, 137),
        ]


async def test_a_cancelled_caller_kills_its_exec(autojump_clock: trio.abc.Clock) -> None:
    async with ready() as controller:
        with trio.move_on_after(3):
            await controller.exec_sync("sb", run("hang"))
        await trio.testing.wait_all_tasks_blocked()
        assert execs(controller, "sb") == 0


async def test_a_caller_cancelled_while_the_exec_starts_kills_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready(exec_delay=5) as controller:
        async with controller.events() as events:
            with trio.move_on_after(1):
                await controller.exec_sync("sb", run("hang"))
            seen = await take(events, 2)
        assert [(e.topic, e.exit_status) for e in seen] == [
            (TOPIC_EXEC_START, None),
            (TOPIC_EXEC_EXIT, 137),
        ]
        assert execs(controller, "sb") == 0


async def test_closing_the_runtime_kills_execs_and_their_waiters_hear_of_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    sim = SimBackend()
    results: list[ExecExit] = []

    async def user(controller: Controller) -> None:
        async with controller.exec("sb", run("trap", ";", "hang")) as proc:
            results.append(await proc.wait())

    async with trio.open_nursery() as users, trio.open_nursery() as runtime:
        controller: Controller = await runtime.start(Controller([sim]).run)
        await started(controller, "sb")
        users.start_soon(user, controller)
        await trio.testing.wait_all_tasks_blocked()
        assert execs(controller, "sb") == 1
        runtime.cancel_scope.cancel()
    assert results == [KILLED]
    # The sandbox lives on (its process is not the runtime's), its exec does not.
    assert sim.running == {1000}


# -- output: backpressure, truncation ------------------------------------------------------------


async def test_a_consumer_that_lags_blocks_the_command_and_nothing_is_lost(
    autojump_clock: trio.abc.Clock,
) -> None:
    size = 10 * SIM_PIPE_CAPACITY
    async with (
        ready() as controller,
        controller.exec("sb", run("yes", str(size), ";", "exit", "5")) as proc,
    ):
        await trio.testing.wait_all_tasks_blocked()
        # The command is blocked in its write: nothing more than a pipe and a chunk held.
        assert execs(controller, "sb") == 1
        total = 0
        async for chunk in proc:
            total += len(chunk.data)
        assert total == size
        assert await proc.wait() == ExecExit(5)


async def test_wait_drops_output_not_taken_so_the_command_can_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        ready() as controller,
        controller.exec("sb", run("yes", str(5 * SIM_PIPE_CAPACITY))) as proc,
    ):
        assert await proc.wait() == ExecExit(0)


async def test_exec_sync_keeps_at_most_the_cap_of_each_stream_and_says_truncated(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with ready() as controller:
        request = run("yes", "300000", ";", "stderr", "x", ";", "exit", "2")
        result = await controller.exec_sync("sb", request, max_output_bytes=1000)
        assert result.stdout == b"y" * 1000
        assert result.stderr == b"x\n"
        assert (result.truncated, result.exit_status) == (True, 2)
        exact = await controller.exec_sync("sb", run("yes", "1000"), max_output_bytes=1000)
        assert (exact.stdout, exact.truncated) == (b"y" * 1000, False)


@pytest.mark.parametrize("cap", [0, -1, MAX_EXEC_SYNC_OUTPUT + 1, True, 1.5])
async def test_exec_sync_refuses_a_cap_outside_one_frame(
    autojump_clock: trio.abc.Clock, cap: object
) -> None:
    async with ready() as controller:
        with pytest.raises(InvalidArgument, match="max_output_bytes"):
            await controller.exec_sync("sb", run("true"), max_output_bytes=cap)  # type: ignore[arg-type]


def test_the_largest_exec_sync_reply_fits_one_frame() -> None:
    from sandboxd.wire import MAX_PAYLOAD

    # Both streams at the cap, and room for the envelope and the other fields.
    assert 2 * MAX_EXEC_SYNC_OUTPUT + 64 * 1024 <= MAX_PAYLOAD


async def test_exec_sync_refuses_a_tty_or_stdin(autojump_clock: trio.abc.Clock) -> None:
    async with ready() as controller:
        for request in (run("true", tty=True), run("true", stdin=True)):
            with pytest.raises(InvalidArgument, match="ExecSync"):
                await controller.exec_sync("sb", request)


# -- files in a sim sandbox ----------------------------------------------------------------------


async def test_files_of_a_sim_sandbox_are_failed_precondition() -> None:
    # Real time: files are opened in worker threads, which the autojump clock does not wait
    # for.
    async with running() as (controller, _):
        await create(controller, "sb")
        with pytest.raises(FailedPrecondition, match="'sb' is created"):
            await controller.write_file("sb", "/x", b"data")
        await controller.start("sb")
        with pytest.raises(FailedPrecondition, match="no files"):
            await controller.write_file("sb", "/x", b"data")
        with pytest.raises(FailedPrecondition, match="no files"):
            async with controller.read_file("sb", "/x"):
                pass  # pragma: no cover
        with pytest.raises(InvalidArgument, match="path"):
            await controller.write_file("sb", "", b"data")
        with pytest.raises(InvalidArgument, match="mode"):
            await controller.write_file("sb", "/x", b"data", mode=0o10000)
        assert controller.status_nowait("sb").state is SandboxState.READY


def test_sandbox_process_is_what_the_runtime_needs() -> None:
    # The sim's process offers what the runtime calls inside a sandbox.
    from sandboxd.backends._sim import SimProcess

    assert callable(SimProcess.exec) and callable(SimProcess.open_file)
    assert SandboxProcess is not None


# -- with a store: execs are never recorded -------------------------------------------------------


async def test_an_exec_never_waits_on_the_store_but_its_refusal_follows_the_record(
    autojump_clock: trio.abc.Clock,
) -> None:
    from sandboxd.runtime import Input, Waiter
    from sandboxd.runtime._exec import ExecRun, resolve
    from test_actor import call, runtime

    async with runtime(store=True) as rt:
        actor = rt.created()
        started_ = await call(actor, Input.START)
        rt.commit()
        await started_.wait()
        spec = resolve(run("hang", exec_id="e"), actor.spec)
        running_ = await call(actor, Input.EXEC, (spec, None))
        assert rt.queued == []  # nothing to write for an exec
        exec_run = await running_.wait()
        assert isinstance(exec_run, ExecRun)
        assert actor.status(False).info["execs"] == "1"
        # A Stop is recorded; the Exec refused behind it is answered once that is on disk.
        stopping = await call(actor, Input.STOP, 0)
        refused = Waiter()
        actor.post(Input.EXEC, (spec, None), refused)
        await trio.testing.wait_all_tasks_blocked()
        assert not refused.abandoned
        rt.commit()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(FailedPrecondition):
            await refused.wait()
        rt.commit()
        await stopping.wait()
        assert exec_run.result == KILLED


@pytest.mark.parametrize("script", [("yes", "1000000"), ("cat",)])
async def test_leaving_kills_a_command_blocked_on_a_pipe(
    autojump_clock: trio.abc.Clock, script: tuple[str, ...]
) -> None:
    async with ready() as controller:
        async with controller.exec("sb", run(*script, stdin=True)) as proc:
            await trio.testing.wait_all_tasks_blocked()  # blocked in its write, or its read
        assert await proc.wait() == KILLED
        assert execs(controller, "sb") == 0
        # The sandbox is unharmed.
        assert (await controller.exec_sync("sb", run("true"))).exit_status == 0


def test_timed_out_only_when_the_timeouts_kill_ended_the_command() -> None:
    """A command that ended on its own just as its timeout fired reports its own exit."""
    assert exit_of(0, True) == ExecExit(0, False, None)
    assert exit_of(-signal.SIGKILL, True) == ExecExit(137, True, signal.SIGKILL)
    assert exit_of(-signal.SIGTERM, True) == ExecExit(143, False, signal.SIGTERM)
    assert exit_of(-signal.SIGKILL, False) == ExecExit(137, False, signal.SIGKILL)
