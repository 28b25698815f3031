"""The sans-io client's stream calls (``ClientConnection.open_stream``): request flags, sending,
half-close, cancel, window updates both ways, and the final message.  Bytes only."""

from __future__ import annotations

import pytest

from sandboxd.wire import (
    DEFAULT_WINDOW,
    MAX_PAYLOAD,
    WINDOW_METADATA,
    ClientConnection,
    FailedPrecondition,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    ResourceExhausted,
    StreamEnded,
    StreamMessage,
    WindowOpened,
    decode_request,
    dumps,
    encode_frame,
    encode_response,
    request_envelope,
    window_frame,
)

DATA = FrameType.DATA


def frame_of(data: bytes) -> Frame:
    (frame,) = FrameDecoder().feed(data)
    assert isinstance(frame, Frame)
    return frame


def opened(conn: ClientConnection, *, client_sends: bool = True) -> tuple[int, Frame]:
    envelope = request_envelope("s", "M", {"a": 1}, window=conn.window)
    stream_id, request = conn.open_stream(envelope, client_sends=client_sends)
    return stream_id, frame_of(request)


def test_the_request_says_who_sends_and_asks_for_the_window() -> None:
    conn = ClientConnection(window=4096)
    _, request = opened(conn)
    assert (request.stream_id, request.type, request.flags) == (1, FrameType.REQUEST, 0x02)
    assert decode_request(request.payload).metadata == {WINDOW_METADATA: ["4096"]}
    _, server_stream = opened(conn, client_sends=False)
    assert server_stream.flags == Flags.REMOTE_CLOSED
    with pytest.raises(FailedPrecondition, match="closed for sending"):
        conn.send_message(3, b"")


def test_sending_spends_credit_until_the_server_grants_more() -> None:
    conn = ClientConnection()
    stream_id, _ = opened(conn)
    payload = dumps({"pad": bytes(DEFAULT_WINDOW - 100)})
    sent = frame_of(conn.send_message(stream_id, payload))
    assert sent == Frame(stream_id, DATA, 0, payload)
    assert conn.send_credit(stream_id) == DEFAULT_WINDOW - len(payload)
    conn.send_message(stream_id, dumps({"more": bytes(200)}))
    assert conn.send_credit(stream_id) <= 0
    events = conn.receive_data(window_frame(stream_id, 1000))
    assert events == [WindowOpened(stream_id)]
    assert conn.send_credit(stream_id) > 0
    half_close = frame_of(conn.close_send(stream_id))
    assert half_close == Frame(stream_id, DATA, Flags.REMOTE_CLOSED | Flags.NO_DATA, b"")
    with pytest.raises(FailedPrecondition):
        conn.close_send(stream_id)  # a second close is refused here, never sent


def test_the_consumer_grants_window_back_once_half_is_taken() -> None:
    conn = ClientConnection(window=1000)
    stream_id, _ = opened(conn, client_sends=False)
    message = dumps({"d": bytes(290)})
    assert conn.receive_data(encode_frame(stream_id, DATA, 0, message) * 2) == [
        StreamMessage(stream_id),
        StreamMessage(stream_id),
    ]
    assert conn.consumed(stream_id, len(message)) == b""
    grant = frame_of(conn.consumed(stream_id, len(message)))
    assert grant.flags == Flags.WINDOW_UPDATE | Flags.NO_DATA
    assert int.from_bytes(grant.payload, "big") == 2 * len(message)


def test_the_final_message_ends_the_stream_and_a_response_too() -> None:
    conn = ClientConnection()
    first, _ = opened(conn, client_sends=False)
    second, _ = opened(conn)
    final = dumps({"size": 3})
    events = conn.receive_data(
        encode_frame(first, DATA, Flags.REMOTE_CLOSED, final)
        + encode_frame(second, FrameType.RESPONSE, 0, encode_response(final))
    )
    assert events == [StreamEnded(first, None, final), StreamEnded(second, None, final)]


def test_a_server_past_the_window_ends_the_stream() -> None:
    conn = ClientConnection(window=100)
    stream_id, _ = opened(conn, client_sends=False)
    big = encode_frame(stream_id, DATA, 0, bytes(MAX_PAYLOAD))
    events = conn.receive_data(big + big)
    assert events[0] == StreamMessage(stream_id)
    (ended,) = events[1:]
    assert isinstance(ended, StreamEnded) and isinstance(ended.error, ResourceExhausted)
    cancel = frame_of(conn.data_to_send())
    assert cancel.flags == Flags.CANCEL | Flags.REMOTE_CLOSED | Flags.NO_DATA


def test_cancelling_a_stream_the_client_sends_on_says_cancel() -> None:
    conn = ClientConnection()
    stream_id, _ = opened(conn)
    assert frame_of(conn.cancel(stream_id)).flags == 0x15
    assert conn.cancel(stream_id) == b""
    with pytest.raises(FailedPrecondition, match="has ended"):
        conn.send_message(stream_id, b"")
