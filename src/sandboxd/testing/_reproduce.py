"""Reproducers: a program written out as a ``sandboxctl`` script and as a pytest test.

Both run the program against a daemon.  The script is for reading and for a shell; it makes
the calls of a group at once with ``&`` and ``wait``, so it reproduces the ordering, not the
exact timing.  The test replays the program with :func:`~sandboxd.testing.run_program` and
judges the history with :func:`~sandboxd.testing.check_linearizable`, as the fuzzer did.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable, Mapping, Sequence

from .._models import ExecExit, SandboxOptions
from ._faults import process_model, sim_model
from ._linearize import Operation
from ._model import EXEC_CALL, Blocks, Outcome, ReferenceModel, StatusView, Timing
from ._programs import REAPER, Call, Program, render_program

__all__ = ["brief_outcome", "explain_conflict", "reproducer_script", "reproducer_test"]

#: Seconds a Wait in a script gives up after (a Wait nobody answers would hang the shell).
SCRIPT_WAIT_TIMEOUT = 10

#: Seconds between the clients of a concurrent group a script starts, in the recorded order.
SCRIPT_STAGGER = 0.1


def brief_outcome(outcome: Outcome | Blocks | None) -> str:
    """A call's outcome in a few words: ``ok``, ``exit 143``, ``stopping``, ``NOT_FOUND``."""
    if outcome is None:
        return "no answer"
    if isinstance(outcome, Blocks):
        return "blocks"
    if not outcome.ok:
        assert outcome.code is not None
        return outcome.code.name
    value = outcome.value
    if isinstance(value, StatusView):
        text = str(value.state)
        if value.execs:
            text += f", {value.execs} exec{'s' if value.execs != 1 else ''}"
        return text if value.exit_status is None else f"{text}, exit {value.exit_status}"
    if isinstance(value, ExecExit):
        return f"exit {value.exit_status}" + (", timed out" if value.timed_out else "")
    if value is True:
        return "ok (a pid)"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"exit {value}"
    return "ok" if value is None or isinstance(value, str) else f"ok({value!r})"


def _expected(outcome: Outcome | Blocks) -> str:
    """What the model says a call does, as the end of a sentence."""
    if isinstance(outcome, Blocks):
        if outcome.until.name == "STOP_GRACE_EXPIRED":
            return "waits until the Stop's grace period ends and SIGKILL ends the process"
        return "waits until the process exits"
    if not outcome.ok:
        assert outcome.code is not None
        return f"is refused with {outcome.code.name}"
    return f"answers {brief_outcome(outcome)}"


def _begins(op: Operation) -> tuple[float, int]:
    """When ``op`` began: its clock time, and where it stands among the recorded calls'
    beginnings and returns where the clock cannot tell (a virtual clock stands still)."""
    return op.start_time, op.order[0]


def _ends(op: Operation) -> tuple[float, int]:
    return op.end_time, op.order[1]


def _when(op: Operation, other: Operation) -> str:
    """Where ``other`` stood in time when ``op`` answered."""
    answer = brief_outcome(other.outcome)
    if _ends(other) <= _begins(op):
        return f"after {other.call} answered {answer}"
    if _begins(other) >= _ends(op):
        return f"before {other.call} was made"
    if other.outcome is None or _ends(other) > _ends(op):
        return f"while {other.call} was in progress"
    return f"while {other.call} was in progress (it answered {answer})"


def explain_conflict(
    conflict: Sequence[Operation], history: Sequence[Operation], model: ReferenceModel
) -> str:
    """The conflict the checker found, in a sentence: which answer the model cannot explain
    (the conflict's last call), when it came relative to the other calls of the conflict, and
    what the model expects of that call after the calls on its sandbox made before it -- e.g.
    ``wait answered exit 143 while stop was in progress, but after create, start and stop
    the model says wait waits until the process exits``.  ``conflict`` is a
    :class:`~sandboxd.testing.LinearizabilityResult`'s, ``history`` the whole history, and
    ``model`` the one the checker used (it is not changed).
    """
    if not conflict:
        return ""
    culprit = max(conflict, key=lambda op: (_begins(op), _ends(op)))
    mine = [
        op
        for op in sorted(history, key=lambda op: (_begins(op), _ends(op)))
        if op.sandbox_id == culprit.sandbox_id and op is not culprit
    ]
    before = [op for op in mine if _begins(op) < _begins(culprit)]
    # The calls it raced, beside those of the conflict: a Stop in progress, say.
    racing = [op for op in before if op not in conflict and _ends(op) > _begins(culprit)]
    others = [op for op in conflict if op is not culprit] + racing
    words = f"{culprit.call} answered {brief_outcome(culprit.outcome)}"
    if others:
        words += " " + " and ".join(_when(culprit, op) for op in others)
    sequential = model.copy()
    for op in before:
        sequential.apply(op.call, op.sandbox_id, **op.args)
    expected = sequential.apply(culprit.call, culprit.sandbox_id, **culprit.args)
    said = _expected(expected)
    if isinstance(expected, Blocks):
        # What would answer it: the calls made while it waited (a Shutdown, say).
        during = [op for op in mine if _begins(culprit) <= _begins(op) < _ends(culprit)]
        for op in during:
            sequential.apply(op.call, op.sandbox_id, **op.args)
        answer = sequential.resolved.get(expected.ticket)
        if answer is not None and during:
            said += f", then {_expected(answer)} (once {during[-1].call} is made)"
    if before:
        names = [op.call for op in before]
        made = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        return f"{words}, but after {made} the model says {culprit.call} {said}"
    return f"{words}, but the model says {culprit.call} {said}"


def _sandboxctl(call: Call, sandbox_id: str) -> tuple[str, str]:
    """The sandboxctl command for ``call``, and a note on what it cannot say."""
    words = ["sandboxctl", call.name, sandbox_id]
    args = dict(call.args)
    if call.name == "create":
        sandboxer = args.pop("sandboxer", None)
        if sandboxer is not None:
            words += ["--sandboxer", str(sandboxer)]
        for key, value in sorted((args.pop("labels", None) or {}).items()):
            words += ["--label", f"{key}={value}"]
        options = args.pop("options", None)
        if isinstance(options, SandboxOptions) and options.sim:
            for key, value in sorted(options.sim.items()):
                words += ["--sim", f"{key}={json.dumps(value)}"]
        if isinstance(options, SandboxOptions) and options.lifetime_secs is not None:
            words += ["--lifetime", repr(options.lifetime_secs)]
        if isinstance(options, SandboxOptions) and options.command:
            words += ["--", *options.command]
    elif call.name == "stop":
        timeout = args.pop("timeout_secs", None)
        if timeout is not None:
            words += ["--timeout", f"{timeout:g}"]
    elif call.name == "wait":
        words += ["--timeout", str(SCRIPT_WAIT_TIMEOUT)]
    elif call.name == "status" and args.pop("verbose", False):
        words.append("--verbose")
    elif call.name == EXEC_CALL:
        timeout = args.pop("timeout_secs", None)
        if timeout is not None:
            words += ["--timeout", f"{timeout:g}"]
        stdin = args.pop("stdin", False)
        if stdin:
            words.append("-i")
        words += ["--", *args.pop("command", ())]
        if stdin:  # its stdin ends at once
            return shlex.join(words) + " </dev/null", _note(args)
    return shlex.join(words), _note(args)


def _note(args: Mapping[str, object]) -> str:
    return f"also {args!r}: not settable from sandboxctl" if args else ""


def _predictions(
    program: Program, sandbox_ids: Sequence[str], reaped: Sequence[Sequence[str]]
) -> list[Outcome | Blocks] | None:
    """What the reference model says each call of a sequential program returns (the
    reaper's Shutdowns included), or ``None`` when it cannot say for sure (concurrency,
    processes exiting on their own, races)."""
    if not program.sequential:
        return None
    model = _model_of(program)()
    for call in program.calls:
        if call.name == "create":
            behaviour = model.behaviour_for(call.args)
            if behaviour.own_exit_status is not None or behaviour.signals_race:
                return None
    predicted: list[Outcome | Blocks] = []
    for group, shutdowns in zip(program.groups, reaped, strict=True):
        for call in group[0] if group else ():
            predicted.append(model.apply(call.name, sandbox_ids[call.sandbox], **call.args))
        for sandbox_id in shutdowns:
            model.apply("shutdown", sandbox_id)
    # A call that blocked got its answer from what came after (a reaper's Shutdown, say).
    return [model.resolved.get(p.ticket, p) if isinstance(p, Blocks) else p for p in predicted]


def _comment(lines: Sequence[str], prefix: str = "# ") -> list[str]:
    return [f"{prefix}{line}".rstrip() for text in lines for line in text.splitlines()]


def reproducer_script(
    program: Program,
    sandbox_ids: Sequence[str],
    *,
    socket: str | None = None,
    notes: Sequence[str] = (),
    observed: Mapping[tuple[int, int, int], Operation] | None = None,
    history: Sequence[Operation] = (),
) -> str:
    """``program`` as a shell script of ``sandboxctl`` calls on ``sandbox_ids``.

    ``socket`` becomes the default of ``$SANDBOXD_SOCKET``; ``notes`` are written at the top
    as comments; ``observed`` (the ``trace`` of :func:`run_program`) adds what each call
    answered when it failed, and for a sequential program the model's answer beside it.
    The reaper's Shutdowns in ``history`` (the run's) are written where they happened: the
    calls of that group in the background, the Shutdown a second later.
    """
    lines = ["#!/bin/sh", *_comment(notes)]
    if socket is not None:
        lines.append(f'export SANDBOXD_SOCKET="${{SANDBOXD_SOCKET:-{socket}}}"')
    else:
        lines.append("# Point SANDBOXD_SOCKET (or sandboxctl --socket) at the daemon.")
    reaped = _reaped(program, observed or {}, history)
    predicted = _predictions(program, sandbox_ids, reaped)
    position = 0

    def line(call: Call, key: tuple[int, int, int], indent: str) -> str:
        nonlocal position
        command, note = _sandboxctl(call, sandbox_ids[call.sandbox])
        said: list[str] = []
        if observed is not None:
            op = observed.get(key)
            said.append(f"answered: {brief_outcome(None if op is None else op.outcome)}")
        if predicted is not None:
            said.append(f"model: {brief_outcome(predicted[position])}")
        if note:
            said.append(note)
        position += 1
        return f"{indent}{command}" + (f"  # {'; '.join(said)}" if said else "")

    for number, group in enumerate(program.groups):
        if len(group) == 1 and not reaped[number]:
            lines += [line(call, (number, 0, i), "") for i, call in enumerate(group[0])]
            continue
        clients = list(range(len(group)))
        if len(group) > 1:
            lines.append(f"# {len(group)} clients at once:")
            if observed:
                # In the order the run made their first calls, each a moment after the one
                # before: separate processes keep the order, rarely the overlap.
                clients.sort(key=lambda c: _started(observed, (number, c, 0)))
                lines.append(
                    "# (in the order the run made them; for the exact interleaving, "
                    "run the Python test)"
                )
        for turn, client in enumerate(clients):
            calls = group[client]
            if turn and observed and len(group) > 1:
                lines.append(f"sleep {SCRIPT_STAGGER:g}")
            if len(calls) == 1:
                command, _, comment = line(calls[0], (number, client, 0), "").partition("  #")
                lines.append(f"{command} &" + (f"  #{comment}" if comment else ""))
                continue
            lines.append("(")
            lines += [line(call, (number, client, i), "  ") for i, call in enumerate(calls)]
            lines.append(") &")
        if reaped[number]:
            lines.append("sleep 1  # every client is waiting: the fuzzer's reaper steps in")
            lines += [f"sandboxctl shutdown {shlex.quote(i)}" for i in reaped[number]]
        lines.append("wait")
    lines.append("# clean up")
    for sandbox_id in sandbox_ids[: program.sandboxes]:
        lines.append(f"sandboxctl shutdown {shlex.quote(sandbox_id)} >/dev/null 2>&1")
    return "\n".join(lines) + "\n"


def _started(
    observed: Mapping[tuple[int, int, int], Operation], key: tuple[int, int, int]
) -> tuple[float, int]:
    op = observed.get(key)
    return (math.inf, 0) if op is None else _begins(op)


def _reaped(
    program: Program,
    observed: Mapping[tuple[int, int, int], Operation],
    history: Sequence[Operation],
) -> list[list[str]]:
    """For each group, the ids the reaper shut down while it ran."""
    reaped: list[list[str]] = [[] for _ in program.groups]
    windows: dict[int, tuple[tuple[float, int], tuple[float, int]]] = {}
    for (group, _, _), op in observed.items():
        start, end = windows.get(group, (_begins(op), _ends(op)))
        windows[group] = (min(start, _begins(op)), max(end, _ends(op)))
    for op in history:
        if op.client != REAPER:
            continue
        for group, (start, end) in sorted(windows.items()):
            if start <= _begins(op) <= end and op.sandbox_id not in reaped[group]:
                reaped[group].append(op.sandbox_id)
                break
    return reaped


def _render_schedule(schedule: Sequence[tuple[int, int, int]]) -> str:
    """``[(0, 0, 0), ...]``, wrapped to fit a line of 99 characters."""
    lines = ["["]
    for key in schedule:
        item = f"({key[0]}, {key[1]}, {key[2]}), "
        if len(lines[-1]) + len(item) > 92:
            lines.append("")
        lines[-1] += item
    if len(lines) == 1:
        return "[" + lines[0][1:].rstrip(", ") + "]"
    return "[\n" + "".join(f"    {line.lstrip('[').rstrip()}\n" for line in lines) + "]"


def _model_name(program: Program) -> str:
    """The model that judges ``program``: of real processes when it creates any."""
    for call in program.calls:
        if call.name == "create" and call.args.get("sandboxer", "sim") != "sim":
            return "process_model"
    return "sim_model"


def _model_of(program: Program) -> Callable[[], ReferenceModel]:
    return process_model if _model_name(program) == "process_model" else sim_model


def _import_order(name: str) -> tuple[bool, str]:
    return (not name[0].isupper(), name)  # classes first, as isort does


def _docstring_text(lines: Sequence[str]) -> str:
    text = "\n".join(lines).strip().replace("\\", "\\\\")
    return text.replace('"' * 3, "'" * 3)


def replay_order(observed: Mapping[tuple[int, int, int], Operation]) -> list[tuple[int, int, int]]:
    """The keys of a run's ``trace`` (see :func:`~sandboxd.testing.run_program`) in the order
    the run made their calls: the ``schedule`` a reproducer replays."""
    return sorted(observed, key=lambda key: _begins(observed[key]))


def _render_timing(timing: Timing | None) -> str:
    """``Timing(...)`` as a reproducer writes it, or nothing for a model that keeps no time."""
    if timing is None or timing == Timing():
        return ""
    words = []
    if timing.stop_timeout is not None:
        words.append(f"stop_timeout={timing.stop_timeout!r}")
    if timing.tolerance != math.inf:
        words.append(f"tolerance={timing.tolerance!r}")
    return f"Timing({', '.join(words)})"


def reproducer_test(
    program: Program,
    sandbox_ids: Sequence[str],
    *,
    socket: str | None = None,
    notes: Sequence[str] = (),
    name: str = "test_reproducer",
    cushion: float = 0.02,
    schedule: Sequence[tuple[int, int, int]] | None = None,
    replays: int = 5,
    timing: Timing | None = None,
) -> str:
    """``program`` as a pytest module: one test that replays it against the daemon at
    ``$SANDBOXD_SOCKET`` (default ``socket``, else the daemon's default) and checks what the
    fuzzer checks: the history with the linearizability checker, every answer's fields
    (:func:`~sandboxd.testing.check_fields`) and the events published meanwhile
    (:func:`~sandboxd.testing.check_events`).  It passes on a correct daemon.

    A concurrent program is replayed on one connection, its calls made in the order of
    ``schedule`` (see :func:`~sandboxd.testing.run_program`; the order in which the failing
    run made them, from its ``trace``), each once the one before is out; and ``replays``
    times, failing at the first history the model cannot explain -- a server's own
    scheduling may still order two requests read at once either way.  ``timing`` is the
    fuzzer's (its grace period and tolerance; default: no deadlines checked), so that a
    deadline missed is judged as the fuzzer judged it.
    """
    text = render_program(program)
    used = sandbox_ids[: program.sandboxes]
    model = _model_name(program)
    imports = [
        "Call",
        "Program",
        "check_events",
        "check_fields",
        "check_linearizable",
        "recording_events",
        "run_program",
        model,
        *(["Timing"] if _render_timing(timing) else []),
    ]
    imports += [name for name in ("sim_faults", "process_faults") if f"{name}(" in text]
    if socket is not None:
        where = f'os.environ.get("SANDBOXD_SOCKET", {json.dumps(socket)})'
    else:
        where = "sandboxd.default_socket_path()"
    doc = [*notes, "", "Run it against the daemon with: SANDBOXD_SOCKET=PATH pytest THIS_FILE"]
    body = [
        '"""' + _docstring_text(doc) + '\n"""',
        "",
        *(["import os", ""] if socket is not None else []),
        "import trio",
        "",
        "import sandboxd",
        "from sandboxd.testing import (",
        *(f"    {name}," for name in sorted(imports, key=_import_order)),
        ")",
        "",
        f"SOCKET = {where}",
        f"SANDBOX_IDS = ({', '.join(map(json.dumps, used))}{',' if len(used) == 1 else ''})",
        f"PROGRAM = {text}",
        "# Created and shut down around each replay, to bracket its events.",
        f"MARKER = {json.dumps(used[0] + '-events')}",
        f"MODEL = {model}({_render_timing(timing)})",
    ]
    replay = ["PROGRAM", "[ctl]", "SANDBOX_IDS", f"cushion={cushion!r}", "cleanup=True"]
    if schedule is not None and not program.sequential:
        body += [
            "# The order in which the failing run made the calls: (group, client, call).",
            f"ORDER = {_render_schedule(schedule)}",
            f"REPLAYS = {replays}",
        ]
        replay.append("schedule=ORDER")
        loop, indent = ["            for _ in range(REPLAYS):"], "    "
    else:
        loop, indent = [], ""
    body += [
        "",
        "",
        f"def {name}() -> None:",
        "    async def main() -> None:",
        "        async with sandboxd.connect(SOCKET) as ctl:",
        *loop,
        f"{indent}            async with recording_events(ctl, MARKER) as log:",
        f"{indent}                history = await run_program(",
        f"{indent}                    {', '.join(replay)}",
        f"{indent}                )",
        f"{indent}            result = check_linearizable(history, MODEL)",
        f"{indent}            assert result.ok, result.describe()",
        f"{indent}            problems = check_fields(history)",
        f"{indent}            if log.complete:",
        f"{indent}                problems += check_events(history, log.events, MODEL)",
        f'{indent}            assert not problems, "\\n".join(problems)',
        "",
        "    trio.run(main)",
    ]
    return "\n".join(body) + "\n"
