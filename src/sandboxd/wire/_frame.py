"""ttrpc frames: the 10-byte header, encoding, and an incremental decoder.

A frame is ``u32 length | u32 stream id | u8 type | u8 flags`` (big-endian) followed by
``length`` payload bytes; the header is not counted in ``length``.  This module does no I/O:
feed it bytes, get frames back.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple, final

from .._errors import ResourceExhausted

HEADER: Final = struct.Struct(">IIBB")
HEADER_SIZE: Final = HEADER.size  # 10
MAX_PAYLOAD: Final = 4 * 1024 * 1024  # 4 MiB, as ttrpc: 4194304 allowed, 4194305 refused


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Flags(enum.IntFlag):
    # ttrpc's own (Go ttrpc >= 1.2).
    REMOTE_CLOSED = 0x01
    REMOTE_OPEN = 0x02
    NO_DATA = 0x04
    # sandboxd's, sent only to a peer that said it speaks them (see docs/wire.md, "Flow
    # control"): a DATA frame granting window (its payload a big-endian u32 of bytes, sent
    # with NO_DATA so a plain ttrpc peer reads no message in it), and the client's end of a
    # call whose request was REMOTE_OPEN (with REMOTE_CLOSED | NO_DATA: a plain peer reads a
    # half-close).
    WINDOW_UPDATE = 0x08
    CANCEL = 0x10


# Frames are events on the hot path; a NamedTuple is built in C and costs a fraction of a
# slotted class.  ``type`` stays a plain int: frames of unknown type must reach the caller
# (which ignores them), not fail here.
class Frame(NamedTuple):
    """One complete frame."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


#: Builds a Frame without the Python-level ``__new__`` of a named tuple.
_new_tuple: Final = tuple.__new__
_unpack_header: Final = HEADER.unpack_from


class OversizedFrame(NamedTuple):
    """A frame whose declared length is over the limit.

    Reported as soon as its header arrives; the decoder then skips its payload by itself, so
    the connection stays usable and the sender can be told on ``stream_id``.
    """

    stream_id: int
    type: int
    flags: int
    length: int


def encode_frame(
    stream_id: int, frame_type: int, flags: int, payload: bytes, max_payload: int = MAX_PAYLOAD
) -> bytes:
    """The bytes of one frame.

    Raises :class:`~sandboxd.ResourceExhausted` when ``payload`` is over ``max_payload``: the
    sending side refuses to send what the receiving side would refuse.
    """
    if len(payload) > max_payload:
        raise ResourceExhausted(
            f"message of {len(payload)} bytes is over the {max_payload}-byte frame limit"
        )
    return HEADER.pack(len(payload), stream_id, frame_type, flags) + payload


@final
class FrameDecoder:
    """Turns a byte stream, in chunks of any size, into frames.

    :meth:`feed` takes the next chunk and returns every frame (or :class:`OversizedFrame`)
    completed by it, in order.  Bytes of an incomplete frame are kept for the next call.  An
    oversized frame is refused from its header alone: nothing of its payload is buffered.
    """

    __slots__ = ("_buf", "_discard", "_max_payload")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._discard = 0
        self._max_payload = max_payload

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    @property
    def discarding(self) -> int:
        """Payload bytes of an oversized frame still to be skipped."""
        return self._discard

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        buf = self._buf
        if not buf and not self._discard and type(data) is bytes and len(data) >= HEADER_SIZE:
            # A chunk that is exactly one frame (a caller waiting on each answer): no loop.
            length, stream_id, frame_type, flags = _unpack_header(data)
            if length + HEADER_SIZE == len(data) and length <= self._max_payload:
                return [_new_tuple(Frame, (stream_id, frame_type, flags, data[HEADER_SIZE:]))]
        events: list[Frame | OversizedFrame] = []
        if self._discard:
            skip = min(self._discard, len(data))
            self._discard -= skip
            data = data[skip:]
        if not data:
            return events
        # Frames are cut straight out of the chunk when nothing was left over (the usual
        # case): one copy of each payload, and only an unfinished tail is kept.
        source: bytes | bytearray
        if buf:
            buf += data
            source = buf
        else:
            source = data
        unpack_from = HEADER.unpack_from
        max_payload = self._max_payload
        pos = 0
        end = len(source)
        while end - pos >= HEADER_SIZE:
            length, stream_id, frame_type, flags = unpack_from(source, pos)
            start = pos + HEADER_SIZE
            if length > max_payload:
                events.append(OversizedFrame(stream_id, frame_type, flags, length))
                skip = min(length, end - start)
                pos = start + skip
                if skip < length:
                    self._discard = length - skip
                    # Everything buffered is now consumed; the rest arrives in later chunks.
                    break
                continue
            stop = start + length
            if stop > end:
                break
            events.append(
                _new_tuple(Frame, (stream_id, frame_type, flags, bytes(source[start:stop])))
            )
            pos = stop
        if source is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += source[pos:]
        return events
