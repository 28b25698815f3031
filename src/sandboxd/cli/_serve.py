"""``sandboxd``: the daemon."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from .._version import __version__
from ..api import CONTROLLER_SERVICE, RUNTIME_SERVICE, controller_service, runtime_service
from ..rpc import Server, SocketInUseError
from ..runtime import Controller

log = logging.getLogger("sandboxd")

DEFAULT_GRACE = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandboxd", description="The sandboxd daemon.")
    parser.add_argument("--version", action="version", version=f"sandboxd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve the sandboxd API on a Unix socket until SIGINT or SIGTERM",
        description=(
            "Serve the sandboxd API on a Unix socket, in the foreground, until SIGINT or "
            "SIGTERM: then stop accepting, let calls in progress finish within the grace "
            "period, and exit 0."
        ),
    )
    serve.add_argument("--socket", required=True, help="path of the Unix socket to listen on")
    serve.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        help=f"seconds calls in progress get to finish at shutdown (default {DEFAULT_GRACE})",
    )
    serve.add_argument("--log-level", default="info", help="debug, info, warning or error")
    return parser


async def _serve(socket_path: str, grace: float) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            controller: Controller = await nursery.start(Controller().run)
            server = Server(
                {
                    RUNTIME_SERVICE: runtime_service(),
                    CONTROLLER_SERVICE: controller_service(controller),
                }
            )
            path = await nursery.start(server.serve_unix, socket_path)
            log.info("listening on %s", path)
            async for signum in signals:
                log.info("%s received: shutting down", signal.Signals(signum).name)
                await server.shutdown(grace)
                break
            # Sandboxes outlive the daemon: closing the controller leaves them running.
            nursery.cancel_scope.cancel()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(_serve, args.socket, args.grace)
    except SocketInUseError as exc:
        print(f"sandboxd: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sandboxd: cannot listen on {args.socket}: {exc}", file=sys.stderr)
        return 1
    return 0
