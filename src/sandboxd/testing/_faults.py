"""Fault injection through the sim backend, and what the reference model expects of it.

Every fault of the ``sim`` sandboxer is a setting of Create's ``options.sim`` (see
:class:`~sandboxd.SimBackend`), so it travels over the socket like any other option: a remote
caller injects faults into a daemon it does not control.  :func:`sim_faults` builds those
options, checked as the backend checks them; :func:`sim_behaviour` says how the
:class:`~sandboxd.testing.ReferenceModel` must expect such a sandbox to behave, and
:func:`sim_model` is a model that asks it for every Create.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._models import SandboxOptions
from ..backends._sim import _settings
from ._model import SIGTERM_STATUS, ProcessBehaviour, ReferenceModel, Timing

__all__ = ["sim_behaviour", "sim_faults", "sim_model"]


def sim_faults(
    *,
    start_error: str | None = None,
    start_delay: float | None = None,
    exit_after: float | None = None,
    exit_on: str | None = None,
    exit_code: int | None = None,
    ignore_sigterm: bool = False,
    stop_delay: float | None = None,
) -> SandboxOptions:
    """Create options for a ``sim`` sandbox with these faults:

    - ``start_error``: Start fails with FAILED_PRECONDITION carrying this text (after
      ``start_delay`` seconds, if given; a Start always takes ``start_delay``);
    - ``exit_after``: the process exits on its own this many seconds after it started, with
      ``exit_code`` (default 0);
    - ``exit_on``: ``"start"``, the process exits with ``exit_code`` as soon as it has started;
      ``"stop"``, a Stop's SIGTERM makes it exit with ``exit_code`` (a process that handles
      SIGTERM) instead of 143;
    - ``ignore_sigterm``: only SIGKILL ends it, so a Stop takes its whole grace period;
    - ``stop_delay``: it dies of SIGTERM only this many seconds later (a slow stop; a SIGKILL
      meanwhile overtakes it).

    Raises :class:`~sandboxd.InvalidArgument` naming the setting, as Create would.  Use with
    ``sandboxer="sim"``: ``await ctl.create("a", sandboxer="sim", options=sim_faults(...))``.
    """
    sim: dict[str, Any] = {}
    for key, value in (
        ("start_error", start_error),
        ("start_delay", start_delay),
        ("exit_after", exit_after),
        ("exit_on", exit_on),
        ("exit_code", exit_code),
        ("stop_delay", stop_delay),
    ):
        if value is not None:
            sim[key] = value
    if ignore_sigterm:
        sim["ignore_sigterm"] = True
    _settings(sim)
    return SandboxOptions(sim=sim or None)


def sim_behaviour(create_args: Mapping[str, Any]) -> ProcessBehaviour:
    """How the reference model must expect a sandbox created with ``create_args`` (the
    keyword arguments of Create) to behave, from the faults in its ``options.sim``.

    For the ``sim`` sandboxer; a Create without ``options.sim`` gets the default behaviour
    (SIGTERM ends the process with 143).
    """
    options = create_args.get("options")
    sim: Mapping[str, Any] = getattr(options, "sim", None) or {}
    exit_code = int(sim.get("exit_code", 0))
    if sim.get("ignore_sigterm"):
        sigterm_exit_status: int | None = None
    elif sim.get("exit_on") == "stop":
        sigterm_exit_status = exit_code
    else:
        sigterm_exit_status = SIGTERM_STATUS
    exits = "exit_after" in sim or sim.get("exit_on") == "start"
    return ProcessBehaviour(
        sigterm_exit_status=sigterm_exit_status,
        # A delayed death by SIGTERM may be overtaken by a SIGKILL.
        signals_race=float(sim.get("stop_delay", 0)) > 0,
        own_exit_status=exit_code if exits else None,
        start_fails="start_error" in sim,
    )


def sim_model(timing: Timing | None = None) -> ReferenceModel:
    """A :class:`~sandboxd.testing.ReferenceModel` of ``sim`` sandboxes, each created with
    whatever faults its Create asked for (:func:`sim_behaviour`), keeping time as ``timing``
    says (default: no deadlines checked)."""
    return ReferenceModel(behaviour_of=sim_behaviour, timing=timing or Timing())
