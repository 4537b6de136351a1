"""The participants of `bench.takeover`: browsers that encode and decode nothing.

Each replays the packets of a VP8/Opus WEBM made once by ffmpeg, paced in real time, and
counts the encoded video frames the media server's own receive hook hands over, with the
longest wait between two of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import subprocess
import time
from typing import Any, cast

import av
from aiortc.mediastreams import MediaStreamTrack

from bench.mediaserver_call import CACHE
from mediaserver.forwarding import EncodedFrame, ForwardingReceiver
from tests.hub_fixtures import CallClient, Service

__all__ = ["Packets", "Participant", "ReplayTrack", "clip", "more_video"]

Packets = list[tuple[float, bytes]]
#: How late a replayed packet may be before the track's clock moves on (s).
LATE = 0.1


def clip(width: int, height: int, fps: int, kbps: int) -> dict[str, Packets]:
    """Ten seconds of ffmpeg's test sources as VP8/Opus (a keyframe a second: a replayed
    file cannot answer a keyframe request), made once; its packets per kind, (s, data)."""
    path = CACHE / f"takeover-{width}x{height}@{fps}-{kbps}k.webm"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part.webm")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
             f"testsrc2=size={width}x{height}:rate={fps}", "-f", "lavfi", "-i",
             "sine=frequency=440:sample_rate=48000", "-t", "10", "-c:v", "libvpx",
             "-deadline", "realtime", "-cpu-used", "8", "-b:v", f"{kbps}k", "-g", str(fps),
             "-c:a", "libopus", "-b:a", "24k", str(partial)], check=True)
        partial.rename(path)
    out: dict[str, Packets] = {"audio": [], "video": []}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None and packet.time_base is not None:
                out[packet.stream.type].append((float(packet.pts * packet.time_base),
                                                bytes(packet)))
    return out


class ReplayTrack(MediaStreamTrack):
    """Encoded packets in a loop, paced to real time, counted; aiortc's sender packs them
    without encoding (it is handed `av.Packet`s)."""

    def __init__(self, kind: str, packets: Packets) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._length = packets[-1][0] + (packets[-1][0] - packets[-2][0])
        self._rate = 90000 if kind == "video" else 48000
        self._n = 0
        self._start: float | None = None
        self.sent = 0

    async def recv(self) -> av.Packet[Any]:
        loops, i = divmod(self._n, len(self._packets))
        at, data = self._packets[i]
        at += loops * self._length
        now = time.monotonic()
        if self._start is None:
            self._start = now - at
        if (delay := self._start + at - now) > 0:
            await asyncio.sleep(delay)
        elif delay < -LATE:
            # A starved process (the machine is shared) sends on from now instead of
            # bursting what it missed, as a camera would: the stream is late, not denser.
            self._start -= delay
        packet = av.Packet(data)
        packet.pts = int(at * self._rate)
        packet.time_base = fractions.Fraction(1, self._rate)
        self._n += 1
        if self.kind == "video":
            self.sent += 1
        return packet


class Participant(CallClient):
    """A browser of the call: replays the clip, counts the video frames of each source and
    the longest wait between two of them since `reset_gaps`."""

    def __init__(self, target: Any, token: str, clip_packets: dict[str, Packets]) -> None:
        super().__init__(cast(Service, target), token)
        self.clip = clip_packets
        self.video: ReplayTrack | None = None
        self.last: dict[str, float] = {}
        self.gap: dict[str, float] = {}
        self.hooks: list[ForwardingReceiver] = []
        self._tasks: set[asyncio.Future[None]] = set()

    async def publish(self, *, audio: bool = True, video: bool = True) -> None:
        pc = self._peer()
        self.pcs["publish"] = pc
        self.video = ReplayTrack("video", self.clip["video"])
        pc.addTransceiver(ReplayTrack("audio", self.clip["audio"]), direction="sendonly")
        pc.addTransceiver(self.video, direction="sendonly")
        await self._negotiate("publish", pc)

    async def subscribe(self, source: str, *, kinds: tuple[str, ...] = ("audio", "video")
                        ) -> None:
        pc = self._peer()
        self.pcs[source] = pc
        self.received[source] = {"audio": 0, "video": 0}
        self.got_media[source] = asyncio.Event()

        def on_track(track: MediaStreamTrack) -> None:
            receiver = next(t.receiver for t in pc.getTransceivers()
                            if t.receiver.track is track)
            self.hooks.append(ForwardingReceiver(receiver, lambda f: self._frame(source, f)))

        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        pc.on("track", on_track)
        await self._negotiate(source, pc, participant=source)

    def _frame(self, source: str, frame: EncodedFrame) -> None:
        counts = self.received[source]
        counts[frame.kind] += 1
        if frame.kind == "video":
            if source in self.last:
                self.gap[source] = max(self.gap.get(source, 0.0),
                                       frame.arrival - self.last[source])
            self.last[source] = frame.arrival
        if min(counts.values()) >= 5 and not self.got_media[source].is_set():
            self.got_media[source].set()
            task = asyncio.ensure_future(self.media_received(source))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def media_received(self, source: str) -> None:
        """What a browser reports from its inbound-rtp stats (the call goes live on it)."""
        with contextlib.suppress(Exception):  # a socket closing under it: resume resends
            await self.request("clientEvent", event="mediaReceived",
                               data={"participant": source})

    def reset_gaps(self) -> None:
        self.gap.clear()

    async def resume(self) -> dict[str, Any]:
        """A browser whose socket dropped: a new socket, the same token, its peers kept."""
        if self.http is not None:
            await self.http.close()
        self.authenticated = False
        await self.connect()
        await self.hello()
        return await self.request("join", resume=True)

    async def close(self) -> None:
        for hook in self.hooks:
            hook.close()
        await super().close()


async def more_video(viewer: Participant, source: str, frames: int, timeout: float) -> bool:
    start = viewer.received[source]["video"]
    deadline = time.monotonic() + timeout
    while viewer.received[source]["video"] < start + frames:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)  # frames arrive on aiortc's tasks; no event to await
    return True
