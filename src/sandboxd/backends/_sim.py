"""The ``sim`` backend: simulated sandboxes for fuzzing lifecycle orderings.

No process is ever spawned.  A sim process is a small object with a fake pid; it "exits" when
:func:`on_exit` is called for it, which happens exactly once: on a signal that ends it, when
one of its timers fires, or through the :meth:`SimBackend.exit` test hook.  Its behaviour --
faults included -- is set by Create's ``options.sim`` (see :class:`SimBackend`), so a remote
caller can inject faults too (:func:`sandboxd.testing.sim_faults` builds the settings).

Timers (``exit_after``, ``stop_delay``) use trio's clock, so a test with an autojump clock
runs hours of simulated time at once.  A process has at most one timer task at a time, in the
nursery given to Start, and none at all when nothing is due, so tens of thousands of idle sim
sandboxes cost a few hundred bytes each.
"""

from __future__ import annotations

import math
import signal as _signal
from collections.abc import Mapping
from typing import Any, Final, final

import trio

from .._errors import FailedPrecondition, InvalidArgument
from .._models import Platform, SandboxSpec
from ._base import ExecProcess, ExecSpec, ExitCallback, SpawnCallback
from ._platform import host_platform

#: The first pid a :class:`SimBackend` hands out.
FIRST_SIM_PID: Final = 1000

_STOP_SIGNALS: Final = frozenset({_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP})


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"options.sim.{key}: must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"options.sim.{key}: must be a finite number >= 0, not {value!r}")
    return float(value)


def _exit_code(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"options.sim.{key}: must be an integer, not {type(value).__name__}")
    if not 0 <= value <= 255:
        raise InvalidArgument(f"options.sim.{key}: must be in 0..255, not {value}")
    return value


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"options.sim.{key}: must be a boolean, not {type(value).__name__}")
    return value


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"options.sim.{key}: must be text, not {type(value).__name__}")
    return value


#: The points ``exit_on`` may name.
EXIT_POINTS: Final = ("start", "stop")


def _exit_point(key: str, value: object) -> str:
    if not isinstance(value, str) or value not in EXIT_POINTS:
        raise InvalidArgument(f"options.sim.{key}: must be 'start' or 'stop', not {value!r}")
    return value


# options.sim keys -> their checker, which returns the value in its canonical type.
_SETTINGS: Final = {
    "exit_after": _number,
    "exit_code": _exit_code,
    "ignore_sigterm": _flag,
    "stop_delay": _number,
    "start_error": _text,
    "start_delay": _number,
    "exit_on": _exit_point,
}


def _settings(sim: Mapping[str, Any] | None) -> dict[str, Any]:
    if sim is None:
        return {}
    if not isinstance(sim, Mapping):
        raise InvalidArgument(f"options.sim: must be a map, not {type(sim).__name__}")
    settings = {}
    for key, value in sim.items():
        check = _SETTINGS.get(key) if isinstance(key, str) else None
        if check is None:
            known = ", ".join(_SETTINGS)
            raise InvalidArgument(f"options.sim.{key}: unknown setting (known: {known})")
        settings[key] = check(key, value)
    if settings.get("exit_on") == "stop" and settings.get("ignore_sigterm"):
        raise InvalidArgument("options.sim.exit_on: 'stop' contradicts ignore_sigterm")
    return settings


@final
class SimBackend:
    """Simulated sandboxes (sandboxer name ``"sim"``), driven by ``options.sim``:

    ``exit_after`` (seconds >= 0)
        the process exits on its own after this long, with ``exit_code`` (0..255, default 0);
    ``ignore_sigterm`` (bool)
        SIGTERM, SIGINT and SIGHUP do nothing;
    ``stop_delay`` (seconds >= 0)
        after SIGTERM, SIGINT or SIGHUP the process exits (with 128+N) only this much later;
    ``start_error`` (text)
        Start fails with FailedPrecondition carrying this text;
    ``start_delay`` (seconds >= 0)
        Start takes this long (before failing, if ``start_error`` is set too);
    ``exit_on`` (``"start"`` or ``"stop"``)
        the process exits with ``exit_code`` at that point of its life: ``"start"`` as soon
        as it has started (Start still returns its pid; the exit follows at once), ``"stop"``
        when a stop signal (SIGTERM, SIGINT, SIGHUP) reaches it -- a process that handles
        SIGTERM by exiting with its own status, after ``stop_delay`` if set.  ``"stop"``
        together with ``ignore_sigterm`` is refused.

    Unknown keys are refused.  ``options.command`` is accepted and ignored.  Signals:
    SIGKILL ends the process with 137 at once; any other signal but 0 with 128+N (at once, or
    as said above for the stop signals); signal 0 and any signal after the exit do nothing.

    Pids come from a counter of this backend, starting at :data:`FIRST_SIM_PID`, so a run is
    deterministic.  :meth:`exit`, :attr:`running` and :attr:`started_count` are test hooks.
    """

    __slots__ = ("_next_pid", "_running", "_started")

    def __init__(self) -> None:
        self._next_pid = FIRST_SIM_PID
        self._started = 0
        self._running: dict[int, SimProcess] = {}

    @property
    def name(self) -> str:
        return "sim"

    def unavailable_reason(self) -> str | None:
        """Always ``None``."""
        return None

    def platform(self) -> Platform:
        """The host's platform."""
        return host_platform()

    def validate(self, spec: SandboxSpec) -> None:
        """Raise InvalidArgument naming ``options.sim.<key>`` when a setting is unknown or
        of the wrong type or range."""
        _settings(spec.options.sim)

    async def start(
        self,
        spec: SandboxSpec,
        nursery: trio.Nursery,
        on_exit: ExitCallback,
        on_spawned: SpawnCallback | None = None,
    ) -> SimProcess:
        """Start a sim process: after ``start_delay`` (trio time), fail with ``start_error``
        or return the process, with the next pid.  One step: ``on_spawned`` is not called
        (a simulated process cannot outlive the daemon).

        ``on_exit(status)`` is called exactly once, either synchronously inside
        :meth:`SimProcess.signal`, :meth:`SimProcess.cleanup` or :meth:`exit`, or from a timer
        task in ``nursery``.  If ``nursery`` is cancelled, its timers die and the process
        stays running (until a signal or :meth:`exit`).  Cancelled during ``start_delay``:
        nothing was started.
        """
        settings = _settings(spec.options.sim)
        start_delay = settings.get("start_delay", 0.0)
        if start_delay > 0:
            await trio.sleep(start_delay)
        else:
            await trio.lowlevel.checkpoint()
        start_error = settings.get("start_error")
        if start_error is not None:
            raise FailedPrecondition(f"cannot start sandbox {spec.sandbox_id}: {start_error}")
        pid = self._next_pid
        self._next_pid += 1
        self._started += 1
        exit_on = settings.get("exit_on")
        exit_code: int = settings.get("exit_code", 0)
        process = SimProcess(
            pid,
            self._running,
            nursery,
            on_exit,
            ignore_sigterm=settings.get("ignore_sigterm", False),
            stop_delay=settings.get("stop_delay", 0.0),
            stop_status=exit_code if exit_on == "stop" else None,
        )
        self._running[pid] = process
        if exit_on == "start":
            process._exit_later(0.0, exit_code)
        exit_after = settings.get("exit_after")
        if exit_after is not None:
            process._exit_later(exit_after, exit_code)
        return process

    # -- test hooks --------------------------------------------------------------------------

    def discard(self, pid: int, identity: Mapping[str, Any]) -> None:
        """Nothing to do: simulated processes end with the daemon that simulated them."""

    def adopt(
        self,
        spec: SandboxSpec,
        pid: int,
        identity: Mapping[str, Any],
        nursery: trio.Nursery,
        on_exit: ExitCallback,
    ) -> None:
        """Simulated processes end with the daemon that simulated them: never adopted."""
        return None

    def exit(self, pid: int, status: int) -> None:
        """Make the running sim process ``pid`` exit now with ``status`` (0..255); its
        ``on_exit`` is called before this returns.  LookupError if it is not running."""
        if not 0 <= status <= 255:
            raise ValueError(f"exit status {status}: must be in 0..255")
        try:
            process = self._running[pid]
        except KeyError:
            raise LookupError(f"no running sim process with pid {pid}") from None
        process._exit(status)

    @property
    def running(self) -> frozenset[int]:
        """The pids of the sim processes that have not exited yet."""
        return frozenset(self._running)

    @property
    def started_count(self) -> int:
        """How many sim processes Start has started (failed starts not counted)."""
        return self._started


@final
class SimProcess:
    """One simulated sandbox process."""

    __slots__ = (
        "_ignore_sigterm",
        "_nursery",
        "_on_exit",
        "_registry",
        "_stop_delay",
        "_stop_status",
        "_timer",
        "_timer_status",
        "pid",
    )

    pid: int
    _on_exit: ExitCallback | None  # None once exited
    _nursery: trio.Nursery | None
    _timer: trio.CancelScope | None

    def __init__(
        self,
        pid: int,
        registry: dict[int, SimProcess],
        nursery: trio.Nursery,
        on_exit: ExitCallback,
        *,
        ignore_sigterm: bool,
        stop_delay: float,
        stop_status: int | None = None,
    ) -> None:
        self.pid = pid
        self._registry = registry
        self._nursery = nursery
        self._on_exit = on_exit
        self._ignore_sigterm = ignore_sigterm
        self._stop_delay = stop_delay
        # The status a stop signal ends it with; None: 128 + the signal's number.
        self._stop_status = stop_status
        self._timer = None
        self._timer_status = 0

    def signal(self, signum: int) -> None:
        """Deliver ``signum`` as described in :class:`SimBackend`; may call ``on_exit``
        before returning.  An invalid signal number is InvalidArgument."""
        if not 0 <= signum < _signal.NSIG:
            raise InvalidArgument(f"signal {signum}: not a valid signal number")
        if self._on_exit is None or signum == 0:
            return
        if signum == _signal.SIGKILL:
            self._exit(128 + signum)
        elif signum in _STOP_SIGNALS:
            if self._ignore_sigterm:
                return
            status = 128 + signum if self._stop_status is None else self._stop_status
            if self._stop_delay > 0:
                self._exit_later(self._stop_delay, status)
            else:
                self._exit(status)
        else:
            self._exit(128 + signum)

    def cleanup(self) -> None:
        """Nothing is left after the exit; a process still running is killed (exit 137)."""
        self.signal(_signal.SIGKILL)

    def info(self) -> Mapping[str, str]:
        return {"sim": "true", "pid": str(self.pid)}

    @property
    def usage_blocks(self) -> bool:
        """False: :meth:`usage` reads nothing, call it on the event loop."""
        return False

    def identity(self) -> Mapping[str, Any]:
        return {}

    async def exec(self, spec: ExecSpec) -> ExecProcess:
        """Not simulated yet: FailedPrecondition."""
        await trio.lowlevel.checkpoint()
        raise FailedPrecondition("the sim sandboxer does not run commands")

    def open_file(self, path: str, *, write: bool, mode: int | None = None) -> int:
        """Not simulated yet: FailedPrecondition."""
        raise FailedPrecondition("the sim sandboxer has no files")

    def usage(self) -> tuple[int, int, int]:
        """``(0, 0, 1)`` while running, ``(0, 0, 0)`` after."""
        return (0, 0, 0 if self._on_exit is None else 1)

    def _exit_later(self, delay: float, status: int) -> None:
        # One timer per process: a later deadline than the armed one can never fire first.
        deadline = trio.current_time() + delay
        if self._timer is None:
            assert self._nursery is not None
            self._timer = trio.CancelScope(deadline=deadline)
            self._timer_status = status
            self._nursery.start_soon(self._run_timer, self._timer)
        elif deadline < self._timer.deadline:
            self._timer.deadline = deadline
            self._timer_status = status

    async def _run_timer(self, timer: trio.CancelScope) -> None:
        with timer:
            await trio.sleep_forever()
        # Cancelled by its deadline, or by _exit (then _on_exit is already None).
        if self._on_exit is not None:
            self._exit(self._timer_status)

    def _exit(self, status: int) -> None:
        on_exit = self._on_exit
        if on_exit is None:
            return
        self._on_exit = None
        self._nursery = None
        del self._registry[self.pid]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        on_exit(status)
