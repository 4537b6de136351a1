"""The pages over HTTP: the demo start page, the join page, languages."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.hub_fixtures import Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as svc:
        yield svc


async def test_demo_button_creates_a_call_with_two_links(service: Service) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(service.url + "/") as r:
            assert 'action="/demo/call"' in await r.text()
        async with http.post(service.url + "/demo/call", headers={"Origin": service.url}) as r:
            assert r.status == 200
            page = await r.text()
    links = re.findall(r'data-role="(\w+)" href="([^"]+)"', page)
    assert sorted(role for role, _ in links) == ["doctor", "patient"]
    (call,) = service.hub.calls.values()
    assert call.metadata == {"demo": True}
    async with aiohttp.ClientSession() as http:
        for _, href in links:
            async with http.get(href) as r:
                assert r.status == 200
                assert r.headers["Referrer-Policy"] == "no-referrer"


async def test_demo_post_from_another_site_is_refused(service: Service) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            service.url + "/demo/call", headers={"Origin": "http://evil.example"}) as r:
        assert r.status == 403
    assert service.hub.calls == {}


async def test_demo_is_off_when_not_bound_to_loopback(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {"TELEMED_HTTP_HOST": "0.0.0.0", "TELEMED_HTTP_PUBLIC_URL": "https://tm.example"}
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           env=env) as svc, aiohttp.ClientSession() as http:
        async with http.get(svc.url + "/") as r:
            assert "/demo/call" not in await r.text()
        async with http.post(svc.url + "/demo/call") as r:
            assert r.status == 404
    assert svc.hub.calls == {}


@pytest.mark.parametrize(("query", "lang", "word"), [
    ("", "ru", "Видеоконсультация"), ("?lang=en", "en", "consultation"),
    ("?lang=xx", "ru", "Видеоконсультация")])
async def test_pages_speak_russian_by_default_and_english_on_request(
    service: Service, query: str, lang: str, word: str
) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{service.url}/{query}") as r:
        text = await r.text()
    assert f'lang="{lang}"' in text
    assert word.lower() in text.lower()
