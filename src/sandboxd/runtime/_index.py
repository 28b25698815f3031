"""The sandbox ids in order, for List's pages, kept up without sorting them all per page.

List pages through the sandboxes by id: a page starts after the last id of the one before,
so a sandbox that exists for the whole listing is on exactly one page whatever is created
or deleted meanwhile.  Sorting every id for every page would make a listing of n sandboxes
cost n pages x n log n; instead the index keeps

- ``sorted``: the ids as of its last rebuild, in order, some of them gone since (skipped:
  the live ids are the controller's map), and
- ``added``: the ids created since, in the order they came (sorted when a page is asked for;
  timsort sorts the part already sorted in one pass),

and a page merges the two from its starting point.  The index is rebuilt (dead ids
dropped, the added merged in) when they are more than a fraction of it, so each costs
O(n) once per O(n) creates or deletes.  Creates cost one append; a controller nobody lists
drops the index rather than let ``added`` grow, and builds it again at the next List.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping
from typing import Any, Final, final

#: Slack before a rebuild, so a small controller does not rebuild on every page.
_SLACK: Final = 1024


@final
class SandboxIndex:
    """The ids of ``live`` (a map the owner keeps) in order; :meth:`add` each new key.
    ``slack`` is how many ids it may carry beyond twice the live ones."""

    __slots__ = ("_added", "_live", "_slack", "_sorted", "_unsorted")

    def __init__(self, live: Mapping[str, Any], slack: int = _SLACK) -> None:
        self._live = live
        self._slack = slack
        self._sorted: list[str] | None = None
        self._added: list[str] = []
        # Whether ids came since ``_added`` was last sorted.
        self._unsorted = False

    def add(self, sandbox_id: str) -> None:
        """Note a new id (one may come again after its sandbox was deleted).  O(1)."""
        if self._sorted is None:
            return  # built from the map when next listed
        self._added.append(sandbox_id)
        self._unsorted = True
        if len(self._added) > 2 * len(self._live) + self._slack:
            self._sorted = None  # nobody lists: do not keep an ever longer list
            self._added = []

    def after(self, start: str | None) -> Iterator[str]:
        """Every id greater than ``start`` (all for ``None``), in order, once each; ids of
        sandboxes gone since are among them (the caller skips those not in the map).  The
        map must not change while the iterator is used."""
        ordered = self._prepare()
        added = self._added
        i = 0 if start is None else bisect_right(ordered, start)
        if not added:
            return map(ordered.__getitem__, range(i, len(ordered)))
        j = 0 if start is None else bisect_right(added, start)
        return _merged(ordered, i, added, j, start)

    def _prepare(self) -> list[str]:
        ordered = self._sorted
        live = self._live
        if ordered is None:
            ordered = self._sorted = sorted(live)
            self._added = []
            self._unsorted = False
            return ordered
        added = self._added
        slack = self._slack
        if len(ordered) + len(added) > 2 * len(live) + slack or len(added) > len(live) // 8:
            # Many gone or many new: fold them in, in O(n) (two sorted runs), the dead out.
            merged = ordered + added
            merged.sort()
            previous = None
            ordered = []
            for sandbox_id in merged:
                if sandbox_id != previous and sandbox_id in live:
                    ordered.append(sandbox_id)
                previous = sandbox_id
            self._sorted = ordered
            self._added = []
            self._unsorted = False
        elif self._unsorted:
            added.sort()
            self._unsorted = False
        return ordered


def _merged(
    ordered: list[str], i: int, added: list[str], j: int, last: str | None
) -> Iterator[str]:
    """The ids of two sorted lists from ``i`` and ``j`` on, in order, each once."""
    n, m = len(ordered), len(added)
    while True:
        if i < n and (j >= m or ordered[i] <= added[j]):
            sandbox_id = ordered[i]
            i += 1
        elif j < m:
            sandbox_id = added[j]
            j += 1
        else:
            return
        if sandbox_id != last:  # an id deleted and created again is in both lists
            last = sandbox_id
            yield sandbox_id
