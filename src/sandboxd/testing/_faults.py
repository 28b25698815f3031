"""Fault injection through the sim backend, and what the reference model expects of it.

Every fault of the ``sim`` sandboxer is a setting of Create's ``options.sim`` (see
:class:`~sandboxd.SimBackend`), so it travels over the socket like any other option: a remote
caller injects faults into a daemon it does not control.  :func:`sim_faults` builds those
options, checked as the backend checks them; :func:`sim_behaviour` says how the
:class:`~sandboxd.testing.ReferenceModel` must expect such a sandbox to behave, and
:func:`sim_model` is a model that asks it for every Create.

Real processes (the ``process`` and ``bwrap`` sandboxers) take their faults from their
command: :func:`process_faults` builds one of a few short shell commands (exit with a chosen
status, after a delay; ignore SIGTERM), :func:`process_behaviour` reads such a command back,
and :func:`process_model` asks it for every Create.

Execs: a sim exec runs a tiny script, its command (``true``, ``exit N``, ``sleep S``,
``hang``, ``echo ...``, ``cat``), on trio's clock; :func:`sim_exec_behaviour` reads one back
for the model.  A sim sandbox's execs may take a while to start, or fail to
(``exec_delay``, ``exec_error``: faults of its Create).  A real exec runs a real command:
:func:`process_exec_behaviour` reads back the few the fuzzer draws (``true``, ``sh -c 'exit
N'``, ``sleep S``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from .._models import SandboxOptions
from ..backends._sim import _settings
from ._model import SIGTERM_STATUS, ExecBehaviour, ProcessBehaviour, ReferenceModel, Timing

__all__ = [
    "process_behaviour",
    "process_exec_behaviour",
    "process_faults",
    "process_model",
    "sim_behaviour",
    "sim_exec_behaviour",
    "sim_faults",
    "sim_model",
]


def sim_faults(
    *,
    start_error: str | None = None,
    start_delay: float | None = None,
    exit_after: float | None = None,
    exit_on: str | None = None,
    exit_code: int | None = None,
    ignore_sigterm: bool = False,
    stop_delay: float | None = None,
    exec_error: str | None = None,
    exec_delay: float | None = None,
    lifetime_secs: float | None = None,
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
      meanwhile overtakes it);
    - ``exec_error``: every Exec in it fails to start (FAILED_PRECONDITION carrying this
      text), after ``exec_delay`` seconds (an exec always takes ``exec_delay`` to start).

    ``lifetime_secs`` is the sandbox's lifetime (not a fault: a Create option of every
    sandboxer).

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
        ("exec_error", exec_error),
        ("exec_delay", exec_delay),
    ):
        if value is not None:
            sim[key] = value
    if ignore_sigterm:
        sim["ignore_sigterm"] = True
    _settings(sim)
    return SandboxOptions(sim=sim or None, lifetime_secs=lifetime_secs)


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
        exec_delay=float(sim.get("exec_delay", 0)),
        exec_fails="exec_error" in sim,
        lifetime=getattr(options, "lifetime_secs", None),
    )


def sim_model(timing: Timing | None = None) -> ReferenceModel:
    """A :class:`~sandboxd.testing.ReferenceModel` of ``sim`` sandboxes, each created with
    whatever faults its Create asked for (:func:`sim_behaviour`), keeping time as ``timing``
    says (default: no deadlines checked)."""
    return ReferenceModel(
        behaviour_of=sim_behaviour,
        timing=timing or Timing(),
        exec_behaviour_of=sim_exec_behaviour,
    )


def _command(exec_args: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(exec_args.get("command") or ())


def sim_exec_behaviour(exec_args: Mapping[str, Any]) -> ExecBehaviour:
    """How the model must expect a sim exec made with ``exec_args`` (the fields of its
    :class:`~sandboxd.ExecRequest`) to end, from its script: ``true``, ``echo ...`` and
    ``cat`` (its stdin closed at once) exit 0 at once, ``exit N`` with N, ``sleep S`` with 0
    after S seconds, ``hang`` only when killed.  Signals end it as they end a sim process
    (SIGTERM: 143, SIGKILL: 137, at once).  Any other command is a ``ValueError``: the model
    cannot say."""
    command = _command(exec_args)
    name, args = (command[0], command[1:]) if command else ("", ())
    if name in ("true", "echo", "cat"):
        return ExecBehaviour()
    if name == "exit" and len(args) == 1:
        return ExecBehaviour(exit_status=int(args[0]))
    if name == "sleep" and len(args) == 1:
        return ExecBehaviour(runs_for=float(args[0]))
    if name == "hang" and not args:
        return ExecBehaviour(exit_status=None)
    raise ValueError(f"not a sim exec script the model knows: {list(command)!r}")


#: The shell commands :func:`process_faults` writes: ``trap "" TERM; `` (SIGTERM ignored),
#: then either ``sleep D; exit N`` (exits on its own with N after D seconds; ``exit N`` for
#: D = 0) or ``exec sleep 300`` (only signals end it).
_IGNORE: Final = 'trap "" TERM; '
_FOREVER: Final = "exec sleep 300"
_COMMAND: Final = re.compile(
    f"(?P<ignore>{re.escape(_IGNORE)})?"
    f"(?:{re.escape(_FOREVER)}|(?:sleep (?P<delay>[0-9.]+); )?exit (?P<status>[0-9]+))"
)


def process_faults(
    *,
    exit_code: int | None = None,
    exit_after: float = 0.0,
    ignore_sigterm: bool = False,
) -> SandboxOptions | None:
    """Create options for a real process (``process`` or ``bwrap`` sandboxer) that misbehaves
    as asked, or ``None`` (the pause process: SIGTERM ends it with 0) when nothing is asked:

    - ``exit_code``: the process exits on its own with this status, ``exit_after`` seconds
      after it started (else only signals end it);
    - ``ignore_sigterm``: it ignores SIGTERM, once its shell has run its first command.

    The command is ``sh -c '...'``: :func:`process_behaviour` reads it back.
    """
    if exit_code is not None and not 0 <= exit_code <= 255:
        raise ValueError(f"exit_code: must be 0..255, not {exit_code}")
    if exit_after < 0:
        raise ValueError(f"exit_after: must be >= 0, not {exit_after}")
    if exit_code is None and not ignore_sigterm:
        return None
    script = _IGNORE if ignore_sigterm else ""
    if exit_code is None:
        script += _FOREVER
    elif exit_after:
        script += f"sleep {exit_after:g}; exit {exit_code}"
    else:
        script += f"exit {exit_code}"
    return SandboxOptions(command=("sh", "-c", script))


def process_behaviour(create_args: Mapping[str, Any]) -> ProcessBehaviour:
    """How the reference model must expect a real process created with ``create_args`` (the
    keyword arguments of Create) to behave: the pause process when it has no command; any
    other command as a shell's that only signals end (unless it is one
    :func:`process_faults` builds).

    Real signals race (``signals_race``): a SIGKILL sent while a SIGTERM is being handled
    may win.  The pause process ends with 0 on SIGTERM; a shell with 143 -- also one that is
    told to ignore SIGTERM, since a SIGTERM may arrive before the shell ran its ``trap``, and
    a SIGKILL (137) is what ends it otherwise, so the model accepts either.
    """
    options = create_args.get("options")
    lifetime = getattr(options, "lifetime_secs", None)
    if getattr(options, "command", None) is None:
        return ProcessBehaviour(sigterm_exit_status=0, signals_race=True, lifetime=lifetime)
    faults = process_faults_of(options) or {}
    return ProcessBehaviour(
        sigterm_exit_status=SIGTERM_STATUS,
        signals_race=True,
        own_exit_status=faults.get("exit_code"),
        lifetime=lifetime,
    )


def process_faults_of(options: object) -> dict[str, Any] | None:
    """The arguments of :func:`process_faults` that built ``options`` (``{}`` for the pause
    process), or ``None`` when they are not options it builds."""
    if options is None:
        return {}
    command = getattr(options, "command", None)
    if options != SandboxOptions(command=command):
        return None
    if command is None:
        return {}
    if len(command) != 3 or tuple(command[:2]) != ("sh", "-c"):
        return None
    match = _COMMAND.fullmatch(command[2])
    if match is None:
        return None
    faults: dict[str, Any] = {}
    if match["status"] is not None:
        faults["exit_code"] = int(match["status"])
        if match["delay"] is not None:
            faults["exit_after"] = float(match["delay"])
    if match["ignore"]:
        faults["ignore_sigterm"] = True
    return faults


def process_model(timing: Timing | None = None) -> ReferenceModel:
    """A :class:`~sandboxd.testing.ReferenceModel` of real processes, each as its Create's
    command says (:func:`process_behaviour`), keeping time as ``timing`` says (default: no
    deadlines checked)."""
    return ReferenceModel(
        behaviour_of=process_behaviour,
        timing=timing or Timing(),
        exec_behaviour_of=process_exec_behaviour,
    )


_EXIT_SCRIPT: Final = re.compile(r"exit (?P<status>[0-9]+)")


def process_exec_behaviour(exec_args: Mapping[str, Any]) -> ExecBehaviour:
    """How the model must expect a real exec made with ``exec_args`` (the fields of its
    :class:`~sandboxd.ExecRequest`) to end: ``true`` with 0 at once, ``sh -c 'exit N'`` with
    N, ``sleep S`` with 0 after S seconds; any other command only when a signal or its
    timeout ends it.  Real signals race (``signals_race``)."""
    command = _command(exec_args)
    if command == ("true",):
        return ExecBehaviour(signals_race=True)
    if len(command) == 3 and command[:2] == ("sh", "-c"):
        match = _EXIT_SCRIPT.fullmatch(command[2])
        if match is not None:
            return ExecBehaviour(exit_status=int(match["status"]), signals_race=True)
    if len(command) == 2 and command[0] == "sleep":
        return ExecBehaviour(runs_for=float(command[1]), signals_race=True)
    return ExecBehaviour(exit_status=None, signals_race=True)


def model_for(sandboxer: str | None, timing: Timing | None = None) -> ReferenceModel:
    """The model of the fuzzer's sandboxes: :func:`sim_model` for ``sim`` (and ``None``, the
    daemon's default taken to be ``sim``), :func:`process_model` for any other."""
    return sim_model(timing) if sandboxer in (None, "sim") else process_model(timing)
