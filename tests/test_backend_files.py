"""Opening a sandbox's files from the daemon, against a hostile bwrap sandbox: every path is
resolved inside the sandbox's root, whatever the sandbox planted or swaps meanwhile."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from inside import read_until, run, running, spec
from sandboxd import FailedPrecondition, InvalidArgument, NotFound, RPCError
from sandboxd.backends._bwrap import BwrapSandbox

GUARD = 30
pytestmark = pytest.mark.usefixtures("watchdog")
SECRET = b"host secret, never to be read through a sandbox"


@attrs.frozen
class Hostile:
    """A bwrap sandbox with ``box`` bound read-write and ``ro`` read-only at ``/tmp/ro``, and
    host files it must never reach: ``secret`` and ``victim`` (outside its mounts)."""

    sandbox: BwrapSandbox
    box: Path
    secret: Path
    victim: Path

    def read(self, path: str) -> bytes:
        fd = self.sandbox.open_file(path, write=False)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write(self, path: str, data: bytes, mode: int | None = None) -> None:
        fd = self.sandbox.open_file(path, write=True, mode=mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[Hostile]:
    box = tmp_path / "box"
    box.mkdir()
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_bytes(b"read-only data")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    victim = tmp_path / "victim"
    victim.write_bytes(b"original")
    (tmp_path / "hostdir").mkdir()
    (tmp_path / "hostdir" / "f").write_bytes(SECRET)
    rootfs = [
        *_host_view(),
        ("bind", str(box), str(box), ("rw",)),
        ("bind", str(ro), "/tmp/ro", ("ro",)),
    ]
    from sandboxd._models import Mount

    async with running("bwrap", rootfs=[Mount(*m) for m in rootfs]) as sandbox:
        assert isinstance(sandbox, BwrapSandbox)
        yield Hostile(sandbox, box, secret, victim)
    assert secret.read_bytes() == SECRET
    assert victim.read_bytes() == b"original"
    assert (tmp_path / "hostdir" / "f").read_bytes() == SECRET


def _host_view() -> list[tuple[str, str, str, tuple[str, ...]]]:
    return [
        ("bind", "/", "/", ("ro",)),
        ("proc", "proc", "/proc", ()),
        ("dev", "dev", "/dev", ()),
        ("tmpfs", "tmpfs", "/tmp", ()),
    ]


async def sh(hostile: Hostile, script: str) -> None:
    done = await run(hostile.sandbox, spec("sh", "-c", script))
    assert done.returncode == 0, done.stderr


def refused(call: object, *args: object) -> RPCError:
    with pytest.raises(RPCError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


# -- what a caller relies on ---------------------------------------------------------------------


async def test_write_creates_with_the_mode_then_reads_back(hostile: Hostile) -> None:
    path = f"{hostile.box}/new.txt"
    hostile.write(path, b"first", mode=0o640)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    done = await run(hostile.sandbox, spec("cat", path))
    assert done.stdout == b"first"
    hostile.write(path, b"2")  # truncates, keeps the mode
    assert hostile.read(path) == b"2"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    hostile.write(f"{hostile.box}/default", b"")
    assert stat.S_IMODE(os.stat(f"{hostile.box}/default").st_mode) == 0o644


async def test_reads_what_only_the_sandbox_sees(hostile: Hostile) -> None:
    await sh(hostile, "echo private > /tmp/only-inside")
    assert hostile.read("/tmp/only-inside") == b"private\n"
    assert hostile.read("tmp/only-inside") == b"private\n"  # relative: from the root
    assert hostile.read("/tmp/ro/file") == b"read-only data"


async def test_missing_file_and_bad_paths(hostile: Hostile) -> None:
    with pytest.raises(NotFound, match="/nope: no such file"):
        hostile.read("/nope")
    with pytest.raises(InvalidArgument, match="path ''"):
        hostile.read("")
    with pytest.raises(InvalidArgument, match="is a directory"):
        hostile.read("/tmp/ro")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        hostile.read("/dev/null")


async def test_fifo_is_refused_without_blocking(hostile: Hostile) -> None:
    await sh(hostile, f"mkfifo {hostile.box}/fifo")
    for write in (False, True):
        with pytest.raises(InvalidArgument, match=f"{hostile.box}/fifo: not a regular file"):
            hostile.sandbox.open_file(f"{hostile.box}/fifo", write=write)


# -- escapes -------------------------------------------------------------------------------------


def _link_targets(hostile: Hostile, target: Path) -> list[str]:
    up = "../" * 30
    return [
        f"{up}{str(target).lstrip('/')}",  # relative, climbing out
        str(target),  # absolute host path
        f"/proc/self/root{target}",  # a magic link of the reader
        f"/proc/1/root{target}",
        f"/proc/{os.getpid()}/root{target}",  # the daemon's pid, as the host numbers it
    ]


async def test_dotdot_stays_in_the_root(hostile: Hostile) -> None:
    climb = f"{hostile.box}/{'../' * 30}{str(hostile.secret).lstrip('/')}"
    with pytest.raises(NotFound):
        hostile.read(climb)
    with pytest.raises(NotFound):
        hostile.read(f"/../../..{hostile.secret}")


async def test_planted_symlinks_never_reach_a_host_file(hostile: Hostile) -> None:
    targets = _link_targets(hostile, hostile.secret)
    script = "; ".join(f"ln -s '{t}' {hostile.box}/link{i}" for i, t in enumerate(targets))
    await sh(hostile, script)
    for index in range(len(targets)):
        error = refused(hostile.read, f"{hostile.box}/link{index}")
        assert isinstance(error, NotFound | InvalidArgument), (targets[index], error)
        assert f"{hostile.box}/link{index}" in str(error)


async def test_writes_through_planted_symlinks_never_touch_the_host(hostile: Hostile) -> None:
    targets = _link_targets(hostile, hostile.victim)
    script = "; ".join(f"ln -s '{t}' {hostile.box}/link{i}" for i, t in enumerate(targets))
    await sh(hostile, script)
    for index in range(len(targets)):
        with pytest.raises((NotFound, InvalidArgument)):
            hostile.write(f"{hostile.box}/link{index}", b"overwritten")
    # A symlink to a directory of the sandbox is followed inside it.
    await sh(hostile, f"ln -s /tmp {hostile.box}/tmplink")
    hostile.write(f"{hostile.box}/tmplink/through", b"inside")
    assert hostile.read("/tmp/through") == b"inside"


async def test_symlink_swapped_in_a_loop_never_escapes(hostile: Hostile) -> None:
    real = hostile.box / "real"
    real.mkdir()
    (real / "f").write_bytes(b"inside")
    hostdir = hostile.secret.parent / "hostdir"
    swap = f"{hostile.box}/swap"
    loop = f"echo looping; while :; do ln -sfn {real} {swap}; ln -sfn {hostdir} {swap}; done"
    swapper = await hostile.sandbox.exec(spec("sh", "-c", loop))
    try:
        await read_until(swapper.stdout, b"looping")
        outcomes: set[object] = set()
        for attempt in range(400):
            try:
                if attempt % 4 == 3:
                    hostile.write(f"{swap}/f", b"written")
                    outcomes.add("wrote")
                else:
                    outcomes.add(hostile.read(f"{swap}/f"))
            except (NotFound, InvalidArgument) as exc:
                outcomes.add(type(exc))
            await trio.lowlevel.checkpoint()
        assert SECRET not in outcomes
        assert outcomes <= {b"inside", b"written", "wrote", NotFound, InvalidArgument}
    finally:
        swapper.kill()
        await swapper.wait()
        await swapper.aclose()


async def test_read_only_mounts_stay_read_only(hostile: Hostile) -> None:
    for path in ("/tmp/ro/file", "/tmp/ro/new", "/etc/hostname", "/usr/sandboxd-new"):
        with pytest.raises(FailedPrecondition, match=f"{path}: on a read-only mount"):
            hostile.write(path, b"changed")
    assert (hostile.secret.parent / "ro" / "file").read_bytes() == b"read-only data"
    assert not exists("/usr/sandboxd-new")


def exists(path: str) -> bool:
    return os.path.lexists(path)


# -- process: the host's root --------------------------------------------------------------------


async def test_process_opens_host_paths_relative_to_its_cwd(tmp_path: Path) -> None:
    async with running("process") as sandbox:
        target = tmp_path / "f"
        fd = sandbox.open_file(str(target), write=True, mode=0o600)
        os.write(fd, b"data")
        os.close(fd)
        assert target.read_bytes() == b"data"
        fd = sandbox.open_file(str(target).lstrip("/"), write=False)  # cwd is /
        assert os.read(fd, 10) == b"data"
        os.close(fd)
        with pytest.raises(InvalidArgument, match="magic link"):
            sandbox.open_file(f"/proc/self/root{target}", write=False)
