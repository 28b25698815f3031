"""How sandboxctl ends: its exit statuses, and failures said on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Final

from .._errors import RPCError, Unavailable

#: Exit status for a failure with status code ``c``: ``EXIT_BASE + c`` (11 CANCELLED ...
#: 24 UNAVAILABLE); 2 is a usage error, 1 anything else.
EXIT_BASE: Final = 10


def reporting(run: Callable[[], int], socket_path: str) -> int:
    """``run()``'s exit status, or the exit status of the failure it raised, said on stderr."""
    try:
        return run()
    except Unavailable as err:
        print(f"sandboxctl: {err.code.name}: {err.message}", file=sys.stderr)
        print(
            f"sandboxctl: is the daemon running?  Start one with: "
            f"sandboxd serve --socket {socket_path}",
            file=sys.stderr,
        )
        return EXIT_BASE + err.code
    except RPCError as err:
        print(f"sandboxctl: {err.code.name}: {err.message}", file=sys.stderr)
        return EXIT_BASE + err.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug here, not the daemon's answer: say so, briefly
        print(f"sandboxctl: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def time_calls(client: Any) -> None:
    """Report on stderr the round trip of every unary call made through ``client.call``."""
    call = client.call

    def timed(service: str, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        start = time.perf_counter_ns()
        try:
            reply: dict[str, Any] = call(service, method, *args, **kwargs)
            return reply
        finally:
            elapsed = (time.perf_counter_ns() - start) / 1000
            print(f"sandboxctl: {method} round trip {elapsed:.0f} us", file=sys.stderr)

    client.call = timed
