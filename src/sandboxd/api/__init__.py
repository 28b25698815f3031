"""The sandboxd services: method tables, message conversion, clients."""

from typing import TYPE_CHECKING, Final

from .._lazy import lazy_exports
from ._client_common import CONTROLLER_SERVICE, RUNTIME_SERVICE, RemoteExec

if TYPE_CHECKING:
    from ._aio import AsyncController, AsyncExec
    from ._controller_service import controller_service, serve_controller
    from ._data_service import DataPlane
    from ._pb_services import SANDBOX_SERVICE, protobuf_services
    from ._remote import RemoteController, connect
    from ._runtime_service import runtime_service
    from ._sync import SyncController, SyncExec

# Loaded on first use: the trio-free modules of this layer (the asyncio client) import
# without importing trio.
_LAZY: Final = {
    **dict.fromkeys(("AsyncController", "AsyncExec"), "._aio"),
    **dict.fromkeys(("controller_service", "serve_controller"), "._controller_service"),
    **dict.fromkeys(("DataPlane",), "._data_service"),
    # The protobuf services: only they import protobuf.
    **dict.fromkeys(("SANDBOX_SERVICE", "protobuf_services"), "._pb_services"),
    **dict.fromkeys(("RemoteController", "connect"), "._remote"),
    **dict.fromkeys(("runtime_service",), "._runtime_service"),
    **dict.fromkeys(("SyncController", "SyncExec"), "._sync"),
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


__all__ = [
    "CONTROLLER_SERVICE",
    "RUNTIME_SERVICE",
    "SANDBOX_SERVICE",
    "AsyncController",
    "AsyncExec",
    "DataPlane",
    "RemoteController",
    "RemoteExec",
    "SyncController",
    "SyncExec",
    "connect",
    "controller_service",
    "protobuf_services",
    "runtime_service",
    "serve_controller",
]
