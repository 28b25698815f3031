"""Process plumbing of the harness: start a server, run client processes against it, stop it.

Every server runs in its own process on a fresh Unix socket in a temporary directory, with a
fresh state directory beside it (``{state_dir}`` in its command: sandboxd's records never go
to the default state directory); the harness waits until it accepts connections, runs the
client processes, then stops it with SIGINT (SIGKILL if it does not exit in time) and removes
the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
READY_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 5.0
CLIENT_TIMEOUT: Final = 300.0


class ServerFailed(Exception):
    """The server did not start, or the client reported a failure."""


def env() -> dict[str, str]:
    """This environment, with the repo root and src/ importable in the children."""
    out = dict(os.environ)
    paths = [str(REPO / "src"), str(REPO)]
    if out.get("PYTHONPATH"):
        paths.append(out["PYTHONPATH"])
    out["PYTHONPATH"] = os.pathsep.join(paths)
    return out


def fill(template: Sequence[str], **values: str) -> list[str]:
    """``template`` with ``{python}`` (this interpreter) and ``values`` filled in."""
    return [arg.format(python=sys.executable, **values) for arg in template]


def _default_sigint() -> None:
    # A child started from a shell in the background inherits SIGINT ignored, and Python then
    # never turns SIGINT into KeyboardInterrupt: restore the default so SIGINT stops it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"\n--- server output ({log.name}) ---\n{tail}" if tail else ""


def wait_ready(proc: subprocess.Popen[bytes], path: str, deadline: float) -> None:
    """Poll ``connect`` on ``path`` until it succeeds; fail if the server exits or is late."""
    delay = 0.001
    while True:
        code = proc.poll()
        if code is not None:
            raise ServerFailed(f"server exited with status {code} before accepting connections")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            else:
                return
        if time.monotonic() >= deadline:
            raise ServerFailed(f"server did not accept connections within {READY_TIMEOUT} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT, then wait; SIGKILL if it is still there after STOP_TIMEOUT."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  server pid {proc.pid} ignored SIGINT: killing it", file=sys.stderr)
            proc.kill()
    return proc.wait()


@dataclass
class Served:
    """A server started by :func:`serving`."""

    name: str
    path: str
    proc: subprocess.Popen[bytes]
    result: dict[str, Any]  # command, ready_s and (at the end) exit_status


@contextlib.contextmanager
def serving(name: str, argv_template: Sequence[str]) -> Iterator[Served]:
    """Start the server ``argv_template`` (``{socket}``, ``{state_dir}`` filled in) and wait
    until it accepts connections; stop it and remove its directory at the end.

    Any failure, the body's included, is raised as :class:`ServerFailed` naming ``name``,
    with the end of the server's output.
    """
    tmp = Path(tempfile.mkdtemp(prefix="sandboxd-bench-"))
    path = str(tmp / f"{name}.sock")
    state = tmp / "state"
    log = tmp / f"{name}.log"
    argv = fill(argv_template, socket=path, state_dir=str(state))
    result: dict[str, Any] = {"command": shlex.join(argv)}
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_default_sigint,  # the harness has no threads
            )
        try:
            started = time.monotonic()
            wait_ready(proc, path, started + READY_TIMEOUT)
            result["ready_s"] = round(time.monotonic() - started, 3)
            yield Served(name, path, proc, result)
        except BaseException:
            stop(proc)
            raise
        result["exit_status"] = status = stop(proc)
        if status != 0:
            print(f"  note: {name} exited with status {status}", file=sys.stderr)
    except (ServerFailed, OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise ServerFailed(f"{name}: {exc}{_log_tail(log)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class Job:
    """One client process run against a server."""

    key: str  # where its figures go in the result
    label: str  # what the progress line calls it
    argv: tuple[str, ...]


def run_client(job: Job, what: str) -> dict[str, Any]:
    """Run ``job``'s client; its JSON figures.  A failure raises :class:`ServerFailed`."""
    client = list(job.argv)
    print(f"  {what} {job.label}: measuring ...", file=sys.stderr, flush=True)
    done = subprocess.run(
        client,
        cwd=REPO,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise ServerFailed(f"client failed on {job.key} (status {done.returncode})")
    figures: dict[str, Any] = json.loads(done.stdout)
    figures["client"] = shlex.join(client)
    return figures


def run_jobs(
    name: str,
    argv_template: Sequence[str],
    jobs: Callable[[str], Sequence[Job]],
    *,
    result_key: str = "calls",
    keep_going: bool = False,
) -> dict[str, Any]:
    """Start a server, run the client process of each of ``jobs(socket_path)``, stop it.

    A failed client raises :class:`ServerFailed`; with ``keep_going``, it is recorded as
    ``{"error": ...}`` under its key instead and the next job runs (unless the server died).
    """
    with serving(name, argv_template) as served:
        result = served.result
        result[result_key] = {}
        for job in jobs(served.path):
            if keep_going:
                result[result_key][job.key] = run_kept_going(served.proc, job, name)
            else:
                result[result_key][job.key] = run_client(job, name)
    return result


def run_kept_going(proc: subprocess.Popen[bytes], job: Job, what: str) -> dict[str, Any]:
    """One job whose failure is its own: figures, or ``{"error": ...}``.

    A client that exits non-zero but printed JSON (a client measuring several points, some of
    which failed) has those figures kept, with ``error`` added.
    """
    client = list(job.argv)
    print(f"  {what} {job.label}: measuring ...", file=sys.stderr, flush=True)
    figures: dict[str, Any] = {}
    try:
        done = subprocess.run(
            client,
            cwd=REPO,
            env=env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CLIENT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        error = f"no result within {CLIENT_TIMEOUT} s"
    else:
        sys.stderr.write(done.stderr.decode(errors="replace"))
        error = ""
        try:
            figures = json.loads(done.stdout) if done.stdout.strip() else {}
        except ValueError as exc:
            error = f"unreadable output: {exc}"
        if done.returncode == 0 and not error:
            figures["client"] = shlex.join(client)
            return figures
        if not error:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            error = lines[-1] if lines else f"status {done.returncode}"
    print(f"  FAILED: {job.label}: {error}", file=sys.stderr)
    if proc.poll() is not None:
        raise ServerFailed(f"server exited with status {proc.returncode} during {job.label}")
    return figures | {"error": error, "client": shlex.join(client)}


# --- figures -------------------------------------------------------------------------------

#: A JSON array of two numbers spread over four lines by ``indent``: ``cdf_us``'s points.
_PAIR: Final = re.compile(r"\[\s*\n\s*(-?[0-9.eE+-]+),\s*\n\s*(-?[0-9.eE+-]+)\s*\n\s*\]")


def dumps_json(value: Any) -> str:
    """``value`` as indented JSON, with each pair of numbers (a CDF point) on one line."""
    return _PAIR.sub(r"[\1, \2]", json.dumps(value, indent=2)) + "\n"


def median(values: list[float]) -> float:
    return values[0] if len(set(values)) == 1 else statistics.median(values)


def ratio(mine: float | None, reference: float | None) -> float | None:
    return mine / reference if mine is not None and reference else None


def fmt(value: float | None, kind: str) -> str:
    """A figure for a table: ``throughput`` as an integer, ``latency`` with one decimal."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if kind == "throughput" else f"{value:,.1f}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
