"""A sandbox's own output: what its init writes to stdout and stderr, kept on disk.

Theory of operation.  The backend gives the init pipes for its stdout and stderr and hands
the runtime their read ends (:attr:`SandboxProcess.output`).  While the sandbox runs, one
writer per sandbox (:class:`SandboxOutput`) pumps both: two tasks, each waiting until its
pipe is readable, reading what is there and appending it at once, as one record, to the
sandbox's output file ``<dir>/<sandbox id>.log``.  A record is a header -- the stream, the
offset of its first byte in everything the sandbox wrote, the time the daemon read it (ns
since the epoch), the length -- followed by the bytes.  Both streams go to one file in the
order they were read, so a reader sees stdout and stderr apart and interleaved as read.

The writer never waits for a reader: readers (:class:`LogReader`) read the file on their
own, however slowly, and followers are woken (a parking lot) whenever a record is appended.
So a slow reader never stops the daemon draining the pipes, and a sandbox never blocks on
its output while the daemon runs.

Rotation.  When a record would take the file past ``max_bytes``, the file is renamed to
``<id>.log.1`` (replacing the previous one, whose output is lost) and a new one is begun:
at most about twice ``max_bytes`` is kept.  Since every record carries its offset, a reader
knows exactly how much it missed: a jump in offsets is reported as a :class:`LogGap` with
the lost byte count, where the lost output stood.  Output lost because the file could not be
written (a full disk) is reported the same way.  A reader that holds a rotated file open
still reads it to its end (it is only unlinked), then goes on with the next one kept.

Restarts.  The pipes are FIFOs the sandbox's processes hold open for reading and writing
(see the backends), so the sandbox never gets SIGPIPE while the daemon is away: it only
blocks once a pipe's buffer is full, and goes on when the daemon, having adopted it, opens
the FIFOs again and drains them.  The output file is appended to across restarts: its end
offset is found again by reading the record headers once (and a record cut short by a
crash is cut off).  This was chosen over a helper process per sandbox that would keep
reading (containerd's shims): no process to supervise, and nothing lost but what exceeds
the pipe's buffer, which blocks the sandbox instead of being dropped.

Ends.  At the init's exit the writer drains what is left in both pipes, closes them, and
followers end once they have read everything.  Shutdown removes the files, and a sandbox
created again under the same id starts empty.

Every file operation is a plain system call in the event loop's thread, on files the
daemon has just written (in the page cache): none of them waits for long, and a reader's
steps and the writer's never interleave within one, which is what keeps them consistent
without locks.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Final, final

import trio

from .._errors import InvalidArgument
from .._models import STDERR, STDOUT, LogChunk, LogGap

log = logging.getLogger("sandboxd.runtime")

#: The size at which a sandbox's output file is rotated, by default.
DEFAULT_MAX_LOG_BYTES: Final = 16 << 20

# stream (1: stdout, 2: stderr), offset, timestamp ns, length.
_HEADER: Final = struct.Struct("<BQqI")
_STREAMS: Final = {1: STDOUT, 2: STDERR}
#: The most read from a pipe at once: one record.
_READ_SIZE: Final = 1 << 16
#: The most drained from one pipe at the exit (more than its buffer holds): a process that
#: outlived the sandbox and still writes must not keep the actor busy.
_DRAIN_LIMIT: Final = 4 << 20
_BLOCK: Final = 1 << 16
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@final
class LogDirectory:
    """Where a Controller keeps its sandboxes' output: a directory, and the rotation size.

    Without a directory, a private temporary one is made by :meth:`open` and removed, with
    everything in it, by :meth:`close`.
    """

    __slots__ = ("_given", "max_bytes", "path")

    def __init__(self, directory: str | None, max_bytes: int) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_log_bytes: must be a positive integer, not {max_bytes!r}")
        self._given = directory
        self.max_bytes = max_bytes
        #: The directory in use, once opened.
        self.path: str | None = directory

    def open(self) -> None:
        if self._given is None:
            self.path = tempfile.mkdtemp(prefix="sandboxd-logs-")
        else:
            os.makedirs(self._given, mode=0o700, exist_ok=True)

    def close(self) -> None:
        if self._given is None and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None

    def sandbox(self, sandbox_id: str) -> SandboxOutput:
        """The output of one sandbox (whatever its files hold, unless
        :meth:`SandboxOutput.new`).  Touches no file."""
        assert self.path is not None
        return SandboxOutput(os.path.join(self.path, f"{sandbox_id}.log"), self.max_bytes)


@final
class SandboxOutput:
    """The output of one sandbox: its writer while it runs, and what readers read.

    Not started (:meth:`attach`) nor finished, it has nothing yet and followers wait.
    """

    __slots__ = (
        "_changed",
        "_end",
        "_fd",
        "_finished",
        "_fresh",
        "_max_bytes",
        "_pipes",
        "_removed",
        "_size",
        "path",
        "previous",
    )

    def __init__(self, path: str, max_bytes: int) -> None:
        #: The current file, and the one rotated before it.
        self.path = path
        self.previous = path + ".1"
        self._max_bytes = max_bytes
        self._fd = -1  # the current file, while writing
        self._size = 0  # its size
        self._end: int | None = None  # the offset after the last byte written; found lazily
        self._pipes: dict[int, int] | None = None  # stream code -> read end, while pumping
        self._finished = False
        self._removed = False
        # A new sandbox's: whatever files an earlier one of its id left are not its own.
        self._fresh = False
        self._changed = trio.lowlevel.ParkingLot()

    def new(self) -> None:
        """This is a new sandbox's output (a Create): it starts empty.  Touches no file
        until it has output (a ``sim`` sandbox never does)."""
        self._fresh = True
        self._end = 0

    # -- writing ---------------------------------------------------------------------------

    def attach(self, nursery: trio.Nursery, output: tuple[int, int], sandbox_id: str) -> None:
        """Pump ``output`` (the read ends of stdout and stderr, non-blocking; this object
        closes them) into the file from tasks in ``nursery``, until :meth:`finish`."""
        self._pipes = {1: output[0], 2: output[1]}
        self._finished = False
        if self._fresh:
            self.remove_files()
            self._fresh = False
        try:
            self._end = self.end()
            self._fd = _open_for_append(self.path)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            log.error("sandbox %s: cannot write its output to %s: %s", sandbox_id, self.path, exc)
        for code, fd in self._pipes.items():
            nursery.start_soon(self._pump, code, fd, name=f"sandboxd: output of {sandbox_id}")
        self._changed.unpark_all()

    async def _pump(self, code: int, fd: int) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                return
            if self._pipes is None:  # finished while this task was being woken
                return
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            if not data:  # nobody holds it for writing any more
                return
            self._append(code, data)

    def _append(self, code: int, data: bytes) -> None:
        offset = self._end or 0
        self._end = offset + len(data)
        record = _HEADER.pack(code, offset, time.time_ns(), len(data)) + data
        if self._fd >= 0:
            if self._size and self._size + len(record) > self._max_bytes:
                self._rotate()
            try:
                written = os.write(self._fd, record)
                if written != len(record):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self._size += written
            except OSError as exc:
                # The bytes are lost; the jump in offsets tells readers how many.
                log.warning("cannot write output to %s: %s", self.path, exc)
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
        self._changed.unpark_all()

    def _rotate(self) -> None:
        try:
            os.rename(self.path, self.previous)
            fd = _open_for_append(self.path)
        except OSError as exc:
            log.warning("cannot rotate %s: %s", self.path, exc)
            return
        os.close(self._fd)
        self._fd = fd
        self._size = 0

    def finish(self) -> None:
        """The init has exited: drain what is left in its pipes, close them and the file;
        followers end once they have read everything.  Idempotent; never blocks."""
        pipes, self._pipes = self._pipes, None
        for code, fd in (pipes or {}).items():
            drained = 0
            with contextlib.suppress(OSError):
                while drained < _DRAIN_LIMIT and (data := os.read(fd, _READ_SIZE)):
                    drained += len(data)
                    self._append(code, data)
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._finished = True
        self._changed.unpark_all()

    def remove(self) -> None:
        """Shutdown: finish, delete the files, and end every reader."""
        self.finish()
        self._removed = True
        if not self._fresh:
            self.remove_files()

    def remove_files(self) -> None:
        for path in (self.path, self.previous):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def end(self) -> int:
        """The offset after the last byte written (read from the files the first time: a
        record a crash cut short is cut off)."""
        if self._end is None:
            self._end = _recover_end(self.path, self.previous)
        return self._end

    # -- reading ---------------------------------------------------------------------------

    def reader(self, *, follow: bool, tail_bytes: int | None, since: datetime | None) -> LogReader:
        """A reader of this output (see :meth:`Controller.logs`)."""
        if tail_bytes is not None and (
            isinstance(tail_bytes, bool) or not isinstance(tail_bytes, int) or tail_bytes < 0
        ):
            raise InvalidArgument("tail_bytes: must be an integer >= 0")
        since_us = None
        if since is not None:
            if not isinstance(since, datetime) or since.tzinfo is None:
                raise InvalidArgument("since: must be a timezone-aware datetime")
            since_us = (since - _EPOCH) // timedelta(microseconds=1)
        return LogReader(self, follow, tail_bytes, since_us)

    @property
    def ended(self) -> bool:
        """Whether no more output will come (the init has exited, or it was removed)."""
        return self._finished or self._removed


def _open_for_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _scan(fd: int, pos: int = 0) -> Iterator[tuple[int, int, int, int, int]]:
    """``(position, code, offset, timestamp_ns, length)`` of each whole record of ``fd``
    from ``pos``, reading headers only; stops at the first incomplete or invalid one."""
    size = os.fstat(fd).st_size
    while pos + _HEADER.size <= size:
        header = os.pread(fd, _HEADER.size, pos)
        if len(header) < _HEADER.size:
            return
        code, offset, stamp, length = _HEADER.unpack(header)
        if code not in _STREAMS or pos + _HEADER.size + length > size:
            return
        yield pos, code, offset, stamp, length
        pos += _HEADER.size + length


def _recover_end(path: str, previous: str) -> int:
    for name in (path, previous):
        try:
            fd = os.open(name, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            good, end = 0, None
            for pos, _, offset, _, length in _scan(fd):
                good, end = pos + _HEADER.size + length, offset + length
            if good < os.fstat(fd).st_size:
                os.ftruncate(fd, good)  # a record cut short by a crash
        finally:
            os.close(fd)
        if end is not None:
            return end
    return 0


def _open_file(path: str) -> tuple[int, int] | None:
    """``(fd, inode)`` of ``path`` opened for reading, or None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    return fd, os.fstat(fd).st_ino


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


@final
class LogReader:
    """What a sandbox wrote, as :class:`~sandboxd.LogChunk` and :class:`~sandboxd.LogGap`
    items: an async iterator, and an async context manager that closes it on exit.

    Without ``follow`` it ends at what was written when it began; with it, once the
    sandbox has stopped and everything was read (a sandbox not started yet: once it has
    started and stopped).  It ends at once when the sandbox is shut down.  Cancelling a
    step leaves the reader where it was.
    """

    __slots__ = (
        "_buffer",
        "_buffer_at",
        "_done",
        "_expected",
        "_fd",
        "_follow",
        "_inode",
        "_output",
        "_pending_gap",
        "_pos",
        "_queue",
        "_since_us",
        "_start",
        "_stop_at",
    )

    def __init__(
        self, output: SandboxOutput, follow: bool, tail_bytes: int | None, since_us: int | None
    ) -> None:
        self._output = output
        self._follow = follow
        self._since_us = since_us
        end = output.end()
        #: The first offset wanted, and (not following) the offset to stop at.
        self._start = 0 if tail_bytes is None else max(0, end - tail_bytes)
        self._stop_at = end
        self._expected = self._start  # the offset the next record should have
        self._pending_gap = 0  # lost bytes not reported yet
        self._queue: list[LogChunk | LogGap] = []
        self._done = False
        self._fd = -1  # the file being read, its inode, the position of its next record
        self._inode = 0
        self._pos = 0
        self._buffer = b""
        self._buffer_at = 0

    async def __aenter__(self) -> LogReader:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file being read; the iteration ends."""
        self._done = True
        self._queue.clear()
        self._close_file()

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._pos = 0
        self._buffer = b""
        self._buffer_at = 0

    def __aiter__(self) -> LogReader:
        return self

    async def __anext__(self) -> LogChunk | LogGap:
        await trio.lowlevel.checkpoint()
        steps = 0
        while not self._queue:
            if self._done:
                raise StopAsyncIteration
            if self._step():
                await self._output._changed.park()
            else:
                steps += 1
                if steps % 1024 == 0:  # a long run of skipped records
                    await trio.lowlevel.checkpoint()
        return self._queue.pop(0)

    def _step(self) -> bool:
        """Read one record (queueing what it gives) or move on; True when a follower must
        wait for more.  Synchronous: no step of the writer interleaves with it."""
        output = self._output
        if output._removed or (not self._follow and self._expected >= self._stop_at):
            self._end(self._stop_at)
            return False
        if self._fd < 0:
            opened = None
            if not output._fresh:  # no file of its own yet
                opened = _open_file(output.previous) or _open_file(output.path)
            if opened is None:
                return self._at_end()
            self._fd, self._inode = opened
        record = self._record()
        if record is None:
            # The end of this file: the current one, or one rotated away since it was opened
            # (then the next is the current file if this one is the previous, else the
            # previous: anything older is gone, and the offsets tell how much).
            current = _inode(output.path)
            if current is None or current == self._inode:
                return self._at_end()
            following = output.path if _inode(output.previous) == self._inode else output.previous
            self._close_file()
            opened = _open_file(following)
            if opened is None:
                return self._at_end()
            self._fd, self._inode = opened
            return False
        code, offset, stamp, data = record
        end = offset + len(data)
        if offset > self._expected:
            self._pending_gap += offset - self._expected
        self._expected = max(self._expected, end)
        if end <= self._start or (self._since_us is not None and stamp // 1000 < self._since_us):
            self._pending_gap = 0  # what was lost came before this skipped record
            return False
        if offset < self._start:
            data = data[self._start - offset :]
        if not self._follow and end > self._stop_at:
            data = data[: len(data) - (end - self._stop_at)]
        if self._pending_gap:
            self._queue.append(LogGap(self._pending_gap))
            self._pending_gap = 0
        timestamp = _EPOCH + timedelta(microseconds=stamp // 1000)
        self._queue.append(LogChunk(_STREAMS[code], data, timestamp))
        return False

    def _at_end(self) -> bool:
        """Nothing more to read for now: end, or wait (following a running sandbox)."""
        if not self._follow:
            self._end(self._stop_at)
            return False
        if self._output.ended:
            self._end(self._output.end())
            return False
        return True

    def _end(self, end: int) -> None:
        """End the iteration, reporting output lost at the very end, if any."""
        lost = self._pending_gap + max(0, end - self._expected)
        self.close()
        if lost > 0 and self._since_us is None and not self._output._removed:
            self._queue.append(LogGap(lost))

    def _record(self) -> tuple[int, int, int, bytes] | None:
        """The next whole record of the open file, or None at its end."""
        header = self._take(0, _HEADER.size)
        if header is None:
            return None
        code, offset, stamp, length = _HEADER.unpack(header)
        data = self._take(_HEADER.size, length)
        if code not in _STREAMS or data is None:
            return None
        self._pos += _HEADER.size + length
        return code, offset, stamp, data

    def _take(self, skip: int, size: int) -> bytes | None:
        """The ``size`` bytes at ``skip`` past the next record's position, from the buffer
        or the file; None if the file does not hold them (yet)."""
        at = self._pos + skip
        start = at - self._buffer_at
        if start < 0 or start + size > len(self._buffer):
            self._buffer = os.pread(self._fd, max(_BLOCK, size), at)
            self._buffer_at = at
            start = 0
            if len(self._buffer) < size:
                return None
        return self._buffer[start : start + size]
