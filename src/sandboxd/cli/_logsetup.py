"""How ``sandboxd serve`` logs: one line per record on stderr, as text or as JSON.

The runtime and the server only log (through ``sandboxd.*`` loggers); the daemon decides
where the lines go.  A record is formatted where it is logged and its line queued for a
thread of its own, which lets lines gather for a moment (at most ``_GATHER`` seconds) and
writes them with one write: the event loop never waits on stderr, and a burst of lines
costs one wake-up of the thread.  Formatting in that thread instead was measured to cost
the lifecycle rate more, not less: under the GIL the thread's work is the event loop's
time all the same, plus the handovers.  (The runtime's lifecycle lines come in bursts
anyway, see ``runtime/_lifecycle_log.py``.)  The thread writes every line logged before
:meth:`LogWriter.stop` returns.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TextIO, final

TEXT, JSON = "text", "json"
FORMATS: Final = (TEXT, JSON)
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has; any other is a field given with ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
#: Seconds the writer lets records gather once one arrives: a burst costs one wake-up of the
#: thread and one write, not one per record (each wake-up costs the event loop a handover of
#: the GIL).  The most a line is late.
_GATHER: Final = 0.05


@final
class _Seconds:
    """A time's whole second, formatted, and cached: records come many to a second, and
    formatting the time is half of what a text line costs."""

    __slots__ = ("_convert", "_format", "_second", "_text")

    def __init__(self, fmt: str, convert: Callable[[float], time.struct_time]) -> None:
        self._format = fmt
        self._convert = convert
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._text = time.strftime(self._format, self._convert(second))
            self._second = second
        return self._text


@final
class TextFormatter(logging.Formatter):
    """``<local time> <LEVEL> <logger>: <message>``, as ``logging.Formatter(TEXT_FORMAT)``
    writes it."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._seconds = _Seconds("%Y-%m-%d %H:%M:%S", time.localtime)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.stack_info:
            return super().format(record)
        # What the format string gives, in one f-string.
        return f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"


@final
class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (ISO 8601, UTC, microseconds:
    ``2026-01-31T12:00:00.123456Z``), ``level`` (``debug``, ``info``, ``warning``,
    ``error``, ``critical``), ``logger``, ``message``, then the record's own fields
    (``extra=``: ``sandbox_id``, ``event``, ``exit_status``, ``reason``, ...), and
    ``exception`` (the traceback) when there is one."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        micros = int((created - int(created)) * 1e6)
        out: dict[str, Any] = {
            "time": f"{self._seconds(created)}.{micros:06d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


@final
class _Lines(logging.Handler):
    """Formats each record where it is logged and hands the line to ``writer``."""

    def __init__(self, formatter: logging.Formatter, writer: LogWriter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._writer = writer

    def handle(self, record: logging.LogRecord) -> bool:
        # No filters, and the queue needs no lock.
        try:
            line = self.format(record)
        except Exception as exc:
            line = f"cannot format a log record of {record.name}: {exc!r}: {record.msg!r}"
        if record.levelno >= logging.WARNING:
            self._writer.write_now(line)
        else:
            self._writer.queue(line)
        return True


@final
class LogWriter:
    """The thread that writes the lines of :attr:`handler`'s records to ``stream``.

    A line of INFO or below waits at most ``_GATHER`` seconds, with those that follow it;
    a warning or an error is written, with every line before it, before the call that
    logged it returns (they are few: the server's refusals are rate-limited).
    """

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        self._stream = stream
        # Lines; None: the end; an Event: set it once what came before is written.
        self._lines: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
        self.queue = self._lines.put_nowait
        self._hurry = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandboxd: log", daemon=True)
        self.handler: logging.Handler = _Lines(formatter, self)

    def start(self) -> None:
        self._thread.start()

    def write_now(self, line: str) -> None:
        """Write ``line`` after the lines queued before it; return once it is written."""
        if not self._thread.is_alive():
            self._write([line])
            return
        self._lines.put(line)
        self.flush()

    def flush(self) -> None:
        """Return once every line logged so far is written."""
        if self._thread.is_alive():
            written = threading.Event()
            self._lines.put(written)
            self._hurry.set()
            written.wait()

    def stop(self) -> None:
        """Write what is queued, then end the thread.  Lines logged later are written at
        once, by the caller."""
        if self._thread.is_alive():
            self._lines.put(None)
            self._hurry.set()
            self._thread.join()

    def _run(self) -> None:
        get, get_nowait = self._lines.get, self._lines.get_nowait
        while True:
            batch = [get()]
            if type(batch[-1]) is str:
                self._hurry.wait(_GATHER)
                self._hurry.clear()
                while type(batch[-1]) is str:
                    try:
                        batch.append(get_nowait())
                    except queue.Empty:
                        break
            self._write([line for line in batch if type(line) is str])
            last = batch[-1]
            if last is None:
                return
            if isinstance(last, threading.Event):
                last.set()

    def _write(self, lines: list[str]) -> None:
        try:
            if lines:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone: nothing can be told of it


def configure(level: str, fmt: str, stream: TextIO) -> LogWriter:
    """Send every record at ``level`` or above to ``stream`` in ``fmt`` (:data:`FORMATS`),
    through a started :class:`LogWriter` (stop it before exiting)."""
    formatter = JSONFormatter() if fmt == JSON else TextFormatter()
    writer = LogWriter(stream, formatter)
    # Nothing written uses them, and each costs every record some work.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    logging.basicConfig(level=level.upper(), handlers=[writer.handler], force=True)
    writer.start()
    return writer
