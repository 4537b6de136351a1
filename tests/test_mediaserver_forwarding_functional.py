"""The embedded media server forwards encoded media: no decoder runs on the way from a
publisher to its viewers and recorders, a late viewer starts at a keyframe it asked the
publisher for, and a viewer switched to another publisher plays on."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import aiortc
import pytest
from aiortc import RTCRtpReceiver, rtcrtpreceiver

from kurento_ctl.client import KurentoClient
from kurento_ctl.objects import MediaPipeline
from mediaserver.forwarding import AIORTC_VERSION, check_aiortc
from mediaserver.recorder import RecorderEndpointImpl
from recordings import continuity
from tests.forward_fixtures import Publisher, Viewer
from tests.helpers import wait_until, within
from tests.media_fixtures import Peer, ffprobe, run_mediaserver


@pytest.fixture
def decoders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every decoder aiortc makes in this process (codec names). In-process wrapping:
    there is no other way to watch a library's constructor, and nothing is faked."""
    made: list[str] = []
    original = rtcrtpreceiver.get_decoder

    def counting(codec: Any) -> Any:
        made.append(codec.mimeType)
        return original(codec)
    monkeypatch.setattr(rtcrtpreceiver, "get_decoder", counting)
    return made


async def test_media_reaches_viewers_and_a_file_without_any_decoder(
        tmp_path: Path, decoders: list[str]) -> None:
    """Publisher to two viewers and a recorder: frames arrive, the file passes ffprobe,
    and aiortc never made a decoder (the peers here decode nothing through aiortc)."""
    path = tmp_path / "pub.webm"
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        ep_pub, ep_1, ep_2 = await asyncio.gather(
            *(pipeline.create_webrtc_endpoint() for _ in range(3)))
        recorder = await pipeline.create_recorder_endpoint(path.as_uri())
        publisher, viewers = Publisher(), [Viewer(), Viewer()]
        try:
            await asyncio.gather(ep_pub.connect(ep_1), ep_pub.connect(ep_2),
                                 ep_pub.connect(recorder))
            await recorder.record()
            for peer, ep in ((publisher, ep_pub), (viewers[0], ep_1), (viewers[1], ep_2)):
                await peer.accept(await ep.process_offer(await peer.offer()))
            for viewer in viewers:
                await viewer.wait_for(lambda v=viewer: len(v.frames["video"]) >= 30
                                      and len(v.frames["audio"]) >= 100, "two seconds of media")
                assert viewer.decode_errors == 0
                assert viewer.frames["video"][0].frame.keyframe
            await recorder.stop_and_wait()
        finally:
            await asyncio.gather(publisher.close(), *(v.close() for v in viewers))
            await pipeline.release()
    assert decoders == []
    info = await ffprobe(path)
    assert sorted(s["codec_name"] for s in info["streams"]) == ["opus", "vp8"]
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (320, 240)
    assert float(info["format"]["duration"]) > 1.5
    assert await continuity.check(path) is None


async def test_a_late_viewer_gets_a_keyframe_it_asked_the_publisher_for(tmp_path: Path) -> None:
    """The publisher's encoder makes a keyframe every 3000 frames on its own: the one a
    late viewer starts with comes from the PLI the server sent when the viewer connected."""
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        ep_pub, ep_early, ep_late = await asyncio.gather(
            *(pipeline.create_webrtc_endpoint() for _ in range(3)))
        publisher, early, late = Publisher(), Viewer(), Viewer()
        try:
            await ep_pub.connect(ep_early)
            for peer, ep in ((publisher, ep_pub), (early, ep_early)):
                await peer.accept(await ep.process_offer(await peer.offer()))
            await early.wait_for(lambda: len(early.frames["video"]) >= 30, "early viewer video")
            requests_before = len(publisher.keyframe_requests)
            await ep_pub.connect(ep_late)
            connected = asyncio.get_running_loop().time()
            await late.accept(await ep_late.process_offer(await late.offer()))
            await late.wait_for(lambda: len(late.frames["video"]) >= 10, "late viewer video")
            first = late.frames["video"][0]
            assert first.frame.keyframe and first.size == (320, 240)
            assert late.decode_errors == 0
            # The request reached the publisher after the late viewer was connected...
            assert len(publisher.keyframe_requests) > requests_before
            # ...and the keyframe it made came within one round trip of the viewer's
            # connection (loopback: milliseconds; a busy machine gets a second).
            assert late.connected_at is not None
            assert first.frame.arrival - late.connected_at < 1.0
            assert first.frame.arrival - connected < 10
        finally:
            await asyncio.gather(publisher.close(), early.close(), late.close())
            await pipeline.release()


async def test_a_viewer_switched_to_another_publisher_plays_on(tmp_path: Path) -> None:
    """Two publishers of different sizes; the viewer's RTP timestamps run on across the
    switch (rewritten, not the new source's own), and the new source's pictures decode
    from a keyframe on, without one decode error."""
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        ep_a, ep_b, ep_view = await asyncio.gather(
            *(pipeline.create_webrtc_endpoint() for _ in range(3)))
        pub_a, pub_b, viewer = Publisher(320, 240), Publisher(160, 120), Viewer()
        try:
            await ep_a.connect(ep_view)
            for peer, ep in ((pub_a, ep_a), (pub_b, ep_b), (viewer, ep_view)):
                await peer.accept(await ep.process_offer(await peer.offer()))
            await viewer.wait_for(lambda: len(viewer.frames["video"]) >= 30, "A's video")
            switched = {k: len(v) for k, v in viewer.frames.items()}
            await ep_b.connect(ep_view)
            await viewer.wait_for(lambda: sum(r.size == (160, 120)
                                              for r in viewer.frames["video"]) >= 20,
                                  "B's video at the viewer")
            assert viewer.decode_errors == 0
            after = viewer.frames["video"][switched["video"]:]
            first_b = next(i for i, r in enumerate(after) if r.size == (160, 120))
            assert after[first_b].frame.keyframe
            assert all(r.size in (None, (160, 120)) for r in after[first_b:])
            for kind in ("audio", "video"):
                stamps = [r.frame.timestamp for r in viewer.frames[kind]]
                steps = [b - a for a, b in itertools.pairwise(stamps)]
                clock = viewer.frames[kind][0].frame.clock_rate
                # Rising, never by more than a second: no jump back to B's own origin
                # (aiortc would unwrap that as a 2**32 leap), no gap where A ended.
                assert all(0 < step < clock for step in steps), (kind, max(steps))
        finally:
            await asyncio.gather(pub_a.close(), pub_b.close(), viewer.close())
            await pipeline.release()


def test_the_aiortc_internals_the_hooks_use_are_the_pinned_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed aiortc is the one the hooks were read from, and another version
    makes the check (run whenever a hook is installed) refuse loudly."""
    assert aiortc.__version__ == AIORTC_VERSION
    check_aiortc()
    monkeypatch.setattr(aiortc, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match=r"9\.9\.9"):
        check_aiortc()


async def test_a_viewer_without_the_publishers_codec_gets_it_transcoded_and_is_told(
        tmp_path: Path) -> None:
    """A viewer that negotiated only H.264 from a VP8 publisher: the server decodes and
    re-encodes for that viewer alone, and raises MediaTranscodingStateChanged."""
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        ep_pub, ep_view = await asyncio.gather(pipeline.create_webrtc_endpoint(),
                                               pipeline.create_webrtc_endpoint())
        states: list[tuple[str, str]] = []
        await ep_view.subscribe("MediaTranscodingStateChanged",
                                lambda e: states.append((e.raw["mediaType"], e.raw["state"])))
        publisher, viewer = Publisher(), Peer(audio=False, video=False)
        transceiver = viewer.pc.addTransceiver("video", direction="recvonly")
        transceiver.setCodecPreferences([
            c for c in RTCRtpReceiver.getCapabilities("video").codecs
            if c.mimeType.lower() in ("video/h264", "video/rtx")])
        try:
            await ep_pub.connect(ep_view)
            for peer, ep in ((publisher, ep_pub), (viewer, ep_view)):
                await peer.accept(await ep.process_offer(await peer.offer()))
            assert "H264" in viewer.pc.remoteDescription.sdp
            await within(viewer.got_media["video"].wait(), 15, "H.264 video at the viewer")
            assert ("VIDEO", "TRANSCODING") in states
        finally:
            await asyncio.gather(publisher.close(), viewer.close())
            await pipeline.release()


async def test_an_offer_preferring_h264_is_answered_vp8_first_and_h264_is_still_recorded(
        tmp_path: Path) -> None:
    """Safari lists H.264 first: our answer puts VP8 first (browsers then send VP8). This
    aiortc peer sends H.264 regardless (it keeps its own preference), which a WEBM file
    cannot hold: the recorder transcodes that one stream to VP8 and says so."""
    path = tmp_path / "safari.webm"
    async with run_mediaserver(recordings_root=tmp_path) as (url, server), KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        ep = await pipeline.create_webrtc_endpoint()
        recorder = await pipeline.create_recorder_endpoint(path.as_uri())
        transcoding: list[str] = []
        recording = asyncio.Event()
        await recorder.subscribe("MediaTranscodingStateChanged",
                                 lambda e: transcoding.append(e.raw["mediaType"]))
        await recorder.subscribe("Recording", lambda e: recording.set())
        publisher = Peer()
        for transceiver in publisher.pc.getTransceivers():
            if transceiver.kind == "video":
                codecs = RTCRtpReceiver.getCapabilities("video").codecs
                transceiver.setCodecPreferences(
                    sorted(codecs, key=lambda c: c.mimeType.lower() != "video/h264"))
        try:
            await ep.connect(recorder)
            await recorder.record()
            offer = await publisher.offer()
            answer = await ep.process_offer(offer)
            video = answer[answer.index("m=video"):]
            first = video.split("\r\n")[0].split()[3]
            assert f"a=rtpmap:{first} VP8/90000" in video, video
            await publisher.accept(answer)
            await within(recording.wait(), 15, "Recording")
            await wait_until(lambda: transcoding == ["VIDEO"], timeout=10,
                             describe=lambda: transcoding)
            element = server.objects[recorder.id]
            assert isinstance(element, RecorderEndpointImpl)
            await wait_until(lambda: element.totals("video").sent >= 15, timeout=15,
                             describe=lambda: element.totals("video"))
            await recorder.stop_and_wait()
        finally:
            await publisher.close()
            await pipeline.release()
    info = await ffprobe(path)
    assert sorted(s["codec_name"] for s in info["streams"]) == ["opus", "vp8"]
