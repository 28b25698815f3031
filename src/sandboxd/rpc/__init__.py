"""trio RPC over ttrpc frames on Unix sockets, CBOR or protobuf inside.  Knows nothing of
sandboxes."""

from typing import TYPE_CHECKING, Final

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._aio_client import AioClient, AioStreamCall, open_aio_client
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
        RawMessageSender,
        RawMessageStream,
        ReceivedMessages,
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

# Loaded on first use: the trio-free modules of this layer (the asyncio client) import
# without importing trio.
_LAZY: Final = {
    **dict.fromkeys(("AioClient", "AioStreamCall", "open_aio_client"), "._aio_client"),
    **dict.fromkeys(("Client", "StreamCall", "open_client"), "._client"),
    **dict.fromkeys(("Limits",), "._limits"),
    **dict.fromkeys(
        (
            "CallContext",
            "Encoded",
            "Message",
            "MessageSender",
            "MessageStream",
            "Method",
            "MethodKind",
            "PeerCredentials",
            "RawMessageSender",
            "RawMessageStream",
            "ReceivedMessages",
            "Responder",
            "Services",
            "bidi_stream",
            "client_stream",
            "deferred",
            "inline",
            "server_stream",
            "unary",
        ),
        "._methods",
    ),
    **dict.fromkeys(("Server",), "._server"),
    **dict.fromkeys(("SyncClient", "SyncStreamCall"), "._sync_client"),
    **dict.fromkeys(("SocketInUseError",), "._unix"),
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


__all__ = [
    "AioClient",
    "AioStreamCall",
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
    "RawMessageSender",
    "RawMessageStream",
    "ReceivedMessages",
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
    "open_aio_client",
    "open_client",
    "server_stream",
    "unary",
]
