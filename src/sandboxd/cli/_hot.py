"""The hot commands, ``version`` and ``status``, on a path that loads little: no argparse, no
models, no ``socket`` module.  They are what scripts and people run most, and a short-lived
process pays for every module it imports (see ``bench/cli.py``).

:func:`parse` recognises only the plain spellings of these commands, each meaning exactly
what argparse would make of it; anything else (``--help``, an abbreviated option, an error)
is left to the full parser, which prints and exits as it always has.  The output is the full
path's, byte for byte: a Status response is printed from the decoded message when it is
plainly well-formed, and goes through the models otherwise, which name what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO, final

from .._version import __version__

#: The services' names (``sandboxd.api``'s constants; tests/test_cli_imports.py checks).
RUNTIME_SERVICE: Final = "sandboxd.v1.Runtime"
CONTROLLER_SERVICE: Final = "sandboxd.v1.Controller"
#: The values of :class:`~sandboxd.SandboxState` (tests/test_cli_imports.py checks).

# The global options that take a value.
_VALUED: Final = ("--socket", "--call-timeout")


@final
class HotCommand:
    """A hot command as parsed: what ``argparse`` would have made of the same words."""

    __slots__ = ("as_json", "call_timeout", "name", "sandbox_id", "socket", "timing", "verbose")

    def __init__(self) -> None:
        self.name = ""
        self.socket: str | None = None
        self.call_timeout: float | None = None
        self.timing = False
        self.as_json = False
        self.sandbox_id: str | None = None
        self.verbose = False


def parse(words: Sequence[str]) -> HotCommand | None:
    """``words`` (sandboxctl's arguments) as a hot command, or None for the full parser."""
    hot = HotCommand()
    values: dict[str, str] = {}
    i = 0
    # Global options, up to the command.  An option's value must not look like an option.
    while i < len(words) and words[i].startswith("-"):
        word = words[i]
        name, eq, value = word.partition("=")
        if word == "--json":
            hot.as_json = True
        elif word == "--timing":
            hot.timing = True
        elif name in _VALUED and eq:
            values[name] = value
        elif word in _VALUED and i + 1 < len(words) and not words[i + 1].startswith("-"):
            i += 1
            values[word] = words[i]
        else:
            return None
        i += 1
    if i == len(words) or words[i] not in ("version", "status"):
        return None
    hot.name = words[i]
    for word in words[i + 1 :]:
        if word == "--json":
            hot.as_json = True
        elif hot.name == "status" and word in ("--verbose", "-v"):
            hot.verbose = True
        elif hot.name == "status" and hot.sandbox_id is None and not word.startswith("-"):
            hot.sandbox_id = word
        else:
            return None
    if hot.name == "status" and hot.sandbox_id is None:
        return None
    hot.socket = values.get("--socket")
    if "--call-timeout" in values:
        try:
            hot.call_timeout = float(values["--call-timeout"])
        except ValueError:
            return None
        if not math.isfinite(hot.call_timeout):
            return None  # the full path's business
    return hot


def run(hot: HotCommand, socket_path: str, out: TextIO) -> int:
    """Run a hot command against the daemon at ``socket_path``; sandboxctl's exit status."""
    # Imported here, so that the words that go to the full parser do not load the wire.
    from ._client import SerialClient
    from ._report import time_calls

    client = SerialClient(socket_path)
    try:
        if hot.timing:
            time_calls(client)
        if hot.name == "version":
            msg = client.call(RUNTIME_SERVICE, "Version", {}, timeout=hot.call_timeout)
            if hot.as_json:
                _output().print_json(msg, out)
            else:
                print(
                    f"daemon {msg.get('version')} (protocol {msg.get('protocol')}), "
                    f"sandboxctl {__version__}",
                    file=out,
                )
            return 0
        request: dict[str, Any] = {"sandbox_id": hot.sandbox_id}
        if hot.verbose:
            request["verbose"] = True
        reply = client.call(CONTROLLER_SERVICE, "Status", request, timeout=hot.call_timeout)
        msg = status_message(reply)
        if hot.as_json:
            _output().print_json(msg, out)
        else:
            _output().print_fields(msg, out)
        return 0
    finally:
        client.close()


def _output() -> Any:
    from . import _output  # json and datetime formatting: not needed by plain ``version``

    return _output


def status_message(reply: Mapping[str, Any]) -> dict[str, Any]:
    """The Status response as the models would give it back
    (``status_message(status_from(reply))``): built straight from ``reply`` when it is plainly
    well-formed, else through the models, which raise INTERNAL naming what is wrong."""
    msg = _plain_status(reply)
    if msg is not None:
        return msg
    from ..api import _convert as convert
    from ..api._client_common import decode_reply

    return convert.status_message(decode_reply(convert.status_from, reply))


def _plain_status(reply: Mapping[str, Any]) -> dict[str, Any] | None:
    # Imported here, not for ``version``: it imports datetime.
    from .._status_shape import plain_status

    fields = plain_status(reply)
    if fields is None:
        return None
    sandbox_id, pid, state, info, created_at, exited_at, extra = fields
    msg = {
        "sandbox_id": sandbox_id,
        "pid": pid,
        "state": state,
        "info": info,
        "created_at": created_at,
    }
    if exited_at is not None:
        msg["exited_at"] = exited_at
    if extra is not None:
        msg["extra"] = extra
    return msg
