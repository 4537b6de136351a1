"""Peers that neither decode nor receive what they do not need: publishers that only send,
viewers that take encoded frames off their receivers (the server's own hook) and decode
video themselves with PyAV, so a test can tell the server's decoders from its own."""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass

import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from mediaserver.forwarding import EncodedFrame, ForwardingReceiver, hook_sender
from tests.media_fixtures import PatternTrack, ToneTrack


class Publisher:
    """Sends a tone and a pattern of the given size; counts the keyframe requests (PLI/FIR)
    that reach its video sender."""

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver(ToneTrack(), direction="sendonly")
        video = self.pc.addTransceiver(PatternTrack(width, height, fps), direction="sendonly")
        self.keyframe_requests: list[float] = []
        hook_sender(video.sender, lambda: self.keyframe_requests.append(time.monotonic()))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def close(self) -> None:
        await self.pc.close()


@dataclass
class Received:
    frame: EncodedFrame
    size: tuple[int, int] | None  # decoded picture size, video only


class Viewer:
    """Receives audio and video as encoded frames; decodes the video itself."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        for kind in ("audio", "video"):
            self.pc.addTransceiver(kind, direction="recvonly")
        self.frames: dict[str, list[Received]] = {"audio": [], "video": []}
        self.decode_errors = 0
        self.connected_at: float | None = None
        self.changed = asyncio.Event()
        self._decoder = av.CodecContext.create("vp8", "r")
        self._hooks: list[ForwardingReceiver] = []
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in self.pc.getTransceivers()
                        if t.receiver.track is track)
        self._hooks.append(ForwardingReceiver(receiver, self._on_frame))

    def _on_frame(self, frame: EncodedFrame) -> None:
        size = None
        if frame.kind == "video":
            packet = av.Packet(frame.data)
            packet.pts = frame.timestamp
            packet.time_base = fractions.Fraction(1, frame.clock_rate)
            try:
                for picture in self._decoder.decode(packet):
                    size = (picture.width, picture.height)
            except av.FFmpegError:
                self.decode_errors += 1
        self.frames[frame.kind].append(Received(frame, size))
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_for(self, predicate: object, what: str, timeout: float = 15) -> None:
        from tests.helpers import within

        async def until() -> None:
            while not predicate():  # type: ignore[operator]
                await self.changed.wait()
        await within(until(), timeout, what)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def close(self) -> None:
        for hook in self._hooks:
            hook.close()
        await self.pc.close()
