"""``sandboxd.v1.Controller``: the Controller contract bound to RPC methods.

Queries (Status, Platform, Ping, List) are answered inline by the connection's reader: no
task per call.  Create and the calls that wait on a sandbox (Start, Stop, Wait, Shutdown) are
deferred: the reader hands the call's responder to the sandbox's actor (or, for Create, to the
state store) and whoever finishes the work answers it, still without a task per call.
Metrics, which reads /proc in a worker thread, runs in a task of its own under the caller's
deadline; Events is a server stream, subscribed as its request is read.  The data plane
(Exec and the others) is in ``_data_service``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final, cast

import trio

from .._errors import NotFound
from .._models import SandboxStatus
from ..rpc import (
    CallContext,
    Encoded,
    Limits,
    Message,
    MessageSender,
    Method,
    Responder,
    Server,
    deferred,
    inline,
    server_stream,
    unary,
)
from ..runtime import Controller, Subscription
from ..wire import dumps
from ._client_common import CONTROLLER_SERVICE, RUNTIME_SERVICE
from ._convert import (
    check_fields,
    create_request,
    event_message,
    exit_message,
    id_request,
    instance_message,
    list_request,
    metrics_message,
    platform_message,
    status_message,
    status_request,
    stop_request,
)
from ._data_service import DataPlane, data_plane_methods
from ._runtime_service import runtime_service

#: The empty message, encoded once: the answer of Stop, Shutdown and Ping.
_EMPTY: Final = Encoded(dumps({}))


def _created(sandbox_id: str) -> Mapping[str, Any]:
    return {"sandbox_id": sandbox_id}


def _empty(_: None) -> Encoded:
    return _EMPTY


def controller_service(controller: Controller) -> dict[str, Method]:
    """The methods of ``sandboxd.v1.Controller``, served by ``controller`` (the data plane's
    by its ``exec``, ``exec_sync``, ``logs``, ``write_file`` and ``read_file``).

        A :class:`~sandboxd.Controller` is served without a task per call (its ``request_*``
        methods take the call's responder).  Any other object with the Controller's methods (a
        wrapper that changes some, say) is served too, the calls that wait each in a task of
        their own that awaits its async method.
    """

    def create(msg: Message, ctx: CallContext, reply: Responder) -> None:
        controller.request_create(reply, **create_request(msg))

    def start(msg: Message, ctx: CallContext, reply: Responder) -> None:
        controller.request_start(reply, id_request(msg, "Start"))

    def platform(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return platform_message(controller.platform_nowait(id_request(msg, "Platform")))

    def stop(msg: Message, ctx: CallContext, reply: Responder) -> None:
        sandbox_id, timeout_secs = stop_request(msg)
        controller.request_stop(reply, sandbox_id, timeout_secs=timeout_secs)

    def wait(msg: Message, ctx: CallContext, reply: Responder) -> None:
        controller.request_wait(reply, id_request(msg, "Wait"))

    # The encoded answer to a non-verbose Status, per sandbox, for as long as the actor
    # publishes the same snapshot: a sandbox polled in a loop is encoded once per change.
    encoded_status: dict[str, tuple[SandboxStatus, Encoded]] = {}

    def status(msg: Message, ctx: CallContext) -> Mapping[str, Any] | Encoded:
        sandbox_id = msg.get("sandbox_id")
        if len(msg) == 1 and type(sandbox_id) is str and sandbox_id in encoded_status:
            # A non-verbose Status of an id asked about before: checked then.
            verbose = False
        else:
            sandbox_id, verbose = status_request(msg)
        try:
            snapshot = controller.status_nowait(sandbox_id, verbose=verbose)
        except NotFound:
            encoded_status.pop(sandbox_id, None)
            raise
        if verbose:
            return status_message(snapshot)
        cached = encoded_status.get(sandbox_id)
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        if len(encoded_status) > 2 * len(controller) + 1024:
            encoded_status.clear()  # forget sandboxes deleted since they were last asked about
        encoded = Encoded(dumps(status_message(snapshot)))
        encoded_status[sandbox_id] = (snapshot, encoded)
        return encoded

    def shutdown(msg: Message, ctx: CallContext, reply: Responder) -> None:
        controller.request_shutdown(reply, id_request(msg, "Shutdown"))

    def ping(msg: Message, ctx: CallContext) -> Encoded:
        controller.ping_nowait(id_request(msg, "Ping"))
        return _EMPTY

    def list_(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        statuses = controller.list_nowait(list_request(msg))
        return {"sandboxes": [status_message(s) for s in statuses]}

    async def metrics(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return metrics_message(await controller.metrics(id_request(msg, "Metrics")))

    def subscribe(msg: Message, ctx: CallContext) -> Subscription:
        # Subscribed as the request is read: no event caused by a later request is missed.
        check_fields(msg, frozenset(), "Events")
        return controller.subscribe()

    async def events(subscription: Subscription, ctx: CallContext, stream: MessageSender) -> None:
        with subscription:
            async for event in subscription:
                await stream.send(event_message(event))

    methods = {
        "Create": deferred(create, _created),
        "Start": deferred(start, instance_message),
        "Platform": inline(platform),
        "Stop": deferred(stop, _empty),
        "Wait": deferred(wait, exit_message),
        "Status": inline(status),
        "Shutdown": deferred(shutdown, _empty),
        "Ping": inline(ping),
        "List": inline(list_),
        "Metrics": unary(metrics),
        "Events": server_stream(events, prepare=subscribe),
        **data_plane_methods(cast(DataPlane, controller)),
    }
    if not isinstance(controller, Controller):
        methods.update(_awaited_calls(controller))
    return methods


def _awaited_calls(controller: Controller) -> dict[str, Method]:
    """The calls that wait, through the async methods of a Controller look-alike."""

    async def create(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return _created(await controller.create(**create_request(msg)))

    async def start(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return instance_message(await controller.start(id_request(msg, "Start")))

    async def stop(msg: Message, ctx: CallContext) -> Encoded:
        sandbox_id, timeout_secs = stop_request(msg)
        await controller.stop(sandbox_id, timeout_secs=timeout_secs)
        return _EMPTY

    async def wait(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return exit_message(await controller.wait(id_request(msg, "Wait")))

    async def shutdown(msg: Message, ctx: CallContext) -> Encoded:
        await controller.shutdown(id_request(msg, "Shutdown"))
        return _EMPTY

    return {
        "Create": unary(create),
        "Start": unary(start),
        "Stop": unary(stop),
        "Wait": unary(wait),
        "Shutdown": unary(shutdown),
    }


async def serve_controller(
    controller: Controller,
    path: str,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    limits: Limits | None = None,
    allowed_uids: Collection[int] | None = None,
    socket_group: int | str | None = None,
) -> None:
    """Serve ``sandboxd.v1.Runtime`` and ``sandboxd.v1.Controller`` for ``controller`` on the
    Unix socket ``path`` until cancelled.

    ``path = await nursery.start(serve_controller, controller, path)`` returns once the socket
    accepts connections.  The other options are :class:`~sandboxd.rpc.Server`'s: the limits on
    each client, and who may connect (``allowed_uids``, ``socket_group``).
    """
    server = Server(
        {RUNTIME_SERVICE: runtime_service(), CONTROLLER_SERVICE: controller_service(controller)},
        limits=limits,
        allowed_uids=allowed_uids,
        socket_group=socket_group,
    )
    await server.serve_unix(path, task_status=task_status)
