"""A real call through the embedded media server: two aiortc peers, crosswise endpoints,
one recorder per published stream, files checked with ffprobe."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
import weakref
from collections import defaultdict
from pathlib import Path

import pytest

from kurento_ctl.client import KurentoClient
from kurento_ctl.errors import KurentoError
from kurento_ctl.events import (
    EndOfStream,
    KurentoEvent,
    MediaFlowInStateChanged,
    MediaFlowOutStateChanged,
    Recording,
    Stopped,
)
from kurento_ctl.objects import MediaPipeline, ServerManager
from mediaserver.webrtc import WebRtcEndpointImpl
from tests.helpers import within
from tests.media_fixtures import Peer, ffprobe, run_mediaserver


async def test_two_peers_receive_each_other_and_both_streams_are_recorded(tmp_path: Path) -> None:
    async with run_mediaserver(recordings_root=tmp_path) as (url, server), \
            KurentoClient(url) as kc:
        tasks_before = asyncio.all_tasks()
        pipeline = await MediaPipeline.create(kc)
        ep_a, ep_b = await asyncio.gather(pipeline.create_webrtc_endpoint(),
                                          pipeline.create_webrtc_endpoint())
        rec_a, rec_b = await asyncio.gather(
            pipeline.create_recorder_endpoint(f"file://{tmp_path}/a.webm"),
            pipeline.create_recorder_endpoint(f"file://{tmp_path}/b.webm"))
        seen: list[tuple[str, str, str, str]] = []
        flowing: dict[tuple[str, str, str], asyncio.Event] = defaultdict(asyncio.Event)
        names = {ep_a.id: "ep_a", ep_b.id: "ep_b", rec_a.id: "rec_a", rec_b.id: "rec_b"}

        def note(event: KurentoEvent) -> None:
            assert isinstance(event, (MediaFlowInStateChanged, MediaFlowOutStateChanged))
            direction = "in" if isinstance(event, MediaFlowInStateChanged) else "out"
            seen.append((names[event.object_id], direction, event.media_type, event.state))
            if event.flowing:
                flowing[(names[event.object_id], direction, event.media_type)].set()

        recording = {rec_a.id: asyncio.Event(), rec_b.id: asyncio.Event()}
        stopped = {rec_a.id: asyncio.Event(), rec_b.id: asyncio.Event()}
        subs = []
        for ep in (ep_a, ep_b, rec_a, rec_b):
            subs.append(ep.subscribe(MediaFlowInStateChanged, note))
            subs.append(ep.subscribe(MediaFlowOutStateChanged, note))
        for rec in (rec_a, rec_b):
            subs.append(rec.subscribe(Recording, lambda e: recording[e.object_id].set()))
            subs.append(rec.subscribe(Stopped, lambda e: stopped[e.object_id].set()))
        await asyncio.gather(*subs)
        await asyncio.gather(ep_a.connect(ep_b), ep_b.connect(ep_a),
                             ep_a.connect(rec_a), ep_b.connect(rec_b))
        await asyncio.gather(rec_a.record(), rec_b.record())

        peer_a, peer_b = Peer(), Peer()
        try:
            offers = await asyncio.gather(peer_a.offer(), peer_b.offer())
            answers = await asyncio.gather(ep_a.process_offer(offers[0]),
                                           ep_b.process_offer(offers[1]))
            await asyncio.gather(peer_a.accept(answers[0]), peer_b.accept(answers[1]))
            server_pcs = [weakref.ref(o.pc) for o in server.objects.values()
                          if isinstance(o, WebRtcEndpointImpl)]
            assert len(server_pcs) == 2

            for peer in (peer_a, peer_b):
                for kind in ("audio", "video"):
                    await within(peer.got_media[kind].wait(), 15, f"{kind} at a peer")
            await within(recording[rec_a.id].wait(), 10, "Recording on rec_a")
            await within(recording[rec_b.id].wait(), 10, "Recording on rec_b")
            started = time.monotonic()
            for key in [(ep, "out", k) for ep in ("ep_a", "ep_b") for k in ("AUDIO", "VIDEO")] + \
                       [(ep, "in", k) for ep in ("ep_a", "ep_b", "rec_a", "rec_b")
                        for k in ("AUDIO", "VIDEO")]:
                await within(flowing[key].wait(), 10, f"FLOWING {key}")
            # Media from a browser is FlowOut of its endpoint before it can be FlowIn anywhere.
            first_out = seen.index(("ep_a", "out", "VIDEO", "FLOWING"))
            assert first_out < seen.index(("ep_b", "in", "VIDEO", "FLOWING"))
            assert first_out < seen.index(("rec_a", "in", "VIDEO", "FLOWING"))

            await asyncio.sleep(2.0)  # the recording's length is what is under test here
            await asyncio.gather(rec_a.stop_and_wait(), rec_b.stop_and_wait())
            recorded = time.monotonic() - started
            assert stopped[rec_a.id].is_set() and stopped[rec_b.id].is_set()
        finally:
            await asyncio.gather(peer_a.close(), peer_b.close())

        for name in ("a.webm", "b.webm"):
            info = await ffprobe(tmp_path / name)
            kinds = sorted(s["codec_type"] for s in info["streams"])
            assert kinds == ["audio", "video"], info["streams"]
            codecs = {s["codec_type"]: s["codec_name"] for s in info["streams"]}
            assert codecs == {"audio": "opus", "video": "vp8"}
            duration = float(info["format"]["duration"])
            assert abs(duration - recorded) < 1.0, (duration, recorded)

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
