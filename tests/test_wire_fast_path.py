"""The client core reads a success envelope without a CBOR decoder, as the decoder would."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sandboxd
from sandboxd.wire import MAX_PAYLOAD, decode_response, encode_error, encode_response
from sandboxd.wire._envelope import response_payload

OK_HEAD = b"\xa1\x67payload"


def outcome(decode: Callable[[bytes], bytes], envelope: bytes) -> object:
    try:
        return decode(envelope)
    except sandboxd.RPCError as err:
        return (type(err), err.message, err.details)


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536, MAX_PAYLOAD])
def test_response_payload_reads_success_envelopes_of_every_size(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert response_payload(encode_response(payload)) == payload


def byte_string_heads(length: int) -> list[bytes]:
    """Every definite head CBOR allows for a byte string of ``length`` bytes."""
    heads = [bytes((0x40 + length,))] if length < 24 else []
    for head, size in ((0x58, 1), (0x59, 2), (0x5A, 4), (0x5B, 8)):
        if length < 256**size:
            heads.append(bytes((head,)) + length.to_bytes(size, "big"))
    return heads


envelopes = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=40).map(lambda rest: OK_HEAD + rest),
    st.builds(
        lambda payload, pick, cut, extra: (
            (OK_HEAD + (heads := byte_string_heads(len(payload)))[pick % len(heads)] + payload)[
                : None if cut == 0 else -cut
            ]
            + extra
        ),
        st.binary(max_size=40),
        st.integers(0, 4),
        st.integers(0, 3),
        st.binary(max_size=2),
    ),
    st.binary(max_size=40).map(lambda payload: OK_HEAD + b"\x5f" + cbor2.dumps(payload) + b"\xff"),
    st.builds(lambda code, message: encode_error(code, message), st.integers(0, 20), st.text()),
    st.dictionaries(st.sampled_from(["payload", "status", "x"]), st.binary(max_size=8)).map(
        cbor2.dumps
    ),
)


@given(envelopes)
def test_response_payload_agrees_with_decode_response(envelope: bytes) -> None:
    assert outcome(response_payload, envelope) == outcome(decode_response, envelope)
