"""Durable sandbox records: SQLite in the state directory.

One row per sandbox, rewritten whole after every step of its actor that changed it and
before any caller hears of the change; deleted when the sandbox is gone.  Writes go through
one writer task, in the order they were asked for, so a record is never overtaken by an
older one.  Writers are not made to wait: a change is queued with a callback that the writer
calls once it is committed, and changes to one sandbox queued before the writer takes them
are merged (the last one is written).  The changes queued meanwhile go in one transaction:
all of them when ``durable`` (one sync to disk for all), else :data:`BATCH_ROWS` at a time,
with a schedule point between two, so that the answers of one batch are on their way while
the next is written (a commit costs little there, and callers in lock-step with the disk,
as many concurrent clients are, keep the daemon busy instead of waiting together).

The database runs in WAL mode.  By default with ``synchronous=NORMAL``: a commit appends to
the WAL file and syncs nothing, so a row that was acknowledged survives any crash of the
daemon but not necessarily a power loss.  Such a commit costs tens of microseconds of CPU and
never waits on the disk, so the writer makes it on the event loop (a hop to a worker thread
costs ten times more).  Every :data:`CHECKPOINT_ROWS` rows the writer folds the WAL into the
database, which does sync, in a worker thread, and truncates it; changes queued meanwhile
wait for the next batch (writing while checkpointing could keep the WAL from ever being
folded in whole, and it would grow without bound).  When ``durable``, ``synchronous=FULL``:
every commit waits for the disk, so commits are made in a worker thread (and SQLite
checkpoints by itself).

A database that cannot be opened or read, or that fails SQLite's integrity check, stops the
daemon at start (:class:`StoreCorrupt`); it is never replaced.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, final

import attrs
import trio

from .._errors import ResourceExhausted, Unavailable
from .._models import Mount, SandboxOptions, SandboxSpec

log = logging.getLogger("sandboxd.runtime")

DATABASE_NAME: Final = "sandboxd.db"
#: Rows committed (without ``durable``) between two checkpoints of the WAL.
CHECKPOINT_ROWS: Final = 2000
#: Rows committed (without ``durable``) in one transaction at the most.
BATCH_ROWS: Final = 16
_SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
"""


class StoreCorrupt(Exception):
    """The state database cannot be used; the message says which file and why."""


@final
@attrs.frozen(slots=True)
class SandboxRecord:
    """Everything that must survive a restart about one sandbox."""

    spec: SandboxSpec
    phase: str
    created_at: datetime
    pid: int = 0
    #: What identifies the running process beyond its pid (start times), from the backend.
    identity: Mapping[str, Any] = attrs.field(factory=dict)
    started_at: datetime | None = None
    exited_at: datetime | None = None
    exit_status: int | None = None
    #: False when the exit status is a stand-in (255): the process ended unobserved.
    exit_known: bool = True
    #: Wall-clock time of a pending SIGKILL of a Stop in progress, as epoch seconds.
    kill_at: float | None = None
    #: Wall-clock time the sandbox's lifetime runs out, as epoch seconds (while ready).
    expire_at: float | None = None
    #: Why the runtime ended the sandbox on its own (``lifetime_expired``), if it did.
    reason: str | None = None


def _from_time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def encode_spec(spec: SandboxSpec) -> str:
    """The JSON of a spec, as it appears in a record (a sandbox's spec never changes: its
    actor encodes it once)."""
    options = spec.options
    return json.dumps(
        {
            "sandbox_id": spec.sandbox_id,
            "sandboxer": spec.sandboxer,
            "options": {
                "command": None if options.command is None else list(options.command),
                "env": dict(options.env),
                "cwd": options.cwd,
                "hostname": options.hostname,
                "host_network": options.host_network,
                "sim": None if options.sim is None else dict(options.sim),
                "seccomp": options.seccomp
                if options.seccomp is None or isinstance(options.seccomp, str)
                else dict(options.seccomp),
                "lifetime_secs": options.lifetime_secs,
            },
            "rootfs": [
                {
                    "type": m.type,
                    "source": m.source,
                    "target": m.target,
                    "options": list(m.options),
                }
                for m in spec.rootfs
            ],
            "netns_path": spec.netns_path,
            "annotations": dict(spec.annotations),
            "labels": dict(spec.labels),
        }
    )


def encode_record(record: SandboxRecord, spec_json: str | None = None) -> str:
    """The record as the JSON object the database keeps; ``spec_json`` is
    :func:`encode_spec` of its spec, when the caller has it already (an actor encodes its
    spec once).

    Written out directly, as this is done at every step of every sandbox and ``json.dumps``
    of a dict costs several times more: every part is a number, ``None``, a bool, JSON
    already, or a phase name (plain lowercase words)."""
    identity = record.identity
    started_at = record.started_at
    exited_at = record.exited_at
    return (
        f'{{"spec": {encode_spec(record.spec) if spec_json is None else spec_json}, '
        f'"phase": "{record.phase}", "created_at": {record.created_at.timestamp()!r}, '
        f'"pid": {record.pid:d}, "identity": {json.dumps(dict(identity)) if identity else "{}"}, '
        f'"started_at": {"null" if started_at is None else repr(started_at.timestamp())}, '
        f'"exited_at": {"null" if exited_at is None else repr(exited_at.timestamp())}, '
        f'"exit_status": {_number(record.exit_status)}, '
        f'"exit_known": {"true" if record.exit_known else "false"}, '
        f'"kill_at": {_number(record.kill_at)}, "expire_at": {_number(record.expire_at)}, '
        f'"reason": {"null" if record.reason is None else json.dumps(record.reason)}}}'
    )


def _number(value: float | None) -> str:
    # repr of a finite float or an int is a JSON number.
    return "null" if value is None else repr(value)


def decode_record(text: str) -> SandboxRecord:
    document = json.loads(text)
    spec = document["spec"]
    created_at = _from_time(document["created_at"])
    assert created_at is not None
    return SandboxRecord(
        spec=SandboxSpec(
            sandbox_id=spec["sandbox_id"],
            sandboxer=spec["sandboxer"],
            options=SandboxOptions(**spec["options"]),
            rootfs=[Mount(**m) for m in spec["rootfs"]],
            netns_path=spec["netns_path"],
            annotations=spec["annotations"],
            labels=spec["labels"],
        ),
        phase=document["phase"],
        created_at=created_at,
        pid=document["pid"],
        identity=document["identity"],
        started_at=_from_time(document["started_at"]),
        exited_at=_from_time(document["exited_at"]),
        exit_status=document["exit_status"],
        exit_known=document["exit_known"],
        kill_at=document["kill_at"],
        # Absent from the records of earlier versions.
        expire_at=document.get("expire_at"),
        reason=document.get("reason"),
    )


def _write_error(exc: sqlite3.Error) -> Exception:
    text = str(exc)
    if "full" in text:
        return ResourceExhausted(f"the state database refused the write: {text}")
    return Unavailable(f"the state database refused the write: {text}")


#: Called by the writer once a change is committed (``None``) or refused (the error).
Done = Callable[[Exception | None], None]


@final
class _Change:
    """The change queued for one sandbox: its record's text (``None``: delete it), and who to
    tell when it is committed."""

    __slots__ = ("done", "text")

    def __init__(self, text: str | None, done: Done) -> None:
        self.text = text
        self.done = [done]


@final
class SandboxStore:
    """The sandbox records of one state directory.

    :meth:`open` (blocking: call it before the event loop serves anyone) checks the
    database; :meth:`load` reads every record.  :meth:`run` must run while the store is
    written to: it is the one writer, and commits every change queued meanwhile in one
    transaction (group commit).  :meth:`write` queues a change and never blocks; :meth:`put`
    and :meth:`delete` return once their change is committed.  A refused write is
    RESOURCE_EXHAUSTED (disk full) or UNAVAILABLE (any other refusal): then nothing of that
    transaction was changed.  Cancelling a write does not undo it.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: str,
        *,
        durable: bool = False,
        checkpoint_rows: int = CHECKPOINT_ROWS,
    ) -> None:
        self._db = connection
        self.path = path
        #: Whether every commit waits for the disk (made in a worker thread).
        self.durable = durable
        self._lock = threading.Lock()
        self._queue: dict[str, _Change] = {}
        self._wake = trio.Event()
        self._checkpoint_rows = checkpoint_rows
        self._uncheckpointed = 0
        self._stopped = False
        #: WAL checkpoints completed by the writer's worker thread (not when ``durable``).
        self.checkpoints = 0

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, durable: bool = False) -> SandboxStore:
        """Open (or create) the database in ``state_dir``; :class:`StoreCorrupt` if unusable.

        ``durable`` makes every commit wait for the disk (see the module's docstring)."""
        path = os.path.join(os.fspath(state_dir), DATABASE_NAME)
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreCorrupt(f"cannot open the state database {path}: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            if not durable:
                # Commits on the event loop never sync: the writer checkpoints in a thread.
                db.execute("PRAGMA wal_autocheckpoint=0")
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise StoreCorrupt(f"the state database {path} is corrupt: {check}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(_SCHEMA_VERSION),)
                )
            elif row[0] != str(_SCHEMA_VERSION):
                raise StoreCorrupt(
                    f"the state database {path} has schema {row[0]}; this sandboxd reads "
                    f"schema {_SCHEMA_VERSION}"
                )
        except sqlite3.Error as exc:
            db.close()
            raise StoreCorrupt(f"the state database {path} is unreadable: {exc}") from None
        except StoreCorrupt:
            db.close()
            raise
        return cls(db, path, durable=durable)

    def load(self) -> list[SandboxRecord]:
        """Every record (blocking; at start).  A record that does not decode is
        :class:`StoreCorrupt`."""
        records = []
        try:
            rows = self._db.execute("SELECT sandbox_id, record FROM sandboxes").fetchall()
        except sqlite3.Error as exc:
            raise StoreCorrupt(f"the state database {self.path} is unreadable: {exc}") from None
        for sandbox_id, text in rows:
            try:
                records.append(decode_record(text))
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreCorrupt(
                    f"the state database {self.path} holds an unreadable record for "
                    f"{sandbox_id!r}: {exc}"
                ) from None
        return records

    def _write(self, batch: list[tuple[str, str | None]]) -> None:
        puts = [(sandbox_id, text) for sandbox_id, text in batch if text is not None]
        deletes = [(sandbox_id,) for sandbox_id, text in batch if text is None]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if puts:
                    db.executemany(
                        "INSERT INTO sandboxes (sandbox_id, record) VALUES (?, ?) "
                        "ON CONFLICT (sandbox_id) DO UPDATE SET record = excluded.record",
                        puts,
                    )
                if deletes:
                    db.executemany("DELETE FROM sandboxes WHERE sandbox_id = ?", deletes)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    async def run(self) -> None:
        """Write what is queued, a batch per transaction, until cancelled (then what is
        queued is refused with UNAVAILABLE)."""
        batch: dict[str, _Change] = {}
        try:
            while True:
                if not self._queue:
                    self._wake = trio.Event()
                    await self._wake.wait()
                else:
                    # Let the answers of the last batch go out while this one is written.
                    await trio.lowlevel.checkpoint()
                if self.durable or len(self._queue) <= BATCH_ROWS:
                    batch, self._queue = self._queue, {}
                else:
                    rest = iter(self._queue.items())
                    batch = dict(itertools.islice(rest, BATCH_ROWS))
                    self._queue = dict(rest)
                rows = [(sandbox_id, change.text) for sandbox_id, change in batch.items()]
                error: Exception | None = None
                try:
                    if self.durable:
                        await trio.to_thread.run_sync(self._write, rows)
                    else:
                        self._write(rows)
                except sqlite3.Error as exc:
                    error = _write_error(exc)
                done, batch = batch, {}
                _tell(done, error)
                if not self.durable and error is None:
                    self._uncheckpointed += len(rows)
                    if self._uncheckpointed >= self._checkpoint_rows:
                        await self._checkpoint()
        finally:
            self._stopped = True
            closing = Unavailable("the state store is closing")
            _tell(batch, closing)
            queued, self._queue = self._queue, {}
            _tell(queued, closing)

    async def _checkpoint(self) -> None:
        """Fold the WAL into the database (syncing it) and truncate it, in a worker thread."""
        try:
            await trio.to_thread.run_sync(self._checkpoint_now)
        except sqlite3.Error as exc:
            log.warning("checkpoint of %s failed (tried again later): %s", self.path, exc)
        else:
            self.checkpoints += 1
            self._uncheckpointed = 0

    def _checkpoint_now(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def write(self, sandbox_id: str, text: str | None, done: Done) -> None:
        """Queue ``sandbox_id``'s record (``text``; ``None`` deletes it).  Never blocks.

        ``done(error)`` is called from the writer task once the change is committed
        (``None``) or refused; it must not block.  A change queued for a sandbox whose earlier
        change the writer has not taken yet replaces it, and both callbacks are called.  Once
        :meth:`run` has ended, ``done`` is called at once with UNAVAILABLE.
        """
        if self._stopped:
            done(Unavailable("the state store is closed"))
            return
        change = self._queue.get(sandbox_id)
        if change is None:
            self._queue[sandbox_id] = _Change(text, done)
            self._wake.set()
        else:
            change.text = text
            change.done.append(done)

    async def _wait_for(self, sandbox_id: str, text: str | None) -> None:
        result: list[Exception | None] = []
        committed = trio.Event()

        def done(error: Exception | None) -> None:
            result.append(error)
            committed.set()

        self.write(sandbox_id, text, done)
        await committed.wait()
        if result[0] is not None:
            raise result[0]

    async def put(self, record: SandboxRecord) -> None:
        """Write ``record``; returns once it is on disk."""
        await self._wait_for(record.spec.sandbox_id, encode_record(record))

    async def delete(self, sandbox_id: str) -> None:
        """Delete ``sandbox_id``'s record; returns once that is on disk."""
        await self._wait_for(sandbox_id, None)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _tell(changes: dict[str, _Change], error: Exception | None) -> None:
    for change in changes.values():
        for done in change.done:
            try:
                done(error)
            except Exception:
                log.exception("the state store's callback failed")
