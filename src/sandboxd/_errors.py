"""gRPC status codes and the typed errors that carry them across the wire.

Every failure a caller can see is an :class:`RPCError` subclass named after its code.  The
same class is raised by the in-process API, sent over the wire as ``{code, message, details}``
and raised again by the clients, so code written against one runs against the other.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, ClassVar, final


class Code(enum.IntEnum):
    """gRPC status codes, numbered as gRPC numbers them."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RPCError(Exception):
    """A failure with a gRPC status code.

    ``str(err)`` is the message; ``err.code`` the :class:`Code`; ``err.details`` a tuple of
    CBOR-friendly values carried along unchanged.  Use :meth:`from_status` to build the
    subclass that matches a code.
    """

    code: ClassVar[Code] = Code.UNKNOWN
    _by_code: ClassVar[dict[Code, type[RPCError]]] = {}

    def __init__(self, message: str = "", *, details: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        RPCError._by_code[cls.code] = cls

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    @staticmethod
    def from_status(code: int, message: str, details: Sequence[Any] = ()) -> RPCError:
        """The error for a status received from a peer.

        A code this build does not know becomes :class:`Unknown`, with the number kept in the
        message.
        """
        try:
            cls = RPCError._by_code[Code(code)]
        except (ValueError, KeyError):
            return Unknown(f"status code {code}: {message}", details=details)
        return cls(message, details=details)


@final
class Cancelled(RPCError):
    code = Code.CANCELLED


@final
class Unknown(RPCError):
    code = Code.UNKNOWN


@final
class InvalidArgument(RPCError):
    code = Code.INVALID_ARGUMENT


@final
class DeadlineExceeded(RPCError):
    code = Code.DEADLINE_EXCEEDED


@final
class NotFound(RPCError):
    code = Code.NOT_FOUND


@final
class AlreadyExists(RPCError):
    code = Code.ALREADY_EXISTS


@final
class PermissionDenied(RPCError):
    code = Code.PERMISSION_DENIED


@final
class ResourceExhausted(RPCError):
    code = Code.RESOURCE_EXHAUSTED


@final
class FailedPrecondition(RPCError):
    code = Code.FAILED_PRECONDITION


@final
class Aborted(RPCError):
    code = Code.ABORTED


@final
class OutOfRange(RPCError):
    code = Code.OUT_OF_RANGE


@final
class Unimplemented(RPCError):
    code = Code.UNIMPLEMENTED


@final
class Internal(RPCError):
    code = Code.INTERNAL


@final
class Unavailable(RPCError):
    code = Code.UNAVAILABLE


@final
class DataLoss(RPCError):
    code = Code.DATA_LOSS


@final
class Unauthenticated(RPCError):
    code = Code.UNAUTHENTICATED
