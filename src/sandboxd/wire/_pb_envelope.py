"""The protobuf envelope inside request and response frames: ttrpc's own, hand-coded.

A connection whose first request payload does not begin with a CBOR map head speaks this
envelope for its life (docs/wire.md, "The protobuf envelope").  The messages are ttrpc's::

    message Request  { string service = 1; string method = 2; bytes payload = 3;
                       int64 timeout_nano = 4; repeated KeyValue metadata = 5; }
    message KeyValue { string key = 1; string value = 2; }
    message Response { google.rpc.Status status = 1; bytes payload = 2; }
    // google.rpc.Status { int32 code = 1; string message = 2;
    //                     repeated google.protobuf.Any details = 3; }
    // google.protobuf.Any { string type_url = 1; bytes value = 2; }

Decoding reads protobuf as its own libraries do: fields in any order, a scalar field seen
twice keeps its last value, an embedded message seen twice is merged, unknown fields of every
wire type (groups included) are skipped.  It is strict about everything else: a truncated
varint or length, a varint over 10 bytes (or over 64 bits), a wire type that does not exist,
field number 0, a known field with the wrong wire type and a string that is not UTF-8 are an
:class:`~sandboxd.InvalidArgument` saying what was wrong; no other exception escapes.

A ``timeout_nano`` of 0 or less means no deadline, as Go's ttrpc reads it: the decoded
:class:`~sandboxd.wire.Request` then carries 0.

Status details are ``google.protobuf.Any`` values.  A detail of :class:`~sandboxd.RPCError`
is sent as an Any of type :data:`ERROR_DETAIL_TYPE_URL`, whose value is the message
``sandboxd.v1.ErrorDetail { bytes cbor = 1; }``: the detail value encoded as CBOR, exactly as
the CBOR envelope carries it.  A detail that is a map of exactly ``type_url`` (text) and
``value`` (bytes) is sent as that Any itself, and an Any of any other type received becomes
such a map: foreign details pass through unchanged.

The encoder and the success path of the decoder are written for speed (a call's envelope is
built and read once per call): bytes slicing and precomputed heads, no object per field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from .._errors import InvalidArgument, RPCError
from ._envelope import Request, ResponseFields, answer, decode_response, dumps, loads_strict

#: The type URL of the ``google.protobuf.Any`` that carries one detail of an error.
ERROR_DETAIL_TYPE_URL: Final = "type.googleapis.com/sandboxd.v1.ErrorDetail"

# Wire types.
_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_SGROUP: Final = 3
_EGROUP: Final = 4
_I32: Final = 5

_MAX_FIELD: Final = (1 << 29) - 1
_U64: Final = 1 << 64
_I64_SIGN: Final = 1 << 63

#: One-byte varints, by value: lengths and tags under 128 are most of what is encoded.
_SMALL: Final = tuple(bytes((n,)) for n in range(128))

_NO_METADATA: Final[Mapping[str, Sequence[str]]] = {}


class _Malformed(Exception):
    """Raised inside the decoders; turned into InvalidArgument at their edge."""


def _uvarint(n: int) -> bytes:
    """The varint encoding of ``n`` (0 <= n < 2**64)."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        b = data[pos]
        pos += 1
        if pos - start == 10 and b > 1:
            raise _Malformed("varint overflows 64 bits" if b < 0x80 else "varint over 10 bytes")
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _read_len(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The bounds ``(start, stop)`` of the length-delimited value whose length is at ``pos``."""
    if pos < end and data[pos] < 0x80:
        n = data[pos]
        pos += 1
    else:
        n, pos = _read_varint(data, pos, end)
    stop = pos + n
    if stop > end:
        raise _Malformed(f"truncated length-delimited field ({n} bytes, {end - pos} left)")
    return pos, stop


def _read_tag(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """``(field number, wire type, position after the tag)``."""
    b = data[pos]
    if b < 0x80:
        tag = b
        pos += 1
    else:
        tag, pos = _read_varint(data, pos, end)
    field = tag >> 3
    if field == 0 or field > _MAX_FIELD:
        raise _Malformed(f"invalid field number {field}")
    wire = tag & 7
    if wire > _I32:
        raise _Malformed(f"field {field}: invalid wire type {wire}")
    return field, wire, pos


def _skip(data: bytes, pos: int, end: int, field: int, wire: int) -> int:
    """The position after the value of an unknown field (a whole group for a group start)."""
    if wire == _VARINT:
        return _read_varint(data, pos, end)[1]
    if wire == _LEN:
        return _read_len(data, pos, end)[1]
    if wire in (_I64, _I32):
        stop = pos + (8 if wire == _I64 else 4)
        if stop > end:
            raise _Malformed(f"field {field}: truncated fixed-width value")
        return stop
    if wire == _EGROUP:
        raise _Malformed(f"field {field}: end of a group that was not started")
    # A group: fields until the end-group of the same number, groups nested within.
    open_groups = [field]
    while open_groups:
        if pos >= end:
            raise _Malformed(f"field {open_groups[-1]}: truncated group")
        inner, inner_wire, pos = _read_tag(data, pos, end)
        if inner_wire == _EGROUP:
            if inner != open_groups.pop():
                raise _Malformed(f"field {inner}: end of a group that was not started")
        elif inner_wire == _SGROUP:
            open_groups.append(inner)
        else:
            pos = _skip(data, pos, end, inner, inner_wire)
    return pos


def _wrong_type(what: str, name: str, wire: int) -> _Malformed:
    return _Malformed(f"{what}: field {name!r} has the wrong wire type ({wire})")


def _text(data: bytes, start: int, stop: int, name: str) -> str:
    try:
        return data[start:stop].decode()
    except UnicodeDecodeError:
        raise _Malformed(f"field {name!r} is not valid UTF-8") from None


def _fields(data: bytes, what: str, known: Mapping[int, tuple[str, int]]) -> dict[int, list[Any]]:
    """The known fields of one message, each field's values in order: an int for a varint, the
    bounds ``(start, stop)`` for a length-delimited value.  Unknown fields are skipped.  For
    the small messages off the hot path (KeyValue, Status, Any, ErrorDetail)."""
    found: dict[int, list[Any]] = {}
    pos = 0
    end = len(data)
    while pos < end:
        field, wire, pos = _read_tag(data, pos, end)
        spec = known.get(field)
        if spec is None:
            pos = _skip(data, pos, end, field, wire)
            continue
        name, want = spec
        if wire != want:
            raise _wrong_type(what, name, wire)
        if wire == _LEN:
            start, pos = _read_len(data, pos, end)
            found.setdefault(field, []).append((start, pos))
        else:
            value, pos = _read_varint(data, pos, end)
            found.setdefault(field, []).append(value)
    return found


# -- requests ------------------------------------------------------------------------------


def _len_field(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    return tag + (_SMALL[n] if n < 0x80 else _uvarint(n)) + value


def encode_pb_request(
    service: str,
    method: str,
    payload: bytes = b"",
    timeout_nano: int = 0,
    metadata: Mapping[str, Sequence[str]] | None = None,
) -> bytes:
    """A protobuf ttrpc ``Request`` (fields in number order, defaults left out, each metadata
    value one ``KeyValue``)."""
    parts = []
    if service:
        parts.append(_len_field(b"\x0a", service.encode()))
    if method:
        parts.append(_len_field(b"\x12", method.encode()))
    if payload:
        parts.append(_len_field(b"\x1a", payload))
    if timeout_nano:
        parts.append(b"\x20" + _uvarint(timeout_nano % _U64))
    if metadata:
        for key, values in metadata.items():
            key_field = _len_field(b"\x0a", key.encode())
            for value in values:
                parts.append(_len_field(b"\x2a", key_field + _len_field(b"\x12", value.encode())))
    return b"".join(parts)


_REQUEST_FIELDS: Final = ("service", "method", "payload", "timeout_nano", "metadata")
_KEY_VALUE: Final = {1: ("key", _LEN), 2: ("value", _LEN)}


def decode_pb_request(data: bytes) -> Request:
    """Decode a protobuf ttrpc ``Request``; :class:`~sandboxd.InvalidArgument` names what is
    wrong.  A ``timeout_nano`` of 0 or less is returned as 0 (no deadline); ``b""`` is the
    request with every field at its default."""
    try:
        return _decode_request(data)
    except _Malformed as exc:
        raise InvalidArgument(f"request envelope: {exc}") from None


def _decode_request(data: bytes) -> Request:
    service = method = ""
    payload = b""
    timeout = 0
    metadata: dict[str, list[str]] | None = None
    pos = 0
    end = len(data)
    while pos < end:
        # Tags and lengths under 128 are one byte: read inline, the rest by the helpers.
        tag = data[pos]
        if tag < 0x80 and tag >> 3 and (tag & 7) <= _I32:
            field = tag >> 3
            wire = tag & 7
            pos += 1
        else:
            field, wire, pos = _read_tag(data, pos, end)
        if wire == _LEN:
            if pos < end and data[pos] < 0x80:
                start = pos + 1
                stop = start + data[pos]
                if stop > end:
                    start, stop = _read_len(data, pos, end)  # raises, naming the lengths
            else:
                start, stop = _read_len(data, pos, end)
            pos = stop
            if field == 1:
                service = _text(data, start, stop, "service")
            elif field == 2:
                method = _text(data, start, stop, "method")
            elif field == 3:
                payload = data[start:stop]
            elif field == 5:
                if metadata is None:
                    metadata = {}
                _add_metadata(metadata, data[start:stop])
            elif field == 4:
                raise _wrong_type("request", "timeout_nano", wire)
        elif field == 4 and wire == _VARINT:
            value, pos = _read_varint(data, pos, end)
            timeout = value - _U64 if value & _I64_SIGN else value
        elif field <= 5:
            raise _wrong_type("request", _REQUEST_FIELDS[field - 1], wire)
        else:
            pos = _skip(data, pos, end, field, wire)
    return Request(
        service,
        method,
        payload,
        timeout if timeout > 0 else 0,
        _NO_METADATA if metadata is None else metadata,
    )


def _add_metadata(metadata: dict[str, list[str]], data: bytes) -> None:
    fields = _fields(data, "metadata", _KEY_VALUE)
    key = value = ""
    if 1 in fields:
        start, stop = fields[1][-1]
        key = _text(data, start, stop, "metadata key")
    if 2 in fields:
        start, stop = fields[2][-1]
        value = _text(data, start, stop, "metadata value")
    metadata.setdefault(key, []).append(value)


# -- responses ------------------------------------------------------------------------------


def encode_pb_response(payload: bytes) -> bytes:
    """A successful protobuf ttrpc ``Response`` carrying ``payload`` (no status: OK)."""
    n = len(payload)
    if n < 0x80:
        return b"\x12" + _SMALL[n] + payload if n else b""
    return b"\x12" + _uvarint(n) + payload


def _any(type_url: str, value: bytes) -> bytes:
    return _len_field(b"\x0a", type_url.encode()) + _len_field(b"\x12", value)


_DETAIL_URL_FIELD: Final = _len_field(b"\x0a", ERROR_DETAIL_TYPE_URL.encode())
_ANY_KEYS: Final = frozenset({"type_url", "value"})


def _detail_any(detail: Any) -> bytes:
    if (
        type(detail) is dict
        and detail.keys() == _ANY_KEYS
        and type(detail["type_url"]) is str
        and type(detail["value"]) is bytes
    ):
        return _any(detail["type_url"], detail["value"])
    return _DETAIL_URL_FIELD + _len_field(b"\x12", _len_field(b"\x0a", dumps(detail)))


def encode_pb_error(code: int, message: str, details: Sequence[Any] = ()) -> bytes:
    """A protobuf ttrpc ``Response`` carrying the error status ``code``, ``message`` and
    ``details`` (each a ``google.protobuf.Any``, see the module's docstring)."""
    parts = [b"\x08" + _uvarint(int(code) % _U64)] if code else []
    if message:
        parts.append(_len_field(b"\x12", message.encode()))
    for detail in details:
        parts.append(_len_field(b"\x1a", _detail_any(detail)))
    return _len_field(b"\x0a", b"".join(parts))


def encode_pb_error_from(err: RPCError) -> bytes:
    return encode_pb_error(err.code, err.message, err.details)


_RESPONSE: Final = {1: ("status", _LEN), 2: ("payload", _LEN)}
_STATUS: Final = {1: ("code", _VARINT), 2: ("message", _LEN), 3: ("details", _LEN)}
_ANY: Final = {1: ("type_url", _LEN), 2: ("value", _LEN)}
_ERROR_DETAIL: Final = {1: ("cbor", _LEN)}


def _last_bytes(data: bytes, fields: dict[int, list[Any]], field: int) -> bytes:
    if field not in fields:
        return b""
    start, stop = fields[field][-1]
    return data[start:stop]


def _decode_detail(data: bytes) -> Any:
    fields = _fields(data, "status detail", _ANY)
    type_url = ""
    if 1 in fields:
        start, stop = fields[1][-1]
        type_url = _text(data, start, stop, "type_url")
    value = _last_bytes(data, fields, 2)
    if type_url != ERROR_DETAIL_TYPE_URL:
        return {"type_url": type_url, "value": value}
    cbor = _last_bytes(value, _fields(value, "ErrorDetail", _ERROR_DETAIL), 1)
    try:
        return loads_strict(cbor, "ErrorDetail.cbor")
    except InvalidArgument as exc:
        raise _Malformed(exc.message) from None


def _decode_response(data: bytes) -> ResponseFields:
    try:
        return _response_fields(data)
    except _Malformed as exc:
        raise InvalidArgument(f"response envelope: {exc}") from None


def _response_fields(data: bytes) -> ResponseFields:
    fields = _fields(data, "response", _RESPONSE)
    code = 0
    message = ""
    details: list[Any] = []
    if 1 in fields:
        # An embedded message seen more than once is merged: its encodings, concatenated.
        status = b"".join(data[start:stop] for start, stop in fields[1])
        found = _fields(status, "status", _STATUS)
        if 1 in found:
            raw = found[1][-1] & 0xFFFFFFFF  # int32: the low 32 bits, signed
            code = raw - (1 << 32) if raw & 0x80000000 else raw
        if 2 in found:
            start, stop = found[2][-1]
            message = _text(status, start, stop, "status.message")
        for start, stop in found.get(3, ()):
            details.append(_decode_detail(status[start:stop]))
    return code, message, details, _last_bytes(data, fields, 2)


def decode_pb_response(data: bytes) -> bytes:
    """The payload of a protobuf ttrpc ``Response``, or the :class:`~sandboxd.RPCError` its
    status carries (same subclass, message and details as the server raised).

    A malformed response from the peer is reported as :class:`~sandboxd.Internal`: the peer,
    not the caller, broke the protocol.
    """
    return answer(_decode_response, data)


def pb_response_payload(envelope: bytes) -> bytes:
    """What :func:`decode_pb_response` returns for ``envelope`` (or raises), the common case
    (``b""``, or the one field ``payload`` with a one- or two-byte length) read without the
    general decoder.

    A response that begins with a CBOR map head is read as a CBOR one: a server answers in
    CBOR before it has read a request (a refusal on stream 0, an oversized first request),
    and no protobuf ``Response`` begins so.
    """
    n = len(envelope)
    if n > 2 and envelope[0] == 0x12:
        length = envelope[1]
        if length < 0x80:
            if length + 2 == n:
                return envelope[2:]
        elif n > 3 and envelope[2] < 0x80 and (length & 0x7F | envelope[2] << 7) + 3 == n:
            return envelope[3:]
    elif not n:
        return b""
    elif 0xA0 <= envelope[0] <= 0xBB:
        return decode_response(envelope)
    return decode_pb_response(envelope)


# sandboxd.v1.VersionResponse's `limits` (sandboxd.proto) and its max_calls_per_connection.
_VERSION_RESPONSE: Final = {4: ("limits", _LEN)}
_LIMITS: Final = {2: ("max_calls_per_connection", _VARINT)}


def pb_call_limit_from_version(reply: bytes) -> int | None:
    """The per-connection call limit a protobuf ``sandboxd.v1.VersionResponse`` names (its
    ``limits.max_calls_per_connection``), or None: what a client's pool reads off its probe
    call on a protobuf connection, without the protobuf runtime."""
    try:
        found = _fields(reply, "VersionResponse", _VERSION_RESPONSE)
        if 4 not in found:
            return None
        start, stop = found[4][-1]
        limit = _fields(reply[start:stop], "Limits", _LIMITS).get(2)
    except _Malformed:
        return None
    return limit[-1] if limit and limit[-1] > 0 else None
