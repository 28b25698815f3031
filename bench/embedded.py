"""Full sim lifecycles per second with the Controller embedded in a trio program: no socket.

The same lifecycle as :mod:`bench.lifecycle` (create, start, stop with timeout 5, wait -> 143,
shutdown), the same warm-up and window, run by N trio tasks against a
:class:`~sandboxd.Controller` in this process: with a state store in a fresh directory (what
``sandboxd serve`` has) and without one (a Controller kept in memory).  Beside the daemon's
figures these show what the runtime and its store cost apart from the RPC layer and the
client.

Run: ``python -m bench.embedded --points 1,64``; prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from typing import Any

import trio

from sandboxd import Controller
from sandboxd.runtime import SandboxStore

from .client import BenchError, latency_summary
from .lifecycle import SIGTERM_EXIT, STOP_TIMEOUT


async def _measure(
    concurrency: int, store: SandboxStore | None, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    durations: list[int] = []
    start = time.perf_counter_ns() + int(warmup_s * 1e9)
    stop = start + int(duration_s * 1e9)
    async with trio.open_nursery() as nursery:
        controller = await nursery.start(Controller(store=store, default_sandboxer="sim").run)

        async def slot(k: int) -> None:
            n = 0
            while time.perf_counter_ns() < stop:
                sid = f"em-{k}-{n}"
                n += 1
                began = time.perf_counter_ns()
                await controller.create(sid)
                if (await controller.start(sid)).pid <= 0:
                    raise BenchError(f"Start {sid}: no pid")
                await controller.stop(sid, timeout_secs=STOP_TIMEOUT)
                status = (await controller.wait(sid)).exit_status
                if status != SIGTERM_EXIT:
                    raise BenchError(f"Wait {sid}: exit status {status}")
                await controller.shutdown(sid)
                if start <= began and time.perf_counter_ns() <= stop:
                    durations.append(time.perf_counter_ns() - began)

        cpu = 0.0
        gc.disable()
        try:
            async with trio.open_nursery() as slots:
                for k in range(concurrency):
                    slots.start_soon(slot, k)
                await trio.sleep_until(trio.current_time() + warmup_s)
                cpu = time.process_time()
                await trio.sleep_until(trio.current_time() + duration_s)
                cpu = time.process_time() - cpu
        finally:
            gc.enable()
        if len(controller):
            raise BenchError(f"{len(controller)} sandboxes left after the run")
        nursery.cancel_scope.cancel()
    if not durations:
        raise BenchError(f"x{concurrency}: no lifecycle began and ended in the window")
    lifecycle = latency_summary(durations, 0)
    del lifecycle["cdf_us"]
    return {
        "concurrency": concurrency,
        "store": store is not None,
        "lifecycles": len(durations),
        "lifecycles_per_s": len(durations) / duration_s,
        "lifecycle_us": lifecycle,
        "cpu": cpu / duration_s,
    }


def measure(
    concurrency: int, with_store: bool, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """One point: ``concurrency`` lifecycle tasks, with or without a state store."""
    with tempfile.TemporaryDirectory(prefix="sandboxd-bench-") as state:
        store = SandboxStore.open(state) if with_store else None
        try:
            return trio.run(_measure, concurrency, store, warmup_s, duration_s)
        finally:
            if store is not None:
                store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embedded",
        description="Sim lifecycles/s with the Controller embedded in the process.",
    )
    parser.add_argument("--points", default="1,64", help="concurrencies, comma-separated")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up per point, s")
    parser.add_argument("--duration", type=float, default=3.0, help="window per point, s")
    args = parser.parse_args(argv)
    points = []
    try:
        for n in (int(p) for p in args.points.split(",")):
            for with_store in (True, False):
                points.append(measure(n, with_store, args.warmup, args.duration))
    except (BenchError, ValueError) as exc:
        print(f"bench.embedded: FAILED: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"points": points}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
