"""``sandboxctl``, the installed executable, against a real ``sandboxd serve`` daemon.

One daemon serves the whole module (starting one costs a second or two); every sandboxctl
call is a real subprocess of the console script next to ``sys.executable``, so argument
parsing, output and exit statuses are what a shell sees.  Each test uses sandbox ids and
labels of its own, so the tests do not depend on each other's order.

The daemon is started with ``--ready-fd`` and the module waits for its readiness line
(``daemons.ReadyPipe``), at most STARTUP seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from daemons import BIN, PROBE_INTERVAL, SANDBOXD, STARTUP, ReadyPipe
from procs import Reaper
from sandboxd import Code, __version__
from sandboxd.api import SyncController
from sandboxd.backends import BwrapBackend

SANDBOXCTL = str(BIN / "sandboxctl")
#: Seconds any one sandboxctl run may take before the test fails.
RUN_LIMIT = 30.0


# -- the daemon -----------------------------------------------------------------------------------


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket: str
    log: Path
    #: A directory for the test to use, private to this daemon.
    scratch: Path
    ready: ReadyPipe
    #: Process sandboxes, killed at teardown (they outlive the daemon).
    reaper: Reaper = field(default_factory=Reaper)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def serving(self) -> None:
        """Return once the daemon says it serves (``--ready-fd``)."""
        self.ready.wait_sync(self.output)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(STARTUP)

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STARTUP)
        self.reaper.kill_all()


def base_env(scratch: Path) -> dict[str, str]:
    """The environment without any say on the socket: SANDBOXD_SOCKET unset and
    XDG_RUNTIME_DIR at an empty directory, so a default path never reaches a real daemon."""
    env = dict(os.environ)
    env.pop("SANDBOXD_SOCKET", None)
    runtime_dir = scratch / "empty-runtime-dir"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    env["SANDBOXD_STATE_DIR"] = str(scratch / "state")
    return env


def start_daemon(scratch: Path, env: dict[str, str], *args: str, socket: str) -> Daemon:
    log = scratch / "daemon.log"
    ready = ReadyPipe()
    process = ready.popen(args, log, env)
    daemon = Daemon(process, socket, log, scratch, ready)
    try:
        daemon.serving()
    except BaseException:
        daemon.cleanup()
        raise
    return daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    # A short directory: a socket path must fit in sun_path (107 bytes).
    with tempfile.TemporaryDirectory(prefix="sbctl-") as directory:
        scratch = Path(directory)
        socket = str(scratch / "d.sock")
        env = base_env(scratch)
        d = start_daemon(
            scratch, env, "--socket", socket, "--state-dir", str(scratch / "state"), socket=socket
        )
        try:
            yield d
            assert d.terminate() == 0, d.output()
        finally:
            d.cleanup()


# -- running sandboxctl ---------------------------------------------------------------------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> str:
        assert self.returncode == 0, f"exit {self.returncode}\n{self.stderr}"
        assert self.stderr == "", self.stderr
        return self.stdout

    def json(self) -> Any:
        """The one JSON document on stdout (exactly one line)."""
        out = self.ok()
        assert out.endswith("\n") and out.count("\n") == 1, f"not one line: {out!r}"
        return json.loads(out)

    def failed(self, code: Code) -> str:
        """Stderr of a call the daemon refused with ``code``."""
        assert self.returncode == 10 + code, f"exit {self.returncode}, not {10 + code}\n{self}"
        assert self.stdout == ""
        first = self.stderr.splitlines()[0]
        assert first.startswith(f"sandboxctl: {code.name}: "), self.stderr
        assert "Traceback" not in self.stderr
        return self.stderr


def sandboxctl(
    d: Daemon, *args: str, via: str = "env", env: dict[str, str] | None = None
) -> Result:
    """Run ``sandboxctl args``, finding the daemon through SANDBOXD_SOCKET (``via="env"``),
    through ``--socket`` (``via="flag"``), or not at all (``via="none"``)."""
    env = base_env(d.scratch) if env is None else env
    if via == "env":
        env["SANDBOXD_SOCKET"] = d.socket
    elif via == "flag":
        args = ("--socket", d.socket, *args)
    result = subprocess.run(
        [SANDBOXCTL, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=RUN_LIMIT,
        check=False,
    )
    return Result(
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def is_timestamp(value: object) -> bool:
    if not isinstance(value, str):
        return False
    return datetime.fromisoformat(value).tzinfo is not None


# -- every subcommand, human output ---------------------------------------------------------------

HEADINGS = ("SANDBOX ID", "STATE", "PID", "SANDBOXER", "CREATED", "EXIT")


def parse_table(text: str) -> dict[str, list[str]]:
    """The rows of ``sandboxctl list`` by sandbox id, checking that the columns line up: every
    value starts exactly under its heading."""
    header, *lines = text.splitlines()
    starts = [header.index(h) for h in HEADINGS]
    assert starts[0] == 0 and starts == sorted(starts), header
    assert header.split() == " ".join(HEADINGS).split(), header
    rows = {}
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        assert all(cells) and " " not in "".join(cells), (header, line)
        for start in starts[1:]:
            assert line[start - 1] == " " and line[start] != " ", (header, line)
        rows[cells[0]] = cells
    return rows


def test_process_sandbox_through_every_subcommand(daemon: Daemon) -> None:
    started = sandboxctl(
        daemon, "run", "--label", "suite=human", "--label", "x=y", "hp1", "--", "sleep", "1000"
    ).ok()
    match = re.fullmatch(r"hp1 started, pid (\d+)\n", started)
    assert match, started
    pid = int(match[1])
    daemon.reaper.add(pid)
    os.kill(pid, 0)  # the process exists

    status = sandboxctl(daemon, "status", "hp1", via="flag").ok()
    assert re.search(r"^state:\s+ready$", status, re.M), status
    assert re.search(rf"^pid:\s+{pid}$", status, re.M), status
    assert "sleep 1000" not in status
    verbose = sandboxctl(daemon, "status", "--verbose", "hp1").ok()
    assert re.search(r"^info\.command:\s+sleep 1000$", verbose, re.M), verbose

    platform = sandboxctl(daemon, "platform", "hp1").ok()
    assert re.fullmatch(r"linux/[a-z0-9_]+(/\w+)?\n", platform), platform
    metrics = sandboxctl(daemon, "metrics", "hp1").ok()
    assert re.search(r"^pids:\s+[1-9]\d*$", metrics, re.M), metrics
    assert re.search(r"^memory_rss_bytes:\s+\d+$", metrics, re.M), metrics
    assert sandboxctl(daemon, "ping", "hp1").ok() == "hp1 ok\n"

    # A second sandbox, to see the label filter and the table's alignment.
    assert (
        sandboxctl(daemon, "create", "--sandboxer", "sim", "--label", "suite=human", "hs1").ok()
        == "hs1\n"
    )
    rows = parse_table(sandboxctl(daemon, "list").ok())
    assert {"hp1", "hs1"} <= set(rows)
    assert rows["hp1"][1:4] == ["ready", str(pid), "process"]
    assert rows["hs1"][1:4] == ["created", "0", "sim"]
    assert rows["hp1"][5] == "-"
    assert list(parse_table(sandboxctl(daemon, "list", "--label", "x=y").ok())) == ["hp1"]

    assert sandboxctl(daemon, "stop", "--timeout", "5", "hp1").ok() == "hp1 stopped\n"
    assert sandboxctl(daemon, "wait", "hp1").ok() == "143\n"
    assert sandboxctl(daemon, "shutdown", "hp1").ok() == "hp1 deleted\n"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- --json ---------------------------------------------------------------------------------------


def test_json_before_or_after_the_subcommand_prints_the_response_message(
    daemon: Daemon,
) -> None:
    assert sandboxctl(
        daemon, "--json", "create", "--sandboxer", "sim", "--label", "suite=json", "js1"
    ).json() == {"sandbox_id": "js1"}
    started = sandboxctl(daemon, "start", "js1", "--json").json()
    assert set(started) == {"sandbox_id", "pid", "created_at", "labels"}
    assert started["sandbox_id"] == "js1" and started["pid"] > 0
    assert started["labels"] == {"suite": "json"}
    assert is_timestamp(started["created_at"])

    status = sandboxctl(daemon, "--json", "status", "js1", via="flag").json()
    assert {"sandbox_id", "pid", "state", "info", "created_at"} <= set(status)
    assert (status["sandbox_id"], status["pid"], status["state"]) == (
        "js1",
        started["pid"],
        "ready",
    )
    assert status["info"]["sandboxer"] == "sim"
    assert is_timestamp(status["created_at"])

    platform = sandboxctl(daemon, "platform", "--json", "js1").json()
    assert set(platform) == {"platform"}
    assert platform["platform"]["os"] == "linux" and platform["platform"]["architecture"]
    assert sandboxctl(daemon, "--json", "ping", "js1").json() == {}
    metrics = sandboxctl(daemon, "metrics", "js1", "--json").json()
    assert {"sandbox_id", "timestamp", "cpu_ns", "memory_rss_bytes", "pids"} <= set(metrics)
    assert metrics["sandbox_id"] == "js1" and is_timestamp(metrics["timestamp"])

    listed = sandboxctl(daemon, "--json", "list", "--label", "suite=json").json()
    assert listed == {"sandboxes": [status]}
    version = sandboxctl(daemon, "version", "--json").json()
    # The daemon also says which cgroup hierarchy limits its sandboxes (or why none does).
    assert version.pop("cgroups").startswith(("cgroup v1 (", "cgroup v2 (", "cgroups unavailable"))
    # And its limits.
    assert version.pop("limits")["max_calls_per_connection"] == 1024
    assert version == {"version": __version__, "protocol": 1}

    # wait --timeout gives up with DEADLINE_EXCEEDED, leaving the sandbox running.
    sandboxctl(daemon, "--json", "wait", "--timeout", "0.3", "js1").failed(Code.DEADLINE_EXCEEDED)

    assert sandboxctl(daemon, "stop", "js1", "--timeout", "5", "--json").json() == {}
    waited = sandboxctl(daemon, "--json", "wait", "js1").json()
    assert set(waited) == {"exit_status", "exited_at"}
    assert waited["exit_status"] == 143 and is_timestamp(waited["exited_at"])
    assert sandboxctl(daemon, "shutdown", "--json", "js1").json() == {}

    ran = sandboxctl(daemon, "--json", "run", "--sandboxer", "sim", "js2", "--", "true").json()
    assert set(ran) == {"sandbox_id", "pid", "created_at", "labels"} and ran["sandbox_id"] == "js2"


# -- finding the socket ---------------------------------------------------------------------------


def test_socket_from_sandboxd_socket_or_from_the_socket_option(daemon: Daemon) -> None:
    by_env = sandboxctl(daemon, "--timing", "version", via="env")
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == f"daemon {__version__} (protocol 1), sandboxctl {__version__}\n"
    assert re.search(r"^sandboxctl: Version round trip \d+ us$", by_env.stderr, re.M)

    # --socket wins over SANDBOXD_SOCKET.
    env = base_env(daemon.scratch)
    env["SANDBOXD_SOCKET"] = str(daemon.scratch / "nobody-here.sock")
    assert sandboxctl(daemon, "--json", "version", via="flag", env=env).json()["protocol"] == 1


def test_default_socket_path_of_sandboxd_and_sandboxctl_agree() -> None:
    with tempfile.TemporaryDirectory(prefix="sbxdg-") as directory:
        scratch = Path(directory)
        env = base_env(scratch)
        runtime_dir = scratch / "xdg"
        runtime_dir.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
        expected = runtime_dir / "sandboxd" / "sandboxd.sock"
        d = start_daemon(scratch, env, socket=str(expected))  # no --socket, no --state-dir
        try:
            assert stat.S_ISSOCK(os.lstat(expected).st_mode)
            assert stat.S_IMODE(os.stat(expected.parent).st_mode) == 0o700
            assert (scratch / "state" / "logs").is_dir()  # SANDBOXD_STATE_DIR was used
            version = sandboxctl(d, "version", via="none", env=dict(env))
            assert version.ok().startswith(f"daemon {__version__} (protocol 1)")
            assert d.terminate() == 0, d.output()
            assert not os.path.lexists(expected)
        finally:
            d.cleanup()


# -- errors ---------------------------------------------------------------------------------------


def test_daemon_refusals_exit_with_10_plus_the_status_code(daemon: Daemon) -> None:
    assert "nosuch" in sandboxctl(daemon, "--json", "ping", "nosuch").failed(Code.NOT_FOUND)
    sandboxctl(daemon, "status", "not valid!").failed(Code.INVALID_ARGUMENT)
    # A process sandbox (the daemon's default sandboxer) running a pause process.
    assert sandboxctl(daemon, "create", "twice").ok() == "twice\n"
    sandboxctl(daemon, "create", "--sandboxer", "sim", "twice").failed(Code.ALREADY_EXISTS)
    started = re.fullmatch(
        r"twice started, pid (\d+)\n", sandboxctl(daemon, "start", "twice").ok()
    )
    assert started is not None
    daemon.reaper.add(int(started[1]))
    sandboxctl(daemon, "start", "twice").failed(Code.FAILED_PRECONDITION)


def test_unreachable_daemon_exits_24_naming_the_socket_and_how_to_start_one(
    daemon: Daemon,
) -> None:
    nowhere = str(daemon.scratch / "nothing-listens.sock")
    env = base_env(daemon.scratch)
    env["SANDBOXD_SOCKET"] = nowhere
    stderr = sandboxctl(daemon, "version", via="none", env=env).failed(Code.UNAVAILABLE)
    assert nowhere in stderr
    assert "sandboxd serve" in stderr

    # The default path, when nothing names one, is named too.
    env = base_env(daemon.scratch)
    default = os.path.join(env["XDG_RUNTIME_DIR"], "sandboxd", "sandboxd.sock")
    stderr = sandboxctl(daemon, "list", via="none", env=env).failed(Code.UNAVAILABLE)
    assert default in stderr and "sandboxd serve" in stderr


def test_usage_errors_exit_2(daemon: Daemon) -> None:
    for args in (
        ("frobnicate",),  # no such subcommand
        ("create", "u1", "--label", "novalue"),  # an option value argparse refuses
    ):
        result = sandboxctl(daemon, *args)
        assert result.returncode == 2, (args, result)
        assert "usage:" in result.stderr and result.stdout == "", (args, result)


def test_a_malformed_bind_is_a_usage_error_exit_2(daemon: Daemon) -> None:
    # An option value sandboxctl checks itself is a usage error just as one argparse refuses
    # ("2 for a usage error"), and nothing is created.
    result = sandboxctl(daemon, "create", "u2", "--bind", "nonsense")
    assert "--bind" in result.stderr and "nonsense" in result.stderr, result
    assert result.stdout == "" and "Traceback" not in result.stderr, result
    assert result.returncode == 2, result
    sandboxctl(daemon, "status", "u2").failed(Code.NOT_FOUND)


def test_help_lists_exit_statuses_and_serve_help_says_sandboxes_outlive_the_daemon() -> None:
    ctl_help = subprocess.run(
        [SANDBOXCTL, "--help"], capture_output=True, text=True, timeout=RUN_LIMIT, check=True
    ).stdout
    assert "Exit status" in ctl_help
    for code in Code:
        if code is not Code.OK:
            assert re.search(rf"^\s*{10 + code}\s+{code.name}$", ctl_help, re.M), code
    for command in (
        "create",
        "run",
        "start",
        "status",
        "platform",
        "stop",
        "wait",
        "shutdown",
        "ping",
        "list",
        "version",
        "events",
        "metrics",
    ):
        assert command in ctl_help, command

    serve_help = subprocess.run(
        [SANDBOXD, "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
        check=True,
    ).stdout
    assert "not killed when the daemon exits" in " ".join(serve_help.split())


# -- events ---------------------------------------------------------------------------------------


class Lines:
    """Lines of a subprocess's stdout, read with a deadline (select, no blocking read)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float) -> str | None:
        """The next line, or None if none arrived within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"stdout ended; unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def test_events_prints_one_json_document_per_event_as_they_happen(daemon: Daemon) -> None:
    env = base_env(daemon.scratch)
    env["SANDBOXD_SOCKET"] = daemon.socket
    watcher = subprocess.Popen(
        [SANDBOXCTL, "--json", "events"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        lines = Lines(watcher)
        # Readiness probe: sandboxctl says nothing when it has subscribed, so create and
        # delete throwaway sandboxes until their events show up (bounded by STARTUP).
        deadline = time.monotonic() + STARTUP
        with SyncController(daemon.socket) as ctl:
            for attempt in itertools.count():
                probe = f"evprobe{attempt}"
                ctl.create(probe, sandboxer="sim")
                ctl.shutdown(probe)
                if lines.next(PROBE_INTERVAL * 5) is not None:
                    break
                assert time.monotonic() < deadline, "sandboxctl events printed nothing"

        assert sandboxctl(daemon, "create", "--sandboxer", "sim", "evsb").ok() == "evsb\n"
        assert sandboxctl(daemon, "shutdown", "evsb").ok() == "evsb deleted\n"
        events: list[dict[str, Any]] = []
        while not events or events[-1]["topic"] != "/sandboxes/delete":
            line = lines.next(STARTUP)
            assert line is not None, f"no delete event; got {events}"
            event = json.loads(line)  # every line is one JSON document
            assert {"topic", "sandbox_id", "timestamp"} <= set(event), event
            assert is_timestamp(event["timestamp"])
            if event["sandbox_id"] == "evsb":
                events.append(event)
        # Shutting down a sandbox that never started records exit status 0 (PROTOCOL.md).
        assert [(e["topic"], e.get("exit_status")) for e in events] == [
            ("/sandboxes/create", None),
            ("/sandboxes/exit", 0),
            ("/sandboxes/delete", None),
        ]
        stamps = [datetime.fromisoformat(e["timestamp"]) for e in events]
        assert stamps == sorted(stamps)
        assert watcher.poll() is None, "events ended on its own"
    finally:
        watcher.terminate()
        _, stderr = watcher.communicate(timeout=STARTUP)
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


def test_seccomp_takes_a_docker_profile_file_and_verbose_status_names_the_filter(
    daemon: Daemon,
) -> None:
    profile = daemon.scratch / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
                ],
            }
        )
    )
    sandboxctl(daemon, "run", "--sandboxer", "bwrap", "--seccomp", str(profile), "sc1").ok()
    verbose = sandboxctl(daemon, "status", "--verbose", "sc1").ok()
    assert re.search(r"^info\.seccomp:\s+custom$", verbose, re.M), verbose
    denied = sandboxctl(daemon, "exec", "sc1", "--", "mkdir", "/tmp/d")
    assert denied.returncode == 1 and "Permission denied" in denied.stderr, denied
    sandboxctl(daemon, "shutdown", "sc1").ok()
    refused = sandboxctl(daemon, "run", "--sandboxer", "process", "--seccomp", "default", "sc2")
    assert "the process backend cannot filter" in refused.failed(Code.INVALID_ARGUMENT)
    missing = sandboxctl(daemon, "create", "--seccomp", str(daemon.scratch / "none.json"), "sc3")
    assert missing.returncode == 2 and "cannot read the profile" in missing.stderr, missing


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root here")
def test_run_with_limits_puts_the_sandbox_in_a_cgroup_with_them(daemon: Daemon) -> None:
    started = sandboxctl(
        daemon, "run", "--memory", str(64 << 20), "--cpus", "0.5", "--pids", "20", "hl1",
        "--", "sleep", "1000",
    ).ok()  # fmt: skip
    daemon.reaper.add(int(started.split()[-1]))
    verbose = sandboxctl(daemon, "status", "--verbose", "hl1").ok()
    match = re.search(r"^info\.cgroup:\s+(.+)$", verbose, re.M)
    assert match, verbose
    limits = {}
    for directory in match[1].split():
        for name in ("pids.max", "memory.limit_in_bytes", "memory.max", "cpu.cfs_quota_us"):
            if os.path.exists(os.path.join(directory, name)):
                limits[name] = Path(directory, name).read_text().strip()
    assert limits.get("pids.max") == "20"
    assert limits.get("memory.limit_in_bytes", limits.get("memory.max")) == str(64 << 20)
    metrics = sandboxctl(daemon, "metrics", "hl1").ok()
    assert re.search(r"^memory_peak_bytes:\s+[1-9]\d*$", metrics, re.M), metrics
    assert re.search(r"^oom_kills:\s+0$", metrics, re.M), metrics
    assert sandboxctl(daemon, "stop", "--timeout", "0", "hl1").ok() == "hl1 stopped\n"
    assert sandboxctl(daemon, "shutdown", "hl1").ok() == "hl1 deleted\n"


# -- lifetimes and mounts -------------------------------------------------------------------------


def test_run_with_a_lifetime_stops_the_sandbox_and_says_why(daemon: Daemon) -> None:
    sandboxctl(daemon, "run", "--sandboxer", "sim", "--lifetime", "0.3", "lt1").ok()
    assert sandboxctl(daemon, "wait", "lt1").ok() == "143\n"
    status = sandboxctl(daemon, "status", "lt1").ok()
    assert re.search(r"^info\.reason:\s+lifetime_expired$", status, re.M), status
    sandboxctl(daemon, "shutdown", "lt1").ok()
    for bad in ("0", "-1", "inf", "soon"):
        result = sandboxctl(daemon, "create", "lt2", "--lifetime", bad)
        assert result.returncode == 2 and "--lifetime" in result.stderr, result


@pytest.mark.skipif(BwrapBackend().unavailable_reason() is not None, reason="no bubblewrap")
def test_run_adds_tmpfs_proc_and_bind_mounts_in_order(daemon: Daemon) -> None:
    script = "touch /mnt/x && test -d /proc/self"
    sandboxctl(
        daemon, "run", "--sandboxer", "bwrap", "--bind", "/:/:ro", "--tmpfs", "/mnt",
        "--proc", "/proc", "mt1", "--", "sh", "-c", script,
    ).ok()  # fmt: skip
    assert sandboxctl(daemon, "wait", "mt1").ok() == "0\n"
    sandboxctl(daemon, "shutdown", "mt1").ok()
    result = sandboxctl(daemon, "create", "mt2", "--tmpfs", "relative")
    assert result.returncode == 2 and "--tmpfs" in result.stderr, result
