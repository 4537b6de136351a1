"""A real call through the embedded media server: two aiortc peers, crosswise endpoints,
one recorder per published stream, files checked with ffprobe."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
import weakref
from pathlib import Path

import pytest

from kurento_ctl.client import KurentoClient
from kurento_ctl.errors import KurentoError
from kurento_ctl.events import EndOfStream, MediaFlowInStateChanged
from kurento_ctl.objects import MediaPipeline, ServerManager
from mediaserver.webrtc import WebRtcEndpointImpl
from tests.helpers import wait_until, within
from tests.media_fixtures import (
    CrossCall,
    GatedTrack,
    Peer,
    ffprobe,
    run_mediaserver,
    stream_durations,
)


async def test_two_peers_receive_each_other_and_both_streams_are_recorded(tmp_path: Path) -> None:
    """Two peers get each other's media, flow events follow it stopping and resuming, both are
    recorded in full, and releasing the pipeline leaves no connection, task or file behind."""
    async with run_mediaserver(recordings_root=tmp_path) as (url, server), \
            KurentoClient(url) as kc:
        tasks_before = asyncio.all_tasks()
        call = CrossCall(kc, tmp_path)
        pipeline = await call.start()
        peer_a, peer_b = Peer(), Peer()
        try:
            offers = await asyncio.gather(peer_a.offer(), peer_b.offer())
            answers = await asyncio.gather(call.endpoints["a"].process_offer(offers[0]),
                                           call.endpoints["b"].process_offer(offers[1]))
            await asyncio.gather(peer_a.accept(answers[0]), peer_b.accept(answers[1]))
            server_pcs = [weakref.ref(o.pc) for o in server.objects.values()
                          if isinstance(o, WebRtcEndpointImpl)]
            assert len(server_pcs) == 2

            for peer in (peer_a, peer_b):
                for kind in ("audio", "video"):
                    await within(peer.got_media[kind].wait(), 15, f"{kind} at a peer")
            await call.all_flowing()
            call.assert_flow_order()
            await asyncio.sleep(2.0)  # the recording's length is what is under test here
            recorded = await call.stop_recorders()

            # Media that stops is NOT_FLOWING where it entered and where it left, and
            # FLOWING again once it resumes.
            tracks = [s.track for s in peer_a.pc.getSenders() if s.track is not None]
            for track in tracks:
                assert isinstance(track, GatedTrack)
                track.gate.clear()
            await call.wait_seen(("ep_a", "out", "VIDEO", "NOT_FLOWING"),
                                 ("ep_b", "in", "VIDEO", "NOT_FLOWING"),
                                 ("ep_a", "out", "AUDIO", "NOT_FLOWING"))
            resumed_from = len(call.seen)
            for track in tracks:
                assert isinstance(track, GatedTrack)
                track.gate.set()
            await call.wait_seen(("ep_a", "out", "VIDEO", "FLOWING"),
                                 ("ep_b", "in", "VIDEO", "FLOWING"), since=resumed_from)
        finally:
            await asyncio.gather(peer_a.close(), peer_b.close())

        for side in "ab":
            info = await ffprobe(call.paths[side])
            codecs = sorted((s["codec_type"], s["codec_name"]) for s in info["streams"])
            assert codecs == [("audio", "opus"), ("video", "vp8")], info["streams"]
            duration = float(info["format"]["duration"])
            assert abs(duration - recorded[side]) < 1.0, (side, duration, recorded)
            # Each stream on its own too: audio and video stay in step.
            for kind, seconds in stream_durations(info).items():
                assert abs(seconds - recorded[side]) < 1.0, (side, kind, seconds, recorded)

        await pipeline.release()
        assert await ServerManager(kc).get_pipelines() == []
        assert server.objects.keys() == {"manager_ServerManager"}
        # Nothing of the call is left in the process: peer connections, tasks, open files.
        await asyncio.sleep(0)  # let cancelled tasks run their last step
        gc.collect()
        assert [ref for ref in server_pcs if ref() is not None] == []
        leftover = [t for t in asyncio.all_tasks() - tasks_before
                    if not t.done() and t is not asyncio.current_task()]
        assert leftover == [], [t.get_name() for t in leftover]
        assert [f for f in _open_files() if f.startswith(str(tmp_path))] == []


async def test_one_source_feeds_many_sinks_and_a_sink_switches_source_at_run_time(
    tmp_path: Path,
) -> None:
    """Audio only (cheap): two tones, told apart by frequency at the receiving peers."""
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        ep_a, ep_b, ep_1, ep_2 = await asyncio.gather(
            *(pipeline.create_webrtc_endpoint() for _ in range(4)))
        low, high = Peer(video=False, tone=440), Peer(video=False, tone=880)
        viewers = [Peer(audio=False, video=False) for _ in range(2)]
        for viewer in viewers:
            viewer.pc.addTransceiver("audio", direction="recvonly")
        try:
            await asyncio.gather(ep_a.connect(ep_1, "AUDIO"), ep_a.connect(ep_2, "AUDIO"))
            for peer, ep in zip((low, high, *viewers), (ep_a, ep_b, ep_1, ep_2), strict=True):
                await peer.accept(await ep.process_offer(await peer.offer()))

            def hear(v1: float | None, v2: float | None) -> bool:
                def near(heard: float | None, tone: float | None) -> bool:
                    return heard == tone if tone is None or heard is None \
                        else abs(heard - tone) < 20
                return near(viewers[0].hearing(), v1) and near(viewers[1].hearing(), v2)

            def heard() -> list[float | None]:
                return [v.hearing() for v in viewers]

            await wait_until(lambda: hear(440, 440), timeout=15, interval=0.1, describe=heard)
            await ep_b.connect(ep_2, "AUDIO")  # replaces ep_2's audio source
            await wait_until(lambda: hear(440, 880), timeout=10, interval=0.1, describe=heard)
            await ep_b.disconnect(ep_2, "AUDIO")  # no source: silence, the track stays
            await wait_until(lambda: hear(440, None), timeout=10, interval=0.1, describe=heard)
            assert viewers[1].pc.connectionState == "connected"
        finally:
            await asyncio.gather(*(p.close() for p in (low, high, *viewers)))
            await pipeline.release()


def _open_files() -> list[str]:
    """What this process has open, from /proc (Linux)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return out


async def test_a_player_plays_a_file_into_a_recorder_and_ends(tmp_path: Path) -> None:
    """A player plays a file at its own pace into a recorder and ends; files outside are refused."""
    source = tmp_path / "clip.webm"
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "1.5",
        "-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libopus", str(source))
    assert await proc.wait() == 0
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), \
            KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        player = await pipeline.create_player_endpoint(source.as_uri())
        recorder = await pipeline.create_recorder_endpoint((tmp_path / "copy.webm").as_uri())
        ended = asyncio.Event()
        await player.subscribe(EndOfStream, lambda e: ended.set())
        await player.connect(recorder)
        await recorder.record()
        started = time.monotonic()
        await player.play()
        await within(ended.wait(), 15, "EndOfStream")
        assert time.monotonic() - started >= 1.0  # played at its own pace, not dumped
        await recorder.stop_and_wait()
        await pipeline.release()
        with pytest.raises(KurentoError):  # outside the recordings root: refused
            await (await MediaPipeline.create(kc)).create_player_endpoint("file:///etc/passwd")
    info = await ffprobe(tmp_path / "copy.webm")
    assert sorted(s["codec_type"] for s in info["streams"]) == ["audio", "video"]
    assert float(info["format"]["duration"]) > 1.0


async def test_a_viewer_of_an_audio_only_publisher_gets_no_video_until_the_source_is_gone(
    tmp_path: Path,
) -> None:
    """Kurento sends only what the connected source carries: the viewer's video track is
    negotiated but silent, and its endpoint never reports VIDEO flowing in. Only with no
    source connected at all does the track carry black filler (still not FLOWING)."""
    async with run_mediaserver(recordings_root=tmp_path) as (url, _), \
            KurentoClient(url) as kc:
        pipeline = await MediaPipeline.create(kc)
        ep_pub, ep_view = await asyncio.gather(pipeline.create_webrtc_endpoint(),
                                               pipeline.create_webrtc_endpoint())
        flows: list[tuple[str, str]] = []
        await ep_view.subscribe(MediaFlowInStateChanged,
                                lambda e: flows.append((e.media_type, e.state)))
        publisher, viewer = Peer(video=False), Peer(audio=False, video=False)
        for kind in ("audio", "video"):
            viewer.pc.addTransceiver(kind, direction="recvonly")
        try:
            await ep_pub.connect(ep_view)  # both kinds, as the hub connects a viewer
            for peer, ep in ((publisher, ep_pub), (viewer, ep_view)):
                await peer.accept(await ep.process_offer(await peer.offer()))
            # Two seconds of the publisher's audio at the viewer: black filler, if sent,
            # would have arrived many times over meanwhile (15 frames a second).
            await wait_until(lambda: viewer.received["audio"] >= 100, timeout=15,
                             describe=lambda: viewer.received)
            assert viewer.hearing() is not None
            assert viewer.received["video"] == 0
            assert ("AUDIO", "FLOWING") in flows
            assert not await ep_view.is_media_flowing_in("VIDEO")

            await ep_pub.disconnect(ep_view, "VIDEO")  # no video source connected now
            await within(viewer.got_media["video"].wait(), 10, "black filler at the viewer")
            assert not await ep_view.is_media_flowing_in("VIDEO")
            assert ("VIDEO", "FLOWING") not in flows
        finally:
            await asyncio.gather(publisher.close(), viewer.close())
            await pipeline.release()
