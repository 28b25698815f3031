"""The blocking clients: :class:`SyncController` and :class:`SyncClient`.

The server is real -- ``Server`` + ``Controller`` with the ``sim`` and ``process`` backends on a
temporary Unix socket -- running under ``trio.run`` in a helper thread that a fixture starts and
stops.  The test code calls the blocking clients from ordinary threads, as a script would.

The server's task-running methods (Start, Stop, Wait, Shutdown, Metrics, Events) are wrapped
to release a semaphore when a call's handler starts and another when it ends, so a test can
know for certain that a call has reached the server (a Wait is parked) or that the server has
ended it, without sleeping.
"""

from __future__ import annotations

import inspect
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from sandboxd import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RPCError,
    Unavailable,
)
from sandboxd._models import (
    TOPIC_CREATE,
    TOPIC_DELETE,
    TOPIC_EXIT,
    TOPIC_START,
    ExitStatus,
    Platform,
    SandboxInstance,
    SandboxMetrics,
    SandboxState,
    SandboxStatus,
)
from sandboxd.api import (
    CONTROLLER_SERVICE,
    RUNTIME_SERVICE,
    RemoteController,
    SyncController,
    connect,
    controller_service,
    runtime_service,
)
from sandboxd.backends import ProcessBackend, SimBackend
from sandboxd.rpc import Method, MethodKind, Responder, Server, SyncClient
from sandboxd.runtime import Controller

#: Upper bound, in seconds, for anything that should happen promptly (a thread finishing, a
#: call reaching the server).  Only reached when something is broken.
PROMPTLY = 10.0

_INSTRUMENTED = ("Start", "Stop", "Wait", "Shutdown", "Metrics", "Events")


# -- the server, in a thread of its own -----------------------------------------------------------


class _Answered:
    """A responder that releases ``answered`` once the runtime answers through it."""

    def __init__(self, responder: Responder, answered: threading.Semaphore) -> None:
        self._responder = responder
        self._answered = answered

    @property
    def abandoned(self) -> bool:
        return self._responder.abandoned

    def ok(self, value: Any) -> None:
        self._responder.ok(value)
        self._answered.release()

    def fail(self, error: BaseException) -> None:
        self._responder.fail(error)
        self._answered.release()


class ServerThread:
    """``Server`` + ``Controller(process, sim)`` serving ``path`` from a trio loop in a thread.

    ``entered[m]`` / ``exited[m]`` are released each time a handler of method ``m`` (one of
    ``_INSTRUMENTED``) starts / ends on the server; for a deferred method, each time a call
    reaches the runtime / is answered by it.  ``rpc`` is the running :class:`Server`.
    """

    def __init__(self, path: str, log_dir: Path) -> None:
        self.path = path
        self.log_dir = log_dir
        self.entered = {m: threading.Semaphore(0) for m in _INSTRUMENTED}
        self.exited = {m: threading.Semaphore(0) for m in _INSTRUMENTED}
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sandboxd-server", daemon=True)
        self._stopped = False
        self.rpc: Server | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(PROMPTLY):
            raise AssertionError(f"server did not start serving: {self._error!r}")
        if self._error is not None:
            raise AssertionError(f"server failed to start: {self._error!r}")

    def stop(self) -> None:
        """Cancel the server: every connection is closed at once.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            assert self._token is not None and self._cancel is not None
            cancel = self._cancel
            trio.from_thread.run_sync(cancel.cancel, trio_token=self._token)
        self._thread.join(PROMPTLY)
        assert not self._thread.is_alive(), "the server thread did not end"
        if self._error is not None:
            raise AssertionError(f"the server failed: {self._error!r}") from self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def _wrap(self, name: str, method: Method) -> Method:
        handler = method.handler
        entered, exited = self.entered[name], self.exited[name]

        if method.kind is MethodKind.DEFERRED:

            def deferred(message: Any, ctx: Any, responder: Responder) -> None:
                entered.release()
                handler(message, ctx, _Answered(responder, exited))

            return attrs.evolve(method, handler=deferred)

        async def instrumented(*args: Any) -> Any:
            entered.release()
            try:
                return await handler(*args)
            finally:
                exited.release()

        return attrs.evolve(method, handler=instrumented)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            backends = [ProcessBackend(log_dir=self.log_dir), SimBackend()]
            controller: Controller = await nursery.start(
                Controller(backends, default_sandboxer="sim").run
            )
            methods = dict(controller_service(controller))
            for name in _INSTRUMENTED:
                assert methods[name].kind is not MethodKind.INLINE
                methods[name] = self._wrap(name, methods[name])
            server = Server({RUNTIME_SERVICE: runtime_service(), CONTROLLER_SERVICE: methods})
            self.rpc = server
            await nursery.start(server.serve_unix, self.path)
            self._token = trio.lowlevel.current_trio_token()
            self._cancel = nursery.cancel_scope
            self._ready.set()


@pytest.fixture
def server(sock_path: str, tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(sock_path, tmp_path)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def ctl(server: ServerThread) -> Iterator[SyncController]:
    with SyncController(server.path) as controller:
        yield controller


def acquire(sem: threading.Semaphore, times: int = 1) -> None:
    for _ in range(times):
        assert sem.acquire(timeout=PROMPTLY), "the server never saw the call"


# -- threads whose failures reach the test -------------------------------------------------------


class Worker:
    """``fn()`` in a thread; :meth:`result` joins it (bounded) and returns or re-raises."""

    def __init__(self, fn: Callable[[], Any], name: str = "worker") -> None:
        self._fn = fn
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:
            self._error = exc

    def result(self, timeout: float = PROMPTLY) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self._thread.name} still blocked after {timeout}s"
        if self._error is not None:
            raise self._error
        return self._value


def raised(fn: Callable[[], Any]) -> BaseException:
    """The exception ``fn()`` raised (it must raise)."""
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError(f"{fn} did not raise")


# -- same surface as RemoteController -------------------------------------------------------------


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(getattr(cls, name))
        for name in dir(cls)
        if not name.startswith("_") and callable(getattr(cls, name))
    }


def test_sync_controller_has_every_remote_controller_method_with_its_parameters() -> None:
    remote = _public_methods(RemoteController)
    sync = _public_methods(SyncController)
    assert {"create", "start", "stop", "wait", "shutdown", "status", "events"} <= set(remote)
    missing = set(remote) - set(sync)
    assert not missing, f"SyncController lacks {sorted(missing)}"
    for name, signature in remote.items():
        sync_params = sync[name].parameters
        for param in signature.parameters.values():
            assert param.name in sync_params, f"SyncController.{name} lacks {param.name!r}"
            assert sync_params[param.name].kind == param.kind, (name, param.name)
            assert sync_params[param.name].default == param.default, (name, param.name)
        if name != "events":
            # Where trio code would use a cancel scope, the blocking client takes timeout=.
            timeout = sync_params.get("timeout")
            assert timeout is not None, f"SyncController.{name} has no timeout="
            assert timeout.kind is inspect.Parameter.KEYWORD_ONLY
            assert timeout.default is None


# -- same results and errors as RemoteController --------------------------------------------------


def _when(value: datetime | None) -> str:
    assert value is None or value.tzinfo is not None, value
    return "none" if value is None else "aware-datetime"


def _summary(step: str, value: Any, sid: str) -> tuple[str, Any]:
    """What a result of the lifecycle must be, independent of ids, pids and times."""

    def ident(text: str) -> str:
        return text.replace(sid, "<id>")

    if isinstance(value, SandboxStatus):
        info = {
            k: "<pid>" if v == str(value.pid) else ident(v)
            for k, v in value.info.items()
            if k != "started_at"
        }
        return step, (
            "status",
            ident(value.sandbox_id),
            value.pid > 0,
            value.state,
            info,
            _when(value.created_at),
            _when(value.exited_at),
        )
    if isinstance(value, SandboxInstance):
        return step, (
            "instance",
            ident(value.sandbox_id),
            value.pid > 0,
            _when(value.created_at),
            {k: ident(v) for k, v in value.labels.items()},
        )
    if isinstance(value, ExitStatus):
        return step, ("exit", value.exit_status, _when(value.exited_at))
    if isinstance(value, SandboxMetrics):
        return step, ("metrics", ident(value.sandbox_id), _when(value.timestamp))
    if isinstance(value, list):
        return step, [_summary(step, v, sid)[1] for v in value]
    if isinstance(value, str):
        return step, ident(value)
    if isinstance(value, RPCError):
        return step, (type(value).__name__, ident(value.message))
    return step, value


def sync_lifecycle(ctl: SyncController, sid: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []

    def record(step: str, fn: Callable[[], Any]) -> None:
        try:
            value = fn()
        except RPCError as err:
            value = err
        out.append(_summary(step, value, sid))

    labels = {"suite": sid}
    record("version", ctl.version)
    record("create", lambda: ctl.create(sid, sandboxer="sim", labels=labels))
    record("status-created", lambda: ctl.status(sid))
    record("create-again", lambda: ctl.create(sid, sandboxer="sim"))
    record("start", lambda: ctl.start(sid))
    record("start-again", lambda: ctl.start(sid))
    record("status-ready", lambda: ctl.status(sid))
    record("status-verbose", lambda: ctl.status(sid, verbose=True))
    record("platform", lambda: ctl.platform(sid))
    record("ping", lambda: ctl.ping(sid))
    record("metrics", lambda: ctl.metrics(sid))
    record("list", lambda: ctl.list(labels))
    record("list-none", lambda: ctl.list({"suite": "nobody"}))
    record("stop", lambda: ctl.stop(sid, timeout_secs=5))
    record("wait", lambda: ctl.wait(sid))
    record("status-stopped", lambda: ctl.status(sid))
    record("shutdown", lambda: ctl.shutdown(sid))
    record("status-gone", lambda: ctl.status(sid))
    record("wait-gone", lambda: ctl.wait(sid))
    record("invalid-id", lambda: ctl.status("not a valid id"))
    record("invalid-id-start", lambda: ctl.start("-bad-"))
    return out


async def remote_lifecycle(remote: RemoteController, sid: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []

    async def record(step: str, fn: Callable[[], Any]) -> None:
        try:
            value = await fn()
        except RPCError as err:
            value = err
        out.append(_summary(step, value, sid))

    labels = {"suite": sid}
    await record("version", remote.version)
    await record("create", lambda: remote.create(sid, sandboxer="sim", labels=labels))
    await record("status-created", lambda: remote.status(sid))
    await record("create-again", lambda: remote.create(sid, sandboxer="sim"))
    await record("start", lambda: remote.start(sid))
    await record("start-again", lambda: remote.start(sid))
    await record("status-ready", lambda: remote.status(sid))
    await record("status-verbose", lambda: remote.status(sid, verbose=True))
    await record("platform", lambda: remote.platform(sid))
    await record("ping", lambda: remote.ping(sid))
    await record("metrics", lambda: remote.metrics(sid))
    await record("list", lambda: remote.list(labels))
    await record("list-none", lambda: remote.list({"suite": "nobody"}))
    await record("stop", lambda: remote.stop(sid, timeout_secs=5))
    await record("wait", lambda: remote.wait(sid))
    await record("status-stopped", lambda: remote.status(sid))
    await record("shutdown", lambda: remote.shutdown(sid))
    await record("status-gone", lambda: remote.status(sid))
    await record("wait-gone", lambda: remote.wait(sid))
    await record("invalid-id", lambda: remote.status("not a valid id"))
    await record("invalid-id-start", lambda: remote.start("-bad-"))
    return out


def test_sim_lifecycle_gives_the_same_results_and_errors_as_remote_controller(
    server: ServerThread, ctl: SyncController
) -> None:
    sync = sync_lifecycle(ctl, "sync1")

    async def remote() -> list[tuple[str, Any]]:
        async with connect(server.path) as remote:
            return await remote_lifecycle(remote, "remote1")

    assert sync == trio.run(remote)

    # And the results are the right ones, not merely the same ones.
    steps = dict(sync)
    assert steps["create"] == "<id>"
    assert steps["version"] == dict(ctl.version()) and steps["version"]["protocol"] == 1
    assert steps["status-created"][2:4] == (False, SandboxState.CREATED)
    assert steps["status-ready"][3] is SandboxState.READY
    assert steps["status-stopped"][3] is SandboxState.STOPPED
    assert steps["start"][4] == {"suite": "<id>"}
    assert isinstance(steps["platform"], Platform)
    assert steps["platform"].os == "linux" and steps["platform"].architecture
    assert steps["ping"] is None and steps["stop"] is None and steps["shutdown"] is None
    assert steps["wait"] == ("exit", 143, "aware-datetime")
    assert steps["list"] == [steps["status-ready"]]
    assert steps["list-none"] == []
    assert steps["create-again"][0] == AlreadyExists.__name__
    assert steps["start-again"][0] == FailedPrecondition.__name__
    assert steps["status-gone"][0] == NotFound.__name__
    assert steps["wait-gone"][0] == NotFound.__name__
    assert steps["invalid-id"][0] == InvalidArgument.__name__
    assert steps["invalid-id-start"][0] == InvalidArgument.__name__


def test_typed_errors_are_raised_as_their_classes(ctl: SyncController) -> None:
    with pytest.raises(NotFound, match="ghost"):
        ctl.status("ghost")
    with pytest.raises(InvalidArgument, match="sandbox_id"):
        ctl.ping("no spaces allowed")
    ctl.create("twice", sandboxer="sim")
    with pytest.raises(AlreadyExists, match="twice"):
        ctl.create("twice", sandboxer="sim")
    ctl.start("twice")
    with pytest.raises(FailedPrecondition, match="twice"):
        ctl.start("twice")
    # Errors do not disturb the connection.
    assert ctl.status("twice").state is SandboxState.READY
    ctl.shutdown("twice")


# -- threads --------------------------------------------------------------------------------------


def test_eight_threads_share_one_controller_and_each_gets_its_own_answers(
    ctl: SyncController,
) -> None:
    threads, calls = 8, 200
    for i in range(threads):
        ctl.create(f"mt{i}", sandboxer="sim", labels={"owner": str(i)})
    ctl.start("mt0")
    expected_version = dict(ctl.version())
    barrier = threading.Barrier(threads)

    def hammer(i: int) -> int:
        barrier.wait(PROMPTLY)
        sid = f"mt{i}"
        done = 0
        for j in range(calls):
            kind = (i + j) % 4
            if kind == 0:
                status = ctl.status(sid)
                assert status.sandbox_id == sid
                assert status.info["sandboxer"] == "sim"
                assert status.state is (SandboxState.READY if i == 0 else SandboxState.CREATED)
            elif kind == 1:
                assert ctl.ping(sid) is None
            elif kind == 2:
                assert dict(ctl.version()) == expected_version
            else:
                # An error answer must reach the call it belongs to, too.
                with pytest.raises(NotFound, match=f"'missing-{i}-{j}'"):
                    ctl.ping(f"missing-{i}-{j}")
            done += 1
        return done

    workers = [Worker(lambda i=i: hammer(i), f"hammer-{i}") for i in range(threads)]
    assert [w.result(60) for w in workers] == [calls] * threads
    assert sorted(s.sandbox_id for s in ctl.list()) == [f"mt{i}" for i in range(threads)]
    assert [s.sandbox_id for s in ctl.list({"owner": "3"})] == ["mt3"]


def test_concurrent_waits_on_one_connection_are_all_woken_by_a_stop_from_another_thread(
    server: ServerThread, ctl: SyncController
) -> None:
    ctl.create("waited", sandboxer="sim")
    ctl.start("waited")
    waiters = [Worker(lambda: ctl.wait("waited"), f"waiter-{i}") for i in range(6)]
    # Every Wait has reached the server (and so is parked) before the stop is sent.
    acquire(server.entered["Wait"], len(waiters))
    assert ctl.status("waited").state is SandboxState.READY

    stopper = Worker(lambda: ctl.stop("waited", timeout_secs=5), "stopper")
    assert stopper.result() is None
    results = [w.result() for w in waiters]
    assert {r.exit_status for r in results} == {143}
    assert len({r.exited_at for r in results}) == 1
    assert ctl.status("waited").state is SandboxState.STOPPED


# -- timeouts -------------------------------------------------------------------------------------


def test_wait_timeout_raises_deadline_exceeded_and_leaves_the_sandbox_alone(
    server: ServerThread, ctl: SyncController
) -> None:
    ctl.create("patient", sandboxer="sim")
    pid = ctl.start("patient").pid
    with pytest.raises(DeadlineExceeded):
        ctl.wait("patient", timeout=0.2)
    acquire(server.entered["Wait"])
    # The server was told to give up the call (before this call, on the same connection):
    # nothing is in progress there any more.
    assert dict(ctl.version())["protocol"] == 1
    assert server.rpc is not None and server.rpc.in_flight == 0
    status = ctl.status("patient")
    assert (status.state, status.pid) == (SandboxState.READY, pid)
    assert "exit_status" not in status.info

    # The connection keeps working, and the sandbox can still be stopped and waited for.
    assert dict(ctl.version())["protocol"] == 1
    ctl.stop("patient", timeout_secs=5)
    assert ctl.wait("patient", timeout=PROMPTLY).exit_status == 143

    # A timeout given to the constructor applies to every call that names none.
    ctl.create("patient2", sandboxer="sim")
    ctl.start("patient2")
    with SyncController(server.path, timeout=0.2) as impatient:
        with pytest.raises(DeadlineExceeded):
            impatient.wait("patient2")
        assert impatient.status("patient2").state is SandboxState.READY
    assert ctl.status("patient2").state is SandboxState.READY


# -- connection loss ------------------------------------------------------------------------------


def test_server_going_away_fails_pending_and_later_calls_with_unavailable(
    server: ServerThread, ctl: SyncController
) -> None:
    ctl.create("orphan", sandboxer="sim")
    ctl.start("orphan")
    pending = Worker(lambda: ctl.wait("orphan"), "pending-wait")
    acquire(server.entered["Wait"])

    server.stop()
    with pytest.raises(Unavailable):
        pending.result()
    for call in (ctl.version, lambda: ctl.status("orphan"), lambda: ctl.wait("orphan")):
        err = Worker(lambda call=call: raised(call), "later-call").result()
        assert isinstance(err, Unavailable), repr(err)
    with pytest.raises(Unavailable, match=str(server.path)):
        SyncController(server.path)


def test_connecting_where_nothing_listens_raises_unavailable_naming_the_path(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "nobody-home.sock")
    with pytest.raises(Unavailable, match=path):
        SyncController(path)
    with pytest.raises(Unavailable, match=path):
        SyncClient(path)
    # A stale socket file (bound, nobody listening) too.
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(stale)
    assert os.path.exists(stale)
    with pytest.raises(Unavailable, match=stale):
        SyncController(stale)


# -- event streams --------------------------------------------------------------------------------


def test_events_of_one_lifecycle_arrive_in_order_and_leaving_early_ends_the_stream(
    server: ServerThread, ctl: SyncController
) -> None:
    with ctl.events() as events:
        # The stream's request was sent first on this connection, so the subscription is in
        # place before any of these calls is read.
        ctl.create("watched", sandboxer="sim")
        ctl.start("watched")
        ctl.stop("watched", timeout_secs=5)
        ctl.shutdown("watched")
        seen = [next(events) for _ in range(4)]
    assert [(e.topic, e.sandbox_id) for e in seen] == [
        (TOPIC_CREATE, "watched"),
        (TOPIC_START, "watched"),
        (TOPIC_EXIT, "watched"),
        (TOPIC_DELETE, "watched"),
    ]
    assert seen[2].exit_status == 143
    stamps = [e.timestamp for e in seen]
    assert all(t.tzinfo is not None for t in stamps)
    assert stamps == sorted(stamps)

    # Leaving the block ended the stream on the server ...
    acquire(server.entered["Events"])
    acquire(server.exited["Events"])
    # ... and only the stream: the connection works, and a new stream sees only new events.
    assert dict(ctl.version())["protocol"] == 1
    with ctl.events() as events:
        ctl.create("watched2", sandboxer="sim")
        first = next(events)
    assert (first.topic, first.sandbox_id) == (TOPIC_CREATE, "watched2")
    acquire(server.exited["Events"])
    assert ctl.status("watched2").state is SandboxState.CREATED


def test_a_stream_consumer_that_never_reads_is_ended_with_resource_exhausted(
    server: ServerThread, ctl: SyncController
) -> None:
    count = 50
    with (
        SyncClient(server.path, stream_buffer=4) as client,
        client.stream(CONTROLLER_SERVICE, "Events", {}, timeout=PROMPTLY) as messages,
    ):
        # Read after Events on the same connection: the subscription is in place.
        assert client.call(RUNTIME_SERVICE, "Version")["protocol"] == 1
        for i in range(count):
            ctl.create(f"flood{i}", sandboxer="sim")
            # Calls on the client read its connection, filling the unread stream's buffer.
            assert client.call(RUNTIME_SERVICE, "Version")["protocol"] == 1
            status = client.call(CONTROLLER_SERVICE, "Status", {"sandbox_id": f"flood{i}"})
            assert status["sandbox_id"] == f"flood{i}"
        received: list[Mapping[str, Any]] = []
        with pytest.raises(ResourceExhausted, match="behind"):
            for message in messages:
                received.append(message)
        # The buffered events come first, in order, then the error.
        assert 4 <= len(received) < count
        assert [m["topic"] for m in received] == [TOPIC_CREATE] * len(received)
        assert [m["sandbox_id"] for m in received] == [f"flood{i}" for i in range(len(received))]
        # The server was told to end the stream; the connection keeps working.
        acquire(server.entered["Events"])
        acquire(server.exited["Events"])
        assert client.call(RUNTIME_SERVICE, "Version")["protocol"] == 1
        reply = client.call(CONTROLLER_SERVICE, "List", {"labels": {"none": "x"}})
        assert reply == {"sandboxes": []}
    assert len(ctl.list()) == count
