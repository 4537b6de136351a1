"""Security headers on every page, static file and error of the real service over HTTP, no
inline script or style in any page, and the demo's post-redirect-get."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from signaling.call import CallKind
from telemed.settings import SettingsError, load_settings
from tests.hub_fixtures import Service, run_service
from tests.services import RedisServer

DEAD_KURENTO = ("ws://127.0.0.1:9/kurento",)
MIS = "https://mis.example"


def _pages(svc: Service) -> dict[str, bool]:
    """Every kind of URL the pages are served from, and whether it holds a token."""
    call = svc.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                      ("d", "D", "doctor")])
    return {
        "/": False, "/?lang=en": False,
        f"/join/{svc.token(call.id, 'p')}": True,
        f"/join/{svc.token(call.id, 'd', role='doctor')}": True,
        f"/workstation/{svc.token('workstation', 'd', role='doctor')}": True,
        "/workstation/not-a-token": True,  # the refusal page
        "/recordings/not-a-token": True,  # the player page's refusal
        "/static/call.js": False, "/static/style.css": False, "/static/precheck.js": False,
        "/no-such-page": False,
    }


async def test_every_page_static_file_and_error_carries_the_security_headers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """CSP without unsafe-inline, frame-ancestors 'none', nosniff on every response;
    no-store and no-referrer exactly where the URL holds a token, same-origin elsewhere."""
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO) as svc, \
            aiohttp.ClientSession() as http:
        for path, has_token in _pages(svc).items():
            async with http.get(svc.url + path, allow_redirects=False) as r:
                h = r.headers
                csp = h.get("Content-Security-Policy", "")
                assert "script-src 'self'" in csp and "unsafe" not in csp, (path, csp)
                assert "frame-ancestors 'none'" in csp, (path, csp)
                assert "object-src 'none'" in csp and "base-uri 'none'" in csp
                assert h.get("X-Frame-Options") == "DENY", path
                assert h.get("X-Content-Type-Options") == "nosniff", path
                assert h.get("Referrer-Policy") == (
                    "no-referrer" if has_token else "same-origin"), path
                assert (h.get("Cache-Control") == "no-store") is has_token, (path, r.status)


async def test_frame_ancestors_name_the_configured_mis_origins(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """With http.frame_ancestors set, the MIS origins (and only they) may frame the pages,
    and the join page hands them to its script for postMessage."""
    env = {"TELEMED_HTTP_FRAME_ANCESTORS": f"{MIS},http://localhost:8443"}
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO, env=env) as svc, \
            aiohttp.ClientSession() as http:
        for path in _pages(svc):
            async with http.get(svc.url + path) as r:
                csp = r.headers["Content-Security-Policy"]
                assert f"frame-ancestors {MIS} http://localhost:8443" in csp, (path, csp)
                assert "X-Frame-Options" not in r.headers, path
                if path.startswith("/join/"):
                    page = await r.text()
                    assert 'data-embedders="[&#34;https://mis.example&#34;' in page


@pytest.mark.parametrize("value", ["mis.example", "https://mis.example/cabinet", "*",
                                   "https://mis.example;script-src *"])
def test_a_frame_ancestor_that_is_not_an_origin_is_refused_at_start(value: str) -> None:
    """Paths, wildcards and anything that could inject a CSP directive are refused."""
    with pytest.raises(SettingsError, match=r"http\.frame_ancestors"):
        load_settings(env={"TELEMED_HTTP_FRAME_ANCESTORS": value})


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"\s(on\w+|style)\s*=", re.I)


async def test_no_page_runs_inline_script_or_style(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """What the CSP forbids is absent from the rendered pages, so they work under it."""
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO) as svc, \
            aiohttp.ClientSession() as http:
        async with http.post(svc.url + "/demo/call", headers={"Origin": svc.url}) as r:
            demo = await r.text()
        pages = [demo]
        for path in _pages(svc):
            if not path.startswith("/static"):
                async with http.get(svc.url + path) as r:
                    pages.append(await r.text())
    for page in pages:
        assert INLINE_SCRIPT.findall(page) == []
        assert INLINE_HANDLER.findall(page) == []
    assert any('type="module" src="/static/call.js"' in p for p in pages)


async def test_the_demo_button_redirects_so_reload_and_language_switch_make_no_new_call(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """POST answers 303 to a GET page of that call; GETs (reload, ?lang=en, the old
    /demo/call target) never create a call and never answer 405."""
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO) as svc, \
            aiohttp.ClientSession() as http:
        async with http.post(svc.url + "/demo/call?lang=en", headers={"Origin": svc.url},
                             allow_redirects=False) as r:
            assert r.status == 303
            target = r.headers["Location"]
        (call,) = svc.hub.calls.values()
        assert target == f"/demo/call/{call.id}?lang=en"
        for path in (target, target, f"/demo/call/{call.id}?lang=ru"):
            async with http.get(svc.url + path) as r:
                assert r.status == 200
                page = await r.text()
                assert len(re.findall(r'data-role="(\w+)" href="[^"]+/join/', page)) == 2
        async with http.get(svc.url + "/demo/call?lang=en", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/?lang=en")
        await svc.hub.end(call.id)
        async with http.get(svc.url + target, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/?lang=en")
        assert list(svc.hub.calls) == [call.id]
