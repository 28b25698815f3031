"""How ``sandboxd serve`` logs: one line per record on stderr, as text or as JSON.

The runtime and the server only log (through ``sandboxd.*`` loggers); the daemon decides
where the lines go.  Records are handed to a thread of their own (a queue put, in the event
loop), which formats them and writes whatever has accumulated with one write: the event
loop never formats a line nor waits on stderr.  The thread writes everything logged before
:meth:`LogWriter.stop` returns.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import threading
from datetime import UTC, datetime
from typing import Any, Final, TextIO, final

TEXT, JSON = "text", "json"
FORMATS: Final = (TEXT, JSON)
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has; any other is a field given with ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
#: Records written with one write, at most.
_BATCH: Final = 1024


@final
class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (ISO 8601, UTC), ``level``
    (``debug``, ``info``, ``warning``, ``error``, ``critical``), ``logger``, ``message``,
    then the record's own fields (``extra=``: ``sandbox_id``, ``event``, ``exit_status``,
    ``reason``, ...), and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
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
class _Enqueue(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The record stays in this process: the writer formats it, not the caller.
        return record


@final
class LogWriter:
    """The thread that formats queued records and writes them to ``stream``."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        self._stream = stream
        self._formatter = formatter
        self._queue: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sandboxd: log", daemon=True)
        self.handler: logging.Handler = _Enqueue(self._queue)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread.  Records logged later are lost."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            batch = [get()]
            while batch[-1] is not None and len(batch) < _BATCH:
                try:
                    batch.append(get_nowait())
                except queue.Empty:
                    break
            lines = [self._format(record) for record in batch if record is not None]
            try:
                if lines:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
            except (OSError, ValueError):
                pass  # stderr is gone: nothing can be told of it
            if batch[-1] is None:
                return

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self._formatter.format(record)
        except Exception as exc:
            return f"cannot format a log record of {record.name}: {exc!r}: {record.msg!r}"


def configure(level: str, fmt: str, stream: TextIO) -> LogWriter:
    """Send every record at ``level`` or above to ``stream`` in ``fmt`` (:data:`FORMATS`),
    through a started :class:`LogWriter` (stop it before exiting)."""
    formatter = JSONFormatter() if fmt == JSON else logging.Formatter(TEXT_FORMAT)
    writer = LogWriter(stream, formatter)
    # Nothing written uses them, and each costs every record some work.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    logging.basicConfig(level=level.upper(), handlers=[writer.handler], force=True)
    writer.start()
    return writer
