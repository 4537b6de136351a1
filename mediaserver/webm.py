"""The file a RecorderEndpoint writes: encoded frames muxed as they came into WEBM/MKV by
PyAV, on one worker thread. Only a codec the container cannot hold is transcoded
(`filecodec`)."""

from __future__ import annotations

import asyncio
import fractions
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av

from mediaserver.filecodec import FileTranscoder

__all__ = ["MUXABLE", "Chunk", "WebmWriter", "vp8_size"]

MS = fractions.Fraction(1, 1000)
#: The codecs each container takes as they come.
MUXABLE = {"webm": {"audio/opus", "video/vp8"}, "matroska": {"audio/opus", "video/vp8"}}
Chunk = tuple[bytes, int, bool]  # data, pts in ms, keyframe


class WebmWriter:
    """Muxes encoded frames on one worker thread, so muxing needs no lock and a slow disk
    never blocks the event loop. Nothing is decoded or encoded: the frames go into the file
    as they came (the codec contexts PyAV opens for the header never see a frame)."""

    def __init__(self, path: Path, kinds: tuple[str, ...], container_format: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
        self._path = path
        self._kinds = kinds
        self._format = container_format
        #: Whether the container header is written (the muxer started).
        self.started = False
        self._container: Any = None
        self._streams: dict[str, Any] = {}
        self._last_pts: dict[str, int] = {}
        self._pending: list[tuple[str, Chunk]] = []
        self._transcoders: dict[str, FileTranscoder] = {}
        #: Called (on the worker thread) when a kind starts being transcoded.
        self.on_transcoding: Any = None

    async def write(self, kind: str, chunks: list[Chunk], codec: str) -> int:
        """Queues `chunks` for the file; returns how many were written. Until every kind
        has had a frame they wait in memory: the header needs them all (webmmux too)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._mux,
                                                                kind, chunks, codec)

    def _mux(self, kind: str, chunks: list[Chunk], codec: str) -> int:
        if kind not in self._kinds:
            return 0
        if codec not in MUXABLE[self._format]:
            transcoder = self._transcoders.get(kind)
            if transcoder is None or transcoder.codec != codec:
                transcoder = self._transcoders[kind] = FileTranscoder(kind, codec)
                if self.on_transcoding is not None:
                    self.on_transcoding(kind, codec)
            chunks = [out for data, pts, _ in chunks for out in transcoder.convert(data, pts)]
        self._pending.extend((kind, chunk) for chunk in chunks)
        if self._container is None:
            seen = {k for k, _ in self._pending}
            if seen != set(self._kinds):
                return 0
            self._open()
        return self._write_pending()

    def _write_pending(self) -> int:
        pending, self._pending = self._pending, []
        written = 0
        for k, (data, pts, keyframe) in sorted(pending, key=lambda item: item[1][1]):
            pts = max(pts, self._last_pts.get(k, -1) + 1)  # the muxer wants them rising
            self._last_pts[k] = pts
            packet = av.Packet(data)
            packet.pts = packet.dts = pts
            packet.time_base = MS
            packet.is_keyframe = keyframe
            packet.stream = self._streams[k]
            self._container.mux(packet)
            written += 1
        self.started = True
        return written

    def _open(self) -> None:
        first_video = next((c for k, c in self._pending if k == "video"), None)
        # flush_packets: what the muxer has written reaches the file at once, so a crash
        # loses less.
        # A consultation: its owner's alone whatever the umask. FFmpeg would create the
        # file 0666 & ~umask; opened for writing, an existing file keeps the mode set here.
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
        self._container = av.open(str(self._path), mode="w", format=self._format,
                                  container_options={"flush_packets": "1"})
        for kind in self._kinds:
            if kind == "audio":
                stream = self._container.add_stream("libopus", rate=48000)
            else:
                stream = self._container.add_stream("libvpx")
                stream.width, stream.height = vp8_size(first_video[0] if first_video
                                                       else b"")
                stream.pix_fmt = "yuv420p"
            stream.time_base = MS
            self._streams[kind] = stream

    def _finish(self) -> None:
        if self._container is None and self._pending:
            # Stopped before every kind came (or a transcoder gave nothing yet): what did
            # come is not thrown away.
            self._open()
            self._write_pending()
        if self._container is None:
            return
        self._container.close()
        self._container = None

    async def close(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._finish)
        finally:
            self._executor.shutdown(wait=False)


def vp8_size(keyframe: bytes) -> tuple[int, int]:
    """Width and height from a VP8 keyframe header (RFC 6386 9.1); 320x240 if none."""
    if len(keyframe) >= 10 and keyframe[3:6] == b"\x9d\x01\x2a":
        return (int.from_bytes(keyframe[6:8], "little") & 0x3FFF,
                int.from_bytes(keyframe[8:10], "little") & 0x3FFF)
    return 320, 240
