"""A scripted Kurento JSON-RPC server that answers every request at once.

It keeps no media state: `create` hands out ids, `processOffer` returns a fixed answer,
everything else succeeds. Benchmarks put it behind the hub so the figures are the hub's,
and hook `on_request` to see what arrives (candidates, releases) and `emit` to send
events back. It handles `transaction` too (with `newref:` references), so it serves the
hub whichever way the hub batches its requests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from bench.common import serve_ws
from mediaserver.core import _inject_refs

__all__ = ["ANSWER", "OFFER", "ScriptedKms", "run_scripted_kms"]

#: A browser-like offer sending audio and video (the hub only parses its media lines).
OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendonly",
    "a=rtpmap:111 opus/48000/2", "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=mid:1", "a=sendonly",
    "a=rtpmap:96 VP8/90000", "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", ""])
ANSWER = OFFER.replace("a=sendonly", "a=recvonly").replace("a=setup:actpass",
                                                           "a=setup:active")

#: Sees (method, params, arrival time); what it returns, if awaitable, runs after the reply.
Hook = Callable[[str, dict[str, Any], float], Awaitable[None] | None]


class ScriptedKms:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._ids = itertools.count(1)
        #: Called for every request, transactions unpacked.
        self.on_request: Hook | None = None
        self.sockets: list[web.WebSocketResponse] = []
        #: Which socket created each object, so events go back where the hub listens.
        self.owner: dict[str, web.WebSocketResponse] = {}
        self.requests = 0

    def _new_id(self, params: dict[str, Any]) -> str:
        kind = str(params.get("type", "Object"))
        n = next(self._ids)
        pipeline = (params.get("constructorParams") or {}).get("mediaPipeline")
        return f"{pipeline}/{n}_kurento.{kind}" if pipeline else f"{n}_kurento.{kind}"

    def _answer(self, method: str, params: dict[str, Any], now: float,
                ws: web.WebSocketResponse, after: list[Awaitable[None]]) -> dict[str, Any]:
        self.requests += 1
        if self.on_request is not None and (then := self.on_request(method, params, now)):
            after.append(then)
        result: dict[str, Any] = {"sessionId": "scripted"}
        if method == "connect":
            result["serverId"] = "scripted"
        elif method == "ping":
            result = {"value": "pong"}
        elif method == "create":
            result["value"] = self._new_id(params)
            self.owner[result["value"]] = ws
        elif method == "subscribe":
            result["value"] = f"sub{next(self._ids)}"
        elif method == "invoke":
            op = params.get("operation")
            result["value"] = ANSWER if op == "processOffer" else (
                [] if op == "getPipelines" else None)
        elif method == "transaction":
            values: list[Any] = []
            replies = []
            for index, op in enumerate(params.get("operations") or []):
                inner = _inject_refs(op.get("params") or {}, values)
                reply = self._answer(str(op.get("method")), inner, now, ws, after)
                values.append(reply.get("value"))
                replies.append({"id": index, "jsonrpc": "2.0", "result": reply})
            result["value"] = replies
        return result

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.sockets.append(ws)
        async for msg in ws:
            body = json.loads(msg.data)
            after: list[Awaitable[None]] = []
            result = self._answer(body.get("method", ""), body.get("params") or {},
                                  self.clock(), ws, after)
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": body.get("id"),
                                          "result": result}))
            for then in after:
                await then
        self.sockets.remove(ws)
        return ws

    async def emit(self, object_id: str, event_type: str, data: dict[str, Any]) -> None:
        """An `onEvent` notification for `object_id`, on the socket that created it."""
        ws = self.owner.get(object_id) or (self.sockets[0] if self.sockets else None)
        if ws is None or ws.closed:
            return
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "onEvent", "params": {
            "value": {"object": object_id, "type": event_type,
                      "data": {"source": object_id, "type": event_type, **data}}}}))


@contextlib.asynccontextmanager
async def run_scripted_kms(clock: Callable[[], float]) -> AsyncIterator[tuple[str, ScriptedKms]]:
    kms = ScriptedKms(clock)
    async with serve_ws(kms.handler, "/kurento") as port:
        try:
            yield f"ws://127.0.0.1:{port}/kurento", kms
        finally:
            for ws in list(kms.sockets):
                await ws.close()
