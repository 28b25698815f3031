"""The report: every table, the targets, the markdown document, the JSON file and the plots.

Nothing here measures anything: each function turns the figures the harness gathered (the
medians over the rounds, see ``bench/__main__.py``) into a markdown table.  The plots need
matplotlib (``pip install -e '.[bench]'``); without it the run says so and goes on.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import profile
from .calls import BASELINE_CALL, CLIENT_KINDS, CLIENT_THREAD_CALLS, REFERENCE_CLIENT

FLOOR: Final = "floor"
UNDER_TEST: Final = "sandboxd"
GRPC: Final = "grpc"
STATUS: Final = "Controller/Status"
PING: Final = "Controller/Ping"
VERSION: Final = "Runtime/Version"
#: The full-stack clients shown beside the lean one in the round-trip table.
SYNC_CLIENT: Final = "sync-model"
ASYNC_CLIENT: Final = "trio-model"
#: The throughput points (connections, in flight on each): in flight on one connection,
#: then connections of 64 each.
INFLIGHT_POINTS: Final = ((1, 1), (1, 16), (1, 64), (1, 256))
CONNECTION_POINTS: Final = ((4, 64), (16, 64))
THROUGHPUT_POINTS: Final = (*INFLIGHT_POINTS, *CONNECTION_POINTS)
LIFECYCLE_POINTS: Final = (("sim", 1), ("sim", 64), ("process", 1), ("process", 64))
PROFILED_POINT: Final = ("sim", 64)


# --- figures --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return values[0] if len(set(values)) == 1 else statistics.median(values)


def ratio(mine: float | None, reference: float | None) -> float | None:
    return mine / reference if mine is not None and reference else None


def fmt(value: float | None, kind: str = "latency") -> str:
    """A figure for a table: ``throughput`` as an integer, ``latency`` with one decimal."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if kind == "throughput" else f"{value:,.1f}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def num(tree: Any, *path: str) -> float | None:
    """The number at ``path`` in nested dicts, or None."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return float(tree) if isinstance(tree, int | float) else None


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


#: A JSON array of two numbers spread over four lines by ``indent``: ``cdf_us``'s points.
_PAIR: Final = re.compile(r"\[\s*\n\s*(-?[0-9.eE+-]+),\s*\n\s*(-?[0-9.eE+-]+)\s*\n\s*\]")


def dumps_json(value: Any) -> str:
    """``value`` as indented JSON, with each pair of numbers (a CDF point) on one line."""
    return _PAIR.sub(r"[\1, \2]", json.dumps(value, indent=2)) + "\n"


# --- the server table -----------------------------------------------------------------------

SERVER_ROWS: Final = (
    ("seq p50 (us)", "seq", "p50_us", "latency"),
    ("seq p99 (us)", "seq", "p99_us", "latency"),
    ("{inflight}-in-flight (req/s)", "pipelined", "rps", "throughput"),
)


def server_table(
    results: dict[str, Any], plan: dict[str, list[str]], inflight: int
) -> tuple[str, dict[str, dict[str, float | None]]]:
    """Every server's column (sandboxd's: one per call), and sandboxd / floor per call."""
    columns = [
        (f"{name} {call}" if name == UNDER_TEST else name, name, call)
        for name, calls in plan.items()
        for call in calls
    ]
    under_test = plan.get(UNDER_TEST, []) if FLOOR in plan else []
    ratio_titles = {
        call: "sandboxd/floor" if len(under_test) == 1 else f"sandboxd/floor ({call})"
        for call in under_test
    }
    ratios: dict[str, dict[str, float | None]] = {call: {} for call in under_test}
    rows = []
    for label, part, key, kind in SERVER_ROWS:
        cells = [label.format(inflight=inflight)]
        for _, name, call in columns:
            failed = "error" in results.get(name, {})
            cells.append(
                "FAILED" if failed else fmt(num(results, name, "calls", call, part, key), kind)
            )
        floor = num(results, FLOOR, "calls", BASELINE_CALL, part, key)
        for call in under_test:
            found = ratio(num(results, UNDER_TEST, "calls", call, part, key), floor)
            ratios[call][f"{part}.{key}"] = found
            cells.append(fmt_ratio(found))
        rows.append(cells)
    header = ["measurement", *(c[0] for c in columns), *ratio_titles.values()]
    return md_table(header, rows), ratios


# --- the clients tables ---------------------------------------------------------------------


def threaded_kinds(threads: int) -> dict[str, int]:
    """The threaded measurements: 1 thread (the reference) and ``threads``, by name."""
    return {f"sync-threads x{n}": n for n in sorted({1, threads})}


def clients_tables(
    summary: dict[str, Any], calls: Sequence[str], threads: int
) -> tuple[str, dict[str, Any]]:
    """The clients' two tables, and the ratios they show."""
    ratios: dict[str, Any] = {"vs_lean": {}, "threads_vs_one_thread": {}}
    rows = []
    for call in calls:
        ratios["vs_lean"][call] = {}
        for kind, title in CLIENT_KINDS.items():
            if "error" in summary[call][kind]:
                rows.append([title, call, "FAILED", "FAILED", "—", "—", "—"])
                ratios["vs_lean"][call][kind] = None
                continue
            mine = summary[call][kind]
            pair = {
                key: ratio(num(mine, key), num(summary, call, REFERENCE_CLIENT, key))
                for key in ("p50_us", "p99_us")
            }
            ratios["vs_lean"][call][kind] = pair
            rows.append(
                [
                    *(title, call, fmt(num(mine, "p50_us")), fmt(num(mine, "p99_us"))),
                    *(fmt_ratio(pair["p50_us"]), fmt_ratio(pair["p99_us"])),
                    fmt(num(mine, "cpu_us")),
                ]
            )
    header = ["client", "call", "p50 (us)", "p99 (us)", "p50 vs lean", "p99 vs lean"]
    sequential = md_table([*header, "client CPU (us/call)"], rows)
    rows = []
    kinds = threaded_kinds(threads)
    for call in calls:
        if call not in CLIENT_THREAD_CALLS:
            continue
        ratios["threads_vs_one_thread"][call] = None
        one = num(summary, call, next(iter(kinds)), "calls_per_s")
        for kind, n in kinds.items():
            mine = summary[call][kind]
            if "error" in mine:
                rows.append([f"SyncController x{n}", call, "FAILED", *["—"] * 5])
                continue
            rate = num(mine, "calls_per_s")
            if n == threads:
                ratios["threads_vs_one_thread"][call] = ratio(rate, one)
            low, high = num(mine, "per_thread_min"), num(mine, "per_thread_max")
            spread = "—" if low is None or high is None else f"{low:,.0f}-{high:,.0f}"
            rows.append(
                [
                    *(f"SyncController x{n}", call, fmt(rate, "throughput")),
                    *(fmt_ratio(ratio(rate, one)), fmt(num(mine, "p50_us"))),
                    *(fmt(num(mine, "p99_us")), spread, fmt(num(mine, "cpu_us"))),
                ]
            )
    header = ["threads sharing one SyncController", "call", "calls/s", "vs 1 thread"]
    header += ["p50 (us)", "p99 (us)", "calls per thread, min-max", "client CPU (us/call)"]
    return sequential + "\n\n" + md_table(header, rows), ratios


# --- sequential round trips -----------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One sequential measurement: what the table and the CDF plot call it, where it is."""

    label: str
    server: str
    call: str
    client: str  # "lean", a CLIENT_KINDS key, "grpc" or "grpc.aio"


def round_trip_series(calls: Sequence[str], client_calls: Sequence[str]) -> list[Series]:
    """Every sequential measurement of the run, floor first."""
    out = [Series("floor (lean client)", FLOOR, BASELINE_CALL, "lean")]
    for call in (VERSION, STATUS, PING):
        if call in calls:
            out.append(Series(f"sandboxd {call} (lean client)", UNDER_TEST, call, "lean"))
        if call in client_calls:
            for kind in (SYNC_CLIENT, ASYNC_CLIENT):
                label = f"sandboxd {call} ({CLIENT_KINDS[kind]})"
                out.append(Series(label, UNDER_TEST, call, kind))
    out.append(Series("grpc Version (blocking channel)", GRPC, BASELINE_CALL, "grpc"))
    out.append(Series("grpc Version (grpc.aio channel)", GRPC, BASELINE_CALL, "grpc.aio"))
    return out


def _rounds(series: Series, results: dict[str, Any], clients: dict[str, Any]) -> list[Any]:
    """The sequential figures of ``series``, one dict per round."""
    if series.client in ("lean", "grpc", "grpc.aio"):
        part = "seq_aio" if series.client == "grpc.aio" else "seq"
        runs = results.get(series.server, {}).get("runs", [])
        found = [run.get("calls", {}).get(series.call, {}).get(part) for run in runs]
    else:
        key = f"{series.client} {series.call}"
        found = [run["measurements"].get(key, {}).get("seq") for run in clients.get("runs", [])]
    return [r for r in found if r is not None]


def series_figure(
    series: Series, results: dict[str, Any], clients: dict[str, Any], key: str
) -> float | None:
    """The median over the rounds of ``key`` (``p50_us``, ...) of ``series``."""
    values = [v for r in _rounds(series, results, clients) if (v := num(r, key))]
    return median(values) if values else None


def series_cdf(
    series: Series, results: dict[str, Any], clients: dict[str, Any]
) -> list[tuple[float, float]] | None:
    """``(us, quantile)`` points of the round whose p50 is the median (None if unmeasured)."""
    rounds = [r for r in _rounds(series, results, clients) if r.get("cdf_us")]
    if not rounds:
        return None
    middle = median([float(r["p50_us"]) for r in rounds])
    chosen = min(rounds, key=lambda r: abs(float(r["p50_us"]) - middle))
    return [(float(us), float(q) / 100) for q, us in chosen["cdf_us"]]


def round_trip_table(
    series: Sequence[Series], results: dict[str, Any], clients: dict[str, Any]
) -> str:
    floor = series_figure(series[0], results, clients, "p50_us")
    rows = []
    for s in series:
        p50 = series_figure(s, results, clients, "p50_us")
        if p50 is None and s.server == GRPC and GRPC not in results:
            continue  # grpcio not installed, or not asked for
        p99 = series_figure(s, results, clients, "p99_us")
        rows.append([s.label, fmt(p50), fmt(p99), fmt_ratio(ratio(p50, floor))])
    return md_table(["sequential round trip", "p50 (us)", "p99 (us)", "p50 vs floor"], rows)


# --- the load sections ----------------------------------------------------------------------


def throughput_table(summary: dict[str, Any], errors: dict[str, str]) -> str:
    """Requests/s of the floor and sandboxd's Status at every point, and their ratio."""
    rows = []
    for c, k in THROUGHPUT_POINTS:
        key = f"{c}x{k}"
        rps = {
            n: None if n in errors else num(summary, n, key, "rps") for n in (FLOOR, UNDER_TEST)
        }
        cells = [f"{c} x {k}", str(c * k)]
        cells += ["FAILED" if n in errors else fmt(rps[n], "throughput") for n in rps]
        cells.append(fmt_ratio(ratio(rps[UNDER_TEST], rps[FLOOR])))
        for name, figure in (
            (FLOOR, "server_cpu"),
            (UNDER_TEST, "server_cpu"),
            (UNDER_TEST, "client_cpu"),
        ):
            cpu = num(summary, name, key, figure)
            cells.append("—" if cpu is None else f"{cpu:.2f}")
        rows.append(cells)
    header = ["connections x in flight", "total in flight", "floor (req/s)"]
    header += [f"sandboxd {STATUS} (req/s)", "sandboxd/floor", "floor CPU", "sandboxd CPU"]
    return md_table([*header, "client CPU (sandboxd)"], rows)


def lifecycle_table(result: dict[str, Any]) -> str:
    """The daemon's lifecycle points, then the embedded Controller's."""

    def row(label: str, n: int, point: dict[str, Any], calls: float, cpus: list[str]) -> list[str]:
        lat = point["lifecycle_us"]
        return [
            label,
            "1 (sequential)" if n == 1 else str(n),
            fmt(point["lifecycles_per_s"], "throughput"),
            fmt(calls, "throughput"),
            f"{lat['p50_us'] / 1000:,.2f}",
            f"{lat['p99_us'] / 1000:,.2f}",
            *cpus,
        ]

    rows = []
    for sandboxer, n in LIFECYCLE_POINTS:
        point = result.get("points", {}).get(f"{sandboxer}:{n}", {})
        label = f"{sandboxer} ({point['command']})" if point.get("command") else sandboxer
        if "error" in point or "lifecycles_per_s" not in point:
            rows.append([label, "1 (sequential)" if n == 1 else str(n), "FAILED", *["—"] * 5])
            continue
        cpus = [f"{point['server_cpu']:.2f}", f"{point['client_cpu']:.2f}"]
        rows.append(row(label, n, point, point["calls_per_s"], cpus))
    embedded = result.get("embedded", {})
    for point in embedded.get("points", []):
        kept = "state store" if point["store"] else "in memory"
        label = f"sim, embedded ({kept}; no socket)"
        calls = point["lifecycles_per_s"] * 5
        rows.append(row(label, point["concurrency"], point, calls, ["—", f"{point['cpu']:.2f}"]))
    if "error" in embedded:
        rows.append(["sim, embedded", "—", "FAILED", *["—"] * 5])
    header = ["sandboxer", "concurrent lifecycles", "lifecycles/s", "calls/s"]
    header += ["lifecycle p50 (ms)", "lifecycle p99 (ms)", "daemon CPU", "client CPU"]
    return md_table(header, rows)


def scaling_table(result: dict[str, Any]) -> str:
    points = result.get("points", [])
    base = points[0]["status"]["p50_us"] if points else None
    rows = []
    for point in points:
        per, marginal = point.get("bytes_per_sandbox"), point.get("marginal_bytes_per_sandbox")
        rows.append(
            [
                f"{point['idle']:,}",
                fmt(point.get("creates_per_s"), "throughput"),
                fmt(point["status"]["p50_us"]),
                fmt(point["status"]["p99_us"]),
                fmt_ratio(ratio(point["status"]["p50_us"], base)),
                f"{point['rss_bytes'] / 2**20:,.1f}",
                "—" if per is None else f"{per:,.0f}",
                "—" if marginal is None else f"{marginal:,.0f}",
            ]
        )
    header = ["idle sandboxes", "creates/s (to get there)", f"{STATUS} p50 (us)", "p99 (us)"]
    header += ["p50 vs 0", "daemon RSS (MiB)", "bytes/sandbox", "marginal bytes/sandbox"]
    return md_table(header, rows)


def profile_table(spy: dict[str, Any]) -> str:
    """The py-spy summary of the daemon under the profiled lifecycle point."""
    spied = spy["summary"]
    threads = spied["threads"]
    rate = spy["point"].get("lifecycles_per_s", 0)
    text = (
        f"py-spy, {spied['samples']} samples of the daemon during "
        f"{PROFILED_POINT[0]} x{PROFILED_POINT[1]} ({rate:,.0f} lifecycles/s while profiled; "
        f"raw: {spy['raw']}): main thread {threads.get('main', 0)}, worker threads "
        f"{threads.get('other', 0)} (SQLite writes, and idle workers waiting for a job).  "
        "The main thread (the trio run loop):\n\n"
    )
    return (
        text + profile.table(spied, "self_main") + "\n\n" + profile.table(spied, "inclusive_main")
    )


# --- targets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    ratio: float | None
    met: bool | None  # None: not measured

    def row(self) -> list[str]:
        verdict = "not measured" if self.met is None else "met" if self.met else "NOT MET"
        return [
            self.name,
            self.goal,
            self.measured,
            "—" if self.ratio is None else f"{self.ratio:.2f}",
            verdict,
        ]


def _target(
    name: str,
    goal: str,
    mine: float | None,
    reference: float | None,
    test: Callable[[float], bool],
    measured: Callable[[float, float], str],
) -> Target:
    if mine is None or not reference:
        return Target(name, goal, "not measured", None, None)
    return Target(name, goal, measured(mine, reference), mine / reference, test(mine / reference))


def _vs_floor(short: str, mine: float, floor: float) -> str:
    return f"{short} {mine:,.1f} us, floor {floor:,.1f} us (lean client)"


def targets(
    results: dict[str, Any],
    clients: dict[str, Any],
    throughput: dict[str, Any],
    lifecycles: dict[str, Any],
    scaling: dict[str, Any],
) -> list[Target]:
    """The issue's targets, each with the measured figures and the ratio the goal applies to."""
    floor_p50 = num(results, FLOOR, "calls", BASELINE_CALL, "seq", "p50_us")
    out = [
        _target(
            f"{short} sequential p50 vs the floor",
            "<= 1.3x",
            num(results, UNDER_TEST, "calls", call, "seq", "p50_us"),
            floor_p50,
            lambda r: r <= 1.3,
            functools.partial(_vs_floor, short),
        )
        for call, short in ((STATUS, "Status"), (PING, "Ping"))
    ]
    out.append(
        _target(
            "Status at 64 in flight (1 connection) vs the floor",
            ">= 0.4x the floor's req/s",
            num(throughput, "summary", UNDER_TEST, "1x64", "rps"),
            num(throughput, "summary", FLOOR, "1x64", "rps"),
            lambda r: r >= 0.4,
            lambda m, f: f"Status {m:,.0f} req/s, floor {f:,.0f} req/s",
        )
    )
    grpc_aio = num(results, GRPC, "calls", BASELINE_CALL, "seq_aio", "p50_us")
    lean = num(results, UNDER_TEST, "calls", STATUS, "seq", "p50_us")
    lean_note = (
        f"; lean client {lean:,.1f} us: {grpc_aio / lean:.1f}x" if lean and grpc_aio else ""
    )
    out.append(
        _target(
            "Status p50 vs grpc.aio unary p50 (async client, both)",
            ">= 5x lower",
            grpc_aio,
            num(clients, "summary", STATUS, ASYNC_CLIENT, "p50_us"),
            lambda r: r >= 5,
            lambda g, m: f"grpc.aio {g:,.1f} us, RemoteController Status {m:,.1f} us{lean_note}",
        )
    )
    points = scaling.get("points") or []
    if points:
        first, last = points[0], points[-1]
        n = last["idle"]
        out.append(
            _target(
                f"Status p50 with {n:,} idle sandboxes vs none",
                "<= 1.1x",
                num(last, "status", "p50_us"),
                num(first, "status", "p50_us") if first["idle"] == 0 else None,
                lambda r: r <= 1.1,
                lambda m, z: f"{m:,.1f} us with {n:,}, {z:,.1f} us with 0",
            )
        )
        out.append(
            _target(
                f"daemon memory per idle sandbox (sim, {n:,})",
                "<= 6 KiB",
                num(last, "bytes_per_sandbox"),
                6144.0,
                lambda r: r <= 1.0,
                lambda m, _: f"{m:,.0f} bytes ({m / 1024:.2f} KiB)",
            )
        )
    else:
        out.append(Target("Status p50 with idle sandboxes vs none", "<= 1.1x", "—", None, None))
        out.append(Target("daemon memory per idle sandbox (sim)", "<= 6 KiB", "—", None, None))
    out.append(
        _target(
            "full lifecycles/s, sim, 64 concurrent",
            ">= 3,000/s",
            num(lifecycles, "points", "sim:64", "lifecycles_per_s"),
            3000.0,
            lambda r: r >= 1.0,
            lambda m, _: f"{m:,.0f} lifecycles/s",
        )
    )
    return out


def targets_table(found: Sequence[Target]) -> str:
    return md_table(["target", "goal", "measured", "ratio", "result"], [t.row() for t in found])


# --- the markdown document ------------------------------------------------------------------


def markdown(report: dict[str, Any], tables: list[tuple[str, str]], plots: list[Path]) -> str:
    """The run as a markdown document: how it was run, then every table and plot."""
    before = ", ".join(f"{x:.2f}" for x in report["load_average_before"])
    after = ", ".join(f"{x:.2f}" for x in report["load_average_after"])
    lines = [
        "# sandboxd benchmark",
        "",
        f"* command: `{report['command']}` (in `{report['cwd']}`)",
        f"* time: {report['time']}, {report['elapsed_s']:.0f} s; "
        f"{'quick' if report['quick'] else 'full'} run",
        f"* machine: {report['cpu_count']} CPUs, {report['platform']}; "
        f"Python {report['python'].split()[0]} ({report['implementation']})",
        f"* load average (1, 5, 15 min) before: {before}; after: {after}",
        "",
    ]
    for title, table in tables:
        lines += [f"## {title}", "", table, ""]
    if plots:
        lines += ["## Plots", "", *(f"![{path.stem}]({path.name})" for path in plots), ""]
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------


def make_plots(
    stem: Path,
    series: Sequence[Series],
    results: dict[str, Any],
    clients: dict[str, Any],
    throughput: dict[str, Any],
    scaling: dict[str, Any],
) -> list[Path]:
    """``<stem>-latency-cdf.png``, ``-throughput.png``, ``-scaling.png``, those there is data
    for; their paths (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print(
            "matplotlib not installed: no plots (pip install -e '.[bench]' to get them)",
            file=sys.stderr,
        )
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, draw, args in (
        ("latency-cdf", _cdf, (series, results, clients)),
        ("throughput", _throughput, (throughput.get("summary") or {},)),
        ("scaling", _scaling, (scaling.get("points") or [],)),
    ):
        path = stem.with_name(f"{stem.name}-{name}.png")
        try:
            fig = draw(plt, *args)
            if fig is not None:
                fig.tight_layout()
                fig.savefig(path, dpi=110)
                plt.close(fig)
                written.append(path)
        except Exception as exc:  # a plot is a convenience: never fail the run for it
            print(f"plot {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return written


def _cdf(
    plt: Any, series: Sequence[Series], results: dict[str, Any], clients: dict[str, Any]
) -> Any:
    """The CDF of the sequential round trips (the round with the median p50), log x axis."""
    drawn = [
        (s, points)
        for s in series
        if s.client != "grpc" and (s.client != SYNC_CLIENT or s.call == STATUS)
        if (points := series_cdf(s, results, clients))
    ]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for s, points in drawn:
        style = "-" if s.client in ("lean", "grpc.aio") else "--"
        xs, ys = zip(*points, strict=True)
        ax.step(xs, ys, style, where="post", label=s.label, linewidth=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("round trip (us, log scale)")
    ax.set_ylabel("fraction of calls")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Sequential round-trip latency (CDF; the round with the median p50)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _throughput(plt: Any, summary: dict[str, Any]) -> Any:
    """Requests/s against in flight on one connection (left) and connections (right)."""
    if not summary:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    by_conn = ((1, 64), *CONNECTION_POINTS)
    for name, label in ((FLOOR, FLOOR), (UNDER_TEST, f"sandboxd {STATUS}")):
        figures = summary.get(name) or {}
        for ax, points, axis in ((left, INFLIGHT_POINTS, 1), (right, by_conn, 0)):
            xy = [(p[axis], rps) for p in points if (rps := num(figures, f"{p[0]}x{p[1]}", "rps"))]
            if xy:
                ax.plot(*zip(*xy, strict=True), "o-", label=label)
    for ax, points, axis, title in (
        (left, INFLIGHT_POINTS, 1, "requests in flight (one connection)"),
        (right, by_conn, 0, "connections (64 in flight on each)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks([p[axis] for p in points], [str(p[axis]) for p in points])
        ax.set_xlabel(title)
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput against concurrency (median over the rounds)")
    return fig


def _scaling(plt: Any, points: list[dict[str, Any]]) -> Any:
    """Daemon RSS (left) and Status p50/p90 (right) against idle sandboxes."""
    if not points:
        return None
    counts = [p["idle"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(counts, [p["rss_bytes"] / 2**20 for p in points], "o-", color="tab:red")
    left.set_ylabel("daemon RSS (MiB)")
    left.set_title("daemon memory")
    right.plot(counts, [p["status"]["p50_us"] for p in points], "o-", label="p50")
    right.plot(counts, [p["status"]["p90_us"] for p in points], "s--", label="p90")
    right.set_ylabel("sequential round trip (us)")
    right.set_title(f"{STATUS} latency")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xlabel("idle sandboxes (sim, created, not started)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Scaling with idle sandboxes")
    return fig
