"""Looking at real processes from tests: /proc and FIFOs, no sleeps."""

from __future__ import annotations

import os
from pathlib import Path

import trio

#: Seconds a test waits on a real process before it gives up.
PROCESS_TIMEOUT = 10


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` ("Z" for a zombie), or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def proc_pgrp(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2 :].split()[2])


def is_alive(pid: int) -> bool:
    """Running or sleeping: neither gone nor a zombie."""
    return proc_state(pid) not in (None, "Z", "X")


class Fifo:
    """A FIFO whose read end is open (non-blocking) before any writer starts."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def close(self) -> None:
        os.close(self.fd)

    async def read_all(self) -> bytes:
        """Everything written until the last writer closes."""
        chunks: list[bytes] = []
        with trio.fail_after(PROCESS_TIMEOUT):
            while True:
                # Linux reports no hang-up on a FIFO that never had a writer, so this waits
                # for the first writer's data (or its close).
                await trio.lowlevel.wait_readable(self.fd)
                try:
                    chunk = os.read(self.fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
