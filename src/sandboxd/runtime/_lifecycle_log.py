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
application) chooses handlers and levels.  Each method of :class:`LifecycleLog` returns at
once when INFO is not enabled for the logger, so a quiet runtime builds no record.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any, Final, final

import trio

from ._lifecycle import Phase

log: Final = logging.getLogger("sandboxd.sandbox")

_INFO: Final = logging.INFO
#: Seconds a running :class:`LifecycleLog` keeps a line before it logs it, with the others.
DEFAULT_DELAY: Final = 0.02

#: Exit statuses above this are death by signal (status - 128), as the backends report them.
_SIGNALLED: Final = 128


#: The attributes of a record that are the same for every line of this module, once the
#: application has turned off what varies by thread and process (see :func:`_record`).
_constant: dict[str, Any] | None = None


def _fixed() -> bool:
    """Whether a record's thread and process attributes are None (logging told not to find
    them, as ``sandboxd serve`` does) and records are plain LogRecords."""
    return not (
        logging.logThreads
        or logging.logProcesses
        or logging.logMultiprocessing
        or getattr(logging, "logAsyncioTasks", False)
    ) and (logging.getLogRecordFactory() is logging.LogRecord)


def _record(now: int, level: int, message: str, args: tuple[Any, ...]) -> logging.LogRecord:
    """The LogRecord ``log.makeRecord`` would make at ``now`` (ns) (with :func:`_fixed`),
    for a third of its cost."""
    global _constant
    if _constant is None:
        _constant = vars(logging.LogRecord(log.name, level, __file__, 0, "", (), None))
    record = logging.LogRecord.__new__(logging.LogRecord)
    created = now / 1e9
    attributes = record.__dict__ = _constant.copy()
    attributes["created"] = created
    attributes["msecs"] = (now % 1_000_000_000) // 1_000_000 + 0.0
    attributes["relativeCreated"] = (
        _constant["relativeCreated"] + (created - _constant["created"]) * 1000
    )
    attributes["levelno"] = level
    attributes["levelname"] = logging.getLevelName(level)
    attributes["msg"] = message
    attributes["args"] = args
    return record


#: A line not yet logged: when (time.time_ns()), level, message, arguments, fields.
_Line = tuple[int, int, str, tuple[Any, ...], dict[str, Any]]


def _handle(lines: list[_Line]) -> None:
    if not _fixed():
        for now, level, message, args, fields in lines:
            record = log.makeRecord(
                log.name, level, __file__, 0, message, args, None, extra=fields
            )
            record.created = now / 1e9
            log.handle(record)
        return
    for now, level, message, args, fields in lines:
        record = _record(now, level, message, args)
        vars(record).update(fields)
        log.handle(record)


@final
class LifecycleLog:
    """Logs the lines this module's docstring describes, one method per kind of change.

    Given no ``nursery``, each line is logged as it happens.  Given one (the Controller
    gives its own), the lines are kept a moment (at most ``delay`` seconds, by a task
    started there when the first comes) and logged together: made one after the other, a
    few hundred records cost far less than made one at a time between the event loop's
    other work.  Each record has the time of its change, not of its logging.  Once the
    nursery is closed, lines are logged as they happen again.
    """

    def __init__(self, nursery: trio.Nursery | None = None, delay: float = DEFAULT_DELAY) -> None:
        self.delay = delay
        self._nursery = nursery
        self._pending: list[_Line] = []

    def _emit(
        self, level: int, message: str, args: tuple[Any, ...], fields: dict[str, Any]
    ) -> None:
        # Arguments, not a formatted string: formatting waits for a handler that wants it.
        line = (time.time_ns(), level, message, args, fields)
        if self._nursery is None:
            _handle([line])
            return
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            try:
                self._nursery.start_soon(self._flush_later, name="sandboxd: lifecycle log")
            except RuntimeError:  # the nursery is closed
                self._nursery = None
                self.flush()

    async def _flush_later(self) -> None:
        try:
            await trio.sleep(self.delay)
        finally:
            self.flush()

    def flush(self) -> None:
        """Log the lines kept so far."""
        if self._pending:
            lines, self._pending = self._pending, []
            _handle(lines)

    def created(self, sandbox_id: str, sandboxer: str) -> None:
        """The sandbox was created (recorded, not started)."""
        if log.isEnabledFor(_INFO):
            fields = {"event": "created", "sandbox_id": sandbox_id, "sandboxer": sandboxer}
            self._emit(_INFO, "sandbox %s created (sandboxer %s)", (sandbox_id, sandboxer), fields)

    def started(self, sandbox_id: str, sandboxer: str, pid: int) -> None:
        """The sandbox's process runs, as ``pid``."""
        if log.isEnabledFor(_INFO):
            fields = {
                "event": "started",
                "sandbox_id": sandbox_id,
                "sandboxer": sandboxer,
                "pid": pid,
            }
            self._emit(
                _INFO,
                "sandbox %s started, pid %d (sandboxer %s)",
                (sandbox_id, pid, sandboxer),
                fields,
            )

    def exited(
        self,
        sandbox_id: str,
        sandboxer: str,
        status: int,
        phase: Phase,
        reason: str | None,
        known: bool,
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
        self._emit(_INFO, message, args, fields)

    def deleted(self, sandbox_id: str, sandboxer: str) -> None:
        """The sandbox is gone (its Shutdown is done)."""
        if log.isEnabledFor(_INFO):
            fields = {"event": "deleted", "sandbox_id": sandbox_id, "sandboxer": sandboxer}
            self._emit(_INFO, "sandbox %s deleted (sandboxer %s)", (sandbox_id, sandboxer), fields)

    def recovered(
        self, sandbox_id: str, sandboxer: str, phase: Phase, pid: int, ended: bool = False
    ) -> None:
        """The runtime took up again a sandbox an earlier run recorded, in ``phase``, its
        running process ``pid`` adopted (0: none); ``ended``: its process ended while the
        runtime was down (a WARNING)."""
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
            message = "sandbox %s recovered %s: adopted its running process %d (sandboxer %s)"
            args = (sandbox_id, state, pid, sandboxer)
        else:
            message = "sandbox %s recovered %s (sandboxer %s)"
            args = (sandbox_id, state, sandboxer)
        self._emit(level, message, args, fields)
