"""The process backend, with real processes.

Nothing here sleeps to let time pass: exits are awaited through ``on_exit``, a child's death
through its pidfd, and output through a FIFO; ``trio.fail_after`` only guards against hangs.
"""

from __future__ import annotations

import os
import platform
import shlex
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from procs import Exits, Fifo, is_alive, proc_pgrp, read_output
from sandboxd import FailedPrecondition, InvalidArgument
from sandboxd._models import Mount, Platform, SandboxOptions, SandboxSpec
from sandboxd.backends import Backend, ProcessBackend, _exec, host_platform
from sandboxd.backends._process import DEFAULT_PATH, ProcessSandbox

TIMEOUT = 5


def make_spec(command: tuple[object, ...] | None = None, **kwargs: object) -> SandboxSpec:
    rootfs = kwargs.pop("rootfs", ())
    netns_path = kwargs.pop("netns_path", None)
    return SandboxSpec(
        "sb-1",
        "process",
        SandboxOptions(command=command, **kwargs),  # type: ignore[arg-type]
        rootfs=rootfs,  # type: ignore[arg-type]
        netns_path=netns_path,  # type: ignore[arg-type]
    )


class Sandboxes:
    def __init__(self, nursery: trio.Nursery, backend: ProcessBackend) -> None:
        self.nursery = nursery
        self.backend = backend
        self.started: list[tuple[ProcessSandbox, Exits]] = []

    async def start(self, spec: SandboxSpec) -> tuple[ProcessSandbox, Exits]:
        self.backend.validate(spec)
        exits = Exits()
        sandbox = await self.backend.start(spec, self.nursery, exits)
        self.started.append((sandbox, exits))
        return sandbox, exits


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
async def sandboxes(log_dir: Path) -> AsyncIterator[Sandboxes]:
    """Starts sandboxes in a nursery; at teardown kills them all and awaits their exits."""
    async with trio.open_nursery() as nursery:
        started = Sandboxes(nursery, ProcessBackend(log_dir=log_dir))
        try:
            yield started
        finally:
            for sandbox, _ in started.started:
                sandbox.cleanup()
                for fd in sandbox.output or ():
                    os.close(fd)
            with trio.fail_after(TIMEOUT):
                for _, exits in started.started:
                    await exits.event.wait()


def waits_for_signals(pid: int) -> bool:
    """Whether ``pid`` sleeps in sigwait()."""
    return "sigtimedwait" in Path(f"/proc/{pid}/wchan").read_text()


def test_satisfies_the_protocol() -> None:
    backend: Backend = ProcessBackend()
    assert backend.name == "process"
    assert backend.unavailable_reason() is None
    assert backend.platform() == host_platform()


# -- exit statuses -----------------------------------------------------------------------------


async def test_exit_code_is_reported(sandboxes: Sandboxes) -> None:
    _, exits = await sandboxes.start(make_spec(("sh", "-c", "exit 3")))
    assert await exits.wait() == 3


async def test_death_by_signal_is_128_plus_n(sandboxes: Sandboxes) -> None:
    _, exits = await sandboxes.start(make_spec(("sh", "-c", "kill -9 $$")))
    assert await exits.wait() == 137


async def test_sigterm_ends_sleep_with_143(sandboxes: Sandboxes) -> None:
    sandbox, exits = await sandboxes.start(make_spec(("sleep", "1000")))
    sandbox.signal(signal.SIGTERM)
    assert await exits.wait() == 143
    sandbox.signal(signal.SIGTERM)  # gone: no error


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_pause_process_exits_0_on_stop_signals(
    sandboxes: Sandboxes, signum: signal.Signals
) -> None:
    sandbox, exits = await sandboxes.start(make_spec(None))
    assert "-c" in shlex.split(sandbox.info()["command"])
    # The pause process cannot say when it is ready (its output goes to /dev/null), and a
    # signal before that is death by signal: wait until it sleeps in sigwait().
    with trio.fail_after(TIMEOUT):
        while not waits_for_signals(sandbox.pid):  # noqa: ASYNC110 - nothing to wait on
            await trio.sleep(0.001)
    assert is_alive(sandbox.pid)
    sandbox.signal(signum)
    assert await exits.wait() == 0


async def test_cleanup_kills_what_the_sandbox_forked(sandboxes: Sandboxes, fifo: Fifo) -> None:
    # The child ignores SIGTERM, so only cleanup's SIGKILL to the group can end it.  It says
    # its pid once it ignores SIGTERM, then becomes `sleep` (which inherits SIG_IGN).
    child_script = "trap '' TERM; echo $$ > \"$0\"; exec sleep 1000"
    script = f"sh -c {shlex.quote(child_script)} {shlex.quote(str(fifo.path))} & wait"
    sandbox, exits = await sandboxes.start(make_spec(("sh", "-c", script)))
    child = int(await fifo.read_all())
    child_fd = os.pidfd_open(child)
    try:
        assert proc_pgrp(child) == sandbox.pid
        sandbox.signal(signal.SIGTERM)
        assert await exits.wait() == 143
        assert is_alive(child)
        assert sandbox.usage()[2] >= 1

        sandbox.cleanup()
        with trio.fail_after(TIMEOUT):
            await trio.lowlevel.wait_readable(child_fd)  # readable once it has exited
        assert not is_alive(child)  # gone, or a zombie nobody reaped yet
        assert sandbox.usage()[2] == 0  # zombies are not counted
        sandbox.signal(signal.SIGKILL)  # after cleanup: nothing, no error
    finally:
        os.close(child_fd)


async def test_watcher_cancelled_leaves_the_process_running() -> None:
    backend = ProcessBackend()
    exits = Exits()
    async with trio.open_nursery() as nursery:
        sandbox = await backend.start(make_spec(("sleep", "1000")), nursery, exits)
        nursery.cancel_scope.cancel()
    try:
        assert exits.statuses == []
        assert is_alive(sandbox.pid)
    finally:
        sandbox.cleanup()
        # Nobody watches it any more: reap it here, or its Popen would complain when
        # collected.
        with trio.fail_after(TIMEOUT):
            assert sandbox._process is not None
            assert await sandbox._process.wait() == -signal.SIGKILL
    assert exits.statuses == []


# -- what the process sees ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"PATH": DEFAULT_PATH}),
        ({"FOO": "bar baz", "EMPTY": ""}, {"FOO": "bar baz", "EMPTY": "", "PATH": DEFAULT_PATH}),
        ({"PATH": "/usr/bin:/bin", "A": "1"}, {"PATH": "/usr/bin:/bin", "A": "1"}),
    ],
)
async def test_environment_is_exactly_env_plus_path(
    sandboxes: Sandboxes, log_dir: Path, env: dict[str, str], expected: dict[str, str]
) -> None:
    sandbox, exits = await sandboxes.start(make_spec(("env", "-0"), env=env))
    assert await exits.wait() == 0
    out, _ = read_output(sandbox.output)
    entries = out.decode().split("\0")[:-1]
    assert dict(entry.split("=", 1) for entry in entries) == expected


async def test_cwd_is_honoured(sandboxes: Sandboxes, tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    sandbox, exits = await sandboxes.start(
        make_spec(("sh", "-c", "pwd > where"), cwd=str(workdir))
    )
    assert await exits.wait() == 0
    assert (workdir / "where").read_text() == f"{workdir}\n"
    assert sandbox.info()["cwd"] == str(workdir)


async def test_default_cwd_is_root(sandboxes: Sandboxes) -> None:
    sandbox, exits = await sandboxes.start(make_spec(("pwd",)))
    assert await exits.wait() == 0
    assert sandbox.info()["cwd"] == "/"
    assert read_output(sandbox.output) == (b"/\n", b"")


async def test_output_goes_to_fifos_in_the_log_dir_removed_at_cleanup(
    sandboxes: Sandboxes, log_dir: Path
) -> None:
    sandbox, exits = await sandboxes.start(make_spec(("sh", "-c", "echo out; echo err >&2")))
    assert await exits.wait() == 0
    for name in ("sb-1.stdout", "sb-1.stderr"):
        assert stat.S_ISFIFO((log_dir / name).stat().st_mode)
    assert read_output(sandbox.output) == (b"out\n", b"err\n")
    sandbox.cleanup()
    assert os.listdir(log_dir) == []


async def test_without_log_dir_output_goes_to_pipes() -> None:
    exits = Exits()
    async with trio.open_nursery() as nursery:
        sandbox = await ProcessBackend().start(make_spec(("echo", "hi")), nursery, exits)
        assert await exits.wait() == 0
    assert read_output(sandbox.output) == (b"hi\n", b"")
    for fd in sandbox.output or ():
        os.close(fd)


async def test_output_never_breaks_once_nobody_reads(tmp_path: Path, fifo: Fifo) -> None:
    # The daemon away: its read ends closed.  The sandbox holds a reader of its own, so a
    # write neither kills it (SIGPIPE) nor fails.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    exits = Exits()
    command = f"read x < {gate}; echo still here; echo done > {fifo.path}"
    opened = os.open(gate, os.O_RDWR)
    try:
        async with trio.open_nursery() as nursery:
            spec = make_spec(("sh", "-c", command))
            sandbox = await ProcessBackend().start(spec, nursery, exits)
            for fd in sandbox.output or ():
                os.close(fd)
            os.write(opened, b"go\n")
            assert await fifo.read_all() == b"done\n"
            assert await exits.wait() == 0
    finally:
        os.close(opened)


async def test_info(sandboxes: Sandboxes, log_dir: Path) -> None:
    sandbox, exits = await sandboxes.start(make_spec(("sleep", "1000")))
    assert sandbox.info() == {
        "command": "sleep 1000",
        "cwd": "/",
        "pgid": str(sandbox.pid),
    }
    assert os.getpgid(sandbox.pid) == sandbox.pid
    assert os.getsid(sandbox.pid) == sandbox.pid
    with pytest.raises(InvalidArgument, match="signal 999"):
        sandbox.signal(999)
    sandbox.signal(0)
    assert exits.statuses == []


async def test_usage_of_a_running_sleep(sandboxes: Sandboxes, fifo: Fifo) -> None:
    # Right after exec a process may have no resident page yet: wait until sh has run.
    script = 'echo ready > "$0"; sleep 1000'
    sandbox, exits = await sandboxes.start(make_spec(("sh", "-c", script, str(fifo.path))))
    assert await fifo.read_all() == b"ready\n"
    assert sandbox.usage_blocks
    cpu_ns, rss, pids = await trio.to_thread.run_sync(sandbox.usage)
    assert cpu_ns >= 0
    assert rss > 0
    assert pids >= 1
    sandbox.signal(signal.SIGKILL)
    assert await exits.wait() == 137


# -- validate and start failures ---------------------------------------------------------------


def test_validate_accepts_good_specs(tmp_path: Path) -> None:
    backend = ProcessBackend()
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    backend.validate(make_spec(None))
    backend.validate(make_spec(("sleep", "1")))
    backend.validate(make_spec((sys.executable, "-c", "pass")))
    backend.validate(make_spec(("./script",), cwd=str(tmp_path)))
    backend.validate(make_spec(("script",), env={"PATH": str(tmp_path)}))
    backend.validate(make_spec(("script",), env={"PATH": "/nonexistent:."}, cwd=str(tmp_path)))
    backend.validate(make_spec(("true",), hostname="ignored", host_network=True))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            make_spec(("nope-sandboxd-test",)),
            r"options\.command: executable 'nope-sandboxd-test' not found in PATH",
        ),
        (
            # The sandbox's PATH, not the daemon's.
            make_spec(("sleep", "1"), env={"PATH": "/nonexistent"}),
            r"options\.command: executable 'sleep' not found in PATH \(/nonexistent\)",
        ),
        (make_spec(("/nonexistent/x",)), r"options\.command: executable '/nonexistent/x'"),
        (make_spec(("/etc/passwd",)), r"options\.command: executable '/etc/passwd'"),
        (make_spec(("/usr/bin",)), r"options\.command: executable '/usr/bin'"),
        (make_spec(()), r"options\.command: must be a non-empty"),
        (make_spec(("sleep", 1)), r"options\.command\[1\]"),
        (make_spec(("sleep", "a\0b")), r"options\.command\[1\]"),
        (make_spec(("",)), r"options\.command\[0\]"),
        (make_spec(("true",), cwd="tmp"), r"options\.cwd: 'tmp' is not an absolute path"),
        (make_spec(("true",), cwd="/nonexistent"), r"options\.cwd: '/nonexistent'"),
        (make_spec(("true",), cwd="/etc/passwd"), r"options\.cwd: '/etc/passwd'"),
        (make_spec(("true",), env={"": "x"}), r"options\.env: key ''"),
        (make_spec(("true",), env={"A=B": "x"}), r"options\.env: key 'A=B'"),
        (make_spec(("true",), env={"A\0": "x"}), r"options\.env: key 'A\\x00'"),
        (make_spec(("true",), env={"A": "x\0"}), r"options\.env\['A'\]"),
        (make_spec(("true",), env={"A": 1}), r"options\.env\['A'\]"),
        (make_spec(("true",), rootfs=[Mount("bind", "/", "/")]), r"rootfs: .*bwrap"),
        (make_spec(("true",), netns_path="/run/netns/x"), r"netns_path: .*bwrap"),
    ],
)
def test_validate_refuses(spec: SandboxSpec, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        ProcessBackend().validate(spec)


def test_validate_with_log_dir_checks_the_id(tmp_path: Path) -> None:
    spec = SandboxSpec("../x", "process", SandboxOptions(command=("true",)))
    ProcessBackend().validate(spec)
    with pytest.raises(InvalidArgument, match="sandbox_id"):
        ProcessBackend(log_dir=tmp_path).validate(spec)


def our_children() -> list[int]:
    """Our child processes but the exec fork server (one per daemon, started by any exec)."""
    server = _exec._server.pid if _exec._server is not None else None
    children = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                data = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            if int(data[data.rfind(b")") + 2 :].split()[1]) == os.getpid() and int(name) != server:
                children.append(int(name))
    return children


@pytest.mark.parametrize(
    ("content", "unlink", "reason"),
    [
        ("#!/bin/sh\nsleep 1000\n", True, "No such file or directory"),
        ("sleep 1000\n", False, "Exec format error"),  # no #! line: ENOEXEC
    ],
)
async def test_start_failure_is_failed_precondition_and_nothing_runs(
    tmp_path: Path, log_dir: Path, content: str, unlink: bool, reason: str
) -> None:
    backend = ProcessBackend(log_dir=log_dir)
    script = tmp_path / "script"
    script.write_text(content)
    script.chmod(stat.S_IRWXU)
    spec = make_spec((str(script),))
    backend.validate(spec)
    if unlink:
        script.unlink()
    exits = Exits()
    async with trio.open_nursery() as nursery:
        with pytest.raises(FailedPrecondition) as info:
            await backend.start(spec, nursery, exits)
        assert nursery.child_tasks == frozenset()
    assert str(info.value) == f"cannot start sandbox sb-1: {reason}: {script}"
    assert exits.statuses == []
    assert our_children() == []
    assert os.listdir(log_dir) == []  # no output pipe is left


async def test_start_failure_names_a_vanished_cwd(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    workdir.mkdir()
    spec = make_spec(("true",), cwd=str(workdir))
    ProcessBackend().validate(spec)
    workdir.rmdir()
    async with trio.open_nursery() as nursery:
        with pytest.raises(FailedPrecondition, match=f"No such file or directory: {workdir}$"):
            await ProcessBackend().start(spec, nursery, Exits())


async def test_start_failure_names_an_unusable_log_dir(tmp_path: Path) -> None:
    backend = ProcessBackend(log_dir=tmp_path / "missing")
    async with trio.open_nursery() as nursery:
        with pytest.raises(FailedPrecondition, match=r"missing/sb-1\.stdout$"):
            await backend.start(make_spec(("true",)), nursery, Exits())


# -- platform ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", Platform("linux", "amd64", "")),
        ("aarch64", Platform("linux", "arm64", "v8")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("i686", Platform("linux", "386", "")),
        ("ppc64le", Platform("linux", "ppc64le", "")),
        ("s390x", Platform("linux", "s390x", "")),
        ("riscv64", Platform("linux", "riscv64", "")),
        ("weird9", Platform("linux", "weird9", "")),
    ],
)
def test_host_platform_names(
    monkeypatch: pytest.MonkeyPatch, machine: str, expected: Platform
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    host_platform.cache_clear()
    try:
        assert host_platform() == expected
    finally:
        host_platform.cache_clear()


def test_host_platform_is_cached() -> None:
    assert host_platform() is host_platform()
    assert host_platform().os == "linux"
