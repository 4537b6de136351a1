"""What a WebRtcEndpoint sends: its source's encoded frames, passed through untouched.

`OutboundTrack.recv()` returns `av.Packet`s, which aiortc's sender packetises with the
codec's `pack()` (no encoder runs); its sequence numbers are the sender's own, and the
timestamps are rewritten here per viewer (`Retimer`), so a switch of source plays on.
Only two cases hand the sender raw frames to encode: filler (black/silence) while no
source is connected, and a codec the viewer did not negotiate (`Transcoder`, logged and
raised as `MediaTranscodingStateChanged`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeAlias, cast

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mediaserver.forwarding import EncodedFrame
from mediaserver.tracks import VIEWER_DELAY, Counters, Fanout, Retimer, Tap

__all__ = ["OutboundTrack", "Transcoder"]

log = logging.getLogger(__name__)

AUDIO_RATE = 48000
AUDIO_PTIME = 0.02
VIDEO_CLOCK = 90000
#: PyAV decoders for the codecs a publisher may send.
DECODERS = {"video/vp8": "vp8", "video/h264": "h264", "audio/opus": "libopus"}

Sendable: TypeAlias = "av.Packet[Any] | av.AudioFrame | av.VideoFrame"


class Transcoder:
    """Decodes one source's frames for a sender that must encode another codec."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        if codec not in DECODERS:
            raise ValueError(f"cannot transcode {codec}")  # loud: an Error, not silence
        self._ctx: Any = cast(Any, av.CodecContext.create(DECODERS[codec], "r"))
        if codec == "audio/opus":
            # aiortc's audio encoders take what its own Opus decoder gives: s16 stereo.
            self._ctx.format = "s16"
            self._ctx.layout = "stereo"
            self._ctx.sample_rate = AUDIO_RATE

    def decode(self, frame: EncodedFrame, pts: int) -> list[av.AudioFrame | av.VideoFrame]:
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, frame.clock_rate)
        try:
            decoded = self._ctx.decode(packet)
        except av.FFmpegError as exc:
            log.info("= transcoding: %s frame not decoded: %s", self.codec, exc)
            return []
        for out in decoded:
            out.pts = pts
            out.time_base = fractions.Fraction(1, frame.clock_rate)
        return list(decoded)


class OutboundTrack(MediaStreamTrack):
    """The track an endpoint sends: its source's frames, or silence/black while none is
    connected. A connected source that carries nothing of this kind (an audio-only
    publisher's video) sends nothing, as on Kurento, instead of filler posing as media."""

    def __init__(self, kind: str, on_source_frame: Callable[[], None], name: str = "",
                 on_transcoding: Callable[[bool], None] | None = None,
                 size: tuple[int, int] = (320, 240), fps: int = 15) -> None:
        super().__init__()
        self.kind = kind
        self.name = name
        #: The codec the sender negotiated (mime type, lower case); None until known.
        self.send_codec: str | None = None
        self.counters = Counters()
        self._tap: Tap | None = None
        self._retimer = Retimer(time.monotonic())
        self._on_source_frame = on_source_frame
        self._on_transcoding = on_transcoding
        self._transcoder: Transcoder | None = None
        self._decoded: deque[av.AudioFrame | av.VideoFrame] = deque()
        self._size = size
        self._fps = fps
        self._samples = 0
        self._last_video_pts = -1
        self._filler: av.VideoFrame | None = None
        self._connected = False
        self._source_changed = asyncio.Event()

    def attach(self, fanout: Fanout | None, connected: bool | None = None) -> None:
        """`fanout` is the source's media of our kind; `connected` says whether a source
        element is connected at all (default: whether there is a fanout)."""
        if self._tap is not None:
            self._fold(self._tap)
            self._tap.close()
        self._tap = fanout.tap(VIEWER_DELAY[self.kind], self.name) \
            if fanout is not None else None
        self._connected = fanout is not None if connected is None else connected
        self._source_changed.set()

    def request_keyframe(self) -> None:
        """A viewer's PLI/FIR: only the source can make one."""
        if self._tap is not None:
            self._tap.fanout.request_keyframe()

    def _fold(self, tap: Tap) -> None:
        """Keeps the counts of a tap being replaced."""
        for field in ("received", "dropped", "skipped"):
            setattr(self.counters, field, getattr(self.counters, field) +
                    getattr(tap.counters, field))

    def totals(self) -> Counters:
        out = Counters(**vars(self.counters))
        if self._tap is not None:
            out.received += self._tap.counters.received
            out.dropped += self._tap.counters.dropped
            out.skipped += self._tap.counters.skipped
        return out

    async def recv(self) -> Sendable:
        if self.readyState != "live":
            raise MediaStreamError
        while True:
            if self._decoded:
                return self._decoded.popleft()
            tap = self._tap
            if tap is None:
                filler = await self._await_source()
                if filler is not None:
                    return filler
                continue
            frame = await tap.get()
            if self.readyState != "live":
                raise MediaStreamError
            if frame is None:
                if tap is self._tap:
                    self._tap = None  # the source ended: as if none were connected
                continue
            self._on_source_frame()
            out = self._convert(frame, tap)
            if out is not None:
                self.counters.sent += 1
                return out

    def _convert(self, frame: EncodedFrame, tap: Tap) -> Sendable | None:
        pts = self._retimer.stamp(frame, tap.fanout)
        if self.send_codec is None or frame.codec == self.send_codec:
            if self._transcoder is not None:
                self._transcoder = None
                log.info("= %s: %s forwarded again without transcoding", self.name, self.kind)
                if self._on_transcoding is not None:
                    self._on_transcoding(False)
            packet = av.Packet(frame.data)
            packet.pts = pts
            packet.time_base = fractions.Fraction(1, frame.clock_rate)
            return packet
        if self._transcoder is None or self._transcoder.codec != frame.codec:
            log.warning("! %s: transcoding %s %s -> %s (the viewer did not negotiate the "
                        "publisher's codec)", self.name, self.kind, frame.codec,
                        self.send_codec)
            self._transcoder = Transcoder(frame.codec)
            if self._on_transcoding is not None:
                self._on_transcoding(True)
        self._decoded.extend(self._transcoder.decode(frame, pts))
        return self._decoded.popleft() if self._decoded else None

    async def _await_source(self) -> Sendable | None:
        """Filler while no source is connected; while one without our kind is, waits for
        the source to change instead of waking up per frame."""
        self._source_changed.clear()
        wait = AUDIO_PTIME if self.kind == "audio" else 1.0 / self._fps
        if self._connected:
            await self._source_changed.wait()
            if self.readyState != "live":
                raise MediaStreamError
            return None
        due = self._retimer.start + (self._samples / AUDIO_RATE if self.kind == "audio"
                                     else (self._last_video_pts + 1) / VIDEO_CLOCK + wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._source_changed.wait(),
                                   max(due - time.monotonic(), 0.0))
            return None  # a source came: serve it instead
        if self.readyState != "live":
            raise MediaStreamError
        return self._silence() if self.kind == "audio" else self._black()

    def _silence(self) -> av.AudioFrame:
        samples = int(AUDIO_RATE * AUDIO_PTIME)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = AUDIO_RATE
        wall = int((time.monotonic() - self._retimer.start) * AUDIO_RATE)
        self._samples = max(self._samples, wall - samples)
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._samples += samples
        return frame

    def _black(self) -> av.VideoFrame:
        if self._filler is None:
            w, h = self._size
            black = av.VideoFrame(width=w, height=h, format="yuv420p")
            for i, plane in enumerate(black.planes):
                plane.update(bytes([0 if i == 0 else 128]) * plane.buffer_size)
            self._filler = black
        pts = int((time.monotonic() - self._retimer.start) * VIDEO_CLOCK)
        pts = max(pts, self._last_video_pts + 1)
        self._last_video_pts = pts
        self._filler.pts = pts
        self._filler.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return self._filler

    def stop(self) -> None:
        if self._tap is not None:
            self._tap.close()
            self._tap = None
        super().stop()
        self._source_changed.set()  # a recv waiting for a source ends now
