"""Run the benchmark: every server, the same lean client, tables on stdout, JSON and markdown.

    python -m bench [--quick] [--json FILE] [--servers floor,sandboxd,grpc] [--sandboxd-cmd CMD]
                    [--calls ...] [--seq N] [--inflight K] [--duration S] [--repeat R]
                    [--clients CALLS] [--threads T] [--sections ...] [--counts ...] [--py-spy FILE]

The run, in order (bench/README.md says what each figure means):

1. Rounds (3, ``--quick`` 1), each: every server in turn (:func:`servers.serving`), measured
   by ``python -m bench.measure server`` (gRPC: ``grpc=true``) on each of its calls; then the
   clients section on a sandboxd of its own (``measure client``, one process per client and
   call); then the throughput section (``measure throughput``) on the floor and on sandboxd.
   Each figure shown is the median over the rounds; every round is kept in the JSON.
2. The lifecycle section on one sandboxd (``measure lifecycle``; with ``--py-spy``, the sim
   x64 point again under py-spy), then ``measure embedded``.
3. The scaling section on one sandboxd (``measure scaling``).
4. The report (:mod:`bench.report`): tables, targets, JSON, markdown, plots.

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

from . import report
from .calls import (
    BASELINE_CALL,
    CALLS,
    CLIENT_CALLS,
    CLIENT_KINDS,
    CLIENT_THREAD_CALLS,
    CLIENT_THREADS,
)
from .client import Connection, peer_pid
from .profile import summarize as summarize_profile
from .report import (
    FLOOR,
    GRPC,
    LIFECYCLE_POINTS,
    PROFILED_POINT,
    STATUS,
    THROUGHPUT_POINTS,
    UNDER_TEST,
)
from .servers import REPO, SANDBOXD, Served, ServerFailed, measure, serving

DEFAULT_JSON: Final = REPO / "bench" / "results" / "latest.json"
CLIENTS, THROUGHPUT, LIFECYCLE, SCALING = "clients", "throughput", "lifecycle", "scaling"
SECTIONS: Final = (THROUGHPUT, LIFECYCLE, SCALING)


@dataclass(frozen=True)
class Server:
    """A server under test (measured by ``bench.measure server``) and its command."""

    name: str
    command: str
    requires: str | None = None  # a module that must be importable, else skipped: gRPC


SERVERS: Final = (
    Server(FLOOR, "{python} -m bench.floor --socket {socket} --ready-fd {ready_fd}"),
    Server(UNDER_TEST, SANDBOXD),
    Server(
        GRPC,
        "{python} -m bench.grpc_baseline --socket {socket} --ready-fd {ready_fd}",
        "grpc",
    ),
)


@dataclass(frozen=True)
class Settings:
    seq: int
    seq_warmup: int
    inflight: int
    warmup: float
    duration: float
    repeat: int

    def client_options(self) -> dict[str, Any]:
        """What ``bench.measure server`` (and ``grpc``) take."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "repeat"}


@dataclass(frozen=True)
class LoadSettings:
    throughput_warmup: float
    throughput_duration: float
    lifecycle_warmup: float
    lifecycle_duration: float
    counts: tuple[int, ...]
    scaling_seq: int
    scaling_seq_warmup: int
    profile_duration: float


FULL: Final = Settings(seq=3000, seq_warmup=300, inflight=64, warmup=0.3, duration=2.0, repeat=3)
QUICK: Final = Settings(seq=300, seq_warmup=50, inflight=64, warmup=0.1, duration=0.3, repeat=1)
FULL_LOAD: Final = LoadSettings(0.15, 0.5, 0.3, 1.5, (0, 1000, 10000, 50000), 3000, 300, 5.0)
QUICK_LOAD: Final = LoadSettings(0.1, 0.25, 0.1, 0.6, (0, 1000, 5000), 300, 50, 2.0)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def checked(figures: dict[str, Any]) -> dict[str, Any]:
    """``figures``, unless the measurement failed: then :class:`ServerFailed`."""
    if "error" in figures:
        raise ServerFailed(f"client failed: {figures['error']}")
    return figures


def attempt(what: str, errors: dict[str, str], run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)``, or None with the failure in ``errors[what]`` (and on stderr)."""
    try:
        return run(*args)
    except ServerFailed as exc:
        progress(f"FAILED: {exc}")
        errors[what] = str(exc)
        return None


# --- one round of each kind -----------------------------------------------------------------


def measure_server(server: Server, command: str, calls: list[str], s: Settings) -> dict[str, Any]:
    """Start ``server``, measure each of ``calls``, stop it."""
    options = s.client_options() | ({"grpc": True} if server.name == GRPC else {})
    with serving(server.name, command) as served:
        served.result["calls"] = {
            call: checked(measure("server", served, f"{server.name} {call}", call=call, **options))
            for call in calls
        }
    return served.result


def measure_clients(command: str, calls: list[str], s: Settings, threads: int) -> dict[str, Any]:
    """Every client on every call (sequential), then the threaded ones; failures kept."""
    seq: dict[str, object] = {"seq": s.seq, "seq_warmup": s.seq_warmup}
    window: dict[str, object] = {"warmup": s.warmup, "duration": s.duration}
    jobs = [(kind, call, {"client": kind} | seq) for call in calls for kind in CLIENT_KINDS]
    jobs += [
        (kind, call, {"client": "sync-threads", "threads": n} | window)
        for call in calls
        if call in CLIENT_THREAD_CALLS
        for kind, n in report.threaded_kinds(threads).items()
    ]
    with serving(CLIENTS, command) as served:
        served.result["measurements"] = {
            f"{kind} {call}": measure("client", served, f"{CLIENTS} {kind} {call}", call=call, **o)
            for kind, call, o in jobs
        }
    return served.result


def measure_throughput(name: str, command: str, s: LoadSettings) -> dict[str, Any]:
    call = BASELINE_CALL if name == FLOOR else STATUS
    with serving(f"throughput-{name}", command) as served:
        label = f"throughput {name} {call}"
        figures = measure(
            "throughput",
            served,
            label,
            call=call,
            points=THROUGHPUT_POINTS,
            warmup=s.throughput_warmup,
            duration=s.throughput_duration,
        )
        served.result["calls"] = {"sweep": checked(figures)}
    return served.result


def _profiled(served: Served, s: LoadSettings, out: Path) -> dict[str, Any]:
    """The sim x64 lifecycle point again while ``py-spy record -f raw`` samples the daemon
    into ``out``."""
    beside = Path(sys.executable).with_name("py-spy")
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        return {"error": "py-spy not found"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with Connection(served.path) as conn:  # the process serving the socket, not a wrapper
        pid = peer_pid(conn.socket)
    spy_argv = [py_spy, "record", "-o", str(out), "-f", "raw", "--pid", str(pid)]
    spy = subprocess.Popen(
        spy_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        time.sleep(0.5)  # py-spy attaches
        if spy.poll() is not None:
            error = spy.stderr.read().decode(errors="replace").strip() if spy.stderr else ""
            return {"error": f"py-spy exited with status {spy.returncode}: {error}"}
        label = f"lifecycle {PROFILED_POINT} under py-spy"
        figures = measure(
            "lifecycle",
            served,
            label,
            points=[PROFILED_POINT],
            warmup=0.2,
            duration=s.profile_duration,
        )
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    result = {"raw": str(out), "command": shlex.join(spy_argv), "exit_status": spy.returncode}
    result["point"] = (figures.get("points") or [{}])[0]
    if "error" in figures or not out.exists():
        result["error"] = figures.get("error", "py-spy wrote no profile")
    return result


def measure_lifecycles(command: str, s: LoadSettings, profile: Path | None) -> dict[str, Any]:
    """Every lifecycle point in one client process on one daemon; with ``profile``, the sim
    x64 point again under py-spy; then the embedded Controller's points."""
    with serving("lifecycles", command) as served:
        figures = measure(
            "lifecycle",
            served,
            "lifecycles",
            points=LIFECYCLE_POINTS,
            warmup=s.lifecycle_warmup,
            duration=s.lifecycle_duration,
        )
        result = served.result
        result["client"] = figures["client"]
        measured = {f"{p['sandboxer']}:{p['concurrency']}": p for p in figures.get("points", [])}
        result["points"] = {
            f"{b}:{n}": measured.get(f"{b}:{n}", {"error": figures.get("error", "not measured")})
            for b, n in LIFECYCLE_POINTS
        }
        if profile is not None:
            result["profile"] = _profiled(served, s, profile)
    label = "lifecycles: embedded Controller (no socket)"
    result["embedded"] = measure(
        "embedded",
        None,
        label,
        points=[1, 64],
        warmup=s.lifecycle_warmup,
        duration=s.lifecycle_duration,
    )
    del result["embedded"]["client"]
    return result


def measure_scaling(command: str, s: LoadSettings) -> dict[str, Any]:
    with serving("scaling", command) as served:
        label = f"scaling {STATUS} with {s.counts} idle sandboxes"
        served.result |= checked(
            measure(
                "scaling",
                served,
                label,
                counts=s.counts,
                seq=s.scaling_seq,
                seq_warmup=s.scaling_seq_warmup,
            )
        )
    return served.result


# --- medians over the rounds ----------------------------------------------------------------


def medians(rounds: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per numeric figure of the first round, the median over ``rounds``."""
    return {
        key: report.median([r[key] for r in rounds])
        for key, value in rounds[0].items()
        if isinstance(value, int | float)
    }


def summarize_server(runs: list[dict[str, Any]], calls: Sequence[str]) -> dict[str, Any]:
    summary = {
        call: {
            part: medians([run["calls"][call][part] for run in runs])
            for part, value in runs[0]["calls"][call].items()
            if isinstance(value, dict)  # "seq", "pipelined" (and gRPC's "seq_aio")
        }
        for call in calls
    }
    return {"rounds": len(runs), "calls": summary, "runs": runs}


def summarize_clients(
    runs: list[dict[str, Any]], calls: Sequence[str], threads: int
) -> dict[str, Any]:
    """Per call and client, the median of each figure over the rounds, or the first error."""
    parts = dict.fromkeys(CLIENT_KINDS, "seq") | dict.fromkeys(
        report.threaded_kinds(threads), "threads"
    )
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


def summarize_throughput(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per server and point ``CxK``, the median over the rounds of each figure."""
    return {
        name: {
            f"{c}x{k}": medians(
                [
                    p
                    for run in rounds
                    for p in run["calls"]["sweep"]["points"]
                    if (p["connections"], p["inflight"]) == (c, k)
                ]
            )
            for c, k in THROUGHPUT_POINTS
        }
        for name, rounds in runs.items()
        if rounds
    }


# --- main -----------------------------------------------------------------------------------


def _names(
    parser: argparse.ArgumentParser, text: str, known: Sequence[str], what: str
) -> list[str]:
    names = [n for n in text.split(",") if n]
    if unknown := set(names) - set(known):
        parser.error(f"unknown {what}: {', '.join(sorted(unknown))}")
    return names


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark sandboxd against the floor and gRPC."
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: small counts")
    add("--json", type=Path, default=DEFAULT_JSON, help=f"write results here ({DEFAULT_JSON})")
    add(
        "--servers",
        default=",".join(s.name for s in SERVERS),
        help="comma-separated servers to measure",
    )
    add(
        "--sandboxd-cmd",
        help=f"the command that starts sandboxd ({SANDBOXD!r}; {{ready_fd}} optional)",
    )
    add("--calls", default=",".join(CALLS), help="comma-separated calls measured on sandboxd")
    add("--seq", type=int, help="sequential round trips per call (3000; --quick 300)")
    add("--inflight", type=int, help="requests kept in flight (64)")
    add("--duration", type=float, help="seconds of each in-flight window (2; --quick 0.3)")
    add("--repeat", type=int, help="rounds over all servers; each figure is the median")
    add(
        "--clients",
        default=",".join(CLIENT_CALLS),
        help="calls measured through every client ('' skips the section)",
    )
    add(
        "--threads",
        type=int,
        default=CLIENT_THREADS,
        help=f"threads sharing one SyncController ({CLIENT_THREADS})",
    )
    add(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated load sections ('' runs none)",
    )
    add(
        "--counts",
        help="idle sandbox counts, scaling section (0,1000,10000,50000; --quick 0,1000,5000)",
    )
    add(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="profile the daemon during the lifecycle section's sim x64 point again",
    )
    args = parser.parse_args(argv)
    args.server_names = _names(parser, args.servers, [s.name for s in SERVERS], "server(s)")
    args.call_names = _names(parser, args.calls, list(CALLS), "call(s)")
    args.client_calls = _names(parser, args.clients, list(CALLS), "call(s) in --clients")
    args.section_names = _names(parser, args.sections, SECTIONS, "section(s)")
    if args.counts is not None:
        try:
            args.counts = tuple(int(c) for c in args.counts.split(",") if c.strip())
        except ValueError:
            args.counts = ()
        if not args.counts or min(args.counts) < 0 or list(args.counts) != sorted(args.counts):
            parser.error("--counts: non-negative numbers in increasing order")
    if args.threads < 1:
        parser.error("--threads must be positive")
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
    load_settings = QUICK_LOAD if args.quick else FULL_LOAD
    if args.counts:
        load_settings = dataclasses.replace(load_settings, counts=args.counts)
    servers = []
    for server in SERVERS:
        if server.name not in args.server_names:
            continue
        if server.requires and importlib.util.find_spec(server.requires) is None:
            progress(f"{server.requires}io not installed: skipped")
            continue
        servers.append(server)
    plan = {s.name: args.call_names if s.name == UNDER_TEST else [BASELINE_CALL] for s in servers}
    sandboxd = args.sandboxd_cmd or SANDBOXD
    commands = {s.name: sandboxd if s.name == UNDER_TEST else s.command for s in SERVERS}
    load_before = os.getloadavg()
    progress("load average before starting: " + ", ".join(f"{x:.2f}" for x in load_before))
    if load_before[0] > 0.5:
        progress(
            f"warning: load average {load_before[0]:.2f} before starting: figures will be noisy"
        )

    # Rounds interleave the servers, so a slow stretch of the machine hits all of them.
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    client_runs: list[dict[str, Any]] = []
    sweep_runs: dict[str, list[dict[str, Any]]] = {FLOOR: [], UNDER_TEST: []}
    errors: dict[str, str] = {}  # a server or the clients section: measured no further
    section_errors: dict[str, str] = {}
    for n in range(1, settings.repeat + 1):
        of = f"(round {n}/{settings.repeat})"
        for server in servers:
            if server.name not in errors:
                progress(f"{server.name}: starting {of}")
                got = attempt(
                    server.name,
                    errors,
                    measure_server,
                    server,
                    commands[server.name],
                    plan[server.name],
                    settings,
                )
                runs[server.name] += [got] if got else []
        if args.client_calls and CLIENTS not in errors:
            progress(f"{CLIENTS}: starting sandboxd {of}")
            got = attempt(
                CLIENTS,
                errors,
                measure_clients,
                sandboxd,
                args.client_calls,
                settings,
                args.threads,
            )
            client_runs += [got] if got else []
        if THROUGHPUT in args.section_names:
            for name in sweep_runs:
                if name not in section_errors:
                    progress(f"{THROUGHPUT}: starting {name} {of}")
                    got = attempt(
                        name,
                        section_errors,
                        measure_throughput,
                        name,
                        commands[name],
                        load_settings,
                    )
                    sweep_runs[name] += [got] if got else []
    lifecycles: dict[str, Any] = {}
    if LIFECYCLE in args.section_names:
        progress(f"{LIFECYCLE}: starting sandboxd")
        lifecycles = (
            attempt(
                LIFECYCLE, section_errors, measure_lifecycles, sandboxd, load_settings, args.py_spy
            )
            or {}
        )
    scaling: dict[str, Any] = {}
    if SCALING in args.section_names:
        progress(f"{SCALING}: starting sandboxd")
        scaling = attempt(SCALING, section_errors, measure_scaling, sandboxd, load_settings) or {}

    # --- the report ---
    failed = bool(errors or section_errors)
    tables: list[tuple[str, str]] = []

    def show(title: str, table: str) -> None:
        print(("\n" if tables else "") + table)
        tables.append((title, table))

    results = {
        s.name: {"error": errors[s.name], "runs": runs[s.name]}
        if s.name in errors
        else summarize_server(runs[s.name], plan[s.name])
        for s in servers
    }
    table, ratios = report.server_table(results, plan, settings.inflight)
    if servers:
        show("Servers (lean client)", table)
    clients: dict[str, Any] = {}
    if args.client_calls:
        clients = {"calls": args.client_calls, "threads": args.threads, "rounds": len(client_runs)}
        if CLIENTS in errors:
            clients["error"] = errors[CLIENTS]
        if client_runs:
            summary = summarize_clients(client_runs, args.client_calls, args.threads)
            clients_table, client_ratios = report.clients_tables(
                summary, args.client_calls, args.threads
            )
            failed = failed or any(
                "error" in f for per_call in summary.values() for f in per_call.values()
            )
            clients.update(summary=summary, ratios=client_ratios, table=clients_table)
            show("sandboxd's clients", clients_table)
        else:
            print("\nclients: FAILED (see above)")
        clients["runs"] = client_runs
    series = report.round_trip_series(plan.get(UNDER_TEST, []), args.client_calls)
    round_trips = report.round_trip_table(series, results, clients)
    show("Sequential round trips", round_trips)
    throughput: dict[str, Any] = {}
    if THROUGHPUT in args.section_names:
        sweep_errors = {n: section_errors[n] for n in sweep_runs if n in section_errors}
        throughput = {
            "points": [f"{c}x{k}" for c, k in THROUGHPUT_POINTS],
            "calls": {FLOOR: BASELINE_CALL, UNDER_TEST: STATUS},
            "rounds": {name: len(r) for name, r in sweep_runs.items()},
            "summary": summarize_throughput(sweep_runs),
            "runs": sweep_runs,
            **({"errors": sweep_errors} if sweep_errors else {}),
        }
        throughput["table"] = report.throughput_table(throughput["summary"], sweep_errors)
        show("Throughput against concurrency", throughput["table"])
    if LIFECYCLE in args.section_names:
        if LIFECYCLE in section_errors:
            lifecycles["error"] = section_errors[LIFECYCLE]
        points = lifecycles.get("points", {})
        failed = (
            failed
            or len(points) < len(LIFECYCLE_POINTS)
            or any("error" in p for p in points.values())
        )
        lifecycles["table"] = report.lifecycle_table(lifecycles)
        show("Full lifecycles", lifecycles["table"])
        spy = lifecycles.get("profile")
        if spy and "error" not in spy:
            spy["summary"] = summarize_profile(Path(spy["raw"]), 15)
            show("Daemon profile (py-spy)", report.profile_table(spy))
        elif spy:
            progress(f"\npy-spy: FAILED: {spy.get('error')}")
            failed = True
    if SCALING in args.section_names:
        if SCALING in section_errors:
            scaling["error"] = section_errors[SCALING]
        scaling["table"] = report.scaling_table(scaling)
        show("Scaling with idle sandboxes", scaling["table"])
    found = report.targets(results, clients, throughput, lifecycles, scaling)
    targets_md = report.targets_table(found)
    show("Targets", targets_md)

    stem = args.json.with_suffix("")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    plots = report.make_plots(stem, series, results, clients, throughput, scaling)
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
        "load_settings": dataclasses.asdict(load_settings),
        "results": results,
        "ratios_vs_floor": ratios,
        "table": table,
        "clients": clients,
        "round_trips": round_trips,
        "throughput": throughput,
        "lifecycles": lifecycles,
        "scaling": scaling,
        "targets": [dataclasses.asdict(t) for t in found],
        "targets_table": targets_md,
        "errors": {**errors, **section_errors},
        "plots": [str(path) for path in plots],
        "markdown": str(stem.with_suffix(".md")),
    }
    stem.with_suffix(".md").write_text(report.markdown(out, tables, plots))
    args.json.write_text(report.dumps_json(out))
    progress(f"\nresults written to {args.json} and {stem.with_suffix('.md')}")
    for path in plots:
        progress(f"plot: {path}")
    if failed:
        progress("some measurements FAILED: exit status 1")
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
