"""Optional baseline: the same call served and measured with gRPC over a Unix socket.

``python -m bench.grpc_baseline serve --socket PATH`` runs a ``grpc.aio`` server with a
generic unary-unary handler for ``/sandboxd.v1.Runtime/Version`` (bytes in, bytes out, no
protoc): it answers with the CBOR message ``{"version": "grpc", "protocol": 1}``, encoded per
request like the floor does.

``python -m bench.grpc_baseline client --socket PATH ...`` measures it: sequential p50/p99 with
a blocking channel (``seq``), then the same through a ``grpc.aio`` channel in asyncio
(``seq_aio``: the full async stack, the peer of sandboxd's RemoteController), then requests
per second with K calls in flight on one ``grpc.aio`` channel (one HTTP/2 connection).  It
prints JSON shaped like ``bench.client``'s.  The clients are gRPC's own, not the lean one, so
read this column as "what a stock gRPC stack costs here".

Without grpcio installed both print ``grpcio not installed: skipped`` and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import sys
import time
from typing import Any, Final

import cbor2

from .client import BenchError, add_measure_arguments, latency_summary

try:
    import grpc  # type: ignore[import-untyped, unused-ignore]
    import grpc.aio  # type: ignore[import-untyped, unused-ignore]
except ImportError:  # the bench extra is optional
    grpc = None

SERVICE: Final = "sandboxd.v1.Runtime"
METHOD: Final = "Version"
PATH: Final = f"/{SERVICE}/{METHOD}"
EXPECT_KEYS: Final = ("version", "protocol")


def _target(path: str) -> str:
    return f"unix:{path}"


async def _version(request: bytes, context: Any) -> bytes:
    if request:  # the request message; empty stands for {}
        cbor2.loads(request)
    return cbor2.dumps({"version": "grpc", "protocol": 1})


async def serve(path: str) -> None:
    """Serve on the Unix socket ``path`` until SIGINT or SIGTERM."""
    assert grpc is not None
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.unary_unary_rpc_method_handler(
                _version, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(_target(path))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop(grace=0.5)


def _check(response: bytes) -> None:
    try:
        message = cbor2.loads(response)
    except Exception as exc:
        raise BenchError(f"grpc: undecodable response: {exc}") from None
    if type(message) is not dict or any(key not in message for key in EXPECT_KEYS):
        raise BenchError(f"grpc: unexpected response {message!r}")


def measure_sequential(path: str, count: int, warmup: int) -> dict[str, Any]:
    assert grpc is not None
    request = b""
    samples: list[int] = []
    perf_counter_ns = time.perf_counter_ns
    with grpc.insecure_channel(_target(path)) as channel:
        stub = channel.unary_unary(PATH)
        good: bytes | None = None
        gc.disable()
        try:
            for _ in range(warmup + count):
                start = perf_counter_ns()
                response = stub(request, timeout=10)
                stop = perf_counter_ns()
                if response != good:
                    _check(response)
                    good = response
                samples.append(stop - start)
        finally:
            gc.enable()
    return latency_summary(samples[warmup:], warmup)


async def measure_sequential_aio(path: str, count: int, warmup: int) -> dict[str, Any]:
    """As :func:`measure_sequential`, through a ``grpc.aio`` channel in asyncio."""
    assert grpc is not None
    samples: list[int] = []
    perf_counter_ns = time.perf_counter_ns
    async with grpc.aio.insecure_channel(_target(path)) as channel:
        stub = channel.unary_unary(PATH)
        good: bytes | None = None
        gc.disable()
        try:
            for _ in range(warmup + count):
                start = perf_counter_ns()
                response = await stub(b"", timeout=10)
                stop = perf_counter_ns()
                if response != good:
                    _check(response)
                    good = response
                samples.append(stop - start)
        finally:
            gc.enable()
    return latency_summary(samples[warmup:], warmup)


async def measure_pipelined(
    path: str, inflight: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    assert grpc is not None
    completed = 0
    good: bytes | None = None
    running = True

    async with grpc.aio.insecure_channel(_target(path)) as channel:
        stub = channel.unary_unary(PATH)

        async def worker() -> None:
            nonlocal completed, good
            while running:
                response = await stub(b"", timeout=10)
                if response != good:
                    _check(response)
                    good = response
                completed += 1

        gc.disable()
        try:
            async with asyncio.TaskGroup() as tasks:
                for _ in range(inflight):
                    tasks.create_task(worker())
                await asyncio.sleep(warmup_s)
                first, start = completed, time.perf_counter_ns()
                await asyncio.sleep(duration_s)
                last, stop = completed, time.perf_counter_ns()
                running = False
        finally:
            gc.enable()
    elapsed = (stop - start) / 1e9
    return {
        "inflight": inflight,
        "warmup_s": warmup_s,
        "completed": last - first,
        "elapsed_s": elapsed,
        "rps": (last - first) / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_baseline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gRPC server")
    serve_parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    add_measure_arguments(commands.add_parser("client", help="measure the gRPC server"))
    args = parser.parse_args(argv)
    if grpc is None:
        print("grpcio not installed: skipped")
        return 0
    if args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.socket))
        return 0
    try:
        seq = measure_sequential(args.socket, args.seq, args.seq_warmup)
        seq_aio = asyncio.run(measure_sequential_aio(args.socket, args.seq, args.seq_warmup))
        pipelined = asyncio.run(
            measure_pipelined(args.socket, args.inflight, args.warmup, args.duration)
        )
    except (BenchError, grpc.RpcError) as exc:
        print(f"bench.grpc_baseline: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    result = {"call": "Runtime/Version", "seq": seq, "seq_aio": seq_aio, "pipelined": pipelined}
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
