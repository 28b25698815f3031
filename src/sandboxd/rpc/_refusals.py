"""The server's warnings about refused peers, rate-limited.

A hostile or broken client can be refused thousands of times a second (connections past the
limit, calls past the per-connection limit, bad frames); a line for each would flood the
log and cost the server more than the refusals do.  So each kind of refusal is logged at
most once per interval: the first in an interval as it comes, and those that follow it in
that interval counted, their number logged once the interval is over (or when the server
ends) with the last one's message.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Final, final

import trio

#: Seconds during which a kind of refusal is logged at most once.
DEFAULT_INTERVAL: Final = 10.0


@final
class _Kind:
    __slots__ = ("last", "suppressed", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.suppressed = 0
        self.last: tuple[str, tuple[Any, ...]] = ("", ())


@final
class RefusalLog:
    """Logs refusals to ``logger`` at WARNING, each ``kind`` at most once per ``interval``
    seconds (of trio's clock) plus one line counting those not logged in it.

    Every record has the fields ``refusal`` (the kind) and, on a count, ``suppressed``.
    :meth:`warn` never blocks.  A count is logged once its interval is over by a task
    started in :attr:`nursery` (the server sets it while it serves; without one, only the
    next refusal of its kind or :meth:`flush` logs it).
    """

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL) -> None:
        self._log = logger
        self.interval = interval
        self._kinds: dict[str, _Kind] = {}
        #: Where the task that logs the counts runs.
        self.nursery: trio.Nursery | None = None
        self._reporting = False

    def warn(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message % args`` unless a refusal of ``kind`` was logged less than an
        interval ago; then only count it.  Called from trio."""
        now = trio.current_time()
        entry = self._kinds.get(kind)
        if entry is not None and now < entry.until:
            entry.suppressed += 1
            entry.last = (message, args)
            if not self._reporting and self.nursery is not None:
                try:
                    self.nursery.start_soon(self._report_when_due)
                    self._reporting = True
                except RuntimeError:  # the nursery is closed
                    self.nursery = None
            return
        if entry is not None and entry.suppressed:
            self._report(kind, entry)
        self._kinds[kind] = _Kind(now + self.interval)
        self._log.warning(message, *args, extra={"refusal": kind})

    def _report(self, kind: str, entry: _Kind) -> None:
        message, args = entry.last
        self._log.warning(
            "%d more refusals (%s) not logged in the last %g s; the last: " + message,
            entry.suppressed,
            kind,
            self.interval,
            *args,
            extra={"refusal": kind, "suppressed": entry.suppressed},
        )
        entry.suppressed = 0

    def flush(self) -> None:
        """Log the counts of every kind whose interval is over (all of them with ``now``
        infinite)."""
        self._flush(math.inf)

    def _flush(self, now: float) -> float:
        """Log the counts due at ``now``; the time the next one falls due (inf: none)."""
        due = math.inf
        for kind, entry in list(self._kinds.items()):
            if now >= entry.until:
                if entry.suppressed:
                    self._report(kind, entry)
                del self._kinds[kind]
            elif entry.suppressed:
                due = min(due, entry.until)
        return due

    async def _report_when_due(self) -> None:
        """Log each count once its interval is over, until none is left to log."""
        try:
            due = self._flush(trio.current_time())
            while due != math.inf:
                await trio.sleep_until(due)
                due = self._flush(trio.current_time())
        finally:
            self._reporting = False
