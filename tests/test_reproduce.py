"""Reproducers replay what the fuzzer found: the Python test of a concurrent bug fails at
least 9 times in 10 against the buggy daemon and never against a correct one, and checks
what the fuzzer checks (fields and events as well as outcomes)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest

from sandboxd import SandboxStatus
from sandboxd.testing import serve_in_thread
from sandboxd.testing.fuzz import Violation
from test_fuzz import RACE, WaitsBeforeTheStopEnds, fuzz_one
from test_fuzz import quiet_runtime as quiet_runtime  # an autouse fixture
from test_fuzz_model import REUSE, ExitsBeforeItWasCreated
from test_fuzz_model import run as run_model_fuzz

#: Each daemon's stop_timeout: the grace period of a Stop without a timeout.
GRACE = 0.005


@pytest.fixture(scope="module")
def race() -> Violation:
    """The fuzzer's report of a Wait answered while a Stop is still in progress (of the
    program that shows it, tried with one jitter after the other until the race shows)."""
    report, _ = fuzz_one(WaitsBeforeTheStopEnds, RACE, shrink_limit=1)
    assert report.violation is not None, report.summary()
    assert not report.violation.program.sequential
    return report.violation


def outcomes(test: str, socket: str, runs: int) -> list[bool]:
    """Whether the reproducer ``test`` passed, run by run, against the daemon at ``socket``."""
    namespace: dict[str, Any] = {}
    exec(compile(test, "reproducer", "exec"), namespace)
    namespace["SOCKET"] = socket
    (function,) = [v for k, v in namespace.items() if k.startswith("test_")]
    passed = []
    for _ in range(runs):
        failed = False
        try:
            function()
        except* AssertionError:  # raised in the connection's nursery
            failed = True
        passed.append(not failed)
    return passed


def test_the_reproducer_of_a_race_fails_against_the_buggy_daemon(race: Violation) -> None:
    assert "ORDER = [" in race.test and "schedule=ORDER" in race.test
    with serve_in_thread(
        default_sandboxer="sim", stop_timeout=GRACE, wrap=WaitsBeforeTheStopEnds
    ) as broken:
        passed = outcomes(race.test, broken, 10)
    assert passed.count(False) >= 9, passed


def test_the_reproducer_of_a_race_passes_against_a_correct_daemon(race: Violation) -> None:
    with serve_in_thread(default_sandboxer="sim", stop_timeout=GRACE) as correct:
        passed = outcomes(race.test, correct, 10)
    assert all(passed), passed


def test_the_report_says_the_conflict_in_words(race: Violation) -> None:
    said = race.description.splitlines()[0]
    assert said == (
        "wait answered exit 143 while stop was in progress, but after create, start and stop "
        "the model says wait waits until the Stop's grace period ends and SIGKILL ends the "
        "process."
    )
    assert said in race.script and said in race.test  # both reproducers say it too


def test_the_script_of_a_race_starts_its_clients_in_the_recorded_order(race: Violation) -> None:
    lines = race.script.splitlines()
    start = lines.index("# 2 clients at once:")
    stop, pause, wait = (line.split("  #")[0] for line in lines[start + 2 : start + 5])
    assert stop.startswith("sandboxctl stop ") and stop.endswith(" &")
    assert pause == "sleep 0.1"
    assert wait.startswith("sandboxctl wait ") and wait.endswith(" &")


class ServesExitsBeforeCreation(ExitsBeforeItWasCreated):
    """The same bug where the server asks for a status: its non-blocking query."""

    def status_nowait(self, sandbox_id: str, *, verbose: bool = False) -> SandboxStatus:
        status: SandboxStatus = self._controller.status_nowait(sandbox_id, verbose=verbose)
        if status.exited_at is None:
            return status
        return attrs.evolve(status, exited_at=status.created_at - timedelta(milliseconds=1))


def test_the_reproducer_of_a_fields_bug_fails_against_the_buggy_daemon_only() -> None:
    # A violation the linearizability check cannot see: the reproducer checks fields too.
    report = run_model_fuzz(ExitsBeforeItWasCreated, seed=1, programs=REUSE)
    violation = report.violation
    assert violation is not None and violation.kind == "wrong fields", report.summary()
    assert "check_fields(history)" in violation.test
    with serve_in_thread(
        default_sandboxer="sim", stop_timeout=GRACE, wrap=ServesExitsBeforeCreation
    ) as broken:
        assert outcomes(violation.test, broken, 3) == [False] * 3
    with serve_in_thread(default_sandboxer="sim", stop_timeout=GRACE) as correct:
        assert outcomes(violation.test, correct, 3) == [True] * 3
