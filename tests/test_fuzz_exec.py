"""The fuzzer finds ordering bugs between an exec and the Stop, Shutdown or exit of its
sandbox.  Each test plants one such bug in an in-process Controller (one method of its actor
or of its exec runner patched, or one entry of its table changed consistently) and shows that
a short fuzz run finds it and shrinks it to a few calls; a correct Controller passes the
same programs."""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest
from hypothesis import strategies as st

from sandboxd._models import ExecExit
from sandboxd.api import RemoteController
from sandboxd.backends._process import ProcessSandbox
from sandboxd.runtime import Effect, Input, Phase, Transition, _exec, _lifecycle
from sandboxd.runtime._actor import SandboxActor
from sandboxd.testing import Call, Program, serve_in_thread, strategies
from sandboxd.testing.fuzz import FuzzReport, fuzz, runs_execs
from test_fuzz import in_process, quiet_runtime  # noqa: F401 (an autouse fixture)
from test_fuzz_runner import real_processes

#: The grace period of test_fuzz's in-process controllers, which the model is told.
STOP_TIMEOUT = 0.005

#: Execs racing the calls that end their sandbox, on one sandbox, as a user who suspects an
#: ordering bug there would point the fuzzer: mostly commands that outlive a call or two.
EXECS = strategies.programs(
    1,
    clients=3,
    max_calls=7,
    names=("create", "start", "exec", "exec", "stop", "stop", "shutdown", "wait", "status"),
    # No lifetimes: the bugs below are to be found through the calls that name them.
    create=strategies.create_args(options=strategies.create_options(max_faults=1, lifetimes=())),
    execs=strategies.exec_args(
        commands=strategies.sim_exec_commands(
            [("hang",), ("hang",), ("sleep", "0.004"), ("true",), ("exit", "3"), ("echo", "hi")]
        )
    ),
)


def run(seed: int = 1, **kwargs: Any) -> FuzzReport:
    kwargs.setdefault("duration", 30)
    kwargs.setdefault("shrink_limit", 3)
    kwargs.setdefault("programs", EXECS)
    return fuzz(in_process(), seed=seed, stop_timeout=STOP_TIMEOUT, **kwargs)


def test_a_correct_controller_passes_the_exec_programs() -> None:
    report = run(max_programs=600, duration=None)
    assert report.ok, report.violation and report.violation.describe()


# -- the bugs ------------------------------------------------------------------------------------


def signal_spares_the_execs(self: SandboxActor, signum: int) -> None:
    """Bug: a Stop's and a Shutdown's signals reach the init, not its execs."""
    if self.process is not None:
        self.process.signal(signum)


def exit_of_killed_says_the_signal(returncode: int, timed_out: bool) -> ExecExit:
    """Bug: an exec a signal killed reports the signal's number, not 128 + N."""
    if returncode < 0:
        return ExecExit(-returncode, timed_out, -returncode)
    return ExecExit(returncode, timed_out)


def records_the_exit_before_the_execs_end(
    self: SandboxActor, input: Input, arg: Any, reply: Any
) -> None:
    """Bug: the init's exit is recorded at once, its execs killed and forgotten, not waited
    for."""
    if input is Input.PROCESS_EXITED and self._execs:
        execs, self._execs = self._execs, None
        for running in execs.values():
            running.signal(signal.SIGKILL)
    ORIGINAL_APPLY(self, input, arg, reply)


ORIGINAL_APPLY = SandboxActor._apply


def test_an_exec_left_running_by_a_stop_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SandboxActor, "_signal", signal_spares_the_execs)
    report = run()
    violation = report.violation
    assert violation is not None, report.summary()
    assert violation.kind == "not linearizable", violation.describe()
    names = [call.name for call in violation.program.calls]
    assert "exec" in names and ("stop" in names or "shutdown" in names), names
    assert len(names) <= 6, violation.describe()


def test_an_exec_allowed_in_stopping_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # Consistent: the actor carries it out without complaint; only the order shows it.
    monkeypatch.setitem(
        _lifecycle.TRANSITIONS,  # type: ignore[arg-type]
        (Phase.STOPPING, Input.EXEC),
        Transition(Effect.START_EXEC, Phase.STOPPING),
    )
    report = run()
    violation = report.violation
    assert violation is not None, report.summary()
    assert violation.kind == "not linearizable", violation.describe()
    names = [call.name for call in violation.program.calls]
    assert "exec" in names and "stop" in names, violation.describe()
    assert len(names) <= 6, violation.describe()


def test_a_wrong_exit_status_of_a_killed_exec_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_exec, "exit_of", exit_of_killed_says_the_signal)
    report = run()
    violation = report.violation
    assert violation is not None, report.summary()
    assert re.search(r"exec\(.*-> ok\(ExecExit\(exit_status=(9|15),", violation.description), (
        violation.describe()
    )


def test_an_exit_recorded_before_the_execs_end_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SandboxActor, "_apply", records_the_exit_before_the_execs_end)
    report = run()
    violation = report.violation
    assert violation is not None, report.summary()
    # Seen as an answer or an event out of order, or as an exec that never ends (its
    # sandbox is gone before it).
    assert violation.kind in ("not linearizable", "wrong events", "hang"), violation.describe()
    assert "exec" in [call.name for call in violation.program.calls]


# -- over the socket, and with real processes ---------------------------------------------

#: Until the remote clients run execs and the backends of real processes too, these tests
#: have nothing to run; they run as soon as both are there.
REMOTE_EXEC = pytest.mark.skipif(
    not hasattr(RemoteController, "exec"), reason="the remote client runs no exec"
)
REAL_EXEC = pytest.mark.skipif(
    not hasattr(ProcessSandbox, "exec"), reason="the process backend runs no exec"
)


#: An exec racing a Stop: over the socket, where an exec starts a little later than a call
#: made with it, the Status lets it in first.
RACE = Program(
    [
        Call("create", 0, {"sandboxer": "sim"}),
        Call("start"),
        [Call("exec", 0, {"command": ("hang",)}), [Call("status"), Call("stop")]],
    ]
)


@REMOTE_EXEC
def test_over_the_socket_execs_are_fuzzed_and_an_exec_left_running_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serve_in_thread(default_sandboxer="sim", stop_timeout=0.3) as path:
        assert runs_execs(path)
        correct = fuzz(path, seed=1, programs=EXECS, max_programs=15, duration=None)
        assert correct.ok, correct.violation and correct.violation.describe()
        monkeypatch.setattr(SandboxActor, "_signal", signal_spares_the_execs)
        report = fuzz(path, seed=1, programs=st.just(RACE), duration=20, shrink_limit=1)
    violation = report.violation
    assert violation is not None, report.summary()
    assert violation.kind == "not linearizable", violation.describe()
    assert "sandboxctl exec fuzz-1-" in violation.script
    assert "Call('exec', 0, {'command': ('hang',)})" in violation.test


@REAL_EXEC
@pytest.mark.parametrize("sandboxer", ["process", "bwrap"])
def test_real_execs_are_fuzzed_and_a_wrong_exit_status_is_found(
    monkeypatch: pytest.MonkeyPatch, sandboxer: str
) -> None:
    target = real_processes(sandboxer=sandboxer)
    assert runs_execs(target, sandboxer)
    correct = fuzz(target, seed=1, max_programs=40, duration=None, sandboxer=sandboxer)
    assert correct.ok, correct.violation and correct.violation.describe()
    monkeypatch.setattr(_exec, "exit_of", exit_of_killed_says_the_signal)
    report = fuzz(target, seed=1, duration=20, sandboxer=sandboxer, shrink_limit=2)
    violation = report.violation
    assert violation is not None, report.summary()
    assert "exec(" in violation.description, violation.describe()
