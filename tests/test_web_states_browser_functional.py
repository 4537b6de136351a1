"""The call page's states in headless Chromium through the embedded media server, at phone
and desktop sizes and in both languages: waiting for the doctor, audio only, who failed,
the quality line without media, muted and camera-off tiles, a participant reconnecting.
Every state reached is audited (axe-core, CSP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from signaling.call import CallKind, CallState
from tests.helpers import scaled
from tests.hub_fixtures import Service, run_service
from tests.media_fixtures import run_mediaserver
from tests.page_checks import DESKTOP, PHONE, audit, in_view, open_page, wait_js
from tests.services import RedisServer
from web.i18n import STRINGS

HEAVY = pytest.mark.timeout(scaled(90))
WAIT = scaled(30) * 1000
DEAD_KURENTO = ("ws://127.0.0.1:9/kurento",)


def _link(service: Service, call_id: str, pid: str, role: str, lang: str) -> str:
    return f"{service.url}/join/{service.token(call_id, pid, role=role)}?lang={lang}"


async def _ready(page: Any) -> None:
    await page.wait_for_selector("#join-button:not([disabled])", timeout=scaled(15) * 1000)


async def _live(*pages: Any) -> None:
    for page in pages:
        await page.wait_for_selector("body[data-call-state=live]", timeout=WAIT)


@HEAVY
@pytest.mark.parametrize(("first", "lang", "size"), [
    ("patient", "ru", PHONE), ("doctor", "en", DESKTOP), ("patient", "en", DESKTOP),
    ("doctor", "ru", PHONE)])
async def test_whoever_is_alone_is_told_whom_they_wait_for_until_the_other_comes(
    tmp_path: Path, redis_server: RedisServer, browser: Any, first: str, lang: str,
    size: dict[str, int]
) -> None:
    """Alone in the call the page says "waiting for the doctor/patient" (not "connecting"),
    and goes on to live when the other joins."""
    t = STRINGS[lang]
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-1", "Анна Петрова", "patient"), ("doc-1", "Д-р Иванов", "doctor")])
        second = "doctor" if first == "patient" else "patient"
        ids = {"patient": "pat-1", "doctor": "doc-1"}
        alone = await open_page(browser, _link(service, call.id, ids[first], first, lang),
                                first, size)
        await _ready(alone)
        await audit(alone, f"{first} precheck")
        await alone.click("#join-button")
        await alone.wait_for_selector("body[data-call-state=alone]", timeout=WAIT)
        key = "waiting_doctor" if first == "patient" else "waiting_patient"
        assert await alone.inner_text("#status") == t[key]
        await audit(alone, f"{first} alone")
        other = await open_page(browser, _link(service, call.id, ids[second], second, lang),
                                second, size)
        await _ready(other)
        await other.click("#join-button")
        await _live(alone, other)
        assert await alone.inner_text("#status") == t["live"]
        await audit(alone, f"{first} live")


# The camera is refused (or absent) but the microphone works.
def _no_camera(error: str) -> str:
    return f"""(() => {{
      const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
      navigator.mediaDevices.getUserMedia = (c) => c && c.video
        ? Promise.reject(new DOMException('no camera', '{error}')) : real(c);
    }})();"""


NOTHING = """navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException('refused', 'NotAllowedError'));"""


@pytest.mark.parametrize(("lang", "size"), [("ru", PHONE), ("en", PHONE), ("ru", DESKTOP),
                                            ("en", DESKTOP)])
async def test_a_refused_camera_is_explained_above_the_fold_and_the_microphone_suffices(
    tmp_path: Path, redis_server: RedisServer, browser: Any, lang: str, size: dict[str, int]
) -> None:
    """Camera refused, microphone allowed: the audio-only note is on screen without
    scrolling and Join works; both refused: the explanation is on screen, Join is off."""
    t = STRINGS[lang]
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                              ("d", "D", "doctor")])
        url = _link(service, call.id, "p", "patient", lang)
        page = await open_page(browser, url, "patient", size, _no_camera("NotAllowedError"))
        await _ready(page)
        assert await page.inner_text("#audio-only") == t["audio_only"]
        assert await in_view(page, "#audio-only")
        assert await page.is_visible("#preview-wrap.no-picture .placeholder")
        await audit(page, "audio-only precheck")
        refused = await open_page(browser, url, "patient", size, NOTHING)
        await refused.locator("#precheck-error").wait_for(state="visible",
                                                          timeout=scaled(10) * 1000)
        assert await refused.inner_text("#precheck-error") == t["err_permission"]
        assert await in_view(refused, "#precheck-error")
        assert await refused.locator("#join-button").is_disabled()
        await audit(refused, "refused precheck")


@HEAVY
@pytest.mark.parametrize("error", ["NotAllowedError", "NotFoundError"])
async def test_a_patient_without_a_camera_joins_with_sound_and_the_doctor_sees_the_name(
    tmp_path: Path, redis_server: RedisServer, browser: Any, error: str
) -> None:
    """Audio-only publishing goes live and the doctor's tile shows the patient's initial and
    name with a camera-off badge instead of a black box."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-2", "Анна Петрова", "patient"), ("doc-2", "Д-р Иванов", "doctor")])
        patient = await open_page(browser, _link(service, call.id, "pat-2", "patient", "ru"),
                                  "patient", PHONE, _no_camera(error))
        doctor = await open_page(browser, _link(service, call.id, "doc-2", "doctor", "en"),
                                 "doctor", DESKTOP)
        for page in (patient, doctor):
            await _ready(page)
            await page.click("#join-button")
        await _live(patient, doctor)
        tile = doctor.locator(".tile[data-participant=pat-2]")
        assert await tile.get_attribute("data-camera") == "off"
        assert await tile.locator(".placeholder .initial").inner_text() == "А"
        assert await tile.locator(".placeholder").is_visible()
        assert await tile.locator("figcaption").inner_text() == "Анна Петрова"
        assert STRINGS["en"]["tile_camera_off"] in await tile.locator(".tile-badges").inner_text()
        assert await patient.locator("#camera").is_disabled()
        await audit(doctor, "doctor with an audio-only patient")
        await audit(patient, "audio-only patient live")
        assert call.state is CallState.LIVE
    files = sorted(p.name for p in service.settings.recordings_path.rglob("*.webm"))
    assert files == ["doc-2.webm", "pat-2.webm"]


# A network that lets no media through: no ICE candidate leaves or enters the page, and no
# default address in c=/m= lines (that counts as one too).
BLOCK_MEDIA = r"""(() => {
  const send = WebSocket.prototype.send;
  const strip = (sdp) => sdp.split('\r\n').filter((l) => !l.startsWith('a=candidate'))
    .map((l) => l.startsWith('c=IN IP4') ? 'c=IN IP4 0.0.0.0'
      : l.startsWith('m=') ? l.replace(/^(m=\w+) \d+/, '$1 9') : l)
    .join('\r\n');
  WebSocket.prototype.send = function (data) {
    const msg = JSON.parse(data);
    if (msg.type === 'candidate') return;
    if (msg.sdp) msg.sdp = strip(msg.sdp);
    return send.call(this, JSON.stringify(msg));
  };
  RTCPeerConnection.prototype.addIceCandidate = () => Promise.resolve();
  const setRemote = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (desc) {
    return setRemote.call(this, { type: desc.type, sdp: strip(desc.sdp) });
  };
})();"""


@HEAVY
@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_a_blocked_patient_is_told_to_change_network_and_the_doctor_what_happened(
    tmp_path: Path, redis_server: RedisServer, browser: Any, lang: str
) -> None:
    """callFailed.detail decides the text: the patient whose upload failed gets the
    other-network advice, the doctor is told the patient's network blocked media; before
    that the blocked page's quality line says nothing flows (not "good · 0 kbit/s")."""
    t = STRINGS[lang]
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        watchdog_timeout=scaled(5)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-3", "Анна Петрова", "patient"), ("doc-3", "Д-р Иванов", "doctor")])
        doctor = await open_page(browser, _link(service, call.id, "doc-3", "doctor", lang),
                                 "doctor", DESKTOP)
        await _ready(doctor)
        await doctor.click("#join-button")
        await doctor.wait_for_selector("body[data-call-state=alone]", timeout=WAIT)
        patient = await open_page(browser, _link(service, call.id, "pat-3", "patient", lang),
                                  "patient", PHONE, BLOCK_MEDIA)
        await _ready(patient)
        await patient.click("#join-button")
        await wait_js(patient, "document.getElementById('quality').dataset.kbps === '0'",
                      timeout=scaled(5) * 1000)
        assert await patient.get_attribute("#quality", "data-grade") == "none"
        assert await patient.inner_text("#quality-text") == t["quality_none"]
        for page in (patient, doctor):
            await page.wait_for_selector("#outcome:not([hidden])", timeout=WAIT)
        assert await patient.inner_text("#outcome-text") == t["failed_no_media"]
        assert await doctor.inner_text("#outcome-text") == t[
            "failed_no_media_patient"].replace("{name}", "Анна Петрова")
        for page, who in ((patient, "patient"), (doctor, "doctor")):
            assert await page.evaluate("document.activeElement.id") == "outcome-text"
            await audit(page, f"{who} after no-media")
    assert call.failure is not None and call.failure.value == "no-media"


async def _badges(page: Any, selector: str) -> tuple[str | None, str | None]:
    tile = page.locator(selector)
    return await tile.get_attribute("data-mic"), await tile.get_attribute("data-camera")


@HEAVY
async def test_a_muted_microphone_and_a_camera_turned_off_show_on_every_tile(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """Whoever mutes or turns the camera off sees it on their own tile, the others on that
    person's tile (the name instead of a black picture); turning back on clears it."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-4", "Анна Петрова", "patient"), ("doc-4", "Д-р Иванов", "doctor")])
        patient = await open_page(browser, _link(service, call.id, "pat-4", "patient", "ru"),
                                  "patient", PHONE)
        doctor = await open_page(browser, _link(service, call.id, "doc-4", "doctor", "en"),
                                 "doctor", DESKTOP)
        for page in (patient, doctor):
            await _ready(page)
            await page.click("#join-button")
        await _live(patient, doctor)
        remote = ".tile[data-participant=pat-4]"
        await wait_js(doctor, f"document.querySelector('{remote}').dataset.camera === 'on'"
                      f" && document.querySelector('{remote}').dataset.mic === 'on'",
                      timeout=WAIT)
        await patient.click("#mute")
        await patient.click("#camera")
        assert await _badges(patient, "#self-tile") == ("off", "off")
        own = await patient.inner_text("#self-tile .tile-badges")
        assert STRINGS["ru"]["tile_muted"] in own and STRINGS["ru"]["tile_camera_off"] in own
        await wait_js(doctor, f"document.querySelector('{remote}').dataset.camera === 'off'"
                      f" && document.querySelector('{remote}').dataset.mic === 'off'",
                      timeout=WAIT)
        shown = await doctor.inner_text(f"{remote} .tile-badges")
        assert STRINGS["en"]["tile_muted"] in shown and STRINGS["en"]["tile_camera_off"] in shown
        assert await doctor.locator(f"{remote} .placeholder").is_visible()
        await audit(doctor, "doctor seeing a muted patient")
        await audit(patient, "muted patient")
        await patient.click("#mute")
        await patient.click("#camera")
        await wait_js(doctor, f"document.querySelector('{remote}').dataset.camera === 'on'"
                      f" && document.querySelector('{remote}').dataset.mic === 'on'",
                      timeout=WAIT)
        assert not await doctor.locator(f"{remote} .tile-badges").is_visible()
        await doctor.click("#mute")
        await wait_js(patient, "document.querySelector('.tile[data-participant=doc-4]')"
                      ".dataset.mic === 'off'", timeout=WAIT)


# Keeps the page's sockets, and while `window.blockSockets` is set, points new ones at a
# closed port: the network is gone, the page keeps trying.
FLAKY_NETWORK = """(() => {
  const Native = window.WebSocket;
  window.sockets = [];
  window.blockSockets = false;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(window.blockSockets ? url.replace(/:\\d+\\//, ':9/') : url, protocols);
      window.sockets.push(this);
    }
  };
})();"""


@HEAVY
@pytest.mark.parametrize(("lang", "size"), [("ru", PHONE), ("en", DESKTOP)])
async def test_the_others_see_reconnecting_on_the_tile_of_someone_whose_connection_dropped(
    tmp_path: Path, redis_server: RedisServer, browser: Any, lang: str, size: dict[str, int]
) -> None:
    """participantReconnecting marks that person's tile and the status line; their return
    clears it and the call is live again."""
    t = STRINGS[lang]
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [
            ("pat-5", "Анна Петрова", "patient"), ("doc-5", "Д-р Иванов", "doctor")])
        patient = await open_page(browser, _link(service, call.id, "pat-5", "patient", lang),
                                  "patient", PHONE, FLAKY_NETWORK)
        doctor = await open_page(browser, _link(service, call.id, "doc-5", "doctor", lang),
                                 "doctor", size)
        for page in (patient, doctor):
            await _ready(page)
            await page.click("#join-button")
        await _live(patient, doctor)
        await patient.evaluate("window.blockSockets = true;"
                               " window.sockets[window.sockets.length - 1].close()")
        tile = ".tile[data-participant=pat-5]"
        await doctor.wait_for_selector(f"{tile}[data-state=reconnecting]", timeout=WAIT)
        assert await doctor.inner_text(f"{tile} .tile-note") == t["peer_reconnecting"]
        assert await doctor.inner_text("#status") == t["peer_reconnecting"]
        await audit(doctor, "doctor while the patient reconnects")
        await patient.evaluate("window.blockSockets = false")
        await doctor.wait_for_selector(f"{tile}[data-state=connected]", timeout=WAIT)
        await _live(patient, doctor)
        assert not await doctor.locator(f"{tile} .tile-note").is_visible()
