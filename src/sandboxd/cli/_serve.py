"""``sandboxd``: the daemon."""

from __future__ import annotations

import argparse
import contextlib
import grp
import logging
import os
import pwd
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from .._paths import default_socket_path, default_state_dir, ensure_private_dir
from .._version import __version__
from ..api import CONTROLLER_SERVICE, RUNTIME_SERVICE, controller_service, runtime_service
from ..backends import (
    Backend,
    BwrapBackend,
    ProcessBackend,
    SimBackend,
    detect_cgroups,
    parent_name,
    probe_cgroups,
    with_cgroups,
)
from ..rpc import Limits, Server, SocketInUseError
from ..runtime import (
    DEFAULT_MAX_LOG_BYTES,
    DEFAULT_SANDBOXER,
    Controller,
    SandboxStore,
    StoreCorrupt,
    preferred_sandboxer,
)

log = logging.getLogger("sandboxd")

_NEVER_REPLACED = (
    "refusing to start: the state database is never replaced.  Move it aside (and the "
    "sandboxes it held are forgotten) or restore it from a backup."
)

_EPILOG = """\
Sandboxes are not killed when the daemon exits: as with containerd, their lives are
independent of the daemon's.  On SIGTERM or SIGINT the daemon stops accepting connections,
lets calls in progress finish within the grace period, and exits 0.

The socket defaults to $SANDBOXD_SOCKET, else $XDG_RUNTIME_DIR/sandboxd/sandboxd.sock, else
/run/sandboxd/sandboxd.sock for root, else <tmp>/sandboxd-<uid>/sandboxd.sock; its directory
is created with mode 0700 and the socket with mode 0600.  With --socket-group the socket is
0660 and belongs to that group, whose members also need search permission on its directory.
Only the daemon's own uid, root and the --allow-uid uids are served; others are refused with
PERMISSION_DENIED (and logged).
"""


def _cgroups_epilog() -> str:
    return (
        "\nEach sandbox of the process and bwrap sandboxers runs in a cgroup of its own (its\n"
        "limits, options.resources; its counters, Metrics; a teardown that kills every process\n"
        "it started), under <the daemon's cgroup>/sandboxd-<hash of the state directory>.\n"
        f"Here: {probe_cgroups()}.\n"
    )


def _group(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown group {value!r}") from None


def _uid(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown user {value!r}") from None


def _limit(name: str, kind: type[int] | type[float]) -> Any:
    """The argument type of the option that sets the limit ``name``: checked by
    :class:`Limits` itself, so the option refuses what the class refuses."""

    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        changed: dict[str, Any] = {name: number}
        try:
            attrs.evolve(Limits(), **changed)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return number

    return parse


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _add_access_and_limit_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--socket-group",
        type=_group,
        default=None,
        metavar="GROUP",
        help="open the socket to this group (name or gid): mode 0660 instead of 0600",
    )
    serve.add_argument(
        "--allow-uid",
        type=_uid,
        action="append",
        default=[],
        metavar="UID",
        help="also serve this uid (or user name); repeatable.  The daemon's own uid and root "
        "are always served",
    )
    # One option per field of Limits, named after it: --max-connections sets max_connections.
    for field in attrs.fields(Limits):
        default = field.default
        kind = float if isinstance(default, float) else int
        shown = f"{default:g}" if kind is float else str(default)
        serve.add_argument(
            "--" + field.name.replace("_", "-"),
            type=_limit(field.name, kind),
            default=default,
            metavar="N" if kind is int else "SECONDS",
            help=f"{field.metadata['help']} (default {shown})",
        )


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "socket_group": args.socket_group,
        "allowed_uids": {os.geteuid(), 0, *args.allow_uid} if args.allow_uid else None,
        "limits": Limits(
            **{field.name: getattr(args, field.name) for field in attrs.fields(Limits)}
        ),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandboxd", description="The sandboxd daemon.")
    parser.add_argument("--version", action="version", version=f"sandboxd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve the sandboxd API on a Unix socket until SIGINT or SIGTERM",
        description="Serve the sandboxd API on a Unix socket, in the foreground.",
        epilog=_EPILOG + _cgroups_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--socket", default=None, help="Unix socket to listen on (default: see below)"
    )
    serve.add_argument(
        "--state-dir",
        default=None,
        help="directory for the sandbox records (sandboxd.db, SQLite) and sandbox output "
        "(default: $SANDBOXD_STATE_DIR, else /var/lib/sandboxd for root, else "
        "$XDG_STATE_HOME/sandboxd)",
    )
    serve.add_argument(
        "--durable",
        action="store_true",
        help="make every write of the state database wait for the disk: acknowledged "
        "changes survive a power loss, not only a crash of the daemon (slower)",
    )
    serve.add_argument(
        "--default-sandboxer",
        default=None,
        help="sandboxer used when Create names none (default: bwrap where bubblewrap can "
        f"run here, else {DEFAULT_SANDBOXER}, which isolates nothing; the daemon logs which "
        "at start)",
    )
    serve.add_argument(
        "--max-log-bytes",
        type=_positive,
        default=DEFAULT_MAX_LOG_BYTES,
        metavar="N",
        help="size at which a sandbox's output file is rotated; the one before is kept, and "
        f"the output lost is reported to readers (default {DEFAULT_MAX_LOG_BYTES})",
    )
    serve.add_argument(
        "--ready-fd",
        type=int,
        default=None,
        metavar="FD",
        help="once the socket accepts connections, write 'READY <socket>' and a newline to "
        "this inherited file descriptor and close it (for a supervisor or script to wait on)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least severe messages logged to stderr (default info)",
    )
    _add_access_and_limit_options(serve)
    return parser


async def _serve(
    socket_path: str,
    state_dir: str,
    sandboxer: str | None,
    store: SandboxStore,
    server_options: Mapping[str, Any],
    ready_fd: int | None = None,
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
) -> None:
    logs = os.path.join(state_dir, "logs")
    cgroups, described = detect_cgroups(parent_name(state_dir))
    log.log(logging.INFO if cgroups is not None else logging.WARNING, "%s", described)
    backends: list[Backend] = with_cgroups(
        [ProcessBackend(log_dir=logs), BwrapBackend(log_dir=logs), SimBackend()],
        cgroups,
        described,
    )
    for backend in backends:
        reason = backend.unavailable_reason()
        if reason is None:
            log.info("sandboxer %s: available", backend.name)
        else:
            log.warning("sandboxer %s: unavailable: %s", backend.name, reason)
    if sandboxer is None:
        sandboxer = preferred_sandboxer(backends)
    log.info("default sandboxer: %s", sandboxer)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            controller: Controller = await nursery.start(
                Controller(
                    backends,
                    default_sandboxer=sandboxer,
                    store=store,
                    log_dir=logs,
                    max_log_bytes=max_log_bytes,
                ).run
            )
            server = Server(
                {
                    RUNTIME_SERVICE: runtime_service(cgroups=described),
                    CONTROLLER_SERVICE: controller_service(controller),
                },
                # INTEGRATION: protobuf_services=protobuf_services(controller, cgroups=described),
                **server_options,
            )
            path = await nursery.start(server.serve_unix, socket_path)
            log.info("sandboxd %s listening on %s", __version__, path)
            if ready_fd is not None:
                _tell_ready(ready_fd, path)
            async for signum in signals:
                log.info("%s received: shutting down", signal.Signals(signum).name)
                # Waits and event streams would otherwise hold the whole grace period.
                controller.drain()
                await server.shutdown()
                break
            # Sandboxes outlive the daemon: closing the controller leaves them running.
            nursery.cancel_scope.cancel()
    if cgroups is not None:
        cgroups.release()
    log.info("stopped")


def _tell_ready(fd: int, path: str) -> None:
    """Write the readiness line to ``fd`` and close it; a failure is only logged (whoever
    waits on it sees the end of the file instead)."""
    try:
        os.write(fd, f"READY {path}\n".encode())
    except OSError as exc:
        log.warning("cannot write to --ready-fd %d: %s", fd, exc)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception at the leaves of ``group`` (nurseries nest groups)."""
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    socket_path = args.socket or default_socket_path()
    state_dir = args.state_dir or default_state_dir()
    try:
        if args.socket is None and not os.environ.get("SANDBOXD_SOCKET"):
            # A directory of our own: nobody else may swap the socket in it.
            ensure_private_dir(os.path.dirname(socket_path))
        else:
            os.makedirs(os.path.dirname(os.path.abspath(socket_path)), mode=0o700, exist_ok=True)
        ensure_private_dir(state_dir)
        ensure_private_dir(os.path.join(state_dir, "logs"))
    except OSError as exc:
        print(f"sandboxd: {exc}", file=sys.stderr)
        return 1
    try:
        store = SandboxStore.open(state_dir, durable=args.durable)
    except StoreCorrupt as exc:
        print(f"sandboxd: {exc}", file=sys.stderr)
        print(f"sandboxd: {_NEVER_REPLACED}", file=sys.stderr)
        return 1
    failure: str | None = None
    try:
        trio.run(
            _serve,
            socket_path,
            state_dir,
            args.default_sandboxer,
            store,
            _server_options(args),
            args.ready_fd,
            args.max_log_bytes,
        )
    except* SocketInUseError as group:
        in_use = _first(group)
        assert isinstance(in_use, SocketInUseError)
        failure = f"{in_use.strerror}: {in_use.filename}"
    except* StoreCorrupt as group:
        failure = f"{_first(group)}\n{_NEVER_REPLACED}"
    except* OSError as group:
        failure = f"cannot listen on {socket_path}: {_first(group)}"
    finally:
        store.close()
    if failure is not None:
        for line in failure.splitlines():
            print(f"sandboxd: {line}", file=sys.stderr)
        return 1
    return 0
