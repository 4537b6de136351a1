"""The embedded media server in-process on loopback, and scripted aiortc participants."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from kurento_ctl.client import KurentoClient
from kurento_ctl.events import (
    KurentoEvent,
    MediaFlowInStateChanged,
    MediaFlowOutStateChanged,
    Recording,
    Stopped,
)
from kurento_ctl.objects import MediaPipeline, RecorderEndpoint, WebRtcEndpoint
from mediaserver.app import SERVER, create_app
from mediaserver.core import MediaServer
from tests.helpers import scaled, within
from tests.services import free_port


@contextlib.asynccontextmanager
async def run_mediaserver(
    *, strict_candidates: bool = False, gc_grace: float = 240.0,
    recordings_root: Path | None = None,
) -> AsyncIterator[tuple[str, MediaServer]]:
    """Serves the embedded media server on a free loopback port; yields (url, server)."""
    app = create_app(strict_candidates=strict_candidates, gc_grace=gc_grace,
                     recordings_root=recordings_root)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"ws://127.0.0.1:{port}/kurento", app[SERVER]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def mediaserver_process(port: int, recordings_root: Path, *,
                              gc_grace: float = 240.0) -> AsyncIterator[
        asyncio.subprocess.Process]:
    """`python -m mediaserver` as its own process, so a test can kill it like a crash;
    `gc_grace` is its garbage collector's period."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediaserver", "--port", str(port),
        "--recordings-root", str(recordings_root), "--log-level", "WARNING",
        "--gc-grace", str(gc_grace))
    try:
        async with asyncio.timeout(scaled(15)):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    if proc.returncode is not None:
                        raise RuntimeError("the media server exited at start") from None
                    await asyncio.sleep(0.05)  # polling a port: there is no event to await
                    continue
                writer.close()
                break
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


class GatedTrack(MediaStreamTrack):
    """A paced source that can be paused: `gate.clear()` stops frames, `gate.set()` resumes."""

    _start: float | None

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def _wait_gate(self) -> None:
        if self.gate.is_set():
            return
        paused = time.monotonic()
        await self.gate.wait()
        if self._start is not None:
            # Resume at the normal pace instead of bursting the frames "missed" meanwhile.
            self._start += time.monotonic() - paused


class ToneTrack(GatedTrack):
    """A 440 Hz tone in 20 ms frames, paced to real time."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0) -> None:
        super().__init__()
        self._frequency = frequency
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        await self._wait_gate()
        if self.readyState != "live":
            raise MediaStreamError
        rate, n = 48000, 960
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._samples / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(n) + self._samples) / rate
        wave = (np.sin(2 * math.pi * self._frequency * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, rate)
        self._samples += n
        return frame


class PatternTrack(GatedTrack):
    """320x240 frames at 15 fps whose brightness moves, so encoders see change."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15) -> None:
        super().__init__()
        self._size = (width, height)
        self._fps = fps
        self._count = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        await self._wait_gate()
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._count / self._fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        w, h = self._size
        img = np.zeros((h, w, 3), np.uint8)
        img[:, :, 1] = (self._count * 8) % 256
        img[:, (self._count * 4) % w, :] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = int(self._count * 90000 / self._fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._count += 1
        return frame


class Peer:
    """A scripted participant: an aiortc peer connection that publishes and counts frames."""

    def __init__(self, *, audio: bool = True, video: bool = True, tone: float = 440.0) -> None:
        self.pc = RTCPeerConnection()
        self.received: dict[str, int] = {"audio": 0, "video": 0}
        self.got_media = {"audio": asyncio.Event(), "video": asyncio.Event()}
        #: The last half second of received audio, mono, 48 kHz.
        self.recent_audio: deque[np.ndarray] = deque(maxlen=25)
        self._readers: list[asyncio.Task[None]] = []
        if audio:
            self.pc.addTrack(ToneTrack(tone))
        if video:
            self.pc.addTrack(PatternTrack())
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._readers.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.received[track.kind] += 1
                if isinstance(frame, av.AudioFrame):
                    samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                    self.recent_audio.append(samples[:, 0].astype(np.float64))
                if self.received[track.kind] >= 5:
                    self.got_media[track.kind].set()

    def hearing(self) -> float | None:
        """The dominant frequency (Hz) of the recent audio; None for silence or too little."""
        if len(self.recent_audio) < self.recent_audio.maxlen // 2:  # type: ignore[operator]
            return None
        samples = np.concatenate(list(self.recent_audio))
        if np.sqrt(np.mean(samples ** 2)) < 100:  # the tone's RMS is about 5600
            return None
        spectrum = np.abs(np.fft.rfft(samples))
        return float(np.argmax(spectrum) * 48000 / len(samples))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await self.pc.close()


async def ffprobe(path: Path) -> dict[str, Any]:
    import json
    import shutil

    binary = shutil.which("ffprobe")
    assert binary, "ffprobe is not installed; ./dev test installs it"
    proc = await asyncio.create_subprocess_exec(
        binary, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)  # type: ignore[no-any-return]


def stream_durations(info: dict[str, Any]) -> dict[str, float]:
    """Seconds per stream kind, from the DURATION tags Matroska/WEBM muxers write."""
    out = {}
    for stream in info["streams"]:
        text = (stream.get("tags") or {}).get("DURATION", "0:0:0")
        hours, minutes, seconds = text.split(":")
        out[stream["codec_type"]] = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return out


class CrossCall:
    """The two-party topology: endpoints `ep_a`/`ep_b` connected crosswise, each also into
    its own WEBM recorder `rec_a`/`rec_b`; every flow and recorder event is noted with
    the time it arrived. Everything is subscribed before anything is connected."""

    def __init__(self, client: KurentoClient, folder: Path) -> None:
        self.client = client
        self.paths = {"a": folder / "a.webm", "b": folder / "b.webm"}
        #: (element, "in"/"out", AUDIO/VIDEO, FLOWING/NOT_FLOWING) in arrival order.
        self.seen: list[tuple[str, str, str, str]] = []
        self.changed = asyncio.Event()
        self.recording_at: dict[str, float] = {}  # epoch seconds, as the server stamped it
        self.stopped: set[str] = set()
        self.endpoints: dict[str, WebRtcEndpoint] = {}
        self.recorders: dict[str, RecorderEndpoint] = {}
        self._names: dict[str, str] = {}

    async def start(self) -> MediaPipeline:
        self.pipeline = pipeline = await MediaPipeline.create(self.client)
        eps = await asyncio.gather(pipeline.create_webrtc_endpoint(),
                                   pipeline.create_webrtc_endpoint())
        recs = await asyncio.gather(*(pipeline.create_recorder_endpoint(self.paths[s].as_uri())
                                      for s in "ab"))
        for side, ep, rec in zip("ab", eps, recs, strict=True):
            self.endpoints[side], self.recorders[side] = ep, rec
            self._names |= {ep.id: f"ep_{side}", rec.id: f"rec_{side}"}
        subs = []
        for element in (*eps, *recs):
            subs.append(element.subscribe(MediaFlowInStateChanged, self._flow))
            subs.append(element.subscribe(MediaFlowOutStateChanged, self._flow))
        for rec in recs:
            subs.append(rec.subscribe(Recording, self._recording))
            subs.append(rec.subscribe(Stopped, lambda e: self.stopped.add(self._names[
                e.object_id])))
        await asyncio.gather(*subs)
        ep_a, ep_b = eps
        await asyncio.gather(ep_a.connect(ep_b), ep_b.connect(ep_a),
                             ep_a.connect(recs[0]), ep_b.connect(recs[1]))
        await asyncio.gather(*(rec.record() for rec in recs))
        return pipeline

    def _flow(self, event: KurentoEvent) -> None:
        assert isinstance(event, (MediaFlowInStateChanged, MediaFlowOutStateChanged))
        direction = "in" if isinstance(event, MediaFlowInStateChanged) else "out"
        name = self._names[event.object_id]
        self.seen.append((name, direction, event.media_type, event.state))
        self._signal()

    def _recording(self, event: KurentoEvent) -> None:
        # The server's own clock: on a loaded machine the event may reach us late.
        self.recording_at[self._names[event.object_id]] = event.timestamp_ms / 1000
        self._signal()

    def _signal(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_seen(self, *entries: tuple[str, str, str, str], since: int = 0,
                        timeout: float = 10) -> None:
        """Until every entry has arrived (from position `since` of `seen` on)."""
        async def seen_all() -> None:
            while not all(e in self.seen[since:] for e in entries):
                await self.changed.wait()
        try:
            await within(seen_all(), timeout, "flow events")
        except AssertionError:
            raise AssertionError(f"not seen {entries}; seen {self.seen[since:]}") from None

    async def all_flowing(self, timeout: float = 15) -> None:
        """Media from each peer flows into the pipeline, to the other peer and to its file."""
        await self.wait_seen(*[(f"{element}_{side}", direction, kind, "FLOWING")
                               for side in "ab" for kind in ("AUDIO", "VIDEO")
                               for element, direction in (("ep", "out"), ("ep", "in"),
                                                          ("rec", "in"))], timeout=timeout)

    def assert_flow_order(self) -> None:
        """Kurento's order (PROTOCOL.md 1.5): media from a peer is FlowOut of its endpoint
        before it is FlowIn of the other endpoint or of its recorder."""
        for side, other in (("a", "b"), ("b", "a")):
            for kind in ("AUDIO", "VIDEO"):
                out = self.seen.index((f"ep_{side}", "out", kind, "FLOWING"))
                assert out < self.seen.index((f"ep_{other}", "in", kind, "FLOWING")), self.seen
                assert out < self.seen.index((f"rec_{side}", "in", kind, "FLOWING")), self.seen

    async def stop_recorders(self) -> dict[str, float]:
        """Ends both files; returns, per side, seconds from `Recording` to the stop."""
        await within(self._both_recording(), 10, "Recording on both recorders")
        stop = time.time()
        await asyncio.gather(*(rec.stop_and_wait() for rec in self.recorders.values()))
        assert self.stopped == {"rec_a", "rec_b"}
        return {side: stop - self.recording_at[f"rec_{side}"] for side in "ab"}

    async def _both_recording(self) -> None:
        while len(self.recording_at) < 2:
            await self.changed.wait()
