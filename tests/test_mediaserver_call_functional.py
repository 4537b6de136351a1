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
from kurento_ctl.events import EndOfStream
from kurento_ctl.objects import MediaPipeline, ServerManager
from mediaserver.webrtc import WebRtcEndpointImpl
from tests.helpers import within
from tests.media_fixtures import (
    CrossCall,
    GatedTrack,
    Peer,
    ffprobe,
    run_mediaserver,
    stream_durations,
)


async def test_two_peers_receive_each_other_and_both_streams_are_recorded(tmp_path: Path) -> None:
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


def _open_files() -> list[str]:
    """What this process has open, from /proc (Linux)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return out


async def test_a_player_plays_a_file_into_a_recorder_and_ends(tmp_path: Path) -> None:
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
