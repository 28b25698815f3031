"""Crash points: places where a test may have the daemon kill itself, to check that no step
of a Start, Stop or Shutdown can be split by a crash into a state recovery gets wrong.

Off unless the environment variable :data:`CRASH_AT_VARIABLE` names one of
:data:`CRASH_POINTS` when this module is first imported (at the daemon's start).  Then the
first time that point is reached, the process SIGKILLs itself: nothing is flushed, closed or
answered, as in a real crash.  Unarmed, a point costs one comparison.
"""

from __future__ import annotations

import os
import signal
from typing import Final

#: The environment variable that arms a crash point (read once, at import).
CRASH_AT_VARIABLE: Final = "SANDBOXD_CRASH_AT"

#: Every crash point, in the order a sandbox's life reaches them.
CRASH_POINTS: Final = (
    "start:spawned",  # the process exists, held at its gate; nothing queued yet
    "start:queued",  # its pid is queued with the store, not yet committed
    "start:recorded",  # its pid is committed; the process is still held
    "start:released",  # the process runs its command; `ready` is not yet queued
    "start:ready",  # the `ready` record is committed; Start not yet answered
    "stop:signalled",  # SIGTERM sent; `stopping` not yet queued
    "stop:recorded",  # the `stopping` record is committed
    "shutdown:killed",  # SIGKILL sent; `shutting_down` not yet queued
    "shutdown:exited",  # the process ended; the delete not yet queued
    "shutdown:deleted",  # the delete is committed; Shutdown not yet answered
)

_ARMED: Final = os.environ.get(CRASH_AT_VARIABLE) or None
if _ARMED is not None and _ARMED not in CRASH_POINTS:
    raise ValueError(
        f"{CRASH_AT_VARIABLE}={_ARMED!r}: not a crash point (known: {', '.join(CRASH_POINTS)})"
    )

#: Whether a crash point is armed in this process.
ARMED: Final = _ARMED is not None


def crash_at(point: str) -> None:
    """SIGKILL this process if ``point`` is the armed crash point."""
    if point == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
