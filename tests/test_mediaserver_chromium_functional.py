"""A call through the embedded media server with headless Chromium (fake camera and
microphone) as one peer and an aiortc peer as the other, recorded on both sides."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kurento_ctl.client import KurentoClient
from tests.helpers import scaled, within
from tests.media_fixtures import CrossCall, Peer, ffprobe, run_mediaserver, stream_durations
from tests.services import free_port

#: Publishes camera and microphone (320x240@15, CPU is scarce) and returns a complete
#: offer: Chromium trickles, so wait for gathering to end and send every candidate at once.
OFFER = """async () => {
  const stream = await navigator.mediaDevices.getUserMedia(
      {audio: true, video: {width: 320, height: 240, frameRate: 15}});
  const pc = new RTCPeerConnection();
  window.pc = pc;
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  const gathered = new Promise((resolve) => {
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
  });
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') await gathered;
  return pc.localDescription.sdp;
}"""
ACCEPT = "async (sdp) => { await window.pc.setRemoteDescription({type: 'answer', sdp}); }"
#: What arrived from the other peer: decoded video frames, received audio samples.
RECEIVED = """async () => {
  const out = {audio: 0, video: 0};
  (await window.pc.getStats()).forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    out[s.kind] = s.kind === 'video' ? (s.framesDecoded || 0) : (s.totalSamplesReceived || 0);
  });
  return out;
}"""


@pytest.fixture
async def blank_page_url() -> AsyncIterator[str]:
    """An http://127.0.0.1 page: a secure context, so getUserMedia exists."""
    async def blank(_: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>peer</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", blank)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def test_chromium_and_aiortc_receive_each_other_through_the_media_server(
    tmp_path: Path, browser: Any, blank_page_url: str,
) -> None:
    """Chromium and aiortc get each other's media through the media server, recorded in step."""
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), \
            KurentoClient(url) as kc:
        call = CrossCall(kc, tmp_path)  # side "a" is Chromium, "b" the aiortc peer
        pipeline = await call.start()
        context = await browser.new_context()
        page = await context.new_page()
        peer = Peer()
        try:
            await page.goto(blank_page_url)
            chromium_offer, aiortc_offer = await asyncio.gather(page.evaluate(OFFER),
                                                                peer.offer())
            answers = await asyncio.gather(call.endpoints["a"].process_offer(chromium_offer),
                                           call.endpoints["b"].process_offer(aiortc_offer))
            await page.evaluate(ACCEPT, answers[0])
            await peer.accept(answers[1])

            for kind in ("audio", "video"):
                await within(peer.got_media[kind].wait(), 20, f"Chromium's {kind} at aiortc")
            await page.wait_for_function(f"({RECEIVED})().then(r => r.audio > 0 && "
                                         "r.video > 5)", timeout=scaled(20) * 1000,
                                         polling=200)
            await call.all_flowing(timeout=20)
            call.assert_flow_order()
            await asyncio.sleep(2.0)  # the recording's length is what is under test here
            recorded = await call.stop_recorders()
        finally:
            await peer.close()
            await context.close()
        for side in "ab":
            info = await ffprobe(call.paths[side])
            codecs = sorted((s["codec_type"], s["codec_name"]) for s in info["streams"])
            assert codecs == [("audio", "opus"), ("video", "vp8")], (side, info["streams"])
            assert abs(float(info["format"]["duration"]) - recorded[side]) < 1.0
            for kind, seconds in stream_durations(info).items():
                assert abs(seconds - recorded[side]) < 1.0, (side, kind, seconds, recorded)
        await pipeline.release()
