"""The measured calls: one entry of :data:`CALLS` per call.

A call is a service, a method and the request message sent on every measured round trip,
plus the calls that must run first on the same connection (``setup``, e.g. creating the
sandbox whose ``Status`` is measured) and after it (``teardown``).  Every reply is checked:
a status error, or a response message without one of ``expect_keys``, voids the benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final


@dataclass(frozen=True)
class Call:
    """A measured call (or, without ``setup`` and ``teardown``, an unmeasured step of one)."""

    service: str
    method: str
    request: Mapping[str, Any] = field(default_factory=dict)
    expect_keys: tuple[str, ...] = ()
    setup: tuple[Call, ...] = ()
    teardown: tuple[Call, ...] = ()

    @property
    def name(self) -> str:
        """``Runtime/Version`` for ``sandboxd.v1.Runtime`` ``Version``."""
        return f"{self.service.rsplit('.', 1)[-1]}/{self.method}"


_RUNTIME: Final = "sandboxd.v1.Runtime"
_CONTROLLER: Final = "sandboxd.v1.Controller"

# Add a measured call here; sandboxd is measured on every entry, in this order.  The floor
# and the gRPC baseline answer every request alike and are measured on BASELINE_CALL only.
_SIM_BOX: Final = {"sandbox_id": "bench", "sandboxer": "sim"}
_ID: Final = {"sandbox_id": "bench"}
_TABLE: Final[tuple[Call, ...]] = (
    Call(_RUNTIME, "Version", expect_keys=("version", "protocol")),
    # A query: answered inline from the state the sandbox's actor published.
    Call(
        _CONTROLLER,
        "Status",
        _ID,
        expect_keys=("sandbox_id", "state", "pid"),
        setup=(Call(_CONTROLLER, "Create", _SIM_BOX), Call(_CONTROLLER, "Start", _ID)),
        teardown=(Call(_CONTROLLER, "Shutdown", _ID),),
    ),
    Call(
        _CONTROLLER,
        "Ping",
        _ID,
        setup=(Call(_CONTROLLER, "Create", _SIM_BOX),),
        teardown=(Call(_CONTROLLER, "Shutdown", _ID),),
    ),
    # Through the actor: a task for the call, a message to the actor's mailbox and back.
    # Wait on a stopped sandbox answers at once, so this is the cost of the actor hop.
    Call(
        _CONTROLLER,
        "Wait",
        _ID,
        expect_keys=("exit_status", "exited_at"),
        setup=(Call(_CONTROLLER, "Create", _SIM_BOX), Call(_CONTROLLER, "Stop", _ID)),
        teardown=(Call(_CONTROLLER, "Shutdown", _ID),),
    ),
)

CALLS: Final[dict[str, Call]] = {call.name: call for call in _TABLE}

BASELINE_CALL: Final = "Runtime/Version"

# The clients section (``bench.measure client``): the same calls through sandboxd's clients.
#: Sequential clients, in table order: kind -> what the table calls it.  ``lean`` is the
#: reference: bench/client.py's sequential loop.  (Besides these, ``sync-threads``: threads
#: sharing one SyncController, calling in a loop: calls/s.)
CLIENT_KINDS: Final[dict[str, str]] = {
    "lean": "lean (bench.client)",
    "sync-call": "SyncClient.call",
    "sync-model": "SyncController",
    "trio-call": "trio Client.call",
    "trio-model": "RemoteController",
}
REFERENCE_CLIENT: Final = "lean"
CLIENT_CALLS: Final = ("Runtime/Version", "Controller/Status", "Controller/Ping")
#: The calls (of ``--clients``) also measured with threads sharing one SyncController.
CLIENT_THREAD_CALLS: Final = ("Runtime/Version", "Controller/Status")
CLIENT_THREADS: Final = 8
