"""Stateful property tests: random call sequences against the runtime, compared with the
reference model (sandboxd.testing) after every step.

One trio loop runs in a helper thread for the whole module; the Hypothesis state machine runs
in the test's thread and makes every call through ``trio.from_thread.run``.  Each example gets
a fresh runtime, opened in the machine's ``__init__`` and closed in its ``teardown``:

- the in-process Controller with the sim backend, its Creates injecting the sim faults a
  sequential model predicts (drawn by the public ``sandboxd.testing.strategies``), its
  execs running sim scripts, and
- the real server on a Unix socket with the process backend, driven through
  ``sandboxd.api.connect`` (fewer, slower examples: every Start spawns a process).
"""

from __future__ import annotations

import abc
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from procs import proc_state
from sandboxd import RPCError
from sandboxd.api import (
    connect,
    serve_controller,
)
from sandboxd.backends import ProcessBackend, SimBackend
from sandboxd.backends._process import ProcessSandbox
from sandboxd.runtime import Controller, Input, Phase, open_controller
from sandboxd.testing import (
    EXEC_CALL,
    Blocks,
    ReferenceModel,
    observe,
    process_exec_behaviour,
    run_exec,
    sim_model,
    strategies,
)

T = TypeVar("T")

#: Real seconds after which a call counts as hung.
CALL_TIMEOUT = 10.0

SANDBOX_IDS = ("sb-0", "sb-1")
UNKNOWN_ID = "never-created"
INVALID_ID = "not a valid id!"
ALL_IDS = (*SANDBOX_IDS, UNKNOWN_ID, INVALID_ID)

#: The sim controller's grace period between SIGTERM and SIGKILL (real seconds).
SIM_GRACE = 0.002

#: Phases in which a sandbox's process may still run.
LIVE_PHASES = frozenset({Phase.READY, Phase.STOPPING, Phase.SHUTTING_DOWN})


# -- a trio loop for the module's lifetime -----------------------------------------------------


class TrioThread:
    """A trio loop running in a helper thread until :meth:`close`."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="trio-loop", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``afn(*args)`` in the loop and return its result (or raise its exception)."""
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def open(self, factory: Callable[[], AbstractAsyncContextManager[T]]) -> Service[T]:
        """Enter ``factory()`` in a task of the loop, until the service is closed."""
        return Service(self, factory)

    def close(self) -> None:
        if self._thread.is_alive():
            self.run_sync(self._stop.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the trio loop did not stop"


class Service(Generic[T]):
    """An async context manager held open in a :class:`TrioThread` task."""

    def __init__(
        self, loop: TrioThread, factory: Callable[[], AbstractAsyncContextManager[T]]
    ) -> None:
        self._loop = loop
        self._factory = factory
        self._error: BaseException | None = None
        self.value: T = loop.run(self._start)

    async def _start(self) -> T:
        self._closing = trio.Event()
        self._done = trio.Event()
        value: T = await self._loop.nursery.start(self._serve)
        return value

    async def _serve(self, *, task_status: trio.TaskStatus[T]) -> None:
        started = False
        try:
            async with self._factory() as value:
                task_status.started(value)
                started = True
                await self._closing.wait()
        except Exception as exc:
            if not started:
                raise
            self._error = exc  # not into the loop's nursery: it would end the loop
        finally:
            self._done.set()

    async def _close(self) -> None:
        self._closing.set()
        await self._done.wait()

    def close(self) -> None:
        self._loop.run(self._close)
        if self._error is not None:
            raise self._error


@pytest.fixture(scope="module")
def trio_thread() -> Iterator[TrioThread]:
    loop = TrioThread()
    try:
        yield loop
    finally:
        loop.close()


# -- the runtimes under test -------------------------------------------------------------------


def takes_sigterm(pid: int) -> bool:
    """Whether SIGTERM reaches ``pid`` as something it handles: caught, blocked, or waited
    for in sigwait() (during which the kernel shows it unblocked)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if "sigtimedwait" in wchan:
        return True
    bit = 1 << (int(signal.SIGTERM) - 1)
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigCgt", "SigBlk") and int(value, 16) & bit:
            return True
    return False


class Harness(abc.ABC):
    """One runtime under test, as the state machine sees it."""

    #: The arguments of Create: drawn by the rule, or the plain ones.
    create_args: ClassVar[st.SearchStrategy[dict[str, Any]]]
    plain_create: ClassVar[dict[str, Any]]
    #: The requests of Exec (none: its sandboxes cannot run execs).
    exec_args: ClassVar[st.SearchStrategy[dict[str, Any]] | None]

    def __init__(self, loop: TrioThread) -> None:
        self.loop = loop

    @abc.abstractmethod
    def open(self) -> Any:
        """Start a fresh runtime; return the Controller-like object to call."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def model(self) -> ReferenceModel: ...

    def after_start(self, pid: int) -> None:  # noqa: B027 - a hook; most harnesses need none
        """Called after a Start returned ``pid``."""

    @abc.abstractmethod
    def alive(self, pid: int) -> bool: ...


class SimHarness(Harness):
    """The in-process Controller with a fresh SimBackend."""

    # The sim faults a sequential model predicts: failing starts, SIGTERM ignored or
    # answered with an exit status of its own.  (Exits on their own and slow stops race with
    # the calls: test_concurrency and the fuzzer check those; slow starts only cost time.)
    create_args = strategies.create_args(
        "sim",
        options=strategies.create_options(
            exits=False, stop_delays=False, start_delays=False, lifetimes=()
        ),
    )
    plain_create: ClassVar[dict[str, Any]] = {"sandboxer": "sim"}
    exec_args = strategies.exec_args("sim")

    def open(self) -> Controller:
        self.backend = SimBackend()
        backend = self.backend
        self.service = self.loop.open(
            lambda: open_controller([backend], default_sandboxer="sim", stop_timeout=SIM_GRACE)
        )
        return self.service.value

    def close(self) -> None:
        self.service.close()

    def model(self) -> ReferenceModel:
        # Each sim sandbox behaves as its Create's faults say.
        return sim_model()

    def alive(self, pid: int) -> bool:
        return pid in self.backend.running


@asynccontextmanager
async def serve_and_connect(path: str) -> AsyncIterator[Any]:
    """A server with the Runtime and Controller services on ``path`` (process backend),
    and a RemoteController connected to it."""
    async with (
        open_controller([ProcessBackend()], default_sandboxer="process") as controller,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(serve_controller, controller, path)
        try:
            async with connect(path) as remote:
                yield remote
        finally:
            nursery.cancel_scope.cancel()


class ProcessHarness(Harness):
    """The real server with the process backend, over its socket."""

    # options.command None: the pause process
    plain_create: ClassVar[dict[str, Any]] = {"sandboxer": "process"}
    create_args = st.just(plain_create)
    # Real commands, short ones (each call waits for its exec to end), where the process
    # backend runs execs.
    exec_args = (
        strategies.exec_args("process", commands=strategies.process_exec_commands(sleeps=(0.05,)))
        if hasattr(ProcessSandbox, "exec")
        else None
    )

    def open(self) -> Any:
        self.directory = tempfile.mkdtemp(prefix="sbd-")
        path = os.path.join(self.directory, "s.sock")
        self.service = self.loop.open(lambda: serve_and_connect(path))
        return self.service.value

    def close(self) -> None:
        try:
            self.service.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def model(self) -> ReferenceModel:
        # The pause process catches SIGTERM and exits 0.
        return ReferenceModel(
            sigterm_exit_status=0, signals_race=True, exec_behaviour_of=process_exec_behaviour
        )

    def after_start(self, pid: int) -> None:
        # The pause process is ready for SIGTERM only once Python has started and taken it
        # over; a SIGTERM before that kills it (143).  Start does not wait for that, so wait
        # here (see the report at the top of this module).
        deadline = time.monotonic() + CALL_TIMEOUT
        while not takes_sigterm(pid):
            assert time.monotonic() < deadline, f"pid {pid} never took over SIGTERM"
            assert proc_state(pid) not in (None, "Z"), f"pid {pid} died at its start"
            time.sleep(0.001)

    def alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return proc_state(pid) not in (None, "Z", "X")


# -- the machine -------------------------------------------------------------------------------


async def invoke(target: Any, call: str, sandbox_id: str, args: dict[str, Any]) -> Any:
    """``(result, error)`` of one call, failing it if it hangs."""
    with trio.fail_after(CALL_TIMEOUT):
        try:
            if call == EXEC_CALL:
                return await run_exec(target, sandbox_id, args), None
            return await getattr(target, call)(sandbox_id, **args), None
        except RPCError as err:
            return None, err


async def list_ids(target: Any) -> set[str]:
    with trio.fail_after(CALL_TIMEOUT):
        return {status.sandbox_id for status in await target.list()}


async def snapshot(target: Any) -> tuple[dict[str, Any], set[str]]:
    """The Status of every id, and the ids List reports, in one trip to the loop."""
    statuses = {
        sandbox_id: await invoke(target, "status", sandbox_id, {}) for sandbox_id in ALL_IDS
    }
    return statuses, await list_ids(target)


class LifecycleMachine(RuleBasedStateMachine):
    """Random call sequences on a few ids, each call's outcome compared with the model's."""

    def __init__(self, harness: Harness) -> None:
        super().__init__()
        self.harness = harness
        self.loop = harness.loop
        self.model = harness.model()
        self.target = harness.open()
        self.pids: dict[str, int] = {}  # the pid of every sandbox started, by id
        self.dead: set[int] = set()  # pids of sandboxes whose exit the model recorded

    def teardown(self) -> None:
        try:
            # Sandboxes outlive a closed controller: shut down what is left.
            for sandbox_id in sorted(self.model.sandbox_ids):
                self.call("shutdown", sandbox_id)
            for sandbox_id, pid in self.pids.items():
                assert not self.harness.alive(pid), f"{sandbox_id}: pid {pid} left behind"
        finally:
            self.harness.close()

    # -- calling -------------------------------------------------------------------------------

    def call(self, call: str, sandbox_id: str, **args: Any) -> Any:
        """Make the call on the runtime and on the model; they must agree.  Returns the
        runtime's result (None after an error)."""
        expected = self.model.apply(call, sandbox_id, **args)
        result, error = self.loop.run(invoke, self.target, call, sandbox_id, args)
        if isinstance(expected, Blocks):
            # Only a grace period can end this call; the runtime's has run out by now.
            assert expected.until is Input.STOP_GRACE_EXPIRED, f"{call}({sandbox_id!r}) blocks"
            self.model.expire_grace(sandbox_id)
            expected = self.model.resolved.pop(expected.ticket)
        actual = observe(call, result, error)
        assert actual == expected, (
            f"{call}({sandbox_id!r}, {args}): the runtime answered {actual!r} ({error!r}), "
            f"the model says {expected!r}"
        )
        return result

    def _note_exit(self, sandbox_id: str) -> None:
        pid = self.pids.get(sandbox_id)
        if pid is not None and self.model.exit_status(sandbox_id) is not None:
            self.dead.add(pid)

    # -- rules -----------------------------------------------------------------------------------

    @rule(sandbox_id=st.sampled_from((*SANDBOX_IDS, INVALID_ID)), data=st.data())
    def create(self, sandbox_id: str, data: st.DataObject | None = None) -> None:
        harness = self.harness
        args = harness.plain_create if data is None else data.draw(harness.create_args)
        self.call("create", sandbox_id, **args)
        if self.model.phase(sandbox_id) is Phase.CREATED:
            self.pids.pop(sandbox_id, None)

    @rule(sandbox_id=st.sampled_from(ALL_IDS))
    def start(self, sandbox_id: str) -> None:
        instance = self.call("start", sandbox_id)
        if instance is not None:
            assert instance.sandbox_id == sandbox_id
            assert instance.pid not in self.pids.values()
            self.pids[sandbox_id] = instance.pid
            self.harness.after_start(instance.pid)

    @rule(sandbox_id=st.sampled_from(ALL_IDS), timeout_secs=strategies.stop_timeouts((None, 0)))
    def stop(self, sandbox_id: str, timeout_secs: float | None) -> None:
        if timeout_secs is None:
            self.call("stop", sandbox_id)
        else:
            self.call("stop", sandbox_id, timeout_secs=timeout_secs)
        self._note_exit(sandbox_id)

    @rule(sandbox_id=st.sampled_from(ALL_IDS))
    def wait(self, sandbox_id: str) -> None:
        if isinstance(self.model.peek("wait", sandbox_id), Blocks):
            return  # only Waits that return: the sequence would stop here
        exit_status = self.call("wait", sandbox_id)
        if exit_status is not None:
            assert exit_status.exit_status == self.model.exit_status(sandbox_id)

    @precondition(lambda self: self.harness.exec_args is not None)
    @rule(sandbox_id=st.sampled_from(ALL_IDS), data=st.data())
    def exec(self, sandbox_id: str, data: st.DataObject) -> None:
        self._exec(sandbox_id, data)

    @precondition(
        lambda self: (
            self.harness.exec_args is not None
            and any(self.model.phase(s) is Phase.READY for s in SANDBOX_IDS)
        )
    )
    @rule(data=st.data())
    def exec_in_a_ready_sandbox(self, data: st.DataObject) -> None:
        ready = [s for s in SANDBOX_IDS if self.model.phase(s) is Phase.READY]
        self._exec(data.draw(st.sampled_from(ready)), data)

    def _exec(self, sandbox_id: str, data: st.DataObject) -> None:
        assert self.harness.exec_args is not None
        args = data.draw(self.harness.exec_args)
        if isinstance(self.model.peek(EXEC_CALL, sandbox_id, **args), Blocks):
            return  # a command that runs until it is killed: the sequence would stop here
        run = self.call(EXEC_CALL, sandbox_id, **args)
        if run is not None:
            assert run.pid > 0 and run.exec_id, run
            if args["command"][0] == "echo":
                assert run.stdout == (" ".join(args["command"][1:]) + "\n").encode()

    @rule(sandbox_id=st.sampled_from(ALL_IDS), verbose=st.booleans())
    def status(self, sandbox_id: str, verbose: bool) -> None:
        self.call("status", sandbox_id, verbose=verbose)

    @rule(sandbox_id=st.sampled_from(ALL_IDS))
    def shutdown(self, sandbox_id: str) -> None:
        self.call("shutdown", sandbox_id)
        if sandbox_id in SANDBOX_IDS and self.model.phase(sandbox_id) is None:
            assert sandbox_id not in self.loop.run(list_ids, self.target)
            pid = self.pids.pop(sandbox_id, None)
            if pid is not None:
                assert not self.harness.alive(pid), f"pid {pid} survived the Shutdown"

    @rule(sandbox_id=st.sampled_from(ALL_IDS))
    def ping(self, sandbox_id: str) -> None:
        self.call("ping", sandbox_id)

    @rule(sandbox_id=st.sampled_from(ALL_IDS))
    def platform(self, sandbox_id: str) -> None:
        self.call("platform", sandbox_id)

    @rule(sandbox_id=st.sampled_from(ALL_IDS))
    def metrics(self, sandbox_id: str) -> None:
        self.call("metrics", sandbox_id)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def every_status_matches_the_model(self) -> None:
        statuses, listed = self.loop.run(snapshot, self.target)
        for sandbox_id, (result, error) in statuses.items():
            expected = self.model.apply("status", sandbox_id)
            assert observe("status", result, error) == expected, (sandbox_id, result, error)
            if result is None:
                continue
            started = self.model.started(sandbox_id)
            stopped = self.model.phase(sandbox_id) is Phase.STOPPED
            assert (result.pid != 0) == started, result
            if started:
                assert result.pid == self.pids[sandbox_id]
            assert ("exit_status" in result.info) == stopped, result
            assert (result.exited_at is not None) == stopped, result
        # No actor is left behind, and no process.
        assert listed == set(self.model.sandbox_ids)
        for sandbox_id, pid in self.pids.items():
            live = self.model.phase(sandbox_id) in LIVE_PHASES
            assert self.harness.alive(pid) == live, (sandbox_id, pid)


class SimLifecycleMachine(LifecycleMachine):
    """The sim backend can also make a process exit on its own."""

    def __init__(self, harness: SimHarness) -> None:
        super().__init__(harness)
        self.sim = harness.backend

    @invariant()
    def the_sim_processes_are_those_of_live_sandboxes(self) -> None:
        live = {
            pid
            for sandbox_id, pid in self.pids.items()
            if self.model.phase(sandbox_id) in LIVE_PHASES
        }
        assert self.sim.running == live

    @precondition(lambda self: any(self.model.phase(s) is Phase.READY for s in SANDBOX_IDS))
    @rule(data=st.data(), exit_status=st.sampled_from([0, 1, 42, 255]))
    def process_exits(self, data: st.DataObject, exit_status: int) -> None:
        ready = [s for s in SANDBOX_IDS if self.model.phase(s) is Phase.READY]
        sandbox_id = data.draw(st.sampled_from(ready))
        self.loop.run_sync(self.sim.exit, self.pids[sandbox_id], exit_status)
        self.model.process_exited(sandbox_id, exit_status)
        # The actor records the exit from its mailbox; a Wait queued behind it sees it.
        self.call("wait", sandbox_id)
        self._note_exit(sandbox_id)


# -- the tests -----------------------------------------------------------------------------------


def test_the_controller_with_sim_sandboxes_follows_the_model(trio_thread: TrioThread) -> None:
    run_state_machine_as_test(
        lambda: SimLifecycleMachine(SimHarness(trio_thread)),
        settings=settings(
            max_examples=150,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_server_with_processes_follows_the_model(trio_thread: TrioThread) -> None:
    run_state_machine_as_test(
        lambda: LifecycleMachine(ProcessHarness(trio_thread)),
        settings=settings(
            max_examples=20,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_each_example_gets_a_fresh_controller(trio_thread: TrioThread) -> None:
    first = SimLifecycleMachine(SimHarness(trio_thread))
    first.create("sb-0")
    first.start("sb-0")
    first.teardown()
    second = SimLifecycleMachine(SimHarness(trio_thread))
    try:
        assert second.model.sandbox_ids == frozenset()
        second.every_status_matches_the_model()
        assert second.target is not first.target
    finally:
        second.teardown()
    assert math.isfinite(trio_thread.run(_now))


async def _now() -> float:
    return trio.current_time()
