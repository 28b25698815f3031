"""The fuzzer sees bugs beyond a call's outcome: deadlines (which Stop's SIGKILL comes when),
the lifecycle events, and every field of an answer.  Each test injects one bug of a class
into an in-process Controller (wrapped, or with one method of its actor patched) and shows
that a short fuzz run finds it; a correct Controller passes the same checks."""

from __future__ import annotations

import math
import re
import signal
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import attrs
import pytest
import trio
from hypothesis import strategies as st

from sandboxd import SandboxEvent, SandboxStatus
from sandboxd._models import TOPIC_DELETE, TOPIC_EXIT
from sandboxd.runtime._actor import SandboxActor
from sandboxd.testing import Program, serve_in_thread, sim_faults, strategies
from sandboxd.testing.fuzz import FuzzReport, fuzz
from test_fuzz import Wrapper as ControllerWrapper
from test_fuzz import in_process, quiet_runtime  # noqa: F401 (an autouse fixture)

#: The grace period of test_fuzz's in-process controllers, which the model is told.
STOP_TIMEOUT = 0.005


def run(wrap: Callable[[Any], Any] | None = None, seed: int = 0, **kwargs: Any) -> FuzzReport:
    kwargs.setdefault("duration", 30)
    kwargs.setdefault("shrink_limit", 2)
    return fuzz(in_process(wrap), seed=seed, stop_timeout=STOP_TIMEOUT, **kwargs)


def test_a_correct_controller_passes_every_check() -> None:
    for seed in (1, 2):
        report = run(seed=seed, max_programs=400, duration=None)
        assert report.ok, report.violation and report.violation.describe()


# -- time ----------------------------------------------------------------------------------


def arm_later_deadline_wins(self: SandboxActor, grace: float) -> None:
    """Bug: of two Stops with different timeouts, the later deadline kills."""
    if grace <= 0:
        self._kill_deadline = math.inf
        self._signal(signal.SIGKILL)
        return
    deadline = trio.current_time() + grace
    if self._kill_deadline == math.inf:
        self._signal(signal.SIGTERM)
        self._kill_deadline = deadline
    else:
        self._kill_deadline = max(deadline, self._kill_deadline)


def arm_ignoring_the_grace(self: SandboxActor, grace: float) -> None:
    """Bug: a Stop kills at once, whatever its grace period."""
    self._kill_deadline = math.inf
    self._signal(signal.SIGTERM)
    self._signal(signal.SIGKILL)


#: Stops and waits on processes that may ignore SIGTERM, with a few timeouts.
STOPS = strategies.programs(
    1,
    clients=3,
    max_calls=8,
    names=("create", "start", "stop", "wait", "status"),
    create=strategies.create_args(options=strategies.create_options(max_faults=1)),
    stop_timeout=strategies.stop_timeouts((None, 0, 0.002, 0.02)),
)


@pytest.mark.parametrize("bug", [arm_later_deadline_wins, arm_ignoring_the_grace])
def test_a_deadline_bug_is_found(monkeypatch: pytest.MonkeyPatch, bug: Any) -> None:
    monkeypatch.setattr(SandboxActor, "_arm_kill", bug)
    report = run(seed=2, programs=STOPS)
    violation = report.violation
    assert violation is not None, report.summary()
    assert violation.kind == "not linearizable", violation.describe()
    calls = violation.program.calls
    # Found through a Stop, or through the stop that the end of a sandbox's lifetime makes
    # (which arms the same kill); which one comes first depends on the interleaving.
    assert "stop" in [call.name for call in calls] or any(
        call.name == "create" and call.args["options"].lifetime_secs for call in calls
    ), violation.describe()


# -- events ----------------------------------------------------------------------------------


class Wrapper(ControllerWrapper):
    @asynccontextmanager
    async def events(self) -> AsyncIterator[Published]:
        async with self._controller.events() as subscription:
            yield Published(subscription, self.publish)

    def publish(self, event: SandboxEvent) -> SandboxEvent | None:
        """The event a subscriber gets (``None``: none)."""
        return event


class Published:
    """The events of a subscription, as a wrapper publishes them (a class: no async
    generator is left for the garbage collector to close)."""

    def __init__(
        self,
        events: AsyncIterable[SandboxEvent],
        publish: Callable[[SandboxEvent], SandboxEvent | None],
    ) -> None:
        self._events = aiter(events)
        self._publish = publish

    def __aiter__(self) -> Published:
        return self

    async def __anext__(self) -> SandboxEvent:
        while True:
            event = self._publish(await anext(self._events))
            if event is not None:
                return event


class LosesExitsOfShutdowns(Wrapper):
    """Bug: the exit of a process killed by Shutdown is never published."""

    def __init__(self, controller: Any) -> None:
        super().__init__(controller)
        self.shutting_down: set[str] = set()

    async def shutdown(self, sandbox_id: str) -> None:
        self.shutting_down.add(sandbox_id)
        await self._controller.shutdown(sandbox_id)

    def publish(self, event: SandboxEvent) -> SandboxEvent | None:
        if event.topic == TOPIC_EXIT and event.sandbox_id in self.shutting_down:
            return None
        if event.topic == TOPIC_DELETE:
            self.shutting_down.discard(event.sandbox_id)
        return event


class ReportsKillsAsTerms(Wrapper):
    """Bug: an exit event says 143 where the process died of SIGKILL (137)."""

    def publish(self, event: SandboxEvent) -> SandboxEvent | None:
        if event.exit_status == 137:
            return attrs.evolve(event, exit_status=143)
        return event


@pytest.mark.parametrize(
    ("bug", "says"),
    [
        (LosesExitsOfShutdowns, "event /sandboxes/delete where the lifecycle is at"),
        # Found either way: a status no process of it can report, or one Wait contradicts.
        (ReportsKillsAsTerms, "exit status 143 in its exit event|its exit event says 143"),
    ],
)
def test_an_events_bug_is_found(bug: type[Wrapper], says: str) -> None:
    report = run(bug, seed=1)
    violation = report.violation
    assert violation is not None, report.summary()
    assert violation.kind == "wrong events", violation.describe()
    assert re.search(says, violation.description), violation.description
    assert len(violation.program) <= 4, violation.describe()


# -- fields ----------------------------------------------------------------------------------


class CachesStatusByID(Wrapper):
    """Bug: Status keeps a sandbox's creation time by id, stale once the id is reused."""

    def __init__(self, controller: Any) -> None:
        super().__init__(controller)
        self.created: dict[str, Any] = {}

    async def status(self, sandbox_id: str, *, verbose: bool = False) -> SandboxStatus:
        status: SandboxStatus = await self._controller.status(sandbox_id, verbose=verbose)
        created = self.created.setdefault(sandbox_id, status.created_at)
        return attrs.evolve(status, created_at=created)


class ExitsBeforeItWasCreated(Wrapper):
    """Bug: Status reports an exit time a millisecond before the creation time."""

    async def status(self, sandbox_id: str, *, verbose: bool = False) -> SandboxStatus:
        status: SandboxStatus = await self._controller.status(sandbox_id, verbose=verbose)
        if status.exited_at is None:
            return status
        return attrs.evolve(status, exited_at=status.created_at - timedelta(milliseconds=1))


#: Lives of one sandbox id, one after the other, with Status calls to look at them.
REUSE = strategies.programs(
    1,
    clients=2,
    max_calls=10,
    names=("create", "start", "stop", "status", "shutdown", "wait"),
)


@pytest.mark.parametrize(
    ("bug", "says"),
    [
        (CachesStatusByID, "created_at"),
        (ExitsBeforeItWasCreated, "is before created_at"),
    ],
)
def test_a_fields_bug_is_found(bug: type[Wrapper], says: str) -> None:
    report = run(bug, seed=1, programs=REUSE)
    violation = report.violation
    assert violation is not None, report.summary()
    assert violation.kind == "wrong fields", violation.describe()
    assert says in violation.description, violation.description


def test_the_programs_of_these_tests_pass_a_correct_controller() -> None:
    for programs in (STOPS, REUSE):
        report = run(programs=programs, max_programs=300, duration=None)
        assert report.ok, report.violation and report.violation.describe()
    assert isinstance(Program([]), Program)


# -- over the socket -------------------------------------------------------------------------


#: Stops with a grace period longer than the socket's tolerance, on processes that ignore
#: SIGTERM: a daemon that ignores the grace answers them too soon.
SLOW_STOPS = strategies.programs(
    1,
    clients=2,
    max_calls=5,
    names=("create", "start", "stop", "wait"),
    create=strategies.create_args(options=st.just(sim_faults(ignore_sigterm=True))),
    stop_timeout=st.just(0.3),
)


def over_the_socket(**kwargs: Any) -> FuzzReport:
    with serve_in_thread(default_sandboxer="sim", stop_timeout=0.3) as path:
        return fuzz(path, seed=1, programs=SLOW_STOPS, stop_timeout=0.3, tolerance=0.1, **kwargs)


def test_over_the_socket_a_grace_ignored_is_found_within_the_tolerance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert over_the_socket(max_programs=5, duration=None).ok
    monkeypatch.setattr(SandboxActor, "_arm_kill", arm_ignoring_the_grace)
    report = over_the_socket(duration=20, shrink_limit=2)
    violation = report.violation
    assert violation is not None, report.summary()
    assert violation.kind == "not linearizable", violation.describe()
