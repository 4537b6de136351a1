"""RecorderEndpoint: WEBM files (VP8/Opus) written by PyAV, encoded off the event loop.

Like KMS: `record()` returns at once (a file that cannot be opened for writing raises
`Error` instead), `Recording` fires once media has reached the recorder and the file holds
bytes on disk, a failed write raises `Error` and ends the recording, `stopAndWait` returns
once the file is finalized (trailer, duration, cues), a stopped recorder cannot record again,
and releasing a recording recorder stops it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fractions
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import av

from kurento_ctl.jsonrpc import ErrorCode
from mediaserver.elements import Element, KmsError, MediaPipelineImpl, Method, require
from mediaserver.tracks import Fanout, FlowMonitor, Frame, Tap

if TYPE_CHECKING:
    from mediaserver.core import MediaServer

__all__ = ["RecorderEndpointImpl", "WebmWriter"]

log = logging.getLogger(__name__)

PROFILES = {
    "WEBM": ("audio", "video"),
    "WEBM_AUDIO_ONLY": ("audio",),
    "WEBM_VIDEO_ONLY": ("video",),
    "MKV": ("audio", "video"),
    "MKV_AUDIO_ONLY": ("audio",),
    "MKV_VIDEO_ONLY": ("video",),
}
MS = fractions.Fraction(1, 1000)
#: Seconds audio may lag its arrival time before the file skips ahead (jitter stays below).
AUDIO_RESYNC = 0.2
#: GStreamer's GstResourceError codes, which KMS passes on as `errorCode`.
OPEN_WRITE, WRITE, NO_SPACE_LEFT = 6, 10, 14


def write_error(exc: Exception, opened: bool) -> tuple[int, str]:
    """(errorCode, type) of Kurento's `Error` for a failed write; FFmpeg opens the file
    at the first write, so a failure before anything is on disk is an open failure."""
    if not isinstance(exc, OSError):
        return 1, "UNEXPECTED_ELEMENT_ERROR"  # an encoder's complaint, not the file's
    if exc.errno == errno.ENOSPC:
        return NO_SPACE_LEFT, "RESOURCE_ERROR_NO_SPACE_LEFT"
    if not opened:
        return OPEN_WRITE, "RESOURCE_ERROR_OPEN"
    return WRITE, "RESOURCE_ERROR_WRITE"


def reason(exc: Exception) -> str:
    """The system's words for it; str() of an OSError repeats the path we already name."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def check_writable(path: Path) -> None:
    """Raises OSError unless `path` can be opened for writing. FFmpeg opens it only at the
    first write, KMS when recording starts: this tells at once, and leaves no empty file
    behind for a recorder that never gets media."""
    existed = path.exists()
    with path.open("ab"):
        pass
    if not existed:
        path.unlink()


class WebmWriter:
    """Encodes and muxes on one worker thread, so muxing needs no lock and never blocks us."""

    def __init__(self, path: Path, kinds: tuple[str, ...], container_format: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
        self._path = path
        #: Whether the file holds bytes on disk; set by the worker after a write.
        self.on_disk = False
        # flush_packets: what the muxer has written reaches the file at once, so "on disk"
        # is true of the file and a crash loses less.
        self._container: Any = av.open(str(path), mode="w", format=container_format,
                                       container_options={"flush_packets": "1"})
        self._streams: dict[str, Any] = {}
        self._t0: float | None = None
        self._last_pts: dict[str, int] = {}
        self._audio_next: int | None = None
        stream: Any
        for kind in kinds:
            if kind == "audio":
                stream = self._container.add_stream("libopus", rate=48000)
            else:
                stream = self._container.add_stream("libvpx", rate=15)
                stream.pix_fmt = "yuv420p"
                stream.bit_rate = 400_000
                stream.codec_context.time_base = MS
                stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8",
                                                "lag-in-frames": "0"}
            self._streams[kind] = stream

    async def write(self, kind: str, frame: Frame, at: float) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, kind,
                                                         frame, at)

    def _encode(self, kind: str, frame: Frame, at: float) -> None:
        if self._container is None or kind not in self._streams:
            return
        if self._t0 is None:
            self._t0 = at
        stream = self._streams[kind]
        if isinstance(frame, av.VideoFrame):
            if not stream.codec_context.is_open:
                stream.width, stream.height = frame.width, frame.height
            elif (frame.width, frame.height) != (stream.width, stream.height):
                frame = frame.reformat(width=stream.width, height=stream.height)
            pts = max(int((at - self._t0) * 1000), self._last_pts.get(kind, -1) + 1)
            frame.pts, frame.time_base = pts, MS
        else:
            # Audio keeps its own sample clock, anchored where it first arrived and moved
            # on when it falls behind: audio that never came (a network gap, a starved
            # decoder) must leave a gap, not pull everything after it earlier than the video.
            wall = int((at - self._t0) * frame.sample_rate)
            if self._audio_next is None or wall - self._audio_next > frame.sample_rate * \
                    AUDIO_RESYNC:
                self._audio_next = max(wall, self._audio_next or 0)
            frame.pts = self._audio_next
            frame.time_base = fractions.Fraction(1, frame.sample_rate)
            self._audio_next += frame.samples
            pts = frame.pts
        self._last_pts[kind] = pts
        muxed = False
        for packet in stream.encode(frame):
            self._container.mux(packet)
            muxed = True
        if muxed and not self.on_disk:
            self.on_disk = os.stat(self._path).st_size > 0

    def _finish(self) -> None:
        if self._container is None:
            return
        for stream in self._streams.values():
            if stream.codec_context.is_open:
                with contextlib.suppress(av.FFmpegError):
                    for packet in stream.encode(None):
                        self._container.mux(packet)
        self._container.close()
        self._container = None

    async def close(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._finish)
        finally:
            self._executor.shutdown(wait=False)


def file_path(uri: str, root: Path | None) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise KmsError(ErrorCode.MEDIA_OBJECT_ILLEGAL_PARAM_ERROR,
                       f"Unsupported uri scheme: {parsed.scheme or '(none)'}")
    path = Path(unquote(parsed.path))
    if root is not None and not path.resolve().is_relative_to(root.resolve()):
        raise KmsError(ErrorCode.URI_PATH_FILE_NOT_FOUND,
                       f"Uri outside the recordings root: {uri}")
    return path


class RecorderEndpointImpl(Element):
    type_name = "RecorderEndpoint"
    hierarchy = ("kurento.UriEndpoint", "kurento.Endpoint", "kurento.MediaElement",
                 "kurento.MediaObject")
    events = Element.events | frozenset({"Recording", "Paused", "Stopped",
                                         "UriEndpointStateChanged"})

    def __init__(self, server: MediaServer, pipeline: MediaPipelineImpl,
                 params: dict[str, Any]) -> None:
        super().__init__(server, pipeline)
        self.uri = require(params, "uri", str, "a string")
        profile = params.get("mediaProfile", "WEBM")
        if profile not in PROFILES:
            raise KmsError(ErrorCode.MARSHALL_ERROR, "Invalid value for 'MediaProfileSpecType'")
        self.profile: str = profile
        self.kinds = PROFILES[profile]
        self.path = file_path(self.uri, server.recordings_root)
        self.stop_on_eos = bool(params.get("stopOnEndOfStream", False))
        self.state = "STOP"
        self._stopped_for_good = False
        self._writer: WebmWriter | None = None
        self._taps: dict[str, Tap] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._recording_announced = False
        self._failed = False
        self._flow = {k: FlowMonitor(self.flow_callback("In", k)) for k in ("audio", "video")}
        self._stop_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    def flowing_in(self, kind: str) -> bool:
        return self._flow[kind].flowing

    def on_source(self, kind: str, fanout: Fanout | None) -> None:
        old = self._taps.pop(kind, None)
        if old is not None:
            old.close()
        if fanout is not None and kind in self.kinds:
            self._taps[kind] = fanout.tap(maxsize=30)
            if self.state == "START":
                self._start_reader(kind)

    def _start_reader(self, kind: str) -> None:
        task = self._readers.get(kind)
        if task is not None and not task.done():
            task.cancel()
        self._readers[kind] = asyncio.create_task(self._read(kind), name=f"record:{kind}")

    async def _read(self, kind: str) -> None:
        while True:
            tap = self._taps.get(kind)
            if tap is None or self._writer is None:
                return
            frame = await tap.queue.get()
            if frame is None:
                return
            self._flow[kind].frame()
            if self.state != "START":
                continue
            writer = self._writer
            if writer is None or self._failed:
                return
            try:
                await writer.write(kind, frame, time.monotonic())
            except (av.FFmpegError, OSError, ValueError) as exc:
                self._write_failed(kind, exc, writer.on_disk)
                return
            if not self._recording_announced and writer.on_disk:
                self._recording_announced = True
                self.emit("Recording")

    def _write_failed(self, kind: str, exc: Exception, opened: bool) -> None:
        """One `Error` per recorder: both kinds share the file, the second failure is news
        to no one."""
        if self._failed:
            return
        self._failed = True
        code, error_type = write_error(exc, opened)
        log.error("! %s: writing %s to %s failed: %s", self.id, kind, self.path, exc)
        what = f'Could not open file "{self.path}" for writing' if error_type == \
            "RESOURCE_ERROR_OPEN" else f'Could not write to file "{self.path}"'
        self.emit("Error", description=f"{what}: {reason(exc)}", errorCode=code,
                  type=error_type)

    def methods(self) -> dict[str, Method]:
        methods = super().methods()
        methods.update({
            "record": Method(self._record),
            "pause": Method(self._pause),
            "stop": Method(self._stop),
            "stopAndWait": Method(self._stop_and_wait),
            "getUri": Method(self._get_uri),
            "getState": Method(self._get_state),
        })
        return methods

    async def _get_uri(self, params: dict[str, Any]) -> str:
        return str(self.uri)

    async def _get_state(self, params: dict[str, Any]) -> str:
        return self.state

    async def _record(self, params: dict[str, Any]) -> None:
        if self._stopped_for_good or self.state == "START":
            return  # KMS only logs these; the RPC succeeds
        if self._writer is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                check_writable(self.path)
                fmt = "webm" if self.profile.startswith("WEBM") else "matroska"
                self._writer = WebmWriter(self.path, self.kinds, fmt)
            except (OSError, av.FFmpegError) as exc:
                code, error_type = write_error(exc, opened=False)
                log.error("! %s: cannot open %s: %s", self.id, self.path, exc)
                self.emit("Error", description=f'Could not open file "{self.path}" for '
                          f"writing: {reason(exc)}", errorCode=code, type=error_type)
                return
        self.state = "START"
        self.emit("UriEndpointStateChanged", state="START")
        for kind in self._taps:
            self._start_reader(kind)

    async def _pause(self, params: dict[str, Any]) -> None:
        if self.state == "START":
            self.state = "PAUSE"
            self.emit("UriEndpointStateChanged", state="PAUSE")
            self.emit("Paused")

    async def _stop(self, params: dict[str, Any]) -> None:
        # stop returns at once, like KMS; the task is kept so it is not collected midway.
        task = asyncio.create_task(self.finalize())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop_and_wait(self, params: dict[str, Any]) -> None:
        await self.finalize()

    async def finalize(self) -> None:
        async with self._stop_lock:
            if self._stopped_for_good:
                return
            self._stopped_for_good = True
            was_recording = self._writer is not None
            self.state = "STOP"
            for task in self._readers.values():
                task.cancel()
            for task in self._readers.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._readers.clear()
            if self._writer is not None:
                try:
                    await self._writer.close()
                except (av.FFmpegError, OSError) as exc:
                    log.error("! %s: finalizing %s failed: %s", self.id, self.path, exc)
                self._writer = None
            if was_recording:
                self.emit("UriEndpointStateChanged", state="STOP")
                self.emit("Stopped")

    async def release(self) -> None:
        await self.finalize()
        for monitor in self._flow.values():
            monitor.close()
        for tap in self._taps.values():
            tap.close()
        self._taps.clear()
        await super().release()
