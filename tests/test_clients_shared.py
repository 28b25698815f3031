"""The whole Controller API behaves the same through the trio, the blocking and the asyncio
clients, against a real daemon (``sandboxd serve``) on a real socket.

Each test is written once against a :class:`~client_drivers.Driver` and runs over each client:
the same calls give the same models, the same refusals the same exception class, code and
message.  Exec, files and Logs have their own suite (test_data_plane_clients.py) on the same
drivers.  ``sim`` sandboxes serve where no process has to run; ``process`` ones where real exit
statuses and signals matter.  One daemon serves the whole module; each test names its
sandboxes after its client, so the tests do not see each other's.

How a caller gives up on a call is the one thing each client does its own way: a trio cancel
scope (``trio.fail_after``, ``trio.move_on_after``); ``asyncio.timeout``, ``task.cancel()``
or the ``timeout`` argument on asyncio; the ``timeout`` argument of a blocking call.  The
tests check that each of these ends the call, and the next one on the same client works.
"""

from __future__ import annotations

import inspect
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import sandboxd
from client_drivers import CLIENTS, Driver, open_driver
from daemons import STARTUP, Daemons, ReadyPipe, daemon_env
from sandboxd import (
    PROTOCOL_VERSION,
    AlreadyExists,
    Code,
    ExitStatus,
    FailedPrecondition,
    InvalidArgument,
    ListPage,
    Mount,
    NotFound,
    Platform,
    RemoteController,
    RPCError,
    SandboxEvent,
    SandboxInstance,
    SandboxOptions,
    SandboxState,
    SandboxStatus,
    SyncController,
    Unavailable,
)
from sandboxd._models import TOPIC_CREATE, TOPIC_DELETE, TOPIC_EXIT, TOPIC_START

#: Seconds a test may run before the watchdog fails it (asked for by name, as an argument).
GUARD = 20.0

SLEEPER = SandboxOptions(command=("sleep", "1000"))


@pytest.fixture(scope="module")
def daemon_socket() -> Iterator[str]:
    """The socket of one ``sandboxd serve`` for the module; at the end its sandboxes are shut
    down (a process sandbox outlives its daemon) and it is stopped."""
    directory = tempfile.mkdtemp(prefix="sbd-")
    path = os.path.join(directory, "s.sock")
    log = Path(directory) / "daemon.log"
    ready = ReadyPipe()
    args = ["--socket", path, "--state-dir", os.path.join(directory, "state")]
    process = ready.popen(args, log, daemon_env())
    try:
        ready.wait_sync(lambda: log.read_text(errors="replace"))
        yield path
        with SyncController(path, timeout=STARTUP) as client:
            for status in client.list():
                client.shutdown(status.sandbox_id)
    finally:
        process.terminate()
        try:
            process.wait(STARTUP)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=CLIENTS)
async def driver(
    request: pytest.FixtureRequest, daemon_socket: str, watchdog: None
) -> AsyncIterator[Driver]:
    async with open_driver(request.param, daemon_socket) as driver:
        yield driver


def name(driver: Driver, what: str) -> str:
    """A sandbox id of this test's own, on this client."""
    return f"{what}-{driver.name}"


async def started(driver: Driver, sandbox_id: str, **create: Any) -> SandboxInstance:
    create.setdefault("sandboxer", "process")
    create.setdefault("options", SLEEPER)
    assert await driver.call("create", sandbox_id, **create) == sandbox_id
    instance: SandboxInstance = await driver.call("start", sandbox_id)
    return instance


async def refusal(driver: Driver, method: str, *args: Any, **kwargs: Any) -> RPCError:
    """The error the call raises; fails the test if it succeeds."""
    with pytest.raises(RPCError) as caught:
        await driver.call(method, *args, **kwargs)
    return caught.value


async def life_of(box: str, events: AsyncIterator[SandboxEvent]) -> list[SandboxEvent]:
    """The events of ``box`` read from ``events``, up to its deletion."""
    seen: list[SandboxEvent] = []
    async for event in events:
        if event.sandbox_id == box:
            seen.append(event)
            if event.topic == TOPIC_DELETE:
                break
    return seen


# -- Version, Create, Start, Status, Platform, Ping, Metrics, List -----------------------------


async def test_version_names_the_release_and_protocol(driver: Driver) -> None:
    version = await driver.call("version")
    assert (version["version"], version["protocol"]) == (sandboxd.__version__, PROTOCOL_VERSION)


async def test_create_and_start_give_back_what_was_given(driver: Driver) -> None:
    box = name(driver, "made")
    labels = {"team": "a", "tier": "gold"}
    options = SandboxOptions(
        command=("true",),
        env={"A": "1"},
        cwd="/tmp",
        hostname="h",
        host_network=True,
        sim={"exit_code": 3},
    )
    mounts = [Mount("bind", "/tmp", "/mnt", ("ro",))]
    before = time.time()
    created = await driver.call(
        "create",
        box,
        sandboxer="sim",
        options=options,
        rootfs=mounts,
        netns_path="/proc/self/ns/net",
        annotations={"note": "kept"},
        labels=labels,
    )
    assert created == box
    status: SandboxStatus = await driver.call("status", box)
    assert (status.sandbox_id, status.state, status.pid, status.exited_at) == (
        box,
        SandboxState.CREATED,
        0,
        None,
    )
    assert status.info == {"sandboxer": "sim", "execs": "0"}
    assert before - 1 < status.created_at.timestamp() < time.time() + 1

    instance = await driver.call("start", box)
    assert instance == SandboxInstance(box, instance.pid, status.created_at, labels)
    ready: SandboxStatus = await driver.call("status", box)
    assert (ready.state, ready.pid, ready.created_at) == ("ready", instance.pid, status.created_at)
    assert set(ready.info) == {"sandboxer", "execs", "started_at"}
    verbose: SandboxStatus = await driver.call("status", box, verbose=True)
    assert verbose.info == {**ready.info, "sim": "true", "pid": str(instance.pid)}

    # a sandbox created without labels starts with none
    plain = name(driver, "plain")
    await driver.call("create", plain, sandboxer="sim")
    assert (await driver.call("start", plain)).labels == {}


async def test_status_of_a_stopped_process_tells_how_it_ended(driver: Driver) -> None:
    box = name(driver, "ended")
    instance = await started(driver, box, options=SandboxOptions(command=("sh", "-c", "exit 7")))
    assert instance.pid > 0
    exited: ExitStatus = await driver.call("wait", box)
    status: SandboxStatus = await driver.call("status", box)
    assert (status.state, status.pid, status.exited_at) == (
        "stopped",
        instance.pid,
        exited.exited_at,
    )
    assert status.info["exit_status"] == "7" == str(exited.exit_status)
    assert set(status.info) == {"sandboxer", "execs", "started_at", "exit_status"}
    verbose: SandboxStatus = await driver.call("status", box, verbose=True)
    assert verbose.info.items() >= status.info.items()
    assert {"command", "cwd", "pgid", "log"} <= set(verbose.info) - set(status.info)
    assert verbose.info["command"] == "sh -c 'exit 7'"


async def test_platform_ping_and_metrics_answer_while_the_sandbox_exists(driver: Driver) -> None:
    box = name(driver, "probe")
    instance = await started(driver, box)
    platform = await driver.call("platform", box)
    assert isinstance(platform, Platform) and platform.os == "linux" and platform.architecture
    assert await driver.call("ping", box) is None
    metrics = await driver.call("metrics", box)
    assert (metrics.sandbox_id, metrics.pids) == (box, 1)
    assert metrics.cpu_ns >= 0 and metrics.memory_rss_bytes > 0
    await driver.call("stop", box, timeout_secs=0)
    stopped = await driver.call("metrics", box)
    assert (stopped.cpu_ns, stopped.memory_rss_bytes, stopped.pids) == (0, 0, 0)
    assert stopped.timestamp >= metrics.timestamp
    await driver.call("shutdown", box)
    for method in ("ping", "platform", "metrics", "status"):
        err = await refusal(driver, method, box)
        assert (type(err), err.message) == (NotFound, f"sandbox '{box}' not found")
    assert instance.pid > 0


async def test_list_gives_the_sandboxes_carrying_every_label_asked(driver: Driver) -> None:
    suite = name(driver, "listed")
    ids = [f"{suite}-{n}" for n in (2, 0, 1)]
    for n, box in enumerate(ids):
        labels = {"suite": suite, "kind": "even" if n % 2 == 0 else "odd"}
        await driver.call("create", box, sandboxer="sim", labels=labels)
    await driver.call("start", ids[0])

    listed: list[SandboxStatus] = await driver.call("list", {"suite": suite})
    assert [s.sandbox_id for s in listed] == sorted(ids)
    assert [s.state for s in listed] == ["created", "created", "ready"]
    assert listed[2] == await driver.call("status", ids[0])  # never verbose
    even = await driver.call("list", {"suite": suite, "kind": "even"})
    assert [s.sandbox_id for s in even] == sorted([ids[0], ids[2]])
    assert await driver.call("list", {"suite": suite, "kind": "none"}) == []
    everything = [s.sandbox_id for s in await driver.call("list")]
    assert set(ids) <= set(everything) and everything == sorted(everything)
    await driver.call("shutdown", ids[1])
    assert len(await driver.call("list", labels={"suite": suite})) == 2


async def test_list_page_gives_one_page_and_the_token_of_the_next(driver: Driver) -> None:
    suite = name(driver, "paged")
    ids = sorted(f"{suite}-{n}" for n in range(5))
    for box in ids:
        await driver.call("create", box, sandboxer="sim", labels={"suite": suite})

    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = await driver.call("list_page", {"suite": suite}, limit=2, page_token=token)
        assert isinstance(page, ListPage) and len(page.sandboxes) <= 2
        seen += [s.sandbox_id for s in page.sandboxes]
        pages += 1
        token = page.next_page_token
        if token is None:
            break
    assert seen == ids and pages >= 3
    with pytest.raises(InvalidArgument, match="limit"):
        await driver.call("list_page", limit=0)


# -- Wait, Stop, Shutdown --------------------------------------------------------------------


async def test_a_wait_is_parked_while_the_sandbox_runs_and_released_by_stop(
    driver: Driver,
) -> None:
    box = name(driver, "parked")
    await started(driver, box)
    with pytest.raises(driver.deadline_error):
        await driver.call_within(0.1, "wait", box)
    results: list[ExitStatus] = []

    async def wait() -> None:
        results.append(await driver.call("wait", box))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        nursery.start_soon(wait)
        assert (await driver.call("status", box)).state == "ready"
        await driver.call("stop", box, timeout_secs=5)
    assert [r.exit_status for r in results] == [128 + signal.SIGTERM] * 2
    assert results[0] == results[1] == await driver.call("wait", box)


async def test_stop_kills_at_the_end_of_its_grace_and_the_earlier_kill_wins(
    driver: Driver,
) -> None:
    stubborn = SandboxOptions(sim={"ignore_sigterm": True})
    graced = name(driver, "graced")
    await started(driver, graced, sandboxer="sim", options=stubborn)
    begun = time.monotonic()
    await driver.call("stop", graced, timeout_secs=0.3)
    assert time.monotonic() - begun >= 0.3
    assert (await driver.call("wait", graced)).exit_status == 128 + signal.SIGKILL

    # a Stop given up on goes on; a second one with an earlier kill brings it forward
    joined = name(driver, "joined")
    await started(driver, joined, sandboxer="sim", options=stubborn)
    with pytest.raises(driver.deadline_error):
        await driver.call_within(0.1, "stop", joined, timeout_secs=100)
    assert (await driver.call("status", joined)).state == "stopping"
    await driver.call("stop", joined, timeout_secs=0)
    assert (await driver.call("wait", joined)).exit_status == 128 + signal.SIGKILL

    # a sandbox never started stops with 0, at once
    never = name(driver, "never")
    await driver.call("create", never, sandboxer="sim")
    await driver.call("stop", never)
    assert (await driver.call("wait", never)).exit_status == 0
    assert (await driver.call("status", never)).pid == 0


async def test_shutdown_kills_at_once_deletes_and_frees_the_id(driver: Driver) -> None:
    box = name(driver, "gone")
    async with driver.events() as events:
        await started(driver, box)
        await driver.call("shutdown", box)
        seen = await life_of(box, events)
    assert [(e.topic, e.exit_status) for e in seen] == [
        (TOPIC_CREATE, None),
        (TOPIC_START, None),
        (TOPIC_EXIT, 128 + signal.SIGKILL),
        (TOPIC_DELETE, None),
    ]
    err = await refusal(driver, "wait", box)
    assert (type(err), err.code) == (NotFound, Code.NOT_FOUND)
    await started(driver, box, sandboxer="sim")  # the id is free again
    await driver.call("shutdown", box)


# -- Events ----------------------------------------------------------------------------------


async def test_events_tell_one_sandboxs_life_in_order(driver: Driver) -> None:
    box = name(driver, "watched")
    async with driver.events() as events:
        await driver.call("create", box, sandboxer="sim")
        instance = await driver.call("start", box)
        await driver.call("stop", box)
        exited = await driver.call("wait", box)
        await driver.call("shutdown", box)
        seen = await life_of(box, events)
    assert [e.topic for e in seen] == [TOPIC_CREATE, TOPIC_START, TOPIC_EXIT, TOPIC_DELETE]
    create, _, exit_, delete = seen
    assert create.timestamp == instance.created_at
    assert (exit_.exit_status, exit_.timestamp) == (exited.exit_status, exited.exited_at)
    assert exited.exit_status == 128 + signal.SIGTERM
    assert delete.exit_status is None and delete.timestamp >= exit_.timestamp
    # the subscription ended with the block; the client goes on
    assert await driver.call("list", {"none": "such"}) == []


# -- refusals --------------------------------------------------------------------------------


async def test_the_same_refusals_with_the_same_class_code_and_message(driver: Driver) -> None:
    box = name(driver, "refused")
    missing = name(driver, "missing")
    await started(driver, box, sandboxer="sim")
    expected: list[tuple[type[RPCError], str, tuple[str, tuple[Any, ...], dict[str, Any]]]] = [
        (NotFound, f"sandbox '{missing}' not found", ("status", (missing,), {})),
        (NotFound, f"sandbox '{missing}' not found", ("stop", (missing,), {})),
        (AlreadyExists, f"sandbox '{box}' already exists", ("create", (box,), {})),
        (
            NotFound,
            "sandboxer 'nosuch' not found (available: bwrap, process, sim)",
            ("create", (missing,), {"sandboxer": "nosuch"}),
        ),
        (
            FailedPrecondition,
            f"sandbox '{box}' cannot be started: it is already running",
            ("start", (box,), {}),
        ),
        (
            InvalidArgument,
            "Stop.timeout_secs: must be >= 0",
            ("stop", (box,), {"timeout_secs": -1}),
        ),
        (
            InvalidArgument,
            "options.sim.exit_code: must be in 0..255, not 300",
            (
                "create",
                (missing,),
                {"sandboxer": "sim", "options": SandboxOptions(sim={"exit_code": 300})},
            ),
        ),
        (
            InvalidArgument,
            "Status: sandbox_id 'a..b': must be letters and digits, separated by single '.', "
            "'_' or '-'",
            ("status", ("a..b",), {}),
        ),
    ]
    for cls, message, (method, args, kwargs) in expected:
        err = await refusal(driver, method, *args, **kwargs)
        assert (type(err), err.code, err.message) == (cls, cls.code, message), method
    await driver.call("stop", box)
    err = await refusal(driver, "start", box)
    assert (type(err), err.message) == (
        FailedPrecondition,
        f"sandbox '{box}' cannot be started: it has stopped; a sandbox runs once",
    )


async def test_every_client_gives_equal_models_and_errors(
    daemon_socket: str, watchdog: None
) -> None:
    box = "same-everywhere"
    async with open_driver("trio", daemon_socket) as first:
        await started(first, box, labels={"k": "v"})
        answers: dict[str, list[Any]] = {}
        for client in CLIENTS:
            async with open_driver(client, daemon_socket) as driver:
                answers[client] = [
                    await driver.call("status", box),
                    await driver.call("status", box, verbose=True),
                    await driver.call("list", {"k": "v"}),
                    await driver.call("platform", box),
                    await driver.call("version"),
                    repr(await refusal(driver, "start", box)),
                    repr(await refusal(driver, "ping", "nobox")),
                ]
        assert answers["sync"] == answers["trio"] == answers["asyncio"]
        await first.call("shutdown", box)


async def test_the_clients_have_the_same_methods_with_the_same_arguments() -> None:
    """Every method of one client is in the others, with the same parameters and defaults;
    the blocking and asyncio clients add ``timeout`` to each but ``events`` (trio code uses a
    cancel scope),
    and each client closes the way its kind does (a ``with`` block, ``close``, ``aclose``)."""

    def methods(cls: type) -> dict[str, list[tuple[str, Any, Any]]]:
        found = {}
        for attr, fn in vars(cls).items():
            if attr.startswith("_") or not callable(fn) or attr in {"close", "aclose"}:
                continue
            parameters = inspect.signature(fn).parameters.values()
            found[attr] = [(p.name, p.kind, p.default) for p in parameters if p.name != "timeout"]
            # a subscription lasts until its block is left: no call timeout ends it
            if cls is not RemoteController and attr != "events":
                assert parameters_named(fn, "timeout") == [(inspect.Parameter.KEYWORD_ONLY, None)]
        return found

    trio_methods = methods(RemoteController)
    assert methods(SyncController) == trio_methods == methods(sandboxd.aio.AsyncController)
    assert set(trio_methods) == set(EXERCISED)


def parameters_named(fn: Any, parameter: str) -> list[tuple[Any, Any]]:
    return [
        (p.kind, p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.name == parameter
    ]


#: The methods the shared suites call: this one, and test_data_plane_clients.py.
EXERCISED = {
    "version",
    "create",
    "start",
    "status",
    "platform",
    "ping",
    "metrics",
    "list",
    "list_page",
    "wait",
    "stop",
    "shutdown",
    "events",
    "exec",
    "exec_sync",
    "logs",
    "write_file",
    "read_file",
}


# -- giving up on a call, closing a client ------------------------------------------------------


@pytest.mark.parametrize("how", ["deadline", "cancel"])
async def test_a_call_given_up_on_leaves_the_sandbox_and_the_client_as_they_were(
    driver: Driver, how: Any
) -> None:
    box = name(driver, f"given-up-{how}")
    await started(driver, box, sandboxer="sim")
    for _ in range(3):
        await driver.give_up(how, 0.05, "wait", box)
    assert (await driver.call("status", box)).state == "ready"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.call, "wait", box)
        await driver.call("stop", box)
    assert (await driver.call("wait", box)).exit_status == 128 + signal.SIGTERM


async def test_a_clients_default_timeout_bounds_every_call(driver: Driver) -> None:
    box = name(driver, "bounded")
    await started(driver, box, sandboxer="sim")
    async with driver.another(timeout=0.1) as bounded:
        with pytest.raises(driver.deadline_error):
            await bounded.call("wait", box)
        assert (await bounded.call("status", box)).state == "ready"
    await driver.call("shutdown", box)


async def test_a_closed_client_refuses_calls_and_ends_those_waiting(driver: Driver) -> None:
    box = name(driver, "closed")
    await started(driver, box, sandboxer="sim")

    async def parked(other: Driver) -> None:
        err = await refusal(other, "wait", box)
        assert type(err) is Unavailable

    async with trio.open_nursery() as nursery, driver.another() as other:
        assert (await other.call("status", box)).state == "ready"
        nursery.start_soon(parked, other)
        await other.close()
        err = await refusal(other, "status", box)
        assert type(err) is Unavailable
    assert (await driver.call("status", box)).state == "ready"
    await driver.call("shutdown", box)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_daemon_going_away_ends_the_events_and_the_waits(
    client: str, daemons: Daemons, watchdog: None
) -> None:
    daemon = await daemons.start()
    async with open_driver(client, daemon.socket) as driver:
        await started(driver, "leaving", sandboxer="sim")
        failed: list[RPCError] = []

        async def wait() -> None:
            failed.append(await refusal(driver, "wait", "leaving"))

        async with driver.events() as events, trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            # The Wait is sent before the Status on the one connection, so it is parked by
            # the time the Status is answered (sync: sent from its thread, in either order).
            await trio.testing.wait_all_tasks_blocked()
            assert (await driver.call("status", "leaving")).state == "ready"
            assert await daemon.terminate() == 0
            assert [e async for e in events] == []  # the stream ended, with no error
        assert [type(err) for err in failed] == [Unavailable]
        err = await refusal(driver, "status", "leaving")
        assert type(err) is Unavailable
