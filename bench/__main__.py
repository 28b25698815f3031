"""Run the benchmark: every server, the same client, one markdown table and a JSON file.

    python -m bench [--quick] [--json FILE] [--servers floor,sandboxd,grpc] [--sandboxd-cmd CMD]
                    [--calls ...] [--seq N] [--inflight K] [--duration S] [--repeat R]
                    [--clients CALLS] [--threads T]

Each server runs in its own process on a fresh Unix socket in a temporary directory; the
harness waits until it accepts connections, runs the client in another process (one per
measured call), then stops the server with SIGINT (SIGKILL if it does not exit in time).
Rounds over all servers are repeated (3 by default, 1 with --quick) and each figure in the
table is the median over the rounds.

The clients section then (in each round) starts one more sandboxd and measures the
``--clients`` calls through each of sandboxd's clients, one process per client and call
(``bench/clients.py``), in a second table.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .calls import (
    BASELINE_CALL,
    CALLS,
    CLIENT_CALLS,
    CLIENT_KINDS,
    CLIENT_THREAD_CALLS,
    CLIENT_THREADS,
    REFERENCE_CLIENT,
    THREADED_CLIENT,
)
from .harness import REPO, Job, ServerFailed, dumps_json, run_jobs
from .harness import fill as _fill
from .harness import fmt as _fmt
from .harness import fmt_ratio as _fmt_ratio
from .harness import median as _median
from .harness import ratio as _ratio
from .plots import make_plots
from .profile import summarize as summarize_profile
from .profile import table as profile_md
from .report import round_trip_series, round_trip_table, targets, targets_table
from .scaling import parse_counts
from .sections import (
    FULL_LOAD,
    PROFILED_POINT,
    QUICK_LOAD,
    STATUS,
    THROUGHPUT_POINTS,
    THROUGHPUT_SERVERS,
    attempt,
    lifecycle_failed,
    lifecycle_table,
    run_lifecycles,
    run_scaling,
    run_throughput,
    scaling_table,
    summarize_throughput,
    throughput_table,
)

DEFAULT_JSON: Final = REPO / "bench" / "results" / "latest.json"


@dataclass(frozen=True)
class Server:
    """A server under test.

    ``command`` and ``client`` are argument lists in which ``{python}`` stands for this
    interpreter and ``{socket}`` for the socket path.  ``calls`` is None for the server under
    test (measured on every entry of CALLS) and the baseline call for the others.
    """

    name: str
    command: tuple[str, ...]
    client: tuple[str, ...] = ("{python}", "-m", "bench.client", "--call", "{call}")
    calls: tuple[str, ...] | None = (BASELINE_CALL,)
    requires: tuple[str, str] | None = None  # (module, package): skipped unless importable


#: sandboxd under test; ``{state_dir}`` is a fresh directory per server started, removed after.
SANDBOXD_COMMAND: Final = (
    "{python}",
    "-m",
    "sandboxd",
    "serve",
    "--socket",
    "{socket}",
    "--state-dir",
    "{state_dir}",
)
SERVERS: Final[tuple[Server, ...]] = (
    Server("floor", ("{python}", "-m", "bench.floor", "--socket", "{socket}")),
    Server("sandboxd", SANDBOXD_COMMAND, calls=None),
    Server(
        "grpc",
        ("{python}", "-m", "bench.grpc_baseline", "serve", "--socket", "{socket}"),
        client=("{python}", "-m", "bench.grpc_baseline", "client"),
        requires=("grpc", "grpcio"),
    ),
)
UNDER_TEST: Final = "sandboxd"
FLOOR: Final = "floor"
THROUGHPUT: Final = "throughput"
LIFECYCLE: Final = "lifecycle"
SCALING: Final = "scaling"
#: The load sections, run after the rounds of the server and client tables (throughput in
#: every round, the other two once).
SECTIONS: Final = (THROUGHPUT, LIFECYCLE, SCALING)


@dataclass(frozen=True)
class Settings:
    seq: int
    seq_warmup: int
    inflight: int
    warmup: float
    duration: float
    repeat: int

    def client_args(self) -> list[str]:
        return [
            f"--seq={self.seq}",
            f"--seq-warmup={self.seq_warmup}",
            f"--inflight={self.inflight}",
            f"--warmup={self.warmup}",
            f"--duration={self.duration}",
        ]


FULL: Final = Settings(seq=3000, seq_warmup=300, inflight=64, warmup=0.3, duration=2.0, repeat=3)
QUICK: Final = Settings(seq=300, seq_warmup=50, inflight=64, warmup=0.1, duration=0.3, repeat=1)


def run_server(
    server: Server, calls: Sequence[str], settings: Settings, command: Sequence[str] | None
) -> dict[str, Any]:
    """Start ``server``, measure each of ``calls`` in a client process, stop the server."""

    def jobs(path: str) -> list[Job]:
        return [
            Job(
                call,
                call,
                (
                    *_fill(server.client, socket=path, call=call),
                    *("--socket", path, *settings.client_args()),
                ),
            )
            for call in calls
        ]

    return run_jobs(server.name, command or server.command, jobs)


def summarize(runs: list[dict[str, Any]], calls: Sequence[str]) -> dict[str, Any]:
    """Per call and figure, the median over the rounds; every round kept under ``runs``."""
    summary: dict[str, Any] = {}
    for call in calls:
        summary[call] = {}
        # "seq" and "pipelined" (and the gRPC client's "seq_aio"): every part measured.
        parts = [k for k, v in runs[0]["calls"][call].items() if isinstance(v, dict)]
        for part in parts:
            first = runs[0]["calls"][call][part]
            summary[call][part] = {
                key: _median([run["calls"][call][part][key] for run in runs])
                for key, value in first.items()
                if isinstance(value, int | float)
            }
    return {"rounds": len(runs), "calls": summary, "runs": runs}


# --- the table ---------------------------------------------------------------------------

ROWS: Final = (
    ("seq p50 (us)", "seq", "p50_us", "latency"),
    ("seq p99 (us)", "seq", "p99_us", "latency"),
    ("{inflight}-in-flight (req/s)", "pipelined", "rps", "throughput"),
)


def _column_name(server: Server, call: str) -> str:
    return f"{server.name} {call}" if server.calls is None else server.name


def _figure(results: dict[str, Any], server: str, call: str, part: str, key: str) -> float | None:
    try:
        return float(results[server]["calls"][call][part][key])
    except (KeyError, TypeError):
        return None


def build_table(
    results: dict[str, Any], servers: Sequence[Server], plan: dict[str, list[str]], inflight: int
) -> tuple[str, dict[str, dict[str, float | None]]]:
    """The markdown table and the ratios (under-test / floor) it shows."""
    columns: list[tuple[str, str, str]] = []  # (title, server, call)
    for server in servers:
        columns += [(_column_name(server, call), server.name, call) for call in plan[server.name]]
    under_test = plan.get(UNDER_TEST, [])
    ratio_columns = []
    if FLOOR in plan:
        for call in under_test:
            title = "sandboxd/floor" if len(under_test) == 1 else f"sandboxd/floor ({call})"
            ratio_columns.append((title, call))
    header = ["measurement", *(c[0] for c in columns), *(r[0] for r in ratio_columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    ratios: dict[str, dict[str, float | None]] = {call: {} for _, call in ratio_columns}
    for label, part, key, kind in ROWS:
        cells = [label.format(inflight=inflight)]
        for _, name, call in columns:
            if "error" in results.get(name, {}):
                cells.append("FAILED")
            else:
                cells.append(_fmt(_figure(results, name, call, part, key), kind))
        floor = _figure(results, FLOOR, BASELINE_CALL, part, key)
        for _, call in ratio_columns:
            mine = _figure(results, UNDER_TEST, call, part, key)
            ratio = mine / floor if mine is not None and floor else None
            ratios[call][f"{part}.{key}"] = ratio
            cells.append("—" if ratio is None else f"{ratio:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), ratios


# --- the clients section ------------------------------------------------------------------

CLIENTS: Final = "clients"


def threaded_kinds(threads: int) -> dict[str, int]:
    """The threaded measurements: 1 thread (the reference) and ``threads``, by name."""
    return {f"{THREADED_CLIENT} x{n}": n for n in sorted({1, threads})}


def client_jobs(
    calls: Sequence[str], settings: Settings, threads: int
) -> Callable[[str], list[Job]]:
    """Every client on every call (sequential), then the threaded ones on every call."""

    def jobs(path: str) -> list[Job]:
        base = (sys.executable, "-m", "bench.clients", "--socket", path)
        out = [
            Job(
                f"{kind} {call}",
                f"{kind} {call}",
                (
                    *base,
                    f"--client={kind}",
                    f"--call={call}",
                    f"--seq={settings.seq}",
                    f"--seq-warmup={settings.seq_warmup}",
                ),
            )
            for call in calls
            for kind in CLIENT_KINDS
        ]
        out += [
            Job(
                f"{kind} {call}",
                f"{kind} {call}",
                (
                    *base,
                    f"--client={THREADED_CLIENT}",
                    f"--call={call}",
                    f"--threads={n}",
                    f"--warmup={settings.warmup}",
                    f"--duration={settings.duration}",
                ),
            )
            for call in calls
            if call in CLIENT_THREAD_CALLS
            for kind, n in threaded_kinds(threads).items()
        ]
        return out

    return jobs


def summarize_clients(
    runs: list[dict[str, Any]], calls: Sequence[str], threads: int
) -> dict[str, Any]:
    """Per call and client, the median of each figure over the rounds, or the first error."""
    parts = {kind: "seq" for kind in CLIENT_KINDS} | dict.fromkeys(
        threaded_kinds(threads), "threads"
    )
    summary: dict[str, Any] = {}
    for call in calls:
        summary[call] = {}
        for kind, part in parts.items():
            if part == "threads" and call not in CLIENT_THREAD_CALLS:
                continue
            rounds = [run["measurements"].get(f"{kind} {call}", {}) for run in runs]
            failed = [r.get("error", "no result") for r in rounds if part not in r]
            if failed or not rounds:
                summary[call][kind] = {"error": failed[0] if failed else "not measured"}
                continue
            first = rounds[0][part]
            summary[call][kind] = {
                key: _median([r[part][key] for r in rounds])
                for key, value in first.items()
                if isinstance(value, int | float)
            }
    return summary


def _client_figure(summary: dict[str, Any], call: str, kind: str, key: str) -> float | None:
    try:
        return float(summary[call][kind][key])
    except (KeyError, TypeError):
        return None


def build_clients_tables(
    summary: dict[str, Any], calls: Sequence[str], threads: int
) -> tuple[str, dict[str, Any]]:
    """The clients' markdown tables, and the ratios they show."""
    ratios: dict[str, Any] = {"vs_lean": {}, "threads_vs_one_thread": {}}
    lines = [
        "| client | call | p50 (us) | p99 (us) | p50 vs lean | p99 vs lean "
        "| client CPU (us/call) |",
        "|---|---|---|---|---|---|---|",
    ]
    for call in calls:
        ratios["vs_lean"][call] = {}
        for kind, title in CLIENT_KINDS.items():
            if "error" in summary[call][kind]:
                lines.append(f"| {title} | {call} | FAILED | FAILED | — | — | — |")
                ratios["vs_lean"][call][kind] = None
                continue
            cells = [title, call]
            pair: dict[str, float | None] = {}
            for key in ("p50_us", "p99_us"):
                cells.append(_fmt(_client_figure(summary, call, kind, key), "latency"))
            for key in ("p50_us", "p99_us"):
                pair[key] = _ratio(
                    _client_figure(summary, call, kind, key),
                    _client_figure(summary, call, REFERENCE_CLIENT, key),
                )
                cells.append(_fmt_ratio(pair[key]))
            ratios["vs_lean"][call][kind] = pair
            cells.append(_fmt(_client_figure(summary, call, kind, "cpu_us"), "latency"))
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| threads sharing one SyncController | call | calls/s | vs 1 thread "
        "| p50 (us) | p99 (us) | calls per thread, min-max | client CPU (us/call) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    kinds = threaded_kinds(threads)
    one = next(iter(kinds))
    for call in calls:
        if call not in CLIENT_THREAD_CALLS:
            continue
        ratios["threads_vs_one_thread"][call] = None
        for kind, n in kinds.items():
            title = f"SyncController x{n}"
            if "error" in summary[call][kind]:
                lines.append(f"| {title} | {call} | FAILED | — | — | — | — | — |")
                continue
            rate = _client_figure(summary, call, kind, "calls_per_s")
            ratio = _ratio(rate, _client_figure(summary, call, one, "calls_per_s"))
            if n == threads:
                ratios["threads_vs_one_thread"][call] = ratio
            low = _client_figure(summary, call, kind, "per_thread_min")
            high = _client_figure(summary, call, kind, "per_thread_max")
            cells = [
                title,
                call,
                _fmt(rate, "throughput"),
                _fmt_ratio(ratio),
                _fmt(_client_figure(summary, call, kind, "p50_us"), "latency"),
                _fmt(_client_figure(summary, call, kind, "p99_us"), "latency"),
                "—" if low is None or high is None else f"{low:,.0f}-{high:,.0f}",
                _fmt(_client_figure(summary, call, kind, "cpu_us"), "latency"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), ratios


# --- main ----------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark sandboxd against the floor and gRPC."
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"write results here ({DEFAULT_JSON})"
    )
    parser.add_argument(
        "--servers",
        default=",".join(s.name for s in SERVERS),
        help="comma-separated subset of: " + ", ".join(s.name for s in SERVERS),
    )
    parser.add_argument(
        "--calls",
        default=",".join(CALLS),
        help="comma-separated calls to measure on sandboxd: " + ", ".join(CALLS),
    )
    parser.add_argument(
        "--sandboxd-cmd",
        help="command that starts the server under test ({python}, {socket}, {state_dir} are "
        "filled in; give it {state_dir}, or its records go to its default state directory)",
    )
    parser.add_argument("--seq", type=int, help="sequential round trips per call")
    parser.add_argument("--inflight", type=int, help="requests in flight when pipelined")
    parser.add_argument("--duration", type=float, help="pipelined measuring window, s")
    parser.add_argument(
        "--repeat", type=int, help="rounds over all servers; each figure is the median"
    )
    parser.add_argument(
        "--clients",
        default=",".join(CLIENT_CALLS),
        help="comma-separated calls measured through every client on a sandboxd of their own "
        f"(default {','.join(CLIENT_CALLS)}; '' skips the clients section)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=CLIENT_THREADS,
        help=f"threads sharing one SyncController in the clients section ({CLIENT_THREADS})",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated load sections to run (default all: "
        f"{','.join(SECTIONS)}; '' runs none)",
    )
    parser.add_argument(
        "--counts",
        help="idle sandbox counts of the scaling section (default 0,1000,10000,50000; "
        "--quick 0,1000,5000)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="after the lifecycle section's points, run its sim x64 point again (not counted) "
        "under `py-spy record -f raw` of the daemon, writing FILE; its summary goes in the "
        "results",
    )
    args = parser.parse_args(argv)
    args.section_names = [n for n in args.sections.split(",") if n]
    if unknown := set(args.section_names) - set(SECTIONS):
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if args.counts is not None:
        try:
            args.counts = tuple(parse_counts(args.counts))
        except ValueError as exc:
            parser.error(str(exc))
    if args.sandboxd_cmd and "{state_dir}" not in args.sandboxd_cmd:
        print(
            "warning: --sandboxd-cmd has no {state_dir}: the daemons keep their records in "
            "their default state directory (the scaling section adds tens of thousands)",
            file=sys.stderr,
        )
    names = {s.name for s in SERVERS}
    args.server_names = [n for n in args.servers.split(",") if n]
    if unknown := set(args.server_names) - names:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    args.call_names = [c for c in args.calls.split(",") if c]
    if unknown := set(args.call_names) - set(CALLS):
        parser.error(f"unknown call(s): {', '.join(sorted(unknown))}")
    args.client_calls = [c for c in args.clients.split(",") if c]
    if unknown := set(args.client_calls) - set(CALLS):
        parser.error(f"unknown call(s) in --clients: {', '.join(sorted(unknown))}")
    if args.threads < 1:
        parser.error("--threads must be positive")
    return args


def _server_command(name: str, sandboxd_cmd: str | None) -> Sequence[str]:
    if name == UNDER_TEST and sandboxd_cmd:
        return shlex.split(sandboxd_cmd)
    return next(s.command for s in SERVERS if s.name == name)


def _markdown(report: dict[str, Any], tables: list[tuple[str, str]], plots: list[Path]) -> str:
    """The run as a markdown document: how it was run, then every table."""
    load = ", ".join(f"{x:.2f}" for x in report["load_average_before"])
    after = ", ".join(f"{x:.2f}" for x in report["load_average_after"])
    lines = [
        "# sandboxd benchmark",
        "",
        f"* command: `{report['command']}` (in `{report['cwd']}`)",
        f"* time: {report['time']}, {report['elapsed_s']:.0f} s; "
        f"{'quick' if report['quick'] else 'full'} run",
        f"* machine: {report['cpu_count']} CPUs, {report['platform']}; "
        f"Python {report['python'].split()[0]} ({report['implementation']})",
        f"* load average (1, 5, 15 min) before: {load}; after: {after}",
        "",
    ]
    for title, table in tables:
        lines += [f"## {title}", "", table, ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{path.stem}]({path.name})" for path in plots]
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    began = time.monotonic()
    base = QUICK if args.quick else FULL
    settings = Settings(
        seq=args.seq or base.seq,
        seq_warmup=base.seq_warmup,
        inflight=args.inflight or base.inflight,
        warmup=base.warmup,
        duration=args.duration or base.duration,
        repeat=args.repeat or base.repeat,
    )
    load_settings = QUICK_LOAD if args.quick else FULL_LOAD
    if args.counts is not None:
        load_settings = dataclasses.replace(load_settings, counts=args.counts)
    servers: list[Server] = []
    for server in SERVERS:
        if server.name not in args.server_names:
            continue
        if server.requires and importlib.util.find_spec(server.requires[0]) is None:
            print(f"{server.requires[1]} not installed: skipped", file=sys.stderr)
            continue
        servers.append(server)
    plan = {s.name: list(s.calls if s.calls is not None else args.call_names) for s in servers}
    load_before = os.getloadavg()
    print(
        "load average before starting: " + ", ".join(f"{x:.2f}" for x in load_before),
        file=sys.stderr,
    )
    if load_before[0] > 0.5:
        print(
            f"warning: load average {load_before[0]:.2f} before starting: figures will be noisy",
            file=sys.stderr,
        )

    # Rounds interleave the servers, so a slow stretch of the machine hits all of them.
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    errors: dict[str, str] = {}
    client_runs: list[dict[str, Any]] = []
    sweep_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in THROUGHPUT_SERVERS}
    section_errors: dict[str, str] = {}
    under_test = _server_command(UNDER_TEST, args.sandboxd_cmd)
    for round_no in range(1, settings.repeat + 1):
        for server in servers:
            if server.name in errors:
                continue
            print(
                f"{server.name}: starting (round {round_no}/{settings.repeat})",
                file=sys.stderr,
                flush=True,
            )
            command = (
                shlex.split(args.sandboxd_cmd)
                if server.name == UNDER_TEST and args.sandboxd_cmd
                else None
            )
            try:
                runs[server.name].append(run_server(server, plan[server.name], settings, command))
            except ServerFailed as exc:
                print(f"FAILED: {exc}", file=sys.stderr)
                errors[server.name] = str(exc)
        if args.client_calls and CLIENTS not in errors:
            print(
                f"{CLIENTS}: starting sandboxd (round {round_no}/{settings.repeat})",
                file=sys.stderr,
                flush=True,
            )
            try:
                client_runs.append(
                    run_jobs(
                        CLIENTS,
                        under_test,
                        client_jobs(args.client_calls, settings, args.threads),
                        result_key="measurements",
                        keep_going=True,
                    )
                )
            except ServerFailed as exc:
                print(f"FAILED: {exc}", file=sys.stderr)
                errors[CLIENTS] = str(exc)
        if THROUGHPUT in args.section_names:
            for name in THROUGHPUT_SERVERS:
                if name in section_errors:
                    continue
                print(
                    f"{THROUGHPUT}: starting {name} (round {round_no}/{settings.repeat})",
                    file=sys.stderr,
                    flush=True,
                )
                call = BASELINE_CALL if name == FLOOR else STATUS
                command_ = _server_command(name, args.sandboxd_cmd)
                got = attempt(
                    name, section_errors, run_throughput, name, command_, call, load_settings
                )
                if got is not None:
                    sweep_runs[name].append(got)
    lifecycles: dict[str, Any] = {}
    if LIFECYCLE in args.section_names:
        print(f"{LIFECYCLE}: starting sandboxd", file=sys.stderr, flush=True)
        lifecycles = (
            attempt(
                LIFECYCLE, section_errors, run_lifecycles, under_test, load_settings, args.py_spy
            )
            or {}
        )
    scaling: dict[str, Any] = {}
    if SCALING in args.section_names:
        print(f"{SCALING}: starting sandboxd", file=sys.stderr, flush=True)
        scaling = attempt(SCALING, section_errors, run_scaling, under_test, load_settings) or {}

    results: dict[str, Any] = {}
    for server in servers:
        if server.name in errors:
            results[server.name] = {"error": errors[server.name], "runs": runs[server.name]}
        else:
            results[server.name] = summarize(runs[server.name], plan[server.name])
    failed = bool(errors) or bool(section_errors)

    tables: list[tuple[str, str]] = []
    table, ratios = build_table(results, servers, plan, settings.inflight)
    if servers:
        print(table)
        tables.append(("Servers (lean client)", table))
    clients: dict[str, Any] = {}
    if args.client_calls:
        clients = {"calls": args.client_calls, "threads": args.threads, "rounds": len(client_runs)}
        if CLIENTS in errors:
            clients["error"] = errors[CLIENTS]
        if client_runs:
            summary = summarize_clients(client_runs, args.client_calls, args.threads)
            clients_table, client_ratios = build_clients_tables(
                summary, args.client_calls, args.threads
            )
            failed = failed or any(
                "error" in figures
                for per_call in summary.values()
                for figures in per_call.values()
            )
            clients.update(summary=summary, ratios=client_ratios, table=clients_table)
            print(("\n" if servers else "") + clients_table)
            tables.append(("sandboxd's clients", clients_table))
        else:
            print(("\n" if servers else "") + "clients: FAILED (see above)")
        clients["runs"] = client_runs

    series = round_trip_series(plan.get(UNDER_TEST, []), args.client_calls)
    round_trips = round_trip_table(series, results, clients)
    print("\n" + round_trips)
    tables.append(("Sequential round trips", round_trips))

    throughput: dict[str, Any] = {}
    if THROUGHPUT in args.section_names:
        throughput = {
            "points": [f"{c}x{k}" for c, k in THROUGHPUT_POINTS],
            "calls": {FLOOR: BASELINE_CALL, UNDER_TEST: STATUS},
            "rounds": {name: len(r) for name, r in sweep_runs.items()},
            "summary": summarize_throughput({n: r for n, r in sweep_runs.items() if r}),
            "runs": sweep_runs,
        }
        errors_here: dict[str, str] = {
            n: section_errors[n] for n in THROUGHPUT_SERVERS if n in section_errors
        }
        if errors_here:
            throughput["errors"] = errors_here
        throughput["table"] = throughput_table(throughput["summary"], errors_here)
        print("\n" + throughput["table"])
        tables.append(("Throughput against concurrency", throughput["table"]))
    if LIFECYCLE in args.section_names:
        if LIFECYCLE in section_errors:
            lifecycles["error"] = section_errors[LIFECYCLE]
        failed = failed or lifecycle_failed(lifecycles)
        lifecycles["table"] = lifecycle_table(lifecycles)
        print("\n" + lifecycles["table"])
        tables.append(("Full lifecycles", lifecycles["table"]))
        profile = lifecycles.get("profile")
        if profile and "error" not in profile and Path(profile["raw"]).exists():
            profile["summary"] = summarize_profile(Path(profile["raw"]), 15)
            spied = profile["summary"]
            threads = spied["threads"]
            profile_table = (
                f"py-spy, {spied['samples']} samples of the daemon during "
                f"{PROFILED_POINT[0]} x{PROFILED_POINT[1]} "
                f"({profile['point'].get('lifecycles_per_s', 0):,.0f} lifecycles/s while "
                f"profiled; raw: {profile['raw']}): main thread {threads.get('main', 0)}, "
                f"worker threads {threads.get('other', 0)} (SQLite writes, and idle workers "
                "waiting for a job).  The main thread (the trio run loop):\n\n"
                + profile_md(spied, "self_main")
                + "\n\n"
                + profile_md(spied, "inclusive_main")
            )
            print("\n" + profile_table)
            tables.append(("Daemon profile (py-spy)", profile_table))
        elif profile:
            print(f"\npy-spy: FAILED: {profile.get('error')}", file=sys.stderr)
            failed = True
    if SCALING in args.section_names:
        if SCALING in section_errors:
            scaling["error"] = section_errors[SCALING]
        scaling["table"] = scaling_table(scaling)
        print("\n" + scaling["table"])
        tables.append(("Scaling with idle sandboxes", scaling["table"]))

    found = targets(results, clients, throughput, lifecycles, scaling)
    targets_md = targets_table(found)
    print("\n" + targets_md)
    tables.append(("Targets", targets_md))

    stem = args.json.with_suffix("")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    plots = make_plots(stem, series, results, clients, throughput, scaling)
    report = {
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
        "settings": vars(settings),
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
    }
    markdown = stem.with_suffix(".md")
    report["markdown"] = str(markdown)
    markdown.write_text(_markdown(report, tables, plots))
    args.json.write_text(dumps_json(report))
    print(f"\nresults written to {args.json} and {markdown}", file=sys.stderr)
    for path in plots:
        print(f"plot: {path}", file=sys.stderr)
    if failed:
        print("some measurements FAILED: exit status 1", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
