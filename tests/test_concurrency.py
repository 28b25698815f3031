"""Linearizability of concurrent calls: many clients, few sandboxes, every history checked.

Each client runs a small random program (drawn by Hypothesis) of calls on the same two or
three sandboxes, so calls overlap on every sandbox.  Every call is recorded with its start
and end on trio's clock and its outcome, and the checker (sandboxd.testing) must find a
sequential order, consistent with real time, that the reference model explains.

Programs may Wait on a sandbox nobody stops.  A reaper notices when every client is stuck
(``wait_all_tasks_blocked``) and shuts every sandbox down -- recorded too -- which answers
all those Waits.

The last tests record histories from deliberately broken controllers and check that the
checker rejects them: the property can fail.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxd import Code
from sandboxd._models import ExitStatus, SandboxInstance, SandboxOptions, SandboxState
from sandboxd.api import (
    CONTROLLER_SERVICE,
    RUNTIME_SERVICE,
    connect,
    controller_service,
    runtime_service,
)
from sandboxd.backends import Backend, ProcessBackend, SimBackend
from sandboxd.rpc import Server
from sandboxd.runtime import Controller, open_controller
from sandboxd.testing import (
    HistoryRecorder,
    Operation,
    Outcome,
    ProcessBehaviour,
    ReferenceModel,
    check_linearizable,
)

CLIENTS = 8
PROGRAM_LENGTH = 8
SANDBOX_IDS = ("c-0", "c-1", "c-2")
SIM_CREATE: Mapping[str, Any] = {"sandboxer": "sim"}
#: Real seconds after which a history counts as hung.
GUARD = 20.0

#: (call, stop timeout) with the weight of each in a program.
STEPS = (
    [("create", None)] * 3
    + [("start", None)] * 3
    + [("stop", None), ("stop", 0)]
    + [("wait", None)] * 2
    + [("status", None)] * 3
    + [("shutdown", None)] * 2
    + [("ping", None), ("platform", None), ("metrics", None)]
)

Program = list[tuple[str, str, float | None]]


def programs(sandbox_ids: Sequence[str] = SANDBOX_IDS) -> st.SearchStrategy[list[Program]]:
    step = st.tuples(st.sampled_from(STEPS), st.sampled_from(sandbox_ids)).map(
        lambda s: (s[0][0], s[1], s[0][1])
    )
    program = st.lists(step, min_size=PROGRAM_LENGTH, max_size=PROGRAM_LENGTH)
    return st.lists(program, min_size=CLIENTS, max_size=CLIENTS)


def seeded_programs(
    seed: int, prefix: Program, steps: Sequence[tuple[str, float | None]] = STEPS
) -> list[Program]:
    """For each client, ``prefix`` and then random steps (from ``steps``)."""
    rng = random.Random(seed)
    return [
        [
            *prefix,
            *(
                (call, rng.choice(SANDBOX_IDS), timeout)
                for call, timeout in rng.choices(steps, k=PROGRAM_LENGTH - len(prefix))
            ),
        ]
        for _ in range(CLIENTS)
    ]


async def run_programs(
    targets: Sequence[Any],
    programs: Sequence[Program],
    reaper_target: Any,
    create_args: Mapping[str, Any] | Sequence[Mapping[str, Any]] = SIM_CREATE,
) -> list[Operation]:
    """Run each program on its target, all at once; return the recorded history.

    Creates get ``create_args``, or, given a list, one of them chosen by the sandbox id.
    """
    recorder = HistoryRecorder()
    running = len(programs)

    async def client(index: int, target: Any, program: Program) -> None:
        nonlocal running
        for call, sandbox_id, timeout in program:
            args: dict[str, Any] = {}
            if call == "create":
                if isinstance(create_args, Mapping):
                    args.update(create_args)
                else:
                    args.update(create_args[SANDBOX_IDS.index(sandbox_id) % len(create_args)])
            elif call == "stop" and timeout is not None:
                args["timeout_secs"] = timeout
            await recorder.call(target, call, sandbox_id, client=index, **args)
        running -= 1

    async def reaper() -> None:
        while True:
            await trio.testing.wait_all_tasks_blocked(cushion=0.001)
            if not running:
                return
            # Every client left is parked (on a Wait): shut everything down.
            async with trio.open_nursery() as nursery:
                for sandbox_id in SANDBOX_IDS:
                    nursery.start_soon(_shutdown, recorder, reaper_target, sandbox_id)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for index, program in enumerate(programs):
                nursery.start_soon(client, index, targets[index % len(targets)], program)
            nursery.start_soon(reaper)
    return recorder.operations


async def _shutdown(recorder: HistoryRecorder, target: Any, sandbox_id: str) -> None:
    await recorder.call(target, "shutdown", sandbox_id, client="reaper")


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
            server = Server(
                {
                    RUNTIME_SERVICE: runtime_service(),
                    CONTROLLER_SERVICE: controller_service(controller),
                }
            )
            await nursery.start(server.serve_unix, path)
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


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(programs=programs())
async def test_remote_clients_see_a_linearizable_history(programs: list[Program]) -> None:
    async with sim_server(CLIENTS + 1) as (_, remotes):
        history = await run_programs(remotes[:CLIENTS], programs, remotes[CLIENTS])
    assert_linearizable(history)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(programs=programs(SANDBOX_IDS[:2]))
async def test_in_process_callers_see_a_linearizable_history(programs: list[Program]) -> None:
    async with open_controller([SimBackend()], default_sandboxer="sim") as controller:
        history = await run_programs([controller], programs, controller)
    assert_linearizable(history)


async def test_overlapping_lifecycles_on_one_sandbox_are_linearizable() -> None:
    # Everyone creates, starts and stops the same sandbox first: most of them overlap.
    prefix: Program = [("create", "c-0", None), ("start", "c-0", None), ("stop", "c-0", None)]
    for seed in range(3):
        async with sim_server(CLIENTS + 1) as (_, remotes):
            history = await run_programs(
                remotes[:CLIENTS], seeded_programs(seed, prefix), remotes[CLIENTS]
            )
        assert_linearizable(history)
        first = history[: CLIENTS * len(prefix)]
        assert (
            sum(op.call == "create" and op.outcome == Outcome.success("c-0") for op in first) == 1
        )
        assert sum(op.call == "start" and op.outcome == Outcome.success(True) for op in first) <= 1


#: Sim sandboxes with timers: one ignores SIGTERM (only the grace timer's SIGKILL ends it),
#: one takes a while to die of SIGTERM (a SIGKILL meanwhile may overtake it).
TIMER_CREATES: list[Mapping[str, Any]] = [
    {"sandboxer": "sim", "options": SandboxOptions(sim={"ignore_sigterm": True})},
    {"sandboxer": "sim", "options": SandboxOptions(sim={"stop_delay": 0.002})},
    {"sandboxer": "sim"},
]
TIMER_STEPS = [*STEPS, ("stop", 0.002), ("stop", 0.002)]


def timer_behaviour(create_args: Mapping[str, Any]) -> ProcessBehaviour:
    sim = create_args["options"].sim if "options" in create_args else {}
    if sim.get("ignore_sigterm"):
        return ProcessBehaviour(sigterm_exit_status=None)
    return ProcessBehaviour(signals_race="stop_delay" in sim)


async def test_stops_with_grace_periods_are_linearizable() -> None:
    model = ReferenceModel(behaviour_of=timer_behaviour)
    for seed in range(8):
        async with open_controller(
            [SimBackend()], default_sandboxer="sim", stop_timeout=0.003
        ) as controller:
            programs = seeded_programs(seed, [], TIMER_STEPS)
            history = await run_programs([controller], programs, controller, TIMER_CREATES)
        assert_linearizable(history, model)


async def test_real_processes_over_the_socket_are_linearizable() -> None:
    # `sleep` dies of SIGTERM (143); a SIGKILL may overtake a SIGTERM it has not died of yet.
    create = {"sandboxer": "process", "options": SandboxOptions(command=("sleep", "1000"))}
    model = ReferenceModel(sigterm_exit_status=143, signals_race=True)
    for seed in range(3):
        async with sim_server(CLIENTS + 1, ProcessBackend(), stop_timeout=0.01) as (_, remotes):
            try:
                programs = seeded_programs(seed, [], TIMER_STEPS)
                history = await run_programs(remotes[:CLIENTS], programs, remotes[CLIENTS], create)
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


#: Steps that never stop a sandbox: once started, it stays ready.
NO_STOPS = [s for s in STEPS if s[0] not in ("stop", "shutdown", "wait")]


async def test_the_checker_rejects_a_controller_that_starts_twice() -> None:
    prefix: Program = [("create", "c-0", None), ("start", "c-0", None), ("start", "c-0", None)]
    for seed in range(3):
        async with open_controller([SimBackend()], default_sandboxer="sim") as controller:
            programs = seeded_programs(seed, prefix, NO_STOPS)
            history = await run_programs([StartsTwice(controller)], programs, controller)
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
    program: Program = [
        ("create", "c-0", None),
        ("start", "c-0", None),
        ("wait", "c-0", None),
        ("stop", "c-0", None),
    ]
    async with open_controller([SimBackend()], default_sandboxer="sim") as controller:
        history = await run_programs([WaitsForNobody(controller)], [program], controller)
    result = check_linearizable(history)
    assert not result.ok
    (wait,) = [op for op in history if op.call == "wait"]
    assert wait.outcome == Outcome.success(143)
    assert wait in result.conflict, result.describe()


async def test_the_same_programs_pass_on_the_real_controller() -> None:
    # The control for the tests above: only the broken wrappers make them fail.
    prefix: Program = [("create", "c-0", None), ("start", "c-0", None), ("start", "c-0", None)]
    async with open_controller([SimBackend()], default_sandboxer="sim") as controller:
        programs = seeded_programs(0, prefix, NO_STOPS)
        history = await run_programs([controller], programs, controller)
    assert_linearizable(history)
    starts = [op for op in history if op.call == "start" and op.sandbox_id == "c-0"]
    assert sum(op.outcome == Outcome.success(True) for op in starts) == 1
    assert any(op.outcome == Outcome.failure(Code.FAILED_PRECONDITION) for op in starts)
