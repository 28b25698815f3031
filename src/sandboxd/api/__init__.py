"""The sandboxd services: method tables, message conversion, clients."""

from ._controller_service import CONTROLLER_SERVICE, controller_service, serve_controller
from ._remote import RemoteController, connect
from ._runtime_service import RUNTIME_SERVICE, runtime_service
from ._sync import SyncController

__all__ = [
    "CONTROLLER_SERVICE",
    "RUNTIME_SERVICE",
    "RemoteController",
    "SyncController",
    "connect",
    "controller_service",
    "runtime_service",
    "serve_controller",
]
