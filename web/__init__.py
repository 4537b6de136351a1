"""The pages patients and doctors use: start page, join page with pre-call check, call view,
and the doctor's workstation (web.workstation)."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from mis.api import API
from signaling.call import CallKind
from signaling.errors import AuthError, CallError
from signaling.hub import HUB
from signaling.session import SESSION_CONFIG
from signaling.tokens import JoinClaims, verify_join_token
from web.config import WEB_CONFIG
from web.context import language, page_context
from web.i18n import strings
from web.security import setup_security
from web.workstation import setup_workstation

__all__ = ["language", "page_context", "setup_web"]

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def demo_allowed(request: web.Request) -> bool:
    """The demo button creates calls for anyone: only on a service bound to loopback."""
    config = request.app[WEB_CONFIG]
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    return config.demo and loopback


async def index(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template(
        "index.html", request, page_context(request, demo=demo_allowed(request), links=[]))


async def demo_call(request: web.Request) -> web.Response:
    """Creates a test consultation, then redirects to its page (post, redirect, get): a
    reload or a language switch shows the same call instead of making another."""
    if not demo_allowed(request):
        raise web.HTTPNotFound()
    # A form post from another site must not start calls on a doctor's machine.
    origin = request.headers.get("Origin")
    if origin is not None and origin not in request.app[SESSION_CONFIG].allowed_origins:
        raise web.HTTPForbidden(text="origin not allowed")
    t = strings(language(request))
    call = request.app[HUB].create_call(CallKind.CONSULTATION, [
        ("demo-patient", t["demo_patient_name"], "patient"),
        ("demo-doctor", t["demo_doctor_name"], "doctor"),
    ], {"demo": True})
    raise web.HTTPSeeOther(f"/demo/call/{call.id}?lang={language(request)}")


async def demo_links(request: web.Request) -> web.Response:
    """The two links of a test consultation made by the demo button (fresh tokens)."""
    if not demo_allowed(request):
        raise web.HTTPNotFound()
    call = request.app[HUB].calls.get(request.match_info.get("call_id", ""))
    if call is None or call.finished or not call.metadata.get("demo"):
        # The old GET target of the language switch, or a call that is over: start again.
        raise web.HTTPSeeOther(f"/?lang={language(request)}")
    links = [{"role": p["role"], "href": p["link"]} for p in request.app[API].tokens(call)]
    return aiohttp_jinja2.render_template(
        "index.html", request, page_context(request, demo=True, links=links))


def _claims(request: web.Request, token: str) -> JoinClaims:
    config = request.app[SESSION_CONFIG]
    # The socket's keys: MIS-signed (RS256/ES256) tokens open the page as they open the call.
    return verify_join_token(token, keys=config.jwt_keys, issuer=config.issuer,
                             audience=config.audience)


async def join_page(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    try:
        role = _claims(request, token).role
    except AuthError:
        role = "patient"  # the page shows the token error once the socket refuses it
    config = request.app[WEB_CONFIG]
    return aiohttp_jinja2.render_template(
        "join.html", request, page_context(
            request, token=token, role=role, grace=config.rejoin_grace,
            strings_json=json.dumps(strings(language(request))),
            embedders_json=json.dumps(list(config.frame_ancestors))))


async def precheck_ice(request: web.Request) -> web.Response:
    """The pre-call network check's ICE servers: this participant's TURN lease for the call."""
    headers = {"Cache-Control": "no-store"}
    try:
        body = await request.json()
        token = body["token"] if isinstance(body, dict) else None
        if not isinstance(token, str) or len(token) > 4096:
            raise ValueError("token")
    except (ValueError, KeyError, RecursionError):  # RecursionError: JSON nested too deep
        return web.json_response({"code": "message.invalid", "message": "send {token}"},
                                 status=400, headers=headers)
    try:
        servers = await request.app[HUB].precheck_ice_servers(_claims(request, token))
    except AuthError as exc:
        return web.json_response({"code": exc.code, "message": str(exc)}, status=401,
                                 headers=headers)
    except CallError as exc:
        status = 503 if exc.code == "turn.exhausted" else 409
        return web.json_response({"code": exc.code, "message": exc.message}, status=status,
                                 headers=headers)
    return web.json_response({"iceServers": servers}, headers=headers)


def setup_web(app: web.Application) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"),
                         autoescape=jinja2.select_autoescape(["html"]))
    app.router.add_get("/", index)
    app.router.add_post("/demo/call", demo_call)
    app.router.add_get("/demo/call", demo_links)
    app.router.add_get("/demo/call/{call_id}", demo_links)
    app.router.add_get("/join/{token}", join_page)
    app.router.add_post("/precheck/ice", precheck_ice)
    app.router.add_static("/static", HERE / "static")
    setup_workstation(app)
    setup_security(app)
