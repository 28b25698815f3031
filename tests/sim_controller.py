"""A running Controller with a fresh ``sim`` backend, and shorthands to drive its sandboxes.

The Controller's tests drive ``sim`` sandboxes under trio's autojump clock: grace periods and
timers of minutes pass at once, and ``trio.current_time()`` says exactly when something
happened.  A generous ``fail_after`` turns a hang into a failure (under the autojump clock,
immediately).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import trio

from sandboxd._models import SandboxEvent, SandboxOptions, SandboxState
from sandboxd.backends import ProcessBackend, SimBackend
from sandboxd.runtime import Controller, Subscription, open_controller

#: Far beyond any simulated timer in these tests; under the autojump clock it costs nothing.
SIM_GUARD = 10_000


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
    """The next ``count`` events of ``subscription``."""
    events: list[SandboxEvent] = []
    if count == 0:
        return events
    async with aclosing(aiter(subscription)) as iterator:
        async for event in iterator:
            events.append(event)
            if len(events) == count:
                break
    return events
