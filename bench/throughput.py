"""Throughput against concurrency: requests/s with C connections of K requests in flight each.

One process, one thread: C blocking connections watched by one ``selectors`` loop.  Each
connection starts with K requests outstanding and sends a new one for every response it reads
(sends batched per read), as :func:`bench.client.measure_pipelined` does on one connection.
After a warm-up, the responses that arrive in a fixed window are counted: requests per
second.  What is still in flight is then drained and checked, not counted.  Every response is
checked as in :mod:`bench.client` (a RESPONSE frame on a stream in flight on that
connection, no error status, the call's keys; bytes equal to the last good reply are not
decoded again).

Beside the rate, each point reports the CPU time the server process (the socket's peer, from
``SO_PEERCRED``) and this client used in the window, as a fraction of one core: a server
near 1.0 is saturated, a client near 1.0 means the client may be what limits the figure.

Run: ``python -m bench.throughput --socket PATH --call Controller/Status
--points 1x1,1x16,1x64,1x256,4x64,16x64``; prints one JSON object on stdout.  Exit status 2
and a message on stderr when the benchmark failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import selectors
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from sandboxd.wire import Frame

from .calls import BASELINE_CALL, CALLS, Call
from .client import DEFAULT_TIMEOUT, BenchError, Checker, Connection, request_payload
from .clients import prepared
from .procstat import cpu_seconds, peer_pid

#: (connections, requests in flight per connection): in flight on one connection, then more
#: connections of 64 each.
DEFAULT_POINTS: Final = ((1, 1), (1, 16), (1, 64), (1, 256), (4, 64), (16, 64))


def parse_points(text: str) -> list[tuple[int, int]]:
    """``"1x64,4x64"`` -> ``[(1, 64), (4, 64)]`` (connections x in flight on each)."""
    points = []
    for item in text.split(","):
        conns, _, inflight = item.strip().partition("x")
        try:
            point = (int(conns), int(inflight))
        except ValueError:
            raise ValueError(f"bad point {item!r}: expected CONNECTIONSxINFLIGHT") from None
        if min(point) < 1:
            raise ValueError(f"bad point {item!r}: both numbers must be positive")
        points.append(point)
    return points


def format_points(points: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{c}x{k}" for c, k in points)


class _Pipe:
    """One connection's requests in flight."""

    __slots__ = ("conn", "outstanding")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.outstanding: set[int] = set()


def measure_point(
    path: str, call: Call, connections: int, inflight: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Requests per second of ``call`` with ``inflight`` outstanding on each of
    ``connections`` connections to ``path``."""
    payload = request_payload(call.service, call.method, call.request)
    checker = Checker(call.expect_keys, call.name)
    perf_counter_ns = time.perf_counter_ns
    timeout = DEFAULT_TIMEOUT
    pipes: list[_Pipe] = []
    selector = selectors.DefaultSelector()
    try:
        for _ in range(connections):
            pipe = _Pipe(Connection(path))
            pipes.append(pipe)
            selector.register(pipe.conn, selectors.EVENT_READ, pipe)
        server = peer_pid(pipes[0].conn.socket)

        def send_batch(pipe: _Pipe, n: int) -> None:
            request = pipe.conn.request
            outstanding = pipe.outstanding
            chunks = []
            for _ in range(n):
                stream_id, data = request(payload)
                outstanding.add(stream_id)
                chunks.append(data)
            pipe.conn.send(b"".join(chunks))

        def take(pipe: _Pipe, frames: list[Frame]) -> None:
            outstanding = pipe.outstanding
            for frame in frames:
                try:
                    outstanding.remove(frame.stream_id)
                except KeyError:
                    raise BenchError(
                        f"{call.name}: response on stream {frame.stream_id}, "
                        "which is not in flight"
                    ) from None
                checker.check(frame)

        select = selector.select
        gc.disable()
        try:
            begin = perf_counter_ns()
            measure_from = begin + int(warmup_s * 1e9)
            measure_to = measure_from + int(duration_s * 1e9)
            for pipe in pipes:
                send_batch(pipe, inflight)
            measuring = False
            start = stop = completed = 0
            server_cpu = client_cpu = 0.0
            while True:
                events = select(timeout)
                if not events:
                    raise BenchError(f"{call.name}: no response within {timeout:g} s")
                got = 0
                for key, _mask in events:
                    pipe = key.data
                    frames = pipe.conn.receive()
                    if frames:
                        take(pipe, frames)
                        got += len(frames)
                        send_batch(pipe, len(frames))
                now = perf_counter_ns()
                if measuring:
                    completed += got
                    if now >= measure_to:
                        stop = now
                        server_cpu = cpu_seconds(server) - server_cpu
                        client_cpu = time.process_time() - client_cpu
                        break
                elif now >= measure_from:
                    measuring = True
                    start = now
                    server_cpu = cpu_seconds(server)
                    client_cpu = time.process_time()
            drained = 0
            for pipe in pipes:
                drained += len(pipe.outstanding)
                while pipe.outstanding:
                    take(pipe, pipe.conn.receive())
        finally:
            gc.enable()
    finally:
        selector.close()
        for pipe in pipes:
            pipe.conn.close()
    elapsed = (stop - start) / 1e9
    return {
        "connections": connections,
        "inflight": inflight,
        "total_inflight": connections * inflight,
        "warmup_s": warmup_s,
        "completed": completed,
        "elapsed_s": elapsed,
        "drained": drained,
        "rps": completed / elapsed,
        "server_cpu": server_cpu / elapsed,
        "client_cpu": client_cpu / elapsed,
    }


def run(
    path: str,
    call: Call,
    points: Sequence[tuple[int, int]],
    warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:
    """The call's setup, every point in turn, the teardown."""
    with prepared(path, call):
        measured = [measure_point(path, call, c, k, warmup_s, duration_s) for c, k in points]
    return {"call": call.name, "points": measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Requests/s with C connections of K requests in flight each.",
    )
    parser.add_argument("--socket", required=True, help="Unix socket of the server")
    parser.add_argument("--call", default=BASELINE_CALL, choices=sorted(CALLS))
    parser.add_argument(
        "--points",
        default=format_points(DEFAULT_POINTS),
        help=f"CONNECTIONSxINFLIGHT, comma-separated ({format_points(DEFAULT_POINTS)})",
    )
    parser.add_argument("--warmup", type=float, default=0.3, help="warm-up per point, s")
    parser.add_argument("--duration", type=float, default=1.0, help="window per point, s")
    args = parser.parse_args(argv)
    try:
        points = parse_points(args.points)
    except ValueError as exc:
        parser.error(str(exc))
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive, --warmup not negative")
    try:
        result = run(args.socket, CALLS[args.call], points, args.warmup, args.duration)
    except (BenchError, OSError) as exc:
        print(f"bench.throughput: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
