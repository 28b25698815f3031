"""The in-process Controller's calls: bad input, List, events, closing it, the Reply twins.

Sandboxes of the ``sim`` backend, under trio's autojump clock (``sim_controller.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from background import in_background
from sandboxd import AlreadyExists, InvalidArgument, NotFound, Unavailable
from sandboxd._models import (
    TOPIC_CREATE,
    TOPIC_DELETE,
    TOPIC_DROPPED,
    TOPIC_EXIT,
    TOPIC_START,
    SandboxEvent,
    SandboxInstance,
    SandboxOptions,
    SandboxState,
    SandboxStatus,
)
from sandboxd.backends import SimBackend
from sandboxd.runtime import Controller
from sim_controller import SIM_GUARD, create, running, started, take

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


@asynccontextmanager
async def closable(sim: SimBackend) -> AsyncIterator[tuple[Controller, trio.CancelScope]]:
    """A running Controller over ``sim``, and the scope whose cancellation closes it."""
    async with trio.open_nursery() as inner:
        yield await inner.start(Controller([sim]).run), inner.cancel_scope


async def test_closing_the_controller_wakes_parked_callers_with_unavailable(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = SimBackend()
    with trio.fail_after(SIM_GUARD):
        async with closable(sim) as (controller, closing):
            await controller.create("sb", sandboxer="sim")
            await controller.start("sb")
            await controller.create(
                "stopping", sandboxer="sim", options=SandboxOptions(sim={"ignore_sigterm": True})
            )
            await controller.start("stopping")
            waiter = in_background(nursery, lambda: controller.wait("sb"))
            stopper = in_background(
                nursery, lambda: controller.stop("stopping", timeout_secs=1000)
            )

            async def drain_events() -> list[SandboxEvent]:
                async with controller.events() as events:
                    return [e async for e in events]

            consumer = in_background(nursery, drain_events)
            await trio.testing.wait_all_tasks_blocked()
            assert not waiter.done.is_set()
            closing.cancel()
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
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    # "No call can hang because its peer vanished": a Start whose backend is still starting
    # when the controller closes is answered too.
    sim = SimBackend()
    with trio.fail_after(SIM_GUARD):
        async with closable(sim) as (controller, closing):
            await controller.create(
                "sb", sandboxer="sim", options=SandboxOptions(sim={"start_delay": 100})
            )
            start = in_background(nursery, lambda: controller.start("sb"))
            await trio.testing.wait_all_tasks_blocked()
            assert not start.done.is_set()
            closing.cancel()
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
    async with closable(SimBackend()) as (controller, closing):
        await controller.create("sb", sandboxer="sim")
        await controller.start("sb")
        closing.cancel()
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
