"""The floor: the least a trio server over a Unix socket must do to answer a request.

Per connection one task: one large receive, every complete frame of it decoded (the request
envelope with ``cbor2.loads``), a response envelope encoded for each (no caching), and all the
answers to that read sent with one ``send_all``.  No dispatch, no validation, no per-request
task, no cancel scopes: whatever sandboxd costs above this is the price of its own machinery.

Run: ``python -m bench.floor --socket PATH [--ready-fd FD]``; stops cleanly on SIGINT or
SIGTERM.  It does not import sandboxd, so it measures the transport and the envelope, not
the project.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import struct
from typing import Final

import cbor2
import trio

HEADER: Final = struct.Struct(">IIBB")
HEADER_SIZE: Final = HEADER.size
REQUEST: Final = 1
RESPONSE: Final = 2
RECEIVE_SIZE: Final = 65536


async def handle(stream: trio.SocketStream) -> None:
    """Answer every request frame on ``stream`` until the peer closes it."""
    unpack_from = HEADER.unpack_from
    pack = HEADER.pack
    buf = bytearray()
    async with stream:
        while True:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            buf += data
            out = bytearray()
            pos = 0
            end = len(buf)
            while end - pos >= HEADER_SIZE:
                length, stream_id, frame_type, _flags = unpack_from(buf, pos)
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    break
                pos = stop
                if frame_type != REQUEST:
                    continue
                cbor2.loads(buf[start:stop])  # the request envelope
                body = cbor2.dumps({"payload": cbor2.dumps({"version": "floor", "protocol": 1})})
                out += pack(len(body), stream_id, RESPONSE, 0)
                out += body
            if pos:
                del buf[:pos]
            if out:
                try:
                    await stream.send_all(out)
                except trio.BrokenResourceError:
                    return


async def serve(
    path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on the Unix socket ``path`` and serve until cancelled."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    try:
        listener = trio.SocketListener(sock)
        task_status.started()
        await trio.serve_listeners(handle, [listener])
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def _main(path: str, ready_fd: int | None) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, path)
        if ready_fd is not None:
            os.write(ready_fd, f"READY {path}\n".encode())
            os.close(ready_fd)
        # SIGINT and SIGTERM (how the harness stops us) end the run cleanly, exit status 0.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--ready-fd", type=int, help="write 'READY <socket>' here once serving")
    args = parser.parse_args(argv)
    trio.run(_main, args.socket, args.ready_fd)


if __name__ == "__main__":
    main()
