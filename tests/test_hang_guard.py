"""The watchdog (``hang_guard.py``), run by pytest on small test modules: it fails a trio
test that asks for it once the module's ``GUARD`` has passed, however it asks, and leaves a
test that finishes in time alone."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

HUNG = "*TimeoutError: test still running after 0.1 s: something hangs"

GUARDED = """
import pytest
import trio

pytestmark = pytest.mark.usefixtures("watchdog")
GUARD = 0.1
torn_down = []


@pytest.fixture
async def resource():
    yield "resource"
    torn_down.append("resource")


async def test_sleeps_a_second():
    await trio.sleep(1)


async def test_sleeps_long_in_virtual_time(autojump_clock):
    await trio.sleep(1000)


async def test_finishes_in_time(autojump_clock, resource, nursery):
    nursery.start_soon(trio.sleep_forever)
    await trio.sleep(0.09)
    assert resource == "resource"


def test_the_passing_test_s_fixture_was_torn_down():
    assert torn_down == ["resource"]
"""


@pytest.fixture
def guarded(pytester: pytest.Pytester) -> pytest.Pytester:
    """A directory where trio mode is on and the watchdog plugin loaded."""
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makeconftest('pytest_plugins = ["hang_guard"]\n')
    return pytester


def test_a_module_asking_with_usefixtures_fails_its_hung_tests_and_only_those(
    guarded: pytest.Pytester,
) -> None:
    guarded.makepyfile(GUARDED)
    result = guarded.runpytest()
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        ["*test_sleeps_a_second*", HUNG, "*test_sleeps_long_in_virtual_time*", HUNG]
    )


def test_a_test_asking_through_a_fixture_argument_is_guarded(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(
        """
        import pytest
        import trio

        GUARD = 0.1


        @pytest.fixture
        async def server(watchdog):
            yield


        async def test_finishes_in_time(server):
            await trio.sleep(0)


        @pytest.fixture
        async def stuck(watchdog):
            yield
            await trio.sleep(1000)


        async def test_hangs_in_a_fixture_s_teardown(stuck, autojump_clock):
            pass
        """
    )
    result = guarded.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs_in_a_fixture_s_teardown*", HUNG])


def test_a_module_asking_without_a_guard_is_refused(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.usefixtures("watchdog")


        async def test_anything():
            pass
        """
    )
    result = guarded.runpytest()
    result.stderr.fnmatch_lines(["*asks for the watchdog: its module needs GUARD, in seconds"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
