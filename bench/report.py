"""The report: medians over the rounds, every table, the targets, the markdown, JSON and plots.

Nothing here measures anything.  :func:`publish` takes what the harness gathered
(``bench/__main__.py``: every round's raw figures, and the medians of :func:`medians`), adds
the tables, ratios and targets to it, prints the tables and writes the JSON, the markdown
and the plots.  The plots need matplotlib (``pip install -e '.[bench]'``); without it the
run says so and goes on.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
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
#: The points of the logging section (bench/logcost.py).
LOGGING_POINTS: Final = (("sim", 1), ("sim", 64))
PROFILED_POINT: Final = ("sim", 64)


# --- figures --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return values[0] if len(set(values)) == 1 else statistics.median(values)


def medians(rounds: Sequence[Any]) -> Any:
    """The median over ``rounds`` of every number in them, nested dicts kept as they are
    (keys of the first round); lists and strings are left out."""
    first = rounds[0]
    if isinstance(first, dict):
        out = {k: medians([r[k] for r in rounds]) for k, v in first.items() if _has_number(v)}
        return out
    return median(rounds)


def _has_number(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_number(v) for v in value.values())
    return isinstance(value, int | float) and not isinstance(value, bool)


def threaded_kinds(threads: int) -> dict[str, int]:
    """The threaded measurements: 1 thread (the reference) and ``threads``, by name."""
    return {f"sync-threads x{n}": n for n in sorted({1, threads})}


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


# --- the tables -----------------------------------------------------------------------------

SERVER_ROWS: Final = (
    ("seq p50 (us)", "seq", "p50_us", "latency"),
    ("seq p99 (us)", "seq", "p99_us", "latency"),
    ("{inflight}-in-flight (req/s)", "pipelined", "rps", "throughput"),
)


def server_table(
    results: dict[str, Any], plan: dict[str, list[str]], inflight: int
) -> tuple[str, dict[str, dict[str, float | None]]]:
    """Every server's column (sandboxd's: one per call), and sandboxd / floor per call."""
    columns = [(name, call) for name, calls in plan.items() for call in calls]
    under_test = plan.get(UNDER_TEST, []) if FLOOR in plan else []
    ratios: dict[str, dict[str, float | None]] = {call: {} for call in under_test}
    rows = []
    for label, part, key, kind in SERVER_ROWS:
        row = [label.format(inflight=inflight)]
        for name, call in columns:
            figure = num(results, name, "calls", call, part, key)
            row.append("FAILED" if "error" in results.get(name, {}) else fmt(figure, kind))
        floor = num(results, FLOOR, "calls", BASELINE_CALL, part, key)
        for call in under_test:
            found = ratio(num(results, UNDER_TEST, "calls", call, part, key), floor)
            ratios[call][f"{part}.{key}"] = found
            row.append(fmt_ratio(found))
        rows.append(row)
    header = ["measurement", *(f"{n} {c}" if n == UNDER_TEST else n for n, c in columns)]
    header += [
        "sandboxd/floor" if len(under_test) == 1 else f"sandboxd/floor ({call})"
        for call in under_test
    ]
    return md_table(header, rows), ratios


def labelled_table(
    header: Sequence[str],
    rows: Iterable[tuple[str, str, dict[str, Any]]],
    cells: Callable[[str, dict[str, Any]], list[str]],
) -> str:
    """A table whose ``rows`` are (label, second label, figures): the labels, then
    ``cells(second label, figures)``, or FAILED and dashes for a failed measurement."""
    lines = [
        [first, second, "FAILED", *["—"] * (len(header) - 3)]
        if "error" in figures
        else [first, second, *cells(second, figures)]
        for first, second, figures in rows
    ]
    return md_table(header, lines)


def clients_tables(
    summary: dict[str, Any], calls: Sequence[str], threads: int
) -> tuple[str, dict[str, Any]]:
    """The clients' two tables, and the ratios they show."""
    ratios: dict[str, Any] = {"vs_lean": {}, "threads_vs_one_thread": {}}
    for call in calls:
        lean = summary[call][REFERENCE_CLIENT]
        ratios["vs_lean"][call] = {
            kind: None
            if "error" in mine
            else {key: ratio(num(mine, key), num(lean, key)) for key in ("p50_us", "p99_us")}
            for kind, mine in summary[call].items()
            if kind in CLIENT_KINDS
        }

    def sequential(call: str, mine: dict[str, Any]) -> list[str]:
        lean = summary[call][REFERENCE_CLIENT]
        return [
            fmt(num(mine, "p50_us")),
            fmt(num(mine, "p99_us")),
            fmt_ratio(ratio(num(mine, "p50_us"), num(lean, "p50_us"))),
            fmt_ratio(ratio(num(mine, "p99_us"), num(lean, "p99_us"))),
            fmt(num(mine, "cpu_us")),
        ]

    header = ["client", "call", "p50 (us)", "p99 (us)", "p50 vs lean", "p99 vs lean"]
    first = labelled_table(
        [*header, "client CPU (us/call)"],
        [
            (title, call, summary[call][kind])
            for call in calls
            for kind, title in CLIENT_KINDS.items()
        ],
        sequential,
    )
    kinds = threaded_kinds(threads)
    threaded = [c for c in calls if c in CLIENT_THREAD_CALLS]
    for call in threaded:
        rate = {n: num(summary, call, kind, "calls_per_s") for kind, n in kinds.items()}
        ratios["threads_vs_one_thread"][call] = ratio(rate[threads], rate[1])

    def shared(call: str, mine: dict[str, Any]) -> list[str]:
        rate, one = num(mine, "calls_per_s"), num(summary, call, next(iter(kinds)), "calls_per_s")
        low, high = num(mine, "per_thread_min"), num(mine, "per_thread_max")
        return [
            fmt(rate, "throughput"),
            fmt_ratio(ratio(rate, one)),
            fmt(num(mine, "p50_us")),
            fmt(num(mine, "p99_us")),
            "—" if low is None or high is None else f"{low:,.0f}-{high:,.0f}",
            fmt(num(mine, "cpu_us")),
        ]

    header = ["threads sharing one SyncController", "call", "calls/s", "vs 1 thread"]
    header += ["p50 (us)", "p99 (us)", "calls per thread, min-max", "client CPU (us/call)"]
    second = labelled_table(
        header,
        [
            (f"SyncController x{n}", call, summary[call][kind])
            for call in threaded
            for kind, n in kinds.items()
        ],
        shared,
    )
    return first + "\n\n" + second, ratios


@dataclass(frozen=True)
class Series:
    """One sequential measurement: what the table and the CDF plot call it, where it is."""

    label: str
    server: str
    call: str
    client: str  # "lean", a CLIENT_KINDS key, "grpc" or "grpc.aio"

    def rounds(self, out: dict[str, Any]) -> list[dict[str, Any]]:
        """Its sequential figures in ``out``, one dict per round."""
        if self.client in ("lean", "grpc", "grpc.aio"):
            part = "seq_aio" if self.client == "grpc.aio" else "seq"
            runs = out["results"].get(self.server, {}).get("runs", [])
            found = [run.get("calls", {}).get(self.call, {}).get(part) for run in runs]
        else:
            key = f"{self.client} {self.call}"
            runs = out["clients"].get("runs", [])
            found = [run["measurements"].get(key, {}).get("seq") for run in runs]
        return [r for r in found if r is not None]

    def figure(self, out: dict[str, Any], key: str) -> float | None:
        """The median over the rounds of ``key`` (``p50_us``, ...)."""
        values = [v for r in self.rounds(out) if (v := num(r, key))]
        return median(values) if values else None


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


def round_trip_table(series: Sequence[Series], out: dict[str, Any]) -> str:
    floor = series[0].figure(out, "p50_us")
    rows = []
    for s in series:
        p50 = s.figure(out, "p50_us")
        if p50 is None and s.server == GRPC and GRPC not in out["results"]:
            continue  # grpcio not installed, or not asked for
        rows.append(
            [s.label, fmt(p50), fmt(s.figure(out, "p99_us")), fmt_ratio(ratio(p50, floor))]
        )
    return md_table(["sequential round trip", "p50 (us)", "p99 (us)", "p50 vs floor"], rows)


def throughput_table(throughput: dict[str, Any]) -> str:
    """Requests/s of the floor and sandboxd's Status at every point, and their ratio."""
    summary, errors = throughput["summary"], throughput.get("errors", {})
    rows = []
    for c, k in THROUGHPUT_POINTS:
        point = f"{c}x{k}"
        rps = {
            n: None if n in errors else num(summary, n, point, "rps") for n in (FLOOR, UNDER_TEST)
        }
        row = [f"{c} x {k}", str(c * k)]
        row += ["FAILED" if n in errors else fmt(rps[n], "throughput") for n in rps]
        row.append(fmt_ratio(ratio(rps[UNDER_TEST], rps[FLOOR])))
        for name, figure in (
            (FLOOR, "server_cpu"),
            (UNDER_TEST, "server_cpu"),
            (UNDER_TEST, "client_cpu"),
        ):
            cpu = num(summary, name, point, figure)
            row.append("—" if cpu is None else f"{cpu:.2f}")
        rows.append(row)
    header = ["connections x in flight", "total in flight", "floor (req/s)"]
    header += [f"sandboxd {STATUS} (req/s)", "sandboxd/floor", "floor CPU", "sandboxd CPU"]
    return md_table([*header, "client CPU (sandboxd)"], rows)


def lifecycle_table(result: dict[str, Any]) -> str:
    """The daemon's lifecycle points, then the embedded Controller's."""
    rows = []
    for sandboxer, n in LIFECYCLE_POINTS:
        point = result.get("points", {}).get(f"{sandboxer}:{n}", {"error": "not measured"})
        label = f"{sandboxer} ({point['command']})" if point.get("command") else sandboxer
        rows.append((label, "1 (sequential)" if n == 1 else str(n), point))
    embedded = result.get("embedded", {})
    for point in embedded.get("points", []):
        kept = "state store" if point["store"] else "in memory"
        n = point["concurrency"]
        rows.append(
            (f"sim, embedded ({kept}; no socket)", "1 (sequential)" if n == 1 else str(n), point)
        )
    if "error" in embedded:
        rows.append(("sim, embedded", "—", embedded))

    def cells(_: str, point: dict[str, Any]) -> list[str]:
        lat, rate = point["lifecycle_us"], point["lifecycles_per_s"]
        daemon = "server_cpu" in point  # the embedded rows have the whole process's CPU
        return [
            fmt(rate, "throughput"),
            fmt(point["calls_per_s"] if daemon else rate * 5, "throughput"),
            f"{lat['p50_us'] / 1000:,.2f}",
            f"{lat['p99_us'] / 1000:,.2f}",
            f"{point['server_cpu']:.2f}" if daemon else "—",
            f"{point['client_cpu' if daemon else 'cpu']:.2f}",
        ]

    header = ["sandboxer", "concurrent lifecycles", "lifecycles/s", "calls/s"]
    header += ["lifecycle p50 (ms)", "lifecycle p99 (ms)", "daemon CPU", "client CPU"]
    return labelled_table(header, rows, cells)


def logging_table(result: dict[str, Any]) -> str:
    """Lifecycles/s per variant and point, and logging on as a fraction of the others."""
    summary, ratios = result["summary"], result["ratios"]
    cpu, cpu_ratios = result["cpu_us_per_lifecycle"], result["cpu_ratios"]
    rows = []
    for sandboxer, n in LOGGING_POINTS:
        point = f"{sandboxer}:{n}"
        row = [f"{sandboxer} x {n}"]
        row += [fmt(summary.get(name, {}).get(point), "throughput") for name in summary]
        row += [fmt_ratio(ratios[key].get(point)) for key in ratios]
        row += [fmt(cpu.get(name, {}).get(point), "latency") for name in cpu]
        row += [fmt_ratio(cpu_ratios[key].get(point)) for key in cpu_ratios]
        rows.append(row)
    header = ["point", *(f"logging {name} (lifecycles/s)" for name in summary), *ratios]
    header += [f"daemon CPU/lifecycle, {name} (us)" for name in cpu]
    header += [f"CPU {key}" for key in cpu_ratios]
    return md_table(header, rows)


def scaling_table(result: dict[str, Any]) -> str:
    points = result.get("points", [])
    base = points[0]["status"]["p50_us"] if points else None

    def count(value: float | None) -> str:
        return "—" if value is None else f"{value:,.0f}"

    rows = [
        [
            f"{point['idle']:,}",
            fmt(point.get("creates_per_s"), "throughput"),
            fmt(point["status"]["p50_us"]),
            fmt(point["status"]["p99_us"]),
            fmt_ratio(ratio(point["status"]["p50_us"], base)),
            f"{point['rss_bytes'] / 2**20:,.1f}",
            count(point.get("bytes_per_sandbox")),
            count(point.get("marginal_bytes_per_sandbox")),
        ]
        for point in points
    ]
    header = ["idle sandboxes", "creates/s (to get there)", f"{STATUS} p50 (us)", "p99 (us)"]
    header += ["p50 vs 0", "daemon RSS (MiB)", "bytes/sandbox", "marginal bytes/sandbox"]
    return md_table(header, rows)


def profile_table(spy: dict[str, Any]) -> str:
    """The py-spy summary of the daemon under the profiled lifecycle point."""
    spied, (sandboxer, n) = spy["summary"], PROFILED_POINT
    threads = spied["threads"]
    rate = spy["point"].get("lifecycles_per_s", 0)
    return (
        f"py-spy, {spied['samples']} samples of the daemon during {sandboxer} x{n} "
        f"({rate:,.0f} lifecycles/s while profiled; raw: {spy['raw']}): main thread "
        f"{threads.get('main', 0)}, worker threads {threads.get('other', 0)} (SQLite writes, "
        "and idle workers waiting for a job).  The main thread (the trio run loop):\n\n"
        + profile.table(spied, "self_main")
        + "\n\n"
        + profile.table(spied, "inclusive_main")
    )


# --- targets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    ratio: float | None
    met: bool | None  # None: not measured


def target(
    name: str, goal: str, mine: float | None, reference: float | None, bound: str, what: str
) -> Target:
    """The goal ``mine / reference`` ``bound`` (``"<= 1.3"``, ``">= 5"``), checked; ``what``
    the measured figures, formatted with ``m`` (mine), ``r`` (the reference), ``kib``."""
    if mine is None or not reference:
        return Target(name, goal, "not measured", None, None)
    found, (op, limit) = mine / reference, bound.split()
    met = found <= float(limit) if op == "<=" else found >= float(limit)
    return Target(name, goal, what.format(m=mine, r=reference, kib=mine / 1024), found, met)


def targets(out: dict[str, Any]) -> list[Target]:
    """The issue's targets, each with the measured figures and the ratio the goal applies to."""
    results, clients = out["results"], out["clients"]

    def seq_p50(name: str, call: str, part: str = "seq") -> float | None:
        return num(results, name, "calls", call, part, "p50_us")

    floor, status = seq_p50(FLOOR, BASELINE_CALL), seq_p50(UNDER_TEST, STATUS)
    grpc_aio = seq_p50(GRPC, BASELINE_CALL, "seq_aio")
    lean = (
        f"; lean client {status:,.1f} us: {grpc_aio / status:.1f}x" if status and grpc_aio else ""
    )
    rps = {
        name: num(out["throughput"], "summary", name, "1x64", "rps")
        for name in (FLOOR, UNDER_TEST)
    }
    points = out["scaling"].get("points") or [{}]
    first, last = points[0], points[-1]
    idle = f"{last['idle']:,}" if "idle" in last else ""
    return [
        target(
            "Status sequential p50 vs the floor",
            "<= 1.3x",
            status,
            floor,
            "<= 1.3",
            "Status {m:,.1f} us, floor {r:,.1f} us (lean client)",
        ),
        target(
            "Ping sequential p50 vs the floor",
            "<= 1.3x",
            seq_p50(UNDER_TEST, PING),
            floor,
            "<= 1.3",
            "Ping {m:,.1f} us, floor {r:,.1f} us (lean client)",
        ),
        target(
            "Status at 64 in flight (1 connection) vs the floor",
            ">= 0.4x the floor's req/s",
            rps[UNDER_TEST],
            rps[FLOOR],
            ">= 0.4",
            "Status {m:,.0f} req/s, floor {r:,.0f} req/s",
        ),
        target(
            "Status p50 vs grpc.aio unary p50 (async client, both)",
            ">= 5x lower",
            grpc_aio,
            num(clients, "summary", STATUS, ASYNC_CLIENT, "p50_us"),
            ">= 5",
            "grpc.aio {m:,.1f} us, RemoteController Status {r:,.1f} us" + lean,
        ),
        target(
            f"Status p50 with {idle + ' ' if idle else ''}idle sandboxes vs none",
            "<= 1.1x",
            num(last, "status", "p50_us"),
            num(first, "status", "p50_us") if first.get("idle") == 0 else None,
            "<= 1.1",
            f"{{m:,.1f}} us with {idle}, {{r:,.1f}} us with 0",
        ),
        target(
            f"daemon memory per idle sandbox (sim{', ' + idle if idle else ''})",
            "<= 6 KiB",
            num(last, "bytes_per_sandbox"),
            6144.0,
            "<= 1",
            "{m:,.0f} bytes ({kib:.2f} KiB)",
        ),
        target(
            "full lifecycles/s, sim, 64 concurrent",
            ">= 3,000/s",
            num(out["lifecycles"], "points", "sim:64", "lifecycles_per_s"),
            3000.0,
            ">= 1",
            "{m:,.0f} lifecycles/s",
        ),
        target(
            "sim lifecycles/s, 64 concurrent, with the daemon's log on vs off",
            ">= 0.9x",
            num(out.get("logging", {}), "summary", "on", "sim:64"),
            num(out.get("logging", {}), "summary", "off", "sim:64"),
            ">= 0.9",
            "{m:,.0f} lifecycles/s on, {r:,.0f} off",
        ),
    ]


def targets_table(found: Sequence[Target]) -> str:
    rows = []
    for t in found:
        verdict = "not measured" if t.met is None else "met" if t.met else "NOT MET"
        rows.append(
            [t.name, t.goal, t.measured, "—" if t.ratio is None else f"{t.ratio:.2f}", verdict]
        )
    return md_table(["target", "goal", "measured", "ratio", "result"], rows)


# --- the whole report -----------------------------------------------------------------------


def publish(out: dict[str, Any], plan: dict[str, list[str]], path: Path) -> None:
    """Add the tables, ratios and targets to ``out``, print the tables, and write ``out`` as
    JSON to ``path``, the markdown beside it (``.md``) and the plots (``-<name>.png``)."""
    tables: list[tuple[str, str]] = []

    def show(title: str, table: str) -> str:
        print(("\n" if tables else "") + table)
        tables.append((title, table))
        return table

    table, out["ratios_vs_floor"] = server_table(out["results"], plan, out["settings"]["inflight"])
    out["table"] = show("Servers (lean client)", table) if plan else table
    clients = out["clients"]
    if "summary" in clients:
        table, clients["ratios"] = clients_tables(
            clients["summary"], clients["calls"], clients["threads"]
        )
        clients["table"] = show("sandboxd's clients", table)
    elif clients:
        print("\nclients: FAILED (see above)")
    series = round_trip_series(plan.get(UNDER_TEST, []), clients.get("calls", []))
    out["round_trips"] = show("Sequential round trips", round_trip_table(series, out))
    if out["throughput"]:
        out["throughput"]["table"] = show(
            "Throughput against concurrency", throughput_table(out["throughput"])
        )
    lifecycles = out["lifecycles"]
    if lifecycles:
        lifecycles["table"] = show("Full lifecycles", lifecycle_table(lifecycles))
        spy = lifecycles.get("profile")
        if spy and "error" not in spy:
            spy["summary"] = profile.summarize(Path(spy["raw"]), 15)
            show("Daemon profile (py-spy)", profile_table(spy))
        elif spy:
            print(f"\npy-spy: FAILED: {spy.get('error')}", file=sys.stderr)
    logged = out.get("logging")
    if logged and "summary" in logged:
        logged["table"] = show("The daemon's log and the lifecycle rate", logging_table(logged))
    elif logged:
        print(f"\nlogging: FAILED: {logged.get('error')}", file=sys.stderr)
    if out["scaling"]:
        out["scaling"]["table"] = show(
            "Scaling with idle sandboxes", scaling_table(out["scaling"])
        )
    found = targets(out)
    out["targets"] = [asdict(t) for t in found]
    out["targets_table"] = show("Targets", targets_table(found))
    stem = path.with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = make_plots(stem, series, out)
    out["plots"] = [str(p) for p in plots]
    out["markdown"] = str(stem.with_suffix(".md"))
    stem.with_suffix(".md").write_text(markdown(out, tables, plots))
    path.write_text(dumps_json(out))
    print(f"\nresults written to {path} and {stem.with_suffix('.md')}", file=sys.stderr)
    for plot in plots:
        print(f"plot: {plot}", file=sys.stderr)


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


def make_plots(stem: Path, series: Sequence[Series], out: dict[str, Any]) -> list[Path]:
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
    plots: tuple[tuple[str, Callable[[Any, Any], Any], Any], ...] = (
        ("latency-cdf", _cdf, [(s, cdf) for s in series if (cdf := _series_cdf(s, out))]),
        ("throughput", _throughput, out["throughput"].get("summary") or {}),
        ("scaling", _scaling, out["scaling"].get("points") or []),
    )
    for name, draw, data in plots:
        if not data:
            continue
        path = stem.with_name(f"{stem.name}-{name}.png")
        try:
            fig = draw(plt, data)
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        except Exception as exc:  # a plot is a convenience: never fail the run for it
            print(f"plot {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return written


def _series_cdf(series: Series, out: dict[str, Any]) -> list[tuple[float, float]] | None:
    """``(us, quantile)`` points of the round whose p50 is the median, for the CDF plot: every
    series but the blocking gRPC channel's and the SyncController's on other calls than Status."""
    if series.client == "grpc" or (series.client == SYNC_CLIENT and series.call != STATUS):
        return None
    rounds = [r for r in series.rounds(out) if r.get("cdf_us")]
    if not rounds:
        return None
    middle = median([float(r["p50_us"]) for r in rounds])
    chosen = min(rounds, key=lambda r: abs(float(r["p50_us"]) - middle))
    return [(float(us), float(q) / 100) for q, us in chosen["cdf_us"]]


def _cdf(plt: Any, drawn: list[tuple[Series, list[tuple[float, float]]]]) -> Any:
    """The CDF of the sequential round trips (the round with the median p50), log x axis."""
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
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    sweeps = (
        (INFLIGHT_POINTS, 1, "requests in flight (one connection)"),
        (((1, 64), *CONNECTION_POINTS), 0, "connections (64 in flight on each)"),
    )
    for ax, (points, axis, title) in zip(axes, sweeps, strict=True):
        for name, label in ((FLOOR, FLOOR), (UNDER_TEST, f"sandboxd {STATUS}")):
            figures = summary.get(name) or {}
            xy = [(p[axis], rps) for p in points if (rps := num(figures, f"{p[0]}x{p[1]}", "rps"))]
            if xy:
                ax.plot(*zip(*xy, strict=True), "o-", label=label)
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
