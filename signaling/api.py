"""REST API for the MIS under /api/v1: create calls, mint join tokens, read and end calls.

Authenticated with an API key (`Authorization: Bearer <key>`), compared in constant time
against the SHA-256 hashes in the settings. Errors are JSON: `{"code", "message", "field"}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections import defaultdict, deque
from typing import Any

from aiohttp import web

from signaling.call import Call, CallKind, CallState
from signaling.errors import CallError
from signaling.history import snapshot
from signaling.openapi import document
from signaling.tokens import ROLES, mint_join_token
from signaling.webhooks import as_text

__all__ = ["setup_api"]

log = logging.getLogger(__name__)

ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MAX_BODY = 65536
IDEMPOTENCY_TTL = 24 * 3600
#: Failed authentications allowed per client address per minute before 429.
AUTH_FAILURES_PER_MINUTE = 20


def problem(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


class Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _participants(raw: Any, kind: CallKind) -> list[tuple[str, str, str]]:
    if not isinstance(raw, list) or not raw:
        raise Invalid("participants", "a non-empty list of participants")
    out: list[tuple[str, str, str]] = []
    for i, p in enumerate(raw):
        where = f"participants[{i}]"
        if not isinstance(p, dict):
            raise Invalid(where, "an object with id, name and role")
        pid, name, role = p.get("id"), p.get("name"), p.get("role")
        if not isinstance(pid, str) or not ID.match(pid):
            raise Invalid(f"{where}.id", "1-64 letters, digits or _.@-")
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise Invalid(f"{where}.name", "a name of 1-200 characters")
        if role not in ROLES:
            raise Invalid(f"{where}.role", f"one of {', '.join(ROLES)}")
        if any(pid == o[0] for o in out):
            raise Invalid(f"{where}.id", "participant ids must be unique")
        out.append((pid, name, role))
    return out


class Api:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)

    def _authorized(self, request: web.Request) -> bool:
        from signaling.app import ENDPOINTS

        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
        # Compare against every key so the time taken does not tell which one matched.
        matches = [hmac.compare_digest(digest, h) for h in request.app[ENDPOINTS].api_key_hashes]
        return any(matches)

    def _too_many_failures(self, remote: str) -> bool:
        window = self._failures[remote]
        now = time.monotonic()
        while window and window[0] < now - 60:
            window.popleft()
        return len(window) >= AUTH_FAILURES_PER_MINUTE

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/api/v1/") or request.path == "/api/v1/openapi.json":
            return await handler(request)  # type: ignore[no-any-return]
        remote = request.remote or "?"
        if self._too_many_failures(remote):
            return problem(429, "rate.limited", "too many failed authentications; wait a minute")
        if not self._authorized(request):
            self._failures[remote].append(time.monotonic())
            log.warning("! API request without a valid key from %s", remote)
            return problem(401, "auth.invalid", "a valid API key is required")
        if (request.content_length or 0) > MAX_BODY:
            return problem(413, "request.too_large", f"request bodies are at most {MAX_BODY} bytes")
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except Invalid as exc:
            return problem(422, "request.invalid", str(exc), exc.field)
        except CallError as exc:
            status = 404 if exc.code in ("call.not_found", "participant.not_found",
                                         "event.not_found") else 409
            if exc.code == "recording.disk_full":
                status = 507
            return problem(status, exc.code, exc.message)

    def tokens(self, call: Call, only: str | None = None) -> list[dict[str, Any]]:
        from signaling.app import ENDPOINTS, SETTINGS

        settings = self.app[SETTINGS]
        out = []
        for p in call.participants.values():
            if only is not None and p.id != only:
                continue
            token = mint_join_token(
                key=self.app[ENDPOINTS].jwt_secret, issuer=settings.auth.jwt_issuer,
                audience=settings.auth.jwt_audience, subject=p.id, name=p.name,
                role=p.role, call_id=call.id, ttl=settings.auth.token_ttl)  # type: ignore[arg-type]
            out.append({"id": p.id, "role": p.role, "token": token,
                        "link": f"{settings.public_url}/join/{token}"})
        return out

    async def _json(self, request: web.Request, *, optional: bool = False) -> dict[str, Any]:
        raw = await request.read()
        if optional and not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise Invalid("body", "a JSON object") from None
        if not isinstance(body, dict):
            raise Invalid("body", "a JSON object")
        return body

    async def create_call(self, request: web.Request) -> web.Response:
        from signaling.app import HUB, REDIS, SINK

        body = await self._json(request)
        key = request.headers.get("Idempotency-Key")
        slot: str | None = None
        fingerprint: str | None = None
        if key is not None:
            if not 0 < len(key) <= 200:
                raise Invalid("Idempotency-Key", "1-200 characters")
            fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            slot = "telemed:idempotency:" + hashlib.sha256(key.encode()).hexdigest()
            seen = await request.app[REDIS].get(slot)
            if seen is not None:
                earlier_fp, call_id = as_text(seen).split(" ", 1)
                if earlier_fp != fingerprint:
                    return problem(409, "request.conflict",
                                   "this Idempotency-Key was used for a different request")
                earlier = request.app[HUB].calls.get(call_id)
                if earlier is not None:
                    return web.json_response(
                        {**earlier.describe(), "participants": self.tokens(earlier)},
                        status=200)
        try:
            kind = CallKind(str(body.get("kind")))
        except ValueError:
            raise Invalid("kind", "consultation, referral or conference") from None
        participants = _participants(body.get("participants"), kind)
        metadata = body.get("metadata", {})
        if not isinstance(metadata, dict):
            raise Invalid("metadata", "an object")
        call = request.app[HUB].create_call(kind, participants, metadata)
        # The 201 promises the call and its call.created webhook survive a crash from now on.
        await request.app[SINK].settle()
        if slot is not None:
            await request.app[REDIS].set(slot, f"{fingerprint} {call.id}", ex=IDEMPOTENCY_TTL)
        return web.json_response({**call.describe(), "participants": self.tokens(call)},
                                 status=201)

    def _call(self, request: web.Request) -> Call:
        from signaling.app import HUB

        call = request.app[HUB].calls.get(request.match_info["call_id"])
        if call is None:
            raise CallError("no such call", code="call.not_found")
        return call

    async def get_call(self, request: web.Request) -> web.Response:
        from signaling.app import HUB, STORE

        call_id = request.match_info["call_id"]
        call = request.app[HUB].calls.get(call_id)
        if call is not None:
            return web.json_response(snapshot(call))
        stored = await request.app[STORE].get(call_id)
        if stored is None:
            raise CallError("no such call", code="call.not_found")
        return web.json_response(stored)

    async def list_calls(self, request: web.Request) -> web.Response:
        from signaling.app import STORE

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
        limit = int(numbers.get("limit", 50))
        if not 1 <= limit <= 200:
            raise Invalid("limit", "1-200")
        items, cursor = await request.app[STORE].find(
            state=state, since=numbers.get("since", 0.0), limit=limit,
            cursor=numbers.get("cursor"))
        return web.json_response({"calls": items, "nextCursor": cursor})

    async def end_call(self, request: web.Request) -> web.Response:
        from signaling.app import HUB

        call = self._call(request)
        await request.app[HUB].end(call.id)
        return web.json_response(call.describe())

    async def new_tokens(self, request: web.Request) -> web.Response:
        call = self._call(request)
        body = await self._json(request, optional=True)
        only = body.get("participant")
        if only is not None and not isinstance(only, str):
            raise Invalid("participant", "a participant id")
        if only is not None and only not in call.participants:
            raise CallError("no such participant", code="participant.not_found")
        if call.finished:
            raise CallError("the call is over", code="call.ended")
        return web.json_response({"participants": self.tokens(call, only)})

    async def remove_participant(self, request: web.Request) -> web.Response:
        from signaling.app import HUB

        call = self._call(request)
        await request.app[HUB].kick(call.id, request.match_info["participant"])
        return web.json_response(call.describe())

    async def turn_status(self, request: web.Request) -> web.Response:
        from signaling.app import HUB

        turn = request.app[HUB].turn
        if turn is None:
            return web.json_response({"enabled": False, "size": 0, "inUse": 0, "leases": []})
        return web.json_response({"enabled": True, "size": turn.size,
                                  "inUse": await turn.in_use(), "issued": turn.issued,
                                  "exhausted": turn.exhausted, "leases": await turn.active()})

    async def webhook_event(self, request: web.Request) -> web.Response:
        from signaling.app import OUTBOX

        outbox = request.app.get(OUTBOX)
        event = await outbox.event(request.match_info["event_id"]) if outbox else None
        if event is None:
            raise CallError("no such webhook event", code="event.not_found")
        return web.json_response(event)


def setup_api(app: web.Application) -> Api:
    api = Api(app)
    app.middlewares.append(api.middleware)
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document())

    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_post("/api/v1/calls", api.create_call)
    app.router.add_get("/api/v1/calls", api.list_calls)
    app.router.add_get("/api/v1/calls/{call_id}", api.get_call)
    app.router.add_delete("/api/v1/calls/{call_id}/participants/{participant}",
                          api.remove_participant)
    app.router.add_get("/api/v1/webhooks/events/{event_id}", api.webhook_event)
    app.router.add_get("/api/v1/turn", api.turn_status)
    app.router.add_post("/api/v1/calls/{call_id}/end", api.end_call)
    app.router.add_post("/api/v1/calls/{call_id}/tokens", api.new_tokens)
    return api
