"""The logging section: what the daemon's own log costs its lifecycle rate.

The sim lifecycle points (one at a time, and 64 concurrent on one connection) are measured on
sandboxd as it runs by default (``on``: INFO, one line per lifecycle change of every sandbox,
written to the server's log file), on the same command with ``--log-level error`` (``off``:
no lifecycle lines), and, given ``--logging-baseline CMD``, on that command too (e.g. an
older sandboxd).  Rounds interleave the variants, each on a fresh daemon, so that a slow
stretch of the machine hits all of them alike; each figure is the median over the rounds.
"""

from __future__ import annotations

from typing import Any, Final

from .report import LOGGING_POINTS as POINTS
from .report import median, ratio
from .servers import ServerFailed, measure, serving

ON, OFF, BASELINE = "on", "off", "baseline"
#: The command's option that leaves only errors in the log.
QUIET: Final = " --log-level error"


def variants(command: str, baseline: str | None) -> dict[str, str]:
    found = {ON: command, OFF: command + QUIET}
    return found | ({BASELINE: baseline} if baseline else {})


def measure_logging(
    command: str, baseline: str | None, rounds: int, warmup: float, duration: float
) -> dict[str, Any]:
    """Every variant's sim points, ``rounds`` times interleaved; the medians and ratios."""
    commands = variants(command, baseline)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in commands}
    errors: dict[str, str] = {}
    for n in range(1, rounds + 1):
        for name, cmd in commands.items():
            label = f"logging {name} (round {n}/{rounds})"
            try:
                with serving(f"logging-{name}", cmd) as served:
                    figures = measure(
                        "lifecycle", served, label, points=POINTS, warmup=warmup, duration=duration
                    )
            except ServerFailed as exc:
                figures = {"error": str(exc)}
            points = {f"{p['sandboxer']}:{p['concurrency']}": p for p in figures.get("points", [])}
            good = {k: p for k, p in points.items() if "error" not in p}
            if "error" in figures or len(good) < len(POINTS):
                errors.setdefault(name, figures.get("error", "a point failed"))
            runs[name].append(
                {
                    "client": figures.get("client"),
                    "rates": {k: p["lifecycles_per_s"] for k, p in good.items()},
                    # Less sensitive than the rate to what else the machine runs.
                    "cpu_us": {
                        k: p["server_cpu"] / p["lifecycles_per_s"] * 1e6 for k, p in good.items()
                    },
                }
            )
    summary, cpu = _medians(runs, "rates"), _medians(runs, "cpu_us")
    return {
        "rounds": rounds,
        "commands": commands,
        "summary": summary,
        "ratios": _on_vs(summary),
        "cpu_us_per_lifecycle": cpu,
        "cpu_ratios": _on_vs(cpu),
        "runs": runs,
        **({"errors": errors} if errors else {}),
    }


def _medians(runs: dict[str, list[dict[str, Any]]], figure: str) -> dict[str, dict[str, float]]:
    """Per variant and point, the median of ``figure`` over the rounds that measured it."""
    return {
        name: {
            point: median(found)
            for s, c in POINTS
            if (found := [r[figure][point] for r in done if (point := f"{s}:{c}") in r[figure]])
        }
        for name, done in runs.items()
    }


def _on_vs(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Logging on's figure over each other variant's, per point."""
    on = summary.get(ON, {})
    return {
        f"{ON}/{name}": {point: ratio(on.get(point), rates.get(point)) for point in on}
        for name, rates in summary.items()
        if name != ON
    }
