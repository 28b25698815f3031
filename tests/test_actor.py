"""One SandboxActor on its own: no Controller, a fake context, the sim backend.

The context stands in for everything the actor reaches beyond its sandbox.  Its store keeps
each record the actor queues until the test commits or refuses it, so a test can see an
answer held back until its step is on disk; its events and the sandboxes it was told to
forget are lists.  Time is trio's autojump clock: grace periods pass at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, final

import pytest
import trio
import trio.testing

from sandboxd import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from sandboxd._models import (
    TOPIC_CREATE,
    TOPIC_DELETE,
    TOPIC_EXIT,
    TOPIC_START,
    ExitStatus,
    SandboxInstance,
    SandboxOptions,
    SandboxSpec,
    SandboxState,
)
from sandboxd.backends import EXIT_UNKNOWN, SimBackend
from sandboxd.runtime import Input, Phase, SandboxRecord, Waiter
from sandboxd.runtime._actor import ActorContext, SandboxActor
from sandboxd.runtime._store import Done, decode_record

#: Far beyond any simulated timer here; under the autojump clock it costs nothing.
GUARD = 10_000
STOP_TIMEOUT = 30.0


@final
class Runtime:
    """A fake of what a Controller gives its actors, and what they did with it."""

    def __init__(self, nursery: trio.Nursery, *, store: bool) -> None:
        self.nursery = nursery
        self.backend = SimBackend()
        #: Records queued with the store and not yet committed or refused.
        self.queued: list[tuple[str, str | None, Done]] = []
        self.events: list[tuple[str, int | None]] = []
        self.forgotten: list[SandboxActor] = []
        self.launched = 0
        self.context = ActorContext(
            write=self._write if store else None,
            stop_timeout=STOP_TIMEOUT,
            process_nursery=nursery,
            publish=lambda event: self.events.append((event.topic, event.exit_status)),
            forget=self.forgotten.append,
        )

    def _write(self, sandbox_id: str, text: str | None, done: Done) -> None:
        self.queued.append((sandbox_id, text, done))

    def commit(self, error: Exception | None = None) -> list[SandboxRecord | None]:
        """Commit (or refuse with ``error``) every queued record; what they said (``None``
        for a deletion)."""
        queued, self.queued = self.queued, []
        for _, _, done in queued:
            done(error)
        return [None if text is None else decode_record(text) for _, text, _ in queued]

    def actor(self, sandbox_id: str = "sb", **sim: Any) -> SandboxActor:
        spec = SandboxSpec(
            sandbox_id=sandbox_id, sandboxer="sim", options=SandboxOptions(sim=sim or None)
        )
        return SandboxActor(spec, self.backend, self.context)

    def creating(self, sandbox_id: str = "sb", **sim: Any) -> tuple[SandboxActor, Waiter]:
        """A new actor carrying out its Create, and the Waiter the Create answers."""
        actor = self.actor(sandbox_id, **sim)
        created = Waiter()
        actor.create(created, self.launch(actor))
        return actor, created

    def created(self, sandbox_id: str = "sb", **sim: Any) -> SandboxActor:
        """A new actor, its Create done (and recorded) and its task running."""
        actor, _ = self.creating(sandbox_id, **sim)
        self.commit()
        return actor

    def launch(self, actor: SandboxActor) -> Callable[[], None]:
        """What a Controller gives Create: runs the actor in this runtime's nursery."""

        def launch() -> None:
            self.launched += 1
            self.nursery.start_soon(actor.run)

        return launch


@asynccontextmanager
async def runtime(*, store: bool = True) -> AsyncIterator[Runtime]:
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            yield Runtime(nursery, store=store)
            nursery.cancel_scope.cancel()


async def call(actor: SandboxActor, input: Input, arg: Any = None) -> Waiter:
    """Post ``input`` and let the actor take it; the Waiter has its answer, if given."""
    waiter = Waiter()
    actor.post(input, arg, waiter)
    await trio.testing.wait_all_tasks_blocked()
    return waiter


def answered(waiter: Waiter) -> bool:
    return waiter.abandoned  # nobody else gives up on these waiters


async def test_a_lifecycle_without_a_store_is_answered_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime(store=False) as rt:
        actor, created = rt.creating()
        assert await created.wait() == "sb"
        assert rt.launched == 1

        instance = await (await call(actor, Input.START)).wait()
        assert isinstance(instance, SandboxInstance) and instance.pid == actor.pid > 0
        assert actor.status(False).state is SandboxState.READY

        waited = await call(actor, Input.WAIT)
        assert not answered(waited)  # parked until the sandbox stops
        stopped = await call(actor, Input.STOP, 5)
        exited: ExitStatus = await waited.wait()
        assert (exited.exit_status, exited.exited_at) == (143, actor.exited_at)
        assert await stopped.wait() is None

        shutdown = await call(actor, Input.SHUTDOWN)
        assert await shutdown.wait() is None
        assert actor.phase is Phase.GONE
        assert rt.forgotten == [actor]
        assert rt.events == [
            (TOPIC_CREATE, None),
            (TOPIC_START, None),
            (TOPIC_EXIT, 143),
            (TOPIC_DELETE, None),
        ]
        assert rt.queued == []


async def test_each_answer_waits_for_the_record_of_its_step(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime() as rt:
        actor, created = rt.creating()
        # The Create waits for its record, and so does the actor: it is not running yet.
        assert not answered(created) and rt.launched == 0 and rt.events == []
        [record] = rt.commit()
        assert record is not None
        assert record.spec == actor.spec and record.phase == "created"
        assert await created.wait() == "sb"
        assert rt.launched == 1 and rt.events == [(TOPIC_CREATE, None)]

        started = await call(actor, Input.START)
        assert not answered(started)
        assert actor.phase is Phase.READY  # done, and told once on disk
        [record] = rt.commit()
        assert record is not None
        assert (record.phase, record.pid) == ("ready", actor.pid)
        assert (await started.wait()).pid == actor.pid

        # A Stop in progress records when SIGKILL is due, as wall-clock time.
        stubborn = rt.created("stubborn", ignore_sigterm=True)
        await call(stubborn, Input.START)
        rt.commit()
        stopping = await call(stubborn, Input.STOP, 7)
        [record] = rt.commit()
        assert record is not None and record.phase == "stopping"
        assert record.kill_at == pytest.approx(time.time() + 7, abs=1)
        await trio.sleep(7)
        await trio.testing.wait_all_tasks_blocked()
        [record] = rt.commit()
        assert record is not None
        assert (record.phase, record.exit_status, record.kill_at) == ("stopped", 137, None)
        assert await stopping.wait() is None

        # A deletion is queued as None; the Shutdown is answered once it is committed.
        shutdown = await call(actor, Input.SHUTDOWN)
        assert [text for _, text, _ in rt.queued] == [None]
        assert not answered(shutdown)
        rt.commit()
        assert await shutdown.wait() is None
        assert rt.forgotten == [actor]


async def test_a_refusal_changes_nothing_but_waits_for_an_earlier_record() -> None:
    async with runtime() as rt:
        actor = rt.created()
        started = await call(actor, Input.START)
        # The table refuses a second Start: nothing to write, but the answer must not
        # overtake the first Start's, which is not on disk yet.
        again = await call(actor, Input.START)
        assert len(rt.queued) == 1 and not answered(again)
        rt.commit()
        assert (await started.wait()).pid == actor.pid
        with pytest.raises(FailedPrecondition):
            await again.wait()
        # Once every record is on disk, a refusal is answered at once.
        third = await call(actor, Input.START)
        assert rt.queued == [] and answered(third)
        assert actor.phase is Phase.READY


async def test_calls_during_a_create_wait_for_its_record() -> None:
    async with runtime() as rt:
        actor, _ = rt.creating()
        started = await call(actor, Input.START)
        assert not answered(started) and rt.backend.started_count == 0
        rt.commit()
        await trio.testing.wait_all_tasks_blocked()
        assert rt.backend.started_count == 1
        rt.commit()
        assert (await started.wait()).pid == actor.pid


async def test_a_create_the_store_refuses_never_happened() -> None:
    async with runtime() as rt:
        actor, created = rt.creating()
        started = await call(actor, Input.START)
        refusal = ResourceExhausted("the disk is full")
        rt.commit(refusal)
        with pytest.raises(ResourceExhausted) as info:
            await created.wait()
        assert info.value is refusal
        with pytest.raises(NotFound):
            await started.wait()
        assert actor.phase is Phase.GONE
        assert rt.forgotten == [actor]
        assert rt.launched == 0 and rt.events == [] and rt.backend.started_count == 0


async def test_a_create_that_cannot_be_launched_never_happened() -> None:
    async with runtime(store=False) as rt:
        actor = rt.actor()
        created = Waiter()

        def closed() -> None:
            raise Unavailable("the controller is closed")

        actor.create(created, closed)
        with pytest.raises(Unavailable, match="closed"):
            await created.wait()
        assert rt.forgotten == [actor] and rt.events == []


async def test_a_step_the_store_refuses_is_done_but_said_unrecorded_and_written_again() -> None:
    async with runtime() as rt:
        actor = rt.created()
        started = await call(actor, Input.START)
        rt.commit(Unavailable("the state database refused the write: I/O error"))
        with pytest.raises(Unavailable, match="done, but not recorded: the state database"):
            await started.wait()
        assert actor.phase is Phase.READY and rt.events[-1] == (TOPIC_START, None)

        # The next step of the actor (here a Wait, which changes nothing) writes it again.
        waited = await call(actor, Input.WAIT)
        [record] = rt.commit()
        assert record is not None and record.phase == "ready"
        assert not answered(waited)


async def test_a_stop_without_timeout_uses_the_contexts(autojump_clock: trio.abc.Clock) -> None:
    async with runtime(store=False) as rt:
        actor = rt.created(ignore_sigterm=True)
        await (await call(actor, Input.START)).wait()
        began = trio.current_time()
        await (await call(actor, Input.STOP)).wait()
        assert trio.current_time() - began == pytest.approx(STOP_TIMEOUT)
        assert actor.exit_status == 137


async def test_a_failed_start_leaves_the_sandbox_created(autojump_clock: trio.abc.Clock) -> None:
    async with runtime(store=False) as rt:
        actor = rt.created(start_error="no such image")
        with pytest.raises(FailedPrecondition, match="no such image"):
            await (await call(actor, Input.START)).wait()
        assert actor.phase is Phase.CREATED and rt.events == [(TOPIC_CREATE, None)]


async def test_when_its_run_is_cancelled_every_waiting_caller_is_unavailable(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime(store=False) as rt:
        actor = rt.actor()
        scope = trio.CancelScope()

        def launch() -> None:
            async def run() -> None:
                with scope:
                    await actor.run()

            rt.nursery.start_soon(run)

        actor.create(None, launch)
        await (await call(actor, Input.START)).wait()
        waited = await call(actor, Input.WAIT)
        scope.cancel()
        with pytest.raises(Unavailable, match="closing"):
            await waited.wait()
        # The sandbox's process is left running.
        assert rt.backend.running == {actor.pid}
        assert rt.forgotten == []


def record_of(actor: SandboxActor, phase: Phase, **fields: Any) -> SandboxRecord:
    return SandboxRecord(spec=actor.spec, phase=phase.value, created_at=actor.created_at, **fields)


async def test_restore_takes_up_a_recorded_sandbox_and_writes_it_back_at_its_first_step() -> None:
    async with runtime() as rt:
        # Stopped or never started: taken up as recorded, nothing to write.
        stopped = rt.actor("stopped")
        kept = record_of(stopped, Phase.STOPPED, exit_status=3, exited_at=stopped.created_at)
        assert stopped.restore(kept)
        assert (stopped.phase, stopped.exit_status, stopped.exit_known) == (Phase.STOPPED, 3, True)
        rt.nursery.start_soon(stopped.run)

        # Running, but sim processes are never adopted: it ended unobserved.
        ready = rt.actor("ready")
        assert ready.restore(record_of(ready, Phase.READY, pid=1234))
        assert (ready.phase, ready.exit_status, ready.exit_known) == (
            Phase.STOPPED,
            EXIT_UNKNOWN,
            False,
        )
        rt.nursery.start_soon(ready.run)
        await trio.testing.wait_all_tasks_blocked()
        [(sandbox_id, _, _)] = rt.queued
        assert sandbox_id == "ready"
        [record] = rt.commit()
        assert record is not None and record.exited_at is not None
        assert (record.phase, record.exit_status, record.exit_known) == ("stopped", 255, False)

        # Being deleted when the daemon went down: that is done now.
        deleted = rt.actor("deleted")
        assert not deleted.restore(record_of(deleted, Phase.SHUTTING_DOWN, pid=1235))
        assert deleted.phase is Phase.GONE
