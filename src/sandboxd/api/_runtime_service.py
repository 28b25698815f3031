"""``sandboxd.v1.Runtime``: what any client can ask to learn what it talks to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .._version import PROTOCOL_VERSION, __version__
from ..rpc import CallContext, Limits, Message, Method, inline

_VERSION_REPLY: Final[Mapping[str, Any]] = {"version": __version__, "protocol": PROTOCOL_VERSION}


def runtime_service(cgroups: str | None = None, limits: Limits | None = None) -> dict[str, Method]:
    """The methods of ``sandboxd.v1.Runtime``: ``Version {} -> {version, protocol, limits,
    cgroups?}``: ``limits`` the server's (:meth:`Limits.advertised
    <sandboxd.rpc.Limits.advertised>`; pass the ones the server was given, the defaults
    otherwise), ``cgroups`` saying which hierarchy limits sandboxes (``cgroup v1 (...)``,
    ``cgroup v2 (...)``) or why none does, when the daemon was told."""
    reply = {**_VERSION_REPLY, "limits": (Limits() if limits is None else limits).advertised()}
    if cgroups is not None:
        reply["cgroups"] = cgroups

    def version(message: Message, ctx: CallContext) -> Mapping[str, Any]:
        return reply

    return {"Version": inline(version)}
