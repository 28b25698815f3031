"""The measuring processes: one kind of measurement against one server, JSON on stdout.

    python -m bench.measure KIND [--socket PATH] [key=value ...]

Values are JSON (``points=[[1,64],[4,64]]``, ``call='"Controller/Status"'``, or a bare word,
which stands for itself: ``call=Controller/Status``).  The harness runs each in a process of
its own (a fresh interpreter and connection every time); each also runs on its own against any
socket.  Exit status 2 and a message on stderr when the measurement failed (a kind that
measures several points prints the ones that succeeded).  The kinds:

``server``
    the server table: the lean client's sequential loop and ``inflight`` requests in flight on
    one connection (:mod:`bench.client`), after the call's setup; with ``grpc=true``, gRPC's
    own clients against the gRPC server (:mod:`bench.grpc_baseline`).
``client``
    the clients section: sequential calls through one of sandboxd's clients (``client``, a key
    of ``CLIENT_KINDS``), or ``threads`` threads sharing one ``SyncController`` (calls/s).
    Both with this process's CPU time per call, from ``getrusage`` around the timed calls.
``throughput``
    requests/s at each of ``points`` (connections x in flight on each).
``lifecycle``
    full lifecycles/s (create, start, stop, wait, shutdown) at each of ``points``
    (sandboxer, concurrent lifecycles on one connection).
``scaling``
    Status latency and daemon memory with ``counts`` idle sandboxes.
``embedded``
    sim lifecycles against a Controller in this process (no socket), with and without a
    state store.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import gc
import json
import resource
import secrets
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import trio

from sandboxd import Controller, SyncController, connect
from sandboxd.rpc import SyncClient, open_client
from sandboxd.runtime import SandboxStore

from .calls import CALLS, Call
from .client import (
    BenchError,
    Connection,
    Slot,
    Window,
    drive,
    latency_summary,
    measure_pipelined,
    measure_sequential,
    memory_kib,
    peer_pid,
    prepared,
    request_payload,
)

#: A measurement still running this long (plus its expected length) dumps every thread's
#: stack and exits: a hung call shows where it hangs.
WATCHDOG_S: Final = 60.0
CONTROLLER: Final = "sandboxd.v1.Controller"
STOP_TIMEOUT: Final = 5.0
#: The exit status Wait must report: a sim sandbox and ``sleep`` both die of Stop's SIGTERM.
SIGTERM_EXIT: Final = 143
#: The process backend's command: the cost of spawning and reaping a process, not that of
#: starting the pause process's interpreter.
SLEEP: Final = ("sleep", "1000")


def server(
    socket: str,
    call: str,
    seq: int,
    seq_warmup: int,
    inflight: int,
    warmup: float,
    duration: float,
    grpc: bool = False,
) -> dict[str, Any]:
    """The server table's figures of ``call``: sequential, then pipelined on one connection;
    with ``grpc``, of the gRPC server through gRPC's own clients instead."""
    if grpc:
        from .grpc_baseline import measure

        target = f"unix:{socket}"
        return {"call": call, **measure(target, seq, seq_warmup, inflight, warmup, duration)}
    measured = CALLS[call]
    with prepared(socket, measured):
        with Connection(socket) as conn:
            seq_figures = measure_sequential(conn, measured, seq, seq_warmup)
        pipelined = measure_pipelined(socket, measured, 1, inflight, warmup, duration)
    keys = ("inflight", "warmup_s", "completed", "elapsed_s", "drained", "rps")
    return {"call": call, "seq": seq_figures, "pipelined": {k: pipelined[k] for k in keys}}


# --- sandboxd's clients -------------------------------------------------------------------


def _rusage_per_call(before: Any, after: Any, calls: int) -> dict[str, float]:
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "cpu_us": (user + system) / calls * 1e6,
        "user_us": user / calls * 1e6,
        "sys_us": system / calls * 1e6,
        "voluntary_switches": (after.ru_nvcsw - before.ru_nvcsw) / calls,
        "involuntary_switches": (after.ru_nivcsw - before.ru_nivcsw) / calls,
    }


def _rusage() -> Any:
    return resource.getrusage(resource.RUSAGE_SELF)


def _checker(call: Call) -> Callable[[object], None]:
    """A check of one result: a dict or a model with the expected keys, naming the sandbox."""
    want = call.request.get("sandbox_id")

    def check(result: object) -> None:
        if isinstance(result, Mapping):
            missing = [key for key in call.expect_keys if key not in result]
            named = result.get("sandbox_id", want)
        else:
            missing = [key for key in call.expect_keys if not hasattr(result, key)]
            named = getattr(result, "sandbox_id", want)
        if missing:
            raise BenchError(f"{call.name}: result {result!r} lacks {missing}")
        if named != want:
            raise BenchError(f"{call.name}: result names sandbox {named!r}, not {want!r}")

    return check


def _model_method(controller: Any, call: Call) -> Callable[[], Any]:
    """The (Sync or Remote) controller's method for ``call``, bound to its arguments."""
    if call.name == "Runtime/Version":
        return controller.version  # type: ignore[no-any-return]
    method = {"Status": "status", "Ping": "ping", "Wait": "wait"}[call.method]
    return functools.partial(getattr(controller, method), call.request["sandbox_id"])


async def _timed(
    invoke: Callable[[], Awaitable[object]], call: Call, count: int, warmup: int
) -> dict[str, Any]:
    """Latencies of ``count`` calls after ``warmup`` unrecorded ones, each result checked, and
    the CPU time the timed ones took (GC collected, then off)."""
    check, samples = _checker(call), []
    gc.collect()
    gc.disable()
    try:
        before = _rusage()
        for n in range(warmup + count):
            if n == warmup:
                before = _rusage()
            start = time.perf_counter_ns()
            result = await invoke()
            samples.append(time.perf_counter_ns() - start)
            check(result)
        after = _rusage()
    finally:
        gc.enable()
    return latency_summary(samples[warmup:], warmup) | _rusage_per_call(before, after, count)


def _blocking(invoke: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    """A blocking call as a coroutine that never suspends: one timed loop for every client."""

    async def call() -> object:
        return invoke()

    return call


async def _client_seq(path: str, kind: str, call: Call, count: int, warmup: int) -> dict[str, Any]:
    """Sequential calls through the client ``kind`` (a key of ``CLIENT_KINDS`` but ``lean``)."""
    raw = (call.service, call.method, dict(call.request) or None)
    async with contextlib.AsyncExitStack() as stack:
        if kind == "sync-call":
            invoke = _blocking(functools.partial(stack.enter_context(SyncClient(path)).call, *raw))
        elif kind == "sync-model":
            invoke = _blocking(_model_method(stack.enter_context(SyncController(path)), call))
        elif kind == "trio-call":
            invoke = functools.partial(
                (await stack.enter_async_context(open_client(path))).call, *raw
            )
        else:
            invoke = _model_method(await stack.enter_async_context(connect(path)), call)
        return await _timed(invoke, call, count, warmup)


def _lean_seq(path: str, call: Call, count: int, warmup: int) -> dict[str, Any]:
    """The lean client's sequential loop, with its CPU time per call."""
    with Connection(path) as conn:
        if warmup:  # a run of its own: the timed run's frames are encoded in its CPU time
            measure_sequential(conn, call, warmup, 0)
        before = _rusage()
        figures = measure_sequential(conn, call, count, 0)
        return figures | {"warmup": warmup} | _rusage_per_call(before, _rusage(), count)


def _threads(
    path: str, call: Call, threads: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Calls/s of ``threads`` threads sharing one SyncController, calling in a loop; the calls
    that end within the window after the warm-up are counted."""
    check = _checker(call)
    records: list[list[tuple[int, int]]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    stop, go = threading.Event(), threading.Barrier(threads + 1)
    with SyncController(path) as controller:
        invoke = _model_method(controller, call)

        def worker(mine: list[tuple[int, int]]) -> None:
            try:
                go.wait()
                while not stop.is_set():
                    start = time.perf_counter_ns()
                    result = invoke()
                    end = time.perf_counter_ns()
                    check(result)
                    mine.append((end, end - start))
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        workers = [threading.Thread(target=worker, args=(r,), daemon=True) for r in records]
        gc.collect()
        gc.disable()
        try:
            for thread in workers:
                thread.start()
            go.wait()
            stop.wait(warmup_s)
            before, window_start = _rusage(), time.perf_counter_ns()
            stop.wait(duration_s)
            window_end, after = time.perf_counter_ns(), _rusage()
            stop.set()
            for thread in workers:
                thread.join(10.0)
        finally:
            gc.enable()
    if errors:
        raise BenchError(f"{call.name}: a thread failed: {type(errors[0]).__name__}: {errors[0]}")
    if any(thread.is_alive() for thread in workers):
        raise BenchError(f"{call.name}: a thread still in a call 10 s after the window closed")
    in_window = [[took for end, took in r if window_start <= end < window_end] for r in records]
    samples = [took for mine in in_window for took in mine]
    if not samples:
        raise BenchError(f"{call.name}: no call completed in the measuring window")
    elapsed = (window_end - window_start) / 1e9
    return {
        "threads": threads,
        "warmup_s": warmup_s,
        "completed": len(samples),
        "elapsed_s": elapsed,
        "calls_per_s": len(samples) / elapsed,
        "per_thread_min": min(map(len, in_window)),
        "per_thread_max": max(map(len, in_window)),
        **latency_summary(samples, 0),
        **_rusage_per_call(before, after, len(samples)),
    }


def client(
    socket: str,
    client: str,
    call: str,
    seq: int = 3000,
    seq_warmup: int = 300,
    threads: int = 0,
    warmup: float = 0.3,
    duration: float = 2.0,
) -> dict[str, Any]:
    """One call through one client (``threads`` > 0: threads sharing one SyncController)."""
    measured = CALLS[call]
    watchdog = WATCHDOG_S + warmup + duration + (seq + seq_warmup) / 100
    faulthandler.dump_traceback_later(watchdog, exit=True)
    with prepared(socket, measured):
        if threads:
            return {
                "client": client,
                "call": call,
                "threads": _threads(socket, measured, threads, warmup, duration),
            }
        if client == "lean":
            figures = _lean_seq(socket, measured, seq, seq_warmup)
        else:
            figures = trio.run(_client_seq, socket, client, measured, seq, seq_warmup)
        return {"client": client, "call": call, "seq": figures}


# --- load sections --------------------------------------------------------------------------


def throughput(
    socket: str, call: str, points: Sequence[Sequence[int]], warmup: float, duration: float
) -> dict[str, Any]:
    """The call's setup, every (connections, in flight) point in turn, the teardown."""
    measured = CALLS[call]
    with prepared(socket, measured):
        return {
            "call": call,
            "points": [
                measure_pipelined(socket, measured, c, k, warmup, duration) for c, k in points
            ],
        }


def _request(method: str, message: dict[str, Any]) -> bytes:
    return request_payload(CONTROLLER, method, message)


def _expect(ok: bool, what: str, reply: dict[str, Any]) -> None:
    if not ok:
        raise BenchError(f"{what}: unexpected reply {reply!r}")


def _lifecycles(window: Window, tag: str, sandboxer: str) -> Slot:
    """Whole lifecycles, one after the other, until the window closes."""
    n = 0
    while not window.stop:
        sid = f"lc-{tag}-{n}"
        n += 1
        create: dict[str, Any] = {"sandbox_id": sid, "sandboxer": sandboxer}
        if sandboxer != "sim":
            create["options"] = {"command": list(SLEEP)}
        one = {"sandbox_id": sid}
        began = time.perf_counter_ns()
        reply = yield f"Create {sid}", _request("Create", create)
        _expect(reply.get("sandbox_id") == sid, f"Create {sid}", reply)
        reply = yield f"Start {sid}", _request("Start", one)
        pid = reply.get("pid")
        _expect(
            reply.get("sandbox_id") == sid and isinstance(pid, int) and pid > 0,
            f"Start {sid}",
            reply,
        )
        yield f"Stop {sid}", _request("Stop", {**one, "timeout_secs": STOP_TIMEOUT})
        reply = yield f"Wait {sid}", _request("Wait", one)
        _expect(reply.get("exit_status") == SIGTERM_EXIT, f"Wait {sid}", reply)
        yield f"Shutdown {sid}", _request("Shutdown", one)
        window.finished(began)


def _lifecycle_point(
    path: str, sandboxer: str, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Lifecycles/s with ``concurrency`` of them at once on one connection."""
    tag = secrets.token_hex(3)
    with Connection(path, timeout=30.0) as conn:
        window = Window(peer_pid(conn.socket), warmup_s, duration_s)
        slots = [_lifecycles(window, f"{tag}-{i}", sandboxer) for i in range(concurrency)]
        began = time.perf_counter_ns()
        gc.disable()
        try:
            calls = drive(conn, slots, window.tick)
        finally:
            gc.enable()
        total_s = (time.perf_counter_ns() - began) / 1e9
    if not window.durations:
        raise BenchError(f"{sandboxer} x{concurrency}: no lifecycle finished in the window")
    elapsed, done = (window.stop - window.start) / 1e9, len(window.durations)
    return {
        "sandboxer": sandboxer,
        "concurrency": concurrency,
        "command": shlex.join(SLEEP) if sandboxer != "sim" else None,
        "warmup_s": warmup_s,
        "elapsed_s": elapsed,
        "lifecycles": done,
        "lifecycles_per_s": done / elapsed,
        "calls_per_s": done * 5 / elapsed,
        "lifecycle_us": latency_summary(window.durations, 0, cdf=False),
        "server_cpu": window.server_cpu / elapsed,
        "client_cpu": window.client_cpu / elapsed,
        "calls_total": calls,
        "total_s": total_s,
    }


def lifecycle(
    socket: str, points: Sequence[tuple[str, int]], warmup: float, duration: float
) -> dict[str, Any]:
    """Every (sandboxer, concurrency) point in turn; a failed one is ``{"error": ...}``."""
    out = []
    for sandboxer, n in points:
        try:
            out.append(_lifecycle_point(socket, sandboxer, n, warmup, duration))
        except (BenchError, OSError) as exc:
            print(
                f"lifecycle: {sandboxer} x{n}: FAILED: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            out.append(
                {"sandboxer": sandboxer, "concurrency": n, "error": f"{type(exc).__name__}: {exc}"}
            )
    return {"points": out}


def _create_idle(ids: Sequence[str]) -> Slot:
    for sid in ids:
        reply = yield f"Create {sid}", _request("Create", {"sandbox_id": sid, "sandboxer": "sim"})
        _expect(reply.get("sandbox_id") == sid, f"Create {sid}", reply)


def scaling(
    socket: str, counts: Sequence[int], seq: int, seq_warmup: int, create_inflight: int = 256
) -> dict[str, Any]:
    """Status's setup, then for each count n: n idle sim sandboxes (Creates pipelined,
    ``create_inflight`` at a time), Status's sequential latency and the daemon's RSS."""
    call = CALLS["Controller/Status"]
    points: list[dict[str, Any]] = []
    with prepared(socket, call), Connection(socket) as conn:
        pid = peer_pid(conn.socket)
        for n in counts:
            point: dict[str, Any] = {"idle": n}
            have = points[-1]["idle"] if points else 0
            if n > have:
                ids = [f"idle-{i:06d}" for i in range(have, n)]
                lanes = max(1, min(create_inflight, len(ids)))
                began = time.perf_counter_ns()
                with Connection(socket, timeout=60.0) as filler:
                    drive(filler, [_create_idle(ids[lane::lanes]) for lane in range(lanes)])
                elapsed = (time.perf_counter_ns() - began) / 1e9
                point |= {
                    "created": len(ids),
                    "create_s": elapsed,
                    "creates_per_s": len(ids) / elapsed,
                }
            point["status"] = measure_sequential(conn, call, seq, seq_warmup)
            memory = memory_kib(pid)
            point["rss_bytes"], point["hwm_bytes"] = memory["VmRSS"] * 1024, memory["VmHWM"] * 1024
            if points and n:
                base, prev = points[0], points[-1]
                point["bytes_per_sandbox"] = (point["rss_bytes"] - base["rss_bytes"]) / (
                    n - base["idle"]
                )
                if n > prev["idle"]:
                    point["marginal_bytes_per_sandbox"] = (
                        point["rss_bytes"] - prev["rss_bytes"]
                    ) / (n - prev["idle"])
            points.append(point)
    return {
        "call": call.name,
        "daemon_pid": pid,
        "create_inflight": create_inflight,
        "points": points,
    }


async def _embedded_point(
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
                if (status := (await controller.wait(sid)).exit_status) != SIGTERM_EXIT:
                    raise BenchError(f"Wait {sid}: exit status {status}")
                await controller.shutdown(sid)
                if start <= began and time.perf_counter_ns() <= stop:
                    durations.append(time.perf_counter_ns() - began)

        gc.disable()
        try:
            async with trio.open_nursery() as slots:
                for k in range(concurrency):
                    slots.start_soon(slot, k)
                await trio.sleep(warmup_s)
                cpu = time.process_time()
                await trio.sleep(duration_s)
                cpu = time.process_time() - cpu
        finally:
            gc.enable()
        if len(controller):
            raise BenchError(f"{len(controller)} sandboxes left after the run")
        nursery.cancel_scope.cancel()
    if not durations:
        raise BenchError(f"x{concurrency}: no lifecycle began and ended in the window")
    return {
        "concurrency": concurrency,
        "store": store is not None,
        "lifecycles": len(durations),
        "lifecycles_per_s": len(durations) / duration_s,
        "lifecycle_us": latency_summary(durations, 0, cdf=False),
        "cpu": cpu / duration_s,
    }


def embedded(points: Sequence[int], warmup: float, duration: float) -> dict[str, Any]:
    """Each concurrency with a state store in a fresh directory, then kept in memory."""
    out = []
    for n in points:
        for with_store in (True, False):
            with tempfile.TemporaryDirectory(prefix="sandboxd-bench-") as state:
                store = SandboxStore.open(state) if with_store else None
                try:
                    out.append(trio.run(_embedded_point, n, store, warmup, duration))
                finally:
                    if store is not None:
                        store.close()
    return {"points": out}


KINDS: Final[dict[str, Callable[..., dict[str, Any]]]] = {
    "server": server,
    "client": client,
    "throughput": throughput,
    "lifecycle": lifecycle,
    "scaling": scaling,
    "embedded": embedded,
}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in KINDS:
        print(__doc__, file=sys.stderr)
        return 2
    kind, options = args.pop(0), {}
    while args:
        arg = args.pop(0)
        if arg == "--socket" and args:
            options["socket"] = args.pop(0)
        elif "=" in arg:
            key, _, value = arg.partition("=")
            options[key.replace("-", "_")] = _value(value)
        else:
            print(f"bench.measure: unexpected argument {arg!r}", file=sys.stderr)
            return 2
    try:
        result = KINDS[kind](**options)
    except (BenchError, OSError, TypeError, KeyError) as exc:
        print(f"bench.measure {kind}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    print()
    return 2 if any("error" in p for p in result.get("points", [])) else 0


if __name__ == "__main__":
    sys.exit(main())
