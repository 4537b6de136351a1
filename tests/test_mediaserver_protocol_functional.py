"""The embedded media server speaks Kurento's protocol: shapes, errors, sessions, GC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mediaserver.core import MediaServer, ServerManagerImpl
from mediaserver.elements import MediaPipelineImpl
from mediaserver.recorder import RecorderEndpointImpl
from mediaserver.webrtc import WebRtcEndpointImpl
from tests.helpers import wait_until
from tests.kmd import kmd
from tests.media_fixtures import run_mediaserver


class Raw:
    """A bare WebSocket speaking JSON text, to see the server's exact bytes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def call(self, obj: Any) -> dict[str, Any]:
        await self.ws.send_str(obj if isinstance(obj, str) else json.dumps(obj))
        while True:
            text = await self.ws.receive_str()
            reply = json.loads(text)
            if reply.get("method") != "onEvent":
                self.last_text = text
                return reply  # type: ignore[no-any-return]


async def open_raw(http: aiohttp.ClientSession, url: str) -> Raw:
    return Raw(await http.ws_connect(url))


def rpc(i: int, method: str, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": i, "method": method}
    if params:
        body["params"] = params
    return body


async def test_every_implemented_operation_exists_in_kmd_with_its_required_params() -> None:
    """Every operation and event the media server implements is in Kurento's kmd, same params."""
    server = MediaServer()
    pipeline = MediaPipelineImpl(server)
    elements = [
        ServerManagerImpl(server, "manager_ServerManager", None),
        WebRtcEndpointImpl(server, pipeline, {}),
        RecorderEndpointImpl(server, pipeline, {"uri": "file:///tmp/x.webm"}),
    ]
    for element in elements:
        for name, method in element.methods().items():
            declared = kmd().operation(element.type_name, name)
            assert declared is not None, f"{element.type_name}.{name} is not in kmd"
            required = {p["name"] for p in declared if not p.get("optional")}
            assert set(method.required) == required, (element.type_name, name)
            assert set(method.optional) <= {p["name"] for p in declared}
        assert element.events <= kmd().events(element.type_name) | {"Error"}, element.type_name
        await element.release()


async def test_replies_are_compact_sorted_and_errors_are_kurentos(tmp_path: Path) -> None:
    """Replies are compact JSON with sorted keys, like KMS's, and each error has KMS's code."""
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), \
            aiohttp.ClientSession() as http:
        raw = await open_raw(http, url)
        pong = await raw.call(rpc(0, "ping"))
        assert raw.last_text == '{"id":0,"jsonrpc":"2.0","result":{"value":"pong"}}'
        assert pong["result"] == {"value": "pong"}
        connect = await raw.call(rpc(1, "connect"))
        session = connect["result"]["sessionId"]
        assert set(connect["result"]) == {"serverId", "sessionId"}
        assert (await raw.call(rpc(2, "ping")))["result"] == {"sessionId": session,
                                                              "value": "pong"}

        assert await raw.call("{nope") == {
            "error": {"code": -32700, "data": {"type": "PARSE_ERROR"}, "message": "Parse error."},
            "id": None, "jsonrpc": "2.0"}
        assert (await raw.call({"jsonrpc": "1.0", "id": 3, "method": "ping"}))["error"] == {
            "code": -32600, "message": "Invalid JSON-RPC request."}
        assert (await raw.call(rpc(4, "frobnicate")))["error"] == {
            "code": -32601, "message": "Method not found."}
        err = (await raw.call(rpc(5, "create", type="Nope", constructorParams={})))["error"]
        assert err == {"code": 40108, "data": {"type": "MEDIA_OBJECT_NOT_AVAILABLE"},
                       "message": "Factory 'Nope' not found"}
        pipeline = (await raw.call(rpc(6, "create", type="MediaPipeline")))["result"]["value"]
        err = (await raw.call(rpc(7, "invoke", object=pipeline, operation="fly",
                                  operationParams={"a": 1})))["error"]
        assert err == {"code": 40008, "data": {"type": "MALFORMED_TRANSACTION"},
                       "message": "Method 'fly' with 1 parameters not found"}
        ep = (await raw.call(rpc(8, "create", type="WebRtcEndpoint",
                                 constructorParams={"mediaPipeline": pipeline})))["result"]
        ep_id = ep["value"]
        assert ep_id.startswith(pipeline + "/") and ep_id.endswith("_kurento.WebRtcEndpoint")
        err = (await raw.call(rpc(9, "invoke", object=ep_id, operation="processOffer",
                                  operationParams={"offer": 5})))["error"]
        assert err["code"] == 40001 and err["data"]["type"] == "MARSHALL_ERROR"
        err = (await raw.call(rpc(10, "subscribe", object=ep_id,
                                  type="MediaFlowInStateChange")))["error"]
        assert err["code"] == 40106
        assert (await raw.call(rpc(11, "invoke", object=ep_id, operation="gatherCandidates"))
                )["result"] == {"sessionId": session, "value": None}
        described = (await raw.call(rpc(12, "describe", object=ep_id)))["result"]
        assert described["hierarchy"][0] == "kurento.BaseRtpEndpoint"
        assert described["qualifiedType"] == "kurento.WebRtcEndpoint"
        assert (await raw.call(rpc(13, "release", object=pipeline)))["result"] == {
            "sessionId": session}
        assert (await raw.call(rpc(14, "release", object=pipeline)))["result"] == {
            "sessionId": session}
        err = (await raw.call(rpc(15, "invoke", object=ep_id, operation="gatherCandidates")))
        assert err["error"]["code"] == 40101
        err = await raw.call(rpc(16, "connect", sessionId="not-a-session"))
        assert err["error"] == {"code": 40007, "data": {"type": "INVALID_SESSION"},
                                "message": "Invalid session"}
        await raw.ws.close()


async def test_a_transaction_resolves_newrefs_and_stops_at_the_first_failure(
    tmp_path: Path,
) -> None:
    """A transaction resolves newrefs and stops at its first failing operation."""
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), \
            aiohttp.ClientSession() as http:
        raw = await open_raw(http, url)
        reply = await raw.call(rpc(1, "transaction", operations=[
            rpc(0, "create", type="MediaPipeline"),
            rpc(1, "create", type="WebRtcEndpoint",
                constructorParams={"mediaPipeline": "newref:0"}),
            rpc(2, "invoke", object="newref:9", operation="gatherCandidates"),
            rpc(3, "create", type="MediaPipeline"),
        ]))
        ops = reply["result"]["value"]
        assert [op["id"] for op in ops] == [0, 1, 2]
        assert ops[1]["result"]["value"].startswith(ops[0]["result"]["value"] + "/")
        assert ops[2]["error"]["code"] == 40109
        await raw.ws.close()


async def test_a_session_without_a_socket_is_collected_with_its_pipelines(
    tmp_path: Path,
) -> None:
    """A session left without a socket is collected with its pipelines; a resumed one is kept."""
    async with run_mediaserver(gc_grace=0.2, recordings_root=tmp_path) as (url, server), \
            aiohttp.ClientSession() as http:
        raw = await open_raw(http, url)
        await raw.call(rpc(1, "create", type="MediaPipeline"))
        resumable = await open_raw(http, url)
        kept = (await resumable.call(rpc(1, "create", type="MediaPipeline")))["result"]
        assert len(server.objects) == 3
        await raw.ws.close()
        await resumable.ws.close()
        again = await open_raw(http, url)
        # Resuming within the grace period keeps a session alive.
        resumed = await again.call(rpc(1, "connect", sessionId=kept["sessionId"]))
        assert resumed["result"]["sessionId"] == kept["sessionId"]
        await wait_until(lambda: len(server.objects) == 2, timeout=5,
                         describe=lambda: list(server.objects))
        assert kept["value"] in server.objects
        await again.ws.close()


@pytest.mark.parametrize("strict", [False, True])
async def test_strict_mode_ignores_mdns_and_link_local_candidates(
    strict: bool, tmp_path: Path
) -> None:
    """Strict mode drops mDNS and link-local candidates (SDP too); otherwise aiortc gets them."""
    async with run_mediaserver(strict_candidates=strict, recordings_root=tmp_path) as (url, s), \
            aiohttp.ClientSession() as http:
        raw = await open_raw(http, url)
        pipeline = (await raw.call(rpc(1, "create", type="MediaPipeline")))["result"]["value"]
        ep = (await raw.call(rpc(2, "create", type="WebRtcEndpoint",
                                 constructorParams={"mediaPipeline": pipeline})))["result"]["value"]
        from tests.media_fixtures import Peer

        peer = Peer(video=False)
        offer = await peer.offer()
        # aiortc does not trickle: a candidate a browser put in its offer is in the SDP.
        mdns_in_sdp = ("a=candidate:3 1 udp 2113937151 9f1c2d3e-0a1b-4c5d-8e9f-a0b1c2d3e4f5.local "
                       "54402 typ host\r\n")
        offer = offer.replace("a=end-of-candidates", mdns_in_sdp + "a=end-of-candidates", 1) \
            if "a=end-of-candidates" in offer else offer + mdns_in_sdp
        await raw.call(rpc(3, "invoke", object=ep, operation="processOffer",
                           operationParams={"offer": offer}))
        for i, cand in enumerate([
            "candidate:1 1 udp 2113937151 3b6a3c2e-7f5e-4a11-9d52-1c2d3e4f5a6b.local 54400 "
            "typ host",
            "candidate:2 1 udp 2113937151 fe80::1 54401 typ host",
        ]):
            reply = await raw.call(rpc(10 + i, "invoke", object=ep, operation="addIceCandidate",
                                       operationParams={"candidate": {
                                           "candidate": cand, "sdpMid": "0", "sdpMLineIndex": 0}}))
            assert "result" in reply  # KMS answers success either way
        endpoint = s.objects[ep]
        assert isinstance(endpoint, WebRtcEndpointImpl)
        # Without strict mode aiortc gets them (and resolves or drops them by itself).
        assert endpoint.ignored_candidates == (3 if strict else 0)
        remote = endpoint.pc.remoteDescription.sdp
        assert (".local " in remote) is not strict
        await peer.close()
        await raw.ws.close()
