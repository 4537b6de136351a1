"""REST API for the MIS under /api/v1: create calls, mint join tokens, read and end calls.

Authenticated with an API key (`Authorization: Bearer <key>`), compared in constant time
against the SHA-256 hashes in the settings. Errors are JSON: `{"code", "message", "field"}`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from typing import Any

from aiohttp import web

from signaling.call import Call, CallKind
from signaling.errors import CallError
from signaling.tokens import ROLES, mint_join_token

__all__ = ["setup_api"]

log = logging.getLogger(__name__)

ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


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

    def _authorized(self, request: web.Request) -> bool:
        from signaling.app import ENDPOINTS

        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
        # Compare against every key so the time taken does not tell which one matched.
        matches = [hmac.compare_digest(digest, h) for h in request.app[ENDPOINTS].api_key_hashes]
        return any(matches)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/api/v1/") or request.path == "/api/v1/openapi.json":
            return await handler(request)  # type: ignore[no-any-return]
        if not self._authorized(request):
            log.warning("! API request without a valid key from %s", request.remote)
            return problem(401, "auth.invalid", "a valid API key is required")
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except Invalid as exc:
            return problem(422, "request.invalid", str(exc), exc.field)
        except CallError as exc:
            return problem(404 if exc.code == "call.not_found" else 409, exc.code, exc.message)

    def tokens(self, call: Call) -> list[dict[str, Any]]:
        from signaling.app import ENDPOINTS, SETTINGS

        settings = self.app[SETTINGS]
        out = []
        for p in call.participants.values():
            token = mint_join_token(
                key=self.app[ENDPOINTS].jwt_secret, issuer=settings.auth.jwt_issuer,
                audience=settings.auth.jwt_audience, subject=p.id, name=p.name,
                role=p.role, call_id=call.id, ttl=settings.auth.token_ttl)  # type: ignore[arg-type]
            out.append({"id": p.id, "role": p.role, "token": token,
                        "link": f"{settings.public_url}/join/{token}"})
        return out

    async def create_call(self, request: web.Request) -> web.Response:
        from signaling.app import HUB

        try:
            body = await request.json()
        except ValueError:
            raise Invalid("body", "a JSON object") from None
        if not isinstance(body, dict):
            raise Invalid("body", "a JSON object")
        try:
            kind = CallKind(str(body.get("kind")))
        except ValueError:
            raise Invalid("kind", "consultation, referral or conference") from None
        participants = _participants(body.get("participants"), kind)
        metadata = body.get("metadata", {})
        if not isinstance(metadata, dict):
            raise Invalid("metadata", "an object")
        call = request.app[HUB].create_call(kind, participants, metadata)
        return web.json_response({**call.describe(), "participants": self.tokens(call)},
                                 status=201)

    def _call(self, request: web.Request) -> Call:
        from signaling.app import HUB

        call = request.app[HUB].calls.get(request.match_info["call_id"])
        if call is None:
            raise CallError("no such call", code="call.not_found")
        return call

    async def get_call(self, request: web.Request) -> web.Response:
        call = self._call(request)
        return web.json_response({**call.describe(), "timeline": call.timeline.as_list()})

    async def end_call(self, request: web.Request) -> web.Response:
        from signaling.app import HUB

        call = self._call(request)
        await request.app[HUB].end(call.id)
        return web.json_response(call.describe())

    async def new_tokens(self, request: web.Request) -> web.Response:
        call = self._call(request)
        if call.finished:
            raise CallError("the call is over", code="call.ended")
        return web.json_response({"participants": self.tokens(call)})


def setup_api(app: web.Application) -> Api:
    api = Api(app)
    app.middlewares.append(api.middleware)
    app.router.add_post("/api/v1/calls", api.create_call)
    app.router.add_get("/api/v1/calls/{call_id}", api.get_call)
    app.router.add_post("/api/v1/calls/{call_id}/end", api.end_call)
    app.router.add_post("/api/v1/calls/{call_id}/tokens", api.new_tokens)
    return api
