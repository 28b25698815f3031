"""The load sections of a run: throughput against concurrency, lifecycles/s, idle scaling.

Each starts its own server(s) through :mod:`bench.harness` and runs its client
(:mod:`bench.throughput`, :mod:`bench.lifecycle`, :mod:`bench.scaling`) in a process of its
own; this module turns their JSON into a summary and a markdown table.  See bench/README.md.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .harness import (
    Job,
    ServerFailed,
    fmt,
    fmt_ratio,
    md_table,
    median,
    ratio,
    run_jobs,
    run_kept_going,
    serving,
)
from .lifecycle import format_points as format_lifecycle_points
from .throughput import format_points as format_throughput_points

STATUS: Final = "Controller/Status"
#: The throughput points: (connections, in flight on each).  The first four vary the requests
#: in flight on one connection, the last three (1x64 shared) the connections, 64 each.
THROUGHPUT_POINTS: Final = ((1, 1), (1, 16), (1, 64), (1, 256), (4, 64), (16, 64))
INFLIGHT_POINTS: Final = ((1, 1), (1, 16), (1, 64), (1, 256))
CONNECTION_POINTS: Final = ((1, 64), (4, 64), (16, 64))
LIFECYCLE_POINTS: Final = (("sim", 1), ("sim", 64), ("process", 1), ("process", 64))
PROFILED_POINT: Final = ("sim", 64)
#: The floor and sandboxd's Status, in that order, in each round of the throughput section.
THROUGHPUT_SERVERS: Final = ("floor", "sandboxd")


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


FULL_LOAD: Final = LoadSettings(
    throughput_warmup=0.15,
    throughput_duration=0.5,
    lifecycle_warmup=0.3,
    lifecycle_duration=1.5,
    counts=(0, 1000, 10000, 50000),
    scaling_seq=3000,
    scaling_seq_warmup=300,
    profile_duration=5.0,
)
QUICK_LOAD: Final = LoadSettings(
    throughput_warmup=0.1,
    throughput_duration=0.25,
    lifecycle_warmup=0.1,
    lifecycle_duration=0.6,
    counts=(0, 1000, 5000),
    scaling_seq=300,
    scaling_seq_warmup=50,
    profile_duration=2.0,
)


# --- throughput ----------------------------------------------------------------------------


def run_throughput(
    name: str, command: Sequence[str], call: str, settings: LoadSettings
) -> dict[str, Any]:
    """One round of the throughput points of ``call`` on the server ``command``."""

    def jobs(path: str) -> list[Job]:
        return [
            Job(
                "sweep",
                f"throughput {call} {format_throughput_points(THROUGHPUT_POINTS)}",
                (
                    sys.executable,
                    "-m",
                    "bench.throughput",
                    "--socket",
                    path,
                    f"--call={call}",
                    f"--points={format_throughput_points(THROUGHPUT_POINTS)}",
                    f"--warmup={settings.throughput_warmup}",
                    f"--duration={settings.throughput_duration}",
                ),
            )
        ]

    return run_jobs(f"throughput-{name}", command, jobs)


def summarize_throughput(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per server and point ``CxK``, the median over the rounds of each figure."""
    summary: dict[str, Any] = {}
    for name, rounds in runs.items():
        per_point: dict[str, dict[str, list[float]]] = {}
        for run in rounds:
            for point in run["calls"]["sweep"]["points"]:
                key = f"{point['connections']}x{point['inflight']}"
                for figure, value in point.items():
                    if isinstance(value, int | float):
                        per_point.setdefault(key, {}).setdefault(figure, []).append(value)
        summary[name] = {
            key: {figure: median(values) for figure, values in figures.items()}
            for key, figures in per_point.items()
        }
    return summary


def throughput_figure(summary: dict[str, Any], server: str, point: str, key: str) -> float | None:
    try:
        return float(summary[server][point][key])
    except (KeyError, TypeError):
        return None


def throughput_table(summary: dict[str, Any], errors: dict[str, str]) -> str:
    """Requests/s of the floor and sandboxd's Status at every point, and their ratio."""
    rows = []
    for c, k in THROUGHPUT_POINTS:
        key = f"{c}x{k}"
        cells = [f"{c} x {k}", str(c * k)]
        figures: dict[str, float | None] = {}
        for name in THROUGHPUT_SERVERS:
            if name in errors:
                cells.append("FAILED")
                figures[name] = None
                continue
            figures[name] = throughput_figure(summary, name, key, "rps")
            cells.append(fmt(figures[name], "throughput"))
        cells.append(fmt_ratio(ratio(figures["sandboxd"], figures["floor"])))
        for name in THROUGHPUT_SERVERS:
            cpu = throughput_figure(summary, name, key, "server_cpu")
            cells.append("—" if cpu is None else f"{cpu:.2f}")
        client = throughput_figure(summary, "sandboxd", key, "client_cpu")
        cells.append("—" if client is None else f"{client:.2f}")
        rows.append(cells)
    header = [
        "connections x in flight",
        "total in flight",
        "floor (req/s)",
        f"sandboxd {STATUS} (req/s)",
        "sandboxd/floor",
        "floor CPU",
        "sandboxd CPU",
        "client CPU (sandboxd)",
    ]
    return md_table(header, rows)


# --- lifecycles ----------------------------------------------------------------------------


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _profiled(
    proc: subprocess.Popen[bytes], job: Job, py_spy: str, out: Path, server_pid: int
) -> dict[str, Any]:
    """Run ``job`` while py-spy samples the daemon; py-spy's raw output goes to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [py_spy, "record", "-o", str(out), "-f", "raw", "--pid", str(server_pid)]
    spy = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        time.sleep(0.5)  # py-spy attaches
        if spy.poll() is not None:
            error = spy.stderr.read().decode(errors="replace").strip() if spy.stderr else ""
            return {"error": f"py-spy exited with status {spy.returncode}: {error}"}
        figures = run_kept_going(proc, job, "lifecycles")
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    figures["py_spy"] = {"command": " ".join(argv), "exit_status": spy.returncode}
    if not out.exists():
        figures["py_spy"]["error"] = "py-spy wrote no profile"
    return figures


def run_lifecycles(
    command: Sequence[str], settings: LoadSettings, profile: Path | None
) -> dict[str, Any]:
    """Every lifecycle point, one after the other in one client process, on one daemon;
    then, with ``profile``, the sim x64 point again under py-spy (not counted)."""
    from .procstat import server_pid

    with serving("lifecycles", command) as served:
        result = served.result
        result["points"] = points = {}
        base = (sys.executable, "-m", "bench.lifecycle", "--socket", served.path)
        every = format_lifecycle_points(LIFECYCLE_POINTS)
        job = Job(
            "lifecycles",
            f"lifecycles {every}",
            (
                *base,
                f"--points={every}",
                f"--warmup={settings.lifecycle_warmup}",
                f"--duration={settings.lifecycle_duration}",
            ),
        )
        figures = run_kept_going(served.proc, job, "lifecycles")
        result["client"] = figures.get("client")
        for point in figures.get("points") or []:
            points[f"{point['sandboxer']}:{point['concurrency']}"] = point
        for sandboxer, n in LIFECYCLE_POINTS:
            key = format_lifecycle_points([(sandboxer, n)])
            if key not in points:  # the client failed before measuring it
                points[key] = {"error": figures.get("error", "not measured")}
        if profile is not None:
            spy = _py_spy()
            key = format_lifecycle_points([PROFILED_POINT])
            if spy is None:
                result["profile"] = {"error": "py-spy not found"}
            else:
                job = Job(
                    key,
                    f"lifecycles {key} under py-spy ({settings.profile_duration:g} s)",
                    (
                        *base,
                        f"--points={key}",
                        "--warmup=0.2",
                        f"--duration={settings.profile_duration}",
                    ),
                )
                figures = _profiled(served.proc, job, spy, profile, server_pid(served.path))
                result["profile"] = {
                    "raw": str(profile),
                    **figures.get("py_spy", {}),
                    "point": (figures.get("points") or [{}])[0],
                }
                if "error" in figures:
                    result["profile"]["error"] = figures["error"]
    result["embedded"] = run_embedded(settings)
    return result


def run_embedded(settings: LoadSettings) -> dict[str, Any]:
    """The sim points again with the Controller embedded in the client (no socket, no
    daemon), with a state store and without: what the RPC layer and client add."""
    argv = (
        sys.executable,
        "-m",
        "bench.embedded",
        "--points=1,64",
        f"--warmup={settings.lifecycle_warmup}",
        f"--duration={settings.lifecycle_duration}",
    )
    print("lifecycles: embedded Controller (no socket): measuring ...", file=sys.stderr)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip() or f"exit status {proc.returncode}"}
    points: dict[str, Any] = json.loads(proc.stdout)
    return points


def lifecycle_table(result: dict[str, Any]) -> str:
    rows = []
    for sandboxer, n in LIFECYCLE_POINTS:
        key = format_lifecycle_points([(sandboxer, n)])
        point = result.get("points", {}).get(key, {})
        command = point.get("command")
        label = [f"{sandboxer} ({command})" if command else sandboxer]
        label.append("1 (sequential)" if n == 1 else str(n))
        if "error" in point or "lifecycles_per_s" not in point:
            rows.append([*label, "FAILED", "—", "—", "—", "—", "—"])
            continue
        lat = point["lifecycle_us"]
        rows.append(
            [
                *label,
                fmt(point["lifecycles_per_s"], "throughput"),
                fmt(point["calls_per_s"], "throughput"),
                f"{lat['p50_us'] / 1000:,.2f}",
                f"{lat['p99_us'] / 1000:,.2f}",
                f"{point['server_cpu']:.2f}",
                f"{point['client_cpu']:.2f}",
            ]
        )
    header = [
        "sandboxer",
        "concurrent lifecycles",
        "lifecycles/s",
        "calls/s",
        "lifecycle p50 (ms)",
        "lifecycle p99 (ms)",
        "daemon CPU",
        "client CPU",
    ]
    embedded = result.get("embedded", {})
    for point in embedded.get("points", []):
        n = point["concurrency"]
        kept = "state store" if point["store"] else "in memory"
        lat = point["lifecycle_us"]
        rows.append(
            [
                f"sim, embedded ({kept}; no socket)",
                "1 (sequential)" if n == 1 else str(n),
                fmt(point["lifecycles_per_s"], "throughput"),
                fmt(point["lifecycles_per_s"] * 5, "throughput"),
                f"{lat['p50_us'] / 1000:,.2f}",
                f"{lat['p99_us'] / 1000:,.2f}",
                "—",
                f"{point['cpu']:.2f}",
            ]
        )
    if "error" in embedded:
        rows.append(["sim, embedded", "—", "FAILED", "—", "—", "—", "—", "—"])
    return md_table(header, rows)


def lifecycle_failed(result: dict[str, Any]) -> bool:
    points = result.get("points", {})
    return len(points) < len(LIFECYCLE_POINTS) or any(
        "error" in p or "lifecycles_per_s" not in p for p in points.values()
    )


# --- scaling -------------------------------------------------------------------------------


def run_scaling(command: Sequence[str], settings: LoadSettings) -> dict[str, Any]:
    counts = ",".join(map(str, settings.counts))

    def jobs(path: str) -> list[Job]:
        return [
            Job(
                "scaling",
                f"scaling {STATUS} with {counts} idle sandboxes",
                (
                    sys.executable,
                    "-m",
                    "bench.scaling",
                    "--socket",
                    path,
                    f"--counts={counts}",
                    f"--seq={settings.scaling_seq}",
                    f"--seq-warmup={settings.scaling_seq_warmup}",
                ),
            )
        ]

    result = run_jobs("scaling", command, jobs)
    return {**result, **result.pop("calls")["scaling"]}


def scaling_table(result: dict[str, Any]) -> str:
    rows = []
    points = result.get("points", [])
    base = points[0]["status"]["p50_us"] if points else None
    for point in points:
        per = point.get("bytes_per_sandbox")
        marginal = point.get("marginal_bytes_per_sandbox")
        rows.append(
            [
                f"{point['idle']:,}",
                fmt(point.get("creates_per_s"), "throughput"),
                fmt(point["status"]["p50_us"], "latency"),
                fmt(point["status"]["p99_us"], "latency"),
                fmt_ratio(ratio(point["status"]["p50_us"], base)),
                f"{point['rss_bytes'] / 2**20:,.1f}",
                "—" if per is None else f"{per:,.0f}",
                "—" if marginal is None else f"{marginal:,.0f}",
            ]
        )
    header = [
        "idle sandboxes",
        "creates/s (to get there)",
        f"{STATUS} p50 (us)",
        "p99 (us)",
        "p50 vs 0",
        "daemon RSS (MiB)",
        "bytes/sandbox",
        "marginal bytes/sandbox",
    ]
    return md_table(header, rows)


# --- one section, failures kept --------------------------------------------------------------


def attempt(what: str, errors: dict[str, str], run: Any, *args: Any) -> Any:
    """``run(*args)``, or None with the failure in ``errors[what]`` (and on stderr)."""
    try:
        return run(*args)
    except ServerFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        errors[what] = str(exc)
        return None
