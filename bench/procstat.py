"""What /proc says about the server on the other end of a socket: its pid, memory and CPU time.

The pid is the peer's, from ``SO_PEERCRED`` on a connected Unix socket, so it is the process
that serves the socket even when the harness started it through a wrapper.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Final

_PEERCRED: Final = struct.Struct("3i")  # pid, uid, gid


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process on the other end of the connected Unix socket ``sock``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, _uid, _gid = _PEERCRED.unpack(raw)
    return int(pid)


def server_pid(path: str) -> int:
    """The pid of the process serving the Unix socket ``path`` (one short connection)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        return peer_pid(sock)


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (peak RSS) and ``VmSize`` of ``pid`` in KiB, from
    /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(value.split()[0])  # "  12345 kB"
    return out


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid`` in bytes (``VmRSS``)."""
    return memory_kib(pid)["VmRSS"] * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2 :].split()  # after "pid (comm) ": state first
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
