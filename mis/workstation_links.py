"""`POST /api/v1/workstation-links`: a doctor's or consultant's workstation link, minted for
the MIS so that nobody signs a JWT by hand (`telemed workstation-link` prints the same).

A workstation link is a join token whose `call` claim is `workstation` (docs/web.md); the
API's middleware authenticates the request like every other /api/v1 route.
"""

from __future__ import annotations

import time
from typing import Any, cast

from aiohttp import web

from mis.answers import ID, Invalid, reply
from mis.api import API, API_CONFIG
from signaling.tokens import Role, mint_join_token

__all__ = ["MAX_TTL", "WORKSTATION_CALL", "mint_workstation_link", "setup_workstation_links"]

#: The `call` claim of a workstation link.
WORKSTATION_CALL = "workstation"
ROLES = ("doctor", "consultant")
#: Longest life a link may be asked for: a week of shifts, not a permanent credential.
MAX_TTL = 7 * 86400.0
MIN_TTL = 60.0


def mint_workstation_link(*, key: str, issuer: str, audience: str, public_url: str,
                          subject: str, name: str, role: str, ttl: float,
                          now: float | None = None) -> dict[str, Any]:
    """The link, its token and when it expires (unix seconds)."""
    issued = now if now is not None else time.time()
    token = mint_join_token(key=key, issuer=issuer, audience=audience, subject=subject,
                            name=name, role=cast(Role, role), call_id=WORKSTATION_CALL,
                            ttl=ttl, now=issued)
    return {"link": f"{public_url}/workstation/{token}", "token": token,
            "expiresAt": int(issued) + int(ttl)}


def check_person(body: dict[str, Any]) -> tuple[str, str, str, float | None]:
    """(id, name, role, ttl or None) of a request body, or `Invalid` naming the field."""
    pid, name, role, ttl = body.get("id"), body.get("name"), body.get("role"), body.get("ttl")
    if not isinstance(pid, str) or not ID.match(pid):
        raise Invalid("id", "1-64 letters, digits or _.@-")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise Invalid("name", "a name of 1-200 characters")
    if role not in ROLES:
        raise Invalid("role", "doctor or consultant (patients have no workstation)")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                            or not MIN_TTL <= ttl <= MAX_TTL):
        raise Invalid("ttl", f"seconds, {int(MIN_TTL)}-{int(MAX_TTL)}")
    return pid, name, cast(str, role), None if ttl is None else float(ttl)


async def create_link(request: web.Request) -> web.Response:
    body = await request.app[API]._json(request)
    pid, name, role, ttl = check_person(body)
    config = request.app[API_CONFIG]
    return reply(mint_workstation_link(
        key=config.jwt_secret, issuer=config.jwt_issuer, audience=config.jwt_audience,
        public_url=config.public_url, subject=pid, name=name, role=role,
        ttl=ttl if ttl is not None else config.token_ttl), status=201)


def setup_workstation_links(app: web.Application) -> None:
    app.router.add_post("/api/v1/workstation-links", create_link)
