"""What the Controller clients (trio, blocking, asyncio) share and the services define: the
service names and the decoding of replies.  No trio here: the asyncio client imports it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, TypeVar, final

from .._errors import Internal, InvalidArgument
from . import _convert as convert

CONTROLLER_SERVICE: Final = "sandboxd.v1.Controller"
RUNTIME_SERVICE: Final = "sandboxd.v1.Runtime"

_T = TypeVar("_T")
_M = TypeVar("_M")


def decode_reply(decode: Callable[[Mapping[str, Any]], _T], msg: Mapping[str, Any]) -> _T:
    """A response message as a model; a malformed one is the server's fault: INTERNAL."""
    try:
        return decode(msg)
    except InvalidArgument as err:
        raise Internal(f"malformed response from the server: {err.message}") from None


def write_size(msg: Mapping[str, Any]) -> int:
    """The ``size`` of a WriteFile response."""
    return convert.size_from(msg, "WriteFile response")


def read_data(msg: Mapping[str, Any]) -> bytes:
    """The bytes of a ReadFile message."""
    return convert.data_from(msg, "ReadFile message")


@final
class Decoded(AsyncIterator[_M]):
    """Stream messages as models (a class, so there is no async generator left to close)."""

    __slots__ = ("_decode", "_messages")

    def __init__(
        self, messages: AsyncIterator[dict[str, Any]], decode: Callable[[Mapping[str, Any]], _M]
    ) -> None:
        self._messages = messages
        self._decode = decode

    def __aiter__(self) -> Decoded[_M]:
        return self

    async def __anext__(self) -> _M:
        return decode_reply(self._decode, await self._messages.__anext__())
