"""The media object tree: pipelines own elements; elements connect source → sink per kind.

Mirrors Kurento's model closely enough that a client cannot tell: ids in KMS's format,
`describe` hierarchies, `connect(sink, mediaType)` where a sink takes one source per kind
and a new connection replaces the old, release cascading from a pipeline to its children.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kurento_ctl.jsonrpc import ErrorCode
from mediaserver.tracks import Fanout

if TYPE_CHECKING:
    from mediaserver.core import MediaServer

__all__ = ["Element", "KmsError", "MediaObjectImpl", "MediaPipelineImpl", "Method"]

log = logging.getLogger(__name__)

KINDS = {"AUDIO": "audio", "VIDEO": "video"}


class KmsError(Exception):
    """An error reply as Kurento gives it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Method:
    handler: Callable[..., Awaitable[Any]]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()


def require(params: dict[str, Any], name: str, kind: type | tuple[type, ...],
            description: str) -> Any:
    value = params.get(name)
    if value is None or not isinstance(value, kind) or (
        isinstance(value, bool) and kind in (int, float)
    ):
        raise KmsError(ErrorCode.MARSHALL_ERROR, f"'{name}' parameter should be {description}")
    return value


class MediaObjectImpl:
    type_name = "MediaObject"
    hierarchy: tuple[str, ...] = ("kurento.MediaObject",)
    events: frozenset[str] = frozenset({"Error"})

    def __init__(self, server: MediaServer, object_id: str,
                 pipeline: MediaPipelineImpl | None) -> None:
        self.server = server
        self.id = object_id
        self.pipeline = pipeline
        self.created = time.time()
        self.released = False

    def methods(self) -> dict[str, Method]:
        return {}

    def emit(self, event_type: str, **fields: Any) -> None:
        data: dict[str, Any] = {"source": self.id, "tags": [],
                                "timestampMillis": str(int(time.time() * 1000))}
        if event_type not in ("ObjectCreated", "ObjectDestroyed", "Error"):
            data["type"] = event_type
        data.update(fields)
        self.server.emit(self.id, event_type, data)

    async def release(self) -> None:
        self.released = True


class MediaPipelineImpl(MediaObjectImpl):
    type_name = "MediaPipeline"

    def __init__(self, server: MediaServer) -> None:
        super().__init__(server, f"{uuid.uuid4()}_kurento.MediaPipeline", None)
        self.pipeline = self
        self.children: dict[str, Element] = {}

    def child_id(self, type_name: str) -> str:
        return f"{self.id}/{uuid.uuid4()}_kurento.{type_name}"

    async def release(self) -> None:
        for child in list(self.children.values()):
            await self.server.release_object(child)
        await super().release()


class Element(MediaObjectImpl):
    """A MediaElement: may produce media (outputs) and consume it (sources per kind)."""

    type_name = "MediaElement"
    hierarchy: tuple[str, ...] = ("kurento.MediaElement", "kurento.MediaObject")
    events = frozenset({"Error", "MediaFlowInStateChanged", "MediaFlowOutStateChanged",
                        "ElementConnected", "ElementDisconnected",
                        "MediaTranscodingStateChanged"})

    def __init__(self, server: MediaServer, pipeline: MediaPipelineImpl) -> None:
        super().__init__(server, pipeline.child_id(self.type_name), pipeline)
        self.sources: dict[str, Element] = {}  # kind -> element feeding us
        self.sinks: dict[str, set[Element]] = {"audio": set(), "video": set()}

    # -- media graph ------------------------------------------------------------

    def output(self, kind: str) -> Fanout | None:
        """The decoded media this element produces of `kind`, if any yet."""
        return None

    def on_source(self, kind: str, fanout: Fanout | None) -> None:
        """Our source for `kind` changed (or started producing): attach it."""

    def output_changed(self, kind: str) -> None:
        for sink in list(self.sinks[kind]):
            sink.on_source(kind, self.output(kind))

    def connect_sink(self, sink: Element, kinds: list[str]) -> None:
        for kind in kinds:
            old = sink.sources.get(kind)
            if old is not None and old is not self:
                old.sinks[kind].discard(sink)
            sink.sources[kind] = self
            self.sinks[kind].add(sink)
            sink.on_source(kind, self.output(kind))
            self.emit("ElementConnected", sink=sink.id, mediaType=kind.upper(),
                      sourceMediaDescription="default", sinkMediaDescription="default")

    def disconnect_sink(self, sink: Element, kinds: list[str]) -> None:
        for kind in kinds:
            if sink.sources.get(kind) is self:
                del sink.sources[kind]
                sink.on_source(kind, None)
            self.sinks[kind].discard(sink)
            self.emit("ElementDisconnected", sink=sink.id, mediaType=kind.upper(),
                      sourceMediaDescription="default", sinkMediaDescription="default")

    def flow_callback(self, direction: str, kind: str) -> Callable[[bool], None]:
        return lambda flowing: self.flow_event(direction, kind, flowing)

    def flow_event(self, direction: str, kind: str, flowing: bool) -> None:
        self.emit(f"MediaFlow{direction}StateChanged",
                  state="FLOWING" if flowing else "NOT_FLOWING",
                  padName="default", mediaType=kind.upper())

    # -- methods ----------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        return {
            "connect": Method(self._connect, ("sink",),
                              ("mediaType", "sourceMediaDescription", "sinkMediaDescription")),
            "disconnect": Method(self._disconnect, ("sink",),
                                 ("mediaType", "sourceMediaDescription",
                                  "sinkMediaDescription")),
            "isMediaFlowingIn": Method(self._flowing_in, ("mediaType",), ("sinkMediaDescription",)),
            "isMediaFlowingOut": Method(self._flowing_out, ("mediaType",),
                                        ("sourceMediaDescription",)),
            "getStats": Method(self._stats, (), ("mediaType",)),
            "getMediaPipeline": Method(self._get_pipeline),
            "getName": Method(self._get_name),
        }

    def _kinds(self, params: dict[str, Any]) -> list[str]:
        media_type = params.get("mediaType")
        if media_type is None:
            return ["audio", "video"]
        if media_type == "DATA":
            return []
        if media_type not in KINDS:
            raise KmsError(ErrorCode.MARSHALL_ERROR, "Invalid value for 'MediaType'")
        return [KINDS[media_type]]

    def _sink(self, params: dict[str, Any]) -> Element:
        sink_id = require(params, "sink", str, "a string")
        sink = self.server.objects.get(sink_id)
        if sink is None:
            raise KmsError(ErrorCode.MEDIA_OBJECT_NOT_FOUND, f"Object '{sink_id}' not found")
        if not isinstance(sink, Element) or sink.pipeline is not self.pipeline:
            raise KmsError(ErrorCode.CONNECT_ERROR, "Media elements do not share pipeline")
        return sink

    async def _connect(self, params: dict[str, Any]) -> None:
        self.connect_sink(self._sink(params), self._kinds(params))

    async def _disconnect(self, params: dict[str, Any]) -> None:
        self.disconnect_sink(self._sink(params), self._kinds(params))

    def flowing_in(self, kind: str) -> bool:
        return False

    def flowing_out(self, kind: str) -> bool:
        return False

    async def _flowing_in(self, params: dict[str, Any]) -> bool:
        kinds = self._kinds(params)
        if not kinds:
            raise KmsError(ErrorCode.MEDIA_OBJECT_ILLEGAL_PARAM_ERROR,
                           "Unsupported media type: DATA")
        return self.flowing_in(kinds[0])

    async def _flowing_out(self, params: dict[str, Any]) -> bool:
        kinds = self._kinds(params)
        if not kinds:
            raise KmsError(ErrorCode.MEDIA_OBJECT_ILLEGAL_PARAM_ERROR,
                           "Unsupported media type: DATA")
        return self.flowing_out(kinds[0])

    async def _stats(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _get_pipeline(self, params: dict[str, Any]) -> str:
        assert self.pipeline is not None
        return self.pipeline.id

    async def _get_name(self, params: dict[str, Any]) -> str:
        return self.id

    async def release(self) -> None:
        for kind, source in list(self.sources.items()):
            source.sinks[kind].discard(self)
        self.sources.clear()
        for kind, sinks in self.sinks.items():
            for sink in list(sinks):
                if sink.sources.get(kind) is self:
                    del sink.sources[kind]
                    sink.on_source(kind, None)
            sinks.clear()
        if self.pipeline is not None:
            self.pipeline.children.pop(self.id, None)
        await super().release()
