"""The runtime: the lifecycle table, one actor per sandbox, and the Controller."""

from ._controller import (
    DEFAULT_MAX_SANDBOXES,
    DEFAULT_SANDBOXER,
    DEFAULT_STOP_TIMEOUT,
    Controller,
    default_backends,
    open_controller,
    preferred_sandboxer,
)
from ._events import EventBus, Subscription
from ._exec import MAX_EXEC_SYNC_OUTPUT, ExecSession
from ._lifecycle import (
    CALLS,
    EVENTS,
    TRANSITIONS,
    Effect,
    Input,
    LifecycleError,
    Phase,
    Refusal,
    Transition,
    decide,
    mermaid_diagram,
)
from ._logs import DEFAULT_MAX_LOG_BYTES, LogReader
from ._reply import Reply, Waiter
from ._store import SandboxRecord, SandboxStore, StoreCorrupt

__all__ = [
    "CALLS",
    "DEFAULT_MAX_LOG_BYTES",
    "DEFAULT_MAX_SANDBOXES",
    "DEFAULT_SANDBOXER",
    "DEFAULT_STOP_TIMEOUT",
    "EVENTS",
    "MAX_EXEC_SYNC_OUTPUT",
    "TRANSITIONS",
    "Controller",
    "Effect",
    "EventBus",
    "ExecSession",
    "Input",
    "LifecycleError",
    "LogReader",
    "Phase",
    "Refusal",
    "Reply",
    "SandboxRecord",
    "SandboxStore",
    "StoreCorrupt",
    "Subscription",
    "Transition",
    "Waiter",
    "decide",
    "default_backends",
    "mermaid_diagram",
    "open_controller",
    "preferred_sandboxer",
]
