"""The sandboxd services: method tables, message conversion, clients."""

from ._controller_service import CONTROLLER_SERVICE, controller_service, serve_controller
from ._data_service import DataPlane
from ._remote import RemoteController, RemoteExec, connect
from ._runtime_service import RUNTIME_SERVICE, runtime_service
from ._sync import SyncController, SyncExec

__all__ = [
    "CONTROLLER_SERVICE",
    "RUNTIME_SERVICE",
    "DataPlane",
    "RemoteController",
    "RemoteExec",
    "SyncController",
    "SyncExec",
    "connect",
    "controller_service",
    "runtime_service",
    "serve_controller",
]
