"""The signalling service in-process with the embedded media server, and scripted
participants that speak our WebSocket protocol with aiortc peer connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from mis.history import SINK
from signaling.call import Call, CallKind, CallState
from signaling.hub import HUB, Hub
from signaling.protocol import SUBPROTOCOL
from signaling.tokens import mint_join_token
from telemed.app import create_app
from telemed.embedded import Endpoints, hash_api_key
from telemed.settings import Settings, load_settings
from tests.helpers import scaled, within
from tests.media_fixtures import GatedTrack, PatternTrack, ToneTrack
from tests.services import free_port

JWT_SECRET = "test-secret-" + "x" * 20
API_KEY = "test-api-key-" + "y" * 20


@dataclass
class Service:
    url: str  # http://127.0.0.1:port
    hub: Hub
    settings: Settings
    app: web.Application

    async def app_sink_settled(self) -> None:
        """Waits until history and webhooks hold everything that happened so far."""
        await self.app[SINK].settle()

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def token(self, call_id: str, subject: str, *, role: str = "patient", name: str = "",
              **overrides: Any) -> str:
        args: dict[str, Any] = {
            "key": JWT_SECRET, "issuer": self.settings.auth.jwt_issuer,
            "audience": self.settings.auth.jwt_audience, "subject": subject,
            "name": name or subject, "role": role, "call_id": call_id}
        args.update(overrides)
        return mint_join_token(**args)


@contextlib.asynccontextmanager
async def run_service(tmp_path: Path, redis_url: str, kurento_urls: tuple[str, ...], *,
                      watchdog_timeout: float = 10.0, env: dict[str, str] | None = None,
                      turn_urls: tuple[str, ...] = (), turn_secrets: tuple[str, ...] = (),
                      ) -> AsyncIterator[Service]:
    port = free_port()
    settings = load_settings(env={
        "TELEMED_HTTP_PORT": str(port), "TELEMED_DATA_DIR": str(tmp_path / "data"),
        "TELEMED_CALLS_WATCHDOG_TIMEOUT": str(watchdog_timeout),
        # Composing costs seconds of ffmpeg per call: only the recordings tests ask for it.
        "TELEMED_RECORDINGS_COMPOSE": "false",
        # The in-process service stops by failing its calls (`shutdown`), as these tests
        # expect; takeover across a restart is tested with the service as its own process
        # (test_takeover_functional).
        "TELEMED_CALLS_TAKE_OVER": "false", **(env or {})})
    endpoints = Endpoints(redis_url=redis_url, kurento_urls=kurento_urls, turn_urls=turn_urls,
                          turn_secrets=turn_secrets, jwt_secret=JWT_SECRET,
                          api_key_hashes=(hash_api_key(API_KEY),))
    app = create_app(settings, endpoints)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Service(f"http://127.0.0.1:{port}", app[HUB], settings, app)
    finally:
        await runner.cleanup()


def _as_mdns(line: str) -> str:
    if not line.startswith("a=candidate:"):
        return line
    parts = line.split(" ")
    parts[4] = f"{uuid.uuid4()}.local"
    return " ".join(parts)


class ProtocolError(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.code = reply.get("code")


class CallClient:
    """A participant: one WebSocket, one publishing peer, one receiving peer per source."""

    def __init__(self, service: Service, token: str, *, origin: str | None = None) -> None:
        self.service = service
        self.token = token
        self.origin = origin or service.url
        self.events: list[dict[str, Any]] = []
        self._event_added = asyncio.Condition()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.received: dict[str, dict[str, int]] = {}
        self.got_media: dict[str, asyncio.Event] = {}
        #: (source, kind) → the longest wait between two frames so far (s).
        self.max_gap: dict[tuple[str, str], float] = {}
        #: (source, kind) → when (loop time) that longest wait ended.
        self.max_gap_at: dict[tuple[str, str], float] = {}
        self.expected: dict[str, tuple[str, ...]] = {}
        self._readers: list[asyncio.Task[None]] = []
        self.strip_remote_candidates = False
        #: Rewrite our candidates' addresses as mDNS names, which the hub must drop.
        self.mdns_candidates = False
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.participant: str | None = None
        self.tracks: list[GatedTrack] = []
        self.authenticated = False
        self.ice_servers: list[dict[str, Any]] = []
        #: `iceTransportPolicy: relay`: only TURN relay candidates, as a locked-down network.
        self.relay_only = False
        #: Send an offer without any candidate: a client that never trickles them either.
        self.withhold_candidates = False

    async def connect(self, *, autoping: bool = True) -> None:
        """`autoping=False`: a peer that never answers WebSocket pings (a dead one)."""
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.service.ws_url, protocols=[SUBPROTOCOL],
                                             headers={"Origin": self.origin},
                                             autoping=autoping)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            body = json.loads(msg.data)
            re = body.get("re")
            if re is not None and re in self._replies:
                self._replies.pop(re).set_result(body)
                continue
            if body["type"] == "candidate":
                await self._remote_candidate(body)
            async with self._event_added:
                self.events.append(body)
                self._event_added.notify_all()

    async def send_raw(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next] = future
        await self.send_raw(json.dumps({"type": type_, "id": self._next, **fields}))
        reply = await within(future, 20, f"reply to {type_}")
        if reply["type"] == "error":
            raise ProtocolError(reply)
        return reply

    async def wait_event(self, type_: str, pred: Callable[[dict[str, Any]], bool] = lambda e: True,
                         timeout: float = 20) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events if e["type"] == type_ and pred(e)), None)

        def failed() -> dict[str, Any] | None:
            # A failed call sends nothing more: say so now instead of at the timeout.
            return next((e for e in self.events if e["type"] == "callFailed"), None)

        async def wait() -> dict[str, Any]:
            async with self._event_added:
                await self._event_added.wait_for(lambda: find() is not None
                                                 or failed() is not None)
            found = find()
            if found is None:
                raise AssertionError(f"the call failed while waiting for {type_}: {failed()}")
            return found

        try:
            return await asyncio.wait_for(wait(), scaled(timeout))
        except TimeoutError:
            raise AssertionError(f"no {type_} event within {scaled(timeout)}s; saw "
                                 f"{[e['type'] for e in self.events]}") from None

    async def hello(self) -> dict[str, Any]:
        welcome = await self.request("hello", token=self.token)
        self.authenticated = True
        return welcome

    async def join(self) -> dict[str, Any]:
        if not self.authenticated:
            await self.hello()
        joined = await self.request("join")
        self.participant = joined["you"]["id"]
        self.ice_servers = joined["iceServers"]
        return joined

    def _peer(self) -> RTCPeerConnection:
        """A peer connection using the TURN servers the hub handed out, as a browser does."""
        servers = [RTCIceServer(urls=s["urls"], username=s["username"],
                                credential=s["credential"]) for s in self.ice_servers]
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        return RTCPeerConnection(RTCConfiguration(iceServers=servers or None,
                                                  iceTransportPolicy=policy))

    async def _negotiate(self, target: str, pc: RTCPeerConnection, **fields: Any) -> None:
        await pc.setLocalDescription(await pc.createOffer())
        kind = "publish" if target == "publish" else "subscribe"
        offer = pc.localDescription.sdp
        if self.mdns_candidates:
            offer = "\r\n".join(_as_mdns(line) for line in offer.split("\r\n"))
        if self.withhold_candidates:
            offer = "\r\n".join(line for line in offer.split("\r\n")
                                if not line.startswith(("a=candidate", "a=end-of-candidates")))
        reply = await self.request(kind, sdp=offer, **fields)
        sdp = reply["sdp"]
        if self.strip_remote_candidates:
            sdp = "\r\n".join(line for line in sdp.split("\r\n")
                              if not line.startswith("a=candidate"))
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def _remote_candidate(self, body: dict[str, Any]) -> None:
        pc = self.pcs.get(body["target"])
        if pc is None or self.strip_remote_candidates or not body.get("candidate"):
            return
        candidate = candidate_from_sdp(body["candidate"].split(":", 1)[1])
        candidate.sdpMid = body.get("sdpMid")
        candidate.sdpMLineIndex = body.get("sdpMLineIndex")
        with contextlib.suppress(Exception):
            await pc.addIceCandidate(candidate)

    async def publish(self, *, audio: bool = True, video: bool = True) -> None:
        pc = self._peer()
        self.pcs["publish"] = pc
        if audio:
            self.tracks.append(ToneTrack())
            pc.addTransceiver(self.tracks[-1], direction="sendonly")
        if video:
            self.tracks.append(PatternTrack())
            pc.addTransceiver(self.tracks[-1], direction="sendonly")
        await self._negotiate("publish", pc)

    async def subscribe(self, source: str, *, kinds: tuple[str, ...] = ("audio", "video")
                        ) -> None:
        """Receives `source`; reports media once every one of `kinds` it publishes arrives."""
        pc = self._peer()
        self.pcs[source] = pc
        self.received[source] = {"audio": 0, "video": 0}
        self.expected[source] = kinds
        self.got_media[source] = asyncio.Event()
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        pc.on("track", lambda track: self._readers.append(
            asyncio.create_task(self._read_track(source, track))))
        await self._negotiate(source, pc, participant=source)

    async def _read_track(self, source: str, track: MediaStreamTrack) -> None:
        counts = self.received[source]
        loop = asyncio.get_running_loop()
        last: float | None = None
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                now = loop.time()
                if last is not None:
                    key = (source, track.kind)
                    if now - last > self.max_gap.get(key, 0.0):
                        self.max_gap[key], self.max_gap_at[key] = now - last, now
                last = now
                counts[track.kind] += 1
                if all(counts[kind] >= 5 for kind in self.expected[source]) \
                        and not self.got_media[source].is_set():
                    self.got_media[source].set()
                    # What a browser reports from its inbound-rtp stats.
                    await self.request("clientEvent", event="mediaReceived",
                                       data={"participant": source})

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        try:
            for pc in self.pcs.values():
                await pc.close()
            if self.ws is not None:
                # The server may have closed the socket first (a call's end, a restart).
                with contextlib.suppress(aiohttp.ClientConnectionResetError):
                    await self.ws.close()
            if self._reader is not None:
                with contextlib.suppress(Exception):
                    await self._reader
        finally:
            if self.http is not None:
                await self.http.close()


async def go_live(service: Service, call: Call, clients: dict[str, CallClient]) -> None:
    """Every participant joins, publishes and receives every other; the call goes live."""
    await asyncio.gather(*(c.connect() for c in clients.values()))
    for client in clients.values():
        await client.join()
    await asyncio.gather(*(c.publish() for c in clients.values()))
    await asyncio.gather(*(c.subscribe(other) for pid, c in clients.items()
                           for other in clients if other != pid))
    for client in clients.values():
        await client.wait_event("callLive")
    assert call.state is CallState.LIVE


def roles(call: Call) -> dict[str, str]:
    return {p.id: p.role for p in call.participants.values()}


def clients_for(service: Service, call: Call) -> dict[str, CallClient]:
    return {pid: CallClient(service, service.token(call.id, pid, role=role))
            for pid, role in roles(call).items()}


@contextlib.asynccontextmanager
async def joined_consultation(service: Service) -> AsyncIterator[tuple[Call, CallClient,
                                                                       CallClient]]:
    """pat-1 and doc-1 of a new consultation, connected and joined; closed on the way out."""
    call = service.hub.create_call(CallKind.CONSULTATION, [("pat-1", "P", "patient"),
                                                          ("doc-1", "D", "doctor")])
    patient = CallClient(service, service.token(call.id, "pat-1"))
    doctor = CallClient(service, service.token(call.id, "doc-1", role="doctor"))
    try:
        await asyncio.gather(patient.connect(), doctor.connect())
        await patient.join()
        await doctor.join()
        yield call, patient, doctor
    finally:
        await asyncio.gather(patient.close(), doctor.close())
