"""The one place a recording is transcoded: a publisher whose codec its file cannot hold
(H.264 into WEBM). Runs on the recorder's worker thread; every other frame is muxed as it
came."""

from __future__ import annotations

import fractions
import logging
from typing import Any, cast

import av

__all__ = ["FileTranscoder"]

log = logging.getLogger(__name__)

MS = fractions.Fraction(1, 1000)
DECODERS = {"video/h264": "h264", "video/vp8": "vp8", "audio/opus": "libopus"}
#: What each kind becomes in a WEBM/MKV file.
TARGET = {"video": "libvpx", "audio": "libopus"}


class FileTranscoder:
    """Decodes one kind's frames of `codec` and encodes them for the file."""

    def __init__(self, kind: str, codec: str) -> None:
        self.kind, self.codec = kind, codec
        if codec not in DECODERS:
            raise ValueError(f"cannot transcode {codec}")  # loud: an Error, not silence
        self._decoder: Any = cast(Any, av.CodecContext.create(DECODERS[codec], "r"))
        self._encoder: Any = None

    def convert(self, data: bytes, pts: int) -> list[tuple[bytes, int, bool]]:
        """(data, pts in ms, keyframe) of the target codec for one source frame."""
        packet = av.Packet(data)
        packet.pts, packet.time_base = pts, MS
        out: list[tuple[bytes, int, bool]] = []
        try:
            frames = self._decoder.decode(packet)
        except av.FFmpegError as exc:
            log.info("= file transcoding: %s frame not decoded: %s", self.codec, exc)
            return out
        for frame in frames:
            if self._encoder is None:
                self._encoder = self._open(frame)
            frame.pts, frame.time_base = pts, MS
            for encoded in self._encoder.encode(frame):
                out.append((bytes(encoded), int(encoded.pts if encoded.pts is not None
                                                else pts), bool(encoded.is_keyframe)))
        return out

    def _open(self, frame: Any) -> Any:
        encoder: Any = cast(Any, av.CodecContext.create(TARGET[self.kind], "w"))
        encoder.time_base = MS
        if self.kind == "video":
            encoder.width, encoder.height = frame.width, frame.height
            encoder.pix_fmt = "yuv420p"
            encoder.bit_rate = 600_000
            encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        else:
            encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
        return encoder
