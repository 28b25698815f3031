"""Reproducers: a program written out as a ``sandboxctl`` script and as a pytest test.

Both run the program against a daemon.  The script is for reading and for a shell; it makes
the calls of a group at once with ``&`` and ``wait``, so it reproduces the ordering, not the
exact timing.  The test replays the program with :func:`~sandboxd.testing.run_program` and
judges the history with :func:`~sandboxd.testing.check_linearizable`, as the fuzzer did.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence

from .._models import SandboxOptions
from ._faults import sim_behaviour
from ._linearize import Operation
from ._model import Blocks, Outcome, ReferenceModel, StatusView
from ._programs import REAPER, Call, Program, render_program

__all__ = ["brief_outcome", "reproducer_script", "reproducer_test"]

#: Seconds a Wait in a script gives up after (a Wait nobody answers would hang the shell).
SCRIPT_WAIT_TIMEOUT = 10


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
        return text if value.exit_status is None else f"{text}, exit {value.exit_status}"
    if value is True:
        return "ok (a pid)"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"exit {value}"
    return "ok" if value is None or isinstance(value, str) else f"ok({value!r})"


def _sandboxctl(call: Call, sandbox_id: str) -> tuple[str, str]:
    """The sandboxctl command for ``call``, and a note on what it cannot say."""
    words = ["sandboxctl", call.name, sandbox_id]
    note = ""
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
    if args and not note:
        note = f"also {args!r}: not settable from sandboxctl"
    return shlex.join(words), note


def _predictions(
    program: Program, sandbox_ids: Sequence[str], reaped: Sequence[Sequence[str]]
) -> list[Outcome | Blocks] | None:
    """What the reference model says each call of a sequential program returns (the
    reaper's Shutdowns included), or ``None`` when it cannot say for sure (concurrency,
    processes exiting on their own, races)."""
    if not program.sequential:
        return None
    for call in program.calls:
        if call.name == "create":
            behaviour = sim_behaviour(call.args)
            if behaviour.own_exit_status is not None or behaviour.signals_race:
                return None
    model = ReferenceModel(behaviour_of=sim_behaviour)
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
        if len(group) > 1:
            lines.append(f"# {len(group)} clients at once:")
        for client, calls in enumerate(group):
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


def _reaped(
    program: Program,
    observed: Mapping[tuple[int, int, int], Operation],
    history: Sequence[Operation],
) -> list[list[str]]:
    """For each group, the ids the reaper shut down while it ran."""
    reaped: list[list[str]] = [[] for _ in program.groups]
    windows: dict[int, tuple[float, float]] = {}
    for (group, _, _), op in observed.items():
        start, end = windows.get(group, (op.start_time, op.end_time))
        windows[group] = (min(start, op.start_time), max(end, op.end_time))
    for op in history:
        if op.client != REAPER:
            continue
        for group, (start, end) in sorted(windows.items()):
            if start <= op.start_time <= end and op.sandbox_id not in reaped[group]:
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


def _import_order(name: str) -> tuple[bool, str]:
    return (not name[0].isupper(), name)  # classes first, as isort does


def _docstring_text(lines: Sequence[str]) -> str:
    text = "\n".join(lines).strip().replace("\\", "\\\\")
    return text.replace('"' * 3, "'" * 3)


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
) -> str:
    """``program`` as a pytest module: one test that replays it against the daemon at
    ``$SANDBOXD_SOCKET`` (default ``socket``, else the daemon's default) and checks the
    history with the checker.  It passes on a correct daemon.

    A concurrent program is replayed on one connection, its calls made in the order of
    ``schedule`` (see :func:`~sandboxd.testing.run_program`; the order in which the failing
    run made them, from its ``trace``), each once the one before is out; and ``replays``
    times, failing at the first history the model cannot explain -- a server's own
    scheduling may still order two requests read at once either way.
    """
    text = render_program(program)
    used = sandbox_ids[: program.sandboxes]
    model = _model_name(program)
    imports = ["Call", "Program", "check_linearizable", "run_program", model]
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
        f"from sandboxd.testing import {', '.join(sorted(imports, key=_import_order))}",
        "",
        f"SOCKET = {where}",
        f"SANDBOX_IDS = ({', '.join(map(json.dumps, used))}{',' if len(used) == 1 else ''})",
        f"PROGRAM = {text}",
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
        f"{indent}            history = await run_program(",
        f"{indent}                {', '.join(replay)}",
        f"{indent}            )",
        f"{indent}            result = check_linearizable(history, {model}())",
        f"{indent}            assert result.ok, result.describe()",
        "",
        "    trio.run(main)",
    ]
    return "\n".join(body) + "\n"
