"""cgroups: limits that hold against programs trying to break them, counters, and a teardown
no process escapes.

v1 is tested for real (this machine mounts memory, pids, cpu, cpuacct and freezer as v1);
v2 for real where the unified hierarchy allows (membership, ``cgroup.kill``), and the rest
against a scratch directory tree given to the manager.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from daemons import Daemons
from procs import Fifo, Reaper, all_ended, is_alive
from sandboxd import FailedPrecondition, InvalidArgument, connect
from sandboxd._models import Resources, SandboxOptions, SandboxState
from sandboxd.api._convert import create_request, metrics_from, metrics_message
from sandboxd.backends import CgroupManager, detect_cgroups, probe_cgroups, with_cgroups
from sandboxd.backends._cgroups import SandboxCgroup, manager_v2
from sandboxd.runtime import Controller, open_controller
from sandboxd.runtime._controller import default_backends

MIB = 1 << 20
#: Real seconds a test may take before it is a hang.
GUARD = 60

#: The interpreter, by its real path: a venv under /tmp would be hidden by a bwrap
#: sandbox's private /tmp.  Only the standard library is used inside.
PYTHON = os.path.realpath(sys.executable)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    found = probe_cgroups()
    return found if found.startswith("cgroups unavailable") else None


needs_cgroups = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


@pytest.fixture
def manager() -> Iterator[CgroupManager]:
    """The host's hierarchy, under a parent of this test's, removed afterwards."""
    found, described = detect_cgroups(f"sandboxd-test-{os.getpid()}")
    assert found is not None, described
    yield found
    for sandbox_id in found.sandbox_ids():
        leftover = found.sandbox(sandbox_id)
        leftover.kill()
        leftover.try_remove()
    found.release()


@pytest.fixture
async def controller(manager: CgroupManager, watchdog: None) -> AsyncIterator[Controller]:
    async with open_controller(with_cgroups(default_backends(), manager, "")) as c:
        yield c


async def _run(controller: Controller, sid: str, resources: Resources | None, *cmd: str) -> int:
    options = SandboxOptions(command=cmd, resources=resources)
    await controller.create(sid, sandboxer="process", options=options)
    return (await controller.start(sid)).pid


# -- the host's hierarchy ----------------------------------------------------------------------


@needs_cgroups
def test_detection_names_the_hierarchy_with_the_controllers(manager: CgroupManager) -> None:
    described = manager.describe()
    assert probe_cgroups() == described
    if manager.version == 1:
        for controller in ("memory", "pids", "cpu"):
            assert controller in described


# -- limits that hold ---------------------------------------------------------------------------


@needs_cgroups
async def test_a_memory_hog_is_oom_killed_and_says_so(controller: Controller) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(8 << 20))"
    with controller.subscribe() as events:
        await _run(controller, "hog", Resources(memory_bytes=64 * MIB), PYTHON, "-c", hog)
        assert (await controller.wait("hog")).exit_status == 137
        status = await controller.status("hog")
        assert status.info["reason"] == "oom_killed"
        async for event in events:
            if event.topic == "/sandboxes/exit":
                assert (event.exit_status, event.reason) == (137, "oom_killed")
                break


@needs_cgroups
async def test_a_memory_hog_in_bwrap_is_oom_killed_too(controller: Controller) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(8 << 20))"
    options = SandboxOptions(
        command=(PYTHON, "-c", hog), resources=Resources(memory_bytes=64 * MIB)
    )
    await controller.create("bhog", sandboxer="bwrap", options=options)
    await controller.start("bhog")
    assert (await controller.wait("bhog")).exit_status == 137
    assert (await controller.status("bhog")).info["reason"] == "oom_killed"


@needs_cgroups
async def test_a_fork_bomb_stops_at_pids_and_the_sandbox_survives(
    controller: Controller, tmp_path: Path
) -> None:
    # It stops itself after 1.5 s, in case the limit fails; its children leave the FIFO.
    bomb = (
        "import os, sys, time\n"
        "end = time.monotonic() + 1.5\n"
        "made = failed = 0\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        failed += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        os.close(1)\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    made += 1\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    print(made, failed, file=f)\n"
        "time.sleep(100)\n"
    )
    fifo = Fifo(tmp_path / "ready")
    await _run(controller, "bomb", Resources(pids=20), PYTHON, "-c", bomb, str(fifo.path))
    made, failed = (int(n) for n in (await fifo.read_all()).split())
    assert made <= 19 and failed > 0
    metrics = await controller.metrics("bomb")
    assert 1 <= metrics.pids <= 20
    assert (await controller.status("bomb")).state is SandboxState.READY
    await controller.stop("bomb", timeout_secs=0)
    assert (await controller.wait("bomb")).exit_status == 128 + signal.SIGKILL


@needs_cgroups
async def test_a_cpu_hog_gets_its_share_and_no_more(controller: Controller) -> None:
    spin = "import time\nend = time.monotonic() + 1\nwhile time.monotonic() < end: pass"
    await _run(controller, "cpu", Resources(cpu_millis=200), PYTHON, "-c", spin)
    started = time.monotonic()
    # Metrics while it runs: read before the cgroup is removed at its exit.
    cpu_ns = 0
    while (await controller.status("cpu")).state is SandboxState.READY:
        cpu_ns = max(cpu_ns, (await controller.metrics("cpu")).cpu_ns)
        await trio.sleep(0.05)  # sampling a counter: what passes is what is measured
    wall = time.monotonic() - started
    assert wall >= 0.9
    # 20 % of the wall time, give or take: well under the full CPU a busy loop takes.
    assert 0.05 * 1e9 <= cpu_ns <= 0.45 * wall * 1e9


# -- teardown -------------------------------------------------------------------------------------


@needs_cgroups
@pytest.mark.parametrize("sandboxer", ["process", "bwrap"])
async def test_a_double_forking_setsid_escapee_dies_with_stop(
    controller: Controller, tmp_path: Path, sandboxer: str
) -> None:
    # The escapee leaves the init's session and process group, and its parent dies.
    escape = "setsid sh -c 'sleep 1000 > /dev/null 2>&1 &'; exec sleep 1000"
    options = SandboxOptions(command=("sh", "-c", escape))
    await controller.create("esc", sandboxer=sandboxer, options=options)
    await controller.start("esc")
    cgroup = (await controller.status("esc", verbose=True)).info["cgroup"].split()[0]
    least = 2 if sandboxer == "process" else 3  # bwrap itself too
    members: list[int] = []
    with trio.fail_after(10):
        while len(members) < least:  # the init and the escapee's sleep at least
            # Nothing tells when the escapee has forked: sample the members.
            members = [int(p) for p in Path(cgroup, "cgroup.procs").read_text().split()]  # noqa: ASYNC240
            await trio.sleep(0.01)
    await controller.stop("esc", timeout_secs=0)
    await controller.wait("esc")
    await all_ended(members)
    assert not any(is_alive(p) for p in members)


@needs_cgroups
@pytest.mark.parametrize("sandboxer", ["process", "bwrap"])
async def test_execs_run_in_the_sandbox_cgroup(controller: Controller, sandboxer: str) -> None:
    from sandboxd._models import ExecRequest

    options = SandboxOptions(resources=Resources(pids=50))
    await controller.create("ex", sandboxer=sandboxer, options=options)
    await controller.start("ex")
    probe = "print(open('/proc/self/cgroup').read())"
    result = await controller.exec_sync("ex", ExecRequest(["python3", "-c", probe]))
    assert result.exit_status == 0, result.stderr
    assert b"/ex\n" in result.stdout
    metrics = await controller.metrics("ex")
    assert metrics.memory_peak_bytes is not None and metrics.oom_kills == 0
    await controller.stop("ex")
    await controller.shutdown("ex")


@needs_cgroups
async def test_the_cgroup_is_removed_at_exit_and_swept_when_gone(
    controller: Controller, manager: CgroupManager
) -> None:
    await _run(controller, "gone", None, "true")
    await controller.wait("gone")
    with trio.fail_after(10):
        while "gone" in manager.sandbox_ids():  # noqa: ASYNC110 (removal is polled too)
            await trio.sleep(0.01)
    leftover = manager.create("left", Resources(pids=5))
    proc = subprocess.Popen(["sleep", "100"])  # noqa: ASYNC220
    leftover.add(proc.pid)
    await manager.sweep(keep=["other"])
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert "left" not in manager.sandbox_ids()


# -- refusals -----------------------------------------------------------------------------------


async def test_resources_without_cgroups_are_failed_precondition() -> None:
    reason = "cgroups unavailable: no pids controller"
    async with open_controller(with_cgroups(default_backends(), None, reason)) as controller:
        with pytest.raises(FailedPrecondition, match="no pids controller"):
            await controller.create(
                "r", sandboxer="process", options=SandboxOptions(resources=Resources(pids=3))
            )
        await controller.create(
            "plain", sandboxer="process", options=SandboxOptions(command=("true",))
        )
        await controller.start("plain")
        assert (await controller.wait("plain")).exit_status == 0


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"pids": "20"}, "options.resources.pids"),
        ({"memory_bytes": 1.5}, "options.resources.memory_bytes"),
        ({"cpu_millis": 1}, "options.resources.cpu_millis"),
        ({"cpus": 1}, "options.resources"),
        ({"memory_swap_bytes": 0}, "options.resources.memory_swap_bytes"),
        ([], "options.resources"),
    ],
)
def test_resources_are_converted_strictly(resources: object, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field.replace(".", r"\.")):
        create_request({"sandbox_id": "s", "options": {"resources": resources}})


def test_resources_and_metrics_round_trip() -> None:
    from sandboxd.api._convert import options_message

    options = create_request(
        {"sandbox_id": "s", "options": {"resources": {"memory_bytes": 64 * MIB, "pids": 9}}}
    )["options"]
    assert options.resources == Resources(memory_bytes=64 * MIB, pids=9)
    assert options_message(options)["resources"] == {"memory_bytes": 64 * MIB, "pids": 9}
    from datetime import UTC, datetime

    from sandboxd._models import SandboxMetrics

    metrics = SandboxMetrics("s", datetime.now(UTC), 1, 2, 3, memory_peak_bytes=4, oom_kills=0)
    message = {**metrics_message(metrics), "timestamp": metrics.timestamp}  # as CBOR decodes it
    assert metrics_from(message) == metrics


# -- cgroup v2: the real unified hierarchy, and a scratch tree ----------------------------------


def _unified() -> str | None:
    path = "/sys/fs/cgroup/unified"
    if os.geteuid() != 0 or not os.path.exists(os.path.join(path, "cgroup.procs")):
        return None
    return path


@pytest.mark.skipif(_unified() is None, reason="no writable cgroup2 hierarchy")
async def test_v2_membership_and_cgroup_kill_on_the_real_unified_hierarchy() -> None:
    unified = _unified()
    assert unified is not None
    parent = os.path.join(unified, f"sandboxd-test-{os.getpid()}")
    os.makedirs(parent, exist_ok=True)
    manager = CgroupManager(2, {"": parent})
    cgroup = manager.create("v2", None)
    try:
        # A leader, in the cgroup before it runs (as a sandbox's init is), that double-forks
        # an escapee into a new session, then waits: the escapee is in the cgroup too.
        script = "setsid sh -c 'sleep 1000 & echo $!' ; sleep 1000"
        proc = subprocess.Popen(  # noqa: ASYNC220
            ["sh", "-c", script], stdout=subprocess.PIPE,
            preexec_fn=lambda: cgroup.add(os.getpid()),
        )  # fmt: skip
        assert proc.stdout is not None
        with proc.stdout:
            escapee = int(proc.stdout.readline())
        assert {proc.pid, escapee} <= set(cgroup.members())
        cgroup.kill()
        assert proc.wait(timeout=10) == -signal.SIGKILL
        await all_ended([escapee])
        await cgroup.remove()
        assert "v2" not in manager.sandbox_ids()
    finally:
        cgroup.kill()
        cgroup.try_remove()  # the parent too, once it has no sandbox left
        assert not os.path.exists(parent)  # noqa: ASYNC240


def _fake_v2(root: Path) -> Path:
    own = root / "daemon.slice"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    parent = own / "sandboxd-x"
    parent.mkdir()
    (parent / "cgroup.subtree_control").write_text("")
    return own


def test_v2_detection_and_limits_against_a_scratch_tree(tmp_path: Path) -> None:
    own = _fake_v2(tmp_path)
    mountinfo = f"30 23 0:26 / {tmp_path} rw,nosuid - cgroup2 cgroup2 rw\n"
    manager, described = detect_cgroups(
        "sandboxd-x", mountinfo=mountinfo, proc_cgroup="0::/daemon.slice\n"
    )
    assert manager is not None
    assert described == f"cgroup v2 ({own})"
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (own / "sandboxd-x" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    box = own / "sandboxd-x" / "sb"
    box.mkdir()
    files = ("memory.max", "memory.swap.max", "memory.oom.group", "cpu.max", "pids.max")
    for name in (*files, "cgroup.kill"):
        (box / name).write_text("")
    resources = Resources(memory_bytes=64 * MIB, cpu_millis=250, pids=20)
    cgroup = manager.create("sb", resources)
    written = {name: (box / name).read_text() for name in files}
    assert written == {
        "memory.max": str(64 * MIB),
        "memory.swap.max": "0",
        "memory.oom.group": "1",
        "cpu.max": "25000 100000",
        "pids.max": "20",
    }
    (box / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (box / "memory.current").write_text("1000\n")
    (box / "memory.peak").write_text("5000\n")
    (box / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (box / "pids.current").write_text("4\n")
    usage = cgroup.usage()
    assert (usage.cpu_ns, usage.memory_bytes, usage.memory_peak_bytes, usage.pids) == (
        1_500_000,
        1000,
        5000,
        4,
    )
    assert usage.oom_kills == 1
    (box / "cgroup.kill").write_text("")
    cgroup.kill()
    assert (box / "cgroup.kill").read_text() == "1"


def test_v2_without_the_controllers_falls_back_to_v1_or_says_why(tmp_path: Path) -> None:
    own = tmp_path / "me"
    own.mkdir()
    (own / "cgroup.controllers").write_text("cpu\n")
    manager, described = detect_cgroups(
        "p", mountinfo=f"1 2 0:1 / {tmp_path} rw - cgroup2 cgroup2 rw\n", proc_cgroup="0::/me\n"
    )
    assert manager is None
    assert "memory, pids, cpu" in described


def test_v2_a_daemon_in_its_own_cgroup_moves_to_a_leaf(tmp_path: Path) -> None:
    # On a real v2 host enabling controllers in a cgroup with processes is EBUSY: the manager
    # moves them to <own>/daemon first.  A scratch file cannot say EBUSY, so the v2 manager
    # is checked to make the parent and enable its controllers.
    own = _fake_v2(tmp_path)
    manager = manager_v2(str(own), "sandboxd-x")
    assert manager.describe() == f"cgroup v2 ({own})"
    assert (own / "sandboxd-x" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert isinstance(manager.sandbox("a"), SandboxCgroup)


# -- restarts -----------------------------------------------------------------------------------


@needs_cgroups
async def test_a_restarted_daemon_takes_the_cgroup_back_and_removes_strays(
    daemons: Daemons, reaper: Reaper, watchdog: None
) -> None:
    escape = "setsid sh -c 'sleep 1000 > /dev/null 2>&1 &'; exec sleep 1000"
    options = SandboxOptions(command=("sh", "-c", escape), resources=Resources(pids=20))
    first = await daemons.start()
    async with connect(daemons.socket) as remote:
        assert (await remote.version())["cgroups"] == probe_cgroups()
        await remote.create("kept", sandboxer="process", options=options)
        reaper.add((await remote.start("kept")).pid)
        cgroups = (await remote.status("kept", verbose=True)).info["cgroup"].split()
    stray = [os.path.join(os.path.dirname(c), "stray") for c in cgroups]
    for path in stray:
        os.mkdir(path)
    await first.crash()

    await daemons.start()
    async with connect(daemons.socket) as remote:
        status = await remote.status("kept", verbose=True)
        assert status.info["cgroup"].split() == cgroups
        assert not any(os.path.exists(p) for p in stray)  # noqa: ASYNC240
        members = [int(p) for p in Path(cgroups[0], "cgroup.procs").read_text().split()]  # noqa: ASYNC240
        assert len(members) >= 2  # the init and the escapee
        assert (await remote.metrics("kept")).oom_kills == 0
        await remote.stop("kept", timeout_secs=0)
        await all_ended(members)
        await remote.shutdown("kept")


@needs_cgroups
async def test_v1_teardown_without_a_freezer_still_kills_an_escapee(
    manager: CgroupManager, tmp_path: Path
) -> None:
    if manager.version != 1:
        pytest.skip("a v1 hierarchy")
    box = manager.create("nofreeze", None)
    unfrozen = SandboxCgroup(1, {c: p for c, p in box.dirs.items() if c != "freezer"})
    fifo = Fifo(tmp_path / "pid")
    script = f"setsid sh -c 'sleep 1000 > /dev/null 2>&1 & echo $! > {fifo.path}'; sleep 1000"
    # It joins before it execs: everything it forks is born inside.
    proc = await trio.lowlevel.open_process(
        ["sh", "-c", script], preexec_fn=lambda: unfrozen.add(0)
    )
    escapee = int(await fifo.read_all())
    assert escapee in unfrozen.members()
    unfrozen.kill()
    assert await proc.wait() == -signal.SIGKILL
    await all_ended([escapee])
    await box.remove()


def test_v2_without_swap_accounting_a_memory_limit_still_applies(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    box = parent / "sb"
    box.mkdir(parents=True)
    (box / "memory.max").write_text("")
    manager = CgroupManager(2, {"": str(parent)})
    manager.create("sb", Resources(memory_bytes=64 * MIB))
    assert (box / "memory.max").read_text() == str(64 * MIB)
    with pytest.raises(FailedPrecondition, match=r"memory\.swap\.max"):
        manager.create("sb", Resources(memory_bytes=64 * MIB, memory_swap_bytes=MIB))


async def test_a_cgroup_that_cannot_be_made_fails_only_a_start_with_resources() -> None:
    broken = CgroupManager(2, {"": "/proc/sandboxd-no-such-cgroup"})
    async with open_controller(with_cgroups(default_backends(), broken)) as controller:
        options = SandboxOptions(command=("true",), resources=Resources(pids=5))
        await controller.create("limited", sandboxer="process", options=options)
        with pytest.raises(FailedPrecondition, match="cannot create the cgroup of sandbox"):
            await controller.start("limited")
        await controller.create(
            "plain", sandboxer="process", options=SandboxOptions(command=("true",))
        )
        await controller.start("plain")
        assert (await controller.wait("plain")).exit_status == 0


@pytest.mark.parametrize("sandboxer", ["process", "bwrap"])
async def test_a_backend_without_cgroups_refuses_limits_rather_than_drop_them(
    sandboxer: str,
) -> None:
    async with open_controller(default_backends()) as controller:
        options = SandboxOptions(command=("true",), resources=Resources(pids=5))
        with pytest.raises(FailedPrecondition, match=r"options\.resources"):
            await controller.create("nocg", sandboxer=sandboxer, options=options)


@needs_cgroups
async def test_an_embedded_controller_applies_limits_by_default(watchdog: None) -> None:
    """A Controller given no backends puts its sandboxes in cgroups, as sandboxd serve does."""
    async with open_controller() as controller:
        options = SandboxOptions(command=("sleep", "1000"), resources=Resources(pids=7))
        await controller.create("emb", sandboxer="process", options=options)
        await controller.start("emb")
        try:
            info = (await controller.status("emb", verbose=True)).info
            assert _pids_limits(info["cgroup"].split()) == ["7"]
        finally:
            await controller.shutdown("emb")


def _pids_limits(directories: list[str]) -> list[str]:
    """The ``pids.max`` of those of ``directories`` that have one."""
    return [
        Path(d, "pids.max").read_text().strip()
        for d in directories
        if os.path.exists(os.path.join(d, "pids.max"))
    ]
