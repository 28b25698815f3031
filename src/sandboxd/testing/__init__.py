"""Tools for testing code that drives sandboxes, and sandboxd itself.

- :data:`SPEC` and :func:`expect`: the lifecycle as a caller sees it, per state and call,
  written independently of the runtime's table.
- :class:`ReferenceModel`: what a sequential caller of the Controller sees, following
  :data:`SPEC`, with deadlines (:class:`Timing`); :func:`observe` and :func:`perform`
  reduce real results to its :class:`Outcome` values.
- :func:`check_linearizable`: whether a concurrent history of :class:`Operation` values is
  explained by the model; :class:`HistoryRecorder` records one.  :func:`check_fields` and
  :func:`check_events` judge what outcomes leave out: every field of the answers, and the
  lifecycle events published meanwhile.
- :data:`EXEC` and :func:`expect_exec`: what an Exec does in each state; the model runs
  execs (:class:`ExecBehaviour`: how a command ends) and judges how they end when a Stop,
  a Shutdown or the sandbox's exit races them; :func:`sim_exec_behaviour` and
  :func:`process_exec_behaviour` read the fuzzer's exec commands back.
- :func:`sim_faults`: Create options that inject faults into a ``sim`` sandbox (start
  failures, exits after a delay or at a chosen point, ignored SIGTERM, slow stops), over the
  socket too; :func:`sim_behaviour` and :func:`sim_model` tell the model about them.
  :func:`process_faults`, :func:`process_behaviour` and :func:`process_model` do the same
  for real processes (the ``process`` and ``bwrap`` sandboxers), through their command.
- :class:`Program` and :class:`Call`: lifecycle programs (sequences and concurrent groups of
  calls over a few sandboxes); :func:`run_program` runs one and returns its history;
  :func:`reproducer_script` and :func:`reproducer_test` write one out for ``sandboxctl`` and
  for pytest (a concurrent one replayed in the recorded order); :func:`explain_conflict`
  says in a sentence what the checker found.
- :func:`serve_in_thread`: a Controller served on a temporary socket from a background
  thread, for blocking clients.

Nothing here imports Hypothesis.  With the ``testing`` extra (``pip install
'sandboxd[testing]'``): :mod:`sandboxd.testing.strategies` (Hypothesis strategies for ids,
options and programs) and :mod:`sandboxd.testing.fuzz` (the engine of ``sandboxctl fuzz``).
The pytest plugin :mod:`sandboxd.testing.pytest_plugin` (registered as ``sandboxd``) offers
the fixtures ``sandboxd_controller``, ``sandboxd_socket``, ``sandboxd_client``,
``sandboxd_sync_socket`` and ``sandboxd_sync_client``.
"""

from ._faults import (
    process_behaviour,
    process_exec_behaviour,
    process_faults,
    process_model,
    sim_behaviour,
    sim_exec_behaviour,
    sim_faults,
    sim_model,
)
from ._linearize import (
    DEFAULT_MAX_STATES,
    HistoryRecorder,
    LinearizabilityResult,
    Operation,
    check_linearizable,
)
from ._model import (
    CALL_INPUTS,
    CALL_NAMES,
    EXEC_CALL,
    SIGKILL_STATUS,
    SIGTERM_STATUS,
    Blocks,
    ExecBehaviour,
    ExecModel,
    ExecRun,
    Outcome,
    ProcessBehaviour,
    ReferenceModel,
    SandboxModel,
    StatusView,
    Step,
    Timing,
    call_step,
    event_step,
    exec_exit_step,
    observe,
    pending_events,
    pending_exec_exits,
    perform,
    run_exec,
)
from ._observed import check_events, check_fields
from ._programs import (
    Call,
    EventLog,
    Group,
    Program,
    ProgramHung,
    recording_events,
    run_program,
)
from ._reproduce import explain_conflict, reproducer_script, reproducer_test
from ._server import fixture_backends, serve_in_thread, shutdown_all
from ._spec import EXEC, SPEC, Caller, Execs, Expect, Process, Record, expect, expect_exec

__all__ = [
    "CALL_INPUTS",
    "CALL_NAMES",
    "DEFAULT_MAX_STATES",
    "EXEC",
    "EXEC_CALL",
    "SIGKILL_STATUS",
    "SIGTERM_STATUS",
    "SPEC",
    "Blocks",
    "Call",
    "Caller",
    "EventLog",
    "ExecBehaviour",
    "ExecModel",
    "ExecRun",
    "Execs",
    "Expect",
    "Group",
    "HistoryRecorder",
    "LinearizabilityResult",
    "Operation",
    "Outcome",
    "Process",
    "ProcessBehaviour",
    "Program",
    "ProgramHung",
    "Record",
    "ReferenceModel",
    "SandboxModel",
    "StatusView",
    "Step",
    "Timing",
    "call_step",
    "check_events",
    "check_fields",
    "check_linearizable",
    "event_step",
    "exec_exit_step",
    "expect",
    "expect_exec",
    "explain_conflict",
    "fixture_backends",
    "observe",
    "pending_events",
    "pending_exec_exits",
    "perform",
    "process_behaviour",
    "process_exec_behaviour",
    "process_faults",
    "process_model",
    "recording_events",
    "reproducer_script",
    "reproducer_test",
    "run_exec",
    "run_program",
    "serve_in_thread",
    "shutdown_all",
    "sim_behaviour",
    "sim_exec_behaviour",
    "sim_faults",
    "sim_model",
]
