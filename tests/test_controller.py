"""The in-process Controller, against the contract.

Most tests drive ``sim`` sandboxes under trio's autojump clock: grace periods and timers of
minutes pass at once, and ``trio.current_time()`` says exactly when something happened.  A
generous ``fail_after`` turns a hang into a failure (under the autojump clock, immediately).

The tests at the end use real processes (the ``process`` backend).  They never sleep to let
time pass: exits are awaited through Wait, deaths through pidfds, readiness through a FIFO;
``trio.fail_after`` only guards against hangs.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from background import in_background
from procs import Fifo, is_alive
from sandboxd import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from sandboxd._models import (
    TOPIC_CREATE,
    TOPIC_DELETE,
    TOPIC_DROPPED,
    TOPIC_EXIT,
    TOPIC_START,
    ExitStatus,
    SandboxEvent,
    SandboxInstance,
    SandboxOptions,
    SandboxState,
    SandboxStatus,
)
from sandboxd.backends import ProcessBackend, SimBackend, host_platform
from sandboxd.runtime import DEFAULT_STOP_TIMEOUT, Controller, Subscription, open_controller

#: Far beyond any simulated timer in these tests; under the autojump clock it costs nothing.
SIM_GUARD = 10_000
#: Real seconds a test with real processes may take before it is a hang.
PROCESS_GUARD = 10


# -- helpers -------------------------------------------------------------------------------------


@asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[tuple[Controller, SimBackend]]:
    """A running controller with a fresh sim backend (and the process backend)."""
    sim = SimBackend()
    with trio.fail_after(SIM_GUARD):
        async with open_controller(backends=[sim, ProcessBackend()], **kwargs) as controller:
            yield controller, sim


async def create(controller: Controller, sandbox_id: str, **sim: Any) -> str:
    return await controller.create(
        sandbox_id, sandboxer="sim", options=SandboxOptions(sim=sim or None)
    )


async def started(controller: Controller, sandbox_id: str, **sim: Any) -> int:
    await create(controller, sandbox_id, **sim)
    return (await controller.start(sandbox_id)).pid


def state(controller: Controller, sandbox_id: str) -> SandboxState:
    return controller.status_nowait(sandbox_id).state


async def take(subscription: Subscription, count: int) -> list[SandboxEvent]:
    events: list[SandboxEvent] = []
    if count == 0:
        return events
    async with aclosing(aiter(subscription)) as iterator:
        async for event in iterator:
            events.append(event)
            if len(events) == count:
                break
    return events


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


# -- bad input --------------------------------------------------------------------------------


BAD_IDS = [
    "",
    "-a",
    "a-",
    ".a",
    "a.",
    "a..b",
    "a._b",
    "a__b",
    "a b",
    "a/b",
    "a:b",
    "ä",
    "a\n",
    "x" * 77,
]


def every_method(controller: Controller) -> dict[str, Callable[[Any], Awaitable[Any]]]:
    async def sync(method: Callable[[Any], Any], sandbox_id: Any) -> Any:
        return method(sandbox_id)

    methods: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "start": controller.start,
        "stop": controller.stop,
        "stop_timeout": lambda sid: controller.stop(sid, timeout_secs=1),
        "wait": controller.wait,
        "shutdown": controller.shutdown,
        "status": controller.status,
        "status_verbose": lambda sid: controller.status(sid, verbose=True),
        "platform": controller.platform,
        "ping": controller.ping,
        "metrics": controller.metrics,
    }
    for name in ("status_nowait", "platform_nowait", "ping_nowait", "metrics_nowait"):
        method = getattr(controller, name)
        methods[name] = lambda sid, method=method: sync(method, sid)
    return methods


@pytest.mark.parametrize("bad_id", [*BAD_IDS, None, 7, b"sb"])
async def test_invalid_ids_are_invalid_argument_everywhere(
    autojump_clock: trio.abc.Clock, bad_id: Any
) -> None:
    async with running() as (controller, _sim):
        with pytest.raises(InvalidArgument):
            await controller.create(bad_id, sandboxer="sim")
        with pytest.raises(InvalidArgument):
            controller.create_nowait(bad_id, sandboxer="sim")
        # Also with a sandboxer that does not exist: the id is checked first.
        with pytest.raises(InvalidArgument):
            await controller.create(bad_id, sandboxer="nope")
        for name, method in every_method(controller).items():
            with pytest.raises(InvalidArgument):
                await method(bad_id)
                pytest.fail(name)
        assert len(controller) == 0


async def test_ids_at_the_limits_are_valid(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        for sandbox_id in ("x" * 76, "a", "A.b_C-9", "0-0.0_0"):
            await create(controller, sandbox_id)
            await controller.start(sandbox_id)
            await controller.shutdown(sandbox_id)


async def test_unknown_ids_are_not_found_everywhere(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        await create(controller, "other")
        for name, method in every_method(controller).items():
            with pytest.raises(NotFound, match="nope"):
                await method("nope")
                pytest.fail(name)
        assert [s.sandbox_id for s in controller.list_nowait()] == ["other"]


async def test_unknown_sandboxer_is_not_found(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        with pytest.raises(NotFound, match="nope"):
            await controller.create("sb", sandboxer="nope")
        assert len(controller) == 0
        with pytest.raises(NotFound):
            await controller.status("sb")


async def test_create_of_an_existing_id_is_already_exists(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, sim), trio.open_nursery() as nursery:
        await create(controller, "created")
        await started(controller, "ready")
        await started(controller, "stopping", ignore_sigterm=True)
        in_background(nursery, lambda: controller.stop("stopping", timeout_secs=10))
        await started(controller, "stopped")
        await controller.stop("stopped")
        await trio.testing.wait_all_tasks_blocked()
        before = controller.list_nowait()
        for sandbox_id in ("created", "ready", "stopping", "stopped"):
            with pytest.raises(AlreadyExists, match=sandbox_id):
                await create(controller, sandbox_id)
            # Whatever the options: the existing sandbox is untouched.
            with pytest.raises(AlreadyExists):
                await controller.create(sandbox_id, sandboxer="process")
        assert controller.list_nowait() == before
        assert sim.started_count == 3


# -- List ------------------------------------------------------------------------------------


async def test_list_with_label_filters(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        labels = {
            "c": {"app": "web", "tier": "front"},
            "a": {"app": "web", "tier": "back"},
            "b": {"app": "db"},
            "d": {},
        }
        for sandbox_id, sandbox_labels in labels.items():
            await controller.create(sandbox_id, sandboxer="sim", labels=sandbox_labels)
        await controller.start("a")

        def ids(listed: list[SandboxStatus]) -> list[str]:
            return [s.sandbox_id for s in listed]

        assert ids(await controller.list()) == ["a", "b", "c", "d"]
        assert ids(await controller.list({})) == ["a", "b", "c", "d"]
        assert ids(await controller.list({"app": "web"})) == ["a", "c"]
        assert ids(await controller.list({"app": "web", "tier": "back"})) == ["a"]
        assert ids(await controller.list({"app": "nope"})) == []
        assert ids(await controller.list({"tier": "front", "app": "db"})) == []
        listed = {s.sandbox_id: s for s in controller.list_nowait()}
        assert listed["a"].state is SandboxState.READY
        assert listed["b"].state is SandboxState.CREATED
        assert listed["a"] == await controller.status("a")


# -- events (sim) ------------------------------------------------------------------------------


async def test_events_of_one_lifecycle_in_order(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim), controller.events() as events:
        await create(controller, "sb")
        await controller.start("sb")
        await controller.stop("sb")
        await controller.shutdown("sb")
        got = await take(events, 4)
        assert [(e.topic, e.sandbox_id, e.exit_status, e.dropped) for e in got] == [
            (TOPIC_CREATE, "sb", None, None),
            (TOPIC_START, "sb", None, None),
            (TOPIC_EXIT, "sb", 143, None),
            (TOPIC_DELETE, "sb", None, None),
        ]
        timestamps = [e.timestamp for e in got]
        assert timestamps == sorted(timestamps)
        assert all(t.tzinfo is not None for t in timestamps)


async def test_a_subscriber_only_sees_later_events(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        await create(controller, "early")
        async with controller.events() as events:
            await create(controller, "late")
            got = await take(events, 1)
        assert [(e.topic, e.sandbox_id) for e in got] == [(TOPIC_CREATE, "late")]


async def test_a_slow_subscriber_is_told_how_many_it_missed(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running(subscriber_buffer=2) as (controller, _sim):
        async with controller.events() as events:
            for i in range(6):
                await create(controller, f"sb{i}")
            got = await take(events, 3)
            await create(controller, "later")
            got += await take(events, 1)
        assert [(e.topic, e.sandbox_id, e.dropped) for e in got] == [
            (TOPIC_CREATE, "sb0", None),
            (TOPIC_CREATE, "sb1", None),
            (TOPIC_DROPPED, "", 4),
            (TOPIC_CREATE, "later", None),
        ]


async def test_the_dropped_event_sits_in_the_place_of_the_gap(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running(subscriber_buffer=2) as (controller, _sim):
        async with controller.events() as events:
            for i in range(5):
                await create(controller, f"sb{i}")  # sb2..sb4 do not fit
            got = await take(events, 1)
            await create(controller, "sb5")
            await create(controller, "sb6")  # no room again
            await create(controller, "sb7")
            got += await take(events, 4)
        assert [(e.topic, e.sandbox_id, e.dropped) for e in got] == [
            (TOPIC_CREATE, "sb0", None),
            (TOPIC_CREATE, "sb1", None),
            (TOPIC_DROPPED, "", 3),
            (TOPIC_CREATE, "sb5", None),
            (TOPIC_DROPPED, "", 2),
        ]


# -- closing the controller (sim) -----------------------------------------------------------------


async def test_closing_the_controller_wakes_parked_callers_with_unavailable(
    autojump_clock: trio.abc.Clock,
) -> None:
    sim = SimBackend()
    with trio.fail_after(SIM_GUARD):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as inner:
                controller = await inner.start(Controller([sim]).run)
                await controller.create("sb", sandboxer="sim")
                await controller.start("sb")
                await controller.create(
                    "stopping",
                    sandboxer="sim",
                    options=SandboxOptions(sim={"ignore_sigterm": True}),
                )
                await controller.start("stopping")
                waiter = in_background(outer, lambda: controller.wait("sb"))
                stopper = in_background(
                    outer, lambda: controller.stop("stopping", timeout_secs=1000)
                )

                async def drain_events() -> list[SandboxEvent]:
                    async with controller.events() as events:
                        return [e async for e in events]

                consumer = in_background(outer, drain_events)
                await trio.testing.wait_all_tasks_blocked()
                assert not waiter.done.is_set()
                inner.cancel_scope.cancel()
            t0 = trio.current_time()
            await waiter.done.wait()
            await stopper.done.wait()
            await consumer.done.wait()
            assert trio.current_time() == t0
            assert isinstance(waiter.error, Unavailable)
            assert isinstance(stopper.error, Unavailable)
            assert consumer.value == []
            # The processes' lives are their own.
            assert sim.running == {1000, 1001}
        with pytest.raises(Unavailable):
            await controller.create("new", sandboxer="sim")


async def test_closing_the_controller_answers_a_start_in_progress(
    autojump_clock: trio.abc.Clock,
) -> None:
    # "No call can hang because its peer vanished": a Start whose backend is still starting
    # when the controller closes is answered too.
    sim = SimBackend()
    with trio.fail_after(SIM_GUARD):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as inner:
                controller = await inner.start(Controller([sim]).run)
                await controller.create(
                    "sb", sandboxer="sim", options=SandboxOptions(sim={"start_delay": 100})
                )
                start = in_background(outer, lambda: controller.start("sb"))
                await trio.testing.wait_all_tasks_blocked()
                assert not start.done.is_set()
                inner.cancel_scope.cancel()
            with trio.move_on_after(1):
                await start.done.wait()
            assert start.done.is_set(), "Start still unanswered after the controller closed"
            assert isinstance(start.error, Unavailable)
            assert sim.running == frozenset()


async def test_calls_after_the_controller_closed_are_unavailable(
    autojump_clock: trio.abc.Clock,
) -> None:
    # DESIGN.md: "no call can hang because its peer vanished".  Create already says
    # UNAVAILABLE once the controller is closed; the calls that go to a sandbox's actor must
    # not wait forever on an actor that no longer runs.
    sim = SimBackend()
    async with trio.open_nursery() as inner:
        controller = await inner.start(Controller([sim]).run)
        await controller.create("sb", sandboxer="sim")
        await controller.start("sb")
        inner.cancel_scope.cancel()
    with pytest.raises(Unavailable):
        await controller.create("other", sandboxer="sim")
    unanswered = []
    for name in ("start", "stop", "wait", "shutdown"):
        with trio.move_on_after(1):
            try:
                await getattr(controller, name)("sb")
            except Unavailable:
                continue
        unanswered.append(name)
    assert unanswered == []


# -- real processes ----------------------------------------------------------------------------


@asynccontextmanager
async def processes() -> AsyncIterator[Controller]:
    """A controller whose default sandboxer is ``process``; whatever a test leaves behind is
    shut down (so no process outlives the test)."""
    with trio.fail_after(PROCESS_GUARD):
        async with open_controller(backends=[SimBackend(), ProcessBackend()]) as controller:
            assert controller.default_sandboxer == "process"
            try:
                yield controller
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    for status in controller.list_nowait():
                        with suppress(NotFound):
                            await controller.shutdown(status.sandbox_id)


async def run_command(controller: Controller, sandbox_id: str, *command: str) -> int:
    await controller.create(sandbox_id, options=SandboxOptions(command=command))
    return (await controller.start(sandbox_id)).pid


async def test_process_exit_status_is_reported() -> None:
    async with processes() as controller:
        await run_command(controller, "sb", "sh", "-c", "exit 7")
        result = await controller.wait("sb")
        assert result.exit_status == 7
        status = await controller.status("sb")
        assert status.state is SandboxState.STOPPED
        assert status.exited_at == result.exited_at
        assert status.exited_at is not None
        assert status.exited_at >= status.created_at
        assert status.info["exit_status"] == "7"


async def test_process_death_by_signal_is_128_plus_n() -> None:
    async with processes() as controller:
        await run_command(controller, "sb", "sh", "-c", "kill -USR1 $$")
        assert (await controller.wait("sb")).exit_status == 128 + signal.SIGUSR1


async def test_process_stop_sends_sigterm() -> None:
    async with processes() as controller:
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


async def test_process_ignoring_sigterm_is_killed_after_the_timeout(fifo: Fifo) -> None:
    # The program says "ready" on the FIFO once SIGTERM is ignored, so the Stop cannot race
    # the interpreter's start.
    program = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "with open(sys.argv[1], 'w') as f: f.write('ready')\n"
        "time.sleep(1000)\n"
    )
    async with processes() as controller, trio.open_nursery() as nursery:
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
    fifo: Fifo, stop_first: bool
) -> None:
    # The child ignores SIGTERM, so only a SIGKILL to the group ends it.  It says its pid
    # once it ignores SIGTERM, then becomes `sleep` (which inherits SIG_IGN).
    child_script = "trap '' TERM; echo $$ > \"$0\"; exec sleep 1000"
    async with processes() as controller:
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
    tmp_path: Path,
) -> None:
    script = tmp_path / "init"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    async with processes() as controller:
        await controller.create("sb", options=SandboxOptions(command=(str(script),)))
        script.unlink()
        with pytest.raises(FailedPrecondition, match="init"):
            await controller.start("sb")
        status = await controller.status("sb")
        assert (status.state, status.pid, status.exited_at) == (SandboxState.CREATED, 0, None)
        await controller.shutdown("sb")
        with pytest.raises(NotFound):
            await controller.status("sb")


# -- the non-blocking twins: answers through a Reply -------------------------------------------


class Collected:
    """A Reply that keeps what it is told."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, Any]] = []
        self.abandoned = False
        self.answered = trio.Event()

    def ok(self, value: Any) -> None:
        self.answers.append(("ok", value))
        self.answered.set()

    def fail(self, error: BaseException) -> None:
        self.answers.append(("fail", error))
        self.answered.set()


async def test_request_twins_answer_through_the_reply_they_are_given() -> None:
    async with running() as (controller, _):
        created = Collected()
        controller.request_create(created, "sb", sandboxer="sim")
        await created.answered.wait()
        assert created.answers == [("ok", "sb")]

        started, waited, stopped = Collected(), Collected(), Collected()
        controller.request_start(started, "sb")
        controller.request_wait(waited, "sb")
        await started.answered.wait()
        [(kind, instance)] = started.answers
        assert kind == "ok" and isinstance(instance, SandboxInstance) and instance.pid > 0
        await trio.testing.wait_all_tasks_blocked()
        assert waited.answers == []  # parked until the sandbox stops
        controller.request_stop(stopped, "sb", timeout_secs=5)
        await waited.answered.wait()
        await stopped.answered.wait()
        [(kind, status)] = waited.answers
        assert kind == "ok" and status.exit_status == 143
        assert stopped.answers == [("ok", None)]

        gone = Collected()
        controller.request_shutdown(gone, "sb")
        await gone.answered.wait()
        assert gone.answers == [("ok", None)]
        # Refusals found at once are raised by the call itself; the reply is not used.
        unused = Collected()
        with pytest.raises(NotFound):
            controller.request_start(unused, "sb")
        with pytest.raises(InvalidArgument):
            controller.request_wait(unused, "not an id")
        with pytest.raises(InvalidArgument):
            controller.request_stop(unused, "sb", timeout_secs=-1)
        assert unused.answers == []


async def test_a_parked_reply_that_was_abandoned_gets_no_answer() -> None:
    async with running() as (controller, _):
        await started(controller, "sb")
        kept, given_up = Collected(), Collected()
        controller.request_wait(given_up, "sb")
        controller.request_wait(kept, "sb")
        await trio.testing.wait_all_tasks_blocked()
        given_up.abandoned = True
        await controller.stop("sb", timeout_secs=5)
        await kept.answered.wait()
        assert [kind for kind, _ in kept.answers] == ["ok"]
        assert given_up.answers == []
