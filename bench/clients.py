"""What sandboxd's own clients cost: the same calls through each client, against one daemon.

One measurement per process, on its own connection (setup and teardown of the call, e.g.
creating the sim sandbox whose Status is measured, run unmeasured on a second connection with
the lean client of :mod:`bench.client`):

* sequential (every client but ``sync-threads``): N calls one after the other after an
  unrecorded warm-up, ``perf_counter_ns`` around each; p50/p99 (and more) in microseconds.

  - ``lean``: :func:`bench.client.measure_sequential`, the reference: frames encoded up front,
    ``sendall`` and a blocking read, no decoding of a reply byte-identical to the last one.
  - ``sync-call``: ``sandboxd.rpc.SyncClient.call`` (messages in, dict out).
  - ``sync-model``: ``sandboxd.SyncController`` (``version()``, ``status(id)``: models out).
  - ``trio-call``: ``sandboxd.rpc.open_client`` + ``Client.call`` inside ``trio.run``.
  - ``trio-model``: ``sandboxd.connect`` + ``RemoteController`` inside ``trio.run``.

* ``sync-threads``: T threads sharing one ``SyncController``, each calling in a loop; after
  a warm-up, the calls completed in a fixed window are counted (calls/s), and their latencies
  are kept (p50/p99 under that contention).

Both also report this process's CPU time (user + system) and context switches per call, from
``getrusage`` around the measured calls only (for trio, the run loop's and the reader task's
share included; for the lean client, encoding its request frames up front): the client's own
cost, which depends much less than the latency on what else the machine is doing.

Every result is checked (the call's expected keys, as a map key or a model attribute, and the
sandbox id where the result names one); any wrong or failed call voids the measurement.  GC is
collected, then off, during the timed loops, as in the lean client.  All clients send the same
request bytes: no deadline, no metadata.

Run: ``python -m bench.clients --socket PATH --client KIND --call CALL [--seq N ...]``; prints
one JSON object on stdout.  Exit status 2 and a message on stderr when the benchmark failed.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import gc
import json
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import trio

from sandboxd import RemoteController, RPCError, SyncController, connect
from sandboxd.rpc import SyncClient, open_client

from .calls import CALLS, CLIENT_KINDS, CLIENT_THREADS, THREADED_CLIENT, Call
from .client import BenchError, Connection, call_once, latency_summary, measure_sequential

KINDS: Final = (*CLIENT_KINDS, THREADED_CLIENT)
#: A measurement still running this long (plus its window and 10 ms a call) dumps every
#: thread's stack and exits: a hung call shows where it hangs.
WATCHDOG_S: Final = 60.0
JOIN_TIMEOUT_S: Final = 10.0

Invoke = Callable[[], object]
AsyncInvoke = Callable[[], Awaitable[object]]
Check = Callable[[object], None]


def checker(call: Call) -> Check:
    """A check of one result of ``call``: a dict or a model holding the expected keys."""
    expect = call.expect_keys
    sandbox_id = call.request.get("sandbox_id")

    def check(result: object) -> None:
        if isinstance(result, Mapping):
            missing = [key for key in expect if key not in result]
            named = result.get("sandbox_id", sandbox_id)
        else:
            missing = [key for key in expect if not hasattr(result, key)]
            named = getattr(result, "sandbox_id", sandbox_id)
        if missing:
            raise BenchError(f"{call.name}: result {result!r} lacks {missing}")
        if named != sandbox_id:
            raise BenchError(f"{call.name}: result names sandbox {named!r}, not {sandbox_id!r}")

    return check


def _message(call: Call) -> dict[str, Any] | None:
    return dict(call.request) or None


def _sandbox_id(call: Call) -> str:
    sandbox_id = call.request.get("sandbox_id")
    if not isinstance(sandbox_id, str):
        raise BenchError(f"{call.name}: no sandbox_id in the request")
    return sandbox_id


def sync_model(controller: SyncController, call: Call) -> Invoke:
    """The SyncController method for ``call``, bound to its arguments."""
    if call.name == "Runtime/Version":
        return controller.version
    methods: dict[str, Callable[[str], object]] = {
        "Controller/Status": controller.status,
        "Controller/Ping": controller.ping,
        "Controller/Wait": controller.wait,
    }
    if call.name not in methods:
        raise BenchError(f"{call.name}: no SyncController method mapped")
    return functools.partial(methods[call.name], _sandbox_id(call))


def trio_model(controller: RemoteController, call: Call) -> AsyncInvoke:
    """The RemoteController method for ``call``, bound to its arguments."""
    if call.name == "Runtime/Version":
        return controller.version
    methods: dict[str, Callable[[str], Awaitable[object]]] = {
        "Controller/Status": controller.status,
        "Controller/Ping": controller.ping,
        "Controller/Wait": controller.wait,
    }
    if call.name not in methods:
        raise BenchError(f"{call.name}: no RemoteController method mapped")
    return functools.partial(methods[call.name], _sandbox_id(call))


@contextmanager
def prepared(path: str, call: Call) -> Iterator[None]:
    """The call's setup before the block and its teardown after, on a lean connection."""
    with Connection(path) as conn:
        for step in call.setup:
            call_once(conn, step)
        try:
            yield
        finally:
            for step in call.teardown:
                call_once(conn, step)


def cpu_per_call(
    before: resource.struct_rusage, after: resource.struct_rusage, calls: int
) -> dict[str, float]:
    """This process's CPU time and context switches per call, between two ``getrusage``."""
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    return {
        "cpu_us": (user + system) / calls * 1e6,
        "user_us": user / calls * 1e6,
        "sys_us": system / calls * 1e6,
        "voluntary_switches": (after.ru_nvcsw - before.ru_nvcsw) / calls,
        "involuntary_switches": (after.ru_nivcsw - before.ru_nivcsw) / calls,
    }


# --- sequential ----------------------------------------------------------------------------


def _rusage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_SELF)


def _timed(invoke: Invoke, check: Check, n: int, samples: list[int]) -> None:
    perf_counter_ns = time.perf_counter_ns
    for _ in range(n):
        start = perf_counter_ns()
        result = invoke()
        stop = perf_counter_ns()
        check(result)
        samples.append(stop - start)


def sequential(invoke: Invoke, check: Check, count: int, warmup: int) -> dict[str, Any]:
    """``warmup`` calls, then ``count`` timed ones: their latency and the CPU they took."""
    samples: list[int] = []
    gc.collect()
    gc.disable()
    try:
        _timed(invoke, check, warmup, [])
        before = _rusage()
        _timed(invoke, check, count, samples)
        after = _rusage()
    finally:
        gc.enable()
    return latency_summary(samples, warmup) | cpu_per_call(before, after, count)


async def _timed_async(invoke: AsyncInvoke, check: Check, n: int, samples: list[int]) -> None:
    perf_counter_ns = time.perf_counter_ns
    for _ in range(n):
        start = perf_counter_ns()
        result = await invoke()
        stop = perf_counter_ns()
        check(result)
        samples.append(stop - start)


async def sequential_async(
    invoke: AsyncInvoke, check: Check, count: int, warmup: int
) -> dict[str, Any]:
    """As :func:`sequential`, awaiting each call (the run loop's CPU time included)."""
    samples: list[int] = []
    gc.collect()
    gc.disable()
    try:
        await _timed_async(invoke, check, warmup, [])
        before = _rusage()
        await _timed_async(invoke, check, count, samples)
        after = _rusage()
    finally:
        gc.enable()
    return latency_summary(samples, warmup) | cpu_per_call(before, after, count)


def lean_sequential(path: str, call: Call, count: int, warmup: int) -> dict[str, Any]:
    """bench.client's sequential loop: the warm-up as a run of its own, then the timed run."""
    with Connection(path) as conn:
        if warmup:
            measure_sequential(conn, call, warmup, 0)
        before = _rusage()
        figures = measure_sequential(conn, call, count, 0)
        after = _rusage()
    # The timed run encodes its request frames up front: that CPU time is in the figure too.
    return figures | {"warmup": warmup} | cpu_per_call(before, after, count)


async def _trio_sequential(
    path: str, kind: str, call: Call, count: int, warmup: int
) -> dict[str, Any]:
    if kind == "trio-call":
        async with open_client(path) as client:
            invoke = functools.partial(client.call, call.service, call.method, _message(call))
            return await sequential_async(invoke, checker(call), count, warmup)
    async with connect(path) as controller:
        return await sequential_async(trio_model(controller, call), checker(call), count, warmup)


def measure(path: str, kind: str, call: Call, count: int, warmup: int) -> dict[str, Any]:
    """Sequential latency of ``call`` through the client ``kind``."""
    if kind == "lean":
        return lean_sequential(path, call, count, warmup)
    if kind == "sync-call":
        with SyncClient(path) as client:
            invoke = functools.partial(client.call, call.service, call.method, _message(call))
            return sequential(invoke, checker(call), count, warmup)
    if kind == "sync-model":
        with SyncController(path) as controller:
            return sequential(sync_model(controller, call), checker(call), count, warmup)
    return trio.run(_trio_sequential, path, kind, call, count, warmup)


# --- threads -------------------------------------------------------------------------------


def measure_threads(
    path: str, call: Call, threads: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Calls per second of ``threads`` threads sharing one SyncController.

    Each thread calls in a loop and notes when each call ended and how long it took; the calls
    that ended within the window after the warm-up are counted.
    """
    perf_counter_ns = time.perf_counter_ns
    check = checker(call)
    records: list[list[tuple[int, int]]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    stop = threading.Event()
    go = threading.Barrier(threads + 1)

    with SyncController(path) as controller:
        invoke = sync_model(controller, call)

        def worker(mine: list[tuple[int, int]]) -> None:
            note = mine.append
            try:
                go.wait()
                while not stop.is_set():
                    start = perf_counter_ns()
                    result = invoke()
                    end = perf_counter_ns()
                    check(result)
                    note((end, end - start))
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        workers = [
            threading.Thread(target=worker, args=(mine,), name=f"bench-{i}", daemon=True)
            for i, mine in enumerate(records)
        ]
        gc.collect()
        gc.disable()
        try:
            for thread in workers:
                thread.start()
            go.wait()
            stop.wait(warmup_s)
            before = _rusage()
            window_start = perf_counter_ns()
            stop.wait(duration_s)
            window_end = perf_counter_ns()
            after = _rusage()
            stop.set()
            late = time.monotonic() + JOIN_TIMEOUT_S
            for thread in workers:
                thread.join(max(0.0, late - time.monotonic()))
        finally:
            gc.enable()
        stuck = [thread.name for thread in workers if thread.is_alive()]
    if errors:
        exc = errors[0]
        if isinstance(exc, BenchError):
            raise exc
        raise BenchError(f"{call.name}: a thread failed: {type(exc).__name__}: {exc}")
    if stuck:
        raise BenchError(
            f"{call.name}: {len(stuck)} thread(s) still in a call {JOIN_TIMEOUT_S} s "
            "after the window closed"
        )
    in_window = [
        [took for end, took in mine if window_start <= end < window_end] for mine in records
    ]
    samples = [took for mine in in_window for took in mine]
    if not samples:
        raise BenchError(f"{call.name}: no call completed in the measuring window")
    elapsed = (window_end - window_start) / 1e9
    per_thread = [len(mine) for mine in in_window]
    return {
        "threads": threads,
        "warmup_s": warmup_s,
        "completed": len(samples),
        "elapsed_s": elapsed,
        "calls_per_s": len(samples) / elapsed,
        "per_thread_min": min(per_thread),
        "per_thread_max": max(per_thread),
        **latency_summary(samples, 0),
        **cpu_per_call(before, after, len(samples)),
    }


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.clients", description="Measure one call through one client."
    )
    parser.add_argument("--socket", required=True, help="Unix socket of the server")
    parser.add_argument("--client", required=True, choices=KINDS)
    parser.add_argument("--call", required=True, choices=sorted(CALLS))
    parser.add_argument("--seq", type=int, default=3000, help="sequential calls")
    parser.add_argument("--seq-warmup", type=int, default=300, help="unrecorded ones first")
    parser.add_argument("--threads", type=int, default=CLIENT_THREADS, help="for sync-threads")
    parser.add_argument("--warmup", type=float, default=0.3, help="sync-threads warm-up, s")
    parser.add_argument("--duration", type=float, default=2.0, help="sync-threads window, s")
    args = parser.parse_args(argv)
    if args.seq < 1 or args.seq_warmup < 0 or args.threads < 1 or args.duration <= 0:
        parser.error("--seq, --threads and --duration must be positive")
    call = CALLS[args.call]
    watchdog = WATCHDOG_S + args.warmup + args.duration + (args.seq + args.seq_warmup) / 100
    faulthandler.dump_traceback_later(watchdog, exit=True)
    result: dict[str, Any] = {"client": args.client, "call": call.name}
    try:
        with prepared(args.socket, call):
            if args.client == THREADED_CLIENT:
                result["threads"] = measure_threads(
                    args.socket, call, args.threads, args.warmup, args.duration
                )
            else:
                result["seq"] = measure(args.socket, args.client, call, args.seq, args.seq_warmup)
    except (BenchError, RPCError, OSError) as exc:
        print(
            f"bench.clients: {args.client} {call.name}: FAILED: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 2
    finally:
        faulthandler.cancel_dump_traceback_later()
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
