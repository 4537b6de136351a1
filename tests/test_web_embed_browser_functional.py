"""The pages in headless Chromium around the call itself: embedded in a MIS page (iframe,
frame-ancestors, postMessage), the demo's language switch, the workstation's labels, what
the pre-call page says for each error code, and a join made with the keyboard alone."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from signaling.call import CallKind
from tests.helpers import scaled
from tests.hub_fixtures import API_KEY, Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.page_checks import DESKTOP, PHONE, audit, open_page, wait_js
from tests.services import RedisServer, free_port
from tests.test_web_states_browser_functional import BLOCK_MEDIA
from web.i18n import STRINGS

HEAVY = pytest.mark.timeout(scaled(90))
WAIT = scaled(30) * 1000
DEAD_KURENTO = ("ws://127.0.0.1:9/kurento",)
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "embed-example.html"


@contextlib.asynccontextmanager
async def mis_cabinet(join_link: str, port: int | None = None) -> AsyncIterator[str]:
    """docs/embed-example.html served as the MIS would, from http://localhost:<port> (an
    origin other than the service's http://127.0.0.1:<port>), framing `join_link`."""
    page = EXAMPLE.read_text().replace("https://telemed.example/join/JOIN_TOKEN", join_link)

    async def cabinet(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/cabinet", cabinet)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://localhost:{port}"
    finally:
        await runner.cleanup()


async def _events(page: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await page.evaluate("window.telemedEvents")
    return events


@HEAVY
async def test_the_mis_embeds_the_call_and_hears_joined_live_and_ended(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """The documented iframe (allow camera, microphone) in an origin named by
    http.frame_ancestors carries the whole call; the cabinet hears joined, live, ended."""
    port = free_port()
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _):
        env = {"TELEMED_HTTP_FRAME_ANCESTORS": f"http://localhost:{port}"}
        async with run_service(tmp_path, redis_server.url, (kms_url,), env=env) as service:
            call = service.hub.create_call(CallKind.CONSULTATION, [
                ("pat-e", "Анна Петрова", "patient"), ("doc-e", "Д-р Иванов", "doctor")])
            link = f"{service.url}/join/{service.token(call.id, 'pat-e')}"
            async with mis_cabinet(link, port) as cabinet:
                page = await open_page(browser, cabinet + "/cabinet", "cabinet", PHONE)
                frame = page.frame_locator("#telemed")
                await frame.locator("#join-button:not([disabled])").click(timeout=WAIT)
                doctor = await open_page(
                    browser, f"{service.url}/join/"
                    + service.token(call.id, "doc-e", role="doctor"), "doctor", DESKTOP)
                await doctor.click("#join-button:not([disabled])", timeout=WAIT)
                await doctor.wait_for_selector("body[data-call-state=live]", timeout=WAIT)
                await wait_js(page, "window.telemedEvents.length >= 2", timeout=WAIT)
                await doctor.click("#end-all")
                await wait_js(page, "window.telemedEvents.length >= 3", timeout=WAIT)
                events = await _events(page)
                assert await page.inner_text("#call-status") == "The consultation has ended."
    assert [e["event"] for e in events] == ["joined", "live", "ended"]
    assert events[0]["call"] == call.id and events[0]["participant"] == "pat-e"
    assert all(e["source"] == "telemed" for e in events)


async def test_a_site_not_named_in_frame_ancestors_cannot_frame_the_call(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """Another origin's iframe stays empty: the browser refuses to render our page there."""
    env = {"TELEMED_HTTP_FRAME_ANCESTORS": "https://mis.example"}
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO, env=env) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                              ("d", "D", "doctor")])
        async with mis_cabinet(f"{service.url}/join/{service.token(call.id, 'p')}") as cabinet:
            page = await open_page(browser, cabinet + "/cabinet", "cabinet", DESKTOP)
            # "load" waits for the frame too: whatever it holds now is all it will hold.
            await page.wait_for_load_state("load")
            assert await page.frame_locator("#telemed").locator("#app").count() == 0
            assert await _events(page) == []


@HEAVY
async def test_an_embedded_call_that_fails_tells_the_cabinet_why(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """A patient whose network blocks media: the cabinet hears joined, then failed with
    the reason (no-media), so it can offer its own help."""
    port = free_port()
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _):
        env = {"TELEMED_HTTP_FRAME_ANCESTORS": f"http://localhost:{port}"}
        async with run_service(tmp_path, redis_server.url, (kms_url,), env=env,
                               watchdog_timeout=scaled(3)) as service:
            call = service.hub.create_call(CallKind.CONSULTATION, [
                ("pat-f", "P", "patient"), ("doc-f", "D", "doctor")])
            async with mis_cabinet(f"{service.url}/join/{service.token(call.id, 'pat-f')}",
                                   port) as cabinet:
                page = await open_page(browser, cabinet + "/cabinet", "cabinet", DESKTOP,
                                       BLOCK_MEDIA)
                await page.frame_locator("#telemed").locator(
                    "#join-button:not([disabled])").click(timeout=WAIT)
                await wait_js(page, "window.telemedEvents.length >= 2", timeout=WAIT)
                events = await _events(page)
    assert [(e["event"], e.get("reason")) for e in events] == [
        ("joined", None), ("failed", "no-media")]


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
async def test_the_demo_page_switches_language_and_reloads_without_a_new_call(
    tmp_path: Path, redis_server: RedisServer, browser: Any, size: dict[str, int]
) -> None:
    """Start page → demo button → links page; EN and reload stay on the same call (no 405,
    no second call)."""
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO) as service:
        page = await open_page(browser, service.url + "/", "demo", size)
        await audit(page, "start page")
        await page.click("form[action^='/demo/call'] button")
        await page.wait_for_selector("a[data-role=patient]")
        (call,) = service.hub.calls.values()
        assert page.url.endswith(f"/demo/call/{call.id}?lang=ru")
        assert await page.inner_text("a[data-role=doctor]") == STRINGS["ru"]["demo_doctor"]
        await audit(page, "demo links (ru)")
        async with page.expect_navigation():
            await page.click("nav.lang a[href='?lang=en']")
        assert await page.inner_text("a[data-role=doctor]") == STRINGS["en"]["demo_doctor"]
        await page.reload()
        assert await page.inner_text("a[data-role=patient]") == STRINGS["en"]["demo_patient"]
        await audit(page, "demo links (en)")
        assert list(service.hub.calls) == [call.id]


@pytest.mark.parametrize(("lang", "size"), [("ru", PHONE), ("en", DESKTOP)])
async def test_the_workstation_labels_a_referral_as_one_in_both_languages(
    tmp_path: Path, redis_server: RedisServer, browser: Any, lang: str, size: dict[str, int]
) -> None:
    """A referral is a specialist's consultation, not a council of doctors ("Консилиум")."""
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO) as service:
        service.hub.create_call(CallKind.REFERRAL, [("doc-w", "Д-р Иванов", "doctor"),
                                                    ("fd-w", "Д-р Сидорова", "consultant")])
        url = (f"{service.url}/workstation/"
               f"{service.token('workstation', 'doc-w', role='doctor')}?lang={lang}")
        page = await open_page(browser, url, "workstation", size)
        label = await page.inner_text(".call-kind.kind-referral")
        assert label.lower() == STRINGS[lang]["kind_referral"].lower()
        assert "консилиум" not in label.lower()
        await audit(page, f"workstation ({lang})")


async def _precheck_says(page: Any) -> tuple[str, str]:
    await page.wait_for_selector("#network:not([data-result=checking])", timeout=WAIT)
    return (await page.get_attribute("#network", "data-result") or "",
            await page.inner_text("#network-text"))


@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_the_precheck_names_an_ended_call_or_a_removal_not_a_bad_link(
    tmp_path: Path, redis_server: RedisServer, browser: Any, lang: str
) -> None:
    """Only auth.* and call.not_found/not_yours read "link invalid or expired"; an ended
    call and a removed participant say so, in the network box and on Join."""
    t = STRINGS[lang]
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO) as service, \
            aiohttp.ClientSession() as http:
        ended = service.hub.create_call(CallKind.CONSULTATION, [("p1", "P", "patient"),
                                                               ("d1", "D", "doctor")])
        await service.hub.end(ended.id)
        kept = service.hub.create_call(CallKind.CONSULTATION, [("p2", "P", "patient"),
                                                              ("d2", "D", "doctor")])
        async with http.delete(f"{service.url}/api/v1/calls/{kept.id}/participants/p2",
                               headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            assert r.status == 200
        cases = [(service.token(ended.id, "p1"), "ended"),
                 (service.token(kept.id, "p2"), "removed"),
                 (service.token(kept.id, "stranger"), "err_token"),
                 (service.token(ended.id, "p1", key="x" * 32), "err_token")]
        for token, key in cases:
            page = await open_page(browser, f"{service.url}/join/{token}?lang={lang}",
                                   key, PHONE)
            assert await _precheck_says(page) == ("token", t[key]), key
            await page.click("#join-button:not([disabled])", timeout=WAIT)
            await page.wait_for_selector("#precheck-error:not([hidden])", timeout=WAIT)
            assert await page.inner_text("#precheck-error") == t[key], key
            await audit(page, f"precheck {key}")
            await page.context.close()


def _service_link(service: Service, call_id: str, pid: str, role: str, lang: str) -> str:
    return f"{service.url}/join/{service.token(call_id, pid, role=role)}?lang={lang}"


@HEAVY
@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_the_join_flow_works_with_the_keyboard_alone(
    tmp_path: Path, redis_server: RedisServer, browser: Any, lang: str
) -> None:
    """Tab reaches Join, Enter joins, Tab reaches hang up, Enter leaves; focus lands on the
    outcome."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-k", "P", "patient"),
                                                              ("doc-k", "D", "doctor")])
        page = await open_page(browser, _service_link(service, call.id, "pat-k", "patient",
                                                      lang), "patient", DESKTOP)
        await page.wait_for_selector("#join-button:not([disabled])", timeout=WAIT)
        for target in ("join-button", "hangup"):
            for _ in range(20):
                await page.keyboard.press("Tab")
                if await page.evaluate("document.activeElement.id") == target:
                    break
            assert await page.evaluate("document.activeElement.id") == target
            await page.keyboard.press("Enter")
            if target == "join-button":
                await page.wait_for_selector("body[data-call-state=alone]", timeout=WAIT)
                await audit(page, "joined by keyboard")
        await page.wait_for_selector("#outcome:not([hidden])", timeout=WAIT)
        assert await page.inner_text("#outcome-text") == STRINGS[lang]["ended"]
        assert await page.evaluate("document.activeElement.id") == "outcome-text"
