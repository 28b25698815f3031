"""``sandboxctl exec``, ``logs`` and ``cp`` against a real daemon, as a shell runs them.

One daemon serves the module (see test_sandboxctl.py); each test runs its own bwrap or process
sandbox.  The interactive case runs ``sandboxctl exec -it`` on a real pseudo-terminal, as a
user's terminal would, and types into it.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import pty
import select
import signal
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from daemons import PROBE_INTERVAL, STARTUP
from sandboxd import Code
from test_sandboxctl import (
    RUN_LIMIT,
    SANDBOXCTL,
    Daemon,
    Lines,
    Result,
    base_env,
    sandboxctl,
    start_daemon,
)

_ids = itertools.count()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="sbdata-") as directory:
        scratch = Path(directory)
        socket = str(scratch / "d.sock")
        d = start_daemon(
            scratch,
            base_env(scratch),
            "--socket",
            socket,
            "--state-dir",
            str(scratch / "state"),
            socket=socket,
        )
        try:
            yield d
            assert d.terminate() == 0, d.output()
        finally:
            d.cleanup()


@pytest.fixture(params=["bwrap", "process"])
def sandbox(request: pytest.FixtureRequest, daemon: Daemon) -> Iterator[str]:
    """A running pause sandbox of each sandboxer, shut down at the end."""
    sandbox_id = f"data-{request.param}-{next(_ids)}"
    sandboxctl(daemon, "run", "--sandboxer", request.param, sandbox_id).ok()
    try:
        yield sandbox_id
    finally:
        sandboxctl(daemon, "shutdown", sandbox_id)


def run_with_input(d: Daemon, data: bytes, *args: str) -> Result:
    env = base_env(d.scratch)
    env["SANDBOXD_SOCKET"] = d.socket
    done = subprocess.run(
        [SANDBOXCTL, *args], input=data, capture_output=True, env=env, timeout=RUN_LIMIT,
        check=False,
    )  # fmt: skip
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def test_exec_exits_with_the_commands_status_and_keeps_its_streams_apart(
    daemon: Daemon, sandbox: str
) -> None:
    result = sandboxctl(
        daemon, "exec", sandbox, "--", "sh", "-c", "echo out; echo err >&2; exit 7"
    )
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")


def test_exec_reports_death_by_signal_as_128_plus_n(daemon: Daemon, sandbox: str) -> None:
    result = sandboxctl(daemon, "exec", sandbox, "--", "sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + signal.SIGTERM


def test_exec_interactive_forwards_stdin_until_its_end(daemon: Daemon, sandbox: str) -> None:
    text = b"".join(b"line %d\n" % i for i in range(2000))
    result = run_with_input(daemon, text, "exec", "-i", sandbox, "--", "cat")
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == text


def test_exec_without_i_gives_the_command_no_stdin(daemon: Daemon, sandbox: str) -> None:
    result = run_with_input(daemon, b"not for it\n", "exec", sandbox, "--", "cat")
    assert (result.returncode, result.stdout) == (0, "")


def test_exec_timeout_kills_the_command(daemon: Daemon, sandbox: str) -> None:
    result = sandboxctl(daemon, "exec", "--timeout", "0.5", sandbox, "--", "sleep", "60")
    assert result.returncode == 128 + signal.SIGKILL
    assert "timed out" in result.stderr


def test_exec_in_a_stopped_sandbox_is_failed_precondition(daemon: Daemon) -> None:
    sandbox_id = f"data-stopped-{next(_ids)}"
    sandboxctl(daemon, "run", "--sandboxer", "process", sandbox_id, "--", "true").ok()
    sandboxctl(daemon, "wait", sandbox_id).ok()
    try:
        stderr = sandboxctl(daemon, "exec", sandbox_id, "--", "true").failed(
            Code.FAILED_PRECONDITION
        )
        assert "stopped" in stderr
    finally:
        sandboxctl(daemon, "shutdown", sandbox_id)


def _read_until(fd: int, marker: bytes, seen: bytearray) -> None:
    deadline = time.monotonic() + RUN_LIMIT
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {bytes(seen)!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            seen += data


def test_exec_it_gives_a_real_terminal_of_the_callers_size(daemon: Daemon, sandbox: str) -> None:
    """``sandboxctl exec -it ID -- sh`` on a pseudo-terminal of 33 rows and 101 columns: the
    command's stdin is a terminal of that size, what is typed reaches it, a resize of the
    caller's terminal reaches it too, and sandboxctl exits with the shell's status."""
    env = base_env(daemon.scratch)
    env["SANDBOXD_SOCKET"] = daemon.socket
    env["TERM"] = "dumb"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    proc = subprocess.Popen(
        [SANDBOXCTL, "exec", "-it", sandbox, "--", "sh"],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()
    try:
        # Markers computed by the shell, so that the terminal's echo of the line is no match.
        os.write(master, b"test -t 0 && echo IS-A-$((0+1))TTY; stty size; echo MARK-$((0+1))\n")
        _read_until(master, b"MARK-1\r\n", seen)
        assert b"IS-A-1TTY" in seen
        assert b"33 101" in seen
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        # The resize reaches sandboxctl as SIGWINCH (it leads the terminal's session).
        for _ in range(200):
            seen.clear()
            os.write(master, b"stty size; echo MARK-$((1+1))\n")
            _read_until(master, b"MARK-2\r\n", seen)
            if b"40 120" in seen:
                break
        assert b"40 120" in seen
        os.write(master, b"exit 3\n")
        assert proc.wait(RUN_LIMIT) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_logs_prints_the_inits_output_on_its_own_streams(daemon: Daemon) -> None:
    sandbox_id = f"data-logs-{next(_ids)}"
    sandboxctl(
        daemon, "run", "--sandboxer", "process", sandbox_id, "--",
        "sh", "-c", "echo to-out; echo to-err >&2",
    ).ok()  # fmt: skip
    sandboxctl(daemon, "wait", sandbox_id).ok()
    try:
        result = sandboxctl(daemon, "logs", sandbox_id)
        assert (result.returncode, result.stdout, result.stderr) == (0, "to-out\n", "to-err\n")
        followed = sandboxctl(daemon, "logs", "-f", sandbox_id)  # stopped: ends at once
        assert (followed.stdout, followed.stderr) == ("to-out\n", "to-err\n")
    finally:
        sandboxctl(daemon, "shutdown", sandbox_id)


def test_logs_tail_starts_that_many_bytes_before_the_end(daemon: Daemon) -> None:
    sandbox_id = f"data-tail-{next(_ids)}"
    sandboxctl(
        daemon, "run", "--sandboxer", "process", sandbox_id, "--", "sh", "-c",
        "echo first; echo second",
    ).ok()  # fmt: skip
    sandboxctl(daemon, "wait", sandbox_id).ok()
    try:
        assert sandboxctl(daemon, "logs", "--tail", "7", sandbox_id).ok() == "second\n"
        stamped = sandboxctl(daemon, "logs", "--timestamps", sandbox_id).ok()
        stamp, _, rest = stamped.partition(" ")
        assert datetime.fromisoformat(stamp).tzinfo is not None
        assert rest.endswith("second\n")
    finally:
        sandboxctl(daemon, "shutdown", sandbox_id)


def test_cp_copies_a_file_in_and_out_keeping_its_mode(daemon: Daemon, sandbox: str) -> None:
    local = daemon.scratch / f"in-{sandbox}.sh"
    local.write_bytes(b"#!/bin/sh\necho copied-in\n" + os.urandom(200_000).hex().encode())
    local.chmod(0o750)
    sandboxctl(daemon, "cp", str(local), f"{sandbox}:/tmp/script.sh").ok()
    listed = sandboxctl(daemon, "exec", sandbox, "--", "stat", "-c", "%a %s", "/tmp/script.sh")
    assert listed.ok().split() == ["750", str(local.stat().st_size)]
    back = daemon.scratch / f"out-{sandbox}.sh"
    sandboxctl(daemon, "cp", f"{sandbox}:/tmp/script.sh", str(back)).ok()
    assert back.read_bytes() == local.read_bytes()
    piped = sandboxctl(daemon, "cp", f"{sandbox}:/tmp/script.sh", "-")
    assert piped.stdout.encode() == local.read_bytes()


def test_cp_of_a_missing_file_is_not_found_and_leaves_nothing(
    daemon: Daemon, sandbox: str
) -> None:
    target = daemon.scratch / f"never-{sandbox}"
    sandboxctl(daemon, "cp", f"{sandbox}:/no/such/file", str(target)).failed(Code.NOT_FOUND)
    assert not target.exists()
    assert not list(daemon.scratch.glob(f"never-{sandbox}*"))


def test_events_name_the_exec_and_its_status(daemon: Daemon) -> None:
    env = base_env(daemon.scratch)
    env["SANDBOXD_SOCKET"] = daemon.socket
    watcher = subprocess.Popen(
        [SANDBOXCTL, "events"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    sandbox_id = f"data-events-{next(_ids)}"
    try:
        lines = Lines(watcher)
        sandboxctl(daemon, "run", "--sandboxer", "sim", sandbox_id).ok()
        # Readiness probe: sandboxctl says nothing once subscribed; exec until it shows.
        deadline = time.monotonic() + STARTUP
        seen: list[str] = []
        while not any("/sandboxes/exec-exit" in line for line in seen):
            assert time.monotonic() < deadline, f"no exec events: {seen}"
            sandboxctl(daemon, "exec", "--exec-id", "probe", sandbox_id, "--", "exit", "4")
            while (line := lines.next(PROBE_INTERVAL * 5)) is not None:
                seen.append(line)
        starts = [line for line in seen if "/sandboxes/exec-start" in line]
        exits = [line for line in seen if "/sandboxes/exec-exit" in line]
        assert starts[-1].endswith(f"/sandboxes/exec-start {sandbox_id} exec_id=probe")
        assert exits[-1].endswith(f"/sandboxes/exec-exit {sandbox_id} exec_id=probe exit_status=4")
    finally:
        watcher.terminate()
        watcher.communicate(timeout=STARTUP)
        sandboxctl(daemon, "shutdown", sandbox_id)
