"""``sandboxd.v1.Controller``: the Controller contract bound to RPC methods.

Queries (Create, Status, Platform, Ping, List) are answered inline by the connection's reader:
no task per call.  Calls that wait on a sandbox (Start, Stop, Wait, Shutdown) and Metrics,
which reads /proc in a worker thread, run in a task of their own under the caller's deadline;
Events is a server stream, subscribed as its request is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import trio

from ..rpc import (
    CallContext,
    Message,
    MessageSender,
    Method,
    Server,
    inline,
    server_stream,
    unary,
)
from ..runtime import Controller, Subscription
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
from ._runtime_service import RUNTIME_SERVICE, runtime_service

CONTROLLER_SERVICE: Final = "sandboxd.v1.Controller"

_EMPTY: Final[Mapping[str, Any]] = {}


def controller_service(controller: Controller) -> dict[str, Method]:
    """The methods of ``sandboxd.v1.Controller``, served by ``controller``."""

    def create(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return {"sandbox_id": controller.create_nowait(**create_request(msg))}

    async def start(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return instance_message(await controller.start(id_request(msg, "Start")))

    def platform(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return platform_message(controller.platform_nowait(id_request(msg, "Platform")))

    async def stop(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        sandbox_id, timeout_secs = stop_request(msg)
        await controller.stop(sandbox_id, timeout_secs=timeout_secs)
        return _EMPTY

    async def wait(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return exit_message(await controller.wait(id_request(msg, "Wait")))

    def status(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        sandbox_id, verbose = status_request(msg)
        return status_message(controller.status_nowait(sandbox_id, verbose=verbose))

    async def shutdown(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        await controller.shutdown(id_request(msg, "Shutdown"))
        return _EMPTY

    def ping(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
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

    return {
        "Create": inline(create),
        "Start": unary(start),
        "Platform": inline(platform),
        "Stop": unary(stop),
        "Wait": unary(wait),
        "Status": inline(status),
        "Shutdown": unary(shutdown),
        "Ping": inline(ping),
        "List": inline(list_),
        "Metrics": unary(metrics),
        "Events": server_stream(events, prepare=subscribe),
    }


async def serve_controller(
    controller: Controller,
    path: str,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    **server_options: Any,
) -> None:
    """Serve ``sandboxd.v1.Runtime`` and ``sandboxd.v1.Controller`` for ``controller`` on the
    Unix socket ``path`` until cancelled.

    ``path = await nursery.start(serve_controller, controller, path)`` returns once the socket
    accepts connections.  ``server_options`` go to :class:`~sandboxd.rpc.Server` (limits).
    """
    server = Server(
        {RUNTIME_SERVICE: runtime_service(), CONTROLLER_SERVICE: controller_service(controller)},
        **server_options,
    )
    await server.serve_unix(path, task_status=task_status)
