"""Lifecycle events fanned out to subscribers, each with a bounded buffer.

A subscriber that falls behind never loses events silently: once its buffer is full, later
events are counted instead of kept, and where the gap is it receives one event with topic
``/events/dropped`` whose ``dropped`` says how many it missed.
"""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from typing import Final, final

import trio

from .._models import TOPIC_DROPPED, SandboxEvent

DEFAULT_SUBSCRIBER_BUFFER: Final = 8192


@final
class Subscription:
    """The events published after :meth:`EventBus.subscribe`, in order.

    Iterate with ``async for``; iteration ends when the subscription or the bus is closed.
    Waiting for the next event is a checkpoint and can be cancelled without losing events.
    """

    __slots__ = ("_buffer", "_bus", "_closed", "_dropped", "_limit", "_wake")

    def __init__(self, bus: EventBus, limit: int) -> None:
        self._bus = bus
        self._buffer: collections.deque[SandboxEvent] = collections.deque()
        self._dropped = 0
        self._limit = limit
        self._wake = trio.Event()
        self._closed = False

    def _offer(self, event: SandboxEvent) -> None:
        if len(self._buffer) >= self._limit:
            self._dropped += 1
            return
        if self._dropped:
            self._buffer.append(self._dropped_event())
        self._buffer.append(event)
        self._wake.set()

    def _dropped_event(self) -> SandboxEvent:
        dropped, self._dropped = self._dropped, 0
        return SandboxEvent(
            topic=TOPIC_DROPPED, sandbox_id="", timestamp=datetime.now(UTC), dropped=dropped
        )

    def close(self) -> None:
        """Stop receiving events; a consumer waiting in iteration sees its end."""
        if not self._closed:
            self._closed = True
            self._bus._subscribers.discard(self)
            self._wake.set()

    def __aiter__(self) -> _Iterator:
        return _Iterator(self)

    async def next(self) -> SandboxEvent:
        """The next event; raises :class:`StopAsyncIteration` once closed and drained."""
        while True:
            if self._buffer:
                await trio.lowlevel.checkpoint()
                return self._buffer.popleft()
            if self._dropped:
                await trio.lowlevel.checkpoint()
                return self._dropped_event()
            if self._closed:
                raise StopAsyncIteration
            self._wake = trio.Event()
            await self._wake.wait()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@final
class _Iterator:
    """Iteration over a subscription; ending it early leaves the subscription open."""

    __slots__ = ("_subscription",)

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    def __aiter__(self) -> _Iterator:
        return self

    async def __anext__(self) -> SandboxEvent:
        return await self._subscription.next()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@final
class EventBus:
    """Publishes :class:`~sandboxd.SandboxEvent` to every current subscriber.  Never blocks."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._closed = False

    def subscribe(self, limit: int = DEFAULT_SUBSCRIBER_BUFFER) -> Subscription:
        """A new subscription; one taken after :meth:`close` is already at its end."""
        sub = Subscription(self, limit)
        if self._closed:
            sub.close()
        else:
            self._subscribers.add(sub)
        return sub

    def publish(self, event: SandboxEvent) -> None:
        for sub in self._subscribers:
            sub._offer(event)

    def close(self) -> None:
        """End every subscription, now and to come."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.close()
