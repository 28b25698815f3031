"""The lifecycle log: one line per change in a sandbox's life, as containerd logs at info.

Every line goes to the logger ``sandboxd.sandbox`` at INFO (a recovered sandbox whose
process ended while the runtime was down: WARNING), names the sandbox and its sandboxer in
its message, and carries the same facts as fields of the record (``extra``) for a
structured formatter: ``sandbox_id``, ``sandboxer``, ``event`` (``created``, ``started``,
``exited``, ``deleted``, ``recovered``) and, by event, ``pid``, ``exit_status``, ``reason``,
``signal``, ``state``.

The ``reason`` of an exit says what ended the sandbox: ``oom_killed`` or
``lifetime_expired`` (the reason its Status and exit event give), ``stop`` (a Stop),
``shutdown`` (a Shutdown), ``not_started`` (stopped or shut down before it ever ran),
``signal`` (a signal nobody here asked for: ``signal`` names it), ``exit`` (its process
exited on its own) or ``unknown`` (it ended while the runtime was down).

The runtime never configures logging: whoever runs it (``sandboxd serve``, or an embedding
application) chooses handlers and levels.  Each function returns at once when INFO is not
enabled for the logger, so a quiet runtime builds no record.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Final

from ._lifecycle import Phase

log: Final = logging.getLogger("sandboxd.sandbox")

_INFO: Final = logging.INFO

#: Exit statuses above this are death by signal (status - 128), as the backends report them.
_SIGNALLED: Final = 128


def _emit(level: int, message: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    # Arguments, not a formatted string: formatting waits for a handler that wants the line.
    log.log(level, message, *args, extra=fields)


def created(sandbox_id: str, sandboxer: str) -> None:
    """The sandbox was created (recorded, not started)."""
    if log.isEnabledFor(_INFO):
        fields = {"event": "created", "sandbox_id": sandbox_id, "sandboxer": sandboxer}
        _emit(_INFO, "sandbox %s created (sandboxer %s)", (sandbox_id, sandboxer), fields)


def started(sandbox_id: str, sandboxer: str, pid: int) -> None:
    """The sandbox's process runs, as ``pid``."""
    if log.isEnabledFor(_INFO):
        fields = {"event": "started", "sandbox_id": sandbox_id, "sandboxer": sandboxer, "pid": pid}
        _emit(
            _INFO,
            "sandbox %s started, pid %d (sandboxer %s)",
            (sandbox_id, pid, sandboxer),
            fields,
        )


def exited(
    sandbox_id: str, sandboxer: str, status: int, phase: Phase, reason: str | None, known: bool
) -> None:
    """The sandbox's process ended with ``status``; ``phase`` is the sandbox's phase just
    before, ``reason`` the runtime's own (Status's ``reason``), ``known`` False when the
    status is a stand-in."""
    if not log.isEnabledFor(_INFO):
        return
    signum = status - _SIGNALLED if status > _SIGNALLED else 0
    if reason is None:
        if not known:
            reason = "unknown"
        elif phase is Phase.CREATED:
            reason = "not_started"
        elif phase is Phase.STOPPING:
            reason = "stop"
        elif phase is Phase.SHUTTING_DOWN:
            reason = "shutdown"
        else:
            reason = "signal" if signum else "exit"
    fields: dict[str, Any] = {
        "event": "exited",
        "sandbox_id": sandbox_id,
        "sandboxer": sandboxer,
        "exit_status": status,
        "reason": reason,
    }
    if signum and known:
        try:
            fields["signal"] = name = signal.Signals(signum).name
        except ValueError:
            fields["signal"] = name = str(signum)
        message = "sandbox %s exited with status %d, reason %s, signal %s (sandboxer %s)"
        args: tuple[Any, ...] = (sandbox_id, status, reason, name, sandboxer)
    else:
        message = "sandbox %s exited with status %d, reason %s (sandboxer %s)"
        args = (sandbox_id, status, reason, sandboxer)
    _emit(_INFO, message, args, fields)


def deleted(sandbox_id: str, sandboxer: str) -> None:
    """The sandbox is gone (its Shutdown is done)."""
    if log.isEnabledFor(_INFO):
        fields = {"event": "deleted", "sandbox_id": sandbox_id, "sandboxer": sandboxer}
        _emit(_INFO, "sandbox %s deleted (sandboxer %s)", (sandbox_id, sandboxer), fields)


def recovered(
    sandbox_id: str, sandboxer: str, phase: Phase, pid: int, ended: bool = False
) -> None:
    """The runtime took up again a sandbox an earlier run recorded, in ``phase``; ``ended``:
    its process ended while the runtime was down (a WARNING)."""
    level = logging.WARNING if ended else _INFO
    if not log.isEnabledFor(level):
        return
    state = phase.reported.value
    fields = {
        "event": "recovered",
        "sandbox_id": sandbox_id,
        "sandboxer": sandboxer,
        "state": state,
        "pid": pid,
    }
    if ended:
        message = (
            "sandbox %s recovered %s: its process ended while sandboxd was down (sandboxer %s)"
        )
        args: tuple[Any, ...] = (sandbox_id, state, sandboxer)
    elif pid > 0:
        message = "sandbox %s recovered %s, pid %d (sandboxer %s)"
        args = (sandbox_id, state, pid, sandboxer)
    else:
        message = "sandbox %s recovered %s (sandboxer %s)"
        args = (sandbox_id, state, sandboxer)
    _emit(level, message, args, fields)
