"""``sandboxctl``: the command-line client."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .._version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandboxctl", description="Drive a sandboxd daemon.")
    parser.add_argument("--version", action="version", version=f"sandboxctl {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0
