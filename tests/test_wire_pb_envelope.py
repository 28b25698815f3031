"""Tests for the protobuf envelope: ttrpc's Request and Response, hand-coded.

A ttrpc peer relies on it to read what any protobuf library writes (fields in any order,
repeated scalars, unknown fields of every wire type), and on every malformed input being an
:class:`InvalidArgument` that says what was wrong, never another exception.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.wire import (
    DEFAULT_MAX_CALLS,
    ERROR_DETAIL_TYPE_URL,
    PROBE_METHOD,
    PROBE_SERVICE,
    ClientConnection,
    Code,
    ConnectionPool,
    Internal,
    InvalidArgument,
    NotFound,
    Request,
    ResponseReceived,
    RPCError,
    Unknown,
    decode_pb_request,
    decode_pb_response,
    dumps,
    encode_error,
    encode_frame,
    encode_pb_error,
    encode_pb_request,
    encode_pb_response,
    pb_response_payload,
    request_envelope,
)

# -- writing protobuf by hand, as any library may --------------------------------------------


def varint(n: int) -> bytes:
    n %= 1 << 64
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def vfield(field: int, value: int) -> bytes:
    return tag(field, 0) + varint(value)


def lfield(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return tag(field, 2) + varint(len(data)) + data


#: One unknown field (number 99) of each wire type, groups nested and not.
UNKNOWN = {
    "varint": vfield(99, 300),
    "i64": tag(99, 1) + b"\x01" * 8,
    "len": lfield(99, b"anything \xff"),
    "group": tag(99, 3) + vfield(1, 5) + lfield(2, "x") + tag(99, 4),
    "nested-group": tag(99, 3) + tag(7, 3) + vfield(1, 1) + tag(7, 4) + tag(99, 4),
    "i32": tag(99, 5) + b"\x02" * 4,
}


# -- requests --------------------------------------------------------------------------------


def test_request_round_trip_with_every_field():
    metadata = {"k": ["v1", "v2"], "ü": ["ß"], "empty": [""]}
    data = encode_pb_request("svc.v1.S", "Method", b"\x0a\x01x", 1_500_000_000, metadata)
    assert decode_pb_request(data) == Request(
        "svc.v1.S", "Method", b"\x0a\x01x", 1_500_000_000, metadata
    )


def test_the_empty_request_has_every_field_at_its_default():
    assert encode_pb_request("", "") == b""
    assert decode_pb_request(b"") == Request("", "", b"", 0, {})


def test_request_bytes_are_what_go_ttrpc_writes():
    # Fields in number order, one KeyValue per metadata value.
    data = encode_pb_request("s", "m", b"p", 5, {"k": ["v"]})
    assert data == (
        lfield(1, "s") + lfield(2, "m") + lfield(3, b"p") + vfield(4, 5)
        + lfield(5, lfield(1, "k") + lfield(2, "v"))
    )  # fmt: skip


def test_request_fields_in_any_order_and_repeated_scalars_keep_the_last():
    data = (
        lfield(5, lfield(2, "v1") + lfield(1, "k"))
        + vfield(4, 9)
        + lfield(3, b"old")
        + lfield(2, "m")
        + lfield(1, "old")
        + lfield(5, lfield(1, "k") + lfield(2, "v2"))
        + lfield(1, "s")
        + lfield(3, b"new")
        + vfield(4, 7)
    )
    assert decode_pb_request(data) == Request("s", "m", b"new", 7, {"k": ["v1", "v2"]})


def test_key_value_fields_repeat_as_scalars_and_default_to_empty():
    data = lfield(5, lfield(1, "a") + lfield(1, "k") + lfield(2, "x") + lfield(2, "v"))
    data += lfield(5, b"")
    assert decode_pb_request(data).metadata == {"k": ["v"], "": [""]}


@pytest.mark.parametrize("kind", UNKNOWN)
def test_unknown_fields_of_every_wire_type_are_skipped(kind: str):
    extra = UNKNOWN[kind]
    data = extra + lfield(1, "s") + extra + lfield(2, "m") + lfield(5, extra + lfield(1, "k"))
    assert decode_pb_request(data + extra) == Request("s", "m", b"", 0, {"k": [""]})


def test_multi_byte_tags_and_lengths():
    long = "x" * 300
    # A non-minimal tag (0x8a 0x00 is field 1, LEN) and a two-byte length.
    data = b"\x8a\x00" + varint(len(long)) + long.encode() + lfield(2, "m")
    assert decode_pb_request(data) == Request(long, "m", b"", 0, {})
    assert decode_pb_request(encode_pb_request(long, long, b"p" * 70000)).payload == b"p" * 70000


@pytest.mark.parametrize(
    ("timeout_nano", "expected"),
    [(0, 0), (1, 1), (-1, 0), (-(2**63), 0), (2**63 - 1, 2**63 - 1)],
)
def test_timeout_nano_of_zero_or_less_is_no_deadline(timeout_nano: int, expected: int):
    data = lfield(1, "s") + vfield(4, timeout_nano)
    assert decode_pb_request(data).timeout_nano == expected
    assert (
        decode_pb_request(encode_pb_request("s", "m", b"", timeout_nano)).timeout_nano == expected
    )


MALFORMED_REQUESTS = {
    "truncated-tag": b"\x8a",
    "truncated-length": lfield(1, "s")[:1] + b"\x85",
    "length-past-end": tag(1, 2) + varint(5) + b"abc",
    "truncated-varint": tag(4, 0) + b"\xff\xff",
    "varint-over-10-bytes": tag(4, 0) + b"\xff" * 10 + b"\x01",
    "varint-over-64-bits": tag(4, 0) + b"\xff" * 9 + b"\x02",
    "field-zero": vfield(0, 1),
    "field-number-too-big": varint((1 << 29) << 3) + b"\x00",
    "wire-type-6": tag(7, 6),
    "wire-type-7": tag(7, 7),
    "stray-end-group": tag(9, 4),
    "unclosed-group": tag(9, 3) + vfield(1, 1),
    "mismatched-end-group": tag(9, 3) + tag(8, 4),
    "truncated-i64": tag(9, 1) + b"\x00" * 7,
    "truncated-i32": tag(9, 5) + b"\x00" * 3,
    "service-varint": vfield(1, 5),
    "method-i32": tag(2, 5) + b"\x00" * 4,
    "payload-varint": vfield(3, 1),
    "timeout-len": lfield(4, b"\x01"),
    "timeout-i64": tag(4, 1) + b"\x00" * 8,
    "metadata-varint": vfield(5, 1),
    "service-not-utf8": lfield(1, b"\xff\xfe"),
    "method-not-utf8": lfield(2, b"\xc3"),
    "metadata-key-not-utf8": lfield(5, lfield(1, b"\xed\xa0\x80")),
    "metadata-value-not-utf8": lfield(5, lfield(2, b"\x80")),
    "metadata-key-varint": lfield(5, vfield(1, 1)),
    "metadata-truncated": lfield(5, tag(2, 2) + varint(9)),
}


@pytest.mark.parametrize("data", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_malformed_requests_are_invalid_argument(data: bytes):
    with pytest.raises(InvalidArgument, match=r"^request envelope: "):
        decode_pb_request(lfield(1, "s") + data)


def test_malformed_messages_say_what_was_wrong():
    def why(data: bytes) -> str:
        with pytest.raises(InvalidArgument) as info:
            decode_pb_request(data)
        return info.value.message

    assert "truncated varint" in why(MALFORMED_REQUESTS["truncated-varint"])
    assert "over 10 bytes" in why(MALFORMED_REQUESTS["varint-over-10-bytes"])
    assert "wire type 6" in why(MALFORMED_REQUESTS["wire-type-6"])
    assert "'service'" in why(MALFORMED_REQUESTS["service-varint"])
    assert "'timeout_nano'" in why(MALFORMED_REQUESTS["timeout-len"])
    assert "UTF-8" in why(MALFORMED_REQUESTS["method-not-utf8"])
    assert "5 bytes, 3 left" in why(MALFORMED_REQUESTS["length-past-end"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_are_invalid_argument(data: bytes):
    try:
        request = decode_pb_request(data)
    except InvalidArgument:
        return
    assert type(request.service) is str and type(request.payload) is bytes
    assert request.timeout_nano >= 0


_text = st.text(max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    service=_text,
    method=_text,
    payload=st.binary(max_size=300),
    timeout_nano=st.integers(-(2**63), 2**63 - 1),
    metadata=st.dictionaries(_text, st.lists(_text, min_size=1, max_size=3), max_size=4),
)
def test_request_round_trip(
    service: str, method: str, payload: bytes, timeout_nano: int, metadata: dict[str, list[str]]
):
    data = encode_pb_request(service, method, payload, timeout_nano, metadata)
    assert decode_pb_request(data) == Request(
        service, method, payload, max(timeout_nano, 0), metadata
    )


# -- responses -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 70000])
def test_response_round_trip(size: int):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = encode_pb_response(payload)
    assert data == (lfield(2, payload) if size else b"")
    assert pb_response_payload(data) == payload
    assert decode_pb_response(data) == payload


def test_response_read_as_any_library_may_write_it():
    # An OK status written out (Go's ttrpc always sets one), fields in any order, unknowns.
    for data in [
        lfield(1, b"") + lfield(2, b"p"),
        lfield(2, b"p") + lfield(1, vfield(1, 0)),
        UNKNOWN["group"] + lfield(2, b"old") + UNKNOWN["i32"] + lfield(2, b"p"),
        b"\x12\x81\x00p",  # a non-minimal length
    ]:
        assert pb_response_payload(data) == b"p"


DETAILS: list[Any] = [
    {"field": "sandbox_id", "why": "unknown"},
    7,
    "text",
    [1, b"\x00"],
    {"type_url": "type.googleapis.com/google.rpc.ErrorInfo", "value": b"\x0a\x03why"},
]


def test_status_round_trip_keeps_class_message_and_details():
    data = encode_pb_error(Code.NOT_FOUND, "sandbox box1 not found", DETAILS)
    with pytest.raises(NotFound) as info:
        pb_response_payload(data)
    assert info.value.message == "sandbox box1 not found"
    assert info.value.details == tuple(DETAILS)


def test_error_details_are_anys_of_the_documented_type():
    data = encode_pb_error(Code.INTERNAL, "m", [{"a": 1}])
    any_ = lfield(1, ERROR_DETAIL_TYPE_URL) + lfield(2, lfield(1, dumps({"a": 1})))
    assert data == lfield(1, vfield(1, 13) + lfield(2, "m") + lfield(3, any_))
    # A foreign Any passes through as itself.
    foreign = {"type_url": "example.com/x", "value": b"\x01"}
    assert encode_pb_error(Code.INTERNAL, "", [foreign]) == lfield(
        1, vfield(1, 13) + lfield(3, lfield(1, "example.com/x") + lfield(2, b"\x01"))
    )


def test_status_messages_seen_twice_are_merged():
    data = lfield(1, vfield(1, 5) + lfield(2, "first")) + lfield(1, lfield(2, "second"))
    with pytest.raises(NotFound, match=r"^second$"):
        decode_pb_response(data)


@pytest.mark.parametrize(("code", "expected"), [(-1, -1), (99, 99), (2**32 + 5, 5)])
def test_status_codes_are_int32(code: int, expected: int):
    data = lfield(1, vfield(1, code) + lfield(2, "m"))
    with pytest.raises(RPCError) as info:
        decode_pb_response(data)
    if expected == 5:
        assert type(info.value) is NotFound
    else:
        assert type(info.value) is Unknown
        assert info.value.message == f"status code {expected}: m"


MALFORMED_RESPONSES = {
    "truncated": lfield(2, b"abc")[:-1],
    "status-varint": vfield(1, 3),
    "payload-varint": vfield(2, 3),
    "code-len": lfield(1, lfield(1, b"")),
    "message-not-utf8": lfield(1, vfield(1, 5) + lfield(2, b"\xff")),
    "details-varint": lfield(1, vfield(1, 5) + vfield(3, 1)),
    "detail-type-url-not-utf8": lfield(1, vfield(1, 5) + lfield(3, lfield(1, b"\xff"))),
    "detail-not-cbor": lfield(
        1,
        vfield(1, 5) + lfield(3, lfield(1, ERROR_DETAIL_TYPE_URL) + lfield(2, lfield(1, b"\xff"))),
    ),
    "detail-no-cbor": lfield(1, vfield(1, 5) + lfield(3, lfield(1, ERROR_DETAIL_TYPE_URL))),
    "wire-type-7": tag(3, 7),
}


@pytest.mark.parametrize("data", MALFORMED_RESPONSES.values(), ids=MALFORMED_RESPONSES.keys())
def test_malformed_responses_are_internal(data: bytes):
    with pytest.raises(Internal, match=r"^malformed response from peer: "):
        pb_response_payload(data)


def test_a_cbor_response_is_read_as_cbor():
    """A server answers in CBOR before it has read a request (a refusal on stream 0)."""
    with pytest.raises(NotFound, match=r"^gone$"):
        pb_response_payload(encode_error(Code.NOT_FOUND, "gone"))


@settings(max_examples=200, deadline=None)
@given(
    code=st.sampled_from([c for c in Code if c != Code.OK]),
    message=_text,
    details=st.lists(
        st.one_of(st.integers(-5, 5), _text, st.binary(max_size=8), st.dictionaries(_text, _text)),
        max_size=3,
    ),
)
def test_status_round_trip(code: Code, message: str, details: list[Any]):
    with pytest.raises(RPCError) as info:
        pb_response_payload(encode_pb_error(code, message, details))
    assert (info.value.code, info.value.message, info.value.details) == (
        code,
        message,
        tuple(details),
    )


# -- the client connection in the protobuf envelope ------------------------------------------


def test_client_connection_speaks_protobuf():
    conn = ClientConnection(envelope="protobuf")
    envelope = request_envelope("s", "m", b"\x08\x01", metadata={"k": ["v"]}, envelope="protobuf")
    assert decode_pb_request(envelope) == Request("s", "m", b"\x08\x01", 0, {"k": ["v"]})
    stream_id, frame = conn.send_request(envelope)
    assert frame == encode_frame(stream_id, 1, 0, envelope)
    reply = encode_frame(stream_id, 2, 0, encode_pb_response(b"\x08\x02"))
    assert conn.receive_data(reply) == [ResponseReceived(stream_id, b"\x08\x02", None)]
    stream_id, _ = conn.send_request(envelope)
    error = encode_frame(stream_id, 2, 0, encode_pb_error(Code.NOT_FOUND, "no", [1]))
    [event] = conn.receive_data(error)
    assert type(event.error) is NotFound and event.error.details == (1,)


def test_protobuf_messages_are_bytes():
    with pytest.raises(TypeError):
        request_envelope("s", "m", {"a": 1}, envelope="protobuf")
    with pytest.raises(ValueError, match="unknown envelope"):
        ClientConnection(envelope="json")  # type: ignore[arg-type]


class _Pooled:
    def __init__(self, envelope: Any) -> None:
        self.conn = ClientConnection(envelope=envelope)


@pytest.mark.parametrize(
    ("reply", "max_calls"),
    [
        # VersionResponse {version: "x", limits {max_calls_per_connection: 7}, unknown 9}
        (b"\x0a\x01x\x22\x02\x10\x07\x48\x01", 7),
        (b"\x0a\x01x", DEFAULT_MAX_CALLS),  # no limits: what the client assumed
        (b"\x22\x02\x10\x00", DEFAULT_MAX_CALLS),
        (b"\x22\x05\x10", DEFAULT_MAX_CALLS),  # malformed: ignored, the connection taken
    ],
)
def test_the_pool_reads_the_call_limit_off_a_protobuf_probe(reply: bytes, max_calls: int):
    pool = ConnectionPool(_Pooled("protobuf"))
    assert request_envelope(PROBE_SERVICE, PROBE_METHOD, None, envelope="protobuf") == (
        encode_pb_request(PROBE_SERVICE, PROBE_METHOD, b"", 0, None)
    )
    assert pool.opened(_Pooled("protobuf"), reply)
    assert pool.max_calls == max_calls
