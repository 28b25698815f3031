"""The public testing toolkit (sandboxd.testing): sim faults, the model's view of them,
programs and their runner, reproducers, strategies, the pytest plugin's fixtures, and the
promise that nothing but the toolkit needs Hypothesis."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings

import sandboxd
from procs import Exits
from sandboxd import Code, InvalidArgument, SandboxOptions, SandboxState
from sandboxd._models import SandboxSpec, check_sandbox_id
from sandboxd.backends import SimBackend
from sandboxd.testing import (
    SIGKILL_STATUS,
    Blocks,
    Call,
    Operation,
    Outcome,
    ProcessBehaviour,
    Program,
    ProgramHung,
    StatusView,
    check_linearizable,
    reproducer_script,
    reproducer_test,
    run_program,
    serve_in_thread,
    sim_behaviour,
    sim_faults,
    sim_model,
    strategies,
)

BIN = Path(sys.executable).parent
OK = Outcome.success


def fail(code: Code) -> Outcome:
    return Outcome.failure(code)


def status(state: str, exit_status: int | None = None, *, started: bool = True) -> Outcome:
    return OK(StatusView(SandboxState(state), exit_status, started))


# -- the sim backend: exit at a chosen point ----------------------------------------------------


async def start_sim(nursery: trio.Nursery, **faults: Any) -> tuple[Any, Exits]:
    backend = SimBackend()
    spec = SandboxSpec("sim-1", "sim", sim_faults(**faults))
    backend.validate(spec)
    exits = Exits()
    return await backend.start(spec, nursery, exits), exits


async def test_exit_on_start_exits_as_soon_as_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        process, exits = await start_sim(nursery, exit_on="start", exit_code=3)
        assert process.pid > 0  # Start returned the process...
        await exits.event.wait()  # ...which exits at once, with its own status
        assert exits.statuses == [3]
        assert trio.current_time() == t0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
async def test_exit_on_stop_answers_a_stop_signal_with_its_own_status(signum: int) -> None:
    async with trio.open_nursery() as nursery:
        process, exits = await start_sim(nursery, exit_on="stop", exit_code=7)
        process.signal(0)
        assert exits.statuses == []
        process.signal(signum)
        assert exits.statuses == [7]
        process, exits = await start_sim(nursery, exit_on="stop", exit_code=7)
        process.signal(signal.SIGUSR1)  # not a stop signal: death by it
        assert exits.statuses == [128 + signal.SIGUSR1]


async def test_exit_on_stop_after_a_stop_delay_yields_to_sigkill(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        process, exits = await start_sim(nursery, exit_on="stop", stop_delay=5)
        process.signal(signal.SIGTERM)
        await trio.sleep(4)
        assert exits.statuses == []
        await exits.event.wait()
        assert exits.statuses == [0]  # exit_code defaults to 0
        process, exits = await start_sim(nursery, exit_on="stop", stop_delay=5)
        process.signal(signal.SIGTERM)
        process.signal(signal.SIGKILL)
        assert exits.statuses == [SIGKILL_STATUS]


@pytest.mark.parametrize(
    ("sim", "message"),
    [
        ({"exit_on": "crash"}, r"^options\.sim\.exit_on: must be 'start' or 'stop'"),
        ({"exit_on": 1}, r"^options\.sim\.exit_on: must be 'start' or 'stop'"),
        ({"exit_on": "stop", "ignore_sigterm": True}, r"contradicts ignore_sigterm"),
    ],
)
def test_exit_on_is_checked(sim: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        SimBackend().validate(SandboxSpec("a", "sim", SandboxOptions(sim=sim)))


# -- sim_faults, and what the model expects of them ---------------------------------------------


def test_sim_faults_builds_checked_options() -> None:
    assert sim_faults() == SandboxOptions()
    options = sim_faults(ignore_sigterm=True, stop_delay=0.5, exit_after=2, exit_code=3)
    assert options.sim == {
        "ignore_sigterm": True,
        "stop_delay": 0.5,
        "exit_after": 2,
        "exit_code": 3,
    }
    with pytest.raises(InvalidArgument, match=r"options\.sim\.exit_code"):
        sim_faults(exit_code=300)
    with pytest.raises(InvalidArgument, match=r"options\.sim\.exit_on"):
        sim_faults(exit_on="stop", ignore_sigterm=True)


@pytest.mark.parametrize(
    ("faults", "behaviour"),
    [
        ({}, ProcessBehaviour()),
        ({"ignore_sigterm": True}, ProcessBehaviour(sigterm_exit_status=None)),
        ({"exit_on": "stop", "exit_code": 4}, ProcessBehaviour(sigterm_exit_status=4)),
        ({"stop_delay": 1}, ProcessBehaviour(signals_race=True)),
        ({"exit_after": 1, "exit_code": 9}, ProcessBehaviour(own_exit_status=9)),
        ({"exit_on": "start"}, ProcessBehaviour(own_exit_status=0)),
        ({"start_error": "no", "start_delay": 1}, ProcessBehaviour(start_fails=True)),
    ],
)
def test_sim_behaviour_follows_the_faults(
    faults: dict[str, Any], behaviour: ProcessBehaviour
) -> None:
    assert sim_behaviour({"sandboxer": "sim", "options": sim_faults(**faults)}) == behaviour


def test_the_sequential_model_knows_failing_starts_and_own_exit_statuses() -> None:
    model = sim_model()
    model.apply("create", "a", sandboxer="sim", options=sim_faults(start_error="no"))
    assert model.apply("start", "a") == fail(Code.FAILED_PRECONDITION)
    assert model.apply("status", "a") == status("created", started=False)
    model.apply("create", "b", sandboxer="sim", options=sim_faults(exit_on="stop", exit_code=5))
    model.apply("start", "b")
    assert model.apply("stop", "b") == OK(None)
    assert model.apply("wait", "b") == OK(5)
    model.apply("create", "c", sandboxer="sim", options=sim_faults(ignore_sigterm=True))
    model.apply("start", "c")
    assert isinstance(model.apply("stop", "c"), Blocks)


def op(call: str, start: float, end: float, outcome: Outcome, **args: Any) -> Operation:
    return Operation(call, "a", args, start, end, outcome)


def test_the_checker_lets_a_process_exit_on_its_own_only_when_it_may() -> None:
    exits = {"sandboxer": "sim", "options": sim_faults(exit_after=0.001, exit_code=3)}
    history = [
        op("create", 0, 1, OK("a"), **exits),
        op("start", 2, 3, OK(True)),
        op("status", 4, 5, status("stopped", 3)),
        op("wait", 6, 7, OK(3)),
    ]
    assert check_linearizable(history, sim_model()).ok
    # The same history from a sandbox that never exits on its own is impossible.
    plain = [op("create", 0, 1, OK("a"), sandboxer="sim"), *history[1:]]
    result = check_linearizable(plain, sim_model())
    assert not result.ok
    assert [o.call for o in result.conflict] == ["status"]


def test_the_checker_lets_the_own_exit_overtake_a_stop() -> None:
    # The process exited on its own (3) before the Stop's SIGTERM could end it (143).
    exits = {"sandboxer": "sim", "options": sim_faults(exit_after=0.001, exit_code=3)}
    history = [
        op("create", 0, 1, OK("a"), **exits),
        op("start", 2, 3, OK(True)),
        op("stop", 4, 5, OK(None)),
        op("wait", 6, 7, OK(3)),
    ]
    assert check_linearizable(history, sim_model()).ok


def test_the_checker_knows_a_start_that_fails() -> None:
    fails = {"sandboxer": "sim", "options": sim_faults(start_error="no")}
    history = [
        op("create", 0, 1, OK("a"), **fails),
        op("start", 2, 3, fail(Code.FAILED_PRECONDITION)),
        op("stop", 4, 5, OK(None)),
        op("wait", 6, 7, OK(0)),
    ]
    assert check_linearizable(history, sim_model()).ok
    assert not check_linearizable([*history[:1], op("start", 2, 3, OK(True))], sim_model()).ok


# -- programs ---------------------------------------------------------------------------------


def test_a_program_is_groups_of_sequences_of_calls() -> None:
    create = Call("create", 0, {"sandboxer": "sim", "options": sim_faults(ignore_sigterm=True)})
    program = Program(
        [
            create,
            Call("start"),
            [Call("stop", 0, {"timeout_secs": 0}), [Call("wait"), Call("status")]],
        ]
    )
    assert len(program) == 5
    assert program.groups[2] == (
        (Call("stop", 0, {"timeout_secs": 0}),),
        (Call("wait"), Call("status")),
    )
    assert (program.sandboxes, program.clients, program.sequential) == (1, 2, False)
    assert Program([Call("create", 1), Call("start", 1)]).sequential
    assert Program([Call("ping", 2)]).sandboxes == 3
    # repr is Python that builds the same program.
    namespace = {"Program": Program, "Call": Call, "sim_faults": sim_faults}
    assert eval(repr(program), namespace) == program
    assert "sim_faults(ignore_sigterm=True)" in repr(program)
    with pytest.raises(ValueError, match="unknown call"):
        Call("reboot")
    with pytest.raises(ValueError, match="sandbox is a number"):
        Call("start", -1)
    with pytest.raises(TypeError, match="made of Call values"):
        Program([["start"]])


async def test_run_program_records_every_call_and_traces_it() -> None:
    program = Program(
        [
            Call("create", 0, {"sandboxer": "sim"}),
            Call("start"),
            [Call("stop"), [Call("wait"), Call("status")]],
        ]
    )
    trace: dict[tuple[int, int, int], Operation] = {}
    async with sandboxd.open_controller([SimBackend()], default_sandboxer="sim") as ctl:
        history = await run_program(program, [ctl], ["t-0"], trace=trace, cleanup=True)
        assert await ctl.list() == []  # cleaned up
    assert sorted(trace) == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (2, 1, 0), (2, 1, 1)]
    assert trace[2, 1, 0].outcome == OK(143)
    assert {o.client for o in history} == {"client 0", "client 1"}
    assert check_linearizable(history, sim_model()).ok


async def test_the_reaper_answers_waits_nobody_else_would() -> None:
    program = Program([Call("create", 0, {"sandboxer": "sim"}), Call("start"), Call("wait")])
    async with sandboxd.open_controller([SimBackend()], default_sandboxer="sim") as ctl:
        with trio.fail_after(10):
            history = await run_program(program, [ctl], ["t-0"])
    assert sorted((o.call, o.client, repr(o.outcome)) for o in history[-2:]) == [
        ("shutdown", "reaper", "ok(None)"),
        ("wait", "client 0", f"ok({SIGKILL_STATUS})"),
    ]
    assert check_linearizable(history, sim_model()).ok


class NeverAnswersWait:
    def __init__(self, controller: Any) -> None:
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)

    async def wait(self, sandbox_id: str) -> None:
        await trio.sleep_forever()


async def test_a_program_whose_calls_stay_unanswered_has_hung() -> None:
    program = Program([Call("create", 0, {"sandboxer": "sim"}), Call("wait")])
    async with sandboxd.open_controller([SimBackend()], default_sandboxer="sim") as ctl:
        with trio.fail_after(10), pytest.raises(ProgramHung, match=r"wait\('t-0'\)") as hung:
            await run_program(program, [NeverAnswersWait(ctl)], ["t-0"], hang_after=0.2)
    assert [call.name for call, _ in hung.value.pending] == ["wait"]
    assert any(o.client == "reaper" for o in hung.value.history)


# -- reproducers ------------------------------------------------------------------------------

REPRO = Program(
    [
        Call("create", 0, {"sandboxer": "sim", "options": sim_faults(stop_delay=0.001)}),
        Call("start"),
        [Call("stop", 0, {"timeout_secs": 0.5}), [Call("wait"), Call("status")]],
        Call("shutdown"),
    ]
)


def test_the_script_spells_out_every_call_sim_faults_included() -> None:
    script = reproducer_script(REPRO, ["r-1"], socket="/tmp/x.sock", notes=["why: because"])
    lines = script.splitlines()
    assert lines[:3] == [
        "#!/bin/sh",
        "# why: because",
        'export SANDBOXD_SOCKET="${SANDBOXD_SOCKET:-/tmp/x.sock}"',
    ]
    # The sim faults of a Create are sandboxctl options too (values as JSON).
    assert lines[3] == "sandboxctl create r-1 --sandboxer sim --sim stop_delay=0.001"
    assert "sandboxctl stop r-1 --timeout 0.5 &" in lines
    assert "  sandboxctl wait r-1 --timeout 10" in lines
    assert lines[-1] == "sandboxctl shutdown r-1 >/dev/null 2>&1"
    sequential = reproducer_script(
        Program([Call("create", 0, {"sandboxer": "sim"}), Call("start"), Call("start")]), ["s"]
    )
    assert "sandboxctl start s  # model: FAILED_PRECONDITION" in sequential


def test_the_python_reproducer_passes_on_a_correct_daemon(tmp_path: Path) -> None:
    source = reproducer_test(REPRO, ["repro-1"], socket="/nonexistent.sock", name="test_it")
    compile(source, "reproducer", "exec")
    (tmp_path / "test_repro.py").write_text(source)
    with serve_in_thread(default_sandboxer="sim") as path:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
            env={**os.environ, "SANDBOXD_SOCKET": path},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


# -- strategies -------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(sandbox_id=strategies.sandbox_ids(prefix="t-"), bad=strategies.invalid_sandbox_ids())
def test_id_strategies(sandbox_id: str, bad: str) -> None:
    assert check_sandbox_id(sandbox_id) == sandbox_id
    assert sandbox_id.startswith("t-")
    with pytest.raises(InvalidArgument):
        check_sandbox_id(bad)


@settings(max_examples=100, deadline=None)
@given(options=strategies.create_options())
def test_every_drawn_fault_is_one_the_sim_backend_takes(options: SandboxOptions | None) -> None:
    if options is not None:
        SimBackend().validate(SandboxSpec("a", "sim", options))
        assert len(options.sim or {}) <= 3  # up to two faults, and an exit code
        assert options.sim or options.lifetime_secs is not None


@settings(max_examples=60, deadline=None)
@given(
    program=strategies.programs(3, clients=2, max_calls=10, max_sequence=2),
    sequential=strategies.programs(2, clients=1),
)
def test_drawn_programs_keep_to_their_bounds(program: Program, sequential: Program) -> None:
    assert 1 <= len(program) <= 10  # partners and id reuses included
    assert program.sandboxes <= 3
    assert all(len(group) <= 2 and all(len(s) <= 2 for s in group) for group in program.groups)
    assert sequential.sequential and sequential.sandboxes <= 2


@settings(max_examples=20, deadline=None)
@given(program=strategies.client_programs(4, 3, call=strategies.calls(1, names=["ping"])))
def test_client_programs_run_everyone_at_once(program: Program) -> None:
    (group,) = program.groups
    assert [len(s) for s in group] == [3, 3, 3, 3]
    assert {c.name for c in program.calls} == {"ping"}


def test_programs_shrink_to_plain_calls_on_one_sandbox() -> None:
    from hypothesis import find

    # The smallest program that stops a started sandbox: no faults, one sandbox.
    found = find(
        strategies.programs(2),
        lambda p: [c.name for c in p.calls][-3:] == ["create", "start", "stop"],
        settings=settings(database=None, max_examples=5000),
        random=random.Random(0),
    )
    assert found.calls == (Call("create", 0, {"sandboxer": "sim"}), Call("start"), Call("stop"))


# -- the pytest plugin ------------------------------------------------------------------------


def test_the_plugin_is_registered() -> None:
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins["sandboxd"] == "sandboxd.testing.pytest_plugin"


async def test_the_async_fixtures_share_one_runtime(
    sandboxd_controller: sandboxd.Controller,
    sandboxd_client: sandboxd.RemoteController,
    sandboxd_socket: str,
) -> None:
    await sandboxd_client.create("fx-1")  # the sim sandboxer by default
    assert (await sandboxd_client.start("fx-1")).pid > 0
    assert sandboxd_controller.status_nowait("fx-1").state is SandboxState.READY
    async with sandboxd.connect(sandboxd_socket) as other:
        await other.stop("fx-1", timeout_secs=0)
    assert (await sandboxd_controller.wait("fx-1")).exit_status == SIGKILL_STATUS


def test_the_sync_client_works_from_a_sync_test(
    sandboxd_sync_client: sandboxd.SyncController,
) -> None:
    ctl = sandboxd_sync_client
    ctl.create("fx-2", options=sim_faults(exit_on="stop", exit_code=9))
    ctl.start("fx-2")
    ctl.stop("fx-2")
    assert ctl.wait("fx-2").exit_status == 9


@pytest.fixture
def sandboxd_controller_options() -> dict[str, Any]:
    # Overridden for this module: the fixtures' Controller takes it.
    return {"default_sandboxer": "sim", "stop_timeout": 0.05}


async def test_the_fixtures_take_overridden_options(
    sandboxd_client: sandboxd.RemoteController,
) -> None:
    await sandboxd_client.create("fx-3", options=sim_faults(ignore_sigterm=True))
    await sandboxd_client.start("fx-3")
    with trio.fail_after(5):
        await sandboxd_client.stop("fx-3")  # the grace period is 0.05 s
    assert (await sandboxd_client.wait("fx-3")).exit_status == SIGKILL_STATUS


async def test_the_fixtures_shut_their_sandboxes_down(
    sandboxd_controller: sandboxd.Controller,
) -> None:
    # Left running on purpose: the fixture's teardown shuts it down (a process sandbox).
    await sandboxd_controller.create("fx-4", sandboxer="process")
    assert (await sandboxd_controller.start("fx-4")).pid > 0


# -- Hypothesis is the toolkit's only -----------------------------------------------------------

BLOCK_HYPOTHESIS = "import sys; sys.modules['hypothesis'] = None\n"


def run_without_hypothesis(source: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_HYPOTHESIS + textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_daemon_and_the_clients_work_without_hypothesis() -> None:
    proc = run_without_hypothesis(
        """
        import trio
        import sandboxd, sandboxd.api, sandboxd.cli._serve, sandboxd.cli._ctl
        import sandboxd.testing, sandboxd.testing.pytest_plugin
        from sandboxd.testing import sim_faults

        async def main():
            async with trio.open_nursery() as nursery:
                ctl = await nursery.start(sandboxd.Controller(default_sandboxer="process").run)
                path = sys.argv[1]
                await nursery.start(sandboxd.serve_controller, ctl, path)
                async with sandboxd.connect(path) as remote:
                    await remote.create("a", sandboxer="sim", options=sim_faults(exit_on="stop"))
                    await remote.start("a")
                    await remote.stop("a")
                    print((await remote.wait("a")).exit_status)
                nursery.cancel_scope.cancel()

        trio.run(main)
        assert sandboxd.cli._ctl.main(["--help"]) == 0
        """,
        f"/tmp/sbd-nohyp-{os.getpid()}.sock",
    )
    assert proc.returncode == 0, proc.stderr  # --help exits through SystemExit(0)
    assert proc.stdout.splitlines()[0] == "0", proc.stderr
    assert "usage: sandboxctl" in proc.stdout
    assert "ModuleNotFoundError" not in proc.stderr and "ImportError" not in proc.stderr


def test_sandboxctl_fuzz_without_hypothesis_says_how_to_install_it() -> None:
    proc = run_without_hypothesis(
        "from sandboxd.cli._ctl import main; sys.exit(main(['fuzz', '--socket', '/nonexistent']))"
    )
    assert proc.returncode == 3, proc.stderr
    assert "pip install 'sandboxd[testing]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_strategies_say_they_need_hypothesis() -> None:
    proc = run_without_hypothesis("import sandboxd.testing.strategies")
    assert proc.returncode == 1
    assert "hypothesis" in proc.stderr
