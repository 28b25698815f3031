"""The ``bwrap`` sandboxer, with real bubblewrap, through the in-process Controller.

Sandboxes report what they see from inside through a FIFO bound read-write into them (or
through their exit status); nothing here sleeps to let time pass: readiness comes through a
FIFO, exits through Wait, and ``trio.fail_after`` only guards against hangs.

Without a rootfs a sandbox sees the host read-only with a private /tmp, and the tests'
temporary directories live under /tmp: so the tests that need a FIFO give a rootfs that binds
the test's directory read-write *after* the tmpfs on /tmp (later mounts cover earlier ones).

The last tests run the installed ``sandboxd serve`` and ``sandboxctl``.
"""

from __future__ import annotations

import os
import secrets
import select
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import suppress
from pathlib import Path

import pytest
import trio

from daemons import BIN, SANDBOXD, STARTUP, ReadyPipe
from procs import Fifo, all_ended, is_alive, pid_namespace, proc_pgrp, proc_state
from sandboxd import FailedPrecondition, InvalidArgument, NotFound, RPCError
from sandboxd._models import Mount, SandboxOptions, SandboxState
from sandboxd.backends import BwrapBackend, ProcessBackend
from sandboxd.runtime import Controller, open_controller

#: Real seconds a test may take before it is a hang.
GUARD = 15
SANDBOXCTL = str(BIN / "sandboxctl")


# -- helpers -------------------------------------------------------------------------------------


def rootfs_with(*writable: Path) -> list[Mount]:
    """The host read-only, its own /proc, /dev and /tmp, then ``writable`` bound read-write
    (after the tmpfs on /tmp, which would otherwise hide them)."""
    return [
        Mount("bind", "/", "/", ("ro",)),
        Mount("proc", "proc", "/proc"),
        Mount("dev", "dev", "/dev"),
        Mount("tmpfs", "tmpfs", "/tmp"),
        *(Mount("bind", str(path), str(path), ("rw",)) for path in writable),
    ]


def namespace_members(init_pid: int) -> list[int]:
    """Host pids of the processes in ``init_pid``'s pid namespace (zombies included)."""
    namespace = pid_namespace(init_pid)
    assert namespace is not None, f"pid {init_pid} is gone"
    return [
        int(name)
        for name in os.listdir("/proc")
        if name.isdigit() and pid_namespace(name) == namespace
    ]


def group_members(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with suppress(FileNotFoundError):
                if proc_pgrp(int(name)) == pgid:
                    members.append(int(name))
    return members


def sandbox_members(sandboxer: str, pid: int) -> list[int]:
    """The host pids of a running sandbox's processes."""
    return namespace_members(pid) if sandboxer == "bwrap" else group_members(pid)


def cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0")[:-1]]


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return value.strip()
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def survivors(pids: Sequence[int]) -> list[tuple[int, str | None]]:
    """Those of ``pids`` still running (neither gone nor zombies)."""
    return [(pid, proc_state(pid)) for pid in pids if is_alive(pid)]


def interfaces(proc_net_dev: str) -> set[str]:
    """The interface names in a /proc/net/dev listing."""
    lines = proc_net_dev.splitlines()[2:]
    return {line.split(":", 1)[0].strip() for line in lines if ":" in line}


def exists(path: str) -> bool:
    return os.path.lexists(path)


def host_interfaces() -> set[str]:
    return interfaces(Path("/proc/net/dev").read_text())


def rootfs_for(sandboxer: str, tmp_path: Path) -> list[Mount]:
    """What makes ``tmp_path`` (and its FIFOs) writable from inside the sandbox."""
    return rootfs_with(tmp_path) if sandboxer == "bwrap" else []


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    """A running controller with the bwrap and process backends; at teardown every sandbox
    left is shut down (killed, with everything in it)."""
    async with open_controller(backends=[BwrapBackend(), ProcessBackend()]) as running:
        try:
            yield running
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(GUARD):
                for status in running.list_nowait():
                    with suppress(RPCError):
                        await running.shutdown(status.sandbox_id)


async def run_script(
    controller: Controller,
    tmp_path: Path,
    sandbox_id: str,
    script: str,
    *,
    rootfs: Sequence[Mount] | None = None,
    netns_path: str | None = None,
    hostname: str | None = None,
    host_network: bool = False,
) -> tuple[str, int]:
    """Run ``sh -c script`` in a bwrap sandbox with its stdout on a FIFO; what it wrote and
    its exit status.  The sandbox is shut down afterwards."""
    fifo = Fifo(tmp_path / f"{sandbox_id}.fifo")
    try:
        wrapped = f"{{\n{script}\n}} > {shlex.quote(str(fifo.path))}"
        await controller.create(
            sandbox_id,
            sandboxer="bwrap",
            options=SandboxOptions(
                command=("sh", "-c", wrapped), hostname=hostname, host_network=host_network
            ),
            rootfs=rootfs_with(tmp_path) if rootfs is None else rootfs,
            netns_path=netns_path,
        )
        await controller.start(sandbox_id)
        output = await fifo.read_all()
        exit_status = (await controller.wait(sandbox_id)).exit_status
        await controller.shutdown(sandbox_id)
    finally:
        fifo.close()
    return output.decode(), exit_status


async def start_ready(
    controller: Controller,
    tmp_path: Path,
    sandbox_id: str,
    script: str,
    *,
    sandboxer: str = "bwrap",
) -> int:
    """Start ``sh -c script`` (which writes to "$READY" once ready) and return its pid once
    it has written."""
    fifo = Fifo(tmp_path / f"{sandbox_id}.ready")
    try:
        await controller.create(
            sandbox_id,
            sandboxer=sandboxer,
            options=SandboxOptions(command=("sh", "-c", script), env={"READY": str(fifo.path)}),
            rootfs=rootfs_for(sandboxer, tmp_path),
        )
        pid = (await controller.start(sandbox_id)).pid
        assert await fifo.read_all() == b"ready\n"
    finally:
        fifo.close()
    return pid


def test_the_real_backend_is_available() -> None:
    backend = BwrapBackend()
    assert backend.name == "bwrap"
    assert backend.unavailable_reason() is None


# -- what the sandbox sees from inside -----------------------------------------------------------


async def test_command_is_pid_2_under_bwraps_init(controller: Controller, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        output, exit_status = await run_script(
            controller, tmp_path, "pids", "echo $$; tr '\\0' '\\n' < /proc/1/cmdline"
        )
    assert exit_status == 0, output
    own_pid, init_argv0, *_ = output.splitlines()
    assert own_pid == "2"
    assert os.path.basename(init_argv0) == "bwrap", output


async def test_hostname_is_the_one_asked_for(controller: Controller, tmp_path: Path) -> None:
    host_before = socket.gethostname()
    with trio.fail_after(GUARD):
        output, exit_status = await run_script(
            controller,
            tmp_path,
            "named",
            "cat /proc/sys/kernel/hostname",
            hostname="box-7.example",
        )
    assert (output, exit_status) == ("box-7.example\n", 0)
    assert socket.gethostname() == host_before


async def test_root_inside_has_no_capabilities(controller: Controller, tmp_path: Path) -> None:
    """The daemon runs as root with capabilities; the sandbox's processes (each exec'd, as
    grep is here) have none."""
    assert int(status_field(os.getpid(), "CapEff"), 16) != 0
    with trio.fail_after(GUARD):
        output, exit_status = await run_script(
            controller, tmp_path, "caps", "grep -E '^(Uid|Cap...|NoNewPrivs):' /proc/self/status"
        )
    assert exit_status == 0, output
    fields = dict(line.split(":\t", 1) for line in output.splitlines())
    assert fields["Uid"].split()[0] == "0", output
    for key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(fields[key], 16) == 0, output


@pytest.mark.parametrize(
    ("sandbox_id", "hostname"),
    [("web_1.a", "web-1-a"), ("plain", "plain"), ("x-y.z_w", "x-y-z-w")],
)
async def test_default_hostname_is_the_id_made_valid(
    controller: Controller, tmp_path: Path, sandbox_id: str, hostname: str
) -> None:
    with trio.fail_after(GUARD):
        output, exit_status = await run_script(
            controller, tmp_path, sandbox_id, "cat /proc/sys/kernel/hostname"
        )
    assert (output, exit_status) == (f"{hostname}\n", 0)


async def test_only_loopback_in_a_new_network_namespace(
    controller: Controller, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        output, exit_status = await run_script(controller, tmp_path, "net", "cat /proc/net/dev")
    assert exit_status == 0, output
    assert interfaces(output) == {"lo"}
    assert host_interfaces() != {"lo"}  # the host has more: the sandbox's view is its own


async def test_read_only_bind_refuses_writes_read_write_bind_takes_them(
    controller: Controller, tmp_path: Path
) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    rootfs = [
        *rootfs_with(tmp_path),
        Mount("bind", str(ro), str(ro), ("ro",)),
        Mount("bind", str(rw), str(rw), ("rw",)),
    ]
    script = f"""
touch {ro}/x 2>/dev/null; echo ro=$?
touch {rw}/y; echo rw=$?
"""
    with trio.fail_after(GUARD):
        output, exit_status = await run_script(
            controller, tmp_path, "binds", script, rootfs=rootfs
        )
    assert exit_status == 0, output
    lines = output.splitlines()
    assert lines[0] != "ro=0", output
    assert lines[1] == "rw=0", output
    assert not (ro / "x").exists()
    assert (rw / "y").is_file()


async def test_default_view_has_a_private_tmp(controller: Controller) -> None:
    name = f"/tmp/sbd-bwrap-{secrets.token_hex(8)}"
    with trio.fail_after(GUARD):
        await controller.create(
            "tmp",
            sandboxer="bwrap",
            options=SandboxOptions(command=("sh", "-c", f"echo x > {name} && test -f {name}")),
        )
        await controller.start("tmp")
        exit_status = (await controller.wait("tmp")).exit_status
    assert exit_status == 0  # written and seen inside...
    assert not exists(name)  # ...but not on the host


async def test_default_view_of_the_host_is_read_only(controller: Controller) -> None:
    name = f"/sbd-bwrap-{secrets.token_hex(8)}"
    with trio.fail_after(GUARD):
        await controller.create(
            "ro-host",
            sandboxer="bwrap",
            options=SandboxOptions(
                command=("sh", "-c", f"test -d /usr/bin && ! touch {name} 2>/dev/null")
            ),
        )
        await controller.start("ro-host")
        exit_status = (await controller.wait("ro-host")).exit_status
    assert exit_status == 0  # the host's files are there, and touch failed
    assert not exists(name)


async def test_start_reports_the_namespaces_init(controller: Controller, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        pid = await start_ready(
            controller, tmp_path, "init", 'echo ready > "$READY"; exec sleep 1000'
        )
        assert os.path.basename(cmdline(pid)[0]) == "bwrap"
        assert pid_namespace(pid) != pid_namespace("self")
        assert status_field(pid, "NSpid").split()[-1] == "1"  # pid 1 inside
        # The command runs in that namespace, as pid 2, a child of the init.
        commands = [
            member
            for member in namespace_members(pid)
            if status_field(member, "NSpid").split()[-1] == "2"
        ]
        assert len(commands) == 1
        assert int(status_field(commands[0], "PPid")) == pid
        assert (await controller.status("init")).pid == pid
        await controller.stop("init")
        assert (await controller.wait("init")).exit_status == 143


# -- lifecycle: the same exit statuses as the process backend -----------------------------------

SANDBOXERS = pytest.mark.parametrize("sandboxer", ["bwrap", "process"])


@SANDBOXERS
async def test_exit_code(controller: Controller, sandboxer: str) -> None:
    with trio.fail_after(GUARD):
        await controller.create(
            "exit", sandboxer=sandboxer, options=SandboxOptions(command=("sh", "-c", "exit 7"))
        )
        await controller.start("exit")
        assert (await controller.wait("exit")).exit_status == 7
        status = await controller.status("exit")
        assert status.state is SandboxState.STOPPED
        assert status.info["exit_status"] == "7"


@SANDBOXERS
async def test_stop_is_sigterm(controller: Controller, sandboxer: str) -> None:
    with trio.fail_after(GUARD):
        await controller.create(
            "sleeper", sandboxer=sandboxer, options=SandboxOptions(command=("sleep", "1000"))
        )
        await controller.start("sleeper")
        await controller.stop("sleeper")
        assert (await controller.wait("sleeper")).exit_status == 143


@SANDBOXERS
async def test_stop_kills_what_ignores_sigterm(
    controller: Controller, tmp_path: Path, sandboxer: str
) -> None:
    script = 'trap "" TERM; sleep 1000 & echo ready > "$READY"; wait'
    with trio.fail_after(GUARD):
        pid = await start_ready(controller, tmp_path, "stubborn", script, sandboxer=sandboxer)
        members = sandbox_members(sandboxer, pid)
        assert len(members) >= 2  # the shell and its sleep (and bwrap's init)
        before = trio.current_time()
        await controller.stop("stubborn", timeout_secs=0.5)
        assert trio.current_time() - before >= 0.5
        assert (await controller.wait("stubborn")).exit_status == 137
        if sandboxer == "bwrap":
            # Once the namespace's init is dead, the kernel has killed and reaped the rest.
            assert survivors(members) == []


@SANDBOXERS
async def test_death_by_sigkill(controller: Controller, sandboxer: str) -> None:
    with trio.fail_after(GUARD):
        await controller.create(
            "killed",
            sandboxer=sandboxer,
            options=SandboxOptions(command=("sh", "-c", "kill -9 $$")),
        )
        await controller.start("killed")
        assert (await controller.wait("killed")).exit_status == 137


@SANDBOXERS
async def test_sigterm_kills_every_process_inside(
    controller: Controller, tmp_path: Path, sandboxer: str
) -> None:
    script = 'sleep 1000 & sleep 1000 & echo ready > "$READY"; wait'
    with trio.fail_after(GUARD):
        pid = await start_ready(controller, tmp_path, "family", script, sandboxer=sandboxer)
        members = sandbox_members(sandboxer, pid)
        await controller.stop("family", timeout_secs=GUARD)
        assert (await controller.wait("family")).exit_status == 143
        # The shell's death by SIGTERM ended the sandbox; its children end too (with the
        # bwrap backend the outer bwrap may report the exit a moment before the namespace's
        # init has finished tearing the namespace down, so their end is awaited).
        await all_ended(members)


@SANDBOXERS
async def test_sigterm_reaches_each_background_process(
    controller: Controller, tmp_path: Path, sandboxer: str
) -> None:
    """The shell outlives Stop's SIGTERM (it ignores it) and reports how its two children
    ended: SIGTERM must have reached both, not only the sandbox's first process."""
    out = tmp_path / "children"
    script = f"""
sleep 1000 & a=$!
sleep 1000 & b=$!
trap "" TERM
echo ready > "$READY"
wait $a; ra=$?
wait $b; rb=$?
echo "$ra $rb" > {shlex.quote(str(out))}
exit 3
"""
    with trio.fail_after(GUARD):
        await start_ready(controller, tmp_path, "children", script, sandboxer=sandboxer)
        # A long grace period: only SIGTERM can end the children before the guard.
        await controller.stop("children", timeout_secs=GUARD)
        assert (await controller.wait("children")).exit_status == 3
    assert out.read_text() == "143 143\n"


@SANDBOXERS
async def test_pause_sandbox_stops_with_0(controller: Controller, sandboxer: str) -> None:
    with trio.fail_after(GUARD):
        await controller.create("pause", sandboxer=sandboxer)
        await controller.start("pause")
        await controller.stop("pause")
        assert (await controller.wait("pause")).exit_status == 0


@pytest.mark.parametrize(
    "script",
    [
        'sleep 1000 & sleep 1000 & echo ready > "$READY"; wait',
        # Children that ignore SIGTERM, one of them orphaned (reparented to bwrap's init).
        'trap "" TERM; sleep 1000 & (sleep 1000 &); echo ready > "$READY"; wait',
    ],
    ids=["children", "children-ignoring-sigterm"],
)
async def test_nothing_is_left_after_shutdown(
    controller: Controller, tmp_path: Path, script: str
) -> None:
    with trio.fail_after(GUARD):
        pid = await start_ready(controller, tmp_path, "doomed", script)
        members = namespace_members(pid)
        # bwrap's init, the shell and two sleeps
        assert len(members) >= 4, [cmdline(m) for m in members]
        await controller.shutdown("doomed")
    assert survivors(members) == []
    with pytest.raises(NotFound):
        await controller.status("doomed")


# -- networks -------------------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace holding an interface ``d0`` (a dummy, or a veth where the kernel
    has no dummy driver); deleted at teardown."""
    name = f"sbdtest{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        dummy = subprocess.run(
            ["ip", "-n", name, "link", "add", "d0", "type", "dummy"],
            capture_output=True,
            check=False,
        )
        if dummy.returncode != 0:
            subprocess.run(
                ["ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d0p"],
                check=True,
                capture_output=True,
            )
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


async def test_joins_the_network_namespace_given(
    controller: Controller, tmp_path: Path, netns: str
) -> None:
    path = f"/run/netns/{netns}"
    fifo = Fifo(tmp_path / "net.fifo")
    try:
        with trio.fail_after(GUARD):
            await controller.create(
                "joined",
                sandboxer="bwrap",
                options=SandboxOptions(
                    command=("sh", "-c", f"cat /proc/net/dev > {shlex.quote(str(fifo.path))}")
                ),
                rootfs=rootfs_with(tmp_path),
                netns_path=path,
            )
            await controller.start("joined")
            info = (await controller.status("joined", verbose=True)).info
            output = (await fifo.read_all()).decode()
            assert (await controller.wait("joined")).exit_status == 0
    finally:
        fifo.close()
    names = interfaces(output)
    assert {"lo", "d0"} <= names, output
    assert not (names & (host_interfaces() - {"lo"})), output
    assert info["network"] == f"joined {path}"
    assert "net" not in info["namespaces"].split(",")
    command = shlex.split(info["bwrap_command"])
    assert command[:3] == ["nsenter", f"--net={path}", "--"]
    assert "--unshare-net" not in command


async def test_host_network(controller: Controller, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        output, exit_status = await run_script(
            controller, tmp_path, "hostnet", "cat /proc/net/dev", host_network=True
        )
    assert exit_status == 0, output
    assert interfaces(output) == host_interfaces()


# -- validation at Create ------------------------------------------------------------------------

BASE = rootfs_with()
USR_ONLY = [Mount("bind", "/usr", "/usr", ("ro",))]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"rootfs": [*BASE, Mount("overlay", "none", "/mnt")]},
            r"rootfs\[4\]: unknown mount type 'overlay'",
        ),
        (
            {"rootfs": [*BASE, Mount("bind", "/usr", "/mnt", ("frobnicate",))]},
            r"rootfs\[4\]: unknown bind option 'frobnicate'",
        ),
        (
            {"rootfs": [Mount("bind", "/usr", "usr", ("ro",)), *BASE]},
            r"rootfs\[0\]: target 'usr' is not an absolute path",
        ),
        (
            {"rootfs": [*BASE, Mount("bind", "/nonexistent/sbd-src", "/mnt", ("ro",))]},
            r"rootfs\[4\]: source '/nonexistent/sbd-src' does not exist",
        ),
        (
            {"netns_path": "/run/netns/sbdtest-does-not-exist"},
            r"netns_path: '/run/netns/sbdtest-does-not-exist' does not exist",
        ),
        ({"hostname": "bad_host!"}, r"options\.hostname: 'bad_host!'"),
        ({"hostname": "a" * 64}, r"options\.hostname"),
        (
            {"rootfs": USR_ONLY, "command": ("/nope",)},
            r"options\.command: executable '/nope' is not found in the sandbox's rootfs",
        ),
        (
            {"rootfs": USR_ONLY, "command": ("no-such-command-sbd",)},
            r"options\.command: executable 'no-such-command-sbd'",
        ),
        (
            {"rootfs": [Mount("bind", "/usr/bin", "/usr/bin", ("ro",))]},
            r"options\.command: required with a rootfs that does not hold the daemon's Python",
        ),
    ],
    ids=[
        "mount-type",
        "bind-option",
        "relative-target",
        "missing-source",
        "netns-path",
        "hostname",
        "hostname-label-too-long",
        "executable-not-in-rootfs",
        "command-not-in-rootfs-path",
        "no-interpreter-for-pause",
    ],
)
async def test_create_refuses(
    controller: Controller, kwargs: dict[str, object], match: str
) -> None:
    rootfs = kwargs.pop("rootfs", ())
    netns_path = kwargs.pop("netns_path", None)
    command = kwargs.pop("command", ("true",) if "hostname" in kwargs else None)
    options = SandboxOptions(command=command, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=match):
        await controller.create(
            "bad",
            sandboxer="bwrap",
            options=options,
            rootfs=rootfs,  # type: ignore[arg-type]
            netns_path=netns_path,  # type: ignore[arg-type]
        )
    with pytest.raises(NotFound):
        await controller.status("bad")


async def test_create_accepts_a_command_found_in_the_rootfs(controller: Controller) -> None:
    await controller.create(
        "good", sandboxer="bwrap", options=SandboxOptions(command=("sh",)), rootfs=USR_ONLY
    )
    assert (await controller.status("good")).state is SandboxState.CREATED


# -- metrics and status ---------------------------------------------------------------------------


async def test_metrics_sum_over_the_namespace(controller: Controller, tmp_path: Path) -> None:
    script = 'sleep 1000 & sleep 1000 & echo ready > "$READY"; wait'
    with trio.fail_after(GUARD):
        pid = await start_ready(controller, tmp_path, "busy", script)
        metrics = await controller.metrics("busy")
        live = [m for m in namespace_members(pid) if is_alive(m)]
    assert metrics.sandbox_id == "busy"
    assert metrics.pids >= 3
    assert metrics.pids == len(live)  # bwrap's init, the shell and both sleeps
    assert metrics.memory_rss_bytes > 0
    assert metrics.cpu_ns >= 0


async def test_verbose_status_shows_namespaces_mounts_and_command(
    controller: Controller, tmp_path: Path
) -> None:
    rootfs = rootfs_with(tmp_path)
    with trio.fail_after(GUARD):
        await controller.create(
            "shown",
            sandboxer="bwrap",
            options=SandboxOptions(hostname="shown-host"),
            rootfs=rootfs,
        )
        pid = (await controller.start("shown")).pid
        status = await controller.status("shown", verbose=True)
        plain = await controller.status("shown")
    info = status.info
    assert info["sandboxer"] == "bwrap"
    assert "bwrap_command" not in plain.info
    assert set(info["namespaces"].split(",")) >= {"pid", "ipc", "uts", "mount", "net"}
    assert info["network"] == "new (loopback only)"
    assert info["hostname"] == "shown-host"
    assert info["mounts"] == (
        "bind / -> / ro; proc proc -> /proc; dev dev -> /dev; tmpfs tmpfs -> /tmp; "
        f"bind {tmp_path} -> {tmp_path} rw"
    )
    command = shlex.split(info["bwrap_command"])
    assert os.path.basename(command[0]) == "bwrap"
    assert "--unshare-pid" in command
    assert "--unshare-net" in command
    hostname_at = command.index("--hostname")
    assert command[hostname_at + 1] == "shown-host"
    # The mounts, in the order given.
    assert info["bwrap_command"].index("--tmpfs /tmp") < info["bwrap_command"].index(
        f"--bind {shlex.quote(str(tmp_path))}"
    )
    # Exactly the command that runs: the outer bwrap's, and its forked init's, argv.
    assert cmdline(int(info["bwrap_pid"])) == command
    assert cmdline(pid) == command


async def test_default_view_is_described(controller: Controller) -> None:
    with trio.fail_after(GUARD):
        await controller.create("view", sandboxer="bwrap", options=SandboxOptions())
        await controller.start("view")
        info = (await controller.status("view", verbose=True)).info
    assert info["mounts"] == "host / read-only; /proc; /dev; tmpfs /tmp"
    assert info["hostname"] == "view"
    command = shlex.split(info["bwrap_command"])
    assert command[command.index("--hostname") + 1] == "view"
    assert "--tmpfs" in command


# -- without bubblewrap ---------------------------------------------------------------------------


async def test_missing_bubblewrap_at_a_given_path() -> None:
    backend = BwrapBackend(bwrap="/nonexistent/bwrap")
    reason = backend.unavailable_reason()
    assert reason is not None
    assert "bubblewrap" in reason
    assert "/nonexistent/bwrap" in reason
    async with open_controller(backends=[backend, ProcessBackend()]) as controller:
        with pytest.raises(FailedPrecondition) as caught:
            await controller.create(
                "nobw", sandboxer="bwrap", options=SandboxOptions(command=("true",))
            )
        with pytest.raises(NotFound):
            await controller.status("nobw")
    message = str(caught.value)
    assert "bwrap" in message
    assert "bubblewrap" in message
    assert "/nonexistent/bwrap" in message


async def test_bubblewrap_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bwrap to find
    backend = BwrapBackend()
    monkeypatch.undo()
    reason = backend.unavailable_reason()
    assert reason is not None
    assert "bubblewrap is not installed" in reason
    async with open_controller(backends=[backend, ProcessBackend()]) as controller:
        with pytest.raises(FailedPrecondition, match="bubblewrap is not installed"):
            await controller.create("nobw", sandboxer="bwrap")


# -- the daemon and sandboxctl --------------------------------------------------------------------


def kill_sandboxes_mentioning(marker: str) -> None:
    """SIGKILL the bwrap processes whose command line names ``marker`` (a test's private
    directory): what a failed test may have left running after its daemon."""
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        with suppress(OSError):
            argv = cmdline(int(name))
            if argv and os.path.basename(argv[0]) == "bwrap" and marker in " ".join(argv):
                os.kill(int(name), signal.SIGKILL)


def sandboxctl(socket_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SANDBOXCTL, "--socket", socket_path, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result.stdout


def test_sandboxctl_runs_a_bwrap_sandbox_on_a_real_daemon() -> None:
    with tempfile.TemporaryDirectory(prefix="sbdbw-") as directory:
        scratch = Path(directory)
        socket_path = str(scratch / "d.sock")
        log = scratch / "daemon.log"
        env = dict(os.environ)
        env.pop("SANDBOXD_SOCKET", None)
        env["SANDBOXD_STATE_DIR"] = str(scratch / "state")
        ready = ReadyPipe()
        state = str(scratch / "state")
        daemon = ready.popen(["--socket", socket_path, "--state-dir", state], log, env)
        try:
            ready.wait_sync(log.read_text)
            assert "sandboxer bwrap: available" in log.read_text()

            fifo = scratch / "ready"
            os.mkfifo(fifo)
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                started = ok(
                    sandboxctl(
                        socket_path, "run", "--sandboxer", "bwrap", "--hostname", "box1-host",
                        "--bind", "/:/:ro", "--bind", f"{scratch}:{scratch}:rw",
                        "box1", "--", "sh", "-c", f"echo ready > {fifo}; exec sleep 1000",
                    )
                )  # fmt: skip
                assert started.startswith("box1 started, pid "), started
                pid = int(started.split()[-1])
                readable, _, _ = select.select([reader], [], [], GUARD)
                assert readable, "the sandbox never wrote to its FIFO"
                assert os.read(reader, 100) == b"ready\n"
            finally:
                os.close(reader)
            assert os.path.basename(cmdline(pid)[0]) == "bwrap"

            status = ok(sandboxctl(socket_path, "status", "--verbose", "box1"))
            fields = dict(
                (key.strip(), value.strip())
                for key, _, value in (line.partition(":") for line in status.splitlines())
            )
            assert fields["state"] == "ready", status
            assert fields["info.sandboxer"] == "bwrap", status
            assert fields["info.hostname"] == "box1-host", status
            assert "pid" in fields["info.namespaces"].split(","), status
            assert "--unshare-pid" in fields["info.bwrap_command"], status
            assert "--hostname box1-host" in fields["info.bwrap_command"], status

            assert ok(sandboxctl(socket_path, "stop", "--timeout", "10", "box1")) == (
                "box1 stopped\n"
            )
            assert ok(sandboxctl(socket_path, "wait", "box1")) == "143\n"
            assert ok(sandboxctl(socket_path, "shutdown", "box1")) == "box1 deleted\n"
            assert not is_alive(pid)
            assert sandboxctl(socket_path, "status", "box1").returncode != 0

            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(STARTUP) == 0, log.read_text()
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(STARTUP)
            kill_sandboxes_mentioning(directory)


def test_serve_logs_which_sandboxers_are_available() -> None:
    with tempfile.TemporaryDirectory(prefix="sbdbw-") as directory:
        scratch = Path(directory)
        socket_path = str(scratch / "d.sock")
        daemon = subprocess.Popen(
            [SANDBOXD, "serve", "--socket", socket_path, "--state-dir", str(scratch / "state")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert daemon.stderr is not None
            fd = daemon.stderr.fileno()
            text = ""
            deadline = time.monotonic() + STARTUP
            # Read stderr until the daemon says it listens (it logs the sandboxers first).
            while " listening on " not in text:
                left = deadline - time.monotonic()
                readable, _, _ = select.select([fd], [], [], max(left, 0))
                assert readable, f"daemon not listening after {STARTUP}s:\n{text}"
                chunk = os.read(fd, 4096)
                assert chunk, f"daemon exited:\n{text}"
                text += chunk.decode(errors="replace")
            assert "sandboxer bwrap: available" in text, text
            assert "sandboxer process: available" in text, text
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=STARTUP)
            assert daemon.returncode == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.communicate(timeout=STARTUP)
