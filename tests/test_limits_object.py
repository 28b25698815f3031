"""The server's limits are one object, :class:`sandboxd.rpc.Limits`: checked as it is made,
passed through by the server, ``serve_controller`` and ``sandboxd serve``, and documented by
the README's Limits table, which is checked here against the code."""

from __future__ import annotations

import inspect
import math
import re
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from daemons import Daemons
from sandboxd import Controller, ResourceExhausted, Unavailable
from sandboxd.api import connect, serve_controller
from sandboxd.backends import SimBackend
from sandboxd.cli._serve import main as sandboxd_main
from sandboxd.rpc import (
    CallContext,
    Limits,
    Message,
    Server,
    SyncClient,
    open_client,
    unary,
)
from sandboxd.wire import MAX_DEPTH, MAX_PAYLOAD

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
WIRE_DOC = (ROOT / "docs" / "wire.md").read_text()
FIELDS = [field.name for field in attrs.fields(Limits)]
RUNTIME = "sandboxd.v1.Runtime"


# -- the README's table --------------------------------------------------------------------------


def readme_limits() -> dict[str, tuple[str, str]]:
    """The README's Limits table: ``{limit: (default, option)}``."""
    section = README.split("\n### Limits\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    table = {}
    for row in rows:
        limit, default, option, _ = (cell.strip() for cell in row.strip("|").split("|"))
        table[limit] = (default, option.strip("`"))
    return table


def number(text: str) -> float:
    """A default as the README writes it: ``1024``, ``100,000``, ``8 MiB``, ``30 s``."""
    value, _, unit = text.replace(",", "").partition(" ")
    return float(value) * {"": 1, "s": 1, "MiB": 1024 * 1024}[unit]


def default_of(call: Any, parameter: str) -> Any:
    return inspect.signature(call).parameters[parameter].default


def test_the_readme_table_has_each_limit_with_its_option_and_default() -> None:
    table = readme_limits()
    options = {option: default for default, option in table.values()}
    for field in attrs.fields(Limits):
        option = "--" + field.name.replace("_", "-")
        assert option in options, f"README's Limits table lacks {option}"
        assert number(options[option]) == field.default, option


def test_the_readme_table_s_other_limits_are_those_of_the_code() -> None:
    # Protocol constants (not settings), referenced by Limits; the other layers' own limits.
    where = {
        "(protocol)": lambda limit: {
            "frame payload": Limits.max_payload,
            "CBOR nesting depth": Limits.max_depth,
        }[limit],
        "stream_buffer=": lambda _: default_of(open_client, "stream_buffer"),
        "Controller(subscriber_buffer=)": lambda _: default_of(Controller, "subscriber_buffer"),
        "Controller(max_sandboxes=)": lambda _: default_of(Controller, "max_sandboxes"),
    }
    checked = 0
    for limit, (default, option) in readme_limits().items():
        if not option.startswith("--"):
            assert number(default) == where[option](limit), limit
            checked += 1
    assert checked == len(where) + 1
    assert (Limits.max_payload, Limits.max_depth) == (MAX_PAYLOAD, MAX_DEPTH)
    # Both reference clients buffer the same number of stream messages.
    assert default_of(SyncClient, "stream_buffer") == default_of(open_client, "stream_buffer")


def test_the_wire_document_s_table_agrees_with_limits() -> None:
    # docs/wire.md tells another implementation the same defaults and options.
    section = WIRE_DOC.split("\n### Limits\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    options = {}
    for row in rows:
        _, default, option, _ = (cell.strip() for cell in row.strip("|").split("|"))
        options[option.strip("`").split(" ")[0]] = default
    for field in attrs.fields(Limits):
        option = "--" + field.name.replace("_", "-")
        if option == "--grace":
            continue  # a daemon setting, not a bound on a client: the README has it
        assert option in options, f"docs/wire.md's Limits table lacks {option}"
        assert number(options[option].replace("seconds", "s")) == field.default, option


# -- the object ----------------------------------------------------------------------------------


def test_limits_are_a_frozen_slotted_value() -> None:
    limits = Limits(max_connections=5)
    assert limits == Limits(max_connections=5) != Limits()
    assert hash(limits) == hash(Limits(max_connections=5))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        limits.max_connections = 6  # type: ignore[misc]
    assert not hasattr(limits, "__dict__")
    assert attrs.evolve(limits, stall_timeout=1.5).stall_timeout == 1.5
    assert set(FIELDS) == {
        "max_connections",
        "max_calls_per_connection",
        "max_buffered_bytes",
        "stall_timeout",
        "grace",
    }
    assert all(attrs.fields_dict(Limits)[name].metadata["help"] for name in FIELDS)


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("bad", [-1, math.nan, True, "10", None])
def test_a_limit_that_is_not_a_number_of_its_range_is_refused_naming_it(
    name: str, bad: Any
) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        Limits(**{name: bad})


@pytest.mark.parametrize("name", [name for name in FIELDS if name != "grace"])
def test_a_limit_of_zero_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be positive, not 0$"):
        Limits(**{name: 0})


def test_counts_are_integers_and_durations_any_number() -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes must be of type int"):
        Limits(max_buffered_bytes=1.5)
    limits = Limits(stall_timeout=2, grace=0, max_connections=1)
    assert (limits.stall_timeout, limits.grace, limits.max_connections) == (2, 0, 1)
    assert Limits(stall_timeout=math.inf).stall_timeout == math.inf


# -- passed through ------------------------------------------------------------------------------


async def test_a_server_keeps_its_limits_and_shuts_down_within_their_grace(
    nursery: trio.Nursery, sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    held = trio.Event()

    async def hold(message: Message, ctx: CallContext) -> Message:
        held.set()
        await trio.sleep_forever()
        raise AssertionError("not reached")

    assert Server({}).limits == Limits()
    server = Server({"test.v1.Hold": {"Hold": unary(hold)}}, limits=Limits(grace=3))
    await nursery.start(server.serve_unix, sock_path)
    async with open_client(sock_path) as client:

        async def call_cut_by_the_shutdown() -> None:
            with pytest.raises(Unavailable):
                await client.call("test.v1.Hold", "Hold", {})

        nursery.start_soon(call_cut_by_the_shutdown)
        await held.wait()
        started = trio.current_time()
        await server.shutdown()
        assert trio.current_time() - started == pytest.approx(3)


async def test_serve_controller_passes_its_limits_to_the_server(
    nursery: trio.Nursery, sock_path: str
) -> None:
    controller = await nursery.start(Controller([SimBackend()], default_sandboxer="sim").run)
    await nursery.start(
        partial(serve_controller, controller, sock_path, limits=Limits(max_connections=1))
    )
    async with open_client(sock_path) as first, open_client(sock_path) as second:
        assert "protocol" in await first.call(RUNTIME, "Version", {})
        with pytest.raises(ResourceExhausted, match=r"\(limit 1\)"):
            await second.call(RUNTIME, "Version", {})


async def test_the_daemon_s_options_set_its_limits(daemons: Daemons) -> None:
    await daemons.start(args=["--max-connections", "2", "--max-calls-per-connection", "1"])
    async with connect(daemons.socket) as remote, open_client(daemons.socket) as other:
        await remote.create("a", sandboxer="sim")
        await remote.start("a")
        async with trio.open_nursery() as waiting:
            waiting.start_soon(remote.wait, "a")
            await trio.testing.wait_all_tasks_blocked()
            assert (await remote.version())["limits"]["max_calls_per_connection"] == 1
            # Our client never surfaces the call limit: with no connection to spare on the
            # server, the second Wait waits for room until its caller gives up.
            with trio.move_on_after(0.2) as scope:
                await remote.wait("a")
            assert scope.cancelled_caught
            assert remote.client.connections == 1
            waiting.cancel_scope.cancel()
        await remote.shutdown("a")
        async with open_client(daemons.socket) as third:
            with pytest.raises(ResourceExhausted, match=r"to this server \(limit 2\)"):
                await third.call(RUNTIME, "Version", {})
        assert "protocol" in await other.call(RUNTIME, "Version", {})


@pytest.mark.parametrize("name", FIELDS)
def test_the_daemon_refuses_an_option_its_limits_refuse(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    option = "--" + name.replace("_", "-")
    with pytest.raises(SystemExit) as exited:
        sandboxd_main(["serve", option, "-1"])
    assert exited.value.code == 2
    assert re.search(rf"argument {option}: {name} must be", capsys.readouterr().err)
