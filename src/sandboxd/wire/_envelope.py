"""The CBOR envelope inside request and response frames, and strict CBOR decoding.

Request payload: a map ``{service, method, payload?, timeout_nano?, metadata?}``.
Response payload: a map ``{status?: {code, message, details}, payload?}``.
``payload`` is a byte string holding the CBOR encoding of the method's own message.

Everything that comes off the wire is decoded by :func:`loads_strict`, which refuses
indefinite lengths, duplicate keys, nesting deeper than :data:`MAX_DEPTH`, every tag but 1
(epoch time), and trailing bytes.  Any failure is an :class:`~sandboxd.InvalidArgument` that
says what was wrong; no other exception escapes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import cbor2

from .._errors import Code, Internal, InvalidArgument, RPCError

MAX_DEPTH: Final = 32

_EMPTY_MAP: Final = b"\xa0"


def _refuse_tag(tag: int) -> Any:
    def refuse(value: object, immutable: bool) -> object:
        raise cbor2.CBORDecodeError(f"CBOR tag {tag} is not allowed")

    return refuse


def _refuse_unknown_tag(tag: cbor2.CBORTag, immutable: bool) -> object:
    raise cbor2.CBORDecodeError(f"CBOR tag {tag.tag} is not allowed")


# Tags cbor2 decodes by itself, all refused but 1 (epoch time, used for timestamps).  Among
# them are the shared-reference (28, 29) and string-reference (25, 256) tags, which let a small
# message stand for a huge or cyclic object.  Tags cbor2 does not know go to the tag hook,
# which refuses them too.
_BUILTIN_TAGS: Final = (
    # Found by probing cbor2 for every tag below 70000 it decodes without the tag hook;
    # tests/test_wire_envelope.py probes again, so a cbor2 upgrade cannot open a hole.
    0, 2, 3, 4, 5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 33, 34, 35, 36, 37, 52, 54, 100,
    256, 258, 260, 261, 1004, 43000, 55799,
)  # fmt: skip
_SEMANTIC: Final = {tag: _refuse_tag(tag) for tag in _BUILTIN_TAGS}


_STRICT: Final[dict[str, Any]] = {
    "max_depth": MAX_DEPTH,
    "allow_indefinite": False,
    "allow_duplicate_keys": False,
    "semantic_decoders": _SEMANTIC,
    "tag_hook": _refuse_unknown_tag,
}


def loads_strict(data: bytes, what: str = "message") -> Any:
    """Decode exactly one CBOR item from ``data``, refusing anything hostile.

    Raises :class:`~sandboxd.InvalidArgument` naming ``what`` when ``data`` is not one
    well-formed, allowed item with nothing after it.
    """
    # A decoder that reports its position finds trailing bytes in the same pass; a fresh
    # one per message, never reused.
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp, **_STRICT).decode()
    except cbor2.CBORDecodeEOF:
        raise InvalidArgument(f"{what}: truncated CBOR") from None
    except Exception as exc:  # cbor2 may raise other types on hostile input
        raise InvalidArgument(f"{what}: invalid CBOR: {exc}") from None
    if fp.tell() != len(data):
        extra = len(data) - fp.tell()
        raise InvalidArgument(f"{what}: {extra} trailing bytes after the CBOR item")
    return value


def dumps(value: Any) -> bytes:
    """Encode ``value`` as CBOR (datetimes as tag 1, epoch seconds)."""
    return cbor2.dumps(value, datetime_as_timestamp=True)


def loads_message(data: bytes, what: str = "payload") -> dict[str, Any]:
    """Decode a method message: one CBOR map with text keys."""
    if not data:
        return {}
    value = loads_strict(data, what)
    if type(value) is not dict:
        raise InvalidArgument(f"{what}: expected a CBOR map, got {type(value).__name__}")
    for key in value:
        if type(key) is not str:
            raise InvalidArgument(f"{what}: map keys must be text, got {type(key).__name__}")
    return value


class Request(NamedTuple):
    """A decoded request envelope."""

    service: str
    method: str
    payload: bytes
    timeout_nano: int
    metadata: Mapping[str, Sequence[str]]


_NO_METADATA: Final[Mapping[str, Sequence[str]]] = {}
_REQUEST_KEYS: Final = frozenset({"service", "method", "payload", "timeout_nano", "metadata"})


def encode_request(
    service: str,
    method: str,
    payload: bytes = b"",
    timeout_nano: int = 0,
    metadata: Mapping[str, Sequence[str]] | None = None,
) -> bytes:
    envelope: dict[str, Any] = {"service": service, "method": method}
    if payload and payload != _EMPTY_MAP:
        envelope["payload"] = payload
    if timeout_nano:
        envelope["timeout_nano"] = timeout_nano
    if metadata:
        envelope["metadata"] = {k: list(v) for k, v in metadata.items()}
    return cbor2.dumps(envelope)


def decode_request(data: bytes) -> Request:
    """Decode a request envelope; :class:`~sandboxd.InvalidArgument` names what is wrong."""
    env = loads_strict(data, "request envelope")
    if type(env) is not dict:
        raise InvalidArgument(f"request envelope: expected a CBOR map, got {type(env).__name__}")
    for key in env:
        if key not in _REQUEST_KEYS:
            raise InvalidArgument(f"request envelope: unknown field {key!r}")
    service = env.get("service")
    if type(service) is not str:
        raise InvalidArgument("request envelope: field 'service' must be text")
    method = env.get("method")
    if type(method) is not str:
        raise InvalidArgument("request envelope: field 'method' must be text")
    payload = env.get("payload", b"")
    if type(payload) is not bytes:
        raise InvalidArgument("request envelope: field 'payload' must be a byte string")
    timeout_nano = env.get("timeout_nano", 0)
    if type(timeout_nano) is not int or timeout_nano < 0:
        raise InvalidArgument("request envelope: field 'timeout_nano' must be an unsigned int")
    metadata = env.get("metadata")
    if metadata is None:
        metadata = _NO_METADATA
    else:
        _check_metadata(metadata)
    return Request(service, method, payload, timeout_nano, metadata)


def _check_metadata(metadata: object) -> None:
    if type(metadata) is not dict:
        raise InvalidArgument("request envelope: field 'metadata' must be a map")
    for key, values in metadata.items():
        if type(key) is not str:
            raise InvalidArgument("request envelope: 'metadata' keys must be text")
        if type(values) is not list or any(type(v) is not str for v in values):
            raise InvalidArgument(f"request envelope: metadata {key!r} must be an array of text")


#: How every success envelope :func:`encode_response` writes begins: a map of one pair, whose
#: key is the text ``payload`` (``{"payload": ...``); :func:`response_payload` reads it back.
_RESPONSE_HEAD: Final = b"\xa1\x67payload"
_OK_AT: Final = len(_RESPONSE_HEAD)


def encode_response(payload: bytes) -> bytes:
    """A successful response envelope carrying ``payload`` (a CBOR-encoded message).

    The bytes ``cbor2.dumps({"payload": payload})`` gives, written out directly (every
    answer is one): a map of one pair, the text ``payload``, then a byte string's head
    (major type 2, its length in the shortest form) and the payload.
    """
    n = len(payload)
    if n < 24:
        head = bytes((0x40 | n,))
    elif n < 0x100:
        head = bytes((0x58, n))
    elif n < 0x10000:
        head = b"\x59" + n.to_bytes(2, "big")
    elif n < 0x100000000:
        head = b"\x5a" + n.to_bytes(4, "big")
    else:
        head = b"\x5b" + n.to_bytes(8, "big")
    return _RESPONSE_HEAD + head + payload


def encode_error(code: int, message: str, details: Sequence[Any] = ()) -> bytes:
    """A response envelope carrying an error status."""
    status = {"code": int(code), "message": message, "details": list(details)}
    return cbor2.dumps({"status": status})


def encode_error_from(err: RPCError) -> bytes:
    return encode_error(err.code, err.message, err.details)


#: A response envelope's contents: status code, message and details, and payload.
ResponseFields = tuple[int, str, list[Any], bytes]


def answer(read: Callable[[bytes], ResponseFields], data: bytes) -> bytes:
    """The payload of the response envelope ``data``, read by ``read``, or the
    :class:`~sandboxd.RPCError` its status carries: the one place a client turns a status into
    an error, whatever the envelope.

    A malformed envelope (``read`` raises :class:`~sandboxd.InvalidArgument`) is reported as
    :class:`~sandboxd.Internal`: the peer, not the caller, broke the protocol.
    """
    try:
        code, message, details, payload = read(data)
    except InvalidArgument as exc:
        raise Internal(f"malformed response from peer: {exc}") from None
    if code != Code.OK:
        raise RPCError.from_status(code, message, details)
    return payload


def _response_fields(data: bytes) -> ResponseFields:
    env = loads_strict(data, "response envelope")
    if type(env) is not dict:
        raise InvalidArgument("response envelope: expected a CBOR map")
    status = env.get("status")
    code = Code.OK
    message = ""
    details: list[Any] = []
    if status is not None:
        if type(status) is not dict:
            raise InvalidArgument("response envelope: 'status' must be a map")
        code = status.get("code", 0)
        if type(code) is not int:
            raise InvalidArgument("response envelope: 'status.code' must be an int")
        message = status.get("message", "")
        details = status.get("details", [])
        if type(message) is not str or type(details) is not list:
            raise InvalidArgument("response envelope: malformed 'status'")
    payload = env.get("payload", b"")
    if type(payload) is not bytes:
        raise InvalidArgument("response envelope: 'payload' must be a byte string")
    return code, message, details, payload


def decode_response(data: bytes) -> bytes:
    """The payload of a response envelope, or the :class:`~sandboxd.RPCError` it carries.

    A malformed envelope from the peer is reported as :class:`~sandboxd.Internal`: the peer,
    not the caller, broke the protocol.
    """
    return answer(_response_fields, data)


def response_payload(envelope: bytes) -> bytes:
    """What :func:`~sandboxd.wire.decode_response` returns for ``envelope`` (or raises).

    The common case, a success envelope as :func:`encode_response` writes it, is
    read here without a CBOR decoder: ``_RESPONSE_HEAD``, a definite byte string head
    and the byte string, nothing after it.  Everything else (errors, any other encoding) goes
    to ``decode_response``.
    """
    if envelope.startswith(_RESPONSE_HEAD) and len(envelope) > _OK_AT:
        head = envelope[_OK_AT]
        if 0x40 <= head <= 0x57:  # the length is in the head
            start = _OK_AT + 1
            length = head - 0x40
        elif 0x58 <= head <= 0x5B:  # the length follows in 1, 2, 4 or 8 bytes
            start = _OK_AT + 1 + (1 << (head - 0x58))
            length = int.from_bytes(envelope[_OK_AT + 1 : start], "big")
        else:
            return decode_response(envelope)
        if start + length == len(envelope):
            return envelope[start:]
    return decode_response(envelope)
