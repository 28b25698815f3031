"""What a history shows beyond the outcomes the model predicts: the fields of every answer,
and the lifecycle events published while it ran.

Theory of operation
-------------------

:func:`~sandboxd.testing.check_linearizable` judges each call's :class:`Outcome`, which keeps
only what the model can predict (a state, an exit status, whether a pid was given).  A
caller sees more, and relies on it: a pid that stays the same for a sandbox's life, timestamps
that do not move and come in order (created, started, exited) within the calls that made
them, labels as created, and one event per step of the lifecycle.  Those are judged here,
life by life.

A *life* of a sandbox id runs from a successful Create to the next one.  An operation belongs
to a life when it began after that Create returned and returned before the next one began
(:attr:`Operation.order`, the order in which calls began and returned, says so exactly even
when a clock cannot tell them apart); the few that overlap a Create are left out.

Events: every life publishes ``/sandboxes/create``, then ``/sandboxes/start`` if it was
started, then ``/sandboxes/exit`` (status 0 if it never ran) and ``/sandboxes/delete``, each
exactly once and in that order; the fuzzer shuts every sandbox down at the end of a program,
so every life is complete.  An exit's status is the one Wait and Status reported in that life,
and one the process could report (:class:`~sandboxd.testing.ProcessBehaviour`).  Between its
start and its exit, a life publishes ``/sandboxes/exec-start`` and then
``/sandboxes/exec-exit`` for each exec that ran in it, once each, with the exec's id, and the
exit with the status the exec's caller got.

This module imports neither trio nor Hypothesis.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from .. import _models
from .._models import ExitStatus, SandboxEvent, SandboxInstance, SandboxStatus
from ._linearize import Operation
from ._model import SIGKILL_STATUS, ExecRun, ReferenceModel, StatusView

__all__ = ["check_events", "check_fields"]

#: How far a daemon's timestamp may stray outside the call that made it (clock rounding).
_SLACK: Final = 0.002

#: The step of a life each event topic moves to, from the steps it may follow.
_EVENT_STEPS: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    _models.TOPIC_CREATE: ("created", frozenset({"none"})),
    _models.TOPIC_START: ("started", frozenset({"created"})),
    _models.TOPIC_EXIT: ("exited", frozenset({"created", "started"})),
    _models.TOPIC_DELETE: ("none", frozenset({"exited"})),
    # An exec's events leave the life where it is.
    _models.TOPIC_EXEC_START: ("started", frozenset({"started"})),
    _models.TOPIC_EXEC_EXIT: ("started", frozenset({"started"})),
}


def _lives(history: Iterable[Operation]) -> dict[str, list[tuple[Operation, list[Operation]]]]:
    """Per sandbox id, its lives in order: the Create that began each, and the operations
    that surely happened during it."""
    by_id: dict[str, list[Operation]] = defaultdict(list)
    for op in history:
        by_id[op.sandbox_id].append(op)
    lives: dict[str, list[tuple[Operation, list[Operation]]]] = {}
    for sandbox_id, ops in by_id.items():
        creates = sorted(
            (op for op in ops if op.call == "create" and op.outcome is not None and op.outcome.ok),
            key=lambda op: op.order,
        )
        lives[sandbox_id] = []
        for k, create in enumerate(creates):
            until = creates[k + 1].order[0] if k + 1 < len(creates) else float("inf")
            during = [op for op in ops if op.order[0] > create.order[1] and op.order[1] < until]
            lives[sandbox_id].append((create, during))
    return lives


def _ok_results(ops: Iterable[Operation]) -> Iterator[tuple[Operation, Any]]:
    for op in ops:
        if op.outcome is not None and op.outcome.ok:
            yield op, op.result


class _Facts:
    """One life's fields as first seen; a later different value is a problem."""

    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.seen: dict[str, tuple[Any, Operation]] = {}
        self.problems: list[str] = []

    def see(self, name: str, value: Any, op: Operation) -> None:
        first = self.seen.setdefault(name, (value, op))
        if first[0] != value:
            self.problems.append(
                f"sandbox {self.sandbox_id!r}: {name} changed within one life, from "
                f"{first[0]!r} ({first[1]!r}) to {value!r} ({op!r})"
            )

    def order(self, earlier: str, later: str) -> None:
        if earlier in self.seen and later in self.seen:
            (a, op_a), (b, op_b) = self.seen[earlier], self.seen[later]
            if a > b:
                self.problems.append(
                    f"sandbox {self.sandbox_id!r}: {later} {b} ({op_b!r}) is before "
                    f"{earlier} {a} ({op_a!r})"
                )

    def within(self, name: str, when: datetime, op: Operation, what: str) -> None:
        """``when`` (a daemon's timestamp) lies within the wall-clock span of ``op``."""
        stamp = when.timestamp()
        start, end = op.wall
        if not start - _SLACK <= stamp <= end + _SLACK:
            self.problems.append(
                f"sandbox {self.sandbox_id!r}: {name} {when.isoformat()} is not within "
                f"{what} ({op!r})"
            )


def check_fields(history: Iterable[Operation]) -> list[str]:
    """Problems with the fields of the answers in ``history``, in words (none: ``[]``).

    Within one life: the created/started/exited timestamps and the pid never change, come in
    order, and lie within the calls that made them (created within the Create, started
    within the Start, exited no later than the call that reported it); a pid is > 0 once
    started; a Start gives the labels the Create gave; a Status has an exit time iff it has
    an exit status, and Wait and Status agree on both.  An exec has an id and a pid, and an
    ``echo`` that exited 0 wrote its words to stdout.
    """
    problems: list[str] = []
    for sandbox_id, lives in sorted(_lives(history).items()):
        for create, during in lives:
            facts = _Facts(sandbox_id)
            labels = dict(create.args.get("labels") or {})
            first_start: Operation | None = None
            for op, result in _ok_results(during):
                if isinstance(result, SandboxInstance):
                    facts.see("created_at", result.created_at, op)
                    facts.see("pid", result.pid, op)
                    if result.pid <= 0:
                        facts.problems.append(f"{op!r}: a started sandbox's pid is {result.pid}")
                    first_start = first_start or op
                    if dict(result.labels) != labels:
                        facts.problems.append(
                            f"{op!r}: labels {dict(result.labels)!r}, created with {labels!r}"
                        )
                elif isinstance(result, SandboxStatus):
                    _status_facts(facts, result, op)
                elif isinstance(result, ExitStatus):
                    facts.see("exited_at", result.exited_at, op)
                    facts.see("exit_status", result.exit_status, op)
                    facts.within("exited_at", result.exited_at, _until(op), "the Wait")
                elif isinstance(result, ExecRun):
                    facts.problems.extend(_exec_problems(result, op))
            if "created_at" in facts.seen:
                facts.within("created_at", facts.seen["created_at"][0], create, "the Create")
            if "started_at" in facts.seen and first_start is not None:
                facts.within("started_at", facts.seen["started_at"][0], first_start, "the Start")
            facts.order("created_at", "started_at")
            facts.order("started_at", "exited_at")
            facts.order("created_at", "exited_at")
            problems.extend(facts.problems)
    return problems


def _exec_problems(run: ExecRun, op: Operation) -> Iterator[str]:
    """An exec has an id and a pid, and an ``echo`` that ended well wrote its words."""
    if not run.exec_id or run.pid <= 0:
        yield f"{op!r}: exec id {run.exec_id!r}, pid {run.pid}"
    command = tuple(op.args.get("command") or ())
    if command[:1] == ("echo",) and run.exit.exit_status == 0:
        said = (" ".join(command[1:]) + "\n").encode()
        if run.stdout != said or run.stderr:
            yield f"{op!r}: wrote {run.stdout!r} and {run.stderr!r} to stderr, not {said!r}"


def _until(op: Operation) -> Operation:
    """``op`` as a span that may have begun at any time before it returned."""
    return attrs.evolve(op, wall=(-math.inf, op.wall[1]))


def _status_facts(facts: _Facts, status: SandboxStatus, op: Operation) -> None:
    if status.sandbox_id != facts.sandbox_id:
        facts.problems.append(f"{op!r}: the status of {status.sandbox_id!r}")
    facts.see("created_at", status.created_at, op)
    if status.pid != 0:
        facts.see("pid", status.pid, op)
    started = status.info.get("started_at")
    if started is not None:
        facts.see("started_at", datetime.fromisoformat(started), op)
    recorded = status.info.get("exit_status")
    if (recorded is None) != (status.exited_at is None):
        facts.problems.append(
            f"{op!r}: exit status {recorded!r} but exit time {status.exited_at!r}"
        )
    if recorded is not None:
        facts.see("exit_status", int(recorded), op)
    if status.exited_at is not None:
        facts.see("exited_at", status.exited_at, op)
        facts.within("exited_at", status.exited_at, _until(op), "the Status")


def check_events(
    history: Sequence[Operation],
    events: Iterable[SandboxEvent],
    model: ReferenceModel,
) -> list[str]:
    """Problems with the lifecycle ``events`` published while ``history`` ran (every
    sandbox of it shut down at the end), in words (none: ``[]``).  ``model`` tells how each
    sandbox's process may exit (its :class:`~sandboxd.testing.ProcessBehaviour`)."""
    by_id: dict[str, list[SandboxEvent]] = defaultdict(list)
    for event in events:
        by_id[event.sandbox_id].append(event)
    problems: list[str] = []
    all_lives = _lives(history)
    for sandbox_id in sorted(set(all_lives) | set(by_id)):
        lives = all_lives.get(sandbox_id, [])
        seen = by_id.get(sandbox_id, [])
        step = "none"
        exits: list[SandboxEvent] = []
        started: list[bool] = []
        execs: list[_Execs] = []
        for event in seen:
            moves = _EVENT_STEPS.get(event.topic)
            if moves is None or step not in moves[1]:
                problems.append(
                    f"sandbox {sandbox_id!r}: event {event.topic} where the lifecycle is at "
                    f"{step!r} (events: {_topics(seen)})"
                )
                break
            if event.topic == _models.TOPIC_CREATE:
                execs.append(_Execs(sandbox_id))
            elif event.topic == _models.TOPIC_EXIT:
                exits.append(event)
                started.append(step == "started")
                execs[-1].end(event)
            elif event.topic in (_models.TOPIC_EXEC_START, _models.TOPIC_EXEC_EXIT):
                execs[-1].see(event)
            step = moves[0]
        else:
            if step != "none":
                problems.append(
                    f"sandbox {sandbox_id!r}: its events stop at {step!r} although it was "
                    f"shut down (events: {_topics(seen)})"
                )
            elif len(exits) != len(lives):
                problems.append(
                    f"sandbox {sandbox_id!r}: {len(lives)} successful Create(s) but "
                    f"{len(exits)} life (lives) in the events: {_topics(seen)}"
                )
            else:
                for (create, during), exit, ran, life in zip(
                    lives, exits, started, execs, strict=True
                ):
                    problems.extend(_exit_problems(sandbox_id, create, during, exit, ran, model))
                    problems.extend(life.problems)
                    problems.extend(life.against(during))
    return problems


class _Execs:
    """The exec events of one life: each exec starts, then exits, before the life's exit."""

    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.running: set[str] = set()
        self.exits: dict[str, list[int | None]] = defaultdict(list)
        self.problems: list[str] = []

    def see(self, event: SandboxEvent) -> None:
        exec_id = event.exec_id
        if exec_id is None:
            self.problems.append(f"sandbox {self.sandbox_id!r}: {event.topic} without an exec id")
        elif event.topic == _models.TOPIC_EXEC_START:
            if exec_id in self.running:
                self.problems.append(
                    f"sandbox {self.sandbox_id!r}: exec {exec_id!r} started twice at once"
                )
            self.running.add(exec_id)
        elif exec_id not in self.running:
            self.problems.append(
                f"sandbox {self.sandbox_id!r}: exec {exec_id!r} exited without starting"
            )
        else:
            self.running.discard(exec_id)
            self.exits[exec_id].append(event.exit_status)

    def end(self, exit: SandboxEvent) -> None:
        """The life's exit: no exec runs any more."""
        if self.running:
            self.problems.append(
                f"sandbox {self.sandbox_id!r}: its exit ({exit.exit_status}) was published "
                f"while exec(s) {sorted(self.running)} still ran"
            )

    def against(self, during: Iterable[Operation]) -> Iterator[str]:
        """Problems with the exits published, against what each exec's caller got."""
        exits = {exec_id: list(statuses) for exec_id, statuses in self.exits.items()}
        for op in during:
            if not isinstance(op.result, ExecRun):
                continue
            run = op.result
            statuses = exits.get(run.exec_id) or []
            if run.exit.exit_status in statuses:
                statuses.remove(run.exit.exit_status)
            else:
                yield (
                    f"sandbox {self.sandbox_id!r}: {op!r} ended with "
                    f"{run.exit.exit_status}, but no exec-exit event of {run.exec_id!r} "
                    f"says so (events say {self.exits.get(run.exec_id, [])})"
                )


def _topics(events: Iterable[SandboxEvent]) -> str:
    return ", ".join(
        event.topic.rsplit("/", 1)[-1]
        + ("" if event.exit_status is None else f"({event.exit_status})")
        for event in events
    )


def _exit_problems(
    sandbox_id: str,
    create: Operation,
    during: Iterable[Operation],
    exit: SandboxEvent,
    ran: bool,
    model: ReferenceModel,
) -> Iterator[str]:
    status = exit.exit_status
    behaviour = model.behaviour_for(create.args)
    possible = {SIGKILL_STATUS, behaviour.sigterm_exit_status, behaviour.own_exit_status}
    if not ran and status != 0:
        yield f"sandbox {sandbox_id!r}: exit status {status} of a sandbox that never ran (0)"
    elif ran and status not in possible:
        yield (
            f"sandbox {sandbox_id!r}: exit status {status} in its exit event, which its "
            f"process cannot report (only {sorted(s for s in possible if s is not None)})"
        )
    for op in during:
        value = None if op.outcome is None else op.outcome.value
        if isinstance(value, StatusView):
            value = value.exit_status
        if op.call in ("wait", "status") and isinstance(value, int) and value != status:
            reported = value
            yield (
                f"sandbox {sandbox_id!r}: its exit event says {status}, but {op!r} "
                f"reported {reported}"
            )
