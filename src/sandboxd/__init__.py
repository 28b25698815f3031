"""sandboxd: a sandbox lifecycle runtime on trio.

The in-process :class:`Controller`, the :class:`RemoteController` (trio, over a socket) and the
:class:`SyncController` (blocking) share one interface: code written against one runs against
the others.  Everything not re-exported here is private to its layer.
"""

from ._errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    Code,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    RPCError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from ._models import (
    ExitStatus,
    Mount,
    Platform,
    SandboxEvent,
    SandboxInstance,
    SandboxMetrics,
    SandboxOptions,
    SandboxState,
    SandboxStatus,
)
from ._paths import default_socket_path, default_state_dir
from ._version import PROTOCOL_VERSION, __version__
from .api import RemoteController, SyncController, connect, serve_controller
from .backends import Backend, BwrapBackend, ProcessBackend, SandboxProcess, SimBackend
from .rpc import Limits, SocketInUseError
from .runtime import Controller, Reply, Subscription, open_controller

__all__ = [
    "PROTOCOL_VERSION",
    "Aborted",
    "AlreadyExists",
    "Backend",
    "BwrapBackend",
    "Cancelled",
    "Code",
    "Controller",
    "DataLoss",
    "DeadlineExceeded",
    "ExitStatus",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Limits",
    "Mount",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Platform",
    "ProcessBackend",
    "RPCError",
    "RemoteController",
    "Reply",
    "ResourceExhausted",
    "SandboxEvent",
    "SandboxInstance",
    "SandboxMetrics",
    "SandboxOptions",
    "SandboxProcess",
    "SandboxState",
    "SandboxStatus",
    "SimBackend",
    "SocketInUseError",
    "Subscription",
    "SyncController",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "__version__",
    "connect",
    "default_socket_path",
    "default_state_dir",
    "open_controller",
    "serve_controller",
]
