"""Linearizability of concurrent calls: many clients, few sandboxes, every history checked.

Each client runs a small random program of calls on the same two or three sandboxes, so calls
overlap on every sandbox.  The programs are drawn with the public strategies
(``sandboxd.testing.strategies``) and run with ``sandboxd.testing.run_program``, which
records every call with its start and end on trio's clock and its outcome; the checker
(``check_linearizable``) must find a sequential order, consistent with real time, that the
reference model explains.  The toolkit's users and the project's own tests share one
implementation.

Programs may Wait on a sandbox nobody stops: ``run_program``'s reaper notices when every
client is stuck and shuts those sandboxes down -- recorded too -- which answers the Waits.

The last tests record histories from deliberately broken controllers and check that the
checker rejects them: the property can fail.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxd import Code
from sandboxd._models import ExitStatus, SandboxInstance, SandboxOptions, SandboxState
from sandboxd.api import (
    connect,
    serve_controller,
)
from sandboxd.backends import Backend, ProcessBackend, SimBackend
from sandboxd.runtime import Controller, open_controller
from sandboxd.testing import (
    Call,
    Operation,
    Outcome,
    Program,
    ReferenceModel,
    check_linearizable,
    run_program,
    sim_model,
    strategies,
)

CLIENTS = 8
PROGRAM_LENGTH = 8
SANDBOX_IDS = ("c-0", "c-1", "c-2")
#: Real seconds after which a history counts as hung.
GUARD = 20.0


def runs(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def calls(
    sandboxes: int = len(SANDBOX_IDS),
    *,
    names: Sequence[str] = strategies.CALL_WEIGHTS,
    create: st.SearchStrategy[dict[str, Any]] | None = None,
    stop_timeouts: Sequence[float | None] = (None, 0),
) -> st.SearchStrategy[Call]:
    """Calls on the first ``sandboxes`` sandboxes; Creates of plain sim sandboxes unless
    ``create`` says otherwise."""
    return strategies.calls(
        sandboxes,
        names=names,
        create=strategies.create_args("sim", options=st.none()) if create is None else create,
        stop_timeout=strategies.stop_timeouts(stop_timeouts),
    )


def programs(
    call: st.SearchStrategy[Call] | None = None, prefix: Sequence[Call] = ()
) -> st.SearchStrategy[Program]:
    """CLIENTS clients at once, each making ``prefix`` and then random calls, PROGRAM_LENGTH
    calls in all."""
    if not prefix:
        return strategies.client_programs(
            CLIENTS, PROGRAM_LENGTH, call=calls() if call is None else call
        )
    rest = PROGRAM_LENGTH - len(prefix)
    tails = st.lists(calls() if call is None else call, min_size=rest, max_size=rest)
    return st.lists(tails, min_size=CLIENTS, max_size=CLIENTS).map(
        lambda tails: Program([[[*prefix, *tail] for tail in tails]])
    )


async def run(
    program: Program, targets: Sequence[Any], reaper: Any, cushion: float = 0.001
) -> list[Operation]:
    with trio.fail_after(GUARD):
        return await run_program(program, targets, SANDBOX_IDS, reaper=reaper, cushion=cushion)


@contextlib.asynccontextmanager
async def sim_server(
    clients: int, backend: Backend | None = None, **controller_args: Any
) -> AsyncIterator[tuple[Controller, list[Any]]]:
    """A real server (sim backend unless told) on a fresh socket, and ``clients``
    connections to it."""
    if backend is None:
        backend = SimBackend()
    with tempfile.TemporaryDirectory(prefix="sbd-") as directory:
        path = os.path.join(directory, "s.sock")
        async with (
            open_controller([backend], default_sandboxer=backend.name, **controller_args) as (
                controller
            ),
            trio.open_nursery() as nursery,
        ):
            await nursery.start(serve_controller, controller, path)
            async with contextlib.AsyncExitStack() as stack:
                remotes = [await stack.enter_async_context(connect(path)) for _ in range(clients)]
                yield controller, remotes
            nursery.cancel_scope.cancel()


def assert_linearizable(history: list[Operation], model: ReferenceModel | None = None) -> None:
    result = check_linearizable(history, model)
    assert result.ok, result.describe()
    # Every call answered: a Wait nobody could answer would have hung the test instead.
    assert all(op.outcome is not None for op in history)


# -- correct runtimes: every history is accepted ---------------------------------------------


@runs(25)
@given(program=programs())
async def test_remote_clients_see_a_linearizable_history(program: Program) -> None:
    async with sim_server(CLIENTS + 1) as (_, remotes):
        history = await run(program, remotes[:CLIENTS], remotes[CLIENTS])
    assert_linearizable(history)


@runs(30)
@given(program=programs(calls(2)))
async def test_in_process_callers_see_a_linearizable_history(program: Program) -> None:
    async with open_controller([SimBackend()], default_sandboxer="sim") as controller:
        history = await run(program, [controller], controller)
    assert_linearizable(history)


OVERLAPPING = [Call("create", 0, {"sandboxer": "sim"}), Call("start", 0), Call("stop", 0)]


@runs(3)
@given(program=programs(prefix=OVERLAPPING))
async def test_overlapping_lifecycles_on_one_sandbox_are_linearizable(program: Program) -> None:
    # Everyone creates, starts and stops the same sandbox first: most of them overlap.
    async with sim_server(CLIENTS + 1) as (_, remotes):
        history = await run(program, remotes[:CLIENTS], remotes[CLIENTS])
    assert_linearizable(history)
    first = history[: CLIENTS * len(OVERLAPPING)]
    assert sum(op.call == "create" and op.outcome == Outcome.success("c-0") for op in first) == 1
    assert sum(op.call == "start" and op.outcome == Outcome.success(True) for op in first) <= 1


@runs(8)
@given(
    program=programs(
        calls(
            create=strategies.create_args("sim"),  # every kind of sim fault
            stop_timeouts=(None, 0, 0.002),
        )
    )
)
async def test_sim_faults_and_grace_periods_are_linearizable(program: Program) -> None:
    # Sandboxes that ignore SIGTERM (only the grace timer's SIGKILL ends them), die slowly of
    # it, exit on their own or at a chosen point, or fail to start: the model is told by
    # each Create's options (sim_model).
    async with open_controller(
        [SimBackend()], default_sandboxer="sim", stop_timeout=0.003
    ) as controller:
        history = await run(program, [controller], controller)
    assert_linearizable(history, sim_model())


REAL_CREATE = {"sandboxer": "process", "options": SandboxOptions(command=("sleep", "1000"))}


@runs(3)
@given(program=programs(calls(create=st.just(REAL_CREATE), stop_timeouts=(None, 0, 0.002))))
async def test_real_processes_over_the_socket_are_linearizable(program: Program) -> None:
    # `sleep` dies of SIGTERM (143); a SIGKILL may overtake a SIGTERM it has not died of yet.
    model = ReferenceModel(sigterm_exit_status=143, signals_race=True)
    async with sim_server(CLIENTS + 1, ProcessBackend(), stop_timeout=0.01) as (_, remotes):
        try:
            history = await run(program, remotes[:CLIENTS], remotes[CLIENTS])
        finally:
            # Sandboxes outlive the controller: leave no process behind.
            for sandbox_id in SANDBOX_IDS:
                with contextlib.suppress(Exception):
                    await remotes[0].shutdown(sandbox_id)
    assert_linearizable(history, model)


# -- broken runtimes: the checker notices ------------------------------------------------------


class StartsTwice:
    """A Controller whose Start does not check the phase: starting a running sandbox
    'succeeds' again."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)

    async def start(self, sandbox_id: str) -> SandboxInstance:
        status = await self._controller.status(sandbox_id)
        if status.state is SandboxState.READY:
            return SandboxInstance(sandbox_id, status.pid, status.created_at)
        return await self._controller.start(sandbox_id)


class WaitsForNobody:
    """A Controller whose Wait does not wait: it guesses the exit status of a running
    sandbox (what a stop would make it)."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)

    async def wait(self, sandbox_id: str) -> ExitStatus:
        status = await self._controller.status(sandbox_id)
        if status.state is SandboxState.READY:
            return ExitStatus(143, status.created_at)
        return await self._controller.wait(sandbox_id)


#: Calls that never stop a sandbox: once started, it stays ready.
NO_STOPS = [name for name in strategies.CALL_WEIGHTS if name not in ("stop", "shutdown", "wait")]
STARTS_TWICE = [Call("create", 0, {"sandboxer": "sim"}), Call("start", 0), Call("start", 0)]


@runs(3)
@given(program=programs(calls(names=NO_STOPS), prefix=STARTS_TWICE))
async def test_the_checker_rejects_a_controller_that_starts_twice(program: Program) -> None:
    async with open_controller([SimBackend()], default_sandboxer="sim") as controller:
        history = await run(program, [StartsTwice(controller)], controller)
    result = check_linearizable(history)
    assert not result.ok
    assert not result.inconclusive
    assert result.sandbox_id == "c-0"
    starts = [op for op in result.conflict if op.call == "start"]
    # Two Starts that cannot both be: both succeeded, or a refused one before a success.
    assert len(starts) == len(result.conflict) == 2, result.describe()
    assert starts[1].outcome == Outcome.success(True), result.describe()
    assert starts[0].end_time < starts[1].start_time or starts[0].outcome == starts[1].outcome


async def test_the_checker_rejects_a_wait_that_does_not_wait() -> None:
    program = Program([*STARTS_TWICE[:2], Call("wait", 0), Call("stop", 0)])
    async with open_controller([SimBackend()], default_sandboxer="sim") as controller:
        history = await run(program, [WaitsForNobody(controller)], controller)
    result = check_linearizable(history)
    assert not result.ok
    (wait,) = [op for op in history if op.call == "wait"]
    assert wait.outcome == Outcome.success(143)
    assert wait in result.conflict, result.describe()


@runs(3)
@given(program=programs(calls(names=NO_STOPS), prefix=STARTS_TWICE))
async def test_the_same_programs_pass_on_the_real_controller(program: Program) -> None:
    # The control for the tests above: only the broken wrappers make them fail.
    async with open_controller([SimBackend()], default_sandboxer="sim") as controller:
        history = await run(program, [controller], controller)
    assert_linearizable(history)
    starts = [op for op in history if op.call == "start" and op.sandbox_id == "c-0"]
    assert sum(op.outcome == Outcome.success(True) for op in starts) == 1
    assert any(op.outcome == Outcome.failure(Code.FAILED_PRECONDITION) for op in starts)
