"""The RPC server's streams: DATA frames, then an end of stream or an error RESPONSE.

Spoken in raw bytes to a real server on a Unix socket, as ``probe_server.py`` tells.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from peers import END_OF_STREAM
from probe_server import DATA, Probe, connect, request_frame, start_server
from sandboxd.wire import Code, Frame, loads_message, loads_strict

pytestmark = pytest.mark.usefixtures("watchdog")
#: Seconds (real, or virtual under the autojump clock) after which a test counts as hung.
GUARD = 8.0


# -- server streaming ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, 300])
async def test_server_stream_messages_then_end(
    nursery: trio.Nursery, sock_path: str, probe: Probe, n: int
):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send_request(3, "Count", {"n": n})
        for i in range(n):
            assert await peer.message(3) == {"i": i}
        end = await peer.next_frame()
        assert end == Frame(3, DATA, END_OF_STREAM, b"")
        assert END_OF_STREAM == 0x05
        assert await peer.call(5, "Echo", {"after": "stream"}) == {"after": "stream"}


async def test_server_stream_error_ends_with_response(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send_request(1, "StreamFail", {})
        for i in range(2):
            assert await peer.message(1) == {"i": i}
        frame = await peer.response(1)
        envelope = loads_strict(frame.payload)
        assert envelope["status"] == {
            "code": Code.FAILED_PRECONDITION,
            "message": "stream says no",
            "details": ["why"],
        }
        # No end-of-stream DATA frame follows the RESPONSE.
        assert await peer.call(3, "Echo", {"n": 3}) == {"n": 3}


async def test_concurrent_streams_are_multiplexed(
    nursery: trio.Nursery, sock_path: str, probe: Probe
):
    await start_server(nursery, sock_path, probe)
    async with await connect(sock_path) as peer:
        await peer.send(*(request_frame(sid, "Count", {"n": 20}) for sid in (1, 3, 5)))
        seen: dict[int, list[int]] = {1: [], 3: [], 5: []}
        ended: set[int] = set()
        while len(ended) < 3:
            frame = await peer.next_frame()
            assert frame.type == DATA
            assert frame.stream_id not in ended
            if frame.flags == END_OF_STREAM:
                assert frame.payload == b""
                ended.add(frame.stream_id)
            else:
                assert frame.flags == 0
                seen[frame.stream_id].append(loads_message(frame.payload)["i"])
        assert seen == {sid: list(range(20)) for sid in (1, 3, 5)}
