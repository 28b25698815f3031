"""The exec fork server (backends/_forkserver.py): every exec starts from it, it survives
nothing of the daemon, and its death fails or ends execs instead of hanging them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from inside import SANDBOXERS, finish, read_until, run, running, spec
from procs import all_ended
from sandboxd.backends import ExecProcess, _exec

GUARD = 30
pytestmark = pytest.mark.usefixtures("watchdog")
SRC = Path(__file__).resolve().parent.parent / "src"


def server_pid() -> int:
    return _exec.fork_server().pid


async def server_killed() -> None:
    pid = server_pid()
    os.kill(pid, signal.SIGKILL)
    await all_ended([pid])


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_the_command_holds_no_descriptor_but_its_stdio(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        done = await run(sandbox, spec("ls", "/proc/self/fd"))
        assert done.stdout.split() == [b"0", b"1", b"2", b"3"]  # 3: ls's own directory
        done = await run(sandbox, spec("ls", "/proc/self/fd", tty=True))
        assert done.stdout.split() == [b"0", b"1", b"2", b"3"]


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_eight_execs_at_once(sandboxer: str) -> None:
    """Eight started together, all running at once (each waits for its input), each with
    its own stdio and exit status."""
    async with running(sandboxer) as sandbox:
        server = server_pid()
        processes: dict[int, ExecProcess] = {}

        async def start(i: int) -> None:
            command = f"read x; echo $x {i}; exit {i}"
            processes[i] = await sandbox.exec(spec("sh", "-c", command, stdin=True))

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(start, i)
        results: dict[int, tuple[bytes, int]] = {}

        async def finish_one(i: int) -> None:
            done = await finish(processes[i], b"hello\n")
            results[i] = (done.stdout, done.returncode)

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(finish_one, i)
        assert results == {i: (b"hello %d\n" % i, i) for i in range(8)}
        assert server_pid() == server  # one server served them all


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_a_dead_fork_server_ends_running_execs_and_a_new_one_serves(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        process = await sandbox.exec(spec("sh", "-c", "echo up; exec sleep 1000"))
        assert await read_until(process.stdout, b"\n") == b"up\n"
        old = server_pid()
        await server_killed()
        with trio.fail_after(10):
            assert await process.wait() == -signal.SIGKILL  # not a hang
        await all_ended([process.pid])
        await process.aclose()
        done = await run(sandbox, spec("echo", "again"))
        assert (done.stdout, done.returncode) == (b"again\n", 0)
        assert server_pid() != old


async def test_a_fork_server_killed_while_idle_is_reaped_and_replaced() -> None:
    async with running("process") as sandbox:
        old = _exec.fork_server()
        os.kill(old.pid, signal.SIGKILL)
        await all_ended([old.pid])
        done = await run(sandbox, spec("echo", "served"))
        assert (done.stdout, done.returncode) == (b"served\n", 0)
        assert server_pid() != old.pid
        assert old.process.returncode == -signal.SIGKILL


async def test_the_fork_server_exits_at_the_end_of_its_socket() -> None:
    server = _exec.ForkServer()
    server.close()
    assert server.process.returncode == 0  # it exited on its own, not killed


DAEMON_SCRIPT = """
import sys
from sandboxd.backends import ExecProcess, _exec
print(_exec.fork_server().pid, flush=True)
sys.stdin.read()
"""


async def test_the_fork_server_dies_with_the_daemon() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    daemon = subprocess.Popen(  # noqa: ASYNC220 (it only starts it)
        [sys.executable, "-c", DAEMON_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert daemon.stdout is not None
        server = int(await trio.to_thread.run_sync(daemon.stdout.readline))
        assert os.readlink(f"/proc/{server}/exe") == os.readlink(f"/proc/{daemon.pid}/exe")
        daemon.kill()
        await all_ended([server])
    finally:
        daemon.kill()
        daemon.wait()
        assert daemon.stdin is not None and daemon.stdout is not None
        daemon.stdin.close()
        daemon.stdout.close()


def processes_running(argument: bytes) -> list[int]:
    """Pids of live (not zombie) processes with ``argument`` on their command line."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if argument in argv and state != b"Z":
                found.append(int(name))
    return found


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_an_exec_cancelled_while_starting_leaves_nothing_running(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        _exec.fork_server()
        marker = f"{os.getpid()}.{sandboxer}"
        process = None
        with trio.CancelScope() as scope:
            scope.cancel()  # at its first wait: the request is sent, the command not yet seen
            process = await sandbox.exec(spec("sleep", "1000", marker))
        if process is not None:  # the relay answered before the first wait: nothing to test
            process.kill()
            await finish(process)
            pytest.skip("the command was reported started before the exec waited")
        assert processes_running(marker.encode()) == []
        done = await run(sandbox, spec("true"))  # the exec's channel did not get in the way
        assert done.returncode == 0
