"""The watchdog: a trio test that asks for it fails, rather than hangs, once it has run for
its module's ``GUARD`` seconds (real ones, or virtual ones under the autojump clock).

A module asks with ``pytestmark = pytest.mark.usefixtures("watchdog")``; a test, or one of
its fixtures, may also take a ``watchdog`` argument.  The time counts over the test's whole
``trio.run``: its trio fixtures' setup, the test, and their teardown.  A test that hangs
inside a shielded cancel scope still hangs.

pytest-trio runs only the async fixtures a test takes as arguments (and theirs), so a fixture
cannot guard the tests that name it in ``usefixtures``.  The ``watchdog`` fixture only marks
the test; the guard is the ``run`` of a ``trio`` mark given to each trio test whose fixtures
include it (``@pytest.mark.trio(run=...)`` is pytest-trio's documented way to choose how a
test runs): the test's ``run`` under a cancel scope with the deadline.  Hypothesis tests
cannot have one (pytest-trio runs their examples with plain ``trio.run``), nor sync tests.

conftest.py loads this module as a plugin.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

#: The fixture, and the module attribute giving its seconds.
FIXTURE = "watchdog"
ATTRIBUTE = "GUARD"


@pytest.fixture(name=FIXTURE)
def watchdog() -> None:
    """Asks for the watchdog (see this module's docstring): a trio test that asks for it
    fails once it has run for its module's ``GUARD`` seconds."""


@pytest.hookimpl(trylast=True)  # after pytest-trio has marked the trio tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function) or FIXTURE not in item.fixturenames:
            continue
        if item.get_closest_marker("trio") is None:
            continue
        if hasattr(item.obj, "hypothesis"):
            raise pytest.UsageError(f"{item.nodeid}: the watchdog cannot guard a Hypothesis test")
        guard = getattr(item.module, ATTRIBUTE, None)
        if not isinstance(guard, int | float) or guard <= 0:
            raise pytest.UsageError(
                f"{item.nodeid} asks for the watchdog: its module needs {ATTRIBUTE}, in seconds"
            )
        # pytest-trio takes the first trio mark with a ``run``: put this one first, wrapping
        # the ``run`` the test had (trio mode gives every trio test one).
        run = next((m.kwargs["run"] for m in item.iter_markers("trio") if "run" in m.kwargs), None)
        guarded = functools.partial(_run_guarded, run or trio.run, guard)
        item.add_marker(pytest.mark.trio(run=guarded), append=False)


def _run_guarded(
    run: Callable[..., Any],
    guard: float,
    afn: Callable[[], Awaitable[object]],
    **options: Any,
) -> Any:
    """``run(afn, **options)``, failing with TimeoutError once ``afn`` has run for ``guard``
    seconds (cancelled: its fixtures' teardown runs first)."""
    __tracebackhide__ = True
    deadline = trio.move_on_after(guard)  # counts from when the run enters it

    async def guarded() -> object:
        with deadline:
            return await afn()
        return None

    try:
        return run(guarded, **options)
    finally:
        if deadline.cancel_called:
            raise TimeoutError(f"test still running after {guard} s: something hangs")
