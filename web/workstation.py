"""The doctor's workstation: the open calls the MIS created for this doctor or consultant.

Opened with a workstation link: a join token whose `call` claim is `workstation`. It opens no
call by itself (no call has that id); the page hands out a fresh join link per listed call.
"""

from __future__ import annotations

import json
import time

import aiohttp_jinja2
from aiohttp import web

from mis.api import API
from signaling.call import Call
from signaling.errors import AuthError
from signaling.hub import HUB
from signaling.session import SESSION_CONFIG
from signaling.tokens import JoinClaims, verify_join_token
from web.context import language, page_context
from web.i18n import strings

__all__ = ["WORKSTATION", "setup_workstation"]

#: The `call` claim of a workstation link.
WORKSTATION = "workstation"
STAFF = ("doctor", "consultant")


def _claims(request: web.Request) -> JoinClaims:
    config = request.app[SESSION_CONFIG]
    claims = verify_join_token(request.match_info["token"], keys=config.jwt_keys,
                               issuer=config.issuer, audience=config.audience,
                               call_id=WORKSTATION)
    if claims.role not in STAFF:
        raise AuthError("workstations are for doctors and consultants", code="auth.invalid")
    return claims


def _mine(call: Call, subject: str) -> bool:
    me = call.participants.get(subject)
    return (me is not None and me.role in STAFF and not call.finished
            and not me.extra.get("removed"))


def listing(request: web.Request, claims: JoinClaims) -> list[dict[str, object]]:
    """The subject's open calls, oldest first, each with a fresh join link and token."""
    out: list[dict[str, object]] = []
    calls = sorted(request.app[HUB].calls.values(), key=lambda c: c.created_at)
    for call in calls:
        if not _mine(call, claims.subject):
            continue
        (mine,) = request.app[API].tokens(call, only=claims.subject)
        me = call.participants[claims.subject]
        out.append({
            "id": call.id, "kind": call.kind.value, "state": call.state.value,
            "role": me.role, "created": time.strftime("%H:%M", time.localtime(call.created_at)),
            "others": [p.name for p in call.participants.values() if p.id != me.id],
            "link": mine["link"], "token": mine["token"],
            "subject": str(call.metadata.get("subject", ""))[:200],
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
        calls = listing(request, claims)
        # Only what the page's script needs to answer rings: the consultant's referrals.
        rings = [{"call": c["id"], "token": c["token"], "link": c["link"]}
                 for c in calls if c["kind"] == "referral" and c["role"] == "consultant"]
        response = aiohttp_jinja2.render_template(
            "workstation.html", request, page_context(
                request, refused=False, calls=calls, me=claims.name,
                rings_json=json.dumps(rings),
                strings_json=json.dumps(strings(language(request)))))
    return response  # web.security adds no-store and no-referrer


def setup_workstation(app: web.Application) -> None:
    app.router.add_get("/workstation/{token}", workstation_page)
