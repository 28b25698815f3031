"""``sandboxctl``: drive a sandboxd daemon from a shell.

Every subcommand prints a human-readable answer, or with ``--json`` exactly the response
message as JSON (timestamps as RFC 3339 text).  Errors print ``sandboxctl: CODE: message`` on
stderr and exit with ``10 + the status code``, so scripts can tell failure classes apart.

A short-lived process pays for every module it imports, so this module imports almost
nothing: the hot commands (``version``, ``status``) run on a lean path (``_hot``), and
everything else loads argparse and the models (``_commands``).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from . import _hot
from ._report import EXIT_BASE, reporting

if TYPE_CHECKING:
    import argparse

__all__ = ["EXIT_BASE", "main"]


def _parser() -> argparse.ArgumentParser:
    """sandboxctl's full argument parser."""
    from ._commands import parser

    return parser()


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run sandboxctl with ``argv`` (default: the program's arguments); its exit status."""
    if argv is not None:
        return _main(argv, sys.stdout if out is None else out)
    try:
        return _main(sys.argv[1:], sys.stdout if out is None else out)
    finally:
        # Run as the program: the process ends now.  Its last garbage collection would go
        # over every object the imports made (2 to 3 ms, a tenth of ``version``), and
        # none of them is garbage worth it.
        gc.freeze()


def _main(words: Sequence[str], out: TextIO) -> int:
    hot = _hot.parse(words)
    if hot is None:
        from . import _commands

        return _commands.main(words, out)
    if hot.socket:
        socket_path = hot.socket
    else:
        from .._paths import default_socket_path

        socket_path = default_socket_path()
    return reporting(lambda: _hot.run(hot, socket_path, out), socket_path)
