"""Encoded media in and out of aiortc, without its decoder: the two hooks we keep on it.

aiortc has no public way to read a receiver's depacketised frames before they are decoded,
nor to hear a viewer's keyframe request (PLI/FIR) when the sender packs pre-encoded data
(it only sets a flag its encoder reads). We hook both, on instances only, and check the
internals we touch against the aiortc version they were written for: a changed aiortc
fails `check_aiortc()` (and its test) loudly instead of silently decoding again.

- Receive: `RTCRtpReceiver` hands each complete frame to a `queue.Queue` its decoder thread
  reads. We swap that queue, before `receive()` starts the thread, for one that passes
  frames to us; the thread then only waits for the end-of-stream `None`, and no decoder is
  ever made (it is made lazily, on the first frame).
- Send: `RTCRtpSender` packs an `av.Packet` with the codec's `pack()` (public behaviour);
  its `_send_keyframe()` is what RTCP PLI/FIR call, which we replace per instance.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver

__all__ = ["AIORTC_VERSION", "EncodedFrame", "ForwardingReceiver", "check_aiortc",
           "hook_sender", "is_keyframe", "prefer_vp8"]

log = logging.getLogger(__name__)

#: The aiortc release whose internals the hooks below were read from.
AIORTC_VERSION = "1.16.0"
_QUEUE = "_RTCRtpReceiver__decoder_queue"
_THREAD = "_RTCRtpReceiver__decoder_thread"
# getStats() files every SSRC's inbound-rtp under one id (the RTX stream's can win), so
# loss is read from the per-SSRC statistics themselves.
_STREAMS = "_RTCRtpReceiver__remote_streams"
_RTX = "_RTCRtpReceiver__rtx_ssrc"
#: Fewest seconds between two keyframe requests to one publisher (a burst of viewers
#: joining, or every viewer's PLI after one lost packet, costs one keyframe).
PLI_INTERVAL = 0.3


@dataclass(slots=True)
class EncodedFrame:
    """One encoded frame as received. `timestamp` is in `clock_rate` units from the
    stream's start; `arrival` is `time.monotonic()` when it was complete."""

    kind: str
    codec: str  # mime type, lower case: "video/vp8", "audio/opus", "video/h264"
    clock_rate: int
    data: bytes
    timestamp: int
    keyframe: bool
    arrival: float


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether a decoder can start at this frame."""
    if codec == "video/vp8":
        return bool(data) and not data[0] & 0x01  # VP8 frame tag: P bit clear
    if codec == "video/h264":
        # Annex B as aiortc depacketises it: an IDR slice (5) or SPS (7) starts a picture.
        return any(start < len(data) and data[start] & 0x1F in (5, 7)
                   for start in _nal_starts(data))
    return True  # audio: every frame stands alone


def _nal_starts(data: bytes) -> list[int]:
    starts, i = [], data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    return starts


def check_aiortc() -> None:
    """Raises RuntimeError unless aiortc still has what the hooks rely on."""
    problems = []
    if aiortc.__version__ != AIORTC_VERSION:
        problems.append(f"aiortc {aiortc.__version__} installed, hooks read from "
                        f"{AIORTC_VERSION}")
    probe = RTCRtpReceiver.__init__.__code__.co_names
    for name in (_QUEUE, _THREAD, _STREAMS, _RTX):
        if name not in probe:
            problems.append(f"RTCRtpReceiver no longer sets {name}")
    for owner, attr in ((RTCRtpReceiver, "_send_rtcp_pli"), (RTCRtpSender, "_send_keyframe"),
                        (RTCRtpSender, "_handle_rtcp_packet")):
        if not callable(getattr(owner, attr, None)):
            problems.append(f"{owner.__name__}.{attr} is gone")
    if "_codecs" not in RTCRtpTransceiver.__init__.__code__.co_names:
        problems.append("RTCRtpTransceiver no longer keeps _codecs")
    if "_send_keyframe" not in RTCRtpSender._handle_rtcp_packet.__code__.co_names:
        problems.append("RTCRtpSender no longer calls _send_keyframe on PLI/FIR")
    if problems:
        raise RuntimeError("mediaserver.forwarding: " + "; ".join(problems))


class _FrameTap(queue.Queue[Any]):
    """Stands in for the decoder queue: frames go to `deliver`, only the end goes on."""

    def __init__(self, deliver: Callable[[Any, Any], None]) -> None:
        super().__init__()
        self._deliver = deliver

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(None, block, timeout)  # ends the idle decoder thread
            return
        codec, jitter_frame = item
        self._deliver(codec, jitter_frame)


class ForwardingReceiver:
    """A receiver whose complete encoded frames go to `on_frame` instead of a decoder."""

    def __init__(self, receiver: Any, on_frame: Callable[[EncodedFrame], None]) -> None:
        check_aiortc()
        if getattr(receiver, _THREAD) is not None:
            raise RuntimeError("the receiver already decodes; hook it before receive()")
        self.receiver = receiver
        self.kind: str = receiver.track.kind
        self._on_frame = on_frame
        self._last_pli = 0.0
        self._pli_pending: asyncio.TimerHandle | None = None
        self.keyframe_requests = 0
        setattr(receiver, _QUEUE, _FrameTap(self._deliver))

    def _deliver(self, codec: Any, jitter_frame: Any) -> None:
        mime = str(codec.mimeType).lower()
        data = bytes(jitter_frame.data)
        self._on_frame(EncodedFrame(
            kind=self.kind, codec=mime, clock_rate=int(codec.clockRate), data=data,
            timestamp=int(jitter_frame.timestamp), keyframe=is_keyframe(mime, data),
            arrival=time.monotonic()))

    def rtp_counts(self) -> tuple[int, int]:
        """(packets received, packets lost) of the media SSRCs; what came back by RTX
        (answering our NACKs) is not lost."""
        rtx = getattr(self.receiver, _RTX)
        received = lost = recovered = 0
        for ssrc, stream in getattr(self.receiver, _STREAMS).items():
            if ssrc in rtx:
                recovered += stream.packets_received
                continue
            received += stream.packets_received
            lost += max(stream.packets_lost, 0)
        return received + recovered, max(lost - recovered, 0)

    def request_keyframe(self) -> None:
        """Asks the publisher for a keyframe (RTCP PLI), at most once per PLI_INTERVAL:
        a request inside the interval is sent when it ends, never dropped."""
        if self.kind != "video" or self._pli_pending is not None:
            return
        wait = self._last_pli + PLI_INTERVAL - time.monotonic()
        loop = asyncio.get_running_loop()
        self._pli_pending = loop.call_later(max(wait, 0.0), self._send_pli)

    def _send_pli(self) -> None:
        self._pli_pending = None
        sources = self.receiver.getSynchronizationSources()
        if not sources:
            return  # nothing received yet: the first frames are keyframes anyway
        ssrc = max(sources, key=lambda s: s.timestamp).source
        self._last_pli = time.monotonic()
        self.keyframe_requests += 1
        task = asyncio.ensure_future(self.receiver._send_rtcp_pli(ssrc))
        task.add_done_callback(_log_failure)

    def close(self) -> None:
        if self._pli_pending is not None:
            self._pli_pending.cancel()
            self._pli_pending = None


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("! keyframe request failed: %s", task.exception())


def hook_sender(sender: Any, on_keyframe_request: Callable[[], None]) -> None:
    """A viewer's PLI/FIR to `sender` calls `on_keyframe_request` (forwarded media has no
    encoder to force a keyframe; the publisher must send one). Frames the sender encodes
    itself (filler, transcoded) still get their forced keyframe."""
    check_aiortc()
    original = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        on_keyframe_request()

    sender._send_keyframe = send_keyframe


def prefer_vp8(transceiver: Any) -> None:
    """Puts VP8 first among a negotiated video transceiver's codecs, before the answer is
    made: the offerer sends, and we send, the answer's first codec. Offers that list H.264
    first (Safari's) would otherwise publish H.264, which a WEBM file cannot hold, and get
    H.264 from us only by transcoding every VP8 publisher."""
    check_aiortc()
    codecs = transceiver._codecs
    transceiver._codecs = sorted(codecs, key=lambda c: str(c.mimeType).lower() != "video/vp8")
