"""The daemon's log: what a user reads on its stderr at the default level.

One line per lifecycle change of every sandbox (created, started, exited with its status
and reason, deleted; recovered after a restart), naming the sandbox and its sandboxer; the
same as JSON objects with ``--log-format json``; refusal warnings that a flood of bad
clients cannot multiply; and the embedded Controller's records, which reach the
application's own logging (``caplog``) without the runtime configuring any.

The daemons are real subprocesses (``daemons.py``); their stderr goes to a file, read once
the daemon has exited (which writes every line logged before it exits): no polling.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import trio

from daemons import Daemon, Daemons
from procs import Reaper
from sandboxd import SandboxOptions, connect
from sandboxd.rpc._refusals import RefusalLog
from sandboxd.runtime import _lifecycle_log
from sim_controller import running

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 60.0


async def exits_3_and_a_stopped_one(daemons: Daemons, *args: str) -> Daemon:
    """A daemon in which one process sandbox exits 3 on its own and one is stopped by Stop
    (SIGTERM), both shut down; then SIGTERM for the daemon, which has exited on return."""
    daemon = await daemons.start(args=args)
    async with connect(daemons.socket) as remote:
        await remote.create("exits-3", options=SandboxOptions(command=["sh", "-c", "exit 3"]))
        await remote.start("exits-3")
        assert (await remote.wait("exits-3")).exit_status == 3
        await remote.shutdown("exits-3")
        await remote.create("stopped", options=SandboxOptions(command=["sleep", "600"]))
        await remote.start("stopped")
        await remote.stop("stopped")
        await remote.shutdown("stopped")
    assert await daemon.terminate() == 0
    return daemon


def lines_about(output: str, sandbox_id: str) -> list[str]:
    return [line for line in output.splitlines() if f" sandbox {sandbox_id} " in line]


async def test_one_line_per_lifecycle_change_naming_the_sandbox(daemons: Daemons) -> None:
    output = (await exits_3_and_a_stopped_one(daemons)).output()
    exits_3 = lines_about(output, "exits-3")
    assert [line.split(" sandboxd.sandbox: ")[1] for line in exits_3] == [
        "sandbox exits-3 created (sandboxer process)",
        exits_3[1].split(" sandboxd.sandbox: ")[1],  # its pid
        "sandbox exits-3 exited with status 3, reason exit (sandboxer process)",
        "sandbox exits-3 deleted (sandboxer process)",
    ]
    assert " INFO sandboxd.sandbox: sandbox exits-3 started, pid " in exits_3[1]
    stopped = lines_about(output, "stopped")
    assert len(stopped) == 4
    assert all(" INFO sandboxd.sandbox: " in line for line in stopped)
    assert stopped[2].endswith(
        "sandbox stopped exited with status 143, reason stop, signal SIGTERM (sandboxer process)"
    )


async def test_json_lines_carry_the_fields(daemons: Daemons) -> None:
    output = (await exits_3_and_a_stopped_one(daemons, "--log-format", "json")).output()
    records = [json.loads(line) for line in output.splitlines()]
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    lifecycle = [
        {k: v for k, v in r.items() if k not in ("time", "message", "pid")}
        for r in records
        if r["logger"] == "sandboxd.sandbox"
    ]
    common = {"level": "info", "logger": "sandboxd.sandbox", "sandboxer": "process"}
    expected: list[dict[str, Any]] = []
    for sandbox_id, exited in (
        ("exits-3", {"exit_status": 3, "reason": "exit"}),
        ("stopped", {"exit_status": 143, "reason": "stop", "signal": "SIGTERM"}),
    ):
        one = {**common, "sandbox_id": sandbox_id}
        expected += [
            {**one, "event": "created"},
            {**one, "event": "started"},
            {**one, "event": "exited", **exited},
            {**one, "event": "deleted"},
        ]
    assert lifecycle == expected
    started = [r for r in records if r.get("event") == "started"]
    assert all(isinstance(r["pid"], int) and r["pid"] > 0 for r in started)
    assert records[-1]["message"] == "stopped"


async def test_a_restarted_daemon_logs_each_sandbox_it_takes_up(
    daemons: Daemons, reaper: Reaper
) -> None:
    first = await daemons.start()
    async with connect(daemons.socket) as remote:
        await remote.create("sleeper", options=SandboxOptions(command=["sleep", "600"]))
        pid = (await remote.start("sleeper")).pid
        reaper.add(pid)
        await remote.create("unstarted", sandboxer="sim")
    assert await first.terminate() == 0
    second = await daemons.start()
    async with connect(daemons.socket) as remote:
        await remote.shutdown("sleeper")
        await remote.shutdown("unstarted")
    assert await second.terminate() == 0
    logged = [line.partition(" sandboxd.sandbox: ") for line in second.output().splitlines()]
    assert sorted(line for _, sep, line in logged if sep and " recovered " in line) == [
        f"sandbox sleeper recovered ready: adopted its running process {pid} (sandboxer process)",
        "sandbox unstarted recovered created (sandboxer sim)",
    ]


async def test_a_flood_of_refused_connections_is_a_few_lines(daemons: Daemons) -> None:
    daemon = await daemons.start(args=["--max-connections", "1", "--log-format", "json"])
    async with connect(daemons.socket) as held:
        await held.list()  # served: the one connection allowed is taken
        for _ in range(200):
            async with await trio.open_unix_socket(daemons.socket) as refused:
                # The refusal, then the end: the daemon has dealt with this one.
                while await refused.receive_some():
                    pass
    assert await daemon.terminate() == 0
    records = [json.loads(line) for line in daemon.output().splitlines()]
    refusals = [r for r in records if r.get("refusal") == "connections"]
    assert all(r["level"] == "warning" and r["logger"] == "sandboxd.rpc" for r in refusals)
    # The first of each 10 s is logged, the others counted (one interval, unless the machine
    # is very slow).
    assert 2 <= len(refusals) <= 4
    assert "refusing connection from uid" in refusals[0]["message"]
    assert len(refusals) + sum(r.get("suppressed", 0) - 1 for r in refusals[1:]) == 200
    assert "more refusals (connections) not logged" in refusals[-1]["message"]


async def test_refusals_are_logged_once_per_kind_per_interval(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sandboxd.test")
    refusals = RefusalLog(logging.getLogger("sandboxd.test"), interval=10.0)

    def seen() -> list[tuple[str, int | None]]:
        found = [(r.getMessage(), getattr(r, "suppressed", None)) for r in caplog.records]
        caplog.clear()
        return found

    async with trio.open_nursery() as nursery:
        refusals.nursery = nursery
        for n in range(50):
            refusals.warn("calls", "call %d refused", n)
        refusals.warn("oversized", "frame refused")
        assert seen() == [("call 0 refused", None), ("frame refused", None)]
        await trio.sleep(9.5)
        refusals.warn("calls", "call %d refused", 50)
        assert seen() == []
        await trio.sleep(1)  # the interval is over: the count is logged, unasked
        assert seen() == [
            ("50 more refusals (calls) not logged in the last 10 s; the last: call 50 refused", 50)
        ]
        refusals.warn("calls", "call %d refused", 51)
        refusals.warn("calls", "call %d refused", 52)
        assert seen() == [("call 51 refused", None)]
        nursery.cancel_scope.cancel()
    refusals.flush()  # as the server does when it ends
    assert seen() == [
        ("1 more refusals (calls) not logged in the last 10 s; the last: call 52 refused", 1)
    ]


async def test_the_embedded_controller_logs_through_the_applications_logging(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sandboxd.sandbox")
    async with running() as (controller, _):
        await controller.create(
            "expires", sandboxer="sim", options=SandboxOptions(lifetime_secs=5)
        )
        await controller.start("expires")
        assert (await controller.wait("expires")).exit_status == 143
        await controller.shutdown("expires")
        await controller.create("never-run", sandboxer="sim")
        await controller.shutdown("never-run")
    fields = [
        (r.levelname, r.event, r.sandbox_id, getattr(r, "reason", None))  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "sandboxd.sandbox"
    ]
    assert fields == [
        ("INFO", "created", "expires", None),
        ("INFO", "started", "expires", None),
        ("INFO", "exited", "expires", "lifetime_expired"),
        ("INFO", "deleted", "expires", None),
        ("INFO", "created", "never-run", None),
        ("INFO", "exited", "never-run", "not_started"),
        ("INFO", "deleted", "never-run", None),
    ]
    assert logging.getLogger("sandboxd").handlers == []  # the runtime configured nothing


async def test_a_lifecycle_record_is_the_record_makerecord_makes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The daemon turns these off; the runtime then makes its records itself, faster.
    for flag in ("logThreads", "logProcesses", "logMultiprocessing", "logAsyncioTasks"):
        monkeypatch.setattr(logging, flag, False, raising=False)
    assert _lifecycle_log._fixed()
    now = time.time_ns()
    made = _lifecycle_log._record(now, logging.INFO, "sandbox %s created", ("a",))
    logger = _lifecycle_log.log
    expected = logger.makeRecord(
        logger.name, logging.INFO, _lifecycle_log.__file__, 0, "sandbox %s created", ("a",), None
    )
    assert vars(made).keys() == vars(expected).keys()
    timing = {"created", "msecs", "relativeCreated"}
    assert {k: v for k, v in vars(made).items() if k not in timing} == {
        k: v for k, v in vars(expected).items() if k not in timing
    }
    assert made.created == now / 1e9
    assert made.getMessage() == "sandbox a created"
