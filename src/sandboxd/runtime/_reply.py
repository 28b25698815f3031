"""How an answer reaches a caller: the :class:`Reply` an actor answers through, and the
:class:`Waiter` a trio task awaits."""

from __future__ import annotations

from typing import Any, Protocol, final

import trio


class Reply(Protocol):
    """Where the actor puts the answer to one call.

    The first :meth:`ok` or :meth:`fail` is the answer and later ones are ignored; neither
    blocks nor raises.  :class:`Waiter` is the one a trio task awaits; the RPC server's
    responders answer a remote caller directly.
    """

    @property
    def abandoned(self) -> bool:
        """True once nobody wants an answer (given already, or the caller went away): a
        parked caller that gave up is dropped without one."""
        ...

    def ok(self, value: Any) -> None: ...

    def fail(self, error: BaseException) -> None: ...


@final
class Waiter:
    """A :class:`Reply` that one trio task waits on with :meth:`wait`."""

    __slots__ = ("_error", "_task", "_value", "abandoned")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self.abandoned = False

    def ok(self, value: Any) -> None:
        if not self.abandoned:
            self.abandoned = True
            self._value = value
            self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.abandoned:
            self.abandoned = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> Any:
        """The answer: returns the value, or raises the error.

        A schedule point.  If cancelled before the answer, the waiter is abandoned (the call
        goes on; its answer is dropped)."""
        if not self.abandoned:  # not answered yet
            self._task = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self._task = None
                self.abandoned = True
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            await trio.lowlevel.checkpoint()
        if self._error is not None:
            raise self._error
        return self._value
