"""Starting servers and running measuring processes against them.

:func:`serving` starts a server (the floor, sandboxd or gRPC) on a fresh Unix socket in a fresh
directory, with a fresh state directory there (``{state_dir}`` in its command: sandboxd's
records never go to the default state directory), and waits for its readiness line on an
inherited pipe (``{ready_fd}``: ``sandboxd serve --ready-fd``; the floor and the gRPC server
take the same option).  A command without ``{ready_fd}`` (an older sandboxd given with
``--sandboxd-cmd``) is waited on by connecting until the socket accepts.  At the end the
server gets SIGTERM (SIGKILL if it does not exit in time) and the directory is removed.

:func:`run_client` runs one measuring process (``python -m bench.measure ...``) and returns the
JSON it printed, or the failure as ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
READY_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 5.0
CLIENT_TIMEOUT: Final = 300.0
#: sandboxd under test: every placeholder is filled in per server started.
SANDBOXD: Final = (
    "{python} -m sandboxd serve --socket {socket} --state-dir {state_dir} --ready-fd {ready_fd}"
)


class ServerFailed(Exception):
    """The server did not start or died, or a measurement that voids its run failed."""


def env() -> dict[str, str]:
    """This environment, with the repo root and src/ importable in the children."""
    paths = [str(REPO / "src"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@dataclass
class Served:
    """A server started by :func:`serving`."""

    name: str
    path: str
    proc: subprocess.Popen[bytes]
    log: Path
    result: dict[str, Any] = field(default_factory=dict)  # command, ready_s, exit_status
    stop_s: float | None = None  # how long it took to exit after SIGTERM

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""


def _wait_ready(served: Served, ready: int | None) -> None:
    """Until the readiness line arrives on ``ready`` (or, without it, the socket accepts)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if ready is not None:
            if select.select([ready], [], [], deadline - time.monotonic())[0]:
                if os.read(ready, 4096).startswith(b"READY"):
                    return
                raise ServerFailed(f"exited with status {served.proc.wait(STOP_TIMEOUT)} at start")
            continue
        if served.proc.poll() is not None:
            raise ServerFailed(f"exited with status {served.proc.returncode} at start")
        with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
            probe.connect(served.path)
            return
        time.sleep(0.02)
    raise ServerFailed(f"not serving within {READY_TIMEOUT:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then wait; SIGKILL if it is still there after STOP_TIMEOUT."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  server pid {proc.pid} ignored SIGTERM: killing it", file=sys.stderr)
            proc.kill()
    return proc.wait()


@contextlib.contextmanager
def serving(name: str, command: str, directory: Path | None = None) -> Iterator[Served]:
    """Start ``command`` (``{python}``, ``{socket}``, ``{state_dir}``, ``{ready_fd}`` filled in)
    and wait until it serves; stop it at the end (``result["exit_status"]``, ``stop_s``).

    The socket, state directory and log go in ``directory``, kept; without it, in a temporary
    directory removed at the end.  Any failure, the body's included, is raised as
    :class:`ServerFailed` naming ``name``, with the end of the server's output.
    """
    tmp = directory or Path(tempfile.mkdtemp(prefix="sandboxd-bench-"))
    path = str(tmp / f"{name}.sock")
    read_fd, write_fd = os.pipe()
    argv = shlex.split(command)
    wants_fd = any("{ready_fd}" in arg for arg in argv)
    values = {"python": sys.executable, "socket": path, "state_dir": str(tmp / "state")}
    argv = [arg.format(**values, ready_fd=write_fd) for arg in argv]
    log = tmp / f"{name}.log"
    try:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                pass_fds=(write_fd,) if wants_fd else (),
            )  # fmt: skip
        os.close(write_fd)
        served = Served(name, path, proc, log, {"command": shlex.join(argv)})
        try:
            began = time.monotonic()
            _wait_ready(served, read_fd if wants_fd else None)
            served.result["ready_s"] = round(time.monotonic() - began, 3)
            yield served
        finally:
            began = time.monotonic()
            served.result["exit_status"] = status = _stop(proc)
            served.stop_s = time.monotonic() - began
            if status != 0:
                print(f"  note: {name} exited with status {status}", file=sys.stderr)
    except (ServerFailed, OSError, subprocess.SubprocessError) as exc:
        tail = (
            "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
        )
        raise ServerFailed(
            f"{name}: {exc}" + (f"\n--- {log.name} ---\n{tail}" if tail else "")
        ) from None
    finally:
        for fd in (read_fd, write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if directory is None:
            shutil.rmtree(tmp, ignore_errors=True)


def run_client(argv: Sequence[str], label: str, server: Served | None = None) -> dict[str, Any]:
    """Run one measuring process; the JSON it printed (with ``client``: its command line).

    A failure is returned, not raised: ``{"error": ...}`` (beside any figures it printed, e.g.
    the points that did succeed).  If ``server`` died meanwhile, :class:`ServerFailed`.
    """
    print(f"  {label}: measuring ...", file=sys.stderr, flush=True)
    figures: dict[str, Any] = {}
    try:
        done = subprocess.run(
            argv, cwd=REPO, env=env(), stdin=subprocess.DEVNULL, capture_output=True,
            timeout=CLIENT_TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        error = f"no result within {CLIENT_TIMEOUT:g} s"
    else:
        stderr = done.stderr.decode(errors="replace")
        sys.stderr.write(stderr)
        try:
            figures = json.loads(done.stdout) if done.stdout.strip() else {}
            lines = stderr.strip().splitlines()
            error = (
                "" if done.returncode == 0 else lines[-1] if lines else f"status {done.returncode}"
            )
        except ValueError as exc:
            error = f"unreadable output: {exc}"
    figures["client"] = shlex.join(argv)
    if not error:
        return figures
    print(f"  FAILED: {label}: {error}", file=sys.stderr)
    if server is not None and server.proc.poll() is not None:
        raise ServerFailed(f"exited with status {server.proc.returncode} during {label}")
    return figures | {"error": error}


def measure(kind: str, served: Served | None, label: str, **options: object) -> dict[str, Any]:
    """:func:`run_client` of ``python -m bench.measure KIND --socket PATH key=value ...``."""
    argv = [sys.executable, "-m", "bench.measure", kind]
    argv += ["--socket", served.path] if served else []
    argv += [f"{key}={json.dumps(value)}" for key, value in options.items()]
    return run_client(argv, label, served)
