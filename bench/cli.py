"""The CLI benchmark: ``sandboxctl version`` and ``sandboxctl status ID`` against ``python -c
pass``, wall time of whole processes, in one run.

    python -m bench.cli [--runs N] [--warmup N] [--json FILE]

One sandboxd (:func:`bench.servers.serving`, fresh socket and state directory) holds one sim
sandbox.  Each round runs, in a fresh random order, ``python -c pass`` (the interpreter's own
start-up: the floor), ``sandboxctl --socket S version`` and ``sandboxctl --socket S status
ID``: the venv's console script, as a user runs it, so each figure is a process started,
its imports, its call to the daemon, its output and its exit.  Interleaving the commands
round by round makes a slow stretch of the machine hit all of them alike.

The children run with bytecode caches (``PYTHONDONTWRITEBYTECODE`` removed from their
environment; the warm-up rounds write what is missing), as an installed package has them.
Figures: median and p99 of each command's wall time, and each median and p99 over
``python -c pass``'s.  Target (the CLI issue's): both medians at most 3x the floor's.  A
target missed is reported; it does not change the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from .servers import SANDBOXD, Served, ServerFailed, serving

#: The CLI issue's target: each command's median wall time over ``python -c pass``'s.
MAX_RATIO: Final = 3.0
FLOOR: Final = "python -c pass"
SANDBOX_ID: Final = "bench-cli"
RUNS: Final = 200
QUICK_RUNS: Final = 30
WARMUP: Final = 5


def commands(socket: str) -> dict[str, list[str]]:
    """What is timed, by name: the floor first."""
    python = sys.executable
    sandboxctl = str(Path(python).with_name("sandboxctl"))
    return {
        FLOOR: [python, "-c", "pass"],
        "sandboxctl version": [sandboxctl, "--socket", socket, "version"],
        "sandboxctl status": [sandboxctl, "--socket", socket, "status", SANDBOX_ID],
    }


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _wall(argv: Sequence[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        raise ServerFailed(
            f"{shlex.join(argv)} exited with status {proc.returncode}: "
            + proc.stderr.decode(errors="replace").strip()
        )
    return elapsed


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_commands(socket: str, runs: int, warmup: int) -> dict[str, Any]:
    """Every command ``runs`` times, interleaved, after ``warmup`` rounds not counted."""
    argvs = commands(socket)
    env = _child_env()
    samples: dict[str, list[float]] = {name: [] for name in argvs}
    order = list(argvs)
    for n in range(warmup + runs):
        random.shuffle(order)
        for name in order:
            took = _wall(argvs[name], env)
            if n >= warmup:
                samples[name].append(took)
    figures: dict[str, Any] = {"runs": runs, "warmup": warmup, "commands": {}}
    for name, found in samples.items():
        ordered = sorted(found)
        figures["commands"][name] = {
            "argv": shlex.join(argvs[name]),
            "p50_ms": _quantile(ordered, 0.5) * 1000,
            "p99_ms": _quantile(ordered, 0.99) * 1000,
        }
    floor = figures["commands"][FLOOR]
    for found in figures["commands"].values():
        found["p50_ratio"] = found["p50_ms"] / floor["p50_ms"]
        found["p99_ratio"] = found["p99_ms"] / floor["p99_ms"]
    figures["targets"] = {
        f"{name} p50 / {FLOOR} p50": {"ratio": found["p50_ratio"], "goal": MAX_RATIO}
        for name, found in figures["commands"].items()
        if name != FLOOR
    }
    return figures


def _sandbox(served: Served) -> None:
    """The sim sandbox that ``status`` asks about, created and started."""
    from sandboxd import RPCError, SyncController

    try:
        with SyncController(served.path, timeout=30) as ctl:
            ctl.create(SANDBOX_ID, sandboxer="sim")
            ctl.start(SANDBOX_ID)
    except RPCError as err:
        raise ServerFailed(f"the sandbox of the cli section: {err!r}") from None


def run(command: str, runs: int, warmup: int = WARMUP) -> dict[str, Any]:
    """Start sandboxd with ``command`` (see :func:`bench.servers.serving`), give it the sandbox,
    and time the commands against it."""
    with serving("cli", command) as served:
        _sandbox(served)
        figures = time_commands(served.path, runs, warmup)
    return figures | {"server": served.result}  # its command line, start-up and exit


def table(figures: dict[str, Any]) -> str:
    """The figures as a text table, and each target met or not."""
    rows = [f"{'command':<20} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>7} {'p99 x':>7}"]
    for name, found in figures["commands"].items():
        rows.append(
            f"{name:<20} {found['p50_ms']:>8.1f} {found['p99_ms']:>8.1f} "
            f"{found['p50_ratio']:>7.2f} {found['p99_ratio']:>7.2f}"
        )
    rows.append(f"({figures['runs']} runs each, interleaved; x: over {FLOOR})")
    for target, found in figures["targets"].items():
        verdict = "met" if found["ratio"] <= found["goal"] else "MISSED"
        rows.append(f"target {target} <= {found['goal']:g}: {found['ratio']:.2f} {verdict}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cli", description="Time sandboxctl against python -c pass."
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"timed rounds ({RUNS})")
    parser.add_argument("--warmup", type=int, default=WARMUP, help=f"rounds first ({WARMUP})")
    parser.add_argument("--sandboxd-cmd", default=SANDBOXD, help="the command starting sandboxd")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    figures = run(args.sandboxd_cmd, args.runs, args.warmup)
    figures["command"] = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    figures["load_average_before"] = load
    figures["load_average_after"] = os.getloadavg()
    print(table(figures))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
