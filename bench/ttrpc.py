"""Status in both envelopes beside Go's ttrpc: sandboxd CBOR, sandboxd protobuf, Go echo.

    python -m bench.ttrpc [--quick] [--rounds R] [--seq N] [--inflight K] [--duration S]
                          [--json FILE]

Three columns, one lean client (bench/client.py: blocking ``socket`` code, the same frames,
reads and loops for all), interleaved in rounds in one run (each round measures every column,
in an order rotated per round), each figure the median over the rounds, every round printed:

* ``sandboxd cbor``: ``sandboxd.v1.Controller/Status`` of a running ``sim`` sandbox, CBOR.
* ``sandboxd protobuf``: ``containerd.runtime.sandbox.v1.Sandbox/SandboxStatus`` of the same
  sandbox on the same daemon, in a protobuf ttrpc envelope (made by the wire layer's
  ``encode_pb_request``), on connections of its own.
* ``go echo``: bench/go/echo (containerd's ttrpc library, Debian's packages, built here in
  GOPATH mode), answering the same protobuf request with a SandboxStatusResponse of about the
  size of sandboxd's.  Skipped, saying why, where Go or the library is missing.

Per column: sequential Status p50/p99 (us) and requests/s with K (64) in flight on one
connection.  Every reply is checked: a response, no error status, the sandbox's id and state.

Targets (the ttrpc issue's): protobuf p50 within 1.1x of CBOR p50; sandboxd's p50 (in each
envelope) no worse than the Go echo's; sandboxd's in-flight throughput at least 0.8x the Go
echo's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from google.protobuf.message import DecodeError

from sandboxd.proto import containerd_sandbox_pb2 as sandbox_pb
from sandboxd.wire import Frame, FrameType, RPCError, decode_pb_response, encode_pb_request

from .calls import CALLS, Call
from .client import (
    BenchError,
    Connection,
    measure_pipelined,
    measure_sequential,
    prepared,
    request_payload,
)
from .gobuild import GoBuildFailed, go_build
from .servers import REPO, SANDBOXD, ServerFailed, serving

SANDBOX_SERVICE: Final = "containerd.runtime.sandbox.v1.Sandbox"
STATUS: Final = CALLS["Controller/Status"]  # its setup creates and starts sim sandbox "bench"
SANDBOX_ID: Final = STATUS.request["sandbox_id"]
ECHO_SOURCE: Final = REPO / "bench" / "go" / "echo"
CBOR, PROTOBUF, GO = "sandboxd cbor", "sandboxd protobuf", "go echo"
COLUMNS: Final = (CBOR, PROTOBUF, GO)


# --- protobuf ttrpc: the wire layer's request encoder and response reader --------------------


class StatusChecker:
    """Checks protobuf ttrpc ``Response`` frames whose payload is the SandboxStatusResponse of
    the bench's ready sandbox (each distinct frame decoded once)."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._good: bytes | None = None

    def check(self, frame: Frame) -> None:
        where = f"{self._what}: stream {frame.stream_id}"
        if frame.type != FrameType.RESPONSE:
            raise BenchError(f"{where}: frame type {frame.type}, not a response")
        if frame.payload == self._good:
            return
        try:
            reply = sandbox_pb.SandboxStatusResponse.FromString(decode_pb_response(frame.payload))
        except RPCError as exc:
            raise BenchError(f"{where}: {exc.code.name}: {exc.message}") from None
        except DecodeError as exc:
            raise BenchError(f"{where}: not a SandboxStatusResponse: {exc}") from None
        if reply.sandbox_id != SANDBOX_ID or reply.state != "ready":
            raise BenchError(f"{where}: reply {reply} is not the ready sandbox's status")
        self._good = frame.payload


def status_envelope() -> tuple[bytes, StatusChecker]:
    """SandboxStatus of the bench's sandbox in a protobuf ttrpc request (no deadline, no
    metadata, as the CBOR requests of the lean client), and its reply checker."""
    request = sandbox_pb.SandboxStatusRequest(sandbox_id=SANDBOX_ID).SerializeToString()
    envelope = encode_pb_request(SANDBOX_SERVICE, "SandboxStatus", request, 0, None)
    return envelope, StatusChecker("SandboxStatus")


# --- the Go echo server ---------------------------------------------------------------------


def build_echo() -> Path | str:
    """bench/go/echo's binary (cached by source hash), or why it cannot be built."""
    try:
        return go_build(ECHO_SOURCE)
    except GoBuildFailed as exc:
        return str(exc)


# --- the run --------------------------------------------------------------------------------


def measure_column(
    path: str, envelope: Callable[[], Any] | None, s: argparse.Namespace
) -> dict[str, Any]:
    """One round of one column: sequential p50/p99, then K in flight."""
    call: Call = STATUS
    payload = (
        envelope()[0] if envelope else request_payload(call.service, call.method, call.request)
    )
    with Connection(path) as conn:
        conn.send(conn.request(payload)[1])
        reply_bytes = len(conn.receive_one().payload)
        seq = measure_sequential(
            conn, call, s.seq, s.seq_warmup, envelope=envelope() if envelope else None
        )
    pipe = measure_pipelined(
        path,
        call,
        1,
        s.inflight,
        s.warmup,
        s.duration,
        envelope=envelope() if envelope else None,
    )
    return {
        "p50_us": seq["p50_us"],
        "p99_us": seq["p99_us"],
        "rps": pipe["rps"],
        "server_cpu": pipe["server_cpu"],
        "reply_bytes": reply_bytes,
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if key in r]
    return statistics.median(values) if values else None


def report(results: dict[str, Any]) -> str:
    lines = ["Status: sandboxd (CBOR, protobuf) and Go's ttrpc echo, medians of the rounds", ""]
    lines.append(f"| {'column':<18} | p50 us | p99 us | req/s (K in flight) | rounds |")
    lines.append(f"| {'-' * 18} | ------ | ------ | ------------------- | ------ |")
    medians: dict[str, dict[str, float | None]] = {}
    for name in COLUMNS:
        column = results["columns"][name]
        if "skipped" in column:
            lines.append(f"| {name:<18} | {'n/a: ' + column['skipped']}")
            continue
        rounds = column["rounds"]
        m = medians[name] = {k: _median(rounds, k) for k in ("p50_us", "p99_us", "rps")}
        lines.append(
            f"| {name:<18} | {m['p50_us']:6.1f} | {m['p99_us']:6.1f} | {m['rps']:19.0f} |"
            f" {len(rounds):6} |"
        )
    lines += ["", "Every round (p50 us / p99 us / req/s):"]
    for name in COLUMNS:
        for i, r in enumerate(results["columns"][name].get("rounds", [])):
            lines.append(
                f"  {name:<18} round {i + 1}: {r['p50_us']:.1f} / {r['p99_us']:.1f} / "
                f"{r['rps']:.0f}"
            )
    go_rounds = results["columns"][GO].get("rounds", [])
    for name in (CBOR, PROTOBUF):
        pairs = zip(results["columns"][name].get("rounds", []), go_rounds, strict=False)
        for i, (r, g) in enumerate(pairs):
            lines.append(
                f"  {name} / go echo, round {i + 1}: p50 {r['p50_us'] / g['p50_us']:.2f}x,"
                f" req/s {r['rps'] / g['rps']:.2f}x"
            )
    sizes = {
        name: column["rounds"][0]["reply_bytes"]
        for name, column in results["columns"].items()
        if column.get("rounds")
    }
    lines += ["", "Reply frame payload bytes: " + ", ".join(f"{k} {v}" for k, v in sizes.items())]
    lines += ["", "Targets:"]

    def ratio(a: str, b: str, key: str) -> float | None:
        x, y = medians.get(a, {}).get(key), medians.get(b, {}).get(key)
        return None if x is None or y is None or not y else x / y

    for text, value, ok in (
        ("protobuf p50 / CBOR p50 <= 1.1", ratio(PROTOBUF, CBOR, "p50_us"), lambda v: v <= 1.1),
        ("sandboxd p50 / Go echo p50 <= 1.0", ratio(CBOR, GO, "p50_us"), lambda v: v <= 1.0),
        ("sandboxd req/s / Go echo req/s >= 0.8", ratio(CBOR, GO, "rps"), lambda v: v >= 0.8),
        ("protobuf p50 / Go echo p50 <= 1.0", ratio(PROTOBUF, GO, "p50_us"), lambda v: v <= 1.0),
        ("protobuf req/s / Go echo req/s >= 0.8", ratio(PROTOBUF, GO, "rps"), lambda v: v >= 0.8),
    ):
        verdict = "n/a" if value is None else f"{value:.2f}x {'met' if ok(value) else 'MISSED'}"
        lines.append(f"  {text}: {verdict}")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ttrpc", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 round, short windows")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (5; --quick 1)")
    parser.add_argument("--seq", type=int, default=None, help="sequential calls (3000)")
    parser.add_argument("--inflight", type=int, default=64, help="requests in flight (64)")
    parser.add_argument("--duration", type=float, default=None, help="window, seconds (2)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.seq = args.seq or (300 if args.quick else 3000)
    args.seq_warmup = 50 if args.quick else 300
    args.duration = args.duration or (0.3 if args.quick else 2.0)
    args.warmup = 0.1 if args.quick else 0.3
    return args


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    columns: dict[str, dict[str, Any]] = {name: {"rounds": []} for name in COLUMNS}
    failed = False
    with contextlib.ExitStack() as stack:
        daemon = stack.enter_context(serving("sandboxd", SANDBOXD))
        stack.enter_context(prepared(daemon.path, STATUS))
        plans: dict[str, tuple[str, Callable[[], Any] | None]] = {
            CBOR: (daemon.path, None),
            PROTOBUF: (daemon.path, status_envelope),
        }
        echo = build_echo()
        if isinstance(echo, str):
            progress(f"go echo: skipped: {echo}")
            columns[GO] = {"skipped": echo}
        else:
            served = stack.enter_context(serving("go-echo", f"{echo} -socket {{socket}}"
                                                 " -ready-fd {ready_fd}"))  # fmt: skip
            plans[GO] = (served.path, status_envelope)
        for i in range(args.rounds):
            order = list(plans)[i % len(plans) :] + list(plans)[: i % len(plans)]
            for name in order:
                if name not in plans:
                    continue
                path, envelope = plans[name]
                progress(f"round {i + 1}/{args.rounds}: {name}")
                try:
                    columns[name]["rounds"].append(measure_column(path, envelope, args))
                except (BenchError, OSError) as exc:
                    progress(f"{name}: FAILED: {exc}")
                    columns[name]["error"] = str(exc)
                    failed = True
    results = {"command": " ".join(["python -m bench.ttrpc", *(argv or sys.argv[1:])]),
               "cpus": os.cpu_count(), "columns": columns}  # fmt: skip
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ServerFailed as exc:
        print(f"bench.ttrpc: {exc}", file=sys.stderr)
        sys.exit(1)
