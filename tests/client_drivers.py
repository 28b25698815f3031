"""One test, every client: drivers that call the Controller clients by the same method names.

A test written against :class:`Driver` runs over the in-process Controller, the trio
RemoteController, the blocking SyncController and the asyncio AsyncController.  What differs
between the clients (an async iterator or a blocking one, an event loop of their own, how a
caller gives up on a call) is all a driver hides; what they return and raise is not
touched, so a test sees each client's own models and errors.

The trio client and the in-process Controller run in the test's loop.  The SyncController
runs each call in a worker thread; the AsyncController lives in an asyncio loop on a thread of
its own, and each call is a task of that loop.  So every client is one object serving the
test's concurrent calls, as it serves a program's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Literal, Protocol

import trio

import sandboxd.aio
from sandboxd import (
    DeadlineExceeded,
    ExecExit,
    ExecOutput,
    ExecRequest,
    LogChunk,
    LogGap,
    SandboxEvent,
    SyncController,
    connect,
)

#: The remote clients, by the names the tests are parametrised with.
CLIENTS = ("trio", "sync", "asyncio")

#: Seconds the sync and asyncio clients give a call that names no timeout: a guard, so a
#: test that hangs fails instead (the trio tests have their watchdog).
CALL_TIMEOUT = 30.0

#: How a test gives up on a call: its deadline passes, or the caller cancels it.
GiveUp = Literal["deadline", "cancel"]


class Driver(Protocol):
    #: ``trio``, ``sync``, ``asyncio`` or ``in-process``.
    name: str
    #: What a call raises when the deadline its caller set passes: DeadlineExceeded from a
    #: ``timeout``; for trio, whose deadlines are cancel scopes, ``trio.fail_after``'s error.
    deadline_error: type[BaseException]

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(*args, **kwargs)``."""

    async def call_within(self, seconds: float, method: str, *args: Any, **kwargs: Any) -> Any:
        """The call with a deadline ``seconds`` away, set the client's own way."""

    async def give_up(self, how: GiveUp, seconds: float, method: str, *args: Any) -> None:
        """Start the call and give it up after ``seconds`` the client's own way (a trio cancel
        scope; asyncio.timeout or task.cancel(); a sync ``timeout``); fails the test if the
        call ends otherwise."""

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[SandboxEvent]]:
        """Subscribed to Events for the block; the subscription is in place on entry."""

    def another(
        self, *, timeout: float | None = None
    ) -> AbstractAsyncContextManager[ClosableDriver]:
        """A driver on a new client of the same kind (connected through the client's own
        ``with`` statement, with ``timeout`` as every call's default), closed at the end."""

    #: ``run(sandbox_id, request, stdin=None, resize=None)``: exec ``request``, resize its
    #: terminal to ``resize`` (rows, columns), write ``stdin`` and close it; the output and
    #: how it ended.
    run: Callable[..., Awaitable[tuple[list[ExecOutput], ExecExit]]]

    async def write_pieces(self, sandbox_id: str, path: str, pieces: list[bytes]) -> int:
        """``write_file`` from an iterator of ``pieces`` (an async one where the client's
        methods are async)."""

    async def read_file(self, sandbox_id: str, path: str) -> bytes: ...

    async def logs(self, sandbox_id: str, **kwargs: Any) -> list[LogChunk | LogGap]: ...


class ClosableDriver(Driver, Protocol):
    async def close(self) -> None:
        """Close the client (leave its ``with`` block); later calls are refused."""


class AsyncDriver:
    """The in-process Controller or a RemoteController: the same async methods.  Also what
    the asyncio driver runs in its loop."""

    deadline_error: type[BaseException] = trio.TooSlowError

    def __init__(
        self, client: Any, name: str = "trio", *, path: str = "", timeout: float | None = None
    ) -> None:
        self.client = client
        self.name = name
        self.path = path
        self._timeout = timeout
        self._exit = AsyncExitStack()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._timeout is not None:
            return await self.call_within(self._timeout, method, *args, **kwargs)
        return await getattr(self.client, method)(*args, **kwargs)

    async def call_within(self, seconds: float, method: str, *args: Any, **kwargs: Any) -> Any:
        with trio.fail_after(seconds):
            return await getattr(self.client, method)(*args, **kwargs)

    async def give_up(self, how: GiveUp, seconds: float, method: str, *args: Any) -> None:
        with trio.move_on_after(seconds) as scope:
            await getattr(self.client, method)(*args)
        assert scope.cancelled_caught, f"{method} ended before it was given up"

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[SandboxEvent]]:
        async with self.client.events() as events:
            await self.client.list()  # answered after the Events request: subscribed
            yield events

    @asynccontextmanager
    async def another(self, *, timeout: float | None = None) -> AsyncIterator[AsyncDriver]:
        other = AsyncDriver(None, path=self.path, timeout=timeout)
        other.client = await other._exit.enter_async_context(connect(self.path))
        try:
            yield other
        finally:
            await other.close()

    async def close(self) -> None:
        await self._exit.aclose()

    async def run(
        self,
        sandbox_id: str,
        request: ExecRequest,
        stdin: bytes | None = None,
        resize: tuple[int, int] | None = None,
    ) -> tuple[list[ExecOutput], ExecExit]:
        async with self.client.exec(sandbox_id, request) as proc:
            assert proc.pid > 0 and proc.exec_id
            if resize is not None:
                await proc.resize(*resize)
            if stdin is not None:
                await proc.write(stdin)
                await proc.close_stdin()
            chunks = [chunk async for chunk in proc]
            return chunks, await proc.wait()

    async def write_pieces(self, sandbox_id: str, path: str, pieces: list[bytes]) -> int:
        async def each() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        size: int = await self.client.write_file(sandbox_id, path, each())
        return size

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        async with self.client.read_file(sandbox_id, path) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async def logs(self, sandbox_id: str, **kwargs: Any) -> list[LogChunk | LogGap]:
        async with self.client.logs(sandbox_id, **kwargs) as chunks:
            return [chunk async for chunk in chunks]


async def _in_thread(fn: Callable[[], Any]) -> Any:
    # Abandoned on cancel, so a hung call fails its test (the watchdog) instead of hanging it.
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


class _Bridged(AsyncIterator[Any]):
    """An iterator living elsewhere (a thread, another loop), read from trio."""

    def __init__(self, step: Callable[[], Awaitable[Any]]) -> None:
        self._step = step

    def __aiter__(self) -> _Bridged:
        return self

    async def __anext__(self) -> Any:
        return await self._step()


_END = object()


def _next_or_end(iterator: Any) -> Any:
    return next(iterator, _END)


class SyncDriver:
    """A SyncController, each call in a worker thread."""

    name = "sync"
    deadline_error: type[BaseException] = DeadlineExceeded

    def __init__(self, client: SyncController) -> None:
        self.client = client

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await _in_thread(lambda: getattr(self.client, method)(*args, **kwargs))

    async def call_within(self, seconds: float, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.call(method, *args, timeout=seconds, **kwargs)

    async def give_up(self, how: GiveUp, seconds: float, method: str, *args: Any) -> None:
        # A blocking call cannot be cancelled from outside: its timeout is how it gives up.
        try:
            await self.call_within(seconds, method, *args)
        except DeadlineExceeded:
            return
        raise AssertionError(f"{method} ended before it was given up")

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[SandboxEvent]]:
        manager = self.client.events()
        events = await _in_thread(manager.__enter__)
        try:
            await self.call("list")  # answered after the Events request: subscribed

            async def step() -> SandboxEvent:
                event = await _in_thread(lambda: _next_or_end(events))
                if event is _END:
                    raise StopAsyncIteration
                return event  # type: ignore[no-any-return]

            yield _Bridged(step)
        finally:
            await _in_thread(lambda: manager.__exit__(None, None, None))

    @asynccontextmanager
    async def another(self, *, timeout: float | None = None) -> AsyncIterator[SyncDriver]:
        path = self.client.client.path
        with SyncController(path, timeout=timeout) as client:
            yield SyncDriver(client)

    async def close(self) -> None:
        await _in_thread(self.client.close)

    async def run(
        self,
        sandbox_id: str,
        request: ExecRequest,
        stdin: bytes | None = None,
        resize: tuple[int, int] | None = None,
    ) -> tuple[list[ExecOutput], ExecExit]:
        def run() -> tuple[list[ExecOutput], ExecExit]:
            with self.client.exec(sandbox_id, request) as proc:
                assert proc.pid > 0 and proc.exec_id
                if resize is not None:
                    proc.resize(*resize)
                if stdin is not None:
                    proc.write(stdin)
                    proc.close_stdin()
                chunks = list(proc)
                return chunks, proc.wait()

        result: tuple[list[ExecOutput], ExecExit] = await _in_thread(run)
        return result

    async def write_pieces(self, sandbox_id: str, path: str, pieces: list[bytes]) -> int:
        return await self.call("write_file", sandbox_id, path, iter(pieces))  # type: ignore[no-any-return]

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        def read() -> bytes:
            with self.client.read_file(sandbox_id, path) as chunks:
                return b"".join(chunks)

        data: bytes = await _in_thread(read)
        return data

    async def logs(self, sandbox_id: str, **kwargs: Any) -> list[LogChunk | LogGap]:
        def read() -> list[LogChunk | LogGap]:
            with self.client.logs(sandbox_id, **kwargs) as chunks:
                return list(chunks)

        chunks: list[LogChunk | LogGap] = await _in_thread(read)
        return chunks


class _Loop:
    """An asyncio event loop running on a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` as a task of the loop; its result, or what it raised."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return await _in_thread(future.result)
        except trio.Cancelled:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class AsyncioDriver:
    """An AsyncController in an asyncio loop on a thread of its own, each call a task there."""

    name = "asyncio"
    deadline_error: type[BaseException] = DeadlineExceeded

    def __init__(self, loop: _Loop, client: sandboxd.aio.AsyncController, path: str) -> None:
        self._loop = loop
        self.path = path
        self.client = client
        self._async = AsyncDriver(client)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self._loop.run(getattr(self.client, method)(*args, **kwargs))

    async def call_within(self, seconds: float, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.call(method, *args, timeout=seconds, **kwargs)

    async def give_up(self, how: GiveUp, seconds: float, method: str, *args: Any) -> None:
        async def by_timeout() -> None:
            try:
                async with asyncio.timeout(seconds):
                    await getattr(self.client, method)(*args)
            except TimeoutError:
                return
            raise AssertionError(f"{method} ended before it was given up")

        async def by_cancel() -> None:
            task = asyncio.ensure_future(getattr(self.client, method)(*args))
            done, _ = await asyncio.wait([task], timeout=seconds)
            assert not done, f"{method} ended before it was given up"
            task.cancel()
            await asyncio.wait([task])
            assert task.cancelled()

        await self._loop.run(by_timeout() if how == "deadline" else by_cancel())

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[SandboxEvent]]:
        manager = self.client.events()
        events = await self._loop.run(manager.__aenter__())
        try:
            await self.call("list")  # answered after the Events request: subscribed

            async def step() -> SandboxEvent:
                event = await self._loop.run(anext_or_end(events))
                if event is _END:
                    raise StopAsyncIteration
                return event  # type: ignore[no-any-return]

            yield _Bridged(step)
        finally:
            await self._loop.run(manager.__aexit__(None, None, None))

    @asynccontextmanager
    async def another(self, *, timeout: float | None = None) -> AsyncIterator[AsyncioDriver]:
        async with open_asyncio_driver(self.path, timeout=timeout) as other:
            yield other

    async def close(self) -> None:
        await self._loop.run(self.client.aclose())

    def _in_loop(name: str) -> Any:  # type: ignore[misc]
        """The AsyncDriver's method ``name``, run in the loop."""

        async def method(self: AsyncioDriver, *args: Any, **kwargs: Any) -> Any:
            return await self._loop.run(getattr(self._async, name)(*args, **kwargs))

        return method

    run = _in_loop("run")
    write_pieces = _in_loop("write_pieces")
    read_file = _in_loop("read_file")
    logs = _in_loop("logs")


async def anext_or_end(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


@asynccontextmanager
async def open_asyncio_driver(
    path: str, *, timeout: float | None = CALL_TIMEOUT
) -> AsyncIterator[AsyncioDriver]:
    """An AsyncioDriver on a new loop and client, connected with ``sandboxd.aio.connect``."""
    loop = _Loop()
    try:
        manager = sandboxd.aio.connect(path, timeout=timeout)
        client = await loop.run(manager.__aenter__())
        try:
            yield AsyncioDriver(loop, client, path)
        finally:
            await loop.run(manager.__aexit__(None, None, None))
    finally:
        loop.close()


@asynccontextmanager
async def open_driver(name: str, path: str) -> AsyncIterator[Driver]:
    """A driver of the remote client ``name`` (one of :data:`CLIENTS`) connected to ``path``."""
    if name == "trio":
        async with connect(path) as client:
            yield AsyncDriver(client, path=path)
    elif name == "asyncio":
        async with open_asyncio_driver(path) as driver:
            yield driver
    else:
        with SyncController(path, timeout=CALL_TIMEOUT) as client:
            yield SyncDriver(client)
