"""The daemon's server: sandboxd's services in both envelopes, and containerd's, over one
Controller."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import trio

from ..rpc import Limits, Server
from ..runtime import Controller
from ._client_common import CONTROLLER_SERVICE, RUNTIME_SERVICE
from ._controller_service import controller_service
from ._runtime_service import runtime_service


def controller_server(
    controller: Controller,
    *,
    cgroups: str | None = None,
    limits: Limits | None = None,
    allowed_uids: Collection[int] | None = None,
    socket_group: int | str | None = None,
) -> Server:
    """The daemon's :class:`~sandboxd.rpc.Server` for ``controller``: ``sandboxd.v1.Runtime``
    and ``sandboxd.v1.Controller`` in both envelopes, and containerd's
    ``containerd.runtime.sandbox.v1.Sandbox`` in protobuf (docs/services.md).  Both envelopes
    share one set of Controller methods, so one cache of Status answers.

    ``cgroups`` is what Version says of the cgroup hierarchy (see
    :func:`~sandboxd.api.runtime_service`); the other options are
    :class:`~sandboxd.rpc.Server`'s, ``limits`` told by Version in both envelopes too.
    Loads the protobuf runtime (the CBOR clients and services never do).
    """
    from ._pb_services import protobuf_services  # protobuf loads for servers only

    limits = Limits() if limits is None else limits
    cbor = controller_service(controller)
    return Server(
        {RUNTIME_SERVICE: runtime_service(cgroups, limits), CONTROLLER_SERVICE: cbor},
        protobuf_services=protobuf_services(controller, cgroups=cgroups, cbor=cbor, limits=limits),
        limits=limits,
        allowed_uids=allowed_uids,
        socket_group=socket_group,
    )


async def serve_controller(
    controller: Controller,
    path: str,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    limits: Limits | None = None,
    allowed_uids: Collection[int] | None = None,
    socket_group: int | str | None = None,
) -> None:
    """Serve :func:`controller_server`'s services for ``controller`` (both envelopes) on the
    Unix socket ``path`` until cancelled.

    ``path = await nursery.start(serve_controller, controller, path)`` returns once the socket
    accepts connections.  The other options are :class:`~sandboxd.rpc.Server`'s: the limits on
    each client, and who may connect (``allowed_uids``, ``socket_group``).
    """
    server = controller_server(
        controller, limits=limits, allowed_uids=allowed_uids, socket_group=socket_group
    )
    await server.serve_unix(path, task_status=task_status)
