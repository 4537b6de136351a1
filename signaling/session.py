"""The WebSocket driver: one browser connection, from `hello` to its last message.

Checks the Origin, authenticates with the join token, validates every message, limits
size and rate, and answers each request with a reply naming its id or an `error` with a
stable code. A bad message never harms the connection's call or anyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from kurento_ctl.coalesce import coalesce
from signaling.candidates import normalize_candidate
from signaling.errors import AuthError, CallElsewhere, CallError, ResourceError, SignalingError
from signaling.hub import HUB, Hub
from signaling.protocol import (
    SUBPROTOCOL,
    Accept,
    Cancel,
    Candidate,
    ClientEvent,
    ClientMessage,
    Decline,
    End,
    Hello,
    Join,
    Leave,
    Ping,
    Publish,
    Ring,
    Subscribe,
    encode,
    error,
    parse_client_message,
)
from signaling.socket import RateLimit, Relay, Socket
from signaling.tokens import JoinClaims, verify_join_token

__all__ = ["ClientSession", "RateLimit", "Relay", "SessionConfig", "Socket",
           "websocket_handler"]

log = logging.getLogger(__name__)

#: Frames above this close the socket (1009); below it but above max_message, an error reply.
HARD_FRAME_LIMIT = 1024 * 1024
#: Candidates of one socket awaiting the media server's reply at once; more wait.
MAX_IN_FLIGHT = 64


class SessionConfig:
    def __init__(self, *, jwt_keys: list[Any], issuer: str, audience: str,
                 allowed_origins: set[str], max_message: int = 65536,
                 rate: float = 50.0, burst: float = 100.0, heartbeat: float = 15.0,
                 expiry_warning: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 relay: Relay | None = None) -> None:
        self.jwt_keys = jwt_keys
        #: `tokenExpiring` is sent this long before the token's `exp`.
        self.expiry_warning = expiry_warning
        self.clock = clock
        self.issuer = issuer
        self.audience = audience
        self.allowed_origins = allowed_origins
        self.max_message = max_message
        self.rate = rate
        self.burst = burst
        self.heartbeat = heartbeat
        self.relay = relay


SESSION_CONFIG = web.AppKey("session_config", SessionConfig)


class ClientSession:
    """One connection's state: who it is once authenticated, and its outgoing queue."""

    def __init__(self, ws: Socket, hub: Hub, config: SessionConfig,
                 peer: str, *, relayed: bool = False) -> None:
        self.ws = ws
        #: Carried here from the node that holds the browser's socket.
        self.relayed = relayed
        #: (owner node, the hello's text): the call runs elsewhere, the socket goes there.
        self.moved: tuple[str, str] | None = None
        self._text = ""
        self.hub = hub
        self.config = config
        self.peer = peer
        self.claims: JoinClaims | None = None
        self._expiry: list[asyncio.TimerHandle] = []
        self._writer_task: asyncio.Task[None] | None = None
        self.joined = False
        self.limit = RateLimit(config.rate, config.burst)
        self.violations = 0
        self._out: asyncio.Queue[str | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Candidates sent to the media server and not yet answered.
        self._in_flight: set[asyncio.Task[None]] = set()

    def send(self, text: str) -> None:
        self._out.put_nowait(text)

    async def _writer(self) -> None:
        while (text := await self._out.get()) is not None:
            if self.ws.closed:
                return
            with contextlib.suppress(ConnectionError):
                try:
                    await self.ws.send_str(text)
                except UnicodeEncodeError:
                    # A lone surrogate from elsewhere (a name the MIS sent, say): UTF-8
                    # cannot carry it, JSON's \u escapes can. Rare, so the common path
                    # keeps ensure_ascii=False and this writer never dies of it.
                    log.warning("! a message held a lone surrogate; sent escaped",
                                extra=self.log_extra)
                    await self.ws.send_str(json.dumps(json.loads(text), separators=(",", ":")))

    @property
    def log_extra(self) -> dict[str, Any]:
        if self.claims is None:
            return {"peer": self.peer}
        return {"call_id": self.claims.call_id, "participant": self.claims.subject}

    async def run(self) -> None:
        writer = self._writer_task = asyncio.create_task(self._writer())
        try:
            async for msg in self.ws:
                if msg.type is WSMsgType.TEXT:
                    await self._receive(msg.data)
                    if self.moved is not None:
                        break
                elif msg.type is WSMsgType.BINARY:
                    self.send(error("message.malformed", "binary frames are not accepted"))
                if self.violations > 50:
                    log.warning("! closing a connection that keeps sending bad messages",
                                extra=self.log_extra)
                    # Deliver the errors already queued, so the client sees why it is cut off.
                    self._out.put_nowait(None)
                    await writer
                    await self.ws.close(code=WSCloseCode.POLICY_VIOLATION,
                                        message=b"rate.limited")
                    break
        finally:
            for handle in self._expiry:
                handle.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(Exception):
                    await task
            if self.claims is not None:
                if self.joined:
                    await self.hub.disconnected(self, self.claims.call_id, self.claims.subject)
                await self.hub.detach(self, self.claims)
            self._out.put_nowait(None)
            await writer

    async def _receive(self, text: str) -> None:
        if not self.limit.allow(time.monotonic()):
            self.violations += 1
            self.send(error("rate.limited", "too many messages; slow down"))
            return
        self._text = text
        try:
            message = parse_client_message(text, max_size=self.config.max_message)
        except SignalingError as exc:
            self.violations += 1
            log.info("! %s: %s", exc.code, exc.message, extra=self.log_extra)
            self.send(error(exc.code, exc.message, re=exc.request_id))
            return
        if isinstance(message, (Publish, Subscribe)):
            # Negotiations take media-server round trips; run them side by side.
            self._handle_aside(message)
        elif isinstance(message, Candidate):
            # Pipelined: its request leaves for the media server in the task's first step
            # (nothing on that path suspends before sending), and tasks start in the order
            # made, so candidates arrive in the order sent while this socket reads on
            # instead of waiting for each reply; each task answers its own request.
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            self._in_flight.add(self._handle_aside(message))
        else:
            if self._in_flight:
                # What follows candidates (a leave, a hello) acts after them, as sent.
                await asyncio.wait(self._in_flight)
            await self._handle(message)

    def _handle_aside(self, message: ClientMessage) -> asyncio.Task[None]:
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        # One callback, not two: each is its own loop callback once the task is done.
        task.add_done_callback(self._candidate_done if isinstance(message, Candidate)
                               else self._tasks.discard)
        return task

    def _candidate_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight.discard(task)

    async def _handle(self, message: ClientMessage) -> None:
        try:
            reply = await self._dispatch(message)
            if reply is not None:
                kind, fields = reply
                self.send(encode(kind, re=message.id, **fields))
        except SignalingError as exc:
            log.info("! %s %s: %s", message.TYPE, exc.code, exc.message, extra=self.log_extra)
            self.send(error(exc.code, exc.message, re=message.id))
        except Exception:
            log.exception("! %s failed", message.TYPE, extra=self.log_extra)
            self.send(error("internal", "internal error; the call goes on", re=message.id))

    def _watch_expiry(self, claims: JoinClaims) -> None:
        """Warns before the token's expiry and, unless a fresh token arrives, ends the
        participant's part in the call when it expires."""
        for handle in self._expiry:
            handle.cancel()
        loop = asyncio.get_running_loop()
        left = claims.expires - self.config.clock()
        warn_at = max(0.0, left - self.config.expiry_warning)
        self._expiry = [
            loop.call_later(warn_at, lambda: self.send(encode(
                "tokenExpiring", expiresAt=claims.expires))),
            loop.call_later(max(0.0, left), lambda: self._spawn(self._expired(claims))),
        ]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close_soon(self) -> None:
        self._spawn(self._hang_up(WSCloseCode.SERVICE_RESTART, b"service.restarting"))

    async def _hang_up(self, code: int, reason: bytes) -> None:
        self._out.put_nowait(None)
        if self._writer_task is not None:
            await self._writer_task  # what was queued goes out before the close frame
        await self.ws.close(code=code, message=reason)

    async def _expired(self, claims: JoinClaims) -> None:
        if self.claims is not claims:
            return
        log.info("! token expired; the participant leaves the call", extra=self.log_extra)
        self.send(error("auth.expired", "your token expired; open the link again"))
        if self.joined:
            self.joined = False
            await self.hub.leave(self, claims.call_id, claims.subject, why="token-expired")
        await self._hang_up(WSCloseCode.POLICY_VIOLATION, b"auth.expired")

    def _claims(self) -> JoinClaims:
        if self.claims is None:
            raise AuthError("send hello with your token first", code="auth.required")
        return self.claims

    def _joined(self) -> JoinClaims:
        claims = self._claims()
        if not self.joined:
            raise SignalingError("join the call first", code="call.not_joined")
        return claims

    async def _dispatch(self, message: ClientMessage) -> tuple[str, dict[str, Any]] | None:
        match message:
            case Hello(token=token):
                claims = verify_join_token(token, keys=self.config.jwt_keys,
                                           issuer=self.config.issuer,
                                           audience=self.config.audience)
                if self.claims is not None:
                    # A fresh token for the same seat extends the connection's life.
                    if claims.call_id != self.claims.call_id:
                        raise AuthError("this connection is in another call; a token opens "
                                        "one call only", code="auth.wrong_call")
                    if claims.subject != self.claims.subject:
                        raise AuthError("this connection belongs to another participant",
                                        code="auth.invalid")
                    self.claims = claims
                    self._watch_expiry(claims)
                    return "welcome", {"participant": claims.subject, "call": claims.call_id,
                                       "refreshed": True}
                try:
                    call = await self.hub.attach(self, claims)
                except CallElsewhere as elsewhere:
                    if self.relayed or self.config.relay is None:
                        # Moved again while being carried: the page reconnects and finds it.
                        raise CallError("the call is moving to another node; reconnect",
                                        code="service.unavailable") from None
                    self.moved = (elsewhere.node, self._text)
                    return None
                self.claims = claims
                self._watch_expiry(claims)
                log.info("< hello from %s (%s)", claims.subject, claims.role,
                         extra=self.log_extra)
                return "welcome", {"participant": claims.subject, "call": claims.call_id,
                                   "kind": call.kind.value, "state": call.state.value}
            case Join(resume=resume):
                claims = self._claims()
                if self.joined:
                    raise SignalingError("already joined", code="call.already_joined")
                joined = await self.hub.join(self, claims, resume=resume)
                self.joined = True
                return "joined", joined
            case Publish(sdp=sdp):
                claims = self._joined()
                answer = await self.hub.publish(self, claims.call_id, claims.subject, sdp)
                return "answer", {"target": "publish", "sdp": answer}
            case Subscribe(participant=source, sdp=sdp):
                claims = self._joined()
                answer = await self.hub.subscribe(self, claims.call_id, claims.subject,
                                                  source, sdp)
                return "answer", {"target": source, "sdp": answer}
            case Candidate(target=target, candidate=candidate, sdpMid=mid,
                           sdpMLineIndex=index):
                claims = self._joined()
                # Unparsable gets candidate.invalid here; `a=` goes, ::ffff:a.b.c.d is
                # written as a.b.c.d, so the media server gets what the filter judged.
                line = normalize_candidate(candidate)
                await self.hub.candidate(self, claims.call_id, claims.subject, target,
                                         {"candidate": line, "sdpMid": mid,
                                          "sdpMLineIndex": index})
                return None if message.id is None else ("ok", {})
            case ClientEvent(event=event, data=data):
                # Before `join` too: a camera that fails on the pre-call page is exactly
                # what the timeline must show.
                claims = self._claims()
                self.hub.client_event(self, claims.call_id, claims.subject, event, data)
                return None if message.id is None else ("ok", {})
            case Leave():
                claims = self._joined()
                self.joined = False
                await self.hub.leave(self, claims.call_id, claims.subject)
                return "ok", {}
            case End():
                claims = self._joined()
                if claims.role == "patient":
                    raise SignalingError("only clinicians end a call for everyone",
                                         code="call.not_allowed")
                await self.hub.end(claims.call_id)
                return "ok", {}
            case Ring(participant=target):
                return "ringing", self.hub.ring(self._claims(), target)
            case Accept():
                self.hub.accept(self._claims())
                return "ok", {}
            case Decline():
                await self.hub.decline(self._claims())
                return "ok", {}
            case Cancel():
                await self.hub.cancel(self._claims())
                return "ok", {}
            case Ping():
                return "pong", {}
        raise ResourceError("unhandled message", code="internal")  # pragma: no cover


def origin_allowed(request: web.Request, allowed: set[str]) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" in allowed


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    config = request.app[SESSION_CONFIG]
    if not origin_allowed(request, config.allowed_origins):
        log.warning("! WebSocket from a foreign origin %r refused",
                    request.headers.get("Origin", "")[:100])
        return web.json_response({"code": "origin.forbidden",
                                  "message": "this origin may not open a call socket"},
                                 status=403)
    # No permessage-deflate: our messages are small JSON, and each socket's zlib state
    # costs ~100 KiB resident, five times what the idle socket needs otherwise
    # (bench/idle.py: 129 KiB with it, 24 KiB without).
    ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=HARD_FRAME_LIMIT,
                               heartbeat=config.heartbeat, compress=False)
    await ws.prepare(request)
    # What the writer sends in one loop turn (a reply and the events behind it) leaves in
    # one write.
    coalesce(ws)
    session = ClientSession(ws, hub, config, request.remote or "?")
    await session.run()
    if session.moved is not None and config.relay is not None:
        owner, hello = session.moved
        await config.relay.carry(ws, owner, hello, session.peer)
    return ws
