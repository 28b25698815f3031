"""Calls running in tasks of their own, so a test can look at them while they wait."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


class Background:
    """A call running in a task of its own: once :attr:`done`, its result or the exception it
    raised, and the trio time it ended."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: Exception | None = None
        #: Whether it ended by being cancelled (``done`` is set then too).
        self.cancelled = False
        #: ``trio.current_time()`` when it ended.
        self.at: float | None = None
        #: The trio task the call runs in, once it started.
        self.trio_task: trio.lowlevel.Task | None = None

    async def wait(self) -> Background:
        await self.done.wait()
        return self

    async def result(self) -> Any:
        """Its value, once done; or the exception it raised, raised again."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value

    async def _run(self, call: Callable[[], Awaitable[Any]]) -> None:
        self.trio_task = trio.lowlevel.current_task()
        try:
            self.value = await call()
        except Exception as exc:
            self.error = exc
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.at = trio.current_time()
            self.done.set()


def in_background(nursery: trio.Nursery, call: Callable[[], Awaitable[Any]]) -> Background:
    """Start ``call()`` in ``nursery``; what it does can be looked at as it goes."""
    background = Background()
    nursery.start_soon(background._run, call)
    return background
