"""A lean blocking client: plain ``socket``, no event loop, used alike against every server.

Two measurements on one connection, after the call's setup steps:

* sequential round trips: N request frames encoded up front (odd, increasing stream ids);
  each one is sent, the response read in full, and ``perf_counter_ns`` taken around both.
  Reported as p50/p99 in microseconds, after a warm-up that is not recorded.
* pipelined throughput: K requests kept in flight (a new one sent for every response that
  arrives, sends and reads batched); after a warm-up, the responses completed in a fixed time
  window are counted.  Reported as requests per second.

Every response is checked: it must be a RESPONSE frame on a stream id that was sent and not
yet answered, carry no error status, and hold a CBOR map with the call's expected keys.  A
response whose bytes equal the last one checked is known good without decoding it again, so
the client's cost per reply stays small and the same for every server.  Any wrong reply
raises :class:`BenchError`: there is no partial result.

Run: ``python -m bench.client --socket PATH [--call Runtime/Version] ...``; prints one JSON
object on stdout.  Exit status 2 and a message on stderr when the benchmark failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from sandboxd.wire import (
    Frame,
    FrameDecoder,
    FrameType,
    RPCError,
    decode_response,
    dumps,
    encode_frame,
    encode_request,
    loads_message,
)

from .calls import BASELINE_CALL, CALLS, Call, Step

RECEIVE_SIZE: Final = 65536
DEFAULT_TIMEOUT: Final = 10.0


class BenchError(Exception):
    """A wrong, failed or missing reply: the measurement is void."""


def percentile(ordered: Sequence[int], q: float) -> int:
    """The nearest-rank ``q``-th percentile of the sorted, non-empty ``ordered``."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


#: The quantiles (in %) at which :func:`latency_summary` samples the distribution for
#: ``cdf_us`` (0 is the minimum): enough to draw a CDF without keeping every sample.
CDF_QUANTILES: Final = (*range(0, 100), 99.5, 99.9, 100)


def latency_summary(samples_ns: list[int], warmup: int) -> dict[str, Any]:
    """p50/p99 (and more) in microseconds of round-trip times in nanoseconds.

    ``cdf_us`` is ``[quantile %, us]`` at each of :data:`CDF_QUANTILES` (nearest rank).
    """
    ordered = sorted(samples_ns)
    return {
        "count": len(ordered),
        "warmup": warmup,
        "p50_us": percentile(ordered, 50) / 1000,
        "p90_us": percentile(ordered, 90) / 1000,
        "p99_us": percentile(ordered, 99) / 1000,
        "min_us": ordered[0] / 1000,
        "max_us": ordered[-1] / 1000,
        "mean_us": sum(ordered) / len(ordered) / 1000,
        "cdf_us": [
            [q, (percentile(ordered, q) if q else ordered[0]) / 1000] for q in CDF_QUANTILES
        ],
    }


def request_payload(service: str, method: str, message: Mapping[str, Any]) -> bytes:
    """The request envelope for one call (the same bytes on every stream)."""
    return encode_request(service, method, dumps(dict(message)) if message else b"")


class Connection:
    """One client connection: stream ids, frame encoding and reading."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._decoder = FrameDecoder()
        self._next_id = 1

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        """The socket's file descriptor (for ``selectors``)."""
        return self._sock.fileno()

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def request(self, payload: bytes) -> tuple[int, bytes]:
        """The next stream id and the bytes of a request frame on it."""
        stream_id = self._next_id
        self._next_id += 2
        return stream_id, encode_frame(stream_id, FrameType.REQUEST, 0, payload)

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def receive(self) -> list[Frame]:
        """One read; the frames it completed (maybe none)."""
        try:
            data = self._sock.recv(RECEIVE_SIZE)
        except TimeoutError:
            raise BenchError("no response from the server within the timeout") from None
        if not data:
            raise BenchError("the server closed the connection")
        frames = self._decoder.feed(data)
        for frame in frames:
            if not isinstance(frame, Frame):
                raise BenchError(f"oversized frame from the server: {frame}")
        return frames  # type: ignore[return-value]

    def receive_one(self) -> Frame:
        """Exactly one frame: more than one in the read that completes it is an error."""
        while True:
            frames = self.receive()
            if frames:
                if len(frames) > 1:
                    raise BenchError(f"{len(frames)} frames in answer to one request")
                return frames[0]


class Checker:
    """Checks responses for one call; remembers the last good response bytes."""

    def __init__(self, expect_keys: Sequence[str], what: str) -> None:
        self._expect_keys = tuple(expect_keys)
        self._what = what
        self._good: bytes | None = None

    def check(self, frame: Frame) -> dict[str, Any] | None:
        """Raise :class:`BenchError` unless ``frame`` is a good response.

        Returns the decoded response message, or None when the bytes are the same as the
        last good response (decoding them again would give the same answer).
        """
        if frame.type != FrameType.RESPONSE:
            raise BenchError(
                f"{self._what}: stream {frame.stream_id}: frame type {frame.type}, not a response"
            )
        payload = frame.payload
        if payload == self._good:
            return None
        try:
            message = loads_message(decode_response(payload), "response message")
        except RPCError as exc:
            raise BenchError(
                f"{self._what}: stream {frame.stream_id}: {type(exc).__name__}: {exc.message}"
            ) from None
        missing = [key for key in self._expect_keys if key not in message]
        if missing:
            raise BenchError(
                f"{self._what}: stream {frame.stream_id}: response {message!r} lacks {missing}"
            )
        self._good = payload
        return message


def call_once(conn: Connection, step: Step | Call) -> dict[str, Any] | None:
    """One unmeasured round trip (setup or teardown), checked."""
    what = f"{step.service}/{step.method}"
    stream_id, data = conn.request(request_payload(step.service, step.method, step.request))
    conn.send(data)
    frame = conn.receive_one()
    if frame.stream_id != stream_id:
        raise BenchError(f"{what}: response on stream {frame.stream_id}, expected {stream_id}")
    return Checker((), what).check(frame)


def measure_sequential(conn: Connection, call: Call, count: int, warmup: int) -> dict[str, Any]:
    """Round-trip latency of ``count`` requests, one at a time, after ``warmup`` of them."""
    payload = request_payload(call.service, call.method, call.request)
    frames = [conn.request(payload) for _ in range(warmup + count)]
    checker = Checker(call.expect_keys, call.name)
    samples: list[int] = []
    perf_counter_ns = time.perf_counter_ns
    send = conn.send
    receive_one = conn.receive_one
    gc.disable()
    try:
        for stream_id, data in frames:
            start = perf_counter_ns()
            send(data)
            frame = receive_one()
            stop = perf_counter_ns()
            if frame.stream_id != stream_id:
                raise BenchError(
                    f"{call.name}: response on stream {frame.stream_id}, expected {stream_id}"
                )
            checker.check(frame)
            samples.append(stop - start)
    finally:
        gc.enable()
    return latency_summary(samples[warmup:], warmup)


def measure_pipelined(
    conn: Connection, call: Call, inflight: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Requests per second with ``inflight`` requests outstanding on one connection.

    Runs ``warmup_s`` seconds unmeasured, then counts the responses that arrive in the next
    ``duration_s`` seconds, then drains what is still in flight (checked, not counted).
    """
    payload = request_payload(call.service, call.method, call.request)
    checker = Checker(call.expect_keys, call.name)
    perf_counter_ns = time.perf_counter_ns
    request = conn.request
    outstanding: set[int] = set()

    def send_batch(n: int) -> None:
        chunks = []
        for _ in range(n):
            stream_id, data = request(payload)
            outstanding.add(stream_id)
            chunks.append(data)
        conn.send(b"".join(chunks))

    def take(frames: list[Frame]) -> None:
        for frame in frames:
            try:
                outstanding.remove(frame.stream_id)
            except KeyError:
                raise BenchError(
                    f"{call.name}: response on stream {frame.stream_id}, which is not in flight"
                ) from None
            checker.check(frame)

    drained = 0
    gc.disable()
    try:
        begin = perf_counter_ns()
        measure_from = begin + int(warmup_s * 1e9)
        measure_to = measure_from + int(duration_s * 1e9)
        send_batch(inflight)
        measuring = False
        start = stop = 0
        completed = 0
        while True:
            frames = conn.receive()
            if not frames:
                continue
            take(frames)
            now = perf_counter_ns()
            if measuring:
                completed += len(frames)
                if now >= measure_to:
                    stop = now
                    break
            elif now >= measure_from:
                measuring = True
                start = now
            send_batch(len(frames))
        drained = len(outstanding)
        while outstanding:
            take(conn.receive())
    finally:
        gc.enable()
    elapsed = (stop - start) / 1e9
    return {
        "inflight": inflight,
        "warmup_s": warmup_s,
        "completed": completed,
        "elapsed_s": elapsed,
        "drained": drained,
        "rps": completed / elapsed,
    }


def run(
    path: str,
    call: Call,
    *,
    seq_count: int,
    seq_warmup: int,
    inflight: int,
    warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:
    """Setup, both measurements and teardown of ``call`` on one connection to ``path``."""
    with Connection(path) as conn:
        for step in call.setup:
            call_once(conn, step)
        seq = measure_sequential(conn, call, seq_count, seq_warmup)
        pipelined = measure_pipelined(conn, call, inflight, warmup_s, duration_s)
        for step in call.teardown:
            call_once(conn, step)
    return {"call": call.name, "seq": seq, "pipelined": pipelined}


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every client (this one, the gRPC one) takes."""
    parser.add_argument("--socket", required=True, help="Unix socket of the server")
    parser.add_argument("--seq", type=int, default=5000, help="sequential round trips")
    parser.add_argument("--seq-warmup", type=int, default=500, help="unrecorded ones first")
    parser.add_argument("--inflight", type=int, default=64, help="requests kept in flight")
    parser.add_argument("--warmup", type=float, default=0.5, help="pipelined warm-up, s")
    parser.add_argument("--duration", type=float, default=3.0, help="pipelined window, s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.client", description="Measure one call against one server."
    )
    add_measure_arguments(parser)
    parser.add_argument("--call", default=BASELINE_CALL, choices=sorted(CALLS))
    args = parser.parse_args(argv)
    if args.seq < 1 or args.inflight < 1 or args.duration <= 0:
        parser.error("--seq, --inflight and --duration must be positive")
    try:
        result = run(
            args.socket,
            CALLS[args.call],
            seq_count=args.seq,
            seq_warmup=args.seq_warmup,
            inflight=args.inflight,
            warmup_s=args.warmup,
            duration_s=args.duration,
        )
    except (BenchError, OSError) as exc:
        print(f"bench.client: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
