"""The README's examples run, and its lifecycle diagram is the one the table generates."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.runtime import mermaid_diagram

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_lifecycle_diagram_is_generated_from_the_table() -> None:
    match = re.search(
        r"<!-- lifecycle-diagram:begin -->\n```mermaid\n(.*?)```\n<!-- lifecycle-diagram:end -->",
        README,
        flags=re.S,
    )
    assert match is not None, "README lost its lifecycle diagram markers"
    # To regenerate: python -c "from sandboxd.runtime import mermaid_diagram as m; print(m())"
    assert match.group(1) == mermaid_diagram()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real daemon; yields the environment that points clients at it."""
    tmp = tmp_path_factory.mktemp("readme")
    sock = str(tmp / "d.sock")
    env = {**os.environ, "SANDBOXD_SOCKET": sock, "SANDBOXD_STATE_DIR": str(tmp / "state")}
    proc = subprocess.Popen([str(BIN / "sandboxd"), "serve"], env=env, stderr=subprocess.PIPE)
    try:
        # Readiness probe: a subprocess cannot signal us; poll its socket, bounded.
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(sock)
                    break
                except OSError:
                    assert time.monotonic() < deadline, "daemon did not start"
                    time.sleep(0.02)
        yield env
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def run_python(source: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", source], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_embedding_example_runs_in_process_and_over_a_socket(daemon: dict[str, str]) -> None:
    (source,) = [b for b in blocks("python") if "lifecycle(" in b]
    assert run_python(source, daemon) == "in process: 3\nover the socket: 3\n"


def test_the_sync_client_example_runs(daemon: dict[str, str]) -> None:
    (source,) = [b for b in blocks("python") if "script1" in b]
    lines = run_python(source, daemon).splitlines()
    assert lines[0] == "1"
    assert int(lines[1]) > 0
    assert lines[2:] == ["137", "refused: FAILED_PRECONDITION"]


def test_the_asyncio_client_example_runs_under_plain_asyncio_run(
    daemon: dict[str, str],
) -> None:
    (source,) = [b for b in blocks("python") if "asyncio.run(" in b]
    assert run_python(source, daemon).splitlines() == ["True", "still running: READY"]


def test_the_fuzzing_example_finds_the_bug_then_passes_the_fix() -> None:
    (source,) = [b for b in blocks("python") if "ExitCache" in b]
    # In process: no daemon needed (and none must be reached).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXD_")}
    lines = run_python(source, env).splitlines()
    assert re.fullmatch(
        r"\d+ programs, \d+ calls in [\d.]+ s \(seed 2, digest [0-9a-f]{12}\): "
        r"VIOLATION \(not linearizable\)",
        lines[0],
    ), lines
    script = [line.split("  #")[0] for line in lines[1:-1] if line.startswith("sandboxctl")]
    # The minimal reproducer: create, a Wait the reaper answers, and the stale Wait.
    assert [line.split()[1] for line in script] == [
        "create",
        "wait",
        "shutdown",
        "wait",
        "shutdown",
    ], lines
    assert any(line.endswith("answered: exit 0; model: NOT_FOUND") for line in lines), lines
    assert lines[-1].startswith("100 programs, ")
    assert lines[-1].endswith(": every check passed")


def test_every_example_is_tested() -> None:
    assert len(blocks("python")) == 5
    # quick start (CI runs tools/test; tests/test_demo.py runs tools/demo's script), the
    # daemon (tests/test_serve_cli.py), sandboxctl, bwrap, limits and the agent's (above and
    # below).
    assert len(blocks("sh")) == 6


def test_the_agent_example_runs_untrusted_code_in_a_bwrap_sandbox(
    daemon: dict[str, str],
) -> None:
    (source,) = [b for b in blocks("python") if "write_file(" in b]
    assert run_python(source, daemon).splitlines() == [
        "3 45 careful",
        "0 [b'12', b'job.py']",
        "True",
    ]


def test_the_agent_example_in_a_shell_runs(daemon: dict[str, str]) -> None:
    (script,) = [b for b in blocks("sh") if "sandboxctl cp" in b]
    env = {**daemon, "PATH": f"{BIN}:{os.environ['PATH']}"}
    try:
        proc = subprocess.run(
            ["sh", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[1:3] == ["42", "PRINT(6 * 7)"], lines
        assert lines[0].startswith("agent2 started, pid ") and lines[3] == "agent2 deleted"
        assert Path("/tmp/agent2-back.py").read_text() == "print(6 * 7)\n"
    finally:
        for leftover in ("/tmp/agent2-job.py", "/tmp/agent2-back.py"):
            Path(leftover).unlink(missing_ok=True)


def test_the_sandboxctl_example_runs(daemon: dict[str, str]) -> None:
    (script,) = [b for b in blocks("sh") if "sandboxctl run web1" in b]
    outputs = []
    for line in script.splitlines():
        command = shlex.split(line, comments=True)
        assert command[0] == "sandboxctl"
        proc = subprocess.run(
            [str(BIN / "sandboxctl"), *command[1:]],
            env=daemon,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (line, proc.stderr)
        outputs.append(proc.stdout)
    status, listing, wait = outputs[1], outputs[2], outputs[4]
    assert "ready" in status
    assert listing.splitlines()[0].split()[:3] == ["SANDBOX", "ID", "STATE"]
    assert "web1" in listing
    assert wait.strip() == "143"


def test_the_bwrap_example_runs(daemon: dict[str, str]) -> None:
    (script,) = [b for b in blocks("sh") if "box2" in b]
    env = {**daemon, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    # The last command printed box2's exit status: touch failed on the read-only view.
    assert proc.stdout.split()[-1] == "1"
    out = Path("/tmp/box2-out")
    assert (out / "hostname").read_text() == "box2\n"
    assert "Read-only file system" in (out / "ro-error").read_text()
    for sandbox in ("box1", "box2"):
        subprocess.run([str(BIN / "sandboxctl"), "shutdown", sandbox], env=env, check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root here")
def test_the_limits_example_runs(daemon: dict[str, str]) -> None:
    (script,) = [b for b in blocks("sh") if "box3" in b]
    env = {**daemon, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-2] == "137", lines
    assert lines[-1].split() == ["info.reason:", "oom_killed"], lines
    subprocess.run([str(BIN / "sandboxctl"), "shutdown", "box3"], env=env, check=True)
