"""trio RPC over ttrpc-framed CBOR on Unix sockets.  Knows nothing of sandboxes."""

from ._client import Client, open_client
from ._limits import Limits
from ._methods import (
    CallContext,
    Encoded,
    Message,
    MessageSender,
    Method,
    MethodKind,
    PeerCredentials,
    Responder,
    Services,
    deferred,
    inline,
    server_stream,
    unary,
)
from ._server import Server
from ._sync_client import SyncClient
from ._unix import SocketInUseError

__all__ = [
    "CallContext",
    "Client",
    "Encoded",
    "Limits",
    "Message",
    "MessageSender",
    "Method",
    "MethodKind",
    "PeerCredentials",
    "Responder",
    "Server",
    "Services",
    "SocketInUseError",
    "SyncClient",
    "deferred",
    "inline",
    "open_client",
    "server_stream",
    "unary",
]
