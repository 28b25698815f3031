"""``options.lifetime_secs``: a sandbox ready that long is stopped as a Stop with the default
timeout stops it, and says why.  Sim sandboxes under trio's autojump clock."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from sandboxd import InvalidArgument
from sandboxd._models import (
    REASON_LIFETIME_EXPIRED,
    TOPIC_CREATE,
    TOPIC_EXIT,
    TOPIC_START,
    SandboxOptions,
    SandboxState,
)
from sandboxd.api import RemoteController
from sandboxd.backends import BwrapBackend, ProcessBackend
from sandboxd.runtime import open_controller
from sim_controller import running, state, take

#: Real seconds a test with real processes may take before it is a hang.
GUARD = 15


def lifetime(seconds: float, **sim: object) -> SandboxOptions:
    return SandboxOptions(sim=sim or None, lifetime_secs=seconds)


async def test_a_sandbox_is_stopped_when_its_lifetime_runs_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running(stop_timeout=3.0) as (controller, _sim):
        with controller.subscribe() as events:
            options = lifetime(5, ignore_sigterm=True)
            await controller.create("sb", sandboxer="sim", options=options)
            await trio.sleep(100)  # not ready yet: the lifetime counts from Start
            assert state(controller, "sb") is SandboxState.CREATED
            await controller.start("sb")
            t0 = trio.current_time()
            await trio.sleep(4.9)
            assert state(controller, "sb") is SandboxState.READY
            await trio.sleep(0.1)
            await trio.testing.wait_all_tasks_blocked()
            # SIGTERM (ignored), then the default grace, then SIGKILL.
            assert state(controller, "sb") is SandboxState.STOPPING
            assert controller.status_nowait("sb").info["reason"] == REASON_LIFETIME_EXPIRED
            exit = await controller.wait("sb")
            assert trio.current_time() == t0 + 5 + 3
            assert exit.exit_status == 137
            status = controller.status_nowait("sb")
            assert status.state is SandboxState.STOPPED
            assert status.info["reason"] == REASON_LIFETIME_EXPIRED
            got = await take(events, 3)
        assert [e.topic for e in got] == [TOPIC_CREATE, TOPIC_START, TOPIC_EXIT]
        assert got[2].reason == REASON_LIFETIME_EXPIRED
        assert got[2].exit_status == 137


async def test_a_process_that_honours_sigterm_ends_143_at_its_lifetime(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as (controller, _sim):
        await controller.create("sb", sandboxer="sim", options=lifetime(0.5))
        await controller.start("sb")
        t0 = trio.current_time()
        assert (await controller.wait("sb")).exit_status == 143
        assert trio.current_time() == t0 + 0.5


async def test_a_sandbox_that_ends_first_has_no_reason(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        await controller.create("sb", sandboxer="sim", options=lifetime(60))
        await controller.start("sb")
        await controller.stop("sb")
        await trio.sleep(120)  # the lifetime's timer is stale: nothing happens
        assert (await controller.wait("sb")).exit_status == 143
        assert "reason" not in controller.status_nowait("sb").info
        await controller.shutdown("sb")


async def test_without_a_lifetime_a_sandbox_runs_on(autojump_clock: trio.abc.Clock) -> None:
    async with running() as (controller, _sim):
        await controller.create("sb", sandboxer="sim")
        await controller.start("sb")
        await trio.sleep(1000)
        assert state(controller, "sb") is SandboxState.READY


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, "5", True])
def test_lifetime_must_be_a_positive_finite_number(value: object) -> None:
    with pytest.raises(InvalidArgument, match=r"options\.lifetime_secs"):
        SandboxOptions(lifetime_secs=value)  # type: ignore[arg-type]


# -- real processes ------------------------------------------------------------------------------


#: A shell that ignores SIGTERM (its sleep too): only the SIGKILL after the grace ends it.
IGNORES_SIGTERM = ("sh", "-c", 'trap "" TERM; sleep 30 & wait; sleep 30')


@pytest.mark.parametrize(
    ("sandboxer", "command", "expected"),
    [
        ("process", IGNORES_SIGTERM, 137),
        ("bwrap", IGNORES_SIGTERM, 137),
        ("bwrap", ("sleep", "30"), 143),
    ],
)
async def test_a_real_sandbox_is_stopped_at_its_lifetime(
    sandboxer: str, command: tuple[str, ...], expected: int
) -> None:
    """SIGTERM at the lifetime's end, SIGKILL after the (default) grace."""
    backends = [ProcessBackend(), BwrapBackend()]
    with trio.fail_after(GUARD):
        async with open_controller(backends, stop_timeout=0.5) as controller:
            options = SandboxOptions(command=command, lifetime_secs=0.5)
            await controller.create("sb", sandboxer=sandboxer, options=options)
            await controller.start("sb")
            started = trio.current_time()
            exit = await controller.wait("sb")
            elapsed = trio.current_time() - started
            assert exit.exit_status == expected
            assert elapsed >= 0.5 + (0.5 if expected == 137 else 0)
            status = await controller.status("sb")
            assert status.info["reason"] == REASON_LIFETIME_EXPIRED
            await controller.shutdown("sb")


# -- through the socket --------------------------------------------------------------------------


async def test_the_lifetime_and_its_reason_go_through_the_socket(
    sandboxd_client: RemoteController,
) -> None:
    client = sandboxd_client
    with trio.fail_after(GUARD):
        async with client.events() as events:
            await client.create("sb", sandboxer="sim", options=lifetime(0.2))
            await client.start("sb")
            assert (await client.wait("sb")).exit_status == 143
            async for event in events:
                if event.topic == TOPIC_EXIT:
                    break
        assert event.reason == REASON_LIFETIME_EXPIRED
        assert (await client.status("sb")).info["reason"] == REASON_LIFETIME_EXPIRED
        await client.shutdown("sb")
