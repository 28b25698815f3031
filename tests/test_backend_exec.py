"""Exec through the ``process`` and ``bwrap`` backends: real processes, real bubblewrap, real
pseudo-terminals.  Nothing sleeps: a test waits for output the command prints once it is
where the test needs it, and ``trio.fail_after`` only guards against hangs."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
from pathlib import Path

import pytest
import trio

from inside import SANDBOXERS, descendants, finish, read_all, read_until, run, running, spec
from procs import all_ended
from sandboxd import FailedPrecondition, InvalidArgument
from sandboxd._models import WindowSize
from sandboxd.backends import _bwrap, _exec
from sandboxd.backends._exec import namespaces_to_join

GUARD = 30
pytestmark = pytest.mark.usefixtures("watchdog")


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


def exists(path: str) -> bool:
    return os.path.lexists(path)


def session_of(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2 :].split()[3])


def session_members(sid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if session_of(int(name)) == sid:
                    members.append(int(name))
            except (OSError, IndexError):
                continue
    return members


# -- both sandboxers -----------------------------------------------------------------------------


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_stdout_and_stderr_apart_and_the_exit_status(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        done = await run(sandbox, spec("sh", "-c", "echo out; echo err >&2; exit 3"))
    assert (done.stdout, done.stderr, done.returncode) == (b"out\n", b"err\n", 3)
    assert done.pid > 0


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_environment_and_cwd_are_the_specs(sandboxer: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "GREETING": "hello there"}
    async with running(sandboxer) as sandbox:
        done = await run(
            sandbox, spec("sh", "-c", 'echo "$GREETING"; pwd; env', env=env, cwd="/usr")
        )
    lines = done.stdout.decode().splitlines()
    assert lines[:2] == ["hello there", "/usr"]
    assert sorted(lines[2:]) == sorted(["PATH=/usr/bin:/bin", "GREETING=hello there", "PWD=/usr"])


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_stdin_is_fed_and_closed(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        done = await run(sandbox, spec("sh", "-c", "cat; echo end", stdin=True), b"some input\n")
        nothing = await run(sandbox, spec("cat"))  # without stdin: /dev/null
    assert done.stdout == b"some input\nend\n"
    assert (nothing.stdout, nothing.returncode) == (b"", 0)


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_output_larger_than_a_pipe(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        done = await run(sandbox, spec("head", "-c", "5000000", "/dev/zero"))
    assert done.stdout == bytes(5_000_000)


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_command_not_found_is_127_not_an_error(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        missing = await run(sandbox, spec("no-such-command-here"))
        not_executable = await run(sandbox, spec("/etc/passwd"))
    assert (missing.pid, missing.returncode) == (0, 127)
    assert b"no-such-command-here: No such file or directory" in missing.stderr
    assert not_executable.returncode == 126
    assert b"Permission denied" in not_executable.stderr


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_missing_cwd_is_failed_precondition(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        with pytest.raises(FailedPrecondition, match="No such file or directory: /no/such/dir"):
            await sandbox.exec(spec("true", cwd="/no/such/dir"))


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_death_by_signal_is_minus_n(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        done = await run(sandbox, spec("sh", "-c", "kill -TERM $$"))
    assert done.returncode == -signal.SIGTERM


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_runs_as_another_user_when_the_daemon_is_root(sandboxer: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    async with running(sandboxer) as sandbox:
        done = await run(sandbox, spec("sh", "-c", "id -u; id -g; id -G", uid=1234, gid=4321))
    assert done.stdout == b"1234\n4321\n4321\n"


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_kill_reaches_the_whole_tree(sandboxer: str) -> None:
    script = """
        setsid sh -c 'echo left-the-session; exec sleep 1000' &
        sh -c 'sleep 1000 & echo double-forked; wait' &
        (sleep 1000 & echo orphaned)
        wait
    """
    async with running(sandboxer) as sandbox:
        process = await sandbox.exec(spec("sh", "-c", script))
        seen = await read_until(process.stdout, b"left-the-session")
        for marker in (b"double-forked", b"orphaned"):
            if marker not in seen:
                seen += await read_until(process.stdout, marker)
        tree = descendants(process.pid)
        victims = sorted({*tree, *session_members(process.pid)} - {process.pid})
        assert len(victims) >= 4, victims
        assert any(session_of(pid) != process.pid for pid in tree)  # the setsid one
        process.kill()
        with trio.fail_after(10):
            assert await process.wait() == -signal.SIGKILL
        await all_ended(victims)
        process.kill()  # gone: no error
        await process.aclose()


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_tty_is_a_controlling_terminal_of_the_window_size(sandboxer: str) -> None:
    window = WindowSize(33, 101)
    script = "stty size; echo via-dev-tty > /dev/tty; test -t 0 && test -t 2 && echo both"
    async with running(sandboxer) as sandbox:
        done = await run(sandbox, spec("sh", "-c", script, tty=True, window=window))
    assert done.stdout.splitlines() == [b"33 101", b"via-dev-tty", b"both"]
    assert done.stderr == b""


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_resize_changes_the_window(sandboxer: str) -> None:
    script = "stty size; read line; stty size"
    async with running(sandboxer) as sandbox:
        process = await sandbox.exec(
            spec("sh", "-c", script, tty=True, stdin=True, window=WindowSize(24, 80))
        )
        assert process.stderr is None
        assert process.stdin is not None
        assert b"24 80" in await read_until(process.stdout, b"24 80")
        process.resize(40, 120)
        await process.stdin.send_all(b"go\n")
        rest = await read_until(process.stdout, b"40 120")
        assert rest.endswith(b"40 120\r\n") or b"40 120" in rest + await read_all(process.stdout)
        assert await process.wait() == 0
        await process.aclose()
        process.resize(1, 1)  # closed: nothing


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_closing_a_tty_stdin_sends_end_of_file(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        done = await run(sandbox, spec("cat", tty=True, stdin=True), b"typed\n")
    assert done.returncode == 0
    assert done.stdout.count(b"typed") == 2  # the echo, then cat's copy


@pytest.mark.parametrize("sandboxer", SANDBOXERS)
async def test_tty_has_a_dev_pts_name(sandboxer: str) -> None:
    async with running(sandboxer) as sandbox:
        done = await run(sandbox, spec("tty", tty=True))
    assert done.stdout.startswith(b"/dev/pts/")


# -- bwrap: inside, with no privilege ------------------------------------------------------------


async def test_bwrap_exec_is_in_every_namespace_and_root_of_the_sandbox() -> None:
    async with running("bwrap") as sandbox:
        process = await sandbox.exec(spec("cat", stdin=True))
        init = sandbox.pid
        for name in ("user", "mnt", "pid", "uts", "ipc", "net", "cgroup", "time"):
            assert os.readlink(f"/proc/{process.pid}/ns/{name}") == os.readlink(
                f"/proc/{init}/ns/{name}"
            ), name
        assert namespaces_to_join(process.pid) == namespaces_to_join(init) != 0
        here, there = os.stat(f"/proc/{process.pid}/root"), os.stat(f"/proc/{init}/root")
        assert (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
        fields = status_fields(process.pid)
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[key], 16) == 0, key
        assert fields["NoNewPrivs"] == "1"
        done = await finish(process, b"x")
        hostname = await run(sandbox, spec("hostname"))
    assert done.stdout == b"x"
    assert hostname.stdout == b"box-1\n"


async def test_bwrap_exec_gets_no_more_privilege_than_the_sandbox(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host only")
    script = f"""
        mount -t tmpfs none /mnt; echo mount=$?
        unshare -n true; echo unshare=$?
        chroot / true; echo chroot=$?
        touch /usr/sandboxd-escape; echo touch=$?
        cat /proc/1/root{secret} {secret}; echo cat=$?
        kill -0 {os.getpid()}; echo kill=$?
        ls /proc | grep -c '^[0-9]'
    """
    async with running("bwrap") as sandbox:
        done = await run(sandbox, spec("sh", "-c", script))
    lines = done.stdout.decode().split()
    assert [line.split("=")[0] for line in lines[:6] if not line.endswith("=0")] == [
        "mount", "unshare", "chroot", "touch", "cat", "kill",
    ], (lines, done.stderr)  # fmt: skip
    assert int(lines[6]) <= 6  # the sandbox's own processes only
    assert not exists("/usr/sandboxd-escape")
    assert b"host only" not in done.stdout


async def test_bwrap_exec_fails_once_the_sandbox_has_ended() -> None:
    async with running("bwrap") as sandbox:
        sandbox.signal(signal.SIGKILL)
        await all_ended([sandbox.pid])
        with pytest.raises(FailedPrecondition, match="has ended"):
            await sandbox.exec(spec("true"))


async def test_bwrap_exec_whose_sandbox_ends_while_it_starts_fails_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The init dies between the opening of its namespaces and the command's fork (the
    kernel then refuses any fork into the pid namespace, with ENOMEM): the exec fails to
    start, saying the sandbox ended, instead of reporting a command that ran and failed."""
    async with running("bwrap") as sandbox:
        opened = _exec.open_namespaces

        def open_then_kill(pid: int) -> list[tuple[int, int]]:
            namespaces = opened(pid)
            pidfd = os.pidfd_open(pid)  # before the kill: the init may be reaped at once
            sandbox.signal(signal.SIGKILL)
            try:
                select.select([pidfd], [], [], 10)  # the init has ended
            finally:
                os.close(pidfd)
            return namespaces

        monkeypatch.setattr(_bwrap, "open_namespaces", open_then_kill)
        monkeypatch.setattr(_bwrap, "start_time", lambda pid: sandbox._init_start)
        # "the sandbox has ended" from the relay, or "sandbox box-1 has ended" when the init
        # was reaped before its namespaces were opened: either way it did not start.
        with pytest.raises(FailedPrecondition, match="has ended"):
            await sandbox.exec(spec("true"))


async def test_bwrap_init_exit_kills_the_execs() -> None:
    async with running("bwrap") as sandbox:
        process = await sandbox.exec(spec("sh", "-c", "echo up; exec sleep 1000"))
        await read_until(process.stdout, b"up")
        sandbox.signal(signal.SIGKILL)
        with trio.fail_after(10):
            assert await process.wait() == -signal.SIGKILL
        await process.aclose()


UNPRIVILEGED_SCRIPT = """
import os, signal, trio
from inside import finish, run, spec
from procs import Exits
from sandboxd.backends import BwrapBackend
from sandboxd._models import SandboxOptions, SandboxSpec

async def main():
    async with trio.open_nursery() as nursery:
        exits = Exits()
        options = SandboxOptions(command=("sleep", "1000"))
        sandbox = await BwrapBackend().start(SandboxSpec("nb", "bwrap", options), nursery, exits)
        script = "id -u; grep -E '^Cap(Eff|Bnd)|NoNewPrivs' /proc/self/status; hostname"
        print((await run(sandbox, spec("sh", "-c", script))).stdout.decode(), end="")
        print((await run(sandbox, spec("tty", tty=True))).stdout.decode(), end="")
        process = await sandbox.exec(spec("cat", stdin=True))
        for name in ("user", "mnt", "pid", "net"):
            ours = os.readlink(f"/proc/{process.pid}/ns/{name}")
            print(name, ours == os.readlink(f"/proc/{sandbox.pid}/ns/{name}"))
        await finish(process)
        sandbox.signal(signal.SIGKILL)
        await exits.wait()
        sandbox.cleanup()

trio.run(main)
"""


async def test_bwrap_exec_in_a_sandbox_of_an_unprivileged_daemon() -> None:
    """The daemon as ``nobody``: the sandbox has a user namespace (nested in the one that
    owns its other namespaces), and exec joins them all the same."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv, to become an unprivileged user")
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{tests.parent / 'src'}"}
    drop = ["--reuid=65534", "--regid=65534", "--clear-groups", "--bounding-set=-all"]
    command = [setpriv, *drop, sys.executable, "-c", UNPRIVILEGED_SCRIPT]
    with trio.fail_after(GUARD):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, env=env, cwd="/", check=False
        )
    if done.returncode != 0 and b"Permission denied" in done.stderr:
        pytest.skip(f"the unprivileged user cannot run this Python: {done.stderr[-200:]!r}")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().splitlines() == [
        "65534",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "nb",
        "/dev/pts/0",
        "user True",
        "mnt True",
        "pid True",
        "net True",
    ]


async def test_kill_refuses_an_invalid_signal() -> None:
    async with running("process") as sandbox:
        process = await sandbox.exec(spec("true"))
        with pytest.raises(InvalidArgument, match="signal 0"):
            process.kill(0)
        await finish(process)
