"""Tests for the CBOR envelope and strict CBOR decoding.

Everything that comes off the wire goes through ``loads_strict``; a user relies on it to turn
every malformed or hostile input into :class:`InvalidArgument` (never another exception, never
a huge allocation), and on the request/response envelopes to round-trip.
"""

from __future__ import annotations

import contextlib
import io
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.wire import (
    MAX_DEPTH,
    Aborted,
    AlreadyExists,
    Cancelled,
    Code,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Request,
    ResourceExhausted,
    RPCError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    decode_request,
    decode_response,
    dumps,
    encode_error,
    encode_request,
    encode_response,
    loads_message,
    loads_strict,
)

U64_MAX = 2**64 - 1

# The error class named after each gRPC code (the wire contract).
ERROR_FOR_CODE: dict[Code, type[RPCError]] = {
    Code.CANCELLED: Cancelled,
    Code.UNKNOWN: Unknown,
    Code.INVALID_ARGUMENT: InvalidArgument,
    Code.DEADLINE_EXCEEDED: DeadlineExceeded,
    Code.NOT_FOUND: NotFound,
    Code.ALREADY_EXISTS: AlreadyExists,
    Code.PERMISSION_DENIED: PermissionDenied,
    Code.RESOURCE_EXHAUSTED: ResourceExhausted,
    Code.FAILED_PRECONDITION: FailedPrecondition,
    Code.ABORTED: Aborted,
    Code.OUT_OF_RANGE: OutOfRange,
    Code.UNIMPLEMENTED: Unimplemented,
    Code.INTERNAL: Internal,
    Code.UNAVAILABLE: Unavailable,
    Code.DATA_LOSS: DataLoss,
    Code.UNAUTHENTICATED: Unauthenticated,
}


def test_every_error_code_has_its_class() -> None:
    assert set(ERROR_FOR_CODE) == set(Code) - {Code.OK}


# -- strategies ------------------------------------------------------------------------------

metadata_st = st.dictionaries(st.text(max_size=20), st.lists(st.text(max_size=20), max_size=4))

# CBOR-friendly values that compare equal after a round trip (no NaN).
cbor_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), U64_MAX),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
cbor_values = st.recursive(
    cbor_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=8,
)


# -- request envelope: round trip -------------------------------------------------------------


@given(
    service=st.text(),
    method=st.text(),
    payload=st.binary(max_size=200),
    timeout_nano=st.integers(0, U64_MAX),
    metadata=metadata_st,
)
def test_request_round_trip(
    service: str,
    method: str,
    payload: bytes,
    timeout_nano: int,
    metadata: dict[str, list[str]],
) -> None:
    data = encode_request(service, method, payload, timeout_nano, metadata)
    req = decode_request(data)
    assert type(req) is Request
    # An empty payload and an empty map are the same (empty) message: the envelope omits it.
    expected_payload = b"" if payload in (b"", b"\xa0") else payload
    assert req == Request(service, method, expected_payload, timeout_nano, metadata)
    assert req.service == service
    assert req.method == method
    assert req.payload == expected_payload
    assert req.timeout_nano == timeout_nano
    assert dict(req.metadata) == metadata


def test_request_defaults() -> None:
    req = decode_request(encode_request("svc", "M"))
    assert req == Request("svc", "M", b"", 0, {})


@pytest.mark.parametrize("payload", [b"", b"\xa0"])
def test_request_empty_payload_is_omitted(payload: bytes) -> None:
    env = cbor2.loads(encode_request("s", "m", payload))
    assert "payload" not in env
    assert decode_request(encode_request("s", "m", payload)).payload == b""


def test_request_payload_carried_verbatim() -> None:
    inner = dumps({"id": "abc", "n": 3})
    assert decode_request(encode_request("s", "m", inner)).payload == inner


def test_request_metadata_accepts_any_sequence() -> None:
    req = decode_request(encode_request("s", "m", metadata={"k": ("a", "b")}))
    assert list(req.metadata["k"]) == ["a", "b"]


# -- request envelope: errors -------------------------------------------------------------------


def _bad_request(env: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as excinfo:
        decode_request(cbor2.dumps(env))
    assert type(excinfo.value) is InvalidArgument
    assert excinfo.value.code == Code.INVALID_ARGUMENT
    return excinfo.value


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"method": "m"}, "service"),
        ({"service": None, "method": "m"}, "service"),
        ({"service": b"s", "method": "m"}, "service"),
        ({"service": 1, "method": "m"}, "service"),
        ({"service": ["s"], "method": "m"}, "service"),
        ({"service": "s"}, "method"),
        ({"service": "s", "method": b"m"}, "method"),
        ({"service": "s", "method": 2}, "method"),
        ({"service": "s", "method": "m", "payload": "text"}, "payload"),
        ({"service": "s", "method": "m", "payload": {}}, "payload"),
        ({"service": "s", "method": "m", "payload": 0}, "payload"),
        ({"service": "s", "method": "m", "payload": None}, "payload"),
        ({"service": "s", "method": "m", "timeout_nano": -1}, "timeout_nano"),
        ({"service": "s", "method": "m", "timeout_nano": -(2**64)}, "timeout_nano"),
        ({"service": "s", "method": "m", "timeout_nano": 1.5}, "timeout_nano"),
        ({"service": "s", "method": "m", "timeout_nano": "5"}, "timeout_nano"),
        ({"service": "s", "method": "m", "timeout_nano": True}, "timeout_nano"),
        ({"service": "s", "method": "m", "timeout_nano": None}, "timeout_nano"),
        ({"service": "s", "method": "m", "metadata": ["a"]}, "metadata"),
        ({"service": "s", "method": "m", "metadata": "a"}, "metadata"),
        ({"service": "s", "method": "m", "metadata": {"k": "v"}}, "metadata"),
        ({"service": "s", "method": "m", "metadata": {"k": [1]}}, "metadata"),
        ({"service": "s", "method": "m", "metadata": {"k": ["v", b"w"]}}, "metadata"),
        ({"service": "s", "method": "m", "metadata": {"k": {"v": "w"}}}, "metadata"),
        ({"service": "s", "method": "m", "metadata": {1: ["v"]}}, "metadata"),
        ({"service": "s", "method": "m", "extra": 1}, "extra"),
        ({"service": "s", "method": "m", "Service": "s"}, "Service"),
        ({"service": "s", "method": "m", 5: 1}, "5"),
    ],
)
def test_request_field_errors_name_the_field(env: object, field: str) -> None:
    err = _bad_request(env)
    assert field in str(err)


@pytest.mark.parametrize("env", [["s", "m"], "s", 1, None, b"", []])
def test_request_not_a_map(env: object) -> None:
    err = _bad_request(env)
    assert "map" in str(err)


def test_request_unknown_key_reported_even_with_valid_fields() -> None:
    err = _bad_request({"service": "s", "method": "m", "payload": b"", "deadline": 5})
    assert "deadline" in str(err)


def test_request_not_cbor() -> None:
    for data in (b"", b"\xff", b"\xa1", encode_request("s", "m") + b"\x00"):
        with pytest.raises(InvalidArgument):
            decode_request(data)


# -- response envelope ---------------------------------------------------------------------------


@given(payload=st.binary(max_size=300))
def test_response_round_trip(payload: bytes) -> None:
    assert decode_response(encode_response(payload)) == payload


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536, 70000, 2**22])
def test_response_envelope_is_what_cbor2_encodes(size: int) -> None:
    # Written out by hand: byte for byte what cbor2 gives, at every length boundary.
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert encode_response(payload) == cbor2.dumps({"payload": payload})


def test_response_without_payload_is_empty() -> None:
    assert decode_response(cbor2.dumps({})) == b""


@pytest.mark.parametrize("code", sorted(set(Code) - {Code.OK}))
def test_error_round_trip_for_every_code(code: Code) -> None:
    details = [{"reason": "x", "n": 1}, "two", b"\x03", [4, None]]
    with pytest.raises(RPCError) as excinfo:
        decode_response(encode_error(code, f"failed with {code.name}", details))
    err = excinfo.value
    assert type(err) is ERROR_FOR_CODE[code]
    assert err.code == code
    assert err.message == f"failed with {code.name}"
    assert str(err) == f"failed with {code.name}"
    assert err.details == tuple(details)


@given(
    code=st.sampled_from(sorted(set(Code) - {Code.OK})),
    message=st.text(max_size=50),
    details=st.lists(cbor_values, max_size=4),
)
def test_error_round_trip_property(code: Code, message: str, details: list[Any]) -> None:
    with pytest.raises(RPCError) as excinfo:
        decode_response(encode_error(code, message, details))
    assert type(excinfo.value) is ERROR_FOR_CODE[code]
    assert excinfo.value.message == message
    assert excinfo.value.details == tuple(details)


def test_error_status_ok_is_not_an_error() -> None:
    assert decode_response(encode_error(Code.OK, "")) == b""


@pytest.mark.parametrize("code", [99, 17, -1, 2**40])
def test_unknown_status_code_becomes_unknown(code: int) -> None:
    with pytest.raises(Unknown) as excinfo:
        decode_response(encode_error(code, "boom", ["d"]))
    err = excinfo.value
    assert err.code == Code.UNKNOWN
    # The number is kept, and so is the message.
    assert str(code) in str(err)
    assert "boom" in str(err)
    assert err.details == ("d",)


def test_from_status_matches_the_wire() -> None:
    for code, cls in ERROR_FOR_CODE.items():
        err = RPCError.from_status(code, "m", [1])
        assert type(err) is cls
        assert err.details == (1,)
    assert type(RPCError.from_status(99, "m")) is Unknown


@pytest.mark.parametrize(
    "env",
    [
        [],
        "x",
        {"payload": "text"},
        {"status": "bad"},
        {"status": {"code": "5"}},
        {"status": {"code": 5, "message": 1}},
        {"status": {"code": 5, "details": "not a list"}},
    ],
)
def test_malformed_response_is_internal(env: object) -> None:
    # The peer, not the caller, broke the protocol.
    with pytest.raises(Internal):
        decode_response(cbor2.dumps(env))


def test_malformed_response_bytes_are_internal() -> None:
    for data in (b"", b"\xff", b"\x9f\x01\xff", encode_response(b"x") + b"\x00"):
        with pytest.raises(Internal):
            decode_response(data)


# -- loads_strict: refusals ---------------------------------------------------------------------


def _refused(data: bytes) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as excinfo:
        loads_strict(data)
    # Exactly InvalidArgument, not something cbor2 let through.
    assert type(excinfo.value) is InvalidArgument
    return excinfo.value


@pytest.mark.parametrize(
    "hex_data",
    [
        pytest.param("9f01ff", id="indefinite-array"),
        pytest.param("9fff", id="indefinite-empty-array"),
        pytest.param("bf616101ff", id="indefinite-map"),
        pytest.param("5f4101ff", id="indefinite-bytes"),
        pytest.param("7f6161ff", id="indefinite-text"),
        pytest.param("819f01ff", id="nested-indefinite-array"),
    ],
)
def test_indefinite_lengths_refused(hex_data: str) -> None:
    _refused(bytes.fromhex(hex_data))


@pytest.mark.parametrize(
    "hex_data",
    [
        pytest.param("a2616101616102", id="text-keys"),
        pytest.param("a201010102", id="int-keys"),
        pytest.param("a20101180102", id="int-keys-non-shortest"),
        pytest.param("a2780161016161 02".replace(" ", ""), id="text-keys-non-shortest"),
        pytest.param("81a2616101616102", id="nested"),
    ],
)
def test_duplicate_map_keys_refused(hex_data: str) -> None:
    _refused(bytes.fromhex(hex_data))


def test_distinct_map_keys_accepted() -> None:
    assert loads_strict(bytes.fromhex("a2616101616202")) == {"a": 1, "b": 2}


# Depth as enforced (checked empirically against cbor2): the depth of a data item is the number
# of arrays, maps and tags that enclose it.  Items at depth MAX_DEPTH (32) are accepted; an item
# at depth 33 is refused.  So 32 nested one-element arrays around an integer are accepted, 33
# are refused.  (An empty innermost container has no items inside it and adds no depth.)
def test_max_depth_value() -> None:
    assert MAX_DEPTH == 32


def test_depth_32_arrays_accepted() -> None:
    value = loads_strict(b"\x81" * 32 + b"\x01")
    for _ in range(32):
        assert type(value) is list
        assert len(value) == 1
        value = value[0]
    assert value == 1


def test_depth_33_arrays_refused() -> None:
    err = _refused(b"\x81" * 33 + b"\x01")
    assert "depth" in str(err)


def test_depth_boundary_for_maps() -> None:
    assert loads_strict(b"\xa1\x61a" * 32 + b"\x01") is not None
    _refused(b"\xa1\x61a" * 33 + b"\x01")


def test_depth_boundary_mixed_containers() -> None:
    assert loads_strict((b"\x81" + b"\xa1\x61a") * 16 + b"\x01") is not None
    _refused((b"\x81" + b"\xa1\x61a") * 16 + b"\x81\x01")


def test_tags_count_toward_depth() -> None:
    epoch = bytes.fromhex("c11a5f5e1000")
    assert isinstance(loads_strict(b"\x81" * 31 + epoch), list)
    _refused(b"\x81" * 32 + epoch)


def test_very_deep_nesting_refused_without_recursion_error() -> None:
    _refused(b"\x81" * 100_000 + b"\x01")
    _refused(b"\xa1\x61a" * 100_000 + b"\x01")


@pytest.mark.parametrize(
    "hex_data",
    [
        pytest.param("d81c01", id="tag28-shareable"),
        pytest.param("d81c8101", id="tag28-shareable-array"),
        pytest.param("d81d00", id="tag29-sharedref"),
        pytest.param("d81c81d81d00", id="tag28-29-cycle"),
        pytest.param("d8196161", id="tag25-stringref"),
        pytest.param("d81901", id="tag25-stringref-int"),
        pytest.param("d90100a0", id="tag256-stringref-namespace"),
        pytest.param("d9010082616161d81900", id="tag256-with-tag25"),
    ],
)
def test_reference_tags_refused(hex_data: str) -> None:
    _refused(bytes.fromhex(hex_data))


@pytest.mark.parametrize(
    "hex_data",
    [
        pytest.param("c074323032302d30392d31335431323a32363a34305a", id="tag0-datetime-string"),
        pytest.param("c24101", id="tag2-bignum"),
        pytest.param("c34100", id="tag3-negative-bignum"),
        pytest.param("c482210a", id="tag4-decimal"),
        pytest.param("c5820a01", id="tag5-bigfloat"),
        pytest.param("d818450102030405", id="tag24-embedded-cbor"),
        pytest.param("d82063612f62", id="tag32-uri"),
        pytest.param("d8236161", id="tag35-regex"),
        pytest.param("d8248261616162", id="tag36-mime"),
        pytest.param("d82550" + "00" * 16, id="tag37-uuid"),
        pytest.param("d83444c0a80001", id="tag52-ipv4"),
        pytest.param("d864194e20", id="tag100-date"),
        pytest.param("d9010283010203", id="tag258-set"),
        pytest.param("d9010444c0a80001", id="tag260-address"),
        pytest.param("d90105a144c0a800001818", id="tag261-network"),
        pytest.param("d903ec6a323032302d30392d3133", id="tag1004-date-string"),
        pytest.param("d9d9f701", id="tag55799-self-described"),
        pytest.param("d9ffff01", id="unknown-tag-65535"),
        pytest.param("da0001000001", id="unknown-tag-65536"),
        pytest.param("dbffffffffffffffff01", id="unknown-tag-u64-max"),
        pytest.param("d86401", id="tag100-bad-content"),
        pytest.param("d9a7f8820102", id="tag43000-complex"),
    ],
)
def test_other_tags_refused(hex_data: str) -> None:
    err = _refused(bytes.fromhex(hex_data))
    assert "tag" in str(err)


@given(
    tag=st.integers(0, U64_MAX).filter(lambda t: t != 1),
    content=st.sampled_from(["01", "6161", "4100", "80", "a0", "820102", "f6"]),
)
def test_any_tag_but_1_refused(tag: int, content: str) -> None:
    data = _tag_head(tag) + bytes.fromhex(content)
    try:
        value = loads_strict(data)
    except InvalidArgument:
        return
    pytest.fail(f"tag {tag} with content {content} was accepted as {value!r}")


def _tag_head(tag: int) -> bytes:
    """The CBOR head of ``tag`` (the encoding of tag(null) without the null)."""
    return cbor2.dumps(cbor2.CBORTag(tag, None))[:-1]


# Contents of many shapes, so a tag cbor2 decodes by itself finds content it would accept.
_TAG_CONTENTS = [
    "01",
    "20",
    "1a5f5e1000",
    "fb41d7d78400000000",
    "6161",
    "74323032302d30392d31335431323a32363a34305a",
    "6a323032302d30392d3133",
    "4101",
    "44c0a80001",
    "50" + "00" * 16,
    "80",
    "a0",
    "820102",
    "82210a",
    "8201fa3f800000",
    "8261616162",
    "83010203",
    "a144c0a800001818",
    "a16161" + "01",
    "f6",
    "f5",
]


def _natively_decoded_tags(limit: int) -> list[int]:
    """Tags below ``limit`` that cbor2 decodes by itself, i.e. without calling the tag hook."""
    native = []
    for tag in range(limit):
        called: list[int] = []

        def hook(t: cbor2.CBORTag, immutable: bool, called: list[int] = called) -> None:
            called.append(t.tag)

        with contextlib.suppress(Exception):
            cbor2.CBORDecoder(io.BytesIO(_tag_head(tag) + b"\x01"), tag_hook=hook).decode()
        if not called:
            native.append(tag)
    return native


def test_every_tag_cbor2_decodes_itself_is_refused() -> None:
    # Probe the installed cbor2 for the tags it handles without the tag hook: loads_strict
    # must refuse each of them (but 1) whatever the content, so a cbor2 upgrade that learns a
    # new tag cannot open a hole.
    native = _natively_decoded_tags(70_000)
    # The probe itself works: these are tags cbor2 is known to decode.
    assert {1, 2, 28, 29, 55799} <= set(native)
    accepted = []
    for tag in native:
        if tag == 1:
            continue
        for content in _TAG_CONTENTS:
            try:
                value = loads_strict(_tag_head(tag) + bytes.fromhex(content))
            except InvalidArgument:
                continue
            accepted.append((tag, content, value))
    assert accepted == []


def test_trailing_bytes_refused() -> None:
    err = _refused(bytes.fromhex("0102"))
    assert "trailing" in str(err)
    _refused(cbor2.dumps({"a": 1}) + b"\x00")
    _refused(cbor2.dumps(b"x") + b"\xff")


@pytest.mark.parametrize(
    "hex_data",
    [
        "",
        "18",
        "1901",
        "81",
        "8201",
        "a1",
        "a16161",
        "43",
        "4301",
        "6361",
        "c1",
        "fb3ff0",
        "9a00000002",
    ],
)
def test_truncated_items_refused(hex_data: str) -> None:
    _refused(bytes.fromhex(hex_data))


@pytest.mark.parametrize(
    "hex_data",
    [
        "5bffffffffffffffff",  # byte string of 2**64-1 bytes
        "5b7fffffffffffffff",
        "5affffffff",  # 4 GiB
        "5a10000000" + "00" * 64,  # 256 MiB declared, 64 bytes present
        "7bffffffffffffffff",  # text string
        "9bffffffffffffffff",  # array
        "bbffffffffffffffff",  # map
        "9a10000000" + "01" * 64,
    ],
)
def test_huge_declared_length_fails_fast_without_allocating(hex_data: str) -> None:
    data = bytes.fromhex(hex_data)
    tracemalloc.start()
    try:
        _refused(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The declared size (hundreds of MiB and up) is never allocated up front.
    assert peak < 16 * 1024 * 1024


def test_invalid_utf8_text_refused() -> None:
    _refused(bytes.fromhex("62c328"))


@pytest.mark.parametrize("hex_data", ["1c", "1f", "ff", "f818", "5c", "7c", "9c", "bc", "dc"])
def test_reserved_and_stray_initial_bytes_refused(hex_data: str) -> None:
    _refused(bytes.fromhex(hex_data))


@pytest.mark.parametrize("hex_data", ["a18001", "a1a00101"])
def test_unhashable_looking_keys_do_not_escape(hex_data: str) -> None:
    # Arrays and maps as keys: either decoded (to something hashable) or InvalidArgument.
    with contextlib.suppress(InvalidArgument):
        value = loads_strict(bytes.fromhex(hex_data))
        for key in value:
            hash(key)


def test_loads_strict_names_what() -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        loads_strict(b"\xff", "widget body")
    assert "widget body" in str(excinfo.value)


# -- loads_strict: what is accepted ---------------------------------------------------------------


def test_epoch_time_tag_accepted_as_aware_datetime() -> None:
    value = loads_strict(bytes.fromhex("c11a5f5e1000"))  # 1(1600000000)
    assert isinstance(value, datetime)
    assert value.tzinfo is not None
    assert value.utcoffset() is not None
    assert value == datetime.fromtimestamp(1_600_000_000, UTC)


def test_epoch_time_float_accepted() -> None:
    value = loads_strict(bytes.fromhex("c1fb41d7d78400000000"))  # 1(1600000000.0)
    assert isinstance(value, datetime)
    assert value.tzinfo is not None
    assert value == datetime.fromtimestamp(1_600_000_000, UTC)


@pytest.mark.parametrize("hex_data", ["c16161", "c1f97e00", "c1f97c00", "c11bffffffffffffffff"])
def test_bad_epoch_time_refused(hex_data: str) -> None:
    _refused(bytes.fromhex(hex_data))


def test_dumps_datetime_round_trips_through_loads_strict() -> None:
    when = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    assert loads_strict(dumps({"at": when})) == {"at": when}


@settings(max_examples=100)
@given(value=cbor_values)
def test_plain_values_round_trip(value: Any) -> None:
    assert loads_strict(cbor2.dumps(value)) == value


# -- fuzzing: only InvalidArgument escapes -----------------------------------------------------


@settings(max_examples=200)
@given(data=st.binary(max_size=200))
def test_loads_strict_arbitrary_bytes(data: bytes) -> None:
    try:
        loads_strict(data)
    except InvalidArgument as exc:
        assert type(exc) is InvalidArgument


# Random bytes rarely look like CBOR; also mutate real encodings.
@st.composite
def mutated_cbor(draw: st.DrawFn) -> bytes:
    data = bytearray(cbor2.dumps(draw(cbor_values)))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(max_examples=100)
@given(data=mutated_cbor())
def test_loads_strict_mutated_cbor(data: bytes) -> None:
    try:
        loads_strict(data)
    except InvalidArgument as exc:
        assert type(exc) is InvalidArgument


def _check_request(data: bytes) -> None:
    try:
        req = decode_request(data)
    except InvalidArgument as exc:
        assert type(exc) is InvalidArgument
        return
    assert type(req) is Request
    assert type(req.service) is str
    assert type(req.method) is str
    assert type(req.payload) is bytes
    assert type(req.timeout_nano) is int
    assert req.timeout_nano >= 0
    for key, values in req.metadata.items():
        assert type(key) is str
        assert all(type(v) is str for v in values)


@settings(max_examples=200)
@given(data=st.binary(max_size=200))
def test_decode_request_arbitrary_bytes(data: bytes) -> None:
    _check_request(data)


_request_keys = st.sampled_from(["service", "method", "payload", "timeout_nano", "metadata"])


@settings(max_examples=100)
@given(env=st.dictionaries(st.one_of(_request_keys, st.text(max_size=3)), cbor_values, max_size=6))
def test_decode_request_arbitrary_maps(env: dict[str, Any]) -> None:
    _check_request(cbor2.dumps(env))


def _check_response(data: bytes) -> None:
    try:
        payload = decode_response(data)
    except RPCError as exc:
        assert isinstance(exc, RPCError)
        assert type(exc) in set(ERROR_FOR_CODE.values())
        return
    assert type(payload) is bytes


@settings(max_examples=200)
@given(data=st.binary(max_size=200))
def test_decode_response_arbitrary_bytes(data: bytes) -> None:
    _check_response(data)


_status_st = st.one_of(
    cbor_values,
    st.dictionaries(st.sampled_from(["code", "message", "details"]), cbor_values),
)


@settings(max_examples=100)
@given(
    env=st.dictionaries(
        st.sampled_from(["status", "payload", "other"]),
        st.one_of(_status_st, st.binary(max_size=20)),
    )
)
def test_decode_response_arbitrary_maps(env: dict[str, Any]) -> None:
    _check_response(cbor2.dumps(env))


# -- loads_message --------------------------------------------------------------------------------


def test_loads_message_empty_is_empty_map() -> None:
    assert loads_message(b"") == {}


def test_loads_message_map() -> None:
    assert loads_message(dumps({"id": "x", "n": [1, 2]})) == {"id": "x", "n": [1, 2]}


@pytest.mark.parametrize("value", [[1, 2], [], "text", 5, b"bytes", None])
def test_loads_message_not_a_map(value: object) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        loads_message(cbor2.dumps(value))
    assert "map" in str(excinfo.value)


@pytest.mark.parametrize("value", [{1: "x"}, {b"k": 1}, {"ok": 1, 2: 2}, {None: 1}])
def test_loads_message_non_text_key(value: object) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        loads_message(cbor2.dumps(value))
    assert "key" in str(excinfo.value)


def test_loads_message_is_strict() -> None:
    with pytest.raises(InvalidArgument):
        loads_message(bytes.fromhex("bf616101ff"))
    with pytest.raises(InvalidArgument):
        loads_message(bytes.fromhex("a2616101616102"))


def test_loads_message_names_what() -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        loads_message(cbor2.dumps([1]), "CreateRequest")
    assert "CreateRequest" in str(excinfo.value)
