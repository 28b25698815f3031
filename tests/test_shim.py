"""``containerd-shim-sandboxd-v1`` run exactly as containerd 2.x runs a runtime v2 shim:
``-namespace -address -publish-binary [-id] [-bundle] start|delete``, in the bundle
directory, with containerd's environment, standard output and error read together."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

import sandboxd
from daemons import BIN, STARTUP, Daemons, daemon_env
from procs import all_ended, is_alive

SHIM = str(BIN / "containerd-shim-sandboxd-v1")
CONTAINERD = "/usr/local/bin/containerd"
NAMESPACE = "k8s.io"


def containerd_env(
    sock_path: str, state_dir: Path, max_version: str | None = "2"
) -> dict[str, str]:
    """containerd's environment for a shim (pkg/shim's Command), plus where sandboxd lives."""
    env = daemon_env(state_dir)
    env.update(
        SANDBOXD_SOCKET=sock_path,
        GOMAXPROCS="2",
        TTRPC_ADDRESS="/run/containerd/containerd.sock.ttrpc",
        GRPC_ADDRESS="/run/containerd/containerd.sock",
        NAMESPACE=NAMESPACE,
    )
    if max_version is not None:
        env["MAX_SHIM_VERSION"] = max_version
    return env


def containerd_flags(env: dict[str, str]) -> list[str]:
    """The flags containerd gives every shim command (pkg/shim's Command)."""
    address = env["GRPC_ADDRESS"]
    return [SHIM, "-namespace", NAMESPACE, "-address", address, "-publish-binary", CONTAINERD]


async def run_shim(
    bundle: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[bytes]:
    """The shim as containerd runs it: its common flags, then ``args``; cwd the bundle."""
    await trio.Path(bundle).mkdir(exist_ok=True)
    with trio.fail_after(STARTUP * 2):
        return await trio.run_process(
            [*containerd_flags(env), *args],
            cwd=bundle,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            stderr=subprocess.STDOUT,  # containerd's CombinedOutput for start
            check=False,
        )


def peer_pid(path: str) -> int:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(path)
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[0])


def fields(data: bytes) -> dict[int, int | bytes]:
    """A protobuf message of varint and length-delimited fields: number -> last value."""
    out: dict[int, int | bytes] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        key = varint()
        if key & 7 == 0:
            out[key >> 3] = varint()
        else:
            assert key & 7 == 2, f"wire type {key & 7}"
            size = varint()
            out[key >> 3], pos = data[pos : pos + size], pos + size
    return out


def delete_response(data: bytes) -> tuple[int, int, datetime]:
    """pid, exit_status and exited_at of a containerd DeleteResponse."""
    message = fields(data)
    stamp = message.get(3, b"")
    assert isinstance(stamp, bytes)
    ts = fields(stamp)
    seconds, nanos = int(ts.get(1, 0)), int(ts.get(2, 0))  # type: ignore[arg-type]
    exited = datetime.fromtimestamp(seconds + nanos / 1e9, UTC)
    return int(message.get(1, 0)), int(message.get(2, 0)), exited  # type: ignore[arg-type]


@pytest.fixture
async def detached(sock_path: str) -> AsyncIterator[list[int]]:
    """Pids of daemons the shim started (not our children): SIGTERMed and awaited at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if is_alive(pid):
            os.kill(pid, signal.SIGTERM)
    await all_ended(pids)


async def test_start_starts_a_daemon_that_outlives_the_shim(
    sock_path: str, tmp_path: Path, detached: list[int]
) -> None:
    env = containerd_env(sock_path, tmp_path / "state")
    done = await run_shim(tmp_path / "bundle", env, "-id", "pod-1", "start")
    # The shim has exited and its output ended: the daemon holds none of containerd's pipes.
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout) == {
        "version": 2,
        "address": f"unix://{sock_path}",
        "protocol": "ttrpc",
    }
    daemon = peer_pid(sock_path)
    detached.append(daemon)
    assert os.getsid(daemon) == daemon  # a session of its own: containerd's signals miss it
    assert os.readlink(f"/proc/{daemon}/cwd") == "/"  # not the bundle containerd removes
    async with sandboxd.connect(sock_path) as controller:
        assert await controller.list() == []


async def test_start_answers_with_the_daemon_already_serving(
    daemons: Daemons, sock_path: str, tmp_path: Path
) -> None:
    daemon = await daemons.start()
    env = containerd_env(sock_path, tmp_path / "state")
    done = await run_shim(tmp_path / "bundle", env, "-id", "pod-1", "-debug", "start")
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["address"] == f"unix://{sock_path}"
    assert peer_pid(sock_path) == daemon.process.pid  # no second daemon

    # A containerd that sets no MAX_SHIM_VERSION reads a plain address.
    older = containerd_env(sock_path, tmp_path / "state", max_version=None)
    done = await run_shim(tmp_path / "bundle", older, "-id", "pod-1", "start")
    assert done.stdout == f"unix://{sock_path}".encode()


async def test_delete_cleans_up_a_sandbox_containerd_lost_track_of(
    daemons: Daemons, sock_path: str, tmp_path: Path
) -> None:
    await daemons.start()
    before = datetime.now(UTC).replace(microsecond=0)
    async with sandboxd.connect(sock_path) as controller:
        await controller.create("pod-1")
        instance = await controller.start("pod-1")
        assert is_alive(instance.pid)
        env = containerd_env(sock_path, tmp_path / "state")
        bundle = tmp_path / "bundle"
        done = await run_shim(bundle, env, "-id", "pod-1", "-bundle", str(bundle), "delete")
        assert done.returncode == 0, done.stdout
        pid, exit_status, exited_at = delete_response(done.stdout)
        assert pid == instance.pid
        assert exited_at >= before
        assert await controller.list() == []
        # The exit is the one a stop reports for the same kind of sandbox.
        await controller.create("reference")
        await controller.start("reference")
        await controller.stop("reference")
        assert exit_status == (await controller.wait("reference")).exit_status
    await all_ended([instance.pid])


async def test_delete_cleans_up_a_sandbox_that_never_started(
    daemons: Daemons, sock_path: str, tmp_path: Path
) -> None:
    await daemons.start()
    async with sandboxd.connect(sock_path) as controller:
        await controller.create("pod-1")
        env = containerd_env(sock_path, tmp_path / "state")
        bundle = tmp_path / "bundle"
        done = await run_shim(bundle, env, "-id", "pod-1", "-bundle", str(bundle), "delete")
        assert done.returncode == 0, done.stdout
        assert delete_response(done.stdout)[0] == 0  # it never had a process
        assert await controller.list() == []


async def test_delete_of_a_sandbox_nobody_knows_reports_it_killed(
    daemons: Daemons, sock_path: str, tmp_path: Path
) -> None:
    env = containerd_env(sock_path, tmp_path / "state")
    bundle = tmp_path / "bundle"
    # No daemon serving: nothing to clean up, and none is started for it.
    done = await run_shim(bundle, env, "-id", "gone", "-bundle", str(bundle), "delete")
    assert done.returncode == 0, done.stdout
    assert delete_response(done.stdout)[:2] == (0, 137)
    assert not await trio.Path(sock_path).exists()

    await daemons.start()
    done = await run_shim(bundle, env, "-id", "gone", "-bundle", str(bundle), "delete")
    assert done.returncode == 0, done.stdout
    assert delete_response(done.stdout)[:2] == (0, 137)


async def test_the_shim_needs_a_namespace(sock_path: str, tmp_path: Path) -> None:
    env = containerd_env(sock_path, tmp_path / "state")
    del env["NAMESPACE"]
    done = await trio.run_process(
        [SHIM, "-id", "pod-1", "start"], cwd=tmp_path, env=env, capture_stderr=True, check=False
    )
    assert done.returncode == 1
    assert b"namespace" in done.stderr
    assert not await trio.Path(sock_path).exists()
