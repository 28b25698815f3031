"""tools/load: a short real load passes its own checks, and its checkers do catch what is wrong."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from procs import PROCESS_TIMEOUT
from sandboxd import (
    ExitStatus,
    FailedPrecondition,
    NotFound,
    SandboxInstance,
    SandboxState,
    SandboxStatus,
)
from sandboxd.wire import FrameType, encode_frame

ROOT = Path(__file__).resolve().parent.parent
LOAD_PY = ROOT / "tools" / "load.py"
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def _import_load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sandboxd_tools_load", LOAD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


load = _import_load()


def run_load(tmp_path: Path, sandboxer: str) -> dict[str, Any]:
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(LOAD_PY),
            *("--clients", "2", "--concurrency", "4", "--duration", "2"),
            *("--sandboxer", sandboxer, "--json", str(report_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "load: all checks passed"
    report: dict[str, Any] = json.loads(report_path.read_text())
    return report


@pytest.mark.parametrize("sandboxer", ["sim", "process"])
def test_a_short_load_passes_every_check(tmp_path: Path, sandboxer: str) -> None:
    report = run_load(tmp_path, sandboxer)
    assert report["ok"] is True
    assert report["lifecycles"] > 0
    assert report["lifecycles_failed"] == 0
    assert report["operations"] == 8 * report["lifecycles"]
    assert report["errors"] == {}
    assert report["expected_errors"] == {"NOT_FOUND": report["lifecycles"]}
    for method in ("create", "start", "stop", "wait", "shutdown"):
        row = report["latency_us"][method]
        assert row["count"] == report["lifecycles"]
        assert 0 < row["p50_us"] <= row["p99_us"]
    names = {check["name"]: check["ok"] for check in report["checks"]}
    expected = {"one reply per call", "correct replies", "final state", "daemon exit"}
    if sandboxer == "process":
        expected.add("no process left")
        assert report["processes_tracked"] == report["lifecycles"]
    assert names == dict.fromkeys(expected, True)


# --- the checkers, fed wrong outcomes ------------------------------------------------------


def test_judge_accepts_a_whole_correct_lifecycle() -> None:
    expected = load.Expected("s1", 143, pid=1000)
    ready = SandboxStatus("s1", 1000, SandboxState.READY, {}, NOW)
    stopped = SandboxStatus("s1", 1000, SandboxState.STOPPED, {}, NOW, exited_at=NOW)
    outcomes = {
        "create": "s1",
        "start": SandboxInstance("s1", 1000, NOW),
        "status-ready": ready,
        "stop": None,
        "wait": ExitStatus(143, NOW),
        "status-stopped": stopped,
        "shutdown": None,
        "status-gone": NotFound("sandbox s1 not found"),
    }
    assert list(outcomes) == list(load.STEPS)
    for step, outcome in outcomes.items():
        assert load.judge(step, outcome, expected) is None, step


@pytest.mark.parametrize(
    ("step", "outcome", "kind", "complaint"),
    [
        ("wait", ExitStatus(0, NOW), "WRONG_REPLY", "wait s1: exit status 0, expected 143"),
        ("create", "s2", "WRONG_REPLY", "create s1: got 's2', expected 's1'"),
        ("stop", FailedPrecondition("no"), "FAILED_PRECONDITION", "stop s1: got FAILED_"),
        ("status-gone", None, "WRONG_REPLY", "status-gone s1: got None, expected NOT_FOUND"),
        (
            "status-ready",
            SandboxStatus("s1", 1000, SandboxState.CREATED, {}, NOW),
            "WRONG_REPLY",
            "status-ready s1: got status created pid 1000, expected state ready",
        ),
        ("shutdown", load.NoReply(30.0), "NO_REPLY", "shutdown s1: no reply within 30 s"),
    ],
)
def test_judge_reports_a_wrong_outcome(
    step: str, outcome: object, kind: str, complaint: str
) -> None:
    expected = load.Expected("s1", 143, pid=1000)
    found = load.judge(step, outcome, expected)
    assert found is not None and found.startswith(complaint)
    assert load.error_kind(outcome) == kind
    # ... and the correctness check fails, naming the kind.
    stats = load.Stats()
    stats.complain(kind, found)
    check = load.correctness_check(stats)
    assert not check.ok
    assert kind in check.detail


def test_the_ledger_catches_a_missing_and_a_duplicate_response() -> None:
    ledger = load.ReplyLedger()
    sent = load.FrameScanner(ledger.on_sent)
    received = load.FrameScanner(ledger.on_received)
    for stream_id in (1, 3, 5):
        sent.feed(encode_frame(stream_id, FrameType.REQUEST, 0, b"\xa0" * 40))
    replies = b"".join(
        encode_frame(stream_id, FrameType.RESPONSE, 0, b"x" * 25) for stream_id in (1, 3, 3, 7)
    )
    for i in range(len(replies)):  # one byte at a time: headers split across reads
        received.feed(replies[i : i + 1])
    assert ledger.problems() == [
        "1 requests without a response (streams 5...)",
        "1 extra responses to answered requests",
        "1 responses on streams never requested",
    ]
    received.feed(encode_frame(5, FrameType.RESPONSE, 0, b""))
    assert len(ledger.problems()) == 2


def test_final_state_check_fails_on_a_sandbox_that_should_be_gone() -> None:
    stats = load.Stats(created=2)
    listed = [SandboxStatus("a", 1000, SandboxState.STOPPED, {}, NOW, exited_at=NOW)]
    check = load.final_state_check(stats, listed)
    assert not check.ok
    assert "1 listed that should be gone: a (stopped)" in check.detail
    assert load.final_state_check(stats, []).ok


def test_process_check_fails_on_a_live_process() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        tracked = [load.Tracked(proc.pid, load.start_time(proc.pid), "s1", "init")]
        check, _ = load.process_check(tracked)
        assert not check.ok
        assert f"{proc.pid} (init of s1)" in check.detail
    finally:
        proc.kill()
        proc.wait(timeout=PROCESS_TIMEOUT)
    check, zombies = load.process_check(tracked)
    assert check.ok and zombies == 0


def test_the_tool_fails_when_a_reply_is_wrong(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real daemon and real calls, but the tool expects exit status 0 from sim sandboxes,
    # which give 143: every Wait is a wrong reply, which must fail the run (and be named).
    monkeypatch.setattr(load, "plan", lambda sandboxer, seq: (None, 0))
    status = load.main(["--clients", "1", "--concurrency", "2", "--duration", "0.5"])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "FAIL correct replies" in out
    assert "wait load-" in out and "exit status 143, expected 0" in out
    assert "ok   final state" in out  # the tool shut the sandboxes down all the same
    kept = out.splitlines()[-2]
    assert kept.startswith("kept the daemon's directory (log, state): ")
    shutil.rmtree(kept.rsplit(": ", 1)[1])
    assert out.splitlines()[-1] == "load: FAILED: correct replies"


async def test_a_call_without_a_reply_is_abandoned_and_counted() -> None:
    settings = load.Settings(
        socket=None,
        clients=1,
        concurrency=1,
        duration=1.0,
        sandboxer="sim",
        json=None,
        call_timeout=0.05,
    )
    runner = load.Load(settings, "run1")
    outcomes: list[object] = []

    async def no_reply_ever() -> None:
        await trio.sleep_forever()

    async def call_that_hangs() -> None:
        outcomes.append(await runner.call("wait", no_reply_ever()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call_that_hangs)
        await trio.sleep(0.1)
        assert runner.in_flight == 1
        runner.abandon_hung_calls()
    assert outcomes == [load.NoReply(0.05)]
    assert runner.stats.calls == 1 and runner.stats.latencies == {}
    assert load.error_kind(outcomes[0]) == "NO_REPLY"
