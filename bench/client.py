"""The lean client: plain blocking ``socket`` code, no event loop, the same against every server.

Every measurement that is not about sandboxd's own clients goes through it:

* :func:`measure_sequential`: N request frames encoded up front (odd, increasing stream ids);
  each is sent, its response read in full, ``perf_counter_ns`` taken around both.  p50/p99
  and more in microseconds, after an unrecorded warm-up.
* :func:`measure_pipelined`: C connections (one ``selectors`` loop), K requests kept in flight
  on each (a new one per response, sends batched per read).  After a warm-up, the responses
  that arrive in a window are counted: requests/s; what is still in flight is then drained
  and checked, not counted.  Beside the rate, the CPU time the server (the socket's peer)
  and this process used in the window, as a fraction of one core.
* :func:`drive`: many *slots* (generators yielding their next request) on one connection, one
  request of each in flight: the lifecycles and the scaling section's Creates.

Every response is checked (:class:`Checker`): a RESPONSE frame, on a stream id that was sent and
is not yet answered, with no error status and a CBOR map holding the expected keys.  A reply
byte-identical to the last good one is not decoded again (same bytes, same verdict), so the
client's cost per reply stays small and alike for every server.  Any wrong reply raises
:class:`BenchError`: the measurement is void.

The server's pid comes from ``SO_PEERCRED`` on the connection, its CPU time and memory from
/proc, so they are the process serving the socket even behind a wrapper.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

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

from .calls import Call

RECEIVE_SIZE: Final = 65536
TIMEOUT: Final = 10.0
#: Quantiles (in %) at which ``cdf_us`` samples a distribution (0 is the minimum).
CDF_QUANTILES: Final = (*range(0, 100), 99.5, 99.9, 100)


class BenchError(Exception):
    """A wrong, failed or missing reply: the measurement is void."""


# --- figures --------------------------------------------------------------------------------


def percentile(ordered: Sequence[int], q: float) -> int:
    """The nearest-rank ``q``-th percentile of the sorted, non-empty ``ordered``."""
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def latency_summary(samples_ns: Sequence[int], warmup: int, cdf: bool = True) -> dict[str, Any]:
    """p50/p90/p99, min, max and mean in microseconds of round trips in nanoseconds; with
    ``cdf``, ``cdf_us``: ``[quantile %, us]`` at each of :data:`CDF_QUANTILES`."""
    ordered = sorted(samples_ns)
    out: dict[str, Any] = {
        "count": len(ordered),
        "warmup": warmup,
        "p50_us": percentile(ordered, 50) / 1000,
        "p90_us": percentile(ordered, 90) / 1000,
        "p99_us": percentile(ordered, 99) / 1000,
        "min_us": ordered[0] / 1000,
        "max_us": ordered[-1] / 1000,
        "mean_us": sum(ordered) / len(ordered) / 1000,
    }
    if cdf:
        out["cdf_us"] = [
            [q, (percentile(ordered, q) if q else ordered[0]) / 1000] for q in CDF_QUANTILES
        ]
    return out


_PEERCRED: Final = struct.Struct("3i")  # pid, uid, gid


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process on the other end of the connected Unix socket ``sock``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return int(_PEERCRED.unpack(raw)[0])


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (the state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rfind(b")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (0 when it is gone)."""
    fields = proc_stat(pid)
    return (
        0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    )


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (the peak) and ``VmSize`` of ``pid`` in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(value.split()[0])  # "  12345 kB"
    return out


# --- the connection -------------------------------------------------------------------------


def request_payload(service: str, method: str, message: Mapping[str, Any]) -> bytes:
    """The request envelope of one call (the same bytes on every stream)."""
    return encode_request(service, method, dumps(dict(message)) if message else b"")


class Connection:
    """One blocking connection: stream ids, request frames, reading whole frames."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.settimeout(timeout)
        try:
            self.socket.connect(path)
        except BaseException:
            self.socket.close()
            raise
        self._decoder = FrameDecoder()
        self._next_id = 1
        self.outstanding: set[int] = set()  # the stream ids :meth:`pipeline` has in flight

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()

    def fileno(self) -> int:
        return self.socket.fileno()

    def request(self, payload: bytes) -> tuple[int, bytes]:
        """The next stream id and the bytes of a request frame on it."""
        stream_id = self._next_id
        self._next_id += 2
        return stream_id, encode_frame(stream_id, FrameType.REQUEST, 0, payload)

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def receive(self) -> list[Frame]:
        """One read; the frames it completed (maybe none)."""
        try:
            data = self.socket.recv(RECEIVE_SIZE)
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
        while not (frames := self.receive()):
            pass
        if len(frames) > 1:
            raise BenchError(f"{len(frames)} frames in answer to one request")
        return frames[0]

    def pipeline(self, payload: bytes, n: int) -> None:
        """Send ``n`` requests of ``payload`` at once, noting their streams as in flight."""
        chunks = []
        for _ in range(n):
            stream_id, data = self.request(payload)
            self.outstanding.add(stream_id)
            chunks.append(data)
        self.send(b"".join(chunks))

    def answered(self, frames: list[Frame], checker: ReplyChecker) -> None:
        """Check ``frames`` as replies to streams in flight (see :meth:`pipeline`)."""
        for frame in frames:
            try:
                self.outstanding.remove(frame.stream_id)
            except KeyError:
                raise BenchError(f"response on stream {frame.stream_id}, not in flight") from None
            checker.check(frame)


class Checker:
    """Checks the responses of one call; remembers the last good response's bytes."""

    def __init__(self, expect_keys: Sequence[str], what: str) -> None:
        self._expect_keys = tuple(expect_keys)
        self._what = what
        self._good: bytes | None = None

    def check(self, frame: Frame) -> dict[str, Any] | None:
        """The decoded response message (None when its bytes are the last good reply's);
        :class:`BenchError` unless ``frame`` is a good response."""
        where = f"{self._what}: stream {frame.stream_id}"
        if frame.type != FrameType.RESPONSE:
            raise BenchError(f"{where}: frame type {frame.type}, not a response")
        if frame.payload == self._good:
            return None
        try:
            message = loads_message(decode_response(frame.payload), "response message")
        except RPCError as exc:
            raise BenchError(f"{where}: {type(exc).__name__}: {exc.message}") from None
        if missing := [key for key in self._expect_keys if key not in message]:
            raise BenchError(f"{where}: response {message!r} lacks {missing}")
        self._good = frame.payload
        return message


def _cbor(call: Call) -> tuple[bytes, ReplyChecker]:
    payload = request_payload(call.service, call.method, call.request)
    return payload, Checker(call.expect_keys, call.name)


def call_once(conn: Connection, step: Call) -> dict[str, Any] | None:
    """One unmeasured round trip (a setup or teardown step), checked."""
    what = f"{step.service}/{step.method}"
    stream_id, data = conn.request(request_payload(step.service, step.method, step.request))
    conn.send(data)
    frame = conn.receive_one()
    if frame.stream_id != stream_id:
        raise BenchError(f"{what}: response on stream {frame.stream_id}, expected {stream_id}")
    return Checker((), what).check(frame)


@contextlib.contextmanager
def prepared(path: str, call: Call) -> Iterator[None]:
    """The call's setup before the block and its teardown after, on a connection of their own."""
    with Connection(path) as conn:
        for step in call.setup:
            call_once(conn, step)
        try:
            yield
        finally:
            for step in call.teardown:
                call_once(conn, step)


class Window:
    """A warm-up, then the measuring window: opened and closed by :meth:`tick`, called after
    each batch of replies; the CPU time the server (pid ``server``) and this process used in
    it, as seconds."""

    def __init__(self, server: int, warmup_s: float, duration_s: float) -> None:
        self.server = server
        self.measure_from = time.perf_counter_ns() + int(warmup_s * 1e9)
        self.measure_to = self.measure_from + int(duration_s * 1e9)
        self.start = self.stop = 0
        self.server_cpu = self.client_cpu = 0.0
        self.durations: list[int] = []  # ns, of the lifecycles finished in the window

    def tick(self) -> None:
        now = time.perf_counter_ns()
        if self.stop:
            return
        if not self.start and now >= self.measure_from:
            self.start = now
            self.server_cpu, self.client_cpu = cpu_seconds(self.server), time.process_time()
        elif self.start and now >= self.measure_to:
            self.stop = now
            self.server_cpu = cpu_seconds(self.server) - self.server_cpu
            self.client_cpu = time.process_time() - self.client_cpu

    def finished(self, began: int) -> None:
        """A lifecycle begun at ``began`` just finished: counted if the window is open."""
        if self.start and not self.stop:
            self.durations.append(time.perf_counter_ns() - began)


# --- measurements ---------------------------------------------------------------------------


class ReplyChecker(Protocol):
    """What checks each reply: :class:`Checker` for CBOR, another for another envelope."""

    def check(self, frame: Frame) -> object: ...


def measure_sequential(
    conn: Connection,
    call: Call,
    count: int,
    warmup: int,
    *,
    envelope: tuple[bytes, ReplyChecker] | None = None,
) -> dict[str, Any]:
    """Round-trip latency of ``count`` requests, one at a time, after ``warmup`` of them.

    ``envelope``: the request payload and the reply checker, when not the call's CBOR ones.
    """
    payload, checker = envelope or _cbor(call)
    frames = [conn.request(payload) for _ in range(warmup + count)]
    samples: list[int] = []
    perf_counter_ns, send, receive_one = time.perf_counter_ns, conn.send, conn.receive_one
    gc.disable()
    try:
        for stream_id, data in frames:
            start = perf_counter_ns()
            send(data)
            frame = receive_one()
            stop = perf_counter_ns()
            if frame.stream_id != stream_id:
                raise BenchError(
                    f"{call.name}: response on stream {frame.stream_id}, not {stream_id}"
                )
            checker.check(frame)
            samples.append(stop - start)
    finally:
        gc.enable()
    return latency_summary(samples[warmup:], warmup)


def measure_pipelined(
    path: str,
    call: Call,
    connections: int,
    inflight: int,
    warmup_s: float,
    duration_s: float,
    *,
    envelope: tuple[bytes, ReplyChecker] | None = None,
) -> dict[str, Any]:
    """Requests/s of ``call`` with ``inflight`` outstanding on each of ``connections``
    (``envelope`` as for :func:`measure_sequential`)."""
    payload, checker = envelope or _cbor(call)
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(Connection(path)) for _ in range(connections)]
        selector = stack.enter_context(selectors.DefaultSelector())
        for conn in conns:
            selector.register(conn, selectors.EVENT_READ, conn)
        window = Window(peer_pid(conns[0].socket), warmup_s, duration_s)
        gc.disable()
        stack.callback(gc.enable)
        for conn in conns:
            conn.pipeline(payload, inflight)
        completed = 0
        while not window.stop:
            events = selector.select(TIMEOUT)
            if not events:
                raise BenchError(f"{call.name}: no response within {TIMEOUT:g} s")
            got = 0
            for key, _ in events:
                conn = key.data
                if frames := conn.receive():
                    conn.answered(frames, checker)
                    got += len(frames)
                    conn.pipeline(payload, len(frames))
            if window.start:  # the batch that closes the window counts
                completed += got
            window.tick()
        drained = sum(len(conn.outstanding) for conn in conns)
        for conn in conns:
            while conn.outstanding:
                conn.answered(conn.receive(), checker)
    elapsed = (window.stop - window.start) / 1e9
    return {
        "connections": connections,
        "inflight": inflight,
        "total_inflight": connections * inflight,
        "warmup_s": warmup_s,
        "completed": completed,
        "elapsed_s": elapsed,
        "drained": drained,
        "rps": completed / elapsed,
        "server_cpu": window.server_cpu / elapsed,
        "client_cpu": window.client_cpu / elapsed,
    }


#: A slot yields (what, request envelope) and is sent the reply's message.
Slot = Generator[tuple[str, bytes], dict[str, Any], None]


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

    if first := [data for slot in slots if (data := advance(slot, None)) is not None]:
        conn.send(b"".join(first))
    while pending:
        chunks = []
        for frame in conn.receive():
            try:
                what, slot = pending.pop(frame.stream_id)
            except KeyError:
                raise BenchError(f"response on stream {frame.stream_id}, not in flight") from None
            reply = Checker((), what).check(frame)
            assert reply is not None  # a new Checker decodes every reply
            calls += 1
            if (data := advance(slot, reply)) is not None:
                chunks.append(data)
        if chunks:
            conn.send(b"".join(chunks))
        if on_batch is not None:
            on_batch()
    return calls
