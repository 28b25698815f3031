"""The in-process Controller through a sandbox's life: Create, Start, Stop, Wait, Shutdown.

Sandboxes of the ``sim`` backend, under trio's autojump clock (``sim_controller.py``).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from background import in_background
from sandboxd import FailedPrecondition, NotFound, Unavailable
from sandboxd._models import (
    TOPIC_CREATE,
    TOPIC_DELETE,
    TOPIC_EXIT,
    ExitStatus,
    SandboxInstance,
    SandboxState,
)
from sandboxd.backends import host_platform
from sandboxd.runtime import DEFAULT_STOP_TIMEOUT, Waiter
from sim_controller import create, running, started, state, take

# -- the whole lifecycle (sim) ------------------------------------------------------------------


async def test_full_lifecycle(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, sim):
        assert await create(controller, "sb-1") == "sb-1"
        status = await controller.status("sb-1")
        assert status.sandbox_id == "sb-1"
        assert status.state is SandboxState.CREATED
        assert status.pid == 0
        assert status.exited_at is None
        assert status.info["sandboxer"] == "sim"

        instance = await controller.start("sb-1")
        assert instance == SandboxInstance("sb-1", 1000, status.created_at, {})
        status = await controller.status("sb-1")
        assert (status.state, status.pid) == (SandboxState.READY, 1000)
        assert "started_at" in status.info
        assert "exit_status" not in status.info
        assert (await controller.status("sb-1", verbose=True)).info["sim"] == "true"
        assert sim.running == {1000}

        await controller.stop("sb-1")
        status = await controller.status("sb-1")
        assert status.state is SandboxState.STOPPED
        assert status.exited_at is not None
        assert status.info["exit_status"] == "143"  # SIGTERM
        assert await controller.wait("sb-1") == ExitStatus(143, status.exited_at)
        assert sim.running == frozenset()

        await controller.shutdown("sb-1")
        with pytest.raises(NotFound):
            await controller.status("sb-1")
        assert len(controller) == 0


async def test_pids_are_deterministic(autojump_clock: trio.abc.Clock) -> None:
    for _ in range(2):
        async with running() as (controller, _sim):
            assert [await started(controller, f"sb{i}") for i in range(3)] == [1000, 1001, 1002]
            for i in range(3):
                await controller.shutdown(f"sb{i}")


async def test_stop_in_created_stops_with_exit_0(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, sim):
        await create(controller, "sb")
        await controller.stop("sb")
        status = await controller.status("sb")
        assert status.state is SandboxState.STOPPED
        assert status.info["exit_status"] == "0"
        assert status.exited_at is not None
        assert status.pid == 0
        assert await controller.wait("sb") == ExitStatus(0, status.exited_at)
        with pytest.raises(FailedPrecondition):
            await controller.start("sb")
        assert sim.started_count == 0


async def test_start_twice_is_failed_precondition(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, sim):
        pid = await started(controller, "sb")
        with pytest.raises(FailedPrecondition, match="sb"):
            await controller.start("sb")
        status = await controller.status("sb")
        assert (status.state, status.pid) == (SandboxState.READY, pid)
        assert sim.started_count == 1


@pytest.mark.parametrize("how", ["stop", "exit"])
async def test_start_after_stopped_is_failed_precondition(
    autojump_clock: trio.abc.Clock, how: str
) -> None:
    async with running() as (controller, sim):
        pid = await started(controller, "sb")
        if how == "stop":
            await controller.stop("sb")
        else:
            sim.exit(pid, 4)
            await controller.wait("sb")
        with pytest.raises(FailedPrecondition):
            await controller.start("sb")
        assert state(controller, "sb") is SandboxState.STOPPED
        assert sim.started_count == 1


async def test_start_while_stopping_is_failed_precondition(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, _sim), trio.open_nursery() as nursery:
        await started(controller, "sb", ignore_sigterm=True)
        in_background(nursery, lambda: controller.stop("sb", timeout_secs=5))
        await trio.testing.wait_all_tasks_blocked()
        assert state(controller, "sb") is SandboxState.STOPPING
        with pytest.raises(FailedPrecondition):
            await controller.start("sb")


async def test_stop_of_a_stopped_sandbox_changes_nothing(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        await started(controller, "sb")
        await controller.stop("sb")
        before = await controller.status("sb")
        t0 = trio.current_time()
        await controller.stop("sb")
        await controller.stop("sb", timeout_secs=0)
        assert await controller.status("sb") == before
        assert trio.current_time() == t0


async def test_wait_on_a_stopped_sandbox_returns_at_once(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, sim):
        pid = await started(controller, "sb")
        sim.exit(pid, 3)
        t0 = trio.current_time()
        with trio.move_on_after(1) as scope:
            first = await controller.wait("sb")
            second = await controller.wait("sb")
        assert not scope.cancelled_caught
        assert trio.current_time() == t0
        assert first == second
        assert first.exit_status == 3


# -- Stop: signals, grace, joining (sim) --------------------------------------------------------


async def test_stop_kills_when_sigterm_is_ignored(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, sim), trio.open_nursery() as nursery:
        pid = await started(controller, "sb", ignore_sigterm=True)
        t0 = trio.current_time()
        stop = in_background(nursery, lambda: controller.stop("sb", timeout_secs=30))
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == t0
        assert state(controller, "sb") is SandboxState.STOPPING
        assert controller.status_nowait("sb").pid == pid
        assert sim.running == {pid}

        await trio.sleep(29.5)
        assert state(controller, "sb") is SandboxState.STOPPING
        assert not stop.done.is_set()

        await stop.done.wait()
        assert stop.error is None
        assert stop.at == t0 + 30
        assert state(controller, "sb") is SandboxState.STOPPED
        assert (await controller.wait("sb")).exit_status == 137
        assert sim.running == frozenset()


async def test_stop_with_timeout_0_kills_at_once(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        await started(controller, "sb", ignore_sigterm=True)
        t0 = trio.current_time()
        await controller.stop("sb", timeout_secs=0)
        assert trio.current_time() == t0
        assert (await controller.wait("sb")).exit_status == 137


@pytest.mark.parametrize("stop_timeout", [None, 3.0])
async def test_stop_without_timeout_uses_the_controllers(
    autojump_clock: trio.abc.Clock, stop_timeout: float | None
) -> None:
    kwargs = {} if stop_timeout is None else {"stop_timeout": stop_timeout}
    expected = DEFAULT_STOP_TIMEOUT if stop_timeout is None else stop_timeout
    assert DEFAULT_STOP_TIMEOUT == 10
    async with running(**kwargs) as (controller, _sim):
        assert controller.stop_timeout == expected
        await started(controller, "sb", ignore_sigterm=True)
        t0 = trio.current_time()
        await controller.stop("sb")
        assert trio.current_time() == t0 + expected
        assert (await controller.wait("sb")).exit_status == 137


async def test_concurrent_stops_join(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim), trio.open_nursery() as nursery:
        await started(controller, "sb", ignore_sigterm=True)
        t0 = trio.current_time()
        first = in_background(nursery, lambda: controller.stop("sb", timeout_secs=100))
        await trio.sleep(1)
        second = in_background(nursery, lambda: controller.stop("sb", timeout_secs=100))
        await first.done.wait()
        await second.done.wait()
        # The second Stop joined the first: one grace period, one kill.
        assert first.error is None and second.error is None
        assert first.at == second.at == t0 + 100
        assert (await controller.wait("sb")).exit_status == 137


async def test_a_stop_with_timeout_0_during_a_long_grace_kills_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, _sim), trio.open_nursery() as nursery:
        await started(controller, "sb", ignore_sigterm=True)
        t0 = trio.current_time()
        first = in_background(nursery, lambda: controller.stop("sb", timeout_secs=1000))
        await trio.sleep(1)
        assert state(controller, "sb") is SandboxState.STOPPING
        await controller.stop("sb", timeout_secs=0)
        assert trio.current_time() == t0 + 1
        await first.done.wait()
        assert first.error is None
        assert first.at == t0 + 1
        assert (await controller.wait("sb")).exit_status == 137


async def test_stop_delay_is_honoured(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim), trio.open_nursery() as nursery:
        await started(controller, "sb", stop_delay=3)
        t0 = trio.current_time()
        stop = in_background(nursery, lambda: controller.stop("sb", timeout_secs=10))
        await trio.sleep(2)
        assert state(controller, "sb") is SandboxState.STOPPING
        await stop.done.wait()
        assert stop.at == t0 + 3
        assert (await controller.wait("sb")).exit_status == 143


async def test_stop_delay_longer_than_the_timeout_is_cut_by_sigkill(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, _sim):
        await started(controller, "sb", stop_delay=30)
        t0 = trio.current_time()
        await controller.stop("sb", timeout_secs=10)
        assert trio.current_time() == t0 + 10
        assert (await controller.wait("sb")).exit_status == 137


async def test_stop_continues_when_its_caller_is_cancelled(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, _sim):
        await started(controller, "sb", ignore_sigterm=True)
        t0 = trio.current_time()
        with trio.move_on_after(1):
            await controller.stop("sb", timeout_secs=5)
        assert state(controller, "sb") is SandboxState.STOPPING
        assert (await controller.wait("sb")).exit_status == 137
        assert trio.current_time() == t0 + 5


# -- exits on their own, start failures (sim) ----------------------------------------------------


async def test_exit_after_stops_with_the_exit_code(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        await started(controller, "sb", exit_after=7, exit_code=3)
        t0 = trio.current_time()
        result = await controller.wait("sb")
        assert trio.current_time() == t0 + 7
        assert result.exit_status == 3
        status = await controller.status("sb")
        assert status.state is SandboxState.STOPPED
        assert status.exited_at == result.exited_at
        assert status.info["exit_status"] == "3"


async def test_exit_hook_records_the_real_status(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, sim):
        pid = await started(controller, "sb")
        sim.exit(pid, 42)
        result = await controller.wait("sb")
        assert result.exit_status == 42
        status = await controller.status("sb")
        assert status.state is SandboxState.STOPPED
        assert status.exited_at == result.exited_at


async def test_start_error_leaves_the_sandbox_created(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, sim), controller.events() as events:
        await create(controller, "sb", start_error="no such image")
        for _ in range(2):  # start_error always fails
            with pytest.raises(FailedPrecondition, match="no such image"):
                await controller.start("sb")
            status = await controller.status("sb")
            assert status.state is SandboxState.CREATED
            assert status.pid == 0
            assert status.exited_at is None
        assert sim.started_count == 0
        # Still a normal created sandbox: it can be stopped.
        await controller.stop("sb")
        assert (await controller.wait("sb")).exit_status == 0
        # A failed Start publishes nothing.
        got = await take(events, 2)
        assert [(e.topic, e.exit_status) for e in got] == [(TOPIC_CREATE, None), (TOPIC_EXIT, 0)]


# -- Wait (sim) --------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["stop", "exit", "shutdown"])
async def test_all_waiters_are_woken_with_the_same_status(
    autojump_clock: trio.abc.Clock, end: str
) -> None:
    async with running() as (controller, sim), trio.open_nursery() as nursery:
        pid = await started(controller, "sb")
        waiters = [in_background(nursery, lambda: controller.wait("sb")) for _ in range(10)]
        await trio.testing.wait_all_tasks_blocked()
        assert not any(w.done.is_set() for w in waiters)
        if end == "stop":
            await controller.stop("sb")
            expected = 143
        elif end == "exit":
            sim.exit(pid, 5)
            expected = 5
        else:
            await controller.shutdown("sb")
            expected = 137
        for waiter in waiters:
            await waiter.done.wait()
            assert waiter.error is None
            assert waiter.value == waiters[0].value
        assert waiters[0].value.exit_status == expected
        if end == "shutdown":
            with pytest.raises(NotFound):
                await controller.status("sb")


@pytest.mark.parametrize("end", ["stop", "shutdown"])
async def test_waiters_on_a_created_sandbox_are_woken_with_exit_0(
    autojump_clock: trio.abc.Clock, end: str
) -> None:
    async with running() as (controller, _sim), trio.open_nursery() as nursery:
        await create(controller, "sb")
        waiters = [in_background(nursery, lambda: controller.wait("sb")) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        assert not any(w.done.is_set() for w in waiters)
        await (controller.stop("sb") if end == "stop" else controller.shutdown("sb"))
        for waiter in waiters:
            await waiter.done.wait()
            assert waiter.error is None
            assert waiter.value.exit_status == 0


async def test_a_cancelled_wait_leaves_the_sandbox_untouched(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, sim), trio.open_nursery() as nursery:
        pid = await started(controller, "sb")
        # Many abandoned waits (a client polling with a short deadline), then a real one.
        for _ in range(40):
            with trio.move_on_after(1) as scope:
                await controller.wait("sb")
            assert scope.cancelled_caught
        status = await controller.status("sb")
        assert (status.state, status.pid) == (SandboxState.READY, pid)
        assert sim.running == {pid}
        waiter = in_background(nursery, lambda: controller.wait("sb"))
        await trio.testing.wait_all_tasks_blocked()
        await controller.stop("sb")
        await waiter.done.wait()
        assert waiter.value.exit_status == 143


# -- Shutdown (sim) ----------------------------------------------------------------------------


async def test_shutdown_in_each_state(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, sim), trio.open_nursery() as nursery:
        await create(controller, "created")
        await started(controller, "ready", ignore_sigterm=True)
        await started(controller, "stopping", ignore_sigterm=True)
        await started(controller, "stopped")
        await controller.stop("stopped")
        stop = in_background(nursery, lambda: controller.stop("stopping", timeout_secs=1000))
        await trio.testing.wait_all_tasks_blocked()
        assert state(controller, "stopping") is SandboxState.STOPPING

        t0 = trio.current_time()
        async with controller.events() as events:
            for sandbox_id in ("created", "ready", "stopping", "stopped"):
                await controller.shutdown(sandbox_id)
                with pytest.raises(NotFound):
                    controller.status_nowait(sandbox_id)
            got = await take(events, 7)
        assert trio.current_time() == t0  # kills, never waits out a grace period
        assert [(e.topic, e.sandbox_id, e.exit_status) for e in got] == [
            (TOPIC_EXIT, "created", 0),
            (TOPIC_DELETE, "created", None),
            (TOPIC_EXIT, "ready", 137),
            (TOPIC_DELETE, "ready", None),
            (TOPIC_EXIT, "stopping", 137),
            (TOPIC_DELETE, "stopping", None),
            (TOPIC_DELETE, "stopped", None),
        ]
        await stop.done.wait()  # the Stop in progress was answered
        assert stop.error is None
        assert sim.running == frozenset()
        assert len(controller) == 0


async def test_after_shutdown_the_id_is_free(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        await started(controller, "sb")
        await controller.shutdown("sb")
        for call in (
            controller.start,
            controller.stop,
            controller.wait,
            controller.shutdown,
            controller.status,
            controller.platform,
            controller.ping,
            controller.metrics,
        ):
            with pytest.raises(NotFound):
                await call("sb")
        assert await controller.list() == []

        await create(controller, "sb")
        status = await controller.status("sb")
        assert (status.state, status.pid, status.exited_at) == (SandboxState.CREATED, 0, None)
        assert (await controller.start("sb")).pid == 1001
        assert [s.sandbox_id for s in await controller.list()] == ["sb"]


# -- isolation (sim) ----------------------------------------------------------------------------


async def test_calls_on_one_sandbox_do_not_wait_behind_another(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, _sim), trio.open_nursery() as nursery:
        await started(controller, "a", ignore_sigterm=True)
        await started(controller, "b")
        t0 = trio.current_time()
        stop_a = in_background(nursery, lambda: controller.stop("a", timeout_secs=100))
        await trio.testing.wait_all_tasks_blocked()
        assert state(controller, "a") is SandboxState.STOPPING

        stop_b = in_background(nursery, lambda: controller.stop("b"))
        assert (await controller.status("b")).sandbox_id == "b"
        await controller.ping("a")
        await stop_b.done.wait()
        assert stop_b.at == t0
        assert (await controller.wait("b")).exit_status == 143
        assert trio.current_time() == t0
        assert state(controller, "a") is SandboxState.STOPPING

        await stop_a.done.wait()
        assert stop_a.at == t0 + 100
        assert stop_b.at < stop_a.at


async def test_a_slow_start_does_not_hold_up_another_sandbox(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, _sim), trio.open_nursery() as nursery:
        await create(controller, "slow", start_delay=50)
        await create(controller, "fast")
        t0 = trio.current_time()
        slow = in_background(nursery, lambda: controller.start("slow"))
        await trio.testing.wait_all_tasks_blocked()
        assert (await controller.start("fast")).sandbox_id == "fast"
        await controller.stop("fast")
        assert trio.current_time() == t0
        assert state(controller, "slow") is SandboxState.CREATED  # still answers
        await slow.done.wait()
        assert slow.at == t0 + 50
        assert state(controller, "slow") is SandboxState.READY


# -- queries in every state (sim) ---------------------------------------------------------------


async def test_status_platform_ping_metrics_answer_in_every_state(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, _sim), trio.open_nursery() as nursery:
        await create(controller, "sb", ignore_sigterm=True)

        async def check(expected: SandboxState, pids: int) -> None:
            assert (await controller.status("sb")).state is expected
            assert controller.status_nowait("sb").state is expected
            assert await controller.platform("sb") == host_platform()
            assert controller.platform_nowait("sb") == host_platform()
            await controller.ping("sb")
            controller.ping_nowait("sb")
            metrics = await controller.metrics("sb")
            assert metrics.sandbox_id == "sb"
            assert (metrics.cpu_ns, metrics.memory_rss_bytes, metrics.pids) == (0, 0, pids)
            assert controller.metrics_nowait("sb").pids == pids

        await check(SandboxState.CREATED, 0)
        await controller.start("sb")
        await check(SandboxState.READY, 1)
        stop = in_background(nursery, lambda: controller.stop("sb", timeout_secs=10))
        await trio.testing.wait_all_tasks_blocked()
        await check(SandboxState.STOPPING, 1)
        await stop.done.wait()
        await check(SandboxState.STOPPED, 0)


async def test_a_wait_posted_before_the_drain_is_refused_not_parked(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A Wait the actor has not taken yet when the daemon begins going away gets UNAVAILABLE
    like the parked ones, instead of holding the shutdown for its whole grace period."""
    async with running() as (controller, _):
        await started(controller, "sb-drained")
        waiter = Waiter()
        controller.request_wait(waiter, "sb-drained")
        controller.drain()
        with pytest.raises(Unavailable, match="shutting down"):
            await waiter.wait()
        assert state(controller, "sb-drained") is SandboxState.READY
