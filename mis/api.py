"""REST API for the MIS under /api/v1: create calls, mint join tokens, read and end calls.

Authenticated with `Authorization: Bearer <credential>`: an API key or a short-lived JWT
the MIS signs, each usable once (`mis.auth`). Errors are JSON: `{"code", "message",
"field"}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from mis.answers import (
    Invalid,
    TooLarge,
    check_participants,
    check_schedule,
    limited,
    problem,
    reply,
    status_of,
    unavailable,
)
from mis.auth import authenticate
from mis.clients import Network, client_address, count
from mis.history import SINK, STORE, summary
from mis.jsonsafe import JsonRefused, depth_exceeds, parse
from mis.openapi import document
from mis.paging import paged, timeline_window
from mis.webhooks import OUTBOX, as_text
from signaling.call import Call, CallKind, CallState
from signaling.errors import CallElsewhere, CallError
from signaling.hub import HUB
from signaling.placement import forward
from signaling.tokens import mint_join_token

__all__ = ["setup_api"]

log = logging.getLogger(__name__)

MAX_BODY = 65536
#: `metadata` is copied into every snapshot, webhook and recording of the call: kept small.
METADATA_DEPTH = 8
METADATA_BYTES = 16384
IDEMPOTENCY_TTL = 24 * 3600
#: Failed authentications allowed per client address per minute (all nodes) before 429.
AUTH_FAILURES_PER_MINUTE = 20
#: Longest appointment window.
MAX_SCHEDULE = 7 * 86400


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """What the API needs of the service's settings and secrets."""

    api_key_hashes: tuple[str, ...]
    jwt_secret: str
    jwt_issuer: str
    jwt_audience: str
    token_ttl: float
    public_url: str
    #: Links of a scheduled call stay valid this long after its window (calls.schedule_overrun).
    schedule_overrun: float = 3600.0
    #: Peers whose X-Forwarded-For names the client (http.trusted_proxies).
    trusted_proxies: tuple[Network, ...] = ()
    #: Requests per minute per credential (http.api_rate), all nodes together.
    rate_per_minute: int = 1200
    #: The Redis client's own command timeout; bounds the wait for history to settle too.
    redis_timeout: float = 2.0


API_CONFIG = web.AppKey("api_config", ApiConfig)
REDIS = web.AppKey("redis", aioredis.Redis)


class Api:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/api/v1/") or request.path == "/api/v1/openapi.json":
            return await handler(request)  # type: ignore[no-any-return]
        config = request.app[API_CONFIG]
        remote = client_address(request.remote, request.headers.getall("X-Forwarded-For", []),
                                config.trusted_proxies)
        redis = request.app[REDIS]
        try:
            refused, who = await authenticate(
                request.headers.get("Authorization", ""), key_hashes=config.api_key_hashes,
                jwt_secret=config.jwt_secret, jwt_issuer=config.jwt_issuer, redis=redis)
            # Failures count against the client's own address, so nobody else's guessing
            # (behind the same proxy, too) locks the MIS out; a good credential is never
            # refused for them. Keys and secrets are too long to guess either way.
            if refused is not None:
                failures = await count(redis, "auth-failures", remote)
            else:
                used = await count(redis, "requests", who)
        except (aioredis.RedisError, OSError) as exc:
            log.error("! cannot check an API credential: %s", type(exc).__name__)
            return unavailable()
        if refused is not None:
            if failures > AUTH_FAILURES_PER_MINUTE:
                if failures == AUTH_FAILURES_PER_MINUTE + 1:
                    log.warning("! API client %s rate limited: %d failed authentications "
                                "in a minute", remote, failures - 1)
                return limited("too many failed authentications; wait a minute")
            log.warning("! API request refused from %s: %s", remote, refused)
            message = ("this token was already used; sign a new one per request"
                       if "replayed" in refused else "a valid API key or MIS JWT is required")
            return problem(401, "auth.invalid", message)
        if used > config.rate_per_minute:
            if used == config.rate_per_minute + 1:
                log.warning("! API credential %s over %d requests a minute (from %s)",
                            who[:12], config.rate_per_minute, remote)
            return limited(f"at most {config.rate_per_minute} requests a minute")
        too_large = problem(413, "request.too_large",
                            f"request bodies are at most {MAX_BODY} bytes")
        if (request.content_length or 0) > MAX_BODY:
            return too_large
        missed = request.match_info.http_exception
        if isinstance(missed, web.HTTPMethodNotAllowed):
            # JSON like every other answer: a MIS parses the code, not aiohttp's text.
            response = problem(405, "request.method_not_allowed",
                               f"{request.method} is not one of "
                               f"{', '.join(sorted(missed.allowed_methods))} here")
            response.headers["Allow"] = ",".join(sorted(missed.allowed_methods))
            return response
        if missed is not None:
            return problem(404, "request.not_found", "no such API route")
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except (aioredis.RedisError, OSError) as exc:
            log.error("! %s %s: Redis: %s", request.method, request.path,
                      type(exc).__name__)
            return unavailable()
        except TooLarge:
            return too_large
        except Invalid as exc:
            return problem(422, "request.invalid", str(exc), exc.field)
        except CallError as exc:
            return problem(status_of(exc.code), exc.code, exc.message)

    def tokens(self, call: Call | dict[str, Any], only: str | None = None
               ) -> list[dict[str, Any]]:
        """A join token and link per participant of a call (or of its stored snapshot)."""
        config = self.app[API_CONFIG]
        if isinstance(call, Call):
            call = call.describe()
        ttl = config.token_ttl
        if call.get("schedule"):
            # Valid until the appointment is over, however far ahead it is booked.
            ttl = max(ttl, call["schedule"]["end"] + config.schedule_overrun - time.time())
        out = []
        for p in call["participants"]:
            if only is not None and p["id"] != only:
                continue
            token = mint_join_token(
                key=config.jwt_secret, issuer=config.jwt_issuer,
                audience=config.jwt_audience, subject=p["id"], name=p["name"],
                role=p["role"], call_id=call["id"], ttl=ttl)
            out.append({"id": p["id"], "role": p["role"], "token": token,
                        "link": f"{config.public_url}/join/{token}"})
        return out

    async def _json(self, request: web.Request, *, optional: bool = False) -> dict[str, Any]:
        # Read with a limit: a chunked body announces no length for the middleware to check.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(16384):
            size += len(chunk)
            if size > MAX_BODY:
                raise TooLarge
            chunks.append(chunk)
        raw = b"".join(chunks)
        if optional and not raw.strip():
            return {}
        try:
            body = parse(raw)
        except JsonRefused as exc:
            raise Invalid("body", f"a JSON object ({exc})") from None
        if not isinstance(body, dict):
            raise Invalid("body", "a JSON object")
        return body

    async def create_call(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= 200:
            raise Invalid("Idempotency-Key", "1-200 characters")
        try:
            kind = CallKind(str(body.get("kind")))
        except ValueError:
            raise Invalid("kind", "consultation, referral or conference") from None
        participants = check_participants(body.get("participants"), kind)
        metadata = body.get("metadata", {})
        if not isinstance(metadata, dict):
            raise Invalid("metadata", "an object")
        if depth_exceeds(metadata, METADATA_DEPTH):
            raise Invalid("metadata", f"nested at most {METADATA_DEPTH} levels deep")
        if len(json.dumps(metadata, ensure_ascii=False).encode()) > METADATA_BYTES:
            raise Invalid("metadata", f"at most {METADATA_BYTES} bytes as JSON")
        schedule = check_schedule(body.get("schedule"), time.time())
        redis = request.app[REDIS]
        # Nothing is created while Redis cannot hold it: the call's history and its
        # call.created webhook are promised by the 201.
        await redis.ping()
        slot: str | None = None
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if key is not None:
            slot = "telemed:idempotency:" + hashlib.sha256(key.encode()).hexdigest()
            # Claimed before the call exists, so two concurrent retries cannot both create one.
            if not await redis.set(slot, f"{fingerprint} -", nx=True, ex=IDEMPOTENCY_TTL):
                return await self._repeat(request, slot, fingerprint)
        try:
            call = request.app[HUB].create_call(kind, participants, metadata, schedule)
        except BaseException:
            if slot is not None:
                await redis.delete(slot)
            raise
        # The 201 promises the call and its call.created webhook survive a crash from now on:
        # in Redis, or, if Redis stalled since the ping, fsynced in the journal that reaches
        # Redis when it is back.
        try:
            async with asyncio.timeout(request.app[API_CONFIG].redis_timeout):
                await request.app[SINK].settle()
        except TimeoutError:
            log.warning("! call created while Redis stalls; its history is in the journal",
                        extra={"call_id": call.id})
        if slot is not None:
            try:
                await redis.set(slot, f"{fingerprint} {call.id}", ex=IDEMPOTENCY_TTL)
            except (aioredis.RedisError, OSError) as exc:
                # The call exists; answering 503 now would invite a retry that makes another.
                log.error("! idempotency key not bound to its call: %s", type(exc).__name__,
                          extra={"call_id": call.id})
        described = call.describe()
        return reply({**described, "participants": self.tokens(described)}, status=201)

    async def _repeat(self, request: web.Request, slot: str, fingerprint: str
                      ) -> web.Response:
        """A retry of a POST /calls whose Idempotency-Key was seen: the first answer again."""
        seen = await request.app[REDIS].get(slot)
        earlier_fp, call_id = as_text(seen or "- -").split(" ", 1)
        if earlier_fp != fingerprint:
            return problem(409, "request.conflict",
                           "this Idempotency-Key was used for a different request")
        live = request.app[HUB].calls.get(call_id)
        # After a restart the call is only in the history; it is the same call all the same.
        earlier = live.describe() if live is not None else await request.app[STORE].get(call_id)
        if earlier is None:
            return problem(409, "request.conflict",
                           "the first request with this Idempotency-Key is still being "
                           "processed; retry shortly")
        earlier = {k: v for k, v in earlier.items() if k != "timeline"}
        return reply({**earlier, "participants": self.tokens(earlier)}, status=200)

    async def _call(self, request: web.Request) -> Call:
        """The call, run here; `CallElsewhere` when another node runs it."""
        call_id = request.match_info["call_id"]
        await request.app[HUB].place(call_id)
        call = await request.app[HUB].load(call_id)
        if call is None:
            if await request.app[STORE].get(call_id) is not None:
                # Only history knows it: it finished in an earlier run of the service.
                raise CallError("the call is over", code="call.ended")
            raise CallError("no such call", code="call.not_found")
        return call

    async def get_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        start, size = timeline_window(request.query)
        hub = request.app[HUB]
        # A copy of a call another node runs now (booked here) would be stale: the store
        # has what its owner wrote.
        call = hub.calls.get(call_id) if hub.placement is None \
            or hub.placement.epoch(call_id) is not None else None
        if call is not None:
            first, entries = call.timeline.page(start, size)
            return reply(paged(summary(call), first, entries, call.timeline.seq))
        stored = await request.app[STORE].get(call_id, start=start, limit=size)
        if stored is None:
            raise CallError("no such call", code="call.not_found")
        return reply(paged(stored, stored["timelineFrom"], stored["timeline"],
                           stored["timelineEnd"]))

    async def list_calls(self, request: web.Request) -> web.Response:
        query = request.query
        state = query.get("state")
        if state is not None and state not in {s.value for s in CallState}:
            raise Invalid("state", f"one of {', '.join(s.value for s in CallState)}")
        numbers: dict[str, float] = {}
        for name in ("since", "cursor", "limit"):
            if name in query:
                try:
                    numbers[name] = float(query[name])
                except ValueError:
                    raise Invalid(name, "a number") from None
                if not math.isfinite(numbers[name]):
                    raise Invalid(name, "a finite number")
        limit = int(numbers.get("limit", 50))
        if not 1 <= limit <= 200:
            raise Invalid("limit", "1-200")
        items, cursor = await request.app[STORE].find(
            state=state, since=numbers.get("since", 0.0), limit=limit,
            cursor=numbers.get("cursor"))
        return reply({"calls": items, "nextCursor": cursor})

    async def end_call(self, request: web.Request) -> web.Response:
        try:
            call = await self._call(request)
        except CallElsewhere as elsewhere:
            return reply(await forward(request.app[HUB],
                elsewhere.node, "end", {"call": request.match_info["call_id"]}))
        await request.app[HUB].end(call.id)
        return reply(call.describe())

    async def new_tokens(self, request: web.Request) -> web.Response:
        try:
            described = (await self._call(request)).describe()
        except CallElsewhere:
            # Tokens need only who is in it: its owner's record says.
            stored = await request.app[STORE].get(request.match_info["call_id"], limit=1)
            if stored is None:
                raise CallError("no such call", code="call.not_found") from None
            described = stored
        body = await self._json(request, optional=True)
        only = body.get("participant")
        if only is not None and not isinstance(only, str):
            raise Invalid("participant", "a participant id")
        if only is not None and only not in {p["id"] for p in described["participants"]}:
            raise CallError("no such participant", code="participant.not_found")
        if described["state"] in (CallState.ENDED.value, CallState.FAILED.value):
            raise CallError("the call is over", code="call.ended")
        return reply({"participants": self.tokens(described, only)})

    async def remove_participant(self, request: web.Request) -> web.Response:
        pid = request.match_info["participant"]
        try:
            call = await self._call(request)
        except CallElsewhere as elsewhere:
            return reply(await forward(request.app[HUB],
                elsewhere.node, "kick", {"call": request.match_info["call_id"],
                                         "participant": pid}))
        await request.app[HUB].kick(call.id, pid)
        return reply(call.describe())

    async def turn_status(self, request: web.Request) -> web.Response:
        turn = request.app[HUB].turn
        if turn is None:
            return reply({"enabled": False, "size": 0, "inUse": 0, "leases": []})
        return reply({"enabled": True, "size": turn.size,
                                  "inUse": await turn.in_use(), "issued": turn.issued,
                                  "exhausted": turn.exhausted, "leases": await turn.active()})

    async def webhook_event(self, request: web.Request) -> web.Response:
        outbox = request.app.get(OUTBOX)
        event = await outbox.event(request.match_info["event_id"]) if outbox else None
        if event is None:
            raise CallError("no such webhook event", code="event.not_found")
        return reply(event)

    async def call_webhooks(self, request: web.Request) -> web.Response:
        outbox = request.app.get(OUTBOX)
        call_id = request.match_info["call_id"]
        events = await outbox.events_of(call_id) if outbox else []
        return reply({"events": events})


def setup_api(app: web.Application) -> Api:
    api = Api(app)
    app.middlewares.append(api.middleware)
    async def openapi(request: web.Request) -> web.Response:
        return reply(document())

    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_post("/api/v1/calls", api.create_call)
    app.router.add_get("/api/v1/calls", api.list_calls)
    app.router.add_get("/api/v1/calls/{call_id}", api.get_call)
    app.router.add_delete("/api/v1/calls/{call_id}/participants/{participant}",
                          api.remove_participant)
    app.router.add_get("/api/v1/webhooks/events/{event_id}", api.webhook_event)
    app.router.add_get("/api/v1/calls/{call_id}/webhooks", api.call_webhooks)
    app.router.add_get("/api/v1/turn", api.turn_status)
    app.router.add_post("/api/v1/calls/{call_id}/end", api.end_call)
    app.router.add_post("/api/v1/calls/{call_id}/tokens", api.new_tokens)
    return api


API = web.AppKey("api", Api)
