"""Tools for testing code that drives sandboxes, and sandboxd itself.

- :class:`ReferenceModel`: what a sequential caller of the Controller sees, derived from the
  lifecycle table; :func:`observe` and :func:`perform` reduce real results to its
  :class:`Outcome` values.
- :func:`check_linearizable`: whether a concurrent history of :class:`Operation` values is
  explained by the model; :class:`HistoryRecorder` records one.

Nothing here imports Hypothesis.
"""

from ._linearize import (
    DEFAULT_MAX_STATES,
    HistoryRecorder,
    LinearizabilityResult,
    Operation,
    check_linearizable,
)
from ._model import (
    CALL_INPUTS,
    SIGKILL_STATUS,
    SIGTERM_STATUS,
    Blocks,
    Outcome,
    ProcessBehaviour,
    ReferenceModel,
    SandboxModel,
    StatusView,
    Step,
    call_step,
    event_step,
    observe,
    pending_events,
    perform,
)

__all__ = [
    "CALL_INPUTS",
    "DEFAULT_MAX_STATES",
    "SIGKILL_STATUS",
    "SIGTERM_STATUS",
    "Blocks",
    "HistoryRecorder",
    "LinearizabilityResult",
    "Operation",
    "Outcome",
    "ProcessBehaviour",
    "ReferenceModel",
    "SandboxModel",
    "StatusView",
    "Step",
    "call_step",
    "check_linearizable",
    "event_step",
    "observe",
    "pending_events",
    "perform",
]
