"""Trickled candidates are pipelined to the media server: a socket's next candidate goes
out before the media server answered the last, in order, each still answered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from kurento_ctl.jsonrpc import ErrorCode
from signaling.call import CallKind
from signaling.protocol import SUBPROTOCOL
from tests.call_fakes import FINGERPRINT, OFFER, SEND_OFFER
from tests.helpers import wait_until, within
from tests.hub_fixtures import run_service
from tests.kurento_fixtures import ScriptedKms, _Fail, _serve_kurento_path
from tests.services import RedisServer

BURST = 12
#: The candidate the media server refuses (by its foundation).
REFUSED = 5


def candidate(n: int) -> str:
    return f"candidate:{n} 1 udp 2122260223 192.0.2.{n} {50000 + n} typ host"


async def read_until(ws: aiohttp.ClientWebSocketResponse, want: set[int]
                     ) -> dict[int, dict[str, Any]]:
    """Replies by request id until every id in `want` has one; events are skipped."""
    got: dict[int, dict[str, Any]] = {}
    while not want <= got.keys():
        body = json.loads((await ws.receive()).data)
        if body.get("re") in want:
            got[body["re"]] = body
    return got


async def test_candidates_are_pipelined_in_order_and_each_answered(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A burst of candidates reaches the media server while it still holds every reply (a
    socket awaiting each reply would send one and stall), in the order sent; then each gets
    its own answer, the refused one its error."""
    gate = asyncio.Event()

    class Gated(ScriptedKms):
        async def _answer(self, method: str, params: dict[str, Any], session: str) -> Any:
            if params.get("operation") == "addIceCandidate":
                await gate.wait()
                line = params["operationParams"]["candidate"]["candidate"]
                if line.startswith(f"candidate:{REFUSED} "):
                    raise _Fail(ErrorCode.ICE_ADD_CANDIDATE_ERROR, "refused for the test", None)
            return await super()._answer(method, params, session)

    kms = Gated()
    kms.values["processOffer"] = OFFER.format(direction="recvonly", fingerprint=FINGERPRINT)
    async with _serve_kurento_path(kms.socket) as url, \
            run_service(tmp_path, redis_server.url, (url,)) as service, \
            aiohttp.ClientSession() as http:
        await within(service.hub.pool.wait_up(), 10, "media server up")
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                              ("doc-1", "D", "doctor")])
        ws = await http.ws_connect(service.ws_url, protocols=[SUBPROTOCOL],
                                   headers={"Origin": service.url})
        for n, (kind, fields) in enumerate([
                ("hello", {"token": service.token(call.id, "pat-1")}), ("join", {}),
                ("publish", {"sdp": SEND_OFFER})], start=1000):
            await ws.send_str(json.dumps({"type": kind, "id": n, **fields}))
            reply = (await within(read_until(ws, {n}), 10, kind))[n]
            assert reply["type"] != "error", reply
        for n in range(1, BURST + 1):
            await ws.send_str(json.dumps({"type": "candidate", "id": n, "target": "publish",
                                          "candidate": candidate(n), "sdpMid": "0",
                                          "sdpMLineIndex": 0}))

        def sent() -> list[str]:
            return [p["operationParams"]["candidate"]["candidate"]
                    for _, m, p in kms.requests
                    if m == "invoke" and p.get("operation") == "addIceCandidate"]

        await wait_until(lambda: len(sent()) == BURST, describe=sent)
        assert sent() == [candidate(n) for n in range(1, BURST + 1)]
        gate.set()
        replies = await within(read_until(ws, set(range(1, BURST + 1))), 10, "answers")
        assert {n for n, r in replies.items() if r["type"] == "ok"} == \
            set(range(1, BURST + 1)) - {REFUSED}
        assert replies[REFUSED]["type"] == "error"
        await ws.close()
