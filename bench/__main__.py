"""Run the benchmark: every server, the same lean client, tables on stdout, JSON and markdown.

    python -m bench [--quick] [--json FILE] [--servers floor,sandboxd,grpc] [--sandboxd-cmd CMD]
                    [--calls ...] [--seq N] [--inflight K] [--duration S] [--repeat R]
                    [--clients CALLS] [--threads T] [--sections ...] [--counts ...] [--py-spy FILE]

The run, in order (bench/README.md says what each figure means):

1. Rounds (3, ``--quick`` 1), each: every server in turn (:func:`servers.serving`), measured
   by ``python -m bench.measure server`` on each of its calls; then the clients section on a
   sandboxd of its own (``measure client``, one process per client and call); then the
   throughput section (``measure throughput``) on the floor and on sandboxd.  Each figure
   shown is the median over the rounds; every round is kept in the JSON.
2. The lifecycle section on one sandboxd (``measure lifecycle``; with ``--py-spy``, the sim
   x64 point again under py-spy), then ``measure embedded``.
3. The scaling section on one sandboxd (``measure scaling``).
4. The cli section on one sandboxd (:mod:`bench.cli`): ``sandboxctl version`` and ``status``
   against ``python -c pass``, whole processes, interleaved.
5. The report (:func:`bench.report.publish`): tables, targets, JSON, markdown, plots.

Exit status 1 when any measurement failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import cli, logcost, report
from .calls import (
    BASELINE_CALL,
    CALLS,
    CLIENT_CALLS,
    CLIENT_KINDS,
    CLIENT_THREAD_CALLS,
    CLIENT_THREADS,
)
from .client import Connection, peer_pid
from .report import FLOOR, GRPC, LIFECYCLE_POINTS, PROFILED_POINT, STATUS, UNDER_TEST, medians
from .servers import REPO, SANDBOXD, Served, ServerFailed, measure, serving

DEFAULT_JSON: Final = REPO / "bench" / "results" / "latest.json"
CLIENTS, THROUGHPUT, LIFECYCLE, SCALING = "clients", "throughput", "lifecycle", "scaling"
CLI: Final = "cli"
LOGGING = "logging"
SECTIONS: Final = (THROUGHPUT, LIFECYCLE, LOGGING, SCALING, CLI)
SERVERS: Final = {
    FLOOR: "{python} -m bench.floor --socket {socket} --ready-fd {ready_fd}",
    UNDER_TEST: SANDBOXD,
    GRPC: "{python} -m bench.grpc_baseline --socket {socket} --ready-fd {ready_fd}",
}


@dataclass(frozen=True)
class Settings:
    """The server table's and the clients section's counts and windows."""

    seq: int
    seq_warmup: int
    inflight: int
    warmup: float
    duration: float
    repeat: int


@dataclass(frozen=True)
class LoadSettings:
    """The load sections' windows and counts."""

    throughput_warmup: float
    throughput_duration: float
    lifecycle_warmup: float
    lifecycle_duration: float
    counts: tuple[int, ...]
    scaling_seq: int
    scaling_seq_warmup: int
    profile_duration: float
    cli_runs: int


FULL: Final = Settings(seq=3000, seq_warmup=300, inflight=64, warmup=0.3, duration=2.0, repeat=3)
QUICK: Final = Settings(seq=300, seq_warmup=50, inflight=64, warmup=0.1, duration=0.3, repeat=1)
FULL_LOAD: Final = LoadSettings(
    0.15, 0.5, 0.3, 1.5, (0, 1000, 10000, 50000), 3000, 300, 5.0, cli.RUNS
)
QUICK_LOAD: Final = LoadSettings(
    0.1, 0.25, 0.1, 0.6, (0, 1000, 5000), 300, 50, 2.0, cli.QUICK_RUNS
)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Job:
    """A server started once per round and the measuring processes run against it.

    ``runs`` maps a key to a measuring process (kind and options); a round's result is the
    server's (command, ready_s, exit_status) with each process's figures under ``field``.
    With ``strict``, one that fails voids the round and the server is measured no further;
    otherwise its figures are kept with their ``error``.
    """

    name: str
    command: str
    runs: dict[str, tuple[str, dict[str, Any]]]
    field: str = "calls"
    strict: bool = True

    def run(self) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        with serving(self.name, self.command) as served:
            for key, (kind, options) in self.runs.items():
                figures[key] = found = measure(kind, served, f"{self.name} {key}", **options)
                if self.strict and "error" in found:
                    raise ServerFailed(f"client failed: {found['error']}")
        return served.result | {self.field: figures}


def attempt(name: str, errors: dict[str, str], run: Callable[[], Any]) -> Any:
    """``run()``, or None with the failure in ``errors[name]`` (and on stderr)."""
    try:
        return run()
    except ServerFailed as exc:
        progress(f"FAILED: {exc}")
        errors[name] = str(exc)
        return None


# --- the jobs of a round --------------------------------------------------------------------


def server_job(name: str, command: str, calls: list[str], s: Settings) -> Job:
    options = dataclasses.asdict(s)
    del options["repeat"]
    options |= {"grpc": True} if name == GRPC else {}
    return Job(name, command, {call: ("server", options | {"call": call}) for call in calls})


def clients_job(command: str, calls: list[str], s: Settings, threads: int) -> Job:
    """Every client on every call (sequential), then the threaded ones; failures kept."""
    seq = {"seq": s.seq, "seq_warmup": s.seq_warmup}
    window = {"warmup": s.warmup, "duration": s.duration}
    runs: dict[str, tuple[str, dict[str, Any]]] = {
        f"{kind} {call}": ("client", {"client": kind, "call": call} | seq)
        for call in calls
        for kind in CLIENT_KINDS
    }
    runs |= {
        f"{kind} {call}": (
            "client",
            {"client": "sync-threads", "call": call, "threads": n} | window,
        )
        for call in calls
        if call in CLIENT_THREAD_CALLS
        for kind, n in report.threaded_kinds(threads).items()
    }
    return Job(CLIENTS, command, runs, field="measurements", strict=False)


def throughput_job(name: str, command: str, s: LoadSettings) -> Job:
    options = {
        "call": BASELINE_CALL if name == FLOOR else STATUS,
        "points": report.THROUGHPUT_POINTS,
        "warmup": s.throughput_warmup,
        "duration": s.throughput_duration,
    }
    return Job(f"{THROUGHPUT}-{name}", command, {"sweep": ("throughput", options)})


def profiled(served: Served, s: LoadSettings, out: Path) -> dict[str, Any]:
    """The sim x64 lifecycle point again while ``py-spy record -f raw`` samples the daemon
    serving ``served`` into ``out``."""
    beside = Path(sys.executable).with_name("py-spy")
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        return {"error": "py-spy not found"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with Connection(served.path) as conn:  # the process serving the socket, not a wrapper
        pid = peer_pid(conn.socket)
    argv = [py_spy, "record", "-o", str(out), "-f", "raw", "--pid", str(pid)]
    spy = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        time.sleep(0.5)  # py-spy attaches
        if spy.poll() is not None:
            error = spy.stderr.read().decode(errors="replace").strip() if spy.stderr else ""
            return {"error": f"py-spy exited with status {spy.returncode}: {error}"}
        label = f"lifecycle {PROFILED_POINT} under py-spy"
        options = {"points": [PROFILED_POINT], "warmup": 0.2, "duration": s.profile_duration}
        figures = measure("lifecycle", served, label, **options)
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    result = {"raw": str(out), "command": shlex.join(argv), "exit_status": spy.returncode}
    result["point"] = (figures.get("points") or [{}])[0]
    if "error" in figures or not out.exists():
        result["error"] = figures.get("error", "py-spy wrote no profile")
    return result


def lifecycles(command: str, s: LoadSettings, profile: Path | None) -> dict[str, Any]:
    """Every lifecycle point in one client process on one daemon (with ``profile``, the sim
    x64 point again under py-spy); then the embedded Controller's points."""
    window = {"warmup": s.lifecycle_warmup, "duration": s.lifecycle_duration}
    with serving("lifecycles", command) as served:
        figures = measure("lifecycle", served, "lifecycles", points=LIFECYCLE_POINTS, **window)
        by_point = {f"{p['sandboxer']}:{p['concurrency']}": p for p in figures.get("points", [])}
        error = {"error": figures.get("error", "not measured")}
        served.result["client"] = figures["client"]
        served.result["points"] = {
            f"{b}:{n}": by_point.get(f"{b}:{n}", error) for b, n in LIFECYCLE_POINTS
        }
        if profile is not None:
            served.result["profile"] = profiled(served, s, profile)
    label = "lifecycles: embedded Controller (no socket)"
    embedded = measure("embedded", None, label, points=[1, 64], **window)
    del embedded["client"]
    return served.result | {"embedded": embedded}


def scaling(command: str, s: LoadSettings) -> dict[str, Any]:
    options = {"counts": s.counts, "seq": s.scaling_seq, "seq_warmup": s.scaling_seq_warmup}
    result = Job(SCALING, command, {"figures": ("scaling", options)}).run()
    figures: dict[str, Any] = result.pop("calls")["figures"]
    return result | figures


# --- medians over the rounds ----------------------------------------------------------------


def summarize(
    args: argparse.Namespace,
    plan: dict[str, list[str]],
    runs: dict[str, Any],
    errors: dict[str, str],
) -> dict[str, Any]:
    """The JSON's ``results`` (the server table), ``clients`` and ``throughput``: every round,
    and the median over the rounds of each figure."""
    results = {
        name: {"error": errors[name], "runs": runs[name]}
        if name in errors
        else {
            "rounds": len(runs[name]),
            "calls": medians([run["calls"] for run in runs[name]]),
            "runs": runs[name],
        }
        for name in plan
    }
    clients: dict[str, Any] = {}
    if args.clients:
        clients = {"calls": args.clients, "threads": args.threads, "rounds": len(runs[CLIENTS])}
        if CLIENTS in errors:
            clients["error"] = errors[CLIENTS]
        if runs[CLIENTS]:
            clients["summary"] = summarize_clients(runs[CLIENTS], args.clients, args.threads)
        clients["runs"] = runs[CLIENTS]
    throughput: dict[str, Any] = {}
    if THROUGHPUT in args.sections:
        sweeps = {name: runs[f"{THROUGHPUT}-{name}"] for name in (FLOOR, UNDER_TEST)}
        failed = {n: errors[k] for n in sweeps if (k := f"{THROUGHPUT}-{n}") in errors}
        by_point = {
            name: [
                {f"{p['connections']}x{p['inflight']}": p for p in run["calls"]["sweep"]["points"]}
                for run in rounds
            ]
            for name, rounds in sweeps.items()
        }
        throughput = {
            "points": [f"{c}x{k}" for c, k in report.THROUGHPUT_POINTS],
            "calls": {FLOOR: BASELINE_CALL, UNDER_TEST: STATUS},
            "rounds": {name: len(rounds) for name, rounds in sweeps.items()},
            "summary": {name: medians(points) for name, points in by_point.items() if points},
            "runs": sweeps,
            **({"errors": failed} if failed else {}),
        }
    return {"results": results, "clients": clients, "throughput": throughput}


def summarize_clients(
    runs: list[dict[str, Any]], calls: Sequence[str], threads: int
) -> dict[str, Any]:
    """Per call and client, the median of each figure over the rounds, or the first error."""
    parts = dict.fromkeys(CLIENT_KINDS, "seq")
    parts |= dict.fromkeys(report.threaded_kinds(threads), "threads")
    summary: dict[str, Any] = {}
    for call in calls:
        summary[call] = {}
        for kind, part in parts.items():
            if part == "threads" and call not in CLIENT_THREAD_CALLS:
                continue
            rounds = [run["measurements"].get(f"{kind} {call}", {}) for run in runs]
            if failed := [r.get("error", "no result") for r in rounds if part not in r]:
                summary[call][kind] = {"error": failed[0]}
            else:
                summary[call][kind] = medians([r[part] for r in rounds])
    return summary


def failed(out: dict[str, Any]) -> bool:
    """Whether any measurement failed: a job or section, a client, a lifecycle point, py-spy."""
    per_client = [f for call in out["clients"].get("summary", {}).values() for f in call.values()]
    lifecycle = out["lifecycles"]
    points = lifecycle.get("points", {})
    return (
        bool(out["errors"])
        or any("error" in f for f in per_client)
        or (bool(lifecycle) and len(points) < len(LIFECYCLE_POINTS))
        or any("error" in p for p in points.values())
        or "error" in lifecycle.get("profile", {})
        or "error" in lifecycle.get("embedded", {})
        or "error" in out["cli"]
        or "error" in out["logging"]
        or "errors" in out["logging"]
    )


# --- main -----------------------------------------------------------------------------------


def names(known: Sequence[str]) -> Callable[[str], list[str]]:
    """An option's type: comma-separated names among ``known``."""

    def parse(text: str) -> list[str]:
        found = [n for n in text.split(",") if n]
        if unknown := set(found) - set(known):
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(sorted(unknown))}")
        return found

    return parse


def counts(text: str) -> tuple[int, ...]:
    with contextlib.suppress(ValueError):
        found = tuple(int(c) for c in text.split(",") if c.strip())
        if found and min(found) >= 0 and list(found) == sorted(found):
            return found
    raise argparse.ArgumentTypeError("non-negative numbers in increasing order")


def positive(text: str) -> int:
    if (value := int(text)) < 1:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark sandboxd against the floor and gRPC."
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: small counts")
    add("--json", type=Path, default=DEFAULT_JSON, help=f"write results here ({DEFAULT_JSON})")
    add("--servers", type=names(list(SERVERS)), default=",".join(SERVERS), help="servers measured")
    add("--sandboxd-cmd", help=f"the command that starts sandboxd ({SANDBOXD!r})")
    add("--calls", type=names(list(CALLS)), default=",".join(CALLS), help="calls on sandboxd")
    add("--seq", type=positive, help="sequential round trips per call (3000; --quick 300)")
    add("--inflight", type=positive, help="requests kept in flight (64)")
    add("--duration", type=float, help="seconds of each in-flight window (2; --quick 0.3)")
    add("--repeat", type=positive, help="rounds over all servers; each figure is the median")
    add(
        "--clients",
        type=names(list(CALLS)),
        default=",".join(CLIENT_CALLS),
        help="calls measured through every client ('' skips the section)",
    )
    add("--threads", type=positive, default=CLIENT_THREADS, help="threads sharing one client")
    add("--sections", type=names(SECTIONS), default=",".join(SECTIONS), help="load sections")
    add("--counts", type=counts, help="idle sandbox counts of the scaling section")
    add("--py-spy", type=Path, metavar="FILE", help="profile the daemon under sim x64")
    add(
        "--logging-baseline",
        metavar="CMD",
        help="the logging section also measures this command (e.g. an older sandboxd)",
    )
    args = parser.parse_args(argv)
    if args.sandboxd_cmd and "{state_dir}" not in args.sandboxd_cmd:
        progress(
            "warning: --sandboxd-cmd has no {state_dir}: the daemons keep their records in their "
            "default state directory (the scaling section adds tens of thousands)"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    began = time.monotonic()
    base = QUICK if args.quick else FULL
    settings = dataclasses.replace(
        base,
        seq=args.seq or base.seq,
        inflight=args.inflight or base.inflight,
        duration=args.duration or base.duration,
        repeat=args.repeat or base.repeat,
    )
    load = QUICK_LOAD if args.quick else FULL_LOAD
    load = dataclasses.replace(load, counts=args.counts or load.counts)
    servers = [name for name in SERVERS if name in args.servers]
    if GRPC in servers and importlib.util.find_spec("grpc") is None:
        progress("grpcio not installed: skipped")
        servers.remove(GRPC)
    plan = {name: args.calls if name == UNDER_TEST else [BASELINE_CALL] for name in servers}
    commands = SERVERS | ({UNDER_TEST: args.sandboxd_cmd} if args.sandboxd_cmd else {})
    sandboxd = commands[UNDER_TEST]
    load_before = os.getloadavg()
    progress("load average before starting: " + ", ".join(f"{x:.2f}" for x in load_before))
    if load_before[0] > 0.5:
        progress(f"warning: load average {load_before[0]:.2f} before starting: noisy figures")

    # Rounds interleave the servers, so a slow stretch of the machine hits all of them.
    jobs = [server_job(name, commands[name], plan[name], settings) for name in servers]
    if args.clients:
        jobs.append(clients_job(sandboxd, args.clients, settings, args.threads))
    if THROUGHPUT in args.sections:
        jobs += [throughput_job(name, commands[name], load) for name in (FLOOR, UNDER_TEST)]
    runs: dict[str, list[dict[str, Any]]] = {job.name: [] for job in jobs}
    errors: dict[str, str] = {}  # a job or a section: measured no further
    for n in range(1, settings.repeat + 1):
        for job in (job for job in jobs if job.name not in errors):
            progress(f"{job.name}: starting (round {n}/{settings.repeat})")
            if got := attempt(job.name, errors, job.run):
                runs[job.name].append(got)
    lifecycle: dict[str, Any] = {}
    if LIFECYCLE in args.sections:
        progress(f"{LIFECYCLE}: starting sandboxd")
        run = lambda: lifecycles(sandboxd, load, args.py_spy)  # noqa: E731
        lifecycle = attempt(LIFECYCLE, errors, run) or {"error": errors[LIFECYCLE]}
    logged: dict[str, Any] = {}
    if LOGGING in args.sections:
        progress(f"{LOGGING}: lifecycles with the daemon's log on and off")
        window = (settings.repeat, load.lifecycle_warmup, load.lifecycle_duration)
        run = lambda: logcost.measure_logging(sandboxd, args.logging_baseline, *window)  # noqa: E731
        logged = attempt(LOGGING, errors, run) or {"error": errors[LOGGING]}
    scaled: dict[str, Any] = {}
    if SCALING in args.sections:
        progress(f"{SCALING}: starting sandboxd")
        run = lambda: scaling(sandboxd, load)  # noqa: E731
        scaled = attempt(SCALING, errors, run) or {"error": errors[SCALING]}
    timed: dict[str, Any] = {}
    if CLI in args.sections:
        progress(f"{CLI}: starting sandboxd")
        run = lambda: cli.run(sandboxd, load.cli_runs)  # noqa: E731
        timed = attempt(CLI, errors, run) or {"error": errors[CLI]}

    out = {
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "cwd": os.getcwd(),
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": time.monotonic() - began,
        "quick": args.quick,
        "settings": dataclasses.asdict(settings),
        "load_settings": dataclasses.asdict(load),
        **summarize(args, plan, runs, errors),
        "lifecycles": lifecycle,
        "logging": logged,
        "scaling": scaled,
        "cli": timed,
        "errors": errors,
    }
    if "commands" in timed:
        timed["table"] = cli.table(timed)
        print("sandboxctl against python -c pass\n" + timed["table"] + "\n")
    report.publish(out, plan, args.json)
    if failed(out):
        progress("some measurements FAILED: exit status 1")
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
