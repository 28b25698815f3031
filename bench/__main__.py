"""Run the benchmark: every server, the same client, one markdown table and a JSON file.

    python -m bench [--quick] [--json FILE] [--servers floor,sandboxd,grpc] [--sandboxd-cmd CMD]
                    [--calls ...] [--seq N] [--inflight K] [--duration S] [--repeat R]

Each server runs in its own process on a fresh Unix socket in a temporary directory; the
harness waits until it accepts connections, runs the client in another process (one per
measured call), then stops the server with SIGINT (SIGKILL if it does not exit in time).
Rounds over all servers are repeated (3 by default, 1 with --quick) and each figure in the
table is the median over the rounds.  See bench/README.md.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .calls import BASELINE_CALL, CALLS

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


def run_server(
    server: Server, calls: Sequence[str], settings: Settings, command: Sequence[str] | None
) -> dict[str, Any]:
    """Start ``server``, measure each of ``calls`` in a client process, stop the server."""
    tmp = Path(tempfile.mkdtemp(prefix="sandboxd-bench-"))
    path = str(tmp / f"{server.name}.sock")
    log = tmp / f"{server.name}.log"
    argv = _fill(command or server.command, socket=path)
    result: dict[str, Any] = {"command": shlex.join(argv), "calls": {}}
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
            for call in calls:
                client = _fill(server.client, socket=path, call=call)
                client += ["--socket", path, *settings.client_args()]
                print(f"  {server.name} {call}: measuring ...", file=sys.stderr, flush=True)
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
                    raise ServerFailed(f"client failed on {call} (status {done.returncode})")
                figures = json.loads(done.stdout)
                figures["client"] = shlex.join(client)
                result["calls"][call] = figures
        except BaseException:
            stop(proc)
            raise
        result["exit_status"] = status = stop(proc)
        if status != 0:
            print(f"  note: {server.name} exited with status {status}", file=sys.stderr)
    except (ServerFailed, OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise ServerFailed(f"{server.name}: {exc}{_log_tail(log)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


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
    args = parser.parse_args(argv)
    names = {s.name for s in SERVERS}
    args.server_names = [n for n in args.servers.split(",") if n]
    if unknown := set(args.server_names) - names:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    args.call_names = [c for c in args.calls.split(",") if c]
    if unknown := set(args.call_names) - set(CALLS):
        parser.error(f"unknown call(s): {', '.join(sorted(unknown))}")
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
    results: dict[str, Any] = {}
    for server in servers:
        if server.name in errors:
            results[server.name] = {"error": errors[server.name], "runs": runs[server.name]}
        else:
            results[server.name] = summarize(runs[server.name], plan[server.name])
    failed = bool(errors)

    table, ratios = build_table(results, servers, plan, settings.inflight)
    print(table)
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
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.json}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
