"""sandboxctl loads only what its command needs.

Every command that talks to a daemon is run as a user runs it (the console script, in a
subprocess, against a real ``sandboxd serve``) under ``python -X importtime``, which names
every module the process imported.  No remote command may import trio, the runtime, the
server or the backends; the hot commands (``version``, ``status``) not even argparse, attrs
or the models.  An import-graph check, not a timing: bench/cli.py has the figures.

The hot path prints from the decoded message where the full path builds models; the
in-process tests below hold the two to the same output, and the hand-written parser of the
hot commands to argparse's reading of the same words.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemons import BIN, STARTUP, ReadyPipe, daemon_env
from sandboxd import Internal, SandboxState
from sandboxd._status_shape import STATES
from sandboxd.api import CONTROLLER_SERVICE, RUNTIME_SERVICE
from sandboxd.api import _convert as convert
from sandboxd.api._client_common import decode_reply
from sandboxd.cli import _commands, _hot

SANDBOXCTL = str(BIN / "sandboxctl")

#: Modules no remote command may import (a name, or a package and everything below it).
NEVER: tuple[str, ...] = (
    "trio",
    "sandboxd.runtime",
    "sandboxd.backends",
    "sandboxd.rpc._server",
    "sandboxd.api._controller_service",
    "sandboxd.api._data_service",
    "sandboxd.api._runtime_service",
    "sandboxd.testing",
)
#: Modules the hot commands do not import either.
NOT_HOT: tuple[str, ...] = ("argparse", "attr", "attrs", "sandboxd._models", "sandboxd.api")


@pytest.fixture(scope="module")
def socket_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="sbimp-") as directory:
        scratch = Path(directory)
        path = str(scratch / "d.sock")
        log = scratch / "daemon.log"
        ready = ReadyPipe()
        args = ["--socket", path, "--state-dir", str(scratch / "state")]
        proc = ready.popen(args, log, daemon_env(scratch / "state"))
        try:
            ready.wait_sync(lambda: log.read_text(errors="replace"))
            yield path
        finally:
            proc.terminate()
            proc.wait(STARTUP)


def imported(socket_path: str, *words: str) -> set[str]:
    """The modules ``sandboxctl --socket PATH WORDS`` imported; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", SANDBOXCTL, "--socket", socket_path, *words],
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = proc.stderr.splitlines()
    said = [line for line in lines if not line.startswith("import time:")]
    assert proc.returncode == 0, "\n".join(said)
    return {
        line.rpartition("|")[2].strip()
        for line in lines
        if line.startswith("import time:") and "|" in line
    }


def loaded(modules: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == b or m.startswith(b + ".") for b in banned))


def test_no_remote_command_imports_trio_the_runtime_the_server_or_the_backends(
    socket_path: str,
) -> None:
    runs = [
        ("create", "imp-a", "--sandboxer", "sim", "--label", "k=v"),
        ("start", "imp-a"),
        ("run", "imp-b", "--sandboxer", "sim"),
        ("ping", "imp-a"),
        ("platform", "imp-a"),
        ("metrics", "imp-a"),
        ("list",),
        ("list", "--label", "k=v", "--json"),
        ("stop", "imp-a"),
        ("wait", "imp-a"),
        ("shutdown", "imp-a"),
        ("version",),
        ("status", "imp-b"),
        ("--json", "status", "imp-b", "-v"),
    ]
    for words in runs:
        assert loaded(imported(socket_path, *words), NEVER) == [], words


def test_the_data_plane_commands_import_no_trio_either(socket_path: str, tmp_path: Path) -> None:
    imported(socket_path, "run", "imp-p", "--", "sleep", "60")
    try:
        local = tmp_path / "copied"
        for words in (
            ("exec", "imp-p", "--", "true"),
            ("logs", "imp-p"),
            ("cp", "/etc/hostname", "imp-p:" + str(tmp_path / "in")),
            ("cp", "imp-p:/etc/hostname", str(local)),
        ):
            assert loaded(imported(socket_path, *words), NEVER) == [], words
        assert local.read_bytes() == Path("/etc/hostname").read_bytes()
    finally:
        imported(socket_path, "shutdown", "imp-p")


def test_the_hot_commands_import_neither_argparse_nor_the_models(socket_path: str) -> None:
    imported(socket_path, "run", "imp-hot", "--sandboxer", "sim")
    for words in (
        ("version",),
        ("--json", "version"),
        ("status", "imp-hot"),
        ("--timing", "status", "--verbose", "imp-hot", "--json"),
    ):
        modules = imported(socket_path, *words)
        assert "sandboxd.cli._hot" in modules, words
        assert loaded(modules, NEVER + NOT_HOT) == [], words


def test_the_hot_path_knows_the_services_and_the_states() -> None:
    assert (_hot.RUNTIME_SERVICE, _hot.CONTROLLER_SERVICE) == (RUNTIME_SERVICE, CONTROLLER_SERVICE)
    assert {state.value for state in SandboxState} == STATES


# -- the hot path says what the full one says ---------------------------------------------------

WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
GOOD: dict[str, Any] = {
    "sandbox_id": "a",
    "pid": 12,
    "state": "stopped",
    "info": {"sandboxer": "sim"},
    "created_at": WHEN,
}


@pytest.mark.parametrize(
    "reply",
    [
        GOOD,
        {**GOOD, "exited_at": WHEN, "extra": {"x": [1]}, "unknown": 1},
        {**GOOD, "exited_at": None, "extra": None},
        {k: v for k, v in GOOD.items() if k != "info"},
        # Malformed: the models name what is wrong, on either path.
        {**GOOD, "pid": "12"},
        {**GOOD, "state": "dreaming"},
        {**GOOD, "state": ["ready"]},
        {**GOOD, "info": {"a": 1}},
        {**GOOD, "created_at": 1.5},
        {**GOOD, "created_at": WHEN.replace(tzinfo=None)},
        {**GOOD, "extra": [1]},
        {k: v for k, v in GOOD.items() if k != "sandbox_id"},
    ],
)
def test_a_status_reply_reads_as_the_models_read_it(reply: dict[str, Any]) -> None:
    try:
        wanted = convert.status_message(decode_reply(convert.status_from, reply))
    except Internal as err:
        with pytest.raises(Internal) as caught:
            _hot.status_message(reply)
        assert caught.value.message == err.message
        return
    got = _hot.status_message(reply)
    assert _jsonable(got) == _jsonable(wanted)
    assert list(got) == list(wanted)


def _jsonable(msg: dict[str, Any]) -> Any:
    from sandboxd.cli._output import jsonable

    return jsonable(msg)


# -- the hot parser reads words as argparse does ------------------------------------------------

HOT_WORDS = [
    ["version"],
    ["--json", "version"],
    ["version", "--json"],
    ["--socket", "/s", "version"],
    ["--socket=/s", "--timing", "version"],
    ["--socket", "", "version"],
    ["--socket=", "version"],
    ["--call-timeout", "2.5", "status", "a"],
    ["--call-timeout=1e-3", "--socket", "/x", "--socket", "/y", "status", "a"],
    ["status", "a", "-v"],
    ["status", "-v", "a", "--json", "--verbose"],
    ["status", "version"],
    ["--socket", "status", "version"],
]
COLD_WORDS = [
    [],
    ["--help"],
    ["version", "-h"],
    ["--version"],
    ["--sock", "/s", "version"],
    ["--socket", "-s", "version"],
    ["--call-timeout", "-1", "version"],
    ["--call-timeout", "nan", "version"],
    ["--call-timeout", "soon", "version"],
    ["--json=1", "version"],
    ["version", "extra"],
    ["version", "--socket", "/s"],
    ["status"],
    ["status", "a", "b"],
    ["status", "-a"],
    ["status", "a", "--verb"],
    ["status", "a", "-vv"],
    ["status", "a", "--", "x"],
    ["list"],
    ["ping", "a"],
]


@pytest.mark.parametrize("words", HOT_WORDS)
def test_the_hot_parser_takes_what_argparse_reads_the_same_way(words: list[str]) -> None:
    hot = _hot.parse(words)
    assert hot is not None
    args = _commands.parser().parse_args(words)
    assert hot.name == args.subcommand
    assert (hot.socket, hot.call_timeout, hot.timing) == (
        args.socket,
        args.call_timeout,
        args.timing,
    )
    assert hot.as_json == getattr(args, "json", False)
    assert (hot.sandbox_id, hot.verbose) == (
        getattr(args, "sandbox_id", None),
        getattr(args, "verbose", False),
    )


@pytest.mark.parametrize("words", COLD_WORDS)
def test_the_hot_parser_leaves_anything_else_to_argparse(words: list[str]) -> None:
    assert _hot.parse(words) is None
