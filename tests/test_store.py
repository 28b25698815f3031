"""The state store on its own: the record format and the writer's queue, on a real SQLite file."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sandboxd import Mount, SandboxOptions, Unavailable
from sandboxd._models import SandboxSpec
from sandboxd.runtime import SandboxRecord, SandboxStore
from sandboxd.runtime._store import (
    BATCH_ROWS,
    DATABASE_NAME,
    decode_record,
    encode_record,
    encode_spec,
)

text = st.text(max_size=12)
times = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond - t.microsecond % 1000))
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)

specs = st.builds(
    SandboxSpec,
    sandbox_id=st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True),
    sandboxer=st.sampled_from(["process", "bwrap", "sim"]),
    options=st.builds(
        SandboxOptions,
        command=st.none() | st.lists(text, min_size=1, max_size=3).map(tuple),
        env=st.dictionaries(text, text, max_size=3),
        cwd=st.none() | text,
        hostname=st.none() | st.just("box"),
        host_network=st.booleans(),
        sim=st.none() | st.dictionaries(text, st.integers() | text | finite, max_size=2),
        seccomp=st.sampled_from(
            [None, "default", "unconfined", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}]
        ),
        lifetime_secs=st.none() | st.floats(min_value=0.001, max_value=1e9),
    ),
    rootfs=st.lists(
        st.builds(
            Mount,
            type=st.sampled_from(["bind", "tmpfs"]),
            source=text,
            target=st.just("/mnt"),
            options=st.lists(st.sampled_from(["ro", "rw"]), max_size=1).map(tuple),
        ),
        max_size=2,
    ).map(tuple),
    netns_path=st.none() | text,
    annotations=st.dictionaries(text, text, max_size=3),
    labels=st.dictionaries(text, text, max_size=3),
)
records = st.builds(
    SandboxRecord,
    spec=specs,
    phase=st.sampled_from(["created", "ready", "stopping", "stopped", "shutting_down"]),
    created_at=times,
    pid=st.integers(0, 2**22),
    identity=st.dictionaries(text, st.integers(0, 2**63), max_size=2),
    started_at=st.none() | times,
    exited_at=st.none() | times,
    exit_status=st.none() | st.integers(0, 255),
    exit_known=st.booleans(),
    kill_at=st.none() | finite,
    expire_at=st.none() | finite,
    reason=st.none() | st.just("lifetime_expired") | text,
)


@given(records)
def test_a_record_comes_back_as_it_was_written(record: SandboxRecord) -> None:
    assert decode_record(encode_record(record)) == record
    assert decode_record(encode_record(record, encode_spec(record.spec))) == record


@given(records)
def test_a_record_is_a_json_object_with_the_documented_fields(record: SandboxRecord) -> None:
    document = json.loads(encode_record(record))
    assert set(document) == {
        "spec",
        "phase",
        "created_at",
        "pid",
        "identity",
        "started_at",
        "exited_at",
        "exit_status",
        "exit_known",
        "kill_at",
        "expire_at",
        "reason",
    }
    assert document["spec"] == json.loads(encode_spec(record.spec))
    assert document["created_at"] == record.created_at.timestamp()
    assert document["exit_known"] is record.exit_known
    assert not math.isnan(document["created_at"])


def rows(state: Path) -> dict[str, str]:
    with closing(sqlite3.connect(state / DATABASE_NAME)) as db:
        return dict(db.execute("SELECT sandbox_id, record FROM sandboxes").fetchall())


def record_of(sandbox_id: str, phase: str = "created") -> SandboxRecord:
    spec = SandboxSpec(sandbox_id=sandbox_id, sandboxer="sim")
    return SandboxRecord(spec=spec, phase=phase, created_at=datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture(params=[False, True], ids=["normal", "durable"])
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SandboxStore]:
    store = SandboxStore.open(tmp_path, durable=request.param)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_put_and_delete_are_on_disk_when_they_return(
    store: SandboxStore, tmp_path: Path
) -> None:
    await store.put(record_of("a"))
    assert decode_record(rows(tmp_path)["a"]) == record_of("a")
    await store.delete("a")
    assert rows(tmp_path) == {}


async def test_changes_queued_together_are_merged_and_everyone_is_told(
    store: SandboxStore, tmp_path: Path
) -> None:
    told: list[tuple[str, Exception | None]] = []
    # Queued before the writer runs: one transaction, and the last change per sandbox wins.
    store.write("a", encode_record(record_of("a")), lambda e: told.append(("a1", e)))
    store.write("b", encode_record(record_of("b")), lambda e: told.append(("b1", e)))
    store.write("a", encode_record(record_of("a", "ready")), lambda e: told.append(("a2", e)))
    store.write("b", None, lambda e: told.append(("b2", e)))
    assert told == []
    await store.put(record_of("c"))
    assert sorted(told) == [("a1", None), ("a2", None), ("b1", None), ("b2", None)]
    assert {k: decode_record(v).phase for k, v in rows(tmp_path).items()} == {
        "a": "ready",
        "c": "created",
    }


async def test_a_refused_write_is_reported_to_each_caller_and_changes_nothing(
    store: SandboxStore, tmp_path: Path
) -> None:
    await store.put(record_of("kept"))
    # Another connection holds the write lock past the store's busy timeout.
    with closing(sqlite3.connect(tmp_path / DATABASE_NAME, timeout=0)) as other:
        other.execute("BEGIN IMMEDIATE")
        store._db.execute("PRAGMA busy_timeout = 0")
        told: list[Exception | None] = []
        store.write("new", encode_record(record_of("new")), told.append)
        store.write("kept", None, told.append)
        with pytest.raises(Unavailable, match="refused the write"):
            await store.put(record_of("third"))
        other.rollback()
    assert len(told) == 2 and all(isinstance(e, Unavailable) for e in told)
    assert set(rows(tmp_path)) == {"kept"}


async def test_changes_after_the_writer_stopped_are_refused_at_once(tmp_path: Path) -> None:
    store = SandboxStore.open(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await store.put(record_of("kept"))
        nursery.cancel_scope.cancel()
    told: list[Exception | None] = []
    store.write("late", encode_record(record_of("late")), told.append)
    with pytest.raises(Unavailable, match="closed"):
        await store.delete("kept")
    store.close()
    assert len(told) == 1 and isinstance(told[0], Unavailable)
    assert set(rows(tmp_path)) == {"kept"}


async def test_the_wal_is_folded_in_and_truncated_every_so_many_rows(tmp_path: Path) -> None:
    opened = SandboxStore.open(tmp_path)
    store = SandboxStore(opened._db, opened.path, checkpoint_rows=20)
    database = tmp_path / DATABASE_NAME
    checkpointed = trio.Event()
    checkpoint = store._checkpoint

    async def checkpoint_and_tell() -> None:
        await checkpoint()
        checkpointed.set()

    store._checkpoint = checkpoint_and_tell  # type: ignore[method-assign]
    empty = database.stat().st_size
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run)
            for n in range(19):
                await store.put(record_of(f"s{n}"))
            # Commits so far are in the WAL only: the database file has not grown.
            assert database.stat().st_size == empty
            assert store.checkpoints == 0
            await store.put(record_of("s19"))
            await checkpointed.wait()
            assert store.checkpoints == 1
            assert database.stat().st_size > empty
            # Folded in whole, and the log truncated: it cannot grow without bound.
            assert (tmp_path / f"{DATABASE_NAME}-wal").stat().st_size == 0
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert len(rows(tmp_path)) == 20


@pytest.mark.parametrize("durable", [False, True], ids=["normal", "durable"])
async def test_a_long_queue_is_written_in_bounded_batches_unless_durable(
    tmp_path: Path, durable: bool
) -> None:
    store = SandboxStore.open(tmp_path, durable=durable)
    batches: list[int] = []
    write = store._write

    def counted(rows: list[tuple[str, str | None]]) -> None:
        batches.append(len(rows))
        write(rows)

    store._write = counted  # type: ignore[method-assign]
    told: list[Exception | None] = []
    queued = 2 * BATCH_ROWS + 3
    for n in range(queued):
        store.write(f"s{n}", encode_record(record_of(f"s{n}")), told.append)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run)
            await store.put(record_of("last"))
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    # The put's record was queued behind the others before the writer began.
    assert told == [None] * queued
    if durable:
        assert batches == [queued + 1]  # one sync to disk for all of them
    else:
        assert batches == [BATCH_ROWS, BATCH_ROWS, 4]
    assert len(rows(tmp_path)) == queued + 1
