"""The sim backend: simulated processes, timers on trio's (autojump) clock."""

from __future__ import annotations

import math
import signal
from collections.abc import Mapping
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from procs import Exits
from sandboxd import FailedPrecondition, InvalidArgument
from sandboxd._models import SandboxOptions, SandboxSpec
from sandboxd.backends import Backend, SimBackend, host_platform
from sandboxd.backends._sim import FIRST_SIM_PID, SimProcess


def make_spec(sim: Mapping[str, Any] | None = None, **kwargs: Any) -> SandboxSpec:
    return SandboxSpec("sim-1", "sim", SandboxOptions(sim=sim, **kwargs))


async def start(
    backend: SimBackend, nursery: trio.Nursery, sim: Mapping[str, Any] | None = None
) -> tuple[SimProcess, Exits]:
    spec = make_spec(sim)
    backend.validate(spec)
    exits = Exits()
    return await backend.start(spec, nursery, exits), exits


def test_satisfies_the_protocol() -> None:
    backend: Backend = SimBackend()
    assert backend.name == "sim"
    assert backend.unavailable_reason() is None
    assert backend.platform() == host_platform()


async def test_pids_are_deterministic_per_backend() -> None:
    first, second = SimBackend(), SimBackend()
    async with trio.open_nursery() as nursery:
        pids_first = [(await start(first, nursery))[0].pid for _ in range(3)]
        pids_second = [(await start(second, nursery))[0].pid for _ in range(2)]
        assert pids_first == [FIRST_SIM_PID, FIRST_SIM_PID + 1, FIRST_SIM_PID + 2]
        assert pids_second == [FIRST_SIM_PID, FIRST_SIM_PID + 1]
        assert first.started_count == 3
        assert first.running == frozenset(pids_first)
        # No timer, no task.
        assert nursery.child_tasks == frozenset()
        for pid in pids_first:
            first.exit(pid, 0)
        for pid in pids_second:
            second.exit(pid, 0)


async def test_command_is_accepted_and_ignored() -> None:
    backend = SimBackend()
    spec = make_spec(None, command=("no-such-executable",), cwd="relative")
    backend.validate(spec)
    async with trio.open_nursery() as nursery:
        process = await backend.start(spec, nursery, Exits())
        assert process.info() == {"sim": "true", "pid": str(FIRST_SIM_PID)}
        process.signal(signal.SIGKILL)


async def test_exit_after(autojump_clock: trio.testing.MockClock) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        process, exits = await start(backend, nursery, {"exit_after": 5, "exit_code": 7})
        assert not process.usage_blocks
        assert process.usage() == (0, 0, 1)
        await exits.event.wait()
        assert exits.statuses == [7]
        assert exits.times == [t0 + 5]
        assert process.usage() == (0, 0, 0)
        assert backend.running == frozenset()
        process.signal(signal.SIGKILL)  # after the exit: nothing
    assert exits.statuses == [7]


async def test_exit_after_zero_and_default_code(autojump_clock: trio.testing.MockClock) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        _, exits = await start(backend, nursery, {"exit_after": 0})
        await exits.event.wait()
    assert exits.statuses == [0]


async def test_ignore_sigterm_then_sigkill(autojump_clock: trio.testing.MockClock) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        process, exits = await start(backend, nursery, {"ignore_sigterm": True})
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, 0):
            process.signal(signum)
        await trio.sleep(3600)
        assert exits.statuses == []
        assert backend.running == {process.pid}
        process.signal(signal.SIGKILL)  # on_exit is called before signal returns
        assert exits.statuses == [137]
        assert backend.running == frozenset()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
async def test_stop_signals_without_delay(signum: signal.Signals) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        process, exits = await start(backend, nursery)
        process.signal(signum)
        assert exits.statuses == [128 + signum]


async def test_other_signals_end_the_process_at_once() -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        process, exits = await start(backend, nursery, {"ignore_sigterm": True})
        process.signal(signal.SIGUSR1)
        assert exits.statuses == [128 + signal.SIGUSR1]
        process.signal(signal.SIGTERM)
        process.signal(signal.SIGKILL)
        assert exits.statuses == [128 + signal.SIGUSR1]


async def test_stop_delay(autojump_clock: trio.testing.MockClock) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        process, exits = await start(backend, nursery, {"stop_delay": 3})
        await trio.sleep(10)
        t0 = trio.current_time()
        process.signal(signal.SIGTERM)
        assert exits.statuses == []
        assert len(nursery.child_tasks) == 1
        await trio.sleep(1)
        process.signal(signal.SIGTERM)  # a second SIGTERM does not push the exit back
        await exits.event.wait()
        assert exits.statuses == [143]
        assert exits.times == [t0 + 3]
        await trio.testing.wait_all_tasks_blocked()
        assert nursery.child_tasks == frozenset()


async def test_sigkill_during_stop_delay(autojump_clock: trio.testing.MockClock) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        process, exits = await start(backend, nursery, {"stop_delay": 30, "exit_after": 60})
        process.signal(signal.SIGTERM)
        await trio.sleep(10)
        process.signal(signal.SIGKILL)
        assert exits.statuses == [137]
        # The timer task ends at once: nothing keeps the nursery open.
    assert trio.current_time() < 11
    assert exits.statuses == [137]


async def test_earlier_deadline_wins(autojump_clock: trio.testing.MockClock) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        process, exits = await start(
            backend, nursery, {"exit_after": 5, "exit_code": 9, "stop_delay": 2}
        )
        process.signal(signal.SIGTERM)
    assert exits.statuses == [143]
    assert exits.times == [t0 + 2]

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        process, exits = await start(
            backend, nursery, {"exit_after": 1, "exit_code": 9, "stop_delay": 2}
        )
        process.signal(signal.SIGTERM)
    assert exits.statuses == [9]
    assert exits.times == [t0 + 1]


async def test_start_error(autojump_clock: trio.testing.MockClock) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        with pytest.raises(FailedPrecondition, match="disk on fire"):
            await start(backend, nursery, {"start_error": "disk on fire", "start_delay": 2})
        assert trio.current_time() == t0 + 2
        assert nursery.child_tasks == frozenset()
    assert backend.started_count == 0
    assert backend.running == frozenset()
    # A failed start takes no pid.
    async with trio.open_nursery() as nursery:
        process, _ = await start(backend, nursery)
        assert process.pid == FIRST_SIM_PID
        process.cleanup()


async def test_start_delay(autojump_clock: trio.testing.MockClock) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        process, _ = await start(backend, nursery, {"start_delay": 1.5})
        assert trio.current_time() == t0 + 1.5
        assert backend.running == {process.pid}
        process.cleanup()


async def test_start_cancelled_during_delay_starts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        with trio.move_on_after(1):
            await start(backend, nursery, {"start_delay": 2})
    assert backend.started_count == 0
    assert backend.running == frozenset()


@pytest.mark.parametrize(
    ("sim", "field"),
    [
        ({"exit_after": -1}, "exit_after"),
        ({"exit_after": "5"}, "exit_after"),
        ({"exit_after": True}, "exit_after"),
        ({"exit_after": math.inf}, "exit_after"),
        ({"exit_after": math.nan}, "exit_after"),
        ({"exit_code": 256}, "exit_code"),
        ({"exit_code": -1}, "exit_code"),
        ({"exit_code": 1.0}, "exit_code"),
        ({"exit_code": False}, "exit_code"),
        ({"ignore_sigterm": 1}, "ignore_sigterm"),
        ({"stop_delay": -0.5}, "stop_delay"),
        ({"stop_delay": None}, "stop_delay"),
        ({"start_error": 3}, "start_error"),
        ({"start_delay": []}, "start_delay"),
        ({"bogus": 1}, "bogus"),
        ({1: 1}, "1"),
    ],
)
def test_validation_names_the_field(sim: dict[Any, Any], field: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"^options\.sim\.{field}: "):
        SimBackend().validate(make_spec(sim))


def test_sim_must_be_a_map() -> None:
    with pytest.raises(InvalidArgument, match=r"^options\.sim: must be a map"):
        SimBackend().validate(make_spec([("exit_after", 1)]))  # type: ignore[arg-type]


def test_validation_accepts_every_setting() -> None:
    SimBackend().validate(make_spec(None))
    SimBackend().validate(make_spec({}))
    SimBackend().validate(
        make_spec(
            {
                "exit_after": 1.5,
                "exit_code": 255,
                "ignore_sigterm": False,
                "stop_delay": 0,
                "start_error": "",
                "start_delay": 0.0,
            }
        )
    )


async def test_exit_hook_and_running_set() -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        started = [await start(backend, nursery) for _ in range(3)]
        assert backend.running == {p.pid for p, _ in started}
        (first, first_exits), (second, second_exits), (third, third_exits) = started
        backend.exit(second.pid, 42)
        assert second_exits.statuses == [42]
        assert backend.running == {first.pid, third.pid}
        with pytest.raises(LookupError):
            backend.exit(second.pid, 0)
        with pytest.raises(ValueError, match=r"0\.\.255"):
            backend.exit(first.pid, 256)
        first.signal(signal.SIGTERM)
        third.cleanup()
        assert backend.running == frozenset()
        assert (first_exits.statuses, third_exits.statuses) == ([143], [137])
        assert backend.started_count == 3


async def test_exit_callback_may_signal_again() -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        exits: list[int] = []
        process: SimProcess | None = None

        def on_exit(status: int) -> None:
            exits.append(status)
            assert process is not None
            process.signal(signal.SIGKILL)  # re-entrant: must do nothing

        process = await backend.start(make_spec(), nursery, on_exit)
        process.signal(signal.SIGTERM)
    assert exits == [143]


async def test_invalid_signal_number() -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        process, exits = await start(backend, nursery)
        with pytest.raises(InvalidArgument, match="signal 999"):
            process.signal(999)
        with pytest.raises(InvalidArgument, match="signal -1"):
            process.signal(-1)
        assert exits.statuses == []
        process.cleanup()


async def test_cancelled_nursery_stops_timers_not_the_process(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        process, exits = await start(backend, nursery, {"exit_after": 5})
        nursery.cancel_scope.cancel()
    await trio.sleep(10)
    assert exits.statuses == []
    assert backend.running == {process.pid}
    backend.exit(process.pid, 1)
    assert exits.statuses == [1]


async def test_many_processes_are_small() -> None:
    backend = SimBackend()
    async with trio.open_nursery() as nursery:
        processes = [(await start(backend, nursery))[0] for _ in range(2_000)]
        assert not hasattr(processes[0], "__dict__")
        assert nursery.child_tasks == frozenset()
        assert len(backend.running) == 2_000
        for process in processes:
            process.cleanup()
    assert backend.running == frozenset()


# -- property: on_exit is called exactly once, whatever happens -------------------------------

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("signal"), st.sampled_from([0, 1, 2, 9, 10, 15, 17])),
        st.tuples(st.just("sleep"), st.floats(0, 10)),
        st.tuples(st.just("exit"), st.integers(0, 255)),
    ),
    max_size=12,
)
_settings = st.fixed_dictionaries(
    {},
    optional={
        "exit_after": st.floats(0, 20),
        "exit_code": st.integers(0, 255),
        "ignore_sigterm": st.booleans(),
        "stop_delay": st.floats(0, 20),
    },
)


@given(settings=_settings, operations=_operations)
def test_exit_is_reported_exactly_once(
    settings: dict[str, Any], operations: list[tuple[str, Any]]
) -> None:
    async def main() -> None:
        backend = SimBackend()
        async with trio.open_nursery() as nursery:
            process, exits = await start(backend, nursery, settings)
            for op, arg in operations:
                if op == "signal":
                    process.signal(arg)
                elif op == "sleep":
                    await trio.sleep(arg)
                elif process.pid in backend.running:
                    backend.exit(process.pid, arg)
                running = process.pid in backend.running
                assert len(exits.statuses) == (0 if running else 1)
                assert process.usage() == (0, 0, 1 if running else 0)
            process.signal(signal.SIGKILL)
            assert len(exits.statuses) == 1
            assert backend.running == frozenset()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
