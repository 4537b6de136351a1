"""PlayerEndpoint: plays a file into the pipeline at its own pace, then raises EndOfStream.
For tests and a "test call" feature. aiortc's MediaPlayer demuxes without decoding: the
file's VP8/Opus packets go to the sinks as they are, like a publisher's frames. A file with
other codecs is refused at `play()`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import av
from aiortc.contrib.media import MediaPlayer

from kurento_ctl.jsonrpc import ErrorCode
from mediaserver.elements import Element, KmsError, Method, require
from mediaserver.forwarding import EncodedFrame, is_keyframe
from mediaserver.recorder import file_path
from mediaserver.tracks import Fanout, FlowMonitor

#: What a file's streams may carry (FFmpeg's names), as the publishers' mime types.
CODECS = {"vp8": ("video/vp8", 90000), "opus": ("audio/opus", 48000)}

if TYPE_CHECKING:
    from mediaserver.core import MediaServer
    from mediaserver.elements import MediaPipelineImpl

__all__ = ["PlayerEndpointImpl"]

log = logging.getLogger(__name__)


class PlayerEndpointImpl(Element):
    type_name = "PlayerEndpoint"
    hierarchy = ("kurento.UriEndpoint", "kurento.Endpoint", "kurento.MediaElement",
                 "kurento.MediaObject")
    events = Element.events | frozenset({"EndOfStream", "UriEndpointStateChanged"})

    def __init__(self, server: MediaServer, pipeline: MediaPipelineImpl,
                 params: dict[str, Any]) -> None:
        super().__init__(server, pipeline)
        self.uri = require(params, "uri", str, "a string")
        # Players read only below the recordings root, as recorders write only there.
        self.path = file_path(self.uri, server.recordings_root)
        self.state = "STOP"
        self._player: MediaPlayer | None = None
        self._fanouts: dict[str, Fanout] = {}
        self._flow = {k: FlowMonitor(self.flow_callback("Out", k)) for k in ("audio", "video")}
        self._ended: asyncio.Task[None] | None = None

    def output(self, kind: str) -> Fanout | None:
        return self._fanouts.get(kind)

    def methods(self) -> dict[str, Method]:
        methods = super().methods()
        methods.update({"play": Method(self._play), "pause": Method(self._stop),
                        "stop": Method(self._stop), "getUri": Method(self._get_uri)})
        return methods

    async def _get_uri(self, params: dict[str, Any]) -> str:
        return str(self.uri)

    async def _play(self, params: dict[str, Any]) -> None:
        if self.state == "START":
            return
        if not self.path.is_file():
            raise KmsError(ErrorCode.URI_PATH_FILE_NOT_FOUND, f"File not found: {self.uri}")
        try:
            codecs = _codecs(str(self.path))
            self._player = MediaPlayer(str(self.path), decode=False)
        except Exception as exc:  # PyAV raises many kinds for unreadable files
            raise KmsError(ErrorCode.MEDIA_OBJECT_ILLEGAL_PARAM_ERROR,
                           f"Cannot play {self.uri}: {exc}") from None
        self.state = "START"
        for kind, track in (("audio", self._player.audio), ("video", self._player.video)):
            if track is not None:
                fanout = Fanout(kind, self._flow[kind].frame)
                fanout.follow(track, _converter(kind, codecs[kind]))
                self._fanouts[kind] = fanout
                self.output_changed(kind)
        self._ended = asyncio.create_task(self._watch_end(), name=f"player-end:{self.id}")

    async def _watch_end(self) -> None:
        await asyncio.gather(*(f.ended_wait() for f in self._fanouts.values()),
                             return_exceptions=True)
        if self.state == "START":
            self.state = "STOP"
            self.emit("EndOfStream")

    async def _stop(self, params: dict[str, Any]) -> None:
        self.state = "STOP"
        await self._close_media()

    async def _close_media(self) -> None:
        for fanout in self._fanouts.values():
            await fanout.close()
        self._fanouts.clear()
        if self._player is not None:
            for track in (self._player.audio, self._player.video):
                if track is not None:
                    track.stop()
            self._player = None
        if self._ended is not None:
            self._ended.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ended
            self._ended = None
        for kind in ("audio", "video"):
            self.output_changed(kind)

    async def release(self) -> None:
        self.state = "STOP"
        await self._close_media()
        for monitor in self._flow.values():
            monitor.close()
        await super().release()


def _codecs(path: str) -> dict[str, tuple[str, int]]:
    """The mime type and clock of each kind in the file; ValueError for what cannot pass
    through without transcoding."""
    out: dict[str, tuple[str, int]] = {}
    with av.open(path) as container:
        for stream in container.streams:
            if stream.type not in ("audio", "video") or stream.type in out:
                continue
            name = stream.codec_context.name
            if name not in CODECS:
                raise ValueError(f"{stream.type} is {name}; only VP8 and Opus play")
            out[stream.type] = CODECS[name]
    return out


def _converter(kind: str, codec: tuple[str, int]) -> Any:
    mime, clock = codec

    def convert(item: object) -> EncodedFrame | None:
        if not isinstance(item, av.Packet) or item.pts is None or item.time_base is None:
            return None
        data = bytes(item)
        return EncodedFrame(kind=kind, codec=mime, clock_rate=clock, data=data,
                            timestamp=int(item.pts * item.time_base * clock),
                            keyframe=is_keyframe(mime, data), arrival=time.monotonic())
    return convert
