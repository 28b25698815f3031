"""End-to-end tests of ``sandboxd.v1.Controller`` over a real Unix socket.

Each test serves a running :class:`~sandboxd.runtime.Controller` with a real
:class:`sandboxd.rpc.Server` on a Unix socket in the test's nursery and talks to it with the
clients a user would use: :class:`~sandboxd.api.RemoteController` for the typed API, and the
RPC :class:`~sandboxd.rpc.Client` with plain dict messages where the wire format itself is
what is checked.  A few tests speak raw frames to close a connection abruptly.

Waiting is done on ``wait_all_tasks_blocked`` (client, server and controller all run in this
process, and Unix socket writes are readable at once, so "every task is blocked" means every
request sent has been handled as far as it can be), on trio events, and on the autojump clock
for the Stop grace period; the watchdog fails a test that hangs.
"""

from __future__ import annotations

import enum
import gc
import os
import platform as stdlib_platform
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from daemons import Served
from peers import Peer
from procs import Reaper, is_alive
from sandboxd import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RPCError,
    Unavailable,
)
from sandboxd._models import (
    TOPIC_CREATE,
    TOPIC_DELETE,
    TOPIC_EXIT,
    TOPIC_START,
    SandboxOptions,
    SandboxState,
)
from sandboxd.api import (
    CONTROLLER_SERVICE,
    RemoteController,
    connect,
    serve_controller,
)
from sandboxd.rpc import Client, open_client
from sandboxd.runtime import Controller, open_controller

pytestmark = pytest.mark.usefixtures("watchdog")
C = CONTROLLER_SERVICE
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0
#: The first pid a fresh SimBackend hands out (``sandboxd.backends._sim.FIRST_SIM_PID``).
FIRST_SIM_PID = 1000
SIM = "sim"
PROCESS = "process"
TIMESTAMP = "<timestamp>"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def sandboxd_controller_options() -> dict[str, Any]:
    """The ``served`` Controller's options: its defaults (stop timeout, default sandboxer)."""
    return {}


def aware(value: object) -> bool:
    return isinstance(value, datetime) and value.tzinfo is not None


# -- 1. parity: one driver, in process and over the socket ------------------------------------

Log = list[tuple[str, Any]]


def plain(value: Any) -> Any:
    """A result as plain data to compare; timestamps (checked aware) become a marker."""
    if isinstance(value, datetime):
        assert value.tzinfo is not None, f"naive timestamp {value!r}"
        return TIMESTAMP
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        return {f.name: plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if key == "started_at":  # info carries it as ISO text
                assert aware(datetime.fromisoformat(item)), item
                out[key] = TIMESTAMP
            else:
                out[key] = plain(item)
        return out
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


async def drive(ctrl: Controller | RemoteController) -> Log:
    """One scripted session against the Controller interface; every outcome, in order.

    Outcomes are results as plain data, or ``(error class, message)``.  INVALID_ARGUMENT
    messages are allowed to differ (the server prefixes the method: ``Status: sandbox_id
    ...``), so for those only the class is logged and the field is checked to be named.
    """
    log: Log = []
    labels_seen: set[str] = set()

    async def step(
        label: str, fn: Callable[..., Any], *args: Any, mentions: str = "", **kwargs: Any
    ) -> Any:
        assert label not in labels_seen, label
        labels_seen.add(label)
        try:
            result = await fn(*args, **kwargs)
        except InvalidArgument as err:
            assert mentions in err.message, (label, err.message)
            log.append((label, "InvalidArgument"))
            return None
        except RPCError as err:
            log.append((label, (type(err).__name__, err.message)))
            return None
        log.append((label, plain(result)))
        return result

    sim_exit_7 = SandboxOptions(sim={"exit_after": 0, "exit_code": 7})
    await step("create alpha", ctrl.create, "alpha", sandboxer=SIM, labels={"team": "a"})
    await step("create alpha twice", ctrl.create, "alpha", sandboxer=SIM)
    await step("status alpha created", ctrl.status, "alpha")
    await step("ping alpha", ctrl.ping, "alpha")
    await step("platform alpha", ctrl.platform, "alpha")
    await step("metrics alpha created", ctrl.metrics, "alpha")
    await step("start alpha", ctrl.start, "alpha")
    await step("start alpha twice", ctrl.start, "alpha")
    await step("status alpha ready", ctrl.status, "alpha", verbose=True)
    await step("metrics alpha ready", ctrl.metrics, "alpha")
    await step("create beta", ctrl.create, "beta", sandboxer=SIM, options=sim_exit_7)
    await step("start beta", ctrl.start, "beta")
    await step("wait beta", ctrl.wait, "beta")
    await step("list all", ctrl.list)
    await step("list team a", ctrl.list, {"team": "a"})
    await step("list team z", ctrl.list, {"team": "z"})
    await step("stop alpha", ctrl.stop, "alpha")
    await step("wait alpha", ctrl.wait, "alpha")
    await step("stop alpha again", ctrl.stop, "alpha", timeout_secs=0)
    await step("status alpha stopped", ctrl.status, "alpha")
    await step("start alpha stopped", ctrl.start, "alpha")
    await step("shutdown alpha", ctrl.shutdown, "alpha")
    for name in ("status", "ping", "platform", "metrics", "wait", "stop", "start", "shutdown"):
        await step(f"{name} alpha gone", getattr(ctrl, name), "alpha")
    await step("create alpha anew", ctrl.create, "alpha", sandboxer=SIM)
    await step("shutdown alpha unstarted", ctrl.shutdown, "alpha")
    await step("create unknown sandboxer", ctrl.create, "gamma", sandboxer="no-such")
    await step(
        "create bad sim setting",
        ctrl.create,
        "gamma",
        sandboxer=SIM,
        options=SandboxOptions(sim={"no_such_setting": 1}),
        mentions="options.sim.no_such_setting",
    )
    for bad in ("a b", "-x", "x" * 77, ""):
        await step(f"create {bad!r}", ctrl.create, bad, sandboxer=SIM, mentions="sandbox_id")
        for name in ("status", "start", "stop", "wait", "shutdown", "ping", "metrics"):
            await step(f"{name} {bad!r}", getattr(ctrl, name), bad, mentions="sandbox_id")
    await step(
        "stop negative timeout", ctrl.stop, "beta", timeout_secs=-1, mentions="timeout_secs"
    )
    failing = SandboxOptions(sim={"start_error": "boom"})
    await step("create delta", ctrl.create, "delta", sandboxer=SIM, options=failing)
    await step("start delta fails", ctrl.start, "delta")
    await step("status delta after failed start", ctrl.status, "delta")
    await step("stop delta unstarted", ctrl.stop, "delta")
    await step("wait delta", ctrl.wait, "delta")
    await step("status delta stopped", ctrl.status, "delta")
    await step("shutdown beta", ctrl.shutdown, "beta")
    await step("shutdown delta", ctrl.shutdown, "delta")
    await step("list empty", ctrl.list)
    return log


async def test_parity_in_process_and_over_the_socket(sock_path: str) -> None:
    async with open_controller(default_sandboxer="process") as local:
        local_log = await drive(local)
    async with (
        open_controller(default_sandboxer="process") as controller,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(serve_controller, controller, sock_path)
        async with connect(sock_path) as remote:
            remote_log = await drive(remote)
        nursery.cancel_scope.cancel()

    assert [label for label, _ in remote_log] == [label for label, _ in local_log]
    for (label, got), (_, want) in zip(remote_log, local_log, strict=True):
        assert got == want, label

    # The driver did real work: spot-check what both sides agreed on.
    out = dict(local_log)
    assert out["create alpha"] == "alpha"
    assert out["create alpha twice"][0] == AlreadyExists.__name__
    assert out["status alpha created"]["pid"] == 0
    assert out["status alpha created"]["state"] == "created"
    assert out["platform alpha"]["os"] == "linux"
    assert out["start alpha"] == {
        "sandbox_id": "alpha",
        "pid": FIRST_SIM_PID,
        "created_at": TIMESTAMP,
        "labels": {"team": "a"},
    }
    assert out["start alpha twice"][0] == FailedPrecondition.__name__
    assert out["status alpha ready"]["state"] == "ready"
    assert out["status alpha ready"]["info"]["sim"] == "true"
    assert out["metrics alpha ready"]["pids"] == 1
    assert out["start beta"]["pid"] == FIRST_SIM_PID + 1
    assert out["wait beta"] == {"exit_status": 7, "exited_at": TIMESTAMP}
    assert [s["sandbox_id"] for s in out["list all"]] == ["alpha", "beta"]
    assert [s["state"] for s in out["list all"]] == ["ready", "stopped"]
    assert [s["sandbox_id"] for s in out["list team a"]] == ["alpha"]
    assert out["list team z"] == []
    assert out["wait alpha"] == {"exit_status": 143, "exited_at": TIMESTAMP}
    assert out["status alpha stopped"]["state"] == "stopped"
    assert out["status alpha stopped"]["exited_at"] == TIMESTAMP
    assert out["status alpha stopped"]["info"]["exit_status"] == "143"
    for name in ("status", "ping", "platform", "metrics", "wait", "stop", "start", "shutdown"):
        assert out[f"{name} alpha gone"][0] == NotFound.__name__, name
    assert out["create unknown sandboxer"][0] == NotFound.__name__
    assert out["create bad sim setting"] == "InvalidArgument"
    assert out["stop negative timeout"] == "InvalidArgument"
    assert out["start delta fails"] == (FailedPrecondition.__name__, out["start delta fails"][1])
    assert "boom" in out["start delta fails"][1]
    assert out["status delta after failed start"]["state"] == "created"
    assert out["wait delta"]["exit_status"] == 0
    assert out["list empty"] == []


# -- 2. the wire format, with dict messages --------------------------------------------------


async def test_wire_format_of_replies(served: Served) -> None:
    async with open_client(served.path) as client:
        assert await client.call(
            C, "Create", {"sandbox_id": "w1", "sandboxer": SIM, "labels": {"k": "v"}}
        ) == {"sandbox_id": "w1"}

        status = await client.call(C, "Status", {"sandbox_id": "w1"})
        assert set(status) == {"sandbox_id", "pid", "state", "info", "created_at"}
        assert status["sandbox_id"] == "w1"
        assert status["pid"] == 0
        assert status["state"] == "created"
        assert aware(status["created_at"])
        assert all(type(k) is str and type(v) is str for k, v in status["info"].items())
        assert await client.call(C, "Ping", {"sandbox_id": "w1"}) == {}

        started = await client.call(C, "Start", {"sandbox_id": "w1"})
        assert set(started) == {"sandbox_id", "pid", "created_at", "labels"}
        assert started["sandbox_id"] == "w1"
        assert type(started["pid"]) is int
        assert started["pid"] == FIRST_SIM_PID
        assert aware(started["created_at"])  # CBOR tag 1, decoded
        assert started["created_at"] == status["created_at"]
        assert started["labels"] == {"k": "v"}

        status = await client.call(C, "Status", {"sandbox_id": "w1", "verbose": True})
        assert status["state"] == "ready"
        assert status["pid"] == started["pid"]
        assert "exited_at" not in status

        platform = await client.call(C, "Platform", {"sandbox_id": "w1"})
        assert set(platform) == {"platform"}
        assert set(platform["platform"]) == {"os", "architecture", "variant"}
        assert platform["platform"]["os"] == "linux" == stdlib_platform.system().lower()
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(stdlib_platform.machine())
        if arch is not None:
            assert platform["platform"]["architecture"] == arch

        metrics = await client.call(C, "Metrics", {"sandbox_id": "w1"})
        assert set(metrics) == {"sandbox_id", "timestamp", "cpu_ns", "memory_rss_bytes", "pids"}
        assert aware(metrics["timestamp"])

        listed = await client.call(C, "List", {})
        assert set(listed) == {"sandboxes"}
        assert [s["sandbox_id"] for s in listed["sandboxes"]] == ["w1"]
        assert await client.call(C, "List", {"labels": {"k": "other"}}) == {"sandboxes": []}

        assert await client.call(C, "Stop", {"sandbox_id": "w1", "timeout_secs": 1.5}) == {}
        waited = await client.call(C, "Wait", {"sandbox_id": "w1"})
        assert set(waited) == {"exit_status", "exited_at"}
        assert waited["exit_status"] == 143
        assert aware(waited["exited_at"])

        status = await client.call(C, "Status", {"sandbox_id": "w1"})
        assert status["state"] == "stopped"
        assert status["exited_at"] == waited["exited_at"]
        assert status["info"]["exit_status"] == "143"

        assert await client.call(C, "Shutdown", {"sandbox_id": "w1"}) == {}
        with pytest.raises(NotFound):
            await client.call(C, "Status", {"sandbox_id": "w1"})


async def test_status_state_strings(served: Served) -> None:
    async with open_client(served.path) as client:

        async def state(sandbox_id: str) -> str:
            reply = await client.call(C, "Status", {"sandbox_id": sandbox_id})
            return reply["state"]

        await client.call(C, "Create", {"sandbox_id": "s1", "sandboxer": SIM})
        assert await state("s1") == "created"
        await client.call(C, "Start", {"sandbox_id": "s1"})
        assert await state("s1") == "ready"
        await client.call(C, "Stop", {"sandbox_id": "s1"})
        assert await state("s1") == "stopped"
    assert {s.value for s in SandboxState} == {"created", "ready", "stopping", "stopped"}


# -- 3. strict conversion of requests --------------------------------------------------------

STRICT_CASES = [
    pytest.param("Create", {"sandbox_id": 5}, "sandbox_id", id="create-id-int"),
    pytest.param(
        "Create",
        {"sandbox_id": "n", "sandboxer": SIM, "options": {"command": "sleep 1"}},
        "options.command",
        id="command-text",
    ),
    pytest.param(
        "Create",
        {"sandbox_id": "n", "sandboxer": SIM, "options": {"env": {"A": 1}}},
        "options.env['A']",
        id="env-value-int",
    ),
    pytest.param(
        "Create",
        {"sandbox_id": "n", "sandboxer": SIM, "labels": ["a", "b"]},
        "labels",
        id="labels-array",
    ),
    pytest.param(
        "Create",
        {
            "sandbox_id": "n",
            "sandboxer": SIM,
            "rootfs": [{"type": "bind", "source": "/tmp", "options": []}],
        },
        "rootfs[0]: field 'target'",
        id="rootfs-target-missing",
    ),
    pytest.param(
        "Create",
        {"sandbox_id": "n", "sandboxer": SIM, "bogus": 1},
        "unknown field 'bogus'",
        id="create-unknown-field",
    ),
    pytest.param(
        "Create",
        {"sandbox_id": "n", "sandboxer": SIM, "options": {"host_network": 1}},
        "options.host_network",
        id="host-network-int",
    ),
    *(
        pytest.param(
            "Create",
            {"sandbox_id": "n", "sandboxer": SIM, "options": {"lifetime_secs": value}},
            "options.lifetime_secs",
            id=f"lifetime-{value!r}",
        )
        for value in ("5", 0, -1.5, True, float("inf"))
    ),
    pytest.param(
        "Stop", {"sandbox_id": "present", "timeout_secs": "5"}, "timeout_secs", id="stop-text"
    ),
    pytest.param(
        "Stop", {"sandbox_id": "present", "timeout_secs": -1}, "timeout_secs", id="stop-negative"
    ),
    pytest.param(
        "Stop", {"sandbox_id": "present", "timeout_secs": True}, "timeout_secs", id="stop-bool"
    ),
    pytest.param(
        "Stop", {"sandbox_id": "present", "force": True}, "unknown field 'force'", id="stop-field"
    ),
    pytest.param("Status", {"sandbox_id": "present", "verbose": 1}, "verbose", id="verbose-int"),
    pytest.param("Start", {}, "sandbox_id", id="start-id-missing"),
]


@pytest.mark.parametrize(("method", "message", "needle"), STRICT_CASES)
async def test_wrong_field_is_invalid_argument_naming_it(
    served: Served, method: str, message: dict[str, Any], needle: str
) -> None:
    async with open_client(served.path) as client:
        await client.call(C, "Create", {"sandbox_id": "present", "sandboxer": SIM})
        with pytest.raises(InvalidArgument) as caught:
            await client.call(C, method, message)
        assert needle in caught.value.message
        # Nothing happened: no sandbox was created, the existing one is untouched.
        listed = await client.call(C, "List", {})
        assert [(s["sandbox_id"], s["state"]) for s in listed["sandboxes"]] == [
            ("present", "created")
        ]


ID_METHODS = ("Create", "Start", "Platform", "Stop", "Wait", "Status", "Shutdown", "Ping")
ID_METHODS += ("Metrics",)


async def test_invalid_id_is_invalid_argument_on_every_method(served: Served) -> None:
    wrong: list[str] = []
    async with open_client(served.path) as client:
        for bad in ("a b", "-x", "x" * 77, "", "a..b", 7):
            for method in ID_METHODS:
                message: dict[str, Any] = {"sandbox_id": bad}
                if method == "Create":
                    message["sandboxer"] = SIM
                try:
                    await client.call(C, method, message, timeout=2)
                except InvalidArgument as err:
                    if "sandbox_id" not in err.message:
                        wrong.append(f"{method}({bad!r}): message {err.message!r}")
                except RPCError as err:
                    wrong.append(f"{method}({bad!r}): {err!r}")
                else:
                    wrong.append(f"{method}({bad!r}): succeeded")
        assert await client.call(C, "List", {}) == {"sandboxes": []}
    assert wrong == []


async def test_unknown_sandboxer_is_not_found(served: Served) -> None:
    async with open_client(served.path) as client:
        with pytest.raises(NotFound) as caught:
            await client.call(C, "Create", {"sandbox_id": "u", "sandboxer": "warp-drive"})
        assert "warp-drive" in caught.value.message
        with pytest.raises(NotFound):
            await client.call(C, "Status", {"sandbox_id": "u"})


@pytest.mark.parametrize("argv0", ["no-such-executable-sbd", "/nonexistent/bin/x"])
async def test_missing_executable_is_invalid_argument_at_create(
    served: Served, argv0: str
) -> None:
    async with connect(served.path) as remote:
        with pytest.raises(InvalidArgument) as caught:
            await remote.create(
                "nx", sandboxer=PROCESS, options=SandboxOptions(command=[argv0, "1"])
            )
        assert "options.command" in caught.value.message
        assert argv0 in caught.value.message
        assert await remote.list() == []


# -- 4. a real process, over the socket --------------------------------------------------------


async def test_process_sandbox_whole_life(served: Served, reaper: Reaper) -> None:
    async with connect(served.path) as remote:
        sleeper = SandboxOptions(command=["sleep", "1000"])
        assert await remote.create("p1", sandboxer=PROCESS, options=sleeper) == "p1"
        assert (await remote.status("p1")).pid == 0
        instance = await remote.start("p1")
        reaper.add(instance.pid)
        assert instance.pid > 0
        os.kill(instance.pid, 0)  # a live process
        assert is_alive(instance.pid)
        status = await remote.status("p1", verbose=True)
        assert status.state is SandboxState.READY
        assert status.pid == instance.pid
        assert status.info["command"] == "sleep 1000"
        assert (await remote.metrics("p1")).pids >= 1

        await remote.stop("p1")  # default timeout: SIGTERM ends sleep at once
        exit_status = await remote.wait("p1")
        assert exit_status.exit_status == 143
        assert aware(exit_status.exited_at)
        assert not is_alive(instance.pid)
        status = await remote.status("p1")
        assert status.state is SandboxState.STOPPED
        assert status.exited_at == exit_status.exited_at

        await remote.shutdown("p1")
        with pytest.raises(NotFound):
            await remote.status("p1")
        with pytest.raises(NotFound):
            await remote.wait("p1")


async def test_process_exit_code_without_stop(served: Served, reaper: Reaper) -> None:
    async with connect(served.path) as remote:
        await remote.create(
            "p5", sandboxer=PROCESS, options=SandboxOptions(command=["sh", "-c", "exit 5"])
        )
        reaper.add((await remote.start("p5")).pid)
        assert (await remote.wait("p5")).exit_status == 5
        assert (await remote.status("p5")).state is SandboxState.STOPPED
        await remote.shutdown("p5")


async def test_process_stop_with_zero_timeout_kills(served: Served, reaper: Reaper) -> None:
    async with connect(served.path) as remote:
        # SIGTERM is ignored: only a SIGKILL can end it, and a zero timeout sends one at once.
        stubborn = SandboxOptions(command=["sh", "-c", "trap '' TERM; sleep 1000 & wait"])
        await remote.create("p9", sandboxer=PROCESS, options=stubborn)
        reaper.add((await remote.start("p9")).pid)
        await remote.stop("p9", timeout_secs=0)
        assert (await remote.wait("p9")).exit_status == 137
        await remote.shutdown("p9")


# -- 5. deadlines, cancellation, concurrency ---------------------------------------------------


async def test_wait_with_a_deadline_leaves_the_sandbox_untouched(
    served: Served, autojump_clock: trio.testing.MockClock
) -> None:
    async with connect(served.path) as remote:
        await remote.create("dl", sandboxer=SIM)
        await remote.start("dl")

        with trio.move_on_after(0.2) as scope:
            await remote.wait("dl")
        assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert served.server.in_flight == 0  # the server was told to give up too
        assert (await remote.status("dl")).state is SandboxState.READY

        with pytest.raises(DeadlineExceeded):
            await remote.client.call(C, "Wait", {"sandbox_id": "dl"}, timeout=0.2)
        await trio.testing.wait_all_tasks_blocked()
        assert served.server.in_flight == 0
        assert (await remote.status("dl")).state is SandboxState.READY

        await remote.stop("dl")
        assert (await remote.wait("dl")).exit_status == 143


async def test_waiters_are_woken_by_shutdown(served: Served) -> None:
    results: dict[str, list[int]] = {"run": [], "new": []}
    async with (
        connect(served.path) as one,
        connect(served.path) as two,
        trio.open_nursery() as nursery,
    ):
        await one.create("run", sandboxer=SIM)
        await one.start("run")
        await one.create("new", sandboxer=SIM)  # never started

        async def waiter(remote: RemoteController, sandbox_id: str) -> None:
            results[sandbox_id].append((await remote.wait(sandbox_id)).exit_status)

        for remote in (one, one, two):
            for sandbox_id in ("run", "new"):
                nursery.start_soon(waiter, remote, sandbox_id)
        await trio.testing.wait_all_tasks_blocked()
        assert served.server.in_flight == 6  # all six Waits are parked on the server
        await two.shutdown("run")
        await one.shutdown("new")
    assert results == {"run": [137] * 3, "new": [0] * 3}
    async with connect(served.path) as remote:
        with pytest.raises(NotFound):
            await remote.status("run")
        assert await remote.list() == []


async def test_status_answers_while_a_stop_is_in_progress(
    served: Served, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async with connect(served.path) as remote, connect(served.path) as other:
        deaf = SandboxOptions(sim={"ignore_sigterm": True})
        await remote.create("deaf", sandboxer=SIM, options=deaf)
        await remote.start("deaf")

        stopped = trio.Event()

        async def stopper() -> None:
            await remote.stop("deaf", timeout_secs=5)
            stopped.set()

        began = trio.current_time()
        nursery.start_soon(stopper)
        await trio.testing.wait_all_tasks_blocked()
        # The grace period: SIGTERM was ignored, the SIGKILL is 5 (virtual) seconds away.
        for client in (remote, other, remote):
            assert (await client.status("deaf")).state is SandboxState.STOPPING
        raw = await other.client.call(C, "Status", {"sandbox_id": "deaf"})
        assert raw["state"] == "stopping"
        assert [s.state for s in await other.list()] == [SandboxState.STOPPING]
        await other.ping("deaf")
        assert (await other.metrics("deaf")).pids == 1
        assert not stopped.is_set()
        assert trio.current_time() - began < 5

        await stopped.wait()
        assert trio.current_time() - began >= 5
        assert (await other.status("deaf")).state is SandboxState.STOPPED
        assert (await other.wait("deaf")).exit_status == 137


async def test_events_over_the_socket(served: Served) -> None:
    async with connect(served.path) as remote:
        async with remote.events() as events:
            await trio.testing.wait_all_tasks_blocked()  # the server has subscribed
            await remote.create("ev", sandboxer=SIM)
            await remote.start("ev")
            await remote.stop("ev")
            await remote.wait("ev")
            await remote.shutdown("ev")
            got = []
            async for event in events:
                got.append(event)
                if len(got) == 4:
                    break  # leave the stream early, still open on the server
            assert served.server.in_flight == 1
        assert [(e.topic, e.sandbox_id) for e in got] == [
            (TOPIC_CREATE, "ev"),
            (TOPIC_START, "ev"),
            (TOPIC_EXIT, "ev"),
            (TOPIC_DELETE, "ev"),
        ]
        assert [e.exit_status for e in got] == [None, None, 143, None]
        assert all(aware(e.timestamp) for e in got)
        assert [e.timestamp for e in got] == sorted(e.timestamp for e in got)

        # Leaving the block ended the stream on the server; the connection still works.
        await trio.testing.wait_all_tasks_blocked()
        assert served.server.in_flight == 0
        assert await remote.list() == []
        assert (await remote.version())["protocol"] == 1
        async with remote.events() as events:
            await trio.testing.wait_all_tasks_blocked()
            await remote.create("ev2", sandboxer=SIM)
            event = await anext(aiter(events))
            assert (event.topic, event.sandbox_id) == (TOPIC_CREATE, "ev2")
        await trio.testing.wait_all_tasks_blocked()
        assert served.server.in_flight == 0


@pytest.mark.parametrize("side", ["in-process", "remote"])
async def test_leaving_the_events_block_early_leaves_nothing_unclosed(
    served: Served, side: str
) -> None:
    """The documented use -- ``async for`` over what ``events()`` yields, ``break``, leave
    the block -- must clean up after itself: no async generator may be left for the garbage
    collector, which trio reports with a ResourceWarning (an error under this project's
    ``filterwarnings = error``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with connect(served.path) as remote:
            ctrl: Controller | RemoteController = (
                served.controller if side == "in-process" else remote
            )
            async with ctrl.events() as events:
                await trio.testing.wait_all_tasks_blocked()
                await remote.create("early", sandboxer=SIM)
                async for event in events:
                    assert event.topic == TOPIC_CREATE
                    break
            del events
            gc.collect()
            await trio.testing.wait_all_tasks_blocked()
            assert served.server.in_flight == 0
            assert [s.sandbox_id for s in await remote.list()] == ["early"]
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


async def test_events_stream_raw_messages(served: Served) -> None:
    async with open_client(served.path) as client:
        async with client.stream(C, "Events", {}) as messages:
            await trio.testing.wait_all_tasks_blocked()
            await client.call(C, "Create", {"sandbox_id": "r", "sandboxer": SIM})
            await client.call(C, "Shutdown", {"sandbox_id": "r"})
            seen = []
            async for message in messages:
                seen.append(message)
                if len(seen) == 3:
                    break
        plain_keys = {"topic", "sandbox_id", "timestamp"}
        assert [set(m) for m in seen] == [plain_keys, {*plain_keys, "exit_status"}, plain_keys]
        # Shutdown of a sandbox that never started records exit status 0.
        assert [(m["topic"], m.get("exit_status")) for m in seen] == [
            (TOPIC_CREATE, None),
            (TOPIC_EXIT, 0),
            (TOPIC_DELETE, None),
        ]
        assert all(m["sandbox_id"] == "r" and aware(m["timestamp"]) for m in seen)
        with pytest.raises(InvalidArgument, match="unknown field"):
            async with client.stream(C, "Events", {"topic": "x"}) as messages:
                async for _ in messages:
                    pass


async def test_connection_closed_mid_wait_does_not_harm_the_sandbox(served: Served) -> None:
    async with connect(served.path) as keeper:
        await keeper.create("cw", sandboxer=SIM)
        await keeper.start("cw")

        # An abrupt close: a raw Wait request, then the socket is closed without a close frame.
        async with await Peer.connect(served.path, service=C) as peer:
            await peer.send_request(1, "Wait", {"sandbox_id": "cw"})
            await trio.testing.wait_all_tasks_blocked()
            assert served.server.in_flight == 1

        # The reference client closing its connection with a Wait pending.
        pending: list[BaseException] = []
        async with open_client(served.path) as client, trio.open_nursery() as nursery:

            async def waiter(client: Client) -> None:
                try:
                    await client.call(C, "Wait", {"sandbox_id": "cw"})
                except Unavailable as err:
                    pending.append(err)

            nursery.start_soon(waiter, client)
            await trio.testing.wait_all_tasks_blocked()
            assert served.server.in_flight == 1
            client.close()
        assert len(pending) == 1

        await trio.testing.wait_all_tasks_blocked()
        assert served.server.in_flight == 0
        assert served.server.connections == 1  # the keeper's
        status = await keeper.status("cw")
        assert status.state is SandboxState.READY

    async with connect(served.path) as another:
        await another.stop("cw")
        assert (await another.wait("cw")).exit_status == 143
        await another.shutdown("cw")
