"""The fuzzer finds real bugs: the engine of ``sandboxctl fuzz`` against deliberately broken
controllers (in process, and behind a real server with the real ``sandboxctl``), reporting
each with a minimal reproducer; and against a correct daemon it finds nothing, cleans up
after itself and draws the same programs for the same seed."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

import sandboxd
from sandboxd import ExitStatus, SandboxInstance, SandboxState
from sandboxd.backends import SimBackend
from sandboxd.testing import Call, Program, serve_in_thread, sim_faults, strategies
from sandboxd.testing.fuzz import FuzzProgress, FuzzReport, Violation, fuzz

BIN = Path(sys.executable).parent
SANDBOXCTL = str(BIN / "sandboxctl")


# -- deliberately broken controllers -----------------------------------------------------------


class Wrapper:
    def __init__(self, controller: Any) -> None:
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)

    def __len__(self) -> int:  # the server's Controller service asks (dunders skip getattr)
        return len(self._controller)


class StartsTwice(Wrapper):
    """Start does not check the phase: starting a running sandbox 'succeeds' again."""

    async def start(self, sandbox_id: str) -> SandboxInstance:
        status = await self._controller.status(sandbox_id)
        if status.state is SandboxState.READY:
            return SandboxInstance(sandbox_id, status.pid, status.created_at)
        result: SandboxInstance = await self._controller.start(sandbox_id)
        return result


class WaitsForNobody(Wrapper):
    """Wait answers before the exit is recorded: a running sandbox gets the status a Stop
    would give it, at once."""

    async def wait(self, sandbox_id: str) -> ExitStatus:
        status = await self._controller.status(sandbox_id)
        if status.state is SandboxState.READY:
            return ExitStatus(143, status.created_at)
        result: ExitStatus = await self._controller.wait(sandbox_id)
        return result


class WaitsBeforeTheStopEnds(Wrapper):
    """Wait answers while a Stop is still in progress, with the status SIGTERM usually
    gives: wrong for a process that ignores SIGTERM (SIGKILL ends it: 137)."""

    async def wait(self, sandbox_id: str) -> ExitStatus:
        status = await self._controller.status(sandbox_id)
        if status.state is SandboxState.STOPPING:
            return ExitStatus(143, status.created_at)
        result: ExitStatus = await self._controller.wait(sandbox_id)
        return result


def in_process(
    wrap: Callable[[Any], Any] | None = None,
) -> Callable[[], AbstractAsyncContextManager[Any]]:
    """A factory of fresh in-process controllers (wrapped), one per example."""

    @asynccontextmanager
    async def factory() -> AsyncIterator[Any]:
        async with sandboxd.open_controller(
            [SimBackend()], default_sandboxer="sim", stop_timeout=0.005
        ) as controller:
            yield controller if wrap is None else wrap(controller)

    return factory


#: Create arguments of a sim process that ignores SIGTERM.
DEAF: dict[str, Any] = {"sandboxer": "sim", "options": sim_faults(ignore_sigterm=True)}

#: The smallest program that shows WaitsBeforeTheStopEnds (when the Wait comes second).
RACE = Program([Call("create", 0, DEAF), Call("start"), [Call("stop"), Call("wait")]])


def fuzz_one(
    wrap: Callable[[Any], Any], program: Program, **options: Any
) -> tuple[FuzzReport, list[FuzzProgress]]:
    """The fuzzer's report on ``program`` alone (tried with one jitter after the other)
    against in-process controllers wrapped in ``wrap``, and its progress reports."""
    seen: list[FuzzProgress] = []
    report = fuzz(
        in_process(wrap),
        seed=1,
        duration=20,
        programs=st.just(program),
        progress=seen.append,
        **options,
    )
    return report, seen


@pytest.fixture(autouse=True)
def quiet_runtime() -> Iterator[None]:
    # Injected start failures are logged as warnings: thousands of lines, none of interest.
    logger = logging.getLogger("sandboxd")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def names(program: Program) -> list[tuple[str, int]]:
    return [(call.name, call.sandbox) for call in program.calls]


def assert_reproducers(violation: Violation, seed: int) -> None:
    """Both reproducers are there and say the same program."""
    assert violation.script.startswith("#!/bin/sh\n")
    assert f"fuzzer (seed {seed})" in violation.script
    compile(violation.test, "reproducer", "exec")
    assert f"def test_fuzz_seed_{seed}() -> None:" in violation.test
    assert f"PROGRAM = {violation.program!r}" in violation.test
    for call in violation.program.calls:
        sandbox_id = violation.sandbox_ids[call.sandbox]
        assert f"sandboxctl {call.name} {sandbox_id}" in violation.script
    for line in violation.description.splitlines()[:3]:
        assert line.strip() in violation.script
        assert line.strip() in violation.test


# -- in process -------------------------------------------------------------------------------


def test_it_reports_a_start_that_succeeds_twice_with_a_minimal_reproducer() -> None:
    report = fuzz(in_process(StartsTwice), seed=1, duration=30, shrink_limit=20)
    violation = report.violation
    assert violation is not None, report.summary()
    assert violation.kind == "not linearizable"
    # Exactly create + start + start on one sandbox, one after the other.
    assert names(violation.program) == [("create", 0), ("start", 0), ("start", 0)]
    assert violation.program.sequential
    assert violation.program.calls[0].args == {"sandboxer": "sim"}  # no faults needed
    assert violation.shrunk_from >= len(violation.program)
    assert_reproducers(violation, 1)
    script = violation.script.splitlines()
    assert script[-3].endswith("# answered: ok (a pid); model: FAILED_PRECONDITION")
    assert "start(" in violation.description and "-> ok(True)" in violation.description


def test_it_reports_a_wait_answered_before_the_exit_with_a_minimal_reproducer() -> None:
    report = fuzz(in_process(WaitsForNobody), seed=2, duration=30, shrink_limit=20)
    violation = report.violation
    assert violation is not None, report.summary()
    assert names(violation.program) == [("create", 0), ("start", 0), ("wait", 0)]
    assert violation.program.sequential
    assert_reproducers(violation, 2)
    assert "wait(" in violation.description and "-> ok(143)" in violation.description


def test_it_finds_a_wait_that_races_a_stop() -> None:
    # A subtler bug: only a Wait made while a Stop of a process that ignores SIGTERM is in
    # progress gets a wrong answer.  The fuzzer is pointed at stops and waits, with the one
    # fault that matters, as a user who suspects such a bug would.
    suspects = strategies.programs(
        1,
        clients=2,
        max_calls=6,
        names=("create", "start", "stop", "wait"),
        create=strategies.create_args(options=strategies.create_options(max_faults=1)),
    )
    report = fuzz(
        in_process(WaitsBeforeTheStopEnds),
        seed=4,
        duration=40,
        programs=suspects,
        shrink_limit=20,
    )
    violation = report.violation
    assert violation is not None, report.summary()
    assert not violation.program.sequential  # it takes a race
    # Small: the race it takes is create + start + (stop | wait) -- with, at worst, a call
    # the polishing could not remove because the race did not come up again in time.
    calls = names(violation.program)
    assert len(calls) <= 5, calls
    # create, then start, then the racing stop and wait; the one call the polishing may
    # leave can stand anywhere (a Start before the Create, refused NOT_FOUND, say).
    created = calls.index(("create", 0))
    started = calls.index(("start", 0), created)
    assert {("stop", 0), ("wait", 0)} <= set(calls[started + 1 :]), calls
    create = violation.program.calls[created]
    assert create.args["options"].sim == {"ignore_sigterm": True}
    assert_reproducers(violation, 4)
    assert "ignore_sigterm" in violation.test  # the Python test keeps the fault


def test_a_correct_controller_passes_and_a_seed_draws_the_same_programs() -> None:
    seen: list[FuzzProgress] = []
    first = fuzz(in_process(), seed=5, max_programs=60, duration=None, progress=seen.append)
    second = fuzz(in_process(), seed=5, max_programs=60, duration=None, progress_every=20)
    other = fuzz(in_process(), seed=6, max_programs=20, duration=None)
    assert first.ok and second.ok and other.ok, first.summary()
    assert (first.programs, first.calls, first.digest) == (60, second.calls, second.digest)
    assert other.digest != first.digest
    assert [p.programs for p in seen] == [50]
    assert "every check passed" in first.summary()


# -- sandboxctl fuzz against real servers ------------------------------------------------------


def sandboxctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SANDBOXCTL, *args], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def test_sandboxctl_fuzz_reports_a_broken_server_with_working_reproducers(
    tmp_path: Path,
) -> None:
    with serve_in_thread(default_sandboxer="sim", wrap=StartsTwice) as broken:
        proc = sandboxctl("fuzz", "--socket", broken, "--seed", "4", "--duration", "30")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        out = proc.stdout
        assert "VIOLATION (not linearizable)" in out
        assert f"rerun with: sandboxctl fuzz --socket {broken} --seed 4" in out
        assert "sandboxctl fuzz: seed 4, 4 clients" in proc.stderr  # progress goes to stderr
        script = out.split("--- sandboxctl script ---\n")[1].split("\n--- Python test")[0]
        test = out.split("--- Python test (pytest) ---\n")[1]
        # Minimal: create, start, start, one after the other.
        commands = [line.split("  #")[0] for line in script.splitlines() if line[:1] == "s"]
        assert [c.split()[1] for c in commands] == ["create", "start", "start", "shutdown"]
        # The script shows the bug on the broken server: the second start succeeds.
        env = {k: v for k, v in os.environ.items() if k != "SANDBOXD_SOCKET"}
        env["PATH"] = f"{BIN}:{os.environ['PATH']}"
        ran = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        assert ran.stdout.count("started, pid") == 2, ran.stdout + ran.stderr
        # So does the Python test (which passes on a correct daemon: test_testing_toolkit).
        (tmp_path / "test_repro.py").write_text(test)
        result = pytest_on(tmp_path, broken)
        assert result.returncode == 1, result.stdout
        assert "no order of these 2 operations" in result.stdout


def pytest_on(directory: Path, socket: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
        env={**os.environ, "SANDBOXD_SOCKET": socket},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sandboxctl_fuzz_passes_a_correct_daemon_and_cleans_up() -> None:
    with (
        serve_in_thread(default_sandboxer="sim", stop_timeout=0.01) as path,
        sandboxd.SyncController(path, timeout=10) as ctl,
    ):
        ctl.create("mine")  # the user's sandbox: the fuzzer must leave it alone
        ctl.create("fuzz-9-999")  # left by an interrupted run with this seed
        proc = sandboxctl("--socket", path, "fuzz", "--seed", "9", "--duration", "2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert [s.sandbox_id for s in ctl.list()] == ["mine"]
    assert re.fullmatch(
        r"\d+ programs, \d+ calls in [\d.]+ s \(seed 9, digest [0-9a-f]{12}\): "
        r"every check passed\n",
        proc.stdout,
    ), proc.stdout
    progress = proc.stderr.splitlines()
    assert progress[0].startswith("sandboxctl fuzz: seed 9, 4 clients, 2 sandboxes")
    assert re.fullmatch(
        r"sandboxctl fuzz: +50 programs +\d+ calls +[\d.]+ s  digest [0-9a-f]{12}", progress[1]
    ), progress


def test_sandboxctl_fuzz_without_a_daemon_is_unavailable(tmp_path: Path) -> None:
    proc = sandboxctl("fuzz", "--socket", str(tmp_path / "none.sock"), "--duration", "1")
    assert proc.returncode == 24, proc.stderr
    assert "UNAVAILABLE" in proc.stderr
