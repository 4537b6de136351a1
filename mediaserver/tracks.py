"""Media plumbing: one decoder per received track, fanned out to every sink.

`Fanout` reads decoded frames from a remote track once and hands them to each attached
`Tap` (bounded, newest wins: a slow sink drops frames instead of adding latency).
`OutboundTrack` is what an endpoint sends: frames of whatever source is connected at that
moment, or silence/black while none is. `FlowMonitor` turns frame arrivals into Kurento's
FLOWING / NOT_FLOWING transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["Fanout", "FlowMonitor", "OutboundTrack", "Tap"]

log = logging.getLogger(__name__)

AUDIO_RATE = 48000
AUDIO_PTIME = 0.02
VIDEO_CLOCK = 90000
#: KMS checks every 2 s whether buffers passed since the last check.
FLOW_CHECK_INTERVAL = 2.0

Frame = av.AudioFrame | av.VideoFrame


class FlowMonitor:
    """Calls `on_change(flowing)` on the first frame and after a quiet check interval."""

    def __init__(self, on_change: Callable[[bool], None],
                 interval: float = FLOW_CHECK_INTERVAL) -> None:
        self._on_change = on_change
        self._interval = interval
        self.flowing = False
        self._seen = False
        self._task: asyncio.Task[None] | None = None

    def frame(self) -> None:
        self._seen = True
        if not self.flowing:
            self.flowing = True
            self._on_change(True)
            if self._task is None:
                self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self._seen and self.flowing:
                self.flowing = False
                self._on_change(False)
            self._seen = False

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class Tap:
    """One sink's view of a Fanout."""

    def __init__(self, fanout: Fanout, maxsize: int) -> None:
        self.fanout = fanout
        self.queue: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize)

    def put(self, frame: Frame | None) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(frame)

    def close(self) -> None:
        self.fanout.taps.discard(self)


def copy_frame(frame: Frame) -> Frame:
    if isinstance(frame, av.VideoFrame):
        return av.VideoFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name)
    out = av.AudioFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name,
                                     layout=frame.layout.name)
    out.sample_rate = frame.sample_rate
    return out


class Fanout:
    """Reads one remote track and copies each decoded frame reference to every tap."""

    def __init__(self, track: MediaStreamTrack, on_frame: Callable[[], None]) -> None:
        self.kind = track.kind
        self.track = track
        self.taps: set[Tap] = set()
        self._on_frame = on_frame
        self._task = asyncio.create_task(self._run(), name=f"fanout:{track.kind}")

    def tap(self, maxsize: int = 4) -> Tap:
        t = Tap(self, maxsize)
        self.taps.add(t)
        return t

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                if not isinstance(frame, (av.AudioFrame, av.VideoFrame)):
                    continue
                self._on_frame()
                # Each sink stamps its own timestamps on what it gets: the first takes the
                # decoded frame, the others a copy, so no two encoders share one object.
                for i, t in enumerate(list(self.taps)):
                    t.put(frame if i == 0 else copy_frame(frame))
        except MediaStreamError:
            pass
        finally:
            for t in list(self.taps):
                t.put(None)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.taps.clear()


class OutboundTrack(MediaStreamTrack):
    """The track an endpoint sends: its source's frames, or silence/black while none is
    connected. A connected source that carries nothing of this kind (an audio-only
    publisher's video) sends nothing, as on Kurento, instead of filler posing as media."""

    def __init__(self, kind: str, on_source_frame: Callable[[], None],
                 size: tuple[int, int] = (320, 240), fps: int = 15) -> None:
        super().__init__()
        self.kind = kind
        self._tap: Tap | None = None
        self._on_source_frame = on_source_frame
        self._size = size
        self._fps = fps
        self._start: float | None = None
        self._samples = 0
        self._last_video_pts = -1
        self._filler: av.VideoFrame | None = None
        self._connected = False
        self._source_changed = asyncio.Event()

    def attach(self, fanout: Fanout | None, connected: bool | None = None) -> None:
        """`fanout` is the source's media of our kind; `connected` says whether a source
        element is connected at all (default: whether there is a fanout)."""
        if self._tap is not None:
            self._tap.close()
        self._tap = fanout.tap() if fanout is not None else None
        self._connected = fanout is not None if connected is None else connected
        self._source_changed.set()

    async def _next_source_frame(self, wait: float) -> Frame | None:
        tap = self._tap
        if tap is None:
            self._source_changed.clear()
            with contextlib.suppress(TimeoutError):
                # Nothing to pace while a connected source has none of our kind: wait for
                # the source to change instead of waking up per frame.
                await asyncio.wait_for(self._source_changed.wait(),
                                       None if self._connected else wait)
            return None
        try:
            frame = await asyncio.wait_for(tap.queue.get(), wait)
        except TimeoutError:
            return None
        if frame is not None:
            self._on_source_frame()
        return frame

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        if self.kind == "audio":
            return await self._recv_audio()
        return await self._recv_video()

    async def _from_connected_source(self, wait: float) -> Frame | None:
        """The next source frame; while a source is connected, waits for one (the gaps
        are the source's own), else None once `wait` passes without one."""
        while True:
            frame = await self._next_source_frame(wait)
            if self.readyState != "live":
                raise MediaStreamError
            if frame is not None or not self._connected:
                return frame

    async def _recv_audio(self) -> av.AudioFrame:
        assert self._start is not None
        frame = await self._from_connected_source(AUDIO_PTIME * 1.5)
        if isinstance(frame, av.AudioFrame):
            # After a gap in the source, stamp from the wall clock: the receiver must hear
            # the gap as time passing, not get late audio as if it were on time.
            wall = int((time.monotonic() - self._start) * AUDIO_RATE)
            if wall - self._samples > AUDIO_RATE * AUDIO_PTIME * 10:
                self._samples = wall
        else:
            # Pace silence to real time so the receiver's jitter buffer sees a steady clock.
            due = self._start + self._samples / AUDIO_RATE
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = self._silence()
        out = frame
        out.pts = self._samples
        out.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._samples += frame.samples
        return out

    def _silence(self) -> av.AudioFrame:
        samples = int(AUDIO_RATE * AUDIO_PTIME)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = AUDIO_RATE
        return frame

    async def _recv_video(self) -> av.VideoFrame:
        assert self._start is not None
        source = await self._from_connected_source(1.0 / self._fps)
        frame: av.VideoFrame
        if isinstance(source, av.VideoFrame):
            frame = source
        else:
            if self._filler is None:
                w, h = self._size
                black = av.VideoFrame(width=w, height=h, format="yuv420p")
                for i, plane in enumerate(black.planes):
                    plane.update(bytes([0 if i == 0 else 128]) * plane.buffer_size)
                self._filler = black
            frame = self._filler
        pts = int((time.monotonic() - self._start) * VIDEO_CLOCK)
        pts = max(pts, self._last_video_pts + 1)
        self._last_video_pts = pts
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame

    def stop(self) -> None:
        if self._tap is not None:
            self._tap.close()
            self._tap = None
        super().stop()
        self._source_changed.set()  # a recv waiting for a source ends now
