"""Tests for the sans-io ttrpc frame layer: ``encode_frame`` and ``FrameDecoder``.

A frame is ``u32 length | u32 stream id | u8 type | u8 flags`` (big-endian) followed by
``length`` payload bytes.  The decoder must reassemble frames from chunks of any size, refuse
an oversized frame from its header alone (never buffering its payload) and then carry on with
the next frame on the connection.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.wire import (
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    Code,
    Frame,
    FrameDecoder,
    OversizedFrame,
    ResourceExhausted,
    encode_frame,
)

U32_MAX = 2**32 - 1

# -- strategies ------------------------------------------------------------------------------

frames = st.builds(
    Frame,
    stream_id=st.integers(0, U32_MAX),
    type=st.integers(0, 255),
    flags=st.integers(0, 255),
    payload=st.binary(max_size=3 * 1024),
)


def _encode_all(fs: list[Frame]) -> bytes:
    return b"".join(encode_frame(f.stream_id, f.type, f.flags, f.payload) for f in fs)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed: empty chunks)."""
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _feed_chunks(dec: FrameDecoder, chunks: list[bytes]) -> list[Frame | OversizedFrame]:
    events: list[Frame | OversizedFrame] = []
    for chunk in chunks:
        events.extend(dec.feed(chunk))
    return events


def _reference_parse(stream: bytes, max_payload: int) -> list[Frame | OversizedFrame]:
    """An independent, whole-stream model of what the decoder must report.

    Complete frames in order; a frame whose declared length is over ``max_payload`` is
    reported as soon as its header is complete and its payload (as much as there is) skipped;
    an incomplete trailing frame is not reported.
    """
    events: list[Frame | OversizedFrame] = []
    pos = 0
    while len(stream) - pos >= 10:
        length, stream_id, ftype, flags = struct.unpack(">IIBB", stream[pos : pos + 10])
        pos += 10
        if length > max_payload:
            events.append(OversizedFrame(stream_id, ftype, flags, length))
            pos += length  # may run past the end: the rest would be skipped as it arrives
            continue
        if len(stream) - pos < length:
            break
        events.append(Frame(stream_id, ftype, flags, stream[pos : pos + length]))
        pos += length
    return events


# -- the header format ------------------------------------------------------------------------


def test_header_layout_is_big_endian_length_stream_type_flags() -> None:
    assert encode_frame(1, 1, 0, b"abc") == bytes.fromhex("00000003000000010100") + b"abc"


def test_header_field_order_and_width() -> None:
    # Distinct values in every field, so a swapped or narrowed field would show.
    data = encode_frame(0x01020304, 0xA5, 0x5A, b"xy")
    assert data == bytes.fromhex("0000000201020304a55a") + b"xy"
    assert HEADER_SIZE == 10
    assert HEADER.size == 10


def test_header_extremes() -> None:
    data = encode_frame(U32_MAX, 255, 255, b"")
    assert data == bytes.fromhex("00000000ffffffffffff")
    assert FrameDecoder().feed(data) == [Frame(U32_MAX, 255, 255, b"")]


def test_empty_payload_frame() -> None:
    dec = FrameDecoder()
    assert dec.feed(encode_frame(7, 3, 4, b"")) == [Frame(7, 3, 4, b"")]
    assert dec.buffered == 0


# -- reassembly ------------------------------------------------------------------------------


@settings(deadline=None)  # per-example time depends on machine load, not on the code
@given(fs=st.lists(frames, max_size=8), data=st.data())
def test_any_chunking_yields_the_same_frames(fs: list[Frame], data: st.DataObject) -> None:
    stream = _encode_all(fs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    dec = FrameDecoder()
    events = _feed_chunks(dec, _split(stream, cuts))
    assert events == fs
    assert all(type(e) is Frame for e in events)
    assert dec.buffered == 0
    assert dec.discarding == 0


@settings(max_examples=50, deadline=None)
@given(fs=st.lists(frames, max_size=4))
def test_byte_at_a_time_yields_the_same_frames(fs: list[Frame]) -> None:
    stream = _encode_all(fs)
    dec = FrameDecoder()
    events = _feed_chunks(dec, [stream[i : i + 1] for i in range(len(stream))])
    assert events == fs
    assert dec.buffered == 0


@given(fs=st.lists(frames, min_size=1, max_size=4))
def test_whole_stream_in_one_chunk(fs: list[Frame]) -> None:
    dec = FrameDecoder()
    assert dec.feed(_encode_all(fs)) == fs
    assert dec.buffered == 0


@given(f=frames, cut=st.integers(0, 9))
def test_incomplete_frame_is_held_not_reported(f: Frame, cut: int) -> None:
    data = encode_frame(*f)
    dec = FrameDecoder()
    # Everything but the last byte: nothing to report yet, the bytes are kept.
    assert dec.feed(data[:-1]) == []
    assert dec.buffered == len(data) - 1
    assert dec.feed(data[-1:]) == [f]
    assert dec.buffered == 0
    # A header cut anywhere is held too.
    dec2 = FrameDecoder()
    assert dec2.feed(data[:cut]) == []
    assert dec2.buffered == cut
    assert dec2.feed(data[cut:]) == [f]


def test_feeding_empty_bytes_is_harmless() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"") == []
    frame = encode_frame(1, 2, 3, b"hello")
    assert dec.feed(frame[:4]) == []
    assert dec.feed(b"") == []
    assert dec.feed(frame[4:]) == [Frame(1, 2, 3, b"hello")]
    assert dec.feed(b"") == []
    assert dec.buffered == 0


def test_unknown_frame_types_and_flags_reach_the_caller() -> None:
    # ``type`` stays a plain int: frames of a type this build does not know are not an error.
    dec = FrameDecoder()
    assert dec.feed(encode_frame(5, 200, 0xF0, b"?")) == [Frame(5, 200, 0xF0, b"?")]


def test_frame_payload_is_immutable_bytes() -> None:
    dec = FrameDecoder()
    chunk = bytearray(encode_frame(1, 1, 0, b"abc"))
    (frame,) = dec.feed(bytes(chunk))
    assert type(frame.payload) is bytes
    # Later input must not change a frame already returned.
    dec.feed(encode_frame(1, 1, 0, b"xyz")[:12])
    assert frame.payload == b"abc"


# -- hostile input -----------------------------------------------------------------------------

# A stream built from pieces that make the decoder do interesting things: valid frames (some
# over the small limit), raw headers declaring a length near the limit, and raw garbage.
_small_frames = st.builds(
    lambda sid, t, fl, p: encode_frame(sid, t, fl, p),
    st.integers(0, U32_MAX),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=80),
)
_raw_headers = st.builds(
    lambda n, sid, t, fl: HEADER.pack(n, sid, t, fl),
    st.integers(0, 100),
    st.integers(0, U32_MAX),
    st.integers(0, 255),
    st.integers(0, 255),
)
_pieces = st.one_of(_small_frames, _raw_headers, st.binary(max_size=40))


@settings(max_examples=100, deadline=None)
@given(
    pieces=st.lists(_pieces, max_size=12),
    max_payload=st.integers(0, 64),
    data=st.data(),
)
def test_hostile_bytes_in_any_chunks(
    pieces: list[bytes], max_payload: int, data: st.DataObject
) -> None:
    stream = b"".join(pieces)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    dec = FrameDecoder(max_payload=max_payload)
    events: list[Frame | OversizedFrame] = []
    for chunk in _split(stream, cuts):
        events.extend(dec.feed(chunk))  # never raises
        # Memory stays bounded: at most one incomplete frame of an allowed size is held.
        assert dec.buffered < HEADER_SIZE + max_payload
        assert not (dec.buffered and dec.discarding)
    for e in events:
        assert type(e) in (Frame, OversizedFrame)
        if type(e) is Frame:
            assert len(e.payload) <= max_payload
        else:
            assert e.length > max_payload
    # Chunking does not change what is reported.
    assert events == _reference_parse(stream, max_payload)


@given(stream=st.binary(max_size=2000), max_payload=st.integers(0, 64), data=st.data())
def test_arbitrary_bytes_never_raise(stream: bytes, max_payload: int, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    dec = FrameDecoder(max_payload=max_payload)
    events = _feed_chunks(dec, _split(stream, cuts))
    for e in events:
        assert type(e) in (Frame, OversizedFrame)
        if type(e) is Frame:
            assert len(e.payload) <= max_payload
    assert events == _reference_parse(stream, max_payload)


# -- the size limit ------------------------------------------------------------------------------


def test_max_payload_is_4_mib() -> None:
    assert MAX_PAYLOAD == 4 * 1024 * 1024 == 4194304


def test_oversized_frame_refused_from_header_alone() -> None:
    length = MAX_PAYLOAD + 1  # 4194305
    header = HEADER.pack(length, 77, 1, 0)
    dec = FrameDecoder()

    assert dec.feed(header) == [OversizedFrame(stream_id=77, type=1, flags=0, length=4194305)]
    # Nothing of the payload is buffered: the decoder will skip it as it arrives.
    assert dec.buffered == 0
    assert dec.discarding == 4194305

    # The payload arrives in chunks, then a valid frame follows in the same chunk as its tail.
    chunk = b"\xaa" * 65536
    remaining = length
    while remaining > 1000:
        n = min(len(chunk), remaining - 1000)
        assert dec.feed(chunk[:n]) == []
        remaining -= n
        assert dec.discarding == remaining
        assert dec.buffered == 0
    follow = encode_frame(78, 2, 1, b"still alive")
    assert dec.feed(b"\xaa" * remaining + follow) == [Frame(78, 2, 1, b"still alive")]
    assert dec.discarding == 0
    assert dec.buffered == 0
    # ...and the connection keeps working.
    assert dec.feed(encode_frame(79, 3, 0, b"x")) == [Frame(79, 3, 0, b"x")]


def test_oversized_header_split_across_chunks() -> None:
    header = HEADER.pack(MAX_PAYLOAD + 1, 9, 1, 0)
    dec = FrameDecoder()
    assert dec.feed(header[:5]) == []
    assert dec.feed(header[5:]) == [OversizedFrame(9, 1, 0, MAX_PAYLOAD + 1)]
    assert dec.buffered == 0


def test_oversized_then_valid_frame_in_one_chunk() -> None:
    # With a small limit the whole oversized frame and the next one fit in one chunk.
    dec = FrameDecoder(max_payload=4)
    stream = HEADER.pack(5, 1, 1, 0) + b"12345" + encode_frame(2, 1, 0, b"1234")
    assert dec.feed(stream) == [OversizedFrame(1, 1, 0, 5), Frame(2, 1, 0, b"1234")]
    assert dec.buffered == 0
    assert dec.discarding == 0


def test_largest_declared_length_is_refused() -> None:
    dec = FrameDecoder()
    assert dec.feed(HEADER.pack(U32_MAX, 1, 1, 0)) == [OversizedFrame(1, 1, 0, U32_MAX)]
    assert dec.buffered == 0
    assert dec.discarding == U32_MAX


def test_frame_of_exactly_max_payload_is_accepted() -> None:
    payload = bytes(range(256)) * (MAX_PAYLOAD // 256)
    assert len(payload) == 4194304
    data = encode_frame(3, 2, 0, payload)
    assert len(data) == HEADER_SIZE + 4194304

    dec = FrameDecoder()
    assert dec.feed(data) == [Frame(3, 2, 0, payload)]
    assert dec.buffered == 0

    # Also in chunks: it is buffered (it is allowed) and reported once complete.
    dec = FrameDecoder()
    events: list[Frame | OversizedFrame] = []
    for i in range(0, len(data), 1 << 20):
        events.extend(dec.feed(data[i : i + (1 << 20)]))
    assert events == [Frame(3, 2, 0, payload)]
    assert dec.buffered == 0


def test_encode_frame_refuses_over_max_payload() -> None:
    with pytest.raises(ResourceExhausted) as excinfo:
        encode_frame(1, 1, 0, bytes(MAX_PAYLOAD + 1))
    assert excinfo.value.code == Code.RESOURCE_EXHAUSTED
    assert len(encode_frame(1, 1, 0, bytes(MAX_PAYLOAD))) == HEADER_SIZE + MAX_PAYLOAD


def test_encode_frame_custom_limit_matches_decoder() -> None:
    with pytest.raises(ResourceExhausted):
        encode_frame(1, 1, 0, b"12345", max_payload=4)
    data = encode_frame(1, 1, 0, b"1234", max_payload=4)
    assert FrameDecoder(max_payload=4).feed(data) == [Frame(1, 1, 0, b"1234")]


@pytest.mark.parametrize("max_payload", [0, 1, 16])
def test_limit_boundary_for_custom_limits(max_payload: int) -> None:
    dec = FrameDecoder(max_payload=max_payload)
    ok = encode_frame(1, 1, 0, b"z" * max_payload)
    over = HEADER.pack(max_payload + 1, 2, 1, 0)
    assert dec.feed(ok + over) == [
        Frame(1, 1, 0, b"z" * max_payload),
        OversizedFrame(2, 1, 0, max_payload + 1),
    ]
    assert dec.discarding == max_payload + 1
    assert dec.feed(b"z" * (max_payload + 1)) == []
    assert dec.discarding == 0
    assert dec.feed(ok) == [Frame(1, 1, 0, b"z" * max_payload)]
