"""The exec benchmark: ExecSync and streaming Exec against nsenter, in one run.

    python -m bench.exec [--seq N] [--concurrency C] [--duration S] [--stream-mib M]
                         [--sandboxers bwrap,process] [--json FILE]

One sandboxd (:func:`bench.servers.serving`, fresh socket and state directory) runs one
sandbox per sandboxer (a pause process).  For each sandbox, in this order and interleaved
baseline/sandboxd per round so that a slow stretch of the machine hits both alike:

* **baseline**: ``subprocess.run(["nsenter", "-t", PID, "-a", "true"])`` from this process into
  the sandbox's init (the bare cost of entering its namespaces and running ``true``);
* **exec_sync**: ``ExecSync(["true"])`` through the trio :class:`~sandboxd.RemoteController`
  on one connection, sequentially (p50, p99 over ``--seq`` calls), then ``--concurrency``
  calls in flight for ``--duration`` seconds (execs/s); the baseline likewise from as many
  threads.

Then the streaming figure: ``Exec(["cat", FILE])`` of a ``--stream-mib`` MiB file (the host's,
seen read-only by a bwrap sandbox), read to the end through the same client (MiB/s), and the
same bytes sent through the exec's stdin to ``cat`` and read back (MiB/s each way).

Targets (the exec issue's): ExecSync p50 within 1.5x of the baseline's and at most 5 ms;
streaming at least 200 MiB/s.  A target missed is reported, it does not change the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

from sandboxd import ExecRequest, SandboxOptions, connect

from .servers import SANDBOXD, serving

#: The exec issue's targets.
MAX_P50_RATIO: Final = 1.5
MAX_P50_MS: Final = 5.0
MIN_STREAM_MIB_S: Final = 200.0
MIB: Final = 1 << 20


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50_ms": round(at(0.50) * 1e3, 3),
        "p99_ms": round(at(0.99) * 1e3, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1e3, 3),
        "n": len(ordered),
    }


def _nsenter(pid: int) -> Callable[[], None]:
    argv = ["nsenter", "-t", str(pid), "-a", "true"]

    def run() -> None:
        subprocess.run(argv, check=True)

    return run


def _baseline_rate(run: Callable[[], None], concurrency: int, duration: float) -> float:
    """Calls/s of ``run`` from ``concurrency`` threads for ``duration`` seconds."""
    done = [0] * concurrency
    stop = time.monotonic() + duration

    def loop(slot: int) -> None:
        while time.monotonic() < stop:
            run()
            done[slot] += 1

    began = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - began)


async def _measure(path: str, args: argparse.Namespace, data_file: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with connect(path) as ctl:
        for sandboxer in args.sandboxers:
            sandbox_id = f"bench-exec-{sandboxer}"
            await ctl.create(sandbox_id, sandboxer=sandboxer, options=SandboxOptions())
            instance = await ctl.start(sandbox_id)
            try:
                results[sandboxer] = await _measure_sandbox(
                    ctl, sandbox_id, instance.pid, args, data_file
                )
            finally:
                await ctl.shutdown(sandbox_id)
    return results


async def _measure_sandbox(
    ctl: Any, sandbox_id: str, pid: int, args: argparse.Namespace, data_file: str
) -> dict[str, Any]:
    true = ExecRequest(command=["true"])
    baseline = _nsenter(pid)
    for _ in range(args.warmup):
        await ctl.exec_sync(sandbox_id, true)
        baseline()
    exec_times: list[float] = []
    base_times: list[float] = []
    for _ in range(args.seq):
        began = time.perf_counter()
        result = await ctl.exec_sync(sandbox_id, true)
        exec_times.append(time.perf_counter() - began)
        if result.exit_status != 0:
            raise RuntimeError(f"true exited with {result.exit_status} in {sandbox_id}")
        began = time.perf_counter()
        baseline()
        base_times.append(time.perf_counter() - began)

    count = 0
    deadline = trio.current_time() + args.duration
    began = time.monotonic()

    async def loop() -> None:
        nonlocal count
        while trio.current_time() < deadline:
            await ctl.exec_sync(sandbox_id, true)
            count += 1

    async with trio.open_nursery() as nursery:
        for _ in range(args.concurrency):
            nursery.start_soon(loop)
    exec_rate = count / (time.monotonic() - began)
    base_rate = await trio.to_thread.run_sync(
        _baseline_rate, baseline, args.concurrency, args.duration
    )

    exec_q, base_q = _quantiles(exec_times), _quantiles(base_times)
    figures: dict[str, Any] = {
        "exec_sync": exec_q | {"per_s_concurrent": round(exec_rate, 1)},
        "baseline_nsenter": base_q | {"per_s_concurrent": round(base_rate, 1)},
        "p50_ratio": round(exec_q["p50_ms"] / base_q["p50_ms"], 3),
        "concurrency": args.concurrency,
    }
    cat_rate = await _stream_file(ctl, sandbox_id, data_file, args.stream_mib * MIB)
    figures["stream_cat_file_mib_s"] = round(cat_rate, 1)
    figures["stream_stdin_cat_mib_s"] = round(
        await _stream_stdin(ctl, sandbox_id, args.stream_mib), 1
    )
    return figures


async def _stream_file(ctl: Any, sandbox_id: str, data_file: str, size: int) -> float:
    """MiB/s of ``cat FILE`` (``size`` bytes) read to the end through Exec."""
    received = 0
    began = time.perf_counter()
    async with ctl.exec(sandbox_id, ExecRequest(command=["cat", data_file])) as proc:
        async for chunk in proc:
            received += len(chunk.data)
        result = await proc.wait()
    elapsed = time.perf_counter() - began
    if result.exit_status != 0 or received != size:
        raise RuntimeError(f"cat gave {received} of {size} bytes, status {result.exit_status}")
    return size / MIB / elapsed


async def _stream_stdin(ctl: Any, sandbox_id: str, mib: int) -> float:
    """MiB/s of ``mib`` MiB written to ``cat``'s stdin and read back from its stdout."""
    block = os.urandom(256 * 1024)
    total = mib * MIB
    received = 0
    began = time.perf_counter()
    async with ctl.exec(sandbox_id, ExecRequest(command=["cat"], stdin=True)) as proc:

        async def feed() -> None:
            sent = 0
            while sent < total:
                await proc.write(block)
                sent += len(block)
            await proc.close_stdin()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            async for chunk in proc:
                received += len(chunk.data)
        result = await proc.wait()
    elapsed = time.perf_counter() - began
    if result.exit_status != 0 or received != total:
        raise RuntimeError(f"cat echoed {received} of {total} bytes")
    return total / MIB / elapsed


def _targets(results: dict[str, Any]) -> list[str]:
    lines = []
    for sandboxer, figures in results.items():
        p50 = figures["exec_sync"]["p50_ms"]
        ratio = figures["p50_ratio"]
        ok = ratio <= MAX_P50_RATIO and p50 <= MAX_P50_MS
        lines.append(
            f"{'met' if ok else 'MISSED'}: {sandboxer} ExecSync p50 {p50} ms, {ratio}x nsenter "
            f"(target <= {MAX_P50_RATIO}x and <= {MAX_P50_MS:g} ms)"
        )
        rate = figures["stream_cat_file_mib_s"]
        ok = rate >= MIN_STREAM_MIB_S
        lines.append(
            f"{'met' if ok else 'MISSED'}: {sandboxer} cat through Exec {rate} MiB/s "
            f"(target >= {MIN_STREAM_MIB_S:g})"
        )
    return lines


def _table(results: dict[str, Any]) -> str:
    rows = [
        (
            "sandboxer",
            "exec p50",
            "exec p99",
            "nsenter p50",
            "nsenter p99",
            "ratio",
            "exec/s",
            "nsenter/s",
            "cat MiB/s",
            "stdin MiB/s",
        )
    ]
    for sandboxer, f in results.items():
        e, b = f["exec_sync"], f["baseline_nsenter"]
        rows.append(
            (
                sandboxer,
                f"{e['p50_ms']} ms",
                f"{e['p99_ms']} ms",
                f"{b['p50_ms']} ms",
                f"{b['p99_ms']} ms",
                f"{f['p50_ratio']}x",
                str(e["per_s_concurrent"]),
                str(b["per_s_concurrent"]),
                str(f["stream_cat_file_mib_s"]),
                str(f["stream_stdin_cat_mib_s"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exec", description="exec benchmark")
    parser.add_argument("--seq", type=int, default=300, help="sequential calls (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="calls before timing (default 20)")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight (default 8)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--stream-mib", type=int, default=100, help="MiB streamed (default 100)")
    parser.add_argument(
        "--sandboxers", default="bwrap,process", help="comma-separated (default bwrap,process)"
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON here")
    args = parser.parse_args()
    args.sandboxers = [s for s in args.sandboxers.split(",") if s]
    if shutil.which("nsenter") is None:
        print("bench.exec: nsenter (util-linux) is needed for the baseline", file=sys.stderr)
        return 2
    # Not under /tmp: a bwrap sandbox without a rootfs has a private /tmp of its own.
    with tempfile.TemporaryDirectory(prefix="sandboxd-bench-exec-", dir="/var/tmp") as tmp:
        data_file = str(Path(tmp) / "stream.bin")
        with open(data_file, "wb") as out:
            block = os.urandom(MIB)
            for _ in range(args.stream_mib):
                out.write(block)
        with serving("sandboxd", SANDBOXD) as served:
            results = trio.run(_measure, served.path, args, data_file)
    print(_table(results))
    for line in _targets(results):
        print(line)
    if args.json:
        command = shlex.join(["python", "-m", "bench.exec", *sys.argv[1:]])
        Path(args.json).write_text(
            json.dumps({"command": command, "cpus": os.cpu_count(), "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
