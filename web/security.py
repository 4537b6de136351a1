"""Security headers on every response the service sends: pages, static files, recordings,
the API. One place, so that a new route cannot forget them.

The pages run no inline script and no inline style attribute, so the policy needs neither
`'unsafe-inline'` nor nonces. `frame-ancestors` names the MIS origins that may embed the
pages (`http.frame_ancestors`); with none, nobody may. Pages whose URL holds a token (join,
workstation, recordings player and files) are never stored by a cache.
"""

from __future__ import annotations

import re

from aiohttp import web

from web.config import WEB_CONFIG

__all__ = ["TOKEN_PATHS", "check_origin", "content_security_policy", "setup_security"]

#: URL prefixes whose next path segment is a token, and the demo page that shows tokens.
TOKEN_PATHS = ("/join/", "/workstation/", "/recordings/", "/demo/call")
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def check_origin(value: str) -> str:
    """An origin as CSP and postMessage take it (scheme://host[:port]); ValueError if not."""
    if not ORIGIN.match(value):
        raise ValueError(f"not an origin (scheme://host[:port], no path): {value!r}")
    return value


def content_security_policy(frame_ancestors: tuple[str, ...]) -> str:
    ancestors = " ".join(frame_ancestors) if frame_ancestors else "'none'"
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # The favicon is an empty data: URL; nothing else loads from elsewhere.
        "img-src 'self' data:",
        "media-src 'self' blob:",
        # 'self' covers ws:/wss: to our own host in CSP 3 browsers.
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        f"frame-ancestors {ancestors}",
    ])


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    config = request.app[WEB_CONFIG]
    headers = response.headers
    headers.setdefault("Content-Security-Policy",
                       content_security_policy(config.frame_ancestors))
    if not config.frame_ancestors:
        # For browsers too old for frame-ancestors.
        headers.setdefault("X-Frame-Options", "DENY")
    headers["X-Content-Type-Options"] = "nosniff"
    if request.path.startswith(TOKEN_PATHS):
        headers["Cache-Control"] = "no-store"
        # The token is in the URL: no Referer leaves these pages at all.
        headers["Referrer-Policy"] = "no-referrer"
    else:
        # Never to other sites; kept for our own, because under no-referrer Chromium sends
        # `Origin: null` with a form post, and the demo button's origin check needs it.
        headers["Referrer-Policy"] = "same-origin"


def setup_security(app: web.Application) -> None:
    app.on_response_prepare.append(_add_headers)
