"""Hypothesis strategies for sandbox ids, Create options and whole lifecycle programs.

The one place of sandboxd that imports Hypothesis (with the fuzzer built on it,
:mod:`sandboxd.testing.fuzz`): install it with ``pip install 'sandboxd[testing]'``.

- :func:`sandbox_ids`, :func:`invalid_sandbox_ids`: ids Create accepts, and ids it refuses;
- :func:`sim_settings`, :func:`create_options`, :func:`create_args`: Create options for the
  ``sim`` sandboxer, with faults (start failures, exits after a delay or at a chosen point,
  processes that ignore SIGTERM, slow stops), as :func:`~sandboxd.testing.sim_faults` takes;
- :func:`process_options`: Create options for real processes (``process``, ``bwrap``) that
  exit with a chosen status after a delay or ignore SIGTERM;
- :func:`sim_exec_commands`, :func:`process_exec_commands`, :func:`exec_args`: Exec
  requests -- sim scripts, or real commands -- with or without a
  timeout;
- :func:`stop_timeouts`, :func:`calls`, :func:`programs`, :func:`client_programs`: calls
  (lifecycle calls, :data:`CALL_WEIGHTS`; with execs, :data:`CALLS_WITH_EXECS`),
  and :class:`~sandboxd.testing.Program` values -- sequences and concurrent groups of calls
  over a few sandboxes -- for :func:`~sandboxd.testing.run_program`.

Everything shrinks towards the plain case: no faults, fewer and earlier calls (``create``
first, then ``start``, ...), no timeout, sandbox 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, final

from hypothesis import strategies as st

from .._models import MAX_SANDBOX_ID_LENGTH, SandboxOptions
from ._faults import process_faults
from ._model import CALL_NAMES, EXEC_CALL
from ._programs import Call, Program

__all__ = [
    "CALLS_WITH_EXECS",
    "CALL_WEIGHTS",
    "calls",
    "client_programs",
    "create_args",
    "create_options",
    "exec_args",
    "invalid_sandbox_ids",
    "process_exec_commands",
    "process_options",
    "programs",
    "sandbox_ids",
    "sim_exec_commands",
    "sim_settings",
    "stop_timeouts",
]

#: The calls of a program, each as often as it is drawn: lifecycle changes more often than
#: queries.  ``create`` comes first, so programs shrink towards creating.
CALL_WEIGHTS: Final[tuple[str, ...]] = (
    *("create",) * 3,
    *("start",) * 3,
    *("stop",) * 2,
    *("wait",) * 2,
    *("status",) * 3,
    *("shutdown",) * 2,
    "ping",
    "platform",
    "metrics",
)

#: The calls of a program that runs execs too (``names=`` of :func:`programs`): as
#: :data:`CALL_WEIGHTS`, and an exec as often as a Stop.
CALLS_WITH_EXECS: Final[tuple[str, ...]] = (*CALL_WEIGHTS, *(EXEC_CALL,) * 2)

_ALNUM: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def sandbox_ids(*, prefix: str = "") -> st.SearchStrategy[str]:
    """Ids Create accepts (containerd's rule: letters and digits, separated by single ``.``,
    ``_`` or ``-``; at most 76 characters), each starting with ``prefix`` (give one that
    ends with a separator, e.g. ``"test-"``)."""
    word = st.text(_ALNUM, min_size=1, max_size=8)
    tail = st.lists(st.tuples(st.sampled_from("-._"), word), max_size=3)
    return st.builds(
        lambda first, rest: (prefix + first + "".join(s + w for s, w in rest))[
            :MAX_SANDBOX_ID_LENGTH
        ],
        word,
        tail,
    ).filter(lambda s: s[-1].isalnum())


def invalid_sandbox_ids() -> st.SearchStrategy[str]:
    """Ids Create refuses with INVALID_ARGUMENT (empty, bad characters, bad separators, too
    long)."""
    return st.one_of(
        st.just(""),
        st.sampled_from(["a b", "a/b", "-a", "a-", "a--b", "a..b", "é", "a\n"]),
        st.text(_ALNUM, min_size=MAX_SANDBOX_ID_LENGTH + 1, max_size=MAX_SANDBOX_ID_LENGTH + 8),
    )


#: Fault kinds, each as often as it is drawn: the ones that make a sandbox useless (a Start
#: that fails) less often than the ones that make orderings interesting.
_FAULT_WEIGHTS: Final = (
    *("ignore_sigterm",) * 4,
    *("stop_delay",) * 2,
    *("exit_on",) * 2,
    "exit_after",
    "start_delay",
    "start_error",
    "exec_delay",
    "exec_error",
)


def sim_settings(
    *,
    start_errors: bool = True,
    exits: bool = True,
    exit_on_stop: bool = True,
    ignore_sigterm: bool = True,
    stop_delays: bool = True,
    start_delays: bool = True,
    exec_delays: bool = True,
    exec_errors: bool = True,
    delays: Sequence[float] = (0.0005, 0.002),
    max_faults: int = 2,
) -> st.SearchStrategy[dict[str, Any]]:
    """``options.sim`` settings of the ``sim`` sandboxer: up to ``max_faults`` faults, or none.

    Each kind can be left out: ``start_errors`` (``start_error``), ``exits`` (the process
    exits on its own: ``exit_after``, ``exit_on="start"``), ``exit_on_stop``
    (``exit_on="stop"``), ``ignore_sigterm``, ``stop_delays`` (``stop_delay``) and
    ``start_delays`` (``start_delay``), ``exec_delays`` (``exec_delay``: execs start late)
    and ``exec_errors`` (``exec_error``: execs fail to start).  Delays are drawn from
    ``delays`` (seconds): keep them short, so that they happen while a program runs.

    A sequential :class:`~sandboxd.testing.ReferenceModel` predicts every call only without
    ``exits`` and ``stop_delays`` (they race with the calls); the linearizability checker
    handles them all.
    """
    exit_points = [p for p, on in (("start", exits), ("stop", exit_on_stop)) if on]
    allowed = {
        "start_error": start_errors,
        "start_delay": start_delays,
        "exit_after": exits,
        "exit_on": bool(exit_points),
        "ignore_sigterm": ignore_sigterm,
        "stop_delay": stop_delays,
        "exec_delay": exec_delays,
        "exec_error": exec_errors,
    }
    kinds = [kind for kind in _FAULT_WEIGHTS if allowed[kind]]
    if not kinds or max_faults < 1:
        return st.just({})
    delay = st.sampled_from(list(delays))

    @st.composite
    def draw_settings(draw: st.DrawFn) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        count = draw(st.integers(0, min(max_faults, len(set(kinds)))))
        chosen = draw(
            st.lists(st.sampled_from(kinds), unique=True, min_size=count, max_size=count)
        )
        for kind in chosen:
            if kind in ("start_error", "exec_error"):
                settings[kind] = "injected by the fuzzer"
            elif kind == "ignore_sigterm":
                settings[kind] = True
            elif kind == "exit_on":
                settings[kind] = draw(st.sampled_from(exit_points))
            elif kind == "exit_after":
                settings[kind] = draw(st.sampled_from((0.0, *delays)))
            else:
                settings[kind] = draw(delay)
        if "exit_after" in settings or "exit_on" in settings:
            settings["exit_code"] = draw(st.sampled_from((0, 1, 3, 255)))
        if settings.get("exit_on") == "stop":
            # A process cannot both ignore SIGTERM and exit when a SIGTERM stops it.
            settings.pop("ignore_sigterm", None)
        return settings

    return draw_settings()


def create_options(
    *, lifetimes: Sequence[float] = (0.001, 0.004), **faults: Any
) -> st.SearchStrategy[SandboxOptions | None]:
    """Create options with ``sim`` faults (:func:`sim_settings` takes ``faults``) and, now and
    then, a ``lifetime_secs`` drawn from ``lifetimes`` (seconds; ``()`` for none: a sequential
    model cannot predict when one runs out), or ``None`` for neither."""
    if not lifetimes:
        return sim_settings(**faults).map(lambda sim: SandboxOptions(sim=sim) if sim else None)
    lifetime = st.none() | st.none() | st.sampled_from(list(lifetimes))

    def build(drawn: tuple[dict[str, Any], float | None]) -> SandboxOptions | None:
        sim, seconds = drawn
        if not sim and seconds is None:
            return None
        return SandboxOptions(sim=sim or None, lifetime_secs=seconds)

    return st.tuples(sim_settings(**faults), lifetime).map(build)


def process_options(
    delays: Sequence[float] = (0.0, 0.01, 0.05),
    exit_codes: Sequence[int] = (0, 1, 3, 255),
) -> st.SearchStrategy[SandboxOptions | None]:
    """Create options for a real process (``process`` or ``bwrap`` sandboxer), as
    :func:`~sandboxd.testing.process_faults` builds them: the pause process (``None``), a
    process that exits on its own with one of ``exit_codes`` after one of ``delays``
    seconds, one that ignores SIGTERM, or both."""
    exits = st.tuples(st.sampled_from(list(exit_codes)), st.sampled_from(list(delays)))
    return st.tuples(st.one_of(st.none(), exits), st.booleans()).map(
        lambda drawn: process_faults(
            exit_code=None if drawn[0] is None else drawn[0][0],
            exit_after=0.0 if drawn[0] is None else drawn[0][1],
            ignore_sigterm=drawn[1],
        )
    )


def create_args(
    sandboxer: str | None = "sim",
    *,
    options: st.SearchStrategy[SandboxOptions | None] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments of Create: ``sandboxer`` (left out when ``None``) and ``options``
    drawn from ``options`` (left out when ``None``; default :func:`create_options` for the
    ``sim`` sandboxer or ``None``, :func:`process_options` for any other)."""
    fixed: dict[str, Any] = {} if sandboxer is None else {"sandboxer": sandboxer}
    if options is not None:
        drawn = options
    elif sandboxer in (None, "sim"):
        drawn = create_options()
    else:
        drawn = process_options()

    def build(value: SandboxOptions | None) -> dict[str, Any]:
        return dict(fixed) if value is None else {**fixed, "options": value}

    return drawn.map(build)


#: Sim exec scripts, each as often as it is drawn: the ones that outlive a call or two (and
#: so race Stops and exits) more often.  ``true`` first: execs shrink towards it.
_SIM_SCRIPTS: Final[tuple[tuple[str, ...], ...]] = (
    ("true",),
    ("exit", "3"),
    ("echo", "hello"),
    ("cat",),
    *(("sleep", "0.001"),) * 2,
    *(("sleep", "0.004"),) * 2,
    *(("hang",),) * 3,
)


def sim_exec_commands(
    scripts: Sequence[Sequence[str]] = _SIM_SCRIPTS,
) -> st.SearchStrategy[tuple[str, ...]]:
    """Commands of sim execs: scripts the sim backend runs on trio's clock (``true``,
    ``exit N``, ``echo ...``, ``cat``, ``sleep S``, ``hang`` until killed), drawn from
    ``scripts`` (repeat one to draw it more often); a sandbox's faults make execs start late
    or fail to start (:func:`sim_settings`)."""
    return st.sampled_from([tuple(script) for script in scripts])


def process_exec_commands(
    sleeps: Sequence[float] = (0.05, 30.0),
    exit_codes: Sequence[int] = (0, 3),
) -> st.SearchStrategy[tuple[str, ...]]:
    """Commands of real execs (``process``, ``bwrap``): ``true``, ``sh -c 'exit N'`` for
    N in ``exit_codes``, ``sleep S`` for S in ``sleeps`` seconds (a long one races the
    Stops; keep one longer than any timeout drawn)."""
    commands: list[tuple[str, ...]] = [("true",)]
    commands += [("sh", "-c", f"exit {code}") for code in exit_codes if code]
    commands += [("sleep", f"{seconds:g}") for seconds in sleeps]
    return st.sampled_from(commands)


def exec_args(
    sandboxer: str | None = "sim",
    *,
    commands: st.SearchStrategy[tuple[str, ...]] | None = None,
    timeouts: Sequence[float | None] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """The fields of an Exec request: a command from ``commands`` (default
    :func:`sim_exec_commands` for the ``sim`` sandboxer or ``None``,
    :func:`process_exec_commands` for any other) and, now and then, a ``timeout_secs`` from
    ``timeouts`` (``None``: none; default a few milliseconds for sim, a tenth of a second
    for real processes).  A ``cat`` gets a stdin (closed at once)."""
    sim = sandboxer in (None, "sim")
    if commands is None:
        commands = sim_exec_commands() if sim else process_exec_commands()
    if timeouts is None:
        timeouts = (None, None, 0.003) if sim else (None, None, 0.1)

    def build(drawn: tuple[tuple[str, ...], float | None]) -> dict[str, Any]:
        command, timeout = drawn
        args: dict[str, Any] = {"command": command}
        if command == ("cat",):
            args["stdin"] = True
        if timeout is not None:
            args["timeout_secs"] = timeout
        return args

    return st.tuples(commands, st.sampled_from(list(timeouts))).map(build)


def stop_timeouts(
    values: Sequence[float | None] = (None, 0, 0.002),
) -> st.SearchStrategy[float | None]:
    """A Stop's ``timeout_secs``: ``None`` (the controller's grace period), 0 (SIGKILL at
    once), or a short grace period."""
    return st.sampled_from(list(values))


def calls(
    sandboxes: int = 2,
    *,
    names: Sequence[str] = CALL_WEIGHTS,
    create: st.SearchStrategy[Mapping[str, Any]] | None = None,
    stop_timeout: st.SearchStrategy[float | None] | None = None,
    execs: st.SearchStrategy[Mapping[str, Any]] | None = None,
) -> st.SearchStrategy[Call]:
    """One :class:`~sandboxd.testing.Call` on one of ``sandboxes`` sandboxes: a method drawn
    from ``names`` (repeat a name to draw it more often), a Create's arguments from ``create``
    (default :func:`create_args`), a Stop's timeout from ``stop_timeout`` (default
    :func:`stop_timeouts`), an exec's request from ``execs`` (default :func:`exec_args`)."""
    if sandboxes < 1:
        raise ValueError("calls need at least one sandbox")
    unknown = set(names) - set(CALL_NAMES)
    if unknown:
        raise ValueError(f"unknown calls: {sorted(unknown)}")
    arguments = _Arguments(create, stop_timeout, execs)

    @st.composite
    def draw_call(draw: st.DrawFn) -> Call:
        name = draw(st.sampled_from(list(names)))
        sandbox = draw(st.integers(0, sandboxes - 1))
        return Call(name, sandbox, arguments.draw(draw, name))

    return draw_call()


@final
class _Arguments:
    """Draws a call's arguments: a Create's, a Stop's timeout, an exec's request."""

    def __init__(
        self,
        create: st.SearchStrategy[Mapping[str, Any]] | None,
        stop_timeout: st.SearchStrategy[float | None] | None,
        execs: st.SearchStrategy[Mapping[str, Any]] | None,
    ) -> None:
        self.create = create_args() if create is None else create
        self.stop_timeout = stop_timeouts() if stop_timeout is None else stop_timeout
        self.execs = exec_args() if execs is None else execs

    def draw(self, draw: st.DrawFn, name: str) -> dict[str, Any]:
        if name == "create":
            return dict(draw(self.create))
        if name == EXEC_CALL:
            return dict(draw(self.execs))
        if name == "stop":
            timeout = draw(self.stop_timeout)
            if timeout is not None:
                return {"timeout_secs": timeout}
        return {}


#: How a drawn call joins the program: it starts a new group (runs after everything before
#: it), runs at once with the calls of the current group as a new client, or follows the
#: current client's last call.  The first shrinks best: programs shrink towards sequential.
_NEW_GROUP: Final = 0
_AT_ONCE: Final = 1
_AFTER: Final = 2

#: The calls that take a sandbox on through its life, by what the program did to it so far
#: (``None``: not created).  A guided call is one of these; the first is the likeliest.
_NEXT: Final[Mapping[str | None, tuple[str, ...]]] = {
    None: ("create",),
    "created": ("start", "start", "start", "stop", "wait"),
    "ready": ("stop", EXEC_CALL, "wait", "stop", EXEC_CALL, "wait", "status", "shutdown"),
    "stopped": ("wait", "shutdown", "status", "start", "shutdown", EXEC_CALL),
}

#: Of the selectors 0..11, those below this pick a guided call; this one and the next reuse
#: the id (see _REUSE_RACERS); the others pick any call.
_GUIDED: Final = 8
_SELECTORS: Final = 12

#: Id reuse: a sandbox that exists is shut down, created again under its id and asked its
#: Status, one call after the other on one client; a call on the old life may race them (on
#: a client of its own, in the same group).  State kept by id -- a cache, a subscription, a
#: record -- and not dropped at Shutdown shows only there.  A racer is drawn from these.
_REUSE_RACERS: Final = ("status", "wait", "stop", "start", "wait")

#: The calls a guided call may race with (a *partner*: a client of its own in the same
#: group, on the same sandbox), by what the program did to the sandbox before the group.
_RACERS: Final[Mapping[str | None, tuple[str, ...]]] = {
    None: ("create", "start"),
    "created": ("start", "stop", "wait", "shutdown", EXEC_CALL),
    "ready": ("wait", "stop", EXEC_CALL, "shutdown", EXEC_CALL, "status"),
    "stopped": ("wait", "shutdown", "start", "status"),
}


def _next_phase(phase: str | None, name: str, alone: bool) -> str | None:
    """What the program has done to a sandbox after ``name`` (a guess: faults and races may
    change it; it only guides the drawing)."""
    if name == "create":
        return phase or "created"
    if name == "shutdown":
        return None
    if phase == "created" and name == "start":
        return "ready"
    if phase in ("created", "ready") and name == "stop":
        return "stopped"
    if phase == "ready" and name == "wait" and alone:
        return None  # nobody stops it: the reaper will shut it down
    return phase


def _assemble(
    steps: Sequence[tuple[Call, int]], clients: int, max_sequence: int
) -> list[list[list[Call]]]:
    groups: list[list[list[Call]]] = []
    for call, mode in steps:
        if groups and mode == _AFTER and len(groups[-1][-1]) < max_sequence:
            groups[-1][-1].append(call)
        elif groups and mode != _NEW_GROUP and len(groups[-1]) < clients:
            groups[-1].append([call])
        else:
            groups.append([[call]])
    return groups


def programs(
    sandboxes: int = 2,
    *,
    clients: int = 3,
    min_calls: int = 1,
    max_calls: int = 16,
    max_sequence: int = 3,
    names: Sequence[str] = CALL_WEIGHTS,
    create: st.SearchStrategy[Mapping[str, Any]] | None = None,
    stop_timeout: st.SearchStrategy[float | None] | None = None,
    guided: bool = True,
    call: st.SearchStrategy[Call] | None = None,
    execs: st.SearchStrategy[Mapping[str, Any]] | None = None,
) -> st.SearchStrategy[Program]:
    """Whole lifecycle :class:`~sandboxd.testing.Program` values: ``min_calls`` to
    ``max_calls`` calls over ``sandboxes`` sandboxes, in groups of at most ``clients``
    sequences at once, each of at most ``max_sequence`` calls.

    Each call is drawn with how it joins the program -- after everything before it, at once
    with the current group, or after the current client's last call; programs shrink towards
    fewer and plainer calls on fewer sandboxes.  ``programs(clients=1)`` draws only
    sequential programs.

    With ``guided`` (the default), most calls take their sandbox on through its life, as the
    program left it so far (create it, start it, then stop and wait, shut it down), so that
    the orderings that matter -- a Wait racing a Stop of a running sandbox, an exec racing
    a Stop or the sandbox's exit, say -- come up often; some bring a *partner*, a call racing
    them on the same sandbox.  Some reuse an
    id: a Shutdown, a Create of the same id and a Status on one client, perhaps with a call
    on the old life racing them (a cache kept by id and not cleared at Shutdown shows only
    there).  (A call and its
    partner are drawn as one, so a shrunk program may keep them at once where one after the
    other would do as well: the fuzzer tries that too.)  The other calls are drawn from
    ``names`` (repeat a name to draw it more often; :data:`CALLS_WITH_EXECS` draws execs
    too, and only names given are drawn, guided or not).  A
    Create's arguments come from ``create`` (default :func:`create_args`), a Stop's timeout
    from ``stop_timeout`` (default :func:`stop_timeouts`), an exec's request from ``execs``
    (default :func:`exec_args`).  Alternatively ``call`` draws every call, unguided.
    """
    if clients < 1 or max_sequence < 1 or sandboxes < 1:
        raise ValueError("need sandboxes >= 1, clients >= 1 and max_sequence >= 1")
    modes = [_NEW_GROUP, _NEW_GROUP, _AT_ONCE, _AFTER] if clients > 1 else [_NEW_GROUP, _AFTER]
    mode = st.sampled_from(modes)

    def build(steps: Sequence[tuple[Call, int]]) -> Program:
        return Program(_assemble(steps, clients, max_sequence))

    if call is not None:
        return st.lists(st.tuples(call, mode), min_size=min_calls, max_size=max_calls).map(build)
    unknown = set(names) - set(CALL_NAMES)
    if unknown or not names:
        raise ValueError(f"names must be calls, not {sorted(unknown) or 'nothing'}")
    arguments = _Arguments(create, stop_timeout, execs)
    # 0..2: the sandbox of the call before (calls cluster, and shrink to one sandbox);
    # 3 and up: another one.
    hop = st.integers(0, 2 + sandboxes - 1)
    index = st.integers(0, len(names) - 1)
    # 1..4: a call racing a guided one, on the same sandbox; anything else: none.
    partner = st.integers(0, 7) if guided and clients > 1 else st.just(0)
    allowed = frozenset(names)
    next_calls = {p: tuple(n for n in c if n in allowed) or tuple(names) for p, c in _NEXT.items()}
    racers = {p: tuple(n for n in c if n in allowed) for p, c in _RACERS.items()}
    reuse = {"shutdown", "create"} <= allowed
    # Without id reuse, the selectors of reuse are left out: they would pick any call.
    last = _SELECTORS - 1 if reuse else _GUIDED + 1
    selector = st.integers(0, last) if guided else st.just(last)
    reuse_racers = tuple(n for n in _REUSE_RACERS if n in allowed)  # drawn with ``partner``

    # The guide of the program being drawn: the steps of a list are drawn in order.
    current: list[_Guide] = [_Guide()]

    @st.composite
    def draw_step(draw: st.DrawFn) -> list[tuple[Call, int]]:
        """One drawn call (and its partner, if any), guided by what the program did so far."""
        guide = current[-1]
        joins = draw(mode)
        jump = draw(hop)
        if jump > 2:
            guide.sandbox = (guide.sandbox + jump - 2) % sandboxes
        if joins == _NEW_GROUP:
            guide.before.update(guide.after)  # calls of a group race: all see the phase
        phase = guide.before.get(guide.sandbox)  # before the group
        chosen = draw(selector)
        if chosen < _GUIDED:
            options = next_calls[phase]
            picked = [(options[chosen % len(options)], joins)]
            rival = draw(partner)
            if 0 < rival <= len(racers[phase]):
                picked.append((racers[phase][rival - 1], _AT_ONCE))
        elif reuse and chosen < _GUIDED + 2 and phase is not None:
            picked = [("shutdown", joins), ("create", _AFTER), ("status", _AFTER)]
            rival = draw(partner)
            if 0 < rival <= len(reuse_racers):
                picked.append((reuse_racers[rival - 1], _AT_ONCE))
        else:
            picked = [(names[draw(index)], joins)]
        drawn: list[tuple[Call, int]] = []
        for name, how in picked:
            drawn.append((Call(name, guide.sandbox, arguments.draw(draw, name)), how))
            alone = how == _NEW_GROUP and len(picked) == 1
            now = guide.after.get(guide.sandbox, phase)
            guide.after[guide.sandbox] = _next_phase(now, name, alone)
        return drawn

    steps = st.lists(draw_step(), min_size=min_calls, max_size=max_calls)

    @st.composite
    def draw_program(draw: st.DrawFn) -> Program:
        current.append(_Guide())
        try:
            drawn = draw(steps)
        finally:
            current.pop()
        # A step may bring a partner or an id reuse: the bound is on calls, not steps.
        return build([pair for step in drawn for pair in step][:max_calls])

    return draw_program()


@final
class _Guide:
    """While a program is drawn: the guess of each sandbox's phase before the current group
    and after it, and the sandbox of the last call."""

    __slots__ = ("after", "before", "sandbox")

    def __init__(self) -> None:
        self.before: dict[int, str | None] = {}
        self.after: dict[int, str | None] = {}
        self.sandbox = 0


def client_programs(
    clients: int,
    calls_each: int,
    *,
    call: st.SearchStrategy[Call] | None = None,
) -> st.SearchStrategy[Program]:
    """Programs of one group: ``clients`` clients making ``calls_each`` calls each, all at
    once (calls drawn from ``call``, default :func:`calls`)."""
    call_strategy = calls() if call is None else call
    sequence = st.lists(call_strategy, min_size=calls_each, max_size=calls_each)
    return st.lists(sequence, min_size=clients, max_size=clients).map(lambda s: Program([s]))
