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
            await page.wait_for_function(f"({FRAMES_DECODED})().then(n => n > 5)",
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


async def test_a_referral_rings_the_consultants_workstation_and_is_accepted(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
    async with run_mediaserver(recordings_root=tmp_path) as (kms_url, _), \
            run_service(tmp_path, redis_server.url, (kms_url,)) as service:
        call = service.hub.create_call(CallKind.REFERRAL, [
            ("doc-3", "Д-р Иванов", "doctor"), ("fd-3", "Д-р Сидорова", "consultant")])
        link = f"{service.url}/join/" + "{}"
        consultant = await open_call(browser, link.format(
            service.token(call.id, "fd-3", role="consultant")), "consultant")
        await consultant.click("#join-button")
        await consultant.wait_for_selector("body[data-call-state=waiting]",
                                           timeout=scaled(10) * 1000)
        await consultant.screenshot(path=str(ARTIFACTS / "workstation-waiting.png"))
        doctor = await open_call(browser, link.format(
            service.token(call.id, "doc-3", role="doctor")), "doctor")
        await doctor.click("#join-button")
        await doctor.click("#ring-out:not([hidden])", timeout=scaled(15) * 1000)
        await consultant.wait_for_selector("#ring:not([hidden])", timeout=scaled(10) * 1000)
        assert "Д-р Иванов" in await consultant.inner_text("#ring-text")
        await consultant.screenshot(path=str(ARTIFACTS / "workstation-ringing.png"))
        await consultant.click("#accept")
        for page in (doctor, consultant):
            await page.wait_for_function(VIDEO_PLAYING, timeout=scaled(30) * 1000)
            await page.wait_for_selector("body[data-call-state=live]", timeout=scaled(15) * 1000)
        assert call.state is CallState.LIVE
        await doctor.click("#end-all")
        await consultant.wait_for_selector("#outcome:not([hidden])", timeout=scaled(15) * 1000)


async def test_a_call_whose_media_is_blocked_shows_the_watchdog_failure(
    tmp_path: Path, redis_server: RedisServer, browser: Any
) -> None:
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
        await page.screenshot(path=str(ARTIFACTS / "call-failed-no-media.png"))
        await context.close()
    assert "видео и звук не доходят" in text
    assert 2.0 <= elapsed < 2.0 + scaled(8)
    assert call.failure is not None and call.failure.value == "no-media"
