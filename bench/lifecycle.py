"""Full sandbox lifecycles per second: create, start, stop, wait, shutdown, through the socket.

A lean client, no event loop: one blocking connection on which N lifecycles run at once
(N = 1: sequential).  Each of the N *slots* is a generator that yields the next request of
its lifecycle and is sent the decoded reply; the driver (:func:`drive`) keeps one request of
every slot in flight, sends the next one as soon as the reply is in, and batches the sends
of one read.  So the daemon sees N concurrent lifecycles on one connection, and the client
spends a few microseconds per call (encode a small map, decode the reply).

One lifecycle, on a fresh sandbox id (``lc-<run>-<slot>-<n>``)::

    Create (sandboxer; for process: options.command)  -> the sandbox id
    Start                                             -> an instance with a pid > 0
    Stop (timeout_secs 5)                             -> {}
    Wait                                              -> the exit status (143: SIGTERM)
    Shutdown                                          -> {}

Every reply is checked (an error status, a wrong id or pid, an unexpected exit status void
the measurement).  The slots run for a warm-up, then the lifecycles that *finish* in a fixed
window are counted: lifecycles per second (and calls per second, 5 per lifecycle).  After
the window no slot starts a new lifecycle; those in progress are finished (checked, not
counted), so every sandbox the run created is shut down by its own calls.  The CPU time of
the daemon (the socket's peer) and of this client in the window is reported as a fraction
of one core.

The ``process`` backend runs ``sleep 1000`` by default (``--command``): the cost of spawning
and reaping a real process, not that of starting the pause process's interpreter.

Run: ``python -m bench.lifecycle --socket PATH --points sim:1,sim:64,process:1,process:64``;
prints one JSON object on stdout.  Exit status 2 and a message on stderr on failure.
"""

from __future__ import annotations

import argparse
import gc
import json
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, Final

from sandboxd.wire import (
    FrameType,
    RPCError,
    decode_response,
    dumps,
    encode_request,
    loads_message,
)

from .client import BenchError, Connection, latency_summary
from .procstat import cpu_seconds, peer_pid

CONTROLLER: Final = "sandboxd.v1.Controller"
#: The sandboxed command of the process backend's lifecycles.
DEFAULT_COMMAND: Final = ("sleep", "1000")
STOP_TIMEOUT: Final = 5.0
#: Exit status Wait must report: both a sim sandbox and ``sleep`` die of Stop's SIGTERM.
SIGTERM_EXIT: Final = 143
DEFAULT_POINTS: Final = (("sim", 1), ("sim", 64), ("process", 1), ("process", 64))

#: A slot yields (what, request envelope) and is sent the reply's message.
Slot = Generator[tuple[str, bytes], dict[str, Any], None]


def request(method: str, message: dict[str, Any]) -> bytes:
    """The request envelope of one Controller call."""
    return encode_request(CONTROLLER, method, dumps(message))


def drive(
    conn: Connection, slots: Sequence[Slot], on_batch: Callable[[], None] | None = None
) -> int:
    """Run ``slots`` to their end on ``conn``, one request of each in flight; the calls made.

    ``on_batch`` is called after the replies of each read are handled (and their successors
    sent).  A reply with an error status, on an unknown stream or of the wrong frame type
    raises :class:`BenchError`, as does whatever a slot raises.
    """
    pending: dict[int, tuple[str, Slot]] = {}
    calls = 0

    def advance(slot: Slot, reply: dict[str, Any] | None) -> bytes | None:
        try:
            what, payload = next(slot) if reply is None else slot.send(reply)
        except StopIteration:
            return None
        stream_id, data = conn.request(payload)
        pending[stream_id] = (what, slot)
        return data

    first = [data for slot in slots if (data := advance(slot, None)) is not None]
    if first:
        conn.send(b"".join(first))
    while pending:
        chunks = []
        for frame in conn.receive():
            try:
                what, slot = pending.pop(frame.stream_id)
            except KeyError:
                raise BenchError(f"response on stream {frame.stream_id}, not in flight") from None
            if frame.type != FrameType.RESPONSE:
                raise BenchError(f"{what}: frame type {frame.type}, not a response")
            try:
                reply = loads_message(decode_response(frame.payload), "response message")
            except RPCError as exc:
                raise BenchError(f"{what}: {exc.code.name}: {exc.message}") from None
            calls += 1
            data = advance(slot, reply)
            if data is not None:
                chunks.append(data)
        if chunks:
            conn.send(b"".join(chunks))
        if on_batch is not None:
            on_batch()
    return calls


class Window:
    """The warm-up and the measuring window, opened and closed by the driver's batches."""

    def __init__(self, server: int, warmup_s: float, duration_s: float) -> None:
        now = time.perf_counter_ns()
        self.server = server
        self.measure_from = now + int(warmup_s * 1e9)
        self.measure_to = self.measure_from + int(duration_s * 1e9)
        self.start = self.stop = 0
        self.server_cpu = self.client_cpu = 0.0
        self.closed = False
        self.durations: list[int] = []  # ns, of the lifecycles finished in the window

    def tick(self) -> None:
        if self.closed:
            return
        now = time.perf_counter_ns()
        if not self.start:
            if now >= self.measure_from:
                self.start = now
                self.server_cpu = cpu_seconds(self.server)
                self.client_cpu = time.process_time()
        elif now >= self.measure_to:
            self.stop = now
            self.server_cpu = cpu_seconds(self.server) - self.server_cpu
            self.client_cpu = time.process_time() - self.client_cpu
            self.closed = True

    def finished(self, began: int) -> None:
        """A lifecycle begun at ``began`` just finished: counted if the window is open."""
        if self.start and not self.closed:
            self.durations.append(time.perf_counter_ns() - began)


def _expect(ok: bool, what: str, reply: dict[str, Any]) -> None:
    if not ok:
        raise BenchError(f"{what}: unexpected reply {reply!r}")


def lifecycle_slot(
    window: Window, tag: str, slot: int, sandboxer: str, command: Sequence[str]
) -> Slot:
    """Whole lifecycles, one after the other, until the window closes."""
    n = 0
    while not window.closed:
        sid = f"lc-{tag}-{slot}-{n}"
        n += 1
        create: dict[str, Any] = {"sandbox_id": sid, "sandboxer": sandboxer}
        if sandboxer != "sim":
            create["options"] = {"command": list(command)}
        one = {"sandbox_id": sid}
        began = time.perf_counter_ns()
        reply = yield f"Create {sid}", request("Create", create)
        _expect(reply.get("sandbox_id") == sid, f"Create {sid}", reply)
        reply = yield f"Start {sid}", request("Start", one)
        pid = reply.get("pid")
        ok = reply.get("sandbox_id") == sid and isinstance(pid, int) and pid > 0
        _expect(ok, f"Start {sid}", reply)
        reply = yield f"Stop {sid}", request("Stop", {**one, "timeout_secs": STOP_TIMEOUT})
        reply = yield f"Wait {sid}", request("Wait", one)
        _expect(reply.get("exit_status") == SIGTERM_EXIT, f"Wait {sid}", reply)
        reply = yield f"Shutdown {sid}", request("Shutdown", one)
        window.finished(began)


def measure(
    path: str,
    sandboxer: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    command: Sequence[str] = DEFAULT_COMMAND,
) -> dict[str, Any]:
    """Lifecycles per second with ``concurrency`` of them at once on one connection."""
    tag = secrets.token_hex(3)
    with Connection(path, timeout=30.0) as conn:
        window = Window(peer_pid(conn.socket), warmup_s, duration_s)
        slots = [lifecycle_slot(window, tag, i, sandboxer, command) for i in range(concurrency)]
        began = time.perf_counter_ns()
        gc.disable()
        try:
            calls = drive(conn, slots, window.tick)
        finally:
            gc.enable()
        total_s = (time.perf_counter_ns() - began) / 1e9
    if not window.closed:
        raise BenchError(f"{sandboxer} x{concurrency}: the slots ended before the window did")
    elapsed = (window.stop - window.start) / 1e9
    done = len(window.durations)
    if not done:
        raise BenchError(f"{sandboxer} x{concurrency}: no lifecycle finished in the window")
    lifecycle = latency_summary(window.durations, 0)
    del lifecycle["cdf_us"]
    return {
        "sandboxer": sandboxer,
        "concurrency": concurrency,
        "command": shlex.join(command) if sandboxer != "sim" else None,
        "warmup_s": warmup_s,
        "elapsed_s": elapsed,
        "lifecycles": done,
        "lifecycles_per_s": done / elapsed,
        "calls_per_s": done * 5 / elapsed,
        "lifecycle_us": lifecycle,
        "server_cpu": window.server_cpu / elapsed,
        "client_cpu": window.client_cpu / elapsed,
        "calls_total": calls,
        "total_s": total_s,
    }


def parse_points(text: str) -> list[tuple[str, int]]:
    """``"sim:1,process:64"`` -> ``[("sim", 1), ("process", 64)]``."""
    points = []
    for item in text.split(","):
        sandboxer, _, n = item.strip().partition(":")
        try:
            concurrency = int(n)
        except ValueError:
            raise ValueError(f"bad point {item!r}: expected SANDBOXER:CONCURRENCY") from None
        if not sandboxer or concurrency < 1:
            raise ValueError(f"bad point {item!r}: expected SANDBOXER:CONCURRENCY")
        points.append((sandboxer, concurrency))
    return points


def format_points(points: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{s}:{n}" for s, n in points)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lifecycle",
        description="Full sandbox lifecycles per second, sequential and concurrent.",
    )
    parser.add_argument("--socket", required=True, help="Unix socket of the daemon")
    parser.add_argument(
        "--points",
        default=format_points(DEFAULT_POINTS),
        help="SANDBOXER:CONCURRENCY, comma-separated, measured in this order "
        f"({format_points(DEFAULT_POINTS)})",
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up per point, s")
    parser.add_argument("--duration", type=float, default=3.0, help="window per point, s")
    parser.add_argument(
        "--command",
        default=shlex.join(DEFAULT_COMMAND),
        help=f"the process backend's command ({shlex.join(DEFAULT_COMMAND)!r})",
    )
    args = parser.parse_args(argv)
    try:
        points = parse_points(args.points)
    except ValueError as exc:
        parser.error(str(exc))
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive, --warmup not negative")
    command = shlex.split(args.command)
    results = []
    failed = False
    for sandboxer, concurrency in points:
        try:
            results.append(
                measure(args.socket, sandboxer, concurrency, args.warmup, args.duration, command)
            )
        except (BenchError, OSError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            print(
                f"bench.lifecycle: {sandboxer} x{concurrency}: FAILED: {message}", file=sys.stderr
            )
            results.append({"sandboxer": sandboxer, "concurrency": concurrency, "error": message})
            failed = True
    json.dump({"points": results}, sys.stdout)
    print()
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
