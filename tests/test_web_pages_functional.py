"""The pages over HTTP: the demo start page, the join page, the pre-call ICE servers,
languages and the one place every string lives."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import web
from signaling.call import CallKind
from tests.hub_fixtures import API_KEY, Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.services import RedisServer, TurnServer
from web.i18n import STRINGS


@pytest.fixture
async def service(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as svc:
        yield svc


async def test_demo_button_creates_a_call_with_two_links(service: Service) -> None:
    """The demo button creates a demo call with a patient and a doctor link, both opening it."""
    async with aiohttp.ClientSession() as http:
        async with http.get(service.url + "/") as r:
            assert 'action="/demo/call?lang=ru"' in await r.text()
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
    """A demo call requested from another site's origin is refused 403 and creates nothing."""
    async with aiohttp.ClientSession() as http, http.post(
            service.url + "/demo/call", headers={"Origin": "http://evil.example"}) as r:
        assert r.status == 403
    assert service.hub.calls == {}


async def test_demo_is_off_when_not_bound_to_loopback(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The demo is neither shown nor served when the service listens beyond loopback."""
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
    """Pages are in Russian by default and for unknown languages, in English when asked."""
    async with aiohttp.ClientSession() as http, http.get(f"{service.url}/{query}") as r:
        text = await r.text()
    assert f'lang="{lang}"' in text
    assert word.lower() in text.lower()


WEB = Path(web.__file__).parent
KEY_USE = {
    "html": re.compile(r"\bt(?:\.(\w+)|\[\"(\w+)\"\])"),
    "js": re.compile(r"\bT(?:\.(\w+)|\[\"(\w+)\"\])"),
}
PREFIX_USE = {"html": re.compile(r"\bt\[\"(\w+)\" \+"), "js": re.compile(r"\bT\[\"(\w+)\" \+")}


def _keys_used(text: str, kind: str) -> tuple[set[str], set[str]]:
    keys = {a or b for a, b in KEY_USE[kind].findall(text)}
    return keys, set(PREFIX_USE[kind].findall(text))


def _template_text(html: str) -> str:
    """What a template shows besides its {{ }} values: tags, Jinja and SVG removed."""
    for pattern in (r"<script.*?</script>", r"<style.*?</style>", r"<svg.*?</svg>",
                    r"\{%.*?%\}", r"\{\{.*?\}\}", r"<[^>]*>", r"&\w+;"):
        html = re.sub(pattern, " ", html, flags=re.S)
    return html


def _js_literals(js: str) -> list[str]:
    js = re.sub(r"^\s*//.*$", "", js, flags=re.M)
    js = re.sub(r"/\*.*?\*/", "", js, flags=re.S)
    literals = re.findall(r"\"((?:[^\"\\\n]|\\.)*)\"|'((?:[^'\\\n]|\\.)*)'", js)
    out = [a or b for a, b in literals]
    for template in re.findall(r"`([^`]*)`", js):
        out.extend(re.split(r"\$\{[^}]*\}", template))
    return out


def test_every_string_is_in_both_languages_and_no_page_hard_codes_one() -> None:
    """Every page string exists in both languages and no template or script hard-codes text."""
    assert STRINGS["ru"].keys() == STRINGS["en"].keys()
    assert all(v.strip() for table in STRINGS.values() for v in table.values())
    known = set(STRINGS["ru"])
    files = [*(WEB / "templates").glob("*.html"), *(WEB / "static").glob("*.js")]
    assert len(files) >= 6
    for path in files:
        text = path.read_text()
        kind = "js" if path.suffix == ".js" else "html"
        keys, prefixes = _keys_used(text, kind)
        assert keys - known == set(), f"{path.name} uses unknown strings"
        for prefix in prefixes:
            assert any(k.startswith(prefix) for k in known), (path.name, prefix)
        if kind == "html":
            shown = re.findall(r"[^\W\d_]{2,}", _template_text(text))
            assert shown == [], f"{path.name} shows text not from web/i18n.py: {shown}"
        else:
            assert not re.search(r"[А-Яа-яЁё]", text), f"{path.name} has Russian text"
            phrases = [s for s in _js_literals(text) if re.search(r"[A-Za-z]{2,} +[A-Za-z]{2,}", s)]
            assert phrases == [], f"{path.name} hard-codes phrases: {phrases}"


def test_the_checker_catches_hard_coded_text() -> None:
    """The hard-coded-text checks see template words, script phrases and string keys."""
    # The checks above must see the kinds of text they are meant to keep out.
    assert re.findall(r"[^\W\d_]{2,}", _template_text("<p>Нажмите {{ t.join }}</p>")) == [
        "Нажмите"]
    assert "Connection lost" in _js_literals('el.textContent = "Connection lost";')
    assert _keys_used("T.join + T[\"quality_\" + g]", "js") == ({"join"}, {"quality_"})


async def test_precheck_hands_out_this_participants_turn_lease_and_the_calls_end_returns_it(
    tmp_path: Path, redis_server: RedisServer, turn_server: TurnServer
) -> None:
    """The precheck leases TURN to its own participant only; ending the call returns the lease."""
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           turn_urls=(turn_server.url,),
                           turn_secrets=(turn_server.secret,)) as svc, \
            aiohttp.ClientSession() as http:
        call = svc.hub.create_call(CallKind.CONSULTATION, [("p-1", "P", "patient"),
                                                          ("d-1", "D", "doctor")])
        url = svc.url + "/precheck/ice"
        async with http.post(url, json={"token": svc.token(call.id, "p-1")}) as r:
            assert r.status == 200
            assert r.headers["Cache-Control"] == "no-store"
            (server,) = (await r.json())["iceServers"]
        assert server["urls"] == [turn_server.url]
        assert server["username"] and server["credential"]
        api = {"Authorization": f"Bearer {API_KEY}"}
        async with http.get(svc.url + "/api/v1/turn", headers=api) as r:
            leases = (await r.json())["leases"]
        assert [(x["call"], x["participant"]) for x in leases] == [(call.id, "p-1")]
        for body, status, code in [
                ({}, 400, "message.invalid"), ({"token": 7}, 400, "message.invalid"),
                ({"token": "forged"}, 401, "auth.invalid"),
                ({"token": svc.token(call.id, "stranger")}, 409, "call.not_yours")]:
            async with http.post(url, json=body) as r:
                assert (r.status, (await r.json())["code"]) == (status, code), body
        async with http.post(url, data=b"not json") as r:
            assert r.status == 400
        async with http.post(f"{svc.url}/api/v1/calls/{call.id}/end", headers=api) as r:
            assert r.status == 200
        async with http.get(svc.url + "/api/v1/turn", headers=api) as r:
            assert (await r.json())["leases"] == []
        async with http.post(url, json={"token": svc.token(call.id, "p-1")}) as r:
            assert (r.status, (await r.json())["code"]) == (409, "call.ended")


async def test_a_workstation_lists_only_its_doctors_open_calls_with_fresh_links(
    service: Service
) -> None:
    """A workstation lists only its owner's open calls with fresh links; others' tokens get 403."""
    hub = service.hub
    # The session's Redis keeps other tests' booked calls, and the page lists from it.
    n = uuid.uuid4().hex[:8]
    doc1, fd1, pat1 = f"doc-1-{n}", f"fd-1-{n}", f"pat-1-{n}"
    consult = hub.create_call(CallKind.CONSULTATION, [(pat1, "Анна Петрова", "patient"),
                                                      (doc1, "Д-р Иванов", "doctor")],
                              {"subject": "Повторный приём"})
    referral = hub.create_call(CallKind.REFERRAL, [(doc1, "Д-р Иванов", "doctor"),
                                                   (fd1, "Д-р Сидорова", "consultant")])
    other = hub.create_call(CallKind.CONSULTATION, [("pat-2", "Олег", "patient"),
                                                    ("doc-2", "Д-р Смирнов", "doctor")])
    over = hub.create_call(CallKind.CONSULTATION, [("pat-3", "Ирина", "patient"),
                                                   (doc1, "Д-р Иванов", "doctor")])
    await hub.end(over.id)
    doctor = service.token("workstation", doc1, role="doctor", name="Д-р Иванов")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service.url}/workstation/{doctor}") as r:
            assert r.status == 200
            assert r.headers["Referrer-Policy"] == "no-referrer"
            page = await r.text()
        rows = re.findall(r'data-call="([^"]+)" data-kind="(\w+)"', page)
        assert rows == [(consult.id, "consultation"), (referral.id, "referral")]
        assert other.id not in page and over.id not in page
        assert "Анна Петрова" in page and "Повторный приём" in page and "Д-р Сидорова" in page
        links = re.findall(r'href="(http[^"]+/join/[^"]+)"', page)
        assert len(links) == 2
        for href in links:
            async with http.get(href) as r:
                assert r.status == 200 and 'data-role="doctor"' in await r.text()
        # A consultant's referral waits for the ring instead of offering a start button.
        consultant = service.token("workstation", fd1, role="consultant")
        async with http.get(f"{service.url}/workstation/{consultant}") as r:
            page = await r.text()
        assert re.findall(r'data-call="([^"]+)"', page) == [referral.id]
        shown = re.sub(r'data-rings="[^"]*"', "", page)  # the ring script's own data
        assert STRINGS["ru"]["ws_wait_ring"] in page and "/join/" not in shown
        for token in (service.token("workstation", pat1),  # patients have no workstation
                      service.token(consult.id, doc1, role="doctor"),  # a call's own token
                      "not-a-token"):
            async with http.get(f"{service.url}/workstation/{token}") as r:
                assert r.status == 403
                assert STRINGS["ru"]["ws_refused"] in await r.text()


async def test_a_join_token_the_mis_signed_with_its_own_key_opens_the_doctors_page(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A join token the MIS signed with its own EC key opens the doctor's call page."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "mis.pem"
    pem.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    async with run_service(tmp_path, redis_server.url, ("ws://127.0.0.1:9/kurento",),
                           env={"TELEMED_AUTH_JWT_PUBLIC_KEYS": str(pem)}) as svc, \
            aiohttp.ClientSession() as http:
        call = svc.hub.create_call(CallKind.CONSULTATION, [("p-9", "P", "patient"),
                                                          ("d-9", "D", "doctor")])
        token = svc.token(call.id, "d-9", role="doctor", key=private, algorithm="ES256")
        async with http.get(f"{svc.url}/join/{token}") as r:
            page = await r.text()
    assert 'data-role="doctor"' in page and 'id="end-all"' in page
