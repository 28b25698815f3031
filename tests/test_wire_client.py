"""The client's protocol state (``ClientConnection``) alone: bytes in, events and bytes out.

No socket, no clock, no trio: every test feeds the bytes a server would send and looks at the
events and the bytes the connection gives back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sandboxd
from sandboxd.wire import (
    MAX_STREAM_ID,
    ClientConnection,
    Code,
    Event,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    ResponseReceived,
    StreamEnded,
    StreamMessage,
    decode_request,
    dumps,
    encode_error,
    encode_frame,
    encode_response,
    loads_message,
    request_envelope,
)

SVC = "test.Svc"
ENVELOPE = request_envelope(SVC, "M")
CANCEL_FLAGS = Flags.REMOTE_CLOSED | Flags.NO_DATA


# -- what a server sends ------------------------------------------------------------------------


def reply(stream_id: int, message: dict[str, Any] | None = None) -> bytes:
    payload = dumps(message) if message else b""
    return encode_frame(stream_id, FrameType.RESPONSE, 0, encode_response(payload))


def refusal(stream_id: int, code: Code, message: str) -> bytes:
    return encode_frame(stream_id, FrameType.RESPONSE, 0, encode_error(code, message))


def data(stream_id: int, message: dict[str, Any], flags: int = 0) -> bytes:
    return encode_frame(stream_id, FrameType.DATA, flags, dumps(message))


def end(stream_id: int) -> bytes:
    return encode_frame(stream_id, FrameType.DATA, CANCEL_FLAGS, b"")


def frames(sent: bytes) -> list[Frame]:
    decoded = [frame for frame in FrameDecoder().feed(sent) if isinstance(frame, Frame)]
    assert b"".join(encode_frame(*frame) for frame in decoded) == sent
    return decoded


def summary(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """Events with their errors as (type, message): errors compare by identity."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        fields: list[Any] = [type(event).__name__]
        # A stream's final payload is shown only when there is one.
        values = event[:2] if type(event) is StreamEnded and not event.payload else event
        for value in values:
            if isinstance(value, sandboxd.RPCError):
                fields.append((type(value), value.message))
            else:
                fields.append(value)
        out.append(tuple(fields))
    return out


def calls(conn: ClientConnection, count: int, *, stream: bool = False) -> list[int]:
    return [conn.send_request(ENVELOPE, stream=stream)[0] for _ in range(count)]


# -- sending -----------------------------------------------------------------------------------


def test_requests_get_odd_increasing_stream_ids_and_carry_the_call() -> None:
    conn = ClientConnection()
    sent = [
        conn.send_request(request_envelope(SVC, "Echo", {"a": 1}, metadata={"k": ["v"]})),
        conn.send_request(request_envelope(SVC, "Stream"), stream=True),
        conn.send_request(request_envelope(SVC, "Empty", {})),
    ]
    assert [stream_id for stream_id, _ in sent] == [1, 3, 5]
    for stream_id, request in sent:
        (frame,) = frames(request)
        assert (frame.stream_id, frame.type, frame.flags) == (stream_id, FrameType.REQUEST, 0)
    first = decode_request(frames(sent[0][1])[0].payload)
    assert (first.service, first.method) == (SVC, "Echo")
    assert loads_message(first.payload) == {"a": 1}
    assert first.metadata == {"k": ["v"]}
    assert decode_request(frames(sent[2][1])[0].payload).payload == b""
    assert conn.in_flight == 3


@pytest.mark.parametrize(
    ("deadline", "now", "timeout_nano"),
    [(float("inf"), 0.0, 0), (12.5, 10.0, 2_500_000_000), (10.0, 10.0, 1), (9.0, 10.0, 1)],
)
def test_the_server_is_given_what_is_left_of_the_deadline(
    deadline: float, now: float, timeout_nano: int
) -> None:
    envelope = request_envelope(SVC, "M", deadline=deadline, now=now)
    assert decode_request(envelope).timeout_nano == timeout_nano


def test_stream_ids_used_up_raise_resource_exhausted_and_change_nothing() -> None:
    conn = ClientConnection()
    conn._next_id = MAX_STREAM_ID  # 2**31 calls in: the last id a client may use
    assert conn.send_request(ENVELOPE)[0] == MAX_STREAM_ID
    with pytest.raises(sandboxd.ResourceExhausted, match="used up"):
        conn.send_request(ENVELOPE)
    assert conn.in_flight == 1
    assert conn.error is None  # the connection itself still works
    assert summary(conn.receive_data(reply(MAX_STREAM_ID))) == [
        ("ResponseReceived", MAX_STREAM_ID, b"", None)
    ]


def test_a_request_over_the_frame_limit_is_refused_without_using_an_id() -> None:
    conn = ClientConnection()
    with pytest.raises(sandboxd.ResourceExhausted, match="frame limit"):
        conn.send_request(request_envelope(SVC, "M", {"blob": bytes(5 * 1024 * 1024)}))
    assert conn.in_flight == 0
    assert conn.send_request(ENVELOPE)[0] == 1


# -- unary replies -----------------------------------------------------------------------------


def test_replies_out_of_order_reach_their_own_calls() -> None:
    conn = ClientConnection()
    assert calls(conn, 3) == [1, 3, 5]
    events = conn.receive_data(reply(5, {"n": 5}) + reply(1, {"n": 1}))
    assert events == [
        ResponseReceived(5, dumps({"n": 5}), None),
        ResponseReceived(1, dumps({"n": 1}), None),
    ]
    assert conn.in_flight == 1
    assert summary(conn.receive_data(reply(3))) == [("ResponseReceived", 3, b"", None)]
    assert conn.in_flight == 0


def test_an_error_reply_ends_its_call_with_the_typed_error() -> None:
    conn = ClientConnection()
    calls(conn, 1)
    (event,) = conn.receive_data(refusal(1, Code.NOT_FOUND, "no sandbox x"))
    assert type(event) is ResponseReceived
    assert type(event.error) is sandboxd.NotFound
    assert event.error.message == "no sandbox x"
    assert event.payload == b""


def test_a_malformed_reply_ends_its_call_with_internal() -> None:
    conn = ClientConnection()
    calls(conn, 1)
    (event,) = conn.receive_data(encode_frame(1, FrameType.RESPONSE, 0, b"\xff"))
    assert type(event) is ResponseReceived
    assert type(event.error) is sandboxd.Internal


def test_a_cancelled_call_sends_a_close_frame_once_and_its_reply_is_dropped() -> None:
    conn = ClientConnection()
    calls(conn, 2)
    (frame,) = frames(conn.cancel(1))
    assert (frame.stream_id, frame.type, frame.flags, frame.payload) == (
        1,
        FrameType.DATA,
        CANCEL_FLAGS,
        b"",
    )
    assert conn.cancel(1) == b""
    events = conn.receive_data(reply(1) + reply(7) + data(3, {"x": 1}) + reply(3))
    assert summary(events) == [("ResponseReceived", 3, b"", None)]
    assert conn.cancel(3) == b""  # ended: nothing to tell the server


def test_frames_of_unknown_types_and_data_on_unary_calls_are_ignored() -> None:
    conn = ClientConnection()
    calls(conn, 1)
    junk = (
        encode_frame(1, 9, 0, b"?")
        + data(1, {"x": 1})
        + encode_frame(1, FrameType.REQUEST, 0, b"")
    )
    assert conn.receive_data(junk) == []
    assert conn.in_flight == 1


# -- streams -----------------------------------------------------------------------------------


def test_stream_messages_arrive_in_order_then_the_stream_ends() -> None:
    conn = ClientConnection()
    (stream_id,) = calls(conn, 1, stream=True)
    messages = conn.messages(stream_id)
    events = conn.receive_data(data(1, {"i": 0}) + data(1, {"i": 1}))
    assert events == [StreamMessage(1), StreamMessage(1)]
    events = conn.receive_data(data(1, {"i": 2}, Flags.REMOTE_CLOSED))
    assert events == [StreamMessage(1), StreamEnded(1, None)]
    assert [loads_message(m) for m in messages] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert conn.in_flight == 0


def test_a_stream_ends_on_an_empty_closing_frame_or_a_reply() -> None:
    conn = ClientConnection()
    calls(conn, 3, stream=True)
    events = conn.receive_data(end(1) + reply(3) + refusal(5, Code.INTERNAL, "boom"))
    assert summary(events) == [
        ("StreamEnded", 1, None),
        ("StreamEnded", 3, None),
        ("StreamEnded", 5, (sandboxd.Internal, "boom")),
    ]
    assert conn.in_flight == 0


def test_a_burst_larger_than_the_buffer_in_one_read_is_kept() -> None:
    conn = ClientConnection(stream_buffer=2)
    calls(conn, 1, stream=True)
    messages = conn.messages(1)
    conn.receive_data(b"".join(data(1, {"i": i}) for i in range(5)))
    assert len(messages) == 5
    messages.clear()  # the consumer keeps up
    assert conn.receive_data(data(1, {"i": 5})) == [StreamMessage(1)]


def test_a_consumer_still_behind_at_the_next_read_ends_only_its_stream() -> None:
    conn = ClientConnection(stream_buffer=2)
    calls(conn, 2, stream=True)
    slow = conn.messages(1)
    conn.receive_data(data(1, {"i": 0}) + data(1, {"i": 1}) + data(3, {"i": 0}))
    conn.messages(3).clear()
    events = conn.receive_data(data(1, {"i": 2}) + data(3, {"i": 1}) + data(1, {"i": 3}))
    assert summary(events) == [
        (
            "StreamEnded",
            1,
            (sandboxd.ResourceExhausted, "stream consumer fell 2 messages behind; stream ended"),
        ),
        ("StreamMessage", 3),
    ]
    assert [loads_message(m) for m in slow] == [{"i": 0}, {"i": 1}]  # what came before
    (frame,) = frames(conn.data_to_send())
    assert (frame.stream_id, frame.type, frame.flags) == (1, FrameType.DATA, CANCEL_FLAGS)
    assert conn.data_to_send() == b""
    assert conn.in_flight == 1


def test_a_consumer_that_caught_up_between_reads_is_not_behind() -> None:
    conn = ClientConnection(stream_buffer=2)
    calls(conn, 1, stream=True)
    messages = conn.messages(1)
    conn.receive_data(data(1, {"i": 0}) + data(1, {"i": 1}))
    messages.popleft()
    assert conn.receive_data(data(1, {"i": 2})) == [StreamMessage(1)]
    assert conn.data_to_send() == b""


# -- oversized frames --------------------------------------------------------------------------


def test_an_oversized_frame_ends_only_its_call_and_the_connection_reads_on() -> None:
    conn = ClientConnection(max_payload=64)
    calls(conn, 2)
    calls(conn, 1, stream=True)
    big = {"blob": bytes(100)}
    events = conn.receive_data(reply(1, big) + data(5, big) + reply(3, {"ok": True}))
    assert summary(events) == [
        (
            "ResponseReceived",
            1,
            b"",
            (
                sandboxd.ResourceExhausted,
                f"server sent a frame of {len(encode_response(dumps(big)))} bytes, over the limit",
            ),
        ),
        (
            "StreamEnded",
            5,
            (
                sandboxd.ResourceExhausted,
                f"server sent a frame of {len(dumps(big))} bytes, over the limit",
            ),
        ),
        ("ResponseReceived", 3, dumps({"ok": True}), None),
    ]
    assert conn.error is None


def test_an_oversized_frame_arriving_in_pieces_is_skipped() -> None:
    conn = ClientConnection(max_payload=64)
    calls(conn, 2)
    sent = reply(1, {"blob": bytes(200)}) + reply(3)
    events = [
        event for i in range(0, len(sent), 7) for event in conn.receive_data(sent[i : i + 7])
    ]
    assert [(type(e), e[0], type(e[-1])) for e in events] == [
        (ResponseReceived, 1, sandboxd.ResourceExhausted),
        (ResponseReceived, 3, type(None)),
    ]


# -- the end of the connection -----------------------------------------------------------------


def test_a_refusal_on_stream_0_fails_every_call_and_every_later_one() -> None:
    conn = ClientConnection()
    calls(conn, 1)
    calls(conn, 1, stream=True)
    calls(conn, 1)
    denied = (sandboxd.PermissionDenied, "uid 7 may not")
    events = conn.receive_data(
        reply(5) + refusal(0, Code.PERMISSION_DENIED, "uid 7 may not") + reply(1)
    )
    assert summary(events) == [
        ("ResponseReceived", 5, b"", None),
        ("ResponseReceived", 1, b"", denied),
        ("StreamEnded", 3, denied),
        ("ConnectionFailed", denied),
    ]
    assert type(conn.error) is sandboxd.PermissionDenied
    with pytest.raises(sandboxd.PermissionDenied, match="uid 7 may not") as raised:
        conn.send_request(ENVELOPE)
    assert raised.value is not conn.error  # a copy per raise, never the same object twice
    assert conn.receive_data(reply(1)) == []
    assert conn.cancel(1) == b""


def test_the_first_call_failing_with_the_connection_is_the_oldest() -> None:
    conn = ClientConnection()
    calls(conn, 1, stream=True)
    calls(conn, 2)
    events = conn.receive_data(refusal(0, Code.RESOURCE_EXHAUSTED, "too many connections"))
    refused = (sandboxd.ResourceExhausted, "too many connections")
    assert summary(events) == [
        ("StreamEnded", 1, refused),
        ("ResponseReceived", 3, b"", refused),
        ("ResponseReceived", 5, b"", refused),
        ("ConnectionFailed", refused),
    ]
    assert len({id(event[-1]) for event in events}) == 4  # each call raises its own copy


def test_a_success_reply_or_data_on_stream_0_changes_nothing() -> None:
    conn = ClientConnection()
    calls(conn, 1)
    assert conn.receive_data(reply(0) + data(0, {"x": 1})) == []
    assert conn.error is None


def test_the_end_of_the_stream_fails_every_call_with_unavailable() -> None:
    conn = ClientConnection()
    calls(conn, 2)
    closed = (sandboxd.Unavailable, "connection to the server was closed")
    assert summary(conn.receive_data(b"")) == [
        ("ResponseReceived", 1, b"", closed),
        ("ResponseReceived", 3, b"", closed),
        ("ConnectionFailed", closed),
    ]
    with pytest.raises(sandboxd.Unavailable):
        conn.send_request(ENVELOPE)


def test_closing_keeps_the_first_error() -> None:
    conn = ClientConnection()
    calls(conn, 1)
    first = sandboxd.Unavailable("client was closed")
    assert summary(conn.close(first))[-1] == (
        "ConnectionFailed",
        (sandboxd.Unavailable, "client was closed"),
    )
    assert conn.close(sandboxd.Internal("later")) == []
    assert conn.error is first
    assert conn.receive_data(b"") == []


# -- reads of any size -------------------------------------------------------------------------


def piece(kind: str, stream_id: int, message: dict[str, Any]) -> bytes:
    if kind == "reply":
        return reply(stream_id, message)
    if kind == "error":
        return refusal(stream_id, Code.NOT_FOUND, "gone")
    if kind == "data":
        return data(stream_id, message)
    if kind == "last":
        return data(stream_id, message, Flags.REMOTE_CLOSED)
    if kind == "end":
        return end(stream_id)
    return encode_frame(stream_id, 9, 0, b"junk")


@st.composite
def server_bytes(draw: st.DrawFn) -> tuple[int, int, bytes]:
    """Some unary calls and streams, and what a server might send them (and others)."""
    unary = draw(st.integers(0, 4))
    streams = draw(st.integers(0, 3))
    ids = [1 + 2 * i for i in range(unary + streams + 2)]  # two ids nobody called
    kinds = st.sampled_from(["reply", "error", "data", "last", "end", "junk"])
    messages = st.fixed_dictionaries({"n": st.integers(0, 1000), "s": st.binary(max_size=30)})
    script = st.lists(st.tuples(kinds, st.sampled_from([0, *ids]), messages), max_size=25)
    return unary, streams, b"".join(piece(*step) for step in draw(script))


def run(unary: int, streams: int, chunks: Sequence[bytes]) -> tuple[Any, ...]:
    conn = ClientConnection()
    calls(conn, unary)
    stream_ids = calls(conn, streams, stream=True)
    buffers = [conn.messages(stream_id) for stream_id in stream_ids]
    events = [event for chunk in chunks for event in conn.receive_data(chunk)]
    return summary(events), [list(b) for b in buffers], conn.in_flight, conn.data_to_send()


@given(server_bytes(), st.lists(st.integers(1, 64), max_size=40))
def test_the_same_bytes_in_any_chunks_give_the_same_events(
    script: tuple[int, int, bytes], sizes: list[int]
) -> None:
    unary, streams, sent = script
    chunks = []
    pos = 0
    for size in sizes:
        chunks.append(sent[pos : pos + size])
        pos += size
    chunks.append(sent[pos:])
    # b"" means the end of the stream: only at the end, after the same bytes
    chunks = [chunk for chunk in chunks if chunk] + [b""]
    assert run(unary, streams, chunks) == run(unary, streams, [sent, b""])
