"""The load tool behind ``tools/load``: many clients drive whole sandbox lifecycles at once
against a live daemon, and every reply is checked.

N connections (a :class:`~sandboxd.RemoteController` each, all in one ``trio.run``) each run
M concurrent loops for T seconds.  One lifecycle, on a fresh sandbox id:

    create, start, status (ready), stop (timeout 5 s), wait (the sandboxer's exit status),
    status (stopped), shutdown, status (NOT_FOUND)

``sim`` sandboxes exit 143 on Stop's SIGTERM.  ``process`` and ``bwrap`` lifecycles alternate
between ``sleep 1000`` (killed by SIGTERM: 143) and the pause process (SIGTERM ends it cleanly:
0).  When the time is up every loop finishes the lifecycle it is in, so each sandbox the load
created is shut down by its own calls.

Checks, each reported by name; the exit status is 1 when any fails:

* **one reply per call**: no call went unanswered for ``--call-timeout`` seconds, and on every
  connection each request frame got exactly one response frame (each client's connection runs
  through a relay in this process that counts the frames crossing it by stream id, beneath
  the client library; the client CPU time reported includes the relay's);
* **correct replies**: each call got the result, or the error code, its place in the
  lifecycle implies (see :func:`judge`);
* **final state**: List on a fresh connection shows exactly the load's sandboxes its calls
  left in existence (none, when every Shutdown succeeded);
* **no process left**: every pid Start reported (and, for bwrap, the outer bubblewrap's) is
  gone or a zombie, or now belongs to another process (its start time differs);
* **daemon exit**: the daemon started here exits 0 on SIGTERM.

Without ``--socket`` the daemon is ``sandboxd serve`` on a temporary socket and state
directory (kept, with its log, when a check fails), started and stopped (SIGTERM) as the
benchmark starts its servers (:func:`bench.servers.serving`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import trio

from sandboxd import (
    Code,
    ExitStatus,
    RemoteController,
    RPCError,
    SandboxInstance,
    SandboxOptions,
    SandboxState,
    SandboxStatus,
    connect,
)
from sandboxd.wire import FrameDecoder, FrameType

# The daemon is started, and /proc read, as the benchmark does (bench/ beside tools/).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.client import cpu_seconds, peer_pid, percentile, proc_stat
from bench.servers import SANDBOXD, ServerFailed, serving

SANDBOXERS: Final = ("sim", "process", "bwrap")
#: The label every sandbox of one run carries (value: the run's id), for List.
LABEL: Final = "sandboxd-load"
STOP_TIMEOUT: Final = 5.0
DEFAULT_CALL_TIMEOUT: Final = 30.0
SLEEP: Final = SandboxOptions(command=("sleep", "1000"))
#: Methods whose latency is reported, in lifecycle order.
METHODS: Final = ("create", "start", "status", "stop", "wait", "shutdown")
#: Complaints kept verbatim for the report (the rest are only counted).
MAX_SAMPLES: Final = 20
QUICK: Final = {"clients": 2, "concurrency": 4, "duration": 2.0}
DEFAULTS: Final = {"clients": 4, "concurrency": 16, "duration": 10.0}


# --- judging one reply -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoReply:
    """The outcome of a call that got no reply within ``after`` seconds (it was abandoned)."""

    after: float


@dataclass(frozen=True, slots=True)
class Expected:
    """What one lifecycle's calls must see beyond each step's fixed result."""

    sandbox_id: str
    exit_status: int
    pid: int | None = None  # Start's pid, once known


#: The steps of one lifecycle, in order; a step's method is its name up to the first '-'.
STEPS: Final = (
    "create",
    "start",
    "status-ready",
    "stop",
    "wait",
    "status-stopped",
    "shutdown",
    "status-gone",
)


def method_of(step: str) -> str:
    return step.split("-", 1)[0]


def judge(step: str, outcome: object, expected: Expected) -> str | None:
    """None when ``outcome`` (a call's result, the :class:`~sandboxd.RPCError` it raised, or
    :class:`NoReply`) is what ``step`` of a lifecycle must get; otherwise what is wrong."""
    if step not in STEPS:
        raise ValueError(f"unknown lifecycle step {step!r}")
    sid = expected.sandbox_id
    if isinstance(outcome, NoReply):
        return f"{step} {sid}: no reply within {outcome.after:g} s"
    if step == "status-gone":
        if isinstance(outcome, RPCError) and outcome.code == Code.NOT_FOUND:
            return None
        return f"{step} {sid}: got {describe(outcome)}, expected NOT_FOUND"
    if isinstance(outcome, RPCError):
        return f"{step} {sid}: got {describe(outcome)}, expected success"
    want: str
    if step == "create":
        ok, want = outcome == sid, repr(sid)
    elif step == "start":
        ok = isinstance(outcome, SandboxInstance) and outcome.sandbox_id == sid and outcome.pid > 0
        want = "an instance with a pid > 0"
    elif step in ("stop", "shutdown"):
        ok, want = outcome is None, "None"
    elif step == "wait":
        if isinstance(outcome, ExitStatus) and outcome.exit_status != expected.exit_status:
            got, want_status = outcome.exit_status, expected.exit_status
            return f"{step} {sid}: exit status {got}, expected {want_status}"
        ok, want = isinstance(outcome, ExitStatus), f"exit status {expected.exit_status}"
    elif step == "status-ready":
        ok = (
            isinstance(outcome, SandboxStatus)
            and outcome.sandbox_id == sid
            and outcome.state == SandboxState.READY
            and (expected.pid is None or outcome.pid == expected.pid)
        )
        want = f"state ready, pid {expected.pid}"
    else:  # status-stopped
        ok = (
            isinstance(outcome, SandboxStatus)
            and outcome.sandbox_id == sid
            and outcome.state == SandboxState.STOPPED
            and outcome.exited_at is not None
        )
        want = "state stopped with an exit time"
    return None if ok else f"{step} {sid}: got {describe(outcome)}, expected {want}"


def describe(outcome: object) -> str:
    if isinstance(outcome, RPCError):
        return f"{outcome.code.name} ({outcome.message})"
    if isinstance(outcome, SandboxStatus):
        return f"status {outcome.state.value} pid {outcome.pid}"
    return repr(outcome)


def error_kind(outcome: object) -> str:
    """How a wrong outcome is counted: its status code, NO_REPLY, or WRONG_REPLY (a result,
    but not the right one)."""
    if isinstance(outcome, RPCError):
        return outcome.code.name
    if isinstance(outcome, NoReply):
        return "NO_REPLY"
    return "WRONG_REPLY"


def plan(sandboxer: str, seq: int) -> tuple[SandboxOptions | None, int]:
    """The options of a loop's ``seq``-th lifecycle and the exit status its Wait must get."""
    if sandboxer == "sim":
        return None, 143
    if seq % 2 == 0:
        return SLEEP, 143
    return None, 0  # the pause process exits 0 on SIGTERM


# --- counting frames on the socket -------------------------------------------------------


class FrameScanner:
    """Finds the frames in a byte stream fed in chunks of any size; calls
    ``on_frame(stream_id, type)`` once per frame, as soon as its header is in."""

    __slots__ = ("_decoder", "_on_frame")

    def __init__(self, on_frame: Callable[[int, int], None]) -> None:
        self._decoder = FrameDecoder()
        self._on_frame = on_frame

    def feed(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self._on_frame(frame.stream_id, frame.type)


class ReplyLedger:
    """Request and response frames of one connection, counted by stream id."""

    __slots__ = ("requests", "responses")

    def __init__(self) -> None:
        self.requests: Counter[int] = Counter()
        self.responses: Counter[int] = Counter()

    def on_sent(self, stream_id: int, frame_type: int) -> None:
        if frame_type == FrameType.REQUEST:
            self.requests[stream_id] += 1

    def on_received(self, stream_id: int, frame_type: int) -> None:
        if frame_type == FrameType.RESPONSE:
            self.responses[stream_id] += 1

    @property
    def answered(self) -> set[int]:
        """The requests' streams that got a response."""
        return self.requests.keys() & self.responses.keys()

    def problems(self) -> list[str]:
        """What breaks "exactly one response per request"; empty when nothing does."""
        requested = self.requests.keys()
        missing = sorted(requested - self.responses.keys())
        extra = sum(n - 1 for s, n in self.responses.items() if s in requested)
        unsolicited = sum(n for s, n in self.responses.items() if s not in requested)
        reused = sum(n - 1 for n in self.requests.values())
        found = []
        if missing:
            shown = ", ".join(map(str, missing[:5]))
            found.append(f"{len(missing)} requests without a response (streams {shown}...)")
        if extra:
            found.append(f"{extra} extra responses to answered requests")
        if unsolicited:
            found.append(f"{unsolicited} responses on streams never requested")
        if reused:
            found.append(f"{reused} requests reusing a stream id")
        return found


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, scanner: FrameScanner) -> None:
    async with sink:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for data in source:
                scanner.feed(bytes(data))  # no copy: trio gives bytes
                await sink.send_all(data)


@asynccontextmanager
async def tapped(
    daemon: str, relay: str
) -> AsyncIterator[tuple[RemoteController, ReplyLedger, int]]:
    """A :class:`~sandboxd.RemoteController` whose connection to ``daemon`` runs through a
    relay listening on ``relay``, which shows every frame crossing it to a ledger; and the
    daemon's pid."""
    ledger = ReplyLedger()
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(relay)
    listener.listen(1)
    async with trio.open_nursery() as nursery, connect(relay) as ctl:
        accepted, _ = await listener.accept()
        listener.close()
        client = trio.SocketStream(accepted)
        upstream = await trio.open_unix_socket(daemon)
        nursery.start_soon(_pump, client, upstream, FrameScanner(ledger.on_sent))
        nursery.start_soon(_pump, upstream, client, FrameScanner(ledger.on_received))
        yield ctl, ledger, peer_pid(upstream.socket)  # type: ignore[arg-type]


# --- processes ---------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    fields = proc_stat(pid)
    return None if fields is None else int(fields[19])


def parent_of(pid: int) -> int:
    fields = proc_stat(pid)
    return 0 if fields is None else int(fields[1])


def process_state(pid: int, started: int | None) -> str:
    """``gone`` (or another process now has the pid), ``zombie`` or ``alive``."""
    fields = proc_stat(pid)
    if fields is None or fields[0] in (b"X", b"x"):
        return "gone"
    if started is not None and int(fields[19]) != started:
        return "gone"  # the pid was reused
    return "zombie" if fields[0] == b"Z" else "alive"


@dataclass(frozen=True, slots=True)
class Tracked:
    """A host process a sandbox had: its pid and its start time when first seen."""

    pid: int
    started: int | None
    sandbox_id: str
    role: str  # "init", or "bwrap" for the outer bubblewrap


# --- the load ----------------------------------------------------------------------------


@dataclass
class Settings:
    socket: str | None
    clients: int
    concurrency: int
    duration: float
    sandboxer: str
    json: str | None
    call_timeout: float


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Stats:
    """Everything the load's calls produced."""

    latencies: dict[str, list[int]] = field(default_factory=dict)  # method -> ns
    calls: int = 0
    completed: int = 0  # lifecycles with every call as expected
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    expected_errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    existing: set[str] = field(default_factory=set)  # ids the calls so far leave in existence
    created: int = 0
    tracked: list[Tracked] = field(default_factory=list)

    def complain(self, kind: str, complaint: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(complaint)


class Wrong(Exception):
    """A lifecycle's call got what it should not (the complaint is counted): it ends there."""


class Load:
    def __init__(self, settings: Settings, run_id: str) -> None:
        self.settings = settings
        self.run_id = run_id
        self.labels = {LABEL: run_id}
        self.stats = Stats()
        self.deadline = math.inf
        self.processes = settings.sandboxer != "sim"
        self.ledgers: list[ReplyLedger] = []
        self._in_flight: dict[trio.CancelScope, float] = {}  # when each call began

    async def call(self, method: str, call: Awaitable[Any]) -> object:
        """Await one call; its result, the RPCError it raised, or NoReply; latency recorded."""
        began = time.perf_counter_ns()
        outcome: object = None
        with trio.CancelScope() as scope:
            self._in_flight[scope] = trio.current_time()
            try:
                outcome = await call
            except RPCError as err:
                outcome = err
            finally:
                del self._in_flight[scope]
        elapsed = time.perf_counter_ns() - began
        self.stats.calls += 1
        if scope.cancelled_caught:
            return NoReply(self.settings.call_timeout)
        self.stats.latencies.setdefault(method, []).append(elapsed)
        return outcome

    def abandon_hung_calls(self) -> None:
        limit = trio.current_time() - self.settings.call_timeout
        for scope, began in list(self._in_flight.items()):
            if began < limit:
                scope.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def judged(self, step: str, outcome: object, expected: Expected) -> Any:
        """``outcome``, if it is what ``step`` must get; else the complaint is counted and
        :class:`Wrong` raised."""
        complaint = judge(step, outcome, expected)
        if complaint is not None:
            self.stats.complain(error_kind(outcome), complaint)
            raise Wrong
        if isinstance(outcome, RPCError):
            self.stats.expected_errors[outcome.code.name] += 1
        return outcome

    async def step(self, step: str, call: Awaitable[Any], expected: Expected) -> Any:
        return self.judged(step, await self.call(method_of(step), call), expected)

    async def lifecycle(self, ctl: RemoteController, sandbox_id: str, seq: int) -> bool:
        """One sandbox's whole life; True when every call got what it should.  After a wrong
        outcome the sandbox is shut down (unjudged) if it may exist."""
        stats, sandboxer = self.stats, self.settings.sandboxer
        options, exit_status = plan(sandboxer, seq)
        expected = Expected(sandbox_id, exit_status)
        try:
            create = ctl.create(
                sandbox_id, sandboxer=sandboxer, options=options, labels=self.labels
            )
            outcome = await self.call("create", create)
            if not isinstance(outcome, RPCError):
                stats.existing.add(sandbox_id)  # or perhaps, after a wrong reply or none
                stats.created += 1
            self.judged("create", outcome, expected)
            outcome = await self.call("start", ctl.start(sandbox_id))
            started = self.track(outcome, sandbox_id)
            expected = replace(expected, pid=self.judged("start", outcome, expected).pid)
            await self.step("status-ready", ctl.status(sandbox_id), expected)
            await self.step("stop", ctl.stop(sandbox_id, timeout_secs=STOP_TIMEOUT), expected)
            await self.step("wait", ctl.wait(sandbox_id), expected)
            if self.processes and process_state(expected.pid or 0, started) == "alive":
                stats.complain(
                    "ALIVE_AFTER_WAIT",
                    f"wait {sandbox_id}: returned, but its process {expected.pid} still runs",
                )
                raise Wrong
            await self.step("status-stopped", ctl.status(sandbox_id), expected)
            await self.step("shutdown", ctl.shutdown(sandbox_id), expected)
            stats.existing.discard(sandbox_id)
            await self.step("status-gone", ctl.status(sandbox_id), expected)
        except Wrong:
            if sandbox_id in stats.existing:
                outcome = await self.call("shutdown (clean-up)", ctl.shutdown(sandbox_id))
                gone = isinstance(outcome, RPCError) and outcome.code == Code.NOT_FOUND
                if outcome is None or gone:
                    stats.existing.discard(sandbox_id)
            return False
        return True

    def track(self, outcome: object, sandbox_id: str) -> int | None:
        """Note the host processes of a started sandbox (with a process backend); the start
        time of its init."""
        if not (self.processes and isinstance(outcome, SandboxInstance) and outcome.pid > 0):
            return None
        started = start_time(outcome.pid)
        self.stats.tracked.append(Tracked(outcome.pid, started, sandbox_id, "init"))
        parent = parent_of(outcome.pid)
        if self.settings.sandboxer == "bwrap" and parent > 1:
            # The namespace's init is the child of the outer bubblewrap, on the host.
            self.stats.tracked.append(Tracked(parent, start_time(parent), sandbox_id, "bwrap"))
        return started

    async def loop(self, ctl: RemoteController, client: int, worker: int) -> None:
        seq = 0
        while trio.current_time() < self.deadline:
            sandbox_id = f"load-{self.run_id}-{client}-{worker}-{seq}"
            if await self.lifecycle(ctl, sandbox_id, seq):
                self.stats.completed += 1
            else:
                self.stats.failed += 1
                # A call refused before it was sent (the connection is gone) does not yield.
                await trio.lowlevel.checkpoint()
            seq += 1

    async def client(
        self,
        path: str,
        index: int,
        go: trio.Event,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One connection (through its relay) and its loops, which start when ``go`` is set;
        started with the daemon's pid."""
        relay = os.path.join(self.relays, f"{index}.sock")
        async with tapped(path, relay) as (ctl, ledger, daemon_pid):
            self.ledgers.append(ledger)
            task_status.started(daemon_pid)
            await go.wait()
            async with trio.open_nursery() as nursery:
                for worker in range(self.settings.concurrency):
                    nursery.start_soon(self.loop, ctl, index, worker)

    async def progress(self, began: float, done: trio.Event) -> None:
        """Once a second: calls so far, their rate, errors; and abandon calls that hang."""
        tick, last_calls = 1, 0
        while True:
            with trio.move_on_at(began + tick):
                await done.wait()
            if done.is_set():
                return
            self.abandon_hung_calls()
            calls = self.stats.calls
            phase = "" if trio.current_time() < self.deadline else "  (finishing lifecycles)"
            errors = sum(self.stats.errors.values())
            print(
                f"load: {tick:4d} s  ops {calls:8d} ({calls - last_calls:6d}/s)  "
                f"lifecycles {self.stats.completed + self.stats.failed:7d}  errors {errors}  "
                f"in flight {self.in_flight}{phase}",
                flush=True,
            )
            tick, last_calls = tick + 1, calls

    async def run(self, path: str) -> dict[str, Any]:
        """Run the load against the daemon at ``path``; how long it took, the daemon's pid and
        the CPU time the client (this process) and the daemon used meanwhile."""
        go, done = trio.Event(), trio.Event()
        with tempfile.TemporaryDirectory(prefix="sbd-load-relays-") as self.relays:
            async with trio.open_nursery() as outer:
                async with trio.open_nursery() as clients:
                    for index in range(self.settings.clients):
                        daemon_pid = await clients.start(self.client, path, index, go)
                    daemon_cpu, client_cpu = cpu_seconds(daemon_pid), time.process_time()
                    began = trio.current_time()
                    self.deadline = began + self.settings.duration
                    outer.start_soon(self.progress, began, done)
                    go.set()
                done.set()
        return {
            "elapsed_s": round(trio.current_time() - began, 3),
            "daemon_pid": daemon_pid,
            "client_cpu_s": round(time.process_time() - client_cpu, 3),
            "daemon_cpu_s": round(cpu_seconds(daemon_pid) - daemon_cpu, 3),
        }


def log_notes(text: str) -> tuple[int, int, list[str]]:
    """Warnings, errors (tracebacks included) and the first few such lines of a daemon log."""
    warnings = errors = 0
    lines: list[str] = []
    for line in text.splitlines():
        if " WARNING " in line:
            warnings += 1
        elif " ERROR " in line or line.startswith("Traceback"):
            errors += 1
        else:
            continue
        if len(lines) < 5:
            lines.append(line)
    return warnings, errors, lines


# --- checks and the report ---------------------------------------------------------------


def latency_table(latencies: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    table = {}
    for method in [*METHODS, *sorted(set(latencies) - set(METHODS))]:
        values = sorted(latencies.get(method, ()))
        if values:
            table[method] = {
                "count": len(values),
                "p50_us": round(percentile(values, 50) / 1000, 1),
                "p99_us": round(percentile(values, 99) / 1000, 1),
                "max_us": round(values[-1] / 1000, 1),
            }
    return table


def reply_check(stats: Stats, ledgers: Sequence[ReplyLedger]) -> Check:
    problems = []
    for index, ledger in enumerate(ledgers):
        problems += [f"connection {index}: {p}" for p in ledger.problems()]
    requests = sum(len(ledger.requests) for ledger in ledgers)
    responses = sum(len(ledger.answered) for ledger in ledgers)
    if requests != stats.calls:
        problems.append(f"{stats.calls} calls made but {requests} requests on the wire")
    if stats.errors["NO_REPLY"]:
        problems.append(f"{stats.errors['NO_REPLY']} calls without a reply")
    detail = f"{stats.calls} calls, {requests} requests, {responses} responses"
    return Check("one reply per call", not problems, "; ".join([detail, *problems]))


def correctness_check(stats: Stats) -> Check:
    wrong = sum(stats.errors.values())
    if not wrong:
        return Check("correct replies", True, f"{stats.calls} calls as expected")
    kinds = ", ".join(f"{k} {n}" for k, n in stats.errors.most_common())
    return Check("correct replies", False, f"{wrong} wrong outcomes ({kinds})")


def final_state_check(stats: Stats, listed: Sequence[SandboxStatus]) -> Check:
    seen = {s.sandbox_id: s.state.value for s in listed}
    unexpected = sorted(set(seen) - stats.existing)
    missing = sorted(stats.existing - set(seen))
    problems = []
    if unexpected:
        shown = ", ".join(f"{sid} ({seen[sid]})" for sid in unexpected[:5])
        problems.append(f"{len(unexpected)} listed that should be gone: {shown}")
    if missing:
        problems.append(f"{len(missing)} missing that should exist: {', '.join(missing[:5])}")
    detail = (
        f"list shows {len(seen)} of the load's {stats.created} sandboxes; "
        f"{len(stats.existing)} expected"
    )
    return Check("final state", not problems, "; ".join([detail, *problems]))


def process_check(tracked: Sequence[Tracked]) -> tuple[Check, int]:
    states = [(t, process_state(t.pid, t.started)) for t in tracked]
    alive = [t for t, state in states if state == "alive"]
    parents = Counter(parent_of(t.pid) for t, state in states if state == "zombie")
    zombies = sum(parents.values())
    detail = f"{len(alive)} of {len(tracked)} pids alive, {zombies} zombies"
    if zombies:
        owners = ", ".join(f"pid {ppid}: {n}" for ppid, n in parents.most_common(3))
        detail += f" (not yet reaped by their parent: {owners})"
    if alive:
        shown = ", ".join(f"{t.pid} ({t.role} of {t.sandbox_id})" for t in alive[:5])
        detail += f": {shown}"
    return Check("no process left", not alive, detail), zombies


async def run(settings: Settings, path: str, owner: str) -> dict[str, Any]:
    """Load the daemon at ``path``, then check what the load saw and left."""
    run_id = secrets.token_hex(4)
    load = Load(settings, run_id)
    report: dict[str, Any] = {"settings": vars(settings).copy(), "run_id": run_id, "socket": path}
    print(
        f"load: {settings.clients} clients x {settings.concurrency} loops for "
        f"{settings.duration:g} s, sandboxer {settings.sandboxer}, daemon on {path} "
        f"({owner}), run {run_id}",
        flush=True,
    )
    report |= await load.run(path)
    checks = [reply_check(load.stats, load.ledgers), correctness_check(load.stats)]
    try:
        async with connect(path) as ctl:
            listed = await ctl.list(load.labels)
    except RPCError as err:
        checks.append(Check("final state", False, f"cannot list: {describe(err)}"))
    else:
        checks.append(final_state_check(load.stats, listed))
    if load.processes:
        check, report["zombies"] = process_check(load.stats.tracked)
        checks.append(check)
    stats, elapsed = load.stats, report["elapsed_s"]
    lifecycles = stats.completed + stats.failed
    if lifecycles == 0:
        checks.append(Check("load ran", False, "no lifecycle was run"))
    report.update(
        lifecycles=lifecycles,
        lifecycles_completed=stats.completed,
        lifecycles_failed=stats.failed,
        lifecycles_per_s=round(lifecycles / elapsed, 1) if elapsed else 0.0,
        operations=stats.calls,
        operations_per_s=round(stats.calls / elapsed, 1) if elapsed else 0.0,
        latency_us=latency_table(stats.latencies),
        errors=dict(stats.errors.most_common()),
        expected_errors=dict(stats.expected_errors),
        error_samples=stats.samples,
        processes_tracked=len(stats.tracked),
        checks=[vars(c) for c in checks],
    )
    return report


def run_own_daemon(settings: Settings) -> dict[str, Any]:
    """:func:`run` on a daemon started here in a temporary directory (kept, with the daemon's
    log and state, when a check fails); adds the check of its exit on SIGTERM."""
    tmp = Path(tempfile.mkdtemp(prefix="sbd-load-"))
    try:
        with serving("sandboxd", SANDBOXD, tmp) as daemon:
            report = trio.run(run, settings, daemon.path, "started here")
    except ServerFailed as exc:
        raise SystemExit(f"load: the daemon failed: {exc}") from None
    status, stop = daemon.result["exit_status"], daemon.stop_s
    took = "" if stop is None else f" in {stop:.2f} s"
    check = Check("daemon exit", status == 0, f"exit status {status} on SIGTERM{took}")
    report["checks"].append(vars(check))
    warnings, errors, lines = log_notes(daemon.output())
    report["daemon_log"] = {"warnings": warnings, "errors": errors, "first": lines}
    if all(c["ok"] for c in report["checks"]):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        report["kept"] = str(tmp)
    return report


def render(report: dict[str, Any]) -> str:
    out = []
    elapsed = report["elapsed_s"]
    out.append(
        f"lifecycles  {report['lifecycles']:>9}  ({report['lifecycles_per_s']}/s; "
        f"{report['lifecycles_failed']} failed)"
    )
    out.append(
        f"operations  {report['operations']:>9}  ({report['operations_per_s']}/s over "
        f"{elapsed:.2f} s)"
    )
    out.append(f"{'method':<22}{'count':>9}{'p50 us':>10}{'p99 us':>10}{'max us':>11}")
    for method, row in report["latency_us"].items():
        out.append(
            f"{method:<22}{row['count']:>9}{row['p50_us']:>10.1f}{row['p99_us']:>10.1f}"
            f"{row['max_us']:>11.1f}"
        )
    errors = ", ".join(f"{k} {n}" for k, n in report["errors"].items()) or "none"
    expected = ", ".join(f"{k} {n}" for k, n in report["expected_errors"].items()) or "none"
    out.append(f"errors: {errors}   (expected: {expected})")
    out.extend(f"  {sample}" for sample in report["error_samples"])
    client, daemon = report["client_cpu_s"], report["daemon_cpu_s"]
    out.append(
        f"cpu: client {client:.2f} s ({client / elapsed:.0%}), daemon {daemon:.2f} s "
        f"({daemon / elapsed:.0%}) of one core, during the load"
    )
    if "daemon_log" in report:
        log = report["daemon_log"]
        out.append(f"daemon log: {log['warnings']} warnings, {log['errors']} errors")
        out.extend(f"  {line}" for line in log["first"])
    out.append("checks:")
    for check in report["checks"]:
        mark = "ok  " if check["ok"] else "FAIL"
        out.append(f"  {mark} {check['name']}: {check['detail']}")
    if "kept" in report:
        out.append(f"kept the daemon's directory (log, state): {report['kept']}")
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    out.append("load: all checks passed" if not failed else f"load: FAILED: {', '.join(failed)}")
    return "\n".join(out)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="tools/load",
        description="Drive many sandbox lifecycles at once against a live sandboxd and check "
        "every reply.  Exit status 1 when a check fails.",
    )
    add = parser.add_argument
    add("--socket", help="daemon to load (default: start one on a temporary socket)")
    add("--clients", type=_positive(int), help="connections (default 4)")
    add("--concurrency", type=_positive(int), help="lifecycle loops per connection (default 16)")
    add("--duration", type=_positive(float), help="seconds (default 10)")
    add("--sandboxer", choices=SANDBOXERS, default="sim")
    add("--json", metavar="FILE", help="write the report as JSON to FILE")
    add(
        "--call-timeout",
        type=_positive(float),
        default=DEFAULT_CALL_TIMEOUT,
        help=f"seconds after which a call counts as unanswered (default {DEFAULT_CALL_TIMEOUT:g})",
    )
    add("--quick", action="store_true", help="2 clients x 4 loops for 2 s (unless given)")
    args = vars(parser.parse_args(argv))
    base = QUICK if args.pop("quick") else DEFAULTS
    return Settings(**args | {key: args[key] or value for key, value in base.items()})


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        if settings.socket:
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(settings.socket)
                except OSError as exc:
                    raise SystemExit(f"load: no daemon on {settings.socket}: {exc}") from None
            report = trio.run(run, settings, settings.socket, "given")
        else:
            report = run_own_daemon(settings)
    except OSError as exc:
        if exc.errno == errno.EMFILE:
            raise SystemExit("load: too many open files: lower --clients") from None
        raise
    report["ok"] = all(c["ok"] for c in report["checks"])
    print(render(report), flush=True)
    if settings.json:
        Path(settings.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
