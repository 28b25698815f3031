"""``containerd-shim-sandboxd-v1``: containerd's runtime v2 shim binary protocol, in front of
the daemon.

containerd 2.x runs a shim binary as ``<binary> -namespace NS -address ADDR -publish-binary
CONTAINERD [-id ID] [-bundle DIR] [-debug] start|delete``, in the bundle directory, with
``TTRPC_ADDRESS``, ``GRPC_ADDRESS``, ``NAMESPACE`` and ``MAX_SHIM_VERSION`` in its
environment (and the runtime options, a protobuf ``google.protobuf.Any``, on standard input):

* ``start`` prints where containerd should connect: the daemon's socket (``$SANDBOXD_SOCKET``
  or the daemon's default), as the bootstrap JSON ``{"version": 2, "address":
  "unix://...", "protocol": "ttrpc"}`` (a plain ``unix://...`` address when containerd sets
  no ``MAX_SHIM_VERSION`` of 2 or more).  When nothing serves there it starts ``sandboxd
  serve`` first, in a session of its own, its output in ``sandboxd.log`` beside the socket,
  so that it outlives the shim and holds none of containerd's pipes; standard output has
  nothing else, as containerd reads standard output and error together.
* ``delete`` cleans up after a sandbox containerd lost track of: if the daemon serves and
  knows ``-id``, the sandbox is stopped, waited for and shut down.  It prints a protobuf
  ``containerd.task.v2.DeleteResponse {pid=1, exit_status=2, exited_at=3}``: the sandbox's
  exit, or 137 (as if killed) and now when there was nothing to clean up.  It never starts
  a daemon.

Errors go to standard error with exit status 1.  The module imports little until it knows
its action: ``start`` on a serving daemon loads neither trio nor the client.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime

from .._paths import default_socket_path, ensure_private_dir

#: Seconds ``start`` waits for a daemon it started to serve, and ``delete`` for each call.
STARTUP = 10.0
#: What ``delete`` reports for a sandbox with no exit of its own: killed (128 + SIGKILL).
KILLED = 137
#: The shim protocol version of the bootstrap answer: the TTRPC one.
BOOTSTRAP_VERSION = 2
#: The daemon ``start`` runs: this Python's sandboxd, with its own defaults.
_DAEMON = (sys.executable, "-m", "sandboxd", "serve")


def _parser() -> argparse.ArgumentParser:
    # Go's flag package: one or two dashes, "-flag value" or "-flag=value".
    parser = argparse.ArgumentParser(
        prog="containerd-shim-sandboxd-v1",
        description="containerd's runtime v2 shim protocol in front of the sandboxd daemon.",
    )
    for name in ("namespace", "address", "publish-binary", "id", "bundle", "socket"):
        parser.add_argument(f"-{name}", f"--{name}", default="")
    parser.add_argument("-debug", "--debug", action="store_true")
    parser.add_argument("-v", "--v", action="store_true", dest="version")
    parser.add_argument("action", nargs="?", choices=("start", "delete"))
    return parser


def _serving(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def _start_daemon(path: str) -> None:
    """``sandboxd serve`` on ``path``, detached; returns once it serves (or another does)."""
    directory = os.path.dirname(path)
    ensure_private_dir(directory)
    read, write = os.pipe()
    try:
        with open(os.path.join(directory, "sandboxd.log"), "ab") as log:
            subprocess.Popen(
                [*_DAEMON, "--socket", path, "--ready-fd", str(write)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(write,),
                cwd="/",  # not the bundle, which containerd removes
                start_new_session=True,
            )
        os.close(write)
        write = -1
        # The readiness line, or the end of the pipe when the daemon exits first (another
        # shim's daemon may have taken the socket meanwhile).
        deadline = time.monotonic() + STARTUP
        os.set_blocking(read, False)
        while time.monotonic() < deadline:
            try:
                line = os.read(read, 4096)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            if line.startswith(b"READY") or _serving(path):
                return
            break
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    if not _serving(path):
        raise RuntimeError(f"sandboxd did not start serving {path}: see {directory}/sandboxd.log")


def start(path: str) -> str:
    """The bootstrap answer for the daemon at ``path``, started if nothing serves there."""
    if not _serving(path):
        _start_daemon(path)
    address = f"unix://{path}"
    try:
        max_version = int(os.environ.get("MAX_SHIM_VERSION", "0"))
    except ValueError:
        max_version = 0
    if max_version < BOOTSTRAP_VERSION:
        return address
    return json.dumps(
        {"version": BOOTSTRAP_VERSION, "address": address, "protocol": "ttrpc"},
        separators=(",", ":"),
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value) if value else b""


def delete_response(pid: int, exit_status: int, exited_at: datetime) -> bytes:
    """``DeleteResponse {pid=1, exit_status=2, exited_at=3 (Timestamp {seconds=1,
    nanos=2})}`` in protobuf."""
    seconds = int(exited_at.timestamp())
    nanos = exited_at.microsecond * 1000
    stamp = _field(1, seconds) + _field(2, nanos)
    return _field(1, pid) + _field(2, exit_status) + _field(3, stamp)


def delete(path: str, sandbox_id: str) -> bytes:
    """Stop, wait for and shut down ``sandbox_id`` if the daemon at ``path`` knows it; the
    DeleteResponse for containerd."""
    if not sandbox_id or not _serving(path):
        return delete_response(0, KILLED, datetime.now().astimezone())
    from .._errors import NotFound
    from ..api import SyncController

    with SyncController(path, timeout=STARTUP) as controller:
        try:
            pid = controller.status(sandbox_id).pid or 0
            controller.stop(sandbox_id)
            ended = controller.wait(sandbox_id)
            controller.shutdown(sandbox_id)
        except NotFound:
            return delete_response(0, KILLED, datetime.now().astimezone())
    return delete_response(pid, ended.exit_status, ended.exited_at)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        from .._version import __version__

        print(f"containerd-shim-sandboxd-v1:\n  Version:  {__version__}")
        return 0
    if args.action is None:
        print("containerd-shim-sandboxd-v1: an action is needed: start or delete", file=sys.stderr)
        return 2
    if not (args.namespace or os.environ.get("NAMESPACE")):
        print("containerd-shim-sandboxd-v1: shim namespace cannot be empty", file=sys.stderr)
        return 1
    path = args.socket or default_socket_path()
    try:
        if args.action == "start":
            sys.stdout.write(start(path))
            sys.stdout.flush()
        else:
            sys.stdout.buffer.write(delete(path, args.id))
            sys.stdout.buffer.flush()
    except Exception as exc:
        print(f"containerd-shim-sandboxd-v1: {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
