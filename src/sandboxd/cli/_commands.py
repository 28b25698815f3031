"""The full ``sandboxctl``: every subcommand, parsed by argparse, run through the blocking
:class:`~sandboxd.SyncController`.  ``_ctl.main`` sends here whatever the hot path
(``_hot``) does not take.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TextIO

from .._errors import Code
from .._models import Mount, Resources, SandboxOptions
from .._paths import default_socket_path
from .._version import __version__
from ..api import SyncController
from ..api import _convert as convert
from . import _data
from ._output import event_line, print_fields, print_json, print_table
from ._report import EXIT_BASE, reporting, time_calls

_EXIT_CODES_HELP = "\n".join(
    f"  {EXIT_BASE + code.value:>3}  {code.name}" for code in Code if code is not Code.OK
)

_EPILOG = f"""\
The daemon's socket: --socket, else $SANDBOXD_SOCKET, else the daemon's default
($XDG_RUNTIME_DIR/sandboxd/sandboxd.sock, /run/sandboxd/sandboxd.sock for root, else
<tmp>/sandboxd-<uid>/sandboxd.sock).

Exit status: 0 on success (exec: the command's own exit status), 2 for a usage error, 1 for
anything unexpected, and for a failure reported by the daemon 10 + its status code:
{_EXIT_CODES_HELP}
"""


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _sim_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE as JSON (``1.5``, ``true``, ``"text"``); bare text is text."""
    key, value = _key_value(text)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def parser() -> argparse.ArgumentParser:
    """sandboxctl's argument parser: every subcommand and option."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the response message as JSON",
    )
    parser = argparse.ArgumentParser(
        prog="sandboxctl",
        description="Drive a sandboxd daemon.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"sandboxctl {__version__}")
    parser.add_argument("--socket", metavar="PATH", help="the daemon's socket")
    parser.add_argument(
        "--call-timeout",
        type=float,
        metavar="S",
        help="give up on any call after S seconds (DEADLINE_EXCEEDED)",
    )
    parser.add_argument(
        "--timing",
        action="store_true",
        help="print each call's round-trip time to the daemon on stderr",
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    def with_id(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("sandbox_id", metavar="ID")
        return p

    for name, text in (
        ("create", "create a sandbox (state created)"),
        ("run", "create a sandbox and start it"),
    ):
        p = with_id(add(name, text))
        p.add_argument(
            "--sandboxer",
            help="backend: bwrap, process (isolates nothing), sim (default: the daemon's)",
        )
        p.add_argument(
            "--env", type=_key_value, action="append", default=[], metavar="K=V",
            help="environment of the init process (repeatable)",
        )  # fmt: skip
        p.add_argument("--cwd", help="working directory of the init process")
        p.add_argument(
            "--label", type=_key_value, action="append", default=[], metavar="K=V",
            help="label (repeatable)",
        )  # fmt: skip
        p.add_argument(
            "--annotation", type=_key_value, action="append", default=[], metavar="K=V",
            help="annotation (repeatable)",
        )  # fmt: skip
        p.add_argument(
            "--sim", type=_sim_setting, action="append", default=[], metavar="KEY=JSON",
            help="a setting of the sim sandboxer, e.g. exit_after=1.5 (repeatable)",
        )  # fmt: skip
        p.add_argument("--hostname", help="hostname inside the sandbox (bwrap)")
        p.add_argument("--host-network", action="store_true", help="share the host network")
        p.add_argument("--netns", metavar="PATH", help="network namespace to join (bwrap)")
        _add_mounts(p)
        p.add_argument(
            "--seccomp", type=_seccomp, metavar="default|unconfined|FILE.json",
            help="system-call filter (bwrap): the default one, none, or a Docker profile",
        )  # fmt: skip
        p.add_argument(
            "--lifetime", type=_lifetime, metavar="S",
            help="stop the sandbox once it has been running S seconds",
        )  # fmt: skip
        _add_resource_options(p)
        p.add_argument(
            "argv", nargs="*", metavar="-- COMMAND",
            help="the init process, after '--' (default: a pause process)",
        )  # fmt: skip
    with_id(add("start", "start a created sandbox"))
    with_id(add("status", "show a sandbox's status")).add_argument(
        "--verbose", "-v", action="store_true", help="include the backend's details"
    )
    with_id(add("platform", "show the platform a sandbox runs on"))
    with_id(add("stop", "stop a sandbox: SIGTERM, then SIGKILL after the timeout")).add_argument(
        "--timeout", type=float, metavar="S", help="seconds before SIGKILL (default: daemon's)"
    )
    with_id(add("wait", "wait until a sandbox has stopped; print its exit status")).add_argument(
        "--timeout", type=float, metavar="S", help="give up after S seconds"
    )
    with_id(add("shutdown", "kill a sandbox if needed and delete it"))
    with_id(add("ping", "check that a sandbox exists"))
    with_id(add("metrics", "show a sandbox's resource use"))
    add("list", "list sandboxes").add_argument(
        "--label", type=_key_value, action="append", default=[], metavar="K=V",
        help="only sandboxes with this label (repeatable)",
    )  # fmt: skip
    add("version", "show the daemon's version and protocol")
    add("events", "print lifecycle events as they happen, until interrupted")
    _data.add_parsers(add, with_id, _key_value)
    _add_fuzz(sub)
    return parser


# -- fuzz ---------------------------------------------------------------------------------------

#: Exit status of ``fuzz``: a violation was found (its reproducer is printed).
EXIT_VIOLATION: Final = 1
#: Exit status of ``fuzz`` without Hypothesis (the ``testing`` extra).
EXIT_NO_TOOLKIT: Final = 3

_FUZZ_EPILOG = f"""\
Each program is groups of calls (Create with random sim faults, Start, Stop, Wait, Status,
Shutdown, ...) over a few sandboxes, the calls of a group made at once over K connections.
Every history is checked for linearizability against the lifecycle's reference model; on a
violation the program is shrunk (by Hypothesis, then call by call) and printed as a
sandboxctl script and as a pytest test.  Sandbox ids are fuzz-<seed>-<n>; the fuzzer shuts
its sandboxes down.  The same seed draws the same programs (see the digests); with the sim
sandboxer a seed reproduces a run up to the interleaving of concurrent calls.  With
--sandboxer process (or bwrap) the sandboxes run real short-lived shell commands (exit with
a chosen status after a delay, ignore SIGTERM, or the pause process), so real exit statuses
and signals are checked.

Exit status: 0 when every history passed every check (outcomes, deadlines, fields,
events), {EXIT_VIOLATION} on a violation, {EXIT_NO_TOOLKIT} when Hypothesis is missing (pip
install 'sandboxd[testing]'), 10 + the status code when the daemon cannot be reached.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _add_fuzz(sub: Any) -> None:
    text = "drive the daemon with random concurrent programs and check every history"
    p = sub.add_parser(
        "fuzz",
        help=text,
        description=text[0].upper() + text[1:] + ".",
        epilog=_FUZZ_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--socket", metavar="PATH", default=argparse.SUPPRESS, help="the daemon's socket"
    )
    p.add_argument(
        "--seed", type=_seed, metavar="N", help="seed of the programs (default: a random one)"
    )
    p.add_argument(
        "--duration", type=float, default=10.0, metavar="S", help="seconds to run (default 10)"
    )
    p.add_argument(
        "--clients", type=_positive_int, default=4, metavar="K",
        help="client connections, and calls at once at most (default 4)",
    )  # fmt: skip
    p.add_argument(
        "--sandboxes", type=_positive_int, default=2, metavar="N",
        help="sandboxes per program (default 2)",
    )  # fmt: skip
    p.add_argument(
        "--sandboxer", choices=["sim", "process", "bwrap"], default="sim",
        help="the sandboxer of the fuzzer's sandboxes (sim: deterministic, with faults; "
        "process, bwrap: real short-lived processes, real exit statuses and signals)",
    )  # fmt: skip


def _fuzz(args: argparse.Namespace, socket_path: str, out: TextIO) -> int:
    try:
        # Imported here: Hypothesis is the testing extra's, and sandboxctl works without it.
        from ..testing import fuzz as engine
    except ImportError as err:
        if not (err.name or "").startswith("hypothesis"):
            raise
        print(
            "sandboxctl: fuzz needs Hypothesis, which is not installed; install the testing "
            "extra: pip install 'sandboxd[testing]'",
            file=sys.stderr,
        )
        return EXIT_NO_TOOLKIT
    seed: int = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(
        f"sandboxctl fuzz: seed {seed}, {args.clients} clients, {args.sandboxes} sandboxes, "
        f"sandboxer {args.sandboxer}, {args.duration:g} s against {socket_path}",
        file=sys.stderr,
        flush=True,
    )

    def progress(p: engine.FuzzProgress) -> None:
        if p.shrinking:
            line = f"violation after {p.programs} programs; shrinking: {p.smallest} calls"
            if p.attempts:
                line += f" after {p.attempts} runs"
        else:
            line = (
                f"{p.programs:>6} programs {p.calls:>7} calls {p.elapsed:6.1f} s  "
                f"digest {p.digest}"
            )
            if p.inconclusive:
                line += f"  ({p.inconclusive} undecided)"
        print(f"sandboxctl fuzz: {line}", file=sys.stderr, flush=True)

    report = engine.fuzz(
        socket_path,
        seed=seed,
        duration=args.duration,
        clients=args.clients,
        sandboxes=args.sandboxes,
        sandboxer=args.sandboxer,
        progress=progress,
    )
    print(report.summary(), file=out, flush=True)
    if report.violation is None:
        return 0
    print(f"rerun with: sandboxctl fuzz --socket {socket_path} --seed {seed}", file=out)
    print(report.violation.describe(), file=out, flush=True)
    return EXIT_VIOLATION


# -- commands -------------------------------------------------------------------------------------


def _create(ctl: SyncController, args: argparse.Namespace) -> dict[str, Any]:
    command = [*args.argv, *args.after_dashes]
    mounts: list[Mount] = args.mounts
    options = SandboxOptions(
        command=command or None,
        env=dict(args.env),
        cwd=args.cwd,
        hostname=args.hostname,
        host_network=args.host_network,
        sim=dict(args.sim) or None,
        seccomp=args.seccomp,
        resources=_resources(args),
        lifetime_secs=args.lifetime,
    )
    sandbox_id = ctl.create(
        args.sandbox_id,
        sandboxer=args.sandboxer,
        options=options,
        rootfs=mounts,
        netns_path=args.netns,
        annotations=dict(args.annotation),
        labels=dict(args.label),
    )
    return {"sandbox_id": sandbox_id}


def _add_resource_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--memory", type=_positive_int, metavar="BYTES",
        help="memory limit; past it the OOM killer ends the sandbox (exit 137)",
    )  # fmt: skip
    p.add_argument(
        "--cpus", type=float, metavar="N",
        help="CPU share, e.g. 0.5 for half a CPU (options.resources.cpu_millis)",
    )  # fmt: skip
    p.add_argument(
        "--pids", type=_positive_int, metavar="N", help="most processes and threads at once"
    )


def _resources(args: argparse.Namespace) -> Resources | None:
    """``options.resources`` from --memory, --cpus and --pids; None without any."""
    if args.memory is None and args.cpus is None and args.pids is None:
        return None
    cpu_millis = None if args.cpus is None else round(args.cpus * 1000)
    return Resources(memory_bytes=args.memory, cpu_millis=cpu_millis, pids=args.pids)


def _add_mounts(p: argparse.ArgumentParser) -> None:
    """``--bind``, ``--tmpfs`` and ``--proc``: mounts of the sandbox's rootfs, in the order
    given (a later one covers an earlier one)."""
    p.add_argument(
        "--bind", type=_bind, action="append", dest="mounts", default=[],
        metavar="SRC:DST[:ro|rw]", help="bind mount into the sandbox's rootfs (bwrap; repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--tmpfs", type=_tmpfs, action="append", dest="mounts", metavar="DST",
        help="a fresh tmpfs at DST (bwrap; repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--proc", type=_proc, action="append", dest="mounts", metavar="DST",
        help="the sandbox's own /proc at DST (bwrap; repeatable)",
    )  # fmt: skip


def _target(spec: str) -> str:
    if not spec.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected an absolute path, got {spec!r}")
    return spec


def _tmpfs(spec: str) -> Mount:
    return Mount(type="tmpfs", source="tmpfs", target=_target(spec))


def _proc(spec: str) -> Mount:
    return Mount(type="proc", source="proc", target=_target(spec))


def _lifetime(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _bind(spec: str) -> Mount:
    """``SRC:DST[:ro|rw]`` as a bind mount (an argparse type: a bad one is a usage error)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"expected SRC:DST[:ro|rw], got {spec!r}")
    mode = parts[2] if len(parts) == 3 else "ro"
    if mode not in ("ro", "rw"):
        raise argparse.ArgumentTypeError(f"the mode must be ro or rw, got {mode!r}")
    return Mount(type="bind", source=parts[0], target=parts[1], options=(mode,))


def _seccomp(value: str) -> str | dict[str, Any]:
    """``default``, ``unconfined``, or the path of a profile in Docker's JSON format (read
    here: the daemon may not see the file)."""
    if value in ("default", "unconfined"):
        return value
    try:
        with open(value, "rb") as f:
            profile = json.load(f)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read the profile {value!r}: {exc}") from None
    if not isinstance(profile, dict):
        raise argparse.ArgumentTypeError(f"the profile {value!r} is not a JSON object")
    return profile


def _run_command(ctl: SyncController, args: argparse.Namespace, out: TextIO) -> None:
    as_json = getattr(args, "json", False)
    name = args.command_name

    def emit(message: Mapping[str, Any], human: Callable[[], None]) -> None:
        if as_json:
            print_json(message, out)
        else:
            human()

    sandbox_id: str = getattr(args, "sandbox_id", "")
    if name == "create":
        msg = _create(ctl, args)
        emit(msg, lambda: print(msg["sandbox_id"], file=out))
    elif name in ("run", "start"):
        if name == "run":
            _create(ctl, args)
        inst = ctl.start(sandbox_id)
        msg = convert.instance_message(inst)
        emit(msg, lambda: print(f"{inst.sandbox_id} started, pid {inst.pid}", file=out))
    elif name == "status":
        msg = convert.status_message(ctl.status(sandbox_id, verbose=args.verbose))
        emit(msg, lambda: print_fields(msg, out))
    elif name == "platform":
        platform = ctl.platform(sandbox_id)
        msg = convert.platform_message(platform)
        text = f"{platform.os}/{platform.architecture}" + (
            f"/{platform.variant}" if platform.variant else ""
        )
        emit(msg, lambda: print(text, file=out))
    elif name == "stop":
        ctl.stop(sandbox_id, timeout_secs=args.timeout)
        emit({}, lambda: print(f"{sandbox_id} stopped", file=out))
    elif name == "wait":
        exit_status = ctl.wait(sandbox_id, timeout=args.timeout)
        msg = convert.exit_message(exit_status)
        emit(msg, lambda: print(exit_status.exit_status, file=out))
    elif name == "shutdown":
        ctl.shutdown(sandbox_id)
        emit({}, lambda: print(f"{sandbox_id} deleted", file=out))
    elif name == "ping":
        ctl.ping(sandbox_id)
        emit({}, lambda: print(f"{sandbox_id} ok", file=out))
    elif name == "metrics":
        msg = convert.metrics_message(ctl.metrics(sandbox_id))
        emit(msg, lambda: print_fields(msg, out))
    elif name == "list":
        statuses = ctl.list(dict(args.label) or None)
        msg = {"sandboxes": [convert.status_message(s) for s in statuses]}
        rows = [
            (
                s.sandbox_id,
                s.state.value,
                str(s.pid),
                s.info.get("sandboxer", ""),
                s.created_at.astimezone().isoformat(timespec="seconds"),
                s.info.get("exit_status", "-"),
            )
            for s in statuses
        ]
        emit(
            msg,
            lambda: print_table(
                ("SANDBOX ID", "STATE", "PID", "SANDBOXER", "CREATED", "EXIT"), rows, out
            ),
        )
    elif name == "version":
        msg = dict(ctl.version())
        emit(
            msg,
            lambda: print(
                f"daemon {msg.get('version')} (protocol {msg.get('protocol')}), "
                f"sandboxctl {__version__}",
                file=out,
            ),
        )
    elif name == "events":
        with ctl.events() as events:
            for event in events:
                line = convert.event_message(event)
                if as_json:
                    print_json(line, out)
                else:
                    print(event_line(line), file=out, flush=True)
    else:  # pragma: no cover - argparse refuses unknown commands
        raise AssertionError(name)


def main(words: Sequence[str], out: TextIO) -> int:
    """sandboxctl with the arguments ``words``; its exit status (argparse exits by itself on
    a usage error or ``--help``)."""
    words = list(words)
    parsing = parser()
    # Everything after the first "--" is the sandbox's command, options included.
    after_dashes: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, after_dashes = words[:cut], words[cut + 1 :]
    args = parsing.parse_args(words)
    args.command_name = args.subcommand
    args.after_dashes = after_dashes
    if after_dashes and args.subcommand not in ("create", "run", "exec"):
        parsing.error(f"{args.subcommand} takes no command after '--'")
    socket_path = args.socket or default_socket_path()

    def run() -> int:
        if args.subcommand == "fuzz":
            return _fuzz(args, socket_path, out)
        with SyncController(socket_path, timeout=args.call_timeout) as ctl:
            if args.timing:
                time_calls(ctl.client)
            if args.subcommand in ("exec", "logs", "cp"):
                return _data.run(ctl, args)
            _run_command(ctl, args, out)
        return 0

    return reporting(run, socket_path)
