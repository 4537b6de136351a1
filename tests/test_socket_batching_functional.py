"""What the hub sends one browser in one event-loop turn leaves in one write; a close frame
leaves at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.call import CallKind
from signaling.protocol import SUBPROTOCOL, encode
from tests.helpers import within
from tests.hub_fixtures import run_service
from tests.services import RedisServer


async def test_messages_of_one_turn_leave_in_one_write_and_a_close_at_once(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three messages queued together reach the browser's transport as one write (a spy
    counts the real transport's writes) and arrive as three frames; a close arrives with
    its code."""
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",)) \
            as service, aiohttp.ClientSession() as http:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                              ("doc-1", "D", "doctor")])
        ws = await http.ws_connect(service.ws_url, protocols=[SUBPROTOCOL],
                                   headers={"Origin": service.url})
        await ws.send_str(json.dumps({"type": "hello", "id": 1,
                                      "token": service.token(call.id, "pat-1")}))
        assert (await within(ws.receive_json(), 10, "welcome"))["type"] == "welcome"
        conn: Any = service.hub.presence.get(call.id, "pat-1")
        buffer = conn.ws._writer.transport
        writes: list[int] = []
        real = buffer._transport.write

        def counted(data: bytes) -> None:
            writes.append(len(data))
            real(data)

        monkeypatch.setattr(buffer._transport, "write", counted)
        for n in range(3):
            conn.send(encode("participantLeft", participant=f"x{n}"))
        got = [await within(ws.receive_json(), 10, "message") for _ in range(3)]
        assert [m["participant"] for m in got] == ["x0", "x1", "x2"]
        assert len(writes) == 1
        await conn.ws.close(code=4001, message=b"bye")
        closing = await within(ws.receive(), 10, "close")
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4001)
