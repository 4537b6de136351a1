"""Media plumbing: encoded frames from one source, fanned out to every sink unchanged.

`Fanout` takes each encoded frame a source produced once and hands it to every attached
`Tap`. A tap holds at most `max_delay` seconds of media (sized by time, not frames: 80 ms
of audio and 300 ms of video were once the same "4 frames"); what overflows is dropped,
counted and reported, never silently. Audio and video have their own taps and queues, so
video can never starve audio. A video tap that drops restarts at the next keyframe and
asks the source for one. `FlowMonitor` turns arrivals and loss into Kurento's
FLOWING / NOT_FLOWING transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mediaserver.forwarding import EncodedFrame

__all__ = ["Counters", "Fanout", "FlowMonitor", "Retimer", "Tap"]

log = logging.getLogger(__name__)

#: KMS checks every 2 s whether buffers passed since the last check.
FLOW_CHECK_INTERVAL = 2.0
#: Share of media lost in one check interval above which a flow counts as NOT_FLOWING.
LOSS_THRESHOLD = 0.02
#: Check intervals without loss before a flow that lost media is FLOWING again: a loss
#: stays reported long enough for the hub to report it (it waits 5 s by default).
CLEAN_CHECKS = 3
#: What a viewer's tap may hold, in seconds of media, before it drops.
VIEWER_DELAY = {"audio": 0.3, "video": 0.6}
#: A recorder rides out a slow disk for this long before it drops.
RECORDER_DELAY = {"audio": 5.0, "video": 5.0}
#: Seconds a sink's timeline may fall behind arrival before it jumps ahead. The source's
#: RTP timestamps are the truth (lost packets leave their gap, a burst after a stall of
#: ours keeps its place); only a source that stopped sending for this long without its
#: timestamps moving leaves a gap of our making.
RESYNC = 10.0
#: A video sink still waiting for a keyframe this long after asking asks again: the
#: request (RTCP PLI) or the keyframe itself may have been lost, and a publisher's encoder
#: sends none on its own for minutes.
KEYFRAME_RETRY = 1.0

Probe = Callable[[], Awaitable[tuple[int, int]]]


@dataclass
class Counters:
    """What one element did with one kind of media, in frames (RTP packets for `lost`)."""

    received: int = 0  # reached this element
    sent: int = 0  # forwarded to the peer, or written to the file
    dropped: int = 0  # discarded here: a sink that could not keep up
    skipped: int = 0  # not sent before the first keyframe (no loss: nothing to decode yet)
    lost: int = 0  # upstream, in the network (RTP sequence gaps)

    def as_stats(self, kind: str) -> dict[str, int | str]:
        return {"type": "media-counters", "mediaType": kind.upper(),
                "framesReceived": self.received, "framesSent": self.sent,
                "framesDropped": self.dropped, "framesSkipped": self.skipped,
                "packetsLost": self.lost}


class FlowMonitor:
    """Calls `on_change(flowing)` on the first frame, and at each check interval: quiet,
    or losing more than LOSS_THRESHOLD of its media (per `probe`: missing, expected),
    is NOT_FLOWING; media without loss again is FLOWING."""

    def __init__(self, on_change: Callable[[bool], None], interval: float = FLOW_CHECK_INTERVAL,
                 probe: Probe | None = None, name: str = "") -> None:
        self._on_change = on_change
        self._interval = interval
        self._probe = probe
        self._name = name
        self.flowing = False
        self.lossy = False
        self._clean = 0
        self._seen = False
        self._task: asyncio.Task[None] | None = None

    def frame(self) -> None:
        self._seen = True
        if not self.flowing and not self.lossy:
            self.flowing = True
            self._on_change(True)
        if self._task is None:
            self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._probe is not None:
                missing, expected = await self._probe()
                losing = expected > 0 and missing / expected > LOSS_THRESHOLD
                if losing:
                    log.warning("! %s: %d of %d frames lost in %.0f s", self._name, missing,
                                expected, self._interval)
                self._clean = 0 if losing else self._clean + 1
                lossy = losing or (self.lossy and self._clean < CLEAN_CHECKS)
                if self.lossy and not lossy:
                    log.info("= %s: no loss for %d checks", self._name, CLEAN_CHECKS)
                self.lossy = lossy
            flowing = self._seen and not self.lossy
            if flowing != self.flowing:
                self.flowing = flowing
                self._on_change(flowing)
            self._seen = False

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def counting_probe(read: Callable[[], Counters]) -> Probe:
    """A probe reading what a sink dropped since the last call."""
    last = Counters()

    async def probe() -> tuple[int, int]:
        counters = read()
        missing = counters.dropped - last.dropped
        expected = counters.received - last.received - (counters.skipped - last.skipped)
        last.dropped, last.received, last.skipped = (counters.dropped, counters.received,
                                                     counters.skipped)
        return missing, expected
    return probe


class Tap:
    """One sink's queue on a Fanout, holding at most `max_delay` seconds of media."""

    def __init__(self, fanout: Fanout, max_delay: float, name: str = "",
                 on_frame: Callable[[], None] | None = None) -> None:
        self.fanout = fanout
        self.max_delay = max_delay
        self.name = name
        self._on_frame = on_frame
        self.counters = Counters()
        self._frames: deque[EncodedFrame] = deque()
        self._ready = asyncio.Event()
        self._ended = False
        # Video starts at a keyframe; `_recovering` tells a restart after a drop (loss)
        # from the first wait (none).
        self._need_keyframe = fanout.kind == "video"
        self._recovering = False
        #: Arrival time of the frame at which a keyframe was last asked for (None: not
        #: asked since one came, or asked before any frame came).
        self._asked_at: float | None = None
        if self._need_keyframe:
            fanout.request_keyframe()

    def put(self, frame: EncodedFrame | None) -> None:
        if frame is None:
            self._ended = True
            self._ready.set()
            return
        self.counters.received += 1
        if self._on_frame is not None:
            self._on_frame()
        if self._need_keyframe:
            if not frame.keyframe:
                if self._recovering:
                    self.counters.dropped += 1
                else:
                    self.counters.skipped += 1
                if self._asked_at is None:
                    self._asked_at = frame.arrival
                elif frame.arrival - self._asked_at >= KEYFRAME_RETRY:
                    self._asked_at = frame.arrival
                    self.fanout.request_keyframe()
                return
            self._need_keyframe = self._recovering = False
            self._asked_at = None
        self._frames.append(frame)
        self._ready.set()
        if frame.arrival - self._frames[0].arrival > self.max_delay:
            self._overflow(frame.arrival)

    def _overflow(self, now: float) -> None:
        before = len(self._frames)
        if self.fanout.kind == "audio":
            while self._frames and now - self._frames[0].arrival > self.max_delay:
                self._frames.popleft()
        else:
            keys = [i for i, f in enumerate(self._frames) if f.keyframe]
            if keys and keys[-1] > 0:
                for _ in range(keys[-1]):
                    self._frames.popleft()
            else:
                # Nothing to restart from: drop it all and wait for a fresh keyframe.
                self._frames.clear()
                self._need_keyframe = self._recovering = True
                self._asked_at = now
                self.fanout.request_keyframe()
        dropped = before - len(self._frames)
        if dropped and not self.counters.dropped:
            log.warning("! %s: %s sink fell %.1f s behind; dropping", self.name,
                        self.fanout.kind, self.max_delay)
        self.counters.dropped += dropped

    def drain(self) -> list[EncodedFrame]:
        """Everything queued now, without waiting."""
        out = list(self._frames)
        self._frames.clear()
        if not self._ended:
            self._ready.clear()
        return out

    async def get(self) -> EncodedFrame | None:
        """The next frame; None once the source ended."""
        while not self._frames:
            if self._ended:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        if not self._frames and not self._ended:
            self._ready.clear()
        return frame

    def close(self) -> None:
        """Detaches from the source; a reader waiting in `get` gets None."""
        self.fanout.taps.discard(self)
        self._ended = True
        self._ready.set()


class Fanout:
    """One source's encoded frames of one kind, handed unchanged to every tap."""

    def __init__(self, kind: str, on_frame: Callable[[], None],
                 request_keyframe: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.taps: set[Tap] = set()
        self.counters = Counters()
        self.codec: str | None = None
        self._on_frame = on_frame
        self._request_keyframe = request_keyframe
        self._task: asyncio.Task[None] | None = None
        self.ended = False

    def tap(self, max_delay: float, name: str = "",
            on_frame: Callable[[], None] | None = None) -> Tap:
        """A new sink; `on_frame` is called for each frame reaching it (before it waits)."""
        t = Tap(self, max_delay, name, on_frame)
        self.taps.add(t)
        return t

    def request_keyframe(self) -> None:
        if self._request_keyframe is not None:
            self._request_keyframe()

    def push(self, frame: EncodedFrame) -> None:
        self.counters.received += 1
        self.codec = frame.codec
        self._on_frame()
        for t in list(self.taps):
            t.put(frame)

    def follow(self, track: MediaStreamTrack,
               convert: Callable[[object], EncodedFrame | None] | None = None) -> None:
        """Pushes what `track` yields (through `convert`) until it ends, then ends the
        taps. A forwarding receiver's track yields nothing but its end."""
        self._task = asyncio.create_task(self._run(track, convert), name=f"fanout:{self.kind}")

    async def _run(self, track: MediaStreamTrack,
                   convert: Callable[[object], EncodedFrame | None] | None) -> None:
        try:
            while True:
                item = await track.recv()
                frame = convert(item) if convert is not None else None
                if frame is not None:
                    self.push(frame)
        except MediaStreamError:
            pass
        finally:
            self.end()

    async def ended_wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    def end(self) -> None:
        self.ended = True
        for t in list(self.taps):
            t.put(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.taps.clear()


class Retimer:
    """A sink's own timeline for the frames of whichever source feeds it: the source's
    timestamps shifted by an offset fixed at its first frame, so a switch of source goes on
    where the last one stopped and a gap in a source stays a gap."""

    def __init__(self, start: float) -> None:
        self.start = start
        self._offset: int | None = None
        self._source: object = None
        self._last: int | None = None

    def stamp(self, frame: EncodedFrame, source: object) -> int:
        """`frame`'s timestamp on our timeline, in its clock's units since `start`."""
        clock = frame.clock_rate
        wall = int((frame.arrival - self.start) * clock)
        out = frame.timestamp + self._offset if self._offset is not None else 0
        if self._offset is None or source is not self._source or \
                (self._last is not None and out <= self._last) or wall - out > RESYNC * clock:
            anchor = wall if self._last is None else max(wall, self._last + 1)
            self._offset = anchor - frame.timestamp
            self._source = source
            out = anchor
        self._last = out
        return out
