"""The real daemon: ``sandboxd serve --socket PATH`` run as a subprocess.

Each test starts the installed ``sandboxd`` console script (or ``python -m sandboxd`` when the
script is missing) and talks to it over its socket with :func:`sandboxd.api.connect`, as any
client would.  The daemon's stdout and stderr go to a file that failing assertions show.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from daemons import STARTUP, Daemon, ReadyPipe, daemon_env
from procs import Reaper, is_alive
from sandboxd import NotFound, Unavailable
from sandboxd._models import SandboxOptions, SandboxState
from sandboxd.api import connect


def sandboxd_argv(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("sandboxd")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "sandboxd"]
    return [*base, *args]


def open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def exists(path: str) -> bool:
    return os.path.lexists(path)


@asynccontextmanager
async def running_daemon(sock_path: str, tmp_path: Path, name: str) -> AsyncIterator[Daemon]:
    """``sandboxd serve --socket sock_path``, serving; killed at the end if still running."""
    log = tmp_path / f"{name}.log"
    fd = open_log(log)
    ready = ReadyPipe()
    try:
        process = await trio.lowlevel.open_process(
            sandboxd_argv("serve", "--socket", sock_path, *ready.args),
            stdin=None,
            stdout=fd,
            stderr=fd,
            env=daemon_env(tmp_path / "state"),
            pass_fds=ready.fds,
        )
    finally:
        os.close(fd)
        ready.spawned()
    daemon = Daemon(process, sock_path, log, ready)
    try:
        await daemon.serving()
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(STARTUP):
            await process.wait()


async def test_daemon_serves_then_exits_0_on_sigterm_leaving_sandboxes_running(
    sock_path: str, tmp_path: Path, reaper: Reaper
) -> None:
    async with running_daemon(sock_path, tmp_path, "daemon") as daemon:
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
        assert stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o600

        async with connect(sock_path) as remote:
            assert (await remote.version())["protocol"] == 1

            # A sim sandbox through its whole life.
            assert await remote.create("sim1", sandboxer="sim", labels={"k": "v"}) == "sim1"
            status = await remote.status("sim1")
            assert (status.state, status.pid) == (SandboxState.CREATED, 0)
            instance = await remote.start("sim1")
            assert instance.pid > 0
            assert instance.labels == {"k": "v"}
            assert (await remote.status("sim1")).state is SandboxState.READY
            assert (await remote.platform("sim1")).os == "linux"
            await remote.stop("sim1")
            exit_status = await remote.wait("sim1")
            assert exit_status.exit_status == 143
            assert exit_status.exited_at.tzinfo is not None
            assert (await remote.status("sim1")).state is SandboxState.STOPPED
            await remote.shutdown("sim1")
            with pytest.raises(NotFound):
                await remote.status("sim1")

            # A real process, started before the daemon exits.
            sleeper = SandboxOptions(command=["sleep", "1000"])
            await remote.create("outliver", sandboxer="process", options=sleeper)
            pid = (await remote.start("outliver")).pid
            reaper.add(pid)
            assert is_alive(pid)
            assert [s.sandbox_id for s in await remote.list()] == ["outliver"]

            # SIGTERM with this connection still open: the daemon must not wait for it.
            returncode = await daemon.terminate()
            assert returncode == 0, daemon.output()
            assert not exists(sock_path), "the daemon left its socket file behind"
            assert is_alive(pid), "the sandbox died with the daemon"
            with pytest.raises(Unavailable):
                await remote.list()

        # The socket is gone, so nobody answers any more.
        with pytest.raises(Unavailable):
            async with connect(sock_path) as remote:
                pass


def assert_refused_clearly(
    name: str, result: subprocess.CompletedProcess[bytes], path: str
) -> str:
    """A daemon that could not start: non-zero exit, and a one-line reason naming the path
    on stderr instead of a traceback."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, f"{name}: exit status 0\n{stderr}"
    assert "Traceback" not in stderr, f"{name}: a traceback instead of a message:\n{stderr}"
    reasons = [line for line in stderr.splitlines() if line.startswith("sandboxd: ")]
    assert any(path in line for line in reasons), f"{name}: no 'sandboxd: ...' line:\n{stderr}"
    return stderr


async def test_second_daemon_on_a_live_socket_fails_clearly(
    sock_path: str, tmp_path: Path
) -> None:
    not_a_socket = tmp_path / "regular-file"
    not_a_socket.write_bytes(b"keep me")
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def launch(name: str, path: str) -> None:
        results[name] = await trio.run_process(
            sandboxd_argv("serve", "--socket", path),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=daemon_env(tmp_path / "state"),
        )

    async with running_daemon(sock_path, tmp_path, "first") as first:
        with trio.fail_after(STARTUP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(launch, "second", sock_path)
                nursery.start_soon(launch, "not-a-socket", str(not_a_socket))
        stderr = assert_refused_clearly("second", results["second"], sock_path)
        assert "already listening" in stderr
        assert_refused_clearly("not-a-socket", results["not-a-socket"], str(not_a_socket))
        assert not_a_socket.read_bytes() == b"keep me"

        # The first daemon is untouched: same socket file, still serving.
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
        async with connect(sock_path) as remote:
            assert await remote.create("still", sandboxer="sim") == "still"
            assert (await remote.status("still")).state is SandboxState.CREATED
        assert await first.terminate() == 0, first.output()
        assert not exists(sock_path)


async def test_serve_help_mentions_sigterm() -> None:
    with trio.fail_after(STARTUP):
        result = await trio.run_process(
            sandboxd_argv("serve", "--help"), capture_stdout=True, capture_stderr=True
        )
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "SIGTERM" in text
    assert "--socket" in text


async def test_ready_fd_gets_one_line_once_serving_and_nothing_from_a_daemon_that_fails(
    sock_path: str, tmp_path: Path
) -> None:
    async def ready_line(*args: str) -> tuple[bytes, trio.Process]:
        read, write = os.pipe()
        process = await trio.lowlevel.open_process(
            sandboxd_argv("serve", *args, "--ready-fd", str(write)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=daemon_env(tmp_path / "state"),
            pass_fds=(write,),
        )
        os.close(write)
        chunks = []
        with trio.fail_after(STARTUP):
            while True:  # to the end of the pipe: the daemon closes it after the line
                await trio.lowlevel.wait_readable(read)
                chunk = os.read(read, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
        os.close(read)
        return b"".join(chunks), process

    line, serving = await ready_line("--socket", sock_path)
    try:
        assert line == f"READY {sock_path}\n".encode()
        async with connect(sock_path) as remote:  # it does serve
            assert (await remote.version())["protocol"] == 1
    finally:
        serving.send_signal(signal.SIGTERM)
        with trio.fail_after(STARTUP):
            assert await serving.wait() == 0

    not_a_socket = tmp_path / "regular-file"
    not_a_socket.write_bytes(b"keep me")
    line, failed = await ready_line("--socket", str(not_a_socket))
    assert line == b""
    with trio.fail_after(STARTUP):
        assert await failed.wait() == 1
