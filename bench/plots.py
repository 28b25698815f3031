"""PNG plots of a run (only with matplotlib installed: ``pip install -e '.[bench]'``).

* ``<stem>-latency-cdf.png``: the CDF of the sequential round trips (floor, sandboxd's
  Version / Status / Ping through the lean client, Status through RemoteController and
  SyncController, grpc.aio), log latency axis;
* ``<stem>-throughput.png``: requests/s against requests in flight on one connection, and
  against connections (64 in flight each), floor and sandboxd's Status;
* ``<stem>-scaling.png``: daemon RSS and Status p50 against the number of idle sandboxes.

``<stem>`` is the JSON file's name without ``.json``; the plots go beside it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import Series, series_cdf
from .sections import CONNECTION_POINTS, INFLIGHT_POINTS, STATUS


def make_plots(
    stem: Path,
    series: Sequence[Series],
    results: dict[str, Any],
    clients: dict[str, Any],
    throughput: dict[str, Any],
    scaling: dict[str, Any],
) -> list[Path]:
    """Write the plots there is data for; their paths (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print(
            "matplotlib not installed: no plots (pip install -e '.[bench]' to get them)",
            file=sys.stderr,
        )
        return []
    matplotlib.use("Agg")
    written = []
    for name, draw, args in (
        ("latency-cdf", _cdf, (series, results, clients)),
        ("throughput", _throughput, (throughput,)),
        ("scaling", _scaling, (scaling,)),
    ):
        path = stem.with_name(f"{stem.name}-{name}.png")
        try:
            if draw(path, *args):
                written.append(path)
        except Exception as exc:  # a plot is a convenience: never fail the run for it
            print(f"plot {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return written


def _cdf(
    path: Path, series: Sequence[Series], results: dict[str, Any], clients: dict[str, Any]
) -> bool:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    drawn = 0
    for s in series:
        if s.client == "grpc" or (s.client == "sync-model" and s.call != STATUS):
            continue
        points = series_cdf(s, results, clients)
        if not points:
            continue
        xs = [us for us, _ in points]
        ys = [q for _, q in points]
        style = "-" if s.client in ("lean", "grpc.aio") else "--"
        ax.step(xs, ys, style, where="post", label=s.label, linewidth=1.4)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xscale("log")
    ax.set_xlabel("round trip (us, log scale)")
    ax.set_ylabel("fraction of calls")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Sequential round-trip latency (CDF; the round with the median p50)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _throughput(path: Path, throughput: dict[str, Any]) -> bool:
    import matplotlib.pyplot as plt

    summary = throughput.get("summary") or {}
    if not summary:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, label in (("floor", "floor"), ("sandboxd", f"sandboxd {STATUS}")):
        figures = summary.get(name) or {}
        # x: in flight on the one connection (left), connections (right)
        for ax, points, axis in ((left, INFLIGHT_POINTS, 1), (right, CONNECTION_POINTS, 0)):
            xs, ys = [], []
            for point in points:
                rps = (figures.get(f"{point[0]}x{point[1]}") or {}).get("rps")
                if rps is not None:
                    xs.append(point[axis])
                    ys.append(rps)
            if xs:
                ax.plot(xs, ys, "o-", label=label)
    left.set_xscale("log", base=2)
    left.set_xticks([p[1] for p in INFLIGHT_POINTS], [str(p[1]) for p in INFLIGHT_POINTS])
    left.set_xlabel("requests in flight (one connection)")
    right.set_xscale("log", base=2)
    right.set_xticks([p[0] for p in CONNECTION_POINTS], [str(p[0]) for p in CONNECTION_POINTS])
    right.set_xlabel("connections (64 in flight on each)")
    for ax in (left, right):
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput against concurrency (median over the rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _scaling(path: Path, scaling: dict[str, Any]) -> bool:
    import matplotlib.pyplot as plt

    points = scaling.get("points") or []
    if not points:
        return False
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
