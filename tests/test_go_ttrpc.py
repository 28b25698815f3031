"""Real ttrpc peers: Go's ttrpc library (containerd's, as Debian packages it) against the
daemon's socket, in protobuf.

tests/go/sandboxd-ttrpc-check drives a whole sandbox lifecycle through
``containerd.runtime.sandbox.v1.Sandbox``, the unary methods of ``sandboxd.v1``, and the wire
cases where ttrpc libraries differ, with deadlines and metadata on every call, and checks every
answer (exit status 1 and a ``FAIL:`` line naming the first mismatch).  The same wire cases run
first against bench/go/echo, Go's own ttrpc server, so that what the daemon is held to is what
Go's server does.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import sandboxd
from daemons import Daemons, ReadyPipe
from gobuild import CHECK, ECHO, build

#: Seconds the Go client gets for all its checks.
RUN_LIMIT = 60.0


@pytest.fixture
def check() -> Path:
    return build(CHECK)


async def run_check(binary: Path, socket: str, checks: str, *args: str) -> tuple[int, str]:
    """Run the Go client's ``checks`` against ``socket``: its exit status and output."""
    with trio.fail_after(RUN_LIMIT):
        done = await trio.run_process(
            [str(binary), "-socket", socket, "-check", checks, *args],
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return done.returncode, done.stdout.decode(errors="replace")


async def passes(binary: Path, socket: str, checks: str, *args: str) -> str:
    status, output = await run_check(binary, socket, checks, *args)
    assert status == 0, output
    assert output.rstrip().endswith("all checks passed"), output
    return output


@pytest.fixture
async def echo(sock_path: str) -> AsyncIterator[str]:
    """bench/go/echo serving on a fresh socket."""
    binary = build(ECHO)
    ready = ReadyPipe()
    process = await trio.lowlevel.open_process(
        [str(binary), "-socket", sock_path, *ready.args],
        stdin=subprocess.DEVNULL,
        pass_fds=ready.fds,
    )
    ready.spawned()
    try:
        await ready.wait(lambda: "")
        yield sock_path
    finally:
        process.terminate()
        with trio.fail_after(10):
            await process.wait()


async def test_the_go_client_agrees_with_gos_own_server_on_the_wire_cases(
    check: Path, echo: str
) -> None:
    output = await passes(check, echo, "echo")
    for case in ("empty first request", "unknown service", "oversized", "details"):
        assert case in output


async def test_the_go_client_names_the_first_mismatch(check: Path, echo: str) -> None:
    # Go's echo server serves no CreateSandbox: the lifecycle check stops there, saying so.
    status, output = await run_check(check, echo, "sandbox")
    assert status == 1
    assert "FAIL: containerd.runtime.sandbox.v1.Sandbox/CreateSandbox:" in output


@pytest.fixture
async def daemon_socket(daemons: Daemons) -> str:
    daemon = await daemons.start()
    return daemon.socket


async def test_a_go_ttrpc_client_drives_a_sandbox_lifecycle(
    check: Path, daemon_socket: str, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    output = await passes(check, daemon_socket, "sandbox", "-bundle", str(bundle))
    for method in ("CreateSandbox", "StartSandbox", "Platform", "SandboxStatus", "PingSandbox"):
        assert f"ok: {method}" in output
    for method in ("SandboxMetrics", "WaitSandbox", "StopSandbox", "ShutdownSandbox"):
        assert f"ok: {method}" in output


async def test_a_go_ttrpc_client_calls_the_unary_methods_of_sandboxd_v1(
    check: Path, daemon_socket: str
) -> None:
    output = await passes(check, daemon_socket, "sandboxd")
    for method in ("Version", "Create", "Start", "Platform", "Status", "Ping", "List"):
        assert f"ok: {method}" in output
    for method in ("Metrics", "ExecSync", "Stop", "Wait", "Shutdown"):
        assert f"ok: {method}" in output


async def test_a_status_with_details_reaches_a_go_ttrpc_client(daemons: Daemons) -> None:
    daemon = await daemons.start(args=["--max-calls-per-connection", "1"])
    output = await passes(build(CHECK), daemon.socket, "details")
    assert "RESOURCE_EXHAUSTED with its detail" in output


async def test_the_daemon_answers_the_wire_cases_as_gos_server_does(
    check: Path, daemon_socket: str
) -> None:
    await passes(check, daemon_socket, "wire")


async def test_cbor_and_protobuf_connections_share_one_socket(
    check: Path, daemon_socket: str, tmp_path: Path
) -> None:
    # A CBOR connection stays open and served while Go's client runs a lifecycle beside it.
    async with sandboxd.connect(daemon_socket) as controller:
        await controller.create("cbor", sandboxer="sim")
        await passes(check, daemon_socket, "sandbox", "-id", "beside", "-bundle", str(tmp_path))
        assert [box.sandbox_id for box in await controller.list()] == ["cbor"]
