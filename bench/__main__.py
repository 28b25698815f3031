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
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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
    CLIENT_THREADS,
    REFERENCE_CLIENT,
    THREADED_CLIENT,
)

REPO: Final = Path(__file__).resolve().parent.parent
DEFAULT_JSON: Final = REPO / "bench" / "results" / "latest.json"
READY_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 5.0
CLIENT_TIMEOUT: Final = 300.0


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


SERVERS: Final[tuple[Server, ...]] = (
    Server("floor", ("{python}", "-m", "bench.floor", "--socket", "{socket}")),
    Server(
        "sandboxd", ("{python}", "-m", "sandboxd", "serve", "--socket", "{socket}"), calls=None
    ),
    Server(
        "grpc",
        ("{python}", "-m", "bench.grpc_baseline", "serve", "--socket", "{socket}"),
        client=("{python}", "-m", "bench.grpc_baseline", "client"),
        requires=("grpc", "grpcio"),
    ),
)
UNDER_TEST: Final = "sandboxd"
FLOOR: Final = "floor"


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


class ServerFailed(Exception):
    """The server did not start, or the client reported a failure."""


def _env() -> dict[str, str]:
    """This environment, with the repo root and src/ importable in the children."""
    env = dict(os.environ)
    paths = [str(REPO / "src"), str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _fill(template: Sequence[str], **values: str) -> list[str]:
    return [arg.format(python=sys.executable, **values) for arg in template]


def _default_sigint() -> None:
    # A child started from a shell in the background inherits SIGINT ignored, and Python then
    # never turns SIGINT into KeyboardInterrupt: restore the default so SIGINT stops it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"\n--- server output ({log.name}) ---\n{tail}" if tail else ""


def wait_ready(proc: subprocess.Popen[bytes], path: str, deadline: float) -> None:
    """Poll ``connect`` on ``path`` until it succeeds; fail if the server exits or is late."""
    delay = 0.001
    while True:
        code = proc.poll()
        if code is not None:
            raise ServerFailed(f"server exited with status {code} before accepting connections")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            else:
                return
        if time.monotonic() >= deadline:
            raise ServerFailed(f"server did not accept connections within {READY_TIMEOUT} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT, then wait; SIGKILL if it is still there after STOP_TIMEOUT."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  server pid {proc.pid} ignored SIGINT: killing it", file=sys.stderr)
            proc.kill()
    return proc.wait()


@dataclass(frozen=True)
class Job:
    """One client process run against a server."""

    key: str  # where its figures go in the result
    label: str  # what the progress line calls it
    argv: tuple[str, ...]


def run_jobs(
    name: str,
    argv_template: Sequence[str],
    jobs: Callable[[str], Sequence[Job]],
    *,
    result_key: str = "calls",
    keep_going: bool = False,
) -> dict[str, Any]:
    """Start a server, run the client process of each of ``jobs(socket_path)``, stop it.

    A failed client raises :class:`ServerFailed`; with ``keep_going``, it is recorded as
    ``{"error": ...}`` under its key instead and the next job runs (unless the server died).
    """
    tmp = Path(tempfile.mkdtemp(prefix="sandboxd-bench-"))
    path = str(tmp / f"{name}.sock")
    log = tmp / f"{name}.log"
    argv = _fill(argv_template, socket=path)
    result: dict[str, Any] = {"command": shlex.join(argv), result_key: {}}
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_default_sigint,  # the harness has no threads
            )
        try:
            started = time.monotonic()
            wait_ready(proc, path, started + READY_TIMEOUT)
            result["ready_s"] = round(time.monotonic() - started, 3)
            for job in jobs(path):
                client = list(job.argv)
                print(f"  {name} {job.label}: measuring ...", file=sys.stderr, flush=True)
                if keep_going:
                    result[result_key][job.key] = _run_kept_going(proc, job, client)
                    continue
                done = subprocess.run(
                    client,
                    cwd=REPO,
                    env=_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    timeout=CLIENT_TIMEOUT,
                    check=False,
                )
                if done.returncode != 0:
                    raise ServerFailed(f"client failed on {job.key} (status {done.returncode})")
                figures = json.loads(done.stdout)
                figures["client"] = shlex.join(client)
                result[result_key][job.key] = figures
        except BaseException:
            stop(proc)
            raise
        result["exit_status"] = status = stop(proc)
        if status != 0:
            print(f"  note: {name} exited with status {status}", file=sys.stderr)
    except (ServerFailed, OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise ServerFailed(f"{name}: {exc}{_log_tail(log)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _run_kept_going(proc: subprocess.Popen[bytes], job: Job, client: list[str]) -> dict[str, Any]:
    """One job whose failure is its own: figures, or ``{"error": ...}``."""
    try:
        done = subprocess.run(
            client,
            cwd=REPO,
            env=_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CLIENT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        error = f"no result within {CLIENT_TIMEOUT} s"
    else:
        sys.stderr.write(done.stderr.decode(errors="replace"))
        error = ""
        if done.returncode == 0:
            try:
                figures: dict[str, Any] = json.loads(done.stdout)
            except ValueError as exc:
                error = f"unreadable output: {exc}"
            else:
                figures["client"] = shlex.join(client)
                return figures
        if not error:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            error = lines[-1] if lines else f"status {done.returncode}"
    print(f"  FAILED: {job.label}: {error}", file=sys.stderr)
    if proc.poll() is not None:
        raise ServerFailed(f"server exited with status {proc.returncode} during {job.label}")
    return {"error": error, "client": shlex.join(client)}


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


def _median(values: list[float]) -> float:
    return values[0] if len(set(values)) == 1 else statistics.median(values)


def summarize(runs: list[dict[str, Any]], calls: Sequence[str]) -> dict[str, Any]:
    """Per call and figure, the median over the rounds; every round kept under ``runs``."""
    summary: dict[str, Any] = {}
    for call in calls:
        summary[call] = {}
        for part in ("seq", "pipelined"):
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


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if kind == "throughput" else f"{value:,.1f}"


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


def _ratio(mine: float | None, reference: float | None) -> float | None:
    return mine / reference if mine is not None and reference else None


def _fmt_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x"


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
        help="command that starts the server under test ({python}, {socket} are filled in)",
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
    args = parser.parse_args(argv)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    base = QUICK if args.quick else FULL
    settings = Settings(
        seq=args.seq or base.seq,
        seq_warmup=base.seq_warmup,
        inflight=args.inflight or base.inflight,
        warmup=base.warmup,
        duration=args.duration or base.duration,
        repeat=args.repeat or base.repeat,
    )
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
    if load_before[0] > 0.5:
        print(
            f"warning: load average {load_before[0]:.2f} before starting: figures will be noisy",
            file=sys.stderr,
        )

    # Rounds interleave the servers, so a slow stretch of the machine hits all of them.
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    errors: dict[str, str] = {}
    client_runs: list[dict[str, Any]] = []
    under_test = next(s.command for s in SERVERS if s.name == UNDER_TEST)
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
                        shlex.split(args.sandboxd_cmd) if args.sandboxd_cmd else under_test,
                        client_jobs(args.client_calls, settings, args.threads),
                        result_key="measurements",
                        keep_going=True,
                    )
                )
            except ServerFailed as exc:
                print(f"FAILED: {exc}", file=sys.stderr)
                errors[CLIENTS] = str(exc)
    results: dict[str, Any] = {}
    for server in servers:
        if server.name in errors:
            results[server.name] = {"error": errors[server.name], "runs": runs[server.name]}
        else:
            results[server.name] = summarize(runs[server.name], plan[server.name])
    failed = bool(errors)

    table, ratios = build_table(results, servers, plan, settings.inflight)
    if servers:
        print(table)
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
        else:
            print(("\n" if servers else "") + "clients: FAILED (see above)")
        clients["runs"] = client_runs
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
        "quick": args.quick,
        "settings": vars(settings),
        "results": results,
        "ratios_vs_floor": ratios,
        "table": table,
        "clients": clients,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.json}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
