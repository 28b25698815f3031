"""Optional baseline: the same call served and measured with gRPC over a Unix socket.

``python -m bench.grpc_baseline --socket PATH [--ready-fd FD]`` runs a ``grpc.aio`` server with
a generic unary-unary handler for ``/sandboxd.v1.Runtime/Version`` (bytes in, bytes out, no
protoc), answering with the CBOR message ``{"version": "grpc", "protocol": 1}``, encoded per
request as the floor does; SIGINT or SIGTERM stop it.

:func:`measure` (``python -m bench.measure server grpc=true``) measures it with gRPC's own
clients, not the lean one, so read its column as "what a stock gRPC stack costs here":
sequential p50/p99 with a blocking channel (``seq``), the same through a ``grpc.aio`` channel
in asyncio (``seq_aio``: the peer of sandboxd's RemoteController), then requests/s with K calls
in flight on one ``grpc.aio`` channel (one HTTP/2 connection).  Needs ``grpcio``
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import cbor2
import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]

from .client import BenchError, latency_summary

SERVICE: Final = "sandboxd.v1.Runtime"
METHOD: Final = "Version"
EXPECT_KEYS: Final = ("version", "protocol")


async def _version(request: bytes, context: Any) -> bytes:
    if request:  # the request message; empty stands for {}
        cbor2.loads(request)
    return cbor2.dumps({"version": "grpc", "protocol": 1})


async def serve(path: str, ready_fd: int | None) -> None:
    """Serve on the Unix socket ``path`` until SIGINT or SIGTERM."""
    handler = grpc.unary_unary_rpc_method_handler(_version)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )
    server.add_insecure_port(f"unix:{path}")
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await server.start()
    if ready_fd is not None:
        os.write(ready_fd, f"READY {path}\n".encode())
        os.close(ready_fd)
    try:
        await stop.wait()
    finally:
        await server.stop(grace=0.5)


class _Check:
    """Decodes a response unless it is byte-identical to the last good one."""

    good: bytes | None = None

    def __call__(self, response: bytes) -> None:
        if response == self.good:
            return
        try:
            message = cbor2.loads(response)
        except Exception as exc:
            raise BenchError(f"grpc: undecodable response: {exc}") from None
        if type(message) is not dict or any(key not in message for key in EXPECT_KEYS):
            raise BenchError(f"grpc: unexpected response {message!r}")
        self.good = response


async def _sequential(
    call: Callable[[], Awaitable[bytes]], count: int, warmup: int
) -> dict[str, Any]:
    check, samples = _Check(), []
    gc.disable()
    try:
        for _ in range(warmup + count):
            start = time.perf_counter_ns()
            response = await call()
            stop = time.perf_counter_ns()
            check(response)
            samples.append(stop - start)
    finally:
        gc.enable()
    return latency_summary(samples[warmup:], warmup)


async def _measure_aio(
    target: str, seq: int, seq_warmup: int, inflight: int, warmup: float, duration: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(f"/{SERVICE}/{METHOD}")
        seq_aio = await _sequential(lambda: stub(b"", timeout=10), seq, seq_warmup)
    completed, running, check = 0, True, _Check()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(f"/{SERVICE}/{METHOD}")

        async def worker() -> None:
            nonlocal completed
            while running:
                check(await stub(b"", timeout=10))
                completed += 1

        gc.disable()
        try:
            async with asyncio.TaskGroup() as tasks:
                for _ in range(inflight):
                    tasks.create_task(worker())
                await asyncio.sleep(warmup)
                first, start = completed, time.perf_counter_ns()
                await asyncio.sleep(duration)
                last, stop = completed, time.perf_counter_ns()
                running = False
        finally:
            gc.enable()
    elapsed = (stop - start) / 1e9
    pipelined = {
        "inflight": inflight,
        "warmup_s": warmup,
        "completed": last - first,
        "elapsed_s": elapsed,
        "rps": (last - first) / elapsed,
    }
    return seq_aio, pipelined


def measure(
    target: str, seq: int, seq_warmup: int, inflight: int, warmup: float, duration: float
) -> dict[str, dict[str, Any]]:
    """Sequential (blocking channel, then grpc.aio) and pipelined (grpc.aio) figures of the
    server at ``target`` (``unix:PATH``)."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = channel.unary_unary(f"/{SERVICE}/{METHOD}")

            # The blocking call in a coroutine that never suspends: one timed loop for both.
            async def blocking() -> bytes:
                return stub(b"", timeout=10)  # type: ignore[no-any-return]

            seq_figures = asyncio.run(_sequential(blocking, seq, seq_warmup))
        seq_aio, pipelined = asyncio.run(
            _measure_aio(target, seq, seq_warmup, inflight, warmup, duration)
        )
    except grpc.RpcError as exc:
        raise BenchError(f"grpc: {exc}") from None
    return {"seq": seq_figures, "seq_aio": seq_aio, "pipelined": pipelined}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_baseline", description=__doc__)
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--ready-fd", type=int, help="write 'READY <socket>' here once serving")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.socket, args.ready_fd))


if __name__ == "__main__":
    main()
