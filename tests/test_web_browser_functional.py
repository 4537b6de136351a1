"""Headless Chromium with fake camera and microphone completes a consultation in our pages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.call import CallKind, CallState
from tests.helpers import scaled
from tests.hub_fixtures import API_KEY, Service, run_service
from tests.media_fixtures import ffprobe, run_mediaserver
from tests.page_checks import wait_js
from tests.services import RedisServer, TurnServer, free_port
from web.i18n import STRINGS

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
#: Two or three Chromium pages with media through the embedded server outlast the default.
HEAVY = pytest.mark.timeout(scaled(60))
RU = STRINGS["ru"]
DEAD_KURENTO = ("ws://127.0.0.1:9/kurento",)

VIDEO_PLAYING = """() => {
  const v = document.querySelector('.tile:not(.self) video');
  return !!v && v.videoWidth > 0 && v.currentTime > 0.5 && !v.paused;
}"""

# Decoded frames of the other participant's picture (Safari names the counter differently).
FRAMES_SHOWN = """() => {
  const v = document.querySelector('.tile:not(.self) video');
  if (!v) return 0;
  return v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality().totalVideoFrames
                                   : v.webkitDecodedFrameCount;
}"""

# Every value body[data-call-state] takes, so that short-lived states can be asserted.
RECORD_STATES = """(() => {
  window.callStates = [];
  new MutationObserver(() => {
    const s = document.body.dataset.callState;
    if (s && window.callStates[window.callStates.length - 1] !== s) window.callStates.push(s);
  }).observe(document, {subtree: true, attributes: true,
                                        attributeFilter: ['data-call-state']});
})();"""


async def open_call(browser: Any, link: str, name: str, width: int = 1280,
                    height: int = 800, init_script: str | None = None) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    page.on("console", lambda m: print(f"[{name}] {m.type}: {m.text}"))
    await page.add_init_script(RECORD_STATES)
    if init_script is not None:
        await page.add_init_script(init_script)
    await page.goto(link)
    await page.wait_for_selector("#join-button:not([disabled])", timeout=scaled(15) * 1000)
    return page


async def assert_video_advances(page: Any) -> None:
    """The other participant's picture has a size and new frames keep arriving."""
    await wait_js(page, VIDEO_PLAYING, timeout=scaled(30) * 1000)
    first = await page.evaluate(FRAMES_SHOWN)
    await wait_js(page, f"({FRAMES_SHOWN})() > {first} + 10",
                                 timeout=scaled(10) * 1000)


async def timeline(service: Service, call_id: str) -> list[dict[str, Any]]:
    """The call's timeline as the MIS reads it over the REST API."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{service.url}/api/v1/calls/{call_id}",
            headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status == 200
        body = await r.json()
    events: list[dict[str, Any]] = body["timeline"]
    return events


@HEAVY
async def test_patient_and_doctor_pages_complete_a_recorded_consultation(
    tmp_path: Path, redis_server: RedisServer, turn_server: TurnServer, browser: Any
) -> None:
    """Patient and doctor pages pass a TURN network check, go live, record, and end the call."""
    ARTIFACTS.mkdir(exist_ok=True)
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,), turn_urls=(turn_server.url,),
                        turn_secrets=(turn_server.secret,)) as service:
        hub = service.hub
        call = hub.create_call(CallKind.CONSULTATION, [("pat-7", "Анна Петрова", "patient"),
                                                      ("doc-7", "Д-р Иванов", "doctor")])
        link = f"{service.url}/join/" + "{}"
        patient = await open_call(browser, link.format(service.token(call.id, "pat-7")),
                                  "patient", 390, 844)
        doctor = await open_call(browser, link.format(
            service.token(call.id, "doc-7", role="doctor")), "doctor")
        for page in (patient, doctor):
            # The network check got this call's TURN credentials and coturn relayed.
            await page.wait_for_selector("#network[data-result=relay]",
                                         timeout=scaled(10) * 1000)
            assert await page.inner_text("#network-text") == RU["net_relay_ok"]
            assert await page.locator("#camera-select option").count() >= 1
            await wait_js(page,
                "Number(document.getElementById('mic-level').dataset.peak) > 0",
                timeout=scaled(5) * 1000)
        await patient.screenshot(path=str(ARTIFACTS / "join-phone.png"))
        await doctor.screenshot(path=str(ARTIFACTS / "join-desktop.png"))
        await patient.click("#join-button")
        await doctor.click("#join-button")
        for page in (patient, doctor):
            await assert_video_advances(page)
            await page.wait_for_selector("#recording:not([hidden])", timeout=scaled(15) * 1000)
        for page in (patient, doctor):
            await page.wait_for_selector("body[data-call-state=live]", timeout=scaled(15) * 1000)
            await wait_js(page,
                "Number(document.getElementById('quality').dataset.kbps) > 0 && "
                "document.getElementById('quality').dataset.rtt !== ''",
                timeout=scaled(10) * 1000)
            assert await page.is_visible("#recording")
            assert not await page.is_visible("#ring-out"), "a consultation rings nobody"
        assert call.state is CallState.LIVE
        assert await patient.locator("#end-all").count() == 0, "patients do not end calls"
        await patient.screenshot(path=str(ARTIFACTS / "call-phone.png"))
        await doctor.screenshot(path=str(ARTIFACTS / "call-desktop.png"))
        events = await timeline(service, call.id)
        await asyncio.sleep(1.0)  # a second of recorded media for the files checked below
        await doctor.click("#end-all")
        for page in (patient, doctor):
            await page.wait_for_selector("#outcome:not([hidden])", timeout=scaled(15) * 1000)
            assert await page.inner_text("#outcome-text") == RU["ended"]
        assert call.state is CallState.ENDED
        files = sorted(service.settings.recordings_path.rglob("*.webm"))
        assert [f.name for f in files] == ["doc-7.webm", "pat-7.webm"]
        for f in files:
            info = await ffprobe(f)
            assert sorted(s["codec_type"] for s in info["streams"]) == ["audio", "video"]
    for pid in ("pat-7", "doc-7"):
        mine = [e for e in events if e.get("participant") == pid]
        states = {(e["data"]["target"], e["data"]["what"], e["data"]["value"])
                  for e in mine if e["event"] == "client.pc"}
        for target in ("publish", "doc-7" if pid == "pat-7" else "pat-7"):
            assert {(target, "iceConnectionState", "connected"),
                    (target, "connectionState", "connected"),
                    (target, "signalingState", "stable"),
                    (target, "iceGatheringState", "complete")} <= states, (pid, states)
        pairs = [e["data"] for e in mine if e["event"] == "client.selectedPair"]
        assert {p["target"] for p in pairs} == {"publish", "doc-7" if pid == "pat-7" else "pat-7"}
        assert all(p["local"] in ("host", "srflx", "prflx", "relay") for p in pairs), pairs
        checks = [e["data"] for e in mine if e["event"] == "client.networkCheck"]
        assert checks and checks[0]["result"] == "relay"


async def patient_page(service: Service, browser: Any, init_script: str | None = None) -> Any:
    """The join page of the patient of a fresh consultation, as loaded (not joined)."""
    call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                          ("d", "D", "doctor")])
    page = await (await browser.new_context()).new_page()
    if init_script is not None:
        await page.add_init_script(init_script)
    await page.goto(f"{service.url}/join/{service.token(call.id, 'p')}")
    return page


async def test_a_turn_server_that_relays_nothing_is_reported_plainly(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """A TURN server that relays nothing shows a plain relay-failed message before the call."""
    nowhere = f"turn:127.0.0.1:{free_port()}"
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO, turn_urls=(nowhere,),
                           turn_secrets=("s" * 32,)) as service:
        page = await patient_page(service, browser)
        await page.wait_for_selector("#network[data-result=no-relay]",
                                     timeout=scaled(15) * 1000)
        assert await page.inner_text("#network-text") == RU["net_relay_failed"]


def _refuse(error: str) -> str:
    # getUserMedia fails as it does when the user refuses the prompt, no camera is plugged
    # in, or another program holds it.
    return f"""navigator.mediaDevices.getUserMedia = () =>
        Promise.reject(new DOMException('refused', '{error}'));"""


@pytest.mark.parametrize(("init_script", "key"), [
    (_refuse("NotAllowedError"), "err_permission"),
    (_refuse("NotFoundError"), "err_no_device"),
    (_refuse("NotReadableError"), "err_busy"),
    ("delete window.RTCPeerConnection;", "err_unsupported"),
    # As on plain http:// from another machine: no secure context.
    ("Object.defineProperty(window, 'isSecureContext', {get: () => false});", "err_insecure"),
], ids=["denied", "no-camera", "busy-camera", "no-webrtc", "insecure"])
async def test_precheck_problems_show_what_to_do(
    tmp_path: Path, redis_server: RedisServer, browser: Any, init_script: str, key: str
) -> None:
    """Each pre-call problem (permission, device, busy, no WebRTC, insecure) says what to do."""
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO) as service:
        page = await patient_page(service, browser, init_script)
        error_box = page.locator("#precheck-error")
        await error_box.wait_for(state="visible", timeout=scaled(10) * 1000)
        assert await error_box.inner_text() == RU[key]
        assert await page.locator("#join-button").is_disabled()


async def test_permission_denied_by_the_browser_itself_shows_its_message(
    tmp_path: Path, redis_server: RedisServer, browser_without_media_permission: Any
) -> None:
    """A camera permission the browser itself refuses shows the permission message."""
    async with run_service(tmp_path, redis_server.url, DEAD_KURENTO) as service:
        # Headless Chromium without the fake-UI flag refuses the prompt: a real denial.
        page = await patient_page(service, browser_without_media_permission)
        error_box = page.locator("#precheck-error")
        await error_box.wait_for(state="visible", timeout=scaled(10) * 1000)
        assert await error_box.inner_text() == RU["err_permission"]
        await page.screenshot(path=str(ARTIFACTS / "join-permission-denied.png"))


# Keeps every socket the page opens, so a test can cut one as a dropped network would.
KEEP_SOCKETS = """(() => {
  const Native = window.WebSocket;
  window.sockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.sockets.push(this); }
  };
})();"""


@HEAVY
async def test_a_dropped_connection_rejoins_within_the_grace_and_pictures_come_back(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """A page whose socket drops rejoins within the grace and the pictures come back, still live."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-5", "P", "patient"),
                                                              ("doc-5", "D", "doctor")])
        link = f"{service.url}/join/" + "{}"
        patient = await open_call(browser, link.format(service.token(call.id, "pat-5")),
                                  "patient", init_script=KEEP_SOCKETS)
        doctor = await open_call(browser, link.format(
            service.token(call.id, "doc-5", role="doctor")), "doctor")
        await patient.click("#join-button")
        await doctor.click("#join-button")
        for page in (patient, doctor):
            await page.wait_for_selector("body[data-call-state=live]", timeout=scaled(30) * 1000)
        await patient.evaluate("window.sockets[window.sockets.length - 1].close()")
        await wait_js(patient, "window.sockets.length === 2", timeout=scaled(10) * 1000)
        for page in (patient, doctor):
            await assert_video_advances(page)
            await page.wait_for_selector("body[data-call-state=live]", timeout=scaled(30) * 1000)
        # Alone until the doctor's join (the patient clicked first).
        assert await patient.evaluate("window.callStates") == [
            "alone", "connecting", "live", "reconnecting", "connecting", "live"]
        events = [e["event"] for e in await timeline(service, call.id)
                  if e.get("participant") == "pat-5"]
        assert "disconnected" in events and "rejoined" in events
        assert "client.reconnected" in events
        assert call.state is CallState.LIVE
        await doctor.click("#end-all")
        await patient.wait_for_selector("#outcome:not([hidden])", timeout=scaled(15) * 1000)


RECEIVE_ONLY = """async ([token, source]) => {
  // Receive-only: no getUserMedia, so Chromium hides its host addresses behind mDNS names.
  const ws = new WebSocket(location.origin.replace('http', 'ws') + '/ws', ['telemed.v1']);
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
  const replies = new Map();
  const pc = new RTCPeerConnection();
  window.sentCandidates = [];
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.re !== undefined && replies.has(m.re)) { replies.get(m.re)(m); return; }
    if (m.type === 'candidate' && m.candidate)
      pc.addIceCandidate({candidate: m.candidate, sdpMid: m.sdpMid,
                          sdpMLineIndex: m.sdpMLineIndex}).catch(() => {});
  };
  let next = 1;
  const request = (type, fields = {}) => new Promise((ok) => {
    const id = next++; replies.set(id, ok); ws.send(JSON.stringify({type, id, ...fields}));
  });
  await request('hello', {token});
  await request('join');
  pc.addTransceiver('audio', {direction: 'recvonly'});
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.onicecandidate = (e) => {
    if (e.candidate) window.sentCandidates.push(e.candidate.candidate);
    ws.send(JSON.stringify({type: 'candidate', target: source,
      candidate: e.candidate ? e.candidate.candidate : '',
      sdpMid: e.candidate ? e.candidate.sdpMid : null,
      sdpMLineIndex: e.candidate ? e.candidate.sdpMLineIndex : null}));
  };
  await pc.setLocalDescription(await pc.createOffer());
  const answer = await request('subscribe', {participant: source, sdp: pc.localDescription.sdp});
  await pc.setRemoteDescription({type: 'answer', sdp: answer.sdp});
  window.receiver = pc;
}"""

FRAMES_DECODED = """async () => {
  if (!window.receiver) return 0;
  let frames = 0;
  (await window.receiver.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0;
  });
  return frames;
}"""


async def test_chromium_mdns_candidates_are_dropped_and_media_still_arrives(
    tmp_path: Path, redis_server: RedisServer, browser_without_media_permission: Any
) -> None:
    """Chromium's mDNS host candidates are dropped (on the timeline) and media still arrives."""
    browser = browser_without_media_permission
    from tests.hub_fixtures import CallClient

    async with run_mediaserver(recordings_root=tmp_path, strict_candidates=True) as (
            kms_url, _), run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("pat-8", "P", "patient"),
                                                              ("doc-8", "D", "doctor")])
        doctor = CallClient(service, service.token(call.id, "doc-8", role="doctor"))
        context = await browser.new_context()
        page = await context.new_page()
        try:
            await doctor.connect()
            await doctor.join()
            await doctor.publish()
            await page.goto(f"{service.url}/healthz")  # any page of ours: the right Origin
            await page.evaluate(RECEIVE_ONLY, [service.token(call.id, "pat-8"), "doc-8"])
            await wait_js(page, f"({FRAMES_DECODED})().then(n => n > 5)",
                                         timeout=scaled(30) * 1000, polling=200)
            sent = await page.evaluate("window.sentCandidates")
        finally:
            await context.close()
            await doctor.close()
        host = [c for c in sent if " typ host" in c]
        assert host and all(".local " in c for c in host if " udp " in c.lower()), sent
        drops = [e for e in call.timeline.as_list()
                 if e["event"] == "candidates-dropped" and e["participant"] == "pat-8"]
        assert drops and {"mdns"} <= {r for d in drops for r in d["reasons"]}


@HEAVY
async def test_a_referral_started_on_the_workstation_rings_the_consultants_and_is_accepted(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """A referral started on a workstation rings the consultant; Enter answers and it goes live."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        hub = service.hub
        hub.create_call(CallKind.CONSULTATION, [("pat-3", "Анна Петрова", "patient"),
                                                ("doc-3", "Д-р Иванов", "doctor")],
                        {"subject": "Повторный приём"})
        call = hub.create_call(CallKind.REFERRAL, [
            ("doc-3", "Д-р Иванов", "doctor"), ("fd-3", "Д-р Сидорова", "consultant")],
            {"subject": "Расшифровка ЭКГ"})
        desk = f"{service.url}/workstation/" + "{}"
        doctor_desk = desk.format(service.token("workstation", "doc-3", role="doctor",
                                                name="Д-р Иванов"))
        phone = await (await browser.new_context(viewport={"width": 390, "height": 844})
                       ).new_page()
        await phone.goto(doctor_desk)
        await phone.screenshot(path=str(ARTIFACTS / "workstation-phone.png"))
        consultant = await (await browser.new_context(viewport={"width": 1280, "height": 800})
                            ).new_page()
        consultant.on("console", lambda m: print(f"[consultant] {m.type}: {m.text}"))
        await consultant.goto(desk.format(service.token("workstation", "fd-3",
                                                        role="consultant",
                                                        name="Д-р Сидорова")))
        await consultant.wait_for_selector("#ws-online:not([hidden])", timeout=scaled(10) * 1000)
        doctor = await (await browser.new_context(viewport={"width": 1280, "height": 800})
                        ).new_page()
        doctor.on("console", lambda m: print(f"[doctor] {m.type}: {m.text}"))
        await doctor.goto(doctor_desk)
        assert await doctor.locator(".call-row").count() == 2
        await doctor.screenshot(path=str(ARTIFACTS / "workstation-desktop.png"))
        await doctor.click(f".call-row[data-call='{call.id}'] a.call-action")
        await doctor.click("#join-button:not([disabled])", timeout=scaled(15) * 1000)
        await doctor.click("#ring-out:not([hidden])", timeout=scaled(15) * 1000)
        await consultant.wait_for_selector("#ring:not([hidden])", timeout=scaled(10) * 1000)
        assert "Д-р Иванов" in await consultant.inner_text("#ring-text")
        assert RU["ring_answer_within"] in await consultant.inner_text("#ring-countdown")
        assert await doctor.inner_text("#status") == RU["ringing"]
        await doctor.screenshot(path=str(ARTIFACTS / "workstation-doctor-ringing.png"))
        await consultant.screenshot(path=str(ARTIFACTS / "workstation-ringing.png"))
        # The dialog takes the keyboard focus: Enter answers.
        assert await consultant.evaluate("document.activeElement.id") == "accept"
        await consultant.keyboard.press("Enter")
        # Answered on the workstation, the call page joins without another click.
        await consultant.wait_for_url("**/join/**", timeout=scaled(10) * 1000)
        for page in (doctor, consultant):
            await assert_video_advances(page)
            await page.wait_for_selector("body[data-call-state=live]", timeout=scaled(15) * 1000)
        assert call.state is CallState.LIVE
        await consultant.screenshot(path=str(ARTIFACTS / "workstation-call-desktop.png"))
        await doctor.click("#end-all")
        await consultant.wait_for_selector("#outcome:not([hidden])", timeout=scaled(15) * 1000)
        assert await consultant.inner_text("#outcome-text") == RU["ended"]


@HEAVY
async def test_an_unanswered_referral_stops_ringing_on_the_phone_sized_workstation(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """An unanswered referral stops ringing on a phone-sized page; both sides see why it ended."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        env={"TELEMED_CALLS_RING_TIMEOUT": str(scaled(3))}) as service:
        call = service.hub.create_call(CallKind.REFERRAL, [
            ("doc-4", "Д-р Иванов", "doctor"), ("fd-4", "Д-р Сидорова", "consultant")])
        link = f"{service.url}/join/" + "{}"
        consultant = await open_call(browser, link.format(
            service.token(call.id, "fd-4", role="consultant")), "consultant", 390, 844)
        await consultant.click("#join-button")
        await consultant.wait_for_selector("body[data-call-state=waiting]",
                                           timeout=scaled(10) * 1000)
        await consultant.screenshot(path=str(ARTIFACTS / "workstation-waiting-phone.png"))
        doctor = await open_call(browser, link.format(
            service.token(call.id, "doc-4", role="doctor")), "doctor", 390, 844)
        await doctor.click("#join-button")
        await doctor.click("#ring-out:not([hidden])", timeout=scaled(15) * 1000)
        await consultant.wait_for_selector("#ring:not([hidden])", timeout=scaled(10) * 1000)
        await consultant.screenshot(path=str(ARTIFACTS / "workstation-ringing-phone.png"))
        for page, key in ((consultant, "ring_missed"), (doctor, "failed_ring_timeout")):
            await page.wait_for_selector("#outcome:not([hidden])", timeout=scaled(10) * 1000)
            assert await page.inner_text("#outcome-text") == RU[key]
        assert not await consultant.is_visible("#ring")
        assert call.failure is not None and call.failure.value == "ring-timeout"


async def test_a_call_whose_media_is_blocked_shows_the_watchdog_failure(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """A call whose media is blocked shows the `no media` failure on time, with a retry button."""
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        watchdog_timeout=2.0) as service:
        call = service.hub.create_call(CallKind.CONSULTATION, [("p", "P", "patient"),
                                                              ("d", "D", "doctor")])
        context = await browser.new_context()
        page = await context.new_page()
        # A network that lets no media through: no ICE candidate leaves or enters the page.
        await page.add_init_script(r"""(() => {
          const send = WebSocket.prototype.send;
          // No candidates, and no default address in c=/m= lines (that counts as one too).
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
        })();""")
        await page.goto(f"{service.url}/join/{service.token(call.id, 'p')}")
        await page.wait_for_selector("#join-button:not([disabled])", timeout=scaled(15) * 1000)
        started = asyncio.get_running_loop().time()
        await page.click("#join-button")
        await page.wait_for_selector("#outcome:not([hidden])", timeout=scaled(15) * 1000)
        elapsed = asyncio.get_running_loop().time() - started
        text = await page.inner_text("#outcome-text")
        retry_shown = await page.is_visible("#retry")
        await page.screenshot(path=str(ARTIFACTS / "call-failed-no-media.png"))
        await context.close()
    assert text == RU["failed_no_media"]
    assert retry_shown, "a failure offers to try again"
    assert 2.0 <= elapsed < 2.0 + scaled(8)
    assert call.failure is not None and call.failure.value == "no-media"


@HEAVY
async def test_a_conference_grid_holds_everyone_and_highlights_who_speaks(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    """Three in a conference: two columns on a desktop, one on a phone; the talker's tile
    is highlighted."""
    from tests.hub_fixtures import CallClient

    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,),
                        # The scripted peers only publish: the call never goes live, and
                        # this test looks at the grid, not at the watchdog.
                        watchdog_timeout=scaled(40)) as service:
        call = service.hub.create_call(CallKind.CONFERENCE, [
            ("doc-a", "Д-р Иванов", "doctor"), ("doc-b", "Д-р Орлова", "doctor"),
            ("doc-c", "Д-р Ким", "doctor")])
        # Two branches join as scripted peers: one talks (a tone), one only shows video.
        talker = CallClient(service, service.token(call.id, "doc-b", role="doctor"))
        silent = CallClient(service, service.token(call.id, "doc-c", role="doctor"))
        page = await open_call(browser, f"{service.url}/join/"
                               + service.token(call.id, "doc-a", role="doctor"), "doctor")
        try:
            for client, audio in ((talker, True), (silent, False)):
                await client.connect()
                await client.join()
                await client.publish(audio=audio, video=True)
            await page.click("#join-button")
            await page.wait_for_selector("#grid[data-count='3']", timeout=scaled(15) * 1000)
            for pid in ("doc-b", "doc-c"):
                await wait_js(page,
                    f"(() => {{ const v = document.querySelector("
                    f"'.tile[data-participant={pid}] video');"
                    f" return !!v && v.videoWidth > 0; }})()", timeout=scaled(30) * 1000)
            await wait_js(page,
                "document.querySelectorAll('.tile.speaking').length === 1 && "
                "!!document.querySelector('.tile[data-participant=doc-b].speaking')",
                timeout=scaled(15) * 1000)
            columns = await page.evaluate(
                "getComputedStyle(document.getElementById('grid'))"
                ".gridTemplateColumns.split(' ').length")
            assert columns == 2
            await page.screenshot(path=str(ARTIFACTS / "conference-desktop.png"))
            # On a phone the same grid is one column (docs/web.md), scrolled, not shrunk.
            await page.set_viewport_size({"width": 390, "height": 844})
            columns = await page.evaluate(
                "getComputedStyle(document.getElementById('grid'))"
                ".gridTemplateColumns.split(' ').length")
            assert columns == 1
            await page.screenshot(path=str(ARTIFACTS / "conference-phone.png"), full_page=True)
        finally:
            await page.context.close()
            await talker.close()
            await silent.close()
