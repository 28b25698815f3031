"""Status latency and daemon memory against the number of idle sandboxes.

On one daemon (a fresh state directory: the harness starts it), the Status call of
:mod:`bench.calls` is set up (sim sandbox ``bench``, created and started), then for each count
n in turn (0, 1k, 10k, 50k by default) the daemon is brought to n *idle* sandboxes (sim,
created, never started: ``idle-000000`` ...) and measured:

* **creates/s**: the Creates that brought it from the previous count to n, pipelined on one
  connection (``--create-inflight`` of them in flight, 256 by default), every reply checked;
* **Status seq p50 / p99**: the sequential loop of :mod:`bench.client` on ``bench``'s Status
  (N round trips after a warm-up), on its own connection;
* **RSS**: ``VmRSS`` of the daemon (the socket's peer, from ``SO_PEERCRED``) from
  /proc/<pid>/status, read after the Status loop (every Create has been answered, so its
  record is in the store); also ``VmHWM`` (the peak).  Bytes per idle sandbox at n is
  (RSS_n - RSS_0) / n; the marginal figure (RSS_n - RSS_prev) / (n - prev) leaves out the
  one-time growth of the first thousand (caches, allocator arenas).

Run: ``python -m bench.scaling --socket PATH --counts 0,1000,10000,50000``; prints one JSON
object on stdout.  Exit status 2 and a message on stderr on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from .calls import CALLS, Call
from .client import BenchError, Connection, measure_sequential
from .clients import prepared
from .lifecycle import Slot, drive, request
from .procstat import memory_kib, peer_pid

STATUS: Final = "Controller/Status"
DEFAULT_COUNTS: Final = (0, 1000, 10000, 50000)
CREATE_INFLIGHT: Final = 256


def idle_id(i: int) -> str:
    return f"idle-{i:06d}"


def create_slot(ids: Sequence[str]) -> Slot:
    """Create each of ``ids`` (sim, not started), one after the other."""
    for sid in ids:
        reply = yield f"Create {sid}", request("Create", {"sandbox_id": sid, "sandboxer": "sim"})
        if reply.get("sandbox_id") != sid:
            raise BenchError(f"Create {sid}: unexpected reply {reply!r}")


def create_idle(path: str, first: int, last: int, inflight: int) -> dict[str, Any]:
    """Create idle sandboxes ``first`` .. ``last - 1``, ``inflight`` Creates at a time."""
    ids = [idle_id(i) for i in range(first, last)]
    lanes = max(1, min(inflight, len(ids)))
    began = time.perf_counter_ns()
    with Connection(path, timeout=60.0) as conn:
        calls = drive(conn, [create_slot(ids[lane::lanes]) for lane in range(lanes)])
    elapsed = (time.perf_counter_ns() - began) / 1e9
    if calls != len(ids):
        raise BenchError(f"{len(ids)} Creates sent, {calls} answered")
    return {"created": len(ids), "create_s": elapsed, "creates_per_s": len(ids) / elapsed}


def run(
    path: str,
    call: Call,
    counts: Sequence[int],
    seq: int,
    seq_warmup: int,
    inflight: int,
) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    with prepared(path, call), Connection(path) as conn:
        pid = peer_pid(conn.socket)
        have = 0
        for n in counts:
            point: dict[str, Any] = {"idle": n}
            if n > have:
                point |= create_idle(path, have, n, inflight)
                have = n
            point["status"] = measure_sequential(conn, call, seq, seq_warmup)
            memory = memory_kib(pid)
            point["rss_bytes"] = memory["VmRSS"] * 1024
            point["hwm_bytes"] = memory["VmHWM"] * 1024
            if points and n:
                base = points[0]
                prev = points[-1]
                point["bytes_per_sandbox"] = (point["rss_bytes"] - base["rss_bytes"]) / (
                    n - base["idle"]
                )
                if n > prev["idle"]:
                    point["marginal_bytes_per_sandbox"] = (
                        point["rss_bytes"] - prev["rss_bytes"]
                    ) / (n - prev["idle"])
            points.append(point)
    return {"call": call.name, "daemon_pid": pid, "create_inflight": inflight, "points": points}


def parse_counts(text: str) -> list[int]:
    counts = [int(c) for c in text.split(",") if c.strip()]
    if not counts or any(c < 0 for c in counts) or counts != sorted(counts):
        raise ValueError("--counts: non-negative numbers in increasing order")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaling",
        description="Status latency and daemon RSS with 0, 1k, 10k, 50k idle sandboxes.",
    )
    parser.add_argument("--socket", required=True, help="Unix socket of a fresh daemon")
    parser.add_argument(
        "--counts",
        default=",".join(map(str, DEFAULT_COUNTS)),
        help="idle sandbox counts, increasing; the first should be 0 "
        f"({','.join(map(str, DEFAULT_COUNTS))})",
    )
    parser.add_argument("--seq", type=int, default=3000, help="Status round trips per count")
    parser.add_argument("--seq-warmup", type=int, default=300, help="unrecorded ones first")
    parser.add_argument(
        "--create-inflight",
        type=int,
        default=CREATE_INFLIGHT,
        help=f"Creates in flight while filling the daemon ({CREATE_INFLIGHT})",
    )
    args = parser.parse_args(argv)
    try:
        counts = parse_counts(args.counts)
    except ValueError as exc:
        parser.error(str(exc))
    if args.seq < 1 or args.seq_warmup < 0 or args.create_inflight < 1:
        parser.error("--seq and --create-inflight must be positive")
    try:
        result = run(
            args.socket, CALLS[STATUS], counts, args.seq, args.seq_warmup, args.create_inflight
        )
    except (BenchError, OSError) as exc:
        print(f"bench.scaling: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
