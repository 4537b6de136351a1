"""RecorderEndpoint: WEBM files (VP8/Opus) muxed by PyAV from the encoded frames as they
came, off the event loop: no decoding, no encoding, and a gap in the media stays a gap.

Like KMS (docs/kurento.md, KMS-SOURCE-NOTES §5): `record()` returns at once; a file that
cannot be opened for writing raises `Error` (6, `RESOURCE_ERROR_OPEN`) after the reply and
never `Recording`. `Recording` fires once every kind of the profile has reached the muxer
(webmmux prerolls its header then), before anything is known to be on disk; a failed write
then raises one `Error` (10 `RESOURCE_ERROR_WRITE`, 14 `RESOURCE_ERROR_NO_SPACE_LEFT`) and
ends the recording. `stopAndWait` returns once the file is finalized (trailer, duration,
cues), a stopped recorder cannot record again, and releasing a recording recorder stops it
first. What a recorder receives, writes and drops is counted per kind (`getStats`); losing
more than LOSS_THRESHOLD of a kind in a check interval turns its `MediaFlowIn` NOT_FLOWING.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import av

from kurento_ctl.jsonrpc import ErrorCode
from mediaserver.elements import Element, KmsError, MediaPipelineImpl, Method, require
from mediaserver.forwarding import EncodedFrame
from mediaserver.tracks import (
    RECORDER_DELAY,
    Counters,
    Fanout,
    FlowMonitor,
    Retimer,
    Tap,
    counting_probe,
)
from mediaserver.webm import Chunk, WebmWriter

if TYPE_CHECKING:
    from mediaserver.core import MediaServer

__all__ = ["RecorderEndpointImpl"]

log = logging.getLogger(__name__)

PROFILES = {
    "WEBM": ("audio", "video"),
    "WEBM_AUDIO_ONLY": ("audio",),
    "WEBM_VIDEO_ONLY": ("video",),
    "MKV": ("audio", "video"),
    "MKV_AUDIO_ONLY": ("audio",),
    "MKV_VIDEO_ONLY": ("video",),
}
#: Seconds of media a recorder gathers before handing them to its writer thread.
WRITE_INTERVAL = 0.1
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
        self._retimers: dict[str, Retimer] = {}
        self._t0: float | None = None
        self._kinds_in: set[str] = set()
        self._want_keyframe: set[str] = set()
        self.counters = {k: Counters() for k in ("audio", "video")}
        self._recording_announced = False
        self._failed = False
        self._flow = {k: FlowMonitor(self.flow_callback("In", k), name=f"{self.id} {k}",
                                     probe=counting_probe(self._counter_reader(k)))
                      for k in ("audio", "video")}
        self._stop_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    def _counter_reader(self, kind: str) -> Any:
        return lambda: self.totals(kind)

    def totals(self, kind: str) -> Counters:
        """What this recorder did with `kind` so far, its current source included."""
        out = Counters(**vars(self.counters[kind]))
        tap = self._taps.get(kind)
        if tap is not None:
            out.received += tap.counters.received
            out.dropped += tap.counters.dropped
            out.skipped += tap.counters.skipped
        return out

    def flowing_in(self, kind: str) -> bool:
        return self._flow[kind].flowing

    def on_source(self, kind: str, fanout: Fanout | None) -> None:
        old = self._taps.pop(kind, None)
        if old is not None:
            for name in ("received", "dropped", "skipped"):
                setattr(self.counters[kind], name, getattr(self.counters[kind], name) +
                        getattr(old.counters, name))
            old.close()
        if fanout is not None and kind in self.kinds:
            self._taps[kind] = fanout.tap(RECORDER_DELAY[kind], self.id,
                                          self._flow[kind].frame)
            self._start_reader(kind)

    def _start_reader(self, kind: str) -> None:
        task = self._readers.get(kind)
        if task is not None and not task.done():
            task.cancel()
        self._readers[kind] = asyncio.create_task(self._read(kind), name=f"record:{kind}")

    async def _read(self, kind: str) -> None:
        tap = self._taps.get(kind)
        last_write = 0.0
        while tap is not None and not self._stopped_for_good:
            frame = await tap.get()
            if frame is None:
                return
            # Hand the worker thread batches, not single frames: each hand-over costs the
            # event loop more than muxing a frame does.
            pause = last_write + WRITE_INTERVAL - time.monotonic()
            if pause > 0 and self.state == "START":
                await asyncio.sleep(pause)
            last_write = time.monotonic()
            batch = [frame, *tap.drain()]
            writer = self._writer
            if self.state != "START" or writer is None or self._failed:
                # Not recording: nothing is lost, and video restarts at a keyframe.
                self.counters[kind].skipped += len(batch)
                self._want_keyframe.add(kind)
                continue
            chunks = self._chunks(kind, batch, tap)
            if not chunks:
                continue
            self._kinds_in.add(kind)
            if not self._recording_announced and self._kinds_in >= set(self.kinds):
                # KMS raises it when its muxing pipeline prerolls the header, which needs
                # every pad's first buffer, before the sink wrote anything.
                self._recording_announced = True
                self.emit("Recording")
            try:
                self.counters[kind].sent += await writer.write(kind, chunks, batch[0].codec)
            except (av.FFmpegError, OSError, ValueError) as exc:
                self.counters[kind].dropped += len(chunks)
                self._write_failed(kind, exc, writer.started)
                return

    def _chunks(self, kind: str, frames: list[EncodedFrame], tap: Tap) -> list[Chunk]:
        out: list[Chunk] = []
        for frame in frames:
            if kind in self._want_keyframe:
                if not frame.keyframe:
                    self.counters[kind].skipped += 1
                    continue
                self._want_keyframe.discard(kind)
            if self._t0 is None:
                self._t0 = frame.arrival
            retimer = self._retimers.setdefault(kind, Retimer(self._t0))
            stamp = retimer.stamp(frame, tap.fanout)
            out.append((frame.data, stamp * 1000 // frame.clock_rate, frame.keyframe))
        return out

    def _transcoding_from_worker(self, kind: str, codec: str) -> None:
        log.warning("! %s: transcoding %s %s for %s (the file cannot hold it)", self.id, kind,
                    codec, self.profile)
        self._loop.call_soon_threadsafe(lambda: self.emit(
            "MediaTranscodingStateChanged", state="TRANSCODING",
            binName=f"{self.id}/{kind}", mediaType=kind.upper()))

    def _container_format(self) -> str:
        return "webm" if self.profile.startswith("WEBM") else "matroska"

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
                self._writer = WebmWriter(self.path, self.kinds, self._container_format())
                self._writer.on_transcoding = self._transcoding_from_worker
            except (OSError, av.FFmpegError) as exc:
                code, error_type = write_error(exc, opened=False)
                log.error("! %s: cannot open %s: %s", self.id, self.path, exc)
                # KMS's filesink fails inside record(), and the Error reaches the client
                # after record's reply.
                description = f'Could not open file "{self.path}" for writing: {reason(exc)}'
                asyncio.get_running_loop().call_soon(lambda: self.emit(
                    "Error", description=description, errorCode=code, type=error_type))
                return
        self.state = "START"
        self.emit("UriEndpointStateChanged", state="START")
        self._want_keyframe.add("video")
        tap = self._taps.get("video")
        if tap is not None:
            tap.fanout.request_keyframe()

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
            for kind in self.kinds:
                totals = self.totals(kind)
                if totals.dropped:
                    log.warning("! %s: %d of %d %s frames dropped", self.id, totals.dropped,
                                totals.received, kind)
            if self._writer is not None:
                try:
                    await self._writer.close()
                except (av.FFmpegError, OSError) as exc:
                    log.error("! %s: finalizing %s failed: %s", self.id, self.path, exc)
                self._writer = None
            if was_recording:
                self.emit("UriEndpointStateChanged", state="STOP")
                self.emit("Stopped")

    async def _stats(self, params: dict[str, Any]) -> dict[str, Any]:
        return {f"media-counters_{kind}": self.totals(kind).as_stats(kind)
                for kind in self.kinds}

    async def release(self) -> None:
        await self.finalize()
        for monitor in self._flow.values():
            monitor.close()
        for tap in self._taps.values():
            tap.close()
        self._taps.clear()
        await super().release()
