"""The fuzzer's programs: a seed draws the same ones wherever sandboxd is installed, id reuse
comes up often enough to find a stale cache, and real processes (``process`` sandboxer) are
fuzzed, their exit statuses and signals checked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

import sandboxd
from sandboxd import ExitStatus, SandboxState, SandboxStatus
from sandboxd.backends import BwrapBackend, ProcessBackend
from sandboxd.testing import (
    Call,
    ProcessBehaviour,
    Program,
    process_behaviour,
    process_faults,
    reproducer_script,
    reproducer_test,
    serve_in_thread,
)
from sandboxd.testing.fuzz import fuzz
from test_fuzz import DEAF, RACE, WaitsBeforeTheStopEnds, Wrapper, fuzz_one, in_process

SANDBOXCTL = str(Path(sys.executable).parent / "sandboxctl")

# -- seeds ------------------------------------------------------------------------------------

#: Prints the digest of the programs seed 3 draws.  The Creates carry labels drawn from a wide
#: range of integers: where Hypothesis mixes in constants found in local source files, such
#: draws are the first to change.
DIGEST_SCRIPT = """
import sys
from contextlib import asynccontextmanager

from hypothesis import strategies as st

import sandboxd
from sandboxd.backends import SimBackend
from sandboxd.testing import strategies
from sandboxd.testing.fuzz import fuzz

if len(sys.argv) > 1:
    import constants_of_mine  # the caller's own code, full of constants

@asynccontextmanager
async def controllers():
    async with sandboxd.open_controller([SimBackend()], default_sandboxer="sim") as ctl:
        yield ctl

numbers = st.lists(st.integers(0, 10**6), min_size=8, max_size=8)
create = numbers.map(
    lambda ns: {"sandboxer": "sim", "labels": {f"n{i}": str(n) for i, n in enumerate(ns)}}
)
programs = strategies.programs(1, names=("create",), create=create, max_calls=2, guided=False)
report = fuzz(controllers, seed=3, max_programs=40, duration=None, programs=programs)
assert report.ok, report.summary()
print(sandboxd.__file__)
print(report.digest)
"""


def digest_of_seed(cwd: Path, *extra: str, path: Path | None = None) -> tuple[str, str]:
    """(where sandboxd was imported from, the digest), from a fresh interpreter in ``cwd``."""
    env = {"PATH": "/usr/bin:/bin"}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    proc = subprocess.run(
        [sys.executable, "-c", DIGEST_SCRIPT, *extra],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    where, digest = proc.stdout.split()
    return where, digest


def test_a_seed_draws_the_same_programs_installed_or_from_a_source_tree(tmp_path: Path) -> None:
    source = Path(sandboxd.__file__).parent
    # Installed: a copy in a site-packages directory, which Hypothesis takes for third-party.
    installed = tmp_path / "lib" / "site-packages"
    shutil.copytree(source, installed / "sandboxd", ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    (elsewhere / "constants_of_mine.py").write_text(
        "NUMBERS = [" + ", ".join(str(n) for n in range(1000, 1_000_000, 9973)) + "]\n"
    )
    from_tree = digest_of_seed(elsewhere)
    mixed = digest_of_seed(elsewhere, "import mine")
    from_wheel = digest_of_seed(elsewhere, path=installed)
    assert from_tree[0].startswith(str(source))
    assert from_wheel[0].startswith(str(installed))
    assert from_tree[1] == mixed[1] == from_wheel[1]


# -- id reuse ---------------------------------------------------------------------------------


class CachesFinalStatus(Wrapper):
    """Keeps the Status of a stopped sandbox (it cannot change any more: a Shutdown makes
    the id unknown) and never forgets it: a sandbox created again under that id reads as
    stopped."""

    def __init__(self, controller: Any) -> None:
        super().__init__(controller)
        self._final: dict[str, SandboxStatus] = {}

    async def status(self, sandbox_id: str, verbose: bool = False) -> SandboxStatus:
        cached = self._final.get(sandbox_id)
        if cached is not None:
            await self._controller.ping(sandbox_id)  # NOT_FOUND once it is shut down
            return cached
        status: SandboxStatus = await self._controller.status(sandbox_id, verbose=verbose)
        if status.state is SandboxState.STOPPED:
            self._final[sandbox_id] = status
        return status


def test_it_finds_a_status_cache_a_shutdown_does_not_clear() -> None:
    # Budgets a loaded machine cannot cut short: programs, not seconds, and a shrinking
    # that ends when nothing simpler fails (the limit only bounds a runaway one).
    report = fuzz(
        in_process(CachesFinalStatus), seed=1, max_programs=400, duration=None, shrink_limit=60
    )
    violation = report.violation
    assert violation is not None, report.summary()
    calls = [(call.name, call.sandbox) for call in violation.program.calls]
    # The sandbox has two lives: the stale Status is the second life's.
    assert calls.count(("create", 0)) == 2, calls
    first_life_ends = calls.index(("shutdown", 0))
    assert ("status", 0) in calls[first_life_ends:], calls


# -- real processes ---------------------------------------------------------------------------


class ExitStatusOffBySignal(Wrapper):
    """Reports a death by signal N as the status N, not 128 + N."""

    async def wait(self, sandbox_id: str) -> ExitStatus:
        result: ExitStatus = await self._controller.wait(sandbox_id)
        if result.exit_status > 128:
            return attrs.evolve(result, exit_status=result.exit_status - 128)
        return result


def real_processes(
    wrap: Callable[[Any], Any] | None = None, sandboxer: str = "process"
) -> Callable[[], AbstractAsyncContextManager[Any]]:
    """A factory of fresh in-process controllers over a backend of real processes
    (wrapped)."""
    backend = BwrapBackend() if sandboxer == "bwrap" else ProcessBackend()

    @asynccontextmanager
    async def factory() -> AsyncIterator[Any]:
        async with sandboxd.open_controller(
            [backend], default_sandboxer=sandboxer, stop_timeout=0.1
        ) as controller:
            yield controller if wrap is None else wrap(controller)

    return factory


def test_real_processes_map_to_what_the_model_expects() -> None:
    assert process_faults() is None
    assert process_behaviour({}) == ProcessBehaviour(sigterm_exit_status=0, signals_race=True)
    exits = process_faults(exit_code=3, exit_after=0.01)
    assert exits is not None and exits.command == ("sh", "-c", "sleep 0.01; exit 3")
    assert process_behaviour({"options": exits}).own_exit_status == 3
    deaf = process_faults(ignore_sigterm=True)
    assert deaf is not None and deaf.command == ("sh", "-c", 'trap "" TERM; exec sleep 300')
    assert process_behaviour({"options": deaf}) == ProcessBehaviour(signals_race=True)
    # A reproducer writes them back as they were built, for Python and for sandboxctl.
    program = Program(
        [Call("create", 0, {"sandboxer": "process", "options": exits}), Call("start", 0)]
    )
    assert "process_faults(exit_code=3, exit_after=0.01)" in repr(program)
    test = reproducer_test(program, ["a"])
    assert "process_faults" in test and "MODEL = process_model()" in test
    script = reproducer_script(program, ["a"])
    assert "sandboxctl create a --sandboxer process -- sh -c 'sleep 0.01; exit 3'" in script


@pytest.mark.parametrize("sandboxer", ["process", "bwrap"])
def test_a_correct_controller_of_real_processes_passes(sandboxer: str) -> None:
    # Real bubblewrap, as tools/test installs it: missing, this fails instead of skipping.
    if sandboxer == "bwrap":
        assert BwrapBackend().unavailable_reason() is None
    report = fuzz(
        real_processes(sandboxer=sandboxer),
        seed=1,
        max_programs=40,
        duration=None,
        sandboxer=sandboxer,
    )
    assert report.ok, report.violation and report.violation.describe()
    assert report.programs == 40


def test_it_finds_an_exit_status_off_by_the_signal_with_real_processes() -> None:
    report = fuzz(
        real_processes(ExitStatusOffBySignal),
        seed=3,
        duration=30,
        sandboxer="process",
        shrink_limit=2,
    )
    violation = report.violation
    assert violation is not None, report.summary()
    assert "wait(" in violation.description
    assert "-> ok(9)" in violation.description or "-> ok(15)" in violation.description


def test_sandboxctl_fuzz_with_real_processes_reports_a_broken_daemon() -> None:
    with serve_in_thread(stop_timeout=0.1, wrap=ExitStatusOffBySignal) as broken:
        args = ["--socket", broken, "--seed", "2", "--duration", "20", "--sandboxer", "process"]
        proc = subprocess.run(
            [SANDBOXCTL, "fuzz", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sandboxer process" in proc.stderr
    assert "VIOLATION (not linearizable)" in proc.stdout
    assert "--sandboxer process" in proc.stdout  # the script creates real processes too
    assert "MODEL = process_model(Timing(tolerance=1.0))" in proc.stdout


# -- shrinking --------------------------------------------------------------------------------


def test_shrinking_drops_sandboxes_and_serialises_the_groups_that_need_no_race() -> None:
    noisy = Program(
        [
            [Call("create", 1), Call("create", 0, DEAF), Call("status", 1)],
            [[Call("start", 1), Call("stop", 1)], Call("start", 0)],
            [Call("stop", 0), Call("wait", 0), Call("wait", 1)],
        ]
    )
    report, seen = fuzz_one(WaitsBeforeTheStopEnds, noisy, shrink_limit=10)
    assert report.violation is not None, report.summary()
    assert report.violation.program == RACE
    # Whole sandboxes and groups at a time: about 120 runs (call by call: about 700).
    assert seen[-1].attempts < 300, seen[-1]
