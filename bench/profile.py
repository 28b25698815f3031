"""Summarise a py-spy ``raw`` profile (collapsed stacks): where the samples were.

Each line of ``py-spy record -f raw`` is ``frame;frame;...;leaf COUNT``, a frame being
``function (file:line)``.  **Self** counts the samples in which a function is the leaf (it was
running), **inclusive** those in which it is anywhere on the stack (once per stack); the
main thread's own self samples are counted apart too.
Functions are told apart by name and file, not line.

Run: ``python -m bench.profile FILE [--top N]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

_LINE: Final = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
KINDS: Final = ("self", "self_main", "inclusive", "inclusive_main")
_FRAME: Final = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def function_of(frame: str) -> str:
    """``"f (pkg/mod.py:12)"`` -> ``"f (pkg/mod.py)"``."""
    found = _FRAME.match(frame)
    return f"{found['name']} ({found['file']})" if found else frame


def is_main_thread(frames: list[str]) -> bool:
    """Whether a stack is the main thread's (the event loop's): worker threads start in
    ``Thread._bootstrap``."""
    return not frames[0].startswith("Thread._bootstrap")


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """The samples, and the ``top`` functions by self and by inclusive samples.

    ``self`` and ``inclusive`` count every thread; ``self_main`` and ``inclusive_main`` only
    the main thread (the trio run loop, where the daemon's Python work happens).  ``threads``
    has the samples of the main thread and of the others (trio's worker threads: the store's
    SQLite writes, and idle workers waiting for a job, which py-spy does not count as idle).
    """
    counts: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        found = _LINE.match(line.strip())
        if not found:
            continue
        count = int(found["count"])
        frames = [function_of(f) for f in found["stack"].split(";")]
        total += count
        main = is_main_thread(frames)
        threads["main" if main else "other"] += count
        for suffix in ("", "_main") if main else ("",):
            counts["self" + suffix][frames[-1]] += count
            for function in set(frames):
                counts["inclusive" + suffix][function] += count

    def rows(counter: Counter[str], of: int) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "share": n / of if of else 0.0}
            for name, n in counter.most_common(top)
        ]

    shares_of = {"": total, "_main": threads["main"]}
    summary: dict[str, Any] = {"samples": total, "threads": dict(threads)}
    for kind in KINDS:
        summary[kind] = rows(counts[kind], shares_of["_main" if kind.endswith("_main") else ""])
    return summary


def table(summary: dict[str, Any], kind: str = "self") -> str:
    """The ``self``, ``inclusive``, ``self_main`` or ``inclusive_main`` rows as a markdown
    table (shares of all the samples, or of the main thread's for the ``_main`` ones)."""
    title = {
        "self_main": "self samples (main thread)",
        "inclusive_main": "inclusive samples (main thread)",
    }.get(kind, f"{kind} samples")
    of = "share of the main thread's" if kind.endswith("_main") else "share of all"
    lines = [f"| function | {title} | {of} |", "|---|---|---|"]
    for row in summary[kind]:
        name = row["function"].replace("|", "\\|")
        lines.append(f"| `{name}` | {row['samples']} | {row['share']:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("file", type=Path, help="py-spy record -f raw output")
    parser.add_argument("--top", type=int, default=15, help="functions shown (15)")
    args = parser.parse_args(argv)
    summary = summarize(args.file, args.top)
    threads = summary["threads"]
    print(
        f"{summary['samples']} samples: main thread {threads.get('main', 0)}, "
        f"other threads {threads.get('other', 0)}\n"
    )
    for kind in KINDS:
        print(table(summary, kind))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
