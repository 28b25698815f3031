"""trio RPC over ttrpc-framed CBOR on Unix sockets.  Knows nothing of sandboxes."""

from ._client import Client, StreamCall, open_client
from ._limits import Limits
from ._methods import (
    CallContext,
    Encoded,
    Message,
    MessageSender,
    MessageStream,
    Method,
    MethodKind,
    PeerCredentials,
    Responder,
    Services,
    bidi_stream,
    client_stream,
    deferred,
    inline,
    server_stream,
    unary,
)
from ._server import Server
from ._sync_client import SyncClient, SyncStreamCall
from ._unix import SocketInUseError

__all__ = [
    "CallContext",
    "Client",
    "Encoded",
    "Limits",
    "Message",
    "MessageSender",
    "MessageStream",
    "Method",
    "MethodKind",
    "PeerCredentials",
    "Responder",
    "Server",
    "Services",
    "SocketInUseError",
    "StreamCall",
    "SyncClient",
    "SyncStreamCall",
    "bidi_stream",
    "client_stream",
    "deferred",
    "inline",
    "open_client",
    "server_stream",
    "unary",
]
