"""Running commands inside real sandboxes, straight through their backends."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from procs import PROCESS_TIMEOUT, Exits
from sandboxd._models import Mount, SandboxOptions, SandboxSpec
from sandboxd.backends import BwrapBackend, ExecProcess, ExecSpec, ProcessBackend
from sandboxd.backends._bwrap import BwrapSandbox
from sandboxd.backends._exec import children
from sandboxd.backends._process import DEFAULT_PATH, ProcessSandbox

SANDBOXERS = ("process", "bwrap")
ENV = {"PATH": DEFAULT_PATH, "LANG": "C"}


def rootfs_with(*writable: Path, readonly: Sequence[tuple[Path, str]] = ()) -> list[Mount]:
    """The host read-only, its own /proc, /dev and /tmp, then ``writable`` bound read-write
    and each ``(source, target)`` of ``readonly`` bound read-only."""
    return [
        Mount("bind", "/", "/", ("ro",)),
        Mount("proc", "proc", "/proc"),
        Mount("dev", "dev", "/dev"),
        Mount("tmpfs", "tmpfs", "/tmp"),
        *(Mount("bind", str(path), str(path), ("rw",)) for path in writable),
        *(Mount("bind", str(source), target, ("ro",)) for source, target in readonly),
    ]


@asynccontextmanager
async def running(
    sandboxer: str,
    *,
    rootfs: Sequence[Mount] = (),
    sandbox_id: str = "box-1",
    options: SandboxOptions | None = None,
) -> AsyncIterator[ProcessSandbox | BwrapSandbox]:
    """A started sandbox (a pause one unless ``options`` say otherwise); killed (with
    everything in it) at the end."""
    backend = BwrapBackend() if sandboxer == "bwrap" else ProcessBackend()
    options = SandboxOptions() if options is None else options
    spec = SandboxSpec(sandbox_id, sandboxer, options, rootfs=tuple(rootfs))
    backend.validate(spec)
    exits = Exits()
    async with trio.open_nursery() as nursery:
        sandbox = await backend.start(spec, nursery, exits)
        try:
            yield sandbox
        finally:
            sandbox.signal(signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await exits.wait()
            sandbox.cleanup()


def spec(*command: str, **kwargs: object) -> ExecSpec:
    """An ExecSpec with the default PATH and ``/`` as cwd unless given."""
    options: dict[str, object] = {"env": ENV, "cwd": "/", **kwargs}
    return ExecSpec("e1", command, **options)  # type: ignore[arg-type]


async def read_all(stream: trio.abc.ReceiveStream | None) -> bytes:
    if stream is None:
        return b""
    chunks = []
    while chunk := await stream.receive_some():
        chunks.append(chunk)
    return b"".join(chunks)


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    """Read until ``marker`` has come (or the end); everything read."""
    data = b""
    with trio.fail_after(PROCESS_TIMEOUT):
        while marker not in data and (chunk := await stream.receive_some()):
            data += chunk
    return data


@attrs.frozen
class Done:
    pid: int
    returncode: int
    stdout: bytes
    stderr: bytes


async def run(
    sandbox: ProcessSandbox | BwrapSandbox, exec_spec: ExecSpec, stdin: bytes = b""
) -> Done:
    """Run ``exec_spec`` to its end, feeding it ``stdin`` (when it has one)."""
    with trio.fail_after(PROCESS_TIMEOUT):
        process = await sandbox.exec(exec_spec)
        return await finish(process, stdin)


async def finish(process: ExecProcess, stdin: bytes = b"") -> Done:
    output: dict[str, bytes] = {}

    async def drain(name: str, stream: trio.abc.ReceiveStream | None) -> None:
        output[name] = await read_all(stream)

    with trio.fail_after(PROCESS_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, "out", process.stdout)
            nursery.start_soon(drain, "err", process.stderr)
            if process.stdin is not None:
                await process.stdin.send_all(stdin)
                await process.stdin.aclose()
        returncode = await process.wait()
    await process.aclose()
    return Done(process.pid, returncode, output["out"], output["err"])


def descendants(pid: int) -> list[int]:
    """``pid``'s descendants, as the host sees them."""
    found: list[int] = []
    stack = [pid]
    while stack:
        kids = children(stack.pop())
        found += kids
        stack += kids
    return found
