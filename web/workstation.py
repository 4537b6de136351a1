"""The doctor's workstation: the open calls the MIS created for this doctor or consultant,
read from the shared history in Redis, so every signalling node lists every call.

Opened with a workstation link: a join token whose `call` claim is `workstation`. It opens no
call by itself (no call has that id); the page hands out a fresh join link per listed call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp_jinja2
import redis.asyncio as aioredis
from aiohttp import web

from mis.api import API, API_CONFIG, REDIS
from mis.history import SINK
from mis.staff_calls import STAFF_ROLES, open_calls_of
from mis.workstation_links import WORKSTATION_CALL
from signaling.errors import AuthError
from signaling.session import SESSION_CONFIG
from signaling.tokens import JoinClaims, verify_join_token
from web.config import WEB_CONFIG
from web.context import language, page_context
from web.i18n import strings

__all__ = ["WORKSTATION", "setup_workstation"]

#: The `call` claim of a workstation link.
WORKSTATION = WORKSTATION_CALL
STAFF = STAFF_ROLES

log = logging.getLogger(__name__)


def _claims(request: web.Request) -> JoinClaims:
    config = request.app[SESSION_CONFIG]
    claims = verify_join_token(request.match_info["token"], keys=config.jwt_keys,
                               issuer=config.issuer, audience=config.audience,
                               call_id=WORKSTATION)
    if claims.role not in STAFF:
        raise AuthError("workstations are for doctors and consultants", code="auth.invalid")
    return claims


def _when(at: float, zone: ZoneInfo, today: date) -> dict[str, str]:
    moment = datetime.fromtimestamp(at, zone)
    return {"time": moment.strftime("%H:%M"), "iso": moment.isoformat(timespec="minutes"),
            # Only another day's appointment needs its date beside the time.
            "day": "" if moment.date() == today else moment.strftime("%d.%m")}


def _order(call: dict[str, Any], zone: ZoneInfo, today: date) -> tuple[int, float]:
    """Today's (and overdue) appointments by start, then unbooked calls by creation, then
    appointments on later days by start."""
    schedule = call.get("schedule")
    if not schedule:
        return 1, call["createdAt"]
    later = datetime.fromtimestamp(schedule["start"], zone).date() > today
    return (2 if later else 0), schedule["start"]


async def listing(request: web.Request, claims: JoinClaims) -> list[dict[str, object]]:
    """The subject's open calls from the shared history (whichever node booked them), in
    appointment order, each with a fresh join link and token."""
    # This node's own latest writes first, so a call it just booked is listed.
    async with asyncio.timeout(request.app[API_CONFIG].redis_timeout):
        await request.app[SINK].settle()
    stored = await open_calls_of(request.app[REDIS], claims.subject)
    zone = ZoneInfo(request.app[WEB_CONFIG].time_zone)
    today = datetime.now(zone).date()
    out: list[dict[str, object]] = []
    for call in sorted(stored, key=lambda c: _order(c, zone, today)):
        (mine,) = request.app[API].tokens(call, only=claims.subject)
        schedule = call.get("schedule")
        out.append({
            "id": call["id"], "kind": call["kind"], "state": call["state"],
            "role": mine["role"], "scheduled": bool(schedule),
            **_when(schedule["start"] if schedule else call["createdAt"], zone, today),
            "until": (datetime.fromtimestamp(schedule["end"], zone).strftime("%H:%M")
                      if schedule else ""),
            "others": [p["name"] for p in call["participants"] if p["id"] != claims.subject],
            "link": mine["link"], "token": mine["token"],
            "subject": str((call.get("metadata") or {}).get("subject", ""))[:200],
        })
    return out


async def workstation_page(request: web.Request) -> web.Response:
    try:
        claims = _claims(request)
    except AuthError:
        response = aiohttp_jinja2.render_template(
            "workstation.html", request, page_context(request, refused=True, calls=[]),
            status=403)
    else:
        try:
            calls = await listing(request, claims)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            log.error("! workstation: cannot read the calls: %s", type(exc).__name__)
            return aiohttp_jinja2.render_template(
                "workstation.html", request,
                page_context(request, refused=True, unavailable=True, calls=[]), status=503)
        # Only what the page's script needs to answer rings: the consultant's referrals.
        rings = [{"call": c["id"], "token": c["token"], "link": c["link"]}
                 for c in calls if c["kind"] == "referral" and c["role"] == "consultant"]
        response = aiohttp_jinja2.render_template(
            "workstation.html", request, page_context(
                request, refused=False, calls=calls, me=claims.name,
                time_zone=request.app[WEB_CONFIG].time_zone,
                rings_json=json.dumps(rings),
                strings_json=json.dumps(strings(language(request)))))
    return response  # web.security adds no-store and no-referrer


def setup_workstation(app: web.Application) -> None:
    app.router.add_get("/workstation/{token}", workstation_page)
