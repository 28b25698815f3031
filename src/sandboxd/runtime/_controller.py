"""The Controller: the sandbox contract, in process.  Maps sandbox ids to their actors."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final, final

import trio

from .._errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from .._models import (
    DEFAULT_EXEC_SYNC_OUTPUT,
    STDERR,
    STDOUT,
    ExecRequest,
    ExecSyncResult,
    ExitStatus,
    ListPage,
    Mount,
    Platform,
    SandboxInstance,
    SandboxMetrics,
    SandboxOptions,
    SandboxSpec,
    SandboxStatus,
    check_list_limit,
    check_page_token,
    check_sandbox_id,
)
from ..backends import (
    Backend,
    BwrapBackend,
    CgroupBackend,
    ProcessBackend,
    SandboxProcess,
    SimBackend,
    cgroup_counters,
    detect_cgroups,
    parent_name,
    with_cgroups,
)
from ._actor import ActorContext, SandboxActor
from ._events import DEFAULT_SUBSCRIBER_BUFFER, EventBus, Subscription
from ._exec import CHUNK_SIZE, MAX_EXEC_SYNC_OUTPUT, ExecSession, check_timeout, resolve
from ._index import SandboxIndex
from ._lifecycle import Input, Phase, decide
from ._lifecycle_log import LifecycleLog
from ._logs import DEFAULT_MAX_LOG_BYTES, LogDirectory, LogReader
from ._reply import Reply, Waiter
from ._store import SandboxStore

log = logging.getLogger("sandboxd.runtime")

#: Seconds between SIGTERM and SIGKILL when Stop gives no ``timeout_secs``.
DEFAULT_STOP_TIMEOUT: Final = 10.0
#: The default sandboxer where bubblewrap cannot run (see :func:`preferred_sandboxer`).
DEFAULT_SANDBOXER: Final = "process"
DEFAULT_MAX_SANDBOXES: Final = 100_000
#: The most sandboxes one List page looks at (matching its labels or not, gone or not), so
#: that a page answered inline never holds up the loop for long.
LIST_SCAN_LIMIT: Final = 20_000


def default_backends(log_dir: str | os.PathLike[str] | None = None) -> list[Backend]:
    """The backends a Controller has unless told otherwise: ``process``, ``bwrap`` and
    ``sim`` (``bwrap`` refuses Create with FAILED_PRECONDITION where bubblewrap cannot run),
    making their output pipes in ``log_dir``."""
    return [ProcessBackend(log_dir=log_dir), BwrapBackend(log_dir=log_dir), SimBackend()]


def _metrics(
    sandbox_id: str, actor: SandboxActor, cpu_ns: int, rss: int, pids: int
) -> SandboxMetrics:
    """The figures read, with the peak and OOM counters of a running sandbox that has a
    cgroup."""
    running = actor.phase is not Phase.STOPPED
    counters = cgroup_counters(actor.process) if running else None
    return SandboxMetrics(
        sandbox_id,
        datetime.now(UTC),
        cpu_ns,
        rss,
        pids,
        memory_peak_bytes=None if counters is None else counters.memory_peak_bytes,
        oom_kills=None if counters is None else counters.oom_kills,
    )


def preferred_sandboxer(backends: Iterable[Backend]) -> str:
    """The sandboxer a Controller uses when Create names none and it was given no default:
    ``bwrap`` if it is among ``backends`` and bubblewrap can run here (namespaces isolate the
    sandbox), else :data:`DEFAULT_SANDBOXER` (``process``, which isolates nothing)."""
    for backend in backends:
        if backend.name == "bwrap" and backend.unavailable_reason() is None:
            return "bwrap"
    return DEFAULT_SANDBOXER


@final
class Controller:
    """containerd's sandbox Controller contract, in process.

    Run it in a nursery -- ``controller = await nursery.start(Controller().run)`` -- or with
    :func:`open_controller`.  Every method raises :class:`~sandboxd.RPCError` subclasses, the
    same ones the remote client raises: INVALID_ARGUMENT for a malformed id (checked before
    the lookup), NOT_FOUND for an unknown one, and the refusals of the lifecycle table.

    Calls on one sandbox are applied in the order they reach its actor; calls on different
    sandboxes never wait for each other.  Each call that goes through the sandbox's actor has
    a ``request_*`` twin that never blocks and answers through a :class:`Reply` instead (what
    the RPC server hands it, so a remote call costs no task of its own).  Queries
    (``*_nowait`` and their async twins) answer from the state the sandbox's actor last
    published: never behind its mailbox, and always showing the effect of every call that
    returned before the query began.

    Execs and files (:meth:`exec`, :meth:`exec_sync`, :meth:`write_file`,
    :meth:`read_file`) stream, so they run in the caller's task and have no twin.

    Cancelling :meth:`run` closes the controller: callers still waiting get UNAVAILABLE and
    event subscriptions end, but sandbox processes keep running (their lives are independent
    of the runtime's, as with containerd); execs are killed (their pipes are the runtime's).

    What sandboxes write is kept in ``log_dir`` (``<sandbox id>.log``, rotated to
    ``.log.1`` at ``max_log_bytes``; see :meth:`logs`), or without one in a private temporary
    directory removed when :meth:`run` ends.  For output to be read again by a controller
    restarted on the same store, the backends need the same ``log_dir`` (their output
    pipes are made there): the default ones get it.
    """

    def __init__(
        self,
        backends: Iterable[Backend] | None = None,
        *,
        default_sandboxer: str | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        max_sandboxes: int = DEFAULT_MAX_SANDBOXES,
        subscriber_buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
        store: SandboxStore | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
    ) -> None:
        if backends is None:
            # Every sandbox in a cgroup of its own where cgroups can be used, as sandboxd
            # serve does; elsewhere Create with resources says why not.
            cgroups, described = detect_cgroups(parent_name(None))
            backends = with_cgroups(default_backends(log_dir), cgroups, described)
        self._backends: dict[str, Backend] = {b.name: b for b in backends}
        #: The sandboxer of a Create that names none (by default :func:`preferred_sandboxer`).
        self.default_sandboxer = (
            preferred_sandboxer(self._backends.values())
            if default_sandboxer is None
            else default_sandboxer
        )
        #: Seconds between SIGTERM and SIGKILL for a Stop that gives no timeout (read when
        #: :meth:`run` starts).
        self.stop_timeout = stop_timeout
        self.max_sandboxes = max_sandboxes
        self._subscriber_buffer = subscriber_buffer
        #: Where sandbox records are kept; None keeps them in memory only.
        self.store = store
        self._actors: dict[str, SandboxActor] = {}
        #: The ids in order, for List's pages: every id added to ``_actors`` is noted in it.
        self._index = SandboxIndex(self._actors)
        #: Where the sandboxes' output is kept (see :meth:`logs`).
        self._logs = LogDirectory(None if log_dir is None else os.fspath(log_dir), max_log_bytes)
        self._events = EventBus()
        # What the actors are given, and where they run; both set while running.
        self._context: ActorContext | None = None
        self._actor_nursery: trio.Nursery | None = None
        self._closed = False

    # -- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the controller's actors until cancelled; reports ``self`` once ready."""
        if self._actor_nursery is not None:
            raise RuntimeError("this Controller is already running")
        try:
            self._logs.open()
            async with trio.open_nursery() as processes, trio.open_nursery() as actors:
                store = self.store
                lifecycle = LifecycleLog(processes)
                self._context = ActorContext(
                    write=None if store is None else store.write,
                    stop_timeout=self.stop_timeout,
                    process_nursery=processes,
                    publish=self._events.publish,
                    forget=self._forget,
                    logs=self._logs,
                    lifecycle=lifecycle,
                )
                self._actor_nursery = actors
                if store is not None:
                    processes.start_soon(store.run, name="sandboxd: state store")
                    await self._recover(store, self._context, actors)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._closed = True
            self._context = None
            self._actor_nursery = None
            self._events.close()
            # Readers end; the sandboxes' pipes are left to the next run (they hold them).
            self._finish_output()
            self._logs.close()

    async def _recover(
        self, store: SandboxStore, context: ActorContext, actors: trio.Nursery
    ) -> None:
        """Take up every sandbox the store remembers (see :meth:`SandboxActor.restore`)."""
        records = await trio.to_thread.run_sync(store.load)
        for record in sorted(records, key=lambda r: r.created_at):
            spec = record.spec
            backend = self._backends.get(spec.sandboxer)
            if backend is None:
                log.error(
                    "sandbox %s: its sandboxer %r is not available; left in the store",
                    spec.sandbox_id,
                    spec.sandboxer,
                )
                continue
            actor = SandboxActor(spec, backend, context)
            if actor.restore(record):
                self._actors[spec.sandbox_id] = actor
                self._index.add(spec.sandbox_id)
                actors.start_soon(actor.run, name=f"sandbox {spec.sandbox_id}")
            else:
                await store.delete(spec.sandbox_id)
        context.lifecycle.flush()  # before the daemon says it is ready
        if records:
            log.info("recovered %d sandboxes from %s", len(self._actors), store.path)
        await self._sweep_cgroups()

    async def _sweep_cgroups(self) -> None:
        """Remove the cgroups of sandboxes that are gone (after a restart)."""
        swept = set()
        for backend in self._backends.values():
            cgroups = backend.cgroups if isinstance(backend, CgroupBackend) else None
            if cgroups is not None and id(cgroups) not in swept:
                swept.add(id(cgroups))
                await cgroups.sweep(self._actors)

    @property
    def sandboxers(self) -> Mapping[str, Backend]:
        return dict(self._backends)

    def __len__(self) -> int:
        return len(self._actors)

    def _forget(self, actor: SandboxActor) -> None:
        # An actor's sandbox is gone: its id is free.
        if self._actors.get(actor.sandbox_id) is actor:
            del self._actors[actor.sandbox_id]

    def drain(self) -> None:
        """Get ready for the runtime to go away: end every event subscription, answer
        every parked Wait with UNAVAILABLE, and stop keeping output (followers of Logs end
        once they have read it; what sandboxes write from now on waits in their pipes for
        the next run), so long-lived calls do not hold up a shutdown.  Stops in progress go
        on; sandboxes keep running."""
        self._events.close()
        error = Unavailable("sandboxd is shutting down")
        for actor in self._actors.values():
            actor.abandon_waiters(error)
        self._finish_output()

    def _finish_output(self) -> None:
        for actor in self._actors.values():
            if actor.output is not None:
                actor.output.finish()

    def _actor(self, sandbox_id: str) -> SandboxActor:
        # Only valid ids are ever keys: one found needs no checking.
        actor = self._actors.get(sandbox_id) if type(sandbox_id) is str else None
        if actor is None:
            check_sandbox_id(sandbox_id)
        if self._closed:
            raise Unavailable("the controller is closed")
        if actor is None:
            raise NotFound(f"sandbox {sandbox_id!r} not found")
        return actor

    # -- the contract --------------------------------------------------------------------------

    def create_nowait(
        self,
        sandbox_id: str,
        *,
        sandboxer: str | None = None,
        options: SandboxOptions | None = None,
        rootfs: Iterable[Mount] = (),
        netns_path: str | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Create a sandbox in state ``created``; returns its id.  Never blocks.

        ``sandboxer`` names the backend (default :attr:`default_sandboxer`): NOT_FOUND when
        unknown, FAILED_PRECONDITION when it cannot run on this host.  The backend checks
        the options (INVALID_ARGUMENT naming the field; an executable that cannot be found
        is one).  RESOURCE_EXHAUSTED at :attr:`max_sandboxes`.  Only for a controller
        without a store, which has nothing to write: with one, use :meth:`create`.
        """
        if self.store is not None:
            raise RuntimeError(
                "a controller with a store creates with create(), not create_nowait()"
            )
        actor = self._admit(
            sandbox_id, sandboxer, options, rootfs, netns_path, annotations, labels
        )
        self._launch(actor, None)
        return sandbox_id

    def _admit(
        self,
        sandbox_id: str,
        sandboxer: str | None,
        options: SandboxOptions | None,
        rootfs: Iterable[Mount],
        netns_path: str | None,
        annotations: Mapping[str, str] | None,
        labels: Mapping[str, str] | None,
    ) -> SandboxActor:
        """Check a Create and reserve its id: the new actor, registered but not running."""
        check_sandbox_id(sandbox_id)
        existing = self._actors.get(sandbox_id)
        if existing is not None:
            decide(sandbox_id, existing.phase, Input.CREATE)  # raises ALREADY_EXISTS
        context = self._context
        if context is None:
            raise Unavailable("the controller is not running")
        name = self.default_sandboxer if sandboxer is None else sandboxer
        backend = self._backends.get(name)
        if backend is None:
            known = ", ".join(sorted(self._backends))
            raise NotFound(f"sandboxer {name!r} not found (available: {known})")
        reason = backend.unavailable_reason()
        if reason is not None:
            raise FailedPrecondition(f"sandboxer {name!r} is unavailable: {reason}")
        if len(self._actors) >= self.max_sandboxes:
            raise ResourceExhausted(f"at most {self.max_sandboxes} sandboxes may exist at once")
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            sandboxer=name,
            options=SandboxOptions() if options is None else options,
            rootfs=tuple(rootfs),
            netns_path=netns_path,
            annotations=annotations or {},
            labels=labels or {},
        )
        backend.validate(spec)
        actor = SandboxActor(spec, backend, context)
        self._actors[sandbox_id] = actor
        self._index.add(sandbox_id)
        return actor

    def _launch(self, actor: SandboxActor, reply: Reply | None) -> None:
        """Have a new actor carry out its Create (answered through ``reply``); it is run
        once the sandbox is recorded."""

        def launch() -> None:
            if self._actor_nursery is None:
                raise Unavailable("the controller is closed")
            self._actor_nursery.start_soon(actor.run, name=f"sandbox {actor.sandbox_id}")

        actor.create(reply, launch)

    def request_create(
        self,
        reply: Reply,
        sandbox_id: str,
        *,
        sandboxer: str | None = None,
        options: SandboxOptions | None = None,
        rootfs: Iterable[Mount] = (),
        netns_path: str | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """:meth:`create`, answered through ``reply`` (with the id).  Never blocks.

        A refusal found at once is raised here; with a store, ``reply`` is answered once the
        sandbox is on disk, or failed (and nothing created) if it cannot be written.
        """
        actor = self._admit(
            sandbox_id, sandboxer, options, rootfs, netns_path, annotations, labels
        )
        self._launch(actor, reply)

    async def create(
        self,
        sandbox_id: str,
        *,
        sandboxer: str | None = None,
        options: SandboxOptions | None = None,
        rootfs: Iterable[Mount] = (),
        netns_path: str | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Create a sandbox in state ``created``; returns its id (see :meth:`create_nowait`
        for the checks).  With a store, returns once the sandbox is on disk; if it cannot be
        written, nothing was created.  Calls on the id made meanwhile wait for the outcome.
        If the caller is cancelled, the creation goes on (or fails) all the same.
        """
        waiter = Waiter()
        self.request_create(
            waiter,
            sandbox_id,
            sandboxer=sandboxer,
            options=options,
            rootfs=rootfs,
            netns_path=netns_path,
            annotations=annotations,
            labels=labels,
        )
        result: str = await waiter.wait()
        return result

    def request_start(self, reply: Reply, sandbox_id: str) -> None:
        """:meth:`start`, answered through ``reply``.  Never blocks; an unknown or malformed
        id is raised here."""
        self._actor(sandbox_id).post(Input.START, None, reply)

    async def start(self, sandbox_id: str) -> SandboxInstance:
        """Start the sandbox's init process: ``created`` -> ``ready``.

        FAILED_PRECONDITION if it is not ``created``, or if the process cannot be started
        (then it stays ``created``, and the message says why).
        """
        waiter = Waiter()
        self.request_start(waiter, sandbox_id)
        result: SandboxInstance = await waiter.wait()
        return result

    def request_stop(
        self, reply: Reply, sandbox_id: str, *, timeout_secs: float | None = None
    ) -> None:
        """:meth:`stop`, answered through ``reply``.  Never blocks."""
        if timeout_secs is not None and not (0 <= timeout_secs < math.inf):
            raise InvalidArgument("timeout_secs: must be a finite number >= 0")
        self._actor(sandbox_id).post(Input.STOP, timeout_secs, reply)

    async def stop(self, sandbox_id: str, *, timeout_secs: float | None = None) -> None:
        """Stop the sandbox; returns once it is ``stopped``.

        SIGTERM to all its processes, SIGKILL when ``timeout_secs`` runs out (at once for 0;
        :attr:`stop_timeout` when ``None``).  A Stop while one is in progress joins it (an
        earlier kill deadline wins); a stopped sandbox is left as it is.  If the caller is
        cancelled, the stop goes on.
        """
        waiter = Waiter()
        self.request_stop(waiter, sandbox_id, timeout_secs=timeout_secs)
        await waiter.wait()

    def request_wait(self, reply: Reply, sandbox_id: str) -> None:
        """:meth:`wait`, answered through ``reply``.  Never blocks."""
        self._actor(sandbox_id).post(Input.WAIT, None, reply)

    async def wait(self, sandbox_id: str) -> ExitStatus:
        """Wait until the sandbox is ``stopped``; its exit status (128+N for signal N).

        Cancelling the wait (a deadline, say) leaves the sandbox untouched.  Waiters are
        answered also when the sandbox is shut down meanwhile.
        """
        waiter = Waiter()
        self.request_wait(waiter, sandbox_id)
        result: ExitStatus = await waiter.wait()
        return result

    def request_shutdown(self, reply: Reply, sandbox_id: str) -> None:
        """:meth:`shutdown`, answered through ``reply``.  Never blocks."""
        self._actor(sandbox_id).post(Input.SHUTDOWN, None, reply)

    async def shutdown(self, sandbox_id: str) -> None:
        """Kill the sandbox if it runs, wait for it to end, and delete it.

        Afterwards its id is NOT_FOUND (and free for a new Create).  If the caller is
        cancelled, the shutdown goes on.
        """
        waiter = Waiter()
        self.request_shutdown(waiter, sandbox_id)
        await waiter.wait()

    def status_nowait(self, sandbox_id: str, *, verbose: bool = False) -> SandboxStatus:
        """The sandbox's status.  ``verbose`` adds the backend's details to ``info``."""
        actor = self._actor(sandbox_id)
        decide(sandbox_id, actor.phase, Input.STATUS)
        return actor.status(verbose)

    async def status(self, sandbox_id: str, *, verbose: bool = False) -> SandboxStatus:
        await trio.lowlevel.checkpoint()
        return self.status_nowait(sandbox_id, verbose=verbose)

    def platform_nowait(self, sandbox_id: str) -> Platform:
        """The platform the sandbox runs on (the real host's)."""
        actor = self._actor(sandbox_id)
        decide(sandbox_id, actor.phase, Input.PLATFORM)
        return self._backends[actor.spec.sandboxer].platform()

    async def platform(self, sandbox_id: str) -> Platform:
        await trio.lowlevel.checkpoint()
        return self.platform_nowait(sandbox_id)

    def ping_nowait(self, sandbox_id: str) -> None:
        """Succeeds while the sandbox exists."""
        actor = self._actor(sandbox_id)
        decide(sandbox_id, actor.phase, Input.PING)

    async def ping(self, sandbox_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.ping_nowait(sandbox_id)

    def metrics_nowait(self, sandbox_id: str) -> SandboxMetrics:
        """Resource use summed over the sandbox's processes (zeros when none run)."""
        actor = self._actor(sandbox_id)
        decide(sandbox_id, actor.phase, Input.METRICS)
        cpu_ns = rss = pids = 0
        if actor.process is not None and actor.phase is not Phase.STOPPED:
            cpu_ns, rss, pids = actor.process.usage()
        return _metrics(sandbox_id, actor, cpu_ns, rss, pids)

    async def metrics(self, sandbox_id: str) -> SandboxMetrics:
        """:meth:`metrics_nowait`, with /proc read in a worker thread (the event loop never
        waits on it).  Cancelling the call abandons the reading."""
        actor = self._actor(sandbox_id)
        decide(sandbox_id, actor.phase, Input.METRICS)
        cpu_ns = rss = pids = 0
        process = actor.process
        if process is not None and actor.phase is not Phase.STOPPED and process.usage_blocks:
            cpu_ns, rss, pids = await trio.to_thread.run_sync(
                process.usage, abandon_on_cancel=True
            )
        elif process is not None and actor.phase is not Phase.STOPPED:
            await trio.lowlevel.checkpoint()
            cpu_ns, rss, pids = process.usage()
        else:
            await trio.lowlevel.checkpoint()
        return _metrics(sandbox_id, actor, cpu_ns, rss, pids)

    def list_nowait(self, labels: Mapping[str, str] | None = None) -> list[SandboxStatus]:
        """The status of every sandbox carrying all of ``labels``, ordered by id: all of
        them at once, as they are now (in-process there is no message to fit)."""
        wanted = tuple((labels or {}).items())
        actors = self._actors
        result = []
        for sandbox_id in self._index.after(None):
            actor = actors.get(sandbox_id)
            if actor is not None and (not wanted or _carries(actor, wanted)):
                result.append(actor.status(False))
        return result

    async def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxStatus]:
        await trio.lowlevel.checkpoint()
        return self.list_nowait(labels)

    def list_page_nowait(
        self,
        labels: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        page_token: str | None = None,
    ) -> ListPage:
        """One page of :meth:`list_nowait`: at most ``limit`` statuses (1 to 10,000; 1,000
        when ``None``) of the sandboxes after ``page_token`` (from the first for ``None`` or
        ``""``), and the token of the next page (``None`` on the last).  A page looks at no
        more than :data:`LIST_SCAN_LIMIT` sandboxes, so one filtered by ``labels`` may hold
        fewer, or none, and still not be the last.  Costs O(log n + what it looks at), not a
        sort.

        Stable under concurrent creates and shutdowns: pages follow each other in id order,
        each starting after the id its token names, so a sandbox that exists for the whole
        listing is on exactly one page.  INVALID_ARGUMENT naming ``limit`` or
        ``page_token`` for a bad one.
        """
        size = check_list_limit(limit)
        start = check_page_token(page_token)
        wanted = tuple((labels or {}).items())
        actors = self._actors
        page: list[SandboxStatus] = []
        budget = LIST_SCAN_LIMIT
        last = None
        for sandbox_id in self._index.after(start):
            if len(page) == size or budget == 0:
                # More to look at: the next page starts after the last id looked at.
                return ListPage(tuple(page), last)
            budget -= 1
            actor = actors.get(sandbox_id)
            if actor is not None and (not wanted or _carries(actor, wanted)):
                page.append(actor.status(False))
            last = sandbox_id
        return ListPage(tuple(page))

    async def list_page(
        self,
        labels: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        page_token: str | None = None,
    ) -> ListPage:
        """:meth:`list_page_nowait`."""
        await trio.lowlevel.checkpoint()
        return self.list_page_nowait(labels, limit=limit, page_token=page_token)

    def logs(
        self,
        sandbox_id: str,
        *,
        follow: bool = False,
        tail_bytes: int | None = None,
        since: datetime | None = None,
    ) -> LogReader:
        """What the sandbox's init wrote to stdout and stderr: an async context manager and
        async iterator of :class:`~sandboxd.LogChunk` (each chunk as the daemon read it, on
        its stream, with the time it was read; in the order read) and
        :class:`~sandboxd.LogGap` (output rotated away, where it stood).

        From the oldest output kept, or the last ``tail_bytes`` bytes; ``since`` drops the
        chunks read before it (timezone-aware).  Without ``follow`` it ends at what was
        written when the call was made; with it, it goes on until the sandbox has stopped
        and everything was read (for one not started yet, it waits for the start).  It ends
        at once when the sandbox is shut down.  A ``sim`` sandbox writes nothing.  NOT_FOUND
        for an unknown sandbox; INVALID_ARGUMENT for a negative ``tail_bytes`` or a naive
        ``since``.  Never blocks the sandbox: a slow reader reads from disk.
        """
        actor = self._actor(sandbox_id)
        decide(sandbox_id, actor.phase, Input.STATUS)
        assert actor.output is not None  # a Controller's actors always have one
        return actor.output.reader(follow=follow, tail_bytes=tail_bytes, since=since)

    def subscribe(self) -> Subscription:
        """A subscription to the events published from now on (close it when done; also a
        context manager).  Never blocks."""
        if self._closed:
            raise Unavailable("the controller is closed")
        return self._events.subscribe(self._subscriber_buffer)

    @asynccontextmanager
    async def events(self) -> AsyncIterator[Subscription]:
        """Subscribe to lifecycle events for the block's duration.

        Yields an async iterable of :class:`~sandboxd.SandboxEvent`, starting with the events
        published after subscribing.  A subscriber that falls more than its buffer behind is
        told how many events it missed (topic ``/events/dropped``).  Iteration ends when the
        controller closes.
        """
        await trio.lowlevel.checkpoint()
        with self.subscribe() as subscription:
            yield subscription

    # -- inside a running sandbox: execs and files ----------------------------------------------

    def exec(self, sandbox_id: str, request: ExecRequest) -> ExecSession:
        """Run ``request``'s command inside the sandbox: an async context manager that starts
        it on entering and yields the running :class:`ExecSession`::

            async with controller.exec(sid, ExecRequest(["sh"], stdin=True)) as proc:
                await proc.write(b"echo hi; exit 3\n")
                await proc.close_stdin()
                async for out in proc:
                    ...  # ExecOutput(stream, data)
                result = await proc.wait()  # ExecExit(exit_status=3, ...)

        The command gets the sandbox's environment (``PATH`` defaulted) with the request's
        ``env`` on top, the sandbox's cwd unless ``cwd`` is given, and runs as ``user``
        (``"uid"`` or ``"uid:gid"``, numbers) or the sandbox's own user.  ``exec_id`` is
        unique among the sandbox's running execs (ALREADY_EXISTS otherwise; the id of one
        that ended may be used again); without one the runtime picks ``exec-N``.
        ``timeout_secs`` kills the command's whole process tree when it has run that long
        (its exit says ``timed_out``).

        Legal only while the sandbox is ``ready`` (FAILED_PRECONDITION naming its state).
        The exec shares the sandbox's fate: it gets the SIGTERM of a Stop and the SIGKILL at
        its deadline, and whenever the init exits it is killed; Stop, Wait and Shutdown
        return only once the sandbox's execs are reaped.  Leaving the block while the
        command runs kills it (a client that goes away kills its execs, as containerd's
        do).  Execs do not outlive the runtime: closing it kills them, and after a daemon
        restart they are gone while their sandbox keeps running.
        """

        def begin(reply: Reply) -> None:
            actor = self._actor(sandbox_id)
            spec = resolve(request, actor.spec)
            actor.post(Input.EXEC, (spec, check_timeout(request.timeout_secs)), reply)

        return ExecSession(begin)

    async def exec_sync(
        self,
        sandbox_id: str,
        request: ExecRequest,
        *,
        max_output_bytes: int = DEFAULT_EXEC_SYNC_OUTPUT,
    ) -> ExecSyncResult:
        """Run ``request``'s command to its end (see :meth:`exec`) and return its output and
        exit.  At most ``max_output_bytes`` of each stream are kept (1 to
        :data:`MAX_EXEC_SYNC_OUTPUT`, so the reply fits one frame); the rest is read and
        dropped, so the command still runs to its end, and ``truncated`` says so.  The
        request may not ask for a tty or stdin (INVALID_ARGUMENT).  Cancelling the call
        kills the command.
        """
        if (
            isinstance(max_output_bytes, bool)
            or not isinstance(max_output_bytes, int)
            or not 0 < max_output_bytes <= MAX_EXEC_SYNC_OUTPUT
        ):
            raise InvalidArgument(
                f"max_output_bytes: must be a whole number in 1..{MAX_EXEC_SYNC_OUTPUT}"
            )
        if request.tty or request.stdin or request.window is not None:
            raise InvalidArgument("ExecSync runs without a tty or stdin: use Exec for those")
        kept = {STDOUT: bytearray(), STDERR: bytearray()}
        truncated = False
        async with self.exec(sandbox_id, request) as proc:
            async for chunk in proc:
                buffer = kept[chunk.stream]
                room = max_output_bytes - len(buffer)
                if len(chunk.data) > room:
                    truncated = True
                    buffer += chunk.data[:room]
                else:
                    buffer += chunk.data
            result = await proc.wait()
        return ExecSyncResult(
            exec_id=proc.exec_id,
            stdout=bytes(kept[STDOUT]),
            stderr=bytes(kept[STDERR]),
            exit_status=result.exit_status,
            timed_out=result.timed_out,
            truncated=truncated,
            signal=result.signal,
        )

    def _file_process(self, sandbox_id: str, path: object) -> SandboxProcess:
        """The process of a sandbox whose files may be moved now (see :meth:`write_file`)."""
        actor = self._actor(sandbox_id)
        if type(path) is not str or not path or "\0" in path:
            raise InvalidArgument("path: must be non-empty text without NUL")
        decide(sandbox_id, actor.phase, Input.EXEC)
        assert actor.process is not None
        return actor.process

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int | None = None,
    ) -> int:
        """Write ``data`` (bytes, or an async iterable of chunks) to the file ``path`` of the
        sandbox, created with ``mode`` (default 0o644) or truncated; returns the number of
        bytes written.

        ``path`` is resolved inside the sandbox's root by its backend, which refuses any
        way out of it (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, or
        FAILED_PRECONDITION for a read-only mount, naming the path).  Legal only while the
        sandbox is ``ready`` (checked when the file is opened; a transfer under way goes on
        if the sandbox stops).  Opening and writing run in worker threads: neither the
        event loop nor the sandbox's actor waits on the disk.  Cancelled: the file is
        closed holding what was written so far.
        """
        if mode is not None and (
            isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777
        ):
            raise InvalidArgument("mode: must be a file mode in 0..0o7777")
        process = self._file_process(sandbox_id, path)
        fd = await trio.to_thread.run_sync(lambda: process.open_file(path, write=True, mode=mode))
        size = 0
        async with trio.wrap_file(os.fdopen(fd, "wb", buffering=0)) as file:
            if isinstance(data, bytes | bytearray | memoryview):
                chunks: AsyncIterable[bytes] = _one(bytes(data))
            else:
                chunks = data
            async for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = await file.write(view)
                    view = view[written:]
                size += len(chunk)
        return size

    @asynccontextmanager
    async def read_file(self, sandbox_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Read the file ``path`` of the sandbox: an async context manager yielding an async
        iterator of its contents, in chunks::

            async with controller.read_file(sid, "/etc/hostname") as chunks:
                data = b"".join([chunk async for chunk in chunks])

        ``path`` is resolved and checked as for :meth:`write_file`, legal only while the
        sandbox is ``ready`` (when the file is opened).  Reads run in worker threads.
        Leaving the block closes the file.
        """
        process = self._file_process(sandbox_id, path)
        fd = await trio.to_thread.run_sync(lambda: process.open_file(path, write=False))
        async with trio.wrap_file(os.fdopen(fd, "rb", buffering=0)) as file:
            yield _chunks(file)


def _carries(actor: SandboxActor, wanted: tuple[tuple[str, str], ...]) -> bool:
    have = actor.spec.labels
    return all(have.get(k) == v for k, v in wanted)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _chunks(file: Any) -> AsyncIterator[bytes]:
    while chunk := await file.read(CHUNK_SIZE):
        yield chunk


@asynccontextmanager
async def open_controller(
    backends: Iterable[Backend] | None = None, **kwargs: Any
) -> AsyncIterator[Controller]:
    """A running :class:`Controller` for the block's duration (see its arguments)."""
    async with trio.open_nursery() as nursery:
        controller: Controller = await nursery.start(Controller(backends, **kwargs).run)
        try:
            yield controller
        finally:
            nursery.cancel_scope.cancel()
