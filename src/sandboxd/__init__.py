"""sandboxd: a sandbox lifecycle runtime on trio.

The in-process :class:`Controller`, the :class:`RemoteController` (trio, over a socket) and the
:class:`SyncController` (blocking) share one interface: code written against one runs against
the others.  Everything not re-exported here is private to its layer.
"""

from typing import TYPE_CHECKING, Final

from ._lazy import lazy_exports
from ._version import PROTOCOL_VERSION, __version__

if TYPE_CHECKING:
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
        ExecExit,
        ExecOutput,
        ExecRequest,
        ExecSyncResult,
        ExitStatus,
        ListPage,
        LogChunk,
        LogGap,
        Mount,
        Platform,
        Resources,
        SandboxEvent,
        SandboxInstance,
        SandboxMetrics,
        SandboxOptions,
        SandboxState,
        SandboxStatus,
        WindowSize,
    )
    from ._paths import default_socket_path, default_state_dir
    from .api import RemoteController, SyncController, connect, serve_controller
    from .backends import Backend, BwrapBackend, ProcessBackend, SandboxProcess, SimBackend
    from .rpc import Limits, SocketInUseError
    from .runtime import Controller, Reply, Subscription, open_controller

# Every name loads on first use: ``import sandboxd`` costs next to nothing, so a trio-free
# part of the package (the asyncio client) does not import trio, and a short-lived program
# (sandboxctl) pays only for the layers it touches.
_LAZY: Final = {
    **dict.fromkeys(
        [
            "Aborted",
            "AlreadyExists",
            "Cancelled",
            "Code",
            "DataLoss",
            "DeadlineExceeded",
            "FailedPrecondition",
            "Internal",
            "InvalidArgument",
            "NotFound",
            "OutOfRange",
            "PermissionDenied",
            "ResourceExhausted",
            "RPCError",
            "Unauthenticated",
            "Unavailable",
            "Unimplemented",
            "Unknown",
        ],
        "._errors",
    ),
    **dict.fromkeys(
        [
            "ExecExit",
            "ExecOutput",
            "ExecRequest",
            "ExecSyncResult",
            "ExitStatus",
            "ListPage",
            "LogChunk",
            "LogGap",
            "Mount",
            "Platform",
            "Resources",
            "SandboxEvent",
            "SandboxInstance",
            "SandboxMetrics",
            "SandboxOptions",
            "SandboxState",
            "SandboxStatus",
            "WindowSize",
        ],
        "._models",
    ),
    **dict.fromkeys(("default_socket_path", "default_state_dir"), "._paths"),
    **dict.fromkeys(("RemoteController", "SyncController", "connect", "serve_controller"), ".api"),
    **dict.fromkeys(
        ("Backend", "BwrapBackend", "ProcessBackend", "SandboxProcess", "SimBackend"), ".backends"
    ),
    **dict.fromkeys(("Limits", "SocketInUseError"), ".rpc"),
    **dict.fromkeys(("Controller", "Reply", "Subscription", "open_controller"), ".runtime"),
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


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
    "ExecExit",
    "ExecOutput",
    "ExecRequest",
    "ExecSyncResult",
    "ExitStatus",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Limits",
    "ListPage",
    "LogChunk",
    "LogGap",
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
    "Resources",
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
    "WindowSize",
    "__version__",
    "connect",
    "default_socket_path",
    "default_state_dir",
    "open_controller",
    "serve_controller",
]
