"""Looking at real processes from tests: /proc and FIFOs, no sleeps."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

#: Seconds a test waits on a real process before it gives up.
PROCESS_TIMEOUT = 10


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` ("Z" for a zombie), or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def start_ticks(pid: int) -> int | None:
    """``pid``'s start time (clock ticks after boot), None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2 :].split()[19])


def pid_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def proc_pgrp(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2 :].split()[2])


def is_alive(pid: int) -> bool:
    """Running or sleeping: neither gone nor a zombie."""
    return proc_state(pid) not in (None, "Z", "X")


async def all_ended(pids: Sequence[int]) -> None:
    """Return once each of ``pids`` has ended (gone or a zombie), awaited on pidfds."""
    with trio.fail_after(PROCESS_TIMEOUT):
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                await trio.lowlevel.wait_readable(pidfd)  # readable once it has exited
            finally:
                os.close(pidfd)


@dataclass
class Reaper:
    """Processes to SIGKILL at teardown (each with its process group), unless their pid was
    taken by another process meanwhile.  The ``reaper`` fixture (conftest.py) gives one."""

    pids: list[tuple[int, int | None]] = field(default_factory=list)

    def add(self, pid: int) -> None:
        self.pids.append((pid, start_ticks(pid)))

    def kill_all(self) -> None:
        for pid, ticks in self.pids:
            now = start_ticks(pid)
            if now is not None and now != ticks:
                continue  # a new process has this pid
            for kill in (os.killpg, os.kill):
                with suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)


class Exits:
    """A backend's ``on_exit`` callback that records its calls: the exit statuses, and the trio
    time each came at."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.times: list[float] = []
        self.event = trio.Event()

    def __call__(self, status: int) -> None:
        self.statuses.append(status)
        self.times.append(trio.current_time())
        self.event.set()

    async def wait(self) -> int:
        """The exit status, once reported; fails if a second one follows it at once."""
        with trio.fail_after(PROCESS_TIMEOUT):
            await self.event.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert len(self.statuses) == 1, self.statuses
        return self.statuses[0]


def read_output(output: tuple[int, int] | None) -> tuple[bytes, bytes]:
    """What the non-blocking read ends of a sandbox's stdout and stderr hold now (to their
    end once every process of the sandbox is gone).  They stay open."""
    assert output is not None
    found = []
    for fd in output:
        data = b""
        with suppress(BlockingIOError):
            while chunk := os.read(fd, 65536):
                data += chunk
        found.append(data)
    return found[0], found[1]


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
