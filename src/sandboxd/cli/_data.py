"""``sandboxctl exec``, ``logs`` and ``cp``: the data plane from a shell.

``exec`` exits with the command's own exit status (128+N when a signal N ended it), so a
script can use ``sandboxctl exec ID -- CMD`` where it would run CMD; a failure reported by the
daemon before the command ran still exits with 10 + its status code, as every subcommand does.
With ``-t`` the command gets a pseudo-terminal of the local terminal's size, kept in step on
SIGWINCH, and the local terminal is put in raw mode (restored at the end) so that keys such as
Ctrl-C reach the command, as ``docker exec -it`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import stat
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final

from .._errors import InvalidArgument
from .._models import STDERR, ExecRequest, LogGap, WindowSize
from ..api import SyncController

#: Bytes read from a local file or stdin at a time.
CHUNK: Final = 64 * 1024


def add_parsers(add: Any, with_id: Any, key_value: Any) -> None:
    """Add ``exec``, ``logs`` and ``cp`` with ``add(name, help)`` (see
    :func:`_commands.parser`)."""
    p = with_id(add("exec", "run a command inside a running sandbox; exit with its status"))
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    p.add_argument("--timeout", type=float, metavar="S", help="kill the command after S seconds")
    p.add_argument(
        "--env", type=key_value, action="append", default=[], metavar="K=V",
        help="environment added to the sandbox's (repeatable)",
    )  # fmt: skip
    p.add_argument("--cwd", help="working directory (default: the sandbox's)")
    p.add_argument("--user", metavar="UID[:GID]", help="user to run as, inside the sandbox")
    p.add_argument("--exec-id", metavar="NAME", help="the exec's id (default: chosen)")
    p = with_id(add("logs", "print what a sandbox's init wrote (stdout and stderr)"))
    p.add_argument("-f", "--follow", action="store_true", help="go on until the sandbox stops")
    p.add_argument("--tail", type=int, metavar="N", help="start N bytes before the end")
    p.add_argument("--since", metavar="TIME", help="only output read since TIME (RFC 3339)")
    p.add_argument("--timestamps", action="store_true", help="prefix each chunk with its time")
    p = add("cp", "copy a file into (SRC ID:DST) or out of (ID:SRC DST) a running sandbox")
    p.add_argument("source", metavar="SRC", help="a local file, '-' for stdin, or ID:PATH")
    p.add_argument("destination", metavar="DST", help="a local file, '-' for stdout, or ID:PATH")


def run(ctl: SyncController, args: argparse.Namespace) -> int:
    """Run ``exec``, ``logs`` or ``cp``; the exit status of sandboxctl."""
    if args.subcommand == "exec":
        return _exec(ctl, args)
    if args.subcommand == "logs":
        return _logs(ctl, args)
    return _cp(ctl, args)


# -- exec ----------------------------------------------------------------------------------------


def _window() -> WindowSize | None:
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
    except (OSError, ValueError):
        return None
    return WindowSize(rows=size.lines, cols=size.columns)


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    """The local terminal in raw mode for the block, when asked and stdin is one."""
    fd = sys.stdin.fileno()
    if not enabled or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # keep what was typed ahead
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _forward_stdin(proc: Any) -> None:
    """Copy stdin to the command until end of file, then close its stdin (in a thread)."""
    fd = sys.stdin.fileno()
    try:
        while data := os.read(fd, CHUNK):
            proc.write(data)
        proc.close_stdin()
    except Exception:  # the exec or the connection ended: the main thread reports it
        return


def _exec(ctl: SyncController, args: argparse.Namespace) -> int:
    if not args.after_dashes:
        raise InvalidArgument("command: give the command to run after '--'")
    request = ExecRequest(
        command=args.after_dashes,
        exec_id=args.exec_id,
        env=dict(args.env),
        cwd=args.cwd,
        tty=args.tty,
        stdin=args.interactive,
        timeout_secs=args.timeout,
        user=args.user,
        window=_window() if args.tty else None,
    )
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    with ctl.exec(args.sandbox_id, request) as proc:
        previous = None
        if args.tty and threading.current_thread() is threading.main_thread():

            def resized(signum: int, frame: Any) -> None:
                window = _window()
                if window is not None:
                    with contextlib.suppress(Exception):
                        proc.resize(window.rows, window.cols)

            previous = signal.signal(signal.SIGWINCH, resized)
        try:
            with _raw_terminal(args.tty and args.interactive):
                if args.interactive:
                    threading.Thread(
                        target=_forward_stdin, args=(proc,), daemon=True, name="stdin"
                    ).start()
                for chunk in proc:
                    out = stderr if chunk.stream == STDERR else stdout
                    out.write(chunk.data)
                    out.flush()
                result = proc.wait()
        finally:
            if previous is not None:
                signal.signal(signal.SIGWINCH, previous)
    if result.timed_out:
        print(f"sandboxctl: exec timed out after {args.timeout:g} s", file=sys.stderr)
    return result.exit_status


# -- logs ----------------------------------------------------------------------------------------


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"since: {text!r} is not an RFC 3339 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _logs(ctl: SyncController, args: argparse.Namespace) -> int:
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    with ctl.logs(
        args.sandbox_id, follow=args.follow, tail_bytes=args.tail, since=_since(args.since)
    ) as chunks:
        for chunk in chunks:
            if isinstance(chunk, LogGap):
                stderr.write(f"sandboxctl: {chunk.lost_bytes} bytes of output lost\n".encode())
                stderr.flush()
                continue
            out = stderr if chunk.stream == STDERR else stdout
            if args.timestamps:
                out.write(chunk.timestamp.isoformat().encode() + b" ")
            out.write(chunk.data)
            out.flush()
    return 0


# -- cp ------------------------------------------------------------------------------------------


def _remote(text: str) -> tuple[str, str] | None:
    """``ID:PATH`` split, or None for a local path (one with a '/' before any ':')."""
    head, sep, path = text.partition(":")
    if not sep or not head or "/" in head:
        return None
    return head, path


def _local_chunks(source: BinaryIO) -> Iterator[bytes]:
    while data := source.read(CHUNK):
        yield data


def _cp(ctl: SyncController, args: argparse.Namespace) -> int:
    source, destination = _remote(args.source), _remote(args.destination)
    if (source is None) == (destination is None):
        raise InvalidArgument("cp: exactly one of SRC and DST must be ID:PATH")
    if destination is not None:
        sandbox_id, path = destination
        if args.source == "-":
            ctl.write_file(sandbox_id, path, _local_chunks(sys.stdin.buffer))
            return 0
        try:
            local = open(args.source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InvalidArgument(f"cp: {args.source}: {exc.strerror}") from None
        with local:
            mode = stat.S_IMODE(os.fstat(local.fileno()).st_mode)
            ctl.write_file(sandbox_id, path, _local_chunks(local), mode=mode)
        return 0
    assert source is not None
    sandbox_id, path = source
    if args.destination == "-":
        with ctl.read_file(sandbox_id, path) as chunks:
            for data in chunks:
                sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    target = args.destination
    if os.path.isdir(target):
        target = os.path.join(target, os.path.basename(path.rstrip("/")) or "file")
    partial = f"{target}.sandboxctl-partial"
    try:
        with ctl.read_file(sandbox_id, path) as chunks, open(partial, "wb") as out:
            for data in chunks:
                out.write(data)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return 0
