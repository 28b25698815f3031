"""The run's summary tables: sequential round trips side by side, and the targets.

Both are computed from the figures the sections measured (see bench/README.md); nothing here
measures anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .calls import BASELINE_CALL, CLIENT_KINDS
from .harness import fmt, fmt_ratio, md_table, median, ratio

FLOOR: Final = "floor"
UNDER_TEST: Final = "sandboxd"
GRPC: Final = "grpc"
STATUS: Final = "Controller/Status"
PING: Final = "Controller/Ping"
VERSION: Final = "Runtime/Version"
#: The full-stack clients shown beside the lean one in the round-trip table.
SYNC_CLIENT: Final = "sync-model"
ASYNC_CLIENT: Final = "trio-model"


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _num(tree: Any, *path: str) -> float | None:
    value = _get(tree, *path)
    return float(value) if isinstance(value, int | float) else None


# --- sequential round trips ----------------------------------------------------------------


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
                out.append(
                    Series(f"sandboxd {call} ({CLIENT_KINDS[kind]})", UNDER_TEST, call, kind)
                )
    out.append(Series("grpc Version (blocking channel)", GRPC, BASELINE_CALL, "grpc"))
    out.append(Series("grpc Version (grpc.aio channel)", GRPC, BASELINE_CALL, "grpc.aio"))
    return out


def _series_rounds(series: Series, results: dict[str, Any], clients: dict[str, Any]) -> list[Any]:
    """The sequential figures of ``series``, one dict per round."""
    if series.client in ("lean", "grpc", "grpc.aio"):
        part = "seq_aio" if series.client == "grpc.aio" else "seq"
        runs = _get(results, series.server, "runs") or []
        return [r for run in runs if (r := _get(run, "calls", series.call, part)) is not None]
    key = f"{series.client} {series.call}"
    runs = clients.get("runs", [])
    return [r for run in runs if (r := _get(run, "measurements", key, "seq")) is not None]


def series_figure(
    series: Series, results: dict[str, Any], clients: dict[str, Any], key: str
) -> float | None:
    """The median over the rounds of ``key`` (``p50_us``, ...) of ``series``."""
    values = [v for r in _series_rounds(series, results, clients) if (v := _num(r, key))]
    return median(values) if values else None


def series_cdf(
    series: Series, results: dict[str, Any], clients: dict[str, Any]
) -> list[tuple[float, float]] | None:
    """``(us, quantile)`` points of the round whose p50 is the median (None if unmeasured)."""
    rounds = [r for r in _series_rounds(series, results, clients) if _get(r, "cdf_us")]
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
        p99 = series_figure(s, results, clients, "p99_us")
        if p50 is None and s.server == GRPC and GRPC not in results:
            continue  # grpcio not installed, or not asked for
        rows.append(
            [s.label, fmt(p50, "latency"), fmt(p99, "latency"), fmt_ratio(ratio(p50, floor))]
        )
    return md_table(["sequential round trip", "p50 (us)", "p99 (us)", "p50 vs floor"], rows)


# --- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    ratio: float | None
    met: bool | None  # None: not measured

    def row(self) -> list[str]:
        verdict = "not measured" if self.met is None else "met" if self.met else "NOT MET"
        shown = "—" if self.ratio is None else f"{self.ratio:.2f}"
        return [self.name, self.goal, self.measured, shown, verdict]


def _target(
    name: str,
    goal: str,
    mine: float | None,
    reference: float | None,
    test: Callable[[float], bool],
    measured: Callable[[float, float], str],
) -> Target:
    if mine is None or reference is None or not reference:
        return Target(name, goal, "not measured", None, None)
    value = mine / reference
    return Target(name, goal, measured(mine, reference), value, test(value))


def targets(
    results: dict[str, Any],
    clients: dict[str, Any],
    throughput: dict[str, Any],
    lifecycles: dict[str, Any],
    scaling: dict[str, Any],
) -> list[Target]:
    """The issue's targets, each with the measured figures and ratio."""
    floor_p50 = _num(results, FLOOR, "calls", BASELINE_CALL, "seq", "p50_us")
    out = []
    for call, short in ((STATUS, "Status"), (PING, "Ping")):

        def vs_floor(mine: float, floor: float, short: str = short) -> str:
            return f"{short} {mine:,.1f} us, floor {floor:,.1f} us (lean client)"

        out.append(
            _target(
                f"{short} sequential p50 vs the floor",
                "<= 1.3x",
                _num(results, UNDER_TEST, "calls", call, "seq", "p50_us"),
                floor_p50,
                lambda r: r <= 1.3,
                vs_floor,
            )
        )
    out.append(
        _target(
            "Status at 64 in flight (1 connection) vs the floor",
            ">= 0.4x the floor's req/s",
            _num(throughput, "summary", UNDER_TEST, "1x64", "rps"),
            _num(throughput, "summary", FLOOR, "1x64", "rps"),
            lambda r: r >= 0.4,
            lambda m, f: f"Status {m:,.0f} req/s, floor {f:,.0f} req/s",
        )
    )
    grpc_aio = _num(results, GRPC, "calls", BASELINE_CALL, "seq_aio", "p50_us")
    remote = _num(clients, "summary", STATUS, ASYNC_CLIENT, "p50_us")
    lean = _num(results, UNDER_TEST, "calls", STATUS, "seq", "p50_us")
    lean_note = (
        f"; lean client {lean:,.1f} us: {grpc_aio / lean:.1f}x" if lean and grpc_aio else ""
    )
    out.append(
        _target(
            "Status p50 vs grpc.aio unary p50 (async client, both)",
            ">= 5x lower",
            grpc_aio,
            remote,
            lambda r: r >= 5,
            lambda g, m: f"grpc.aio {g:,.1f} us, RemoteController Status {m:,.1f} us{lean_note}",
        )
    )
    points = _get(scaling, "points") or []
    if points:
        first, last = points[0], points[-1]
        n = last["idle"]
        out.append(
            _target(
                f"Status p50 with {n:,} idle sandboxes vs none",
                "<= 1.1x",
                _num(last, "status", "p50_us"),
                _num(first, "status", "p50_us") if first["idle"] == 0 else None,
                lambda r: r <= 1.1,
                lambda m, z: f"{m:,.1f} us with {n:,}, {z:,.1f} us with 0",
            )
        )
        per = _num(last, "bytes_per_sandbox")
        out.append(
            _target(
                f"daemon memory per idle sandbox (sim, {n:,})",
                "<= 6 KiB",
                per,
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
            _num(lifecycles, "points", "sim:64", "lifecycles_per_s"),
            3000.0,
            lambda r: r >= 1.0,
            lambda m, _: f"{m:,.0f} lifecycles/s",
        )
    )
    return out


def targets_table(found: Sequence[Target]) -> str:
    header = ["target", "goal", "measured", "ratio", "result"]
    return md_table(header, [t.row() for t in found])
