"""Headless Chromium with fake camera and microphone completes a consultation in our pages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from signaling.call import CallKind, CallState
from tests.helpers import scaled
from tests.hub_fixtures import run_service
from tests.media_fixtures import ffprobe, run_mediaserver
from tests.services import RedisServer

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

VIDEO_PLAYING = """() => {
  const v = document.querySelector('.tile:not(.self) video');
  return !!v && v.videoWidth > 0 && v.currentTime > 0.5 && !v.paused;
}"""


async def open_call(browser: Any, link: str, name: str, width: int = 1280,
                    height: int = 800) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    page.on("console", lambda m: print(f"[{name}] {m.type}: {m.text}"))
    await page.goto(link)
    await page.wait_for_selector("#join-button:not([disabled])", timeout=scaled(15) * 1000)
    return page


async def test_patient_and_doctor_pages_complete_a_recorded_consultation(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        hub = service.hub
        call = hub.create_call(CallKind.CONSULTATION, [("pat-7", "Анна Петрова", "patient"),
                                                      ("doc-7", "Д-р Иванов", "doctor")])
        link = f"{service.url}/join/" + "{}"
        patient = await open_call(browser, link.format(service.token(call.id, "pat-7")),
                                  "patient", 390, 844)
        doctor = await open_call(browser, link.format(
            service.token(call.id, "doc-7", role="doctor")), "doctor")
        await patient.screenshot(path=str(ARTIFACTS / "join-phone.png"))
        await doctor.screenshot(path=str(ARTIFACTS / "join-desktop.png"))
        await patient.click("#join-button")
        await doctor.click("#join-button")
        for page in (patient, doctor):
            await page.wait_for_function(VIDEO_PLAYING, timeout=scaled(30) * 1000)
            await page.wait_for_selector("#recording:not([hidden])", timeout=scaled(15) * 1000)
        for page in (patient, doctor):
            await page.wait_for_selector("body[data-call-state=live]", timeout=scaled(15) * 1000)
        assert call.state is CallState.LIVE
        await patient.screenshot(path=str(ARTIFACTS / "call-phone.png"))
        await doctor.screenshot(path=str(ARTIFACTS / "call-desktop.png"))
        await asyncio.sleep(1.0)  # a second of recorded media for the files checked below
        await doctor.click("#end-all")
        for page in (patient, doctor):
            await page.wait_for_selector("#outcome:not([hidden])", timeout=scaled(15) * 1000)
        assert call.state is CallState.ENDED
        files = sorted(service.settings.recordings_path.rglob("*.webm"))
        assert [f.name for f in files] == ["doc-7.webm", "pat-7.webm"]
        for f in files:
            info = await ffprobe(f)
            assert sorted(s["codec_type"] for s in info["streams"]) == ["audio", "video"]
        drops = [e for e in call.timeline.as_list() if e["event"] == "client.pc"]
        assert drops, "the pages report their peer connection states"


async def test_permission_denied_shows_what_to_do(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                              ("d", "D", "doctor")])
        context = await browser.new_context()
        page = await context.new_page()
        # Make getUserMedia fail as it does when the user refuses the permission prompt.
        await page.add_init_script("""navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException('denied', 'NotAllowedError'));""")
        await page.goto(f"{service.url}/join/{service.token(call.id, 'p')}")
        error = page.locator("#precheck-error")
        await error.wait_for(state="visible", timeout=scaled(10) * 1000)
        assert "Разрешите" in await error.inner_text()
        assert await page.locator("#join-button").is_disabled()
